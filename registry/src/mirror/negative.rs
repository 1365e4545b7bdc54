//! Negative caching: an upstream 404 for a tag, manifest digest or blob is remembered for
//! the mirror's `not_found_ttl`, so a flood of pulls of a missing name asks the upstream
//! once per TTL, not once per pull.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Mirror;

/// Entries kept at most; past it expired ones are dropped, then all (forgetting a miss
/// only costs one more upstream request).
const MAX_ENTRIES: usize = 10_000;

/// (local repository, reference) → when the upstream said it has no such thing.
#[derive(Default)]
pub(super) struct Missing(Mutex<HashMap<(String, String), Instant>>);

impl Missing {
    fn is_missing(&self, name: &str, reference: &str, ttl: Duration) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(name.to_string(), reference.to_string()))
            .is_some_and(|at| at.elapsed() < ttl)
    }

    fn note(&self, name: &str, reference: &str, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, at| at.elapsed() < ttl);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert((name.to_string(), reference.to_string()), Instant::now());
    }
}

impl Mirror {
    /// Whether the upstream said `reference` is not in `name` less than `not_found_ttl` ago.
    pub(super) fn known_missing(&self, name: &str, reference: &str) -> bool {
        self.missing.is_missing(name, reference, self.not_found_ttl)
    }

    /// The upstream answered 404 for `reference` in `name`.
    pub(super) fn note_missing(&self, name: &str, reference: &str) {
        tracing::debug!(repository = %name, %reference, "mirror: not upstream (remembered)");
        self.missing.note(name, reference, self.not_found_ttl);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_expire_and_are_bounded() {
        let m = Missing::default();
        let ttl = Duration::from_secs(30);
        m.note("r", "latest", ttl);
        assert!(m.is_missing("r", "latest", ttl));
        assert!(!m.is_missing("r", "other", ttl));
        assert!(!m.is_missing("r", "latest", Duration::ZERO), "expired");
        m.note("r", "zero", Duration::ZERO);
        assert!(
            !m.0.lock()
                .expect("lock")
                .contains_key(&("r".to_string(), "zero".to_string())),
            "a zero TTL keeps nothing"
        );
        for i in 0..(MAX_ENTRIES + 5) {
            m.note("r", &i.to_string(), ttl);
        }
        assert!(m.0.lock().expect("lock").len() <= MAX_ENTRIES);
    }
}
