//! `berth serve --storage s3://...` against a real S3 server (s3s-fs): conformance, two
//! replicas over one bucket, the S3 server failing mid-push, presigned redirects, and the
//! number of S3 requests a push and a pull cost.

mod common;

use std::sync::Arc;

use common::{
    absolute, client, digest_of, header, push_blob, push_manifest, s3_server, with_query, Server,
    OCI_MANIFEST,
};

const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_s3() {
    let Some(s3) = s3_server("conf") else { return };
    let server = Server::start_s3(&s3, "reg", &[]);
    let options = berth_conformance::Options {
        url: server.url(),
        namespace: "conformance/test".to_string(),
        only: std::env::var("BERTH_CONFORMANCE_ONLY").ok(),
        credentials: None,
        next: false,
    };
    let report = berth_conformance::run(&options).await;
    let failed = report.failed();
    eprintln!(
        "conformance on S3: {} checks, {} failed",
        report.results.len(),
        failed.len()
    );
    assert!(!report.results.is_empty(), "no checks ran");
    assert!(
        failed.is_empty(),
        "{} conformance check(s) failed on S3:\n{}",
        failed.len(),
        failed
            .iter()
            .map(|f| format!("  {}: {}", f.id, f.detail))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

use berth_storage::s3_test_server::pattern;

async fn get_bytes(c: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let resp = c.get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    (status, resp.bytes().await.expect("body").to_vec())
}

async fn start_upload(c: &reqwest::Client, base: &str, repo: &str) -> String {
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(resp.status().as_u16(), 202);
    header(&resp, "location").expect("Location")
}

/// PATCH one chunk with its Content-Range to `base` + the upload path.
async fn patch_chunk(
    c: &reqwest::Client,
    base: &str,
    location: &str,
    start: usize,
    chunk: &[u8],
) -> reqwest::Response {
    c.patch(absolute(base, location))
        .header("content-type", "application/octet-stream")
        .header(
            "content-range",
            format!("{start}-{}", start + chunk.len() - 1),
        )
        .body(chunk.to_vec())
        .send()
        .await
        .expect("PATCH")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_bucket() {
    let Some(s3) = s3_server("replicas") else {
        return;
    };
    let a = Server::start_s3(&s3, "shared", &[]);
    let b = Server::start_s3(&s3, "shared", &[]);
    let (ua, ub) = (a.url(), b.url());
    let c = client();

    // Push through A, pull through B.
    let (manifest, layer, _) = common::push_tiny_image(&c, &ua, "app/one", "v1").await;
    let resp = c
        .get(format!("{ub}/v2/app/one/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest via B");
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(header(&resp, "docker-content-digest"), Some(manifest));
    let (status, body) = get_bytes(&c, &format!("{ub}/v2/app/one/blobs/{layer}")).await;
    assert_eq!(status, 200);
    assert_eq!(digest_of(&body), layer);

    // A chunked upload of a big blob, chunks alternating between the replicas (parts of
    // the multipart upload are sent by both), finished on B and read back on A.
    let data = pattern(20 << 20, 7);
    let digest = digest_of(&data);
    let location = start_upload(&c, &ua, "app/big").await;
    let chunks = [3 << 20, 6 << 20, 1, 5 << 20];
    let mut at = 0;
    for (i, len) in chunks.iter().enumerate() {
        let base = if i % 2 == 0 { &ub } else { &ua };
        let resp = patch_chunk(&c, base, &location, at, &data[at..at + len]).await;
        assert_eq!(resp.status().as_u16(), 202, "chunk {i} via {base}");
        at += len;
        assert_eq!(header(&resp, "range"), Some(format!("0-{}", at - 1)));
    }
    // The status is the same on both.
    for base in [&ua, &ub] {
        let resp = c
            .get(absolute(base, &location))
            .send()
            .await
            .expect("status");
        assert_eq!(resp.status().as_u16(), 204);
        assert_eq!(header(&resp, "range"), Some(format!("0-{}", at - 1)));
    }
    let resp = c
        .put(with_query(&absolute(&ub, &location), "digest", &digest))
        .body(data[at..].to_vec())
        .send()
        .await
        .expect("final PUT via B");
    assert_eq!(resp.status().as_u16(), 201);
    let (status, body) = get_bytes(&c, &format!("{ua}/v2/app/big/blobs/{digest}")).await;
    assert_eq!(status, 200);
    assert!(body == data, "blob read via A differs from what was pushed");

    // 16 clients, half through each replica, race to tag their own manifest `latest`.
    let repo = "race/app";
    let shared = b"one layer for everybody".to_vec();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let base = if i % 2 == 0 { ua.clone() } else { ub.clone() };
        let (c, shared) = (c.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let layer = push_blob(&c, &base, repo, &shared).await;
            let config = format!("{{\"client\":{i}}}").into_bytes();
            push_blob(&c, &base, repo, &config).await;
            let manifest = common::manifest_json(&config, &[&shared], None);
            let _ = layer;
            push_manifest(&c, &base, repo, "latest", OCI_MANIFEST, &manifest).await
        }));
    }
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.expect("client task"));
    }
    let mut seen = None;
    for base in [&ua, &ub] {
        let digest = common::assert_latest_is_one_of(&c, base, repo, &pushed).await;
        // Both replicas agree.
        assert_eq!(*seen.get_or_insert(digest.clone()), digest);
    }
    for d in &pushed {
        let r = c
            .head(format!("{ub}/v2/{repo}/manifests/{d}"))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(r.status().as_u16(), 200, "manifest {d} lost");
    }
    let (_, tags) = common::get_json(&c, &format!("{ua}/v2/{repo}/tags/list")).await;
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    // No session is left in the bucket.
    // (s3s-fs keeps empty folders after a delete: count files.)
    fn files(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            files(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    let left = files(&s3.root().join("replicas/shared/uploads"));
    assert_eq!(left, 0, "finished uploads left sessions in the bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_outage_mid_push_is_a_retryable_error_and_leaves_no_blob() {
    let Some(mut s3) = s3_server("fault") else {
        return;
    };
    let server = Server::start_s3(&s3, "", &[]);
    let base = server.url();
    let c = client();
    let data = pattern(12 << 20, 3);
    let digest = digest_of(&data);
    let location = start_upload(&c, &base, "fault/app").await;
    let first = 9 << 20; // more than a part: a multipart upload has started
    let resp = patch_chunk(&c, &base, &location, 0, &data[..first]).await;
    assert_eq!(resp.status().as_u16(), 202);

    s3.stop();
    let resp = patch_chunk(&c, &base, &location, first, &data[first..]).await;
    let status = resp.status().as_u16();
    let retry_after = header(&resp, "retry-after");
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 503, "S3 down mid-push: {body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(body.contains("UNAVAILABLE"), "{body}");
    // A monolithic push fails the same way.
    let resp = c
        .post(format!(
            "{base}/v2/fault/app/blobs/uploads/?digest={}",
            digest_of(b"x")
        ))
        .body(b"x".to_vec())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status().as_u16(), 503);

    s3.start_again().expect("restart s3s-fs");
    // Nothing partial became visible.
    let resp = c
        .head(format!("{base}/v2/fault/app/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(resp.status().as_u16(), 404);
    // The session is where it was before the outage: resume from its offset and finish.
    let resp = c
        .get(absolute(&base, &location))
        .send()
        .await
        .expect("status");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(header(&resp, "range"), Some(format!("0-{}", first - 1)));
    let resp = patch_chunk(&c, &base, &location, first, &data[first..]).await;
    assert_eq!(resp.status().as_u16(), 202);
    let resp = c
        .put(with_query(&absolute(&base, &location), "digest", &digest))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status().as_u16(), 201);
    let (status, body) = get_bytes(&c, &format!("{base}/v2/fault/app/blobs/{digest}")).await;
    assert_eq!(status, 200);
    assert!(body == data, "blob differs after the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_blobs_answers_with_a_presigned_url() {
    let Some(s3) = s3_server("redir") else { return };
    let server = Server::start_s3(&s3, "p", &["--redirect-blobs"]);
    let base = server.url();
    let c = client(); // does not follow redirects
    let small = b"small blob behind a redirect".to_vec();
    let big = pattern(9 << 20, 5);
    for data in [&small, &big] {
        let digest = push_blob(&c, &base, "redir/app", data).await;
        let resp = c
            .get(format!("{base}/v2/redir/app/blobs/{digest}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 307);
        let to = header(&resp, "location").expect("Location");
        assert!(
            to.starts_with(&s3.endpoint()) && to.contains("X-Amz-Signature="),
            "{to}"
        );
        // The presigned URL serves the bytes, and ranges, with no credentials.
        let (status, body) = get_bytes(&c, &to).await;
        assert_eq!(status, 200);
        assert!(&body == data);
        let resp = c
            .get(&to)
            .header("range", "bytes=3-9")
            .send()
            .await
            .expect("range");
        assert_eq!(resp.status().as_u16(), 206);
        assert_eq!(resp.bytes().await.expect("body").as_ref(), &data[3..10]);
        // HEAD is still answered by the registry.
        let resp = c
            .head(format!("{base}/v2/redir/app/blobs/{digest}"))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(
            header(&resp, "content-length"),
            Some(data.len().to_string())
        );
    }
    // Unknown blobs are still 404, not a redirect.
    let resp = c
        .get(format!("{base}/v2/redir/app/blobs/{}", digest_of(b"nope")))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 404);
}

/// S3 requests per pushed blob and per pulled manifest, through the whole HTTP stack
/// (the registry runs in this process so its storage's counters can be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_requests_per_push_and_pull() {
    let Some(s3) = s3_server("count") else { return };
    let storage = Arc::new(berth_storage::S3Storage::new(&s3.options("")).expect("storage"));
    let app = berth_registry::Registry::new(storage.clone()).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let c = client();
    let count = || storage.request_counts();

    let layer = pattern(4096, 9);
    let digest = digest_of(&layer);
    // What docker does per layer: HEAD, POST, PATCH with the bytes, PUT with no body.
    let before = count();
    let r = c
        .head(format!("{base}/v2/count/app/blobs/{digest}"))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status().as_u16(), 404);
    let location = start_upload(&c, &base, "count/app").await;
    let r = c
        .patch(absolute(&base, &location))
        .body(layer.clone())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status().as_u16(), 202);
    let r = c
        .put(with_query(&absolute(&base, &location), "digest", &digest))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 201);
    let docker_style = count().since(&before);

    // Monolithic: HEAD, POST, PUT with the bytes.
    let layer2 = pattern(4096, 10);
    let before = count();
    let r = c
        .head(format!("{base}/v2/count/app/blobs/{}", digest_of(&layer2)))
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status().as_u16(), 404);
    push_blob(&c, &base, "count/app", &layer2).await;
    let monolithic = count().since(&before);

    let config = b"{}".to_vec();
    push_blob(&c, &base, "count/app", &config).await;
    let manifest = common::manifest_json(&config, &[&layer, &layer2], None);
    let before = count();
    push_manifest(&c, &base, "count/app", "v1", OCI_MANIFEST, &manifest).await;
    let manifest_push = count().since(&before);

    let before = count();
    let r = c
        .get(format!("{base}/v2/count/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(r.status().as_u16(), 200);
    let manifest_pull = count().since(&before);

    let before = count();
    let (status, _) = get_bytes(&c, &format!("{base}/v2/count/app/blobs/{digest}")).await;
    assert_eq!(status, 200);
    let blob_pull = count().since(&before);

    // A blob over one 8 MiB part: a multipart upload and a pointer (docs/storage-s3.md: N parts + 8). The
    // 256 MiB figures in docs/storage-s3.md follow from the same counts; 20 MiB keeps this test quick.
    let big = pattern(20 << 20, 20);
    let parts = (big.len() as u64).div_ceil(berth_storage::s3::PART_SIZE as u64);
    let before = count();
    push_blob(&c, &base, "count/app", &big).await;
    let big_push = count().since(&before);
    // Read through a fresh replica: the first read also fetches the pointer, later ones not.
    let replica = Arc::new(berth_storage::S3Storage::new(&s3.options("")).expect("storage"));
    let app = berth_registry::Registry::new(replica.clone()).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let replica_base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let big_url = format!("{replica_base}/v2/count/app/blobs/{}", digest_of(&big));
    let mut big_pulls = Vec::new();
    for _ in 0..2 {
        let before = replica.request_counts();
        let (status, body) = get_bytes(&c, &big_url).await;
        assert_eq!(status, 200);
        assert!(body == big, "big blob read back differs");
        big_pulls.push(replica.request_counts().since(&before));
    }

    eprintln!("S3 requests: docker-style blob push (HEAD, POST, PATCH, PUT): {docker_style:?}");
    eprintln!("S3 requests: monolithic blob push (HEAD, POST, PUT): {monolithic:?}");
    eprintln!("S3 requests: manifest push with tag: {manifest_push:?}");
    eprintln!("S3 requests: manifest pull by tag: {manifest_pull:?}");
    eprintln!("S3 requests: blob pull: {blob_pull:?}");
    eprintln!("S3 requests: 20 MiB blob push ({parts} parts): {big_push:?}");
    eprintln!(
        "S3 requests: 20 MiB blob pull, first and second on a replica: {:?}",
        big_pulls
    );
    // Exactly docs/storage-s3.md's table ("S3 requests per operation"): a change in either direction
    // means the table is wrong. The reference registry makes about 18 per blob.
    let expect = |what: &str, got: &berth_storage::s3::RequestCountsSnapshot, total: u64| {
        assert_eq!(
            got.total(),
            total,
            "S3 requests for {what}: {got:?}; docs/storage-s3.md says {total}"
        );
    };
    // 12 = 11 + the repository's catalog object, written by the first push to a repository
    // new to this process (the table's footnote).
    expect("a docker-style blob push", &docker_style, 12);
    expect("a monolithic blob push", &monolithic, 6);
    // One HEAD per referenced blob (its link in the repository; its size, for the
    // descriptor check, comes from the object cache: all three were pushed here and are
    // small), then the bytes, the link and the tag.
    expect("a manifest push with a tag, 3 blobs", &manifest_push, 6);
    assert_eq!(
        (manifest_push.head, manifest_push.put),
        (3, 3),
        "{manifest_push:?}"
    );
    // Just the tag: the manifest's link and bytes were kept when it was pushed here
    // (storage/src/s3/cache.rs), and so were the small blob's link and bytes.
    expect("a manifest pull by tag", &manifest_pull, 1);
    expect("a small blob pull", &blob_pull, 0);
    expect(
        "a blob push in one PUT, per 8 MiB part + 8",
        &big_push,
        parts + 8,
    );
    // One GET per 16 MiB range; on a replica's first read also the HEAD of the link
    // and the pointer (both remembered after).
    let ranges = (big.len() as u64).div_ceil(16 << 20);
    expect(
        "a first big blob pull on a replica",
        &big_pulls[0],
        2 + ranges,
    );
    expect("a later big blob pull", &big_pulls[1], ranges);
}
