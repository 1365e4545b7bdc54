//! Opening the storage `serve`, `gc` and `usage` work on: a folder or an
//! S3 bucket, and the file-mode mask for what the registry writes.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::config::Settings;

pub struct OpenedStorage {
    pub storage: Arc<dyn berth_storage::Storage>,
    /// The same storage when it is S3, for its request counts and start-up check.
    pub s3: Option<Arc<berth_storage::S3Storage>>,
}

/// The file a serving process holds a shared `flock` on, in a storage folder.
const SERVE_LOCK: &str = "serve.lock";

fn flock(file: &std::fs::File, operation: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) takes an fd that `file` keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn open_serve_lock(folder: &str) -> Result<std::fs::File> {
    let path = std::path::Path::new(folder).join(SERVE_LOCK);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))
}

/// `berth serve` on a folder: a shared `flock` held while the process lives (any number of
/// servers may share a folder), so `berth gc` can tell that one is writing there.
pub fn hold_serve_lock(settings: &Settings) -> Result<Option<std::fs::File>> {
    if settings.storage.starts_with("s3://") {
        return Ok(None);
    }
    let file = open_serve_lock(&settings.storage)?;
    flock(&file, libc::LOCK_SH).context("cannot lock the storage folder for serving")?;
    Ok(Some(file))
}

/// Whether a `berth serve` on this machine holds the storage folder now. Always false on S3:
/// a bucket has no such lock (see docs/registry.md on GC beside writers).
pub fn served_now(settings: &Settings) -> Result<bool> {
    if settings.storage.starts_with("s3://") {
        return Ok(false);
    }
    let file = open_serve_lock(&settings.storage)?;
    match flock(&file, libc::LOCK_EX) {
        Ok(()) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(true),
        Err(e) => Err(e).context("cannot check whether a server uses the storage folder"),
    }
}

pub fn open_storage(settings: &Settings) -> Result<OpenedStorage> {
    if settings.storage.starts_with("s3://") {
        let options = settings.s3.options(&settings.storage)?;
        let s3 = Arc::new(
            // Display only: the error's source repeats its own message.
            berth_storage::S3Storage::new(&options)
                .map_err(|e| anyhow::anyhow!("cannot use {}: {e}", settings.storage))?,
        );
        return Ok(OpenedStorage {
            storage: s3.clone(),
            s3: Some(s3),
        });
    }
    if settings.s3.redirect_blobs {
        bail!("--redirect-blobs needs S3 storage (--storage s3://BUCKET/PREFIX)");
    }
    let storage = berth_storage::FsStorage::open(&settings.storage)
        .with_context(|| format!("cannot open storage folder {}", settings.storage))?;
    Ok(OpenedStorage {
        storage: Arc::new(storage),
        s3: None,
    })
}

/// For the commands that read a storage another process serves (`gc`,
/// `usage`): a folder must already be one (have `blobs/`), so a typo in
/// `--storage` is not taken for an empty registry.
pub fn open_existing(settings: &Settings) -> Result<Arc<dyn berth_storage::Storage>> {
    let storage_path = &settings.storage;
    if !storage_path.starts_with("s3://")
        && !std::path::Path::new(storage_path).join("blobs").is_dir()
    {
        bail!("{storage_path} is not a berth storage folder (no blobs/ in it): check --storage");
    }
    Ok(open_storage(settings)?.storage)
}

/// Files the registry creates (blobs, manifests, tags, upload data) are not
/// for other users of the machine: no write for the group and nothing for
/// others (0640 files, 0750 folders), whatever umask the service manager
/// left us. A stricter umask is kept as it is.
pub fn restrict_umask() {
    // SAFETY: umask(2) only swaps the process's file-mode mask.
    let before = unsafe { libc::umask(0o027) };
    if before & 0o027 != 0o027 {
        tracing::debug!(before = format!("{before:03o}"), "umask tightened");
    }
    // SAFETY: as above; puts back any bits the old mask had beyond 027.
    unsafe { libc::umask(before | 0o027) };
}
