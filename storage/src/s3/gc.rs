//! Garbage collection of the bucket: the one collector ([`crate::gc`]) over
//! S3 listings, with big blobs' pointers followed to their data.

use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};

use super::{s3_error, S3Storage, LAYOUT};
use crate::gc::{self, BlobBytes, GcStore, Pages, Stored, Versioned};
use crate::layout::Layout;
use crate::{Digest, GcReport, Result};

/// Where a prefix listing stands between pages.
enum Listing {
    First,
    Next(String),
    Done,
}

impl S3Storage {
    /// Collect garbage; `after_mark` runs between choosing the candidates
    /// and looking at the links once more (see [`gc::collect`]).
    pub(crate) async fn collect_garbage_pausing(
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

    /// ListObjectsV2 on the raw prefix (object_store's `list` only lists
    /// folders), a page (up to 1000 keys) at a time, with each ETag.
    fn list_prefix<'a>(&'a self, prefix: &'a str) -> Pages<'a> {
        let full = format!("{}{prefix}", self.prefix);
        futures::stream::try_unfold(Listing::First, move |state| {
            let full = full.clone();
            async move {
                let page_token = match state {
                    Listing::First => None,
                    Listing::Next(token) => Some(token),
                    Listing::Done => return Ok(None),
                };
                let options = PaginatedListOptions {
                    page_token,
                    ..Default::default()
                };
                let page = self
                    .bulk_store
                    .list_paginated(Some(&full), options)
                    .await
                    .map_err(s3_error)?;
                let items: Vec<Versioned> = page
                    .result
                    .objects
                    .into_iter()
                    .map(|m| self.versioned(m))
                    .collect();
                let next = page.page_token.map_or(Listing::Done, Listing::Next);
                Ok(Some((items, next)))
            }
        })
        .boxed()
    }

    async fn folders(&self, folder: &str) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.path(folder.trim_end_matches('/'))))
            .await
            .map_err(s3_error)?;
        Ok(listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    async fn write(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.put(key, bytes).await
    }

    /// One DeleteObjects request; keys it could not delete (or all of them,
    /// on a server without DeleteObjects) are deleted one by one.
    async fn delete_many(&self, keys: Vec<String>) -> Result<()> {
        let paths: Vec<object_store::Result<Path>> =
            keys.iter().map(|k| Ok(self.path(k))).collect();
        let results: Vec<object_store::Result<Path>> = self
            .bulk_store
            .delete_stream(futures::stream::iter(paths).boxed())
            .collect()
            .await;
        let failure = results.iter().find_map(|r| match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => Some(e.to_string()),
        });
        if let Some(error) = failure {
            // Which key failed is not always known: delete every one (a
            // key already gone is no error).
            tracing::debug!(%error, "batched delete failed: deleting one by one");
            for key in &keys {
                S3Storage::delete(self, key).await?;
            }
        }
        Ok(())
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

impl S3Storage {
    /// A listed object with its ETag as its version (size and time when the
    /// server lists none).
    fn versioned(&self, meta: ObjectMeta) -> Versioned {
        let item = Stored {
            key: self.rel_of(&meta.location).to_string(),
            size: meta.size,
            modified: SystemTime::from(meta.last_modified),
        };
        match meta.e_tag {
            Some(e_tag) => (item, e_tag),
            None => gc::versioned(item),
        }
    }
}
