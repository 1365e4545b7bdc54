//! Filesystem backend.
//!
//! Direct file I/O rather than `object_store`'s LocalFileSystem, because an
//! upload session needs three things that API does not offer: appending to a
//! file in place, truncating it back to the last checkpoint after a crash, and
//! renaming the finished file into the blob store without copying it.
//!
//! The files under the root are named by [`crate::layout`] ([`Layout::Fs`]).
//! Every file that has content is written to `tmp/`, fsynced and renamed into
//! place, so a crash at any point leaves either the old or the new version,
//! never a torn one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{restore_sha256_state, save_sha256_state, Hasher};
use crate::gc::{self, GcStore, Stored};
use crate::layout::{
    is_upload_id, referrer_entry_digest, referrer_entry_name, Layout, BLOBS, REPOSITORIES, TMP,
    UPLOADS,
};
use crate::upload_locks::UploadGuard;
use crate::{
    Algorithm, BlobRead, ByteRange, ByteStream, Descriptor, DescriptorStream, Digest, GcReport,
    ManifestMeta, Result, Storage, StorageError, UploadStatus,
};

/// During a long PATCH, the received bytes are fsynced and the offset and hash
/// state saved this often, so a crash loses at most this much of an upload.
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Size of the chunks a blob is hashed in when it must be re-read.
const READ_CHUNK: usize = 1 << 20;
/// While an upload streams in, writeback to disk is started every this many bytes.
const WRITEBACK_BYTES: u64 = 8 << 20;
/// Size of the windows a blob is mapped in when it is served.
const MAP_WINDOW: usize = 4 << 20;
/// An upload body is written to disk in batches of this many bytes.
const WRITE_BATCH: usize = 1 << 20;
/// Batch writes of upload bodies running at once on the blocking pool (whose
/// other threads stay free for reads, manifests and tags).
const UPLOAD_WRITERS: usize = 32;
/// Finished uploads up to this size are hashed again from the file before
/// they become a blob. Larger ones rely on [`DataWriter`]'s guarantee alone;
/// re-reading them would cost about 0.6 s per GiB.
const REHASH_MAX: u64 = 16 << 20;

/// How this backend spells the storage layout.
const LAYOUT: Layout = Layout::Fs;

pub struct FsStorage {
    root: PathBuf,
    /// Held for reading by every write that links a blob, for writing by
    /// garbage collection, so a collection never races a push in this process.
    gc_lock: Arc<tokio::sync::RwLock<()>>,
    /// One lock per upload session: appends to one session are serialised.
    upload_locks: crate::upload_locks::UploadLocks,
    /// Permits for batch writes of upload bodies (see [`UPLOAD_WRITERS`]).
    upload_writers: Arc<tokio::sync::Semaphore>,
}

#[derive(Serialize, Deserialize)]
struct UploadState {
    repository: String,
    offset: u64,
    /// Serialised SHA-256 state over the first `offset` bytes.
    sha256: String,
    created_unix: u64,
}

impl FsStorage {
    /// Open (creating if needed) a storage root.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<FsStorage> {
        let root = root.into();
        for dir in [BLOBS, REPOSITORIES, UPLOADS, TMP] {
            fs::create_dir_all(root.join(dir))?;
        }
        // Temporary files left by a crash are never referenced: drop them.
        for entry in fs::read_dir(root.join(TMP))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(FsStorage {
            root,
            gc_lock: Arc::new(tokio::sync::RwLock::new(())),
            upload_locks: Default::default(),
            upload_writers: Arc::new(tokio::sync::Semaphore::new(UPLOAD_WRITERS)),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn paths(&self) -> Paths {
        Paths {
            root: self.root.clone(),
            gc_lock: self.gc_lock.clone(),
        }
    }

    /// Lock an upload session and read its state. A request naming another
    /// repository's session (or no session) is refused before it queues on
    /// the lock, so it can neither delay nor touch that session.
    async fn lock_upload(&self, repository: &str, id: &str) -> Result<(UploadGuard, UploadState)> {
        self.read_upload(repository, id).await?;
        let guard = self.upload_locks.lock(id).await;
        // Read again under the lock: the holder before us moved it on (or
        // completed it, and then it is unknown now).
        let state = self.read_upload(repository, id).await?;
        Ok((guard, state))
    }

    /// Stream `data` onto the end of an upload's data file, hashing as it goes.
    ///
    /// The body is received here, on the async side, into batches of up to
    /// [`WRITE_BATCH`] bytes; each full batch is written and hashed on a
    /// blocking thread while the next one arrives. So a body that trickles
    /// in holds no thread while it waits for the network (hundreds of slow
    /// uploads once starved every storage read of the blocking pool), and
    /// at most [`UPLOAD_WRITERS`] batch writes run at once, whatever the
    /// number of uploads, so reads always find a thread.
    ///
    /// The session's lock travels with the writer: if this request goes
    /// away while a batch is being written, the lock is released only when
    /// that write has ended, never beside it.
    async fn append_stream(
        &self,
        guard: UploadGuard,
        id: &str,
        state: UploadState,
        mut data: ByteStream,
        checkpoint: bool,
    ) -> Result<(Box<DataWriter>, Option<io::Error>)> {
        let mut slot = Slot::Ready(Box::new(DataWriter::new(
            self.paths(),
            guard,
            id,
            state,
            checkpoint,
        )?));
        let mut batch: Vec<Bytes> = Vec::new();
        let mut batch_len = 0usize;
        let mut body_error = None;
        loop {
            let end = match data.next().await {
                None => true,
                Some(Ok(chunk)) => {
                    if !chunk.is_empty() {
                        batch_len += chunk.len();
                        batch.push(chunk);
                    }
                    false
                }
                Some(Err(e)) => {
                    body_error = Some(e);
                    true
                }
            };
            if !end && batch_len < WRITE_BATCH {
                continue;
            }
            let mut w = match slot {
                Slot::Ready(w) => w,
                Slot::Busy(task) => task.await.map_err(io::Error::other)??,
            };
            let permit = self
                .upload_writers
                .clone()
                .acquire_owned()
                .await
                .map_err(io::Error::other)?;
            let chunks = std::mem::take(&mut batch);
            batch_len = 0;
            let task = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                w.write(&chunks)?;
                if end {
                    w.finish()?;
                }
                Ok(w)
            });
            if end {
                let w = task.await.map_err(io::Error::other)??;
                return Ok((w, body_error));
            }
            slot = Slot::Busy(task);
        }
    }

    /// A full disk ends the upload at once: its partial data and folder are
    /// removed now rather than after the week abandoned sessions are kept,
    /// since the space is what is missing. The client must start over.
    fn dropping_upload_when_full(&self, id: &str, e: StorageError) -> StorageError {
        if e.is_storage_full() && is_upload_id(id) {
            tracing::error!(upload = id, "storage full: upload dropped");
            let _ = self.paths().remove_session(id);
        }
        e
    }

    async fn read_upload(&self, repository: &str, id: &str) -> Result<UploadState> {
        let paths = self.paths();
        let (repository, id) = (repository.to_string(), id.to_string());
        blocking(move || paths.load_upload_state(&repository, &id)).await
    }
}

/// Where [`FsStorage::append_stream`]'s writer is: free, or on a blocking thread.
enum Slot {
    Ready(Box<DataWriter>),
    Busy(tokio::task::JoinHandle<Result<Box<DataWriter>>>),
}

/// Appends to one upload's data file on blocking threads, one batch at a
/// time, and owns the session's lock while it exists.
///
/// The guarantee that makes a finished upload's bytes the bytes that were
/// hashed: every write to a data file happens through a `DataWriter`, which
/// holds the session's in-process lock and an exclusive `flock` on the file
/// (so a second `berth serve` on the same folder cannot write beside it
/// either); it appends only at the saved offset, after truncating what a
/// crash left past it; and the state (offset and running hash) is saved
/// only after the bytes it covers are fsynced. So the first `offset` bytes
/// of the file are exactly the bytes the saved hash covers.
struct DataWriter {
    paths: Paths,
    id: String,
    state: UploadState,
    hasher: Sha256,
    checkpoint: bool,
    file: Option<File>,
    since_checkpoint: u64,
    unflushed_from: u64,
    wrote_any: bool,
    // Last: fields drop in order, so the file (and its flock) is closed
    // before the next request of this process may take the session.
    _guard: UploadGuard,
}

impl DataWriter {
    fn new(
        paths: Paths,
        guard: UploadGuard,
        id: &str,
        state: UploadState,
        checkpoint: bool,
    ) -> Result<DataWriter> {
        let hasher = restore_sha256_state(&state.sha256)
            .ok_or_else(|| StorageError::Corrupt(format!("upload {id}: bad hash state")))?;
        Ok(DataWriter {
            paths,
            _guard: guard,
            id: id.to_string(),
            unflushed_from: state.offset,
            state,
            hasher,
            checkpoint,
            file: None,
            since_checkpoint: 0,
            wrote_any: false,
        })
    }

    /// Open the data file, lock it and cut it back to the saved offset (once).
    fn open(&mut self) -> Result<()> {
        if self.file.is_some() {
            return Ok(());
        }
        let path = self.paths.upload_data(&self.id);
        let mut file = match OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StorageError::UploadUnknown),
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = lock_exclusive(&file) {
            return Err(if e.kind() == ErrorKind::WouldBlock {
                // Another process is appending to this session right now.
                StorageError::RangeMismatch {
                    offset: self.state.offset,
                }
            } else {
                e.into()
            });
        }
        let len = file.metadata()?.len();
        if len < self.state.offset {
            return Err(StorageError::Corrupt(format!(
                "upload {}: {len} bytes on disk, {} recorded",
                self.id, self.state.offset
            )));
        }
        // Bytes past the last checkpoint were never acknowledged: drop them.
        file.set_len(self.state.offset)?;
        file.seek(SeekFrom::Start(self.state.offset))?;
        self.file = Some(file);
        Ok(())
    }

    fn write(&mut self, chunks: &[Bytes]) -> Result<()> {
        if chunks.is_empty() {
            return Ok(());
        }
        self.open()?;
        let Some(file) = self.file.as_mut() else {
            return Err(StorageError::Corrupt("upload data file not open".into()));
        };
        for chunk in chunks {
            file.write_all(chunk)?;
            self.hasher.update(chunk);
            self.state.offset += chunk.len() as u64;
            self.since_checkpoint += chunk.len() as u64;
            self.wrote_any = true;
            if self.state.offset - self.unflushed_from >= WRITEBACK_BYTES {
                start_writeback(
                    file,
                    self.unflushed_from,
                    self.state.offset - self.unflushed_from,
                );
                self.unflushed_from = self.state.offset;
            }
            if self.checkpoint && self.since_checkpoint >= CHECKPOINT_BYTES {
                file.sync_data()?;
                self.paths
                    .save_upload_state(&self.id, &self.state, &self.hasher)?;
                self.since_checkpoint = 0;
            }
        }
        Ok(())
    }

    /// Make what was written durable and, for an append, record it.
    fn finish(&mut self) -> Result<()> {
        if let (true, Some(file)) = (self.wrote_any, self.file.as_mut()) {
            file.sync_data()?;
        }
        if self.checkpoint && self.since_checkpoint > 0 {
            self.paths
                .save_upload_state(&self.id, &self.state, &self.hasher)?;
            self.since_checkpoint = 0;
        }
        Ok(())
    }

    /// Turn the upload into blob `expected` (holding the session's lock).
    ///
    /// Never replaces an existing blob file: a digest already stored means
    /// its bytes are already there, so the upload's data is simply dropped.
    /// The data becomes the blob by a hard link (O(1), fails if the name
    /// exists), and the session goes after it; a crash in between leaves a
    /// session whose retried completion finds the blob and succeeds.
    fn complete(mut self, repo: &str, expected: &Digest) -> Result<u64> {
        let data_path = self.paths.upload_data(&self.id);
        // Opens, locks and cuts the file to the hashed offset; a file shorter
        // than that is refused.
        self.open()?;
        let offset = self.state.offset;
        if let Some(file) = self.file.as_mut() {
            file.sync_all()?;
        }
        let actual = if expected.algorithm() == Algorithm::Sha256 && offset > REHASH_MAX {
            Hasher::Sha256(self.hasher.clone()).finish()
        } else {
            // Cheap for small blobs, and the only way for sha512 (the running
            // hash is SHA-256).
            hash_file_prefix(&data_path, offset, expected.algorithm())?
        };
        if &actual != expected {
            let _ = self.paths.remove_session(&self.id);
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        let blob = self.paths.blob(expected);
        if let Some(parent) = blob.parent() {
            fs::create_dir_all(parent)?;
        }
        let _no_gc = self.paths.gc_lock.blocking_read();
        match fs::hard_link(&data_path, &blob) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => touch_blob(&blob)?,
            Err(e) => return Err(e.into()),
        }
        touch_link(&self.paths.layer_link(repo, expected))?;
        let _ = self.paths.remove_session(&self.id);
        Ok(offset)
    }
}

/// The hash of the first `len` bytes of a file.
fn hash_file_prefix(path: &Path, len: u64, algorithm: Algorithm) -> Result<Digest> {
    let mut h = Hasher::new(algorithm);
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut left = len;
    while left > 0 {
        let n = f.read(&mut buf[..left.min(READ_CHUNK as u64) as usize])?;
        if n == 0 {
            return Err(StorageError::Corrupt(format!(
                "{}: {left} bytes missing",
                path.display()
            )));
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finish())
}

impl Drop for DataWriter {
    /// The file (and its flock) is closed before the fields drop, so before
    /// the session's lock is released whatever the field order: a request
    /// queued on the session must never find the file still locked (it
    /// would take that for another process and answer 416).
    fn drop(&mut self) {
        drop(self.file.take());
    }
}

/// Take an exclusive `flock` on a file without waiting.
fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) takes an fd that `file` keeps open for the call.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Path arithmetic and blocking file operations, cheap to clone into
/// `spawn_blocking` closures.
#[derive(Clone)]
struct Paths {
    root: PathBuf,
    gc_lock: Arc<tokio::sync::RwLock<()>>,
}

impl Paths {
    /// Where a key of the [`Layout`] is under the root.
    fn at(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.blob(d))
    }

    fn repo(&self, repository: &str) -> PathBuf {
        self.at(&LAYOUT.repository(repository))
    }

    fn layer_link(&self, repository: &str, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.layer_link(repository, d))
    }

    fn manifest_link(&self, repository: &str, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.manifest_link(repository, d))
    }

    fn tags_dir(&self, repository: &str) -> PathBuf {
        self.at(&LAYOUT.tags(repository))
    }

    fn tag(&self, repository: &str, tag: &str) -> PathBuf {
        self.at(&LAYOUT.tag(repository, tag))
    }

    fn referrers_dir(&self, repository: &str, subject: &Digest) -> PathBuf {
        self.at(&LAYOUT.referrers(repository, subject))
    }

    fn referrer(&self, repository: &str, subject: &Digest, d: &Digest) -> PathBuf {
        self.at(&LAYOUT.referrer(repository, subject, d))
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.at(&LAYOUT.upload(id))
    }

    fn upload_state(&self, id: &str) -> PathBuf {
        self.at(&LAYOUT.upload_state(id))
    }

    fn upload_data(&self, id: &str) -> PathBuf {
        self.at(&LAYOUT.upload_data(id))
    }

    fn tmp(&self, name: &str) -> PathBuf {
        self.at(&LAYOUT.tmp(name))
    }

    /// Remove an upload session's folder, its state first: a crash half-way
    /// leaves a folder without a state, which is unknown to every request and
    /// purged by its age.
    fn remove_session(&self, id: &str) -> io::Result<()> {
        remove_if_present(&self.upload_state(id))?;
        match fs::remove_dir_all(self.upload_dir(id)) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Write a file so that it is either absent, the old version, or all of
    /// the new one: temp file, fsync, rename.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
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

    fn load_upload_state(&self, repository: &str, id: &str) -> Result<UploadState> {
        if !is_upload_id(id) {
            return Err(StorageError::UploadUnknown);
        }
        let raw = match fs::read(self.upload_state(id)) {
            Ok(raw) => raw,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StorageError::UploadUnknown),
            Err(e) => return Err(e.into()),
        };
        let state: UploadState = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("upload {id} state: {e}")))?;
        if state.repository != repository {
            return Err(StorageError::UploadUnknown);
        }
        // A state without its data (an older version completed by renaming
        // the data away, then died before removing the state) names nothing
        // that can continue: unknown, never a 500.
        if !self.upload_data(id).exists() {
            return Err(StorageError::UploadUnknown);
        }
        Ok(state)
    }

    fn save_upload_state(&self, id: &str, state: &UploadState, hasher: &Sha256) -> io::Result<()> {
        let state = UploadState {
            repository: state.repository.clone(),
            offset: state.offset,
            sha256: save_sha256_state(hasher),
            created_unix: state.created_unix,
        };
        let json = serde_json::to_vec(&state).map_err(io::Error::other)?;
        self.write_atomic(&self.upload_state(id), &json)
    }
}

/// Create (or refresh) an empty link file, with a fresh modification time:
/// garbage collection spares links younger than its grace period.
fn touch_link(link: &Path) -> io::Result<()> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent)?;
    }
    // An empty file is its own content: creating it cannot tear.
    File::create(link)?.set_modified(SystemTime::now())
}

/// Refresh a blob's modification time, so a garbage collection running in
/// another process (which cannot take our lock) spares a blob just reused.
fn touch_blob(blob: &Path) -> io::Result<()> {
    OpenOptions::new()
        .write(true)
        .open(blob)?
        .set_modified(SystemTime::now())
}

/// Ask the kernel to start writing a just-written range to disk, without
/// waiting: the disk then works while the rest of the body arrives, and the
/// fsync that ends the upload has little left to do. Only a hint; errors are
/// ignored (the fsync reports real ones).
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: sync_file_range(2) takes plain integers and an fd that `file`
    // keeps open for the duration of the call; it touches no Rust memory.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::Io(io::Error::other(e)))?
}

fn not_found_as_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Remove a file; false when it did not exist.
fn remove_if_present(path: &Path) -> io::Result<bool> {
    Ok(not_found_as_none(fs::remove_file(path))?.is_some())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Read an open blob from `start` for `len` bytes, on a blocking thread, as a stream.
///
/// The file is memory-mapped a window at a time, so its bytes go from the page
/// cache to the socket with one copy instead of two (a `read` into a buffer,
/// then a `write` out of it); pulls are CPU-bound here, so this is most of the
/// cost. Windows are unmapped as soon as they are sent, so memory stays bounded.
fn file_stream(file: File, start: u64, len: u64) -> ByteStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(2);
    tokio::task::spawn_blocking(move || {
        let end = start + len;
        let mut offset = start;
        while offset < end {
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
            let chunk = match mapped {
                Ok(map) => {
                    let _ = map.advise(memmap2::Advice::Sequential);
                    Bytes::from_owner(map)
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            offset += window as u64;
            if tx.blocking_send(Ok(chunk)).is_err() {
                return; // reader went away
            }
        }
    });
    Box::pin(tokio_stream_from(rx))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Names of the entries in a directory; empty when it does not exist.
fn list_dir(dir: &Path) -> io::Result<Vec<String>> {
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
fn read_referrer_entry(dir: &Path, digest: &Digest) -> Result<Option<Descriptor>> {
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

fn find_repositories(dir: &Path, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
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
fn list_files(root: &Path, prefix: &str) -> io::Result<Vec<Stored>> {
    let mut out = Vec::new();
    let mut folders = vec![prefix.trim_end_matches('/').to_string()];
    while let Some(folder) = folders.pop() {
        for name in list_dir(&root.join(&folder))? {
            let key = format!("{folder}/{name}");
            let Some(meta) = not_found_as_none(fs::metadata(root.join(&key)))? else {
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

#[async_trait]
impl GcStore for FsStorage {
    fn layout(&self) -> Layout {
        LAYOUT
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stored>> {
        let (root, prefix) = (self.root.clone(), prefix.to_string());
        blocking(move || Ok(list_files(&root, &prefix)?)).await
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.root.join(key);
        blocking(move || Ok(not_found_as_none(fs::read(path))?.map(Bytes::from))).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let path = self.root.join(key);
        blocking(move || {
            remove_if_present(&path)?;
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Storage for FsStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let path = self.paths().blob(digest);
        blocking(move || Ok(not_found_as_none(fs::metadata(path))?.map(|m| m.len()))).await
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        let path = self.paths().blob(digest);
        let (file, size) = blocking(move || {
            let Some(file) = not_found_as_none(File::open(path))? else {
                return Err(StorageError::BlobUnknown);
            };
            let size = file.metadata()?.len();
            Ok((file, size))
        })
        .await?;
        let range = match range {
            None => None,
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(StorageError::RangeNotSatisfiable { size })?,
            ),
        };
        let (start, end) = range.unwrap_or((0, size.saturating_sub(1)));
        let len = if size == 0 { 0 } else { end - start + 1 };
        Ok(BlobRead {
            size,
            range,
            stream: file_stream(file, start, len),
        })
    }

    async fn blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let path = self.paths().blob(digest);
        blocking(move || Ok(not_found_as_none(fs::read(path))?.map(Bytes::from))).await
    }

    async fn blob_linked(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let paths = self.paths();
        let link = paths.layer_link(repository, digest);
        let blob = paths.blob(digest);
        blocking(move || Ok(link.exists() && blob.exists())).await
    }

    async fn link_blob(&self, repository: &str, digest: &Digest) -> Result<()> {
        let paths = self.paths();
        let link = paths.layer_link(repository, digest);
        let blob = paths.blob(digest);
        let gc_lock = paths.gc_lock.clone();
        blocking(move || {
            let _no_gc = gc_lock.blocking_read();
            match touch_blob(&blob) {
                Err(e) if e.kind() == ErrorKind::NotFound => return Err(StorageError::BlobUnknown),
                other => other?,
            }
            touch_link(&link)?;
            Ok(())
        })
        .await
    }

    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let link = self.paths().layer_link(repository, digest);
        blocking(move || Ok(remove_if_present(&link)?)).await
    }

    async fn upload_create(&self, repository: &str) -> Result<UploadStatus> {
        let paths = self.paths();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let state = UploadState {
            repository: repository.to_string(),
            offset: 0,
            sha256: save_sha256_state(&Sha256::new()),
            created_unix: now_unix(),
        };
        let status = UploadStatus {
            id: id.clone(),
            repository: repository.to_string(),
            offset: 0,
        };
        blocking(move || {
            fs::create_dir_all(paths.upload_dir(&id))?;
            File::create(paths.upload_data(&id))?;
            // Not fsynced: a session lost in a crash only makes the client start over.
            let json = serde_json::to_vec(&state).map_err(io::Error::other)?;
            let tmp = paths.tmp(&format!("{id}.state"));
            fs::write(&tmp, json)?;
            fs::rename(&tmp, paths.upload_state(&id))?;
            Ok(())
        })
        .await?;
        Ok(status)
    }

    async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus> {
        let state = self.read_upload(repository, id).await?;
        Ok(UploadStatus {
            id: id.to_string(),
            repository: state.repository,
            offset: state.offset,
        })
    }

    async fn upload_append(
        &self,
        repository: &str,
        id: &str,
        start: Option<u64>,
        data: ByteStream,
    ) -> Result<UploadStatus> {
        let (guard, state) = self.lock_upload(repository, id).await?;
        if let Some(start) = start {
            if start != state.offset {
                return Err(StorageError::RangeMismatch {
                    offset: state.offset,
                });
            }
        }
        let (writer, body_error) = self
            .append_stream(guard, id, state, data, true)
            .await
            .map_err(|e| self.dropping_upload_when_full(id, e))?;
        if let Some(e) = body_error {
            return Err(StorageError::BodyInterrupted(e));
        }
        Ok(UploadStatus {
            id: id.to_string(),
            repository: writer.state.repository.clone(),
            offset: writer.state.offset,
        })
    }

    async fn upload_complete(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
    ) -> Result<u64> {
        let (guard, state) = self.lock_upload(repository, id).await?;
        let writer = match data {
            Some(data) => {
                let (writer, body_error) = self
                    .append_stream(guard, id, state, data, false)
                    .await
                    .map_err(|e| self.dropping_upload_when_full(id, e))?;
                if let Some(e) = body_error {
                    // Keep what arrived (fsynced already) so the client can resume.
                    let _ = blocking(move || {
                        let w = writer;
                        Ok(w.paths.save_upload_state(&w.id, &w.state, &w.hasher)?)
                    })
                    .await;
                    return Err(StorageError::BodyInterrupted(e));
                }
                writer
            }
            None => Box::new(DataWriter::new(self.paths(), guard, id, state, false)?),
        };
        let (repo, expected) = (repository.to_string(), digest.clone());
        blocking(move || (*writer).complete(&repo, &expected))
            .await
            .map_err(|e| self.dropping_upload_when_full(id, e))
    }

    async fn upload_cancel(&self, repository: &str, id: &str) -> Result<()> {
        let (guard, _) = self.lock_upload(repository, id).await?;
        let (paths, id) = (self.paths(), id.to_string());
        // The lock goes with the removal: if this request goes away first,
        // nobody takes the session while its files are being removed.
        blocking(move || {
            let _guard = guard;
            Ok(paths.remove_session(&id)?)
        })
        .await
    }

    async fn purge_uploads(&self, max_age: std::time::Duration) -> Result<usize> {
        let paths = self.paths();
        let cutoff = now_unix().saturating_sub(max_age.as_secs());
        blocking(move || {
            let mut purged = 0;
            for id in list_dir(&paths.at(UPLOADS))? {
                let dir = paths.upload_dir(&id);
                let state: Option<UploadState> = fs::read(paths.upload_state(&id))
                    .ok()
                    .and_then(|raw| serde_json::from_slice(&raw).ok());
                // A session without a readable state is judged by its folder's age.
                let started = match state {
                    Some(state) => state.created_unix,
                    None => fs::metadata(&dir)?
                        .modified()?
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                };
                if started < cutoff {
                    paths.remove_session(&id)?;
                    purged += 1;
                }
            }
            Ok(purged)
        })
        .await
    }

    async fn collect_garbage(&self, grace: std::time::Duration, dry_run: bool) -> Result<GcReport> {
        let _exclusive = self.gc_lock.write().await;
        gc::collect(self, grace, dry_run, std::future::ready(())).await
    }

    async fn manifest_put(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
        meta: &ManifestMeta,
        tag: Option<&str>,
    ) -> Result<()> {
        let paths = self.paths();
        let (repo, digest, meta, tag) = (
            repository.to_string(),
            digest.clone(),
            meta.clone(),
            tag.map(str::to_string),
        );
        blocking(move || {
            let _no_gc = paths.gc_lock.blocking_read();
            // What the manifest needs is checked under the same exclusion as
            // the link that protects it, so no collection runs in between;
            // refreshing the blobs' times spares them from a collection in
            // another process too.
            for needed in meta.references.iter().flatten() {
                let linked = paths.layer_link(&repo, needed).exists()
                    || paths.manifest_link(&repo, needed).exists();
                let blob = paths.blob(needed);
                if !linked || not_found_as_none(touch_blob(&blob))?.is_none() {
                    return Err(StorageError::ReferenceUnknown(needed.clone()));
                }
            }
            // Order matters for crash safety: bytes, then the link that makes
            // them visible, then the referrer entry and the tag that point at it.
            let blob = paths.blob(&digest);
            match touch_blob(&blob) {
                Err(e) if e.kind() == ErrorKind::NotFound => paths.write_atomic(&blob, &bytes)?,
                other => other?,
            }
            let meta_json = serde_json::to_vec(&meta).map_err(io::Error::other)?;
            paths.write_atomic(&paths.manifest_link(&repo, &digest), &meta_json)?;
            if let Some(subject) = &meta.subject {
                let descriptor = Descriptor {
                    media_type: meta.media_type.clone(),
                    digest: digest.clone(),
                    size: bytes.len() as u64,
                    artifact_type: meta.artifact_type.clone(),
                    annotations: meta.annotations.clone(),
                };
                let json = serde_json::to_vec(&descriptor).map_err(io::Error::other)?;
                paths.write_atomic(&paths.referrer(&repo, subject, &digest), &json)?;
            }
            if let Some(tag) = tag {
                let path = paths.tag(&repo, &tag);
                paths.write_atomic(&path, digest.to_string().as_bytes())?;
            }
            Ok(())
        })
        .await
    }

    async fn manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        let paths = self.paths();
        let link = paths.manifest_link(repository, digest);
        let blob = paths.blob(digest);
        blocking(move || {
            let Some(raw) = not_found_as_none(fs::read(&link))? else {
                return Ok(None);
            };
            if !blob.exists() {
                return Ok(None);
            }
            let meta = serde_json::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("{}: {e}", link.display())))?;
            Ok(Some(meta))
        })
        .await
    }

    /// One blocking round trip instead of two: this is the hottest read path.
    async fn manifest_get(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<(ManifestMeta, Bytes)>> {
        let paths = self.paths();
        let link = paths.manifest_link(repository, digest);
        let blob = paths.blob(digest);
        blocking(move || {
            let Some(raw) = not_found_as_none(fs::read(&link))? else {
                return Ok(None);
            };
            let Some(bytes) = not_found_as_none(fs::read(&blob))? else {
                return Ok(None);
            };
            let meta = serde_json::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("{}: {e}", link.display())))?;
            Ok(Some((meta, Bytes::from(bytes))))
        })
        .await
    }

    async fn manifest_delete(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let Some(meta) = self.manifest_meta(repository, digest).await? else {
            return Ok(false);
        };
        let paths = self.paths();
        let (repo, digest) = (repository.to_string(), digest.clone());
        blocking(move || {
            // Tags first, so no tag is left pointing at a manifest that is gone.
            let tags_dir = paths.tags_dir(&repo);
            let target = digest.to_string();
            for tag in list_dir(&tags_dir)? {
                let path = tags_dir.join(&tag);
                if not_found_as_none(fs::read_to_string(&path))?.as_deref() == Some(&target) {
                    remove_if_present(&path)?;
                }
            }
            if let Some(subject) = &meta.subject {
                remove_if_present(&paths.referrer(&repo, subject, &digest))?;
            }
            Ok(remove_if_present(&paths.manifest_link(&repo, &digest))?)
        })
        .await
    }

    async fn tag_resolve(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        let path = self.paths().tag(repository, tag);
        blocking(move || {
            let Some(raw) = not_found_as_none(fs::read_to_string(&path))? else {
                return Ok(None);
            };
            let digest = raw
                .trim()
                .parse()
                .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))?;
            Ok(Some(digest))
        })
        .await
    }

    async fn tag_delete(&self, repository: &str, tag: &str) -> Result<bool> {
        let path = self.paths().tag(repository, tag);
        blocking(move || Ok(remove_if_present(&path)?)).await
    }

    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>> {
        let paths = self.paths();
        let repo = repository.to_string();
        blocking(move || {
            if !paths.repo(&repo).is_dir() {
                return Ok(None);
            }
            Ok(Some(list_dir(&paths.tags_dir(&repo))?))
        })
        .await
    }

    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let dir = self.paths().referrers_dir(repository, subject);
        blocking(move || {
            let mut out = Vec::new();
            for name in list_dir(&dir)? {
                let path = dir.join(&name);
                let Some(raw) = not_found_as_none(fs::read(&path))? else {
                    continue; // deleted while listing
                };
                let d: Descriptor = serde_json::from_slice(&raw)
                    .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))?;
                out.push(d);
            }
            out.sort_by(|a, b| a.digest.cmp(&b.digest));
            Ok(out)
        })
        .await
    }

    /// Lists the entry names only, then reads one entry per poll: a page
    /// costs the descriptors it takes, not every descriptor of the subject,
    /// so unlike the default it needs no process-wide permit.
    async fn referrers_after(
        &self,
        repository: &str,
        subject: &Digest,
        after: Option<&Digest>,
    ) -> Result<DescriptorStream> {
        let dir = Arc::new(self.paths().referrers_dir(repository, subject));
        let (listed, after) = (dir.clone(), after.cloned());
        let digests = blocking(move || {
            let mut digests: Vec<Digest> = list_dir(&listed)?
                .iter()
                .filter_map(|name| referrer_entry_digest(name))
                .filter(|d| after.as_ref().is_none_or(|a| d > a))
                .collect();
            // Digest order (algorithm, then hex), as the trait and the
            // registry's `last` assume.
            digests.sort();
            Ok(digests)
        })
        .await?;
        let stream = futures::stream::iter(digests)
            .then(move |digest| {
                let dir = dir.clone();
                blocking(move || read_referrer_entry(&dir, &digest))
            })
            .filter_map(|entry| async move { entry.transpose() });
        Ok(Box::pin(stream))
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        let dir = self.root.join(REPOSITORIES);
        blocking(move || {
            let mut out = Vec::new();
            find_repositories(&dir, "", &mut out)?;
            out.sort();
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsuite;

    fn open() -> (tempfile::TempDir, FsStorage) {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = FsStorage::open(dir.path().join("data")).expect("open");
        (dir, storage)
    }

    #[tokio::test]
    async fn shared_suite() {
        let (_dir, storage) = open();
        testsuite::run_all(&storage).await;
    }

    #[tokio::test]
    async fn uploads_and_tags_survive_reopen() {
        let (dir, storage) = open();
        let status = storage.upload_create("a/b").await.expect("create");
        storage
            .upload_append("a/b", &status.id, None, testsuite::stream_of(b"hello "))
            .await
            .expect("append");
        drop(storage);
        let storage = FsStorage::open(dir.path().join("data")).expect("reopen");
        let again = storage
            .upload_status("a/b", &status.id)
            .await
            .expect("status");
        assert_eq!(again.offset, 6);
        let digest = Digest::sha256_of(b"hello world");
        storage
            .upload_complete(
                "a/b",
                &status.id,
                &digest,
                Some(testsuite::stream_of(b"world")),
            )
            .await
            .expect("complete");
        assert!(storage.blob_linked("a/b", &digest).await.expect("linked"));
    }

    #[tokio::test]
    async fn bytes_past_the_checkpoint_are_dropped_on_resume() {
        let (_dir, storage) = open();
        let status = storage.upload_create("r").await.expect("create");
        storage
            .upload_append("r", &status.id, None, testsuite::stream_of(b"abc"))
            .await
            .expect("append");
        // Simulate a crash after bytes hit the data file but before the state was saved.
        let data = storage.root().join("uploads").join(&status.id).join("data");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&data)
            .expect("open data");
        f.write_all(b"GARBAGE").expect("write");
        drop(f);
        assert_eq!(
            storage
                .upload_status("r", &status.id)
                .await
                .expect("status")
                .offset,
            3
        );
        let digest = Digest::sha256_of(b"abcdef");
        storage
            .upload_complete("r", &status.id, &digest, Some(testsuite::stream_of(b"def")))
            .await
            .expect("complete after crash leftovers");
        let bytes = storage
            .blob_bytes(&digest)
            .await
            .expect("read")
            .expect("present");
        assert_eq!(&bytes[..], b"abcdef");
    }

    #[tokio::test]
    async fn interrupted_body_keeps_received_bytes() {
        let (_dir, storage) = open();
        let status = storage.upload_create("r").await.expect("create");
        let broken: ByteStream = Box::pin(futures::stream::iter(vec![
            Ok(Bytes::from_static(b"12345")),
            Err(io::Error::new(
                ErrorKind::ConnectionReset,
                "client went away",
            )),
        ]));
        let err = storage
            .upload_append("r", &status.id, None, broken)
            .await
            .expect_err("interrupted");
        assert!(matches!(err, StorageError::BodyInterrupted(_)));
        assert_eq!(
            storage
                .upload_status("r", &status.id)
                .await
                .expect("status")
                .offset,
            5
        );
        assert!(storage.repositories().await.expect("repos").is_empty());
    }

    /// Append `data` to a fresh session of `repo` and return its id.
    async fn session_with(storage: &FsStorage, repo: &str, data: &[u8]) -> String {
        let status = storage.upload_create(repo).await.expect("create");
        storage
            .upload_append(repo, &status.id, None, testsuite::stream_of(data))
            .await
            .expect("append");
        status.id
    }

    /// Appends queued on one session each get their turn and all land, one after another
    /// (none refused because the one before still held the data file's flock).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_appends_all_land_one_after_another() {
        let (_dir, storage) = open();
        let storage = Arc::new(storage);
        let id = session_with(&storage, "r", b"").await;
        for _ in 0..30 {
            let appends: Vec<_> = (0..3)
                .map(|_| {
                    let (storage, id) = (storage.clone(), id.clone());
                    tokio::spawn(async move {
                        storage
                            .upload_append("r", &id, None, testsuite::stream_of(b"abc"))
                            .await
                    })
                })
                .collect();
            for append in appends {
                let result = append.await.expect("task");
                assert!(result.is_ok(), "a queued append failed: {result:?}");
            }
        }
        let status = storage.upload_status("r", &id).await.expect("status");
        assert_eq!(status.offset, 30 * 3 * 3);
    }

    #[tokio::test]
    async fn completion_never_replaces_an_existing_blob() {
        let (_dir, storage) = open();
        let right = b"the victim's bytes".to_vec();
        let digest = Digest::sha256_of(&right);
        let id = session_with(&storage, "victim", &right).await;
        storage
            .upload_complete("victim", &id, &digest, None)
            .await
            .expect("victim push");
        // A session whose saved state claims the right hash over other bytes
        // (what two writers at once used to leave behind).
        let id = session_with(&storage, "mallory", &right).await;
        let data = storage.root().join("uploads").join(&id).join("data");
        fs::write(&data, b"the attacker's bytes").expect("overwrite data");
        let _ = storage.upload_complete("mallory", &id, &digest, None).await;
        let stored = storage
            .blob_bytes(&digest)
            .await
            .expect("read")
            .expect("blob");
        assert_eq!(&stored[..], &right[..], "an existing blob was replaced");
        assert!(
            !storage.root().join("uploads").join(&id).exists(),
            "the upload was not dropped"
        );
    }

    #[tokio::test]
    async fn stale_hash_state_is_caught_before_a_new_blob_is_made() {
        let (_dir, storage) = open();
        let right = b"bytes the digest names".to_vec();
        let digest = Digest::sha256_of(&right);
        let id = session_with(&storage, "r", &right).await;
        let data = storage.root().join("uploads").join(&id).join("data");
        fs::write(&data, b"other bytes, same len!").expect("overwrite data");
        let err = storage
            .upload_complete("r", &id, &digest, None)
            .await
            .expect_err("must not complete");
        assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
        assert!(storage.blob_size(&digest).await.expect("size").is_none());
    }

    #[tokio::test]
    async fn a_session_shorter_than_its_state_is_refused() {
        let (_dir, storage) = open();
        let id = session_with(&storage, "r", b"0123456789").await;
        let data = storage.root().join("uploads").join(&id).join("data");
        fs::write(&data, b"01234").expect("truncate data");
        let err = storage
            .upload_complete("r", &id, &Digest::sha256_of(b"0123456789"), None)
            .await
            .expect_err("short data");
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    }

    #[tokio::test]
    async fn completion_after_a_crash_between_link_and_cleanup_succeeds() {
        let (_dir, storage) = open();
        let bytes = b"crash right after the link".to_vec();
        let digest = Digest::sha256_of(&bytes);
        let id = session_with(&storage, "r", &bytes).await;
        // The crash: the data is already the blob, the session is still there.
        let paths = storage.paths();
        let blob = paths.blob(&digest);
        fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
        fs::hard_link(paths.upload_data(&id), &blob).expect("link");
        assert_eq!(
            storage
                .upload_status("r", &id)
                .await
                .expect("status")
                .offset,
            bytes.len() as u64
        );
        let size = storage
            .upload_complete("r", &id, &digest, None)
            .await
            .expect("retried completion");
        assert_eq!(size, bytes.len() as u64);
        assert!(storage.blob_linked("r", &digest).await.expect("linked"));
        assert!(matches!(
            storage.upload_status("r", &id).await,
            Err(StorageError::UploadUnknown)
        ));
    }

    #[tokio::test]
    async fn a_session_whose_data_was_renamed_away_is_unknown_not_an_error() {
        let (_dir, storage) = open();
        let bytes = b"renamed by an older version".to_vec();
        let digest = Digest::sha256_of(&bytes);
        let id = session_with(&storage, "r", &bytes).await;
        let paths = storage.paths();
        let blob = paths.blob(&digest);
        fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
        fs::rename(paths.upload_data(&id), &blob).expect("rename");
        for result in [
            storage.upload_status("r", &id).await.map(|_| ()),
            storage
                .upload_append("r", &id, None, testsuite::stream_of(b"x"))
                .await
                .map(|_| ()),
            storage
                .upload_complete("r", &id, &digest, None)
                .await
                .map(|_| ()),
        ] {
            assert!(
                matches!(result, Err(StorageError::UploadUnknown)),
                "{result:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_manifest_whose_blob_was_collected_is_refused() {
        let (_dir, storage) = open();
        let layer = Digest::sha256_of(b"gone");
        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(vec![layer.clone()]),
        };
        let body = Bytes::from_static(b"{}");
        let err = storage
            .manifest_put(
                "r",
                &Digest::sha256_of(&body),
                body.clone(),
                &meta,
                Some("t"),
            )
            .await
            .expect_err("missing layer");
        assert!(
            matches!(err, StorageError::ReferenceUnknown(ref d) if d == &layer),
            "{err}"
        );
        assert!(storage.tag_resolve("r", "t").await.expect("tag").is_none());
    }

    #[tokio::test]
    async fn referrers_after_reads_entries_lazily_and_skips_stray_names() {
        use futures::TryStreamExt;
        let (_dir, storage) = open();
        let subject = Digest::sha256_of(b"subject");
        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: Some(subject.clone()),
            artifact_type: None,
            annotations: None,
            references: None,
        };
        let mut digests = Vec::new();
        for (i, algorithm) in [Algorithm::Sha512, Algorithm::Sha256, Algorithm::Sha256]
            .into_iter()
            .enumerate()
        {
            let body = Bytes::from(format!("{{\"n\":{i}}}"));
            let d = Digest::of(algorithm, &body);
            storage
                .manifest_put("r", &d, body, &meta, None)
                .await
                .expect("put referrer");
            digests.push(d);
        }
        digests.sort();
        assert_eq!(digests[2].algorithm(), Algorithm::Sha512, "sha256 first");
        let dir = storage.paths().referrers_dir("r", &subject);
        for stray in [
            "README",
            "sha256-zz",
            "sha256",
            "md5-d41d8cd98f00b204e9800998ecf8427e",
        ] {
            fs::write(dir.join(stray), b"not a descriptor").expect("stray file");
        }
        fs::write(dir.join(format!("sha256:{}", digests[0].hex())), b"{}").expect("stray");
        let list = |after: Option<Digest>| {
            let storage = &storage;
            let subject = &subject;
            async move {
                let stream = storage.referrers_after("r", subject, after.as_ref()).await;
                let all: Vec<Descriptor> = stream.expect("list").try_collect().await.expect("read");
                all.into_iter().map(|d| d.digest).collect::<Vec<_>>()
            }
        };
        assert_eq!(list(None).await, digests);
        assert_eq!(list(Some(digests[0].clone())).await, digests[1..]);

        // Entries are read as the stream is polled: one deleted after the
        // listing is skipped, not an error.
        let mut stream = storage
            .referrers_after("r", &subject, None)
            .await
            .expect("list");
        let first = stream.try_next().await.expect("read").expect("first");
        assert_eq!(first.digest, digests[0]);
        assert!(storage
            .manifest_delete("r", &digests[1])
            .await
            .expect("delete"));
        let rest: Vec<Descriptor> = stream.try_collect().await.expect("rest");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].digest, digests[2]);

        // An entry whose descriptor names another digest would break paging.
        let entry = dir.join(referrer_entry_name(&digests[0]));
        let mut other: Descriptor =
            serde_json::from_slice(&fs::read(&entry).expect("entry")).expect("descriptor");
        other.digest = digests[1].clone();
        fs::write(&entry, serde_json::to_vec(&other).expect("json")).expect("rewrite");
        let err = storage
            .referrers_after("r", &subject, None)
            .await
            .expect("list")
            .try_collect::<Vec<_>>()
            .await
            .expect_err("mismatched entry");
        assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
    }

    #[tokio::test]
    async fn foreign_upload_ids_are_unknown_and_leave_nothing_behind() {
        let (_dir, storage) = open();
        for id in [
            "../../etc",
            "",
            "zz",
            "0123456789abcdef0123456789abcdeg",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(matches!(
                storage.upload_status("r", id).await,
                Err(StorageError::UploadUnknown)
            ));
            assert!(matches!(
                storage
                    .upload_append("r", id, None, testsuite::stream_of(b"x"))
                    .await,
                Err(StorageError::UploadUnknown)
            ));
            assert!(matches!(
                storage.upload_cancel("r", id).await,
                Err(StorageError::UploadUnknown)
            ));
        }
        let locks = storage.upload_locks.len();
        assert_eq!(locks, 0, "unknown upload ids left locks behind");
    }
}
