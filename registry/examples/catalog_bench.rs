//! How long `_catalog` and `tags/list` pages take with REPOS repositories and
//! one repository of TAGS tags (issue 22: 100,000 of each, a page under 20 ms
//! on disk and 100 ms on S3). A measurement, not a test: `scripts/bench-catalog.sh`
//! runs it.
//!
//! `cargo run --release -p berth-registry --example catalog_bench -- fs DIR REPOS TAGS`
//! `cargo run --release -p berth-registry --example catalog_bench -- s3 REPOS TAGS`
//! `cargo run --release -p berth-registry --example catalog_bench -- s3-at http://127.0.0.1:PORT BUCKET REPOS TAGS`
//! (an S3 server already running on a loopback port, e.g. moto; credentials from
//! AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
//!
//! Seeds through the storage API, many writes at once (on disk once per DIR;
//! on S3 into a fresh s3s-fs on a loopback port), then requests each page
//! through the registry's router in-process: the first request (cold: on disk
//! it includes the one walk of the tree a process makes) and the median of 5.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use berth_registry::Registry;
use berth_storage::{Digest, FsStorage, ManifestMeta, S3Storage, Storage};
use futures::{StreamExt, TryStreamExt};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error>;

/// Storage writes in flight while seeding.
const SEED_WRITES: usize = 64;
const TAGGED: &str = "big/tags";

fn repo_name(i: usize) -> String {
    format!("org-{:02}/app-{i:06}", i % 100)
}

async fn seed(s: &dyn Storage, repos: usize, tags: usize) -> Result<(), Error> {
    // A catalog read while the store is empty indexes it (on S3: writes the
    // marker), as on a registry berth created; otherwise the first page would
    // measure the one-time indexing of a registry an older berth wrote.
    s.repositories_after(None, Some(1)).await?;
    const BLOB: &[u8] = b"one blob every repository links";
    let blob = Digest::sha256_of(BLOB);
    let upload = s.upload_create("seed").await?;
    let data = futures::stream::once(async { Ok(bytes::Bytes::from_static(BLOB)) });
    s.upload_complete("seed", &upload.id, &blob, Some(Box::pin(data)))
        .await?;
    let started = Instant::now();
    futures::stream::iter(0..repos)
        .map(|i| {
            let blob = blob.clone();
            async move { s.link_blob(&repo_name(i), &blob).await }
        })
        .buffer_unordered(SEED_WRITES)
        .try_collect::<()>()
        .await?;
    eprintln!("seeded {repos} repositories in {:.1?}", started.elapsed());
    s.link_blob(TAGGED, &blob).await?;
    let manifest = bytes::Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{blob}","size":{}}},"layers":[]}}"#,
        BLOB.len()
    ));
    let digest = Digest::sha256_of(&manifest);
    let meta = ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        subject: None,
        artifact_type: None,
        annotations: None,
        references: Some(vec![blob.clone()]),
    };
    let started = Instant::now();
    futures::stream::iter(0..tags)
        .map(|t| {
            let (manifest, meta, digest) = (manifest.clone(), &meta, &digest);
            async move {
                let tag = format!("t{t:06}");
                s.manifest_put(TAGGED, digest, manifest, meta, Some(&tag))
                    .await
            }
        })
        .buffer_unordered(SEED_WRITES)
        .try_collect::<()>()
        .await?;
    eprintln!("seeded {tags} tags in {:.1?}", started.elapsed());
    Ok(())
}

async fn time_page(router: &axum::Router, path: &str) -> Result<(Duration, usize), Error> {
    let started = Instant::now();
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty())?)
        .await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 << 20).await?;
    let took = started.elapsed();
    if !status.is_success() {
        return Err(format!("{path}: {status}").into());
    }
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    let count = json["repositories"]
        .as_array()
        .or(json["tags"].as_array())
        .map_or(0, Vec::len);
    Ok((took, count))
}

/// S3 requests sent so far, where the storage counts them.
type Counter = Option<Arc<S3Storage>>;

fn sent(counter: &Counter) -> u64 {
    counter.as_ref().map_or(0, |s| s.request_counts().total())
}

async fn measure(
    storage: Arc<dyn Storage>,
    counter: Counter,
    repos: usize,
    tags: usize,
) -> Result<(), Error> {
    let router = Registry::new(storage).router();
    let tags_path = format!("/v2/{TAGGED}/tags/list");
    let pages = [
        ("catalog, first page", "/v2/_catalog?n=100".to_string()),
        (
            "catalog, middle",
            format!("/v2/_catalog?n=100&last={}", repo_name(repos / 2)),
        ),
        (
            "catalog, near the end",
            format!("/v2/_catalog?n=100&last={}", repo_name(repos - 150)),
        ),
        ("tags, first page", format!("{tags_path}?n=100")),
        (
            "tags, middle",
            format!("{tags_path}?n=100&last=t{:06}", tags / 2),
        ),
        (
            "tags, near the end",
            format!("{tags_path}?n=100&last=t{:06}", tags - 150),
        ),
    ];
    println!("{repos} repositories, {tags} tags in {TAGGED}");
    for (what, path) in &pages {
        let (cold, count) = time_page(&router, path).await?;
        let mut warm = Vec::new();
        let before = sent(&counter);
        for _ in 0..5 {
            warm.push(time_page(&router, path).await?.0);
        }
        let requests = (sent(&counter) - before) as f64 / 5.0;
        warm.sort();
        println!(
            "{what:<22} {count:>4} names   first {:>8.1} ms   median of 5 {:>7.1} ms   min-max {:.1}-{:.1} ms   S3 requests per page {requests:.1}",
            cold.as_secs_f64() * 1000.0,
            warm[2].as_secs_f64() * 1000.0,
            warm[0].as_secs_f64() * 1000.0,
            warm[4].as_secs_f64() * 1000.0,
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: catalog_bench fs DIR REPOS TAGS | catalog_bench s3 REPOS TAGS \
                 | catalog_bench s3-at http://127.0.0.1:PORT BUCKET REPOS TAGS";
    match &args[1..] {
        [kind, dir, repos, tags] if kind == "fs" => {
            let (repos, tags): (usize, usize) = (repos.parse()?, tags.parse()?);
            let marker = std::path::Path::new(dir).join(format!("seeded-{repos}x{tags}"));
            if !marker.exists() {
                seed(&FsStorage::open(dir)?, repos, tags).await?;
                std::fs::write(&marker, b"")?;
            }
            // A fresh storage, as a restarted server has: nothing cached.
            measure(Arc::new(FsStorage::open(dir)?), None, repos, tags).await
        }
        [kind, repos, tags] if kind == "s3" => {
            let (repos, tags): (usize, usize) = (repos.parse()?, tags.parse()?);
            let server = berth_storage::s3_test_server::S3TestServer::start("catalog")?
                .ok_or("s3s-fs is not installed")?;
            seed(&S3Storage::new(&server.options("reg"))?, repos, tags).await?;
            let storage = Arc::new(S3Storage::new(&server.options("reg"))?);
            measure(storage.clone(), Some(storage), repos, tags).await
        }
        [kind, endpoint, bucket, repos, tags] if kind == "s3-at" => {
            let (repos, tags): (usize, usize) = (repos.parse()?, tags.parse()?);
            let loopback = endpoint
                .strip_prefix("http://127.")
                .is_some_and(|rest| !rest.contains('@'));
            if !loopback {
                return Err(format!("{endpoint}: only http://127.x.y.z:PORT endpoints").into());
            }
            let key = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
            let options = berth_storage::S3Options {
                bucket: bucket.clone(),
                prefix: "reg".into(),
                endpoint: Some(endpoint.clone()),
                region: Some("us-east-1".into()),
                access_key_id: Some(key("AWS_ACCESS_KEY_ID")?),
                secret_access_key: Some(key("AWS_SECRET_ACCESS_KEY")?),
                session_token: None,
                virtual_hosted: false,
                allow_http: true,
                redirect_blobs: false,
                read_ahead: None,
                link_cache: None,
                cache_bytes: None,
            };
            seed(&S3Storage::new(&options)?, repos, tags).await?;
            let storage = Arc::new(S3Storage::new(&options)?);
            measure(storage.clone(), Some(storage), repos, tags).await
        }
        _ => Err(usage.into()),
    }
}
