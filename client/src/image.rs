//! What every transport (registry, OCI layout, docker archive) implements:
//! an [`ImageSource`] to read an image from and an [`ImageDest`] to write one to.
//! Manifests travel as exact bytes, so digests never change on the way.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use berth_oci::{Algorithm, ByteStream, Digest, Hasher};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod media {
    pub use berth_oci::media_type::{
        DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LIST, DOCKER_MANIFEST,
        DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED, OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD, OCI_MANIFEST,
    };

    /// What the client accepts when it fetches a manifest.
    pub const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
}

/// A blob as a manifest describes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobInfo {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// A manifest or index exactly as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

/// The parts of a manifest the client acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    Image {
        config: BlobInfo,
        layers: Vec<BlobInfo>,
    },
    Index {
        manifests: Vec<IndexEntry>,
    },
}

/// One entry of an image index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub blob: BlobInfo,
    pub platform: Option<Platform>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<BlobInfo>,
    #[serde(default)]
    layers: Option<Vec<BlobInfo>>,
    #[serde(default)]
    manifests: Option<Vec<RawIndexEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIndexEntry {
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

impl Manifest {
    /// Wrap bytes; the digest is their sha256.
    pub fn new(bytes: impl Into<Bytes>, media_type: impl Into<String>) -> Manifest {
        let bytes = bytes.into();
        let digest = Digest::sha256_of(&bytes);
        Manifest {
            bytes,
            media_type: media_type.into(),
            digest,
        }
    }

    /// Wrap bytes that must match `expected` (when fetched by digest).
    pub fn verified(
        bytes: impl Into<Bytes>,
        media_type: impl Into<String>,
        expected: &Digest,
    ) -> Result<Manifest> {
        let bytes = bytes.into();
        let actual = Digest::of(expected.algorithm(), &bytes);
        if &actual != expected {
            return Err(Error::DigestMismatch {
                what: "manifest".into(),
                expected: expected.clone(),
                actual,
            });
        }
        Ok(Manifest {
            bytes,
            media_type: media_type.into(),
            digest: expected.clone(),
        })
    }

    /// The media type from the bytes when the transport did not say
    /// (OCI layouts, archives); falls back to the given one.
    pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
        let raw: RawManifest = serde_json::from_slice(bytes).ok()?;
        if let Some(mt) = raw.media_type {
            return Some(mt);
        }
        if raw.manifests.is_some() {
            Some(media::OCI_INDEX.to_string())
        } else if raw.config.is_some() {
            Some(media::OCI_MANIFEST.to_string())
        } else {
            None
        }
    }

    pub fn is_index(&self) -> bool {
        self.media_type == media::OCI_INDEX || self.media_type == media::DOCKER_LIST
    }

    /// Parse the fields the client needs. Schema 1 manifests are refused
    /// with a message, as Docker itself has dropped them.
    pub fn parse(&self) -> Result<ManifestKind> {
        if self.media_type == media::DOCKER_SCHEMA1
            || self.media_type == media::DOCKER_SCHEMA1_SIGNED
        {
            return Err(Error::Unsupported(
                "Docker schema 1 manifests are not supported (Docker dropped them too); re-push the image with a current client".into(),
            ));
        }
        let raw: RawManifest =
            serde_json::from_slice(&self.bytes).map_err(|e| Error::malformed("manifest", e))?;
        if raw.schema_version == Some(1) {
            return Err(Error::Unsupported(
                "Docker schema 1 manifests are not supported; re-push the image with a current client".into(),
            ));
        }
        if self.is_index() || (raw.manifests.is_some() && raw.config.is_none()) {
            let manifests = raw
                .manifests
                .ok_or_else(|| Error::malformed("image index", "no `manifests` list"))?
                .into_iter()
                .map(|m| IndexEntry {
                    blob: BlobInfo {
                        media_type: m.media_type,
                        digest: m.digest,
                        size: m.size,
                    },
                    platform: m.platform,
                })
                .collect();
            return Ok(ManifestKind::Index { manifests });
        }
        let config = raw
            .config
            .ok_or_else(|| Error::malformed("image manifest", "no `config`"))?;
        Ok(ManifestKind::Image {
            config,
            layers: raw.layers.unwrap_or_default(),
        })
    }
}

/// An image platform, `os/arch[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        default,
        rename = "os.features",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
}

impl Platform {
    /// The platform of this machine, in OCI's words (`linux/amd64`, `linux/arm64/v8`).
    pub fn current() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "arm" => "arm",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            "riscv64" => "riscv64",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: (architecture == "arm64").then(|| "v8".to_string()),
            os_version: None,
            os_features: None,
        }
    }

    /// Whether an index entry's platform satisfies this wanted one. A missing
    /// variant on either side matches (as `linux/arm64` matches `linux/arm64/v8`).
    pub fn matches(&self, candidate: &Platform) -> bool {
        self.os == candidate.os
            && self.architecture == candidate.architecture
            && match (&self.variant, &candidate.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl FromStr for Platform {
    type Err = Error;
    fn from_str(s: &str) -> Result<Platform> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: parts
                    .get(2)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.to_string()),
                os_version: None,
                os_features: None,
            }),
            _ => Err(Error::InvalidArgument(format!(
                "invalid platform {s:?}: use OS/ARCH[/VARIANT], e.g. linux/amd64"
            ))),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// How a blob reached its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobOutcome {
    /// The bytes were transferred.
    Copied,
    /// The destination had it already.
    Exists,
    /// Linked from another repository on the same registry, no bytes moved.
    Mounted,
}

/// Progress of the blobs of one transfer; the CLI draws bars or prints lines.
pub trait Progress: Send + Sync {
    /// A blob starts (or is looked at). `action` is e.g. "push", "pull".
    fn blob(&self, blob: &BlobInfo) -> Box<dyn BlobProgress>;
    /// A line of information (e.g. "writing manifest").
    fn message(&self, _message: &str) {}
}

pub trait BlobProgress: Send + Sync {
    /// `bytes` more have gone through.
    fn advance(&self, bytes: u64);
    /// A transfer restarted at `offset` (a resume after an error).
    fn restart_at(&self, offset: u64);
    fn finish(&self, outcome: BlobOutcome);
}

/// Progress that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn blob(&self, _blob: &BlobInfo) -> Box<dyn BlobProgress> {
        Box::new(NoProgress)
    }
}

impl BlobProgress for NoProgress {
    fn advance(&self, _bytes: u64) {}
    fn restart_at(&self, _offset: u64) {}
    fn finish(&self, _outcome: BlobOutcome) {}
}

/// Where an image is read from.
#[async_trait]
pub trait ImageSource: Send + Sync {
    /// A name for messages, e.g. `oci:/tmp/x:v1`.
    fn describe(&self) -> String;
    /// The manifest (or index) the source names: its tag, its digest or its only image.
    async fn manifest(&self) -> Result<Manifest>;
    /// A manifest by digest: a child of an index. Verified against the digest.
    async fn manifest_by_digest(&self, digest: &Digest) -> Result<Manifest>;
    /// The blob's bytes from `offset` to its end. Not verified here: whoever
    /// stores them checks digest and size before they become visible.
    async fn blob(&self, blob: &BlobInfo, offset: u64) -> Result<ByteStream>;
    /// `(registry, repository)` when the source is a registry, so a
    /// destination on the same registry can mount blobs instead of copying.
    fn registry_repository(&self) -> Option<(String, String)> {
        None
    }
}

/// Where an image is written to. Blobs first (possibly in parallel), then
/// child manifests, then the top manifest, then `commit`.
#[async_trait]
pub trait ImageDest: Send + Sync {
    fn describe(&self) -> String;
    /// How many blobs may be written at once.
    fn max_parallel_blobs(&self) -> usize {
        4
    }
    /// Whether the destination accepts an image index (a docker archive does not).
    fn supports_index(&self) -> bool {
        true
    }
    /// Store one blob read from `source`, unless the destination holds it
    /// already. The destination verifies digest and size before the blob
    /// becomes visible, and may re-read from an offset to resume after a
    /// transient error.
    async fn put_blob(
        &self,
        blob: &BlobInfo,
        source: &dyn ImageSource,
        progress: &dyn BlobProgress,
    ) -> Result<BlobOutcome>;
    /// Store a manifest. `tag` is set for the top manifest when the
    /// destination names a tag; children of an index get `None`.
    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<()>;
    /// Make the image visible (write index.json, close an archive, ...).
    /// Called once, after the top manifest.
    async fn commit(&self) -> Result<()> {
        Ok(())
    }
}

/// Hashes and counts bytes on their way to a file, then checks them
/// against the expected blob. Used by every file-based destination.
pub struct BlobVerifier {
    hasher: Hasher,
    expected: BlobInfo,
    seen: u64,
}

impl BlobVerifier {
    pub fn new(expected: &BlobInfo) -> BlobVerifier {
        BlobVerifier {
            hasher: Hasher::new(expected.digest.algorithm()),
            expected: expected.clone(),
            seen: 0,
        }
    }

    /// Feed a chunk; fails as soon as there are more bytes than expected.
    pub fn update(&mut self, chunk: &[u8]) -> Result<()> {
        self.seen += chunk.len() as u64;
        if self.seen > self.expected.size {
            return Err(Error::SizeMismatch {
                what: format!("blob {}", self.expected.digest),
                expected: self.expected.size,
                actual: self.seen,
            });
        }
        self.hasher.update(chunk);
        Ok(())
    }

    pub fn finish(self) -> Result<()> {
        if self.seen != self.expected.size {
            return Err(Error::SizeMismatch {
                what: format!("blob {}", self.expected.digest),
                expected: self.expected.size,
                actual: self.seen,
            });
        }
        let actual = self.hasher.finish();
        if actual != self.expected.digest {
            return Err(Error::DigestMismatch {
                what: "blob".into(),
                expected: self.expected.digest,
                actual,
            });
        }
        Ok(())
    }
}

/// sha256 of some bytes, as a digest (for configs and manifests we build).
pub fn sha256(data: &[u8]) -> Digest {
    Digest::of(Algorithm::Sha256, data)
}

/// Annotations map as manifests carry them.
pub type Annotations = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_match() {
        let p: Platform = "linux/arm64".parse().unwrap();
        let v8: Platform = "linux/arm64/v8".parse().unwrap();
        assert!(p.matches(&v8));
        assert!(v8.matches(&p));
        assert!(!p.matches(&"linux/amd64".parse().unwrap()));
        assert_eq!(v8.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
    }

    #[test]
    fn parse_index_and_manifest() {
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":7,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let m = Manifest::new(&index[..], media::OCI_INDEX);
        match m.parse().unwrap() {
            ManifestKind::Index { manifests } => {
                assert_eq!(manifests.len(), 1);
                assert_eq!(
                    manifests[0].platform.as_ref().unwrap().architecture,
                    "amd64"
                );
            }
            other => panic!("{other:?}"),
        }
        let bad = Manifest::new(&b"{"[..], media::OCI_MANIFEST);
        assert!(bad.parse().unwrap_err().to_string().contains("malformed"));
        assert_eq!(
            Manifest::sniff_media_type(index).as_deref(),
            Some(media::OCI_INDEX)
        );
    }

    #[test]
    fn verifier_catches_mismatch() {
        let blob = BlobInfo {
            media_type: media::OCI_LAYER.into(),
            digest: sha256(b"hello"),
            size: 5,
        };
        let mut v = BlobVerifier::new(&blob);
        v.update(b"hello").unwrap();
        v.finish().unwrap();
        let mut v = BlobVerifier::new(&blob);
        v.update(b"hellx").unwrap();
        assert!(matches!(v.finish(), Err(Error::DigestMismatch { .. })));
        let mut v = BlobVerifier::new(&blob);
        assert!(v.update(b"hello!").is_err());
    }
}
