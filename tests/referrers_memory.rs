//! The referrers API stays small in memory whatever referrers carry (issue 13).
//!
//! * Referrers whose annotations are as large as the registry allows are pushed, one over
//!   the cap is refused; every one is reachable by following `Link`, with and without an
//!   `artifactType` filter; 4 concurrent listings keep the server's peak RSS under 256 MiB.
//! * The case of the issue: 20 referrers with 3.5 MB of annotations each, stored before the
//!   cap existed (written straight into the storage layout), listed 4 times at once: once
//!   1.4 GB for one listing and 3.8 GB for four; now each comes on its own page, whole, and
//!   the server's peak RSS stays under 256 MiB.
//!
//! Peak RSS is `VmHWM` of `/proc/PID/status`, read after the server was (re)started for the
//! listings alone.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use berth_storage::{Descriptor, Digest, ManifestMeta};
use common::*;
use serde_json::{json, Value};

const LIMIT_KIB: u64 = 256 * 1024;
/// `berth_registry::manifest::MAX_REFERRER_METADATA_BYTES`
const CAP: usize = 64 << 10;
const SIG: &str = "application/vnd.example.sig";
const BOM: &str = "application/vnd.example.bom";
const OLD_ANNOTATION: usize = 3_500_000;

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest_of(data), "size": data.len()})
}

/// The `org.example.big` annotation of referrer `i`: `len` bytes.
fn big(i: usize, len: usize) -> String {
    format!("{i:06}{}", "x".repeat(len - 6))
}

/// Length of `org.example.big` for a referrer whose annotations and artifactType take
/// `carried` bytes as JSON (what the cap measures): `{"org.example.big":"…"}` is 22
/// bytes around the value, the type 2 more than its length for its quotes.
fn big_len(carried: usize, artifact_type: &str) -> usize {
    carried - 22 - (artifact_type.len() + 2)
}

/// A referrer manifest of `subject` with one annotation, `org.example.big`.
fn referrer(subject: &[u8], artifact_type: &str, big: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": descriptor("application/vnd.oci.empty.v1+json", b"{}"),
        "layers": [],
        "subject": descriptor(OCI_MANIFEST, subject),
        "annotations": {"org.example.big": big},
    }))
    .expect("serialize referrer")
}

/// One listing, following `Link` from `first`: (descriptors per page, every digest with the
/// length of its `org.example.big` annotation).
async fn list_all(
    c: &reqwest::Client,
    base: &str,
    first: &str,
    filtered: bool,
) -> (Vec<usize>, Vec<(String, usize)>) {
    let (mut pages, mut seen) = (Vec::new(), Vec::new());
    let mut next = Some(first.to_string());
    while let Some(path) = next.take() {
        let resp = c
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {path}");
        assert_eq!(header(&resp, "content-type").as_deref(), Some(OCI_INDEX));
        assert_eq!(
            header(&resp, "oci-filters-applied").as_deref(),
            filtered.then_some("artifactType"),
            "GET {path}"
        );
        let link = header(&resp, "link");
        let body = resp.bytes().await.expect("referrers body");
        let index: Value = serde_json::from_slice(&body).expect("referrers index JSON");
        let list = index["manifests"].as_array().expect("manifests list");
        pages.push(list.len());
        for d in list {
            let big = d["annotations"]["org.example.big"].as_str().unwrap_or("");
            seen.push((d["digest"].as_str().unwrap_or("").to_string(), big.len()));
        }
        if let Some(link) = link {
            let target = link
                .strip_prefix('<')
                .and_then(|l| l.split_once(">; rel=\"next\""))
                .map(|(t, _)| t.to_string())
                .unwrap_or_else(|| panic!("malformed Link {link:?}"));
            assert!(!filtered || target.contains("artifactType="), "{target}");
            next = Some(target);
        }
        assert!(pages.len() <= 200, "Link never ends");
    }
    (pages, seen)
}

/// Four listings at once; each must see `want` (digest, annotation length) in order.
async fn four_at_once(base: &str, first: &str, want: &[(String, usize)]) {
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (base, first) = (base.to_string(), first.to_string());
            tokio::spawn(async move { list_all(&client(), &base, &first, false).await })
        })
        .collect();
    for task in tasks {
        let (_, seen) = task.await.expect("listing task");
        assert_eq!(seen, want);
    }
}

#[tokio::test]
async fn referrers_at_the_cap_are_paged_and_filtered_in_bounded_memory() {
    let mut server = Server::start();
    let (base, c, repo) = (server.url(), client(), "capped/app");
    let (_, _, subject_manifest) = tiny_image(&format!("{repo}:v1"));
    let subject = push_tiny_image(&c, &base, repo, "v1").await.0;
    assert_eq!(subject, digest_of(&subject_manifest));
    push_blob(&c, &base, repo, b"{}").await;

    let over = referrer(&subject_manifest, SIG, &big(0, big_len(CAP + 1, SIG)));
    let resp = c
        .put(format!("{base}/v2/{repo}/manifests/over"))
        .header("content-type", OCI_MANIFEST)
        .body(over)
        .send()
        .await
        .expect("PUT over the cap");
    assert_eq!(resp.status().as_u16(), 400);
    let body = resp.bytes().await.expect("error body");
    assert_eq!(
        error_codes(&body),
        Some(vec!["MANIFEST_INVALID".to_string()])
    );
    assert!(String::from_utf8_lossy(&body).contains("65536"));

    let mut pushed = Vec::new();
    for i in 0..48 {
        let t = if i % 3 == 0 { BOM } else { SIG };
        let len = big_len(CAP, t);
        let m = referrer(&subject_manifest, t, &big(i, len));
        let d = push_manifest(&c, &base, repo, &digest_of(&m), OCI_MANIFEST, &m).await;
        pushed.push((d, len, t));
    }
    pushed.sort();
    let all: Vec<(String, usize)> = pushed.iter().map(|(d, n, _)| (d.clone(), *n)).collect();
    let first = format!("/v2/{repo}/referrers/{subject}");

    let (pages, seen) = list_all(&c, &base, &first, false).await;
    assert!(
        pages.len() >= 3,
        "48 referrers of 64 KiB in 1 MiB pages: {pages:?}"
    );
    assert_eq!(seen, all, "every referrer once, in digest order");

    let boms: Vec<(String, usize)> = pushed
        .iter()
        .filter(|(_, _, t)| *t == BOM)
        .map(|(d, n, _)| (d.clone(), *n))
        .collect();
    let query = format!("{first}?artifactType={}", BOM.replace('+', "%2B"));
    let (pages, seen) = list_all(&c, &base, &query, true).await;
    assert_eq!(seen, boms, "filtered pages {pages:?}");
    let (pages, seen) = list_all(&c, &base, &format!("{query}&n=5"), true).await;
    assert_eq!((pages.iter().max(), seen), (Some(&5), boms), "{pages:?}");

    server.restart();
    let pid = server.pid().expect("server pid");
    let before = peak_rss_kib(pid);
    four_at_once(&base, &first, &all).await;
    let peak = peak_rss_kib(pid);
    eprintln!("48 referrers at the 64 KiB cap, 4 listings at once: peak RSS {before} KiB after start, {peak} KiB after");
    assert!(peak < LIMIT_KIB, "peak RSS {peak} KiB");
}

/// Writes a referrer of `subject` into `storage` as an older berth stored it when it was
/// pushed (blob, manifest link with its metadata, referrer entry).
fn store_old_referrer(
    storage: &Path,
    repo: &str,
    subject: &Digest,
    bytes: &[u8],
    meta: &ManifestMeta,
) {
    let digest: Digest = digest_of(bytes).parse().expect("digest");
    let hex = digest.hex();
    let write = |path: std::path::PathBuf, data: &[u8]| {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    };
    write(
        storage.join("blobs/sha256").join(&hex[..2]).join(hex),
        bytes,
    );
    let repo_dir = storage.join("repositories").join(repo);
    write(
        repo_dir.join("_manifests/sha256").join(hex),
        &serde_json::to_vec(meta).expect("meta JSON"),
    );
    let entry = Descriptor {
        media_type: meta.media_type.clone(),
        digest: digest.clone(),
        size: bytes.len() as u64,
        artifact_type: meta.artifact_type.clone(),
        annotations: meta.annotations.clone(),
    };
    write(
        repo_dir
            .join("_referrers/sha256")
            .join(subject.hex())
            .join(format!("sha256-{hex}")),
        &serde_json::to_vec(&entry).expect("descriptor JSON"),
    );
}

#[tokio::test]
async fn old_referrers_with_megabytes_of_annotations_list_in_bounded_memory() {
    let mut server = Server::start();
    let (base, c, repo) = (server.url(), client(), "old/app");
    let (_, _, subject_manifest) = tiny_image(&format!("{repo}:v1"));
    let subject: Digest = push_tiny_image(&c, &base, repo, "v1")
        .await
        .0
        .parse()
        .expect("subject digest");
    push_blob(&c, &base, repo, b"{}").await;
    // What the registry refuses now: 3.5 MB of annotations each.
    let mut want = Vec::new();
    for i in 0..20 {
        let value = big(i, OLD_ANNOTATION);
        let m = referrer(&subject_manifest, SIG, &value);
        let annotations = BTreeMap::from([("org.example.big".to_string(), value)]);
        let meta = ManifestMeta {
            media_type: OCI_MANIFEST.to_string(),
            subject: Some(subject.clone()),
            artifact_type: Some(SIG.to_string()),
            annotations: Some(annotations),
            references: Some(vec![digest_of(b"{}").parse().expect("digest")]),
        };
        store_old_referrer(server.storage(), repo, &subject, &m, &meta);
        want.push((digest_of(&m), OLD_ANNOTATION));
    }
    want.sort();
    let first = format!("/v2/{repo}/referrers/{subject}");

    server.restart();
    let pid = server.pid().expect("server pid");
    let before = peak_rss_kib(pid);
    let started = std::time::Instant::now();
    // The measure: 4 GETs at once. Each answers the first referrer alone and
    // whole (a page holds at least one, and at most 1 MiB more), with a Link to the next.
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("{base}{first}");
            tokio::spawn(async move {
                let resp = client().get(&url).send().await.expect("GET referrers");
                let link = header(&resp, "link");
                let body = resp.bytes().await.expect("referrers body");
                let index: Value = serde_json::from_slice(&body).expect("referrers index");
                (link, index)
            })
        })
        .collect();
    for task in tasks {
        let (link, index) = task.await.expect("GET task");
        assert!(link.is_some_and(|l| l.contains("rel=\"next\"")));
        let list = index["manifests"].as_array().expect("manifests");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["digest"].as_str(), Some(want[0].0.as_str()));
        let big = list[0]["annotations"]["org.example.big"]
            .as_str()
            .unwrap_or("");
        assert_eq!(big.len(), OLD_ANNOTATION);
    }
    let after_four = peak_rss_kib(pid);
    let four_took = started.elapsed();
    // All of them by following Link, one page each.
    let (pages, seen) = list_all(&c, &base, &first, false).await;
    assert_eq!(pages, vec![1; 20]);
    assert_eq!(seen, want);
    let peak = peak_rss_kib(pid);
    eprintln!(
        "20 stored referrers of 3.5 MB: peak RSS {before} KiB after start, {after_four} KiB after \
         4 GETs at once ({four_took:.1?}), {peak} KiB after listing all 20 pages ({:.1?})",
        started.elapsed()
    );
    assert!(peak < LIMIT_KIB, "peak RSS {peak} KiB");
}
