//! OCI image layouts (`oci:DIR[:TAG]`): a directory with an `oci-layout`
//! marker, an `index.json` naming the images, and content-addressed blobs
//! under `blobs/ALG/HEX` (image-spec, image-layout.md).
//!
//! The same code backs the shared local store (`berth pull` writes into one
//! layout with the full reference as the ref name), so several processes
//! may write one layout at once: blobs land by rename (a reader never sees a
//! partial blob), and `index.json` is rewritten under a lock, by rename.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use berth_oci::{ByteStream, Digest};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::error::{Error, IoContext, Result};
use crate::image::{
    media, BlobInfo, BlobOutcome, BlobProgress, BlobVerifier, ImageDest, ImageSource, Manifest,
    ManifestKind,
};

/// The annotation that names an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The file that marks a directory as a layout; also the lock for `index.json`
/// (it is never replaced, unlike `index.json`, so a lock on it stays valid).
const LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const LAYOUT_VERSION: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";
/// Read buffer for blob streams: big enough that per-chunk overhead is noise.
pub(crate) const CHUNK: usize = 256 * 1024;
/// Manifests and configs are read into memory; anything larger than this is
/// not a manifest (registries cap them at 4 MiB).
pub(crate) const MAX_MANIFEST: u64 = 16 * 1024 * 1024;
/// How many times a blob copy resumes after a transient read error.
const RETRIES: u32 = 3;

/// One entry of `index.json`, keeping fields we do not use (platform, urls,
/// artifactType, ...) so a rewrite loses nothing another tool put there.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    /// Kept as text: an entry with an algorithm we do not support must still
    /// survive a rewrite of the index.
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IndexFile {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl IndexFile {
    pub(crate) fn empty() -> IndexFile {
        IndexFile {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            other: Map::new(),
        }
    }
}

/// An image named in a layout's `index.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayoutEntry {
    /// The `org.opencontainers.image.ref.name` annotation, if any.
    pub name: Option<String>,
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

/// What [`OciLayout::gc`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GcStats {
    pub removed_blobs: usize,
    pub removed_bytes: u64,
}

/// An OCI image layout directory (which may not exist yet).
#[derive(Clone, Debug)]
pub struct OciLayout {
    dir: PathBuf,
}

impl OciLayout {
    pub fn new(dir: impl Into<PathBuf>) -> OciLayout {
        OciLayout { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a blob lives: `blobs/ALG/HEX`. Safe to join because a [`Digest`]
    /// only holds lowercase hex of the right length.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn describe(&self, tag: Option<&str>) -> String {
        match tag {
            Some(t) => format!("oci:{}:{t}", self.dir.display()),
            None => format!("oci:{}", self.dir.display()),
        }
    }

    /// Whether the directory holds an `oci-layout` file.
    pub async fn exists(&self) -> bool {
        tokio::fs::metadata(self.dir.join(LAYOUT_FILE))
            .await
            .is_ok()
    }

    async fn require_layout(&self) -> Result<()> {
        match tokio::fs::metadata(self.dir.join(LAYOUT_FILE)).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let what = if tokio::fs::metadata(&self.dir).await.is_ok() {
                    "is not an OCI image layout (it has no oci-layout file)"
                } else {
                    "does not exist"
                };
                Err(Error::InvalidArgument(format!(
                    "{} {what}; give a directory written by `berth pull`/`berth copy ... oci:DIR`, `skopeo copy ... oci:DIR` or `umoci`",
                    self.dir.display()
                )))
            }
            Err(e) => Err(Error::io(format!("reading {}", self.dir.display()), e)),
        }
    }

    /// Create the directory, `blobs/` and the `oci-layout` marker if missing.
    pub async fn init(&self) -> Result<()> {
        let blobs = self.dir.join("blobs");
        tokio::fs::create_dir_all(&blobs)
            .await
            .ctx(|| format!("creating {}", blobs.display()))?;
        let marker = self.dir.join(LAYOUT_FILE);
        // create_new so two writers racing here never truncate each other's marker.
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .await
        {
            Ok(mut f) => {
                f.write_all(LAYOUT_VERSION.as_bytes())
                    .await
                    .ctx(|| format!("writing {}", marker.display()))?;
                f.sync_all()
                    .await
                    .ctx(|| format!("writing {}", marker.display()))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(format!("creating {}", marker.display()), e)),
        }
        Ok(())
    }

    pub(crate) async fn read_index(&self) -> Result<IndexFile> {
        let path = self.dir.join(INDEX_FILE);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::malformed(format!("{}", path.display()), e)),
            // A layout whose index.json is missing holds no images yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile::empty()),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Change `index.json` under an exclusive lock, then replace it by rename,
    /// so concurrent writers (two pulls into the store) never lose an entry
    /// and a reader never sees a half-written index.
    pub(crate) async fn update_index<F, R>(&self, change: F) -> Result<R>
    where
        F: FnOnce(&mut IndexFile) -> R + Send + 'static,
        R: Send + 'static,
    {
        let layout = self.clone();
        tokio::task::spawn_blocking(move || layout.update_index_blocking(change))
            .await
            .map_err(|e| Error::io("updating index.json", io::Error::other(e)))?
    }

    fn update_index_blocking<F, R>(&self, change: F) -> Result<R>
    where
        F: FnOnce(&mut IndexFile) -> R,
    {
        let marker = self.dir.join(LAYOUT_FILE);
        let lock = std::fs::File::open(&marker).ctx(|| format!("opening {}", marker.display()))?;
        lock.lock()
            .ctx(|| format!("locking {}", marker.display()))?;
        let path = self.dir.join(INDEX_FILE);
        let mut index = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| Error::malformed(format!("{}", path.display()), e))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => IndexFile::empty(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let result = change(&mut index);
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::malformed("index.json", e))?;
        write_atomic(&self.dir, &path, &bytes)?;
        // The lock is released when `lock` is dropped.
        Ok(result)
    }

    /// The images the layout names, in `index.json` order.
    pub async fn entries(&self) -> Result<Vec<LayoutEntry>> {
        self.require_layout().await?;
        let index = self.read_index().await?;
        Ok(index
            .manifests
            .iter()
            .filter_map(|d| {
                Some(LayoutEntry {
                    name: d.annotations.get(REF_NAME).cloned(),
                    media_type: d.media_type.clone(),
                    digest: d.digest.parse().ok()?,
                    size: d.size,
                })
            })
            .collect())
    }

    /// The ref names (tags) of the layout, sorted, without duplicates.
    pub async fn tags(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .entries()
            .await?
            .into_iter()
            .filter_map(|e| e.name)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Remove every `index.json` entry named `tag`. Blobs stay until [`gc`](Self::gc).
    /// Returns whether anything was removed.
    pub async fn remove_tag(&self, tag: &str) -> Result<bool> {
        self.require_layout().await?;
        let tag = tag.to_string();
        self.update_index(move |index| {
            let before = index.manifests.len();
            index
                .manifests
                .retain(|d| d.annotations.get(REF_NAME) != Some(&tag));
            index.manifests.len() != before
        })
        .await
    }

    /// The entry a tag names: the one whose ref name is `tag`; else, when
    /// `tag` is a digest, the entry with that digest; with no tag, the only entry.
    pub async fn resolve(&self, tag: Option<&str>) -> Result<LayoutEntry> {
        let entries = self.entries().await?;
        let names = || {
            let mut n: Vec<String> = entries.iter().filter_map(|e| e.name.clone()).collect();
            n.sort();
            n.dedup();
            if n.is_empty() {
                "no named images".to_string()
            } else {
                n.join(", ")
            }
        };
        match tag {
            Some(tag) => {
                if let Some(e) = entries.iter().find(|e| e.name.as_deref() == Some(tag)) {
                    return Ok(e.clone());
                }
                if let Ok(d) = tag.parse::<Digest>() {
                    if let Some(e) = entries.iter().find(|e| e.digest == d) {
                        return Ok(e.clone());
                    }
                }
                Err(Error::not_found(format!(
                    "image {tag:?} in {} (it has: {})",
                    self.describe(None),
                    names()
                )))
            }
            None => match entries.as_slice() {
                [one] => Ok(one.clone()),
                [] => Err(Error::not_found(format!(
                    "any image in {} (its index.json is empty)",
                    self.describe(None)
                ))),
                _ => Err(Error::InvalidArgument(format!(
                    "{} holds {} images; name one as oci:{}:NAME (names: {})",
                    self.describe(None),
                    entries.len(),
                    self.dir.display(),
                    names()
                ))),
            },
        }
    }

    /// Read a small blob (a manifest or config) whole, verifying its digest.
    pub async fn read_small_blob(&self, digest: &Digest) -> Result<Bytes> {
        let path = self.blob_path(digest);
        let meta = tokio::fs::metadata(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::not_found(format!("blob {digest} in {}", self.describe(None)))
            } else {
                Error::io(format!("reading {}", path.display()), e)
            }
        })?;
        if meta.len() > MAX_MANIFEST {
            return Err(Error::malformed(
                format!("blob {digest}"),
                format!("{} bytes is too large for a manifest or config", meta.len()),
            ));
        }
        let bytes = Bytes::from(
            tokio::fs::read(&path)
                .await
                .ctx(|| format!("reading {}", path.display()))?,
        );
        let actual = Digest::of(digest.algorithm(), &bytes);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: format!("{} (the layout is corrupt)", path.display()),
                expected: digest.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Write bytes we built (a config, a manifest) as a blob, unless present.
    pub async fn put_blob_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<BlobOutcome> {
        let path = self.blob_path(digest);
        if has_blob(&path, bytes.len() as u64).await {
            return Ok(BlobOutcome::Exists);
        }
        let actual = Digest::of(digest.algorithm(), bytes);
        if &actual != digest {
            return Err(Error::DigestMismatch {
                what: "blob".into(),
                expected: digest.clone(),
                actual,
            });
        }
        let (tmp, mut file) = self.temp_blob().await?;
        file.write_all(bytes)
            .await
            .ctx(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .await
            .ctx(|| format!("writing {}", tmp.display()))?;
        drop(file);
        self.persist(tmp, &path).await?;
        Ok(BlobOutcome::Copied)
    }

    /// A temporary file inside the layout (same filesystem, so the final
    /// rename is atomic). Removed on drop unless persisted.
    pub(crate) async fn temp_blob(&self) -> Result<(tempfile::TempPath, tokio::fs::File)> {
        let blobs = self.dir.join("blobs");
        tokio::fs::create_dir_all(&blobs)
            .await
            .ctx(|| format!("creating {}", blobs.display()))?;
        let tmp = tempfile::Builder::new()
            .permissions(crate::layout::shared_file_mode())
            .prefix(".tmp-")
            .tempfile_in(&blobs)
            .ctx(|| format!("creating a temporary file in {}", blobs.display()))?;
        let (file, path) = tmp.into_parts();
        Ok((path, tokio::fs::File::from_std(file)))
    }

    /// Move a finished temporary file to its blob path.
    pub async fn persist(&self, tmp: tempfile::TempPath, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .ctx(|| format!("creating {}", parent.display()))?;
        }
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            tmp.persist(&path)
                .map_err(|e| Error::io(format!("renaming into {}", path.display()), e.error))
        })
        .await
        .map_err(|e| Error::io("renaming a blob", io::Error::other(e)))?
    }

    /// Remove blobs no image in `index.json` reaches, and leftover temporary
    /// files. Blobs and temporary files touched within `grace` are kept: a
    /// write in progress (a pull not yet committed) relies on them, and a
    /// writer that finds a blob present refreshes its time (see `put_blob`).
    pub async fn gc(&self, grace: Duration) -> Result<GcStats> {
        self.require_layout().await?;
        let index = self.read_index().await?;
        let mut keep: HashSet<Digest> = HashSet::new();
        let mut todo: Vec<(Digest, String)> = index
            .manifests
            .iter()
            .filter_map(|d| Some((d.digest.parse().ok()?, d.media_type.clone())))
            .collect();
        while let Some((digest, media_type)) = todo.pop() {
            if !keep.insert(digest.clone()) {
                continue;
            }
            let bytes = match self.read_small_blob(&digest).await {
                Ok(b) => b,
                // A dangling entry: nothing below it to keep.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let media_type = if media_type.is_empty() {
                Manifest::sniff_media_type(&bytes).unwrap_or_default()
            } else {
                media_type
            };
            match Manifest::new(bytes, media_type).parse() {
                Ok(ManifestKind::Image { config, layers }) => {
                    keep.insert(config.digest);
                    keep.extend(layers.into_iter().map(|l| l.digest));
                }
                Ok(ManifestKind::Index { manifests }) => {
                    todo.extend(
                        manifests
                            .into_iter()
                            .map(|m| (m.blob.digest, m.blob.media_type)),
                    );
                }
                // Not a manifest (an artifact, a config): keep it, follow nothing.
                Err(_) => {}
            }
        }
        let layout = self.clone();
        tokio::task::spawn_blocking(move || layout.sweep(&keep, grace))
            .await
            .map_err(|e| Error::io("collecting garbage", io::Error::other(e)))?
    }

    fn sweep(&self, keep: &HashSet<Digest>, grace: Duration) -> Result<GcStats> {
        let mut stats = GcStats::default();
        let now = SystemTime::now();
        let old = |meta: &std::fs::Metadata| {
            meta.modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= grace)
        };
        let blobs = self.dir.join("blobs");
        let top = match std::fs::read_dir(&blobs) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(stats),
            Err(e) => return Err(Error::io(format!("reading {}", blobs.display()), e)),
        };
        for alg_dir in top {
            let alg_dir = alg_dir.ctx(|| format!("reading {}", blobs.display()))?;
            let name = alg_dir.file_name().to_string_lossy().into_owned();
            let meta = alg_dir
                .metadata()
                .ctx(|| format!("reading {}", alg_dir.path().display()))?;
            if name.starts_with(".tmp-") && meta.is_file() {
                if old(&meta) {
                    std::fs::remove_file(alg_dir.path())
                        .ctx(|| format!("removing {}", alg_dir.path().display()))?;
                }
                continue;
            }
            if !meta.is_dir() {
                continue;
            }
            for blob in std::fs::read_dir(alg_dir.path())
                .ctx(|| format!("reading {}", alg_dir.path().display()))?
            {
                let blob = blob.ctx(|| format!("reading {}", alg_dir.path().display()))?;
                let digest: Digest =
                    match format!("{name}:{}", blob.file_name().to_string_lossy()).parse() {
                        Ok(d) => d,
                        // Something we do not understand: not ours to delete.
                        Err(_) => continue,
                    };
                if keep.contains(&digest) {
                    continue;
                }
                let meta = blob
                    .metadata()
                    .ctx(|| format!("reading {}", blob.path().display()))?;
                if meta.is_file() && old(&meta) {
                    std::fs::remove_file(blob.path())
                        .ctx(|| format!("removing {}", blob.path().display()))?;
                    stats.removed_blobs += 1;
                    stats.removed_bytes += meta.len();
                }
            }
        }
        Ok(stats)
    }
}

/// Mode for files others read (layouts, archives): tempfile's default 0600
/// would make a layout written by root unreadable to the user who runs the
/// container. The umask still applies.
pub(crate) fn shared_file_mode() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o644)
}

/// Write a small file by temp + fsync + rename, then fsync the directory so
/// the rename itself survives a crash.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut tmp = tempfile::Builder::new()
        .permissions(crate::layout::shared_file_mode())
        .prefix(".tmp-")
        .tempfile_in(dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .ctx(|| format!("writing {}", path.display()))?;
    tmp.as_file()
        .sync_all()
        .ctx(|| format!("writing {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| Error::io(format!("renaming into {}", path.display()), e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

async fn is_empty_dir(dir: &Path) -> Result<bool> {
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .ctx(|| format!("reading {}", dir.display()))?;
    Ok(entries
        .next_entry()
        .await
        .ctx(|| format!("reading {}", dir.display()))?
        .is_none())
}

/// Whether a blob file is present with the expected size. A present blob
/// gets its modification time refreshed so a concurrent `gc` (which spares
/// recently touched blobs) does not remove it under a write that relies on it.
async fn has_blob(path: &Path, size: u64) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() && m.len() == size => {
            if let Ok(f) = std::fs::File::options().write(true).open(path) {
                let _ = f.set_modified(SystemTime::now());
            }
            true
        }
        _ => false,
    }
}

/// Copy a blob from `source` into `out`, feeding `verifier` and `progress`.
/// A transient read error resumes from the bytes already written (up to
/// [`RETRIES`] times), so a dropped connection does not restart a large
/// layer. Errors writing `out`, and bytes that fail verification, are never
/// retried. The caller checks the verifier and makes the bytes visible only
/// if it passes.
pub(crate) async fn copy_blob_into<W: AsyncWrite + Unpin + Send>(
    blob: &BlobInfo,
    source: &dyn ImageSource,
    progress: &dyn BlobProgress,
    out: &mut W,
    out_name: &str,
    verifier: &mut BlobVerifier,
) -> Result<u64> {
    /// Why one attempt stopped: only a read may be worth retrying.
    enum Stop {
        Read(Error),
        Fatal(Error),
    }
    let mut written: u64 = 0;
    let mut attempt: u32 = 0;
    loop {
        if attempt > 0 {
            // Back off a little: a registry that reset the connection is
            // often briefly overloaded.
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(5))).await;
            progress.restart_at(written);
        }
        let result: std::result::Result<(), Stop> = async {
            let mut stream = source.blob(blob, written).await.map_err(Stop::Read)?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    Stop::Read(Error::io(
                        format!("reading blob {} from {}", blob.digest, source.describe()),
                        e,
                    ))
                })?;
                verifier.update(&chunk).map_err(Stop::Fatal)?;
                out.write_all(&chunk)
                    .await
                    .map_err(|e| Stop::Fatal(Error::io(format!("writing {out_name}"), e)))?;
                written += chunk.len() as u64;
                progress.advance(chunk.len() as u64);
            }
            if written < blob.size {
                // The stream ended early without an error: treat it as a cut
                // connection, which resuming can fix.
                return Err(Stop::Read(Error::io(
                    format!(
                        "reading blob {} from {}: the stream ended after {written} of {} bytes",
                        blob.digest,
                        source.describe(),
                        blob.size
                    ),
                    io::ErrorKind::UnexpectedEof.into(),
                )));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => return Ok(written),
            Err(Stop::Read(e)) if e.is_transient() && attempt < RETRIES => {
                tracing::debug!(error = %e, attempt, "resuming blob {} at {written}", blob.digest);
                attempt += 1;
            }
            Err(Stop::Read(e)) | Err(Stop::Fatal(e)) => return Err(e),
        }
    }
}

/// Reads an image from an OCI layout.
pub struct OciLayoutSource {
    layout: OciLayout,
    tag: Option<String>,
}

impl OciLayoutSource {
    /// Open `dir` (which must be a layout) naming image `tag`, or its only image.
    pub async fn open(dir: impl Into<PathBuf>, tag: Option<&str>) -> Result<OciLayoutSource> {
        let layout = OciLayout::new(dir);
        layout.require_layout().await?;
        Ok(OciLayoutSource {
            layout,
            tag: tag.map(str::to_string),
        })
    }

    pub fn layout(&self) -> &OciLayout {
        &self.layout
    }
}

#[async_trait]
impl ImageSource for OciLayoutSource {
    fn describe(&self) -> String {
        self.layout.describe(self.tag.as_deref())
    }

    async fn manifest(&self) -> Result<Manifest> {
        let entry = self.layout.resolve(self.tag.as_deref()).await?;
        let bytes = self.layout.read_small_blob(&entry.digest).await?;
        let media_type = if entry.media_type.is_empty() {
            Manifest::sniff_media_type(&bytes).unwrap_or_else(|| media::OCI_MANIFEST.to_string())
        } else {
            entry.media_type
        };
        Manifest::verified(bytes, media_type, &entry.digest)
    }

    async fn manifest_by_digest(&self, digest: &Digest) -> Result<Manifest> {
        let bytes = self.layout.read_small_blob(digest).await?;
        let media_type =
            Manifest::sniff_media_type(&bytes).unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        Manifest::verified(bytes, media_type, digest)
    }

    async fn blob(&self, blob: &BlobInfo, offset: u64) -> Result<ByteStream> {
        let path = self.layout.blob_path(&blob.digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::not_found(format!("blob {} in {}", blob.digest, self.describe()))
            } else {
                Error::io(format!("opening {}", path.display()), e)
            }
        })?;
        if offset > 0 {
            file.seek(io::SeekFrom::Start(offset))
                .await
                .ctx(|| format!("seeking in {}", path.display()))?;
        }
        Ok(Box::pin(ReaderStream::with_capacity(file, CHUNK)))
    }
}

/// Writes an image into an OCI layout.
pub struct OciLayoutDest {
    layout: OciLayout,
    tag: Option<String>,
    /// The last manifest written: the top one when `commit` comes.
    top: std::sync::Mutex<Option<(Manifest, Option<String>)>>,
}

impl OciLayoutDest {
    /// Open or create a layout at `dir`; `commit` names the image `tag`.
    pub async fn create(dir: impl Into<PathBuf>, tag: Option<&str>) -> Result<OciLayoutDest> {
        let layout = OciLayout::new(dir);
        if let Ok(meta) = tokio::fs::metadata(layout.dir()).await {
            if !meta.is_dir() {
                return Err(Error::InvalidArgument(format!(
                    "{} is a file, not a directory; an OCI layout is a directory (for a tar file use docker-archive:FILE)",
                    layout.dir().display()
                )));
            }
            // Writing a layout into, say, a home directory by a typo would
            // scatter blobs/ and index.json among the user's files.
            if !layout.exists().await && !is_empty_dir(layout.dir()).await? {
                return Err(Error::InvalidArgument(format!(
                    "{} is not empty and not an OCI image layout; give a new or empty directory",
                    layout.dir().display()
                )));
            }
        }
        layout.init().await?;
        Ok(OciLayoutDest {
            layout,
            tag: tag.map(str::to_string),
            top: std::sync::Mutex::new(None),
        })
    }

    pub fn layout(&self) -> &OciLayout {
        &self.layout
    }
}

#[async_trait]
impl ImageDest for OciLayoutDest {
    fn describe(&self) -> String {
        self.layout.describe(self.tag.as_deref())
    }

    async fn put_blob(
        &self,
        blob: &BlobInfo,
        source: &dyn ImageSource,
        progress: &dyn BlobProgress,
    ) -> Result<BlobOutcome> {
        let path = self.layout.blob_path(&blob.digest);
        if has_blob(&path, blob.size).await {
            return Ok(BlobOutcome::Exists);
        }
        let (tmp, mut file) = self.layout.temp_blob().await?;
        let name = tmp.display().to_string();
        let mut verifier = BlobVerifier::new(blob);
        {
            // A BufWriter halves the write syscalls for small network chunks.
            let mut out = tokio::io::BufWriter::with_capacity(CHUNK, &mut file);
            copy_blob_into(blob, source, progress, &mut out, &name, &mut verifier).await?;
            out.flush().await.ctx(|| format!("writing {name}"))?;
        }
        // Verify before the blob gets its name; on failure `tmp` is dropped
        // and removed, so no partial or wrong file is ever visible.
        verifier.finish()?;
        file.sync_all().await.ctx(|| format!("writing {name}"))?;
        drop(file);
        self.layout.persist(tmp, &path).await?;
        Ok(BlobOutcome::Copied)
    }

    async fn put_manifest(&self, manifest: &Manifest, tag: Option<&str>) -> Result<()> {
        self.layout
            .put_blob_bytes(&manifest.digest, &manifest.bytes)
            .await?;
        let tag = tag.map(str::to_string).or_else(|| self.tag.clone());
        *self.top.lock().unwrap_or_else(|p| p.into_inner()) = Some((manifest.clone(), tag));
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        let top = self.top.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some((manifest, tag)) = top else {
            return Err(Error::InvalidArgument(format!(
                "nothing to commit to {}: no manifest was written",
                self.describe()
            )));
        };
        let mut annotations = BTreeMap::new();
        if let Some(t) = &tag {
            annotations.insert(REF_NAME.to_string(), t.clone());
        }
        let descriptor = Descriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.to_string(),
            size: manifest.bytes.len() as u64,
            annotations,
            other: Map::new(),
        };
        self.layout
            .update_index(move |index| {
                let digest = descriptor.digest.clone();
                match &tag {
                    // A name points at one image: the new one replaces any other.
                    Some(t) => index
                        .manifests
                        .retain(|d| d.annotations.get(REF_NAME) != Some(t)),
                    // Untagged copies of the same image would pile up; keep one.
                    None => index
                        .manifests
                        .retain(|d| d.annotations.contains_key(REF_NAME) || d.digest != digest),
                }
                index.manifests.push(descriptor);
                if index.media_type.is_none() {
                    index.media_type = Some(media::OCI_INDEX.to_string());
                }
            })
            .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::{sha256, NoProgress};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    /// A minimal copy (what the CLI's engine does), for round-trip tests.
    pub(crate) async fn copy_image(src: &dyn ImageSource, dst: &dyn ImageDest) -> Manifest {
        let top = src.manifest().await.unwrap();
        copy_manifest(src, dst, &top).await;
        dst.put_manifest(&top, None).await.unwrap();
        dst.commit().await.unwrap();
        top
    }

    async fn copy_manifest(src: &dyn ImageSource, dst: &dyn ImageDest, m: &Manifest) {
        match m.parse().unwrap() {
            ManifestKind::Image { config, layers } => {
                dst.put_blob(&config, src, &NoProgress).await.unwrap();
                for l in &layers {
                    dst.put_blob(l, src, &NoProgress).await.unwrap();
                }
            }
            ManifestKind::Index { manifests } => {
                for e in manifests {
                    let child = src.manifest_by_digest(&e.blob.digest).await.unwrap();
                    Box::pin(copy_manifest(src, dst, &child)).await;
                    dst.put_manifest(&child, None).await.unwrap();
                }
            }
        }
    }

    /// A small image written straight into a layout: (manifest, layer bytes).
    pub(crate) async fn sample_image(dir: &Path, tag: Option<&str>) -> (Manifest, Vec<u8>) {
        let layout = OciLayout::new(dir);
        layout.init().await.unwrap();
        let layer = b"pretend this is a tar".repeat(1000);
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        layout
            .put_blob_bytes(&sha256(&layer), &layer)
            .await
            .unwrap();
        layout
            .put_blob_bytes(&sha256(config), config)
            .await
            .unwrap();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": sha256(config), "size": config.len()},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": sha256(&layer), "size": layer.len()}],
        });
        let m = Manifest::new(serde_json::to_vec(&manifest).unwrap(), media::OCI_MANIFEST);
        let dest = OciLayoutDest::create(dir, tag).await.unwrap();
        dest.put_manifest(&m, None).await.unwrap();
        dest.commit().await.unwrap();
        (m, layer)
    }

    #[tokio::test]
    async fn round_trip_keeps_digest() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let (m, _) = sample_image(&a, Some("v1")).await;
        let src = OciLayoutSource::open(&a, Some("v1")).await.unwrap();
        assert_eq!(src.manifest().await.unwrap(), m);
        let dst = OciLayoutDest::create(&b, Some("localhost:5000/app:1"))
            .await
            .unwrap();
        copy_image(&src, &dst).await;
        let back = OciLayoutSource::open(&b, Some("localhost:5000/app:1"))
            .await
            .unwrap();
        let got = back.manifest().await.unwrap();
        assert_eq!(got.digest, m.digest);
        assert_eq!(got.media_type, media::OCI_MANIFEST);
        assert_eq!(
            OciLayout::new(&b).tags().await.unwrap(),
            vec!["localhost:5000/app:1"]
        );
        // Copying again finds every blob present.
        let layer = match m.parse().unwrap() {
            ManifestKind::Image { layers, .. } => layers[0].clone(),
            _ => unreachable!(),
        };
        assert_eq!(
            dst.put_blob(&layer, &src, &NoProgress).await.unwrap(),
            BlobOutcome::Exists
        );
        // By digest works too.
        let by_digest = OciLayoutSource::open(&b, Some(&m.digest.to_string()))
            .await
            .unwrap();
        assert_eq!(by_digest.manifest().await.unwrap().digest, m.digest);
        // Others may read what was written (not tempfile's 0600), as with files
        // any other tool writes; the umask still applies.
        use std::os::unix::fs::PermissionsExt;
        let umask_allows_others = {
            let probe = b.join("probe");
            std::fs::write(&probe, b"x").unwrap();
            std::fs::metadata(&probe).unwrap().permissions().mode() & 0o004 != 0
        };
        if umask_allows_others {
            for path in [
                b.join("index.json"),
                OciLayout::new(&b).blob_path(&layer.digest),
            ] {
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o044, 0o044, "{} is {mode:o}", path.display());
            }
        }
    }

    #[tokio::test]
    async fn tags_replace_remove_and_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("l");
        let (m1, _) = sample_image(&dir, Some("one")).await;
        sample_image(&dir, Some("two")).await;
        sample_image(&dir, Some("one")).await; // same name again: replaced, not added
        let layout = OciLayout::new(&dir);
        assert_eq!(layout.tags().await.unwrap(), vec!["one", "two"]);
        assert_eq!(layout.entries().await.unwrap().len(), 2);
        let src = OciLayoutSource::open(&dir, None).await.unwrap();
        let err = src.manifest().await.unwrap_err().to_string();
        assert!(err.contains("one, two"), "{err}");
        let src = OciLayoutSource::open(&dir, Some("three")).await.unwrap();
        let err = src.manifest().await.unwrap_err().to_string();
        assert!(
            err.contains("not found") && err.contains("one, two"),
            "{err}"
        );
        assert!(layout.remove_tag("two").await.unwrap());
        assert!(!layout.remove_tag("two").await.unwrap());
        let src = OciLayoutSource::open(&dir, None).await.unwrap();
        assert_eq!(src.manifest().await.unwrap().digest, m1.digest);

        let not_layout = tmp.path().join("plain");
        std::fs::create_dir(&not_layout).unwrap();
        std::fs::write(not_layout.join("notes.txt"), "mine").unwrap();
        let err = OciLayoutDest::create(&not_layout, None)
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("not empty"), "{err}");
        let err = OciLayoutSource::open(&not_layout, None)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not an OCI image layout"), "{err}");
    }

    #[tokio::test]
    async fn gc_keeps_reachable_blobs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("l");
        sample_image(&dir, Some("one")).await;
        let layout = OciLayout::new(&dir);
        let stray = b"nobody needs me";
        layout.put_blob_bytes(&sha256(stray), stray).await.unwrap();
        // Within the grace period nothing goes.
        assert_eq!(
            layout
                .gc(Duration::from_secs(3600))
                .await
                .unwrap()
                .removed_blobs,
            0
        );
        let stats = layout.gc(Duration::ZERO).await.unwrap();
        assert_eq!(stats.removed_blobs, 1);
        assert_eq!(stats.removed_bytes, stray.len() as u64);
        let src = OciLayoutSource::open(&dir, Some("one")).await.unwrap();
        let m = src.manifest().await.unwrap();
        let dst_dir = tmp.path().join("copy");
        copy_image(&src, &OciLayoutDest::create(&dst_dir, None).await.unwrap()).await;
        assert!(layout.remove_tag("one").await.unwrap());
        assert_eq!(layout.gc(Duration::ZERO).await.unwrap().removed_blobs, 3);
        assert!(!layout.blob_path(&m.digest).exists());
    }

    /// A source whose stream fails with a transient error part way, a set number of times.
    struct Flaky {
        data: Vec<u8>,
        failures: AtomicU32,
        corrupt: bool,
    }

    #[async_trait]
    impl ImageSource for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        async fn manifest(&self) -> Result<Manifest> {
            unimplemented!()
        }
        async fn manifest_by_digest(&self, _: &Digest) -> Result<Manifest> {
            unimplemented!()
        }
        async fn blob(&self, _blob: &BlobInfo, offset: u64) -> Result<ByteStream> {
            let mut rest = self.data[offset as usize..].to_vec();
            if self.corrupt {
                if let Some(b) = rest.last_mut() {
                    *b ^= 1;
                }
            }
            let fail = self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            let cut = if fail { rest.len() / 2 } else { rest.len() };
            let mut items: Vec<io::Result<Bytes>> = rest[..cut]
                .chunks(1000)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            if fail {
                items.push(Err(io::ErrorKind::ConnectionReset.into()));
            }
            Ok(Box::pin(futures::stream::iter(items)))
        }
    }

    struct Restarts(Arc<std::sync::Mutex<Vec<u64>>>);
    impl BlobProgress for Restarts {
        fn advance(&self, _: u64) {}
        fn restart_at(&self, offset: u64) {
            self.0.lock().unwrap().push(offset);
        }
        fn finish(&self, _: BlobOutcome) {}
    }

    #[tokio::test]
    async fn put_blob_resumes_and_never_leaves_partial_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = OciLayoutDest::create(tmp.path(), None).await.unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let blob = BlobInfo {
            media_type: media::OCI_LAYER.into(),
            digest: sha256(&data),
            size: data.len() as u64,
        };
        let src = Flaky {
            data: data.clone(),
            failures: AtomicU32::new(2),
            corrupt: false,
        };
        let restarts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let outcome = dest
            .put_blob(&blob, &src, &Restarts(restarts.clone()))
            .await
            .unwrap();
        assert_eq!(outcome, BlobOutcome::Copied);
        assert_eq!(*restarts.lock().unwrap(), vec![50_000, 75_000]);
        assert_eq!(
            std::fs::read(dest.layout().blob_path(&blob.digest)).unwrap(),
            data
        );

        // Too many failures: an error, and no file under the final name.
        let tmp2 = tempfile::tempdir().unwrap();
        let dest = OciLayoutDest::create(tmp2.path(), None).await.unwrap();
        let src = Flaky {
            data: data.clone(),
            failures: AtomicU32::new(10),
            corrupt: false,
        };
        assert!(dest.put_blob(&blob, &src, &NoProgress).await.is_err());
        assert!(!dest.layout().blob_path(&blob.digest).exists());
        // Wrong bytes: a digest mismatch, no file, no temp file left.
        let src = Flaky {
            data,
            failures: AtomicU32::new(0),
            corrupt: true,
        };
        let err = dest.put_blob(&blob, &src, &NoProgress).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!dest.layout().blob_path(&blob.digest).exists());
        let leftovers: Vec<_> = std::fs::read_dir(tmp2.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[tokio::test]
    async fn concurrent_commits_keep_every_tag() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let (m, _) = sample_image(&dir, Some("base")).await;
        let mut tasks = Vec::new();
        for i in 0..8 {
            let dir = dir.clone();
            let m = m.clone();
            tasks.push(tokio::spawn(async move {
                let d = OciLayoutDest::create(&dir, Some(&format!("example.com/app:{i}")))
                    .await
                    .unwrap();
                d.put_manifest(&m, None).await.unwrap();
                d.commit().await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(OciLayout::new(&dir).tags().await.unwrap().len(), 9);
    }

    #[tokio::test]
    async fn keeps_unknown_index_fields() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let (m, _) = sample_image(dir, None).await;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "annotations": {"x": "y"},
            "manifests": [{"mediaType": media::OCI_MANIFEST, "digest": m.digest, "size": m.bytes.len(),
                           "platform": {"os": "linux", "architecture": "arm64"}}]
        });
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        let dest = OciLayoutDest::create(dir, Some("t")).await.unwrap();
        dest.put_manifest(&m, None).await.unwrap();
        dest.commit().await.unwrap();
        let v: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(v["annotations"]["x"], "y");
        assert_eq!(v["manifests"][0]["platform"]["architecture"], "arm64");
        assert_eq!(v["manifests"][1]["annotations"][REF_NAME], "t");
    }
}
