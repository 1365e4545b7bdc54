//! How long the web UI takes to render its catalog and repository pages over a
//! filesystem storage with many repositories (issue 21: 10,000 × 20 tags under
//! 200 ms). A measurement, not a test: `scripts/bench-ui.sh` runs it.
//!
//! `cargo run --release -p berth-registry --example ui_bench -- DIR REPOS TAGS`
//! seeds DIR once (through the storage API: one config and layer shared by
//! all, a distinct manifest per tag), then renders each page through the
//! router in-process, cold (first view) and warm (median of 5).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use berth_registry::ui::UiOptions;
use berth_registry::Registry;
use berth_storage::{Digest, FsStorage, ManifestMeta, Storage};
use tower::ServiceExt;

type Error = Box<dyn std::error::Error>;

fn stream(data: &'static [u8]) -> berth_storage::ByteStream {
    Box::pin(futures::stream::once(async move {
        Ok(bytes::Bytes::from_static(data))
    }))
}

async fn seed(s: &FsStorage, repos: usize, tags: usize) -> Result<(), Error> {
    const CONFIG: &[u8] =
        br#"{"architecture":"amd64","os":"linux","created":"2026-11-30T10:00:00Z","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#;
    const LAYER: &[u8] = b"one shared layer";
    let (config, layer) = (Digest::sha256_of(CONFIG), Digest::sha256_of(LAYER));
    for (data, digest) in [(CONFIG, &config), (LAYER, &layer)] {
        let upload = s.upload_create("seed").await?;
        s.upload_complete("seed", &upload.id, digest, Some(stream(data)))
            .await?;
    }
    let started = Instant::now();
    for r in 0..repos {
        let repo = format!("team-{:02}/app-{r:05}", r % 50);
        s.link_blob(&repo, &config).await?;
        s.link_blob(&repo, &layer).await?;
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
        if r % 500 == 499 {
            eprintln!("seeded {} repositories in {:.0?}", r + 1, started.elapsed());
        }
    }
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
    let router = Registry::new(storage)
        .with_ui(UiOptions::default())
        .router();
    let middle = format!("/ui/r/team-{:02}/app-{:05}", (repos / 2) % 50, repos / 2);
    let pages = [
        ("catalog, page 1", "/ui/".to_string()),
        (
            "catalog, last page",
            format!("/ui/?page={}", repos.div_ceil(50)),
        ),
        ("catalog, filtered", "/ui/?q=app-0001".to_string()),
        ("repository", middle.clone()),
        ("repository by size", format!("{middle}?sort=size")),
    ];
    println!("{repos} repositories x {tags} tags in {dir}");
    for (what, path) in &pages {
        let cold = time_page(&router, path).await?;
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(time_page(&router, path).await?);
        }
        warm.sort();
        println!(
            "{what:<20} cold {:>8.1} ms   warm median {:>8.1} ms",
            cold.as_secs_f64() * 1000.0,
            warm[2].as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
