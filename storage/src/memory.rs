//! In-memory backend, for unit tests of the logic above storage.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::digest::Hasher;
use crate::gc::{self, GcStore, Stored};
use crate::layout::{Layout, LinkKind};
use crate::{
    BlobRead, ByteRange, ByteStream, Descriptor, Digest, GcReport, ManifestMeta, ManifestRecord,
    PullTimes, Result, Storage, StorageError, SummaryPart, TagRecord, UploadStatus,
};

#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
    /// Held for reading by every write that links a blob, for writing by
    /// garbage collection, which reads and deletes one key at a time.
    gc_lock: tokio::sync::RwLock<()>,
    /// Event outbox records and claims (owner, expiry), by id.
    outbox: Mutex<Outbox>,
}

#[derive(Default)]
struct Outbox {
    records: BTreeMap<String, Bytes>,
    claims: HashMap<String, Vec<u8>>,
}

/// Keys are spelled as on a filesystem (any spelling would do: they are
/// only how garbage collection names what it finds).
const LAYOUT: Layout = Layout::Fs;

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Bytes>,
    /// When each blob was last stored or reused, for the GC grace period.
    blob_touched: HashMap<Digest, SystemTime>,
    repos: BTreeMap<String, Repo>,
    uploads: HashMap<String, Upload>,
}

#[derive(Default)]
struct Repo {
    /// Linked blobs, with when they were linked.
    layers: BTreeMap<Digest, SystemTime>,
    manifests: HashMap<Digest, ManifestMeta>,
    tags: BTreeMap<String, Digest>,
    /// When each manifest and tag was last pushed, and manifests last pulled.
    manifest_pushed: HashMap<Digest, SystemTime>,
    tag_pushed: HashMap<String, SystemTime>,
    pulls: PullTimes,
    summaries: HashMap<SummaryPart, Bytes>,
}

struct Upload {
    repository: String,
    data: Vec<u8>,
    started: std::time::Instant,
}

impl MemoryStorage {
    pub fn new() -> MemoryStorage {
        MemoryStorage::default()
    }

    fn outbox_state(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut state)
    }
}

/// Drain a stream into a buffer; bytes before an error are kept.
async fn drain(mut data: ByteStream, into: &mut Vec<u8>) -> Option<std::io::Error> {
    while let Some(item) = data.next().await {
        match item {
            Ok(chunk) => into.extend_from_slice(&chunk),
            Err(e) => return Some(e),
        }
    }
    None
}

impl State {
    /// Every object, keyed as the [`LAYOUT`] spells it: blobs, layer links
    /// and manifest links (manifests carry no time: they are never swept).
    fn objects(&self) -> Vec<Stored> {
        let mut out = Vec::new();
        for (digest, bytes) in &self.blobs {
            out.push(Stored {
                key: LAYOUT.blob(digest),
                size: bytes.len() as u64,
                // Never touched: as old as can be.
                modified: self.blob_touched.get(digest).copied().unwrap_or(UNIX_EPOCH),
            });
        }
        for (name, repo) in &self.repos {
            for (digest, linked) in &repo.layers {
                out.push(Stored {
                    key: LAYOUT.layer_link(name, digest),
                    size: 0,
                    modified: *linked,
                });
            }
            for digest in repo.manifests.keys() {
                out.push(Stored {
                    key: LAYOUT.manifest_link(name, digest),
                    size: 0,
                    modified: SystemTime::now(),
                });
            }
        }
        out
    }

    fn upload(&mut self, repository: &str, id: &str) -> Result<&mut Upload> {
        match self.uploads.get_mut(id) {
            Some(u) if u.repository == repository => Ok(u),
            _ => Err(StorageError::UploadUnknown),
        }
    }
}

/// Garbage collection sees the state as the keys of a storage layout.
#[async_trait]
impl GcStore for MemoryStorage {
    fn layout(&self) -> Layout {
        LAYOUT
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stored>> {
        let mut objects = self.with(|s| s.objects());
        objects.retain(|o| o.key.starts_with(prefix));
        Ok(objects)
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>> {
        if let Some(digest) = LAYOUT.parse_blob(key) {
            return Ok(self.with(|s| s.blobs.get(&digest).cloned()));
        }
        let Some(link) = LAYOUT.parse_link(key) else {
            return Ok(None);
        };
        // Outer `None`: no such link; inner `None`: a layer link, empty.
        let found = self.with(|s| {
            let repo = s.repos.get(&link.repository)?;
            match link.kind {
                LinkKind::Layer => repo.layers.contains_key(&link.digest).then_some(None),
                LinkKind::Manifest => repo.manifests.get(&link.digest).cloned().map(Some),
            }
        });
        Ok(match found {
            None => None,
            Some(None) => Some(Bytes::new()),
            Some(Some(meta)) => Some(Bytes::from(
                serde_json::to_vec(&meta).map_err(std::io::Error::other)?,
            )),
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if let Some(digest) = LAYOUT.parse_blob(key) {
            self.with(|s| {
                s.blobs.remove(&digest);
                s.blob_touched.remove(&digest);
            });
        } else if let Some(link) = LAYOUT.parse_link(key) {
            self.with(|s| {
                let Some(repo) = s.repos.get_mut(&link.repository) else {
                    return;
                };
                match link.kind {
                    LinkKind::Layer => {
                        repo.layers.remove(&link.digest);
                    }
                    LinkKind::Manifest => {
                        repo.manifests.remove(&link.digest);
                    }
                }
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.with(|s| s.blobs.get(digest).map(|b| b.len() as u64)))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        let blob = self
            .with(|s| s.blobs.get(digest).cloned())
            .ok_or(StorageError::BlobUnknown)?;
        let size = blob.len() as u64;
        let range = match range {
            None => None,
            Some(r) => Some(
                r.resolve(size)
                    .ok_or(StorageError::RangeNotSatisfiable { size })?,
            ),
        };
        let body = match range {
            Some((start, end)) => blob.slice(start as usize..=end as usize),
            None => blob,
        };
        Ok(BlobRead {
            size,
            range,
            stream: Box::pin(futures::stream::iter([Ok(body)])),
        })
    }

    async fn blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        Ok(self.with(|s| s.blobs.get(digest).cloned()))
    }

    async fn blob_linked(&self, repository: &str, digest: &Digest) -> Result<bool> {
        Ok(self.with(|s| {
            s.blobs.contains_key(digest)
                && s.repos
                    .get(repository)
                    .is_some_and(|r| r.layers.contains_key(digest))
        }))
    }

    async fn link_blob(&self, repository: &str, digest: &Digest) -> Result<()> {
        let _no_gc = self.gc_lock.read().await;
        self.with(|s| {
            if !s.blobs.contains_key(digest) {
                return Err(StorageError::BlobUnknown);
            }
            s.blob_touched.insert(digest.clone(), SystemTime::now());
            let repo = s.repos.entry(repository.to_string()).or_default();
            repo.layers.insert(digest.clone(), SystemTime::now());
            Ok(())
        })
    }

    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        Ok(self.with(|s| {
            s.repos
                .get_mut(repository)
                .is_some_and(|r| r.layers.remove(digest).is_some())
        }))
    }

    async fn upload_create(&self, repository: &str) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.with(|s| {
            s.uploads.insert(
                id.clone(),
                Upload {
                    repository: repository.to_string(),
                    data: Vec::new(),
                    started: std::time::Instant::now(),
                },
            )
        });
        Ok(UploadStatus {
            id,
            repository: repository.to_string(),
            offset: 0,
        })
    }

    async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus> {
        self.with(|s| {
            let u = s.upload(repository, id)?;
            Ok(UploadStatus {
                id: id.to_string(),
                repository: repository.to_string(),
                offset: u.data.len() as u64,
            })
        })
    }

    async fn upload_append(
        &self,
        repository: &str,
        id: &str,
        start: Option<u64>,
        data: ByteStream,
    ) -> Result<UploadStatus> {
        let offset = self.upload_status(repository, id).await?.offset;
        if start.is_some_and(|s| s != offset) {
            return Err(StorageError::RangeMismatch { offset });
        }
        let mut buf = Vec::new();
        let error = drain(data, &mut buf).await;
        let status = self.with(|s| -> Result<UploadStatus> {
            let u = s.upload(repository, id)?;
            // Checked again where the bytes land: another append may have
            // landed while this body was read.
            let now = u.data.len() as u64;
            if start.is_some_and(|s| s != now) {
                return Err(StorageError::RangeMismatch { offset: now });
            }
            u.data.extend_from_slice(&buf);
            Ok(UploadStatus {
                id: id.to_string(),
                repository: repository.to_string(),
                offset: u.data.len() as u64,
            })
        })?;
        match error {
            Some(e) => Err(StorageError::BodyInterrupted(e)),
            None => Ok(status),
        }
    }

    async fn upload_complete_notify(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64> {
        if let Some(data) = data {
            self.upload_append(repository, id, None, data).await?;
        }
        let _no_gc = self.gc_lock.read().await;
        self.with(|s| {
            s.upload(repository, id)?;
            let upload = s.uploads.remove(id).ok_or(StorageError::UploadUnknown)?;
            let mut hasher = Hasher::new(digest.algorithm());
            hasher.update(&upload.data);
            let actual = hasher.finish();
            if &actual != digest {
                return Err(StorageError::DigestMismatch {
                    expected: digest.clone(),
                    actual,
                });
            }
            let _ = matched.send(());
            let size = upload.data.len() as u64;
            s.blobs.insert(digest.clone(), Bytes::from(upload.data));
            s.blob_touched.insert(digest.clone(), SystemTime::now());
            let repo = s.repos.entry(repository.to_string()).or_default();
            repo.layers.insert(digest.clone(), SystemTime::now());
            Ok(size)
        })
    }

    async fn upload_cancel(&self, repository: &str, id: &str) -> Result<()> {
        self.with(|s| {
            s.upload(repository, id)?;
            s.uploads.remove(id);
            Ok(())
        })
    }

    async fn purge_uploads(&self, max_age: std::time::Duration) -> Result<usize> {
        Ok(self.with(|s| {
            let before = s.uploads.len();
            s.uploads.retain(|_, u| u.started.elapsed() <= max_age);
            before - s.uploads.len()
        }))
    }

    async fn collect_garbage(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
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
        let _no_gc = self.gc_lock.read().await;
        self.with(|s| {
            let repo = s.repos.get(repository);
            for needed in meta.references.iter().flatten() {
                let linked = repo.is_some_and(|r| {
                    r.layers.contains_key(needed) || r.manifests.contains_key(needed)
                });
                if !linked || !s.blobs.contains_key(needed) {
                    return Err(StorageError::ReferenceUnknown(needed.clone()));
                }
            }
            s.blobs.entry(digest.clone()).or_insert(bytes);
            s.blob_touched.insert(digest.clone(), SystemTime::now());
            let repo = s.repos.entry(repository.to_string()).or_default();
            repo.manifests.insert(digest.clone(), meta.clone());
            let now = SystemTime::now();
            repo.manifest_pushed.insert(digest.clone(), now);
            if let Some(tag) = tag {
                repo.tags.insert(tag.to_string(), digest.clone());
                repo.tag_pushed.insert(tag.to_string(), now);
            }
            Ok(())
        })
    }

    async fn manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        Ok(self.with(|s| {
            s.repos
                .get(repository)
                .and_then(|r| r.manifests.get(digest).cloned())
        }))
    }

    async fn manifest_delete(&self, repository: &str, digest: &Digest) -> Result<bool> {
        Ok(self.with(|s| {
            let Some(repo) = s.repos.get_mut(repository) else {
                return false;
            };
            repo.tags.retain(|_, d| d != digest);
            repo.manifests.remove(digest).is_some()
        }))
    }

    async fn tag_resolve(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        Ok(self.with(|s| {
            s.repos
                .get(repository)
                .and_then(|r| r.tags.get(tag).cloned())
        }))
    }

    async fn tag_delete(&self, repository: &str, tag: &str) -> Result<bool> {
        Ok(self.with(|s| {
            s.repos
                .get_mut(repository)
                .is_some_and(|r| r.tags.remove(tag).is_some())
        }))
    }

    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>> {
        Ok(self.with(|s| {
            s.repos
                .get(repository)
                .map(|r| r.tags.keys().cloned().collect())
        }))
    }

    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        Ok(self.with(|s| {
            let Some(repo) = s.repos.get(repository) else {
                return Vec::new();
            };
            let mut out: Vec<Descriptor> = repo
                .manifests
                .iter()
                .filter(|(_, m)| m.subject.as_ref() == Some(subject))
                .map(|(d, m)| Descriptor {
                    media_type: m.media_type.clone(),
                    digest: d.clone(),
                    size: s.blobs.get(d).map(|b| b.len() as u64).unwrap_or(0),
                    artifact_type: m.artifact_type.clone(),
                    annotations: m.annotations.clone(),
                })
                .collect();
            out.sort_by(|a, b| a.digest.cmp(&b.digest));
            out
        }))
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        Ok(self.with(|s| s.repos.keys().cloned().collect()))
    }

    async fn outbox_put(&self, id: &str, record: Bytes) -> Result<()> {
        let id = crate::outbox::checked(id)?.to_string();
        self.outbox_state().records.insert(id, record);
        Ok(())
    }

    async fn outbox_get(&self, id: &str) -> Result<Option<Bytes>> {
        crate::outbox::checked(id)?;
        Ok(self.outbox_state().records.get(id).cloned())
    }

    async fn outbox_list(&self) -> Result<Vec<String>> {
        Ok(self.outbox_state().records.keys().cloned().collect())
    }

    async fn outbox_delete(&self, id: &str) -> Result<()> {
        crate::outbox::checked(id)?;
        let mut outbox = self.outbox_state();
        outbox.records.remove(id);
        outbox.claims.remove(id);
        Ok(())
    }

    async fn outbox_claim(&self, id: &str, owner: &str, ttl: Duration) -> Result<bool> {
        use crate::outbox::Claim;
        crate::outbox::checked(id)?;
        let mut outbox = self.outbox_state();
        if let Some(current) = outbox.claims.get(id) {
            if !Claim::can_take(current, owner) {
                return Ok(false);
            }
        }
        let claim = Claim::new(owner, ttl).to_bytes()?;
        outbox.claims.insert(id.to_string(), claim);
        Ok(true)
    }

    async fn outbox_release(&self, id: &str, owner: &str) -> Result<()> {
        crate::outbox::checked(id)?;
        let mut outbox = self.outbox_state();
        if outbox
            .claims
            .get(id)
            .is_some_and(|c| crate::outbox::Claim::is_owned_by(c, owner))
        {
            outbox.claims.remove(id);
        }
        Ok(())
    }
    async fn tag_records(&self, repository: &str) -> Result<Vec<TagRecord>> {
        Ok(self.with(|s| {
            let Some(repo) = s.repos.get(repository) else {
                return Vec::new();
            };
            repo.tags
                .iter()
                .map(|(tag, digest)| TagRecord {
                    tag: tag.clone(),
                    digest: digest.clone(),
                    pushed: repo.tag_pushed.get(tag).copied().unwrap_or(UNIX_EPOCH),
                })
                .collect()
        }))
    }

    async fn manifest_records(&self, repository: &str) -> Result<Vec<ManifestRecord>> {
        Ok(self.with(|s| {
            let Some(repo) = s.repos.get(repository) else {
                return Vec::new();
            };
            let mut out: Vec<ManifestRecord> = repo
                .manifests
                .keys()
                .map(|digest| ManifestRecord {
                    digest: digest.clone(),
                    pushed: repo
                        .manifest_pushed
                        .get(digest)
                        .copied()
                        .unwrap_or(UNIX_EPOCH),
                })
                .collect();
            out.sort_by(|a, b| a.digest.cmp(&b.digest));
            out
        }))
    }

    async fn record_pulls(&self, repository: &str, pulls: &PullTimes) -> Result<()> {
        self.with(|s| {
            if let Some(repo) = s.repos.get_mut(repository) {
                crate::records::merge_pulls(&mut repo.pulls, pulls);
            }
        });
        Ok(())
    }

    async fn forget_pulls(&self, repository: &str, digests: &[Digest]) -> Result<()> {
        self.with(|s| {
            if let Some(repo) = s.repos.get_mut(repository) {
                repo.pulls.retain(|d, _| !digests.contains(d));
            }
        });
        Ok(())
    }

    async fn tags_stamp(&self, repository: &str) -> Result<Option<String>> {
        Ok(self.with(|s| {
            let repo = s.repos.get(repository)?;
            let lines = repo
                .tags
                .iter()
                .map(|(tag, digest)| {
                    let at = repo.tag_pushed.get(tag).copied().unwrap_or(UNIX_EPOCH);
                    let nanos = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
                    format!("{tag} {digest} {nanos}")
                })
                .collect();
            Some(crate::records::tags_stamp_of(lines))
        }))
    }

    async fn summary_get(&self, repository: &str, part: SummaryPart) -> Result<Option<Bytes>> {
        Ok(self.with(|s| s.repos.get(repository)?.summaries.get(&part).cloned()))
    }

    async fn summary_put(&self, repository: &str, part: SummaryPart, bytes: Bytes) -> Result<()> {
        self.with(|s| {
            if let Some(repo) = s.repos.get_mut(repository) {
                repo.summaries.insert(part, bytes);
            }
        });
        Ok(())
    }

    async fn pulls(&self, repository: &str) -> Result<PullTimes> {
        Ok(self.with(|s| {
            s.repos
                .get(repository)
                .map(|r| r.pulls.clone())
                .unwrap_or_default()
        }))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn shared_suite() {
        crate::testsuite::run_all(&super::MemoryStorage::new()).await;
    }

    #[tokio::test]
    async fn a_blob_relinked_during_a_collection_is_kept() {
        let storage = super::MemoryStorage::new();
        crate::gc::scenarios::a_blob_relinked_during_a_collection_is_kept(&storage, &storage).await;
    }
}
