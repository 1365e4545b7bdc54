//! How RUN steps are isolated (runc over overlayfs, or the chroot
//! fallback), and the sweep of what a killed build left mounted.

use std::fs;
use std::path::Path;

use super::error::{ExecError, R};
use super::runc;

/// How RUN steps are isolated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// runc over an overlay mount; the layer is the upper directory.
    Runc,
    /// chroot in new namespaces over a copied tree; the layer is found by
    /// a scan. Holds why runc/overlayfs could not be used.
    Chroot(String),
}

impl Isolation {
    /// `BERTH_BUILD_ISOLATION=runc|chroot` forces one; otherwise runc when
    /// runc and overlayfs work here, else the chroot fallback.
    pub(super) fn choose(scratch: &Path) -> R<Isolation> {
        let forced = std::env::var("BERTH_BUILD_ISOLATION").unwrap_or_default();
        match forced.as_str() {
            "" | "auto" => Ok(match runc::probe(scratch) {
                Ok(()) => Isolation::Runc,
                Err(why) => Isolation::Chroot(why),
            }),
            "runc" => runc::probe(scratch)
                .map(|_| Isolation::Runc)
                .map_err(|e| ExecError::Host(format!("BERTH_BUILD_ISOLATION=runc: {e}"))),
            "chroot" => Ok(Isolation::Chroot("BERTH_BUILD_ISOLATION=chroot".into())),
            other => Err(ExecError::Host(format!(
                "BERTH_BUILD_ISOLATION={other:?}: use runc, chroot or auto"
            ))),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Isolation::Runc => "runc + overlayfs (RUN shares the host network namespace)".into(),
            Isolation::Chroot(why) => format!(
                "chroot in new mount/uts/ipc namespaces with a scan-based diff (slower; RUN shares the host network and pid namespaces), because {why}"
            ),
        }
    }
}

/// Unmount and remove what a killed build left in `run_dir` (directories
/// are named PID-N; a PID that no longer runs left them).
pub(super) fn sweep_stale(run_dir: &Path, state_dir: &Path) {
    let Ok(entries) = fs::read_dir(run_dir) else {
        return;
    };
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = entry.path();
        let prefix = dir.display().to_string();
        let mut stale: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        stale.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in stale {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a valid path; a lazy unmount of our own mount.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        if let Ok(states) = fs::read_dir(state_dir) {
            for s in states.flatten() {
                let id = s.file_name().to_string_lossy().into_owned();
                if id.starts_with(&format!("berth-build-{pid}-")) {
                    let _ = std::process::Command::new("runc")
                        .arg("--root")
                        .arg(state_dir)
                        .args(["delete", "--force", &id])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
