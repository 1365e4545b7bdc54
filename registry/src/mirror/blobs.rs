//! `GET/HEAD /v2/PREFIX/NAME/blobs/DIGEST` through the cache: from storage when the
//! repository has it; else linked after the upstream confirms it (when another repository
//! already stored the bytes); else streamed from a [`super::fill`] that many clients share.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use berth_storage::{Digest, Storage};

use super::manifests::unavailable;
use super::{Mirror, Mirrors};
use crate::error::{ApiResult, Code, RegistryError};
use crate::{empty, header_value, Req};

fn unknown(name: &str, digest: &Digest) -> RegistryError {
    RegistryError::not_found(
        Code::BlobUnknown,
        format!("blob {digest} is not in repository {name} (nor upstream)"),
    )
}

fn blob_headers(r: &mut Response, digest: &Digest, size: Option<u64>) {
    let h = r.headers_mut();
    if let Some(size) = size {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert("Docker-Content-Digest", header_value(&digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
}

/// The blob as stored, or `None` when it is gone after all (evicted or collected between
/// the look and the read): the caller then fetches it again.
async fn from_storage(
    s: &dyn Storage,
    name: &str,
    digest_text: &str,
    req: &Req,
) -> Option<ApiResult<Response>> {
    match crate::blobs::get(s, name, digest_text, req).await {
        Err(e) if e.code == Code::BlobUnknown => None,
        other => Some(other),
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn get(
    storage: &Arc<dyn Storage>,
    mirrors: &Mirrors,
    mirror: &Arc<Mirror>,
    name: &str,
    upstream_name: &str,
    digest_text: &str,
    req: &Req,
) -> ApiResult<Response> {
    let s = storage.as_ref();
    let digest = crate::blobs::parse_digest(digest_text)?;
    // Apart from the manifest of the same digest: a miss of one is not a miss of the other.
    let miss_key = format!("blob {digest}");
    if s.blob_linked(name, &digest).await? {
        if let Some(served) = from_storage(s, name, digest_text, req).await {
            return served;
        }
    }
    if mirror.known_missing(name, &miss_key) {
        return Err(unknown(name, &digest));
    }
    let head = req.method == Method::HEAD;
    if s.blob_size(&digest).await?.is_some() {
        // Stored for another repository: this one gets it only if its upstream has it too.
        let upstream = mirror
            .head_blob(upstream_name, &digest)
            .await
            .map_err(|e| unavailable(name, &e))?;
        if upstream.is_none() {
            mirror.note_missing(name, &miss_key);
            return Err(unknown(name, &digest));
        }
        // A collection may take the unlinked bytes between the size check and the link
        // (or the read): then they are fetched again below instead of answered 404.
        if s.link_blob(name, &digest).await.is_ok() {
            if let Some(served) = from_storage(s, name, digest_text, req).await {
                return served;
            }
        }
    }
    if head {
        // Answered from the upstream's HEAD: a HEAD is no reason to fetch the whole blob.
        let Some(size) = mirror
            .head_blob(upstream_name, &digest)
            .await
            .map_err(|e| unavailable(name, &e))?
        else {
            mirror.note_missing(name, &miss_key);
            return Err(unknown(name, &digest));
        };
        let mut r = empty(StatusCode::OK);
        blob_headers(&mut r, &digest, size);
        return Ok(r);
    }
    let fill = mirrors
        .fills
        .join_or_start(storage, mirror, name, upstream_name, &digest);
    let size = match fill.started().await {
        Ok(size) => size,
        Err((true, _)) => {
            mirror.note_missing(name, &miss_key);
            return Err(unknown(name, &digest));
        }
        Err((false, why)) => {
            return Err(RegistryError::new(
                StatusCode::BAD_GATEWAY,
                Code::BlobUnknown,
                format!("blob {digest} could not be fetched from the upstream: {why}"),
            ))
        }
    };
    let mut r = Response::new(Body::from_stream(fill.reader()));
    blob_headers(&mut r, &digest, size);
    Ok(r)
}
