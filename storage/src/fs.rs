//! Filesystem backend.
//!
//! Direct file I/O rather than `object_store`'s LocalFileSystem, because an
//! upload session needs three things that API does not offer: appending to a
//! file in place, truncating it back to the last checkpoint after a crash, and
//! renaming the finished file into the blob store without copying it.
//!
//! Layout under the root:
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                          blob bytes (manifests too)
//! repositories/<name>/_layers/<alg>/<hex>                empty link: blob is in this repo
//! repositories/<name>/_manifests/<alg>/<hex>             ManifestMeta JSON: manifest is in this repo
//! repositories/<name>/_tags/<tag>                        the digest the tag points at
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex> Descriptor JSON of a referrer
//! uploads/<id>/{state.json,data}                         upload sessions
//! tmp/                                                   temporary files, renamed into place
//! ```
//! Every file that has content is written to `tmp/`, fsynced and renamed into
//! place, so a crash at any point leaves either the old or the new version,
//! never a torn one. Repository names start with `[a-z0-9]`, so they can never
//! collide with the `_`-prefixed folders.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{restore_sha256_state, save_sha256_state, Hasher};
use crate::{
    Algorithm, BlobRead, ByteRange, ByteStream, Descriptor, Digest, GcReport, ManifestMeta, Result,
    Storage, StorageError, UploadStatus,
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

pub struct FsStorage {
    root: PathBuf,
    /// Held for reading by every write that links a blob, for writing by
    /// garbage collection, so a collection never races a push in this process.
    gc_lock: Arc<RwLock<()>>,
    /// One lock per upload session: appends to one session are serialised.
    upload_locks: crate::upload_locks::UploadLocks,
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
        for dir in ["blobs", "repositories", "uploads", "tmp"] {
            fs::create_dir_all(root.join(dir))?;
        }
        // Temporary files left by a crash are never referenced: drop them.
        for entry in fs::read_dir(root.join("tmp"))? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(FsStorage {
            root,
            gc_lock: Arc::new(RwLock::new(())),
            upload_locks: Default::default(),
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

    /// Lock an upload session and read its state. An id that names no session
    /// leaves no lock behind (ids are random, so it never will name one).
    async fn lock_upload(
        &self,
        repository: &str,
        id: &str,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, UploadState)> {
        let guard = self.upload_locks.get(id).lock_owned().await;
        match self.read_upload(repository, id).await {
            Ok(state) => Ok((guard, state)),
            Err(e) => {
                if matches!(e, StorageError::UploadUnknown) {
                    self.upload_locks.forget(id);
                }
                Err(e)
            }
        }
    }

    /// Stream `data` onto the end of an upload's data file, hashing as it goes.
    /// Writing and hashing run on a blocking thread so they overlap with
    /// receiving the next chunk from the network.
    async fn append_stream(
        &self,
        id: &str,
        mut state: UploadState,
        mut data: ByteStream,
        checkpoint: bool,
    ) -> Result<(UploadState, Sha256, Option<io::Error>)> {
        let paths = self.paths();
        let id = id.to_string();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let writer = tokio::task::spawn_blocking(move || -> Result<(UploadState, Sha256)> {
            let mut hasher = restore_sha256_state(&state.sha256)
                .ok_or_else(|| StorageError::Corrupt(format!("upload {id}: bad hash state")))?;
            let data_path = paths.upload_dir(&id).join("data");
            let mut file = OpenOptions::new().write(true).open(&data_path)?;
            let len = file.metadata()?.len();
            if len < state.offset {
                return Err(StorageError::Corrupt(format!(
                    "upload {id}: {len} bytes on disk, {} recorded",
                    state.offset
                )));
            }
            // Bytes past the last checkpoint were never acknowledged: drop them.
            file.set_len(state.offset)?;
            file.seek(SeekFrom::Start(state.offset))?;
            let mut since_checkpoint = 0u64;
            let mut wrote_any = false;
            let mut unflushed_from = state.offset;
            while let Some(chunk) = rx.blocking_recv() {
                file.write_all(&chunk)?;
                hasher.update(&chunk);
                state.offset += chunk.len() as u64;
                since_checkpoint += chunk.len() as u64;
                wrote_any = true;
                if state.offset - unflushed_from >= WRITEBACK_BYTES {
                    start_writeback(&file, unflushed_from, state.offset - unflushed_from);
                    unflushed_from = state.offset;
                }
                if checkpoint && since_checkpoint >= CHECKPOINT_BYTES {
                    file.sync_data()?;
                    paths.save_upload_state(&id, &state, &hasher)?;
                    since_checkpoint = 0;
                }
            }
            if wrote_any {
                file.sync_data()?;
            }
            if checkpoint && since_checkpoint > 0 {
                paths.save_upload_state(&id, &state, &hasher)?;
            }
            Ok((state, hasher))
        });
        let mut body_error = None;
        while let Some(item) = data.next().await {
            match item {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => {
                    if tx.send(chunk).await.is_err() {
                        break; // the writer failed; its error is reported below
                    }
                }
                Err(e) => {
                    body_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let (state, hasher) = writer.await.map_err(io::Error::other)??;
        Ok((state, hasher, body_error))
    }

    async fn read_upload(&self, repository: &str, id: &str) -> Result<UploadState> {
        let paths = self.paths();
        let (repository, id) = (repository.to_string(), id.to_string());
        blocking(move || paths.load_upload_state(&repository, &id)).await
    }
}

/// Path arithmetic and blocking file operations, cheap to clone into
/// `spawn_blocking` closures.
#[derive(Clone)]
struct Paths {
    root: PathBuf,
    gc_lock: Arc<RwLock<()>>,
}

impl Paths {
    fn blob(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    fn repo(&self, repository: &str) -> PathBuf {
        self.root.join("repositories").join(repository)
    }

    fn layer_link(&self, repository: &str, d: &Digest) -> PathBuf {
        self.repo(repository)
            .join("_layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn manifest_link(&self, repository: &str, d: &Digest) -> PathBuf {
        self.repo(repository)
            .join("_manifests")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn tags_dir(&self, repository: &str) -> PathBuf {
        self.repo(repository).join("_tags")
    }

    fn referrers_dir(&self, repository: &str, subject: &Digest) -> PathBuf {
        self.repo(repository)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
    }

    fn referrer(&self, repository: &str, subject: &Digest, d: &Digest) -> PathBuf {
        self.referrers_dir(repository, subject).join(format!(
            "{}-{}",
            d.algorithm().as_str(),
            d.hex()
        ))
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(id)
    }

    /// Write a file so that it is either absent, the old version, or all of
    /// the new one: temp file, fsync, rename.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let tmp = self
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
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
        let raw = match fs::read(self.upload_dir(id).join("state.json")) {
            Ok(raw) => raw,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(StorageError::UploadUnknown),
            Err(e) => return Err(e.into()),
        };
        let state: UploadState = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("upload {id} state: {e}")))?;
        if state.repository != repository {
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
        self.write_atomic(&self.upload_dir(id).join("state.json"), &json)
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

fn modified_before(path: &Path, cutoff: SystemTime) -> io::Result<bool> {
    Ok(fs::metadata(path)?.modified()? < cutoff)
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

fn is_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
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

/// Every `<alg>/<hex>` or `<alg>/<xx>/<hex>` file below `dir` whose name is
/// a digest, with its path. Anything else (a stray file) is left alone.
fn digest_files(dir: &Path) -> io::Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    for alg in list_dir(dir)? {
        let alg_dir = dir.join(&alg);
        let mut stack = vec![alg_dir];
        while let Some(d) = stack.pop() {
            for name in list_dir(&d)? {
                let path = d.join(&name);
                if path.is_dir() {
                    stack.push(path);
                } else if let Ok(digest) = format!("{alg}:{name}").parse::<Digest>() {
                    out.push((digest, path));
                }
            }
        }
    }
    Ok(out)
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
            let _no_gc = gc_lock.read().unwrap_or_else(|e| e.into_inner());
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
            let dir = paths.upload_dir(&id);
            fs::create_dir_all(&dir)?;
            File::create(dir.join("data"))?;
            // Not fsynced: a session lost in a crash only makes the client start over.
            let json = serde_json::to_vec(&state).map_err(io::Error::other)?;
            let tmp = paths.root.join("tmp").join(format!("{id}.state"));
            fs::write(&tmp, json)?;
            fs::rename(&tmp, dir.join("state.json"))?;
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
        let (_guard, state) = self.lock_upload(repository, id).await?;
        if let Some(start) = start {
            if start != state.offset {
                return Err(StorageError::RangeMismatch {
                    offset: state.offset,
                });
            }
        }
        let (state, _, body_error) = self.append_stream(id, state, data, true).await?;
        if let Some(e) = body_error {
            return Err(StorageError::BodyInterrupted(e));
        }
        Ok(UploadStatus {
            id: id.to_string(),
            repository: state.repository,
            offset: state.offset,
        })
    }

    async fn upload_complete(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
    ) -> Result<u64> {
        let (_guard, state) = self.lock_upload(repository, id).await?;
        let paths = self.paths();
        let (state, hasher) = match data {
            Some(data) => {
                let (state, hasher, body_error) =
                    self.append_stream(id, state, data, false).await?;
                if let Some(e) = body_error {
                    // Keep what arrived so the client can resume from the offset.
                    let (p, id) = (paths.clone(), id.to_string());
                    let _ = blocking(move || Ok(p.save_upload_state(&id, &state, &hasher)?)).await;
                    return Err(StorageError::BodyInterrupted(e));
                }
                (state, hasher)
            }
            None => {
                let hasher = restore_sha256_state(&state.sha256)
                    .ok_or_else(|| StorageError::Corrupt(format!("upload {id}: bad hash state")))?;
                (state, hasher)
            }
        };
        let (id_owned, repo, expected) = (id.to_string(), repository.to_string(), digest.clone());
        let result = blocking(move || {
            let dir = paths.upload_dir(&id_owned);
            let data_path = dir.join("data");
            let actual = match expected.algorithm() {
                Algorithm::Sha256 => Hasher::Sha256(hasher).finish(),
                // The running hash is SHA-256 only; sha512 uploads are rare enough to re-read.
                Algorithm::Sha512 => {
                    let mut h = Hasher::new(Algorithm::Sha512);
                    let mut f = File::open(&data_path)?;
                    let mut buf = vec![0u8; READ_CHUNK];
                    let mut left = state.offset;
                    while left > 0 {
                        let n = f.read(&mut buf[..left.min(READ_CHUNK as u64) as usize])?;
                        if n == 0 {
                            break;
                        }
                        h.update(&buf[..n]);
                        left -= n as u64;
                    }
                    h.finish()
                }
            };
            if actual != expected {
                let _ = fs::remove_dir_all(&dir);
                return Err(StorageError::DigestMismatch { expected, actual });
            }
            let f = OpenOptions::new().write(true).open(&data_path)?;
            f.set_len(state.offset)?;
            f.sync_all()?;
            drop(f);
            let blob = paths.blob(&expected);
            if let Some(parent) = blob.parent() {
                fs::create_dir_all(parent)?;
            }
            let _no_gc = paths.gc_lock.read().unwrap_or_else(|e| e.into_inner());
            // Rename, not copy: the finished upload becomes the blob in O(1).
            fs::rename(&data_path, &blob)?;
            touch_link(&paths.layer_link(&repo, &expected))?;
            let _ = fs::remove_dir_all(&dir);
            Ok(state.offset)
        })
        .await;
        self.upload_locks.forget(id);
        result
    }

    async fn upload_cancel(&self, repository: &str, id: &str) -> Result<()> {
        let _locked = self.lock_upload(repository, id).await?;
        let dir = self.paths().upload_dir(id);
        blocking(move || Ok(fs::remove_dir_all(dir)?)).await?;
        self.upload_locks.forget(id);
        Ok(())
    }

    async fn purge_uploads(&self, max_age: std::time::Duration) -> Result<usize> {
        let paths = self.paths();
        let cutoff = now_unix().saturating_sub(max_age.as_secs());
        let purged = blocking(move || {
            let mut purged = Vec::new();
            let uploads = paths.root.join("uploads");
            for id in list_dir(&uploads)? {
                let dir = uploads.join(&id);
                let state: Option<UploadState> = fs::read(dir.join("state.json"))
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
                    fs::remove_dir_all(&dir)?;
                    purged.push(id);
                }
            }
            Ok(purged)
        })
        .await?;
        for id in &purged {
            self.upload_locks.forget(id);
        }
        Ok(purged.len())
    }

    async fn collect_garbage(&self, grace: std::time::Duration, dry_run: bool) -> Result<GcReport> {
        let paths = self.paths();
        blocking(move || {
            let _exclusive = paths.gc_lock.write().unwrap_or_else(|e| e.into_inner());
            let cutoff = SystemTime::now().checked_sub(grace).unwrap_or(UNIX_EPOCH);
            let remove = |path: &Path| {
                if dry_run {
                    Ok(())
                } else {
                    fs::remove_file(path)
                }
            };
            let mut report = GcReport::default();
            let mut live: HashSet<Digest> = HashSet::new();
            let mut repos = Vec::new();
            find_repositories(&paths.root.join("repositories"), "", &mut repos)?;
            for repo in repos {
                // Mark: every manifest of the repository and what it references.
                let mut needed: Option<HashSet<Digest>> = Some(HashSet::new());
                for (digest, link) in digest_files(&paths.repo(&repo).join("_manifests"))? {
                    let raw = fs::read(&link)?;
                    let meta: ManifestMeta = serde_json::from_slice(&raw)
                        .map_err(|e| StorageError::Corrupt(format!("{}: {e}", link.display())))?;
                    match (&mut needed, meta.references) {
                        (Some(set), Some(refs)) => set.extend(refs),
                        _ => needed = None, // unknown references: keep every link
                    }
                    live.insert(digest);
                }
                // Sweep the repository's links nobody needs.
                for (digest, link) in digest_files(&paths.repo(&repo).join("_layers"))? {
                    let needed_here = needed.as_ref().is_none_or(|set| set.contains(&digest));
                    if needed_here || !modified_before(&link, cutoff)? {
                        live.insert(digest);
                    } else {
                        remove(&link)?;
                        report.links_removed += 1;
                    }
                }
            }
            // Sweep blobs no repository links to.
            for (digest, blob) in digest_files(&paths.root.join("blobs"))? {
                if live.contains(&digest) || !modified_before(&blob, cutoff)? {
                    continue;
                }
                let size = fs::metadata(&blob)?.len();
                remove(&blob)?;
                report.blobs_removed += 1;
                report.bytes_freed += size;
            }
            Ok(report)
        })
        .await
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
            let _no_gc = paths.gc_lock.read().unwrap_or_else(|e| e.into_inner());
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
                let path = paths.tags_dir(&repo).join(tag);
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
        let path = self.paths().tags_dir(repository).join(tag);
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
        let path = self.paths().tags_dir(repository).join(tag);
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

    async fn repositories(&self) -> Result<Vec<String>> {
        let dir = self.root.join("repositories");
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
