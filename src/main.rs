//! The `berth` command line. Argument parsing, configuration and process
//! concerns only; the registry itself lives in `berth-registry`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

mod config;

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
    /// TOML file with any of: addr, storage, log_format. Flags and BERTH_*
    /// variables override it.
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
        tokio::spawn(purge_abandoned_uploads(storage));
        let listener = match tokio::net::TcpListener::bind(&settings.addr).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "cannot listen on {}: the port is in use (another registry?); pick another with --addr",
                settings.addr
            ),
            Err(e) => bail!("cannot listen on {}: {e}", settings.addr),
        };
        tracing::info!(addr = %listener.local_addr()?, storage = %settings.storage, "berth registry listening");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("server failed")?;
        tracing::info!("stopped: all in-flight requests finished");
        Ok(())
    })
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
