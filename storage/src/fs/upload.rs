//! Upload sessions on disk: appending in batches on blocking threads,
//! checkpoints, and completion into a blob.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::files::{blocking, remove_if_present, touch_blob, touch_link, Paths};
use super::group_sync::SyncRequest;
use super::FsStorage;
use crate::digest::{restore_sha256_state, save_sha256_state, Hasher};
use crate::layout::is_upload_id;
use crate::upload_locks::UploadGuard;
use crate::{Algorithm, ByteStream, Digest, Result, StorageError};

/// During a long PATCH, the received bytes are fsynced and the offset and hash
/// state saved this often, so a crash loses at most this much of an upload.
const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Size of the chunks a blob is hashed in when it must be re-read.
const READ_CHUNK: usize = 1 << 20;
/// While an upload streams in, writeback to disk is started every this many bytes.
const WRITEBACK_BYTES: u64 = 8 << 20;
/// An upload body is written to disk in batches of this many bytes.
const WRITE_BATCH: usize = 1 << 20;
/// Finished uploads up to this size are hashed again from the file before
/// they become a blob. Larger ones rely on [`DataWriter`]'s guarantee alone;
/// re-reading them would cost about 0.6 s per GiB.
const REHASH_MAX: u64 = 16 << 20;

#[derive(Serialize, Deserialize)]
pub(super) struct UploadState {
    pub(super) repository: String,
    pub(super) offset: u64,
    /// Serialised SHA-256 state over the first `offset` bytes.
    pub(super) sha256: String,
    pub(super) created_unix: u64,
}

impl FsStorage {
    /// Lock an upload session and read its state. A request naming another
    /// repository's session (or no session) is refused before it queues on
    /// the lock, so it can neither delay nor touch that session.
    pub(super) async fn lock_upload(
        &self,
        repository: &str,
        id: &str,
    ) -> Result<(UploadGuard, UploadState)> {
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
    pub(super) async fn append_stream(
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

    /// Append the last bytes (if any), verify, store and link; `matched` is told once
    /// the digest matched, before the blob is made durable (see
    /// [`crate::Storage::upload_complete_notify`]).
    pub(super) async fn complete_upload(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64> {
        let (guard, state) = self.lock_upload(repository, id).await?;
        // The repository is noted in the catalog log by `complete`, once the digest
        // matches: a refused upload leaves the storage as it was.
        let writer = match data {
            Some(data) => {
                let (writer, body_error) = self
                    .append_stream(guard, id, state, data, false)
                    .await
                    .map_err(|e| self.dropping_upload_when_full(id, e))?;
                if let Some(e) = body_error {
                    // Keep what arrived so the client can resume.
                    let _ = blocking(move || writer.save_partial()).await;
                    return Err(StorageError::BodyInterrupted(e));
                }
                writer
            }
            None => Box::new(DataWriter::new(self.paths(), guard, id, state, false)?),
        };
        let (repo, expected) = (repository.to_string(), digest.clone());
        blocking(move || (*writer).complete(&repo, &expected, matched))
            .await
            .map_err(|e| self.dropping_upload_when_full(id, e))
    }

    /// A full disk ends the upload at once: its partial data and folder are
    /// removed now rather than after the week abandoned sessions are kept,
    /// since the space is what is missing. The client must start over.
    pub(super) fn dropping_upload_when_full(&self, id: &str, e: StorageError) -> StorageError {
        if e.is_storage_full() && is_upload_id(id) {
            tracing::error!(upload = id, "storage full: upload dropped");
            let _ = self.paths().remove_session(id);
        }
        e
    }

    pub(super) async fn read_upload(&self, repository: &str, id: &str) -> Result<UploadState> {
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
pub(super) struct DataWriter {
    pub(super) paths: Paths,
    pub(super) id: String,
    pub(super) state: UploadState,
    pub(super) hasher: Sha256,
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
    pub(super) fn new(
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

    /// For an append (PATCH), make what was written durable and record it.
    /// The body of a completing PUT is made durable by [`Self::complete`],
    /// together with other uploads (group commit), or by
    /// [`Self::save_partial`] when the body was cut.
    fn finish(&mut self) -> Result<()> {
        if !self.checkpoint {
            return Ok(());
        }
        if let (true, Some(file)) = (self.wrote_any, self.file.as_mut()) {
            file.sync_data()?;
        }
        if self.since_checkpoint > 0 {
            self.paths
                .save_upload_state(&self.id, &self.state, &self.hasher)?;
            self.since_checkpoint = 0;
        }
        Ok(())
    }

    /// A completing PUT whose body was cut: make what arrived durable, then
    /// record it, so the client can resume from there.
    pub(super) fn save_partial(self: Box<Self>) -> Result<()> {
        if let (true, Some(file)) = (self.wrote_any, self.file.as_ref()) {
            file.sync_data()?;
        }
        Ok(self
            .paths
            .save_upload_state(&self.id, &self.state, &self.hasher)?)
    }

    /// Waits until `req` is durable, in a batch with concurrent uploads.
    fn group_sync(&self, req: SyncRequest) -> Result<()> {
        Ok(self.paths.group_sync.sync(req)?)
    }

    /// Turn the upload into blob `expected` (holding the session's lock).
    ///
    /// Never replaces an existing blob file: a digest already stored means
    /// its bytes are already there, so the upload's data is simply dropped.
    /// The data becomes the blob by a hard link (O(1), fails if the name
    /// exists), and the session goes after it; a crash in between leaves a
    /// session whose retried completion finds the blob and succeeds.
    pub(super) fn complete(
        mut self,
        repo: &str,
        expected: &Digest,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64> {
        let data_path = self.paths.upload_data(&self.id);
        // Opens, locks and cuts the file to the hashed offset; a file shorter
        // than that is refused.
        self.open()?;
        let offset = self.state.offset;
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
        // Every byte is in and hashed: the caller may release them to its readers now,
        // while the rest (fsync, link) makes them durable and visible.
        let _ = matched.send(());
        // Logged before any link names the repository, so no process misses it.
        self.paths.indexes.note(&self.paths.root, repo)?;
        // Two group commits: the data is durable before any name points at
        // it (a reader who sees the blob may build on it, e.g. push a
        // manifest naming it), and the names are durable before the 201.
        let data_file = match self.file.as_ref() {
            Some(file) => vec![file.try_clone()?],
            None => Vec::new(),
        };
        self.group_sync(SyncRequest {
            files: data_file,
            dirs: Vec::new(),
        })?;
        let blob = self.paths.blob(expected);
        let link = self.paths.layer_link(repo, expected);
        let dirs = [&blob, &link]
            .into_iter()
            .flat_map(|path| self.paths.dirs_up_to_root(path))
            .collect();
        if let Some(parent) = blob.parent() {
            fs::create_dir_all(parent)?;
        }
        {
            let _no_gc = self.paths.gc_lock.blocking_read();
            match fs::hard_link(&data_path, &blob) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => touch_blob(&blob)?,
                Err(e) => return Err(e.into()),
            }
            touch_link(&link)?;
        }
        self.group_sync(SyncRequest {
            files: Vec::new(),
            dirs,
        })?;
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

impl Paths {
    /// The folders from `path`'s parent up to the root (included): the one
    /// that gains its entry, and any created for it with their parents'
    /// entries. All of them, not only those this upload creates: a folder
    /// another upload just created may not be durable yet either.
    pub(super) fn dirs_up_to_root(&self, path: &Path) -> Vec<std::path::PathBuf> {
        let mut dirs = Vec::new();
        let mut at = path.parent();
        while let Some(dir) = at.filter(|d| d.starts_with(&self.root)) {
            dirs.push(dir.to_path_buf());
            at = dir.parent();
        }
        dirs
    }

    /// Remove an upload session's folder, its state first: a crash half-way
    /// leaves a folder without a state, which is unknown to every request and
    /// purged by its age.
    pub(super) fn remove_session(&self, id: &str) -> io::Result<()> {
        remove_if_present(&self.upload_state(id))?;
        match fs::remove_dir_all(self.upload_dir(id)) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    pub(super) fn load_upload_state(&self, repository: &str, id: &str) -> Result<UploadState> {
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

    pub(super) fn save_upload_state(
        &self,
        id: &str,
        state: &UploadState,
        hasher: &Sha256,
    ) -> io::Result<()> {
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
