//! Paths under the root and the blocking file operations every part of the
//! backend shares.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::LAYOUT;
use crate::gc::Stored;
use crate::layout::referrer_entry_name;
use crate::{ByteStream, Descriptor, Digest, Result, StorageError};

/// Size of the windows a blob is mapped in when it is served.
/// 1 MiB: a connection maps one window at a time, so 1024 pulls map at most
/// 1 GiB of page cache at once; the map and unmap per window are cheap.
const MAP_WINDOW: usize = 1 << 20;

/// Path arithmetic and blocking file operations, cheap to clone into
/// `spawn_blocking` closures.
#[derive(Clone)]
pub(super) struct Paths {
    pub(super) root: PathBuf,
    pub(super) gc_lock: Arc<tokio::sync::RwLock<()>>,
    pub(super) group_sync: Arc<super::group_sync::GroupSync>,
    pub(super) indexes: Arc<super::catalog::Indexes>,
}

impl Paths {
    /// Where a key of the [`Layout`] is under the root.
    pub(super) fn at(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    pub(super) fn blob(&self, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.blob(d))
    }

    pub(super) fn repo(&self, repository: &str) -> PathBuf {
        self.at(&LAYOUT.repository(repository))
    }

    pub(super) fn layer_link(&self, repository: &str, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.layer_link(repository, d))
    }

    pub(super) fn manifest_link(&self, repository: &str, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.manifest_link(repository, d))
    }

    pub(super) fn tags_dir(&self, repository: &str) -> PathBuf {
        self.at(&LAYOUT.tags(repository))
    }

    pub(super) fn tag(&self, repository: &str, tag: &str) -> PathBuf {
        self.at(&LAYOUT.tag(repository, tag))
    }

    pub(super) fn referrers_dir(&self, repository: &str, subject: &Digest) -> PathBuf {
        self.at(&LAYOUT.referrers(repository, subject))
    }

    pub(super) fn referrer(&self, repository: &str, subject: &Digest, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.referrer(repository, subject, d))
    }

    pub(super) fn upload_dir(&self, id: &str) -> PathBuf {
        self.at(&LAYOUT.upload(id))
    }

    pub(super) fn upload_state(&self, id: &str) -> PathBuf {
        self.at(&LAYOUT.upload_state(id))
    }

    pub(super) fn upload_data(&self, id: &str) -> PathBuf {
        self.at(&LAYOUT.upload_data(id))
    }

    pub(super) fn tmp(&self, name: &str) -> PathBuf {
        self.at(&LAYOUT.tmp(name))
    }

    /// Write a file so that it is either absent, the old version, or all of
    /// the new one: temp file, fsync, rename.
    pub(super) fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = self.tmp(&uuid::Uuid::new_v4().simple().to_string());
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Create (or refresh) an empty link file, with a fresh modification time:
/// garbage collection spares links younger than its grace period.
pub(super) fn touch_link(link: &Path) -> io::Result<()> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)?;
    }
    // An empty file is its own content: creating it cannot tear.
    File::create(link)?.set_modified(SystemTime::now())
}

/// Refresh a blob's modification time, so a garbage collection running in
/// another process (which cannot take our lock) spares a blob just reused.
pub(super) fn touch_blob(blob: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(blob)?
        .set_modified(SystemTime::now())
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
}

pub(super) fn not_found_as_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove a file; false when it did not exist.
pub(super) fn remove_if_present(path: &Path) -> io::Result<bool> {
    Ok(not_found_as_none(fs::remove_file(path))?.is_some())
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Read an open blob from `start` for `len` bytes, as a stream.
///
/// The file is memory-mapped a window at a time, so its bytes go from the page
/// cache to the socket with one copy instead of two (a `read` into a buffer,
/// then a `write` out of it); pulls are CPU-bound here, so this is most of the
/// cost. A window is mapped only when the connection asks for the next chunk
/// and unmapped once it is sent, so a connection maps one window at a time.
///
/// Mapping is a quick system call that reads nothing (the pages are read
/// when the socket write copies them, as before), so it runs on the async
/// thread: a blocking thread held for the whole transfer, as this used to
/// be, made 512 concurrent pulls fill tokio's blocking pool, and every
/// other request's file operation (a manifest GET's read) then queued
/// behind whole layer transfers.
pub(super) fn file_stream(file: File, start: u64, len: u64) -> ByteStream {
    let end = start.saturating_add(len);
    let windows = futures::stream::unfold(Some((file, start)), move |state| async move {
        let (file, offset) = state?;
        if offset >= end {
            return None;
        }
        let window = (end - offset).min(MAP_WINDOW as u64) as usize;
        // SAFETY: a blob file is never written or truncated after it is renamed
        // into the blob store (a re-push renames a new inode over the path and
        // leaves this one intact; a delete unlinks it, which keeps the inode
        // alive while mapped). Only an outside process truncating the file
        // could make this mapping fault.
        let mapped = unsafe {
            memmap2::MmapOptions::new()
                .offset(offset)
                .len(window)
                .map(&file)
        };
        match mapped {
            Ok(map) => {
                let _ = map.advise(memmap2::Advice::Sequential);
                let next = Some((file, offset + window as u64));
                Some((Ok(Bytes::from_owner(map)), next))
            }
            // The error ends the stream.
            Err(e) => Some((Err(e), None)),
        }
    });
    Box::pin(windows)
}

/// Names of the entries in a directory; empty when it does not exist.
pub(super) fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
    let Some(entries) = not_found_as_none(fs::read_dir(dir))? else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for entry in entries {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Read referrer `digest`'s entry from its subject's folder; `None` when it
/// was deleted since the folder was listed.
pub(super) fn read_referrer_entry(dir: &Path, digest: &Digest) -> Result<Option<Descriptor>> {
    let path = dir.join(referrer_entry_name(digest));
    let Some(raw) = not_found_as_none(fs::read(&path))? else {
        return Ok(None);
    };
    let d: Descriptor = serde_json::from_slice(&raw)
        .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))?;
    // Pages are cut on the listed name but resumed from the descriptor's
    // digest (`last`): if they disagreed, paging could repeat or skip.
    if &d.digest != digest {
        return Err(StorageError::Corrupt(format!(
            "{}: holds the descriptor of {}",
            path.display(),
            d.digest
        )));
    }
    Ok(Some(d))
}

pub(super) fn find_repositories(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
    for name in list_dir(dir)? {
        if name.starts_with('_') {
            continue;
        }
        let path = dir.join(&name);
        if !path.is_dir() {
            continue;
        }
        let full = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if path.join("_manifests").is_dir() || path.join("_layers").is_dir() {
            out.push(full.clone());
        }
        find_repositories(&path, &full, out)?;
    }
    Ok(())
}

/// Every file below the folder `prefix` of `root`, keyed by its path from
/// `root`; none when the folder does not exist.
///
/// Folders are told apart by the directory entry's type (no system call),
/// and files are stat'ed relative to their open folder: at a million blobs
/// a `stat` of the whole path per entry was most of a collection's time.
pub(super) fn list_files(root: &Path, prefix: &str) -> io::Result<Vec<Stored>> {
    let mut out = Vec::new();
    let mut folders = vec![prefix.trim_end_matches('/').to_string()];
    while let Some(folder) = folders.pop() {
        let Some(entries) = not_found_as_none(fs::read_dir(root.join(&folder)))? else {
            continue; // removed while listing
        };
        for entry in entries {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let key = format!("{folder}/{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                folders.push(key);
                continue;
            }
            let meta = if kind.is_symlink() {
                not_found_as_none(fs::metadata(root.join(&key)))?
            } else {
                not_found_as_none(entry.metadata())?
            };
            let Some(meta) = meta else {
                continue; // removed while listing
            };
            if meta.is_dir() {
                folders.push(key);
            } else {
                out.push(Stored {
                    key,
                    size: meta.len(),
                    modified: meta.modified()?,
                });
            }
        }
    }
    Ok(out)
}

/// Every file whose key (path from `root`) starts with `prefix`, which may
/// end inside a name (`repositories/a` holds `repositories/app/...`).
pub(super) fn list_prefix(root: &Path, prefix: &str) -> io::Result<Vec<Stored>> {
    let (folder, start) = match prefix.rfind('/') {
        Some(i) => (&prefix[..i], &prefix[i + 1..]),
        None => ("", prefix),
    };
    let mut out = Vec::new();
    for name in list_dir(&root.join(folder))? {
        if !name.starts_with(start) {
            continue;
        }
        let key = if folder.is_empty() {
            name
        } else {
            format!("{folder}/{name}")
        };
        let Some(meta) = not_found_as_none(fs::metadata(root.join(&key)))? else {
            continue; // removed while listing
        };
        if meta.is_dir() {
            out.extend(list_files(root, &format!("{key}/"))?);
        } else {
            out.push(Stored {
                key,
                size: meta.len(),
                modified: meta.modified()?,
            });
        }
    }
    Ok(out)
}
