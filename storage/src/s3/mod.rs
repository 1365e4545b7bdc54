//! S3 backend (any S3-compatible object store), over `object_store`.
//!
//! Keys under `s3://BUCKET/PREFIX` are named by `crate::layout` (`Layout::S3`).
//!
//! # Where a finished upload goes, and why
//!
//! S3 has no rename, and a multipart upload's key is fixed when it starts,
//! before the digest is known. Copying the finished object to its
//! content-addressed key (what the reference registry does) reads and writes
//! the whole blob again inside S3, which makes big pushes slow. Instead:
//!
//! * an upload that ends within one part (< 8 MiB, nearly every config and
//!   manifest and most small layers) is kept in memory and written with one
//!   PUT straight to `blobs/<alg>/<hex>`;
//! * a bigger one streams into a multipart upload at `data/<upload id>`; on
//!   completion `blobs/<alg>/<hex>` becomes an empty *pointer* object whose
//!   user metadata names the data key and the size.
//!
//! The cost of the pointer is one extra small GET the first time a replica
//! reads that blob (pointers are cached: a digest's content never changes), in
//! exchange for never copying blob bytes. A re-push of a big blob writes a new
//! data object and re-points; the old one is swept by garbage collection.
//!
//! # Stateless replicas
//!
//! An upload session lives entirely in the bucket: offset, serialised SHA-256
//! state, multipart upload id, part ETags, and the bytes that do not fill a
//! part yet (an object of its own, written under a new name each time so a
//! failure between writing it and saving the state never leaves the state
//! pointing at the wrong bytes). So any replica can take the next chunk. The
//! state is written with `If-Match` on the ETag it was read with: two
//! replicas appending to one session at once cannot both win.
//!
//! The referrers of a subject are one JSON index, changed by read, modify
//! and write with `If-Match` (`If-None-Match: *` for the first), retried on
//! conflict: racing pushes of two referrers both end up listed, and a
//! listing is one GET.
//!
//! Tags are plain objects (an S3 PUT is atomic, so a racing tag write ends
//! with one whole value). Removing a tag (tag delete, or deleting the
//! manifest it points at) overwrites it with an empty tombstone *only if it
//! still holds the ETag that was read*, so a concurrent re-tag on another
//! replica is never lost. This needs a server that honours `If-Match` and
//! `If-None-Match` on PUT (AWS S3 since 2024, MinIO, R2, s3s-fs; not garage).
//!
//! ListMultipartUploads is never used (several S3-compatible servers lack it):
//! abandoned multipart uploads are found through their session state.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::TryStreamExt;
use object_store::aws::AmazonS3;
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, GetResult, ObjectStore, ObjectStoreExt, PutPayload,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::save_sha256_state;
use crate::gc::Stored;
use crate::layout::{parse_tag, tag_content, Layout, LinkKind, DATA, REPOSITORIES, UPLOADS};
use crate::{
    BlobRead, ByteRange, ByteStream, Descriptor, Digest, GcReport, ManifestMeta, ManifestRecord,
    NamePage, PullTimes, Result, Storage, StorageError, SummaryPart, TagRecord, UploadStatus,
};

mod cache;
mod catalog;
mod counts;
mod gc;
mod options;
mod outbox;
mod read_ahead;
mod reads;
mod records;
mod session;
mod tags;
mod writer;

use cache::ReadCache;
pub use counts::{RequestCounts, RequestCountsSnapshot};
pub use options::S3Options;
use read_ahead::ReadAhead;
use writer::{feed, Writer};

/// Size of the parts big uploads are cut into. S3 wants at least 5 MiB for
/// every part but the last; bigger parts mean fewer requests, smaller ones
/// less memory per upload.
pub const PART_SIZE: usize = 8 << 20;
/// User metadata of a pointer object: the data key and the blob size.
const META_DATA_KEY: &str = "berth-data";
const META_SIZE: &str = "berth-size";
/// How long a presigned blob URL (`--redirect-blobs`) stays valid.
const REDIRECT_TTL: Duration = Duration::from_secs(20 * 60);
/// Resolved pointers kept in memory; past this the cache is simply cleared.
const POINTER_CACHE_MAX: usize = 100_000;
/// Attempts at a conditional tag write before giving up.
const TAG_RETRIES: usize = 8;

/// How this backend spells the storage layout.
const LAYOUT: Layout = Layout::S3;

pub struct S3Storage {
    store: Arc<AmazonS3>,
    /// The same bucket with batched deletes, for garbage collection.
    bulk_store: Arc<AmazonS3>,
    /// `PREFIX/` or empty.
    prefix: String,
    redirect_blobs: bool,
    counts: Arc<RequestCounts>,
    /// digest -> (data key relative to the prefix, size) of big blobs.
    pointers: Mutex<HashMap<Digest, (String, u64)>>,
    /// Held for reading by every write that links a blob, for writing by
    /// garbage collection in this process.
    gc_lock: tokio::sync::RwLock<()>,
    /// Appends to one session are serialised within a process; across
    /// replicas the conditional state write does it.
    upload_locks: crate::upload_locks::UploadLocks,
    /// How big blob reads fetch ahead, and the server-wide buffer budget.
    read_ahead: ReadAhead,
    /// Which repositories have their catalog object (see [`catalog`]).
    catalog: catalog::CatalogState,
    /// Links seen and small objects read, so small reads cost one request or none.
    reads: ReadCache,
}

#[derive(Clone, Serialize, Deserialize)]
struct Session {
    repository: String,
    created_unix: u64,
    /// Bytes received: those in `parts`, then `tail` bytes in the tail object.
    offset: u64,
    /// Serialised SHA-256 state over the first `offset` bytes.
    sha256: String,
    /// Multipart upload at `data/<id>`, once the upload outgrew one part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    /// ETags of the parts uploaded so far, in order.
    #[serde(default)]
    parts: Vec<String>,
    #[serde(default)]
    tail: u64,
    /// The object holding the tail bytes, if one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail_key: Option<String>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Map an object store failure. A server that cannot be reached or answers
/// 5xx is `Unavailable` (the client may retry); refused credentials and the
/// like are plain failures.
fn s3_error(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::Generic { .. } => StorageError::Unavailable(e.to_string()),
        other => StorageError::Io(io::Error::other(other)),
    }
}

fn json<T: Serialize>(value: &T) -> Result<Bytes> {
    Ok(Bytes::from(
        serde_json::to_vec(value).map_err(io::Error::other)?,
    ))
}

fn http_get() -> http::Method {
    http::Method::GET
}

impl S3Storage {
    /// Read big blobs in ranges of `range` bytes, `ahead` fetched ahead, with
    /// `buffers` range buffers in all (tests use small ranges).
    #[cfg(test)]
    fn with_read_ahead(mut self, range: u64, ahead: usize, buffers: usize) -> S3Storage {
        self.read_ahead = ReadAhead::new(range, ahead, buffers);
        self
    }

    /// S3 requests sent so far.
    pub fn request_counts(&self) -> RequestCountsSnapshot {
        self.counts.snapshot()
    }

    /// Check that the bucket answers (one LIST of at most a page), so a
    /// misconfiguration shows at start-up rather than at the first push.
    pub async fn check(&self) -> Result<()> {
        self.store
            .list_with_delimiter(Some(&self.path(UPLOADS)))
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    fn path(&self, rel: &str) -> Path {
        Path::from(format!("{}{rel}", self.prefix))
    }

    fn rel_of<'a>(&self, location: &'a Path) -> &'a str {
        let full: &str = location.as_ref();
        full.strip_prefix(&self.prefix).unwrap_or(full)
    }

    // --- small object helpers ---

    async fn get_opt(&self, rel: &str) -> Result<Option<GetResult>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// An object's bytes and ETag.
    async fn get_bytes(&self, rel: &str) -> Result<Option<(Bytes, Option<String>)>> {
        let Some(r) = self.get_opt(rel).await? else {
            return Ok(None);
        };
        let e_tag = r.meta.e_tag.clone();
        match r.bytes().await {
            Ok(b) => Ok(Some((b, e_tag))),
            // Deleted between the response head and its body.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn head_opt(&self, rel: &str) -> Result<Option<GetResult>> {
        let options = GetOptions::new().with_head(true);
        match self.store.get_opts(&self.path(rel), options).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.head_opt(rel).await?.is_some())
    }

    async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&self.path(rel), PutPayload::from(bytes))
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    /// Delete, treating "already gone" as done. A link deleted here is
    /// forgotten by the read cache before and after the request, so no read
    /// on this replica serves it once the delete is done.
    async fn delete(&self, rel: &str) -> Result<()> {
        let link = LAYOUT.parse_link(rel);
        let forget = || {
            if let Some(l) = &link {
                self.reads.forget(&l.repository, l.kind, &l.digest);
            }
        };
        forget();
        let result = match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(e)),
        };
        forget();
        result
    }

    async fn list(&self, rel_prefix: &str) -> Result<Vec<Stored>> {
        let prefix = self.path(rel_prefix);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(s3_error)?;
        Ok(objects
            .into_iter()
            .map(|m| Stored {
                key: self.rel_of(&m.location).to_string(),
                size: m.size,
                modified: SystemTime::from(m.last_modified),
            })
            .collect())
    }

    // --- blobs ---

    fn cached_pointer(&self, d: &Digest) -> Option<(String, u64)> {
        let cache = self.pointers.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(d).cloned()
    }

    fn cache_pointer(&self, d: &Digest, key: &str, size: u64) {
        let mut cache = self.pointers.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= POINTER_CACHE_MAX {
            cache.clear();
        }
        cache.insert(d.clone(), (key.to_string(), size));
    }

    /// The blob is gone (or collected): drop what is cached about it.
    fn forget_pointer(&self, d: &Digest) {
        let mut cache = self.pointers.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(d);
        self.reads.forget_object(d);
    }

    /// The pointer in a blob object's metadata: (data key, size).
    fn pointer_of(attributes: &Attributes) -> Result<Option<(String, u64)>> {
        let Some(key) = attributes.get(&Attribute::Metadata(META_DATA_KEY.into())) else {
            return Ok(None);
        };
        let size = attributes
            .get(&Attribute::Metadata(META_SIZE.into()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| StorageError::Corrupt(format!("blob pointer to {key:?} has no size")))?;
        if !key.starts_with(DATA) {
            return Err(StorageError::Corrupt(format!(
                "blob pointer to {key:?} outside data/"
            )));
        }
        Ok(Some((key.to_string(), size)))
    }

    /// Where a blob's bytes are and how many there are (one HEAD).
    async fn locate(&self, d: &Digest) -> Result<Option<(String, u64)>> {
        let Some(head) = self.head_opt(&LAYOUT.blob(d)).await? else {
            self.forget_pointer(d);
            return Ok(None);
        };
        match Self::pointer_of(&head.attributes)? {
            Some((key, size)) => {
                self.cache_pointer(d, &key, size);
                Ok(Some((key, size)))
            }
            None => Ok(Some((LAYOUT.blob(d), head.meta.size))),
        }
    }

    fn stream_of(result: GetResult) -> ByteStream {
        Box::pin(result.into_stream().map_err(io::Error::other))
    }

    /// Bytes `[start, end]` of the object at `rel` (which has at least `end + 1`
    /// bytes), in parallel ranges when that is worth it; `None` if it is gone.
    async fn read_span(&self, rel: &str, start: u64, end: u64) -> Result<Option<ByteStream>> {
        if !self.read_ahead.worth_it(start, end + 1) {
            return Ok(self.get_range(rel, start, end).await?.map(Self::stream_of));
        }
        let store: Arc<dyn ObjectStore> = self.store.clone();
        match self
            .read_ahead
            .read(store, self.path(rel), start, end + 1)
            .await
        {
            Ok(stream) => Ok(Some(stream)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// All of a data object of `size` bytes; `None` if it is gone.
    async fn read_whole(&self, rel: &str, size: u64) -> Result<Option<ByteStream>> {
        if self.read_ahead.worth_it(0, size) {
            return self.read_span(rel, 0, size - 1).await;
        }
        Ok(self.get_opt(rel).await?.map(Self::stream_of))
    }

    async fn get_range(&self, rel: &str, start: u64, end: u64) -> Result<Option<GetResult>> {
        let options = GetOptions::new().with_range(Some(GetRange::Bounded(start..end + 1)));
        match self.store.get_opts(&self.path(rel), options).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        if let Some(size) = self.cached_blob_size(digest) {
            return Ok(Some(size));
        }
        Ok(self.locate(digest).await?.map(|(_, size)| size))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        if let Some(read) = self.cached_blob_read(digest, range) {
            return read;
        }
        let Some(range) = range else {
            // Whole blob: one GET, two for a big blob this replica has not seen yet.
            if let Some((key, size)) = self.cached_pointer(digest) {
                if let Some(stream) = self.read_whole(&key, size).await? {
                    return Ok(BlobRead {
                        size,
                        range: None,
                        stream,
                    });
                }
                self.forget_pointer(digest);
            }
            let r = self
                .get_opt(&LAYOUT.blob(digest))
                .await?
                .ok_or(StorageError::BlobUnknown)?;
            let Some((key, size)) = Self::pointer_of(&r.attributes)? else {
                // The GET says the size too: no HEAD first; small ones are kept.
                return self.whole_from_get(digest, r).await;
            };
            drop(r);
            self.cache_pointer(digest, &key, size);
            let stream = self
                .read_whole(&key, size)
                .await?
                .ok_or(StorageError::BlobUnknown)?;
            return Ok(BlobRead {
                size,
                range: None,
                stream,
            });
        };
        for _ in 0..2 {
            let (key, size) = match self.cached_pointer(digest) {
                Some(found) => found,
                None => self
                    .locate(digest)
                    .await?
                    .ok_or(StorageError::BlobUnknown)?,
            };
            let (start, end) = range
                .resolve(size)
                .ok_or(StorageError::RangeNotSatisfiable { size })?;
            match self.read_span(&key, start, end).await? {
                Some(stream) => {
                    return Ok(BlobRead {
                        size,
                        range: Some((start, end)),
                        stream,
                    })
                }
                // A cached pointer to data collected since: look again.
                None => self.forget_pointer(digest),
            }
        }
        Err(StorageError::BlobUnknown)
    }

    async fn blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        self.small_blob_bytes(digest).await
    }

    async fn blob_redirect_url(&self, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect_blobs {
            return Ok(None);
        }
        let key = match self.cached_pointer(digest) {
            Some((key, _)) => key,
            None => match self.locate(digest).await? {
                Some((key, _)) => key,
                None => return Ok(None),
            },
        };
        let url = self
            .store
            .signed_url(http_get(), &self.path(&key), REDIRECT_TTL)
            .await
            .map_err(s3_error)?;
        Ok(Some(url.to_string()))
    }

    async fn blob_linked(&self, repository: &str, digest: &Digest) -> Result<bool> {
        // The link alone: collection removes a blob only after its last link,
        // so a link implies the blob (one HEAD instead of two, and none once
        // this replica has seen the link: see cache.rs).
        self.layer_linked(repository, digest).await
    }

    async fn link_blob(&self, repository: &str, digest: &Digest) -> Result<()> {
        let _no_gc = self.gc_lock.read().await;
        let epoch = self.reads_epoch();
        // Asked of S3, not of the cache: a link must never point at a blob
        // that is gone.
        if self.locate(digest).await?.is_none() {
            return Err(StorageError::BlobUnknown);
        }
        self.note_repository(repository).await?;
        self.put(&LAYOUT.layer_link(repository, digest), Bytes::new())
            .await?;
        self.remember_link(epoch, repository, LinkKind::Layer, digest, None);
        Ok(())
    }

    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let rel = LAYOUT.layer_link(repository, digest);
        if !self.exists(&rel).await? {
            return Ok(false);
        }
        self.delete(&rel).await?;
        self.keep_repository(repository, LinkKind::Layer).await?;
        Ok(true)
    }

    async fn upload_create(&self, repository: &str) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            repository: repository.to_string(),
            created_unix: now_unix(),
            offset: 0,
            sha256: save_sha256_state(&Sha256::new()),
            multipart: None,
            parts: Vec::new(),
            tail: 0,
            tail_key: None,
        };
        self.put(&LAYOUT.upload_state(&id), json(&session)?).await?;
        Ok(UploadStatus {
            id,
            repository: repository.to_string(),
            offset: 0,
        })
    }

    async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus> {
        let (session, _) = self.load_session(repository, id).await?;
        Ok(UploadStatus {
            id: id.to_string(),
            repository: session.repository,
            offset: session.offset,
        })
    }

    async fn upload_append(
        &self,
        repository: &str,
        id: &str,
        start: Option<u64>,
        data: ByteStream,
    ) -> Result<UploadStatus> {
        let (_guard, session, e_tag) = self.lock_session(repository, id).await?;
        if let Some(start) = start {
            if start != session.offset {
                return Err(StorageError::RangeMismatch {
                    offset: session.offset,
                });
            }
        }
        let mut w = Writer::open(self, id, session, e_tag).await?;
        let body_error = feed(&mut w, data).await?;
        // Also when the body broke off: what arrived is kept for a resume.
        w.persist().await?;
        if let Some(e) = body_error {
            return Err(StorageError::BodyInterrupted(e));
        }
        Ok(UploadStatus {
            id: id.to_string(),
            repository: w.session.repository.clone(),
            offset: w.session.offset,
        })
    }

    async fn upload_complete_notify(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64> {
        self.complete_upload(repository, id, digest, data, matched)
            .await
    }

    async fn upload_cancel(&self, repository: &str, id: &str) -> Result<()> {
        let (_guard, session, _) = self.lock_session(repository, id).await?;
        self.drop_session(id, &session).await?;
        // Tails left by failed requests.
        for item in self.list(&format!("{}/", LAYOUT.upload(id))).await? {
            self.delete(&item.key).await?;
        }
        Ok(())
    }

    async fn purge_uploads(&self, max_age: Duration) -> Result<usize> {
        let cutoff = SystemTime::now().checked_sub(max_age).unwrap_or(UNIX_EPOCH);
        // Sessions are judged by their last write: a long chunked upload
        // that is still moving is not abandoned.
        let mut by_id: HashMap<String, Vec<Stored>> = HashMap::new();
        for item in self.list(UPLOADS).await? {
            let id = LAYOUT.upload_of(&item.key).to_string();
            by_id.entry(id).or_default().push(item);
        }
        let mut purged = 0;
        for (id, items) in by_id {
            let state_key = LAYOUT.upload_state(&id);
            let state = items.iter().find(|i| i.key == state_key);
            let newest = items.iter().map(|i| i.modified).max().unwrap_or(UNIX_EPOCH);
            let stale = match state {
                Some(state) => state.modified < cutoff,
                None => newest < cutoff,
            };
            if !stale {
                continue;
            }
            if state.is_some() {
                if let Some((raw, _)) = self.get_bytes(&LAYOUT.upload_state(&id)).await? {
                    if let Ok(session) = serde_json::from_slice::<Session>(&raw) {
                        if let Some(mp) = &session.multipart {
                            let _ = self
                                .store
                                .abort_multipart(&self.path(&LAYOUT.upload_data(&id)), mp)
                                .await;
                        }
                    }
                }
                purged += 1;
            }
            for item in items.iter().filter(|i| i.key != state_key) {
                self.delete(&item.key).await?;
            }
            self.delete(&LAYOUT.upload_state(&id)).await?;
        }
        Ok(purged)
    }

    async fn manifest_put(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
        meta: &ManifestMeta,
        tag: Option<&str>,
    ) -> Result<()> {
        let _no_gc = self.gc_lock.read().await;
        let epoch = self.reads_epoch();
        // What the manifest needs is checked under the same exclusion as the
        // link that protects it, so no collection of this process runs in
        // between (one HEAD per reference, all at once).
        let checks = meta.references.iter().flatten().map(|needed| async move {
            let linked = self.exists(&LAYOUT.layer_link(repository, needed)).await?
                || self
                    .exists(&LAYOUT.manifest_link(repository, needed))
                    .await?;
            Ok::<_, StorageError>((linked, needed))
        });
        for (linked, needed) in futures::future::try_join_all(checks).await? {
            if !linked {
                self.forget_stale_links(repository, needed);
                return Err(StorageError::ReferenceUnknown(needed.clone()));
            }
        }
        // Order matters: the catalog entry, bytes, the link that makes them
        // visible, then the referrer entry and the tag that point at it.
        self.note_repository(repository).await?;
        let size = bytes.len() as u64;
        self.put(&LAYOUT.blob(digest), bytes.clone()).await?;
        self.put(&LAYOUT.manifest_link(repository, digest), json(meta)?)
            .await?;
        self.remember_link(epoch, repository, LinkKind::Manifest, digest, Some(meta));
        self.keep_pushed_manifest(digest, &bytes);
        if let Some(subject) = &meta.subject {
            let descriptor = Descriptor {
                media_type: meta.media_type.clone(),
                digest: digest.clone(),
                size,
                artifact_type: meta.artifact_type.clone(),
                annotations: meta.annotations.clone(),
            };
            self.edit_referrers(repository, subject, |list| {
                list.retain(|d| d.digest != descriptor.digest);
                list.push(descriptor.clone());
            })
            .await?;
        }
        if let Some(tag) = tag {
            // An S3 PUT is atomic: racing tag writes end with one whole value.
            self.put(&LAYOUT.tag(repository, tag), tag_content(tag, digest))
                .await?;
        }
        Ok(())
    }

    async fn manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        self.cached_manifest_meta(repository, digest).await
    }

    /// Link and bytes at once: from the read cache, else two GETs in one
    /// round trip of latency.
    async fn manifest_get(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<(ManifestMeta, Bytes)>> {
        let (meta, bytes) = tokio::try_join!(
            self.cached_manifest_meta(repository, digest),
            self.small_blob_bytes(digest)
        )?;
        Ok(meta.zip(bytes))
    }

    async fn manifest_delete(&self, repository: &str, digest: &Digest) -> Result<bool> {
        // Asked of S3: whether it is there decides the answer.
        let Some(meta) = self.read_manifest_meta(repository, digest).await? else {
            return Ok(false);
        };
        // Tags first, so no tag is left pointing at a manifest that is gone;
        // each only if it still points here when it is removed.
        for (_, item) in self.tag_objects(repository).await? {
            if item.size == 0 {
                continue;
            }
            if let Some((raw, e_tag)) = self.get_bytes(&item.key).await? {
                if matches!(parse_tag(&raw), Some((Ok(d), _)) if &d == digest) {
                    self.tombstone_tag(&item.key, e_tag).await?;
                }
            }
        }
        if let Some(subject) = &meta.subject {
            self.edit_referrers(repository, subject, |list| {
                list.retain(|d| &d.digest != digest)
            })
            .await?;
        }
        self.delete(&LAYOUT.manifest_link(repository, digest))
            .await?;
        self.keep_repository(repository, LinkKind::Manifest).await?;
        Ok(true)
    }

    async fn tag_resolve(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        let rel = LAYOUT.tag(repository, tag);
        let Some((raw, _)) = self.get_bytes(&rel).await? else {
            return Ok(None);
        };
        match parse_tag(&raw) {
            None => Ok(None), // tombstone
            Some((Ok(digest), _)) => Ok(Some(digest)),
            Some((Err(()), _)) => Err(StorageError::Corrupt(format!("{rel}: not a digest"))),
        }
    }

    async fn tag_delete(&self, repository: &str, tag: &str) -> Result<bool> {
        let rel = LAYOUT.tag(repository, tag);
        for _ in 0..TAG_RETRIES {
            let Some((raw, e_tag)) = self.get_bytes(&rel).await? else {
                return Ok(false);
            };
            if raw.is_empty() {
                return Ok(false);
            }
            if self.tombstone_tag(&rel, e_tag).await? {
                return Ok(true);
            }
            // Re-tagged meanwhile: delete what it holds now.
        }
        Err(StorageError::Unavailable(format!(
            "tag {repository}:{tag} kept changing while being deleted; try again"
        )))
    }

    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>> {
        let objects = self.tag_objects(repository).await?;
        if objects.is_empty() {
            let exists = self.repository_exists(repository).await?;
            return Ok(exists.then(Vec::new));
        }
        let mut tags = Vec::new();
        for (name, item) in objects {
            if item.size == 0 {
                continue;
            }
            if !name.starts_with('=') {
                tags.push(name);
                continue;
            }
            // A long tag under a hashed name: the tag is inside.
            if let Some((raw, _)) = self.get_bytes(&item.key).await? {
                if let Some((_, Some(tag))) = parse_tag(&raw) {
                    tags.push(tag);
                }
            }
        }
        tags.sort();
        Ok(Some(tags))
    }

    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let rel = LAYOUT.referrers(repository, subject);
        let mut out: Vec<Descriptor> = match self.get_bytes(&rel).await? {
            Some((raw, _)) => serde_json::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("{rel}: {e}")))?,
            None => Vec::new(),
        };
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        // Walk the tree a level at a time: a LIST per repository path instead
        // of listing every link of every repository.
        let mut out = BTreeSet::new();
        let mut stack = vec![String::new()];
        while let Some(repo) = stack.pop() {
            let dir = if repo.is_empty() {
                REPOSITORIES.to_string()
            } else {
                format!("{}/", LAYOUT.repository(&repo))
            };
            let listing = self
                .store
                .list_with_delimiter(Some(&self.path(&dir)))
                .await
                .map_err(s3_error)?;
            for p in &listing.common_prefixes {
                let Some(name) = p.filename() else { continue };
                if name.starts_with('_') {
                    if !repo.is_empty() && LinkKind::ALL.iter().any(|k| name == k.folder()) {
                        out.insert(repo.clone());
                    }
                } else if repo.is_empty() {
                    stack.push(name.to_string());
                } else {
                    stack.push(format!("{repo}/{name}"));
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    /// From the `catalog/` objects (see [`catalog`]). A `last` that is not a
    /// repository name (any string is allowed) may not spell as a key: the
    /// whole list is filtered then, as the spec's string order demands.
    async fn repositories_after(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<NamePage> {
        match after {
            Some(a) if !crate::names::is_valid_repository_name(a) => {
                self.catalog_page_filtered(after, limit).await
            }
            _ => self.catalog_page(after, limit).await,
        }
    }

    async fn tags_after(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<NamePage>> {
        match after {
            Some(a) if !crate::names::is_valid_tag(a) => {
                let all = self.tags(repository).await?;
                Ok(all.map(|all| NamePage::of(&all, after, limit)))
            }
            _ => self.tags_page(repository, after, limit).await,
        }
    }

    async fn tag_records(&self, repository: &str) -> Result<Vec<TagRecord>> {
        self.read_tag_records(repository).await
    }

    async fn manifest_records(&self, repository: &str) -> Result<Vec<ManifestRecord>> {
        self.read_manifest_records(repository).await
    }

    async fn record_pulls(&self, repository: &str, pulls: &PullTimes) -> Result<()> {
        self.merge_pulls(repository, pulls).await
    }

    async fn pulls(&self, repository: &str) -> Result<PullTimes> {
        self.read_pulls(repository).await
    }

    async fn forget_pulls(&self, repository: &str, digests: &[Digest]) -> Result<()> {
        self.drop_pulls(repository, digests).await
    }

    async fn tags_stamp(&self, repository: &str) -> Result<Option<String>> {
        self.read_tags_stamp(repository).await
    }

    async fn summary_get(&self, repository: &str, part: SummaryPart) -> Result<Option<Bytes>> {
        self.read_summary(repository, part).await
    }

    async fn summary_put(&self, repository: &str, part: SummaryPart, bytes: Bytes) -> Result<()> {
        self.write_summary(repository, part, bytes).await
    }

    async fn collect_garbage(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        let report = self
            .collect_garbage_pausing(grace, dry_run, std::future::ready(()))
            .await;
        // Its deletes forget their links one by one (S3Storage::delete); this
        // also covers any it made another way.
        self.forget_all_links();
        report
    }

    async fn outbox_put(&self, id: &str, record: Bytes) -> Result<()> {
        self.s3_outbox_put(id, record).await
    }

    async fn outbox_get(&self, id: &str) -> Result<Option<Bytes>> {
        self.s3_outbox_get(id).await
    }

    async fn outbox_list(&self) -> Result<Vec<String>> {
        self.s3_outbox_list().await
    }

    async fn outbox_delete(&self, id: &str) -> Result<()> {
        self.s3_outbox_delete(id).await
    }

    async fn outbox_claim(&self, id: &str, owner: &str, ttl: Duration) -> Result<bool> {
        self.s3_outbox_claim(id, owner, ttl).await
    }

    async fn outbox_release(&self, id: &str, owner: &str) -> Result<()> {
        self.s3_outbox_release(id, owner).await
    }

    async fn lease_acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        self.s3_lease_acquire(name, owner, ttl).await
    }

    async fn lease_release(&self, name: &str, owner: &str) -> Result<()> {
        self.s3_lease_release(name, owner).await
    }
}

/// The one definition of "running in CI" that every test crate shares.
#[cfg(test)]
#[path = "../../../tests/common/ci.rs"]
pub(crate) mod test_ci;

#[cfg(test)]
mod tests;
