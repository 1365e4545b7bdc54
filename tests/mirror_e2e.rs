//! The pull-through cache (`[[mirror]]`) with real clients and real upstreams on loopback:
//! a `berth serve` with token auth and Debian's `docker-registry` as upstreams, skopeo
//! through the prefix form, the `?ns=` and default-mirror forms over HTTP, `docker pull`
//! through a private dockerd started with `--registry-mirror`. Upstream requests are
//! counted from the upstream's own request log; a tiny in-test upstream trickles a blob to
//! show that eight clients share one upstream fetch, and serves corrupt bytes to show that
//! they are never cached.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(300);
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Deterministic bytes that do not compress (so layers are as big as asked).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A gzipped tar with one file, and the sha256 of the uncompressed tar (its diff_id).
fn layer(path: &str, content: &[u8]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, path, content)
        .expect("tar entry");
    let raw = tar.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip");
    (gz.finish().expect("gzip"), digest_of(&raw))
}

/// A three-layer linux/amd64 image that docker can unpack.
struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
    manifest: Vec<u8>,
    digest: String,
}

fn image(seed: u64) -> Image {
    let parts = [
        layer("big.bin", &noise(seed, 3 << 20)),
        layer("etc/motd", format!("mirrored {seed}\n").as_bytes()),
        layer("small.bin", &noise(seed + 1, 40_000)),
    ];
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/big.bin"]},
        "rootfs": {"type": "layers", "diff_ids": parts.iter().map(|p| p.1.clone()).collect::<Vec<_>>()},
    }))
    .expect("config");
    let layers: Vec<Vec<u8>> = parts.into_iter().map(|p| p.0).collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": OCI_LAYER_GZIP, "digest": digest_of(l), "size": l.len()
        })).collect::<Vec<_>>(),
    }))
    .expect("manifest");
    let digest = digest_of(&manifest);
    Image {
        config,
        layers,
        manifest,
        digest,
    }
}

/// A token from berth's `/token` for `scope`, as `user`.
async fn token(c: &reqwest::Client, base: &str, user: &str, password: &str, scope: &str) -> String {
    let resp = c
        .get(format!("{base}/token"))
        .query(&[("service", "berth"), ("scope", scope)])
        .basic_auth(user, Some(password))
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status().as_u16(), 200, "token for {scope}");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("token body")).expect("token json");
    body["token"].as_str().expect("token").to_string()
}

/// Pushes blobs and the manifest (as `repo:tag`), with a Bearer token when given.
async fn push_image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    img: &Image,
    bearer: Option<&str>,
) {
    let auth = |r: reqwest::RequestBuilder| match bearer {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    for blob in img.layers.iter().chain([&img.config]) {
        let resp = auth(c.post(format!("{base}/v2/{repo}/blobs/uploads/")))
            .send()
            .await
            .expect("POST upload");
        assert_eq!(resp.status().as_u16(), 202, "start upload to {repo}");
        let location = header(&resp, "location").expect("Location");
        let url = with_query(&absolute(base, &location), "digest", &digest_of(blob));
        let resp = auth(c.put(url))
            .body(blob.clone())
            .send()
            .await
            .expect("PUT blob");
        assert_eq!(resp.status().as_u16(), 201, "finish upload to {repo}");
    }
    let resp = auth(c.put(format!("{base}/v2/{repo}/manifests/{tag}")))
        .header("content-type", OCI_MANIFEST)
        .body(img.manifest.clone())
        .send()
        .await
        .expect("PUT manifest");
    assert_eq!(resp.status().as_u16(), 201, "PUT manifest {repo}:{tag}");
}

/// Pushes an artifact whose subject is `subject`'s manifest; returns its digest.
async fn push_referrer(c: &reqwest::Client, base: &str, bearer: &str, subject: &Image) -> String {
    let empty = b"{}".to_vec();
    let artifact = Image {
        config: empty.clone(),
        layers: Vec::new(),
        manifest: serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.signature",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(&empty), "size": 2},
            "layers": [],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest.len()},
        }))
        .expect("artifact"),
        digest: String::new(),
    };
    let digest = digest_of(&artifact.manifest);
    push_image(c, base, "library/app", &digest, &artifact, Some(bearer)).await;
    digest
}

/// The requests a registry logged (berth: its request log lines; docker-registry: its
/// access log), optionally only those whose line contains `filter`.
fn requests(server: &Server, filter: &str) -> usize {
    server
        .log()
        .lines()
        .filter(|l| {
            (l.contains(" route=") && l.contains(" status="))
                || l.contains("\"GET ")
                || l.contains("\"HEAD ")
        })
        .filter(|l| l.contains(filter))
        .count()
}

/// An upstream `berth serve` with logins and its token service: `pusher` may push,
/// `puller` (the mirror's account) may pull.
fn token_upstream(dir: &Path) -> Server {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(
        &htpasswd,
        &[("pusher", "push-pw"), ("puller", "pull-pw")],
        4,
    );
    let toml = format!(
        "[auth]\nhtpasswd = \"{}\"\ntoken_key = \"{}\"\n\
         [[access.rules]]\nwho = \"user:pusher\"\nrepositories = [\"**\"]\nactions = [\"*\"]\n\
         [[access.rules]]\nwho = \"user:puller\"\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
        htpasswd.display(),
        dir.join("token.pem").display()
    );
    Server::start_berth_with_config(dir, &toml, true)
}

fn mirror_server(dir: &Path, tables: &str) -> Server {
    let mirror_dir = dir.join("mirror");
    std::fs::create_dir_all(&mirror_dir).expect("mkdir");
    Server::start_berth_with_config(&mirror_dir, tables, false)
}

fn hub_mirror_table(upstream: &Server, ttl: &str) -> String {
    format!(
        "[[mirror]]\nupstream = \"{}\"\nprefix = \"docker.io\"\nnamespace = \"docker.io\"\ndefault = true\n\
         username = \"puller\"\npassword = \"pull-pw\"\nmanifest_ttl = \"{ttl}\"\nmax_size = \"10GiB\"\n",
        upstream.url()
    )
}

fn skopeo_copy(from: &str, to: &Path) {
    run_ok(
        cmd(
            "skopeo",
            [
                "copy",
                "--src-tls-verify=false",
                "--retry-times=0",
                from,
                &format!("dir:{}", to.display()),
            ],
        ),
        TIMEOUT,
    );
}

/// skopeo wrote exactly the image's manifest and blobs.
fn assert_copied(dir: &Path, img: &Image) {
    let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    assert_eq!(manifest, img.manifest, "manifest bytes through the mirror");
    for blob in img.layers.iter().chain([&img.config]) {
        let hex = digest_of(blob).trim_start_matches("sha256:").to_string();
        let copied = std::fs::read(dir.join(&hex)).expect("blob file");
        assert!(copied == *blob, "blob {hex} through the mirror");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_through_the_prefix_then_from_cache_with_the_upstream_gone() {
    if !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(1);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/app:push,pull",
    )
    .await;
    push_image(&c, &upstream.url(), "library/app", "1", &img, Some(&push)).await;
    let mirror = mirror_server(dir.path(), &hub_mirror_table(&upstream, "1h"));
    let from = format!("docker://{}/docker.io/library/app:1", mirror.host());

    // Eight clients ask for the cold tag at once: one upstream HEAD and one GET.
    let url = format!("{}/v2/docker.io/library/app/manifests/1", mirror.url());
    let gets = (0..8).map(|_| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            let resp = c
                .get(&url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET");
            assert_eq!(resp.status().as_u16(), 200);
            resp.bytes().await.expect("body")
        }
    });
    for body in futures::future::join_all(gets).await {
        assert_eq!(body.to_vec(), img.manifest);
    }
    assert_eq!(
        requests(&upstream, "method=HEAD route=manifest"),
        1,
        "one revalidation"
    );
    assert_eq!(
        requests(&upstream, "method=GET route=manifest"),
        1,
        "one fetch"
    );

    skopeo_copy(&from, &dir.path().join("first"));
    assert_copied(&dir.path().join("first"), &img);
    let cold = requests(&upstream, "");
    assert_eq!(
        requests(&upstream, "route=blob"),
        4,
        "each blob fetched once upstream"
    );

    // Within the TTL: a second pull by tag, a pull by digest and HEADs make no upstream request.
    skopeo_copy(&from, &dir.path().join("second"));
    assert_copied(&dir.path().join("second"), &img);
    let by_digest = format!(
        "docker://{}/docker.io/library/app@{}",
        mirror.host(),
        img.digest
    );
    skopeo_copy(&by_digest, &dir.path().join("by-digest"));
    let head = c
        .head(format!(
            "{}/v2/docker.io/library/app/manifests/1",
            mirror.url()
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("HEAD");
    assert_eq!(
        header(&head, "docker-content-digest").as_deref(),
        Some(img.digest.as_str())
    );
    assert_eq!(
        requests(&upstream, ""),
        cold,
        "warm pulls asked the upstream nothing"
    );

    // The containerd form (?ns=) and the registry-mirrors form (no prefix) are the same cache.
    for url in [
        format!("{}/v2/library/app/manifests/1?ns=docker.io", mirror.url()),
        format!("{}/v2/library/app/manifests/1", mirror.url()),
    ] {
        let resp = c
            .get(&url)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        assert_eq!(
            resp.bytes().await.expect("body").to_vec(),
            img.manifest,
            "{url}"
        );
    }
    assert_eq!(
        requests(&upstream, ""),
        cold,
        "other forms asked the upstream nothing"
    );

    // Upstream gone: the same pulls still work.
    upstream.stop();
    skopeo_copy(&from, &dir.path().join("offline"));
    assert_copied(&dir.path().join("offline"), &img);
    skopeo_copy(&by_digest, &dir.path().join("offline-digest"));

    // Pushes to the mirrored prefix (by any form) are refused.
    for base in [
        format!("{}/v2/docker.io/library/app", mirror.url()),
        format!("{}/v2/library/app", mirror.url()),
    ] {
        let resp = c
            .post(format!("{base}/blobs/uploads/"))
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 403, "push to {base}");
        let body = resp.bytes().await.expect("body");
        assert_eq!(
            error_codes(&body),
            Some(vec!["DENIED".to_string()]),
            "{base}"
        );
        let resp = c
            .put(format!("{base}/manifests/evil"))
            .header("content-type", OCI_MANIFEST)
            .body(img.manifest.clone())
            .send()
            .await
            .expect("PUT");
        assert_eq!(resp.status().as_u16(), 403, "manifest push to {base}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_are_revalidated_after_the_ttl_and_served_stale_when_the_upstream_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/app:push,pull",
    )
    .await;
    let (one, two) = (image(2), image(3));
    push_image(
        &c,
        &upstream.url(),
        "library/app",
        "latest",
        &one,
        Some(&push),
    )
    .await;
    let mirror = mirror_server(dir.path(), &hub_mirror_table(&upstream, "0s"));
    let url = format!("{}/v2/docker.io/library/app/manifests/latest", mirror.url());
    let get = |url: String| {
        let c = c.clone();
        async move {
            let resp = c
                .get(&url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET");
            let status = resp.status().as_u16();
            let warning = header(&resp, "warning");
            let digest = header(&resp, "docker-content-digest");
            let body = resp.bytes().await.expect("body");
            assert_eq!(status, 200, "{url}: {}", String::from_utf8_lossy(&body));
            (digest, warning)
        }
    };
    assert_eq!(get(url.clone()).await, (Some(one.digest.clone()), None));
    let manifest_gets = requests(&upstream, "method=GET route=manifest");
    // TTL 0: every request revalidates with a HEAD; an unchanged tag is not fetched again.
    assert_eq!(get(url.clone()).await, (Some(one.digest.clone()), None));
    assert_eq!(
        requests(&upstream, "method=GET route=manifest"),
        manifest_gets
    );
    assert!(
        requests(&upstream, "method=HEAD route=manifest") >= 2,
        "revalidated with HEAD"
    );
    // The tag moves upstream: the mirror follows.
    push_image(
        &c,
        &upstream.url(),
        "library/app",
        "latest",
        &two,
        Some(&push),
    )
    .await;
    assert_eq!(get(url.clone()).await, (Some(two.digest.clone()), None));
    // An index by tag, for a client that reads only image manifests: its amd64 child, fetched
    // through the cache on demand (never pulled before).
    let three = image(10);
    push_image(
        &c,
        &upstream.url(),
        "library/app",
        &three.digest,
        &three,
        Some(&push),
    )
    .await;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": three.digest, "size": three.manifest.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }))
    .expect("index");
    let resp = c
        .put(format!("{}/v2/library/app/manifests/multi", upstream.url()))
        .bearer_auth(&push)
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .await
        .expect("PUT index");
    assert_eq!(resp.status().as_u16(), 201);
    let (digest, _) = get(format!(
        "{}/v2/docker.io/library/app/manifests/multi",
        mirror.url()
    ))
    .await;
    assert_eq!(
        digest,
        Some(three.digest.clone()),
        "the platform's image for an index-blind client"
    );
    // Referrers come from the upstream's list, and are pulled through the cache by digest.
    let referrer = push_referrer(&c, &upstream.url(), &push, &two).await;
    let referrers_url = format!(
        "{}/v2/docker.io/library/app/referrers/{}",
        mirror.url(),
        two.digest
    );
    let listed = |url: String| {
        let c = c.clone();
        async move {
            let (status, index) = get_json(&c, &url).await;
            assert_eq!(status, 200, "{url}: {index}");
            index["manifests"]
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|d| d["digest"].as_str().unwrap_or_default().to_string())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    assert_eq!(listed(referrers_url.clone()).await, vec![referrer.clone()]);
    let by_digest = c
        .get(format!(
            "{}/v2/docker.io/library/app/manifests/{referrer}",
            mirror.url()
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET referrer");
    assert_eq!(by_digest.status().as_u16(), 200);
    // Upstream down: the cached tag, marked stale, rather than an error.
    upstream.stop();
    assert_eq!(
        listed(referrers_url).await,
        vec![referrer],
        "cached referrers when the upstream is down"
    );
    let (digest, warning) = get(url.clone()).await;
    assert_eq!(digest, Some(two.digest.clone()));
    assert!(
        warning.is_some_and(|w| w.starts_with("110 ")),
        "stale answer carries a Warning"
    );
    assert!(
        mirror.log().contains("serving the cached tag stale"),
        "and a log line"
    );
    // Never cached, upstream down: a clear 503, not a hang or a 404.
    let resp = c
        .get(format!(
            "{}/v2/docker.io/library/other/manifests/1",
            mirror.url()
        ))
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_registry_as_the_fallback_upstream() {
    if !(require_tool("skopeo") && require_tool("docker-registry")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = Server::start_kind(ServerKind::Distribution);
    let c = client();
    let img = image(4);
    push_image(&c, &upstream.url(), "team/tool", "v1", &img, None).await;
    // The first upstream is a closed loopback port: the fallback serves.
    let table = format!(
        "[[mirror]]\nupstream = \"http://127.0.0.1:9\"\nfallback = [\"{}\"]\nprefix = \"dist\"\nmanifest_ttl = \"1h\"\n",
        upstream.url()
    );
    let mirror = mirror_server(dir.path(), &table);
    let from = format!("docker://{}/dist/team/tool:v1", mirror.host());
    skopeo_copy(&from, &dir.path().join("first"));
    assert_copied(&dir.path().join("first"), &img);
    upstream.stop();
    skopeo_copy(&from, &dir.path().join("offline"));
    assert_copied(&dir.path().join("offline"), &img);
}

/// A tiny upstream: `/v2/` and blob GET/HEAD from a map, each GET counted, the body
/// trickled in 64 KiB pieces; `corrupt` serves other bytes of the same length.
struct Tiny {
    blobs: HashMap<String, Vec<u8>>,
    gets: AtomicUsize,
    corrupt: bool,
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
                let body =
                    futures::StreamExt::then(futures::stream::iter(pieces), |p| async move {
                        tokio::time::sleep(Duration::from_millis(3)).await;
                        p
                    });
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

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupting_upstream_is_never_cached_nor_served_whole() {
    let blob = noise(8, 1 << 20);
    let digest = digest_of(&blob);
    let tiny = Arc::new(Tiny {
        blobs: HashMap::from([(digest.clone(), blob.clone())]),
        gets: AtomicUsize::new(0),
        corrupt: true,
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

/// A dockerd of this test's own (never the suite's or the system's), started with
/// `--registry-mirror`, stopped by PID when dropped.
struct MirroredDockerd {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl MirroredDockerd {
    fn start(mirror: &str) -> MirroredDockerd {
        let dir = std::path::PathBuf::from(format!(
            "/var/tmp/berth-mirror-docker-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dockerd dir");
        let log = std::fs::File::create(dir.join("log")).expect("dockerd log");
        let mut command = std::process::Command::new("dockerd");
        command
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args([
                "--storage-driver",
                "overlay2",
                "--bridge",
                "none",
                "--iptables=false",
                "--tls=false",
            ])
            .args(["--registry-mirror", mirror])
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start dockerd");
        let daemon = MirroredDockerd { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !daemon
            .docker(["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not come up:\n{}",
                std::fs::read_to_string(daemon.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }

    fn docker<const N: usize>(&self, args: [&str; N]) -> std::process::Command {
        let mut c = cmd("docker", args);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.join("docker.sock").display()),
        );
        c.env("DOCKER_CONFIG", self.dir.join("cli"));
        c
    }
}

impl Drop for MirroredDockerd {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_pull_through_registry_mirrors() {
    if !(require_root() && require_program("dockerd") && require_program("docker")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(5);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/mirrored:push,pull",
    )
    .await;
    push_image(
        &c,
        &upstream.url(),
        "library/mirrored",
        "1",
        &img,
        Some(&push),
    )
    .await;
    let mirror = mirror_server(dir.path(), &hub_mirror_table(&upstream, "1h"));
    let daemon = MirroredDockerd::start(&mirror.url());
    let expected: Vec<String> = serde_json::from_slice::<serde_json::Value>(&img.config)
        .expect("config")["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|d| d.as_str().unwrap_or_default().to_string())
        .collect();
    let layers_of = |daemon: &MirroredDockerd| {
        let out = run_ok(
            daemon.docker([
                "image",
                "inspect",
                "--format",
                "{{json .RootFS.Layers}}",
                "mirrored:1",
            ]),
            TIMEOUT,
        );
        serde_json::from_str::<Vec<String>>(out.trim()).expect("layers json")
    };
    // A Docker Hub name: dockerd asks the mirror for library/mirrored, without a prefix.
    run_ok(daemon.docker(["pull", "mirrored:1"]), TIMEOUT);
    assert_eq!(layers_of(&daemon), expected, "every layer unpacked");
    assert!(
        requests(&mirror, "path=/v2/library/mirrored/manifests/1") >= 1,
        "dockerd used the mirror"
    );
    // Upstream gone: the same pull still works from the cache.
    run_ok(daemon.docker(["rmi", "mirrored:1"]), TIMEOUT);
    upstream.stop();
    run_ok(daemon.docker(["pull", "mirrored:1"]), TIMEOUT);
    assert_eq!(layers_of(&daemon), expected);
}

/// A containerd of this test's own (own root, state and sockets), stopped by PID when dropped.
struct PrivateContainerd {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl PrivateContainerd {
    fn start() -> PrivateContainerd {
        let dir = std::path::PathBuf::from(format!(
            "/var/tmp/berth-mirror-containerd-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("containerd dir");
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/ttrpc.sock\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(dir.join("log")).expect("containerd log");
        let mut command = std::process::Command::new("containerd");
        command
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start containerd");
        let daemon = PrivateContainerd { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !daemon
            .ctr(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not come up:\n{}",
                std::fs::read_to_string(daemon.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }

    fn ctr(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(args);
        c
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_pull_through_a_hosts_toml_mirror() {
    if !(require_root() && require_program("containerd") && require_program("ctr")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(6);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/viactr:push,pull",
    )
    .await;
    push_image(
        &c,
        &upstream.url(),
        "library/viactr",
        "1",
        &img,
        Some(&push),
    )
    .await;
    // No default mirror: the unprefixed name works only through ?ns=docker.io.
    let table = format!(
        "[[mirror]]\nupstream = \"{}\"\nprefix = \"hub\"\nnamespace = \"docker.io\"\n\
         username = \"puller\"\npassword = \"pull-pw\"\n",
        upstream.url()
    );
    let mirror = mirror_server(dir.path(), &table);
    let hosts = dir.path().join("hosts").join("docker.io");
    std::fs::create_dir_all(&hosts).expect("hosts dir");
    // The fallback server is a closed loopback port: nothing leaves the machine.
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:9\"\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.url()
        ),
    )
    .expect("hosts.toml");
    let daemon = PrivateContainerd::start();
    let hosts_dir = dir.path().join("hosts").display().to_string();
    let pull = |daemon: &PrivateContainerd| {
        run_ok(
            daemon.ctr(&[
                "images",
                "pull",
                "--hosts-dir",
                &hosts_dir,
                "--snapshotter",
                "native",
                "docker.io/library/viactr:1",
            ]),
            TIMEOUT,
        )
    };
    pull(&daemon);
    let listed = run_ok(daemon.ctr(&["images", "ls", "-q"]), TIMEOUT);
    assert!(listed.contains("docker.io/library/viactr:1"), "{listed}");
    assert!(
        requests(&mirror, "repository=hub/library/viactr") >= 5,
        "served as hub/library/viactr"
    );
    upstream.stop();
    run_ok(
        daemon.ctr(&["images", "rm", "docker.io/library/viactr:1"]),
        TIMEOUT,
    );
    pull(&daemon);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_on_s3_storage() {
    let Some(s3) = s3_server("mirror-cache") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(9);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/s3app:push,pull",
    )
    .await;
    push_image(&c, &upstream.url(), "library/s3app", "1", &img, Some(&push)).await;
    let config = dir.path().join("mirror.toml");
    std::fs::write(&config, hub_mirror_table(&upstream, "1h")).expect("config");
    let mirror = Server::start_s3(&s3, "cache", &["--config", &config.display().to_string()]);
    let base = format!("{}/v2/docker.io/library/s3app", mirror.url());
    let pull = || async {
        let resp = c
            .get(format!("{base}/manifests/1"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET");
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.bytes().await.expect("body").to_vec(), img.manifest);
        for blob in img.layers.iter().chain([&img.config]) {
            let url = format!("{base}/blobs/{}", digest_of(blob));
            let got = c
                .get(&url)
                .send()
                .await
                .expect("GET blob")
                .bytes()
                .await
                .expect("blob");
            assert!(got == *blob, "{url}");
        }
    };
    pull().await;
    let cold = requests(&upstream, "");
    pull().await;
    assert_eq!(requests(&upstream, ""), cold, "warm from S3");
    upstream.stop();
    pull().await;
}
