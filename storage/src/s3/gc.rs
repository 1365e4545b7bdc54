//! Garbage collection of the bucket: the one collector ([`crate::gc`]) over
//! S3 listings, with big blobs' pointers followed to their data.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{S3Storage, LAYOUT};
use crate::gc::{self, BlobBytes, GcStore, Stored};
use crate::layout::Layout;
use crate::{Digest, GcReport, Result};

impl S3Storage {
    /// Collect garbage; `after_mark` runs between choosing the candidates
    /// and looking at the links once more (see [`gc::collect`]).
    pub(super) async fn collect_garbage_pausing(
        &self,
        grace: Duration,
        dry_run: bool,
        after_mark: impl std::future::Future<Output = ()>,
    ) -> Result<GcReport> {
        let _exclusive = self.gc_lock.write().await;
        gc::collect(self, grace, dry_run, after_mark).await
    }
}

#[async_trait]
impl GcStore for S3Storage {
    fn layout(&self) -> Layout {
        LAYOUT
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stored>> {
        S3Storage::list(self, prefix).await
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_bytes(key).await?.map(|(bytes, _)| bytes))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        S3Storage::delete(self, key).await
    }

    /// Empty objects are pointers (or the empty blob): read where they point.
    async fn blob_bytes_of(&self, blob: &Stored) -> Result<BlobBytes> {
        if blob.size != 0 {
            return Ok(BlobBytes::Inline);
        }
        let Some(head) = self.head_opt(&blob.key).await? else {
            return Ok(BlobBytes::Gone);
        };
        Ok(match Self::pointer_of(&head.attributes)? {
            Some((key, size)) => BlobBytes::At { key, size },
            None => BlobBytes::Inline,
        })
    }

    fn forget_blob(&self, digest: &Digest) {
        self.forget_pointer(digest);
    }
}
