//! What a build writes besides layers: the compression of layer blobs
//! (`--compression`), the OCI index of a multi-platform build, manifest
//! and index annotations (`--annotation`), the final filesystem as a
//! directory or tar (`--output type=local|tar`), and BuildKit's metadata
//! file. Everything here works on blobs and directories the executor hands
//! over; none of it runs a container.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use berth_client::image::{media, BlobInfo};
use berth_client::Manifest;
use berth_oci::{Algorithm, Digest, Hasher};
use serde_json::{json, Value};

use super::layer;

/// How layer blobs are compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    Uncompressed,
}

impl Compression {
    pub fn parse(text: &str) -> Result<Compression, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "uncompressed" => Ok(Compression::Uncompressed),
            other => Err(format!(
                "unknown compression {other:?}: use gzip, zstd or uncompressed"
            )),
        }
    }

    /// The OCI layer media type of a blob compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => media::OCI_LAYER_GZIP,
            Compression::Zstd => media::OCI_LAYER_ZSTD,
            Compression::Uncompressed => media::OCI_LAYER,
        }
    }

    /// The compression a layer media type names (Docker's or OCI's).
    pub fn of_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            media::OCI_LAYER_GZIP | media::DOCKER_LAYER_GZIP => Some(Compression::Gzip),
            media::OCI_LAYER_ZSTD => Some(Compression::Zstd),
            media::OCI_LAYER | media::DOCKER_LAYER => Some(Compression::Uncompressed),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Uncompressed => "uncompressed",
        }
    }
}

/// zstd's default level, as BuildKit uses it.
const ZSTD_LEVEL: i32 = 3;

/// A layer blob written beside the blobs of a layout, not yet renamed to
/// its digest.
pub struct BlobOut {
    pub tmp: tempfile::TempPath,
    pub blob: BlobInfo,
    /// sha256 of the uncompressed tar.
    pub diff_id: Digest,
}

/// Hashes and counts what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compress the tar `tar` into a blob in `blobs_dir`, hashing both sides.
/// gzip goes through berth-client's writer (the one `berth import` uses),
/// so a layer has the same gzip digest however it was made.
pub fn write_blob(
    tar: Box<dyn Read + Send>,
    compression: Compression,
    blobs_dir: &Path,
) -> io::Result<BlobOut> {
    if compression == Compression::Gzip {
        let out = berth_client::import::write_layer(
            tar,
            "layer",
            blobs_dir,
            berth_client::import::DEFAULT_LEVEL,
        )
        .map_err(io::Error::other)?;
        return Ok(BlobOut {
            tmp: out.tmp,
            blob: BlobInfo {
                media_type: compression.media_type().to_string(),
                digest: out.digest,
                size: out.size,
            },
            diff_id: out.diff_id,
        });
    }
    fs::create_dir_all(blobs_dir)?;
    let (file, tmp) = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(blobs_dir)?
        .into_parts();
    let sink = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hasher: Hasher::new(Algorithm::Sha256),
        count: 0,
    };
    let mut diff = Hasher::new(Algorithm::Sha256);
    let mut tar = tar;
    let mut buf = vec![0u8; 256 * 1024];
    let sink = match compression {
        Compression::Zstd => {
            let mut enc = zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?;
            copy_hashing(&mut tar, &mut enc, &mut diff, &mut buf)?;
            enc.finish()?
        }
        _ => {
            let mut sink = sink;
            copy_hashing(&mut tar, &mut sink, &mut diff, &mut buf)?;
            sink
        }
    };
    let Hashing {
        inner,
        hasher,
        count,
    } = sink;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(BlobOut {
        tmp,
        blob: BlobInfo {
            media_type: compression.media_type().to_string(),
            digest: hasher.finish(),
            size: count,
        },
        diff_id: diff.finish(),
    })
}

fn copy_hashing(
    from: &mut dyn Read,
    to: &mut dyn Write,
    hasher: &mut Hasher,
    buf: &mut [u8],
) -> io::Result<()> {
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
}

/// A layer blob in another compression: the same tar (so the same diff_id),
/// written once and remembered in `memo_dir` by source blob and compression.
pub fn recompress(
    blob_path: &Path,
    blob: &BlobInfo,
    diff_id: &Digest,
    to: Compression,
    blobs_dir: &Path,
    memo_dir: &Path,
    final_path: impl Fn(&Digest) -> PathBuf,
) -> io::Result<BlobInfo> {
    let memo = memo_dir.join(format!("{}.{}", blob.digest.hex(), to.name()));
    if let Ok(bytes) = fs::read(&memo) {
        if let Ok(known) = serde_json::from_slice::<BlobInfo>(&bytes) {
            if fs::metadata(final_path(&known.digest)).is_ok_and(|m| m.len() == known.size) {
                return Ok(known);
            }
        }
    }
    let file = fs::File::open(blob_path)?;
    let reader = layer::decompressing_reader(file, &blob.media_type)?;
    let out = write_blob(reader, to, blobs_dir)?;
    if &out.diff_id != diff_id {
        return Err(io::Error::other(format!(
            "layer {} decompresses to {}, not its diff_id {diff_id}",
            blob.digest, out.diff_id
        )));
    }
    let path = final_path(&out.blob.digest);
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    out.tmp.persist(&path).map_err(|e| e.error)?;
    fs::create_dir_all(memo_dir)?;
    let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
    fs::write(
        &tmp,
        serde_json::to_vec(&out.blob).map_err(io::Error::other)?,
    )?;
    fs::rename(&tmp, &memo)?;
    Ok(out.blob)
}

/// Where an annotation goes (buildx's `--annotation TYPE[PLATFORM]:K=V`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnnotationLevel {
    /// Each image manifest (the default).
    Manifest,
    /// The image index of a multi-platform build.
    Index,
    /// The index's descriptor of each manifest.
    ManifestDescriptor,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Annotation {
    pub levels: Vec<AnnotationLevel>,
    /// Only the images of this platform (`manifest[linux/amd64]:`).
    pub platform: Option<String>,
    pub key: String,
    pub value: String,
}

impl Annotation {
    /// `KEY=VALUE`, or `TYPES[PLATFORM]:KEY=VALUE` with TYPES a comma list
    /// of manifest, index and manifest-descriptor.
    pub fn parse(text: &str) -> Result<Annotation, String> {
        let (key_part, value) = text.split_once('=').ok_or_else(|| {
            format!(
                "--annotation {text:?}: write KEY=VALUE (or manifest:KEY=VALUE, index:KEY=VALUE)"
            )
        })?;
        let (levels, platform, key) = match key_part.split_once(':') {
            // `org.opencontainers.image.source` has no colon; a prefix does.
            Some((prefix, key)) if is_level_prefix(prefix) => {
                let (types, platform) = match prefix.split_once('[') {
                    Some((types, rest)) => {
                        let p = rest.strip_suffix(']').ok_or_else(|| {
                            format!("--annotation {text:?}: the platform must end with ]")
                        })?;
                        let p = crate::platforms::normalize(p)
                            .map_err(|e| format!("--annotation {text:?}: {e}"))?;
                        (types, Some(p.to_string()))
                    }
                    None => (prefix, None),
                };
                let mut levels = Vec::new();
                for t in types.split(',') {
                    levels.push(match t.trim() {
                        "manifest" => AnnotationLevel::Manifest,
                        "index" => AnnotationLevel::Index,
                        "manifest-descriptor" => AnnotationLevel::ManifestDescriptor,
                        "index-descriptor" => {
                            return Err(format!(
                                "--annotation {text:?}: index-descriptor annotations are not supported yet; use index: or manifest:"
                            ))
                        }
                        other => {
                            return Err(format!(
                                "--annotation {text:?}: unknown type {other:?}: use manifest, index or manifest-descriptor"
                            ))
                        }
                    });
                }
                (levels, platform, key)
            }
            _ => (vec![AnnotationLevel::Manifest], None, key_part),
        };
        if key.is_empty() {
            return Err(format!("--annotation {text:?}: the key is empty"));
        }
        Ok(Annotation {
            levels,
            platform,
            key: key.to_string(),
            value: value.to_string(),
        })
    }

    fn applies(&self, level: AnnotationLevel, platform: Option<&str>) -> bool {
        self.levels.contains(&level)
            && match (&self.platform, platform) {
                (Some(wanted), Some(p)) => wanted == p,
                (Some(_), None) => false,
                (None, _) => true,
            }
    }
}

fn is_level_prefix(prefix: &str) -> bool {
    let types = prefix.split('[').next().unwrap_or("");
    !types.is_empty()
        && types.split(',').all(|t| {
            matches!(
                t.trim(),
                "manifest" | "index" | "manifest-descriptor" | "index-descriptor"
            )
        })
}

/// The annotations for one level (and platform), as a JSON object.
pub fn annotations_for(
    all: &[Annotation],
    level: AnnotationLevel,
    platform: Option<&str>,
) -> BTreeMap<String, String> {
    all.iter()
        .filter(|a| a.applies(level, platform))
        .map(|a| (a.key.clone(), a.value.clone()))
        .collect()
}

/// An OCI image index naming each platform's manifest.
pub fn image_index(
    children: &[(Manifest, String)],
    annotations: &[Annotation],
) -> Result<Manifest, String> {
    let mut manifests = Vec::new();
    for (manifest, platform) in children {
        let p = crate::plan::Platform::parse(platform)?;
        let mut platform_json = json!({"architecture": p.arch, "os": p.os});
        if let Some(v) = &p.variant {
            platform_json["variant"] = v.clone().into();
        }
        let mut entry = json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest.to_string(),
            "size": manifest.bytes.len(),
            "platform": platform_json,
        });
        let extra = annotations_for(
            annotations,
            AnnotationLevel::ManifestDescriptor,
            Some(platform),
        );
        if !extra.is_empty() {
            entry["annotations"] = json!(extra);
        }
        manifests.push(entry);
    }
    let mut index = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    let extra = annotations_for(annotations, AnnotationLevel::Index, None);
    if !extra.is_empty() {
        index["annotations"] = json!(extra);
    }
    let bytes = serde_json::to_vec(&index).map_err(|e| e.to_string())?;
    Ok(Manifest::new(bytes, media::OCI_INDEX))
}

/// Check annotations against what the build makes: `index:` needs an index.
pub fn check_annotations(all: &[Annotation], multi_platform: bool) -> Result<(), String> {
    if multi_platform {
        return Ok(());
    }
    match all.iter().find(|a| {
        a.levels.contains(&AnnotationLevel::Index)
            || a.levels.contains(&AnnotationLevel::ManifestDescriptor)
    }) {
        Some(a) => Err(format!(
            "--annotation for {:?}: index and manifest-descriptor annotations need an image index, which only a multi-platform build (--platform A,B) writes; use manifest:",
            a.key
        )),
        None => Ok(()),
    }
}

/// The final filesystem of an image: its layer directories (bottom first,
/// overlay format) applied in order onto `dest`, whiteouts applied.
pub fn export_rootfs(layer_dirs: &[PathBuf], dest: &Path) -> io::Result<()> {
    fs::create_dir_all(dest)?;
    super::chroot::materialize(layer_dirs, dest)
}

/// The final filesystem as a tar file; each tree under its folder when
/// one is given (one per platform).
pub fn export_rootfs_tar(
    trees: &[(Option<String>, &[PathBuf])],
    file: &Path,
    scratch: &Path,
) -> io::Result<()> {
    let tree = tempfile::Builder::new()
        .prefix("export-")
        .tempdir_in(scratch)?;
    for (sub, dirs) in trees {
        let dest = match sub {
            Some(s) => tree.path().join(s),
            None => tree.path().to_path_buf(),
        };
        export_rootfs(dirs, &dest)?;
    }
    let out = BufWriter::new(fs::File::create(file)?);
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for entry in walkdir::WalkDir::new(tree.path())
        .min_depth(1)
        .sort_by_file_name()
    {
        let path = entry.map_err(io::Error::other)?.into_path();
        let rel = path.strip_prefix(tree.path()).map_err(io::Error::other)?;
        tar.append_path_with_name(&path, rel)?;
    }
    tar.into_inner()?.flush()
}

/// BuildKit's `--metadata-file` content for a build's top manifest.
pub fn metadata(
    top: &Manifest,
    config: Option<&BlobInfo>,
    names: &[String],
    annotations: &BTreeMap<String, String>,
) -> Value {
    let mut descriptor = json!({
        "mediaType": top.media_type,
        "digest": top.digest.to_string(),
        "size": top.bytes.len(),
    });
    if !annotations.is_empty() {
        descriptor["annotations"] = json!(annotations);
    }
    let mut out = json!({
        "containerimage.descriptor": descriptor,
        "containerimage.digest": top.digest.to_string(),
    });
    if let Some(config) = config {
        out["containerimage.config.digest"] = config.digest.to_string().into();
    }
    if !names.is_empty() {
        out["image.name"] = names.join(",").into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_names_and_media_types() {
        assert_eq!(Compression::parse("ZSTD"), Ok(Compression::Zstd));
        assert!(Compression::parse("lz4")
            .unwrap_err()
            .contains("gzip, zstd"));
        assert_eq!(
            Compression::Zstd.media_type(),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        assert_eq!(
            Compression::of_media_type(media::DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
    }

    #[test]
    fn blobs_in_each_compression_keep_the_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs");
        let tar_bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let diff_id = Digest::sha256_of(&tar_bytes);
        let mut seen = Vec::new();
        for c in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ] {
            let out = write_blob(Box::new(io::Cursor::new(tar_bytes.clone())), c, &blobs).unwrap();
            assert_eq!(out.diff_id, diff_id, "{c:?}");
            assert_eq!(out.blob.media_type, c.media_type());
            let bytes = fs::read(&out.tmp).unwrap();
            assert_eq!(Digest::sha256_of(&bytes), out.blob.digest);
            assert_eq!(bytes.len() as u64, out.blob.size);
            let back =
                layer::decompressing_reader(fs::File::open(&out.tmp).unwrap(), c.media_type());
            let mut plain = Vec::new();
            back.unwrap().read_to_end(&mut plain).unwrap();
            assert_eq!(plain, tar_bytes, "{c:?} round-trips");
            seen.push((c, out));
        }
        assert_eq!(
            seen[2].1.blob.digest, diff_id,
            "uncompressed: the blob is the tar"
        );
        assert!(fs::read(&seen[1].1.tmp)
            .unwrap()
            .starts_with(&[0x28, 0xb5, 0x2f, 0xfd]));

        // gzip → zstd, remembered: the second call writes nothing new.
        let (_, gz) = &seen[0];
        let memo = dir.path().join("memo");
        let final_path = |d: &Digest| blobs.join(d.hex());
        let zst = recompress(
            &gz.tmp,
            &gz.blob,
            &diff_id,
            Compression::Zstd,
            &blobs,
            &memo,
            final_path,
        )
        .unwrap();
        assert_eq!(zst, seen[1].1.blob, "the same bytes as a direct zstd write");
        let again = recompress(
            &gz.tmp,
            &gz.blob,
            &diff_id,
            Compression::Zstd,
            &blobs,
            &memo,
            final_path,
        )
        .unwrap();
        assert_eq!(again, zst);
        let wrong = Digest::sha256_of(b"other");
        assert!(recompress(
            &gz.tmp,
            &gz.blob,
            &wrong,
            Compression::Uncompressed,
            &blobs,
            &memo,
            final_path
        )
        .is_err());
    }

    #[test]
    fn annotations_parse_like_buildx() {
        let a = Annotation::parse("org.opencontainers.image.title=app").unwrap();
        assert_eq!(a.levels, [AnnotationLevel::Manifest]);
        assert_eq!(
            (a.key.as_str(), a.value.as_str()),
            ("org.opencontainers.image.title", "app")
        );
        let a = Annotation::parse("index,manifest:k=v=w").unwrap();
        assert_eq!(
            a.levels,
            [AnnotationLevel::Index, AnnotationLevel::Manifest]
        );
        assert_eq!(a.value, "v=w");
        let a = Annotation::parse("manifest[linux/aarch64]:k=v").unwrap();
        assert_eq!(a.platform.as_deref(), Some("linux/arm64"));
        assert!(a.applies(AnnotationLevel::Manifest, Some("linux/arm64")));
        assert!(!a.applies(AnnotationLevel::Manifest, Some("linux/amd64")));
        // A key with a colon but no known prefix is a key.
        let a = Annotation::parse("com.example:thing=1").unwrap();
        assert_eq!(a.key, "com.example:thing");
        assert!(Annotation::parse("novalue").is_err());
        assert!(Annotation::parse("index-descriptor:k=v")
            .unwrap_err()
            .contains("not supported yet"));
        assert!(Annotation::parse("manifest[linux/sparc]:k=v").is_err());
        let all = vec![
            Annotation::parse("index:i=1").unwrap(),
            Annotation::parse("m=2").unwrap(),
            Annotation::parse("manifest-descriptor:d=3").unwrap(),
        ];
        assert!(check_annotations(&all, false)
            .unwrap_err()
            .contains("multi-platform"));
        assert!(check_annotations(&all[1..2], false).is_ok());

        let child = Manifest::new(b"{}".to_vec(), media::OCI_MANIFEST);
        let index = image_index(
            &[
                (child.clone(), "linux/amd64".into()),
                (child.clone(), "linux/arm/v7".into()),
            ],
            &all,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&index.bytes).unwrap();
        assert_eq!(v["annotations"], json!({"i": "1"}));
        assert_eq!(v["manifests"][0]["annotations"], json!({"d": "3"}));
        assert_eq!(
            v["manifests"][1]["platform"],
            json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
        assert_eq!(v["manifests"][0]["digest"], child.digest.to_string());
    }
}
