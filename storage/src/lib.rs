//! Berth's storage: content-addressed blobs shared by all repositories,
//! per-repository links, manifests, tags, referrers and upload sessions.
//!
//! One trait ([`Storage`]), several backends, one shared test suite
//! ([`testsuite`]) that every backend must pass.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};

pub mod digest;
pub mod fs;
mod gc;
mod layout;
pub mod memory;
pub mod names;
pub mod outbox;
mod pages;
pub mod records;
pub mod s3;
pub mod s3_test_server;
pub mod testsuite;
mod upload_locks;

pub use berth_oci::ByteStream;
pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use fs::FsStorage;
pub use memory::MemoryStorage;
pub use pages::NamePage;
pub use records::{ManifestRecord, PullTimes, SummaryPart, TagRecord};
pub use s3::{S3Options, S3Storage};

/// Referrer descriptors, read from storage as the stream is polled.
pub type DescriptorStream = Pin<Box<dyn Stream<Item = Result<Descriptor>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("upload session unknown")]
    UploadUnknown,
    #[error("chunk out of order: the upload is at offset {offset}")]
    RangeMismatch { offset: u64 },
    #[error("requested range not satisfiable for a blob of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("provided digest {expected} does not match the content ({actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("request body ended early: {0}")]
    BodyInterrupted(io::Error),
    #[error("storage failure: {0}")]
    Io(#[from] io::Error),
    /// The storage service cannot be reached or failed for now (e.g. S3
    /// down or answering 5xx); the same request may succeed later.
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A manifest names a blob or manifest the repository does not hold
    /// (checked where it is linked, so no collection can take it in between).
    #[error("{0} is not in the repository")]
    ReferenceUnknown(Digest),
}

impl StorageError {
    /// The storage ran out of space (or quota): the operator must free some.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StorageError::Io(e) => {
                e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(122)
                // EDQUOT on Linux
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// An upload in progress: where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: String,
    pub repository: String,
    /// Bytes received and safely stored so far.
    pub offset: u64,
}

/// A blob being read back, with its total size and the byte range served.
pub struct BlobRead {
    pub size: u64,
    /// Inclusive range served; `None` means the whole blob.
    pub range: Option<(u64, u64)>,
    pub stream: ByteStream,
}

/// OCI descriptor, as listed by the referrers API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// What storage keeps about a manifest beside its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestMeta {
    pub media_type: String,
    /// The manifest this one refers to (`subject`), for the referrers API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Blobs and child manifests this manifest needs. `None` means unknown
    /// (recorded by an older version), and garbage collection then keeps
    /// every blob of the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub references: Option<Vec<Digest>>,
}

/// What a garbage collection removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Repository links to blobs that no manifest of the repository needs.
    pub links_removed: u64,
    /// Blobs no repository links to any more.
    pub blobs_removed: u64,
    pub bytes_freed: u64,
}

/// Storage for a registry. Repository names, tags, digests and upload ids
/// reaching a backend are already validated (see [`names`], [`Digest`]), but
/// backends still refuse upload ids that are not the ones they issued.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    // --- blobs: content-addressed, shared by all repositories ---

    /// Size of a blob, if the registry holds it (in any repository).
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Read a blob, or an inclusive byte range of it.
    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead>;
    /// Read a small blob (a manifest) whole.
    async fn blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>>;
    /// A URL the client may fetch the blob from directly (e.g. a presigned
    /// S3 URL), for a redirect instead of proxying the bytes. `None` (the
    /// default) means serve it through [`Storage::blob_read`].
    async fn blob_redirect_url(&self, _digest: &Digest) -> Result<Option<String>> {
        Ok(None)
    }

    // --- repository links ---

    /// Whether `repository` may serve this blob (it was pushed or mounted there).
    async fn blob_linked(&self, repository: &str, digest: &Digest) -> Result<bool>;
    /// Make an existing blob part of `repository` (cross-repository mount).
    /// Fails with `BlobUnknown` if the blob is not stored.
    async fn link_blob(&self, repository: &str, digest: &Digest) -> Result<()>;
    /// Remove a blob from a repository. Returns false when it was not there.
    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool>;

    // --- upload sessions: persisted, so they survive restarts ---

    async fn upload_create(&self, repository: &str) -> Result<UploadStatus>;
    async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus>;
    /// Append a chunk. With `start`, the chunk must begin at the current
    /// offset, else `RangeMismatch`. Bytes received before the body broke off
    /// are kept, so the client can resume from the reported offset.
    async fn upload_append(
        &self,
        repository: &str,
        id: &str,
        start: Option<u64>,
        data: ByteStream,
    ) -> Result<UploadStatus>;
    /// Append the last chunk (if any), verify the digest, store the blob and
    /// link it into the repository. On a digest mismatch nothing is stored and
    /// the session is discarded. Returns the blob size.
    async fn upload_complete(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
    ) -> Result<u64> {
        // Nobody listens: the same completion, told to no one.
        let (matched, _) = tokio::sync::oneshot::channel();
        self.upload_complete_notify(repository, id, digest, data, matched)
            .await
    }
    /// [`Storage::upload_complete`] that also tells `matched`, as soon as every byte is in
    /// and matches `digest`, before the blob is made durable and visible (the fsync of a
    /// big file, S3's multipart completion). A caller streaming the same bytes to readers
    /// (the mirror's fill) can then hand them the last byte without waiting for that, and
    /// need not hash the bytes a second time. Storage hashes them itself, exactly as in
    /// `upload_complete`: nothing the caller says is trusted. On a mismatch or any failure
    /// `matched` is dropped unsent. Backends implement this one; `upload_complete` is it
    /// with no one told.
    async fn upload_complete_notify(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64>;
    async fn upload_cancel(&self, repository: &str, id: &str) -> Result<()>;
    /// Drop upload sessions started more than `max_age` ago (abandoned
    /// pushes). Returns how many were removed.
    async fn purge_uploads(&self, max_age: std::time::Duration) -> Result<usize>;

    // --- manifests, tags and referrers ---

    /// Store a manifest (bytes already verified against `digest`), link it
    /// into the repository, record its referrer entry and point `tag` at it.
    async fn manifest_put(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
        meta: &ManifestMeta,
        tag: Option<&str>,
    ) -> Result<()>;
    async fn manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>>;
    /// A manifest's metadata and bytes, if it is in the repository.
    async fn manifest_get(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<(ManifestMeta, Bytes)>> {
        let Some(meta) = self.manifest_meta(repository, digest).await? else {
            return Ok(None);
        };
        Ok(self.blob_bytes(digest).await?.map(|bytes| (meta, bytes)))
    }
    /// Remove a manifest from a repository, with every tag pointing at it
    /// and its referrer entry. Returns false when it was not there.
    async fn manifest_delete(&self, repository: &str, digest: &Digest) -> Result<bool>;
    async fn tag_resolve(&self, repository: &str, tag: &str) -> Result<Option<Digest>>;
    /// Remove a tag only (the manifest stays). Returns false when it was not there.
    async fn tag_delete(&self, repository: &str, tag: &str) -> Result<bool>;
    /// All tags, sorted; `None` when the repository does not exist.
    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>>;
    /// Manifests in `repository` whose `subject` is `subject`, sorted by digest.
    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<Descriptor>>;
    /// The referrers of `subject` whose digest sorts after `after` (all of
    /// them without it), in digest order, for the referrers API to fill one
    /// page and stop. Backends that keep one entry per referrer should
    /// override this to list names and read each entry as the stream is
    /// polled, so a listing holds one descriptor at a time.
    ///
    /// This default reads the whole list with [`Storage::referrers`], which
    /// costs the size of every descriptor (referrers pushed before the
    /// registry capped annotations may carry megabytes each). So that
    /// concurrent requests cannot multiply that cost, only one such whole
    /// list is held in the process at a time, until its stream is dropped.
    async fn referrers_after(
        &self,
        repository: &str,
        subject: &Digest,
        after: Option<&Digest>,
    ) -> Result<DescriptorStream> {
        use futures::StreamExt;
        static WHOLE_LISTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
        let permit = WHOLE_LISTS
            .acquire()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
        let mut all = self.referrers(repository, subject).await?;
        if let Some(after) = after {
            all.retain(|d| &d.digest > after);
        }
        Ok(Box::pin(futures::stream::iter(all).map(move |d| {
            let _held_until_dropped = &permit;
            Ok(d)
        })))
    }
    /// All repositories, sorted.
    async fn repositories(&self) -> Result<Vec<String>>;
    /// One page of the catalog: the repositories sorting after `after`, at
    /// most `limit` (see [`NamePage::of`]). Backends keeping a sorted index
    /// override this so a page does not cost a walk of every repository.
    async fn repositories_after(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<NamePage> {
        Ok(NamePage::of(&self.repositories().await?, after, limit))
    }
    /// Every repository name in the backend's index, sorted, WITHOUT checking
    /// that each still exists: a name removed since may be listed. For a
    /// caller that checks the few names it shows (the web UI's catalog) and
    /// must not pay a check per repository for a list of 100,000.
    async fn repository_names_unchecked(&self) -> Result<Vec<String>> {
        Ok(self.repositories_after(None, None).await?.names)
    }
    /// One page of a repository's tags (see [`NamePage::of`]); `None` when
    /// the repository does not exist. Backends override this to read only
    /// the page from a sorted listing.
    async fn tags_after(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<NamePage>> {
        let all = self.tags(repository).await?;
        Ok(all.map(|all| NamePage::of(&all, after, limit)))
    }

    // --- what retention needs: when things were pushed and pulled ---

    /// Every tag of the repository with the manifest it points at and when it
    /// was last pushed (the tag's own write time: a file's mtime, an S3
    /// object's LastModified). Sorted by tag.
    async fn tag_records(&self, repository: &str) -> Result<Vec<TagRecord>>;
    /// Every manifest of the repository with when it was last pushed (its
    /// link's write time; pushing it again renews it). Sorted by digest.
    async fn manifest_records(&self, repository: &str) -> Result<Vec<ManifestRecord>>;
    /// Merge last-pulled times into the repository's record, the later time
    /// winning, so replicas flushing at once lose nothing but ties.
    async fn record_pulls(&self, repository: &str, pulls: &PullTimes) -> Result<()>;
    /// The repository's last-pulled times by manifest digest.
    async fn pulls(&self, repository: &str) -> Result<PullTimes>;
    /// Drop the pull times of these digests (manifests that are gone), so the
    /// record does not grow with every digest ever pulled.
    async fn forget_pulls(&self, repository: &str, digests: &[Digest]) -> Result<()>;

    // --- what the web UI keeps about each repository (see records::SummaryPart) ---

    /// A stamp of the repository's tags that changes whenever a tag is
    /// pushed (again, too), moved or deleted, by any process sharing the
    /// storage; `None` when the repository does not exist. Cheaper than
    /// [`Storage::tag_records`]: a filesystem reads names, inodes and times
    /// of the tag files (not their content), S3 one listing (keys, ETags).
    async fn tags_stamp(&self, repository: &str) -> Result<Option<String>>;
    /// A stored summary part, as written (`None` when there is none).
    async fn summary_get(&self, repository: &str, part: SummaryPart) -> Result<Option<Bytes>>;
    /// Replace a summary part (whole or not at all; not fsynced on disk, a
    /// lost one is recomputed). Does nothing for a repository that is gone.
    async fn summary_put(&self, repository: &str, part: SummaryPart, bytes: Bytes) -> Result<()>;

    /// Reclaim space: drop repository links to blobs that no manifest of the
    /// repository references, then blobs that no repository links to. Links
    /// and blobs touched within `grace` are kept, so a push in progress (its
    /// layers uploaded, its manifest not yet) loses nothing. Writes that link
    /// blobs are excluded while a collection in the same process runs.
    async fn collect_garbage(&self, grace: std::time::Duration, dry_run: bool) -> Result<GcReport>;

    // --- event outbox (see [`outbox`]): ids are checked with [`outbox::is_outbox_id`] ---

    /// Store (or replace) an outbox record; durable when this returns.
    async fn outbox_put(&self, id: &str, record: Bytes) -> Result<()>;
    async fn outbox_get(&self, id: &str) -> Result<Option<Bytes>>;
    /// Ids of every record, sorted.
    async fn outbox_list(&self) -> Result<Vec<String>>;
    /// Remove a record and its claim.
    async fn outbox_delete(&self, id: &str) -> Result<()>;
    /// Claim a record for delivery by `owner` for `ttl`: true when no one
    /// else holds an unexpired claim (and the claim is now `owner`'s).
    async fn outbox_claim(&self, id: &str, owner: &str, ttl: std::time::Duration) -> Result<bool>;
    /// Give up `owner`'s claim on a record (someone else's is left alone).
    async fn outbox_release(&self, id: &str, owner: &str) -> Result<()>;

    // --- leases between replicas (names are checked with [`outbox::is_outbox_id`]) ---

    /// Take or renew the lease `name` for `owner` for `ttl`: true when no one else holds
    /// an unexpired one (and it is now `owner`'s). Replicas over one bucket use it so one
    /// of them does a job (e.g. fills a mirrored blob); a crashed holder's lease expires.
    /// The default, for storage one process owns, always grants it.
    async fn lease_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: std::time::Duration,
    ) -> Result<bool> {
        let _ = (name, owner, ttl);
        Ok(true)
    }
    /// Give up `owner`'s lease `name` (someone else's is left alone).
    async fn lease_release(&self, name: &str, owner: &str) -> Result<()> {
        let _ = (name, owner);
        Ok(())
    }
}

/// An inclusive byte range request; `end` None means "to the end".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=start-end` or `bytes=start-`
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

impl ByteRange {
    /// Resolve against a blob size to an inclusive (start, end), or `None`
    /// when it cannot be satisfied (RFC 9110 §14.1.2).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From { start, end } => {
                if start >= size {
                    return None;
                }
                let end = end.unwrap_or(size - 1).min(size - 1);
                (end >= start).then_some((start, end))
            }
            ByteRange::Suffix(n) => {
                if n == 0 || size == 0 {
                    return None;
                }
                Some((size.saturating_sub(n), size - 1))
            }
        }
    }
}

/// Collect a stream into memory, refusing more than `limit` bytes.
/// On `None` the rest of the stream is left unread.
pub async fn collect_limited(stream: &mut ByteStream, limit: usize) -> io::Result<Option<Bytes>> {
    use futures::StreamExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(Some(buf.freeze()))
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges_resolve() {
        let r = |start, end| ByteRange::From { start, end };
        assert_eq!(r(0, Some(9)).resolve(100), Some((0, 9)));
        assert_eq!(r(90, None).resolve(100), Some((90, 99)));
        assert_eq!(r(90, Some(500)).resolve(100), Some((90, 99)));
        assert_eq!(r(100, None).resolve(100), None);
        assert_eq!(r(5, Some(4)).resolve(100), None);
        assert_eq!(ByteRange::Suffix(10).resolve(100), Some((90, 99)));
        assert_eq!(ByteRange::Suffix(1000).resolve(100), Some((0, 99)));
        assert_eq!(ByteRange::Suffix(0).resolve(100), None);
        assert_eq!(r(0, None).resolve(0), None);
    }
}
