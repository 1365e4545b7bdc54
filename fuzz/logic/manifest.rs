//! The registry's check of a pushed manifest or index
//! (`berth_registry::manifest::parse`, run on every `PUT /v2/NAME/manifests/REF`)
//! and the other functions that read manifest bytes or manifest media types,
//! on arbitrary bodies and `Content-Type` values.
//!
//! The first byte picks the `Content-Type`; the rest is the body (with
//! choice 6 the body's first line is the `Content-Type`).
//!
//! Properties: no panic; an accepted manifest has a supported media type
//! that agrees with the header; every digest it references is valid and
//! prints back to itself; what garbage collection keeps (`meta.references`)
//! is exactly what must exist before the push is accepted; the stored
//! metadata survives its JSON round trip; a manifest accepted without a
//! header is accepted the same way with its own media type as the header.

use berth_registry::manifest::{
    accepted_manifest_types, default_platform_child, essence, parse, Reference, DOCKER_LIST,
    DOCKER_MANIFEST, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST, SUPPORTED,
};
use berth_storage::{Digest, ManifestMeta};

fn digest_round_trips(d: &Digest) {
    assert_eq!(d.to_string().parse::<Digest>().as_ref(), Ok(d));
}

fn check(body: &[u8], content_type: Option<&str>) {
    let Ok(parsed) = parse(body, content_type) else {
        return;
    };
    let media_type = parsed.meta.media_type.as_str();
    assert!(SUPPORTED.contains(&media_type), "accepted {media_type:?}");
    if let Some(header) = content_type.map(essence).filter(|h| !h.is_empty()) {
        assert_eq!(header, media_type, "header and accepted type differ");
    }
    let is_index = media_type == OCI_INDEX || media_type == DOCKER_LIST;
    if is_index {
        assert!(parsed
            .references
            .iter()
            .all(|r| matches!(r, Reference::Manifest(_))));
    } else {
        assert!(media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST);
        // The config is always required.
        assert!(matches!(
            parsed.references.first(),
            Some(Reference::Blob(_))
        ));
        assert!(parsed
            .references
            .iter()
            .all(|r| matches!(r, Reference::Blob(_))));
    }
    let required: Vec<Digest> = parsed
        .references
        .iter()
        .map(|r| match r {
            Reference::Blob(d) | Reference::Manifest(d) => d.clone(),
        })
        .collect();
    required.iter().for_each(digest_round_trips);
    assert_eq!(parsed.meta.references.as_ref(), Some(&required));
    if let Some(subject) = &parsed.meta.subject {
        digest_round_trips(subject);
    }
    let json = serde_json::to_vec(&parsed.meta).expect("metadata serialises");
    let back: ManifestMeta = serde_json::from_slice(&json).expect("metadata deserialises");
    assert_eq!(back, parsed.meta);
    if content_type.is_none() {
        let again = parse(body, Some(media_type)).expect("accepted with its own type");
        assert_eq!(again.meta, parsed.meta);
        assert_eq!(again.references, parsed.references);
    }
}

/// One fuzz input (the body of `fuzz_targets/manifest.rs`; also replayed by
/// `tests/fuzz_regressions.rs`).
pub fn run(data: &[u8]) {
    let Some((&choice, body)) = data.split_first() else {
        return;
    };
    if body.len() > MAX_MANIFEST_BYTES {
        return; // refused by size before it is parsed
    }
    let owned;
    let (content_type, body): (Option<&str>, &[u8]) = match choice % 8 {
        0 => (None, body),
        i @ 1..=4 => (Some(SUPPORTED[usize::from(i) - 1]), body),
        5 => (
            Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
            body,
        ),
        6 => {
            let split = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
            let Ok(header) = std::str::from_utf8(&body[..split]) else {
                return;
            };
            owned = header.to_string();
            (
                Some(owned.as_str()),
                body.get(split + 1..).unwrap_or_default(),
            )
        }
        _ => (Some(""), body),
    };
    check(body, content_type);

    if let Some((child, child_type)) = default_platform_child(body) {
        digest_round_trips(&child);
        let _ = child_type;
    }
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = essence(text);
        if let Some(types) = accepted_manifest_types(&[text]) {
            assert!(!types.is_empty());
            assert!(types.iter().all(|t| SUPPORTED.contains(&t.as_str())));
        }
    }
}
