//! Requests to a mirror's upstream registries, through Berth's client (token auth, docker
//! credentials), trying the fallbacks in order when one fails. A 404 is an answer, not a
//! failure: it is not tried elsewhere.

use axum::http::Method;
use berth_client::image::media::ACCEPT_ALL;
use berth_storage::{ByteStream, Digest};
use bytes::Bytes;
use futures::TryStreamExt;

use super::Mirror;

/// Why no upstream gave an answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamError(pub String);

/// A manifest as the upstream sent it.
pub struct FetchedManifest {
    pub bytes: Bytes,
    pub media_type: Option<String>,
    pub digest: Digest,
}

/// A blob response whose body is still to be read.
pub struct BlobBody {
    pub size: Option<u64>,
    pub stream: ByteStream,
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

impl Mirror {
    /// Send to each upstream in turn until one answers with success or 404 (`None`).
    async fn ask(
        &self,
        method: Method,
        path: &str,
        repository: &str,
        accept: Option<&str>,
    ) -> Result<Option<reqwest::Response>, UpstreamError> {
        let scopes = [berth_client::auth::pull_scope(repository)];
        let mut failures = Vec::new();
        for (url, upstream) in &self.upstreams {
            let sent = upstream
                .send(method.clone(), path, &scopes, |r| match accept {
                    Some(a) => r.header("accept", a),
                    None => r,
                })
                .await;
            match sent {
                Ok(resp) if resp.status().is_success() => return Ok(Some(resp)),
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
                Ok(resp) => failures.push(format!("{url} answered {}", resp.status())),
                Err(e) => failures.push(format!("{url}: {e}")),
            }
        }
        Err(UpstreamError(format!(
            "{method} {path} failed upstream: {}",
            failures.join("; ")
        )))
    }

    /// The digest a tag points at upstream (`Ok(None)`: no such tag). `Some(None)` inside:
    /// the upstream answered but named no digest.
    pub(super) async fn head_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Option<Digest>>, UpstreamError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let resp = self
            .ask(Method::HEAD, &path, repository, Some(ACCEPT_ALL))
            .await?;
        Ok(resp.map(|r| header(&r, "docker-content-digest").and_then(|d| d.parse().ok())))
    }

    /// A manifest by tag or digest. By digest the bytes are checked against it; a mismatch
    /// is an error (and nothing is stored).
    pub(super) async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<FetchedManifest>, UpstreamError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let Some(resp) = self
            .ask(Method::GET, &path, repository, Some(ACCEPT_ALL))
            .await?
        else {
            return Ok(None);
        };
        let media_type = header(&resp, "content-type")
            .map(|ct| ct.split(';').next().unwrap_or_default().trim().to_string())
            .filter(|ct| !ct.is_empty() && ct != "application/json" && ct != "text/plain");
        let limit = crate::manifest::MAX_MANIFEST_BYTES;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(UpstreamError(format!(
                "manifest {repository}:{reference} upstream is larger than {limit} bytes"
            )));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError(format!("reading manifest {reference}: {e}")))?;
        let digest = match reference.parse::<Digest>() {
            Ok(expected) => {
                let actual = Digest::of(expected.algorithm(), &bytes);
                if actual != expected {
                    tracing::warn!(%repository, %expected, %actual, "upstream manifest does not match its digest: not cached");
                    return Err(UpstreamError(format!(
                        "the upstream's manifest {expected} has digest {actual}: not served"
                    )));
                }
                actual
            }
            Err(_) => Digest::sha256_of(&bytes),
        };
        Ok(Some(FetchedManifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// A blob's size upstream (`None`: not there).
    pub(super) async fn head_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<Option<u64>>, UpstreamError> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let resp = self.ask(Method::HEAD, &path, repository, None).await?;
        Ok(resp.map(|r| header(&r, "content-length").and_then(|n| n.parse().ok())))
    }

    /// A blob's body (`None`: not there).
    pub(super) async fn get_blob(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<BlobBody>, UpstreamError> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let Some(resp) = self.ask(Method::GET, &path, repository, None).await? else {
            return Ok(None);
        };
        let size = resp.content_length();
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        Ok(Some(BlobBody {
            size,
            stream: Box::pin(stream),
        }))
    }
}

/// Largest referrers answer passed through from an upstream.
const MAX_REFERRERS_BYTES: usize = 4 << 20;

impl Mirror {
    /// The upstream's referrers index of `subject` (with its `OCI-Filters-Applied`), checked
    /// to be JSON with a `manifests` list; `None`: the upstream has no referrers API or no
    /// such manifest.
    pub(super) async fn get_referrers(
        &self,
        repository: &str,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<(Bytes, Option<String>)>, UpstreamError> {
        let mut path = format!("/v2/{repository}/referrers/{subject}");
        if let Some(t) = artifact_type {
            path.push_str(&format!("?artifactType={}", berth_oci::percent::encode(t)));
        }
        let Some(resp) = self.ask(Method::GET, &path, repository, None).await? else {
            return Ok(None);
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_REFERRERS_BYTES as u64)
        {
            return Err(UpstreamError("referrers list too large".into()));
        }
        let filtered = header(&resp, "oci-filters-applied");
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UpstreamError(format!("reading referrers: {e}")))?;
        let valid = bytes.len() <= MAX_REFERRERS_BYTES
            && serde_json::from_slice::<serde_json::Value>(&bytes)
                .is_ok_and(|v| v.get("manifests").is_some_and(|m| m.is_array()));
        if !valid {
            return Err(UpstreamError(
                "the upstream's referrers answer is not an index".into(),
            ));
        }
        Ok(Some((bytes, filtered)))
    }
}
