//! Catalog and tag pages from sorted S3 listings (ListObjectsV2 with
//! `start-after`), so a page of 100 names costs a request or two, not a
//! listing of every repository or tag.
//!
//! Repository names nest (`team/app/web`), so the tree under `repositories/`
//! cannot give the catalog in order. Instead every repository has an empty
//! object `catalog/<name>!` (see [`END`]), written before its first link by each process
//! that writes to it (once per process and repository), so the keys under
//! `catalog/` sort exactly as the names do. A registry written by an older
//! version has no such objects: until `catalog-complete` exists, the first
//! catalog page walks the tree once, writes the missing objects and then the
//! marker. Repositories are never removed on S3 (an emptied one keeps a
//! `_kept` marker and stays listed), so an entry never outlives its repository.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::{ObjectMeta, ObjectStore};

use super::{s3_error, S3Storage, LAYOUT};
use crate::layout::{parse_tag, LinkKind, CATALOG, CATALOG_COMPLETE};
use crate::{NamePage, Result, Storage};

/// Repository names remembered as indexed; past this the set is cleared
/// (costing one PUT per repository written to again).
const NOTED_MAX: usize = 1_000_000;
/// Index objects written at once while rebuilding the catalog.
const REBUILD_WRITES: usize = 16;
/// A byte sorting just before `=`, the first byte of hashed tag names (and
/// one `object_store` leaves as it is in a key).
const BEFORE_HASHED: &str = ";";
/// S3 page size of the listing of hashed tag names (rare: most repositories
/// have none, and the listing stops at the first plain tag).
const HASHED_PAGE_KEYS: usize = 16;
/// Ends each catalog key: it sorts below every byte of a repository name, so
/// the keys sort as the names do, and keeps `catalog/a!` from being a prefix
/// folder of `catalog/a/b!` (which s3s-fs, storing keys as files, refuses).
const END: char = '!';

#[derive(Default)]
pub(super) struct CatalogState {
    noted: Mutex<HashSet<String>>,
    complete: AtomicBool,
    rebuilding: tokio::sync::Mutex<()>,
}

impl S3Storage {
    /// Make sure `repository` has its catalog object before it is written to.
    pub(super) async fn note_repository(&self, repository: &str) -> Result<()> {
        let lock = || self.catalog.noted.lock().unwrap_or_else(|e| e.into_inner());
        if lock().contains(repository) {
            return Ok(());
        }
        self.put(&format!("{CATALOG}{repository}{END}"), Bytes::new())
            .await?;
        let mut noted = lock();
        if noted.len() >= NOTED_MAX {
            noted.clear();
        }
        noted.insert(repository.to_string());
        Ok(())
    }

    /// Rebuild the catalog objects once if no process has (see the module).
    async fn ensure_catalog(&self) -> Result<()> {
        if self.catalog.complete.load(Ordering::Acquire) {
            return Ok(());
        }
        let _one = self.catalog.rebuilding.lock().await;
        if self.catalog.complete.load(Ordering::Acquire) {
            return Ok(());
        }
        if !self.exists(CATALOG_COMPLETE).await? {
            let names: Vec<String> = Storage::repositories(self).await?;
            tracing::info!(
                repositories = names.len(),
                "S3 catalog index missing (registry written by an older berth): rebuilding it"
            );
            futures::stream::iter(names)
                .map(|name| async move { self.note_repository(&name).await })
                .buffer_unordered(REBUILD_WRITES)
                .try_collect::<()>()
                .await?;
            self.put(CATALOG_COMPLETE, Bytes::new()).await?;
        }
        self.catalog.complete.store(true, Ordering::Release);
        Ok(())
    }

    /// The keys under `dir` after `dir + after` (all without it), sorted,
    /// fetched a listing page at a time as the stream is polled. `page_keys`
    /// is the S3 page size asked for (max-keys; S3's default, 1000, if None):
    /// a catalog page of 100 names needs 101 keys, and a server answers a
    /// small page sooner than a full one.
    fn list_after(
        &self,
        dir: &str,
        after: Option<&str>,
        page_keys: Option<usize>,
    ) -> futures::stream::BoxStream<'_, object_store::Result<ObjectMeta>> {
        // Spelled as object_store spells the keys it writes (`dir` ends in `/`).
        let prefix = format!("{}/", self.path(dir));
        let first = after.map(|a| self.path(&format!("{dir}{a}")).to_string());
        futures::stream::try_unfold(Some((first, None::<String>)), move |state| {
            let prefix = prefix.clone();
            async move {
                let Some((offset, page_token)) = state else {
                    return Ok::<_, object_store::Error>(None);
                };
                let options = PaginatedListOptions {
                    offset,
                    max_keys: page_keys.map(|n| n.clamp(1, 1000)),
                    page_token,
                    ..Default::default()
                };
                let page = self.store.list_paginated(Some(&prefix), options).await?;
                // Later pages go on from the token (S3 then ignores start-after).
                let next = page.page_token.map(|token| (None, Some(token)));
                let items = futures::stream::iter(page.result.objects.into_iter().map(Ok));
                Ok(Some((items, next)))
            }
        })
        .try_flatten()
        .boxed()
    }

    pub(super) async fn catalog_page(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<NamePage> {
        self.ensure_catalog().await?;
        let offset = after.map(|a| format!("{a}{END}"));
        let want = limit.map(|n| n.saturating_add(1));
        let mut stream = self.list_after(CATALOG, offset.as_deref(), want);
        let mut names = Vec::new();
        while want.is_none_or(|w| names.len() < w) {
            let Some(meta) = stream.try_next().await.map_err(s3_error)? else {
                break;
            };
            let key = self.rel_of(&meta.location);
            if let Some(name) = key.strip_prefix(CATALOG).and_then(|k| k.strip_suffix(END)) {
                names.push(name.to_string());
            }
        }
        Ok(NamePage::from_iter(names, limit))
    }

    /// A catalog page filtered from every name (for a `last` that is not a
    /// repository name, so may not spell as a key).
    pub(super) async fn catalog_page_filtered(
        &self,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<NamePage> {
        let all = self.catalog_page(None, None).await?;
        Ok(NamePage::of(&all.names, after, limit))
    }

    /// A page of tags: the plain tag objects after `after` from one sorted
    /// listing, merged with the (rare) tags stored under hashed names.
    pub(super) async fn tags_page(
        &self,
        repository: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Option<NamePage>> {
        let dir = format!("{}/", LAYOUT.tags(repository));
        let (mut names, hashed) = tokio::try_join!(
            self.plain_tags_after(&dir, after, limit.map(|n| n.saturating_add(1))),
            self.hashed_tags(&dir),
        )?;
        names.extend(
            hashed
                .into_iter()
                .filter(|t| after.is_none_or(|a| t.as_str() > a)),
        );
        names.sort();
        if names.is_empty() && !self.repository_exists(repository).await? {
            return Ok(None);
        }
        Ok(Some(NamePage::from_iter(names, limit)))
    }

    /// Up to `want` tags stored under their own names, after `after`.
    async fn plain_tags_after(
        &self,
        dir: &str,
        after: Option<&str>,
        want: Option<usize>,
    ) -> Result<Vec<String>> {
        let mut stream = self.list_after(dir, after, want);
        let mut names = Vec::new();
        while want.is_none_or(|w| names.len() < w) {
            let Some(meta) = stream.try_next().await.map_err(s3_error)? else {
                break;
            };
            let Some(name) = self.rel_of(&meta.location).strip_prefix(dir) else {
                continue;
            };
            // Tombstones, hashed names and anything nested are not plain tags.
            if meta.size > 0 && !name.contains('/') && !name.starts_with('=') {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// Tags longer than fit a key, stored under `=<hash>` with the tag inside:
    /// their names sort apart from the tags, so all are read (one listing
    /// that stops at the first plain name, and a GET for each).
    async fn hashed_tags(&self, dir: &str) -> Result<Vec<String>> {
        // Small pages: the listing usually stops at its first key.
        let mut stream = self.list_after(dir, Some(BEFORE_HASHED), Some(HASHED_PAGE_KEYS));
        let mut keys = Vec::new();
        while let Some(meta) = stream.try_next().await.map_err(s3_error)? {
            let rel = self.rel_of(&meta.location);
            let Some(name) = rel.strip_prefix(dir) else {
                continue;
            };
            if !name.starts_with('=') {
                break;
            }
            if meta.size > 0 && !name.contains('/') {
                keys.push(rel.to_string());
            }
        }
        let mut tags = Vec::new();
        for key in keys {
            if let Some((raw, _)) = self.get_bytes(&key).await? {
                if let Some((_, Some(tag))) = parse_tag(&raw) {
                    tags.push(tag);
                }
            }
        }
        Ok(tags)
    }

    /// Whether the repository has links (or the marker of an emptied one).
    pub(super) async fn repository_exists(&self, repository: &str) -> Result<bool> {
        let repo = self.path(&format!("{}/", LAYOUT.repository(repository)));
        let listing = self
            .store
            .list_with_delimiter(Some(&repo))
            .await
            .map_err(s3_error)?;
        Ok(listing.common_prefixes.iter().any(|p| {
            p.filename()
                .is_some_and(|name| LinkKind::ALL.iter().any(|k| name == k.folder()))
        }))
    }
}
