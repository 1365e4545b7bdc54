//! The event outbox in a bucket: one object per record; claims created with
//! `If-None-Match: *` and taken over with `If-Match` on the expired claim's
//! ETag, so two replicas never both win one claim.

use std::time::Duration;

use bytes::Bytes;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::{s3_error, S3Storage};
use crate::outbox::{checked, is_outbox_id, Claim, CLAIMS, EVENTS, LEASES};
use crate::Result;

impl S3Storage {
    pub(super) async fn s3_outbox_put(&self, id: &str, record: Bytes) -> Result<()> {
        self.put(&format!("{EVENTS}{}", checked(id)?), record).await
    }

    pub(super) async fn s3_outbox_get(&self, id: &str) -> Result<Option<Bytes>> {
        let rel = format!("{EVENTS}{}", checked(id)?);
        Ok(self.get_bytes(&rel).await?.map(|(bytes, _)| bytes))
    }

    pub(super) async fn s3_outbox_list(&self) -> Result<Vec<String>> {
        let mut ids: Vec<String> = self
            .list(EVENTS)
            .await?
            .into_iter()
            .filter_map(|o| o.key.strip_prefix(EVENTS).map(str::to_string))
            .filter(|id| is_outbox_id(id))
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub(super) async fn s3_outbox_delete(&self, id: &str) -> Result<()> {
        let id = checked(id)?;
        self.delete(&format!("{EVENTS}{id}")).await?;
        self.delete(&format!("{CLAIMS}{id}")).await
    }

    pub(super) async fn s3_outbox_claim(
        &self,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.claim(&format!("{CLAIMS}{}", checked(id)?), owner, ttl)
            .await
    }

    pub(super) async fn s3_lease_acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        self.claim(&format!("{LEASES}{}", checked(name)?), owner, ttl)
            .await
    }

    pub(super) async fn s3_lease_release(&self, name: &str, owner: &str) -> Result<()> {
        self.unclaim(&format!("{LEASES}{}", checked(name)?), owner)
            .await
    }

    /// Create the claim object `rel` for `owner`, or take it over when it is `owner`'s or
    /// expired, conditionally on what was read, so two replicas never both win.
    async fn claim(&self, rel: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let rel = rel.to_string();
        let mode = match self.get_bytes(&rel).await? {
            None => PutMode::Create,
            Some((current, _)) if !Claim::can_take(&current, owner) => return Ok(false),
            Some((_, Some(e_tag))) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            // No ETag to make the takeover conditional on: leave it to expire
            // and be deleted by its owner rather than risk two senders.
            Some((_, None)) => return Ok(false),
        };
        let claim = Claim::new(owner, ttl).to_bytes()?;
        match self
            .store
            .put_opts(
                &self.path(&rel),
                PutPayload::from(claim),
                PutOptions::from(mode),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. })
            | Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(s3_error(e)),
        }
    }

    pub(super) async fn s3_outbox_release(&self, id: &str, owner: &str) -> Result<()> {
        self.unclaim(&format!("{CLAIMS}{}", checked(id)?), owner)
            .await
    }

    async fn unclaim(&self, rel: &str, owner: &str) -> Result<()> {
        if let Some((current, _)) = self.get_bytes(rel).await? {
            if Claim::is_owned_by(&current, owner) {
                self.delete(rel).await?;
            }
        }
        Ok(())
    }
}
