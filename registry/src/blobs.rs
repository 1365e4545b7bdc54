//! `GET/HEAD/DELETE /v2/<name>/blobs/<digest>`

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use berth_storage::{Digest, Storage};

use crate::error::{ApiResult, Code, RegistryError};
use crate::{empty, header_value, http, Req};

pub(crate) fn parse_digest(digest: &str) -> ApiResult<Digest> {
    digest.parse().map_err(RegistryError::digest)
}

fn blob_unknown(digest: &Digest, name: &str) -> RegistryError {
    RegistryError::not_found(
        Code::BlobUnknown,
        format!("blob {digest} is not in repository {name}"),
    )
}

pub async fn get(s: &dyn Storage, name: &str, digest: &str, req: &Req) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    if !s.blob_linked(name, &digest).await? {
        return Err(blob_unknown(&digest, name));
    }
    let head = req.method == axum::http::Method::HEAD;
    let range = match req.header("range") {
        Some(value) if !head => Some(http::parse_range(value).ok_or_else(|| {
            RegistryError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::BlobUnknown,
                format!("unsupported Range {value:?}: use a single bytes=START-END range"),
            )
        })?),
        _ => None,
    };
    if !head {
        if let Some(url) = s.blob_redirect_url(&digest).await? {
            // The object store serves the bytes (and any Range) itself.
            let mut r = empty(StatusCode::TEMPORARY_REDIRECT);
            let h = r.headers_mut();
            h.insert(header::LOCATION, header_value(&url));
            h.insert("Docker-Content-Digest", header_value(&digest.to_string()));
            return Ok(r);
        }
    }
    let mut response = if head {
        let size = s
            .blob_size(&digest)
            .await?
            .ok_or_else(|| blob_unknown(&digest, name))?;
        let mut r = empty(StatusCode::OK);
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        r
    } else {
        let read = s.blob_read(&digest, range).await?;
        let (status, len) = match read.range {
            Some((start, end)) => (StatusCode::PARTIAL_CONTENT, end - start + 1),
            None => (StatusCode::OK, read.size),
        };
        let mut r = Response::new(Body::from_stream(read.stream));
        *r.status_mut() = status;
        let h = r.headers_mut();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if let Some((start, end)) = read.range {
            h.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {start}-{end}/{}", read.size)),
            );
        }
        r
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert("Docker-Content-Digest", header_value(&digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    // Content-addressed: the bytes behind a digest never change.
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=31536000, immutable"),
    );
    Ok(response)
}

pub async fn delete(s: &dyn Storage, name: &str, digest: &str) -> ApiResult<Response> {
    let digest = parse_digest(digest)?;
    if !s.unlink_blob(name, &digest).await? {
        return Err(blob_unknown(&digest, name));
    }
    Ok(empty(StatusCode::ACCEPTED))
}
