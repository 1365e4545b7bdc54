//! Eviction beyond a mirror's `max_size`: the least recently used manifests of its
//! repositories go first (used: last pulled, from the pull record, or else cached), with
//! the links to the blobs only they referenced; then garbage collection reclaims the
//! blobs no repository links any more. A repository with a blob fill in flight is left
//! alone this round, so a pull in progress never loses what it is filling.
//!
//! A mirror's size is what its cached manifests need: their own bytes and every distinct
//! blob they reference that is stored (each counted once however many images share it).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use berth_storage::{Digest, Storage, StorageError};

use super::{Mirror, Mirrors};
use crate::manifest::Reference;

/// One cached manifest and what it costs.
struct Cached {
    repository: String,
    digest: Digest,
    used: SystemTime,
    bytes: u64,
    blobs: Vec<Digest>,
}

/// What one eviction pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Evicted {
    pub manifests: usize,
    /// Bytes the mirrors' manifests and blobs stop needing (reclaimed by the GC run).
    pub bytes: u64,
}

impl Mirrors {
    /// Bring every mirror with a `max_size` under it; if anything was evicted, collect
    /// garbage (with `grace`) so the bytes go too.
    pub async fn evict(&self, s: &dyn Storage, grace: Duration) -> Result<Evicted, StorageError> {
        let mut done = Evicted::default();
        let repositories = s.repositories().await?;
        for mirror in &self.list {
            let Some(max) = mirror.max_size else {
                continue;
            };
            let names: Vec<&String> = repositories
                .iter()
                .filter(|r| mirror.upstream_name(r).is_some())
                .collect();
            let pass = self.evict_mirror(s, mirror, &names, max).await?;
            done.manifests += pass.manifests;
            done.bytes += pass.bytes;
        }
        if done.manifests > 0 {
            let report = s.collect_garbage(grace, false).await?;
            tracing::info!(
                manifests = done.manifests,
                bytes = done.bytes,
                blobs_removed = report.blobs_removed,
                bytes_freed = report.bytes_freed,
                "mirror: evicted beyond max_size"
            );
        }
        Ok(done)
    }

    async fn evict_mirror(
        &self,
        s: &dyn Storage,
        mirror: &Mirror,
        names: &[&String],
        max: u64,
    ) -> Result<Evicted, StorageError> {
        let mut cached = Vec::new();
        for name in names {
            cached.extend(cached_manifests(s, name).await?);
        }
        // How many cached manifests use each blob, per repository and in all.
        let mut per_repository: HashMap<(&str, &Digest), usize> = HashMap::new();
        let mut users: HashMap<&Digest, usize> = HashMap::new();
        for c in &cached {
            for blob in &c.blobs {
                *per_repository.entry((&c.repository, blob)).or_default() += 1;
                *users.entry(blob).or_default() += 1;
            }
        }
        let mut sizes: HashMap<&Digest, u64> = HashMap::new();
        for blob in users.keys() {
            sizes.insert(blob, s.blob_size(blob).await?.unwrap_or(0));
        }
        let mut total: u64 =
            cached.iter().map(|c| c.bytes).sum::<u64>() + sizes.values().sum::<u64>();
        let mut done = Evicted::default();
        if total <= max {
            return Ok(done);
        }
        let busy: HashSet<String> = self.fills.repositories_filling();
        let mut order: Vec<&Cached> = cached.iter().collect();
        order.sort_by_key(|c| c.used);
        for c in order {
            if total <= max {
                break;
            }
            if busy.contains(&c.repository) {
                continue;
            }
            if !s.manifest_delete(&c.repository, &c.digest).await? {
                continue; // gone meanwhile
            }
            total = total.saturating_sub(c.bytes);
            done.bytes += c.bytes;
            for blob in &c.blobs {
                if let Some(n) = per_repository.get_mut(&(c.repository.as_str(), blob)) {
                    *n -= 1;
                    if *n == 0 {
                        s.unlink_blob(&c.repository, blob).await?;
                    }
                }
                if let Some(n) = users.get_mut(blob) {
                    *n -= 1;
                    if *n == 0 {
                        let size = sizes.get(blob).copied().unwrap_or(0);
                        total = total.saturating_sub(size);
                        done.bytes += size;
                    }
                }
            }
            s.forget_pulls(&c.repository, std::slice::from_ref(&c.digest))
                .await?;
            mirror.forget_tags_of(&c.repository, &c.digest);
            tracing::info!(repository = %c.repository, digest = %c.digest, "mirror: evicted (least recently used)");
            done.manifests += 1;
        }
        Ok(done)
    }
}

/// The repository's cached manifests, each with when it was last used and what it needs.
async fn cached_manifests(s: &dyn Storage, name: &str) -> Result<Vec<Cached>, StorageError> {
    let pulls = s.pulls(name).await?;
    let mut out = Vec::new();
    for record in s.manifest_records(name).await? {
        let Some((meta, bytes)) = s.manifest_get(name, &record.digest).await? else {
            continue;
        };
        let blobs = match crate::manifest::parse(&bytes, Some(&meta.media_type)) {
            Ok(parsed) => parsed
                .references
                .into_iter()
                .filter_map(|r| match r {
                    Reference::Blob(d) => Some(d),
                    Reference::Manifest(_) => None,
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let pulled = pulls.get(&record.digest).copied();
        out.push(Cached {
            repository: name.to_string(),
            used: pulled.map_or(record.pushed, |p| p.max(record.pushed)),
            bytes: bytes.len() as u64,
            blobs,
            digest: record.digest,
        });
    }
    Ok(out)
}

impl Mirror {
    /// An evicted manifest's tags are no longer validated (they are gone with it).
    fn forget_tags_of(&self, name: &str, digest: &Digest) {
        let mut checked = self.checked.lock().unwrap_or_else(|e| e.into_inner());
        checked.retain(|(repository, _), (d, _)| !(repository == name && d == digest));
    }
}
