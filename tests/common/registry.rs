//! Talking to a registry over HTTP (reqwest): push blobs, manifests and tiny images, read
//! JSON and spec errors; digests of bytes and files; htpasswd files.
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// An HTTP client that never uses a proxy (all traffic goes to 127.0.0.1) and keeps no idle
/// connections, so it survives server restarts between requests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        // No request in these tests takes long; one that hangs must fail the test, not CI.
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build reqwest client")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Turns a Location header (absolute or relative) into an absolute URL.
pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", base.trim_end_matches('/'))
    } else {
        panic!("unexpected relative Location without leading slash: {location:?}")
    }
}

/// Appends a query parameter to an upload URL that may already carry a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Uploads `data` as a blob of `repo` with POST + PUT (two-step monolithic upload) and
/// returns its digest. Panics unless the registry answers 202 and then 201.
pub async fn push_blob(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let digest = digest_of(data);
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST blob upload");
    assert_eq!(
        resp.status().as_u16(),
        202,
        "POST /v2/{repo}/blobs/uploads/"
    );
    let location = header(&resp, "location").expect("upload Location header");
    let resp = c
        .put(with_query(&absolute(base, &location), "digest", &digest))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("PUT blob upload");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "PUT upload of {digest} to {repo}: {body}");
    digest
}

/// PUTs a manifest and returns its digest (sha256 of the exact bytes). Panics unless 201.
pub async fn push_manifest(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let resp = c
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "PUT /v2/{repo}/manifests/{reference}: {text}");
    digest_of(body)
}

/// A tiny but complete OCI image: (config bytes, layer bytes, manifest bytes).
pub fn tiny_image(seed: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layer = format!("layer content for {seed}\n").into_bytes();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]},
        "history": [{"created_by": seed}]
    }))
    .expect("serialize config");
    let manifest = manifest_json(&config, &[&layer], None);
    (config, layer, manifest)
}

/// An OCI image manifest for `config` and `layers`, with optional annotations.
pub fn manifest_json(
    config: &[u8],
    layers: &[&[u8]],
    annotations: Option<serde_json::Value>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": OCI_LAYER, "digest": digest_of(l), "size": l.len()
        })).collect::<Vec<_>>(),
    });
    if let Some(a) = annotations {
        m["annotations"] = a;
    }
    serde_json::to_vec(&m).expect("serialize manifest")
}

/// Pushes [`tiny_image`] to `repo:tag`; returns (manifest digest, layer digest, config digest).
pub async fn push_tiny_image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
) -> (String, String, String) {
    let (config, layer, manifest) = tiny_image(&format!("{repo}:{tag}"));
    let layer_digest = push_blob(c, base, repo, &layer).await;
    let config_digest = push_blob(c, base, repo, &config).await;
    let manifest_digest = push_manifest(c, base, repo, tag, OCI_MANIFEST, &manifest).await;
    (manifest_digest, layer_digest, config_digest)
}

/// The `code`s of a spec error body `{"errors":[{"code":..}]}`, or None if the body is not
/// such a document.
pub fn error_codes(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    errors
        .iter()
        .map(|e| e.get("code").and_then(|c| c.as_str()).map(str::to_string))
        .collect()
}

/// GET a JSON document; returns (status, parsed body or Null).
/// After clients raced to push `latest`: the tag serves exactly one of the `pushed`
/// manifests, with bytes matching its digest. Returns that digest.
pub async fn assert_latest_is_one_of(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    pushed: &[String],
) -> String {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/latest"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET latest");
    assert_eq!(resp.status().as_u16(), 200);
    let digest = header(&resp, "docker-content-digest").expect("digest header");
    let body = resp.bytes().await.expect("body");
    assert_eq!(
        digest_of(&body),
        digest,
        "tag serves bytes that do not match its digest"
    );
    assert!(
        pushed.contains(&digest),
        "tag points at {digest}, which nobody pushed"
    );
    digest
}

/// An htpasswd file as `htpasswd -B -C COST` writes it, with these `(user, password)` pairs.
pub fn write_htpasswd(path: &Path, accounts: &[(&str, &str)], cost: u32) {
    let mut text = String::new();
    for (user, password) in accounts {
        let hash = bcrypt::hash_with_result(password, cost)
            .expect("bcrypt hash")
            .format_for_version(bcrypt::Version::TwoY);
        text.push_str(&format!("{user}:{hash}\n"));
    }
    fs::write(path, text).expect("write htpasswd");
}

/// GETs a blob of `repo` and checks that it is served (200) with bytes that hash to `digest`;
/// `why` says what the test expected, for the failure message.
pub async fn assert_blob_served(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    digest: &str,
    why: &str,
) {
    let resp = c
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(resp.status().as_u16(), 200, "{repo} {digest}: {why}");
    let body = resp.bytes().await.expect("blob body");
    assert_eq!(
        digest_of(&body),
        digest,
        "{repo} {digest} serves other bytes: {why}"
    );
}

pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let resp = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// `sha256:<hex>` of a file, read in 1 MiB pieces.
pub fn file_digest(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}
