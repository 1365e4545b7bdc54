//! Layers on disk and as tarballs.
//!
//! A layer directory is kept in overlayfs's own format, so it can be a
//! `lowerdir` as it is: a deleted path is a character device 0/0 and an
//! opaque directory has the `trusted.overlay.opaque=y` xattr. An overlay
//! upper directory is already in that format, so after a RUN the upper
//! directory *is* the new layer: [`write_tar`] walks just that directory
//! and turns the overlay markers into OCI whiteouts (`.wh.NAME`,
//! `.wh..wh..opq`); nothing else of the filesystem is read.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use berth_oci::{Algorithm, Digest, Hasher};

pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Extended attributes a layer keeps (file capabilities and user
/// attributes); overlay's own `trusted.overlay.*` never go in a layer.
fn kept_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = names
        .filter_map(|n| n.into_string().ok())
        .filter(|n| n == "security.capability" || n.starts_with("user."))
        .filter_map(|n| {
            let v = xattr::get(path, &n).ok().flatten()?;
            Some((format!("SCHILY.xattr.{n}"), v))
        })
        .collect();
    out.sort();
    out
}

/// Whether a file is an overlay whiteout (a character device 0/0).
pub fn is_whiteout(meta: &fs::Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

/// Write the tree under `root` (overlay format) as a layer tar to `out`:
/// entries sorted by name, owners and modes as on disk, names left out,
/// modification times clamped to `clamp` (SOURCE_DATE_EPOCH) when given.
pub fn write_tar<W: Write>(root: &Path, out: W, clamp: Option<u64>) -> io::Result<W> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for entry in walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(io::Error::other)?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .map_err(io::Error::other)?
            .to_path_buf();
        let meta = fs::symlink_metadata(path)?;
        let ft = meta.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        let mtime = meta.mtime().max(0) as u64;
        header.set_mtime(clamp.map_or(mtime, |c| mtime.min(c)));
        if is_whiteout(&meta) {
            let name = rel
                .file_name()
                .ok_or_else(|| io::Error::other("whiteout without a name"))?;
            let mut wh = std::ffi::OsString::from(WHITEOUT_PREFIX);
            wh.push(name);
            let wh_path = rel.with_file_name(wh);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_mtime(clamp.unwrap_or(0));
            builder.append_data(&mut h, &wh_path, io::empty())?;
        } else if ft.is_dir() {
            let xattrs = kept_xattrs(path);
            if !xattrs.is_empty() {
                builder.append_pax_extensions(
                    xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                )?;
            }
            header.set_size(0);
            builder.append_data(&mut header, &rel, io::empty())?;
            if xattr::get(path, OPAQUE_XATTR)
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y")
            {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                h.set_mtime(clamp.unwrap_or(0));
                builder.append_data(&mut h, rel.join(OPAQUE_MARKER), io::empty())?;
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(path)?;
            header.set_size(0);
            builder.append_link(&mut header, &rel, &target)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let id = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&id) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder.append_link(&mut header, &rel, first)?;
                    continue;
                }
                links.insert(id, rel.clone());
            }
            let xattrs = kept_xattrs(path);
            if !xattrs.is_empty() {
                builder.append_pax_extensions(
                    xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                )?;
            }
            let file = fs::File::open(path)?;
            builder.append_data(&mut header, &rel, file)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            header.set_size(0);
            let rdev = meta.rdev();
            header.set_device_major(libc::major(rdev))?;
            header.set_device_minor(libc::minor(rdev))?;
            builder.append_data(&mut header, &rel, io::empty())?;
        }
        // Sockets are not part of images.
    }
    builder.into_inner()
}

/// Reads through, hashing what it reads (to check a layer's diff_id).
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(Algorithm::Sha256),
        }
    }
    pub fn finish(self) -> Digest {
        self.hasher.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A relative path with only normal components (no `..`, no root).
fn safe_relative(path: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => {
                return Err(io::Error::other(format!(
                    "layer entry {} leaves the layer",
                    path.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Make a whiteout (character device 0/0) at `path`.
pub fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; mknod has no other memory effects.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, libc::makedev(0, 0)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unpack an uncompressed layer tar into `dest` in overlay format (OCI
/// whiteouts become overlay whiteouts). Returns the tar's sha256 (diff_id).
pub fn unpack_tar<R: Read>(reader: R, dest: &Path) -> io::Result<Digest> {
    let mut hashing = HashingReader::new(reader);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_mtime(true);
        archive.set_unpack_xattrs(true);
        archive.set_overwrite(true);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = safe_relative(&entry.path()?)?;
            let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            let parent = dest.join(path.parent().unwrap_or(Path::new("")));
            if name == OPAQUE_MARKER {
                fs::create_dir_all(&parent)?;
                xattr::set(&parent, OPAQUE_XATTR, b"y")?;
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                fs::create_dir_all(&parent)?;
                let target = parent.join(hidden);
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&target)?,
                    Ok(_) => fs::remove_file(&target)?,
                    Err(_) => {}
                }
                mknod_whiteout(&target)?;
            } else {
                unpack_entry(&mut entry, dest)?;
            }
        }
    }
    // Read to the end so the digest covers the whole stream (the tar's
    // trailing zero blocks).
    io::copy(&mut hashing, &mut io::sink())?;
    Ok(hashing.finish())
}

/// Unpack one entry below `dest` with its owner. Owners are set here, not
/// by `tar`, because some writers leave the uid/gid fields empty, which
/// Docker reads as 0 and `tar` refuses.
pub fn unpack_entry<R: Read>(entry: &mut tar::Entry<'_, R>, dest: &Path) -> io::Result<()> {
    let header = entry.header().clone();
    let rel = safe_relative(&entry.path()?)?;
    // chown below clears file capabilities: keep the xattrs to set again.
    let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts.flatten() {
            if let (Ok(key), value) = (ext.key(), ext.value_bytes()) {
                if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), value.to_vec()));
                }
            }
        }
    }
    entry.unpack_in(dest).map_err(|e| {
        // tar's error names the path; its cause is the reason.
        let cause = std::error::Error::source(&e)
            .map(|c| format!(": {c}"))
            .unwrap_or_default();
        io::Error::new(e.kind(), format!("{e}{cause}"))
    })?;
    let target = dest.join(&rel);
    let uid = header.uid().unwrap_or(0) as u32;
    let gid = header.gid().unwrap_or(0) as u32;
    let meta = fs::symlink_metadata(&target)?;
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
        // chown clears set-id bits: put the mode back.
        if !meta.file_type().is_symlink() {
            if let Ok(mode) = header.mode() {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))?;
            }
            for (name, value) in &xattrs {
                let _ = xattr::set(&target, name, value);
            }
        }
    }
    Ok(())
}

/// Compression of a layer blob, from its media type (or first bytes).
pub fn decompressing_reader<'a>(
    mut file: fs::File,
    media_type: &str,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut magic = [0u8; 4];
    let n = file.read(&mut magic)?;
    use std::io::Seek;
    file.seek(io::SeekFrom::Start(0))?;
    if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(256 * 1024, file),
        )))
    } else if magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || media_type.contains("zstd") {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(
            io::BufReader::with_capacity(256 * 1024, file),
        )?))
    } else {
        Ok(Box::new(io::BufReader::with_capacity(256 * 1024, file)))
    }
}

#[cfg(test)]
#[path = "../../../tests/common/ci.rs"]
mod ci;

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect()
    }

    #[test]
    fn upper_dir_whiteouts_become_oci_whiteouts_and_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                !ci::in_ci(),
                "CI=true but not root: this test needs root for mknod and trusted xattrs \
                 (scripts/test.sh runs as root)"
            );
            eprintln!(
                "SKIP: needs root for mknod and trusted xattrs (CI=true makes this a failure)"
            );
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let upper = tmp.path().join("upper");
        fs::create_dir_all(upper.join("etc/opaque")).unwrap();
        fs::write(upper.join("etc/b"), "b").unwrap();
        fs::write(upper.join("etc/a"), "a").unwrap();
        fs::hard_link(upper.join("etc/a"), upper.join("etc/a2")).unwrap();
        std::os::unix::fs::symlink("a", upper.join("etc/link")).unwrap();
        mknod_whiteout(&upper.join("etc/gone")).unwrap();
        xattr::set(upper.join("etc/opaque"), OPAQUE_XATTR, b"y").unwrap();
        let user_xattr = xattr::set(upper.join("etc/b"), "user.berth", b"kept").is_ok();
        let bytes = write_tar(&upper, Vec::new(), Some(100)).unwrap();
        assert_eq!(
            names(&bytes),
            [
                "etc",
                "etc/a",
                "etc/a2",
                "etc/b",
                "etc/.wh.gone",
                "etc/link",
                "etc/opaque",
                "etc/opaque/.wh..wh..opq"
            ]
        );
        let mut a = tar::Archive::new(&bytes[..]);
        for e in a.entries().unwrap() {
            let e = e.unwrap();
            assert!(e.header().mtime().unwrap() <= 100);
            if e.path().unwrap().ends_with("a2") {
                assert_eq!(e.header().entry_type(), tar::EntryType::Link);
            }
        }
        // Same tree, same bytes.
        assert_eq!(bytes, write_tar(&upper, Vec::new(), Some(100)).unwrap());

        let back = tmp.path().join("back");
        fs::create_dir(&back).unwrap();
        let digest = unpack_tar(&bytes[..], &back).unwrap();
        assert_eq!(digest, Digest::sha256_of(&bytes));
        assert!(is_whiteout(
            &fs::symlink_metadata(back.join("etc/gone")).unwrap()
        ));
        assert_eq!(
            xattr::get(back.join("etc/opaque"), OPAQUE_XATTR).unwrap(),
            Some(b"y".to_vec())
        );
        assert_eq!(
            fs::read_link(back.join("etc/link")).unwrap(),
            Path::new("a")
        );
        if user_xattr {
            assert_eq!(
                xattr::get(back.join("etc/b"), "user.berth").unwrap(),
                Some(b"kept".to_vec()),
                "xattrs travel as PAX SCHILY.xattr records"
            );
        }
    }
}
