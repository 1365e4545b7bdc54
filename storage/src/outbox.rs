//! The event outbox: records of registry events (webhook notifications) kept
//! in the storage until every endpoint has them, so they survive a restart and
//! any replica over the same storage can deliver them.
//!
//! ```text
//! outbox/events/<id>   one event record (bytes opaque to storage)
//! outbox/claims/<id>   who is delivering it, until when (JSON [`Claim`])
//! ```
//! A claim keeps two replicas from sending one event at the same time in the
//! common case: it is created only if absent (`If-None-Match: *` on S3,
//! `O_EXCL` on a filesystem) and taken over only once expired.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::{Result, StorageError};

pub(crate) const EVENTS: &str = "outbox/events/";
pub(crate) const CLAIMS: &str = "outbox/claims/";
/// Leases between replicas ([`crate::Storage::lease_acquire`]), stored like claims.
pub(crate) const LEASES: &str = "leases/";

/// Whether `id` may name an outbox record: what the registry generates
/// (letters, digits, `-`), so it can never leave the outbox's folder.
pub fn is_outbox_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 80 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub(crate) fn checked(id: &str) -> Result<&str> {
    if is_outbox_id(id) {
        Ok(id)
    } else {
        Err(StorageError::Corrupt(format!("invalid outbox id {id:?}")))
    }
}

/// A delivery claim on one record.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub owner: String,
    pub expires_unix_ms: u128,
}

pub(crate) fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

impl Claim {
    pub(crate) fn new(owner: &str, ttl: Duration) -> Claim {
        Claim {
            owner: owner.to_string(),
            expires_unix_ms: now_ms() + ttl.as_millis(),
        }
    }

    /// Whether `owner` may take over a claim stored as `raw`: its own, an
    /// expired one, or one that does not parse (a torn write).
    pub(crate) fn can_take(raw: &[u8], owner: &str) -> bool {
        match serde_json::from_slice::<Claim>(raw) {
            Ok(c) => c.owner == owner || c.expires_unix_ms <= now_ms(),
            Err(_) => true,
        }
    }

    pub(crate) fn is_owned_by(raw: &[u8], owner: &str) -> bool {
        serde_json::from_slice::<Claim>(raw).is_ok_and(|c| c.owner == owner)
    }

    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| StorageError::Io(std::io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_leave_the_folder() {
        assert!(is_outbox_id("0001765000000000-3f2a"));
        for bad in ["", "../x", "a/b", "a.b", &"a".repeat(81)] {
            assert!(!is_outbox_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn claims_are_taken_over_only_when_expired_or_own() {
        let live = Claim::new("a", Duration::from_secs(60)).to_bytes().unwrap();
        assert!(Claim::can_take(&live, "a"));
        assert!(!Claim::can_take(&live, "b"));
        let expired = Claim::new("a", Duration::ZERO).to_bytes().unwrap();
        assert!(Claim::can_take(&expired, "b"));
        assert!(Claim::can_take(b"torn", "b"));
    }
}
