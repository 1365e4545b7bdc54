//! The registry's storage layout: the one place that names every key.
//!
//! Both persistent backends keep the same tree, relative to their root (a
//! folder, or `s3://BUCKET/PREFIX`); they differ only in how a digest is
//! spelled inside a key and in a few objects only one of them needs:
//! ```text
//! blobs/<D>                                  blob bytes (manifests too), or an S3 pointer
//! data/<upload id>                           S3: bytes of a blob uploaded in parts
//! repositories/<name>/_layers/<d>            empty link: blob is in this repo
//! repositories/<name>/_manifests/<d>         ManifestMeta JSON: manifest is in this repo
//! repositories/<name>/_<kind>/_kept          S3: keeps an emptied repository listed
//! repositories/<name>/_tags/<tag>            the digest the tag points at
//!                                            (S3: empty = deleted; long tags hashed)
//! repositories/<name>/_referrers/<d>         fs: a folder of `<alg>-<hex>` Descriptor JSON
//!                                            S3: one JSON array of descriptors
//! uploads/<id>/state.json, uploads/<id>/data fs: upload session
//! uploads/<id>/state, uploads/<id>/tail-<n>  S3: upload session, bytes not yet in a part
//! tmp/                                       fs: temporary files, renamed into place
//! outbox/events/<id>, outbox/claims/<id>     webhook events not yet delivered, and who is
//!                                            delivering each (see crate::outbox)
//! index/repositories.log                     fs: every repository created, one name a line
//!                                            (see fs::catalog)
//! catalog/<name>!, catalog-complete          S3: an empty object per repository, and the
//!                                            marker that every repository has one
//! ```
//! `<d>` is `<alg>/<hex>` on a filesystem and `<alg>/<base64url>` on S3
//! (shorter keys, see [`Layout::S3`]); `<D>` is `<d>`, but with a
//! `<hex[0..2]>/` level before the hex on a filesystem so no folder grows
//! huge. Repository names start with `[a-z0-9]`, so they never collide with
//! the `_`-prefixed folders.
//!
//! Existing data must keep working: every key here is spelled exactly as
//! earlier versions wrote it.

use sha2::{Digest as _, Sha256};

use crate::Digest;

/// Blob bytes, shared by all repositories.
pub(crate) const BLOBS: &str = "blobs/";
/// S3 only: bytes of big blobs, named by the upload that wrote them.
pub(crate) const DATA: &str = "data/";
/// Per-repository links, tags and referrers.
pub(crate) const REPOSITORIES: &str = "repositories/";
/// Upload sessions.
pub(crate) const UPLOADS: &str = "uploads/";
/// Filesystem only: temporary files.
pub(crate) const TMP: &str = "tmp/";
/// Filesystem only: the names of repositories as they are created, appended
/// by every process so others see them without walking the tree.
pub(crate) const CATALOG_LOG: &str = "index/repositories.log";
/// S3 only: one empty object per repository, so a catalog page is one
/// sorted listing (`start-after`) however repository names nest.
pub(crate) const CATALOG: &str = "catalog/";
/// S3 only: present once every repository has its object below [`CATALOG`]
/// (a registry written by an older version has none until it is rebuilt).
pub(crate) const CATALOG_COMPLETE: &str = "catalog-complete";

/// Tags longer than this are stored on S3 under a hashed name (`=` +
/// base64url SHA-256 of the tag, `=` being outside the tag alphabet), with
/// the tag itself inside the object, to keep keys short.
const TAG_KEY_MAX: usize = 48;

/// The two kinds of repository link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LinkKind {
    /// A blob pushed or mounted into the repository.
    Layer,
    /// A manifest of the repository (its link holds the `ManifestMeta`).
    Manifest,
}

impl LinkKind {
    pub(crate) const ALL: [LinkKind; 2] = [LinkKind::Layer, LinkKind::Manifest];

    /// The folder of the repository holding links of this kind.
    pub(crate) fn folder(self) -> &'static str {
        match self {
            LinkKind::Layer => "_layers",
            LinkKind::Manifest => "_manifests",
        }
    }
}

/// A repository link found in a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LinkKey {
    pub repository: String,
    pub kind: LinkKind,
    pub digest: Digest,
}

/// How a backend spells the layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Hex digests, blobs fanned out by their first two hex digits.
    Fs,
    /// Digests in unpadded base64url (43 characters for sha256) rather than
    /// hex, and long tags hashed: S3 allows 1024-byte keys, but some
    /// compatible servers allow far less (s3s-fs stores per-key sidecar
    /// files named after the base64 of the whole key, so its keys must stay
    /// under ~165 bytes).
    S3,
}

impl Layout {
    /// A digest as it appears in link and referrer keys.
    pub(crate) fn digest(self, d: &Digest) -> String {
        match self {
            Layout::Fs => format!("{}/{}", d.algorithm().as_str(), d.hex()),
            Layout::S3 => {
                use base64::Engine as _;
                let raw = hex::decode(d.hex()).unwrap_or_default();
                format!(
                    "{}/{}",
                    d.algorithm().as_str(),
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
                )
            }
        }
    }

    /// The inverse of [`Layout::digest`] (and of a blob key's tail); `None`
    /// for anything that is not one. On a filesystem the algorithm is the
    /// first component and the hex the last, whatever lies between.
    pub(crate) fn parse_digest(self, key_tail: &str) -> Option<Digest> {
        match self {
            Layout::Fs => {
                let (alg, rest) = key_tail.split_once('/')?;
                let hex = rest.rsplit('/').next()?;
                format!("{alg}:{hex}").parse().ok()
            }
            Layout::S3 => {
                use base64::Engine as _;
                let (alg, b64) = key_tail.split_once('/')?;
                let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(b64)
                    .ok()?;
                format!("{alg}:{}", hex::encode(raw)).parse().ok()
            }
        }
    }

    pub(crate) fn blob(self, d: &Digest) -> String {
        match self {
            Layout::Fs => format!(
                "{BLOBS}{}/{}/{}",
                d.algorithm().as_str(),
                &d.hex()[..2],
                d.hex()
            ),
            Layout::S3 => format!("{BLOBS}{}", self.digest(d)),
        }
    }

    /// Whether big blobs' bytes live apart, below [`DATA`] (S3 only).
    pub(crate) fn has_data_objects(self) -> bool {
        self == Layout::S3
    }

    /// The blob a key below [`BLOBS`] holds; `None` for a stray object.
    pub(crate) fn parse_blob(self, key: &str) -> Option<Digest> {
        self.parse_digest(key.strip_prefix(BLOBS)?)
    }

    pub(crate) fn repository(self, repository: &str) -> String {
        format!("{REPOSITORIES}{repository}")
    }

    pub(crate) fn links(self, repository: &str, kind: LinkKind) -> String {
        format!("{}/{}", self.repository(repository), kind.folder())
    }

    pub(crate) fn link(self, repository: &str, kind: LinkKind, d: &Digest) -> String {
        format!("{}/{}", self.links(repository, kind), self.digest(d))
    }

    pub(crate) fn layer_link(self, repository: &str, d: &Digest) -> String {
        self.link(repository, LinkKind::Layer, d)
    }

    pub(crate) fn manifest_link(self, repository: &str, d: &Digest) -> String {
        self.link(repository, LinkKind::Manifest, d)
    }

    /// S3 has no empty folders: this marker (not a digest, so never taken
    /// for a link) keeps a repository whose last link went listed.
    pub(crate) fn kept_marker(self, repository: &str, kind: LinkKind) -> String {
        format!("{}/_kept", self.links(repository, kind))
    }

    /// The repository link a key below [`REPOSITORIES`] is; `None` for
    /// tags, referrers, markers and stray objects.
    pub(crate) fn parse_link(self, key: &str) -> Option<LinkKey> {
        let rest = key.strip_prefix(REPOSITORIES)?;
        for kind in LinkKind::ALL {
            let marker = format!("/{}/", kind.folder());
            let Some(pos) = rest.find(&marker) else {
                continue;
            };
            let repository = &rest[..pos];
            // A component starting with `_` belongs to a repository above
            // this one (repository names never start with `_`).
            if repository.split('/').any(|c| c.starts_with('_')) {
                continue;
            }
            if let Some(digest) = self.parse_digest(&rest[pos + marker.len()..]) {
                return Some(LinkKey {
                    repository: repository.to_string(),
                    kind,
                    digest,
                });
            }
        }
        None
    }

    pub(crate) fn tags(self, repository: &str) -> String {
        format!("{}/_tags", self.repository(repository))
    }

    pub(crate) fn tag(self, repository: &str, tag: &str) -> String {
        if self == Layout::Fs || tag.len() <= TAG_KEY_MAX {
            format!("{}/{tag}", self.tags(repository))
        } else {
            use base64::Engine as _;
            let hashed =
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(tag));
            format!("{}/={hashed}", self.tags(repository))
        }
    }

    /// The referrers of `subject`: a folder of entries on a filesystem, one
    /// index object on S3.
    pub(crate) fn referrers(self, repository: &str, subject: &Digest) -> String {
        format!(
            "{}/_referrers/{}",
            self.repository(repository),
            self.digest(subject)
        )
    }

    /// Filesystem only: referrer `d`'s entry in its subject's folder.
    pub(crate) fn referrer(self, repository: &str, subject: &Digest, d: &Digest) -> String {
        format!(
            "{}/{}",
            self.referrers(repository, subject),
            referrer_entry_name(d)
        )
    }

    pub(crate) fn upload(self, id: &str) -> String {
        format!("{UPLOADS}{id}")
    }

    /// An upload session's state.
    pub(crate) fn upload_state(self, id: &str) -> String {
        match self {
            Layout::Fs => format!("{}/state.json", self.upload(id)),
            Layout::S3 => format!("{}/state", self.upload(id)),
        }
    }

    /// The bytes an upload received: in its session folder on a filesystem,
    /// a (multipart) object of its own on S3.
    pub(crate) fn upload_data(self, id: &str) -> String {
        match self {
            Layout::Fs => format!("{}/data", self.upload(id)),
            Layout::S3 => format!("{DATA}{id}"),
        }
    }

    /// S3 only: the bytes of an upload that do not fill a part yet, named by
    /// the offset they end at.
    pub(crate) fn upload_tail(self, id: &str, end_offset: u64) -> String {
        format!("{}/tail-{end_offset}", self.upload(id))
    }

    /// The session a key below [`UPLOADS`] belongs to (empty when none).
    pub(crate) fn upload_of(self, key: &str) -> &str {
        key.strip_prefix(UPLOADS)
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
    }

    /// Filesystem only: a temporary file.
    pub(crate) fn tmp(self, name: &str) -> String {
        format!("{TMP}{name}")
    }
}

/// Upload ids are issued as 32 hex digits (and name folders and keys): any
/// other id is unknown before it reaches the storage.
pub(crate) fn is_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The name of referrer `d`'s entry in its subject's folder: `<alg>-<hex>`.
pub(crate) fn referrer_entry_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

/// The referrer a `<alg>-<hex>` entry of a referrers folder names; `None`
/// for any other name (a stray file).
pub(crate) fn referrer_entry_digest(name: &str) -> Option<Digest> {
    let (alg, hex) = name.split_once('-')?;
    format!("{alg}:{hex}").parse().ok()
}

/// An S3 tag object's content: the digest, and for a hashed name the tag.
pub(crate) fn tag_content(tag: &str, digest: &Digest) -> bytes::Bytes {
    if tag.len() <= TAG_KEY_MAX {
        bytes::Bytes::from(digest.to_string())
    } else {
        bytes::Bytes::from(format!("{digest}\n{tag}"))
    }
}

/// A tag object's digest (`Err` when it holds none) and, under a hashed
/// name, the tag itself.
pub(crate) type ParsedTag = (std::result::Result<Digest, ()>, Option<String>);

/// Parse an S3 tag object; `None` for a tombstone.
pub(crate) fn parse_tag(raw: &[u8]) -> Option<ParsedTag> {
    if raw.is_empty() {
        return None;
    }
    let text = std::str::from_utf8(raw).unwrap_or_default();
    let mut lines = text.lines();
    let digest = lines.next().and_then(|l| l.trim().parse().ok()).ok_or(());
    Some((digest, lines.next().map(str::to_string)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Digest {
        Digest::sha256_of(b"layout")
    }

    /// The keys earlier versions wrote: existing registries must keep working.
    #[test]
    fn keys_are_spelled_as_before() {
        let d = sample();
        let hex = d.hex().to_string();
        assert_eq!(
            Layout::Fs.blob(&d),
            format!("blobs/sha256/{}/{hex}", &hex[..2])
        );
        assert_eq!(
            Layout::Fs.layer_link("a/b", &d),
            format!("repositories/a/b/_layers/sha256/{hex}")
        );
        assert_eq!(
            Layout::Fs.referrer("r", &d, &d),
            format!("repositories/r/_referrers/sha256/{hex}/sha256-{hex}")
        );
        assert_eq!(Layout::Fs.upload_state("x"), "uploads/x/state.json");
        assert_eq!(Layout::Fs.upload_data("x"), "uploads/x/data");
        // SHA-256 of nothing, in base64url: 43 characters where hex takes 64.
        let empty = Digest::sha256_of(b"");
        let b64 = "sha256/47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU";
        assert_eq!(Layout::S3.digest(&empty), b64);
        assert_eq!(Layout::S3.parse_digest(b64), Some(empty));
        assert_eq!(
            Layout::S3.blob(&d),
            format!("blobs/{}", Layout::S3.digest(&d))
        );
        assert_eq!(Layout::S3.upload_state("x"), "uploads/x/state");
        assert_eq!(Layout::S3.upload_data("x"), "data/x");
        assert_eq!(Layout::S3.upload_tail("x", 5), "uploads/x/tail-5");
        assert_eq!(
            Layout::S3.kept_marker("r", LinkKind::Layer),
            "repositories/r/_layers/_kept"
        );
        let long = "t".repeat(49);
        assert!(Layout::S3
            .tag("r", &long)
            .starts_with("repositories/r/_tags/="));
        assert_eq!(
            Layout::Fs.tag("r", &long),
            format!("repositories/r/_tags/{long}")
        );
    }

    #[test]
    fn keys_parse_back() {
        let d = sample();
        for layout in [Layout::Fs, Layout::S3] {
            assert_eq!(layout.parse_blob(&layout.blob(&d)), Some(d.clone()));
            for kind in LinkKind::ALL {
                let key = layout.link("a/b", kind, &d);
                let parsed = layout.parse_link(&key).expect("a link");
                assert_eq!(parsed.repository, "a/b");
                assert_eq!(parsed.kind, kind);
                assert_eq!(parsed.digest, d);
            }
            assert_eq!(
                layout.parse_link(&layout.kept_marker("a", LinkKind::Layer)),
                None
            );
            assert_eq!(layout.parse_link(&layout.tag("a", "v1")), None);
            assert_eq!(layout.parse_link(&layout.referrers("a", &d)), None);
        }
        assert_eq!(Layout::S3.upload_of("uploads/abc/tail-3"), "abc");
        assert_eq!(
            referrer_entry_digest(&referrer_entry_name(&d)),
            Some(d.clone())
        );
    }
}
