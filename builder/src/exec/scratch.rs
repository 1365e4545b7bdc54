//! Per-step scratch directories under `run/` (named PID-N, so a later
//! build can sweep what a killed one left) and read-only views of layers.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::error::{IoContext, R};
use super::{chroot, runc, Executor, Isolation, Layer};

/// A root-filesystem view of some layers: the one layer directory, an
/// empty directory, or a read-only overlay (unmounted on drop).
pub(super) struct View {
    pub path: PathBuf,
    _mount: Option<runc::Mount>,
    _dir: Option<tempfile::TempDir>,
}

/// Removes a directory tree on drop (after the mounts in it are gone:
/// declare it before them).
pub(super) struct Cleanup(pub PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Numbers scratch directories and runc containers within this process.
pub(super) static COUNTER: AtomicUsize = AtomicUsize::new(0);

impl Executor<'_> {
    /// A fresh scratch directory for one step, removed when dropped.
    pub(super) fn work_dir(&self) -> R<Cleanup> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = self.run_dir.join(id);
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Cleanup(dir))
    }

    /// A read-only view of `layers` for reading files (COPY sources, users).
    pub(super) fn view(&self, layers: &[Layer], scratch: &Path) -> R<View> {
        match layers {
            [] => {
                let dir = tempfile::Builder::new()
                    .prefix("empty-")
                    .tempdir_in(scratch)
                    .with_context(|| "cannot create a directory".to_string())?;
                Ok(View {
                    path: dir.path().to_path_buf(),
                    _mount: None,
                    _dir: Some(dir),
                })
            }
            [one] => Ok(View {
                path: one.dir.clone(),
                _mount: None,
                _dir: None,
            }),
            many if matches!(self.isolation, Isolation::Chroot(_)) => {
                let dir = tempfile::Builder::new()
                    .prefix("view-")
                    .tempdir_in(scratch)
                    .with_context(|| "cannot create a directory".to_string())?;
                let dirs: Vec<PathBuf> = many.iter().map(|l| l.dir.clone()).collect();
                chroot::materialize(&dirs, dir.path())
                    .with_context(|| "cannot copy the image's layers".to_string())?;
                Ok(View {
                    path: dir.path().to_path_buf(),
                    _mount: None,
                    _dir: Some(dir),
                })
            }
            many => {
                let dir = tempfile::Builder::new()
                    .prefix("view-")
                    .tempdir_in(scratch)
                    .with_context(|| "cannot create a directory".to_string())?;
                let lowers: Vec<PathBuf> = many.iter().rev().map(|l| l.dir.clone()).collect();
                let mount = runc::Mount::overlay(&lowers, None, dir.path())
                    .with_context(|| "cannot mount a read-only overlay of the image".to_string())?;
                Ok(View {
                    path: dir.path().to_path_buf(),
                    _mount: Some(mount),
                    _dir: Some(dir),
                })
            }
        }
    }
}
