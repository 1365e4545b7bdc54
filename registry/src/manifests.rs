//! `PUT/GET/HEAD/DELETE /v2/<name>/manifests/<reference>`

use axum::http::{header, StatusCode};
use axum::response::Response;
use berth_oci::names::is_valid_tag;
use berth_storage::{collect_limited, Digest, Storage};

use crate::error::{ApiResult, Code, RegistryError};
use crate::events::{Action, Happened};
use crate::immutable::ImmutableTags;
use crate::manifest::{self, MAX_MANIFEST_BYTES};
use crate::quota::Quotas;
use crate::{bytes_response, drain, empty, header_value, take_body, Req};
use axum::body::Body;

/// A manifest reference: a tag or a digest.
enum Ref<'a> {
    Tag(&'a str),
    Digest(Digest),
}

fn parse_reference(reference: &str) -> ApiResult<Ref<'_>> {
    if reference.contains(':') {
        return Ok(Ref::Digest(
            reference.parse().map_err(RegistryError::digest)?,
        ));
    }
    if !is_valid_tag(reference) {
        return Err(RegistryError::bad_request(
            Code::ManifestInvalid,
            format!(
                "invalid tag {reference:?}: up to 128 of [A-Za-z0-9_.-], not starting with . or -"
            ),
        ));
    }
    Ok(Ref::Tag(reference))
}

fn manifest_unknown(name: &str, reference: &str) -> RegistryError {
    RegistryError::not_found(
        Code::ManifestUnknown,
        format!("manifest {reference} is not in repository {name}"),
    )
}

/// What a manifest PUT is checked against besides the manifest itself.
pub struct PutRules<'a> {
    pub immutable: &'a ImmutableTags,
    pub quotas: &'a Quotas,
    /// Accept an index whose child manifests are not all pushed.
    pub sparse_indexes: bool,
}

/// The tags a manifest PUT sets: the one in the path, and each `?tag=` (the next
/// distribution-spec's push of one manifest under several tags), without repeats.
fn tags_to_set<'a>(path_tag: Option<&'a str>, query_tags: &'a [String]) -> ApiResult<Vec<&'a str>> {
    let mut tags: Vec<&str> = path_tag.into_iter().collect();
    for tag in query_tags {
        if !is_valid_tag(tag) {
            return Err(RegistryError::bad_request(
                Code::ManifestInvalid,
                format!(
                    "invalid ?tag={tag:?}: up to 128 of [A-Za-z0-9_.-], not starting with . or -"
                ),
            ));
        }
        if !tags.contains(&tag.as_str()) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

pub async fn put(
    s: &dyn Storage,
    rules: &PutRules<'_>,
    name: &str,
    reference: &str,
    req: &Req,
    body: &mut Option<Body>,
) -> ApiResult<Response> {
    let reference = parse_reference(reference)?;
    let query_tags = req.params("tag");
    let content_type = req.header("content-type").map(str::to_string);
    let mut stream = take_body(body);
    let collected = collect_limited(&mut stream, MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| {
            RegistryError::bad_request(
                Code::ManifestInvalid,
                format!("manifest body ended early: {e}"),
            )
        })?;
    let Some(body) = collected else {
        drain(stream).await;
        return Err(RegistryError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::SizeInvalid,
            format!("manifest larger than {MAX_MANIFEST_BYTES} bytes"),
        ));
    };
    let mut parsed = manifest::parse(&body, content_type.as_deref())?;
    let (digest, path_tag) = match reference {
        Ref::Digest(claimed) => {
            let actual = Digest::of(claimed.algorithm(), &body);
            if actual != claimed {
                return Err(RegistryError::bad_request(
                    Code::DigestInvalid,
                    format!("manifest digest is {actual}, not {claimed} as the URL says"),
                ));
            }
            (actual, None)
        }
        Ref::Tag(tag) => (Digest::sha256_of(&body), Some(tag)),
    };
    let tags = tags_to_set(path_tag, &query_tags)?;
    for tag in &tags {
        rules.immutable.check_put(s, name, tag, &digest).await?;
        rules
            .quotas
            .check_manifest(s, name, tag, &parsed.references)
            .await?;
    }
    rules.quotas.check_tags(s, name, &tags).await?;
    if rules.sparse_indexes {
        drop_missing_children(s, name, &mut parsed).await?;
    }
    check_descriptor_sizes(s, name, &parsed.sizes).await?;
    // Storage checks that every blob and child manifest is in the repository,
    // under the exclusion that keeps garbage collection from taking one
    // between the check and the link (StorageError::ReferenceUnknown).
    // Several tags: the manifest is stored with the first, then each further
    // tag is one more (idempotent) put of the same bytes.
    let untagged = tags.is_empty().then_some(None);
    for tag in tags.iter().map(|t| Some(*t)).chain(untagged) {
        s.manifest_put(name, &digest, body.clone(), &parsed.meta, tag)
            .await?;
    }
    let mut r = empty(StatusCode::CREATED);
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        header_value(&format!("/v2/{name}/manifests/{digest}")),
    );
    h.insert("Docker-Content-Digest", header_value(&digest.to_string()));
    for tag in query_tags.iter().filter(|t| tags.contains(&t.as_str())) {
        h.append("OCI-Tag", header_value(tag));
    }
    if let Some(subject) = &parsed.meta.subject {
        h.insert("OCI-Subject", header_value(&subject.to_string()));
    }
    r.extensions_mut().insert(Happened {
        action: Action::Push,
        repository: name.to_string(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        digest,
        media_type: Some(parsed.meta.media_type.clone()),
        size: Some(body.len() as u64),
    });
    Ok(r)
}

/// A sparse index: child manifests that are not in the repository are not required
/// (nor marked for garbage collection: a child pushed later is kept by its own link).
/// Those that are present stay required, so storage checks them under its GC exclusion.
async fn drop_missing_children(
    s: &dyn Storage,
    name: &str,
    parsed: &mut manifest::ParsedManifest,
) -> ApiResult<()> {
    use crate::manifest::Reference as R;
    let mut missing = Vec::new();
    for reference in &parsed.references {
        if let R::Manifest(d) = reference {
            if s.manifest_meta(name, d).await?.is_none() {
                missing.push(d.clone());
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    parsed
        .references
        .retain(|r| !matches!(r, R::Manifest(d) if missing.contains(d)));
    parsed
        .sizes
        .retain(|c| !matches!(&c.reference, R::Manifest(d) if missing.contains(d)));
    if let Some(refs) = parsed.meta.references.as_mut() {
        refs.retain(|d| !missing.contains(d));
    }
    Ok(())
}

pub async fn get(s: &dyn Storage, name: &str, reference: &str, req: &Req) -> ApiResult<Response> {
    let head = req.method == axum::http::Method::HEAD;
    let (mut digest, by_tag) = match parse_reference(reference) {
        Ok(Ref::Digest(d)) => (d, false),
        Ok(Ref::Tag(tag)) => (
            s.tag_resolve(name, tag)
                .await?
                .ok_or_else(|| manifest_unknown(name, reference))?,
            true,
        ),
        // An invalid tag names no manifest.
        Err(e) if e.code == Code::ManifestInvalid => return Err(manifest_unknown(name, reference)),
        Err(e) => return Err(e),
    };
    let (mut meta, mut bytes) = s
        .manifest_get(name, &digest)
        .await?
        .ok_or_else(|| manifest_unknown(name, reference))?;

    let accept: Vec<&str> = req
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if let Some(accepted) = manifest::accepted_manifest_types(&accept) {
        if !accepted.contains(&meta.media_type) {
            // A client that cannot read an index gets its linux/amd64 image,
            // as the reference registry does; only by tag, since a digest names exact bytes.
            let child = if by_tag {
                manifest::default_platform_child(&bytes).filter(|(_, mt)| accepted.contains(mt))
            } else {
                None
            };
            let Some((child, _)) = child else {
                return Err(RegistryError::not_found(
                    Code::ManifestUnknown,
                    format!(
                        "manifest {reference} is {}, which the Accept header does not list",
                        meta.media_type
                    ),
                ));
            };
            (meta, bytes) = s
                .manifest_get(name, &child)
                .await?
                .ok_or_else(|| manifest_unknown(name, reference))?;
            digest = child;
        }
    }
    let size = bytes.len() as u64;
    let mut r = bytes_response(StatusCode::OK, &meta.media_type, bytes, head);
    let h = r.headers_mut();
    h.insert("Docker-Content-Digest", header_value(&digest.to_string()));
    h.insert(header::ETAG, header_value(&format!("\"{digest}\"")));
    if let Some(subject) = &meta.subject {
        h.insert("OCI-Subject", header_value(&subject.to_string()));
    }
    if !head {
        r.extensions_mut().insert(Happened {
            action: Action::Pull,
            repository: name.to_string(),
            tags: if by_tag {
                vec![reference.to_string()]
            } else {
                Vec::new()
            },
            digest,
            media_type: Some(meta.media_type),
            size: Some(size),
        });
    }
    Ok(r)
}

pub async fn delete(
    s: &dyn Storage,
    immutable: &ImmutableTags,
    name: &str,
    reference: &str,
) -> ApiResult<Response> {
    let (removed, tags, digest) = match parse_reference(reference)? {
        // Deleting a tag removes only the tag.
        Ref::Tag(tag) => {
            immutable.check_tag_delete(name, tag)?;
            // What it pointed at, for the event.
            let Some(digest) = s.tag_resolve(name, tag).await? else {
                return Err(manifest_unknown(name, reference));
            };
            (
                s.tag_delete(name, tag).await?,
                vec![tag.to_string()],
                digest,
            )
        }
        Ref::Digest(digest) => {
            immutable.check_manifest_delete(s, name, &digest).await?;
            (s.manifest_delete(name, &digest).await?, Vec::new(), digest)
        }
    };
    if !removed {
        return Err(manifest_unknown(name, reference));
    }
    let mut r = empty(StatusCode::ACCEPTED);
    r.extensions_mut().insert(Happened {
        action: Action::Delete,
        repository: name.to_string(),
        tags,
        digest,
        media_type: None,
        size: None,
    });
    Ok(r)
}

/// Each descriptor's `size` must be the size of the content it names: a
/// client reads that many bytes, and the image-spec says content of another
/// length must not be trusted. Only content this registry holds can be
/// checked. A mismatch is reported only for content of this repository, so
/// the answer never tells whether another repository holds a digest; missing
/// content is left to the reference check.
async fn check_descriptor_sizes(
    s: &dyn Storage,
    name: &str,
    claims: &[crate::manifest::SizeClaim],
) -> ApiResult<()> {
    use crate::manifest::Reference as R;
    let digest_of = |c: &crate::manifest::SizeClaim| match &c.reference {
        R::Blob(d) | R::Manifest(d) => d.clone(),
    };
    // A few lookups at once: on S3 each is a round trip.
    for batch in claims.chunks(8) {
        let digests: Vec<Digest> = batch.iter().map(digest_of).collect();
        let sizes = futures::future::join_all(digests.iter().map(|d| s.blob_size(d))).await;
        for ((claim, digest), size) in batch.iter().zip(&digests).zip(sizes) {
            let Some(size) = size?.filter(|&size| size != claim.size) else {
                continue;
            };
            let here = match &claim.reference {
                R::Blob(d) => s.blob_linked(name, d).await?,
                R::Manifest(d) => s.manifest_meta(name, d).await?.is_some(),
            };
            if here {
                return Err(RegistryError::bad_request(
                    Code::ManifestInvalid,
                    format!(
                        "{} says {digest} is {} bytes, but it is {size} bytes: fix the descriptor's size",
                        claim.field, claim.size
                    ),
                ));
            }
        }
    }
    Ok(())
}
