//! What a replica remembers of the bucket, so that a small read costs one S3
//! request or none.
//!
//! * **Repository links** (does repository R hold digest D, and a manifest's
//!   metadata) are remembered once seen, for [`S3Options::link_cache`]
//!   (default [`LINK_TTL`]). A link only ever disappears by a delete: a delete
//!   through this replica forgets it at once; a delete through another
//!   replica (or its garbage collection) is seen here when the entry expires.
//!   Why a TTL and not "forever": a stale positive would let this replica
//!   serve content another replica deleted from the repository. Why not
//!   shorter: what a stale positive costs is bounded and small. The blob GET
//!   that follows still answers 404 once the bytes are gone; a manifest PUT
//!   re-checks every reference against S3 (and forgets a stale link it finds),
//!   so nothing is ever linked to missing content; the worst case is serving,
//!   for at most the TTL, content a client already knew the digest of.
//!   Absences are never remembered: a push through another replica must be
//!   visible at once.
//! * **Small immutable objects** (blobs under [`SMALL_OBJECT`] bytes:
//!   manifests, configs, small layers) by digest, up to a byte cap
//!   ([`S3Options::cache_bytes`], default [`CACHE_BYTES`], 0 = off). A digest
//!   names its bytes forever, so an entry is never stale; whether a repository
//!   may serve it is the link's question, asked first.
//!
//! [`S3Options::link_cache`]: super::S3Options::link_cache
//! [`S3Options::cache_bytes`]: super::S3Options::cache_bytes

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::Weighter;

use crate::layout::LinkKind;
use crate::{Digest, ManifestMeta};

/// How long a seen link is trusted without asking S3 again (see the module doc).
pub const LINK_TTL: Duration = Duration::from_secs(60);
/// Default byte cap of the object cache.
pub const CACHE_BYTES: u64 = 64 << 20;
/// Objects up to this size are kept; bigger ones are streamed, never held.
pub const SMALL_OBJECT: u64 = 1 << 20;
/// Links remembered at most (about 200 bytes each).
const LINKS_MAX: usize = 200_000;
/// What an entry costs beside its bytes (key, node, bookkeeping), so a
/// flood of tiny objects is bounded by the cap too.
const ENTRY_OVERHEAD: u64 = 128;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LinkKey {
    repository: String,
    kind: LinkKind,
    digest: Digest,
}

#[derive(Clone)]
struct Seen {
    at: Instant,
    /// A manifest link's content.
    meta: Option<Arc<ManifestMeta>>,
}

#[derive(Clone)]
struct ByteWeight;

impl Weighter<Digest, Bytes> for ByteWeight {
    fn weight(&self, _digest: &Digest, bytes: &Bytes) -> u64 {
        bytes.len() as u64 + ENTRY_OVERHEAD
    }
}

/// A point in the history of this replica's deletes, taken before reading or
/// writing a link: a link seen then is remembered only if no delete on this
/// replica happened since (else a read racing a delete could bring it back).
#[derive(Clone, Copy, Debug)]
pub(super) struct Epoch(u64);

pub(super) struct ReadCache {
    links: Option<Cache<LinkKey, Seen>>,
    ttl: Duration,
    /// Deletes on this replica so far; held while a link is remembered.
    deletes: Mutex<u64>,
    objects: Option<Cache<Digest, Bytes, ByteWeight>>,
}

impl ReadCache {
    /// `ttl` zero: links are always asked of S3. `cap` zero: no object cache.
    pub(super) fn new(ttl: Duration, cap: u64) -> ReadCache {
        let links = (!ttl.is_zero()).then(|| Cache::new(LINKS_MAX));
        // Estimated items only sizes the tables up front; the cap bounds them.
        let estimated = (cap / 4096).clamp(16, 100_000) as usize;
        let objects = (cap > 0).then(|| Cache::with_weighter(estimated, cap, ByteWeight));
        ReadCache {
            links,
            ttl,
            deletes: Mutex::new(0),
            objects,
        }
    }

    fn key(repository: &str, kind: LinkKind, digest: &Digest) -> LinkKey {
        LinkKey {
            repository: repository.to_string(),
            kind,
            digest: digest.clone(),
        }
    }

    pub(super) fn epoch(&self) -> Epoch {
        Epoch(*self.deletes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether the link was seen within the TTL, and with what metadata.
    fn seen(&self, repository: &str, kind: LinkKind, digest: &Digest) -> Option<Seen> {
        let links = self.links.as_ref()?;
        let key = Self::key(repository, kind, digest);
        let seen = links.get(&key)?;
        if seen.at.elapsed() < self.ttl {
            return Some(seen);
        }
        links.remove(&key);
        None
    }

    pub(super) fn layer_linked(&self, repository: &str, digest: &Digest) -> bool {
        self.seen(repository, LinkKind::Layer, digest).is_some()
    }

    pub(super) fn manifest_meta(&self, repository: &str, digest: &Digest) -> Option<ManifestMeta> {
        let seen = self.seen(repository, LinkKind::Manifest, digest)?;
        seen.meta.map(|meta| (*meta).clone())
    }

    /// Remember a link that S3 held (or that was written) after `epoch`.
    pub(super) fn remember(
        &self,
        epoch: Epoch,
        repository: &str,
        kind: LinkKind,
        digest: &Digest,
        meta: Option<&ManifestMeta>,
    ) {
        let Some(links) = &self.links else { return };
        let deletes = self.deletes.lock().unwrap_or_else(|e| e.into_inner());
        if *deletes != epoch.0 {
            return;
        }
        let seen = Seen {
            at: Instant::now(),
            meta: meta.map(|m| Arc::new(m.clone())),
        };
        links.insert(Self::key(repository, kind, digest), seen);
    }

    /// A link is being (or was) deleted on this replica: never serve it from
    /// here again, nor let a read that started before remember it.
    pub(super) fn forget(&self, repository: &str, kind: LinkKind, digest: &Digest) {
        let mut deletes = self.deletes.lock().unwrap_or_else(|e| e.into_inner());
        *deletes += 1;
        if let Some(links) = &self.links {
            links.remove(&Self::key(repository, kind, digest));
        }
    }

    /// Forget every link (after a garbage collection on this replica).
    pub(super) fn forget_all_links(&self) {
        let mut deletes = self.deletes.lock().unwrap_or_else(|e| e.into_inner());
        *deletes += 1;
        if let Some(links) = &self.links {
            links.clear();
        }
    }

    /// Whether an object of `size` bytes is worth keeping.
    pub(super) fn keeps(&self, size: u64) -> bool {
        self.objects.is_some() && size <= SMALL_OBJECT
    }

    pub(super) fn object(&self, digest: &Digest) -> Option<Bytes> {
        self.objects.as_ref()?.get(digest)
    }

    pub(super) fn keep_object(&self, digest: &Digest, bytes: &Bytes) {
        if let Some(objects) = &self.objects {
            if bytes.len() as u64 <= SMALL_OBJECT {
                objects.insert(digest.clone(), bytes.clone());
            }
        }
    }

    pub(super) fn forget_object(&self, digest: &Digest) {
        if let Some(objects) = &self.objects {
            objects.remove(digest);
        }
    }

    /// Bytes held by the object cache (entry overhead included).
    #[cfg(test)]
    pub(super) fn object_weight(&self) -> u64 {
        self.objects.as_ref().map_or(0, |o| o.weight())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(i: u64) -> Digest {
        Digest::sha256_of(&i.to_le_bytes())
    }

    fn meta() -> ManifestMeta {
        ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(vec![digest(1)]),
        }
    }

    #[test]
    fn byte_cap_holds_under_a_flood_of_distinct_digests() {
        let cap = 1 << 20;
        let cache = ReadCache::new(LINK_TTL, cap);
        let bytes = Bytes::from(vec![7u8; 4096]);
        for i in 0..10_000 {
            cache.keep_object(&digest(i), &bytes);
            assert!(cache.object_weight() <= cap, "over the cap after {i}");
        }
        // It still caches: the latest ones are there.
        let held = (9_900..10_000)
            .filter(|&i| cache.object(&digest(i)).is_some())
            .count();
        assert!(held > 0, "nothing kept");
        assert!(cache.object_weight() > cap / 2, "cache mostly empty");
    }

    #[test]
    fn big_objects_and_a_zero_cap_keep_nothing() {
        let cache = ReadCache::new(LINK_TTL, 64 << 20);
        let big = Bytes::from(vec![0u8; SMALL_OBJECT as usize + 1]);
        cache.keep_object(&digest(1), &big);
        assert!(cache.object(&digest(1)).is_none());
        assert!(!cache.keeps(SMALL_OBJECT + 1));
        let off = ReadCache::new(LINK_TTL, 0);
        off.keep_object(&digest(2), &Bytes::from_static(b"x"));
        assert!(off.object(&digest(2)).is_none());
        assert!(!off.keeps(1));
    }

    #[test]
    fn a_deleted_link_is_not_served() {
        let cache = ReadCache::new(LINK_TTL, 0);
        let d = digest(3);
        cache.remember(cache.epoch(), "r", LinkKind::Layer, &d, None);
        cache.remember(cache.epoch(), "r", LinkKind::Manifest, &d, Some(&meta()));
        assert!(cache.layer_linked("r", &d));
        assert_eq!(cache.manifest_meta("r", &d), Some(meta()));
        assert!(!cache.layer_linked("other", &d), "links are per repository");
        cache.forget("r", LinkKind::Layer, &d);
        assert!(!cache.layer_linked("r", &d));
        assert!(
            cache.manifest_meta("r", &d).is_some(),
            "only that link goes"
        );
        cache.forget_all_links();
        assert!(cache.manifest_meta("r", &d).is_none());
    }

    #[test]
    fn a_read_racing_a_delete_does_not_bring_the_link_back() {
        let cache = ReadCache::new(LINK_TTL, 0);
        let d = digest(4);
        // A read starts, sees the link in S3...
        let before = cache.epoch();
        // ...a delete on this replica runs meanwhile...
        cache.forget("r", LinkKind::Layer, &d);
        // ...and the read's answer must not be remembered.
        cache.remember(before, "r", LinkKind::Layer, &d, None);
        assert!(!cache.layer_linked("r", &d));
        cache.remember(cache.epoch(), "r", LinkKind::Layer, &d, None);
        assert!(cache.layer_linked("r", &d));
    }

    #[test]
    fn links_expire_and_a_zero_ttl_remembers_none() {
        let cache = ReadCache::new(Duration::from_millis(1), 0);
        let d = digest(5);
        cache.remember(cache.epoch(), "r", LinkKind::Layer, &d, None);
        std::thread::sleep(Duration::from_millis(5));
        assert!(!cache.layer_linked("r", &d), "expired link served");
        let off = ReadCache::new(Duration::ZERO, 0);
        off.remember(off.epoch(), "r", LinkKind::Layer, &d, None);
        assert!(!off.layer_linked("r", &d));
    }

    #[test]
    fn link_count_is_bounded() {
        let cache = ReadCache::new(LINK_TTL, 0);
        for i in 0..(LINKS_MAX as u64 + 5_000) {
            cache.remember(cache.epoch(), "r", LinkKind::Layer, &digest(i), None);
        }
        let links = cache.links.as_ref().map_or(0, |l| l.len());
        assert!(links <= LINKS_MAX, "{links} links held");
    }
}
