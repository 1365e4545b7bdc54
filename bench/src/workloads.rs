//! The four workloads. Each returns one [`Outcome`]; anything unexpected from the server
//! (wrong status, wrong bytes) is an error, never a silently skewed number.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use berth_oci::{Algorithm, Hasher};
use bytes::Bytes;
use reqwest::header::ACCEPT;
use reqwest::{Body, StatusCode};

use crate::data::{digest_of, BigBlob, Prng};
use crate::registry::{Registry, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use crate::{Args, Outcome, Workload};

const MIB: u64 = 1 << 20;

pub async fn run(reg: &Registry, args: &Args) -> Result<Outcome> {
    match args.workload {
        Workload::PushBig => push_big(reg, args).await,
        Workload::PushSmall => push_small(reg, args).await,
        Workload::PullBig => pull_big(reg, args, true).await,
        Workload::PullSmall => pull_small(reg, args).await,
        Workload::PullBigRaw => pull_big(reg, args, false).await,
        Workload::ManifestGet => manifest_get(reg, args, false).await,
        Workload::ManifestGetDigest => manifest_get(reg, args, true).await,
        Workload::PullImage => crate::many::many_clients(reg, args, false).await,
        Workload::Mixed => crate::many::many_clients(reg, args, true).await,
    }
}

/// A per-run seed, so that repeated runs against one server push new content.
pub fn nonce() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 40)
}

/// Megabytes (10^6 bytes) per second.
fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

pub async fn blob_digest(blob: BigBlob) -> Result<String> {
    tokio::task::spawn_blocking(move || blob.digest())
        .await
        .context("hashing the big blob")
}

/// A streamed request body for the big blob (no copy of the pool, nothing buffered).
fn streamed_body(blob: &BigBlob) -> Body {
    Body::wrap_stream(futures::stream::iter(
        blob.pieces().map(Ok::<Bytes, std::io::Error>),
    ))
}

pub async fn push_big_once(reg: &Registry, repo: &str, blob: &BigBlob, digest: &str) -> Result<()> {
    let upload = reg.start_upload(repo).await?;
    reg.finish_upload(&upload, digest, blob.len, streamed_body(blob))
        .await
}

async fn push_big(reg: &Registry, args: &Args) -> Result<Outcome> {
    let repo = format!("{}/push-big", args.repo_prefix);
    let len = args.big_mib * MIB;
    let seed = nonce();
    let mut runs = Vec::new();
    let mut total = 0.0;
    for rep in 0..args.reps {
        let blob = BigBlob::new(seed.wrapping_add(u64::from(rep)), len);
        let digest = blob_digest(blob.clone()).await?;
        let start = Instant::now();
        push_big_once(reg, &repo, &blob, &digest)
            .await
            .with_context(|| format!("pushing {} MiB blob {digest}", args.big_mib))?;
        let secs = start.elapsed().as_secs_f64();
        if !reg.has_blob(&repo, &digest).await? {
            bail!("blob {digest} was accepted but HEAD does not find it");
        }
        runs.push(mb_per_s(len, secs));
        total += secs;
    }
    Ok(big_transfer_outcome(
        args,
        len,
        runs,
        total,
        "monolithic PUT",
    ))
}

/// The result of `args.reps` transfers of one `len`-byte blob, in MB/s.
fn big_transfer_outcome(args: &Args, len: u64, runs: Vec<f64>, total: f64, how: &str) -> Outcome {
    let bytes = len * u64::from(args.reps);
    Outcome {
        value: mb_per_s(bytes, total),
        unit: "MB/s",
        seconds: total,
        ops: u64::from(args.reps),
        bytes,
        runs,
        p50_ms: None,
        p99_ms: None,
        extra: Vec::new(),
        detail: format!("{} x {} MiB, {how}", args.reps, args.big_mib),
    }
}

async fn pull_big(reg: &Registry, args: &Args, verify: bool) -> Result<Outcome> {
    let repo = format!("{}/pull-big", args.repo_prefix);
    let len = args.big_mib * MIB;
    let blob = BigBlob::new(nonce(), len);
    let digest = blob_digest(blob.clone()).await?;
    push_big_once(reg, &repo, &blob, &digest)
        .await
        .context("pushing the blob to pull (untimed)")?;

    let mut runs = Vec::new();
    let mut total = 0.0;
    for _ in 0..args.reps {
        let start = Instant::now();
        let mut resp = reg.get_blob(&repo, &digest).await?;
        let (got, n) = if verify {
            // Hash on another thread so that receiving and verifying overlap.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(64);
            let hasher = tokio::task::spawn_blocking(move || {
                let mut h = Hasher::new(Algorithm::Sha256);
                let mut n = 0u64;
                while let Some(chunk) = rx.blocking_recv() {
                    n += chunk.len() as u64;
                    h.update(&chunk);
                }
                (Some(h.finish().to_string()), n)
            });
            while let Some(chunk) = resp.chunk().await.context("reading the blob body")? {
                if tx.send(chunk).await.is_err() {
                    bail!("hashing thread stopped early");
                }
            }
            drop(tx);
            hasher.await.context("hashing thread")?
        } else {
            // Raw: count the bytes as they arrive, nothing else.
            let mut n = 0u64;
            while let Some(chunk) = resp.chunk().await.context("reading the blob body")? {
                n += chunk.len() as u64;
            }
            (None, n)
        };
        let secs = start.elapsed().as_secs_f64();
        if n != len {
            bail!("GET blob returned {n} bytes, expected {len}");
        }
        if let Some(got) = got.filter(|got| *got != digest) {
            bail!("GET blob returned content with digest {got}, expected {digest}");
        }
        runs.push(mb_per_s(len, secs));
        total += secs;
    }
    let how = if verify {
        "sha256 verified"
    } else {
        "length checked"
    };
    Ok(big_transfer_outcome(args, len, runs, total, how))
}

/// Returns (p50, p99) in milliseconds of latencies given in microseconds.
/// The result of a many-small-blobs workload (push or pull), `count` blobs in `secs`.
fn small_blobs_outcome(args: &Args, unit: &'static str, secs: f64, lat_us: Vec<u32>) -> Outcome {
    let (p50, p99) = percentiles(lat_us);
    let n = args.count as u64;
    Outcome {
        value: n as f64 / secs,
        unit,
        seconds: secs,
        ops: n,
        bytes: n * args.small_bytes as u64,
        runs: Vec::new(),
        p50_ms: p50,
        p99_ms: p99,
        extra: Vec::new(),
        detail: format!(
            "{} x {} B blobs, {} clients",
            args.count, args.small_bytes, args.clients
        ),
    }
}

pub fn percentiles(mut lat_us: Vec<u32>) -> (Option<f64>, Option<f64>) {
    if lat_us.is_empty() {
        return (None, None);
    }
    lat_us.sort_unstable();
    let at = |q: f64| {
        let i = ((lat_us.len() as f64 - 1.0) * q).round() as usize;
        f64::from(lat_us[i]) / 1000.0
    };
    (Some(at(0.50)), Some(at(0.99)))
}

pub fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Waits for all client tasks; fails with the first error.
async fn join_clients(handles: Vec<tokio::task::JoinHandle<Result<Vec<u32>>>>) -> Result<Vec<u32>> {
    let mut all = Vec::new();
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(lat)) => all.extend(lat),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("client task failed: {e}"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(all),
    }
}

async fn push_small(reg: &Registry, args: &Args) -> Result<Outcome> {
    let repo = Arc::new(format!("{}/push-small", args.repo_prefix));
    let mut rng = Prng::new(nonce());
    let blobs: Arc<Vec<(String, Bytes)>> = Arc::new(
        (0..args.count)
            .map(|_| {
                let data = rng.bytes(args.small_bytes);
                (digest_of(&data), data)
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|_| {
            let (reg, repo, blobs, next) = (reg.clone(), repo.clone(), blobs.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((digest, data)) = blobs.get(i) else {
                        break;
                    };
                    let t = Instant::now();
                    reg.push_blob(&repo, digest, data.clone())
                        .await
                        .with_context(|| format!("pushing small blob #{i}"))?;
                    lat.push(micros(t.elapsed()));
                }
                Ok(lat)
            })
        })
        .collect();
    let lat = join_clients(handles).await?;
    let secs = start.elapsed().as_secs_f64();
    for (digest, _) in [blobs.first(), blobs.last()].into_iter().flatten() {
        if !reg.has_blob(&repo, digest).await? {
            bail!("small blob {digest} was accepted but HEAD does not find it");
        }
    }
    Ok(small_blobs_outcome(args, "push/s", secs, lat))
}

/// `args.clients` tasks take indexes 0..n in turn and run `op` on each;
/// returns every operation's latency in microseconds.
async fn each_concurrently<F, Fut>(clients: usize, n: usize, op: F) -> Result<Vec<u32>>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let t = Instant::now();
                    op(i).await?;
                    lat.push(micros(t.elapsed()));
                }
                Ok(lat)
            })
        })
        .collect();
    join_clients(handles).await
}

/// Clients and tries per blob for pull-small's untimed push.
const SEED_CLIENTS: usize = 8;
const SEED_TRIES: u32 = 4;

async fn pull_small(reg: &Registry, args: &Args) -> Result<Outcome> {
    let repo = Arc::new(format!("{}/pull-small", args.repo_prefix));
    let mut rng = Prng::new(args.data_seed.unwrap_or_else(nonce));
    let blobs: Arc<Vec<(String, Bytes)>> = Arc::new(
        (0..args.count)
            .map(|_| {
                let data = rng.bytes(args.small_bytes);
                (digest_of(&data), data)
            })
            .collect(),
    );
    // Untimed: push them all first, with fewer clients and a few tries each, so that a
    // slow or flaky S3 server behind the registry does not cost the whole measurement.
    let (r, b, rp) = (reg.clone(), blobs.clone(), repo.clone());
    let to_push = if args.pulls_only { 0 } else { blobs.len() };
    each_concurrently(args.clients.min(SEED_CLIENTS), to_push, move |i| {
        let (r, b, rp) = (r.clone(), b.clone(), rp.clone());
        async move {
            let (digest, data) = &b[i];
            let mut tries = 1;
            loop {
                match r.push_blob(&rp, digest, data.clone()).await {
                    Ok(()) => return Ok(()),
                    Err(e) if tries < SEED_TRIES => {
                        eprintln!("seeding small blob #{i}, try {tries}: {e:#}");
                        tries += 1;
                    }
                    Err(e) => return Err(e.context(format!("pushing small blob #{i}"))),
                }
            }
        }
    })
    .await?;
    let start = Instant::now();
    let (r, b, rp) = (reg.clone(), blobs.clone(), repo.clone());
    let lat = each_concurrently(args.clients, blobs.len(), move |i| {
        let (r, b, rp) = (r.clone(), b.clone(), rp.clone());
        async move {
            let (digest, data) = &b[i];
            let body = r.get_blob(&rp, digest).await?.bytes().await?;
            if body != *data {
                bail!("small blob #{i} ({digest}) came back different");
            }
            Ok(())
        }
    })
    .await?;
    let secs = start.elapsed().as_secs_f64();
    Ok(small_blobs_outcome(args, "pull/s", secs, lat))
}

/// Pushes a small image (config + one layer) tagged `latest`; returns the manifest URL and
/// the manifest bytes.
async fn push_small_image(reg: &Registry, repo: &str) -> Result<(String, Bytes)> {
    let layer = Prng::new(0x0bad_cafe).bytes(8 * 1024);
    let layer_digest = digest_of(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let config = Bytes::from(config);
    let config_digest = digest_of(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer.len()}],
    }))?;
    let manifest = Bytes::from(manifest);
    for (digest, data) in [(&layer_digest, layer.clone()), (&config_digest, config)] {
        if !reg.has_blob(repo, digest).await? {
            reg.push_blob(repo, digest, data).await?;
        }
    }
    reg.put_manifest(repo, "latest", OCI_MANIFEST, manifest.clone())
        .await?;
    Ok((reg.url(&format!("/v2/{repo}/manifests/latest")), manifest))
}

/// One client's GET loop until `until` or until `budget` requests were issued in total.
async fn get_loop(
    reg: Registry,
    url: Arc<String>,
    expected: Bytes,
    until: Instant,
    issued: Arc<AtomicU64>,
    budget: u64,
) -> Result<Vec<u32>> {
    let accept = format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}");
    let mut lat = Vec::new();
    while Instant::now() < until && issued.fetch_add(1, Ordering::Relaxed) < budget {
        let t = Instant::now();
        let resp = reg
            .client
            .get(url.as_str())
            .header(ACCEPT, &accept)
            .send()
            .await
            .context("GET manifest")?;
        if resp.status() != StatusCode::OK {
            bail!("GET manifest: expected 200, got {}", resp.status());
        }
        let body = resp.bytes().await.context("reading manifest body")?;
        if body != expected {
            bail!(
                "GET manifest returned {} bytes that differ from the pushed manifest",
                body.len()
            );
        }
        lat.push(micros(t.elapsed()));
    }
    Ok(lat)
}

async fn manifest_get(reg: &Registry, args: &Args, by_digest: bool) -> Result<Outcome> {
    let repo = format!("{}/manifest-get", args.repo_prefix);
    let (url, manifest) = push_small_image(reg, &repo)
        .await
        .context("pushing the image to read (untimed)")?;
    let url = if by_digest {
        reg.url(&format!("/v2/{repo}/manifests/{}", digest_of(&manifest)))
    } else {
        url
    };
    let url = Arc::new(url);

    let mut measured = (0.0, 0u64, Vec::new());
    for (phase_secs, is_measured) in [(args.warmup, false), (args.duration, true)] {
        if phase_secs <= 0.0 {
            continue;
        }
        let issued = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let until = start + Duration::from_secs_f64(phase_secs);
        let handles: Vec<_> = (0..args.clients)
            .map(|_| {
                tokio::spawn(get_loop(
                    reg.clone(),
                    url.clone(),
                    manifest.clone(),
                    until,
                    issued.clone(),
                    args.max_requests,
                ))
            })
            .collect();
        let lat = join_clients(handles).await?;
        if is_measured {
            measured = (start.elapsed().as_secs_f64(), lat.len() as u64, lat);
        }
    }
    let (secs, n, lat) = measured;
    let (p50, p99) = percentiles(lat);
    Ok(Outcome {
        value: n as f64 / secs,
        unit: "req/s",
        seconds: secs,
        ops: n,
        bytes: n * manifest.len() as u64,
        runs: Vec::new(),
        p50_ms: p50,
        p99_ms: p99,
        extra: Vec::new(),
        detail: format!(
            "{n} GETs by {}, {} clients",
            if by_digest { "digest" } else { "tag" },
            args.clients
        ),
    })
}
