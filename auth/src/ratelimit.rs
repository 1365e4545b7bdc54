//! A per-client token bucket: each client (an IP address, a user name) may
//! make `burst` requests at once and `rate` per second on average; past that
//! it is told how long to wait (`429 Too Many Requests` + `Retry-After`).
//!
//! Pure: the caller passes `now`, so tests need no sleeping. Memory is
//! bounded: at most `max_clients` buckets. A bucket that has refilled
//! completely is the same as no bucket, so idle clients are dropped first;
//! if every tracked client is active, the least recently seen are dropped.
//! Under a flood of new keys (spoofed or many addresses) that means an evicted
//! client starts again with a full bucket — the limiter fails open for them
//! rather than growing without bound or locking out clients it never saw.
//!
//! This is per process: replicas behind a load balancer each count their own
//! share, which is the usual trade-off for a stateless server.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How fast clients may go.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Requests per second, on average, once the burst is spent.
    pub rate: f64,
    /// Requests allowed at once (the bucket's size).
    pub burst: u32,
    /// Clients tracked at most.
    pub max_clients: usize,
}

impl Default for RateLimit {
    /// Generous for registry traffic (a `docker pull` of a 30-layer image
    /// makes ~70 requests at once), strict enough to slow password guessing.
    fn default() -> RateLimit {
        RateLimit {
            rate: 50.0,
            burst: 200,
            max_clients: 100_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Refused; the client may try again after this long.
    RetryAfter(Duration),
}

impl Decision {
    /// `Retry-After` wants whole seconds; round up so a client that waits
    /// as told is let through.
    pub fn retry_after_secs(self) -> Option<u64> {
        match self {
            Decision::Allowed => None,
            Decision::RetryAfter(d) => Some(d.as_secs() + u64::from(d.subsec_nanos() > 0)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Debug)]
pub struct RateLimiter<K> {
    limit: RateLimit,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// A zero or negative `rate` refills nothing (only the burst is ever
    /// allowed); a zero `burst` refuses everything. `max_clients` is at least 1.
    pub fn new(limit: RateLimit) -> RateLimiter<K> {
        let limit = RateLimit {
            rate: if limit.rate.is_finite() {
                limit.rate.max(0.0)
            } else {
                0.0
            },
            burst: limit.burst,
            max_clients: limit.max_clients.max(1),
        };
        RateLimiter {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Take one request from `client`'s bucket.
    pub fn check(&mut self, client: &K, now: Instant) -> Decision {
        self.check_n(client, 1, now)
    }

    /// Take `cost` requests at once (e.g. a failed login may cost more).
    pub fn check_n(&mut self, client: &K, cost: u32, now: Instant) -> Decision {
        let burst = f64::from(self.limit.burst);
        let cost = f64::from(cost);
        if cost > burst {
            // Can never be satisfied: do not make the client wait forever.
            return Decision::RetryAfter(Duration::from_secs(3600));
        }
        if !self.buckets.contains_key(client) && self.buckets.len() >= self.limit.max_clients {
            self.evict(now);
        }
        let rate = self.limit.rate;
        let bucket = self.buckets.entry(client.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        // A `now` earlier than the last update (callers racing) adds nothing.
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.updated = bucket.updated.max(now);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            return Decision::Allowed;
        }
        let wait = if rate > 0.0 {
            (cost - bucket.tokens) / rate
        } else {
            3600.0
        };
        Decision::RetryAfter(Duration::from_secs_f64(wait.min(3600.0)))
    }

    /// Make room: drop every bucket that has refilled (indistinguishable from
    /// a new one); if that frees nothing, drop the least recently seen eighth.
    fn evict(&mut self, now: Instant) {
        let burst = f64::from(self.limit.burst);
        let rate = self.limit.rate;
        self.buckets.retain(|_, b| {
            let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
            b.tokens + elapsed * rate < burst
        });
        if self.buckets.len() < self.limit.max_clients {
            return;
        }
        // Dropping a batch keeps eviction amortised O(1) per new client.
        let drop = (self.buckets.len() / 8).max(1);
        let mut seen: Vec<Instant> = self.buckets.values().map(|b| b.updated).collect();
        let (_, cutoff, _) = seen.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut dropped = 0;
        self.buckets.retain(|_, b| {
            if dropped < drop && b.updated <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
    }

    /// Clients currently tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: f64, burst: u32, max_clients: usize) -> RateLimiter<String> {
        RateLimiter::new(RateLimit {
            rate,
            burst,
            max_clients,
        })
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_rate() {
        let mut rl = limiter(10.0, 5, 100);
        let t = Instant::now();
        let a = "10.0.0.1".to_string();
        for _ in 0..5 {
            assert_eq!(rl.check(&a, t), Decision::Allowed);
        }
        let refused = rl.check(&a, t);
        assert_eq!(refused, Decision::RetryAfter(ms(100)));
        assert_eq!(refused.retry_after_secs(), Some(1));
        // After 100 ms one more token has dripped in.
        assert_eq!(rl.check(&a, t + ms(100)), Decision::Allowed);
        assert!(matches!(rl.check(&a, t + ms(100)), Decision::RetryAfter(_)));
        // Another client has its own bucket.
        assert_eq!(rl.check(&"10.0.0.2".to_string(), t), Decision::Allowed);
        // Idle for long: the bucket is full again, never fuller.
        for _ in 0..5 {
            assert_eq!(rl.check(&a, t + Duration::from_secs(60)), Decision::Allowed);
        }
        assert!(matches!(
            rl.check(&a, t + Duration::from_secs(60)),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn retry_after_is_honest() {
        let mut rl = limiter(2.0, 1, 10);
        let t = Instant::now();
        let a = "a".to_string();
        assert_eq!(rl.check(&a, t), Decision::Allowed);
        let Decision::RetryAfter(wait) = rl.check(&a, t) else {
            panic!("should be limited");
        };
        assert_eq!(wait, ms(500));
        assert!(matches!(
            rl.check(&a, t + wait - ms(1)),
            Decision::RetryAfter(_)
        ));
        assert_eq!(rl.check(&a, t + wait), Decision::Allowed);
        assert_eq!(
            Decision::RetryAfter(Duration::from_secs(2)).retry_after_secs(),
            Some(2)
        );
        assert_eq!(Decision::Allowed.retry_after_secs(), None);
    }

    #[test]
    fn clock_going_backwards_adds_nothing() {
        let mut rl = limiter(1.0, 1, 10);
        let t = Instant::now() + Duration::from_secs(10);
        let a = "a".to_string();
        assert_eq!(rl.check(&a, t), Decision::Allowed);
        assert!(matches!(
            rl.check(&a, t - Duration::from_secs(5)),
            Decision::RetryAfter(_)
        ));
        assert!(matches!(rl.check(&a, t + ms(500)), Decision::RetryAfter(_)));
        assert_eq!(rl.check(&a, t + Duration::from_secs(1)), Decision::Allowed);
    }

    #[test]
    fn costs_and_degenerate_limits() {
        let t = Instant::now();
        let a = "a".to_string();
        let mut rl = limiter(1.0, 10, 10);
        assert_eq!(rl.check_n(&a, 10, t), Decision::Allowed);
        assert_eq!(
            rl.check_n(&a, 11, t),
            Decision::RetryAfter(Duration::from_secs(3600))
        );
        let mut none = limiter(1.0, 0, 10);
        assert!(matches!(none.check(&a, t), Decision::RetryAfter(_)));
        let mut no_refill = limiter(0.0, 1, 10);
        assert_eq!(no_refill.check(&a, t), Decision::Allowed);
        assert_eq!(
            no_refill.check(&a, t + Duration::from_secs(99)),
            Decision::RetryAfter(Duration::from_secs(3600))
        );
        let mut nan = limiter(f64::NAN, 1, 0);
        assert_eq!(nan.check(&a, t), Decision::Allowed);
        assert!(matches!(
            nan.check(&a, t + Duration::from_secs(99)),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn memory_stays_bounded() {
        let mut rl = limiter(1.0, 2, 64);
        let t = Instant::now();
        // A flood of distinct clients, all active.
        for i in 0..10_000u64 {
            rl.check(&format!("c{i}"), t + ms(i));
            assert!(rl.len() <= 64, "{} clients tracked", rl.len());
        }
        assert!(!rl.is_empty());
    }

    #[test]
    fn idle_clients_go_first() {
        let mut rl = limiter(1.0, 2, 3);
        let t = Instant::now();
        let (a, b, c) = ("a".to_string(), "b".to_string(), "c".to_string());
        // `a` uses its bucket up and stays busy; b and c go idle.
        rl.check(&b, t);
        rl.check(&c, t);
        rl.check(&a, t + Duration::from_secs(10));
        rl.check(&a, t + Duration::from_secs(10));
        // A new client at t+10: b and c have refilled and are dropped, `a` is kept.
        rl.check(&"d".to_string(), t + Duration::from_secs(10));
        assert_eq!(rl.len(), 2);
        assert!(matches!(
            rl.check(&a, t + Duration::from_secs(10)),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn busy_clients_evict_the_least_recent() {
        let mut rl = limiter(0.001, 5, 8);
        let t = Instant::now();
        for i in 0..8u64 {
            rl.check(&format!("c{i}"), t + ms(i));
        }
        assert_eq!(rl.len(), 8);
        rl.check(&"new".to_string(), t + ms(100));
        assert_eq!(rl.len(), 8, "one dropped, one added");
        // c0 was the least recent: it starts again with a full bucket.
        for _ in 0..5 {
            assert_eq!(rl.check(&"c0".to_string(), t + ms(200)), Decision::Allowed);
        }
    }
}
