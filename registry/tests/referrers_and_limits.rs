//! Referrers pages, the referrer annotation cap, descriptor sizes and the JSON
//! depth cap, through the HTTP API over the in-memory storage.

mod common;

use axum::http::StatusCode;
use axum::Router;
use berth_oci::media_type::{OCI_INDEX, OCI_MANIFEST};
use berth_registry::manifest::MAX_REFERRER_METADATA_BYTES;
use berth_storage::Digest;
use common::{app, call, push_blob, Reply};
use serde_json::{json, Value};

/// `listing::REFERRERS_PAGE_BYTES`.
const PAGE_BYTES: usize = 1 << 20;

async fn put_manifest(app: &Router, repo: &str, reference: &str, body: &[u8]) -> Reply {
    let uri = format!("/v2/{repo}/manifests/{reference}");
    let ct = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["mediaType"].as_str().map(str::to_string))
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    call(app, "PUT", &uri, &[("content-type", &ct)], body.to_vec()).await
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": Digest::sha256_of(data).to_string(), "size": data.len()})
}

/// A subject image in `repo`: (manifest bytes, its digest).
async fn subject(app: &Router, repo: &str) -> (Vec<u8>, Digest) {
    push_blob(app, repo, b"{}").await;
    push_blob(app, repo, b"layer").await;
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", b"{}"),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", b"layer")],
    }))
    .expect("json");
    assert_eq!(
        put_manifest(app, repo, "v1", &m).await.status,
        StatusCode::CREATED
    );
    let d = Digest::sha256_of(&m);
    (m, d)
}

fn referrer(subject: &[u8], artifact_type: &str, annotations: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": descriptor("application/vnd.oci.empty.v1+json", b"{}"),
        "layers": [],
        "subject": descriptor(OCI_MANIFEST, subject),
        "annotations": annotations,
    }))
    .expect("json")
}

/// Every page from `uri` on, following `Link`: (page sizes, all digests).
async fn all_pages(app: &Router, uri: &str, filtered: bool) -> (Vec<usize>, Vec<String>) {
    let (mut sizes, mut digests) = (Vec::new(), Vec::new());
    let mut next = Some(uri.to_string());
    while let Some(uri) = next.take() {
        let r = call(app, "GET", &uri, &[], vec![]).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        assert_eq!(r.header("content-type"), Some(OCI_INDEX));
        assert_eq!(r.header("content-length"), Some(&*r.body.len().to_string()));
        assert_eq!(r.header("oci-filters-applied").is_some(), filtered, "{uri}");
        let v: Value = serde_json::from_slice(&r.body).expect("index JSON");
        assert_eq!(
            (v["schemaVersion"].as_u64(), v["mediaType"].as_str()),
            (Some(2), Some(OCI_INDEX))
        );
        let list = v["manifests"].as_array().expect("manifests");
        assert!(
            !list.is_empty() || sizes.is_empty(),
            "an empty page after {uri}"
        );
        sizes.push(list.len());
        digests.extend(
            list.iter()
                .map(|d| d["digest"].as_str().unwrap_or("").to_string()),
        );
        if let Some(link) = r.header("link") {
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(t, _)| t.to_string())
                .unwrap_or_else(|| panic!("Link {link:?}"));
            if filtered {
                assert!(target.contains("artifactType="), "{target}");
            }
            next = Some(target);
        }
        assert!(sizes.len() < 100, "Link loops");
    }
    (sizes, digests)
}

#[tokio::test]
async fn referrers_are_paged_by_bytes_and_count_with_the_filter_kept() {
    let app = app();
    let (subject_bytes, subject) = subject(&app, "paged").await;
    // 40 referrers near the annotation cap: about 2.5 MiB of descriptors.
    let big = "x".repeat(MAX_REFERRER_METADATA_BYTES - 200);
    let mut pushed = Vec::new();
    for i in 0..40 {
        let t = if i % 4 == 0 {
            "application/x-sbom"
        } else {
            "application/x-sig"
        };
        let m = referrer(&subject_bytes, t, json!({ "i": i.to_string(), "big": big }));
        let r = put_manifest(&app, "paged", &Digest::sha256_of(&m).to_string(), &m).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.error());
        pushed.push((Digest::sha256_of(&m).to_string(), t));
    }
    pushed.sort();
    let base = format!("/v2/paged/referrers/{subject}");

    let (sizes, digests) = all_pages(&app, &base, false).await;
    let per_page = PAGE_BYTES / MAX_REFERRER_METADATA_BYTES;
    assert!(sizes.len() >= 3, "pages {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= per_page), "pages {sizes:?}");
    let all: Vec<String> = pushed.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(digests, all, "every referrer once, in digest order");

    let (sizes, digests) = all_pages(
        &app,
        &format!("{base}?artifactType=application/x-sbom"),
        true,
    )
    .await;
    let sboms: Vec<String> = pushed
        .iter()
        .filter(|(_, t)| *t == "application/x-sbom")
        .map(|(d, _)| d.clone())
        .collect();
    assert_eq!(digests, sboms, "pages {sizes:?}");

    let (sizes, digests) = all_pages(
        &app,
        &format!("{base}?n=7&artifactType=application/x-sig"),
        true,
    )
    .await;
    assert!(
        sizes.iter().all(|&n| n <= 7) && sizes.len() == 30usize.div_ceil(7),
        "{sizes:?}"
    );
    assert_eq!(digests.len(), 30);

    // Nothing refers to it: one empty page, no Link.
    let r = call(
        &app,
        "GET",
        &format!("/v2/paged/referrers/{}", Digest::sha256_of(b"none")),
        &[],
        vec![],
    )
    .await;
    assert_eq!((r.status, r.header("link")), (StatusCode::OK, None));

    let r = call(
        &app,
        "GET",
        &format!("{base}?last=sha256:nope"),
        &[],
        vec![],
    )
    .await;
    assert_eq!(r.error().1, "DIGEST_INVALID");
}

#[tokio::test]
async fn a_referrer_over_the_annotation_cap_is_refused() {
    let app = app();
    let (subject_bytes, subject) = subject(&app, "capped").await;
    let m = referrer(
        &subject_bytes,
        "application/x-sig",
        json!({ "big": "x".repeat(MAX_REFERRER_METADATA_BYTES) }),
    );
    let (status, code, message) = put_manifest(&app, "capped", "sig", &m).await.error();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );
    assert!(
        message.contains(&MAX_REFERRER_METADATA_BYTES.to_string()),
        "{message}"
    );
    let r = call(
        &app,
        "GET",
        &format!("/v2/capped/referrers/{subject}"),
        &[],
        vec![],
    )
    .await;
    let v: Value = serde_json::from_slice(&r.body).expect("index");
    assert_eq!(v["manifests"], json!([]));
}

#[tokio::test]
async fn descriptor_sizes_must_match_what_is_stored() {
    let app = app();
    let (image, image_digest) = subject(&app, "sizes").await;
    let config = descriptor("application/vnd.oci.image.config.v1+json", b"{}");
    let mut layer = descriptor("application/vnd.oci.image.layer.v1.tar", b"layer");
    layer["size"] = json!(6);
    let wrong = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer],
    }))
    .expect("json");
    let (status, code, message) = put_manifest(&app, "sizes", "wrong", &wrong).await.error();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );
    assert!(
        message.contains("layers[0]") && message.contains("5 bytes"),
        "{message}"
    );

    let mut child = descriptor(OCI_MANIFEST, &image);
    let index = |child: &Value| {
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [child]}),
        )
        .expect("json")
    };
    assert_eq!(
        put_manifest(&app, "sizes", "index", &index(&child))
            .await
            .status,
        StatusCode::CREATED
    );
    child["size"] = json!(image.len() + 1);
    let (status, code, message) = put_manifest(&app, "sizes", "index", &index(&child))
        .await
        .error();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );
    assert!(
        message.contains("manifests[0]") && message.contains(&image_digest.to_string()),
        "{message}"
    );

    // A blob only another repository holds: the answer is "unknown", as for
    // any missing blob, never a size that tells it exists elsewhere.
    let (status, code, _) = put_manifest(&app, "elsewhere", "wrong", &wrong)
        .await
        .error();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );
}

#[tokio::test]
async fn deeply_nested_json_is_refused() {
    let app = app();
    subject(&app, "deep").await;
    let body = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[],"x":{}{}}}"#,
        descriptor("application/vnd.oci.image.config.v1+json", b"{}"),
        "[".repeat(200_000),
        "]".repeat(200_000)
    );
    let (status, code, message) = put_manifest(&app, "deep", "v2", body.as_bytes())
        .await
        .error();
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
    );
    assert!(message.contains("nested"), "{message}");
}
