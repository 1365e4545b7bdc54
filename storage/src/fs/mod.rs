//! Filesystem backend.
//!
//! Direct file I/O rather than `object_store`'s LocalFileSystem, because an
//! upload session needs three things that API does not offer: appending to a
//! file in place, truncating it back to the last checkpoint after a crash, and
//! renaming the finished file into the blob store without copying it.
//!
//! The files under the root are named by `crate::layout` (`Layout::Fs`).
//! Every file that has content is written to `tmp/`, fsynced and renamed into
//! place, so a crash at any point leaves either the old or the new version,
//! never a torn one.

use std::fs::{self, File};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

use crate::digest::save_sha256_state;
use crate::gc::{self, GcStore, Stored};
use crate::layout::{referrer_entry_digest, Layout, BLOBS, REPOSITORIES, TMP, UPLOADS};
use crate::{
    BlobRead, ByteRange, ByteStream, Descriptor, DescriptorStream, Digest, GcReport, ManifestMeta,
    ManifestRecord, NamePage, PullTimes, Result, Storage, StorageError, SummaryPart, TagRecord,
    UploadStatus,
};

mod catalog;
mod files;
mod group_sync;
mod outbox;
mod records;
mod upload;

use files::{
    blocking, file_stream, list_dir, list_files, list_prefix, not_found_as_none, now_unix,
    read_referrer_entry, remove_if_present, touch_blob, touch_link, Paths,
};
use upload::UploadState;

/// Batch writes of upload bodies running at once on the blocking pool (whose
/// other threads stay free for reads, manifests and tags).
const UPLOAD_WRITERS: usize = 32;

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
    /// Serialises read-merge-write of pull records in this process.
    pulls_lock: Arc<std::sync::Mutex<()>>,
    /// Sorted catalog and big tag listings (see [`catalog`]).
    indexes: Arc<catalog::Indexes>,
    /// Shares the fsyncs that end concurrent uploads (see `group_sync`).
    group_sync: Arc<group_sync::GroupSync>,
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
        let group_sync = Arc::new(group_sync::GroupSync::new(&root));
        Ok(FsStorage {
            root,
            gc_lock: Arc::new(tokio::sync::RwLock::new(())),
            upload_locks: Default::default(),
            upload_writers: Arc::new(tokio::sync::Semaphore::new(UPLOAD_WRITERS)),
            pulls_lock: Default::default(),
            indexes: Default::default(),
            group_sync,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Log a repository about to be written to if it is new (see [`catalog`]).
    async fn note_repository(&self, repository: &str) -> Result<()> {
        let (indexes, root, repo) = (
            self.indexes.clone(),
            self.root.clone(),
            repository.to_string(),
        );
        blocking(move || Ok(indexes.note(&root, &repo)?)).await
    }

    fn paths(&self) -> Paths {
        Paths {
            root: self.root.clone(),
            gc_lock: self.gc_lock.clone(),
            group_sync: self.group_sync.clone(),
            indexes: self.indexes.clone(),
        }
    }
}

/// The files under a root, as garbage collection sees them. Its operations
/// block: a collection runs on one blocking thread (see
/// [`FsStorage::collect_garbage`]).
struct RootFiles {
    root: PathBuf,
}

#[async_trait]
impl GcStore for RootFiles {
    fn layout(&self) -> Layout {
        LAYOUT
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stored>> {
        Ok(list_files(&self.root, prefix)?)
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(not_found_as_none(fs::read(self.root.join(key)))?.map(Bytes::from))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        remove_if_present(&self.root.join(key))?;
        Ok(())
    }

    /// Directly, on the collection's own blocking thread: a hop to the
    /// blocking pool per listing made small collections many times slower
    /// (and they hold the lock that excludes pushes).
    fn list_prefix<'a>(&'a self, prefix: &'a str) -> gc::Pages<'a> {
        let listed = list_prefix(&self.root, prefix)
            .map(|items| items.into_iter().map(gc::versioned).collect())
            .map_err(StorageError::from);
        futures::stream::once(std::future::ready(listed)).boxed()
    }

    async fn folders(&self, folder: &str) -> Result<Vec<String>> {
        let dir = self.root.join(folder);
        Ok(list_dir(&dir)?
            .into_iter()
            .filter(|name| dir.join(name).is_dir())
            .collect())
    }

    /// Without fsync: the mark log is a cache (a lost or torn write costs
    /// the next run some reads, never a blob).
    async fn write(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.root.join(key);
        let tmp = self
            .root
            .join(LAYOUT.tmp(&uuid::Uuid::new_v4().simple().to_string()));
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(&tmp, &bytes)?;
        Ok(fs::rename(&tmp, &path)?)
    }

    async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        for key in keys {
            remove_if_present(&self.root.join(key))?;
        }
        Ok(())
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
        self.note_repository(repository).await?;
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

    async fn upload_complete_notify(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64> {
        self.complete_upload(repository, id, digest, data, matched)
            .await
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

    /// On one blocking thread, as one run of file operations: a hop to the
    /// blocking pool for each of them made a collection many times slower,
    /// and it holds the lock that excludes pushes all along.
    async fn collect_garbage(&self, grace: std::time::Duration, dry_run: bool) -> Result<GcReport> {
        let files = RootFiles {
            root: self.root.clone(),
        };
        let gc_lock = self.gc_lock.clone();
        let runtime = tokio::runtime::Handle::current();
        blocking(move || {
            let _exclusive = gc_lock.blocking_write();
            runtime.block_on(gc::collect(&files, grace, dry_run, std::future::ready(())))
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
        self.note_repository(repository).await?;
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

    async fn tag_records(&self, repository: &str) -> Result<Vec<TagRecord>> {
        let dir = self.paths().tags_dir(repository);
        blocking(move || records::tag_records(&dir)).await
    }

    async fn manifest_records(&self, repository: &str) -> Result<Vec<ManifestRecord>> {
        let (root, repo) = (self.root.clone(), repository.to_string());
        blocking(move || records::manifest_records(&root, &repo)).await
    }

    async fn record_pulls(&self, repository: &str, pulls: &PullTimes) -> Result<()> {
        let (paths, lock) = (self.paths(), self.pulls_lock.clone());
        let (repo, pulls) = (repository.to_string(), pulls.clone());
        blocking(move || {
            let _one_writer = lock.lock().unwrap_or_else(|e| e.into_inner());
            records::record_pulls(&paths, &repo, &pulls)
        })
        .await
    }

    async fn forget_pulls(&self, repository: &str, digests: &[Digest]) -> Result<()> {
        let (paths, lock) = (self.paths(), self.pulls_lock.clone());
        let (repo, digests) = (repository.to_string(), digests.to_vec());
        blocking(move || {
            let _one_writer = lock.lock().unwrap_or_else(|e| e.into_inner());
            records::drop_pulls(&paths, &repo, &digests)
        })
        .await
    }

    async fn pulls(&self, repository: &str) -> Result<PullTimes> {
        let (root, repo) = (self.root.clone(), repository.to_string());
        blocking(move || records::pulls(&root, &repo)).await
    }

    async fn tags_stamp(&self, repository: &str) -> Result<Option<String>> {
        let (paths, repo) = (self.paths(), repository.to_string());
        blocking(move || records::tags_stamp(&paths, &repo)).await
    }

    async fn summary_get(&self, repository: &str, part: SummaryPart) -> Result<Option<Bytes>> {
        let (root, repo) = (self.root.clone(), repository.to_string());
        let raw = blocking(move || records::summary_get(&root, &repo, part)).await?;
        Ok(raw.map(Bytes::from))
    }

    async fn summary_put(&self, repository: &str, part: SummaryPart, bytes: Bytes) -> Result<()> {
        let (paths, repo) = (self.paths(), repository.to_string());
        blocking(move || records::summary_put(&paths, &repo, part, &bytes)).await
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        Ok(self.repositories_after(None, None).await?.names)
    }

    async fn repositories_after(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<NamePage> {
        let (indexes, root) = (self.indexes.clone(), self.root.clone());
        let after = after.map(str::to_string);
        blocking(move || Ok(indexes.catalog_page(&root, after.as_deref(), limit)?)).await
    }

    async fn repository_names_unchecked(&self) -> Result<Vec<String>> {
        let (indexes, root) = (self.indexes.clone(), self.root.clone());
        blocking(move || Ok(indexes.catalog_names_unchecked(&root)?)).await
    }

    async fn tags_after(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<NamePage>> {
        let (indexes, root) = (self.indexes.clone(), self.root.clone());
        let (repo, after) = (repository.to_string(), after.map(str::to_string));
        blocking(move || Ok(indexes.tags_page(&root, &repo, after.as_deref(), limit)?)).await
    }

    async fn outbox_put(&self, id: &str, record: Bytes) -> Result<()> {
        self.fs_outbox_put(id, record).await
    }

    async fn outbox_get(&self, id: &str) -> Result<Option<Bytes>> {
        self.fs_outbox_get(id).await
    }

    async fn outbox_list(&self) -> Result<Vec<String>> {
        self.fs_outbox_list().await
    }

    async fn outbox_delete(&self, id: &str) -> Result<()> {
        self.fs_outbox_delete(id).await
    }

    async fn outbox_claim(&self, id: &str, owner: &str, ttl: std::time::Duration) -> Result<bool> {
        self.fs_outbox_claim(id, owner, ttl).await
    }

    async fn outbox_release(&self, id: &str, owner: &str) -> Result<()> {
        self.fs_outbox_release(id, owner).await
    }
}

#[cfg(test)]
mod tests;
