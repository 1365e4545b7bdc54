//! `berth-bench`: a small HTTP load generator for OCI registries, used by
//! `scripts/bench.sh` to compare `berth serve` with the reference registry.
//!
//! It only talks to the one `--url` it is given, and every loop is bounded both by a count
//! and by time.

mod data;
mod many;
mod registry;
mod rss;
mod workloads;

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use registry::Registry;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Push one big pseudo-random blob (POST + one monolithic PUT), in MB/s.
    PushBig,
    /// Push many distinct small blobs from concurrent clients, in pushes/s.
    PushSmall,
    /// Pull a big blob (pushed first, untimed) and verify its sha256, in MB/s.
    PullBig,
    /// Pull many small blobs (pushed first, untimed) from concurrent clients,
    /// verifying each, in pulls/s.
    PullSmall,
    /// The same pull, checking only the length: the client's hashing no
    /// longer competes with the server for the two cores, in MB/s.
    PullBigRaw,
    /// GET one tagged manifest from concurrent clients for a fixed time, in requests/s.
    ManifestGet,
    /// Every client pulls one whole image (manifest, config, all layers)
    /// `--pulls` times, all at once; in MB/s, with manifest GET latency.
    PullImage,
    /// As pull-image, but one client in four pushes a new 1 MiB image instead.
    Mixed,
    /// The same GETs by digest (what a pull does after resolving the tag), in requests/s.
    ManifestGetDigest,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::PushBig => "push-big",
            Workload::PushSmall => "push-small",
            Workload::PullBig => "pull-big",
            Workload::PullSmall => "pull-small",
            Workload::PullBigRaw => "pull-big-raw",
            Workload::ManifestGet => "manifest-get",
            Workload::PullImage => "pull-image",
            Workload::Mixed => "mixed",
            Workload::ManifestGetDigest => "manifest-get-digest",
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "berth-bench",
    about = "Load generator for an OCI registry (one URL on 127.0.0.1)"
)]
pub struct Args {
    /// Registry base URL, e.g. http://127.0.0.1:5000 (loopback only).
    #[arg(long)]
    pub url: String,
    /// Which workload to run.
    #[arg(long, value_enum)]
    pub workload: Workload,
    /// Concurrent clients for push-small and manifest-get (big workloads use one).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Print one JSON object on stdout instead of the human-readable line.
    #[arg(long)]
    pub json: bool,
    /// Size of the big blob in MiB (push-big, pull-big).
    #[arg(long, default_value_t = 256)]
    pub big_mib: u64,
    /// How many times push-big / pull-big transfer the big blob (each push a new blob).
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
    /// Number of small blobs for push-small.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Size of each small blob in bytes.
    #[arg(long, default_value_t = 4096)]
    pub small_bytes: usize,
    /// Measured duration of manifest-get in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Untimed warm-up before manifest-get is measured, in seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Upper bound on manifest-get requests (the loop stops at time or count).
    #[arg(long, default_value_t = 5_000_000)]
    pub max_requests: u64,
    /// Give up on the whole workload after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Size of the image pull-image and mixed pull, in MiB.
    #[arg(long, default_value_t = 64)]
    pub image_mib: u64,
    /// Layers the image is split into (pull-image, mixed).
    #[arg(long, default_value_t = 4)]
    pub layers: u64,
    /// Operations per client in pull-image and mixed.
    #[arg(long, default_value_t = 1)]
    pub pulls: u32,
    /// PID of the server under test: its VmRSS is sampled during pull-image
    /// and mixed, and reported.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Repository prefix the workloads push to.
    #[arg(long, default_value = "bench")]
    pub repo_prefix: String,
    /// pull-small: make the blobs from this seed instead of a fresh one, so a later run
    /// with `--pulls-only` pulls the very blobs this one pushed.
    #[arg(long)]
    pub data_seed: Option<u64>,
    /// pull-small: skip the untimed push (an earlier run with the same `--data-seed`,
    /// `--count` and `--repo-prefix` pushed them), so rounds against several registries
    /// can be interleaved without pushing again.
    #[arg(long, requires = "data_seed")]
    pub pulls_only: bool,
}

/// What one workload measured.
pub struct Outcome {
    pub value: f64,
    pub unit: &'static str,
    pub seconds: f64,
    pub ops: u64,
    pub bytes: u64,
    /// Per-repetition values (same unit as `value`), where that applies.
    pub runs: Vec<f64>,
    /// Per-request latency percentiles in milliseconds, where that applies.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Free-form detail for the human-readable line.
    pub detail: String,
    /// More named numbers (manifest GET percentiles, server memory), also in the JSON.
    pub extra: Vec<(&'static str, Option<f64>)>,
}

fn check_loopback(url: &str) -> Result<String> {
    let base = url.trim_end_matches('/');
    let rest = base
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let host = rest.split('/').next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.parse::<u16>().is_ok() => h,
        _ => host,
    };
    if !(host.starts_with("127.") || host == "localhost" || host == "[::1]") {
        bail!(
            "--url must point at a loopback address (127.0.0.0/8, localhost, [::1]), got {host:?}"
        );
    }
    if rest.contains('/') {
        bail!("--url must be a base URL without a path, e.g. http://127.0.0.1:5000");
    }
    Ok(base.to_string())
}

fn build_registry(args: &Args) -> Result<Registry> {
    let base = check_loopback(&args.url)?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(args.clients.max(1) * 2)
        // One connection per client, all opened at once: a full accept
        // backlog shows up as latency (SYN retries after 1 s, 3 s), not errors.
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("building HTTP client")?;
    Ok(Registry { client, base })
}

fn print_outcome(args: &Args, out: &Outcome) -> Result<()> {
    if args.json {
        let mut j = serde_json::json!({
            "workload": args.workload.name(),
            "url": args.url,
            "value": out.value,
            "unit": out.unit,
            "seconds": out.seconds,
            "ops": out.ops,
            "bytes": out.bytes,
            "runs": out.runs,
            "p50_ms": out.p50_ms,
            "p99_ms": out.p99_ms,
            "clients": match args.workload {
                Workload::PushBig | Workload::PullBig | Workload::PullBigRaw => 1,
                _ => args.clients,
            },
        });
        for (key, value) in &out.extra {
            j[*key] = serde_json::json!(value);
        }
        println!("{}", serde_json::to_string(&j)?);
    } else {
        let mut lat = match (out.p50_ms, out.p99_ms) {
            (Some(p50), Some(p99)) => format!("  p50 {p50:.2} ms  p99 {p99:.2} ms"),
            _ => String::new(),
        };
        for (key, value) in &out.extra {
            if let Some(v) = value {
                lat.push_str(&format!("  {key} {v:.2}"));
            }
        }
        println!(
            "{:<13} {:>10.1} {:<6} ({}; {:.2} s){}  {}",
            args.workload.name(),
            out.value,
            out.unit,
            out.detail,
            out.seconds,
            lat,
            args.url
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.count == 0 || args.reps == 0 || args.big_mib == 0 {
        bail!("--clients, --count, --reps and --big-mib must be at least 1");
    }
    if args.image_mib == 0 || args.layers == 0 || args.pulls == 0 || args.layers > args.image_mib {
        bail!("--image-mib, --layers and --pulls must be at least 1, and --layers at most --image-mib");
    }
    let duration_ok = args.duration > 0.0 && args.duration <= 3600.0;
    if !duration_ok || !(0.0..=60.0).contains(&args.warmup) {
        bail!("--duration must be in (0, 3600] and --warmup in [0, 60] seconds");
    }
    match rss::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            eprintln!("berth-bench: raised the open-file limit from {before} to {after}")
        }
        Ok(_) => {}
        Err(e) => eprintln!("berth-bench: cannot raise the open-file limit: {e}"),
    }
    let reg = build_registry(&args)?;
    reg.ping()
        .await
        .with_context(|| format!("registry at {} is not answering", reg.base))?;
    let limit = Duration::from_secs(args.timeout);
    let outcome = tokio::time::timeout(limit, workloads::run(&reg, &args))
        .await
        .with_context(|| {
            format!(
                "{} did not finish within {} s",
                args.workload.name(),
                args.timeout
            )
        })??;
    print_outcome(&args, &outcome)
}
