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

/// The parts of a repository's summary, which the registry derives from its
/// tags and manifests (the web UI's catalog row, and what it knows of each
/// manifest). Storage keeps their bytes without reading them: a missing or
/// unreadable one is recomputed by whoever reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SummaryPart {
    /// The catalog row: small, read once per repository shown.
    Row,
    /// One entry per manifest the tags point at (read by the repository page).
    Manifests,
}

/// The key of a summary part below the storage root: files beside
/// `_pulls`, never taken for a repository (their names start with `_`).
pub(crate) fn summary_key(repository: &str, part: SummaryPart) -> String {
    let file = match part {
        SummaryPart::Row => "_summary",
        SummaryPart::Manifests => "_summary_manifests",
    };
    format!("{}{repository}/{file}", crate::layout::REPOSITORIES)
}

/// A stamp of a repository's tags (see [`crate::Storage::tags_stamp`]): a
/// hash of one line per tag, in any order, each naming the tag and the
/// version of what it holds.
pub fn tags_stamp_of(mut lines: Vec<String>) -> String {
    use sha2::{Digest as _, Sha256};
    lines.sort();
    let mut h = Sha256::new();
    for line in &lines {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    format!("{}:{}", lines.len(), hex::encode(h.finalize()))
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

    #[test]
    fn stamps_ignore_order_and_see_every_change() {
        let stamp = |l: &[&str]| tags_stamp_of(l.iter().map(|s| s.to_string()).collect());
        assert_eq!(stamp(&["a 1", "b 2"]), stamp(&["b 2", "a 1"]));
        assert_ne!(stamp(&["a 1", "b 2"]), stamp(&["a 1", "b 3"]));
        assert_ne!(stamp(&["a 1"]), stamp(&["a 1", "b 2"]));
        // Lines are separated: moving a boundary is a change.
        assert_ne!(stamp(&["ab", "c"]), stamp(&["a", "bc"]));
        assert!(stamp(&[]).starts_with("0:"));
    }
}
