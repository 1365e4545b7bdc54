//! Many clients at once: every client pulls one whole image (manifest by
//! tag, config, every layer), or, in the mixed load, one client in four
//! pushes a new image while the others pull. This is a CI fleet or a cluster
//! rollout: hundreds of nodes asking for the same image at the same moment.
//!
//! Layers are checked by length only (hashing gigabytes on the client would
//! make the load generator the bottleneck on two shared cores); manifests
//! and configs are compared byte for byte.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use reqwest::header::ACCEPT;
use reqwest::StatusCode;

use crate::data::{digest_of, BigBlob};
use crate::registry::{Registry, DOCKER_MANIFEST, OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use crate::rss::RssSampler;
use crate::workloads::{blob_digest, micros, nonce, percentiles, push_big_once};
use crate::{Args, Outcome};

const MIB: u64 = 1 << 20;
/// Size of the layer each pusher of the mixed load sends.
const MIXED_PUSH_LAYER: u64 = MIB;

/// The image every client pulls, as pushed (untimed).
struct Image {
    manifest_url: String,
    manifest: Bytes,
    config: (String, Bytes),
    layers: Vec<(String, u64)>,
    bytes: u64,
}

/// Pushes an image of `args.image_mib` MiB split into `args.layers` layers,
/// tagged `latest` in `repo`.
async fn push_image(reg: &Registry, repo: &str, args: &Args, seed: u64) -> Result<Image> {
    let layers_n = args.layers.max(1);
    let total = args.image_mib * MIB;
    let mut layers = Vec::new();
    for i in 0..layers_n {
        let len = total / layers_n + u64::from(i == 0) * (total % layers_n);
        let blob = BigBlob::new(seed.wrapping_add(i), len);
        let digest = blob_digest(blob.clone()).await?;
        push_big_once(reg, repo, &blob, &digest)
            .await
            .with_context(|| format!("pushing layer {i} ({len} bytes)"))?;
        layers.push((digest, len));
    }
    let (manifest, config) = image_manifest(seed, &layers)?;
    let config_digest = digest_of(&config);
    reg.push_blob(repo, &config_digest, config.clone()).await?;
    reg.put_manifest(repo, "latest", OCI_MANIFEST, manifest.clone())
        .await?;
    Ok(Image {
        manifest_url: reg.url(&format!("/v2/{repo}/manifests/latest")),
        manifest,
        config: (config_digest, config),
        layers,
        bytes: total,
    })
}

/// (manifest, config) of an image with these layers.
fn image_manifest(seed: u64, layers: &[(String, u64)]) -> Result<(Bytes, Bytes)> {
    let config = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": [format!("SEED={seed}")]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| &l.0).collect::<Vec<_>>()},
    }))?);
    let manifest = Bytes::from(serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(&config), "size": config.len()},
        "layers": layers.iter().map(|(d, n)| serde_json::json!(
            {"mediaType": OCI_LAYER, "digest": d, "size": n})).collect::<Vec<_>>(),
    }))?);
    Ok((manifest, config))
}

/// One whole pull; returns the manifest GET's latency in microseconds.
async fn pull_once(reg: &Registry, repo: &str, image: &Image) -> Result<u32> {
    let t = Instant::now();
    let resp = reg
        .client
        .get(&image.manifest_url)
        .header(ACCEPT, format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}"))
        .send()
        .await
        .context("GET manifest")?;
    if resp.status() != StatusCode::OK {
        bail!("GET manifest: expected 200, got {}", resp.status());
    }
    if resp.bytes().await.context("manifest body")? != image.manifest {
        bail!("GET manifest returned other bytes than were pushed");
    }
    let manifest_us = micros(t.elapsed());
    let (config_digest, config) = &image.config;
    let body = reg.get_blob(repo, config_digest).await?.bytes().await?;
    if body != *config {
        bail!("config {config_digest} came back different");
    }
    for (digest, len) in &image.layers {
        let mut resp = reg.get_blob(repo, digest).await?;
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.context("reading a layer")? {
            n += chunk.len() as u64;
        }
        if n != *len {
            bail!("layer {digest}: got {n} bytes, expected {len}");
        }
    }
    Ok(manifest_us)
}

/// Pushes a new small image (one 1 MiB layer, config, manifest under tag
/// `tag`); returns the bytes sent.
async fn push_once(reg: &Registry, repo: &str, tag: &str, seed: u64) -> Result<u64> {
    let blob = BigBlob::new(seed, MIXED_PUSH_LAYER);
    let digest = blob_digest(blob.clone()).await?;
    push_big_once(reg, repo, &blob, &digest).await?;
    let layers = [(digest, MIXED_PUSH_LAYER)];
    let (manifest, config) = image_manifest(seed, &layers)?;
    reg.push_blob(repo, &digest_of(&config), config.clone())
        .await?;
    reg.put_manifest(repo, tag, OCI_MANIFEST, manifest.clone())
        .await?;
    Ok(MIXED_PUSH_LAYER + (config.len() + manifest.len()) as u64)
}

/// Gap between two manifest GETs of the probe.
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// While the clients run, one more client on its own keep-alive connection
/// (and its own thread)
/// GETs the manifest every [`PROBE_EVERY`]: how long a small request waits
/// behind the big streams once they run (the clients' own manifest GETs all
/// come in the first burst, together with their connection set-up).
/// Stops when `stop` fires; returns the latencies (µs).
async fn probe_manifest(
    image: Arc<Image>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<Vec<u32>> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .build()
        .context("building the probe's HTTP client")?;
    let mut lat = Vec::new();
    loop {
        let t = Instant::now();
        let get = async {
            let resp = client
                .get(&image.manifest_url)
                .header(ACCEPT, format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}"))
                .send()
                .await
                .context("probe: GET manifest")?;
            if resp.status() != StatusCode::OK {
                bail!("probe: GET manifest: expected 200, got {}", resp.status());
            }
            resp.bytes().await.context("probe: manifest body")
        };
        tokio::select! {
            body = get => {
                if body? != image.manifest {
                    bail!("probe: GET manifest returned other bytes than were pushed");
                }
                lat.push(micros(t.elapsed()));
            }
            _ = &mut stop => return Ok(lat),
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = &mut stop => return Ok(lat),
        }
    }
}

/// Latencies (µs) one client measured, and the bytes it moved.
#[derive(Default)]
struct ClientResult {
    ops: Vec<u32>,
    pushes: Vec<u32>,
    manifest_gets: Vec<u32>,
    bytes: u64,
}

/// `pull-image` (`mixed` false) and `mixed` (`mixed` true).
pub async fn many_clients(reg: &Registry, args: &Args, mixed: bool) -> Result<Outcome> {
    let repo = Arc::new(format!("{}/pull-image", args.repo_prefix));
    let seed = nonce();
    let image = Arc::new(
        push_image(reg, &repo, args, seed)
            .await
            .context("pushing the image to pull (untimed)")?,
    );
    let sampler = args.server_pid.map(RssSampler::start);
    let (stop_probe, probe_stopped) = tokio::sync::oneshot::channel();
    // On a thread and runtime of its own, so the clients' work on the load
    // generator's runtime does not delay the probe's own requests.
    let probe_image = image.clone();
    let probe = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the probe's runtime")?
            .block_on(probe_manifest(probe_image, probe_stopped))
    });
    let start = Instant::now();
    let handles: Vec<_> = (0..args.clients)
        .map(|i| {
            let (reg, repo, image) = (reg.clone(), repo.clone(), image.clone());
            let pushes = mixed && i % 4 == 0;
            let push_repo = format!("{}/mixed-push", args.repo_prefix);
            let rounds = args.pulls;
            tokio::spawn(async move {
                let mut r = ClientResult::default();
                for round in 0..rounds {
                    let t = Instant::now();
                    if pushes {
                        let tag = format!("c{i}-r{round}");
                        let seed = seed ^ ((i as u64) << 20) ^ u64::from(round) ^ 0x5eed;
                        r.bytes += push_once(&reg, &push_repo, &tag, seed)
                            .await
                            .with_context(|| format!("client {i} pushing"))?;
                        r.pushes.push(micros(t.elapsed()));
                    } else {
                        let m = pull_once(&reg, &repo, &image)
                            .await
                            .with_context(|| format!("client {i} pulling"))?;
                        r.manifest_gets.push(m);
                        r.bytes += image.bytes;
                    }
                    r.ops.push(micros(t.elapsed()));
                }
                Ok::<_, anyhow::Error>(r)
            })
        })
        .collect();
    let mut all = ClientResult::default();
    let mut first_err = None;
    for h in handles {
        match h.await {
            Ok(Ok(r)) => {
                all.ops.extend(r.ops);
                all.pushes.extend(r.pushes);
                all.manifest_gets.extend(r.manifest_gets);
                all.bytes += r.bytes;
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("client task failed: {e}"));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_probe.send(());
    let probe_lat = match probe.await {
        Ok(Ok(lat)) => lat,
        Ok(Err(e)) => return Err(e),
        Err(e) => bail!("probe task failed: {e}"),
    };
    let rss = match sampler {
        Some(s) => Some(s.stop().await),
        None => None,
    };
    if let Some(e) = first_err {
        return Err(e);
    }
    let ops = all.ops.len() as u64;
    let (p50, p99) = percentiles(all.ops);
    let (m50, m99) = percentiles(all.manifest_gets);
    let (probe50, probe99) = percentiles(probe_lat);
    let mut extra = vec![
        ("manifest_p50_ms", m50),
        ("manifest_p99_ms", m99),
        ("probe_manifest_p50_ms", probe50),
        ("probe_manifest_p99_ms", probe99),
    ];
    if mixed {
        let (_, push99) = percentiles(all.pushes);
        extra.push(("push_p99_ms", push99));
    }
    if let Some(rss) = rss {
        extra.push(("rss_peak_mib", Some(rss.peak_rss_mib)));
        extra.push(("rss_anon_peak_mib", Some(rss.peak_anon_mib)));
        extra.push(("pss_peak_mib", Some(rss.peak_pss_mib)));
        extra.push(("hwm_mib", rss.hwm_mib));
    }
    Ok(Outcome {
        value: all.bytes as f64 / 1e6 / secs,
        unit: "MB/s",
        seconds: secs,
        ops,
        bytes: all.bytes,
        runs: Vec::new(),
        p50_ms: p50,
        p99_ms: p99,
        detail: format!(
            "{} clients x {} {} of a {} MiB image in {} layers",
            args.clients,
            args.pulls,
            if mixed {
                "ops (1 in 4 pushes)"
            } else {
                "pulls"
            },
            args.image_mib,
            args.layers
        ),
        extra,
    })
}
