//! How long the web UI takes to render its catalog and repository pages over a
//! filesystem storage with many repositories (issue 21: 10,000 × 20 tags under
//! 200 ms). A measurement, not a test: `scripts/bench-ui.sh` runs it.
//!
//! `cargo run --release -p berth-registry --example ui_bench -- DIR REPOS TAGS`
//! seeds DIR once (through the storage API, 32 repositories at once: one
//! config and layer shared by all, a distinct manifest per tag, and each
//! repository's summary records as a push writes them), then renders each
//! page through the router in-process, cold (a new server) and warm (median
//! of 5), and the catalog's first page once more with its records deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use berth_registry::ui::UiOptions;
use berth_registry::Registry;
use berth_storage::{Digest, FsStorage, ManifestMeta, Storage, SummaryPart};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error>;

fn stream(data: &'static [u8]) -> berth_storage::ByteStream {
    Box::pin(futures::stream::once(async move {
        Ok(bytes::Bytes::from_static(data))
    }))
}

/// Repositories seeded at once: the disk's fsyncs overlap, so seeding takes
/// minutes rather than an hour.
const SEEDERS: usize = 32;

fn repo_name(r: usize) -> String {
    format!("team-{:02}/app-{r:05}", r % 50)
}

/// One repository: its tags each point at a manifest of their own (so the
/// pages summarise REPOS x TAGS manifests), all sharing one config and
/// layer; then its summary records, as pushes through the registry write
/// them.
async fn seed_repository(
    s: &FsStorage,
    r: usize,
    tags: usize,
    config: &Digest,
    layer: &Digest,
) -> Result<(), Error> {
    let repo = repo_name(r);
    // Seeding is resumable: a repository with all its tags and its row is done.
    let done = s.tags(&repo).await?.is_some_and(|t| t.len() == tags)
        && s.summary_get(&repo, SummaryPart::Row).await?.is_some();
    if done {
        return Ok(());
    }
    s.link_blob(&repo, config).await?;
    s.link_blob(&repo, layer).await?;
    for t in 0..tags {
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config.to_string(), "size": CONFIG.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer.to_string(), "size": LAYER.len()}],
            "annotations": {"n": format!("{repo}:{t}")}
        }))?;
        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(vec![config.clone(), layer.clone()]),
        };
        let digest = Digest::sha256_of(&manifest);
        let tag = format!("v{t}");
        s.manifest_put(&repo, &digest, manifest.into(), &meta, Some(&tag))
            .await?;
    }
    berth_registry::ui::write_summaries(s, &repo).await?;
    Ok(())
}

const CONFIG: &[u8] = br#"{"architecture":"amd64","os":"linux","created":"2026-11-30T10:00:00Z","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
const LAYER: &[u8] = b"one shared layer";

async fn seed(s: &FsStorage, repos: usize, tags: usize) -> Result<(), Error> {
    use futures::{StreamExt, TryStreamExt};
    let (config, layer) = (Digest::sha256_of(CONFIG), Digest::sha256_of(LAYER));
    for (data, digest) in [(CONFIG, &config), (LAYER, &layer)] {
        let upload = s.upload_create("seed").await?;
        s.upload_complete("seed", &upload.id, digest, Some(stream(data)))
            .await?;
    }
    let started = Instant::now();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (config, layer, done) = (&config, &layer, &done);
    futures::stream::iter(0..repos)
        .map(|r| async move {
            seed_repository(s, r, tags, config, layer).await?;
            let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if n % 500 == 0 {
                eprintln!("seeded {n} repositories in {:.0?}", started.elapsed());
            }
            Ok::<_, Error>(())
        })
        .buffer_unordered(SEEDERS)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!("seeded {repos} x {tags} in {:.1?}", started.elapsed());
    Ok(())
}

async fn time_page(router: &axum::Router, path: &str) -> Result<Duration, Error> {
    let started = Instant::now();
    let response = router
        .clone()
        .oneshot(Request::get(path).body(Body::empty())?)
        .await?;
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 64 << 20).await?;
    let took = started.elapsed();
    if !status.is_success() || body.is_empty() {
        return Err(format!("{path}: {status}").into());
    }
    Ok(took)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, repos, tags] = &args[..] else {
        return Err("usage: ui_bench DIR REPOS TAGS".into());
    };
    let (repos, tags): (usize, usize) = (repos.parse()?, tags.parse()?);
    let storage = Arc::new(FsStorage::open(dir)?);
    let marker = std::path::Path::new(dir).join(format!("seeded-{repos}x{tags}"));
    if !marker.exists() {
        seed(&storage, repos, tags).await?;
        std::fs::write(&marker, b"")?;
    }
    let router = |storage: Arc<FsStorage>| {
        Registry::new(storage)
            .with_ui(UiOptions::default())
            .router()
    };
    let middle = format!("/ui/r/{}", repo_name(repos / 2));
    let pages = [
        ("catalog, page 1", "/ui/".to_string()),
        (
            "catalog, middle page",
            format!("/ui/?page={}", repos.div_ceil(100).max(1)),
        ),
        ("catalog, filtered", "/ui/?q=app-0001".to_string()),
        ("repository", middle.clone()),
        ("repository by size", format!("{middle}?sort=size")),
    ];
    println!("{repos} repositories x {tags} tags in {dir}");
    // `berth serve` builds the disk's catalog index at start (one walk of
    // the tree); do the same here, so page times do not include it.
    let started = Instant::now();
    let listed = storage.repositories().await?.len();
    println!(
        "{:<22} {:>13.1} ms   ({listed} repositories, once per process)",
        "index built at start",
        ms(started.elapsed())
    );
    for (what, path) in &pages {
        // Cold: a new server (no memory caches; the OS page cache is warm).
        let cold = time_page(&router(storage.clone()), path).await?;
        let warm_router = router(storage.clone());
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(time_page(&warm_router, path).await?);
        }
        warm.sort();
        println!(
            "{what:<22} cold {:>8.1} ms   warm median {:>8.1} ms (min {:.1}, max {:.1})",
            ms(cold),
            ms(warm[2]),
            ms(warm[0]),
            ms(warm[4])
        );
    }
    // The first page with its repositories' records gone (written by an
    // older version, or lost): each row is recomputed from the manifests.
    let mut names: Vec<String> = (0..repos).map(repo_name).collect();
    names.sort();
    for name in names.iter().take(50) {
        let repo = std::path::Path::new(dir).join("repositories").join(name);
        for file in ["_summary", "_summary_manifests"] {
            let _ = std::fs::remove_file(repo.join(file));
        }
    }
    let cold = time_page(&router(storage.clone()), "/ui/").await?;
    println!(
        "{:<22} cold {:>8.1} ms   (rows recomputed and stored again)",
        "catalog, no records",
        ms(cold)
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
