//! Mistakes the image commands explain instead of just reporting: a tag the
//! repository lacks (with the tags it has), a platform the image was not made
//! for (with the platforms it has), a file given where an image is expected.

use anyhow::{bail, Result};
use berth_client::image::{ImageSource, ManifestKind, Platform};
use berth_client::location::Location;
use berth_client::registry::Client;

/// `--platform P` asked of a single-platform image made for another one:
/// an error naming the platform it has (an index is checked by the copy).
pub async fn require_platform(source: &dyn ImageSource, wanted: &str) -> Result<()> {
    let wanted: Platform = wanted.parse()?;
    let top = source.manifest().await?;
    let ManifestKind::Image { config, .. } = top.parse()? else {
        return Ok(());
    };
    let bytes = crate::config_blob::read_small_blob(source, &config).await?;
    let Ok(made_for) = serde_json::from_slice::<Platform>(&bytes) else {
        return Ok(());
    };
    if made_for.os.is_empty() || wanted.matches(&made_for) {
        return Ok(());
    }
    bail!(
        "{} is a single-platform image for {made_for}, not {wanted} (platforms available: {made_for}); drop --platform to take it as it is",
        source.describe()
    )
}

/// The error of a copy or inspect, with the repository's tags when the one
/// asked for is not there.
pub async fn explain_missing(
    client: &Client,
    location: &Location,
    error: anyhow::Error,
) -> anyhow::Error {
    let Location::Registry(r) = location else {
        return error;
    };
    let Some(tag) = &r.tag else {
        return error;
    };
    let not_found = error
        .downcast_ref::<berth_client::Error>()
        .is_some_and(|e| matches!(e, berth_client::Error::NotFound { .. }));
    if !not_found {
        return error;
    }
    let Ok(registry) = client.registry(&r.registry) else {
        return error;
    };
    match registry.tags(&r.repository).await {
        Ok(tags) if tags.is_empty() => {
            error.context(format!("{}:{tag}: the repository has no tags", r.name()))
        }
        Ok(mut tags) => {
            tags.sort();
            let shown = tags.len().min(20);
            let more = if tags.len() > shown {
                format!(" and {} more (`berth ls {}`)", tags.len() - shown, r.name())
            } else {
                String::new()
            };
            anyhow::anyhow!(
                "{error:#}; {} has no tag {tag:?}; its tags: {}{more}",
                r.name(),
                tags[..shown].join(", ")
            )
        }
        Err(_) => error,
    }
}

/// A file or folder given where an image reference is expected: which
/// transport to write (`docker-archive:FILE`, `oci:DIR`). None when `input`
/// is no path on disk or already has a transport.
pub fn path_hint(input: &str) -> Option<String> {
    if input.contains("://")
        || input.starts_with("oci:")
        || input.starts_with("docker-archive:")
        || input.starts_with("local:")
    {
        return None;
    }
    let looks_like_path = input.starts_with('.')
        || input.starts_with('/')
        || [".tar", ".tar.gz", ".tgz"]
            .iter()
            .any(|s| input.ends_with(s));
    let path = std::path::Path::new(input);
    if !looks_like_path || !path.exists() {
        return None;
    }
    if path.is_dir() {
        Some(format!("{input} is a folder, not an image reference: did you mean oci:{input} (an OCI layout)?"))
    } else {
        Some(format!("{input} is a file, not an image reference: did you mean docker-archive:{input} (a `docker save` tarball)?"))
    }
}

/// Refuse a path on disk given as an image reference, naming the transport to write.
pub fn reject_path(input: &str) -> Result<()> {
    match path_hint(input) {
        Some(hint) => bail!("{hint}"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_get_a_transport_hint() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.tar");
        std::fs::write(&file, b"x").unwrap();
        let file = file.display().to_string();
        assert!(path_hint(&file)
            .unwrap()
            .contains(&format!("docker-archive:{file}")));
        let folder = dir.path().display().to_string();
        assert!(path_hint(&folder).unwrap().contains("oci:"));
        assert_eq!(path_hint("app:1"), None);
        assert_eq!(path_hint(&format!("docker-archive:{file}")), None);
        assert_eq!(path_hint("/no/such/file.tar"), None);
    }
}
