//! Small helpers: digests, pseudo-random content, media types, manifest builders.

use berth_oci::{percent, Algorithm, Digest};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

pub use berth_oci::media_type::DOCKER_LAYER_GZIP as DOCKER_LAYER;
/// The layers these checks push are gzip-compressed tars.
pub use berth_oci::media_type::OCI_LAYER_GZIP as OCI_LAYER;
pub use berth_oci::media_type::OCI_LAYER_NONDISTRIBUTABLE_GZIP as OCI_LAYER_NONDIST;
pub use berth_oci::media_type::{
    DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST,
};

/// Accept header sent on every manifest GET/HEAD, so that no registry converts formats.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

pub fn sha256_digest(data: &[u8]) -> String {
    Digest::sha256_of(data).to_string()
}

pub fn sha512_digest(data: &[u8]) -> String {
    Digest::of(Algorithm::Sha512, data).to_string()
}

/// Computes the digest of `data` with the algorithm named in `digest` and
/// tells whether it matches. Unknown algorithms never match.
pub fn digest_matches(digest: &str, data: &[u8]) -> bool {
    match digest.split_once(':') {
        Some(("sha256", _)) => sha256_digest(data) == digest,
        Some(("sha512", _)) => sha512_digest(data) == digest,
        _ => false,
    }
}

/// Splitmix64 over an atomic counter: cheap, thread-safe, good enough for
/// unique test content (this is not cryptography).
pub struct Rng {
    state: AtomicU64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng {
            state: AtomicU64::new(seed),
        }
    }

    pub fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn bytes(&self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Lowercase alphanumeric string, usable in repository names and tags.
    pub fn token(&self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| ALPHABET[(self.next_u64() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }

    /// A digest of random bytes: refers to content the registry has never seen.
    pub fn unknown_digest(&self) -> String {
        sha256_digest(&self.bytes(64))
    }
}

/// Content plus its descriptor fields.
#[derive(Clone, Debug)]
pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

impl Blob {
    pub fn new(bytes: Vec<u8>, media_type: &str) -> Self {
        let digest = sha256_digest(&bytes);
        Blob {
            bytes,
            digest,
            media_type: media_type.to_string(),
        }
    }

    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

/// A manifest document, kept as the exact bytes pushed.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub media_type: String,
}

impl Manifest {
    pub fn from_value(v: &Value, media_type: &str) -> Self {
        // Pretty output on purpose: a registry that re-serialises would change the bytes.
        let bytes = serde_json::to_vec_pretty(v).unwrap_or_default();
        Manifest::from_bytes(bytes, media_type)
    }

    pub fn from_bytes(bytes: Vec<u8>, media_type: &str) -> Self {
        let digest = sha256_digest(&bytes);
        Manifest {
            bytes,
            digest,
            media_type: media_type.to_string(),
        }
    }

    pub fn descriptor(&self) -> Value {
        json!({
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.bytes.len(),
        })
    }
}

/// An image config blob: a plausible OCI/Docker image config with a unique label.
pub fn config_blob(rng: &Rng, media_type: &str) -> Blob {
    let v = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "conformance.nonce": rng.token(16) } },
        "rootfs": { "type": "layers", "diff_ids": [sha256_digest(&rng.bytes(32))] },
    });
    Blob::new(serde_json::to_vec(&v).unwrap_or_default(), media_type)
}

pub fn oci_manifest(config: &Blob, layers: &[&Blob], extra: &[(&str, Value)]) -> Manifest {
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(|l| l.descriptor()).collect::<Vec<_>>(),
    });
    for (k, val) in extra {
        v[*k] = val.clone();
    }
    Manifest::from_value(&v, OCI_MANIFEST)
}

pub fn oci_index(children: &[Value], extra: &[(&str, Value)]) -> Manifest {
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children,
    });
    for (k, val) in extra {
        v[*k] = val.clone();
    }
    Manifest::from_value(&v, OCI_INDEX)
}

/// Adds `platform` to a descriptor (for index entries).
pub fn with_platform(mut desc: Value, arch: &str) -> Value {
    desc["platform"] = json!({ "architecture": arch, "os": "linux" });
    desc
}

pub fn excerpt(body: &[u8]) -> String {
    let s = String::from_utf8_lossy(body);
    let s = s.trim();
    let mut out: String = s.chars().take(400).collect();
    if s.chars().count() > 400 {
        out.push('…');
    }
    out.replace('\n', " ")
}

/// Percent-encodes a query value (unreserved characters stay).
pub fn qenc(s: &str) -> String {
    percent::encode(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(sha512_digest(b"").starts_with("sha512:cf83e1357eefb8bd"));
        assert!(digest_matches(&sha512_digest(b"x"), b"x"));
        assert!(!digest_matches(&sha256_digest(b"x"), b"y"));
        assert!(!digest_matches("md5:abc", b"y"));
    }

    #[test]
    fn rng_is_varied() {
        let r = Rng::new(1);
        let a = r.bytes(33);
        let b = r.bytes(33);
        assert_eq!(a.len(), 33);
        assert_ne!(a, b);
        let t = r.token(12);
        assert_eq!(t.len(), 12);
        assert!(t
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn query_encoding() {
        assert_eq!(qenc("application/vnd.x+json"), "application%2Fvnd.x%2Bjson");
    }
}
