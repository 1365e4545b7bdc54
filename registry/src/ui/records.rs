//! Persisted per-repository summaries, so the catalog and repository pages
//! stay fast at 10,000 repositories (issue 21): the catalog reads one small
//! record per repository shown, never its manifests or configs.
//!
//! Two records per repository, kept by the storage as opaque bytes
//! ([`SummaryPart`]):
//! - the **row** (tag count, total size with shared blobs counted once,
//!   newest `created`, last push), stamped with the repository's
//!   [`Storage::tags_stamp`] at the time it was computed;
//! - the **manifests**: what the repository page shows of each manifest a
//!   tag points at (kind, platforms, size, created, blobs), by digest.
//!
//! **How a row is known to be current, across replicas:** the stamp changes
//! whenever any process pushes, moves or deletes a tag (disk: tag files'
//! names, inodes and times; S3: one listing with ETags), and a reader
//! compares it with the record's before using the record. The stamp is read
//! *before* the tags a row is computed from, so a row computed while a push
//! lands carries the older stamp and is recomputed by the next reader: a row
//! is never shown for tags other than the current ones. Manifest entries
//! need no check: a manifest's content never changes under its digest.
//!
//! Pushes and deletes through this server rewrite the row in the
//! background ([`Ui::changed`]); a record that is missing (crash, a push
//! through an older version, the storage API) or unreadable is recomputed
//! by the reader and written back. Nothing here is the source of truth:
//! deleting every record loses nothing but time.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use berth_storage::{Digest, Storage, SummaryPart, TagRecord};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::cache::RepoStats;
use super::pages::TagRow;
use super::summary::{Summary, SummaryCache};
use super::Ui;

/// Bumped when a record's meaning changes: older records are recomputed.
const VERSION: u32 = 1;
/// Storage reads at once while computing one repository's summaries.
const CONCURRENT_READS: usize = 8;
/// Background refreshes running at once, and waiting at most (beyond that,
/// readers recompute what is missing).
const REFRESHERS: usize = 4;
const MAX_PENDING: usize = 10_000;

/// The catalog row as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct RowRecord {
    v: u32,
    /// The [`Storage::tags_stamp`] read before the tags this row came from.
    stamp: String,
    tags: usize,
    size: u64,
    newest: Option<String>,
    pushed: Option<String>,
}

/// Manifest summaries as stored, by digest.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ManifestsRecord {
    v: u32,
    manifests: BTreeMap<String, Summary>,
}

/// A stored record, or `None` when it is missing, unreadable (a torn or
/// tampered file) or of another version: the caller recomputes it then.
fn parse<T: serde::de::DeserializeOwned>(
    raw: Option<Bytes>,
    version: impl Fn(&T) -> u32,
) -> Option<T> {
    let record: T = serde_json::from_slice(&raw?).ok()?;
    (version(&record) == VERSION).then_some(record)
}

/// How a reader writes the records it recomputed: off the request's path
/// (a page does not wait for a storage write), or awaited (tools).
#[derive(Clone)]
pub(super) enum Writes {
    Detached(Arc<dyn Storage>),
    Awaited,
}

/// Write a record; a failure costs only a recomputation later.
async fn store<T: Serialize>(
    s: &dyn Storage,
    writes: &Writes,
    name: &str,
    part: SummaryPart,
    record: &T,
) {
    let Ok(bytes) = serde_json::to_vec(record) else {
        return;
    };
    let bytes = Bytes::from(bytes);
    match (writes, tokio::runtime::Handle::try_current()) {
        (Writes::Detached(storage), Ok(runtime)) => {
            let (storage, name) = (storage.clone(), name.to_string());
            // Two detached writes may land out of order: an older row is
            // only recomputed (its stamp is not the current one).
            runtime.spawn(async move { put(storage.as_ref(), &name, part, bytes).await });
        }
        _ => put(s, name, part, bytes).await,
    }
}

async fn put(s: &dyn Storage, name: &str, part: SummaryPart, bytes: Bytes) {
    if let Err(e) = s.summary_put(name, part, bytes).await {
        tracing::warn!(error = %e, repository = name, "web UI: cannot store a summary");
    }
}

/// Background work after pushes and deletes: one pending refresh per
/// repository, a few at once.
pub(super) struct Refresher {
    pending: std::sync::Mutex<std::collections::HashSet<String>>,
    permits: Arc<tokio::sync::Semaphore>,
}

impl Default for Refresher {
    fn default() -> Self {
        Refresher {
            pending: Default::default(),
            permits: Arc::new(tokio::sync::Semaphore::new(REFRESHERS)),
        }
    }
}

impl Ui {
    /// A manifest or tag of `repository` was pushed or deleted through this
    /// server: the repository list may change, and the stored row is
    /// rewritten off the request's path. If this process dies first, the
    /// next reader sees the stamp differ and recomputes.
    pub(crate) fn changed(self: &Arc<Self>, storage: Arc<dyn Storage>, repository: &str) {
        self.catalog.changed(repository);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut pending = self
                .refresher
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_PENDING || !pending.insert(repository.to_string()) {
                return; // already queued (it will see this change), or too many
            }
        }
        let (ui, repository) = (self.clone(), repository.to_string());
        runtime.spawn(async move {
            let _permit = ui.refresher.permits.clone().acquire_owned().await;
            ui.refresher
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&repository);
            let writes = Writes::Awaited;
            if let Err(e) = repo_stats(storage.as_ref(), &writes, &ui, &repository).await {
                tracing::warn!(error = %e, repository, "web UI: cannot refresh the summary");
            }
        });
    }
}

/// A repository's catalog row: from memory or the stored row when their
/// stamp is the current one, else computed and stored. `None` when the
/// repository is not there (removed since the list was read: the catalog's
/// list is not checked name by name).
pub(super) async fn repo_stats(
    s: &dyn Storage,
    writes: &Writes,
    ui: &Ui,
    name: &str,
) -> berth_storage::Result<Option<Arc<RepoStats>>> {
    let Some(stamp) = s.tags_stamp(name).await? else {
        return Ok(None);
    };
    if let Some(hit) = ui.catalog.row(name, &stamp) {
        return Ok(Some(hit));
    }
    let stored = parse(
        s.summary_get(name, SummaryPart::Row).await?,
        |r: &RowRecord| r.v,
    );
    if let Some(row) = stored.filter(|r| r.stamp == stamp) {
        let stats = Arc::new(RepoStats {
            tags: row.tags,
            size: row.size,
            newest: row.newest,
            pushed: row.pushed,
        });
        ui.catalog.set_row(name, &stamp, stats.clone());
        return Ok(Some(stats));
    }
    let rows = tag_rows(s, writes, &ui.cache, name).await?;
    let stats = Arc::new(stats_of(&rows));
    let record = RowRecord {
        v: VERSION,
        stamp: stamp.clone(),
        tags: stats.tags,
        size: stats.size,
        newest: stats.newest.clone(),
        pushed: stats.pushed.clone(),
    };
    store(s, writes, name, SummaryPart::Row, &record).await;
    ui.catalog.set_row(name, &stamp, stats.clone());
    Ok(Some(stats))
}

/// The row of some tags: shared blobs counted once.
fn stats_of(rows: &[TagRow]) -> RepoStats {
    RepoStats {
        tags: rows.len(),
        size: super::summary::total_size(rows.iter().map(|t| &t.summary)),
        newest: rows.iter().filter_map(|t| t.summary.created.clone()).max(),
        pushed: rows.iter().filter_map(|t| t.pushed.clone()).max(),
    }
}

/// Every tag of a repository with its manifest's summary and when it was
/// last pushed (an unknown repository has none): the tag records (one read
/// per tag at most), then each manifest's summary from memory, else from the
/// stored manifests record (one read), else computed from the manifest and
/// its config, after which the record is rewritten.
pub(super) async fn tag_rows(
    s: &dyn Storage,
    writes: &Writes,
    cache: &SummaryCache,
    name: &str,
) -> berth_storage::Result<Vec<TagRow>> {
    let records = s.tag_records(name).await?;
    let summaries = summaries_of(s, writes, cache, name, &records).await?;
    Ok(records
        .into_iter()
        .map(|record| TagRow {
            summary: summaries
                .get(&record.digest)
                .map(|s| (**s).clone())
                .unwrap_or_default(),
            digest: record.digest.to_string(),
            pushed: Some(humantime::format_rfc3339_seconds(record.pushed).to_string()),
            tag: record.tag,
        })
        .collect())
}

async fn summaries_of(
    s: &dyn Storage,
    writes: &Writes,
    cache: &SummaryCache,
    name: &str,
    records: &[TagRecord],
) -> berth_storage::Result<HashMap<Digest, Arc<Summary>>> {
    let mut known = HashMap::new();
    let mut missing = Vec::new();
    for r in records {
        if known.contains_key(&r.digest) || missing.contains(&r.digest) {
            continue;
        }
        match cache.get(&r.digest) {
            Some(hit) => drop(known.insert(r.digest.clone(), hit)),
            None => missing.push(r.digest.clone()),
        }
    }
    if missing.is_empty() {
        return Ok(known);
    }
    let raw = s.summary_get(name, SummaryPart::Manifests).await?;
    let stored = parse(raw, |r: &ManifestsRecord| r.v).unwrap_or_default();
    let mut to_compute = Vec::new();
    for digest in missing {
        match stored.manifests.get(&digest.to_string()) {
            Some(summary) => {
                let summary = Arc::new(summary.clone());
                cache.put(&digest, summary.clone());
                known.insert(digest, summary);
            }
            None => to_compute.push(digest),
        }
    }
    let computed: Vec<(Digest, Option<Arc<Summary>>)> = futures::stream::iter(to_compute)
        .map(|d| async move {
            let summary = cache.summary(s, name, &d).await?;
            Ok::<_, berth_storage::StorageError>((d, summary))
        })
        .buffer_unordered(CONCURRENT_READS)
        .try_collect()
        .await?;
    let mut changed = false;
    for (digest, summary) in computed {
        // A manifest that is gone is not stored: it is looked at again next time.
        if let Some(summary) = summary {
            known.insert(digest, summary);
            changed = true;
        }
    }
    // Entries of manifests no tag points at any more are dropped on rewrite.
    if changed || stored.manifests.len() != known.len() {
        let record = ManifestsRecord {
            v: VERSION,
            manifests: known
                .iter()
                .map(|(d, s)| (d.to_string(), (**s).clone()))
                .collect(),
        };
        store(s, writes, name, SummaryPart::Manifests, &record).await;
    }
    Ok(known)
}

/// Compute and store a repository's records as a push through this server
/// would (for tools that fill a storage directly, e.g. the UI benchmark).
pub async fn write_summaries(s: &dyn Storage, repository: &str) -> berth_storage::Result<()> {
    let ui = Ui::new(super::UiOptions::default());
    repo_stats(s, &Writes::Awaited, &ui, repository)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_another_version_or_torn_are_not_used() {
        let row = RowRecord {
            v: VERSION,
            stamp: "1:ab".into(),
            tags: 2,
            size: 10,
            newest: None,
            pushed: Some("2026-12-01T00:00:00Z".into()),
        };
        let raw = Bytes::from(serde_json::to_vec(&row).expect("json"));
        assert_eq!(
            parse(Some(raw.clone()), |r: &RowRecord| r.v),
            Some(row.clone())
        );
        assert_eq!(
            parse(Some(raw.slice(..raw.len() - 1)), |r: &RowRecord| r.v),
            None,
            "torn"
        );
        assert_eq!(
            parse(Some(Bytes::from_static(b"\x00garbage")), |r: &RowRecord| r
                .v),
            None
        );
        assert_eq!(parse(None, |r: &RowRecord| r.v), None);
        let old = RowRecord {
            v: VERSION + 1,
            ..row
        };
        let raw = Bytes::from(serde_json::to_vec(&old).expect("json"));
        assert_eq!(parse(Some(raw), |r: &RowRecord| r.v), None, "other version");
    }

    #[test]
    fn rows_count_shared_blobs_once() {
        let summary = |blobs: &[(&str, u64)], created: &str| Summary {
            blobs: blobs.iter().map(|(d, n)| (d.to_string(), *n)).collect(),
            size: blobs.iter().map(|(_, n)| n).sum(),
            created: Some(created.into()),
            ..Summary::default()
        };
        let row = |tag: &str, summary, pushed: &str| TagRow {
            tag: tag.into(),
            digest: String::new(),
            summary,
            pushed: Some(pushed.into()),
        };
        let rows = [
            row(
                "a",
                summary(&[("c1", 1), ("l", 100)], "2026-01-01"),
                "2026-12-02",
            ),
            row(
                "b",
                summary(&[("c2", 2), ("l", 100)], "2026-03-01"),
                "2026-12-01",
            ),
        ];
        let stats = stats_of(&rows);
        assert_eq!(stats.tags, 2);
        assert_eq!(stats.size, 103);
        assert_eq!(stats.newest.as_deref(), Some("2026-03-01"));
        assert_eq!(stats.pushed.as_deref(), Some("2026-12-02"));
    }

    /// The row of a repository that exists, as `ui` sees it.
    async fn row_of(s: &dyn Storage, ui: &Ui, repo: &str) -> Arc<RepoStats> {
        repo_stats(s, &Writes::Awaited, ui, repo)
            .await
            .expect("row")
            .expect("there")
    }

    /// Over a real storage: the row follows pushes and deletes, and a
    /// garbage record is recomputed, not shown.
    #[tokio::test]
    async fn rows_follow_the_tags_and_survive_garbage() {
        let s = berth_storage::MemoryStorage::new();
        let ui = Ui::new(super::super::UiOptions::default());
        let repo = "team/app";
        let push = |n: u64, tag: &'static str| {
            let s = &s;
            async move {
                let body = Bytes::from(format!(
                    r#"{{"schemaVersion":2,"config":{{"digest":"sha256:{:064x}","size":{n}}},"layers":[]}}"#,
                    n
                ));
                let digest = Digest::sha256_of(&body);
                let meta = berth_storage::ManifestMeta {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    subject: None,
                    artifact_type: None,
                    annotations: None,
                    references: None,
                };
                s.manifest_put(repo, &digest, body, &meta, Some(tag))
                    .await
                    .expect("manifest_put");
            }
        };
        push(5, "a").await;
        assert_eq!(row_of(&s, &ui, repo).await.size, 5);
        push(7, "b").await;
        let fresh = Ui::new(super::super::UiOptions::default());
        let row = row_of(&s, &fresh, repo).await;
        assert_eq!((row.tags, row.size), (2, 12), "a new stamp: recomputed");
        let stored = s.summary_get(repo, SummaryPart::Row).await.expect("get");
        let stored: RowRecord = serde_json::from_slice(&stored.expect("stored")).expect("json");
        assert_eq!((stored.tags, stored.size), (2, 12));
        s.tag_delete(repo, "a").await.expect("delete");
        assert_eq!(row_of(&s, &ui, repo).await.size, 7);
        for part in [SummaryPart::Row, SummaryPart::Manifests] {
            s.summary_put(repo, part, Bytes::from_static(b"{garbage"))
                .await
                .expect("put");
        }
        let fresh = Ui::new(super::super::UiOptions::default());
        let row = row_of(&s, &fresh, repo).await;
        assert_eq!((row.tags, row.size), (1, 7));
        let rows = tag_rows(&s, &Writes::Awaited, &fresh.cache, repo)
            .await
            .expect("rows");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].summary.size, 7);
        assert!(
            repo_stats(&s, &Writes::Awaited, &ui, "no/such")
                .await
                .expect("row")
                .is_none(),
            "no row for a repository that is not there"
        );
    }
}
