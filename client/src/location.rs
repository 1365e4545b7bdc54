//! Where an image lives, as written on the command line:
//! `[docker://]REF` (a registry), `oci:DIR[:TAG]` (an OCI image layout),
//! `docker-archive:FILE[:REF]` (a `docker save` tarball) or `local:REF`
//! (Berth's own image store, an OCI layout in the user's data folder).

use std::fmt;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::reference::ImageRef;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    Registry(ImageRef),
    Oci {
        dir: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        file: PathBuf,
        reference: Option<String>,
    },
    /// An image in the local store, named by its full reference.
    Local(ImageRef),
}

impl Location {
    /// Parse a location; a bare reference means a registry.
    pub fn parse(input: &str) -> Result<Location> {
        Self::parse_with_default(input, false)
    }

    /// Parse a location; a bare reference means the local store when
    /// `bare_is_local` (as for `berth push SRC`).
    pub fn parse_with_default(input: &str, bare_is_local: bool) -> Result<Location> {
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = split_path_and_name(rest);
            if dir.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{input:?}: write oci:DIR[:TAG]"
                )));
            }
            return Ok(Location::Oci {
                dir: PathBuf::from(dir),
                tag,
            });
        }
        if let Some(rest) = input.strip_prefix("docker-archive:") {
            let (file, reference) = split_path_and_name(rest);
            if file.is_empty() {
                return Err(Error::InvalidArgument(format!(
                    "{input:?}: write docker-archive:FILE[:REF]"
                )));
            }
            return Ok(Location::DockerArchive {
                file: PathBuf::from(file),
                reference,
            });
        }
        if let Some(rest) = input.strip_prefix("local:") {
            return Ok(Location::Local(ImageRef::parse(rest)?));
        }
        if input.starts_with("docker://") {
            return Ok(Location::Registry(ImageRef::parse(input)?));
        }
        if let Some((transport, _)) = input.split_once(':') {
            if UNSUPPORTED_TRANSPORTS.contains(&transport) {
                return Err(Error::Unsupported(format!(
                    "{input:?}: the {transport}: transport is not supported; use a registry reference, oci:DIR[:TAG], docker-archive:FILE[:REF] or local:REF"
                )));
            }
        }
        let reference = ImageRef::parse(input)?;
        Ok(if bare_is_local {
            Location::Local(reference)
        } else {
            Location::Registry(reference)
        })
    }

    /// The name of the local store's entry for a reference (its full, normalised form).
    pub fn store_name(reference: &ImageRef) -> String {
        let mut r = reference.clone();
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some("latest".into());
        }
        r.to_string()
    }
}

/// Whether `input` is a plain name with no registry host written (`app:1`,
/// `team/app`): docker looks such names up in its local image store before
/// Docker Hub, and so does Berth.
pub fn is_bare_name(input: &str) -> bool {
    if input.starts_with("docker://") || starts_with_transport(input) {
        return false;
    }
    let name = input.split('@').next().unwrap_or(input);
    match name.split_once('/') {
        Some((first, _)) => !(first.contains('.') || first.contains(':') || first == "localhost"),
        None => true,
    }
}

/// Whether the local store at `store` holds `reference` under its full name.
pub async fn local_store_has(store: &std::path::Path, reference: &ImageRef) -> bool {
    let layout = crate::layout::OciLayout::new(store);
    if !layout.exists().await {
        return false;
    }
    let name = Location::store_name(reference);
    layout
        .tags()
        .await
        .map(|tags| tags.contains(&name))
        .unwrap_or(false)
}

/// Parse a location as [`Location::parse`], except that a bare name the
/// local store holds means that local image (docker's lookup order).
pub async fn parse_preferring_local(input: &str, store: &std::path::Path) -> Result<Location> {
    let location = Location::parse(input)?;
    if let Location::Registry(r) = &location {
        if is_bare_name(input) && local_store_has(store, r).await {
            return Ok(Location::Local(r.clone()));
        }
    }
    Ok(location)
}

/// skopeo's transports that we name in an error rather than take for a registry host.
const UNSUPPORTED_TRANSPORTS: [&str; 6] = [
    "dir",
    "containers-storage",
    "docker-daemon",
    "oci-archive",
    "ostree",
    "sif",
];

/// Whether [`Location::parse`] reads `text` as a transport other than a
/// registry (`oci:`, `local:`, `dir:`...). A registry reference whose host is
/// such a word (`docker://oci:5000/app`) must keep its `docker://` when printed.
fn starts_with_transport(text: &str) -> bool {
    text.split_once(':').is_some_and(|(transport, _)| {
        ["oci", "docker-archive", "local"].contains(&transport)
            || UNSUPPORTED_TRANSPORTS.contains(&transport)
    })
}

/// `PATH[:NAME]`: the first `:` splits (paths with `:` are not supported, as in skopeo).
fn split_path_and_name(rest: &str) -> (&str, Option<String>) {
    match rest.split_once(':') {
        Some((path, name)) if !name.is_empty() => (path, Some(name.to_string())),
        Some((path, _)) => (path, None),
        None => (rest, None),
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Registry(r) => {
                let printed = r.to_string();
                if starts_with_transport(&printed) {
                    f.write_str("docker://")?;
                }
                f.write_str(&printed)
            }
            Location::Oci { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
            Location::DockerArchive { file, reference } => {
                write!(f, "docker-archive:{}", file.display())?;
                if let Some(r) = reference {
                    write!(f, ":{r}")?;
                }
                Ok(())
            }
            Location::Local(r) => write!(f, "local:{r}"),
        }
    }
}

/// Berth's local image store: `$BERTH_STORE`, else
/// `$XDG_DATA_HOME/berth/store`, else `~/.local/share/berth/store`.
pub fn default_store_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_STORE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("berth").join("store");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".local/share/berth/store")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_have_no_registry_host() {
        for bare in [
            "app",
            "app:1",
            "team/app:1",
            "app@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(is_bare_name(bare), "{bare}");
        }
        for hosted in [
            "localhost/app",
            "127.0.0.1:5000/app:1",
            "ghcr.io/a/b",
            "docker://app",
            "local:app",
            "oci:dir",
        ] {
            assert!(!is_bare_name(hosted), "{hosted}");
        }
    }

    #[test]
    fn parses_transports() {
        assert_eq!(
            Location::parse("oci:/tmp/x:v1").unwrap(),
            Location::Oci {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            Location::parse("oci:layout").unwrap(),
            Location::Oci {
                dir: "layout".into(),
                tag: None
            }
        );
        assert_eq!(
            Location::parse("docker-archive:/tmp/a.tar:app:1").unwrap(),
            Location::DockerArchive {
                file: "/tmp/a.tar".into(),
                reference: Some("app:1".into())
            }
        );
        assert!(
            matches!(Location::parse("localhost:5000/app:1").unwrap(), Location::Registry(r) if r.registry == "localhost:5000")
        );
        assert!(matches!(
            Location::parse("docker://busybox").unwrap(),
            Location::Registry(_)
        ));
        assert!(matches!(
            Location::parse_with_default("app:1", true).unwrap(),
            Location::Local(_)
        ));
        assert!(matches!(
            Location::parse("local:app").unwrap(),
            Location::Local(_)
        ));
        assert!(Location::parse("oci:").is_err());
        assert!(Location::parse("containers-storage:x")
            .unwrap_err()
            .to_string()
            .contains("not supported"));
        assert_eq!(
            Location::store_name(&ImageRef::parse("app").unwrap()),
            "docker.io/library/app:latest"
        );
    }

    /// Found by the `reference` fuzz target: a registry whose host is a
    /// transport word printed as `dir:5000/app`, which reads back as the
    /// unsupported `dir:` transport (or `oci:`/`local:` as another location).
    #[test]
    fn printed_locations_parse_back() {
        for input in [
            "docker://dir:5000/app",
            "docker://oci:5000/app:1",
            "docker://local:5000/a/b",
            "docker://docker-archive:1/x",
            "localhost:5000/app:1",
            "oci:/tmp/x:v1",
            "docker-archive:/tmp/a.tar:app:1",
            "local:app",
        ] {
            let location = Location::parse(input).unwrap();
            let printed = location.to_string();
            assert_eq!(
                Location::parse(&printed).unwrap(),
                location,
                "{input} -> {printed}"
            );
        }
        assert_eq!(
            Location::parse("docker://dir:5000/app")
                .unwrap()
                .to_string(),
            "docker://dir:5000/app"
        );
        assert_eq!(
            Location::parse("ghcr.io/a/b").unwrap().to_string(),
            "ghcr.io/a/b"
        );
    }
}
