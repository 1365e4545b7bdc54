//! Push and pull times on S3 (see [`crate::records`]): the LastModified of
//! tag objects and manifest links, and the `_pulls` object, changed by
//! conditional writes so replicas flushing at once lose nothing.

use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{s3_error, S3Storage, LAYOUT, TAG_RETRIES};
use crate::layout::{parse_tag, LinkKind};
use crate::records::{
    encode_pulls, merge_pulls, parse_pulls, pulls_key, summary_key, tags_stamp_of,
};
use crate::{Digest, ManifestRecord, PullTimes, Result, StorageError, SummaryPart, TagRecord};

impl S3Storage {
    pub(super) async fn read_tag_records(&self, repository: &str) -> Result<Vec<TagRecord>> {
        let mut out = Vec::new();
        for (name, item) in self.tag_objects(repository).await? {
            if item.size == 0 {
                continue; // a deleted tag
            }
            let Some((raw, _)) = self.get_bytes(&item.key).await? else {
                continue;
            };
            let Some((digest, inside)) = parse_tag(&raw) else {
                continue;
            };
            let digest = digest
                .map_err(|()| StorageError::Corrupt(format!("{}: not a digest", item.key)))?;
            // Long tags are stored under a hashed name (`=...`), with the tag inside.
            let tag = match inside {
                Some(tag) if name.starts_with('=') => tag,
                _ if name.starts_with('=') => continue,
                _ => name,
            };
            out.push(TagRecord {
                tag,
                digest,
                pushed: item.modified,
            });
        }
        out.sort_by(|a, b| a.tag.cmp(&b.tag));
        Ok(out)
    }

    pub(super) async fn read_manifest_records(
        &self,
        repository: &str,
    ) -> Result<Vec<ManifestRecord>> {
        let dir = format!("{}/", LAYOUT.links(repository, LinkKind::Manifest));
        let mut out: Vec<ManifestRecord> = self
            .list(&dir)
            .await?
            .into_iter()
            .filter_map(|item| {
                let link = LAYOUT.parse_link(&item.key)?;
                (link.repository == repository).then_some(ManifestRecord {
                    digest: link.digest,
                    pushed: item.modified,
                })
            })
            .collect();
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    /// One listing of the tag objects: key, size, ETag and time of each.
    /// The ETag changes with the content; the time (whole seconds) and size
    /// cover a server that lists no ETag.
    pub(super) async fn read_tags_stamp(&self, repository: &str) -> Result<Option<String>> {
        use futures::TryStreamExt;
        let dir = self.path(&format!("{}/", LAYOUT.tags(repository)));
        let objects: Vec<_> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(s3_error)?;
        if objects.is_empty() && !self.repository_exists(repository).await? {
            return Ok(None);
        }
        let lines = objects
            .iter()
            .map(|m| {
                format!(
                    "{} {} {} {}",
                    self.rel_of(&m.location),
                    m.size,
                    m.e_tag.as_deref().unwrap_or("-"),
                    m.last_modified.timestamp_micros()
                )
            })
            .collect();
        Ok(Some(tags_stamp_of(lines)))
    }

    pub(super) async fn read_summary(
        &self,
        repository: &str,
        part: SummaryPart,
    ) -> Result<Option<bytes::Bytes>> {
        Ok(self
            .get_bytes(&summary_key(repository, part))
            .await?
            .map(|(b, _)| b))
    }

    pub(super) async fn write_summary(
        &self,
        repository: &str,
        part: SummaryPart,
        bytes: bytes::Bytes,
    ) -> Result<()> {
        // A record would not make a repository exist, but keep none for one that does not.
        if !self.repository_exists(repository).await? {
            return Ok(());
        }
        self.put(&summary_key(repository, part), bytes).await
    }

    pub(super) async fn read_pulls(&self, repository: &str) -> Result<PullTimes> {
        let key = pulls_key(repository);
        match self.get_bytes(&key).await? {
            Some((raw, _)) => parse_pulls(&key, &raw),
            None => Ok(PullTimes::new()),
        }
    }

    pub(super) async fn merge_pulls(&self, repository: &str, new: &PullTimes) -> Result<()> {
        self.edit_pulls(repository, |stored| {
            merge_pulls(stored, new);
            true
        })
        .await
    }

    pub(super) async fn drop_pulls(&self, repository: &str, digests: &[Digest]) -> Result<()> {
        self.edit_pulls(repository, |stored| {
            let before = stored.len();
            stored.retain(|d, _| !digests.contains(d));
            stored.len() != before
        })
        .await
    }

    /// Read, edit, write back if the object is still the version read (and
    /// `edit` changed something); retried when another replica got there first.
    async fn edit_pulls(
        &self,
        repository: &str,
        edit: impl Fn(&mut PullTimes) -> bool,
    ) -> Result<()> {
        let key = pulls_key(repository);
        for _ in 0..TAG_RETRIES {
            let (mut stored, mode) = match self.get_bytes(&key).await? {
                Some((raw, e_tag)) => {
                    let mode = match e_tag {
                        Some(e_tag) => PutMode::Update(UpdateVersion {
                            e_tag: Some(e_tag),
                            version: None,
                        }),
                        None => PutMode::Overwrite,
                    };
                    (parse_pulls(&key, &raw)?, mode)
                }
                None => (PullTimes::new(), PutMode::Create),
            };
            if !edit(&mut stored) {
                return Ok(());
            }
            match self
                .store
                .put_opts(
                    &self.path(&key),
                    PutPayload::from(encode_pulls(&stored)?),
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
            "the pull record of {repository} kept changing; try again"
        )))
    }
}
