//! Root filesystems for `berth import` and builds: a tarball around the static busybox.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::which;

/// The static busybox of Debian's `busybox-static`.
pub fn busybox_path() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("busybox"))
        .expect("busybox (Debian package busybox-static) is required")
}

/// Writes a root filesystem tarball made with the `tar` crate: `bin/busybox` (the static
/// busybox, 0755), `bin/sh` -> `busybox` (symlink), `bin/echo` (hard link to `bin/busybox`),
/// `etc/passwd` (root only) and `tmp/` (1777). Gzip-compressed when `gzip`.
pub fn write_busybox_rootfs(path: &Path, gzip: bool) {
    let file = fs::File::create(path).expect("create rootfs tarball");
    let writer: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Builder::new(writer);
    let dir = |tar: &mut tar::Builder<Box<dyn Write>>, name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, name, std::io::empty())
            .expect("append directory");
    };
    dir(&mut tar, "bin/", 0o755);
    dir(&mut tar, "etc/", 0o755);
    dir(&mut tar, "tmp/", 0o1777);
    let busybox = fs::read(busybox_path()).expect("read busybox");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(1_700_000_000);
    tar.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("append busybox");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    tar.append_link(&mut h, "bin/sh", "busybox")
        .expect("append bin/sh symlink");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    tar.append_link(&mut h, "bin/echo", "bin/busybox")
        .expect("append bin/echo hard link");
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    h.set_mtime(1_700_000_000);
    tar.append_data(&mut h, "etc/passwd", &passwd[..])
        .expect("append etc/passwd");
    let mut writer = tar.into_inner().expect("finish rootfs tarball");
    writer.flush().expect("flush rootfs tarball");
    // Dropping the GzEncoder writes the gzip trailer.
    drop(writer);
}
