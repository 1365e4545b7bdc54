//! Docker archives (`docker-archive:FILE[:REF]`): what `docker save` writes
//! and `docker load` reads. A tar with a `manifest.json` listing images as
//! `{"Config": PATH, "RepoTags": [...], "Layers": [PATH, ...]}`; before
//! Docker 25 the files are `<id>/layer.tar` and `<hex>.json`, since Docker 25
//! they are `blobs/sha256/<hex>` of an OCI layout stored beside it.
//!
//! Reading never loads a blob into memory: the tar is indexed once (path →
//! offset and size), then blobs are streamed as slices of the file. Writing
//! produces both shapes at once: blobs under `blobs/sha256/`, `index.json`
//! and `oci-layout` (an OCI layout), plus `manifest.json` for `docker load`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use berth_oci::{Algorithm, ByteStream, Digest, Hasher};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

use crate::error::{Error, IoContext, Result};
use crate::image::{
    media, BlobInfo, BlobOutcome, BlobProgress, BlobVerifier, ImageDest, ImageSource, Manifest,
    ManifestKind,
};
use crate::layout::{copy_blob_into, Descriptor, IndexFile, CHUNK, MAX_MANIFEST, REF_NAME};
use crate::reference::ImageRef;

/// The annotation containerd and Docker ≥ 25 put on `index.json` entries
/// with the image's full name.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// One image in `manifest.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ArchiveImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Where a file's bytes lie inside the tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slice {
    offset: u64,
    size: u64,
}

/// The tar's regular files by normalised path, with links resolved.
#[derive(Debug, Default)]
struct TarIndex {
    files: HashMap<String, Slice>,
}

/// `./a//b/../c` → `a/c`: tar writers differ in how they spell paths.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    parts.join("/")
}

impl TarIndex {
    /// Read every header once. Symlinks (skopeo links `<id>/layer.tar` to
    /// the real file) and hard links are resolved to the file they name.
    fn build(file: &Path) -> Result<TarIndex> {
        let what = || format!("reading {}", file.display());
        let f = std::fs::File::open(file).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                Error::not_found(format!("docker archive {}", file.display()))
            } else {
                Error::io(what(), e)
            }
        })?;
        // `docker save | gzip` is common and `docker load` takes it, but a
        // compressed tar cannot be read by offset: say so plainly.
        let mut magic = Vec::with_capacity(6);
        (&f).take(6).read_to_end(&mut magic).ctx(what)?;
        if layer_media_type(&magic) != media::DOCKER_LAYER {
            return Err(Error::Unsupported(format!(
                "{} is compressed; a docker-archive must be a plain tar: decompress it first (e.g. `gunzip -k {}`)",
                file.display(),
                file.display()
            )));
        }
        let mut f = f;
        f.seek(SeekFrom::Start(0)).ctx(what)?;
        let mut archive = tar::Archive::new(f);
        let mut index = TarIndex::default();
        let mut links: Vec<(String, String)> = Vec::new();
        let entries = archive.entries_with_seek().ctx(what)?;
        for entry in entries {
            let entry = entry.map_err(|e| {
                Error::malformed(
                    format!("docker archive {}", file.display()),
                    format!("{e} (is it a tar file? a compressed one must be decompressed first)"),
                )
            })?;
            let path = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    index.files.insert(
                        path,
                        Slice {
                            offset: entry.raw_file_position(),
                            size: entry.size(),
                        },
                    );
                }
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let Some(target) = entry.link_name_bytes() else {
                        continue;
                    };
                    let target = String::from_utf8_lossy(&target).into_owned();
                    let resolved = if kind == tar::EntryType::Symlink && !target.starts_with('/') {
                        // A symlink is relative to its own directory.
                        let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                        normalize(&format!("{dir}/{target}"))
                    } else {
                        // A hard link names a path from the archive's root.
                        normalize(&target)
                    };
                    links.push((path, resolved));
                }
                _ => {}
            }
        }
        // Links may point at links; a few rounds settle any sane chain.
        for _ in 0..8 {
            let mut progress = false;
            for (path, target) in &links {
                if !index.files.contains_key(path) {
                    if let Some(s) = index.files.get(target).copied() {
                        index.files.insert(path.clone(), s);
                        progress = true;
                    }
                }
            }
            if !progress {
                break;
            }
        }
        Ok(index)
    }

    fn get(&self, path: &str) -> Option<Slice> {
        self.files.get(&normalize(path)).copied()
    }

    /// The content-addressed file for a digest, if the archive has one.
    fn blob(&self, digest: &Digest) -> Option<Slice> {
        self.get(&blob_path(digest))
    }
}

/// `blobs/ALG/HEX`, the path of a blob in an OCI layout (and in our archives).
fn blob_path(digest: &Digest) -> String {
    format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// The digest a `blobs/ALG/HEX` path names, if it is one.
fn digest_of_blob_path(path: &str) -> Option<Digest> {
    let path = normalize(path);
    let rest = path.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

/// Read a whole small file out of the tar.
fn read_slice(file: &Path, slice: Slice, what: &str) -> Result<Vec<u8>> {
    if slice.size > MAX_MANIFEST {
        return Err(Error::malformed(
            what,
            format!("{} bytes is too large", slice.size),
        ));
    }
    let mut f = std::fs::File::open(file).ctx(|| format!("opening {}", file.display()))?;
    f.seek(SeekFrom::Start(slice.offset))
        .ctx(|| format!("reading {}", file.display()))?;
    let mut buf = vec![0; slice.size as usize];
    f.read_exact(&mut buf)
        .ctx(|| format!("reading {what} from {}", file.display()))?;
    Ok(buf)
}

/// The first bytes of a slice, to tell compressed layers apart.
fn read_magic(file: &Path, slice: Slice) -> Result<Vec<u8>> {
    let mut f = std::fs::File::open(file).ctx(|| format!("opening {}", file.display()))?;
    f.seek(SeekFrom::Start(slice.offset))
        .ctx(|| format!("reading {}", file.display()))?;
    let mut buf = Vec::with_capacity(4);
    f.take(slice.size.min(4))
        .read_to_end(&mut buf)
        .ctx(|| format!("reading {}", file.display()))?;
    Ok(buf)
}

/// sha256 of a slice, streamed.
fn hash_slice(file: &Path, slice: Slice) -> Result<Digest> {
    let mut f = std::fs::File::open(file).ctx(|| format!("opening {}", file.display()))?;
    f.seek(SeekFrom::Start(slice.offset))
        .ctx(|| format!("reading {}", file.display()))?;
    let mut f = f.take(slice.size);
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut buf = vec![0; CHUNK];
    loop {
        let n = f
            .read(&mut buf)
            .ctx(|| format!("reading {}", file.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}

/// The layer media type a docker manifest uses for these first bytes.
pub(crate) fn layer_media_type(magic: &[u8]) -> &'static str {
    if magic.starts_with(&[0x1f, 0x8b]) {
        media::DOCKER_LAYER_GZIP
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        // Docker's schema 2 has no zstd type; the OCI one is what Docker uses.
        media::OCI_LAYER_ZSTD
    } else {
        media::DOCKER_LAYER
    }
}

/// Whether a `RepoTags` entry is the reference the user asked for, either
/// as written (`app:1`) or after normalisation (`docker.io/library/app:1`).
fn ref_matches(repo_tag: &str, wanted: &str) -> bool {
    if repo_tag == wanted {
        return true;
    }
    match (ImageRef::parse(repo_tag), ImageRef::parse(wanted)) {
        (Ok(a), Ok(b)) => {
            b.digest.is_none()
                && a.registry == b.registry
                && a.repository == b.repository
                && a.tag_or_latest() == b.tag_or_latest()
        }
        _ => false,
    }
}

#[derive(Deserialize)]
struct ConfigRootfs {
    #[serde(default)]
    rootfs: Option<RootfsIds>,
}

#[derive(Deserialize)]
struct RootfsIds {
    #[serde(default)]
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SchemaTwo<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: &'a BlobInfo,
    layers: &'a [BlobInfo],
}

/// The image's manifest and where each of its blobs lies in the tar.
struct Resolved {
    manifest: Manifest,
    blobs: HashMap<Digest, Slice>,
}

/// Reads one image from a docker archive.
pub struct DockerArchiveSource {
    file: PathBuf,
    reference: Option<String>,
    index: Arc<TarIndex>,
    image: ArchiveImage,
    resolved: tokio::sync::OnceCell<Resolved>,
}

impl DockerArchiveSource {
    /// Index the archive and pick the image `reference` names (a `RepoTags`
    /// entry, or `@N` for the N-th image), or its only image.
    pub async fn open(
        file: impl Into<PathBuf>,
        reference: Option<&str>,
    ) -> Result<DockerArchiveSource> {
        let file = file.into();
        let f = file.clone();
        let index = tokio::task::spawn_blocking(move || TarIndex::build(&f))
            .await
            .map_err(|e| Error::io("indexing the archive", io::Error::other(e)))??;
        let Some(slice) = index.get("manifest.json") else {
            let hint = if index.get("index.json").is_some() {
                "; it looks like an OCI layout in a tar: extract it and use oci:DIR"
            } else {
                ""
            };
            return Err(Error::malformed(
                format!("docker archive {}", file.display()),
                format!("it has no manifest.json, so `docker save` did not write it{hint}"),
            ));
        };
        let bytes = read_slice(&file, slice, "manifest.json")?;
        let images: Vec<ArchiveImage> = serde_json::from_slice(&bytes)
            .map_err(|e| Error::malformed(format!("manifest.json in {}", file.display()), e))?;
        let image = Self::select(&file, images, reference)?;
        Ok(DockerArchiveSource {
            file,
            reference: reference.map(str::to_string),
            index: Arc::new(index),
            image,
            resolved: tokio::sync::OnceCell::new(),
        })
    }

    fn select(
        file: &Path,
        images: Vec<ArchiveImage>,
        reference: Option<&str>,
    ) -> Result<ArchiveImage> {
        let all_tags = |images: &[ArchiveImage]| {
            let tags: Vec<String> = images
                .iter()
                .flat_map(|i| i.repo_tags.clone().unwrap_or_default())
                .collect();
            if tags.is_empty() {
                "no tags".to_string()
            } else {
                tags.join(", ")
            }
        };
        match reference {
            Some(r) => {
                if let Some(n) = r.strip_prefix('@').and_then(|n| n.parse::<usize>().ok()) {
                    let count = images.len();
                    return images.into_iter().nth(n).ok_or_else(|| {
                        Error::not_found(format!(
                            "image @{n} in {} (it holds {count}, numbered from @0)",
                            file.display()
                        ))
                    });
                }
                let found = images
                    .iter()
                    .position(|i| i.repo_tags.iter().flatten().any(|t| ref_matches(t, r)));
                match found {
                    Some(i) => Ok(images[i].clone()),
                    None => Err(Error::not_found(format!(
                        "image {r:?} in {} (it has: {})",
                        file.display(),
                        all_tags(&images)
                    ))),
                }
            }
            None => match images.len() {
                1 => Ok(images.into_iter().next().expect("one image")),
                0 => Err(Error::malformed(
                    format!("docker archive {}", file.display()),
                    "its manifest.json lists no image",
                )),
                n => Err(Error::InvalidArgument(format!(
                    "{} holds {n} images; name one as docker-archive:{}:REF or :@N (tags: {})",
                    file.display(),
                    file.display(),
                    all_tags(&images)
                ))),
            },
        }
    }

    /// The `RepoTags` of the chosen image.
    pub fn repo_tags(&self) -> Vec<String> {
        self.image.repo_tags.clone().unwrap_or_default()
    }

    async fn resolved(&self) -> Result<&Resolved> {
        self.resolved
            .get_or_try_init(|| async {
                let file = self.file.clone();
                let index = self.index.clone();
                let image = self.image.clone();
                tokio::task::spawn_blocking(move || resolve(&file, &index, &image))
                    .await
                    .map_err(|e| Error::io("reading the archive", io::Error::other(e)))?
            })
            .await
    }

    fn missing(&self, what: &str) -> Error {
        Error::malformed(
            format!("docker archive {}", self.file.display()),
            format!("{what} is listed in manifest.json but not in the archive"),
        )
    }
}

/// Build the image's manifest. When the archive also holds an OCI layout
/// whose manifest has exactly this config and these layers (Docker ≥ 25),
/// that manifest is used as is, so the image keeps its digest; otherwise a
/// Docker schema 2 manifest is made from manifest.json.
fn resolve(file: &Path, index: &TarIndex, image: &ArchiveImage) -> Result<Resolved> {
    let archive = || format!("docker archive {}", file.display());
    let missing = |what: &str| {
        Error::malformed(
            archive(),
            format!("{what} is listed in manifest.json but not in the archive"),
        )
    };
    let config_slice = index
        .get(&image.config)
        .ok_or_else(|| missing(&format!("config {}", image.config)))?;
    let config_bytes = read_slice(file, config_slice, "the image config")?;
    let config_digest = Digest::sha256_of(&config_bytes);
    let mut blobs = HashMap::new();
    blobs.insert(config_digest.clone(), config_slice);

    if let Some(found) = find_oci_manifest(file, index, &config_digest, image.layers.len())? {
        let manifest = found;
        if let ManifestKind::Image { layers, .. } = manifest.parse()? {
            for l in layers {
                if let Some(s) = index.blob(&l.digest) {
                    blobs.insert(l.digest, s);
                }
            }
        }
        return Ok(Resolved { manifest, blobs });
    }

    // Docker's own layer.tar files are the uncompressed layers, whose sha256
    // is by definition the config's diff_id: using it saves reading every
    // layer twice. A wrong one cannot slip through: every destination
    // verifies each blob's digest as it writes it.
    let diff_ids: Vec<Option<Digest>> = serde_json::from_slice::<ConfigRootfs>(&config_bytes)
        .ok()
        .and_then(|c| c.rootfs)
        .map(|r| r.diff_ids.iter().map(|d| d.parse().ok()).collect())
        .unwrap_or_default();
    let mut layers = Vec::with_capacity(image.layers.len());
    for (i, path) in image.layers.iter().enumerate() {
        let slice = index
            .get(path)
            .ok_or_else(|| missing(&format!("layer {path}")))?;
        let media_type = layer_media_type(&read_magic(file, slice)?);
        let digest = match digest_of_blob_path(path) {
            // A content-addressed name is the digest (and is verified on copy).
            Some(d) => d,
            None => match diff_ids.get(i) {
                Some(Some(d))
                    if media_type == media::DOCKER_LAYER
                        && diff_ids.len() == image.layers.len() =>
                {
                    d.clone()
                }
                _ => hash_slice(file, slice)?,
            },
        };
        blobs.insert(digest.clone(), slice);
        layers.push(BlobInfo {
            media_type: media_type.to_string(),
            digest,
            size: slice.size,
        });
    }
    let config = BlobInfo {
        media_type: media::DOCKER_CONFIG.to_string(),
        digest: config_digest,
        size: config_slice.size,
    };
    let bytes = serde_json::to_vec(&SchemaTwo {
        schema_version: 2,
        media_type: media::DOCKER_MANIFEST,
        config: &config,
        layers: &layers,
    })
    .map_err(|e| Error::malformed("manifest", e))?;
    Ok(Resolved {
        manifest: Manifest::new(bytes, media::DOCKER_MANIFEST),
        blobs,
    })
}

/// The OCI manifest in the archive's `index.json` (or one index below it)
/// whose config is `config` and that has `layer_count` layers, all present.
fn find_oci_manifest(
    file: &Path,
    index: &TarIndex,
    config: &Digest,
    layer_count: usize,
) -> Result<Option<Manifest>> {
    let Some(slice) = index.get("index.json") else {
        return Ok(None);
    };
    let Ok(top) = serde_json::from_slice::<IndexFile>(&read_slice(file, slice, "index.json")?)
    else {
        return Ok(None);
    };
    let mut todo: Vec<(Descriptor, u32)> = top.manifests.into_iter().map(|d| (d, 0)).collect();
    while let Some((d, depth)) = todo.pop() {
        let Ok(digest) = d.digest.parse::<Digest>() else {
            continue;
        };
        let Some(s) = index.blob(&digest) else {
            continue;
        };
        let Ok(bytes) = read_slice(file, s, "a manifest") else {
            continue;
        };
        let media_type = if d.media_type.is_empty() {
            Manifest::sniff_media_type(&bytes).unwrap_or_default()
        } else {
            d.media_type.clone()
        };
        let Ok(m) = Manifest::verified(bytes, media_type, &digest) else {
            continue;
        };
        match m.parse() {
            Ok(ManifestKind::Image {
                config: c, layers, ..
            }) if &c.digest == config
                && layers.len() == layer_count
                && layers.iter().all(|l| index.blob(&l.digest).is_some()) =>
            {
                return Ok(Some(m));
            }
            Ok(ManifestKind::Index { manifests }) if depth < 2 => {
                todo.extend(manifests.into_iter().map(|e| {
                    (
                        Descriptor {
                            media_type: e.blob.media_type,
                            digest: e.blob.digest.to_string(),
                            size: e.blob.size,
                            annotations: BTreeMap::new(),
                            other: Default::default(),
                        },
                        depth + 1,
                    )
                }));
            }
            _ => {}
        }
    }
    Ok(None)
}

#[async_trait]
impl ImageSource for DockerArchiveSource {
    fn describe(&self) -> String {
        match &self.reference {
            Some(r) => format!("docker-archive:{}:{r}", self.file.display()),
            None => format!("docker-archive:{}", self.file.display()),
        }
    }

    async fn manifest(&self) -> Result<Manifest> {
        Ok(self.resolved().await?.manifest.clone())
    }

    async fn manifest_by_digest(&self, digest: &Digest) -> Result<Manifest> {
        let resolved = self.resolved().await?;
        if &resolved.manifest.digest == digest {
            return Ok(resolved.manifest.clone());
        }
        let slice = self
            .index
            .blob(digest)
            .ok_or_else(|| Error::not_found(format!("manifest {digest} in {}", self.describe())))?;
        let file = self.file.clone();
        let bytes = tokio::task::spawn_blocking(move || read_slice(&file, slice, "a manifest"))
            .await
            .map_err(|e| Error::io("reading the archive", io::Error::other(e)))??;
        let media_type =
            Manifest::sniff_media_type(&bytes).unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        Manifest::verified(bytes, media_type, digest)
    }

    async fn blob(&self, blob: &BlobInfo, offset: u64) -> Result<ByteStream> {
        let resolved = self.resolved().await?;
        let slice = resolved
            .blobs
            .get(&blob.digest)
            .copied()
            .or_else(|| self.index.blob(&blob.digest))
            .ok_or_else(|| self.missing(&format!("blob {}", blob.digest)))?;
        let offset = offset.min(slice.size);
        let mut f = tokio::fs::File::open(&self.file)
            .await
            .ctx(|| format!("opening {}", self.file.display()))?;
        f.seek(SeekFrom::Start(slice.offset + offset))
            .await
            .ctx(|| format!("reading {}", self.file.display()))?;
        Ok(Box::pin(ReaderStream::with_capacity(
            f.take(slice.size - offset),
            CHUNK,
        )))
    }
}

/// Writes one image as a docker archive that is also an OCI layout.
pub struct DockerArchiveDest {
    file: PathBuf,
    repo_tags: Vec<String>,
    state: tokio::sync::Mutex<Writer>,
}

/// The tar being written. `out` is `None` once the archive was abandoned
/// (after a failed blob) or committed.
struct Writer {
    tmp: Option<tempfile::TempPath>,
    out: Option<tokio::io::BufWriter<tokio::fs::File>>,
    /// Blobs in the tar, so a blob listed twice is written once.
    written: HashSet<Digest>,
    dirs: HashSet<String>,
    top: Option<Manifest>,
    failed: Option<String>,
}

/// A tar header for a file or directory. Fixed owner and time keep the
/// archive reproducible: the same image gives the same bytes.
fn tar_header(path: &str, size: u64, dir: bool) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| Error::io(format!("tar entry {path}"), e))?;
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_cksum();
    Ok(h)
}

/// Zero bytes that fill an entry's data up to the 512-byte block.
fn padding(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

impl Writer {
    fn out(&mut self) -> Result<&mut tokio::io::BufWriter<tokio::fs::File>> {
        if let Some(why) = &self.failed {
            return Err(Error::InvalidArgument(format!(
                "the archive was abandoned after an earlier error ({why})"
            )));
        }
        self.out
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("the archive is already committed".into()))
    }

    /// Drop the temporary file: an archive missing a blob is useless.
    fn abandon(&mut self, why: &Error) {
        self.failed = Some(why.to_string());
        self.out = None;
        self.tmp = None; // removes the file
    }

    async fn dir_entries(&mut self, path: &str) -> Result<()> {
        let mut prefix = String::new();
        let dirs: Vec<&str> = path.split('/').collect();
        for d in &dirs[..dirs.len() - 1] {
            prefix.push_str(d);
            prefix.push('/');
            if self.dirs.insert(prefix.clone()) {
                let h = tar_header(&prefix, 0, true)?;
                self.out()?
                    .write_all(h.as_bytes())
                    .await
                    .ctx(|| "writing the archive".to_string())?;
            }
        }
        Ok(())
    }

    async fn put_bytes(&mut self, path: &str, bytes: &[u8]) -> Result<()> {
        self.dir_entries(path).await?;
        let h = tar_header(path, bytes.len() as u64, false)?;
        let out = self.out()?;
        let pad = [0u8; 512];
        let w = async {
            out.write_all(h.as_bytes()).await?;
            out.write_all(bytes).await?;
            out.write_all(&pad[..padding(bytes.len() as u64)]).await
        };
        w.await.ctx(|| format!("writing {path} to the archive"))
    }
}

impl DockerArchiveDest {
    /// Start an archive that will replace `file` on commit; `repo_tags`
    /// (e.g. `app:1`, `localhost:5000/app:1`) are what `docker load` tags.
    pub async fn create(
        file: impl Into<PathBuf>,
        repo_tags: Vec<String>,
    ) -> Result<DockerArchiveDest> {
        let file = file.into();
        for t in &repo_tags {
            ImageRef::parse(t)?;
        }
        if tokio::fs::metadata(&file).await.is_ok_and(|m| m.is_dir()) {
            return Err(Error::InvalidArgument(format!(
                "{} is a directory; a docker archive is a file (for a directory use oci:DIR)",
                file.display()
            )));
        }
        let parent = match file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "archive".into());
        // Beside the target, so the final rename stays on one filesystem.
        let tmp = tempfile::Builder::new()
            .permissions(crate::layout::shared_file_mode())
            .prefix(&format!(".{name}.tmp-"))
            .tempfile_in(&parent)
            .ctx(|| format!("creating a temporary file in {}", parent.display()))?;
        let (f, path) = tmp.into_parts();
        Ok(DockerArchiveDest {
            file,
            repo_tags,
            state: tokio::sync::Mutex::new(Writer {
                tmp: Some(path),
                out: Some(tokio::io::BufWriter::with_capacity(
                    CHUNK,
                    tokio::fs::File::from_std(f),
                )),
                written: HashSet::new(),
                dirs: HashSet::new(),
                top: None,
                failed: None,
            }),
        })
    }

    fn index_json(&self, manifest: &Manifest) -> Result<Vec<u8>> {
        let descriptor = |annotations: BTreeMap<String, String>| Descriptor {
            media_type: manifest.media_type.clone(),
            digest: manifest.digest.to_string(),
            size: manifest.bytes.len() as u64,
            annotations,
            other: Default::default(),
        };
        let mut index = IndexFile::empty();
        // As Docker ≥ 25 writes it: the full name for containerd, the tag as
        // the OCI ref name.
        for t in &self.repo_tags {
            let r = ImageRef::parse(t)?;
            let tag = r.tag_or_latest().unwrap_or_else(|| "latest".into());
            let mut a = BTreeMap::new();
            a.insert(
                CONTAINERD_NAME.to_string(),
                format!("{}/{}:{tag}", r.registry, r.repository),
            );
            a.insert(REF_NAME.to_string(), tag);
            index.manifests.push(descriptor(a));
        }
        if index.manifests.is_empty() {
            index.manifests.push(descriptor(BTreeMap::new()));
        }
        serde_json::to_vec(&index).map_err(|e| Error::malformed("index.json", e))
    }
}

#[async_trait]
impl ImageDest for DockerArchiveDest {
    fn describe(&self) -> String {
        format!("docker-archive:{}", self.file.display())
    }

    fn max_parallel_blobs(&self) -> usize {
        1
    }

    fn supports_index(&self) -> bool {
        false
    }

    async fn put_blob(
        &self,
        blob: &BlobInfo,
        source: &dyn ImageSource,
        progress: &dyn BlobProgress,
    ) -> Result<BlobOutcome> {
        let mut w = self.state.lock().await;
        w.out()?;
        if w.written.contains(&blob.digest) {
            return Ok(BlobOutcome::Exists);
        }
        let path = blob_path(&blob.digest);
        let result: Result<()> = async {
            w.dir_entries(&path).await?;
            let h = tar_header(&path, blob.size, false)?;
            let out = w.out()?;
            out.write_all(h.as_bytes())
                .await
                .ctx(|| "writing the archive".to_string())?;
            let mut verifier = BlobVerifier::new(blob);
            copy_blob_into(blob, source, progress, out, "the archive", &mut verifier).await?;
            // The header promised `size` bytes: anything else corrupts the
            // tar, so a mismatch abandons the whole archive.
            verifier.finish()?;
            out.write_all(&[0u8; 512][..padding(blob.size)])
                .await
                .ctx(|| "writing the archive".to_string())?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            w.abandon(&e);
            return Err(e);
        }
        w.written.insert(blob.digest.clone());
        Ok(BlobOutcome::Copied)
    }

    async fn put_manifest(&self, manifest: &Manifest, _tag: Option<&str>) -> Result<()> {
        if manifest.is_index() {
            return Err(Error::Unsupported(format!(
                "{} holds one image, not an index; choose a platform (--platform) to copy",
                self.describe()
            )));
        }
        let ManifestKind::Image { config, layers } = manifest.parse()? else {
            return Err(Error::Unsupported(
                "a docker archive holds one image".into(),
            ));
        };
        let mut w = self.state.lock().await;
        w.out()?;
        for b in std::iter::once(&config).chain(&layers) {
            if !w.written.contains(&b.digest) {
                return Err(Error::InvalidArgument(format!(
                    "blob {} must be written to {} before its manifest",
                    b.digest,
                    self.describe()
                )));
            }
        }
        if !w.written.contains(&manifest.digest) {
            let path = blob_path(&manifest.digest);
            if let Err(e) = w.put_bytes(&path, &manifest.bytes).await {
                w.abandon(&e);
                return Err(e);
            }
            w.written.insert(manifest.digest.clone());
        }
        w.top = Some(manifest.clone());
        Ok(())
    }

    async fn commit(&self) -> Result<()> {
        let mut w = self.state.lock().await;
        w.out()?;
        let Some(top) = w.top.clone() else {
            return Err(Error::InvalidArgument(format!(
                "nothing to commit to {}: no manifest was written",
                self.describe()
            )));
        };
        let ManifestKind::Image { config, layers } = top.parse()? else {
            return Err(Error::Unsupported(
                "a docker archive holds one image".into(),
            ));
        };
        let entry = ArchiveImage {
            config: blob_path(&config.digest),
            // Docker writes null for an untagged image.
            repo_tags: (!self.repo_tags.is_empty()).then(|| self.repo_tags.clone()),
            layers: layers.iter().map(|l| blob_path(&l.digest)).collect(),
        };
        let manifest_json =
            serde_json::to_vec(&[entry]).map_err(|e| Error::malformed("manifest.json", e))?;
        let index_json = self.index_json(&top)?;
        let result: Result<()> = async {
            w.put_bytes("index.json", &index_json).await?;
            w.put_bytes("manifest.json", &manifest_json).await?;
            w.put_bytes("oci-layout", b"{\"imageLayoutVersion\":\"1.0.0\"}")
                .await?;
            let out = w.out()?;
            // Two zero blocks end a tar.
            out.write_all(&[0u8; 1024])
                .await
                .ctx(|| "writing the archive".to_string())?;
            out.flush()
                .await
                .ctx(|| "writing the archive".to_string())?;
            out.get_ref()
                .sync_all()
                .await
                .ctx(|| "writing the archive".to_string())?;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            w.abandon(&e);
            return Err(e);
        }
        w.out = None;
        let tmp = w.tmp.take().expect("temporary file present until commit");
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            tmp.persist(&file)
                .map_err(|e| Error::io(format!("renaming into {}", file.display()), e.error))
        })
        .await
        .map_err(|e| Error::io("renaming the archive", io::Error::other(e)))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{sha256, NoProgress};
    use crate::layout::tests::{copy_image, sample_image};
    use crate::layout::{OciLayoutDest, OciLayoutSource};

    async fn read_blob(src: &DockerArchiveSource, blob: &BlobInfo) -> Result<bytes::Bytes> {
        use futures::TryStreamExt;
        let s = src.blob(blob, 0).await?;
        let chunks: Vec<bytes::Bytes> = s.try_collect().await.unwrap();
        Ok(chunks.concat().into())
    }

    fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    }

    /// A legacy-style `docker save` (Docker < 25) with two images, one
    /// layer shared, a gzip layer and a symlinked layer.tar.
    fn legacy_archive() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let layer1 = b"layer one, a tar in real life".repeat(50);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, b"layer two").unwrap();
        let layer2 = gz.finish().unwrap();
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(&layer1), "sha256:1111111111111111111111111111111111111111111111111111111111111111"]}
        })
        .to_string()
        .into_bytes();
        let cfg_name = format!("{}.json", sha256(&config).hex());
        let manifest = serde_json::json!([
            {"Config": cfg_name, "RepoTags": ["app:1", "localhost:5000/app:1"], "Layers": ["aaa/layer.tar", "bbb/layer.tar"]},
            {"Config": cfg_name, "RepoTags": ["other:2"], "Layers": ["aaa/layer.tar"]},
        ]);
        let mut b = tar::Builder::new(Vec::new());
        add(&mut b, "./aaa/layer.tar", &layer1);
        add(&mut b, "real2.tar", &layer2);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bbb/layer.tar", "../real2.tar")
            .unwrap();
        add(&mut b, &cfg_name, &config);
        add(&mut b, "manifest.json", manifest.to_string().as_bytes());
        (b.into_inner().unwrap(), layer1, layer2)
    }

    #[tokio::test]
    async fn reads_legacy_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a.tar");
        let (bytes, layer1, layer2) = legacy_archive();
        std::fs::write(&file, bytes).unwrap();

        let err = DockerArchiveSource::open(&file, None).await.err().unwrap();
        assert!(err.to_string().contains("holds 2 images"), "{err}");
        let err = DockerArchiveSource::open(&file, Some("nope:1"))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("other:2"), "{err}");

        // `docker.io/library/app:1` is the same image as `app:1`.
        let src = DockerArchiveSource::open(&file, Some("docker.io/library/app:1"))
            .await
            .unwrap();
        let m = src.manifest().await.unwrap();
        assert_eq!(m.media_type, media::DOCKER_MANIFEST);
        let ManifestKind::Image { config, layers } = m.parse().unwrap() else {
            panic!()
        };
        assert_eq!(config.media_type, media::DOCKER_CONFIG);
        assert_eq!(layers[0].media_type, media::DOCKER_LAYER);
        assert_eq!(layers[0].digest, sha256(&layer1));
        assert_eq!(layers[1].media_type, media::DOCKER_LAYER_GZIP);
        // Compressed: hashed, not taken from the (wrong) diff_id.
        assert_eq!(layers[1].digest, sha256(&layer2));
        assert_eq!(read_blob(&src, &layers[1]).await.unwrap(), layer2);
        // A slice from an offset.
        let mut s = src.blob(&layers[0], 10).await.unwrap();
        let mut got = Vec::new();
        while let Some(c) = futures::StreamExt::next(&mut s).await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, layer1[10..]);

        let second = DockerArchiveSource::open(&file, Some("@1")).await.unwrap();
        assert_eq!(second.repo_tags(), vec!["other:2"]);

        let gz = tmp.path().join("a.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &std::fs::read(&file).unwrap()).unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let err = DockerArchiveSource::open(&gz, None).await.err().unwrap();
        assert!(err.to_string().contains("gunzip"), "{err}");
    }

    #[tokio::test]
    async fn write_then_read_back_and_load_as_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let lay = tmp.path().join("lay");
        let (m, layer) = sample_image(&lay, Some("v1")).await;
        let src = OciLayoutSource::open(&lay, Some("v1")).await.unwrap();
        let file = tmp.path().join("out.tar");
        let dst = DockerArchiveDest::create(&file, vec!["example.com/app:v1".into()])
            .await
            .unwrap();
        copy_image(&src, &dst).await;
        // The temporary file is gone, the archive is in place.
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains(".tmp-")), "{names:?}");

        // Read back: the OCI manifest inside is found, so the digest survives.
        let back = DockerArchiveSource::open(&file, None).await.unwrap();
        assert_eq!(back.repo_tags(), vec!["example.com/app:v1"]);
        let got = back.manifest().await.unwrap();
        assert_eq!(got.digest, m.digest);
        let ManifestKind::Image { layers, .. } = got.parse().unwrap() else {
            panic!()
        };
        assert_eq!(read_blob(&back, &layers[0]).await.unwrap(), layer);

        // The file is a tar of an OCI layout too.
        let dir = tmp.path().join("x");
        tar::Archive::new(std::fs::File::open(&file).unwrap())
            .unpack(&dir)
            .unwrap();
        let as_layout = OciLayoutSource::open(&dir, Some("v1")).await.unwrap();
        assert_eq!(as_layout.manifest().await.unwrap().digest, m.digest);
        let mj: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(mj[0]["RepoTags"][0], "example.com/app:v1");
        assert!(mj[0]["Config"]
            .as_str()
            .unwrap()
            .starts_with("blobs/sha256/"));

        // And back into a layout through the copy path.
        let out = tmp.path().join("again");
        copy_image(
            &back,
            &OciLayoutDest::create(&out, Some("z")).await.unwrap(),
        )
        .await;
        let again = OciLayoutSource::open(&out, Some("z")).await.unwrap();
        assert_eq!(again.manifest().await.unwrap().digest, m.digest);
    }

    #[tokio::test]
    async fn duplicate_layers_written_once_and_mismatch_abandons() {
        let tmp = tempfile::tempdir().unwrap();
        let lay = tmp.path().join("lay");
        let (m, _) = sample_image(&lay, Some("v1")).await;
        let src = OciLayoutSource::open(&lay, Some("v1")).await.unwrap();
        let ManifestKind::Image { config, layers } = m.parse().unwrap() else {
            panic!()
        };
        let file = tmp.path().join("out.tar");
        let dst = DockerArchiveDest::create(&file, vec![]).await.unwrap();
        assert_eq!(
            dst.put_blob(&layers[0], &src, &NoProgress).await.unwrap(),
            BlobOutcome::Copied
        );
        assert_eq!(
            dst.put_blob(&layers[0], &src, &NoProgress).await.unwrap(),
            BlobOutcome::Exists
        );
        // A blob whose bytes do not match: the whole archive goes.
        let cfg_path = lay.join("blobs/sha256").join(config.digest.hex());
        let mut bytes = std::fs::read(&cfg_path).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&cfg_path, bytes).unwrap();
        let err = dst.put_blob(&config, &src, &NoProgress).await.unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        let err = dst
            .put_blob(&layers[0], &src, &NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("abandoned"), "{err}");
        assert!(dst.commit().await.is_err());
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "lay")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn paths_and_refs() {
        assert_eq!(normalize("./a//b/../c"), "a/c");
        assert_eq!(normalize("/x/./y"), "x/y");
        let d = sha256(b"x");
        assert_eq!(
            digest_of_blob_path(&format!("./blobs/sha256/{}", d.hex())),
            Some(d)
        );
        assert_eq!(digest_of_blob_path("abc/layer.tar"), None);
        assert!(ref_matches("busybox:latest", "docker.io/library/busybox"));
        assert!(ref_matches("localhost:5000/a:1", "localhost:5000/a:1"));
        assert!(!ref_matches("busybox:latest", "busybox:1"));
        assert_eq!(
            layer_media_type(&[0x1f, 0x8b, 8, 0]),
            media::DOCKER_LAYER_GZIP
        );
        assert_eq!(
            layer_media_type(&[0x28, 0xb5, 0x2f, 0xfd]),
            media::OCI_LAYER_ZSTD
        );
        assert_eq!(layer_media_type(b"abc"), media::DOCKER_LAYER);
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
    }
}
