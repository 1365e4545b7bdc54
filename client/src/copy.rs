//! Copy an image from any source to any destination: blobs first, in
//! parallel (bounded), each skipped, mounted or transferred; manifests last,
//! so a destination never names an image whose blobs are not all there.

use std::collections::HashSet;

use berth_storage::Digest;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::image::{
    BlobInfo, BlobOutcome, ImageDest, ImageSource, IndexEntry, Manifest, ManifestKind, Platform,
    Progress,
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
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            platforms: Platforms::One(Platform::current()),
            jobs: 4,
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
