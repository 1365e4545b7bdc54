//! The fallback when runc or overlayfs is unavailable: the image is copied
//! into a plain directory, the command runs there in new mount, uts and
//! ipc namespaces after chroot, and the layer is found by comparing a scan
//! of the tree before and after (slower than the overlay upper directory,
//! which needs no scan; used only where that cannot work).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::layer::{is_whiteout, mknod_whiteout, OPAQUE_XATTR};

/// Copy one object (not a directory's children) with owner, mode and times.
fn clone_entry(src: &Path, dst: &Path, meta: &fs::Metadata) -> io::Result<()> {
    let ft = meta.file_type();
    if ft.is_dir() {
        if !fs::symlink_metadata(dst).is_ok_and(|m| m.is_dir()) {
            let _ = fs::remove_file(dst);
            fs::create_dir(dst)?;
        }
    } else {
        if let Ok(m) = fs::symlink_metadata(dst) {
            if m.is_dir() {
                fs::remove_dir_all(dst)?;
            } else {
                fs::remove_file(dst)?;
            }
        }
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(src)?, dst)?;
        } else if ft.is_file() {
            fs::copy(src, dst)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let c = CString::new(dst.as_os_str().as_bytes()).map_err(io::Error::other)?;
            // SAFETY: valid path; the mode and device come from the source.
            if unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        } else {
            return Ok(());
        }
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))?;
    if !ft.is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let mtime = filetime::FileTime::from_last_modification_time(meta);
    filetime::set_symlink_file_times(dst, mtime, mtime)
}

/// Apply layer directories (bottom first, overlay format) onto `dest`.
pub fn materialize(layers: &[PathBuf], dest: &Path) -> io::Result<()> {
    for layer in layers {
        let mut dirs = Vec::new();
        for entry in walkdir::WalkDir::new(layer)
            .min_depth(1)
            .sort_by_file_name()
        {
            let entry = entry.map_err(io::Error::other)?;
            let rel = entry.path().strip_prefix(layer).map_err(io::Error::other)?;
            let target = dest.join(rel);
            let meta = fs::symlink_metadata(entry.path())?;
            if is_whiteout(&meta) {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => fs::remove_dir_all(&target)?,
                    Ok(_) => fs::remove_file(&target)?,
                    Err(_) => {}
                }
                continue;
            }
            if meta.is_dir()
                && xattr::get(entry.path(), OPAQUE_XATTR)
                    .ok()
                    .flatten()
                    .is_some_and(|v| v == b"y")
            {
                let _ = fs::remove_dir_all(&target);
            }
            clone_entry(entry.path(), &target, &meta)?;
            if meta.is_dir() {
                dirs.push((target, meta));
            }
        }
        for (dir, meta) in dirs.iter().rev() {
            let t = filetime::FileTime::from_last_modification_time(meta);
            filetime::set_symlink_file_times(dir, t, t)?;
        }
    }
    Ok(())
}

#[derive(PartialEq, Eq)]
struct Seen {
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    ino: u64,
}

fn seen(meta: &fs::Metadata) -> Seen {
    Seen {
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
        ino: meta.ino(),
    }
}

/// What the tree holds now, by relative path.
pub struct Snapshot(BTreeMap<PathBuf, Seen>);

pub fn snapshot(root: &Path) -> io::Result<Snapshot> {
    let mut map = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root)
        .min_depth(1)
        .same_file_system(true)
    {
        let entry = entry.map_err(io::Error::other)?;
        let rel = entry.path().strip_prefix(root).map_err(io::Error::other)?;
        map.insert(
            rel.to_path_buf(),
            seen(&fs::symlink_metadata(entry.path())?),
        );
    }
    Ok(Snapshot(map))
}

/// Write what changed under `root` since `before` into `diff` in overlay
/// format: changed and new entries (with their parent directories) and a
/// whiteout for each deleted path whose parent still exists.
pub fn diff(root: &Path, before: &Snapshot, diff: &Path) -> io::Result<()> {
    let after = snapshot(root)?;
    let mut dirs = Vec::new();
    for (rel, now) in &after.0 {
        if before.0.get(rel) == Some(now) {
            continue;
        }
        let mut parent = PathBuf::new();
        for c in rel.parent().into_iter().flat_map(|p| p.components()) {
            parent.push(c);
            let d = diff.join(&parent);
            if !d.exists() {
                let meta = fs::symlink_metadata(root.join(&parent))?;
                clone_entry(&root.join(&parent), &d, &meta)?;
                dirs.push((d, meta));
            }
        }
        let meta = fs::symlink_metadata(root.join(rel))?;
        clone_entry(&root.join(rel), &diff.join(rel), &meta)?;
        if meta.is_dir() {
            dirs.push((diff.join(rel), meta));
        }
    }
    for rel in before.0.keys() {
        if after.0.contains_key(rel) {
            continue;
        }
        if rel
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && !after.0.contains_key(p))
        {
            continue; // its parent went too
        }
        if rel.parent().is_some_and(|p| {
            !p.as_os_str().is_empty()
                && !fs::symlink_metadata(root.join(p)).is_ok_and(|m| m.is_dir())
        }) {
            // Its parent is no directory now (a symlink the step made, maybe
            // to a host path): the parent's own entry hides it.
            continue;
        }
        let target = diff.join(rel);
        if let Some(p) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !diff.join(p).exists() {
                fs::create_dir_all(diff.join(p))?;
                let meta = fs::symlink_metadata(root.join(p))?;
                clone_entry(&root.join(p), &diff.join(p), &meta)?;
                dirs.push((diff.join(p), meta));
            }
        }
        mknod_whiteout(&target)?;
    }
    for (dir, meta) in dirs.iter().rev() {
        let t = filetime::FileTime::from_last_modification_time(meta);
        filetime::set_symlink_file_times(dir, t, t)?;
    }
    Ok(())
}

/// Who a command runs as.
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// A mount made for the command only (its mount point must exist).
pub struct ChrootMount {
    /// The mount point, a path on the host inside the root.
    pub target: PathBuf,
    /// What to bind there; None for a tmpfs.
    pub source: Option<PathBuf>,
    pub readonly: bool,
    /// A tmpfs's options (`size=...,mode=...`).
    pub data: String,
}

/// The program to exec: as written when it is a path, else found along
/// the step's PATH in the image.
fn find_program(root: &Path, program: &str, env: &[String]) -> io::Result<String> {
    if program.contains('/') {
        return Ok(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|d| format!("{}/{program}", d.trim_end_matches('/')))
        .find(|p| root.join(p.trim_start_matches('/')).exists())
        .ok_or_else(|| io::Error::other(format!("{program}: not found in the image's PATH")))
}

/// A mount's target, source (None: a tmpfs), read-only flag and tmpfs
/// options as C strings, made before the fork (no allocation after it).
type MountArgs = (CString, Option<CString>, bool, CString);

fn mount_args(mounts: &[ChrootMount]) -> io::Result<Vec<MountArgs>> {
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    mounts
        .iter()
        .map(|m| {
            Ok((
                c(&m.target)?,
                m.source.as_deref().map(c).transpose()?,
                m.readonly,
                CString::new(m.data.as_str()).map_err(io::Error::other)?,
            ))
        })
        .collect()
}

/// Run `argv` chrooted into `root` in new mount/uts/ipc (and, with
/// `network_none`, network) namespaces, as `ids` in `cwd`, passing output
/// lines to `output`, with `mounts` made (in order) for it.
#[allow(clippy::too_many_arguments)]
pub fn run(
    root: &Path,
    argv: &[String],
    env: &[String],
    cwd: &str,
    ids: &Ids,
    network_none: bool,
    mounts: &[ChrootMount],
    output: &(dyn Fn(&str) + Sync),
) -> io::Result<i32> {
    let (uid, gid) = (ids.uid, ids.gid);
    let Some(program) = argv.first() else {
        return Err(io::Error::other("empty command"));
    };
    let program = find_program(root, program, env)?;
    fs::create_dir_all(root.join(cwd.trim_start_matches('/')))?;
    let root_c = CString::new(root.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let cwd_c = CString::new(cwd).map_err(io::Error::other)?;
    let proc_c =
        CString::new(root.join("proc").as_os_str().as_bytes()).map_err(io::Error::other)?;
    let has_proc = root.join("proc").is_dir();
    let groups: Vec<libc::gid_t> = ids.groups.clone();
    let mounts_c = mount_args(mounts)?;
    let hostname = super::netfiles::HOSTNAME;
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    if network_none {
        flags |= libc::CLONE_NEWNET;
    }
    let mut cmd = Command::new(&program);
    cmd.args(&argv[1..])
        .env_clear()
        .envs(env.iter().filter_map(|e| e.split_once('=')))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            let slash = c"/";
            let none = std::ptr::null();
            if libc::mount(
                none,
                slash.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                none.cast(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if has_proc {
                let proc_fs = c"proc";
                libc::mount(
                    proc_fs.as_ptr(),
                    proc_c.as_ptr(),
                    proc_fs.as_ptr(),
                    0,
                    none.cast(),
                );
            }
            let tmpfs = c"tmpfs";
            for (target, source, readonly, data) in &mounts_c {
                let made = match source {
                    Some(source) => libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        none.cast(),
                    ),
                    None => libc::mount(
                        tmpfs.as_ptr(),
                        target.as_ptr(),
                        tmpfs.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        data.as_ptr().cast(),
                    ),
                };
                if made != 0
                    || (*readonly
                        && libc::mount(
                            none,
                            target.as_ptr(),
                            none,
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            none.cast(),
                        ) != 0)
                {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::sethostname(hostname.as_ptr().cast(), hostname.len());
            if libc::chroot(root_c.as_ptr()) != 0 || libc::chdir(cwd_c.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    super::run_step::stream_output_and_wait(child, output)
}
