//! Hostile and broken requests. Every case checks the response (status and the spec's JSON
//! error code, never a 5xx) AND that nothing changed: catalog, tags, manifests and blobs as
//! seen over HTTP, and the files below the storage (apart from the upload/temporary area).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SEED: &str = "bad/seed";
const TARGET: &str = "bad/target";

/// method, path, headers, body
type RawReq<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Vec<u8>);

/// What a client can see of the registry, plus the storage tree.
#[derive(Debug, PartialEq)]
struct Observed {
    http: Vec<(String, u16, String)>,
    tree: Snapshot,
}

struct Fixture {
    server: Server,
    c: reqwest::Client,
    base: String,
    seed_manifest: Vec<u8>,
    seed_manifest_digest: String,
    seed_blobs: Vec<String>,
}

impl Fixture {
    /// A server with one small image pushed to `bad/seed:v1`.
    async fn new() -> Fixture {
        let server = Server::start();
        let c = client();
        let base = server.url();
        let (config, layer, manifest) = tiny_image("bad-input seed");
        let layer_digest = push_blob(&c, &base, SEED, &layer).await;
        let config_digest = push_blob(&c, &base, SEED, &config).await;
        let seed_manifest_digest =
            push_manifest(&c, &base, SEED, "v1", OCI_MANIFEST, &manifest).await;
        Fixture {
            server,
            c,
            base,
            seed_manifest: manifest,
            seed_manifest_digest,
            seed_blobs: vec![layer_digest, config_digest],
        }
    }

    /// Catalog, tags, manifest and blob lookups in both repositories (including `probes`, the
    /// digests the bad requests tried to create), and the storage tree.
    async fn observe(&self, probes: &[String]) -> Observed {
        let mut urls = vec![
            ("GET", "/v2/_catalog".to_string()),
            ("GET", format!("/v2/{SEED}/tags/list")),
            ("GET", format!("/v2/{TARGET}/tags/list")),
            ("GET", format!("/v2/{SEED}/manifests/v1")),
            (
                "HEAD",
                format!("/v2/{SEED}/manifests/{}", self.seed_manifest_digest),
            ),
        ];
        for d in self.seed_blobs.iter().chain(probes) {
            for repo in [SEED, TARGET] {
                urls.push(("HEAD", format!("/v2/{repo}/blobs/{d}")));
                urls.push(("HEAD", format!("/v2/{repo}/manifests/{d}")));
            }
        }
        let mut http = Vec::new();
        for (method, path) in urls {
            let url = format!("{}{path}", self.base);
            let req = if method == "GET" {
                self.c.get(&url)
            } else {
                self.c.head(&url)
            };
            let resp = req
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: {e:?}"));
            let status = resp.status().as_u16();
            let mut body = resp.text().await.unwrap_or_default();
            if status >= 400 {
                // Error messages may carry request-specific details; the status says enough.
                body.clear();
            }
            http.push((format!("{method} {path}"), status, body));
        }
        Observed {
            http,
            tree: snapshot(&self.server.sandbox()),
        }
    }

    fn assert_unchanged(&self, before: &Observed, after: &Observed, case: &str) {
        for (b, a) in before.http.iter().zip(&after.http) {
            assert_eq!(b, a, "{case}: registry state seen over HTTP changed");
        }
        assert_same_tree(&before.tree, &after.tree, case);
        assert_eq!(
            raw_status(self.server.port, "GET", "/v2/"),
            Some(200),
            "{case}: server no longer answers GET /v2/"
        );
    }

    /// Sends a raw HTTP/1.1 request (path sent exactly as given: no URL normalization).
    fn raw(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> RawResponse {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.server.host(),
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        raw_request(self.server.port, &bytes, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no response at all to {method} {path}"))
    }
}

/// Asserts a spec error: status in `statuses`, a JSON `{"errors":[..]}` body with a code from
/// `codes`.
fn assert_error(case: &str, status: u16, body: &[u8], statuses: &[u16], codes: &[&str]) {
    let text = String::from_utf8_lossy(body);
    assert!(status < 500, "{case}: server error {status}: {text}");
    assert!(
        statuses.contains(&status),
        "{case}: status {status}, expected one of {statuses:?}; body: {text}"
    );
    let found = error_codes(body)
        .unwrap_or_else(|| panic!("{case}: {status} without a JSON error body: {text:?}"));
    assert!(
        found.iter().any(|c| codes.contains(&c.as_str())),
        "{case}: error codes {found:?}, expected one of {codes:?}; body: {text}"
    );
}

async fn send(req: reqwest::RequestBuilder, case: &str) -> (u16, Vec<u8>) {
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{case}: request failed: {e:?}"));
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap_or_default().to_vec())
}

fn path_of(url: &str) -> String {
    match url.strip_prefix("http://") {
        Some(rest) => rest
            .find('/')
            .map(|i| rest[i..].to_string())
            .unwrap_or_default(),
        None => url.to_string(),
    }
}

/// Sends headers announcing `declared` body bytes, then only `body`, then closes the write
/// side. Returns the response, if the server sent one.
fn truncated(
    port: u16,
    method: &str,
    path: &str,
    declared: usize,
    body: &[u8],
) -> Option<RawResponse> {
    let mut stream =
        TcpStream::connect(("127.0.0.1", port)).expect("connect for a truncated request");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("set read timeout");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: \
         application/octet-stream\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).expect("send headers");
    // The server may reject early (e.g. on the headers) and close: a failed write is fine.
    let _ = stream.write_all(body).and_then(|_| stream.flush());
    std::thread::sleep(Duration::from_millis(200));
    // The server may already have answered and closed; that is fine.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut stream, &mut buf);
    parse_raw_response(&buf)
}

#[tokio::test]
async fn truncated_uploads_store_nothing() {
    let f = Fixture::new().await;
    let full: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let half = &full[..500];
    let probes = vec![digest_of(&full), digest_of(half)];
    let before = f.observe(&probes).await;

    // Monolithic POST ?digest= with the digest of everything announced, and (nastier) with
    // the digest of exactly the bytes that were sent.
    for digest in &probes {
        let case = format!("POST ?digest={digest}, Content-Length 1000, 500 bytes sent");
        let path = format!("/v2/{TARGET}/blobs/uploads/?digest={digest}");
        let resp = truncated(f.server.port, "POST", &path, 1000, half);
        assert_truncation_refused(&case, resp);
        let after = f.observe(&probes).await;
        f.assert_unchanged(&before, &after, &case);
    }

    // POST, then a PUT that is cut short.
    for digest in &probes {
        let case = format!("PUT upload ?digest={digest}, Content-Length 1000, 500 bytes sent");
        let resp =
            f.c.post(format!("{}/v2/{TARGET}/blobs/uploads/", f.base))
                .send()
                .await
                .expect("POST upload");
        let status = resp.status().as_u16();
        let location = header(&resp, "location").expect("Location of the upload");
        assert_eq!(status, 202, "{case}: POST");
        let path = path_of(&with_query(&location, "digest", digest));
        let resp = truncated(f.server.port, "PUT", &path, 1000, half);
        assert_truncation_refused(&case, resp);
        let after = f.observe(&probes).await;
        f.assert_unchanged(&before, &after, &case);
    }
}

/// A cut-short body may be answered with a 4xx spec error or not at all (connection closed),
/// never with success or a server error.
fn assert_truncation_refused(case: &str, resp: Option<RawResponse>) {
    let Some(resp) = resp else {
        eprintln!("{case}: connection closed without a response");
        return;
    };
    let status = resp
        .status
        .unwrap_or_else(|| panic!("{case}: unparsable response: {:?}", resp.head));
    assert_error(
        case,
        status,
        &resp.body,
        &[400],
        &["BLOB_UPLOAD_INVALID", "SIZE_INVALID", "DIGEST_INVALID"],
    );
}

#[tokio::test]
async fn wrong_and_malformed_digests_are_rejected() {
    let f = Fixture::new().await;
    let data = b"the real content".to_vec();
    let other = digest_of(b"some other content");
    let probes = vec![digest_of(&data), other.clone()];
    let before = f.observe(&probes).await;

    // Monolithic POST with a digest of different content.
    let case = "monolithic POST with a wrong digest";
    let (status, body) = send(
        f.c.post(format!(
            "{}/v2/{TARGET}/blobs/uploads/?digest={other}",
            f.base
        ))
        .header("content-type", "application/octet-stream")
        .body(data.clone()),
        case,
    )
    .await;
    assert_error(case, status, &body, &[400], &["DIGEST_INVALID"]);
    f.assert_unchanged(&before, &f.observe(&probes).await, case);

    // Chunked upload closed with a wrong digest.
    let case = "PATCH then PUT with a wrong digest";
    let resp =
        f.c.post(format!("{}/v2/{TARGET}/blobs/uploads/", f.base))
            .send()
            .await
            .expect("POST upload");
    assert_eq!(resp.status().as_u16(), 202, "{case}: POST");
    let upload = absolute(&f.base, &header(&resp, "location").expect("Location"));
    let resp =
        f.c.patch(&upload)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("0-{}", data.len() - 1))
            .body(data.clone())
            .send()
            .await
            .expect("PATCH");
    assert_eq!(resp.status().as_u16(), 202, "{case}: PATCH");
    let upload = header(&resp, "location").map_or(upload, |l| absolute(&f.base, &l));
    let (status, body) = send(f.c.put(with_query(&upload, "digest", &other)), case).await;
    assert_error(case, status, &body, &[400], &["DIGEST_INVALID"]);
    f.assert_unchanged(&before, &f.observe(&probes).await, case);

    // Digests that are not digests.
    let malformed = [
        "sha256:abc".to_string(),
        format!("sha256:{}", "z".repeat(64)),
        format!("sha256:{}", "A".repeat(64)),
        "nocolon".to_string(),
        format!("md5:{}", "0".repeat(32)),
        "sha256:".to_string(),
    ];
    for digest in &malformed {
        let case = format!("monolithic POST with malformed digest {digest:?}");
        let (status, body) = send(
            f.c.post(format!(
                "{}/v2/{TARGET}/blobs/uploads/?digest={digest}",
                f.base
            ))
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
            &case,
        )
        .await;
        assert_error(
            &case,
            status,
            &body,
            &[400],
            &["DIGEST_INVALID", "UNSUPPORTED"],
        );
        let case = format!("GET blob with malformed digest {digest:?}");
        let (status, body) = send(
            f.c.get(format!("{}/v2/{SEED}/blobs/{digest}", f.base)),
            &case,
        )
        .await;
        assert_error(
            &case,
            status,
            &body,
            &[400, 404],
            &["DIGEST_INVALID", "BLOB_UNKNOWN", "UNSUPPORTED"],
        );
        f.assert_unchanged(&before, &f.observe(&probes).await, &case);
    }
}

#[tokio::test]
async fn oversized_manifest_is_rejected() {
    let f = Fixture::new().await;
    let (config, layer, _) = tiny_image("bad-input seed");
    let pad = "x".repeat(4 * 1024 * 1024 + 1024);
    let manifest = manifest_json(&config, &[&layer], Some(json!({ "pad": pad })));
    assert!(manifest.len() > 4 * 1024 * 1024);
    let probes = vec![digest_of(&manifest)];
    let before = f.observe(&probes).await;

    let case = "PUT manifest larger than 4 MiB";
    let (status, body) = send(
        f.c.put(format!("{}/v2/{SEED}/manifests/huge", f.base))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone()),
        case,
    )
    .await;
    assert_error(
        case,
        status,
        &body,
        &[413, 400],
        &["SIZE_INVALID", "MANIFEST_INVALID"],
    );
    f.assert_unchanged(&before, &f.observe(&probes).await, case);
    let (status, _) = send(
        f.c.head(format!("{}/v2/{SEED}/manifests/huge", f.base)),
        case,
    )
    .await;
    assert_eq!(status, 404, "{case}: the tag must not exist");
}

#[tokio::test]
async fn manifest_just_under_4_mib_is_accepted() {
    let f = Fixture::new().await;
    let (config, layer, _) = tiny_image("bad-input seed");
    let empty = manifest_json(&config, &[&layer], Some(json!({ "pad": "" })));
    let pad = "y".repeat(4 * 1024 * 1024 - empty.len());
    let manifest = manifest_json(&config, &[&layer], Some(json!({ "pad": pad })));
    assert_eq!(manifest.len(), 4 * 1024 * 1024, "test manifest size");
    let digest = push_manifest(&f.c, &f.base, SEED, "big", OCI_MANIFEST, &manifest).await;
    let resp =
        f.c.get(format!("{}/v2/{SEED}/manifests/big", f.base))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET big manifest");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str())
    );
    let bytes = resp.bytes().await.expect("body");
    assert!(
        bytes.as_ref() == manifest.as_slice(),
        "a 4 MiB manifest came back different"
    );
}

#[tokio::test]
async fn invalid_manifests_are_rejected() {
    let f = Fixture::new().await;
    let (config, layer, _) = tiny_image("bad-input seed");
    let missing_layer = b"a layer nobody uploaded".to_vec();
    let unknown_blob = manifest_json(&config, &[&layer, &missing_layer], None);
    let unknown_config = manifest_json(b"{\"not\":\"uploaded\"}", &[&layer], None);
    let mut no_config: Value = serde_json::from_slice(&f.seed_manifest).expect("seed manifest");
    no_config
        .as_object_mut()
        .expect("manifest object")
        .remove("config");
    let mut schema1: Value = serde_json::from_slice(&f.seed_manifest).expect("seed manifest");
    schema1["schemaVersion"] = json!(1);
    let mut bad_layer_digest: Value = serde_json::from_slice(&f.seed_manifest).expect("seed");
    bad_layer_digest["layers"][0]["digest"] = json!("sha256:nothex");

    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        ("not JSON", b"{not json".to_vec(), &["MANIFEST_INVALID"]),
        ("empty body", Vec::new(), &["MANIFEST_INVALID"]),
        ("JSON array", b"[]".to_vec(), &["MANIFEST_INVALID"]),
        (
            "truncated JSON",
            f.seed_manifest[..f.seed_manifest.len() / 2].to_vec(),
            &["MANIFEST_INVALID"],
        ),
        (
            "no config",
            serde_json::to_vec(&no_config).expect("json"),
            &["MANIFEST_INVALID"],
        ),
        (
            "schemaVersion 1",
            serde_json::to_vec(&schema1).expect("json"),
            &["MANIFEST_INVALID"],
        ),
        (
            "malformed layer digest",
            serde_json::to_vec(&bad_layer_digest).expect("json"),
            &["MANIFEST_INVALID", "DIGEST_INVALID"],
        ),
        (
            "layer never uploaded",
            unknown_blob.clone(),
            &["MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"],
        ),
        (
            "config never uploaded",
            unknown_config.clone(),
            &["MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN"],
        ),
    ];
    let probes: Vec<String> = cases.iter().map(|(_, body, _)| digest_of(body)).collect();
    let before = f.observe(&probes).await;
    for (i, (what, body, codes)) in cases.iter().enumerate() {
        let case = format!("PUT manifest: {what}");
        let (status, resp) = send(
            f.c.put(format!("{}/v2/{SEED}/manifests/bad{i}", f.base))
                .header("content-type", OCI_MANIFEST)
                .body(body.clone()),
            &case,
        )
        .await;
        assert_error(&case, status, &resp, &[400], codes);
        f.assert_unchanged(&before, &f.observe(&probes).await, &case);
    }

    // A digest reference that does not match the body.
    let case = "PUT manifest by a digest that is not the body's";
    let wrong = digest_of(b"not this manifest");
    let (status, resp) = send(
        f.c.put(format!("{}/v2/{SEED}/manifests/{wrong}", f.base))
            .header("content-type", OCI_MANIFEST)
            .body(f.seed_manifest.clone()),
        case,
    )
    .await;
    assert_error(
        case,
        status,
        &resp,
        &[400],
        &["DIGEST_INVALID", "MANIFEST_INVALID"],
    );
    f.assert_unchanged(&before, &f.observe(&probes).await, case);

    // Tags that are not tags.
    for tag in [
        "-leading-dash",
        ".dot",
        &"t".repeat(129),
        "semi;colon",
        "sp%20ace",
    ] {
        let case = format!("PUT manifest with invalid tag {tag:?}");
        let resp = f.raw(
            "PUT",
            &format!("/v2/{SEED}/manifests/{tag}"),
            &[("Content-Type", OCI_MANIFEST)],
            &f.seed_manifest,
        );
        let status = resp.status.unwrap_or(0);
        assert_error(
            &case,
            status,
            &resp.body,
            &[400, 404],
            &[
                "TAG_INVALID",
                "MANIFEST_INVALID",
                "NAME_INVALID",
                "MANIFEST_UNKNOWN",
            ],
        );
        f.assert_unchanged(&before, &f.observe(&probes).await, &case);
    }
}

#[tokio::test]
async fn unknown_manifest_media_type_is_rejected() {
    let f = Fixture::new().await;
    let unknown = "application/vnd.example.unknown.v1+json";
    let mut body: Value = serde_json::from_slice(&f.seed_manifest).expect("seed manifest");
    body["mediaType"] = json!(unknown);
    let body = serde_json::to_vec(&body).expect("json");
    let probes = vec![digest_of(&body)];
    let before = f.observe(&probes).await;

    let case = "PUT manifest with an unknown media type";
    let (status, resp) = send(
        f.c.put(format!("{}/v2/{SEED}/manifests/weird", f.base))
            .header("content-type", unknown)
            .body(body.clone()),
        case,
    )
    .await;
    assert_error(
        case,
        status,
        &resp,
        &[400, 415],
        &["MANIFEST_INVALID", "UNSUPPORTED"],
    );
    f.assert_unchanged(&before, &f.observe(&probes).await, case);

    let case = "PUT manifest whose Content-Type is not a manifest type at all";
    let (status, resp) = send(
        f.c.put(format!("{}/v2/{SEED}/manifests/weird", f.base))
            .header("content-type", "text/plain")
            .body(f.seed_manifest.clone()),
        case,
    )
    .await;
    assert_error(
        case,
        status,
        &resp,
        &[400, 415],
        &["MANIFEST_INVALID", "UNSUPPORTED"],
    );
    f.assert_unchanged(&before, &f.observe(&probes).await, case);
}

#[tokio::test]
async fn traversal_and_invalid_names_never_escape() {
    let f = Fixture::new().await;
    let blob = b"a blob that tries to escape".to_vec();
    let d = digest_of(&blob);
    let seed_d = f.seed_blobs[0].clone();
    let probes = vec![d.clone()];
    let before = f.observe(&probes).await;
    let name_codes: &[&str] = &[
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "BLOB_UNKNOWN",
        "MANIFEST_UNKNOWN",
        "BLOB_UPLOAD_UNKNOWN",
    ];

    // Escapes aim at a directory name that exists nowhere else, so that anything created
    // outside the snapshot (up in the temp directory) can be found afterwards.
    let esc = format!("escape{}", std::process::id());
    let names: Vec<String> = [
        "..",
        "../ESC",
        "../../ESC",
        "../../../../../ESC",
        "bad/../../ESC",
        "bad/seed/../../../ESC",
        "%2e%2e",
        "%2e%2e/ESC",
        "%2e%2e/%2e%2e/%2e%2e/ESC",
        "bad/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/ESC",
        "..%2f..%2f..%2fESC",
        "bad%2f..%2f..%2f..%2f..%2f..%2fESC",
        "%2E%2E/%2E%2E/ESC",
        "%252e%252e/%252e%252e/ESC",
        "..\\..\\ESC",
        ".",
        "./ESC",
        "bad/./seed",
        "Bad/Seed",
        "UPPER",
        "bad/Target",
        "a//b",
        "-a/b",
        "a/b-",
        "a..b/c",
        "a___b",
        "ESC%00y",
        "bad/seed%00",
        "/tmp/ESC",
        "%2ftmp%2fESC",
    ]
    .iter()
    .map(|n| n.replace("ESC", &esc))
    .collect();
    for name in &names {
        let requests: Vec<RawReq> = vec![
            ("GET", format!("/v2/{name}/tags/list"), vec![], vec![]),
            ("GET", format!("/v2/{name}/blobs/{seed_d}"), vec![], vec![]),
            ("HEAD", format!("/v2/{name}/manifests/v1"), vec![], vec![]),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?digest={d}"),
                vec![("Content-Type", "application/octet-stream")],
                blob.clone(),
            ),
            ("POST", format!("/v2/{name}/blobs/uploads/"), vec![], vec![]),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?mount={seed_d}&from={SEED}"),
                vec![],
                vec![],
            ),
            (
                "PUT",
                format!("/v2/{name}/manifests/v1"),
                vec![("Content-Type", OCI_MANIFEST)],
                f.seed_manifest.clone(),
            ),
            ("DELETE", format!("/v2/{name}/manifests/v1"), vec![], vec![]),
            (
                "DELETE",
                format!("/v2/{name}/blobs/{seed_d}"),
                vec![],
                vec![],
            ),
        ];
        for (method, path, headers, body) in requests {
            let case = format!("{method} {path}");
            let resp = f.raw(method, &path, &headers, &body);
            let status = resp.status.unwrap_or(0);
            if method == "HEAD" {
                assert!(
                    status == 400 || status == 404,
                    "{case}: status {status}, expected 400 or 404"
                );
            } else {
                assert_error(&case, status, &resp.body, &[400, 404], name_codes);
            }
        }
        f.assert_unchanged(
            &before,
            &f.observe(&probes).await,
            &format!("requests on name {name:?}"),
        );
    }

    // A mount from an invalid source repository: falling back to a plain upload (202) is
    // allowed, mounting (201) is not.
    for from in [
        "..",
        "../bad/seed",
        "%2e%2e/bad/seed",
        "Bad/Seed",
        "bad/../bad/seed",
    ] {
        let path = format!("/v2/{TARGET}/blobs/uploads/?mount={seed_d}&from={from}");
        let resp = f.raw("POST", &path, &[], &[]);
        let status = resp.status.unwrap_or(0);
        assert!(
            status == 202 || status == 400 || status == 404,
            "POST {path}: status {status}, expected 202 (plain upload), 400 or 404: {}",
            resp.body_text()
        );
        if status != 202 {
            assert_error(
                &format!("POST {path}"),
                status,
                &resp.body,
                &[400, 404],
                name_codes,
            );
        }
        f.assert_unchanged(&before, &f.observe(&probes).await, &format!("POST {path}"));
    }

    let temp = std::env::temp_dir();
    let escaped = find_named(&temp, &esc, 6);
    assert!(
        escaped.is_empty(),
        "requests with traversal names created files outside the storage: {escaped:?}"
    );
}

/// Paths below `dir` (at most `depth` levels) whose file name contains `needle`.
fn find_named(dir: &std::path::Path, needle: &str, depth: usize) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().contains(needle) {
            found.push(path.clone());
        }
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if depth > 1 && is_dir {
            found.extend(find_named(&path, needle, depth - 1));
        }
    }
    found
}
