//! Attacks on the pull-through cache's blob fills, against a tiny in-test upstream that
//! trickles a blob: eight clients at once (and one that hangs up) share one upstream fetch;
//! a corrupting upstream is never cached nor served whole.

mod common;
mod mirror_support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mirror_support::*;

/// A tiny upstream: `/v2/` and blob GET/HEAD from a map, each GET counted, the body
/// trickled in 64 KiB pieces; `corrupt` serves other bytes of the same length.
struct Tiny {
    blobs: HashMap<String, Vec<u8>>,
    gets: AtomicUsize,
    corrupt: bool,
    /// Each body's last piece waits for a permit here (none: held until the test opens it).
    gate: tokio::sync::Semaphore,
}

/// A gate that is open from the start.
fn open_gate() -> tokio::sync::Semaphore {
    tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS)
}

async fn tiny_upstream(tiny: Arc<Tiny>) -> u16 {
    use axum::response::IntoResponse;
    let app = axum::Router::new()
        .route("/v2/", axum::routing::get(|| async { "{}" }))
        .fallback(move |req: axum::extract::Request| {
            let tiny = tiny.clone();
            async move {
                let path = req.uri().path().to_string();
                let Some(blob) = path
                    .rsplit_once("/blobs/")
                    .and_then(|(_, d)| tiny.blobs.get(d))
                else {
                    return axum::http::StatusCode::NOT_FOUND.into_response();
                };
                let mut bytes = blob.clone();
                if tiny.corrupt {
                    bytes[0] ^= 0xff;
                }
                let len = bytes.len();
                if req.method() == axum::http::Method::HEAD {
                    return ([("content-length", len.to_string())], "").into_response();
                }
                tiny.gets.fetch_add(1, Ordering::SeqCst);
                let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
                    bytes.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
                let last = pieces.len() - 1;
                let body = futures::StreamExt::then(
                    futures::stream::iter(pieces.into_iter().enumerate()),
                    move |(i, p)| {
                        let tiny = tiny.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(3)).await;
                            if i == last {
                                let _ = tiny.gate.acquire().await.map(|p| p.forget());
                            }
                            p
                        }
                    },
                );
                (
                    [("content-length", len.to_string())],
                    axum::body::Body::from_stream(body),
                )
                    .into_response()
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn tiny_mirror(dir: &Path, port: u16) -> Server {
    mirror_server(
        dir,
        &format!("[[mirror]]\nupstream = \"http://127.0.0.1:{port}\"\nprefix = \"tiny\"\n"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn eight_clients_share_one_upstream_fetch_and_a_hang_up_does_not_stop_it() {
    let blob = noise(7, 8 << 20);
    let digest = digest_of(&blob);
    let tiny = Arc::new(Tiny {
        blobs: HashMap::from([(digest.clone(), blob.clone())]),
        gets: AtomicUsize::new(0),
        corrupt: false,
        gate: open_gate(),
    });
    let port = tiny_upstream(tiny.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = tiny_mirror(dir.path(), port);
    let url = format!("{}/v2/tiny/big/blobs/{digest}", mirror.url());
    let c = client();

    // A client that reads the first bytes and hangs up.
    let mut quitter = c.get(&url).send().await.expect("GET");
    assert_eq!(quitter.status().as_u16(), 200);
    let first = quitter.chunk().await.expect("first chunk");
    assert!(first.is_some_and(|f| !f.is_empty()));
    drop(quitter);

    let pulls = (0..8).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = c.get(&url).send().await.expect("GET");
            assert_eq!(resp.status().as_u16(), 200);
            assert_eq!(resp.content_length(), Some(8 << 20));
            resp.bytes().await.expect("whole body")
        }
    });
    for body in futures::future::join_all(pulls).await {
        assert!(body == blob, "every client gets the right bytes");
    }
    // Served from storage now, and still one upstream GET in all.
    let again = c
        .get(&url)
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert!(again == blob);
    assert_eq!(
        tiny.gets.load(Ordering::SeqCst),
        1,
        "one upstream fetch for all clients"
    );
}

/// Clients that stall while the fill runs far past them (beyond the fill's 32 MiB window
/// of recent bytes in memory; the fill waits for them only briefly) still get every byte:
/// the rest from storage once stored. Another client meanwhile gets the whole blob.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_left_behind_by_the_fill_gets_the_rest_from_storage() {
    let blob = noise(9, 48 << 20);
    let digest = digest_of(&blob);
    let tiny = Arc::new(Tiny {
        blobs: HashMap::from([(digest.clone(), blob.clone())]),
        gets: AtomicUsize::new(0),
        corrupt: false,
        gate: open_gate(),
    });
    let port = tiny_upstream(tiny.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = tiny_mirror(dir.path(), port);
    let url = format!("{}/v2/tiny/slow/blobs/{digest}", mirror.url());
    let c = client();

    // Several stalled clients, each after reading a different amount.
    let mut stalled = Vec::new();
    for reads in 1..=4 {
        let mut slow = client().get(&url).send().await.expect("GET");
        assert_eq!(slow.status().as_u16(), 200);
        let mut got = Vec::new();
        for _ in 0..reads {
            let chunk = slow.chunk().await.expect("a chunk").expect("some bytes");
            got.extend_from_slice(&chunk);
        }
        stalled.push((slow, got));
    }
    // Another client takes the whole blob meanwhile: the fill is done when it has it.
    let fast = c.get(&url).send().await.expect("GET");
    assert!(fast.bytes().await.expect("whole body") == blob);
    for (mut slow, mut got) in stalled {
        while let Some(chunk) = slow.chunk().await.expect("the stalled client's next chunk") {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got.len(), blob.len(), "a stalled client gets every byte");
        assert!(got == blob, "and the right ones");
    }
    assert_eq!(tiny.gets.load(Ordering::SeqCst), 1, "one upstream fetch");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupting_upstream_is_never_cached_nor_served_whole() {
    let blob = noise(8, 1 << 20);
    let digest = digest_of(&blob);
    let tiny = Arc::new(Tiny {
        blobs: HashMap::from([(digest.clone(), blob.clone())]),
        gets: AtomicUsize::new(0),
        corrupt: true,
        gate: open_gate(),
    });
    let port = tiny_upstream(tiny.clone()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mirror = tiny_mirror(dir.path(), port);
    let url = format!("{}/v2/tiny/bad/blobs/{digest}", mirror.url());
    let c = client();
    for attempt in 1..=2 {
        let resp = c.get(&url).send().await.expect("GET");
        let outcome = match resp.status().as_u16() {
            200 => resp
                .bytes()
                .await
                .map(|b| b.len())
                .map_err(|e| e.to_string()),
            status => Err(format!("status {status}")),
        };
        assert!(
            outcome.is_err(),
            "attempt {attempt}: a corrupt blob must not arrive whole: {outcome:?}"
        );
    }
    assert_eq!(
        tiny.gets.load(Ordering::SeqCst),
        2,
        "nothing cached: the second pull asked again"
    );
    let hex = digest.trim_start_matches("sha256:");
    let stored = walk(mirror.storage()).into_iter().any(|p| p.contains(hex));
    assert!(
        !stored,
        "no file named after the digest in the mirror's storage"
    );
    assert!(
        mirror.log().contains("mirror: blob not cached"),
        "the mismatch is logged"
    );
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        out.push(path.display().to_string());
        if path.is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

/// Two mirror replicas over one bucket, with the upstream's body held back at its last
/// piece until the test lets it go.
async fn two_replicas(
    s3: &berth_storage::s3_test_server::S3TestServer,
    dir: &Path,
    tiny: Arc<Tiny>,
) -> (Server, Server) {
    let port = tiny_upstream(tiny).await;
    let config = dir.join("mirror.toml");
    std::fs::write(
        &config,
        format!("[[mirror]]\nupstream = \"http://127.0.0.1:{port}\"\nprefix = \"tiny\"\n"),
    )
    .expect("config");
    let args = ["--config", &config.display().to_string()].map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (
        Server::start_s3(s3, "cache", &args),
        Server::start_s3(s3, "cache", &args),
    )
}

fn closed_tiny(blob: &[u8]) -> (Arc<Tiny>, String) {
    let digest = digest_of(blob);
    let tiny = Arc::new(Tiny {
        blobs: HashMap::from([(digest.clone(), blob.to_vec())]),
        gets: AtomicUsize::new(0),
        corrupt: false,
        gate: tokio::sync::Semaphore::new(0),
    });
    (tiny, digest)
}

async fn wait_for_log(server: &Server, line: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !server.log().contains(line) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {line:?} in the log within a minute"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A blob one replica is filling is not fetched again by another replica over the same
/// bucket: the second waits on the first's lease and serves the stored blob.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_over_one_bucket_fill_a_blob_once() {
    let Some(s3) = s3_server("mirror-lease") else {
        return;
    };
    let blob = noise(11, 4 << 20);
    let (tiny, digest) = closed_tiny(&blob);
    let dir = tempfile::tempdir().expect("tempdir");
    let (one, two) = two_replicas(&s3, dir.path(), tiny.clone()).await;
    let c = client();
    let path = format!("/v2/tiny/shared/blobs/{digest}");
    let mut first = c
        .get(format!("{}{path}", one.url()))
        .send()
        .await
        .expect("GET one");
    assert_eq!(first.status().as_u16(), 200);
    let mut got = first.chunk().await.expect("chunk").expect("bytes").to_vec();
    let second = tokio::spawn({
        let (c, url) = (c.clone(), format!("{}{path}", two.url()));
        async move {
            let resp = c.get(url).send().await.expect("GET two");
            assert_eq!(resp.status().as_u16(), 200);
            resp.bytes().await.expect("body two").to_vec()
        }
    });
    wait_for_log(&two, "another replica is filling this blob").await;
    tiny.gate.add_permits(16);
    while let Some(chunk) = first.chunk().await.expect("chunk") {
        got.extend_from_slice(&chunk);
    }
    assert!(got == blob, "replica one serves the right bytes");
    assert!(
        second.await.expect("join") == blob,
        "and so does replica two"
    );
    assert_eq!(
        tiny.gets.load(Ordering::SeqCst),
        1,
        "one upstream fetch for both replicas"
    );
}

/// A replica that dies mid-fill leaves a lease that expires: the other replica then fills
/// the blob itself.
#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_replicas_fill_lease_expires_and_another_fills_the_blob() {
    let Some(s3) = s3_server("mirror-lease-crash") else {
        return;
    };
    let blob = noise(12, 2 << 20);
    let (tiny, digest) = closed_tiny(&blob);
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut one, two) = two_replicas(&s3, dir.path(), tiny.clone()).await;
    let c = client();
    let path = format!("/v2/tiny/crash/blobs/{digest}");
    let mut first = c
        .get(format!("{}{path}", one.url()))
        .send()
        .await
        .expect("GET one");
    assert_eq!(first.status().as_u16(), 200);
    assert!(first.chunk().await.expect("chunk").is_some());
    one.kill9();
    tiny.gate.add_permits(16);
    let resp = c
        .get(format!("{}{path}", two.url()))
        .send()
        .await
        .expect("GET two");
    assert_eq!(resp.status().as_u16(), 200);
    assert!(
        resp.bytes().await.expect("body") == blob,
        "filled by the surviving replica"
    );
    assert!(
        two.log().contains("another replica is filling this blob"),
        "it waited for the lease first"
    );
    assert_eq!(
        tiny.gets.load(Ordering::SeqCst),
        2,
        "fetched again only after the crash"
    );
}

/// Eviction racing pulls: four clients pull three ~3.2 MiB images round and round through
/// a mirror whose `max_size` holds about one of them, while housekeeping evicts (and
/// collects garbage with no grace) every second. Every pull must get every byte right:
/// what eviction takes away mid-pull is fetched again from the upstream, never served
/// half-deleted or lost to a collection running beside a refill.
#[tokio::test(flavor = "multi_thread")]
async fn eviction_racing_pulls_never_serves_a_wrong_or_missing_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = token_upstream(dir.path());
    let c = client();
    let images: Vec<(String, Image)> = (0..3)
        .map(|i| (format!("library/race{i}"), image(70 + i)))
        .collect();
    push_latest(&c, &upstream, &images).await;
    let table = evicting_hub_table(&upstream, "4MiB");
    let mirror = Arc::new(mirror_server(dir.path(), &table));
    let images = Arc::new(images);
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let mut clients = Vec::new();
    for client_no in 0..4usize {
        let (c, mirror, images) = (c.clone(), mirror.clone(), images.clone());
        clients.push(tokio::spawn(async move {
            let mut pulls = 0;
            // At least 6 rounds each, and on until three evictions happened (or time is up).
            while pulls < 6 || (evictions(&mirror) < 3 && std::time::Instant::now() < deadline)
            {
                let (repo, img) = &images[(client_no + pulls) % images.len()];
                let got = pull_all(&c, &mirror.url(), &format!("hub/{repo}")).await;
                if got.as_ref() != Ok(&img.blobs()) {
                    let log = mirror.log();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    panic!(
                        "client {client_no}, pull {pulls} of {repo}: {:?}\nmirror log (newest first):\n{}",
                        got.map(|blobs| blobs.iter().map(|b| b.len()).collect::<Vec<_>>()),
                        tail.join("\n")
                    );
                }
                pulls += 1;
            }
            pulls
        }));
    }
    let mut total = 0;
    for client in clients {
        total += client.await.expect("a pulling client panicked");
    }
    assert!(
        evictions(&mirror) >= 3,
        "eviction ran {} times during {total} pulls: the race was not exercised",
        evictions(&mirror)
    );
    let log = mirror.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.contains("mirror: blob not cached"),
        "a fill failed (digest or storage): {log}"
    );
}
