//! The `berth` command line. Argument parsing, configuration and process
//! concerns only; the registry itself lives in `berth-registry`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

mod build;
mod config;
mod images;
mod progress;

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "Container image registry, builder and deployer in one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an OCI Distribution v1.1 registry (what `docker push HOST:5000/app` talks to).
    Serve(ServeArgs),
    /// Reclaim disk space: remove blobs that no manifest needs any more.
    Gc(GcArgs),
    /// Send an image to a registry (from the local store, oci:DIR or docker-archive:FILE).
    Push(images::PushArgs),
    /// Fetch an image from a registry (into the local store, or oci:DIR / docker-archive:FILE).
    Pull(images::PullArgs),
    /// Copy an image between registries, OCI layouts, docker archives and the local store.
    Copy(images::CopyArgs),
    /// Make an image from a root filesystem tarball (like `docker import`).
    Import(images::ImportArgs),
    /// Give an image on a registry another name there (no blob transfer).
    Tag(images::TagArgs),
    /// Show an image's manifest and config.
    Inspect(images::InspectArgs),
    /// List the tags of a repository.
    Ls(images::LsArgs),
    /// Remove a tag or manifest.
    Rm(images::RmArgs),
    /// Save credentials for a registry (shared with `docker login`).
    Login(images::LoginArgs),
    /// Forget the credentials for a registry.
    Logout(images::LogoutArgs),
    /// Build an image from a Dockerfile (for now: print the plan with --dry-run).
    Build(build::BuildArgs),
}

#[derive(Parser, Debug)]
pub struct GcArgs {
    /// The storage folder [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    /// TOML config file (its `storage` key is used)
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Keep anything pushed or reused more recently than this, so pushes in
    /// progress lose nothing (e.g. 30m, 1h, 2d)
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Report what would be removed, remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the result as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Parser, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on [default: 0.0.0.0:5000]
    #[arg(long, env = "BERTH_ADDR")]
    addr: Option<String>,
    /// Where to store images: a folder [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    /// Log format [default: text]
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Collect garbage this often while serving (e.g. 24h); off by default.
    /// Safe during pushes: it keeps anything touched in the last hour.
    #[arg(long, env = "BERTH_GC_INTERVAL", value_parser = humantime::parse_duration)]
    gc_interval: Option<Duration>,
    /// TOML file with any of: addr, storage, log_format, gc_interval. Flags
    /// and BERTH_* variables override it.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Gc(args) => gc(args),
        Command::Push(args) => images::push(args),
        Command::Pull(args) => images::pull(args),
        Command::Copy(args) => images::copy(args),
        Command::Import(args) => images::import(args),
        Command::Tag(args) => images::tag(args),
        Command::Inspect(args) => images::inspect(args),
        Command::Ls(args) => images::ls(args),
        Command::Rm(args) => images::rm(args),
        Command::Login(args) => images::login(args),
        Command::Logout(args) => images::logout(args),
        Command::Build(args) => build::build(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let settings = config::resolve(args)?;
    init_logging(settings.log_format);
    if settings.storage.starts_with("s3://") {
        bail!("S3 storage is not available yet: use --storage with a local folder");
    }
    let storage = berth_storage::FsStorage::open(&settings.storage)
        .with_context(|| format!("cannot open storage folder {}", settings.storage))?;
    let storage: Arc<dyn berth_storage::Storage> = Arc::new(storage);
    let app = berth_registry::Registry::new(storage.clone()).router();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        tokio::spawn(purge_abandoned_uploads(storage.clone()));
        if let Some(every) = settings.gc_interval {
            tokio::spawn(collect_garbage_periodically(storage, every));
        }
        let listener = match tokio::net::TcpListener::bind(&settings.addr).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "cannot listen on {}: the port is in use (another registry?); pick another with --addr",
                settings.addr
            ),
            Err(e) => bail!("cannot listen on {}: {e}", settings.addr),
        };
        tracing::info!(addr = %listener.local_addr()?, storage = %settings.storage, "berth registry listening");
        // Without TCP_NODELAY a response whose headers and body go out in two
        // writes waits for the client's delayed ACK: ~40 ms per small blob GET.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("server failed")?;
        tracing::info!("stopped: all in-flight requests finished");
        Ok(())
    })
}

/// How recent a push must be for the server's own collections to spare it.
const SERVER_GC_GRACE: Duration = Duration::from_secs(3600);

async fn collect_garbage_periodically(storage: Arc<dyn berth_storage::Storage>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // the first tick is immediate: wait one interval first
    loop {
        ticks.tick().await;
        match storage.collect_garbage(SERVER_GC_GRACE, false).await {
            Ok(r) => tracing::info!(
                links = r.links_removed,
                blobs = r.blobs_removed,
                bytes = r.bytes_freed,
                "garbage collected"
            ),
            Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
        }
    }
}

fn gc(args: GcArgs) -> Result<()> {
    let storage_path = config::resolve(ServeArgs {
        storage: args.storage,
        config: args.config,
        ..Default::default()
    })?
    .storage;
    if storage_path.starts_with("s3://") {
        bail!("S3 storage is not available yet: use --storage with a local folder");
    }
    if !std::path::Path::new(&storage_path).join("blobs").is_dir() {
        bail!("{storage_path} is not a berth storage folder (no blobs/ in it): check --storage");
    }
    let storage = berth_storage::FsStorage::open(&storage_path)
        .with_context(|| format!("cannot open storage folder {storage_path}"))?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime
        .block_on(berth_storage::Storage::collect_garbage(
            &storage,
            args.grace,
            args.dry_run,
        ))
        .context("garbage collection failed")?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["dry_run"] = args.dry_run.into();
        println!("{value}");
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        println!(
            "{verb} {} repository links and {} blobs ({:.1} MiB)",
            report.links_removed,
            report.blobs_removed,
            report.bytes_freed as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}

/// Upload sessions untouched for this long are abandoned pushes (the
/// reference registry uses the same week).
const UPLOAD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

async fn purge_abandoned_uploads(storage: Arc<dyn berth_storage::Storage>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match storage.purge_uploads(UPLOAD_MAX_AGE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "could not purge abandoned uploads"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM; the server then stops accepting and lets
/// in-flight requests finish.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}
