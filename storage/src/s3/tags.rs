//! Tag objects and referrers indexes: changed by conditional writes, so
//! racing replicas never lose each other's changes.

use bytes::Bytes;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{json, s3_error, S3Storage, LAYOUT, TAG_RETRIES};
use crate::gc::Stored;
use crate::layout::LinkKind;
use crate::{Descriptor, Digest, Result, StorageError};

impl S3Storage {
    /// The tag objects of a repository: (name in the key, listing).
    pub(super) async fn tag_objects(&self, repository: &str) -> Result<Vec<(String, Stored)>> {
        let dir = format!("{}/", LAYOUT.tags(repository));
        let mut out = Vec::new();
        for item in self.list(&dir).await? {
            if let Some(tag) = item.key.strip_prefix(&dir) {
                if !tag.contains('/') {
                    out.push((tag.to_string(), item));
                }
            }
        }
        Ok(out)
    }

    /// Change the referrers index of `subject` with `edit`, conditionally on
    /// the version read; retried when another writer got there first.
    pub(super) async fn edit_referrers(
        &self,
        repository: &str,
        subject: &Digest,
        edit: impl Fn(&mut Vec<Descriptor>),
    ) -> Result<()> {
        let rel = LAYOUT.referrers(repository, subject);
        for _ in 0..TAG_RETRIES {
            let (mut list, mode) = match self.get_bytes(&rel).await? {
                Some((raw, e_tag)) => {
                    let list: Vec<Descriptor> = serde_json::from_slice(&raw)
                        .map_err(|e| StorageError::Corrupt(format!("{rel}: {e}")))?;
                    let mode = match e_tag {
                        Some(e_tag) => PutMode::Update(UpdateVersion {
                            e_tag: Some(e_tag),
                            version: None,
                        }),
                        None => PutMode::Overwrite,
                    };
                    (list, mode)
                }
                None => (Vec::new(), PutMode::Create),
            };
            edit(&mut list);
            match self
                .store
                .put_opts(
                    &self.path(&rel),
                    PutPayload::from(json(&list)?),
                    PutOptions::from(mode),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(s3_error(e)),
            }
        }
        Err(StorageError::Unavailable(format!(
            "the referrers of {subject} kept changing; try again"
        )))
    }

    /// Replace a tag object with a tombstone if it still holds `e_tag`.
    /// False when it changed meanwhile (someone re-tagged: their value stays).
    pub(super) async fn tombstone_tag(&self, rel: &str, e_tag: Option<String>) -> Result<bool> {
        let mode = match e_tag {
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            None => PutMode::Overwrite,
        };
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::new(), PutOptions::from(mode))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// S3 has no empty folders: once its last link is deleted a repository
    /// would vanish from the catalog, where on disk its folder stays. A
    /// marker (not a digest, so never taken for a link) keeps it listed.
    pub(super) async fn keep_repository(&self, repository: &str, kind: LinkKind) -> Result<()> {
        self.put(&LAYOUT.kept_marker(repository, kind), Bytes::new())
            .await
    }
}
