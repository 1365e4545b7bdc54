//! `berth serve`: its flags, and the start-up in phases (settings and
//! logging, storage, the registry's router, background housekeeping, the
//! listeners) until a signal stops it. The connection loop is in
//! [`connections`], the start-up message in [`banner`], opening the storage
//! (shared with `gc` and `usage`) in [`storage`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::Router;
use berth_registry::metrics::Metrics;
use berth_registry::ops::ReadOnly;
use clap::Parser;

use crate::config::{self, LogFormat, Settings};
use crate::{access, tls};

pub mod banner;
pub mod connections;
mod housekeeping;
pub mod storage;

use storage::OpenedStorage;

/// How to reach S3 when the storage is `s3://BUCKET/PREFIX` (serve and gc share them).
#[derive(clap::Args, Debug, Default)]
pub struct S3Args {
    /// S3 endpoint URL, for S3-compatible servers (default: AWS, or AWS_ENDPOINT_URL)
    #[arg(long, env = "BERTH_S3_ENDPOINT")]
    pub(crate) s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1)
    #[arg(long, env = "BERTH_S3_REGION")]
    pub(crate) s3_region: Option<String>,
    /// Address the bucket as BUCKET.host (virtual-hosted) instead of host/BUCKET (path-style, the default)
    #[arg(long, env = "BERTH_S3_VIRTUAL_HOSTED")]
    pub(crate) s3_virtual_hosted: bool,
    /// Allow a plain-HTTP S3 endpoint (credentials and content travel unencrypted)
    #[arg(long, env = "BERTH_S3_ALLOW_HTTP")]
    pub(crate) s3_allow_http: bool,
    /// 16 MiB ranges a big blob read fetches ahead in parallel [default: 3]; 0 reads
    /// each blob with one GET (for S3 servers that copy the object per ranged GET, e.g. moto)
    #[arg(long, env = "BERTH_S3_READ_AHEAD", value_name = "N")]
    pub(crate) s3_read_ahead: Option<usize>,
}

#[derive(Parser, Debug, Default)]
pub struct ServeArgs {
    /// Address to listen on; `:PORT` means every address [default: 0.0.0.0:5000]
    #[arg(long, env = "BERTH_ADDR")]
    pub(crate) addr: Option<String>,
    /// Where to store images: a folder, or s3://BUCKET/PREFIX [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    pub(crate) storage: Option<String>,
    #[command(flatten)]
    pub(crate) s3: S3Args,
    /// S3 only: answer blob GETs with a 307 redirect to a presigned S3 URL
    /// instead of passing the bytes through the registry
    #[arg(long, env = "BERTH_REDIRECT_BLOBS")]
    pub(crate) redirect_blobs: bool,
    /// Log format [default: text]
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,
    /// Collect garbage this often while serving (e.g. 24h); off by default.
    /// Safe during pushes: it keeps anything touched in the last hour.
    #[arg(long, env = "BERTH_GC_INTERVAL", value_parser = humantime::parse_duration)]
    pub(crate) gc_interval: Option<Duration>,
    /// What the server's collections spare: anything pushed or reused more
    /// recently than this [default: 1h]
    #[arg(long, env = "BERTH_GC_GRACE", value_parser = humantime::parse_duration)]
    pub(crate) gc_grace: Option<Duration>,
    /// TOML file with any of: addr, storage, log_format, gc_interval and an
    /// [s3] table (endpoint, region, access_key_id, secret_access_key,
    /// session_token, virtual_hosted, allow_http, redirect_blobs). Flags and
    /// BERTH_* variables override it.
    #[arg(long, env = "BERTH_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Turn on logins: accounts from this `htpasswd -B` file (bcrypt). Access
    /// rules go in the config file's [access] table.
    #[arg(long, env = "BERTH_HTPASSWD", value_name = "FILE")]
    pub(crate) htpasswd: Option<PathBuf>,
    /// How clients log in: Docker's token flow (default, with the built-in
    /// /token endpoint) or Basic credentials on every request.
    #[arg(long, env = "BERTH_AUTH_SCHEME", value_enum)]
    pub(crate) auth_scheme: Option<config::AuthScheme>,
    /// Serve HTTPS with this PEM certificate chain (re-read when it changes).
    #[arg(long, env = "BERTH_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, env = "BERTH_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA bundle (mTLS).
    #[arg(long, env = "BERTH_TLS_CLIENT_CA", value_name = "PEM")]
    pub(crate) tls_client_ca: Option<PathBuf>,
    /// Requests per second per client address (429 with Retry-After beyond).
    #[arg(long, env = "BERTH_RATE_LIMIT", value_name = "PER_SECOND")]
    pub(crate) rate_limit: Option<f64>,
    /// Cut request bodies that average less than this over
    /// limits.min_upload_rate_window (30 s) [default: 1024]; 0 turns it off.
    #[arg(long, env = "BERTH_MIN_UPLOAD_RATE", value_name = "BYTES_PER_SECOND")]
    pub(crate) min_upload_rate: Option<u64>,
    /// Maintenance mode: pulls work, every write gets 405 UNSUPPORTED, and the
    /// server's own garbage collection and upload expiry do not run.
    #[arg(long, env = "BERTH_READ_ONLY")]
    pub(crate) read_only: bool,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    let reload = (args.config.clone(), args.read_only);
    let mut settings = config::resolve(args)?;
    init_logging(settings.log_format);
    // Raises the open-file limit before anything opens files.
    let limits = connections::Limits::new(&settings.limits);
    storage::restrict_umask();
    let opened = storage::open_storage(&settings)?;
    let (app, metrics, read_only) = registry_router(&mut settings, opened.storage.clone())?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        housekeeping::reload_read_only_on_sighup(reload.0, reload.1, read_only.clone());
        run(settings, opened, app, metrics, read_only, limits).await
    })
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

/// The registry with everything the settings turn on (logins, rate limit,
/// immutable tags, quotas, metrics, read-only), as a router, and its metrics
/// (when on) for a `[metrics] addr` listener of their own, and its read-only switch.
fn registry_router(
    settings: &mut Settings,
    storage: Arc<dyn berth_storage::Storage>,
) -> Result<(Router, Option<Metrics>, ReadOnly)> {
    let mut registry = berth_registry::Registry::new(storage);
    if let Some(access) = access::build(settings)? {
        registry = registry.with_access(access);
    }
    if let Some(limit) = access::rate_limit(&settings.limits)? {
        registry = registry.with_rate_limit(limit);
    }
    registry = registry.with_immutable_tags(std::mem::take(&mut settings.immutable));
    registry = registry.with_quotas(std::mem::take(&mut settings.quotas));
    registry = registry.with_sparse_indexes(settings.manifests.sparse_indexes);
    let metrics = settings
        .metrics
        .enabled
        .then(|| Metrics::new(settings.metrics.token.clone()));
    if let Some(m) = &metrics {
        registry = registry.with_metrics(m.clone(), settings.metrics.addr.is_none());
    }
    let read_only = registry.read_only();
    read_only.set(settings.read_only);
    Ok((registry.router(), metrics, read_only))
}

/// Everything that needs the runtime: the bucket check, housekeeping, the
/// listeners, and serving until a signal.
async fn run(
    settings: Settings,
    opened: OpenedStorage,
    app: Router,
    metrics: Option<Metrics>,
    read_only: ReadOnly,
    limits: connections::Limits,
) -> Result<()> {
    if let Some(s3) = &opened.s3 {
        s3.check().await.with_context(|| {
            format!("cannot reach the bucket of {}: check --s3-endpoint, the region and the AWS_* credentials", settings.storage)
        })?;
    }
    housekeeping::spawn(
        &settings,
        opened.storage.clone(),
        read_only,
        metrics.clone(),
    );
    if let (Some(m), Some(addr)) = (metrics, &settings.metrics.addr) {
        serve_metrics_apart(m, addr).await?;
    }
    let listener = bind(&settings.addr).await?;
    banner::announce(&listener, &settings);
    let acceptor = settings.tls.as_ref().map(tls::acceptor).transpose()?;
    connections::serve(listener, acceptor, app, limits, shutdown_signal()).await;
    tracing::info!("stopped: all in-flight requests finished");
    if let Some(s3) = &opened.s3 {
        let c = s3.request_counts();
        tracing::info!(
            total = c.total(),
            get = c.get,
            head = c.head,
            put = c.put,
            post = c.post,
            delete = c.delete,
            "S3 requests sent"
        );
    }
    Ok(())
}

/// The main listener, with a hint when the port is taken.
async fn bind(addr: &str) -> Result<tokio::net::TcpListener> {
    match tokio::net::TcpListener::bind(addr).await {
        Ok(listener) => Ok(listener),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "cannot listen on {}: the port is in use (another registry?); pick another with --addr",
            addr
        ),
        Err(e) => bail!("cannot listen on {addr}: {e}"),
    }
}

/// `[metrics] addr`: `/metrics` on a plain-HTTP listener of its own.
async fn serve_metrics_apart(metrics: Metrics, addr: &str) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for [metrics] addr"))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let app = berth_registry::metrics::standalone_router(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
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
