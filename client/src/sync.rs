//! Replicate repositories from one registry to another (`berth sync`, and
//! the server's `[[sync]]` jobs): every repository under a prefix, every tag
//! (or those matching a glob), every platform (digests unchanged), and with
//! `referrers` the manifests that refer to each image. What the destination
//! already has is skipped by digest: one HEAD per tag on each side, and blobs
//! are skipped or mounted by [`copy_image`]. A copy writes blobs before
//! manifests, so an interrupted sync re-run copies only what is missing.
//! One failing image does not stop the others.

use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::{names, Digest};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Serialize;

use crate::copy::{copy_image, CopyOptions, Platforms};
use crate::error::{Error, Result};
use crate::image::{ImageDest, Progress};
use crate::reference::ImageRef;
use crate::registry::Registry;
use crate::remote::{RegistryDest, RegistrySource};

/// Where a sync writes: a registry over HTTP, or (in `berth serve`) its own storage.
#[async_trait]
pub trait SyncTarget: Send + Sync {
    /// `HOST/REPO` or similar, for messages.
    fn describe(&self, repository: &str) -> String;
    /// What `tag` points at in `repository`, if it exists.
    async fn tag_digest(&self, repository: &str, tag: &str) -> Result<Option<Digest>>;
    /// Whether the manifest `digest` is in `repository`.
    async fn has_manifest(&self, repository: &str, digest: &Digest) -> Result<bool>;
    /// A destination writing into `repository`.
    fn dest(&self, repository: &str) -> Result<Box<dyn ImageDest>>;
}

/// A registry reached with Berth's client.
pub struct RegistryTarget {
    registry: Arc<Registry>,
    /// Blobs in flight per image.
    parallel: usize,
}

impl RegistryTarget {
    pub fn new(registry: Arc<Registry>, parallel: usize) -> RegistryTarget {
        RegistryTarget { registry, parallel }
    }
}

#[async_trait]
impl SyncTarget for RegistryTarget {
    fn describe(&self, repository: &str) -> String {
        format!("{}/{repository}", self.registry.name())
    }

    async fn tag_digest(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        self.registry.manifest_head(repository, tag).await
    }

    async fn has_manifest(&self, repository: &str, digest: &Digest) -> Result<bool> {
        Ok(self
            .registry
            .manifest_head(repository, &digest.to_string())
            .await?
            .is_some())
    }

    fn dest(&self, repository: &str) -> Result<Box<dyn ImageDest>> {
        let reference = repository_ref(&self.registry, repository);
        Ok(Box::new(RegistryDest::new(
            self.registry.clone(),
            reference,
            self.parallel,
        )))
    }
}

fn repository_ref(registry: &Registry, repository: &str) -> ImageRef {
    ImageRef {
        registry: registry.name().to_string(),
        repository: repository.to_string(),
        tag: None,
        digest: None,
    }
}

#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Tags to copy (`*` matches any run of characters); `None` copies all.
    pub tags: Option<String>,
    /// Also copy the manifests that refer to each image (signatures, SBOMs).
    pub referrers: bool,
    /// Images copied at once.
    pub jobs: usize,
    /// Blobs in flight per image.
    pub blob_jobs: usize,
    /// Decide only: report `would-copy` instead of copying.
    pub dry_run: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            tags: None,
            referrers: false,
            jobs: 3,
            blob_jobs: 4,
            dry_run: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncAction {
    Copied,
    Skipped,
    Failed,
    WouldCopy,
}

/// What happened to one image (one tag of one repository).
#[derive(Clone, Debug, Serialize)]
pub struct SyncItem {
    pub repository: String,
    pub destination: String,
    /// Absent when listing the repository's tags failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    pub action: SyncAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub bytes_copied: u64,
    /// Referrers copied for this image.
    #[serde(skip_serializing_if = "is_zero")]
    pub referrers_copied: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct SyncSummary {
    pub repositories: usize,
    pub copied: usize,
    pub skipped: usize,
    pub failed: usize,
    pub would_copy: usize,
    pub bytes_copied: u64,
}

impl SyncSummary {
    fn add(&mut self, item: &SyncItem) {
        match item.action {
            SyncAction::Copied => self.copied += 1,
            SyncAction::Skipped => self.skipped += 1,
            SyncAction::Failed => self.failed += 1,
            SyncAction::WouldCopy => self.would_copy += 1,
        }
        self.bytes_copied += item.bytes_copied;
    }
}

/// `*` matches any run of characters; everything else itself. Linear
/// backtracking (one remembered star), so no glob can make it slow.
pub fn tag_matches(glob: &str, tag: &str) -> bool {
    berth_oci::glob::glob_match(glob, tag)
}

/// A tag glob is a tag with `*` in it: up to 128 of `[A-Za-z0-9_.-*]`.
pub fn is_tag_glob(glob: &str) -> bool {
    !glob.is_empty()
        && glob.len() <= 128
        && glob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-*".contains(&b))
}

/// The destination repository for `repository` (under `src_prefix`), or
/// `None` if it is not under the prefix. An empty prefix means everything.
pub fn map_repository(src_prefix: &str, dst_prefix: &str, repository: &str) -> Option<String> {
    let rest = if src_prefix.is_empty() {
        repository
    } else if repository == src_prefix {
        ""
    } else {
        repository.strip_prefix(src_prefix)?.strip_prefix('/')?
    };
    match (dst_prefix.is_empty(), rest.is_empty()) {
        (true, true) => None,
        (true, false) => Some(rest.to_string()),
        (false, true) => Some(dst_prefix.to_string()),
        (false, false) => Some(format!("{dst_prefix}/{rest}")),
    }
}

/// The source repositories under `prefix`: from the catalog, or, when the
/// registry will not list its catalog (Docker Hub, some auth setups), the
/// prefix itself as one repository.
pub async fn repositories(source: &Registry, prefix: &str) -> Result<Vec<String>> {
    match source.catalog(1000).await {
        Ok(all) => Ok(all
            .into_iter()
            .filter(|r| map_repository(prefix, "x", r).is_some())
            .collect()),
        Err(e) if !prefix.is_empty() => {
            tracing::info!(error = %e, prefix, "no catalog: syncing the prefix as one repository");
            Ok(vec![prefix.to_string()])
        }
        Err(e) => Err(e),
    }
}

/// One image to sync.
struct Work {
    repository: String,
    destination: String,
    tag: String,
}

/// Sync every repository of `source` under `src_prefix` to `target` under
/// `dst_prefix`, calling `on_item` for each image as it finishes.
pub async fn sync(
    source: &Arc<Registry>,
    src_prefix: &str,
    target: &dyn SyncTarget,
    dst_prefix: &str,
    options: &SyncOptions,
    progress: &dyn Progress,
    on_item: &(dyn Fn(&SyncItem) + Sync),
) -> Result<SyncSummary> {
    let mut summary = SyncSummary::default();
    let mut work = Vec::new();
    for repository in repositories(source, src_prefix).await? {
        let Some(destination) = map_repository(src_prefix, dst_prefix, &repository) else {
            continue;
        };
        summary.repositories += 1;
        // Names come from the remote: never let one reach a destination (a storage path) unchecked.
        if !names::is_valid_repository_name(&repository)
            || !names::is_valid_repository_name(&destination)
        {
            let item = listing_failed(repository, destination, "not a valid repository name");
            summary.add(&item);
            on_item(&item);
            continue;
        }
        match source.tags(&repository).await {
            Ok(tags) => work.extend(
                tags.into_iter()
                    .filter(|t| names::is_valid_tag(t))
                    .filter(|t| options.tags.as_deref().is_none_or(|g| tag_matches(g, t)))
                    .map(|tag| Work {
                        repository: repository.clone(),
                        destination: destination.clone(),
                        tag,
                    }),
            ),
            Err(e) => {
                let item = listing_failed(repository, destination, &format!("listing tags: {e}"));
                summary.add(&item);
                on_item(&item);
            }
        }
    }
    let mut done = futures::stream::iter(
        work.into_iter()
            .map(|w| sync_one(source, target, w, options, progress)),
    )
    .buffer_unordered(options.jobs.max(1));
    while let Some(item) = done.next().await {
        summary.add(&item);
        on_item(&item);
    }
    Ok(summary)
}

fn listing_failed(repository: String, destination: String, error: &str) -> SyncItem {
    SyncItem {
        repository,
        destination,
        tag: None,
        digest: None,
        action: SyncAction::Failed,
        error: Some(error.to_string()),
        bytes_copied: 0,
        referrers_copied: 0,
    }
}

async fn sync_one(
    source: &Arc<Registry>,
    target: &dyn SyncTarget,
    work: Work,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> SyncItem {
    let mut item = SyncItem {
        repository: work.repository.clone(),
        destination: work.destination.clone(),
        tag: Some(work.tag.clone()),
        digest: None,
        action: SyncAction::Failed,
        error: None,
        bytes_copied: 0,
        referrers_copied: 0,
    };
    match copy_tag(source, target, &work, options, progress, &mut item).await {
        Ok(action) => item.action = action,
        Err(e) => {
            item.action = SyncAction::Failed;
            item.error = Some(e.to_string());
        }
    }
    item
}

/// Copy one tag unless the destination has the same digest; then its referrers.
async fn copy_tag(
    source: &Arc<Registry>,
    target: &dyn SyncTarget,
    work: &Work,
    options: &SyncOptions,
    progress: &dyn Progress,
    item: &mut SyncItem,
) -> Result<SyncAction> {
    let wanted = source.manifest_head(&work.repository, &work.tag).await?;
    let present = target.tag_digest(&work.destination, &work.tag).await?;
    item.digest = wanted.clone();
    let action = if wanted.is_some() && wanted == present {
        SyncAction::Skipped
    } else if options.dry_run {
        return Ok(SyncAction::WouldCopy);
    } else {
        let reference = repository_ref(source, &work.repository).with_tag(&work.tag);
        let from = RegistrySource::new(source.clone(), reference);
        let dest = target.dest(&work.destination)?;
        let report = copy_image(
            &from,
            dest.as_ref(),
            Some(&work.tag),
            &copy_options(options),
            progress,
        )
        .await?;
        item.digest = Some(report.digest);
        item.bytes_copied = report.bytes_copied;
        SyncAction::Copied
    };
    if options.referrers {
        if let Some(digest) = item.digest.clone() {
            let (copied, bytes) =
                copy_referrers(source, target, work, &digest, options, progress).await?;
            item.referrers_copied = copied;
            item.bytes_copied += bytes;
        }
    }
    Ok(action)
}

fn copy_options(options: &SyncOptions) -> CopyOptions {
    CopyOptions {
        // Every platform and the index itself, so digests stay the same and
        // the next run can skip by digest.
        platforms: Platforms::All,
        jobs: options.blob_jobs.max(1),
        oci_media_types: false,
    }
}

/// Copy the referrers of `subject` the destination lacks: (count, bytes).
async fn copy_referrers(
    source: &Arc<Registry>,
    target: &dyn SyncTarget,
    work: &Work,
    subject: &Digest,
    options: &SyncOptions,
    progress: &dyn Progress,
) -> Result<(usize, u64)> {
    let (mut copied, mut bytes) = (0, 0);
    for digest in referrers(source, &work.repository, subject).await? {
        if target.has_manifest(&work.destination, &digest).await? {
            continue;
        }
        let reference = repository_ref(source, &work.repository).with_digest(digest);
        let from = RegistrySource::new(source.clone(), reference);
        let dest = target.dest(&work.destination)?;
        let report =
            copy_image(&from, dest.as_ref(), None, &copy_options(options), progress).await?;
        copied += 1;
        bytes += report.bytes_copied;
    }
    Ok((copied, bytes))
}

/// Digests of the manifests referring to `subject` (OCI referrers API); none
/// from a registry without the API (404).
pub async fn referrers(
    source: &Registry,
    repository: &str,
    subject: &Digest,
) -> Result<Vec<Digest>> {
    #[derive(serde::Deserialize)]
    struct Entry {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(default)]
        manifests: Vec<Entry>,
    }
    let path = format!("/v2/{repository}/referrers/{subject}");
    let scopes = [crate::auth::pull_scope(repository)];
    let resp = source.send(Method::GET, &path, &scopes, |r| r).await?;
    let status = resp.status();
    if status == StatusCode::NOT_FOUND {
        return Ok(Vec::new());
    }
    if !status.is_success() {
        return Err(Error::Registry {
            registry: source.name().to_string(),
            action: format!("GET referrers of {repository}@{subject}"),
            status: status.as_u16(),
            detail: "the registry refused to list referrers".into(),
        });
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| Error::malformed("referrers", e))?;
    let index: Index =
        serde_json::from_slice(&body).map_err(|e| Error::malformed("referrers", e))?;
    index
        .manifests
        .iter()
        .map(|e| {
            e.digest
                .parse::<Digest>()
                .map_err(|err| Error::malformed("referrers", err))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_map_under_prefixes() {
        assert_eq!(
            map_repository("team", "backup/team", "team/app").as_deref(),
            Some("backup/team/app")
        );
        assert_eq!(
            map_repository("team", "backup", "team").as_deref(),
            Some("backup")
        );
        assert_eq!(
            map_repository("team", "b", "teammate/app"),
            None,
            "whole components only"
        );
        assert_eq!(
            map_repository("team", "", "team"),
            None,
            "no name to write to"
        );
        assert_eq!(map_repository("", "", "a/b").as_deref(), Some("a/b"));
        assert_eq!(map_repository("", "m", "a").as_deref(), Some("m/a"));
        assert_eq!(
            map_repository("team", "", "team/x/y").as_deref(),
            Some("x/y")
        );
    }

    #[test]
    fn tag_globs() {
        assert!(tag_matches("*", "anything"));
        assert!(tag_matches("v1.*", "v1.2"));
        assert!(!tag_matches("v1.*", "v10"));
        assert!(tag_matches("*-rc*", "2.0-rc1"));
        assert!(!tag_matches("latest", "latest2"));
        assert!(is_tag_glob("v*.*"));
        assert!(!is_tag_glob("v1/x"));
        assert!(!is_tag_glob(""));
        assert!(!is_tag_glob(&"a".repeat(129)));
    }
}
