//! Small reads on S3 (issue 22 item 1) against a real S3 server (s3s-fs): a small pull is
//! one S3 GET (none once cached, or pushed through this replica), a manifest GET by digest one or none, a delete through
//! this replica is seen at once, and a delete through another replica is seen after the
//! link cache's TTL at the latest, however hard a client keeps the entry warm.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_storage::s3::RequestCountsSnapshot;
use berth_storage::s3_test_server::pattern;
use common::{client, error_codes, push_blob, push_manifest, s3_server, Server};
use common::{manifest_json, OCI_MANIFEST};

async fn status(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("request").status().as_u16()
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, Vec<u8>) {
    let resp = c
        .get(url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    let code = resp.status().as_u16();
    (code, resp.bytes().await.expect("body").to_vec())
}

/// A registry over `storage` in this process, so the test can read its S3 counters.
async fn in_process(storage: Arc<berth_storage::S3Storage>) -> String {
    let app = berth_registry::Registry::new(storage).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// S3 requests the storage sends while `f` runs.
async fn requests<F: std::future::Future<Output = ()>>(
    storage: &berth_storage::S3Storage,
    f: F,
) -> RequestCountsSnapshot {
    let before = storage.request_counts();
    f.await;
    storage.request_counts().since(&before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_pulls_cost_one_get_or_none_and_a_local_delete_shows_at_once() {
    let Some(s3) = s3_server("reads") else { return };
    let storage = Arc::new(berth_storage::S3Storage::new(&s3.options("")).expect("storage"));
    let base = in_process(storage.clone()).await;
    let c = client();

    let layer = pattern(4096, 1);
    let digest = push_blob(&c, &base, "reads/app", &layer).await;
    let blob_url = format!("{base}/v2/reads/app/blobs/{digest}");
    // The push was seen and its bytes kept: the first pull asks S3 nothing.
    let first = requests(&storage, async {
        assert_eq!(get(&c, &blob_url).await, (200, layer.clone()));
    })
    .await;
    assert_eq!(first.total(), 0, "a first small pull: {first:?}");
    // Past 64 KiB a pushed blob is not kept (many concurrent pulls must not buffer much):
    // one GET.
    let bigger = pattern(100 << 10, 3);
    let bigger_digest = push_blob(&c, &base, "reads/app", &bigger).await;
    let bigger_url = format!("{base}/v2/reads/app/blobs/{bigger_digest}");
    let first = requests(&storage, async {
        assert_eq!(get(&c, &bigger_url).await, (200, bigger.clone()));
    })
    .await;
    assert_eq!(
        (first.total(), first.get),
        (1, 1),
        "a first pull of a 100 KiB blob: {first:?}"
    );
    // Without the object cache the link is still remembered: just the GET (it says
    // the size too).
    let mut options = s3.options("");
    options.cache_bytes = Some(0);
    let links_only = Arc::new(berth_storage::S3Storage::new(&options).expect("storage"));
    let links_only_base = in_process(links_only.clone()).await;
    let small = pattern(4096, 2);
    let small_digest = push_blob(&c, &links_only_base, "reads/app", &small).await;
    let small_url = format!("{links_only_base}/v2/reads/app/blobs/{small_digest}");
    let first = requests(&links_only, async {
        assert_eq!(get(&c, &small_url).await, (200, small.clone()));
    })
    .await;
    assert_eq!(
        (first.total(), first.get),
        (1, 1),
        "a first small pull without the object cache: {first:?}"
    );
    let again = requests(&storage, async {
        assert_eq!(get(&c, &blob_url).await, (200, layer.clone()));
        let r = c
            .get(&blob_url)
            .header("range", "bytes=10-19")
            .send()
            .await
            .expect("ranged GET");
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(r.bytes().await.expect("body").as_ref(), &layer[10..20]);
    })
    .await;
    assert_eq!(again.total(), 0, "pulls of a cached small blob: {again:?}");

    let config = b"{\"architecture\":\"amd64\",\"os\":\"linux\"}".to_vec();
    push_blob(&c, &base, "reads/app", &config).await;
    let manifest = manifest_json(&config, &[&layer], None);
    let md = push_manifest(&c, &base, "reads/app", "v1", OCI_MANIFEST, &manifest).await;
    let manifest_url = format!("{base}/v2/reads/app/manifests/{md}");
    // Pushed here: its link and bytes were kept.
    let first = requests(&storage, async {
        assert_eq!(get(&c, &manifest_url).await, (200, manifest.clone()));
    })
    .await;
    assert_eq!(
        first.total(),
        0,
        "a first manifest GET by digest: {first:?}"
    );
    let again = requests(&storage, async {
        assert_eq!(get(&c, &manifest_url).await, (200, manifest.clone()));
    })
    .await;
    assert_eq!(
        again.total(),
        0,
        "a cached manifest GET by digest: {again:?}"
    );

    // Deleted through this replica: gone at once, although its bytes are cached.
    let code = status(c.delete(&manifest_url)).await;
    assert_eq!(code, 202, "DELETE manifest");
    assert_eq!(
        get(&c, &manifest_url).await.0,
        404,
        "deleted manifest served"
    );
    assert_eq!(status(c.delete(&blob_url)).await, 202, "DELETE blob");
    assert_eq!(get(&c, &blob_url).await.0, 404, "deleted blob served");
    assert_eq!(status(c.head(&blob_url)).await, 404, "deleted blob HEAD");
    // Pushed again: served again.
    push_blob(&c, &base, "reads/app", &layer).await;
    assert_eq!(get(&c, &blob_url).await, (200, layer.clone()));

    // With both caches off every pull asks S3: HEAD of the link, then the GET.
    let mut options = s3.options("");
    options.cache_bytes = Some(0);
    options.link_cache = Some(Duration::ZERO);
    let uncached = Arc::new(berth_storage::S3Storage::new(&options).expect("storage"));
    let uncached_base = in_process(uncached.clone()).await;
    let url = format!("{uncached_base}/v2/reads/app/blobs/{digest}");
    for _ in 0..2 {
        let n = requests(&uncached, async {
            assert_eq!(get(&c, &url).await, (200, layer.clone()));
        })
        .await;
        assert_eq!((n.head, n.get), (1, 1), "an uncached small pull: {n:?}");
    }
}

/// Keep pulling `url` through a replica until `deadline`, then return what it answers.
async fn pull_until(c: &reqwest::Client, url: &str, deadline: Instant) -> u16 {
    while Instant::now() < deadline {
        let code = get(c, url).await.0;
        assert!(code == 200 || code == 404, "{url}: {code}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    get(c, url).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_never_serves_what_another_deleted_beyond_the_link_ttl() {
    let Some(s3) = s3_server("ttl") else { return };
    let ttl = Duration::from_secs(1);
    let args = ["--s3-link-cache", "1s"];
    let a = Server::start_s3(&s3, "shared", &args);
    let b = Server::start_s3(&s3, "shared", &args);
    let c = client();

    // The blob stays in the bucket (another repository links it), so only the link
    // decides whether b may serve it from victim/app.
    let layer = pattern(4096, 2);
    let digest = push_blob(&c, &a.url(), "victim/app", &layer).await;
    push_blob(&c, &a.url(), "keeper/app", &layer).await;
    let config = b"{}".to_vec();
    push_blob(&c, &a.url(), "victim/app", &config).await;
    let manifest = manifest_json(&config, &[&layer], None);
    let md = push_manifest(&c, &a.url(), "victim/app", "v1", OCI_MANIFEST, &manifest).await;
    let blob_b = format!("{}/v2/victim/app/blobs/{digest}", b.url());
    let manifest_b = format!("{}/v2/victim/app/manifests/{md}", b.url());
    // b has seen (and cached) both.
    assert_eq!(get(&c, &blob_b).await, (200, layer.clone()));
    assert_eq!(get(&c, &manifest_b).await, (200, manifest.clone()));

    let manifest_a = format!("{}/v2/victim/app/manifests/{md}", a.url());
    assert_eq!(status(c.delete(&manifest_a)).await, 202);
    let blob_a = format!("{}/v2/victim/app/blobs/{digest}", a.url());
    assert_eq!(status(c.delete(&blob_a)).await, 202);
    let deleted = Instant::now();
    // An attacker pulls through b all along: hits must not extend the TTL.
    let deadline = deleted + ttl + Duration::from_millis(300);
    let (blob, man) = tokio::join!(
        pull_until(&c, &blob_b, deadline),
        pull_until(&c, &manifest_b, deadline)
    );
    assert_eq!(blob, 404, "b serves a blob a deleted, past the TTL");
    assert_eq!(man, 404, "b serves a manifest a deleted, past the TTL");
    assert_eq!(status(c.head(&blob_b)).await, 404);
    let keeper = format!("{}/v2/keeper/app/blobs/{digest}", b.url());
    assert_eq!(get(&c, &keeper).await, (200, layer), "other links stay");
}

/// What a stale link costs a push: a replica that still remembers a layer another replica
/// unlinked says "already there" to the push's HEAD; the manifest PUT then re-checks S3
/// and fails cleanly, and forgets the stale link, so the client's retry uploads the layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_link_never_links_a_manifest_to_missing_content() {
    let Some(s3) = s3_server("stale") else { return };
    // The default TTL (60 s): the stale answer below is certain within this test.
    let a = Server::start_s3(&s3, "shared", &[]);
    let b = Server::start_s3(&s3, "shared", &[]);
    let c = client();
    let layer = pattern(2048, 3);
    let config = b"{\"os\":\"linux\"}".to_vec();
    let digest = push_blob(&c, &b.url(), "team/app", &layer).await;
    push_blob(&c, &b.url(), "team/app", &config).await;
    let head_b = format!("{}/v2/team/app/blobs/{digest}", b.url());
    assert_eq!(status(c.head(&head_b)).await, 200);
    let delete_a = format!("{}/v2/team/app/blobs/{digest}", a.url());
    assert_eq!(status(c.delete(&delete_a)).await, 202);
    assert_eq!(
        status(c.head(&head_b)).await,
        200,
        "b answers from its link cache within the TTL"
    );
    let manifest = manifest_json(&config, &[&layer], None);
    let resp = c
        .put(format!("{}/v2/team/app/manifests/v1", b.url()))
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(
        resp.status().as_u16(),
        400,
        "manifest over an unlinked layer"
    );
    let body = resp.bytes().await.expect("body");
    assert_eq!(
        error_codes(&body),
        Some(vec!["MANIFEST_BLOB_UNKNOWN".to_string()]),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(status(c.head(&head_b)).await, 404, "the retry sees S3");
    push_blob(&c, &b.url(), "team/app", &layer).await;
    push_manifest(&c, &b.url(), "team/app", "v1", OCI_MANIFEST, &manifest).await;
    assert_eq!(get(&c, &head_b).await, (200, layer));
}
