//! Understanding a pushed manifest: its media type, what it references, and
//! what the referrers API needs to know about it. Pure logic, no I/O.

use std::collections::BTreeMap;

use berth_storage::{Digest, ManifestMeta};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::Deserialize;

use crate::error::{ApiResult, Code, RegistryError};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const SUPPORTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Largest manifest accepted (the size the reference registry and most clients use).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// What must exist before the manifest may be stored.
#[derive(Debug, PartialEq, Eq)]
pub enum Reference {
    /// A blob (config or layer) that must be in the repository.
    Blob(Digest),
    /// A child manifest (of an index) that must be in the repository.
    Manifest(Digest),
}

#[derive(Debug)]
pub struct ParsedManifest {
    pub meta: ManifestMeta,
    pub references: Vec<Reference>,
}

/// Only the fields needed to decide what kind of document this is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    manifests: Option<serde_json::Value>,
    config: Option<serde_json::Value>,
}

fn invalid(message: impl Into<String>) -> RegistryError {
    RegistryError::bad_request(Code::ManifestInvalid, message)
}

/// Media type of a `Content-Type` value, without parameters.
pub fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn to_digest(d: &impl ToString, what: &str) -> ApiResult<Digest> {
    d.to_string()
        .parse()
        .map_err(|e| invalid(format!("{what}: {e}")))
}

/// Non-distributable ("foreign") layers live elsewhere; the registry need not hold them.
fn is_non_distributable(media_type: &str) -> bool {
    media_type.contains("nondistributable") || media_type.contains(".foreign.")
}

/// Parse and check a manifest body. `content_type` is the request's header, if any.
pub fn parse(body: &[u8], content_type: Option<&str>) -> ApiResult<ParsedManifest> {
    let probe: Probe = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
    let header_type = content_type.map(essence).filter(|t| !t.is_empty());
    let media_type = match (header_type, probe.media_type.as_deref()) {
        (Some(h), Some(b)) if h != b => {
            return Err(invalid(format!(
                "Content-Type {h} does not match the manifest's mediaType {b}"
            )))
        }
        (_, Some(b)) => b.to_string(),
        (Some(h), None) => h.to_string(),
        // Neither says: infer as the image-spec allows mediaType to be absent.
        (None, None) if probe.manifests.is_some() => OCI_INDEX.to_string(),
        (None, None) if probe.config.is_some() => OCI_MANIFEST.to_string(),
        (None, None) => return Err(invalid("cannot tell the manifest type: set Content-Type")),
    };
    if probe.schema_version.and_then(|v| v.as_u64()) != Some(2) {
        return Err(invalid(
            "schemaVersion must be 2 (schema1 manifests are not supported)",
        ));
    }
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => parse_image(body, media_type),
        OCI_INDEX | DOCKER_LIST => parse_index(body, media_type),
        other => Err(invalid(format!(
            "unsupported manifest media type {other:?}; supported: {}",
            SUPPORTED.join(", ")
        ))),
    }
}

fn subject_of(subject: Option<&Descriptor>) -> ApiResult<Option<Digest>> {
    subject
        .map(|s| to_digest(s.digest(), "subject"))
        .transpose()
}

fn annotations_of(
    a: Option<&std::collections::HashMap<String, String>>,
) -> Option<BTreeMap<String, String>> {
    a.map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// What garbage collection must keep for this manifest.
fn digests_of(references: &[Reference]) -> Vec<Digest> {
    references
        .iter()
        .map(|r| match r {
            Reference::Blob(d) | Reference::Manifest(d) => d.clone(),
        })
        .collect()
}

fn parse_image(body: &[u8], media_type: String) -> ApiResult<ParsedManifest> {
    let m: ImageManifest = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid image manifest: {e}")))?;
    let mut references = vec![Reference::Blob(to_digest(m.config().digest(), "config")?)];
    for (i, layer) in m.layers().iter().enumerate() {
        let digest = to_digest(layer.digest(), &format!("layers[{i}]"))?;
        if !is_non_distributable(layer.media_type().as_ref()) {
            references.push(Reference::Blob(digest));
        }
    }
    // Referrers API: artifactType, else the config's media type.
    let artifact_type = m
        .artifact_type()
        .as_ref()
        .map(|t| t.to_string())
        .or_else(|| Some(m.config().media_type().to_string()));
    Ok(ParsedManifest {
        meta: ManifestMeta {
            media_type,
            subject: subject_of(m.subject().as_ref())?,
            artifact_type,
            annotations: annotations_of(m.annotations().as_ref()),
            references: Some(digests_of(&references)),
        },
        references,
    })
}

fn parse_index(body: &[u8], media_type: String) -> ApiResult<ParsedManifest> {
    let index: ImageIndex = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid image index: {e}")))?;
    let mut references = Vec::new();
    for (i, child) in index.manifests().iter().enumerate() {
        references.push(Reference::Manifest(to_digest(
            child.digest(),
            &format!("manifests[{i}]"),
        )?));
    }
    Ok(ParsedManifest {
        meta: ManifestMeta {
            media_type,
            subject: subject_of(index.subject().as_ref())?,
            artifact_type: index.artifact_type().as_ref().map(|t| t.to_string()),
            annotations: annotations_of(index.annotations().as_ref()),
            references: Some(digests_of(&references)),
        },
        references,
    })
}

/// Content negotiation: which of the client's `Accept` types are manifest
/// types we know. `None` means the client named none of them (no header,
/// `*/*`, or only generic types) and takes whatever is stored.
pub fn accepted_manifest_types(accept: &[&str]) -> Option<Vec<String>> {
    let mut known = Vec::new();
    for value in accept {
        for item in value.split(',') {
            let t = essence(item);
            if t == "*/*" {
                return None;
            }
            if SUPPORTED.contains(&t) {
                known.push(t.to_string());
            }
        }
    }
    (!known.is_empty()).then_some(known)
}

/// For a client that cannot take an index: the digest of its linux/amd64
/// image, as the reference registry serves it.
pub fn default_platform_child(index_body: &[u8]) -> Option<(Digest, String)> {
    let index: ImageIndex = serde_json::from_slice(index_body).ok()?;
    index.manifests().iter().find_map(|d| {
        let p = d.platform().as_ref()?;
        let fits = p.os().to_string() == "linux" && p.architecture().to_string() == "amd64";
        fits.then(|| {
            Some((
                d.digest().to_string().parse().ok()?,
                d.media_type().to_string(),
            ))
        })
        .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> String {
        Digest::sha256_of(s.as_bytes()).to_string()
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}},
                      {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","digest":"{}","size":4}}]
            {extra}}}"#,
            d("config"),
            d("layer"),
            d("foreign")
        )
    }

    #[test]
    fn image_manifest_references_config_and_distributable_layers() {
        let parsed = parse(image("").as_bytes(), Some(OCI_MANIFEST)).expect("valid");
        assert_eq!(parsed.meta.media_type, OCI_MANIFEST);
        assert_eq!(
            parsed.references,
            vec![
                Reference::Blob(d("config").parse().expect("digest")),
                Reference::Blob(d("layer").parse().expect("digest")),
            ]
        );
        assert_eq!(
            parsed.meta.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        assert!(parsed.meta.subject.is_none());
        assert_eq!(
            parsed.meta.references,
            Some(vec![
                d("config").parse().expect("digest"),
                d("layer").parse().expect("digest")
            ])
        );
    }

    #[test]
    fn subject_and_artifact_type() {
        let extra = format!(
            r#","artifactType":"application/x-sig","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}},"annotations":{{"k":"v"}}"#,
            d("subject")
        );
        let parsed = parse(image(&extra).as_bytes(), None).expect("valid");
        assert_eq!(
            parsed.meta.subject,
            Some(d("subject").parse().expect("digest"))
        );
        assert_eq!(
            parsed.meta.artifact_type.as_deref(),
            Some("application/x-sig")
        );
        assert_eq!(
            parsed
                .meta
                .annotations
                .as_ref()
                .and_then(|a| a.get("k"))
                .map(String::as_str),
            Some("v")
        );
    }

    #[test]
    fn index_references_children() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5,"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
            d("child")
        );
        let parsed = parse(body.as_bytes(), Some(OCI_INDEX)).expect("valid");
        assert_eq!(
            parsed.references,
            vec![Reference::Manifest(d("child").parse().expect("digest"))]
        );
        let (child, mt) = default_platform_child(body.as_bytes()).expect("amd64 child");
        assert_eq!((child.to_string(), mt.as_str()), (d("child"), OCI_MANIFEST));
    }

    #[test]
    fn rejects_bad_manifests() {
        let cases: Vec<(String, Option<&str>)> = vec![
            ("not json".into(), Some(OCI_MANIFEST)),
            (image(""), Some(DOCKER_MANIFEST)), // header disagrees with body
            (
                r#"{"schemaVersion":1,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#
                    .into(),
                None,
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/x-unknown"}"#.into(),
                None,
            ),
            (r#"{"schemaVersion":2}"#.into(), None),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{}},"layers":[]}}"#
                ),
                None,
            ),
            (
                format!(
                    r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"x","digest":"sha256:zz","size":1}}]}}"#
                ),
                None,
            ),
        ];
        for (body, ct) in cases {
            let err = parse(body.as_bytes(), ct).expect_err(&body);
            assert_eq!(err.code, Code::ManifestInvalid, "{body}: {}", err.message);
        }
    }

    #[test]
    fn negotiation() {
        assert_eq!(accepted_manifest_types(&[]), None);
        assert_eq!(accepted_manifest_types(&["*/*"]), None);
        assert_eq!(accepted_manifest_types(&["application/json"]), None);
        assert_eq!(
            accepted_manifest_types(&[&format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.5")]),
            Some(vec![DOCKER_MANIFEST.to_string(), OCI_MANIFEST.to_string()])
        );
    }
}
