//! Small reads through the read cache ([`super::cache`]): a repository link
//! once seen, a manifest's metadata, and small blobs by digest.

use bytes::Bytes;
use object_store::GetResult;

use super::cache::Epoch;
use super::{s3_error, S3Storage, LAYOUT};
use crate::layout::LinkKind;
use crate::{BlobRead, ByteRange, ByteStream, Digest, ManifestMeta, Result, StorageError};

/// A blob GET reads at most this much into memory before answering (to keep
/// it): more would let many concurrent pulls of mid-sized blobs take a lot of
/// memory at once. Manifests, read whole anyway, are kept up to
/// [`super::cache::SMALL_OBJECT`].
const BUFFERED_READ_MAX: u64 = 64 << 10;

fn once(bytes: Bytes) -> ByteStream {
    Box::pin(futures::stream::once(async move { Ok(bytes) }))
}

impl S3Storage {
    /// A blob (or a range of it) from the object cache, if it is there.
    pub(super) fn cached_blob_read(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Option<Result<BlobRead>> {
        let bytes = self.reads.object(digest)?;
        let size = bytes.len() as u64;
        let Some(range) = range else {
            return Some(Ok(BlobRead {
                size,
                range: None,
                stream: once(bytes),
            }));
        };
        Some(match range.resolve(size) {
            None => Err(StorageError::RangeNotSatisfiable { size }),
            Some((start, end)) => Ok(BlobRead {
                size,
                range: Some((start, end)),
                // resolve() keeps end < size, and size came from bytes.len().
                stream: once(bytes.slice(start as usize..=end as usize)),
            }),
        })
    }

    /// Keep a small object if its bytes are the digest's (so a corrupt
    /// object in the bucket is never multiplied by the cache).
    fn keep_if_intact(&self, digest: &Digest, bytes: &Bytes) {
        if self.reads.keeps(bytes.len() as u64) && &Digest::of(digest.algorithm(), bytes) == digest
        {
            self.reads.keep_object(digest, bytes);
        }
    }

    /// A small blob just pushed (its bytes were hashed to `digest` by the push):
    /// keep it, so that pulls through this replica cost no S3 request. Copied,
    /// so the cache never pins the upload's bigger buffer.
    pub(super) fn keep_pushed(&self, digest: &Digest, bytes: &Bytes) {
        let size = bytes.len() as u64;
        if size <= BUFFERED_READ_MAX && self.reads.keeps(size) {
            self.reads
                .keep_object(digest, &Bytes::copy_from_slice(bytes));
        }
    }

    /// A manifest just written: keep it (checked against its digest, as the
    /// registry computed it), so a GET through this replica costs no S3 read of
    /// its bytes.
    pub(super) fn keep_pushed_manifest(&self, digest: &Digest, bytes: &Bytes) {
        if self.reads.keeps(bytes.len() as u64) {
            self.keep_if_intact(digest, &Bytes::copy_from_slice(bytes));
        }
    }

    /// Serve a whole blob from the GET of its (inline) object: the response
    /// says its size, and a small one is read whole and kept.
    pub(super) async fn whole_from_get(&self, digest: &Digest, r: GetResult) -> Result<BlobRead> {
        let size = r.meta.size;
        if size > BUFFERED_READ_MAX || !self.reads.keeps(size) {
            return Ok(BlobRead {
                size,
                range: None,
                stream: Self::stream_of(r),
            });
        }
        let bytes = match r.bytes().await {
            Ok(bytes) => bytes,
            // Deleted between the response head and its body.
            Err(object_store::Error::NotFound { .. }) => return Err(StorageError::BlobUnknown),
            Err(e) => return Err(s3_error(e)),
        };
        self.keep_if_intact(digest, &bytes);
        Ok(BlobRead {
            size: bytes.len() as u64,
            range: None,
            stream: once(bytes),
        })
    }

    /// Whether the repository links the blob: remembered once seen (one HEAD
    /// the first time, none after, until a delete here or the TTL).
    pub(super) async fn layer_linked(&self, repository: &str, digest: &Digest) -> Result<bool> {
        if self.reads.layer_linked(repository, digest) {
            return Ok(true);
        }
        let epoch = self.reads.epoch();
        let linked = self.exists(&LAYOUT.layer_link(repository, digest)).await?;
        if linked {
            self.reads
                .remember(epoch, repository, LinkKind::Layer, digest, None);
        }
        Ok(linked)
    }

    /// A manifest link's metadata, read from S3 (never from the cache).
    pub(super) async fn read_manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        let rel = LAYOUT.manifest_link(repository, digest);
        let Some((raw, _)) = self.get_bytes(&rel).await? else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("{rel}: {e}")))?;
        Ok(Some(meta))
    }

    /// A manifest link's metadata, remembered once seen.
    pub(super) async fn cached_manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        if let Some(meta) = self.reads.manifest_meta(repository, digest) {
            return Ok(Some(meta));
        }
        let epoch = self.reads.epoch();
        let meta = self.read_manifest_meta(repository, digest).await?;
        if let Some(meta) = &meta {
            self.reads
                .remember(epoch, repository, LinkKind::Manifest, digest, Some(meta));
        }
        Ok(meta)
    }

    /// A link was just written (push, mount, manifest put): remember it.
    pub(super) fn remember_link(
        &self,
        epoch: Epoch,
        repository: &str,
        kind: LinkKind,
        digest: &Digest,
        meta: Option<&ManifestMeta>,
    ) {
        self.reads.remember(epoch, repository, kind, digest, meta);
    }

    /// A reference a manifest PUT needs is not linked in S3: forget any
    /// remembered link to it, so the client's retry (HEAD, then upload) sees
    /// the truth instead of a stale "already there".
    pub(super) fn forget_stale_links(&self, repository: &str, digest: &Digest) {
        for kind in LinkKind::ALL {
            self.reads.forget(repository, kind, digest);
        }
    }

    /// A blob's bytes, read whole (a manifest, a config): from the cache, or
    /// one GET (two for a big blob's pointer), kept when small.
    pub(super) async fn small_blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        if let Some(bytes) = self.reads.object(digest) {
            return Ok(Some(bytes));
        }
        let Some(r) = self.get_opt(&LAYOUT.blob(digest)).await? else {
            return Ok(None);
        };
        let bytes = match Self::pointer_of(&r.attributes)? {
            Some((key, _)) => match self.get_bytes(&key).await? {
                Some((bytes, _)) => bytes,
                None => return Ok(None),
            },
            None => match r.bytes().await {
                Ok(bytes) => bytes,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(s3_error(e)),
            },
        };
        self.keep_if_intact(digest, &bytes);
        Ok(Some(bytes))
    }

    /// A blob's size from the object cache, if it is there.
    pub(super) fn cached_blob_size(&self, digest: &Digest) -> Option<u64> {
        self.reads.object(digest).map(|b| b.len() as u64)
    }

    pub(super) fn reads_epoch(&self) -> Epoch {
        self.reads.epoch()
    }

    /// After a garbage collection here: links it removed must not be served.
    pub(super) fn forget_all_links(&self) {
        self.reads.forget_all_links();
    }
}
