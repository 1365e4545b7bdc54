//! Streaming an upload into parts, and completing it into a blob.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutOptions,
    PutPayload,
};
use sha2::{Digest as _, Sha256};

use super::{s3_error, S3Storage, Session, LAYOUT, META_DATA_KEY, META_SIZE, PART_SIZE};
use crate::digest::{restore_sha256_state, save_sha256_state, Hasher};
use crate::layout::LinkKind;
use crate::{Algorithm, ByteStream, Digest, Result, StorageError};

/// Parts of one upload sent at once while the next one fills. Memory per
/// upload stays below `(PARTS_IN_FLIGHT + 1) * PART_SIZE` whatever its size.
const PARTS_IN_FLIGHT: usize = 2;

/// Streams bytes into an upload session: hashes them, cuts parts and sends
/// them while the next one fills, and keeps what does not fill a part.
pub(super) struct Writer<'a> {
    s: &'a S3Storage,
    id: String,
    pub(super) session: Session,
    e_tag: Option<String>,
    hasher: Sha256,
    buf: BytesMut,
    /// The session as last saved.
    opened: Session,
    inflight: FuturesOrdered<BoxFuture<'static, Result<String>>>,
    next_part: usize,
}

impl<'a> Writer<'a> {
    pub(super) async fn open(
        s: &'a S3Storage,
        id: &str,
        session: Session,
        e_tag: Option<String>,
    ) -> Result<Writer<'a>> {
        let hasher = restore_sha256_state(&session.sha256)
            .ok_or_else(|| StorageError::Corrupt(format!("upload {id}: bad hash state")))?;
        let mut buf = BytesMut::new();
        if session.tail > 0 {
            let key = session.tail_key.clone().unwrap_or_default();
            let (tail, _) = s.get_bytes(&key).await?.ok_or_else(|| {
                StorageError::Corrupt(format!("upload {id}: tail {key:?} is missing"))
            })?;
            if tail.len() as u64 != session.tail {
                return Err(StorageError::Corrupt(format!(
                    "upload {id}: tail holds {} bytes, {} recorded",
                    tail.len(),
                    session.tail
                )));
            }
            buf.extend_from_slice(&tail);
        }
        Ok(Writer {
            s,
            id: id.to_string(),
            next_part: session.parts.len(),
            opened: session.clone(),
            session,
            e_tag,
            hasher,
            buf,
            inflight: FuturesOrdered::new(),
        })
    }

    fn data_path(&self) -> Path {
        self.s.path(&LAYOUT.upload_data(&self.id))
    }

    /// Take in a chunk; send every full part.
    async fn push(&mut self, chunk: Bytes) -> Result<()> {
        self.hasher.update(&chunk);
        self.session.offset += chunk.len() as u64;
        self.buf.extend_from_slice(&chunk);
        while self.buf.len() >= PART_SIZE {
            let part = self.buf.split_to(PART_SIZE).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        let upload_id = match &self.session.multipart {
            Some(id) => id.clone(),
            None => {
                let path = self.data_path();
                let id = self
                    .s
                    .store
                    .create_multipart(&path)
                    .await
                    .map_err(s3_error)?;
                // Record the upload at once, so it can be aborted (purge,
                // cancel) even if this request dies: without
                // ListMultipartUploads nothing else would find it.
                let mut committed = self.opened.clone();
                committed.multipart = Some(id.clone());
                self.s
                    .save_session(&self.id, &committed, &mut self.e_tag)
                    .await?;
                self.opened = committed;
                self.session.multipart = Some(id.clone());
                id
            }
        };
        let store = self.s.store.clone();
        let path = self.data_path();
        let idx = self.next_part;
        self.next_part += 1;
        self.inflight.push_back(Box::pin(async move {
            let part = store
                .put_part(&path, &upload_id, idx, PutPayload::from(part))
                .await
                .map_err(s3_error)?;
            Ok(part.content_id)
        }));
        while self.inflight.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<()> {
        if let Some(done) = self.inflight.next().await {
            self.session.parts.push(done?);
        }
        Ok(())
    }

    async fn settle_all(&mut self) -> Result<()> {
        while !self.inflight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// End of the bytes for now (an append, or a body that broke off): send
    /// the parts in flight, keep what does not fill a part as the new tail
    /// object, then save the state. The previous tail is dropped only after
    /// the state stops naming it.
    pub(super) async fn persist(&mut self) -> Result<()> {
        self.settle_all().await?;
        let old_tail = self.session.tail_key.clone();
        if self.buf.is_empty() {
            self.session.tail = 0;
            self.session.tail_key = None;
        } else if self.session.offset != self.opened.offset || old_tail.is_none() {
            // Named by the offset it ends at: a tail written by a request that
            // failed before saving the state never overwrites the one the
            // saved state names (that one ends at a smaller offset).
            let key = LAYOUT.upload_tail(&self.id, self.session.offset);
            // Created, never overwritten: two writers racing on one session
            // (two replicas) must not swap the bytes under the state the
            // winner saves. The loser hears where the session stands.
            match self
                .s
                .store
                .put_opts(
                    &self.s.path(&key),
                    PutPayload::from(Bytes::copy_from_slice(&self.buf)),
                    PutOptions::from(PutMode::Create),
                )
                .await
            {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    let (now, _) = self
                        .s
                        .load_session(&self.session.repository, &self.id)
                        .await?;
                    return Err(StorageError::RangeMismatch { offset: now.offset });
                }
                Err(e) => return Err(s3_error(e)),
            }
            self.session.tail = self.buf.len() as u64;
            self.session.tail_key = Some(key);
        }
        self.session.sha256 = save_sha256_state(&self.hasher);
        self.s
            .save_session(&self.id, &self.session, &mut self.e_tag)
            .await?;
        self.opened = self.session.clone();
        if let Some(old) = old_tail {
            if self.session.tail_key.as_deref() != Some(old.as_str()) {
                // Best effort: purge and cancel find leftovers by prefix.
                let _ = self.s.delete(&old).await;
            }
        }
        Ok(())
    }
}

/// Feed a request body into a writer. Returns the body's own error, if it
/// broke off, separately from storage failures.
pub(super) async fn feed(w: &mut Writer<'_>, mut data: ByteStream) -> Result<Option<io::Error>> {
    while let Some(item) = data.next().await {
        match item {
            Ok(chunk) if chunk.is_empty() => {}
            Ok(chunk) => w.push(chunk).await?,
            Err(e) => return Ok(Some(e)),
        }
    }
    Ok(None)
}

/// Told once an upload's bytes matched its digest (see
/// [`crate::Storage::upload_complete_notify`]).
type Matched = Option<tokio::sync::oneshot::Sender<()>>;

fn tell(matched: Matched) {
    if let Some(matched) = matched {
        let _ = matched.send(());
    }
}

impl S3Storage {
    /// Append the last bytes (if any), verify, store and link.
    pub(super) async fn complete_upload(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64> {
        let (_guard, session, e_tag) = self.lock_session(repository, id).await?;
        let mut w = Writer::open(self, id, session, e_tag).await?;
        if let Some(data) = data {
            if let Some(e) = feed(&mut w, data).await? {
                w.persist().await?;
                return Err(StorageError::BodyInterrupted(e));
            }
        }
        let epoch = self.reads_epoch();
        let size = self
            .finish_upload(repository, w, digest, Some(matched))
            .await?;
        self.remember_link(epoch, repository, LinkKind::Layer, digest, None);
        Ok(size)
    }

    /// Finish an upload whose bytes are all in `w`: verify, store, link.
    async fn finish_upload(
        &self,
        repository: &str,
        w: Writer<'_>,
        expected: &Digest,
        matched: Matched,
    ) -> Result<u64> {
        match w.session.multipart.clone() {
            None => self.finish_small(repository, w, expected, matched).await,
            Some(upload_id) => {
                self.finish_big(repository, w, upload_id, expected, matched)
                    .await
            }
        }
    }

    /// Small: all of it is in memory. One PUT to the content address.
    async fn finish_small(
        &self,
        repository: &str,
        mut w: Writer<'_>,
        expected: &Digest,
        matched: Matched,
    ) -> Result<u64> {
        let size = w.session.offset;
        let bytes = w.buf.split().freeze();
        // Hashed again from the very bytes stored (at most a part, so
        // cheap): the saved running hash may come from another writer's
        // request, and these bytes are what readers will get.
        let actual = Digest::of(expected.algorithm(), &bytes);
        if &actual != expected {
            self.drop_session(&w.id, &w.opened).await?;
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        tell(matched);
        let _no_gc = self.gc_lock.read().await;
        // Rewritten even if present: a fresh modification time keeps a
        // concurrent garbage collection from taking a blob just re-pushed.
        self.put(&LAYOUT.blob(expected), bytes.clone()).await?;
        self.keep_pushed(expected, &bytes);
        self.note_repository(repository).await?;
        self.put(&LAYOUT.layer_link(repository, expected), Bytes::new())
            .await?;
        drop(_no_gc);
        self.drop_session(&w.id, &w.opened).await?;
        Ok(size)
    }

    /// Big: complete the multipart upload at `data/<id>`, then make the blob
    /// a pointer to it.
    async fn finish_big(
        &self,
        repository: &str,
        mut w: Writer<'_>,
        upload_id: String,
        expected: &Digest,
        mut matched: Matched,
    ) -> Result<u64> {
        let id = w.id.clone();
        let size = w.session.offset;
        // The SHA-256 is known before the last part is sent, so a wrong
        // digest costs no completion.
        if expected.algorithm() == Algorithm::Sha256 {
            let actual = Hasher::Sha256(w.hasher.clone()).finish();
            if &actual != expected {
                w.settle_all().await?;
                self.drop_session(&id, &w.opened).await?;
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
            // Before the last part and the completion: readers of the same bytes need
            // not wait for those.
            tell(matched.take());
        }
        if !w.buf.is_empty() {
            let last = w.buf.split().freeze();
            w.send_part(last).await?;
        }
        w.settle_all().await?;
        let parts = w
            .session
            .parts
            .iter()
            .map(|etag| object_store::multipart::PartId {
                content_id: etag.clone(),
            })
            .collect();
        self.store
            .complete_multipart(&self.path(&LAYOUT.upload_data(&id)), &upload_id, parts)
            .await
            .map_err(s3_error)?;
        let mut done = w.opened.clone();
        done.multipart = None; // completed: nothing to abort
        if expected.algorithm() == Algorithm::Sha512 {
            // The running hash is SHA-256 only; sha512 uploads are rare enough to re-read.
            let actual = self.hash_data(&id, Algorithm::Sha512).await?;
            if &actual != expected {
                self.delete(&LAYOUT.upload_data(&id)).await?;
                self.drop_session(&id, &done).await?;
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        tell(matched);
        self.point_blob(repository, expected, &id, size).await?;
        self.drop_session(&id, &done).await?;
        Ok(size)
    }

    /// The digest of upload `id`'s completed data object, read back.
    async fn hash_data(&self, id: &str, algorithm: Algorithm) -> Result<Digest> {
        let data = self.path(&LAYOUT.upload_data(id));
        let mut h = Hasher::new(algorithm);
        let mut stream = Self::stream_of(self.store.get(&data).await.map_err(s3_error)?);
        while let Some(chunk) = stream.next().await {
            h.update(&chunk?);
        }
        Ok(h.finish())
    }

    /// Make blob `expected` an empty pointer to upload `id`'s data (`size`
    /// bytes), and link it into `repository`.
    async fn point_blob(
        &self,
        repository: &str,
        expected: &Digest,
        id: &str,
        size: u64,
    ) -> Result<()> {
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(META_DATA_KEY.into()),
            AttributeValue::from(LAYOUT.upload_data(id)),
        );
        attributes.insert(
            Attribute::Metadata(META_SIZE.into()),
            AttributeValue::from(size.to_string()),
        );
        let options = PutOptions {
            attributes,
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let _no_gc = self.gc_lock.read().await;
        // Created only if absent: an existing blob is never repointed (its
        // bytes are already stored), so no upload can replace what a digest
        // serves; our copy of the data is dropped instead.
        match self
            .store
            .put_opts(
                &self.path(&LAYOUT.blob(expected)),
                PutPayload::new(),
                options,
            )
            .await
        {
            Ok(_) => self.cache_pointer(expected, &LAYOUT.upload_data(id), size),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                self.delete(&LAYOUT.upload_data(id)).await?;
            }
            Err(e) => return Err(s3_error(e)),
        }
        self.note_repository(repository).await?;
        self.put(&LAYOUT.layer_link(repository, expected), Bytes::new())
            .await
    }
}
