//! Content digests (`algorithm:hex`), the hashers behind them, and the
//! serialisable running hash that lets an upload resume on any replica.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};

/// The digest algorithms the registry accepts (distribution-spec: sha256 MUST, sha512 MAY).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// A validated digest. Only lowercase hex of the algorithm's exact length is
/// accepted, so a digest can be turned into a storage path safely.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    hex: String,
}

/// Why a string is not a usable digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error(
        "digest {0:?} is malformed: expected ALGORITHM:HEX, e.g. sha256:<64 lowercase hex digits>"
    )]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported: use sha256 or sha512")]
    Unsupported(String),
}

impl Digest {
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Digest of a byte slice with the given algorithm.
    pub fn of(algorithm: Algorithm, data: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(data);
        hasher.finish()
    }

    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest::of(Algorithm::Sha256, data)
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algo, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(s.to_string()))?;
        // Grammar from the image-spec: algorithm-component [+._-] separated, encoded [a-zA-Z0-9=_-]+.
        let algo_ok = !algo.is_empty()
            && algo
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+._-".contains(c));
        let hex_ok = !hex.is_empty()
            && hex
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "=_-".contains(c));
        if !algo_ok || !hex_ok {
            return Err(DigestError::Malformed(s.to_string()));
        }
        let algorithm = match algo {
            "sha256" => Algorithm::Sha256,
            "sha512" => Algorithm::Sha512,
            _ => return Err(DigestError::Unsupported(algo.to_string())),
        };
        let valid_hex = hex.len() == algorithm.hex_len()
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !valid_hex {
            return Err(DigestError::Malformed(s.to_string()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A running hash of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Box<Sha512>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Box::new(Sha512::new())),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        let (algorithm, hex) = match self {
            Hasher::Sha256(h) => (Algorithm::Sha256, hex::encode(h.finalize())),
            Hasher::Sha512(h) => (Algorithm::Sha512, hex::encode(h.finalize())),
        };
        Digest { algorithm, hex }
    }
}

/// The SHA-256 state of an upload in progress, saved beside its offset so the
/// upload can continue after a restart (or on another replica) without
/// re-reading the bytes already received.
pub fn save_sha256_state(hasher: &Sha256) -> String {
    hex::encode(hasher.serialize().as_slice())
}

pub fn restore_sha256_state(saved: &str) -> Option<Sha256> {
    let bytes = hex::decode(saved).ok()?;
    let array = bytes.as_slice().try_into().ok()?;
    Sha256::deserialize(array).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_sha256() {
        let d = Digest::sha256_of(b"hello");
        let parsed: Digest = d.to_string().parse().expect("round trip");
        assert_eq!(parsed, d);
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }

    #[test]
    fn sha512_is_supported() {
        let d = Digest::of(Algorithm::Sha512, b"hello");
        assert_eq!(d.hex().len(), 128);
        assert_eq!(d.to_string().parse::<Digest>(), Ok(d));
    }

    #[test]
    fn rejects_bad_digests() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            "sha256:abc",
            "sha256:../../../etc/passwd",
            "SHA256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
            "sha256:2CF24DBA5FB0A30E26E83B2AC5B9E29E1B161E5C1FA7425E73043362938B9824",
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98240",
        ] {
            assert!(
                matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))),
                "{bad:?} should be malformed"
            );
        }
        assert!(matches!(
            "md5:d41d8cd98f00b204e9800998ecf8427e".parse::<Digest>(),
            Err(DigestError::Unsupported(_))
        ));
    }

    #[test]
    fn hash_state_survives_serialisation() {
        let mut h = Sha256::new();
        h.update(b"first half,");
        let saved = save_sha256_state(&h);
        let mut resumed = restore_sha256_state(&saved).expect("restore");
        resumed.update(b" second half");
        assert_eq!(
            hex::encode(resumed.finalize()),
            Digest::sha256_of(b"first half, second half").hex()
        );
        assert!(restore_sha256_state("zz").is_none());
        assert!(restore_sha256_state("00").is_none());
    }
}
