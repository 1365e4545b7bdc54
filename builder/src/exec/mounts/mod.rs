//! `RUN --mount` at execution: what each mount needs on the host (a cache
//! folder, a view of a stage, a secret file in memory, an SSH agent
//! socket), the runc mount entries for them, and the removal of the mount
//! points the step had to create, so they are not in the layer (as
//! BuildKit does). The parsing and checks are in `crate::mounts`.
//!
//! - cache: `CACHE_DIR/mounts/cache/HASH(id)/N`, never in a layer, kept
//!   across builds and `--no-cache`; `flock`s in `CACHE_DIR/mounts/locks`
//!   decide sharing (shared: a shared lock; locked: an exclusive one;
//!   private: the first instance N nobody holds). `berth build prune`
//!   empties them ([`prune`]).
//! - secret: files on a tmpfs mounted for the step only, and the runc
//!   bundle (whose config.json holds `env=` secrets) on it too, so a
//!   secret is never written to disk; only its id enters the cache key.
//! - ssh: a socket of our own with the mount's mode and owner, whose
//!   connections are forwarded to the `--ssh` agent socket.
//!
//! `prepare` sets a step's mounts up; this file has the pieces it uses.

mod prepare;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

/// A `--secret` value; never printed.
#[derive(Clone, Default)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Unmounts a path on drop (lazily if busy).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: a valid path; our own mount.
            unsafe {
                if libc::umount2(c.as_ptr(), 0) != 0 {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

fn mount_tmpfs(target: &Path, options: &str) -> io::Result<Unmount> {
    fs::create_dir_all(target)?;
    let c = |s: &[u8]| CString::new(s).map_err(io::Error::other);
    let (source, fstype) = (c(b"tmpfs")?, c(b"tmpfs")?);
    let (target_c, data) = (c(target.as_os_str().as_bytes())?, c(options.as_bytes())?);
    // SAFETY: valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Unmount(target.to_path_buf()))
}

/// A held `flock` (released when the file closes).
struct Lock(#[allow(dead_code)] fs::File);

fn flock(path: &Path, exclusive: bool, wait: bool) -> io::Result<Option<Lock>> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    use std::os::fd::AsRawFd;
    let mut op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    if !wait {
        op |= libc::LOCK_NB;
    }
    // SAFETY: a valid open descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), op) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(Lock(file)))
}

/// Forwards connections on a socket of our own to an SSH agent's socket
/// (so the step's socket has the mount's owner and mode, and the host's
/// socket is never exposed or changed). Stops on drop.
struct AgentProxy {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl AgentProxy {
    fn start(agent: &Path, mode: u32, uid: u32, gid: u32) -> io::Result<(AgentProxy, PathBuf)> {
        // Socket paths are short (108 bytes): a folder in /tmp, not the cache.
        let dir = tempfile::Builder::new().prefix("berth-ssh-").tempdir()?;
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let agent = agent.clone();
                        std::thread::spawn(move || forward(conn, &agent));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok((
            AgentProxy {
                stop,
                thread: Some(thread),
                _dir: dir,
            },
            path,
        ))
    }
}

fn forward(conn: UnixStream, agent: &Path) {
    let _ = conn.set_nonblocking(false);
    let Ok(upstream) = UnixStream::connect(agent) else {
        return;
    };
    let (Ok(mut conn_r), Ok(mut up_w)) = (conn.try_clone(), upstream.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let (mut up_r, mut conn_w) = (upstream, conn);
        let _ = io::copy(&mut up_r, &mut conn_w);
        let _ = conn_w.shutdown(std::net::Shutdown::Both);
    });
    let _ = io::copy(&mut conn_r, &mut up_w);
    let _ = up_w.shutdown(std::net::Shutdown::Both);
    let _ = back.join();
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a step's mounts need while it runs; everything is undone on drop,
/// last made first.
#[derive(Default)]
pub(super) struct Prepared {
    /// runc `mounts` entries, parents before children.
    pub spec: Vec<Value>,
    /// Their targets (for the mount points to remove afterwards).
    pub targets: Vec<String>,
    /// `NAME=value` for `env=` secrets and `SSH_AUTH_SOCK`.
    pub env: Vec<String>,
    /// Set when a secret is in use: the runc bundle goes here (memory).
    pub bundle: Option<PathBuf>,
    /// Cache mounts this step holds already, by id (one id at two
    /// targets must not wait for its own lock).
    held: BTreeMap<String, PathBuf>,
    /// The shared/locked cache locks taken up front, by id hash.
    prelocked: BTreeMap<String, Lock>,
    guards: Vec<Box<dyn std::any::Any>>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        while let Some(g) = self.guards.pop() {
            drop(g);
        }
    }
}

fn bind_entry(target: &str, source: &Path, readonly: bool) -> Value {
    let mut options = vec!["rbind"];
    if readonly {
        options.push("ro");
    }
    json!({"destination": target, "type": "bind", "source": source, "options": options})
}

/// Resolve `path` under `root` as the root's own lookups would: symlinks
/// followed inside the root, `..` stopping at it. Returns a relative path
/// (its missing tail kept as written).
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    let mut resolved: Vec<String> = Vec::new();
    let mut todo: std::collections::VecDeque<String> =
        path.split('/').map(str::to_string).collect();
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                resolved.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = root.join(resolved.join("/")).join(&part);
        match fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other(format!("{path}: too many symbolic links")));
                }
                let target = fs::read_link(&candidate)?.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    resolved.clear();
                }
                for (i, p) in target.split('/').enumerate() {
                    todo.insert(i, p.to_string());
                }
            }
            _ => resolved.push(part),
        }
    }
    Ok(resolved.iter().collect())
}

/// The mount points a step will need that `root` lacks (deepest first),
/// and the metadata of the directories that hold them: after the step,
/// [`remove_mount_points`] takes them out of its layer again.
pub(super) struct MountPoints {
    missing: Vec<PathBuf>,
    parents: Vec<(PathBuf, (u32, u32, u32))>,
}

pub(super) fn missing_mount_points(root: &Path, targets: &[String]) -> MountPoints {
    let mut missing = Vec::new();
    let mut parents = Vec::new();
    for target in targets {
        let Ok(resolved) = resolve_in_root(root, target) else {
            continue;
        };
        let mut prefix = PathBuf::new();
        let mut first_missing = true;
        for part in resolved.components() {
            let parent = prefix.clone();
            prefix.push(part);
            if fs::symlink_metadata(root.join(&prefix)).is_err() {
                if first_missing {
                    first_missing = false;
                    // Its parent exists: note how it looked.
                    let mut p = parent.clone();
                    loop {
                        if p.as_os_str().is_empty() {
                            break;
                        }
                        if let Ok(m) = fs::symlink_metadata(root.join(&p)) {
                            parents.push((p.clone(), (m.mode(), m.uid(), m.gid())));
                        }
                        if !p.pop() {
                            break;
                        }
                    }
                }
                missing.push(prefix.clone());
            }
        }
    }
    missing.sort_by(|a, b| {
        (std::cmp::Reverse(a.components().count()), a)
            .cmp(&(std::cmp::Reverse(b.components().count()), b))
    });
    missing.dedup();
    parents.sort_by(|a, b| {
        (std::cmp::Reverse(a.0.components().count()), &a.0)
            .cmp(&(std::cmp::Reverse(b.0.components().count()), &b.0))
    });
    parents.dedup_by(|a, b| a.0 == b.0);
    MountPoints { missing, parents }
}

/// Take the mount points runc made out of the step's upper directory
/// (only while still empty: what the step wrote there stays), and the
/// directories above them that were copied up only because a mount point
/// was made in them (empty, unchanged owner and mode).
pub(super) fn remove_mount_points(upper: &Path, points: &MountPoints) {
    // The step may have swapped a directory above a mount point for a
    // symlink (to a host path, as seen from here): never follow one.
    let under_real_dirs = |rel: &Path| {
        let mut dir = upper.to_path_buf();
        rel.parent()
            .into_iter()
            .flat_map(Path::components)
            .all(|c| {
                dir.push(c);
                fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir())
            })
    };
    for rel in &points.missing {
        if !under_real_dirs(rel) {
            continue;
        }
        let p = upper.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {
                let _ = fs::remove_dir(&p);
            }
            Ok(m) if !m.is_dir() && m.len() == 0 => {
                let _ = fs::remove_file(&p);
            }
            _ => {}
        }
    }
    for (rel, (mode, uid, gid)) in &points.parents {
        if !under_real_dirs(rel) {
            continue;
        }
        let p = upper.join(rel);
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let empty = fs::read_dir(&p).is_ok_and(|mut d| d.next().is_none());
        let opaque = xattr::get(&p, super::layer::OPAQUE_XATTR)
            .ok()
            .flatten()
            .is_some();
        if m.is_dir() && empty && !opaque && (m.mode(), m.uid(), m.gid()) == (*mode, *uid, *gid) {
            let _ = fs::remove_dir(&p);
        }
    }
}

/// The chroot isolation's mounts for a step's RUN --mounts (the runc
/// entries of [`Prepared::spec`]), their mount points made in `root` (a
/// copy of this step's own, scanned after this, so they are no change).
pub(super) fn chroot_mounts(
    root: &Path,
    prepared: &Prepared,
) -> io::Result<Vec<super::chroot::ChrootMount>> {
    let mut out = Vec::new();
    for entry in &prepared.spec {
        let target = entry["destination"].as_str().unwrap_or("/");
        let options: Vec<&str> = entry["options"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let point = root.join(resolve_in_root(root, target)?);
        let source = entry["source"].as_str().map(PathBuf::from);
        let bind = entry["type"] == "bind";
        let source_is_dir = source.as_deref().is_some_and(|s| s.is_dir());
        if !bind || source_is_dir {
            fs::create_dir_all(&point)?;
        } else if fs::symlink_metadata(&point).is_err() {
            if let Some(parent) = point.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&point, b"")?;
        }
        out.push(super::chroot::ChrootMount {
            target: point,
            source: if bind { source } else { None },
            readonly: options.contains(&"ro"),
            data: options
                .iter()
                .filter(|o| o.starts_with("size=") || o.starts_with("mode="))
                .copied()
                .collect::<Vec<_>>()
                .join(","),
        });
    }
    Ok(out)
}

/// Apply `--security=insecure` to a runc spec: every capability (that
/// berth itself holds), nothing masked or read-only, as BuildKit's
/// insecure entitlement.
pub(super) fn make_insecure(spec: &mut Value) {
    const ALL_CAPS: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
    ];
    // Only what this process holds can be granted (a CI container may
    // lack some); the list is in the kernel's bit order.
    let held = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    let caps: Vec<&str> = ALL_CAPS
        .iter()
        .enumerate()
        .filter(|(bit, _)| held & (1u64 << bit) != 0)
        .map(|(_, cap)| *cap)
        .collect();
    let caps = json!(caps);
    for set in ["bounding", "effective", "permitted"] {
        spec["process"]["capabilities"][set] = caps.clone();
    }
    if let Some(linux) = spec["linux"].as_object_mut() {
        linux.remove("maskedPaths");
        linux.remove("readonlyPaths");
    }
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for m in mounts.iter_mut() {
            if m["destination"] == "/sys" {
                m["options"] = json!(["nosuid", "noexec", "nodev"]);
            }
        }
    }
}

fn cache_hash(id: &str) -> String {
    hex::encode(&Sha256::digest(id.as_bytes())[..16])
}

/// What `berth build prune` freed.
#[derive(Debug, Default, serde::Serialize)]
pub struct Pruned {
    /// The cache mount ids removed.
    pub ids: Vec<String>,
    pub bytes: u64,
}

/// Empty every cache mount of the build cache at `cache_dir`. One in use
/// by a running build (locked) is left alone.
pub fn prune(cache_dir: &Path) -> io::Result<Pruned> {
    let root = cache_dir.join("mounts").join("cache");
    let locks = cache_dir.join("mounts").join("locks");
    let mut pruned = Pruned::default();
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(pruned);
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let id = fs::read_to_string(dir.join("id")).unwrap_or_else(|_| name.clone());
        let mut removed_any = false;
        for instance in fs::read_dir(&dir)?.flatten() {
            let path = instance.path();
            if !path.is_dir() {
                continue;
            }
            let n = instance.file_name().to_string_lossy().into_owned();
            let lock_path = locks.join(format!("{name}.{n}"));
            let _held =
                match fs::create_dir_all(&locks).and_then(|_| flock(&lock_path, true, false)) {
                    Ok(Some(lock)) => lock,
                    _ => continue, // a build has it mounted
                };
            for e in walkdir::WalkDir::new(&path).into_iter().flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if !m.is_dir() {
                        pruned.bytes += m.len();
                    }
                }
            }
            fs::remove_dir_all(&path)?;
            removed_any = true;
        }
        if removed_any {
            pruned.ids.push(id);
        }
        // The folder goes once no instance is left.
        let left = fs::read_dir(&dir)?.flatten().any(|e| e.path().is_dir());
        if !left {
            let _ = fs::remove_dir_all(&dir);
        }
    }
    pruned.ids.sort();
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_symlinks_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("real/sub")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("real/up")).unwrap();
        std::os::unix::fs::symlink("sub", root.join("real/rel")).unwrap();
        let r = |p: &str| resolve_in_root(root, p).unwrap();
        assert_eq!(r("abs/sub"), PathBuf::from("real/sub"));
        assert_eq!(r("real/up/etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(r("real/rel/x/y"), PathBuf::from("real/sub/x/y"));
        assert_eq!(r("../../x"), PathBuf::from("x"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(root, "loop/x").is_err());
    }

    #[test]
    fn mount_points_made_for_the_step_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (root, upper) = (dir.path().join("root"), dir.path().join("upper"));
        fs::create_dir_all(root.join("var/cache")).unwrap();
        let points = missing_mount_points(
            &root,
            &[
                "/var/cache/apt".into(),
                "/var/cache".into(),
                "/new/a/b".into(),
                "/kept/x".into(),
            ],
        );
        assert_eq!(
            points.missing,
            vec![
                PathBuf::from("new/a/b"),
                PathBuf::from("var/cache/apt"),
                PathBuf::from("kept/x"),
                PathBuf::from("new/a"),
                PathBuf::from("kept"),
                PathBuf::from("new"),
            ]
        );
        // What runc made, plus a file the step wrote beside a mount point.
        for d in ["var/cache/apt", "new/a/b", "kept/x"] {
            fs::create_dir_all(upper.join(d)).unwrap();
        }
        let m = fs::metadata(root.join("var/cache")).unwrap();
        fs::set_permissions(
            upper.join("var/cache"),
            fs::Permissions::from_mode(m.mode()),
        )
        .unwrap();
        let m = fs::metadata(root.join("var")).unwrap();
        fs::set_permissions(upper.join("var"), fs::Permissions::from_mode(m.mode())).unwrap();
        fs::write(upper.join("kept/file"), "x").unwrap();
        remove_mount_points(&upper, &points);
        let left: Vec<String> = walkdir::WalkDir::new(&upper)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(&upper)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect();
        assert_eq!(left, vec!["kept", "kept/file"]);
    }

    #[test]
    fn agent_proxy_forwards_connections() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent.sock");
        let agent = UnixListener::bind(&agent_path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = agent.accept().unwrap();
            let mut request = [0u8; 5];
            conn.read_exact(&mut request).unwrap();
            request.reverse();
            conn.write_all(&request).unwrap();
        });
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let (proxy, socket) = AgentProxy::start(&agent_path, 0o660, uid, gid).unwrap();
        let meta = fs::metadata(&socket).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o660);
        let mut client = UnixStream::connect(&socket).unwrap();
        client.write_all(b"hello").unwrap();
        let mut reply = [0u8; 5];
        client.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"olleh");
        server.join().unwrap();
        drop(proxy);
        assert!(!socket.exists(), "the proxy's folder goes with it");
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(7 bytes)");
    }
}
