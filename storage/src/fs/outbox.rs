//! The event outbox on a filesystem: one file per record, written like every
//! other file (temp file, fsync, rename); claims created with `O_EXCL`.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::time::Duration;

use bytes::Bytes;

use super::files::{blocking, list_dir, not_found_as_none, remove_if_present};
use super::FsStorage;
use crate::outbox::{checked, Claim, CLAIMS, EVENTS};
use crate::Result;

impl FsStorage {
    pub(super) async fn fs_outbox_put(&self, id: &str, record: Bytes) -> Result<()> {
        let path = self.root().join(EVENTS).join(checked(id)?);
        let paths = self.paths();
        blocking(move || Ok(paths.write_atomic(&path, &record)?)).await
    }

    pub(super) async fn fs_outbox_get(&self, id: &str) -> Result<Option<Bytes>> {
        let path = self.root().join(EVENTS).join(checked(id)?);
        blocking(move || Ok(not_found_as_none(fs::read(path))?.map(Bytes::from))).await
    }

    pub(super) async fn fs_outbox_list(&self) -> Result<Vec<String>> {
        let dir = self.root().join(EVENTS);
        blocking(move || {
            let mut ids = list_dir(&dir)?;
            ids.retain(|id| crate::outbox::is_outbox_id(id));
            ids.sort();
            Ok(ids)
        })
        .await
    }

    pub(super) async fn fs_outbox_delete(&self, id: &str) -> Result<()> {
        let record = self.root().join(EVENTS).join(checked(id)?);
        let claim = self.root().join(CLAIMS).join(id);
        blocking(move || {
            remove_if_present(&record)?;
            remove_if_present(&claim)?;
            Ok(())
        })
        .await
    }

    /// Create the claim file if absent; take over an expired one by
    /// replacing it (two processes taking over the same expired claim at
    /// once may both win: a rare duplicate, which at-least-once allows).
    pub(super) async fn fs_outbox_claim(
        &self,
        id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let path = self.root().join(CLAIMS).join(checked(id)?);
        let claim = Claim::new(owner, ttl).to_bytes()?;
        let owner = owner.to_string();
        let paths = self.paths();
        blocking(move || {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent)?;
            }
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(&claim)?;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
            let Some(current) = not_found_as_none(fs::read(&path))? else {
                return Ok(false); // released meanwhile: try again next round
            };
            if !Claim::can_take(&current, &owner) {
                return Ok(false);
            }
            paths.write_atomic(&path, &claim)?;
            Ok(true)
        })
        .await
    }

    pub(super) async fn fs_outbox_release(&self, id: &str, owner: &str) -> Result<()> {
        let path = self.root().join(CLAIMS).join(checked(id)?);
        let owner = owner.to_string();
        blocking(move || {
            if let Some(current) = not_found_as_none(fs::read(&path))? {
                if Claim::is_owned_by(&current, &owner) {
                    remove_if_present(&path)?;
                }
            }
            Ok(())
        })
        .await
    }
}
