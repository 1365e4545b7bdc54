//! In-memory backend, for unit tests of the logic above storage.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::digest::Hasher;
use crate::{
    BlobRead, ByteRange, ByteStream, Descriptor, Digest, GcReport, ManifestMeta, Result, Storage,
    StorageError, UploadStatus,
};

#[derive(Default)]
pub struct MemoryStorage {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    blobs: HashMap<Digest, Bytes>,
    /// When each blob was last stored or reused, for the GC grace period.
    blob_touched: HashMap<Digest, Instant>,
    repos: BTreeMap<String, Repo>,
    uploads: HashMap<String, Upload>,
}

#[derive(Default)]
struct Repo {
    /// Linked blobs, with when they were linked.
    layers: BTreeMap<Digest, Instant>,
    manifests: HashMap<Digest, ManifestMeta>,
    tags: BTreeMap<String, Digest>,
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
    fn upload(&mut self, repository: &str, id: &str) -> Result<&mut Upload> {
        match self.uploads.get_mut(id) {
            Some(u) if u.repository == repository => Ok(u),
            _ => Err(StorageError::UploadUnknown),
        }
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
        self.with(|s| {
            if !s.blobs.contains_key(digest) {
                return Err(StorageError::BlobUnknown);
            }
            s.blob_touched.insert(digest.clone(), Instant::now());
            let repo = s.repos.entry(repository.to_string()).or_default();
            repo.layers.insert(digest.clone(), Instant::now());
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

    async fn upload_complete(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
    ) -> Result<u64> {
        if let Some(data) = data {
            self.upload_append(repository, id, None, data).await?;
        }
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
            let size = upload.data.len() as u64;
            s.blobs.insert(digest.clone(), Bytes::from(upload.data));
            s.blob_touched.insert(digest.clone(), Instant::now());
            let repo = s.repos.entry(repository.to_string()).or_default();
            repo.layers.insert(digest.clone(), Instant::now());
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
        Ok(self.with(|s| {
            let old = |t: &Instant| t.elapsed() > grace;
            let mut report = GcReport::default();
            let mut live = HashSet::new();
            for repo in s.repos.values_mut() {
                let needed: Option<HashSet<Digest>> = repo
                    .manifests
                    .values()
                    .map(|m| m.references.clone())
                    .collect::<Option<Vec<_>>>()
                    .map(|refs| refs.into_iter().flatten().collect());
                live.extend(repo.manifests.keys().cloned());
                repo.layers.retain(|d, linked| {
                    let keep = needed.as_ref().is_none_or(|n| n.contains(d)) || !old(linked);
                    if keep {
                        live.insert(d.clone());
                    } else {
                        report.links_removed += 1;
                    }
                    keep || dry_run
                });
            }
            let State {
                blobs,
                blob_touched,
                ..
            } = s;
            blobs.retain(|d, bytes| {
                let keep = live.contains(d) || blob_touched.get(d).is_some_and(|t| !old(t));
                if !keep {
                    report.blobs_removed += 1;
                    report.bytes_freed += bytes.len() as u64;
                }
                keep || dry_run
            });
            report
        }))
    }

    async fn manifest_put(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
        meta: &ManifestMeta,
        tag: Option<&str>,
    ) -> Result<()> {
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
            s.blob_touched.insert(digest.clone(), Instant::now());
            let repo = s.repos.entry(repository.to_string()).or_default();
            repo.manifests.insert(digest.clone(), meta.clone());
            if let Some(tag) = tag {
                repo.tags.insert(tag.to_string(), digest.clone());
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
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn shared_suite() {
        crate::testsuite::run_all(&super::MemoryStorage::new()).await;
    }
}
