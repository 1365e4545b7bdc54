//! Push and pull times, for retention: what [`crate::Storage::tag_records`],
//! [`crate::Storage::manifest_records`] and the pull record hold.
//!
//! Push times cost nothing extra: every backend already rewrites a tag's
//! object and a manifest's link on each push, so their write times are the
//! push times. Pull times are one small JSON object per repository
//! (`repositories/<name>/_pulls`: digest → Unix seconds), written in batches
//! by the server, never once per pull.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;

use crate::{Digest, Result, StorageError};

/// A tag, the manifest it points at, and when it was last pushed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TagRecord {
    pub tag: String,
    pub digest: Digest,
    #[serde(with = "unix_seconds")]
    pub pushed: SystemTime,
}

/// A manifest of a repository and when it was last pushed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ManifestRecord {
    pub digest: Digest,
    #[serde(with = "unix_seconds")]
    pub pushed: SystemTime,
}

/// Last-pulled times by manifest digest.
pub type PullTimes = BTreeMap<Digest, SystemTime>;

/// The key of a repository's pull record below the storage root. Repository
/// names never have a `_`-prefixed component, so it is never taken for one.
pub(crate) fn pulls_key(repository: &str) -> String {
    format!("{}{repository}/_pulls", crate::layout::REPOSITORIES)
}

/// Parse a stored pull record; entries that are not a digest are dropped.
pub(crate) fn parse_pulls(key: &str, raw: &[u8]) -> Result<PullTimes> {
    let stored: BTreeMap<String, u64> =
        serde_json::from_slice(raw).map_err(|e| StorageError::Corrupt(format!("{key}: {e}")))?;
    Ok(stored
        .into_iter()
        .filter_map(|(d, secs)| Some((d.parse().ok()?, UNIX_EPOCH + Duration::from_secs(secs))))
        .collect())
}

/// `into` with `new` merged in, the later time of each digest winning.
pub(crate) fn merge_pulls(into: &mut PullTimes, new: &PullTimes) {
    for (digest, at) in new {
        let slot = into.entry(digest.clone()).or_insert(*at);
        if *at > *slot {
            *slot = *at;
        }
    }
}

pub(crate) fn encode_pulls(pulls: &PullTimes) -> Result<Bytes> {
    let stored: BTreeMap<String, u64> = pulls
        .iter()
        .map(|(d, at)| (d.to_string(), seconds(*at)))
        .collect();
    Ok(Bytes::from(
        serde_json::to_vec(&stored).map_err(std::io::Error::other)?,
    ))
}

fn seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Times in JSON as Unix seconds.
mod unix_seconds {
    use std::time::SystemTime;

    pub fn serialize<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(super::seconds(*at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_keeps_the_later_time() {
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        let t = |s| UNIX_EPOCH + Duration::from_secs(s);
        let mut stored = PullTimes::from([(a.clone(), t(100)), (b.clone(), t(50))]);
        merge_pulls(
            &mut stored,
            &PullTimes::from([(a.clone(), t(90)), (b.clone(), t(60))]),
        );
        assert_eq!(stored[&a], t(100));
        assert_eq!(stored[&b], t(60));
        let raw = encode_pulls(&stored).expect("encode");
        assert_eq!(parse_pulls("k", &raw).expect("parse"), stored);
        assert!(parse_pulls("k", b"[1]").is_err(), "not an object");
    }
}
