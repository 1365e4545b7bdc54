//! One async lock per upload session, so appends to one session are
//! serialised within a process. Shared by the backends that need it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub(crate) struct UploadLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl UploadLocks {
    /// The lock of session `id` (created on first use).
    pub(crate) fn get(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.entry(id.to_string()).or_default().clone()
    }

    /// Drop the lock of a finished, cancelled or unknown session, so ids
    /// that name no session never pile up.
    pub(crate) fn forget(&self, id: &str) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks.remove(id);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.locks.lock().map(|l| l.len()).unwrap_or(usize::MAX)
    }
}
