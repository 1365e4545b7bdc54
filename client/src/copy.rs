//! Copy an image from any source to any destination: blobs first, in
//! parallel (bounded), each skipped, mounted or transferred; manifests last,
//! so a destination never names an image whose blobs are not all there.

use std::collections::{HashMap, HashSet};

use berth_oci::Digest;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{
    media, BlobInfo, BlobOutcome, ImageDest, ImageSource, IndexEntry, Manifest, ManifestKind,
    Platform, Progress,
};

/// Which images of an index to copy.
#[derive(Clone, Debug)]
pub enum Platforms {
    /// The one for this platform (the image's digest is then the child's).
    One(Platform),
    /// All of them, and the index itself (digests unchanged).
    All,
}

#[derive(Clone, Debug)]
pub struct CopyOptions {
    pub platforms: Platforms,
    /// Blobs in flight at once (the destination may lower it).
    pub jobs: usize,
    /// Rewrite Docker schema 2 manifests with OCI media types (same blobs,
    /// new manifest digest), as skopeo does for OCI layouts: OCI tools
    /// (umoci, skopeo) do not read Docker manifests there.
    pub oci_media_types: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platforms: Platforms::One(Platform::current()),
            jobs: 4,
            oci_media_types: false,
        }
    }
}

/// What a copy did, for `--json` and summaries.
#[derive(Clone, Debug, Serialize)]
pub struct CopyReport {
    /// Digest of the manifest written at the destination.
    pub digest: Digest,
    pub media_type: String,
    /// The platform picked from an index, if one was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub blobs: Vec<BlobReport>,
    /// Bytes actually transferred (blobs skipped or mounted count zero).
    pub bytes_copied: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlobReport {
    pub digest: Digest,
    pub size: u64,
    pub outcome: BlobOutcome,
}

/// Pick the entry of an index for `wanted`; an exact variant match wins.
pub fn select_platform<'a>(entries: &'a [IndexEntry], wanted: &Platform) -> Result<&'a IndexEntry> {
    let matching: Vec<&IndexEntry> = entries
        .iter()
        .filter(|e| e.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .collect();
    if let Some(exact) = matching.iter().find(|e| {
        e.platform
            .as_ref()
            .is_some_and(|p| p.variant == wanted.variant)
    }) {
        return Ok(exact);
    }
    if let Some(first) = matching.first() {
        return Ok(first);
    }
    let available: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .filter(|p| p.os != "unknown")
        .map(Platform::to_string)
        .collect();
    Err(Error::not_found(format!(
        "an image for platform {wanted} in the index (it has: {}); pick one with --platform, or copy all with --all",
        if available.is_empty() { "none with a platform".to_string() } else { available.join(", ") }
    )))
}

/// Copy the image `source` names to `dest`, tagging it `tag` there.
pub async fn copy_image(
    source: &dyn ImageSource,
    dest: &dyn ImageDest,
    tag: Option<&str>,
    options: &CopyOptions,
    progress: &dyn Progress,
) -> Result<CopyReport> {
    let top = source.manifest().await?;
    let (top, platform, children) = match top.parse()? {
        ManifestKind::Image { .. } => (top, None, Vec::new()),
        ManifestKind::Index { manifests } => match &options.platforms {
            Platforms::One(wanted) => {
                let entry = select_platform(&manifests, wanted)?;
                let child = source.manifest_by_digest(&entry.blob.digest).await?;
                let picked = entry.platform.as_ref().map(Platform::to_string);
                (child, picked, Vec::new())
            }
            Platforms::All => {
                if !dest.supports_index() {
                    return Err(Error::Unsupported(format!(
                        "{} holds one image, and {} is a multi-platform index: pick one with --platform",
                        dest.describe(),
                        source.describe()
                    )));
                }
                let mut children = Vec::new();
                for entry in &manifests {
                    let child = source.manifest_by_digest(&entry.blob.digest).await?;
                    if child.is_index() {
                        return Err(Error::Unsupported(
                            "nested image indexes are not supported".into(),
                        ));
                    }
                    children.push(child);
                }
                (top, None, children)
            }
        },
    };

    // Every blob once, in manifest order (config first).
    let mut blobs: Vec<BlobInfo> = Vec::new();
    let mut seen = HashSet::new();
    let images: Vec<&Manifest> = if children.is_empty() {
        vec![&top]
    } else {
        children.iter().collect()
    };
    for m in &images {
        if let ManifestKind::Image { config, layers } = m.parse()? {
            for b in std::iter::once(config).chain(layers) {
                if seen.insert(b.digest.clone()) {
                    blobs.push(b);
                }
            }
        }
    }

    let jobs = options.jobs.max(1).min(dest.max_parallel_blobs().max(1));
    let reports: Vec<BlobReport> =
        futures::stream::iter(blobs.into_iter().map(|blob| async move {
            let bar = progress.blob(&blob);
            let outcome = dest.put_blob(&blob, source, bar.as_ref()).await?;
            bar.finish(outcome);
            Ok::<_, Error>(BlobReport {
                digest: blob.digest,
                size: blob.size,
                outcome,
            })
        }))
        .buffered(jobs)
        .try_collect()
        .await?;

    let (top, children) = if options.oci_media_types {
        convert_to_oci(top, children)?
    } else {
        (top, children)
    };
    for child in &children {
        dest.put_manifest(child, None).await?;
    }
    progress.message(&format!("writing manifest {}", top.digest));
    dest.put_manifest(&top, tag).await?;
    dest.commit().await?;
    Ok(CopyReport {
        digest: top.digest.clone(),
        media_type: top.media_type.clone(),
        platform,
        bytes_copied: reports
            .iter()
            .filter(|r| r.outcome == BlobOutcome::Copied)
            .map(|r| r.size)
            .sum(),
        blobs: reports,
    })
}

/// Docker media types and their OCI twins (the bytes they name are the same).
const DOCKER_TO_OCI: [(&str, &str); 6] = [
    (media::DOCKER_MANIFEST, media::OCI_MANIFEST),
    (media::DOCKER_LIST, media::OCI_INDEX),
    (media::DOCKER_CONFIG, media::OCI_CONFIG),
    (media::DOCKER_LAYER_GZIP, media::OCI_LAYER_GZIP),
    (media::DOCKER_LAYER, media::OCI_LAYER),
    (
        berth_oci::media_type::DOCKER_FOREIGN_LAYER_GZIP,
        berth_oci::media_type::OCI_LAYER_NONDISTRIBUTABLE_GZIP,
    ),
];

fn oci_twin(media_type: &str) -> Option<&'static str> {
    DOCKER_TO_OCI
        .iter()
        .find(|(docker, _)| *docker == media_type)
        .map(|(_, oci)| *oci)
}

/// Rewrite one Docker manifest (or list) with OCI media types; `renamed`
/// maps child digests of a list to their converted descriptors. OCI
/// manifests come back unchanged.
fn manifest_to_oci(
    manifest: &Manifest,
    renamed: &HashMap<Digest, (Digest, u64, String)>,
) -> Result<Manifest> {
    let new_type = match oci_twin(&manifest.media_type) {
        Some(t) => t,
        // An OCI index may still name Docker children that were converted.
        None if !renamed.is_empty() && manifest.is_index() => media::OCI_INDEX,
        None => return Ok(manifest.clone()),
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(&manifest.bytes).map_err(|e| Error::malformed("manifest", e))?;
    value["mediaType"] = new_type.into();
    let rewrite = |desc: &mut serde_json::Value| {
        if let Some(t) = desc["mediaType"].as_str().and_then(oci_twin) {
            desc["mediaType"] = t.into();
        }
        let old = desc["digest"]
            .as_str()
            .and_then(|d| d.parse::<Digest>().ok());
        if let Some((digest, size, media_type)) = old.and_then(|d| renamed.get(&d)) {
            desc["digest"] = digest.to_string().into();
            desc["size"] = (*size).into();
            desc["mediaType"] = media_type.clone().into();
        }
    };
    if let Some(config) = value.get_mut("config") {
        rewrite(config);
    }
    for list in ["layers", "manifests"] {
        if let Some(items) = value.get_mut(list).and_then(|v| v.as_array_mut()) {
            items.iter_mut().for_each(rewrite);
        }
    }
    let bytes = serde_json::to_vec(&value).map_err(|e| Error::malformed("manifest", e))?;
    Ok(Manifest::new(bytes, new_type))
}

/// Convert an image (and, for an index, its children first, so the index
/// can name their new digests).
fn convert_to_oci(top: Manifest, children: Vec<Manifest>) -> Result<(Manifest, Vec<Manifest>)> {
    let mut renamed = HashMap::new();
    let mut converted = Vec::with_capacity(children.len());
    for child in &children {
        let new = manifest_to_oci(child, &HashMap::new())?;
        if new.digest != child.digest {
            renamed.insert(
                child.digest.clone(),
                (
                    new.digest.clone(),
                    new.bytes.len() as u64,
                    new.media_type.clone(),
                ),
            );
        }
        converted.push(new);
    }
    Ok((manifest_to_oci(&top, &renamed)?, converted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_manifests_become_oci_with_the_same_blobs() {
        let z = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
        let child = Manifest::new(
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{z}","size":1}},"layers":[{{"mediaType":"{}","digest":"{z}","size":2}}]}}"#,
                media::DOCKER_MANIFEST,
                media::DOCKER_CONFIG,
                media::DOCKER_LAYER_GZIP
            ),
            media::DOCKER_MANIFEST,
        );
        let list = Manifest::new(
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
                media::DOCKER_LIST,
                media::DOCKER_MANIFEST,
                child.digest,
                child.bytes.len()
            ),
            media::DOCKER_LIST,
        );
        let (top, children) = convert_to_oci(list, vec![child.clone()]).unwrap();
        assert_eq!(top.media_type, media::OCI_INDEX);
        let ManifestKind::Index { manifests } = top.parse().unwrap() else {
            panic!()
        };
        assert_eq!(
            manifests[0].blob.digest, children[0].digest,
            "the index names the converted child"
        );
        assert_eq!(manifests[0].blob.media_type, media::OCI_MANIFEST);
        assert_eq!(
            manifests[0].platform.as_ref().unwrap().architecture,
            "amd64"
        );
        let ManifestKind::Image { config, layers } = children[0].parse().unwrap() else {
            panic!()
        };
        assert_eq!(config.media_type, media::OCI_CONFIG);
        assert_eq!(layers[0].media_type, media::OCI_LAYER_GZIP);
        assert_eq!(
            (config.digest.to_string(), layers[0].size),
            (z.to_string(), 2),
            "blobs unchanged"
        );
        // OCI input is left alone, byte for byte.
        let (again, _) = convert_to_oci(children[0].clone(), vec![]).unwrap();
        assert_eq!(again, children[0]);
    }
}
