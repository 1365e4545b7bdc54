//! Caches for the catalog: the repository list, short-lived (this process's
//! pushes and deletes drop it at once; the time limit bounds how long a
//! repository created or emptied through another replica sharing the storage
//! takes to appear), and each repository's row under the tags stamp it was
//! computed for (see `records`), so a row is used only while it is current.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the repository list is used without looking at storage again.
const FRESH_FOR: Duration = Duration::from_secs(15);
/// Rows kept at most; the table is emptied when full.
const MAX_ROWS: usize = 200_000;

/// A repository's catalog row, without its name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RepoStats {
    pub tags: usize,
    pub size: u64,
    pub newest: Option<String>,
    /// When a tag was last pushed (RFC 3339, UTC).
    pub pushed: Option<String>,
}

#[derive(Default)]
pub struct CatalogCache {
    repositories: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    rows: Mutex<HashMap<String, (String, Arc<RepoStats>)>>,
}

impl CatalogCache {
    pub fn repositories(&self) -> Option<Arc<Vec<String>>> {
        let list = self.repositories.lock().unwrap_or_else(|e| e.into_inner());
        list.as_ref()
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, l)| l.clone())
    }

    pub fn set_repositories(&self, list: Arc<Vec<String>>) {
        *self.repositories.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), list));
    }

    /// The row of `repository` if it was computed for these tags (`stamp`).
    pub fn row(&self, repository: &str, stamp: &str) -> Option<Arc<RepoStats>> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.get(repository)
            .filter(|(s, _)| s == stamp)
            .map(|(_, r)| r.clone())
    }

    pub fn set_row(&self, repository: &str, stamp: &str, stats: Arc<RepoStats>) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if rows.len() >= MAX_ROWS {
            rows.clear();
        }
        rows.insert(repository.to_string(), (stamp.to_string(), stats));
    }

    /// A manifest or tag of `repository` changed here: forget what it changes
    /// (its row, and the list, which a first push or a last delete changes).
    pub fn changed(&self, repository: &str) {
        self.rows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(repository);
        *self.repositories.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_drop_what_they_change() {
        let cache = CatalogCache::default();
        cache.set_repositories(Arc::new(vec!["a".into(), "b".into()]));
        let stats = |tags| {
            Arc::new(RepoStats {
                tags,
                ..RepoStats::default()
            })
        };
        cache.set_row("a", "s1", stats(1));
        cache.set_row("b", "s1", stats(2));
        assert_eq!(cache.repositories().map(|l| l.len()), Some(2));
        assert!(cache.row("b", "s2").is_none(), "another stamp: not used");
        cache.changed("a");
        assert!(cache.row("a", "s1").is_none());
        assert_eq!(cache.row("b", "s1").map(|r| r.tags), Some(2));
        assert!(cache.repositories().is_none());
    }
}
