//! Last-pulled times for retention, recorded cheaply: a manifest GET notes
//! its digest in memory, and the server writes the notes to storage in one
//! merge per repository at each flush (every minute or so), never once per pull.
//!
//! A flush merges the later time per digest into the shared record, so
//! replicas over one bucket add to each other's times. Notes not yet flushed
//! are lost if the process dies: a pull time is at most one flush interval
//! behind, which retention windows of days do not notice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use berth_storage::{Digest, PullTimes, Storage, StorageError};

/// Past this many digests noted and not yet flushed, new ones are dropped
/// (bounded memory whatever clients do; flushing empties it).
const MAX_PENDING: usize = 100_000;

/// Pull notes not yet written, shared by every clone.
#[derive(Clone, Debug, Default)]
pub struct PullLog(Arc<Mutex<Pending>>);

#[derive(Debug, Default)]
struct Pending {
    by_repository: HashMap<String, PullTimes>,
    entries: usize,
}

impl Pending {
    fn note(&mut self, repository: &str, digest: &Digest, at: SystemTime) {
        let times = match self.by_repository.get_mut(repository) {
            Some(times) => times,
            None if self.entries >= MAX_PENDING => return,
            None => self
                .by_repository
                .entry(repository.to_string())
                .or_default(),
        };
        match times.get_mut(digest) {
            Some(slot) => *slot = (*slot).max(at),
            None if self.entries >= MAX_PENDING => {}
            None => {
                times.insert(digest.clone(), at);
                self.entries += 1;
            }
        }
    }
}

impl PullLog {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A manifest of `repository` was pulled now.
    pub fn record(&self, repository: &str, digest: &Digest) {
        self.pending().note(repository, digest, SystemTime::now());
    }

    /// How many digests wait to be written.
    pub fn pending_count(&self) -> usize {
        self.pending().entries
    }

    /// Write every note to storage; notes of a repository whose write failed
    /// are kept for the next flush. Returns how many digests were written.
    pub async fn flush(&self, storage: &dyn Storage) -> Result<usize, StorageError> {
        let taken = {
            let mut pending = self.pending();
            pending.entries = 0;
            std::mem::take(&mut pending.by_repository)
        };
        let (mut written, mut failure) = (0, None);
        for (repository, times) in taken {
            match storage.record_pulls(&repository, &times).await {
                Ok(()) => written += times.len(),
                Err(e) => {
                    let mut pending = self.pending();
                    for (digest, at) in &times {
                        pending.note(&repository, digest, *at);
                    }
                    failure = Some(e);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notes_are_merged_bounded_and_flushed_once() {
        let log = PullLog::default();
        let storage = berth_storage::MemoryStorage::new();
        let bytes = bytes::Bytes::from_static(b"{}");
        let digest = Digest::sha256_of(&bytes);
        let meta = berth_storage::ManifestMeta {
            media_type: "application/x".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(Vec::new()),
        };
        storage
            .manifest_put("app", &digest, bytes, &meta, Some("t"))
            .await
            .expect("put");
        for _ in 0..1000 {
            log.record("app", &digest);
        }
        assert_eq!(
            log.pending_count(),
            1,
            "one note per digest, however many pulls"
        );
        assert_eq!(log.flush(&storage).await.expect("flush"), 1);
        assert_eq!(log.pending_count(), 0);
        assert!(storage
            .pulls("app")
            .await
            .expect("pulls")
            .contains_key(&digest));

        // A flood of distinct digests stops at the bound.
        for i in 0..(MAX_PENDING + 10) {
            log.record(&format!("r{}", i % 7), &Digest::sha256_of(&i.to_le_bytes()));
        }
        assert_eq!(log.pending_count(), MAX_PENDING);
    }
}
