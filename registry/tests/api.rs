//! The HTTP API over the in-memory storage, driven without a network.

mod common;

use axum::http::StatusCode;
use berth_oci::media_type::{OCI_INDEX, OCI_MANIFEST};
use berth_storage::Digest;
use common::{app, call, push_blob};

fn image_manifest(config: &Digest, layer: &Digest) -> Vec<u8> {
    format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":1}}]}}"#
    )
    .into_bytes()
}

#[tokio::test]
async fn base_endpoint_announces_the_api_version() {
    let r = call(&app(), "GET", "/v2/", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header_str("docker-distribution-api-version"),
        "registry/2.0"
    );
}

#[tokio::test]
async fn chunked_upload_keeps_one_url_and_rejects_out_of_order_chunks() {
    let app = app();
    let r = call(&app, "POST", "/v2/a/b/blobs/uploads/", &[], vec![]).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let url = r.header_str("location").to_string();
    assert!(url.starts_with("/v2/a/b/blobs/uploads/"), "{url}");
    let r = call(
        &app,
        "PATCH",
        &url,
        &[("content-range", "0-2"), ("content-length", "3")],
        b"abc".to_vec(),
    )
    .await;
    assert_eq!(
        (r.status, r.header_str("range")),
        (StatusCode::ACCEPTED, "0-2")
    );
    assert_eq!(r.header_str("location"), url);
    let r = call(
        &app,
        "PATCH",
        &url,
        &[("content-range", "5-7")],
        b"xyz".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.error_code(), "BLOB_UPLOAD_INVALID");
    let r = call(&app, "GET", &url, &[], vec![]).await;
    assert_eq!(
        (r.status, r.header_str("range")),
        (StatusCode::NO_CONTENT, "0-2")
    );
    let d = Digest::sha256_of(b"abcdef");
    let r = call(
        &app,
        "PUT",
        &format!("{url}?digest={d}"),
        &[],
        b"def".to_vec(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header_str("docker-content-digest"), d.to_string());
    let r = call(
        &app,
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        &[("range", "bytes=1-3")],
        vec![],
    )
    .await;
    assert_eq!(
        (r.status, r.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &b"bcd"[..])
    );
    assert_eq!(r.header_str("content-range"), "bytes 1-3/6");
}

#[tokio::test]
async fn manifest_needs_its_blobs_and_is_served_byte_for_byte() {
    let app = app();
    let config = push_blob(&app, "img", b"{}").await;
    let missing = Digest::sha256_of(b"never pushed");
    let r = call(
        &app,
        "PUT",
        "/v2/img/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        image_manifest(&config, &missing),
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN".into())
    );
    assert_eq!(
        call(&app, "GET", "/v2/img/tags/list", &[], vec![])
            .await
            .body,
        br#"{"name":"img","tags":[]}"#
    );

    let layer = push_blob(&app, "img", b"L").await;
    let body = image_manifest(&config, &layer);
    let r = call(
        &app,
        "PUT",
        "/v2/img/manifests/v1",
        &[("content-type", OCI_MANIFEST)],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let digest = Digest::sha256_of(&body).to_string();
    assert_eq!(r.header_str("docker-content-digest"), digest);
    let r = call(
        &app,
        "GET",
        "/v2/img/manifests/v1",
        &[("accept", OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(r.body, body);
    assert_eq!(r.header_str("content-type"), OCI_MANIFEST);
    // A client that only takes Docker types is told, not handed bytes it cannot read.
    let r = call(
        &app,
        "GET",
        "/v2/img/manifests/v1",
        &[(
            "accept",
            "application/vnd.docker.distribution.manifest.v2+json",
        )],
        vec![],
    )
    .await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN".into())
    );
}

#[tokio::test]
async fn index_is_negotiated_down_to_the_amd64_image_by_tag_only() {
    let app = app();
    let config = push_blob(&app, "multi", b"{}").await;
    let layer = push_blob(&app, "multi", b"L").await;
    let image = image_manifest(&config, &layer);
    let image_digest = Digest::sha256_of(&image);
    let r = call(
        &app,
        "PUT",
        &format!("/v2/multi/manifests/{image_digest}"),
        &[("content-type", OCI_MANIFEST)],
        image.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{image_digest}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}}]}}"#,
        image.len()
    );
    let r = call(
        &app,
        "PUT",
        "/v2/multi/manifests/latest",
        &[("content-type", OCI_INDEX)],
        index.clone().into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let index_digest = r.header_str("docker-content-digest").to_string();
    let r = call(
        &app,
        "GET",
        "/v2/multi/manifests/latest",
        &[("accept", OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, image);
    assert_eq!(
        r.header_str("docker-content-digest"),
        image_digest.to_string()
    );
    let r = call(
        &app,
        "GET",
        &format!("/v2/multi/manifests/{index_digest}"),
        &[("accept", OCI_MANIFEST)],
        vec![],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn names_and_digests_are_validated_before_storage() {
    let app = app();
    for path in [
        "/v2/Upper/tags/list",
        "/v2/a//b/tags/list",
        "/v2/%2e%2e/x/blobs/uploads/",
    ] {
        let r = call(&app, "GET", path, &[], vec![]).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::BAD_REQUEST, "NAME_INVALID".into()),
            "{path}"
        );
    }
    for digest in ["sha256:xyz", "nonsense", "md5:abc"] {
        let r = call(&app, "GET", &format!("/v2/a/blobs/{digest}"), &[], vec![]).await;
        assert_eq!(
            (r.status, r.error_code()),
            (StatusCode::BAD_REQUEST, "DIGEST_INVALID".into()),
            "{digest}"
        );
    }
    let r = call(&app, "GET", "/v2/never/tags/list", &[], vec![]).await;
    assert_eq!(
        (r.status, r.error_code()),
        (StatusCode::NOT_FOUND, "NAME_UNKNOWN".into())
    );
}
