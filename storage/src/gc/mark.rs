//! Mark: list the repository links, learn what each manifest references
//! (from the mark log where the manifest link has not changed since the
//! last run, else from the link itself), and sweep the layer links no
//! manifest of their repository needs.
//!
//! The mark log is `gc/marks/<n>`: for each manifest link of bucket `n`,
//! its version when it was read and the references it recorded. A link's
//! content only changes when it is written again, which changes its version
//! (its ETag on S3; its size and time elsewhere), so a matching entry says
//! exactly what a read would. Entries of links that are gone are dropped
//! when the bucket is written back. A damaged log object is ignored (the
//! links are read instead): it can cost time, never a blob.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use super::spill::bucket_of;
use super::{
    blob_bucket, nanos, repository_prefixes, Collection, GcStore, MARK_BUCKETS, REPO_BUCKETS,
};
use crate::layout::LinkKind;
use crate::{Digest, ManifestMeta, Result, StorageError};

/// Manifest links read at once per mark bucket.
const READS_IN_FLIGHT: usize = 16;

/// The collector's own folder.
pub(crate) const GC_FOLDER: &str = "gc/";

pub(super) fn mark_log_key(bucket: usize) -> String {
    format!("{GC_FOLDER}marks/{bucket:02}")
}

/// One manifest link in the mark log.
#[derive(Clone, Serialize, Deserialize)]
struct Marked {
    /// The link's version when it was read.
    v: String,
    /// Its recorded references; `None`: unknown (keeps the repository's links).
    r: Option<Vec<Digest>>,
}

type MarkLog = HashMap<String, Marked>;

/// A manifest link as listed: `repo \t digest \t version \t key`.
struct ListedManifest {
    repo: String,
    version: String,
    key: String,
}

fn parse_manifest_line(line: &str) -> Option<ListedManifest> {
    let mut parts = line.splitn(4, '\t');
    let repo = parts.next()?.to_string();
    let _digest = parts.next()?;
    let version = parts.next()?.to_string();
    let key = parts.next()?.to_string();
    Some(ListedManifest { repo, version, key })
}

impl<S: GcStore + ?Sized> Collection<'_, S> {
    /// List every repository link, by prefix in parallel: manifests are
    /// live and go to the mark buckets, layer links to their repository's.
    pub(super) async fn list_links(&self) -> Result<()> {
        let prefixes = repository_prefixes(self.store).await?;
        self.all_of(
            (0..prefixes.len())
                .map(|i| self.list_links_under(&prefixes[i]).boxed())
                .collect(),
        )
        .await
    }

    async fn list_links_under(&self, prefix: &str) -> Result<()> {
        let spills = &self.spills;
        let mut pages = self.store.list_prefix(prefix);
        while let Some(page) = pages.next().await {
            for (item, version) in page? {
                let Some(link) = self.layout.parse_link(&item.key) else {
                    continue;
                };
                let digest = link.digest.to_string();
                match link.kind {
                    LinkKind::Manifest => {
                        spills.live.push(blob_bucket(&link.digest), &digest)?;
                        let line =
                            format!("{}\t{digest}\t{version}\t{}", link.repository, item.key);
                        spills
                            .manifests
                            .push(bucket_of(&item.key, MARK_BUCKETS), &line)?;
                    }
                    LinkKind::Layer => {
                        let line = format!(
                            "L\t{}\t{digest}\t{}\t{}",
                            link.repository,
                            nanos(item.modified),
                            item.key
                        );
                        spills
                            .repos
                            .push(bucket_of(&link.repository, REPO_BUCKETS), &line)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// What every manifest references, to its repository's bucket.
    pub(super) async fn resolve_references(&self) -> Result<()> {
        self.all_of(
            (0..MARK_BUCKETS)
                .map(|b| self.resolve_bucket(b).boxed())
                .collect(),
        )
        .await
    }

    async fn read_mark_log(&self, bucket: usize) -> MarkLog {
        let key = mark_log_key(bucket);
        match self.store.read(&key).await {
            Ok(Some(raw)) => serde_json::from_slice(&raw).unwrap_or_else(|e| {
                tracing::warn!(%key, error = %e, "mark log unreadable: reading the manifest links instead");
                MarkLog::new()
            }),
            Ok(None) => MarkLog::new(),
            Err(e) => {
                tracing::warn!(%key, error = %e, "mark log unreadable: reading the manifest links instead");
                MarkLog::new()
            }
        }
    }

    async fn resolve_bucket(&self, bucket: usize) -> Result<()> {
        let listed: Vec<ListedManifest> = self
            .spills
            .manifests
            .read(bucket)?
            .iter()
            .filter_map(|l| parse_manifest_line(l))
            .collect();
        let old = self.read_mark_log(bucket).await;
        let mut log = MarkLog::with_capacity(listed.len());
        let mut to_read = Vec::new();
        for m in listed {
            match old.get(&m.key) {
                Some(marked) if marked.v == m.version => {
                    self.spill_needs(&m.repo, marked.r.as_deref())?;
                    log.insert(m.key, marked.clone());
                }
                _ => to_read.push(m),
            }
        }
        let changed = !to_read.is_empty() || log.len() != old.len();
        let mut reads = futures::stream::iter(to_read.into_iter().map(|m| async move {
            let raw = self.store.read(&m.key).await?;
            Ok::<_, StorageError>((m, raw))
        }))
        .buffer_unordered(READS_IN_FLIGHT);
        while let Some(read) = reads.next().await {
            let (m, raw) = read?;
            let Some(raw) = raw else {
                continue; // deleted meanwhile
            };
            let meta: ManifestMeta = serde_json::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("{}: {e}", m.key)))?;
            self.spill_needs(&m.repo, meta.references.as_deref())?;
            let marked = Marked {
                v: m.version,
                r: meta.references,
            };
            log.insert(m.key, marked);
        }
        self.spills.manifests.discard(bucket);
        if changed && !self.dry_run {
            let raw = serde_json::to_vec(&log).map_err(std::io::Error::other)?;
            self.store
                .write(&mark_log_key(bucket), Bytes::from(raw))
                .await?;
        }
        Ok(())
    }

    fn spill_needs(&self, repo: &str, references: Option<&[Digest]>) -> Result<()> {
        let bucket = bucket_of(repo, REPO_BUCKETS);
        match references {
            Some(refs) => {
                for d in refs {
                    self.spills.repos.push(bucket, &format!("N\t{repo}\t{d}"))?;
                }
            }
            None => self.spills.repos.push(bucket, &format!("A\t{repo}"))?,
        }
        Ok(())
    }

    /// Sweep the layer links nobody needs, once past the grace period; the
    /// others make their blobs live.
    pub(super) async fn sweep_links(&self) -> Result<()> {
        self.all_of(
            (0..REPO_BUCKETS)
                .map(|b| self.sweep_links_of(b).boxed())
                .collect(),
        )
        .await?;
        self.flush().await
    }

    async fn sweep_links_of(&self, bucket: usize) -> Result<()> {
        let lines = self.spills.repos.read(bucket)?;
        // Per repository, what its manifests need; `None`: everything.
        let mut needed: HashMap<&str, Option<HashSet<&str>>> = HashMap::new();
        for line in &lines {
            let mut parts = line.split('\t');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("N"), Some(repo), Some(digest)) => {
                    if let Some(set) = needed.entry(repo).or_insert_with(|| Some(HashSet::new())) {
                        set.insert(digest);
                    }
                }
                (Some("A"), Some(repo), _) => {
                    needed.insert(repo, None);
                }
                _ => {}
            }
        }
        let cutoff = nanos(self.cutoff);
        let mut doomed = Vec::new();
        for line in &lines {
            let mut parts = line.splitn(5, '\t');
            let (Some("L"), Some(repo), Some(digest), Some(at), Some(key)) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                continue;
            };
            let Ok(parsed) = digest.parse::<Digest>() else {
                continue;
            };
            let needed_here = match needed.get(repo) {
                Some(Some(set)) => set.contains(digest),
                Some(None) => true,
                None => false,
            };
            let young = at.parse::<u128>().map_or(true, |at| at >= cutoff);
            if needed_here || young {
                self.spills.live.push(blob_bucket(&parsed), digest)?;
                continue;
            }
            self.spills
                .swept
                .push(blob_bucket(&parsed), &format!("{at}\t{key}"))?;
            doomed.push((key.to_string(), None));
        }
        self.links_removed
            .fetch_add(doomed.len() as u64, Ordering::Relaxed);
        drop(needed);
        self.spills.repos.discard(bucket);
        self.doom(doomed).await
    }
}
