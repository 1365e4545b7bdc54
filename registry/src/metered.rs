//! Storage operations counted by backend, operation and result, for
//! `berth_storage_operations_total`: a [`Storage`] that forwards every call to
//! the real backend and counts how it ended. Calls are counted when their
//! future completes (a blob read's stream is counted when it opens).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use berth_storage::{
    BlobRead, ByteRange, ByteStream, Descriptor, DescriptorStream, Digest, GcReport, ManifestMeta,
    ManifestRecord, NamePage, PullTimes, Result, Storage, StorageError, SummaryPart, TagRecord,
    UploadStatus,
};
use bytes::Bytes;

use crate::metrics::Metrics;

/// How a storage call ended: `ok`; `refused` when the request itself was at
/// fault (unknown blob or upload, wrong digest or offset, a body cut off);
/// `error` when the storage failed (I/O, unavailable, corrupt data).
pub fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(StorageError::Io(_) | StorageError::Unavailable(_) | StorageError::Corrupt(_)) => {
            "error"
        }
        Err(_) => "refused",
    }
}

/// A backend with its calls counted.
pub struct MeteredStorage {
    inner: Arc<dyn Storage>,
    backend: &'static str,
    metrics: Metrics,
}

impl MeteredStorage {
    /// `backend`: the label value, e.g. "fs" or "s3".
    pub fn new(inner: Arc<dyn Storage>, backend: &'static str, metrics: Metrics) -> MeteredStorage {
        MeteredStorage {
            inner,
            backend,
            metrics,
        }
    }

    async fn observe<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let result = call.await;
        self.metrics
            .record_storage(self.backend, operation, outcome(&result));
        result
    }
}

#[async_trait]
impl Storage for MeteredStorage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        self.observe("blob_size", self.inner.blob_size(digest))
            .await
    }
    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        self.observe("blob_read", self.inner.blob_read(digest, range))
            .await
    }
    async fn blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        self.observe("blob_bytes", self.inner.blob_bytes(digest))
            .await
    }
    async fn blob_redirect_url(&self, digest: &Digest) -> Result<Option<String>> {
        self.observe("blob_redirect_url", self.inner.blob_redirect_url(digest))
            .await
    }
    async fn blob_linked(&self, repository: &str, digest: &Digest) -> Result<bool> {
        self.observe("blob_linked", self.inner.blob_linked(repository, digest))
            .await
    }
    async fn link_blob(&self, repository: &str, digest: &Digest) -> Result<()> {
        self.observe("link_blob", self.inner.link_blob(repository, digest))
            .await
    }
    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        self.observe("unlink_blob", self.inner.unlink_blob(repository, digest))
            .await
    }
    async fn upload_create(&self, repository: &str) -> Result<UploadStatus> {
        self.observe("upload_create", self.inner.upload_create(repository))
            .await
    }
    async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus> {
        self.observe("upload_status", self.inner.upload_status(repository, id))
            .await
    }
    async fn upload_append(
        &self,
        repository: &str,
        id: &str,
        start: Option<u64>,
        data: ByteStream,
    ) -> Result<UploadStatus> {
        let call = self.inner.upload_append(repository, id, start, data);
        self.observe("upload_append", call).await
    }
    async fn upload_complete_notify(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
        matched: tokio::sync::oneshot::Sender<()>,
    ) -> Result<u64> {
        let call = self
            .inner
            .upload_complete_notify(repository, id, digest, data, matched);
        self.observe("upload_complete", call).await
    }
    async fn upload_cancel(&self, repository: &str, id: &str) -> Result<()> {
        self.observe("upload_cancel", self.inner.upload_cancel(repository, id))
            .await
    }
    async fn purge_uploads(&self, max_age: Duration) -> Result<usize> {
        self.observe("purge_uploads", self.inner.purge_uploads(max_age))
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
        let call = self
            .inner
            .manifest_put(repository, digest, bytes, meta, tag);
        self.observe("manifest_put", call).await
    }
    async fn manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        self.observe(
            "manifest_meta",
            self.inner.manifest_meta(repository, digest),
        )
        .await
    }
    async fn manifest_get(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<(ManifestMeta, Bytes)>> {
        self.observe("manifest_get", self.inner.manifest_get(repository, digest))
            .await
    }
    async fn manifest_delete(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let call = self.inner.manifest_delete(repository, digest);
        self.observe("manifest_delete", call).await
    }
    async fn tag_resolve(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        self.observe("tag_resolve", self.inner.tag_resolve(repository, tag))
            .await
    }
    async fn tag_delete(&self, repository: &str, tag: &str) -> Result<bool> {
        self.observe("tag_delete", self.inner.tag_delete(repository, tag))
            .await
    }
    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>> {
        self.observe("tags", self.inner.tags(repository)).await
    }
    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        self.observe("referrers", self.inner.referrers(repository, subject))
            .await
    }
    async fn referrers_after(
        &self,
        repository: &str,
        subject: &Digest,
        after: Option<&Digest>,
    ) -> Result<DescriptorStream> {
        let call = self.inner.referrers_after(repository, subject, after);
        self.observe("referrers_after", call).await
    }
    async fn repositories(&self) -> Result<Vec<String>> {
        self.observe("repositories", self.inner.repositories())
            .await
    }
    async fn repositories_after(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<NamePage> {
        self.observe(
            "repositories_after",
            self.inner.repositories_after(after, limit),
        )
        .await
    }
    async fn repository_names_unchecked(&self) -> Result<Vec<String>> {
        let call = self.inner.repository_names_unchecked();
        self.observe("repository_names_unchecked", call).await
    }
    async fn tags_after(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<NamePage>> {
        self.observe(
            "tags_after",
            self.inner.tags_after(repository, after, limit),
        )
        .await
    }
    async fn tag_records(&self, repository: &str) -> Result<Vec<TagRecord>> {
        self.observe("tag_records", self.inner.tag_records(repository))
            .await
    }
    async fn manifest_records(&self, repository: &str) -> Result<Vec<ManifestRecord>> {
        self.observe("manifest_records", self.inner.manifest_records(repository))
            .await
    }
    async fn record_pulls(&self, repository: &str, pulls: &PullTimes) -> Result<()> {
        self.observe("record_pulls", self.inner.record_pulls(repository, pulls))
            .await
    }
    async fn pulls(&self, repository: &str) -> Result<PullTimes> {
        self.observe("pulls", self.inner.pulls(repository)).await
    }
    async fn forget_pulls(&self, repository: &str, digests: &[Digest]) -> Result<()> {
        self.observe("forget_pulls", self.inner.forget_pulls(repository, digests))
            .await
    }
    async fn tags_stamp(&self, repository: &str) -> Result<Option<String>> {
        self.observe("tags_stamp", self.inner.tags_stamp(repository))
            .await
    }
    async fn summary_get(&self, repository: &str, part: SummaryPart) -> Result<Option<Bytes>> {
        self.observe("summary_get", self.inner.summary_get(repository, part))
            .await
    }
    async fn summary_put(&self, repository: &str, part: SummaryPart, bytes: Bytes) -> Result<()> {
        self.observe(
            "summary_put",
            self.inner.summary_put(repository, part, bytes),
        )
        .await
    }
    async fn outbox_put(&self, id: &str, record: Bytes) -> Result<()> {
        self.observe("outbox_put", self.inner.outbox_put(id, record))
            .await
    }
    async fn outbox_get(&self, id: &str) -> Result<Option<Bytes>> {
        self.observe("outbox_get", self.inner.outbox_get(id)).await
    }
    async fn outbox_list(&self) -> Result<Vec<String>> {
        self.observe("outbox_list", self.inner.outbox_list()).await
    }
    async fn outbox_delete(&self, id: &str) -> Result<()> {
        self.observe("outbox_delete", self.inner.outbox_delete(id))
            .await
    }
    async fn outbox_claim(&self, id: &str, owner: &str, ttl: Duration) -> Result<bool> {
        self.observe("outbox_claim", self.inner.outbox_claim(id, owner, ttl))
            .await
    }
    async fn outbox_release(&self, id: &str, owner: &str) -> Result<()> {
        self.observe("outbox_release", self.inner.outbox_release(id, owner))
            .await
    }
    async fn lease_acquire(&self, name: &str, owner: &str, ttl: Duration) -> Result<bool> {
        self.observe("lease_acquire", self.inner.lease_acquire(name, owner, ttl))
            .await
    }
    async fn lease_release(&self, name: &str, owner: &str) -> Result<()> {
        self.observe("lease_release", self.inner.lease_release(name, owner))
            .await
    }
    async fn collect_garbage(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        self.observe(
            "collect_garbage",
            self.inner.collect_garbage(grace, dry_run),
        )
        .await
    }
}

/// `berth_s3_requests_total{method}`: what the S3 backend counted, read at each scrape
/// (nothing until [`Metrics::watch_s3`] names the backend).
pub(crate) struct S3RequestsCollector(pub Arc<std::sync::OnceLock<Arc<berth_storage::S3Storage>>>);

impl std::fmt::Debug for S3RequestsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3RequestsCollector")
    }
}

impl prometheus_client::collector::Collector for S3RequestsCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::result::Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let Some(s3) = self.0.get() else {
            return Ok(());
        };
        let c = s3.request_counts();
        let mut family = encoder.encode_descriptor(
            "s3_requests",
            "HTTP requests sent to S3 by this process, by method",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (method, n) in [
            ("GET", c.get),
            ("HEAD", c.head),
            ("PUT", c.put),
            ("POST", c.post),
            ("DELETE", c.delete),
            ("other", c.other),
        ] {
            let labels = [("method", method)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_are_counted_by_how_they_ended() {
        let metrics = Metrics::new(None);
        let s = MeteredStorage::new(
            Arc::new(berth_storage::MemoryStorage::new()),
            "memory",
            metrics.clone(),
        );
        let missing = Digest::sha256_of(b"missing");
        assert_eq!(s.blob_size(&missing).await.expect("size"), None);
        assert!(s.upload_status("app", "nope").await.is_err());
        let text = metrics.render();
        assert!(
            text.contains(r#"berth_storage_operations_total{backend="memory",operation="blob_size",result="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"berth_storage_operations_total{backend="memory",operation="upload_status",result="refused"} 1"#),
            "{text}"
        );
        assert_eq!(
            outcome::<()>(&Err(StorageError::Unavailable("down".into()))),
            "error"
        );
    }
}
