//! Garbage collection, written once: mark and sweep over the keys of the
//! [`Layout`], through the few primitives every backend offers ([`GcStore`]:
//! list by prefix, read, write, delete in batches).
//!
//! Mark: every manifest of every repository is live, with the blobs its
//! recorded references name (a manifest recorded without references keeps
//! every link of its repository). Sweep: repository links to blobs no
//! manifest of the repository needs, then blobs no repository links to.
//!
//! Built for buckets of millions of objects:
//! * listings run in parallel, one key prefix each (`repositories/a`...,
//!   `blobs/sha256/<first byte>`...), and are consumed a page at a time;
//! * what the listings teach goes to local spill files split into buckets
//!   ([`spill`]) and is read back one bucket at a time, so memory holds one
//!   bucket's worth, never a set of every key;
//! * the references of each manifest are read once: the mark log
//!   (`gc/marks/<n>`, see [`mark`]) keeps them by manifest link and version
//!   (ETag, or size and time), and a later run reads only links that changed;
//! * deletes go in batches (S3 DeleteObjects, 1000 keys a request).
//!
//! Safety, against pushes in flight and other replicas:
//! * the caller holds its backend's exclusion against writes of this
//!   process that link blobs, for the whole collection;
//! * links and blobs written or touched within the grace period are kept,
//!   so a push in progress (layers uploaded, manifest not yet) loses nothing;
//! * right before blobs are deleted, the links are listed once more: a blob
//!   another process linked since the mark is kept.

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt};
use futures::stream::{BoxStream, StreamExt};

use crate::layout::{Layout, BLOBS};
use crate::{Digest, GcReport, Result};

mod mark;
mod spill;
mod sweep;

use spill::{Spill, SpillDir};

/// Blob buckets: the top six bits of a digest's first byte, which is the
/// first base64url character of an S3 blob key and a quarter of the
/// filesystem's fan-out folders, so each bucket is a few listing prefixes.
const BLOB_BUCKETS: usize = 64;
/// Repository buckets (by a hash of the name): one repository's links and
/// needs meet in one bucket.
const REPO_BUCKETS: usize = 64;
/// Mark log objects (by a hash of the manifest link's key).
const MARK_BUCKETS: usize = 16;
/// Data object buckets (S3): the first hex digit of the upload id.
const DATA_BUCKETS: usize = 16;
/// Listings, bucket sweeps and batched deletes in flight at once.
const PARALLEL: usize = 8;
/// Keys per batched delete (S3 DeleteObjects takes at most 1000).
pub(crate) const DELETE_BATCH: usize = 1000;

/// An object found by [`GcStore::list`].
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    /// Key relative to the storage root, as the [`Layout`] spells it.
    pub key: String,
    pub size: u64,
    pub modified: SystemTime,
}

/// A listed object and its version: an ETag where the store lists one, else
/// its size and time. Equal versions mean equal content.
pub(crate) type Versioned = (Stored, String);

/// Listing pages.
pub(crate) type Pages<'a> = BoxStream<'a, Result<Vec<Versioned>>>;

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
    /// Every object whose key starts with `prefix`.
    async fn list(&self, prefix: &str) -> Result<Vec<Stored>>;
    /// Every object whose key starts with `prefix` (any string, not only a
    /// folder), in pages. Stores that list big folders override this to
    /// stream; this default takes [`GcStore::list`] as one page.
    fn list_prefix<'a>(&'a self, prefix: &'a str) -> Pages<'a> {
        futures::stream::once(async move {
            let mut items = self.list(prefix).await?;
            items.retain(|i| i.key.starts_with(prefix));
            Ok(items.into_iter().map(versioned).collect())
        })
        .boxed()
    }
    /// The names of the folders right below `folder` (ending in `/`).
    async fn folders(&self, folder: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .list(folder)
            .await?
            .into_iter()
            .filter_map(|i| {
                let rest = i.key.strip_prefix(folder)?;
                Some(rest.split_once('/')?.0.to_string())
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
    /// An object's bytes; `None` when it is gone.
    async fn read(&self, key: &str) -> Result<Option<Bytes>>;
    /// Store an object of the collector's own (the mark log). Stores that
    /// do not keep it lose only the speed-up.
    async fn write(&self, _key: &str, _bytes: Bytes) -> Result<()> {
        Ok(())
    }
    /// Delete an object; one already gone is not an error.
    async fn delete(&self, key: &str) -> Result<()>;
    /// Delete up to [`DELETE_BATCH`] objects, in one request where the store
    /// can; ones already gone are not an error.
    async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        for key in keys {
            self.delete(&key).await?;
        }
        Ok(())
    }
    /// Where the bytes of a blob listed at `blob` are. Backends that keep
    /// every blob in its own object need not say.
    async fn blob_bytes_of(&self, _blob: &Stored) -> Result<BlobBytes> {
        Ok(BlobBytes::Inline)
    }
    /// A blob was deleted: drop whatever is cached about it.
    fn forget_blob(&self, _digest: &Digest) {}
    /// Where spill files go.
    fn spill_parent(&self) -> PathBuf {
        std::env::temp_dir()
    }
}

/// An object with the version its size and time give.
pub(crate) fn versioned(item: Stored) -> Versioned {
    let version = format!("{}@{}", item.size, nanos(item.modified));
    (item, version)
}

/// A time as nanoseconds since the epoch (how spill files write it).
pub(crate) fn nanos(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// The blob bucket of a digest (see [`BLOB_BUCKETS`]).
fn blob_bucket(d: &Digest) -> usize {
    let first = d.hex().get(..2).unwrap_or("00");
    usize::from(u8::from_str_radix(first, 16).unwrap_or(0) >> 2)
}

/// The listing prefixes that hold the blobs of one bucket and algorithm.
fn blob_prefixes(layout: Layout, algorithm: &str, bucket: usize) -> Vec<String> {
    const BASE64URL: &[u8; 64] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    match layout {
        Layout::Fs => (0..4)
            .map(|low| format!("{BLOBS}{algorithm}/{:02x}/", bucket * 4 + low))
            .collect(),
        Layout::S3 => vec![format!(
            "{BLOBS}{algorithm}/{}",
            BASE64URL[bucket % 64] as char
        )],
    }
}

/// The listing prefixes that hold every repository: one per first
/// character in use (names start with `[a-z0-9]`), so a small registry
/// costs a few listings and a big one spreads over up to 36.
async fn repository_prefixes<S: GcStore + ?Sized>(store: &S) -> Result<Vec<String>> {
    let mut firsts: Vec<char> = store
        .folders(crate::layout::REPOSITORIES)
        .await?
        .iter()
        .filter_map(|name| name.chars().next())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect();
    firsts.sort_unstable();
    firsts.dedup();
    Ok(firsts
        .into_iter()
        .map(|c| format!("{}{c}", crate::layout::REPOSITORIES))
        .collect())
}

/// What one collection spills, by kind.
struct Spills {
    /// Manifest links, by mark bucket: `repo \t digest \t version \t key`.
    manifests: Spill,
    /// By repository bucket: `L \t repo \t digest \t nanos \t key` (a layer
    /// link), `N \t repo \t digest` (needed), `A \t repo` (keeps all).
    repos: Spill,
    /// Digests that stay, by blob bucket.
    live: Spill,
    /// Links this collection removed, by blob bucket: `nanos \t key`.
    swept: Spill,
    /// Blobs chosen for deletion, by blob bucket (see [`sweep`]).
    candidates: Spill,
    /// Links listed again before the sweep, by blob bucket: `digest \t nanos \t key`.
    relinked: Spill,
    /// Data objects a kept blob points at, by data bucket.
    pointed: Spill,
}

/// One collection's state, phase to phase.
struct Collection<'a, S: GcStore + ?Sized> {
    store: &'a S,
    layout: Layout,
    cutoff: SystemTime,
    dry_run: bool,
    spills: Spills,
    links_removed: AtomicU64,
    blobs_removed: AtomicU64,
    bytes_freed: AtomicU64,
    /// Keys waiting for a full batch.
    doomed: std::sync::Mutex<Vec<Doomed>>,
}

/// A key to delete, and the blob it held (whose cached facts then go).
type Doomed = (String, Option<Digest>);

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
    let dir = SpillDir::new(&store.spill_parent())?;
    let gc = Collection {
        store,
        layout: store.layout(),
        cutoff: SystemTime::now().checked_sub(grace).unwrap_or(UNIX_EPOCH),
        dry_run,
        spills: Spills {
            manifests: dir.buckets("manifests", MARK_BUCKETS),
            repos: dir.buckets("repos", REPO_BUCKETS),
            live: dir.buckets("live", BLOB_BUCKETS),
            swept: dir.buckets("swept", BLOB_BUCKETS),
            candidates: dir.buckets("candidates", BLOB_BUCKETS),
            relinked: dir.buckets("relinked", BLOB_BUCKETS),
            pointed: dir.buckets("pointed", DATA_BUCKETS),
        },
        links_removed: AtomicU64::new(0),
        blobs_removed: AtomicU64::new(0),
        bytes_freed: AtomicU64::new(0),
        doomed: Default::default(),
    };
    gc.list_links().await?;
    gc.resolve_references().await?;
    gc.sweep_links().await?;
    let candidates = gc.choose_blobs().await?;
    after_mark.await;
    if candidates > 0 {
        gc.list_links_again().await?;
        gc.sweep_blobs().await?;
    }
    gc.sweep_unpointed_data().await?;
    Ok(GcReport {
        links_removed: gc.links_removed.load(Ordering::Relaxed),
        blobs_removed: gc.blobs_removed.load(Ordering::Relaxed),
        bytes_freed: gc.bytes_freed.load(Ordering::Relaxed),
    })
}

impl<S: GcStore + ?Sized> Collection<'_, S> {
    /// Run every piece of work, [`PARALLEL`] at once (boxed, so the
    /// collection's future stays `Send` for every lifetime it borrows).
    async fn all_of(&self, work: Vec<BoxFuture<'_, Result<()>>>) -> Result<()> {
        let mut running = futures::stream::iter(work).buffer_unordered(PARALLEL);
        while let Some(done) = running.next().await {
            done?;
        }
        Ok(())
    }

    /// Delete these keys (a blob's with its digest, whose cached facts go
    /// once it is deleted) in full batches as they fill; nothing in a dry run.
    async fn doom(&self, entries: Vec<Doomed>) -> Result<()> {
        if self.dry_run || entries.is_empty() {
            return Ok(());
        }
        let full = {
            let mut doomed = self.doomed.lock().unwrap_or_else(|e| e.into_inner());
            doomed.extend(entries);
            let mut full = Vec::new();
            while doomed.len() >= DELETE_BATCH {
                full.push(doomed.drain(..DELETE_BATCH).collect());
            }
            full
        };
        self.delete_batches(full).await
    }

    /// Delete what is left of the doomed keys (the end of a phase).
    async fn flush(&self) -> Result<()> {
        let rest: Vec<Doomed> =
            std::mem::take(&mut *self.doomed.lock().unwrap_or_else(|e| e.into_inner()));
        if rest.is_empty() {
            return Ok(());
        }
        self.delete_batches(vec![rest]).await
    }

    async fn delete_batches(&self, batches: Vec<Vec<Doomed>>) -> Result<()> {
        let work = batches
            .into_iter()
            .map(|batch| {
                async move {
                    let keys = batch.iter().map(|(key, _)| key.clone()).collect();
                    self.store.delete_many(keys).await?;
                    for digest in batch.iter().filter_map(|(_, d)| d.as_ref()) {
                        self.store.forget_blob(digest);
                    }
                    Ok(())
                }
                .boxed()
            })
            .collect();
        self.all_of(work).await
    }
}

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

#[cfg(test)]
mod tests;
