//! Garbage collection, written once: mark and sweep over the keys of the
//! [`Layout`], through the few primitives every backend offers ([`GcStore`]:
//! list, read, delete).
//!
//! Mark: every manifest of every repository is live, with the blobs its
//! recorded references name (a manifest recorded without references keeps
//! every link of its repository). Sweep: repository links to blobs no
//! manifest of the repository needs, then blobs no repository links to.
//!
//! Safety, against pushes in flight and other replicas:
//! * the caller holds its backend's exclusion against writes of this
//!   process that link blobs, for the whole collection;
//! * links and blobs written or touched within the grace period are kept,
//!   so a push in progress (layers uploaded, manifest not yet) loses nothing;
//! * right before blobs are deleted, the links are listed once more: a blob
//!   another process linked since the mark is kept.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;

use crate::layout::{Layout, LinkKey, LinkKind, BLOBS, DATA, REPOSITORIES};
use crate::{Digest, GcReport, ManifestMeta, Result, StorageError};

/// An object found by [`GcStore::list`].
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// Key relative to the storage root, as the [`Layout`] spells it.
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// Where a stored blob's bytes are.
pub(crate) enum BlobBytes {
    /// In the blob's own object.
    Inline,
    /// In another object (an S3 pointer to `data/<upload id>`).
    At { key: String, size: u64 },
    /// The blob went since it was listed.
    Gone,
}

/// What garbage collection needs from a backend.
#[async_trait]
pub(crate) trait GcStore: Send + Sync {
    fn layout(&self) -> Layout;
    /// Every object whose key starts with `prefix` (a folder, ending in
    /// `/`); none when there is no such folder.
    async fn list(&self, prefix: &str) -> Result<Vec<Stored>>;
    /// An object's bytes; `None` when it is gone.
    async fn read(&self, key: &str) -> Result<Option<Bytes>>;
    /// Delete an object; one already gone is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Where the bytes of a blob listed at `blob` are. Backends that keep
    /// every blob in its own object need not say.
    async fn blob_bytes_of(&self, _blob: &Stored) -> Result<BlobBytes> {
        Ok(BlobBytes::Inline)
    }
    /// A blob was deleted: drop whatever is cached about it.
    fn forget_blob(&self, _digest: &Digest) {}
}

/// A blob chosen for deletion by the mark.
struct Candidate {
    digest: Digest,
    blob: Stored,
    elsewhere: Option<(String, u64)>,
}

/// One collection's state, phase to phase.
struct Collection<'a, S: GcStore + ?Sized> {
    store: &'a S,
    layout: Layout,
    cutoff: SystemTime,
    dry_run: bool,
    report: GcReport,
    /// Digests that stay: manifests, needed or young links.
    live: HashSet<Digest>,
    /// Links removed (or, in a dry run, to be removed) by this collection,
    /// by key and time, so that looking again does not count them.
    swept: HashSet<(String, SystemTime)>,
    /// Data objects a kept blob points at.
    pointed: HashSet<String>,
}

/// Collect garbage older than `grace`. The caller holds its exclusion
/// against linking writes. `after_mark` runs between choosing the blobs to
/// delete and looking at the links once more (a no-op but for tests, which
/// link a candidate from another replica there).
pub(crate) async fn collect<S: GcStore + ?Sized>(
    store: &S,
    grace: Duration,
    dry_run: bool,
    after_mark: impl Future<Output = ()>,
) -> Result<GcReport> {
    let mut gc = Collection {
        store,
        layout: store.layout(),
        cutoff: SystemTime::now().checked_sub(grace).unwrap_or(UNIX_EPOCH),
        dry_run,
        report: GcReport::default(),
        live: HashSet::new(),
        swept: HashSet::new(),
        pointed: HashSet::new(),
    };
    let links = gc.links().await?;
    let needed = gc.mark_manifests(&links).await?;
    gc.sweep_links(&links, &needed).await?;
    let mut candidates = gc.blob_candidates().await?;
    after_mark.await;
    gc.spare_relinked(&mut candidates).await?;
    gc.sweep_blobs(candidates).await?;
    gc.sweep_unpointed_data().await?;
    Ok(gc.report)
}

/// Per repository, the blobs its manifests need; `None` when one of them
/// was recorded without references (then every link stays).
type Needed = HashMap<String, Option<HashSet<Digest>>>;

impl<S: GcStore + ?Sized> Collection<'_, S> {
    /// Every repository link, with its listing.
    async fn links(&self) -> Result<Vec<(LinkKey, Stored)>> {
        Ok(self
            .store
            .list(REPOSITORIES)
            .await?
            .into_iter()
            .filter_map(|item| Some((self.layout.parse_link(&item.key)?, item)))
            .collect())
    }

    /// Mark: every manifest is live, and what it references is needed.
    async fn mark_manifests(&mut self, links: &[(LinkKey, Stored)]) -> Result<Needed> {
        let mut needed = Needed::new();
        for (link, item) in links {
            if link.kind != LinkKind::Manifest {
                continue;
            }
            let entry = needed
                .entry(link.repository.clone())
                .or_insert_with(|| Some(HashSet::new()));
            let Some(raw) = self.store.read(&item.key).await? else {
                continue; // deleted meanwhile
            };
            let meta: ManifestMeta = serde_json::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("{}: {e}", item.key)))?;
            match (entry.as_mut(), meta.references) {
                (Some(set), Some(refs)) => set.extend(refs),
                _ => *entry = None, // unknown references: keep every link
            }
            self.live.insert(link.digest.clone());
        }
        Ok(needed)
    }

    /// Sweep the layer links nobody needs, once past the grace period.
    async fn sweep_links(&mut self, links: &[(LinkKey, Stored)], needed: &Needed) -> Result<()> {
        for (link, item) in links {
            if link.kind != LinkKind::Layer {
                continue;
            }
            let needed_here = match needed.get(&link.repository) {
                Some(Some(set)) => set.contains(&link.digest),
                Some(None) => true,
                None => false,
            };
            if needed_here || item.modified >= self.cutoff {
                self.live.insert(link.digest.clone());
                continue;
            }
            self.swept.insert((item.key.clone(), item.modified));
            if !self.dry_run {
                self.store.delete(&item.key).await?;
            }
            self.report.links_removed += 1;
        }
        Ok(())
    }

    /// The blobs nothing marked, past the grace period.
    async fn blob_candidates(&mut self) -> Result<Vec<Candidate>> {
        let mut candidates = Vec::new();
        for blob in self.store.list(BLOBS).await? {
            let Some(digest) = self.layout.parse_blob(&blob.key) else {
                continue;
            };
            let elsewhere = match self.store.blob_bytes_of(&blob).await? {
                BlobBytes::Inline => None,
                BlobBytes::At { key, size } => Some((key, size)),
                BlobBytes::Gone => continue,
            };
            if self.live.contains(&digest) || blob.modified >= self.cutoff {
                if let Some((key, _)) = elsewhere {
                    self.pointed.insert(key);
                }
                continue;
            }
            candidates.push(Candidate {
                digest,
                blob,
                elsewhere,
            });
        }
        Ok(candidates)
    }

    /// Another replica may have linked a candidate since the mark (this
    /// process's writes are excluded by the caller's lock, other processes'
    /// are not): look at the links once more, right before deleting.
    async fn spare_relinked(&mut self, candidates: &mut Vec<Candidate>) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let linked_now: HashSet<Digest> = self
            .links()
            .await?
            .into_iter()
            .filter(|(_, item)| !self.swept.contains(&(item.key.clone(), item.modified)))
            .map(|(link, _)| link.digest)
            .collect();
        let pointed = &mut self.pointed;
        candidates.retain(|c| {
            let keep = linked_now.contains(&c.digest);
            if let (true, Some((key, _))) = (keep, &c.elsewhere) {
                pointed.insert(key.clone());
            }
            !keep
        });
        Ok(())
    }

    /// Delete the blobs no repository links to, with their bytes.
    async fn sweep_blobs(&mut self, candidates: Vec<Candidate>) -> Result<()> {
        for c in candidates {
            let size = c.elsewhere.as_ref().map(|(_, s)| *s).unwrap_or(c.blob.size);
            if !self.dry_run {
                self.store.delete(&c.blob.key).await?;
                if let Some((key, _)) = &c.elsewhere {
                    self.store.delete(key).await?;
                }
                self.store.forget_blob(&c.digest);
            }
            self.report.blobs_removed += 1;
            self.report.bytes_freed += size;
        }
        Ok(())
    }

    /// Data objects no pointer names: re-pushes of a big blob, or uploads
    /// that completed but died before writing their pointer. Only where the
    /// layout keeps them (a folder of the filesystem root is not ours to
    /// sweep).
    async fn sweep_unpointed_data(&mut self) -> Result<()> {
        if self.dry_run || !self.layout.has_data_objects() {
            return Ok(());
        }
        for item in self.store.list(DATA).await? {
            if !self.pointed.contains(&item.key) && item.modified < self.cutoff {
                self.store.delete(&item.key).await?;
            }
        }
        Ok(())
    }
}

/// Checks every backend's collector runs through the same primitives.
#[cfg(test)]
pub(crate) mod scenarios {
    use std::time::Duration;

    use super::{collect, GcStore};
    use crate::testsuite::stream_of;
    use crate::{Digest, Storage};

    async fn push_then_unlink(storage: &dyn Storage, data: &[u8]) -> Digest {
        let digest = Digest::sha256_of(data);
        let session = storage.upload_create("gc/a").await.expect("create");
        storage
            .upload_complete("gc/a", &session.id, &digest, Some(stream_of(data)))
            .await
            .expect("push");
        assert!(storage.unlink_blob("gc/a", &digest).await.expect("unlink"));
        digest
    }

    /// A blob no repository links to when the collection marks, linked
    /// again before the sweep (as another replica would, outside this
    /// process's lock), is kept: the links are listed once more right
    /// before blobs are deleted. An orphan beside it goes.
    pub(crate) async fn a_blob_relinked_during_a_collection_is_kept(
        files: &dyn GcStore,
        storage: &dyn Storage,
    ) {
        let kept = push_then_unlink(storage, b"relinked during the collection").await;
        let gone = push_then_unlink(storage, b"garbage beside it").await;
        // File times may be coarse: let both age past a zero grace period.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let relink = async {
            storage
                .link_blob("gc/b", &kept)
                .await
                .expect("link from another replica");
        };
        let report = collect(files, Duration::ZERO, false, relink)
            .await
            .expect("collect");
        assert_eq!(report.blobs_removed, 1, "{report:?}");
        assert!(storage.blob_linked("gc/b", &kept).await.expect("linked"));
        assert!(storage.blob_size(&gone).await.expect("size").is_none());
    }
}
