//! Sweep: choose the blobs nothing marked, look at the links once more,
//! delete the blobs still unlinked (with their data objects), then the data
//! objects no blob points at. Each step runs bucket by bucket.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{FutureExt, StreamExt};

use super::{
    blob_bucket, blob_prefixes, nanos, repository_prefixes, BlobBytes, Collection, GcStore, Stored,
    BLOB_BUCKETS, DATA_BUCKETS,
};
use crate::layout::{BLOBS, DATA};
use crate::{Digest, Result};

/// A blob chosen for deletion, as spilled:
/// `digest \t size \t data key or - \t key`.
struct Candidate {
    digest: Digest,
    size: u64,
    elsewhere: Option<String>,
    key: String,
}

impl Candidate {
    fn line(&self) -> String {
        let data = self.elsewhere.as_deref().unwrap_or("-");
        format!("{}\t{}\t{data}\t{}", self.digest, self.size, self.key)
    }

    fn parse(line: &str) -> Option<Candidate> {
        let mut parts = line.splitn(4, '\t');
        let digest = parts.next()?.parse().ok()?;
        let size = parts.next()?.parse().ok()?;
        let elsewhere = match parts.next()? {
            "-" => None,
            key => Some(key.to_string()),
        };
        let key = parts.next()?.to_string();
        Some(Candidate {
            digest,
            size,
            elsewhere,
            key,
        })
    }
}

/// The data bucket of a data key: the first hex digit of the upload id.
fn data_bucket(key: &str) -> usize {
    key.strip_prefix(DATA)
        .and_then(|id| id.get(..1))
        .and_then(|c| usize::from_str_radix(c, 16).ok())
        .unwrap_or(0)
        % DATA_BUCKETS
}

impl<S: GcStore + ?Sized> Collection<'_, S> {
    /// The blobs nothing marked, past the grace period, to the candidate
    /// spill. Returns how many.
    pub(super) async fn choose_blobs(&self) -> Result<u64> {
        let algorithms = self.store.folders(BLOBS).await?;
        let chosen = AtomicU64::new(0);
        self.all_of(
            (0..BLOB_BUCKETS)
                .map(|b| self.choose_in(b, &algorithms, &chosen).boxed())
                .collect(),
        )
        .await?;
        Ok(chosen.load(Ordering::Relaxed))
    }

    async fn choose_in(
        &self,
        bucket: usize,
        algorithms: &[String],
        chosen: &AtomicU64,
    ) -> Result<()> {
        let live: HashSet<String> = self.spills.live.read(bucket)?.into_iter().collect();
        for algorithm in algorithms {
            for prefix in blob_prefixes(self.layout, algorithm, bucket) {
                let mut pages = self.store.list_prefix(&prefix);
                while let Some(page) = pages.next().await {
                    for (blob, _) in page? {
                        if self.choose(&blob, &live).await? {
                            chosen.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        drop(live);
        self.spills.live.discard(bucket);
        Ok(())
    }

    /// Spill `blob` as a candidate unless it stays (its data object is then
    /// pointed at). Async only for S3 pointers (see [`GcStore::blob_bytes_of`]).
    async fn choose(&self, blob: &Stored, live: &HashSet<String>) -> Result<bool> {
        {
            let Some(digest) = self.layout.parse_blob(&blob.key) else {
                return Ok(false);
            };
            let elsewhere = match self.store.blob_bytes_of(blob).await? {
                BlobBytes::Inline => None,
                BlobBytes::At { key, size } => Some((key, size)),
                BlobBytes::Gone => return Ok(false),
            };
            if live.contains(&digest.to_string()) || blob.modified >= self.cutoff {
                if let Some((key, _)) = elsewhere {
                    self.spills.pointed.push(data_bucket(&key), &key)?;
                }
                return Ok(false);
            }
            let size = elsewhere.as_ref().map_or(blob.size, |(_, size)| *size);
            let candidate = Candidate {
                digest,
                size,
                elsewhere: elsewhere.map(|(key, _)| key),
                key: blob.key.clone(),
            };
            let bucket = blob_bucket(&candidate.digest);
            self.spills.candidates.push(bucket, &candidate.line())?;
            Ok(true)
        }
    }

    /// Another replica may have linked a candidate since the mark (this
    /// process's writes are excluded by the caller's lock, other processes'
    /// are not): list the links once more, right before deleting.
    pub(super) async fn list_links_again(&self) -> Result<()> {
        let prefixes = repository_prefixes(self.store).await?;
        self.all_of(
            (0..prefixes.len())
                .map(|i| self.relist_under(&prefixes[i]).boxed())
                .collect(),
        )
        .await
    }

    async fn relist_under(&self, prefix: &str) -> Result<()> {
        let mut pages = self.store.list_prefix(prefix);
        while let Some(page) = pages.next().await {
            for (item, _) in page? {
                let Some(link) = self.layout.parse_link(&item.key) else {
                    continue;
                };
                let line = format!("{}\t{}\t{}", link.digest, nanos(item.modified), item.key);
                self.spills
                    .relinked
                    .push(blob_bucket(&link.digest), &line)?;
            }
        }
        Ok(())
    }

    /// Delete the candidates no repository links to now, with their bytes.
    pub(super) async fn sweep_blobs(&self) -> Result<()> {
        self.all_of(
            (0..BLOB_BUCKETS)
                .map(|b| self.sweep_blobs_in(b).boxed())
                .collect(),
        )
        .await?;
        self.flush().await
    }

    async fn sweep_blobs_in(&self, bucket: usize) -> Result<()> {
        let candidates = self.spills.candidates.read(bucket)?;
        if candidates.is_empty() {
            return Ok(());
        }
        // Links this collection removed (or, dry, would remove) do not count.
        let swept: HashSet<String> = self.spills.swept.read(bucket)?.into_iter().collect();
        let relinked: HashSet<String> = self
            .spills
            .relinked
            .read(bucket)?
            .into_iter()
            .filter_map(|line| {
                let (digest, rest) = line.split_once('\t')?;
                (!swept.contains(rest)).then(|| digest.to_string())
            })
            .collect();
        drop(swept);
        let mut doomed = Vec::new();
        for c in candidates.iter().filter_map(|l| Candidate::parse(l)) {
            if relinked.contains(&c.digest.to_string()) {
                if let Some(key) = &c.elsewhere {
                    self.spills.pointed.push(data_bucket(key), key)?;
                }
                continue;
            }
            self.blobs_removed.fetch_add(1, Ordering::Relaxed);
            self.bytes_freed.fetch_add(c.size, Ordering::Relaxed);
            doomed.push((c.key, Some(c.digest)));
            doomed.extend(c.elsewhere.map(|key| (key, None)));
        }
        self.spills.candidates.discard(bucket);
        self.spills.relinked.discard(bucket);
        self.doom(doomed).await
    }

    /// Data objects no pointer names: re-pushes of a big blob, or uploads
    /// that completed but died before writing their pointer. Only where the
    /// layout keeps them (a folder of the filesystem root is not ours to
    /// sweep).
    pub(super) async fn sweep_unpointed_data(&self) -> Result<()> {
        if self.dry_run || !self.layout.has_data_objects() {
            return Ok(());
        }
        self.all_of(
            (0..DATA_BUCKETS)
                .map(|b| self.sweep_data_in(b).boxed())
                .collect(),
        )
        .await?;
        self.flush().await
    }

    async fn sweep_data_in(&self, bucket: usize) -> Result<()> {
        let pointed: HashSet<String> = self.spills.pointed.read(bucket)?.into_iter().collect();
        let prefix = format!("{DATA}{bucket:x}");
        let mut doomed = Vec::new();
        let mut pages = self.store.list_prefix(&prefix);
        while let Some(page) = pages.next().await {
            for (item, _) in page? {
                if !pointed.contains(&item.key) && item.modified < self.cutoff {
                    doomed.push((item.key, None));
                }
            }
        }
        self.spills.pointed.discard(bucket);
        self.doom(doomed).await
    }
}
