//! Backoff after failed logins, per key (an account, a client address).
//!
//! The first `free_failures` wrong passwords in a row cost nothing; from
//! then on every failure locks the key for `base * 2^(failures - free)`
//! (capped at `max`), during which its logins are refused with the wait
//! (429 + `Retry-After`) without running bcrypt. A right password resets the
//! key. A key with no failure for `forget_after` (and no lock running) starts
//! afresh.
//!
//! Pure: the caller passes `now`. Memory is bounded by `max_entries`: a new
//! key in a full table first drops forgotten keys, then unlocked ones, then
//! the eighth whose last failure is oldest. So a flood of distinct keys can
//! make the throttle forget a key (fail open for it) but never grow without
//! bound; the caller keeps keys it cares more about (accounts that exist) in
//! a table of their own so floods of made-up names cannot evict them.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// Failures in a row before the backoff starts; 0 turns throttling off.
    pub free_failures: u32,
    /// The first lock's length; each further failure doubles it.
    pub base: Duration,
    /// The longest lock.
    pub max: Duration,
    /// A key without failures for this long (and not locked) is forgotten.
    pub forget_after: Duration,
    /// Keys tracked at most.
    pub max_entries: usize,
}

/// Failures before the backoff starts, by default.
pub const DEFAULT_FREE_FAILURES: u32 = 5;

impl Default for ThrottlePolicy {
    /// Five typos cost a user nothing; a guesser gets about 15 more guesses
    /// in the first quarter hour, then one per 15 minutes.
    fn default() -> ThrottlePolicy {
        ThrottlePolicy {
            free_failures: DEFAULT_FREE_FAILURES,
            base: Duration::from_secs(1),
            max: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(3600),
            max_entries: 10_000,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

impl Entry {
    fn locked_at(&self, now: Instant) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }

    fn forgotten_at(&self, now: Instant, forget_after: Duration) -> bool {
        !self.locked_at(now) && now.saturating_duration_since(self.last_failure) >= forget_after
    }
}

#[derive(Debug)]
pub struct LoginThrottle<K> {
    policy: ThrottlePolicy,
    entries: HashMap<K, Entry>,
}

impl<K: Hash + Eq + Clone> LoginThrottle<K> {
    pub fn new(policy: ThrottlePolicy) -> LoginThrottle<K> {
        LoginThrottle {
            policy: ThrottlePolicy {
                max_entries: policy.max_entries.max(1),
                max: policy.max.max(policy.base),
                ..policy
            },
            entries: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.policy.free_failures > 0
    }

    /// Before checking a password: how long `key` must still wait, if it is
    /// backed off.
    pub fn check<Q>(&self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let until = self.entries.get(key)?.locked_until?;
        (until > now).then(|| until - now)
    }

    /// A wrong password for `key`. Returns the lock's length when this
    /// failure starts a new lockout (the moment to log it, once); failures
    /// that land while a lock runs (checks that were already under way)
    /// lengthen it silently.
    pub fn record_failure<Q>(&mut self, key: &Q, now: Instant) -> Option<Duration>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if !self.enabled() {
            return None;
        }
        if !self.entries.contains_key(key) {
            if self.entries.len() >= self.policy.max_entries {
                self.evict(now);
            }
            self.entries.insert(
                key.to_owned(),
                Entry {
                    failures: 0,
                    last_failure: now,
                    locked_until: None,
                },
            );
        }
        let policy = self.policy;
        let entry = self.entries.get_mut(key)?;
        if entry.forgotten_at(now, policy.forget_after) {
            *entry = Entry {
                failures: 0,
                last_failure: now,
                locked_until: None,
            };
        }
        let was_locked = entry.locked_at(now);
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = entry.last_failure.max(now);
        if entry.failures < policy.free_failures {
            return None;
        }
        let doublings = (entry.failures - policy.free_failures).min(31);
        let backoff = policy
            .base
            .checked_mul(1u32 << doublings)
            .unwrap_or(policy.max)
            .min(policy.max);
        let until = now + backoff;
        entry.locked_until = Some(entry.locked_until.map_or(until, |old| old.max(until)));
        (!was_locked).then_some(backoff)
    }

    /// A right password for `key`: its failures are forgiven.
    pub fn record_success<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.remove(key);
    }

    /// Make room for one key: forgotten keys go first, then unlocked ones,
    /// then the eighth with the oldest last failure (a batch, so eviction
    /// stays amortised O(1) per new key).
    fn evict(&mut self, now: Instant) {
        let forget_after = self.policy.forget_after;
        self.entries
            .retain(|_, e| !e.forgotten_at(now, forget_after));
        if self.entries.len() < self.policy.max_entries {
            return;
        }
        self.entries.retain(|_, e| e.locked_at(now));
        if self.entries.len() < self.policy.max_entries {
            return;
        }
        let drop = (self.entries.len() / 8).max(1);
        let mut seen: Vec<Instant> = self.entries.values().map(|e| e.last_failure).collect();
        let (_, cutoff, _) = seen.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        self.entries.retain(|_, e| {
            if dropped < drop && e.last_failure <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }

    /// Keys tracked.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn throttle(max_entries: usize) -> LoginThrottle<&'static str> {
        LoginThrottle::new(ThrottlePolicy {
            max_entries,
            ..ThrottlePolicy::default()
        })
    }

    #[test]
    fn backs_off_exponentially_after_free_failures() {
        let mut t = throttle(100);
        let t0 = Instant::now();
        for i in 0..4 {
            assert_eq!(t.record_failure(&"alice", t0), None, "failure {i} is free");
            assert_eq!(t.check(&"alice", t0), None);
        }
        // The fifth failure starts a 1 s lockout, reported once.
        assert_eq!(t.record_failure(&"alice", t0), Some(secs(1)));
        assert_eq!(t.check(&"alice", t0), Some(secs(1)));
        assert_eq!(
            t.check(&"alice", t0 + Duration::from_millis(400)),
            Some(Duration::from_millis(600))
        );
        assert_eq!(t.check(&"alice", t0 + secs(1)), None, "lock expired");
        // Each later failure doubles the lock: 2 s, 4 s, 8 s...
        assert_eq!(t.record_failure(&"alice", t0 + secs(1)), Some(secs(2)));
        assert_eq!(t.check(&"alice", t0 + secs(1)), Some(secs(2)));
        assert_eq!(t.record_failure(&"alice", t0 + secs(3)), Some(secs(4)));
        assert_eq!(t.check(&"alice", t0 + secs(3)), Some(secs(4)));
        // Other keys are untouched.
        assert_eq!(t.check(&"bob", t0 + secs(3)), None);
    }

    #[test]
    fn failures_during_a_lock_lengthen_it_silently() {
        let mut t = throttle(100);
        let t0 = Instant::now();
        for _ in 0..4 {
            t.record_failure(&"a", t0);
        }
        assert_eq!(t.record_failure(&"a", t0), Some(secs(1)));
        // Checks already under way when the lock began fail later: no new
        // lockout to log, but the lock grows (2 s, then 4 s from now).
        assert_eq!(t.record_failure(&"a", t0), None);
        assert_eq!(t.record_failure(&"a", t0), None);
        assert_eq!(t.check(&"a", t0), Some(secs(4)));
    }

    #[test]
    fn the_lock_is_capped() {
        let mut t = throttle(100);
        let t0 = Instant::now();
        for _ in 0..200 {
            t.record_failure(&"a", t0);
        }
        assert_eq!(t.check(&"a", t0), Some(ThrottlePolicy::default().max));
    }

    #[test]
    fn success_resets_and_old_failures_are_forgotten() {
        let mut t = throttle(100);
        let t0 = Instant::now();
        for _ in 0..5 {
            t.record_failure(&"a", t0);
        }
        assert!(t.check(&"a", t0).is_some());
        t.record_success(&"a");
        assert_eq!(t.check(&"a", t0), None);
        assert!(t.is_empty());
        // Four failures, an hour of quiet: the count starts again.
        for _ in 0..4 {
            t.record_failure(&"a", t0);
        }
        let later = t0 + secs(3600);
        for _ in 0..4 {
            assert_eq!(t.record_failure(&"a", later), None);
        }
        assert_eq!(t.record_failure(&"a", later), Some(secs(1)));
    }

    #[test]
    fn zero_free_failures_turns_it_off() {
        let mut t: LoginThrottle<&str> = LoginThrottle::new(ThrottlePolicy {
            free_failures: 0,
            ..ThrottlePolicy::default()
        });
        let t0 = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.record_failure(&"a", t0), None);
        }
        assert_eq!(t.check(&"a", t0), None);
        assert!(t.is_empty());
    }

    #[test]
    fn memory_stays_bounded_and_locks_are_kept_longest() {
        let mut t: LoginThrottle<String> = LoginThrottle::new(ThrottlePolicy {
            max_entries: 64,
            ..ThrottlePolicy::default()
        });
        let t0 = Instant::now();
        // A locked key...
        for _ in 0..5 {
            t.record_failure(&"victim".to_string(), t0);
        }
        // ...then a flood of distinct keys with one failure each.
        for i in 0..10_000u64 {
            t.record_failure(&format!("k{i}"), t0 + Duration::from_millis(i / 100));
            assert!(t.len() <= 64, "{} keys tracked", t.len());
        }
        assert!(
            t.check(&"victim".to_string(), t0).is_some(),
            "unlocked keys are evicted before locked ones"
        );
    }

    #[test]
    fn a_full_table_of_locks_drops_the_oldest() {
        let mut t = throttle(8);
        let t0 = Instant::now();
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        for (i, key) in keys.iter().enumerate() {
            for _ in 0..5 {
                t.record_failure(key, t0 + Duration::from_millis(i as u64));
            }
        }
        assert_eq!(t.len(), 8);
        t.record_failure(&"new", t0 + Duration::from_millis(100));
        assert_eq!(t.len(), 8, "one dropped, one added");
        assert_eq!(
            t.check(&"a", t0 + Duration::from_millis(100)),
            None,
            "the oldest went"
        );
        assert!(t.check(&"h", t0 + Duration::from_millis(100)).is_some());
    }
}
