//! Running a RUN step: an overlay mount over the image's layers and `runc`
//! on an OCI runtime bundle. Everything mounted or started here is undone
//! by a guard's `Drop`, also when the step fails or panics.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::json;

/// An overlay (or read-only) mount, unmounted on drop.
pub struct Mount {
    target: PathBuf,
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn overlay_path(p: &Path) -> io::Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| io::Error::other("non-UTF-8 path"))?;
    if s.contains([',', ':']) {
        return Err(io::Error::other(format!(
            "{s}: overlay paths cannot hold ',' or ':'; choose another --cache-dir"
        )));
    }
    Ok(s.to_string())
}

impl Mount {
    /// Mount an overlay at `target`: `lowers` top first; with `upper` (and
    /// its `work` dir) writable, else read-only (needs two or more lowers).
    pub fn overlay(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        target: &Path,
    ) -> io::Result<Mount> {
        let lower: Vec<String> = lowers
            .iter()
            .map(|p| overlay_path(p))
            .collect::<io::Result<_>>()?;
        let mut data = format!("lowerdir={}", lower.join(":"));
        if let Some((upper, work)) = upper {
            data.push_str(&format!(
                ",upperdir={},workdir={}",
                overlay_path(upper)?,
                overlay_path(work)?
            ));
        }
        if data.len() >= 4000 {
            return Err(io::Error::other(format!(
                "{} layers are too many for one overlay mount here",
                lowers.len()
            )));
        }
        let source = CString::new("overlay").map_err(io::Error::other)?;
        let fstype = CString::new("overlay").map_err(io::Error::other)?;
        let data_c = CString::new(data).map_err(io::Error::other)?;
        let target_c = cstr(target)?;
        let flags = if upper.is_some() { 0 } else { libc::MS_RDONLY };
        // SAFETY: all pointers are valid NUL-terminated strings for the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                flags,
                data_c.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Mount {
            target: target.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.target
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(c) = cstr(&self.target) {
            // SAFETY: valid path; a failed plain unmount falls back to a
            // lazy one so nothing stays mounted.
            unsafe {
                if libc::umount2(c.as_ptr(), 0) != 0 {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
}

/// Whether this process can mount overlays and run runc (checked once per
/// build; the reason is reported when not).
pub fn probe(scratch: &Path) -> Result<(), String> {
    if which("runc").is_none() {
        return Err("runc is not on PATH (Debian package runc)".into());
    }
    let dir = tempfile::Builder::new()
        .prefix("probe-")
        .tempdir_in(scratch)
        .map_err(|e| format!("cannot create {}: {e}", scratch.display()))?;
    let p = |n: &str| {
        let path = dir.path().join(n);
        fs::create_dir_all(&path).map(|_| path)
    };
    let (Ok(lower), Ok(upper), Ok(work), Ok(merged)) = (p("l"), p("u"), p("w"), p("m")) else {
        return Err("cannot create probe directories".into());
    };
    Mount::overlay(&[lower], Some((&upper, &work)), &merged)
        .map(drop)
        .map_err(|e| format!("cannot mount overlayfs in {}: {e}", scratch.display()))
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|c| c.is_file())
}

/// The process of a RUN step.
pub struct Process {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// `RUN --network=none`: a network namespace of its own (loopback only).
    pub network_none: bool,
}

/// Docker's default capabilities for containers.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Where runc mounts things; created by runc if missing, and then removed
/// from the new layer again (they are not the step's output).
pub const MOUNT_POINTS: &[&str] = &["/proc", "/dev", "/sys"];

/// The OCI runtime config (config.json) of a RUN step. The container
/// shares the host's network namespace (RUN may download things) unless
/// `--network=none`, and has its own pid, ipc, uts and mount namespaces.
pub fn runtime_spec(process: &Process) -> serde_json::Value {
    let mut spec = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": process.uid, "gid": process.gid, "additionalGids": process.additional_gids},
            "args": process.argv,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": false
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "buildkitsandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    });
    if process.network_none {
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            ns.push(json!({"type": "network"}));
        }
    }
    spec
}

/// A runc container; deleted (by its id) on drop.
struct Container<'a> {
    state: &'a Path,
    id: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .arg("--root")
            .arg(self.state)
            .args(["delete", "--force", &self.id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Run the bundle (whose `rootfs` is mounted already) to completion,
/// passing each output line to `output`. Returns the exit code.
pub fn run(
    bundle: &Path,
    state: &Path,
    id: &str,
    spec: &serde_json::Value,
    output: &(dyn Fn(&str) + Sync),
) -> io::Result<i32> {
    fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(spec).map_err(io::Error::other)?,
    )?;
    fs::create_dir_all(state)?;
    let _container = Container {
        state,
        id: id.to_string(),
    };
    let child = Command::new("runc")
        .arg("--root")
        .arg(state)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    super::run_step::stream_output_and_wait(child, output)
}
