//! Understanding a pushed manifest: its media type, what it references, and
//! what the referrers API needs to know about it. Pure logic, no I/O.

use std::collections::BTreeMap;

use berth_storage::{Digest, ManifestMeta};
use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use crate::error::{ApiResult, Code, RegistryError};

pub use berth_oci::media_type::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
pub const SUPPORTED: [&str; 4] = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// Largest manifest accepted (the size the reference registry and most clients use).
pub const MAX_MANIFEST_BYTES: usize = 4 << 20;

/// Deepest nesting of arrays and objects accepted. Real manifests nest four
/// levels (index > manifests > descriptor > platform). serde skips unknown
/// fields at any depth without a limit, so without this cap a document nested
/// a million levels deep would be stored and served to clients whose parsers
/// recurse.
pub const MAX_JSON_DEPTH: usize = 64;

/// Most a manifest with a `subject` may carry into its referrer descriptor:
/// its annotations and artifactType, measured as the JSON the referrers API
/// sends. Every listing of the subject repeats them, so without a cap a
/// handful of 4 MiB referrers made each listing tens of megabytes. Signatures,
/// SBOMs and attestations (notation, cosign, sigstore bundles) put their
/// payload in blobs and carry well under 1 KiB here; 64 KiB leaves ample room
/// and still fits 16 referrers at the cap in one 1 MiB referrers page.
pub const MAX_REFERRER_METADATA_BYTES: usize = 64 << 10;

/// What must exist before the manifest may be stored.
#[derive(Debug, PartialEq, Eq)]
pub enum Reference {
    /// A blob (config or layer) that must be in the repository.
    Blob(Digest),
    /// A child manifest (of an index) that must be in the repository.
    Manifest(Digest),
}

/// A descriptor's `size`, to compare with the content the registry holds.
#[derive(Debug, PartialEq, Eq)]
pub struct SizeClaim {
    pub reference: Reference,
    pub size: u64,
    /// Where the descriptor sits in the manifest (`config`, `layers[2]`), for errors.
    pub field: String,
}

#[derive(Debug)]
pub struct ParsedManifest {
    pub meta: ManifestMeta,
    pub references: Vec<Reference>,
    /// The sizes the manifest states for its references.
    pub sizes: Vec<SizeClaim>,
}

/// Only the fields needed to decide what kind of document this is. Nothing
/// is built for the others (`IgnoredAny`), so a huge `config` costs no memory.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<SchemaVersion>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
}

/// `schemaVersion` if it is a whole number; any other value is skipped
/// without being built, and reported as a wrong version.
struct SchemaVersion(Option<u64>);

impl<'de> Deserialize<'de> for SchemaVersion {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = SchemaVersion;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a schema version")
            }
            fn visit_u64<E>(self, v: u64) -> Result<SchemaVersion, E> {
                Ok(SchemaVersion(Some(v)))
            }
            fn visit_i64<E>(self, _: i64) -> Result<SchemaVersion, E> {
                Ok(SchemaVersion(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<SchemaVersion, E> {
                Ok(SchemaVersion(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<SchemaVersion, E> {
                Ok(SchemaVersion(None))
            }
            fn visit_str<E>(self, _: &str) -> Result<SchemaVersion, E> {
                Ok(SchemaVersion(None))
            }
            fn visit_unit<E>(self) -> Result<SchemaVersion, E> {
                Ok(SchemaVersion(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SchemaVersion, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(SchemaVersion(None))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SchemaVersion, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(SchemaVersion(None))
            }
        }
        d.deserialize_any(Visit)
    }
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

/// Refuse JSON nested deeper than [`MAX_JSON_DEPTH`]: one pass over the
/// bytes, brackets inside strings skipped. Malformed JSON is left to the parser.
fn check_depth(body: &[u8]) -> ApiResult<()> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(invalid(format!(
                        "manifest JSON is nested more than {MAX_JSON_DEPTH} levels deep"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Length of `value` as JSON, without building the text.
fn json_len(value: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    match serde_json::to_writer(&mut count, value) {
        Ok(()) => count.0,
        // Cannot happen for strings and string maps; count it as too big.
        Err(_) => usize::MAX,
    }
}

/// A referrer's descriptor must stay small: see [`MAX_REFERRER_METADATA_BYTES`].
fn check_referrer_metadata(meta: &ManifestMeta) -> ApiResult<()> {
    if meta.subject.is_none() {
        return Ok(());
    }
    let carried = json_len(&meta.annotations).saturating_add(json_len(&meta.artifact_type));
    if carried > MAX_REFERRER_METADATA_BYTES {
        return Err(invalid(format!(
            "a manifest with a subject may carry at most {MAX_REFERRER_METADATA_BYTES} bytes of \
             annotations and artifactType (as JSON), this one carries {carried}: every referrers \
             listing of the subject repeats them; put large data in a blob"
        )));
    }
    Ok(())
}

/// Parse and check a manifest body. `content_type` is the request's header, if any.
pub fn parse(body: &[u8], content_type: Option<&str>) -> ApiResult<ParsedManifest> {
    check_depth(body)?;
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
    if probe.schema_version.and_then(|v| v.0) != Some(2) {
        return Err(invalid(
            "schemaVersion must be 2 (schema1 manifests are not supported)",
        ));
    }
    let parsed = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => parse_image(body, media_type),
        OCI_INDEX | DOCKER_LIST => parse_index(body, media_type),
        other => Err(invalid(format!(
            "unsupported manifest media type {other:?}; supported: {}",
            SUPPORTED.join(", ")
        ))),
    }?;
    check_referrer_metadata(&parsed.meta)?;
    Ok(parsed)
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
    let config = to_digest(m.config().digest(), "config")?;
    let mut references = vec![Reference::Blob(config.clone())];
    let mut sizes = vec![SizeClaim {
        reference: Reference::Blob(config),
        size: m.config().size(),
        field: "config".into(),
    }];
    for (i, layer) in m.layers().iter().enumerate() {
        let field = format!("layers[{i}]");
        let digest = to_digest(layer.digest(), &field)?;
        if !is_non_distributable(layer.media_type().as_ref()) {
            references.push(Reference::Blob(digest.clone()));
            sizes.push(SizeClaim {
                reference: Reference::Blob(digest),
                size: layer.size(),
                field,
            });
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
        sizes,
    })
}

fn parse_index(body: &[u8], media_type: String) -> ApiResult<ParsedManifest> {
    let index: ImageIndex = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("not a valid image index: {e}")))?;
    let mut references = Vec::new();
    let mut sizes = Vec::new();
    for (i, child) in index.manifests().iter().enumerate() {
        let field = format!("manifests[{i}]");
        let digest = to_digest(child.digest(), &field)?;
        references.push(Reference::Manifest(digest.clone()));
        sizes.push(SizeClaim {
            reference: Reference::Manifest(digest),
            size: child.size(),
            field,
        });
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
        sizes,
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
    fn depth_is_capped_outside_strings_only() {
        let nested = |levels: usize| {
            let extra = format!(
                r#","x-unknown":{}{}"#,
                "[".repeat(levels),
                "]".repeat(levels)
            );
            image(&extra)
        };
        // The manifest object is one level, so 63 more reach the cap exactly.
        parse(nested(MAX_JSON_DEPTH - 1).as_bytes(), None).expect("at the cap");
        let err = parse(nested(MAX_JSON_DEPTH).as_bytes(), None).expect_err("over the cap");
        assert_eq!(err.code, Code::ManifestInvalid);
        assert!(err.message.contains("64 levels"), "{}", err.message);
        // serde alone would skip this unknown field at any depth.
        let err = parse(nested(100_000).as_bytes(), None).expect_err("deep");
        assert!(err.message.contains("nested"), "{}", err.message);
        // Brackets in strings, escaped quotes included, are not nesting.
        let strings = format!(
            r#","annotations":{{"a":"{}","b":"\"{}\""}}"#,
            "[{".repeat(1000),
            "{".repeat(1000)
        );
        parse(image(&strings).as_bytes(), None).expect("brackets in strings");
    }

    #[test]
    fn odd_schema_versions_are_refused_without_building_them() {
        for v in ["1", "-2", "2.5", "\"2\"", "null", "[2,[2]]", r#"{"v":2}"#] {
            let body = format!(r#"{{"schemaVersion":{v},"mediaType":"{OCI_MANIFEST}"}}"#);
            let err = parse(body.as_bytes(), None).expect_err(v);
            assert!(
                err.message.contains("schemaVersion must be 2"),
                "{v}: {}",
                err.message
            );
        }
    }

    #[test]
    fn referrer_metadata_is_capped() {
        let referrer = |subject: bool, value_len: usize| {
            let subject = if subject {
                format!(
                    r#","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":9}}"#,
                    d("subject")
                )
            } else {
                String::new()
            };
            let extra = format!(
                r#","artifactType":"application/x-sig"{subject},"annotations":{{"k":"{}"}}"#,
                "v".repeat(value_len)
            );
            parse(image(&extra).as_bytes(), None)
        };
        // As JSON: {"k":"…"} is 8 bytes plus the value, "application/x-sig" 19.
        let fits = MAX_REFERRER_METADATA_BYTES - 8 - 19;
        referrer(true, fits).expect("at the cap");
        let err = referrer(true, fits + 1).expect_err("over the cap");
        assert_eq!(err.code, Code::ManifestInvalid);
        assert!(err.message.contains("65536"), "{}", err.message);
        // Without a subject nothing is copied into listings: no cap but the body's.
        referrer(false, 1 << 20).expect("no subject");
    }

    #[test]
    fn sizes_are_claimed_for_local_content_only() {
        let parsed = parse(image("").as_bytes(), None).expect("valid");
        let claims: Vec<(&str, u64)> = parsed
            .sizes
            .iter()
            .map(|c| (c.field.as_str(), c.size))
            .collect();
        // The non-distributable layer (size 4) lives elsewhere.
        assert_eq!(claims, vec![("config", 2), ("layers[0]", 3)]);
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":5}}]}}"#,
            d("child")
        );
        let parsed = parse(index.as_bytes(), None).expect("valid");
        assert_eq!(
            parsed.sizes,
            vec![SizeClaim {
                reference: Reference::Manifest(d("child").parse().expect("digest")),
                size: 5,
                field: "manifests[0]".into(),
            }]
        );
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
