//! Blob uploads: `POST /v2/<name>/blobs/uploads/` (with `?digest=`, `?mount=`),
//! and `GET/PATCH/PUT/DELETE /v2/<name>/blobs/uploads/<id>`.

use axum::http::{header, StatusCode};
use axum::response::Response;
use berth_oci::names::is_valid_repository_name;
use berth_storage::{Digest, Storage, UploadStatus};

use crate::blobs::parse_digest;
use crate::error::{ApiResult, Code, RegistryError};
use crate::quota::Quotas;
use crate::{empty, header_value, http, take_body, Req};
use axum::body::Body;

/// 202 with where the upload stands. The URL never changes during an upload,
/// so any Location a client kept stays valid.
fn upload_response(status: StatusCode, name: &str, upload: &UploadStatus) -> Response {
    let mut r = empty(status);
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/blobs/uploads/{}", upload.id)),
    );
    h.insert(header::RANGE, http::upload_range(upload.offset));
    h.insert("Docker-Upload-UUID", header_value(&upload.id));
    r
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    let mut r = empty(StatusCode::CREATED);
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/blobs/{digest}")),
    );
    h.insert("Docker-Content-Digest", header_value(&digest.to_string()));
    r
}

fn required_digest(req: &Req) -> ApiResult<Digest> {
    let value = req.param("digest").ok_or_else(|| {
        RegistryError::bad_request(
            Code::DigestInvalid,
            "missing ?digest= on the final PUT of an upload",
        )
    })?;
    parse_digest(&value)
}

/// The start of a chunk that declares its `Content-Range`, checked against
/// the upload's current offset and the Content-Length before any of the body
/// is read (a refused body is then drained, see `dispatch`).
async fn checked_chunk_start(
    s: &dyn Storage,
    name: &str,
    id: &str,
    req: &Req,
) -> ApiResult<Option<u64>> {
    let Some(value) = req.header("content-range") else {
        return Ok(None);
    };
    let (start, end) = http::parse_content_range(value).ok_or_else(|| {
        RegistryError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            Code::BlobUploadInvalid,
            format!("malformed Content-Range {value:?}: expected START-END"),
        )
    })?;
    if let Some(len) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len != end - start + 1 {
            return Err(RegistryError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                Code::BlobUploadInvalid,
                format!(
                    "Content-Range {value} covers {} bytes but Content-Length is {len}",
                    end - start + 1
                ),
            ));
        }
    }
    let offset = s.upload_status(name, id).await?.offset;
    if start != offset {
        return Err(berth_storage::StorageError::RangeMismatch { offset }.into());
    }
    Ok(Some(start))
}

/// `any_source`: a mount without `from=` may take the blob from wherever the
/// registry holds it (not with access control on).
pub async fn start(
    s: &dyn Storage,
    quotas: &Quotas,
    name: &str,
    req: &Req,
    any_source: bool,
    body: &mut Option<Body>,
) -> ApiResult<Response> {
    if let Some(mount) = req.param("mount") {
        let digest = parse_digest(&mount)?;
        let from = req.param("from");
        let source_has_it = match from.as_deref() {
            Some(from) if is_valid_repository_name(from) => s.blob_linked(from, &digest).await?,
            Some(_) => false,
            // No `from`: mount when the registry already holds the blob.
            None if any_source => s.blob_size(&digest).await?.is_some(),
            None => false,
        };
        if source_has_it {
            let size = s.blob_size(&digest).await?;
            if !s.blob_linked(name, &digest).await? {
                if let Some(size) = size {
                    quotas.check_upload(s, name, Some(&digest), size).await?;
                }
            }
            s.link_blob(name, &digest).await?;
            let mut r = blob_created(name, &digest);
            r.extensions_mut().insert(crate::events::Happened {
                action: crate::events::Action::Mount,
                repository: name.to_string(),
                tags: Vec::new(),
                digest,
                media_type: None,
                size,
            });
            return Ok(r);
        }
        // Fall back to a normal upload, as the spec requires.
    }
    let digest = req.param("digest").map(|d| parse_digest(&d)).transpose()?;
    if let Some(declared) = declared_length(req).filter(|_| digest.is_some()) {
        // A monolithic upload says its size up front: refuse before reading it.
        quotas
            .check_upload(s, name, digest.as_ref(), declared)
            .await?;
    }
    let upload = s.upload_create(name).await?;
    match digest {
        Some(digest) => {
            let was_linked = quotas.limits_bytes(name) && s.blob_linked(name, &digest).await?;
            let result = s
                .upload_complete(name, &upload.id, &digest, Some(take_body(body)))
                .await;
            let result = match result {
                Ok(size) if quotas.limits_bytes(name) && !was_linked => {
                    completed_within_quota(s, quotas, name, &digest, size).await
                }
                other => other.map(|_| ()).map_err(Into::into),
            };
            if result.is_err() {
                // A failed single-request upload has no URL the client knows: drop it.
                let _ = s.upload_cancel(name, &upload.id).await;
            }
            result?;
            Ok(blob_created(name, &digest))
        }
        None => Ok(upload_response(StatusCode::ACCEPTED, name, &upload)),
    }
}

pub async fn status(s: &dyn Storage, name: &str, id: &str) -> ApiResult<Response> {
    let upload = s.upload_status(name, id).await?;
    Ok(upload_response(StatusCode::NO_CONTENT, name, &upload))
}

pub async fn patch(
    s: &dyn Storage,
    name: &str,
    id: &str,
    req: &Req,
    body: &mut Option<Body>,
) -> ApiResult<Response> {
    let start = checked_chunk_start(s, name, id, req).await?;
    let upload = s.upload_append(name, id, start, take_body(body)).await?;
    Ok(upload_response(StatusCode::ACCEPTED, name, &upload))
}

pub async fn finish(
    s: &dyn Storage,
    quotas: &Quotas,
    name: &str,
    id: &str,
    req: &Req,
    body: &mut Option<Body>,
) -> ApiResult<Response> {
    let digest = required_digest(req)?;
    checked_chunk_start(s, name, id, req).await?;
    let was_linked = quotas.limits_bytes(name) && s.blob_linked(name, &digest).await?;
    let size = s
        .upload_complete(name, id, &digest, Some(take_body(body)))
        .await?;
    if quotas.limits_bytes(name) && !was_linked {
        completed_within_quota(s, quotas, name, &digest, size).await?;
    }
    Ok(blob_created(name, &digest))
}

/// After an upload completed: over the quota, the blob is unlinked from the
/// repository again (garbage collection takes it if nothing else links it).
async fn completed_within_quota(
    s: &dyn Storage,
    quotas: &Quotas,
    name: &str,
    digest: &Digest,
    size: u64,
) -> ApiResult<()> {
    if let Err(refused) = quotas.check_upload(s, name, Some(digest), size).await {
        s.unlink_blob(name, digest).await?;
        return Err(refused);
    }
    Ok(())
}

fn declared_length(req: &Req) -> Option<u64> {
    req.header("content-length")?.trim().parse().ok()
}

pub async fn cancel(s: &dyn Storage, name: &str, id: &str) -> ApiResult<Response> {
    s.upload_cancel(name, id).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
