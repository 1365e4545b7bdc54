//! Upload sessions, kept in the bucket so any replica can continue them.

use object_store::multipart::MultipartStore;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{json, s3_error, S3Storage, Session, LAYOUT};
use crate::layout::is_upload_id;
use crate::upload_locks::UploadGuard;
use crate::{Result, StorageError};

impl S3Storage {
    // --- upload sessions ---

    pub(super) async fn load_session(
        &self,
        repository: &str,
        id: &str,
    ) -> Result<(Session, Option<String>)> {
        if !is_upload_id(id) {
            return Err(StorageError::UploadUnknown);
        }
        let Some((raw, e_tag)) = self.get_bytes(&LAYOUT.upload_state(id)).await? else {
            return Err(StorageError::UploadUnknown);
        };
        let session: Session = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("upload {id} state: {e}")))?;
        if session.repository != repository {
            return Err(StorageError::UploadUnknown);
        }
        Ok((session, e_tag))
    }

    /// Lock a session in this process and read its state. The lock is keyed
    /// by id and never dropped while anyone holds or waits for it, so a
    /// request naming another repository's session only waits its turn to
    /// be told the session is unknown; it changes nothing. (Reading before
    /// locking, as the filesystem does, would cost every append one more
    /// GET here.)
    pub(super) async fn lock_session(
        &self,
        repository: &str,
        id: &str,
    ) -> Result<(UploadGuard, Session, Option<String>)> {
        if !is_upload_id(id) {
            return Err(StorageError::UploadUnknown);
        }
        let guard = self.upload_locks.lock(id).await;
        let (session, e_tag) = self.load_session(repository, id).await?;
        Ok((guard, session, e_tag))
    }

    /// Write a session's state if nobody else did since we read `e_tag`.
    pub(super) async fn save_session(
        &self,
        id: &str,
        session: &Session,
        e_tag: &mut Option<String>,
    ) -> Result<()> {
        let mode = match e_tag.clone() {
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            None => PutMode::Overwrite,
        };
        let result = self
            .store
            .put_opts(
                &self.path(&LAYOUT.upload_state(id)),
                PutPayload::from(json(session)?),
                PutOptions::from(mode),
            )
            .await;
        match result {
            Ok(r) => {
                *e_tag = r.e_tag;
                Ok(())
            }
            Err(object_store::Error::Precondition { .. }) => {
                // Another replica moved the session on: report where it is now.
                let (now, _) = self.load_session(&session.repository, id).await?;
                Err(StorageError::RangeMismatch { offset: now.offset })
            }
            Err(e) => Err(s3_error(e)),
        }
    }

    /// Remove a session's objects (state last, so a failure leaves it findable).
    pub(super) async fn drop_session(&self, id: &str, session: &Session) -> Result<()> {
        if let Some(mp) = &session.multipart {
            // Best effort: a completed upload is already gone.
            let _ = self
                .store
                .abort_multipart(&self.path(&LAYOUT.upload_data(id)), mp)
                .await;
        }
        if let Some(tail) = &session.tail_key {
            self.delete(tail).await?;
        }
        self.delete(&LAYOUT.upload_state(id)).await
    }
}
