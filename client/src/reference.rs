//! Image references as Docker spells them: `[REGISTRY/]REPOSITORY[:TAG][@DIGEST]`.
//!
//! Normalisation follows Docker: a first component with a `.` or `:` or equal
//! to `localhost` is a registry host; otherwise the registry is Docker Hub and
//! a one-component name lives under `library/`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use berth_oci::names::{is_valid_repository_name, is_valid_tag};
use berth_oci::Digest;

use crate::error::{Error, Result};

/// Docker Hub's name in references and in `~/.docker/config.json`.
pub const DOCKER_HUB: &str = "docker.io";
/// The host Docker Hub's API answers on.
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key `docker login` writes for Docker Hub in `config.json`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry as written (`docker.io` for Docker Hub), with port if any.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// Parse and normalise a reference.
    pub fn parse(input: &str) -> Result<ImageRef> {
        let invalid = |reason: &str| Error::InvalidReference {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let rest = input.strip_prefix("docker://").unwrap_or(input);
        if rest.is_empty() {
            return Err(invalid("it is empty"));
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((name, d)) => (
                name,
                Some(Digest::from_str(d).map_err(|e| invalid(&e.to_string()))?),
            ),
            None => (rest, None),
        };
        // A tag is after the last ':' that comes after the last '/' (a ':' before
        // it belongs to the registry's port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            if !is_valid_tag(tag) {
                return Err(invalid(
                    "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if !is_valid_repository_name(&repository) {
            return Err(invalid(
                "the repository name must be lowercase letters, digits and . _ - separators, in /-separated parts",
            ));
        }
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The tag, or the digest, to ask the registry for (`latest` when neither is given).
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The tag to write at a destination: the given one, `latest` when the
    /// reference names neither a tag nor a digest, none for a digest-only one.
    pub fn tag_or_latest(&self) -> Option<String> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t.clone()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        }
    }

    /// The host the registry API answers on.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// `registry/repository` without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

/// Whether a registry host (with optional port) is on the loopback network,
/// where Docker allows plain HTTP without being told.
pub fn is_loopback_host(registry: &str) -> bool {
    let host = host_without_port(registry);
    if host == "localhost" {
        return true;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_without_port(registry: &str) -> &str {
    if let Some(stripped) = registry.strip_prefix('[') {
        // [v6]:port
        return stripped.split(']').next().unwrap_or(stripped);
    }
    match registry.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => registry,
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ImageRef::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_like_docker() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag, None);
        assert_eq!(r.reference(), "latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");

        let r = ImageRef::parse("localhost:5000/app:1.0").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("localhost:5000", "app", Some("1.0"))
        );

        let r = ImageRef::parse("127.0.0.1:5000/team/app").unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag_or_latest().as_deref(), Some("latest"));

        let r = ImageRef::parse("ghcr.io/owner/app:v1@sha256:0000000000000000000000000000000000000000000000000000000000000000").unwrap();
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(r.reference().starts_with("sha256:"));
        assert_eq!(ImageRef::parse(&r.to_string()).unwrap(), r);

        let r = ImageRef::parse("user/app").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("docker.io", "user/app")
        );
        let r = ImageRef::parse("docker://index.docker.io/library/alpine:3").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:3");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER/app",
            "app:",
            "app:-x",
            "a//b",
            "app@sha256:xyz",
            "host:5000/",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid image reference"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn loopback() {
        assert!(is_loopback_host("localhost:5000"));
        assert!(is_loopback_host("127.0.0.1:5000"));
        assert!(is_loopback_host("127.1.2.3"));
        assert!(is_loopback_host("[::1]:5000"));
        assert!(!is_loopback_host("registry.example.com:5000"));
        assert!(!is_loopback_host("10.0.0.1:5000"));
    }
}
