//! Short-lived caches for the catalog: the repository list and each
//! repository's row (tag count, size, newest image). This process's pushes
//! and deletes drop the entries they change at once; the time limit bounds
//! how stale a row may be after a push through another replica sharing the
//! storage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a cached entry is used without looking at storage again.
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
    rows: Mutex<HashMap<String, (Instant, Arc<RepoStats>)>>,
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

    pub fn row(&self, repository: &str) -> Option<Arc<RepoStats>> {
        let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        rows.get(repository)
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, r)| r.clone())
    }

    pub fn set_row(&self, repository: &str, stats: Arc<RepoStats>) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        if rows.len() >= MAX_ROWS {
            rows.clear();
        }
        rows.insert(repository.to_string(), (Instant::now(), stats));
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
        cache.set_row(
            "a",
            Arc::new(RepoStats {
                tags: 1,
                ..RepoStats::default()
            }),
        );
        cache.set_row(
            "b",
            Arc::new(RepoStats {
                tags: 2,
                ..RepoStats::default()
            }),
        );
        assert_eq!(cache.repositories().map(|l| l.len()), Some(2));
        cache.changed("a");
        assert!(cache.row("a").is_none());
        assert_eq!(cache.row("b").map(|r| r.tags), Some(2));
        assert!(cache.repositories().is_none());
    }
}
