//! `GET/HEAD /v2/PREFIX/NAME/manifests/REF` through the cache. By digest: served from
//! storage, fetched once when missing (a digest names fixed bytes). By tag: served from
//! storage while upstream confirmed it less than `manifest_ttl` ago, else revalidated with
//! a HEAD (fetching only a changed manifest); with the upstream down or refusing (429), a
//! cached tag is served stale with a `Warning` header.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use berth_storage::{Digest, Storage};

use super::upstream::UpstreamError;
use super::Mirror;
use crate::error::{ApiResult, Code, RegistryError};
use crate::Req;

/// How long a tag's revalidation may take before the cached tag is served stale.
const REVALIDATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

fn unknown(name: &str, reference: &str) -> RegistryError {
    RegistryError::not_found(
        Code::ManifestUnknown,
        format!("manifest {reference} is not in repository {name} (nor upstream)"),
    )
}

pub(super) fn unavailable(name: &str, e: &UpstreamError) -> RegistryError {
    RegistryError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        Code::Unavailable,
        format!("{name} is not cached and the upstream cannot be reached: {e}"),
    )
}

impl Mirror {
    /// A tag's cached digest, if upstream confirmed it within the TTL.
    fn fresh(&self, name: &str, tag: &str, digest: &Digest) -> bool {
        let checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        checked
            .get(&(name.to_string(), tag.to_string()))
            .is_some_and(|(d, at)| d == digest && at.elapsed() < self.manifest_ttl)
    }

    fn confirmed(&self, name: &str, tag: &str, digest: Option<&Digest>) {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        let key = (name.to_string(), tag.to_string());
        match digest {
            Some(d) => checked.insert(key, (d.clone(), Instant::now())),
            None => checked.remove(&key),
        };
    }

    /// After a start, the tags' last validation times come back from storage: a tag's
    /// write time, renewed at each validation (see [`Mirror::renew`]). So a restart does
    /// not send every tag to the upstream at once. Read once per repository.
    async fn seed(&self, s: &dyn Storage, name: &str) {
        if self
            .seeded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
        {
            return;
        }
        let records = match s.tag_records(name).await {
            Ok(records) => records,
            Err(e) => {
                tracing::debug!(repository = %name, error = %e, "mirror: no tag times to read back");
                return;
            }
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        {
            let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
            for r in records {
                let age = wall.duration_since(r.pushed).unwrap_or_default();
                // An age beyond the clock's start is stale anyway: left out.
                if let Some(at) = now.checked_sub(age) {
                    checked
                        .entry((name.to_string(), r.tag))
                        .or_insert((r.digest, at));
                }
            }
        }
        let mut seeded = self.seeded.lock().unwrap_or_else(|e| e.into_inner());
        if seeded.len() > 100_000 {
            seeded.clear(); // bounded; reading a repository's tags again is harmless
        }
        seeded.insert(name.to_string());
    }

    /// Store that upstream confirmed the tag now (its write time is its validation time).
    async fn renew(&self, s: &dyn Storage, name: &str, tag: &str, digest: &Digest) {
        let renewed = match s.manifest_get(name, digest).await {
            Ok(Some((meta, bytes))) => s.manifest_put(name, digest, bytes, &meta, Some(tag)).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = renewed {
            tracing::warn!(repository = %name, %tag, error = %e, "mirror: could not store the tag's validation time");
        }
    }

    fn tag_lock(&self, name: &str, tag: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.tag_locks.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: locks nobody holds or waits for are dropped now and then.
        if locks.len() > 10_000 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks
            .entry((name.to_string(), tag.to_string()))
            .or_default()
            .clone()
    }

    /// Fetch a manifest upstream and store it (under `tag`, if given).
    async fn fetch_and_store(
        &self,
        s: &dyn Storage,
        name: &str,
        upstream_name: &str,
        reference: &str,
        tag: Option<&str>,
    ) -> ApiResult<Option<Digest>> {
        let fetched = self
            .get_manifest(upstream_name, reference)
            .await
            .map_err(|e| unavailable(name, &e))?;
        let Some(m) = fetched else {
            return Ok(None);
        };
        let mut parsed =
            crate::manifest::parse(&m.bytes, m.media_type.as_deref()).map_err(|e| {
                RegistryError::new(
                    StatusCode::BAD_GATEWAY,
                    Code::ManifestInvalid,
                    format!(
                        "the upstream's manifest {reference} cannot be cached: {}",
                        e.message
                    ),
                )
            })?;
        // Its blobs arrive later, on demand: record no references, so storage does not ask
        // for them now and garbage collection keeps the repository's blobs.
        parsed.meta.references = None;
        s.manifest_put(name, &m.digest, m.bytes, &parsed.meta, tag)
            .await?;
        Ok(Some(m.digest))
    }
}

pub(crate) async fn get(
    s: &dyn Storage,
    mirror: &Mirror,
    name: &str,
    upstream_name: &str,
    reference: &str,
    req: &Req,
) -> ApiResult<Response> {
    if let Ok(digest) = reference.parse::<Digest>() {
        if s.manifest_meta(name, &digest).await?.is_none() {
            if mirror.known_missing(name, reference) {
                return Err(unknown(name, reference));
            }
            let fetched = mirror
                .fetch_and_store(s, name, upstream_name, reference, None)
                .await?;
            if fetched.is_none() {
                mirror.note_missing(name, reference);
                return Err(unknown(name, reference));
            }
        }
        return crate::manifests::get(s, name, reference, req).await;
    }
    if !berth_oci::names::is_valid_tag(reference) {
        return Err(unknown(name, reference));
    }
    let tag = reference;
    mirror.seed(s, name).await;
    let cached = s.tag_resolve(name, tag).await?;
    if cached.as_ref().is_some_and(|d| mirror.fresh(name, tag, d)) {
        match serve_tag(s, mirror, name, upstream_name, tag, req).await {
            // Evicted between the tag lookup and the read: fetch it again below, as if it
            // had never been cached, rather than answer 404 for an image the upstream has.
            Err(e) if e.code == Code::ManifestUnknown => {}
            other => return other,
        }
    }
    let lock = mirror.tag_lock(name, tag);
    let _one_at_a_time = lock.lock().await;
    // Another request may have revalidated it while this one waited.
    let cached = s.tag_resolve(name, tag).await?;
    if cached.as_ref().is_some_and(|d| mirror.fresh(name, tag, d)) {
        return serve_tag(s, mirror, name, upstream_name, tag, req).await;
    }
    if mirror.known_missing(name, tag) {
        return Err(unknown(name, reference));
    }
    // A hung upstream must not hold clients longer than this when a stale answer would do.
    let revalidated =
        tokio::time::timeout(REVALIDATE_TIMEOUT, mirror.head_manifest(upstream_name, tag))
            .await
            .unwrap_or_else(|_| {
                Err(UpstreamError(format!(
                    "no answer within {REVALIDATE_TIMEOUT:?}"
                )))
            });
    match revalidated {
        Ok(None) => {
            mirror.confirmed(name, tag, None);
            mirror.note_missing(name, tag);
            Err(unknown(name, reference))
        }
        Ok(Some(Some(digest)))
            if cached.as_ref() == Some(&digest)
                && s.manifest_meta(name, &digest).await?.is_some() =>
        {
            mirror.confirmed(name, tag, Some(&digest));
            mirror.renew(s, name, tag, &digest).await;
            serve_tag(s, mirror, name, upstream_name, tag, req).await
        }
        Ok(Some(announced)) => {
            // Changed (or new): by digest when the upstream named it, so the bytes are checked.
            let by = announced.as_ref().map(Digest::to_string);
            let stored = mirror
                .fetch_and_store(
                    s,
                    name,
                    upstream_name,
                    by.as_deref().unwrap_or(tag),
                    Some(tag),
                )
                .await?
                .ok_or_else(|| unknown(name, reference))?;
            mirror.confirmed(name, tag, Some(&stored));
            serve_tag(s, mirror, name, upstream_name, tag, req).await
        }
        Err(e) if cached.is_some() => {
            tracing::warn!(repository = %name, %tag, error = %e, "mirror: upstream unreachable, serving the cached tag stale");
            let mut r = crate::manifests::get(s, name, reference, req).await?;
            r.headers_mut().insert(
                "Warning",
                HeaderValue::from_static(
                    "110 berth \"Response is stale: the upstream could not be reached\"",
                ),
            );
            Ok(r)
        }
        Err(e) => Err(unavailable(name, &e)),
    }
}

/// The cached tag; for a client that cannot read an index, its platform's child manifest,
/// fetched by digest first when it is not cached yet.
async fn serve_tag(
    s: &dyn Storage,
    mirror: &Mirror,
    name: &str,
    upstream_name: &str,
    tag: &str,
    req: &Req,
) -> ApiResult<Response> {
    let err = match crate::manifests::get(s, name, tag, req).await {
        Err(e) if e.code == Code::ManifestUnknown => e,
        other => return other,
    };
    let Some(digest) = s.tag_resolve(name, tag).await? else {
        return Err(err);
    };
    let Some((_, index)) = s.manifest_get(name, &digest).await? else {
        return Err(err);
    };
    let Some((child, _)) = crate::manifest::default_platform_child(&index) else {
        return Err(err);
    };
    if s.manifest_meta(name, &child).await?.is_some() {
        return Err(err);
    }
    mirror
        .fetch_and_store(s, name, upstream_name, &child.to_string(), None)
        .await?;
    crate::manifests::get(s, name, tag, req).await
}
