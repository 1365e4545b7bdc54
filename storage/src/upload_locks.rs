//! One async lock per upload session, so appends to one session are
//! serialised within a process. Shared by the backends that need it.
//!
//! An entry lives exactly as long as someone holds or waits for its lock:
//! every [`UploadLocks::lock`] counts itself in under the map's mutex and
//! counts itself out when its guard (or its unfinished wait) is dropped, and
//! the last one out removes the entry. There is deliberately no way to drop
//! an entry by id: removing it while others wait on it would let the next
//! request take a fresh lock beside a running one, and two appends would
//! then write one session's data at once (the blob-poisoning bug).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

type Entry = (Arc<tokio::sync::Mutex<()>>, usize);

#[derive(Default)]
pub(crate) struct UploadLocks {
    locks: Arc<Mutex<HashMap<String, Entry>>>,
}

/// Holds a session's lock; releasing it may remove the entry.
pub(crate) struct UploadGuard {
    // Field order matters: the lock is released before the count goes down.
    _held: tokio::sync::OwnedMutexGuard<()>,
    _user: User,
}

/// One holder or waiter of an entry, counted out on drop (also when a wait
/// is cancelled because its request went away).
struct User {
    locks: Arc<Mutex<HashMap<String, Entry>>>,
    id: String,
}

impl Drop for User {
    fn drop(&mut self) {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, users)) = locks.get_mut(&self.id) {
            *users -= 1;
            if *users == 0 {
                locks.remove(&self.id);
            }
        }
    }
}

impl UploadLocks {
    /// Wait for, and take, the lock of session `id`.
    pub(crate) async fn lock(&self, id: &str) -> UploadGuard {
        let mutex = {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            let (mutex, users) = locks.entry(id.to_string()).or_default();
            *users += 1;
            mutex.clone()
        };
        let user = User {
            locks: self.locks.clone(),
            id: id.to_string(),
        };
        let held = mutex.lock_owned().await;
        UploadGuard {
            _held: held,
            _user: user,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.locks.lock().map(|l| l.len()).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_lock_stays_while_anyone_waits_and_goes_with_the_last() {
        let locks = Arc::new(UploadLocks::default());
        let first = locks.lock("a").await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let waiter = {
            let (locks, tx) = (locks.clone(), tx.clone());
            tokio::spawn(async move {
                let _g = locks.lock("a").await;
                let _ = tx.send("second");
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send("second done");
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        // A third request arriving while the second waits must queue too,
        // not get a lock of its own.
        let third = {
            let (locks, tx) = (locks.clone(), tx.clone());
            tokio::spawn(async move {
                let _g = locks.lock("a").await;
                let _ = tx.send("third");
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(rx.try_recv().is_err(), "someone got the lock while held");
        drop(first);
        waiter.await.expect("waiter");
        third.await.expect("third");
        let order: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(order, ["second", "second done", "third"]);
        assert_eq!(locks.len(), 0, "entry left after the last holder");
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_nothing_behind() {
        let locks = Arc::new(UploadLocks::default());
        let held = locks.lock("b").await;
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock("b").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(locks.len(), 1);
        drop(held);
        assert_eq!(locks.len(), 0);
    }
}
