//! `berth serve`: its flags, and the start-up in phases (settings and
//! logging, storage, the registry's router, background housekeeping, the
//! listeners) until a signal stops it. The connection loop is in
//! [`connections`], the start-up message in [`banner`], opening the storage
//! (shared with `gc` and `usage`) in [`storage`].

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::Router;
use berth_registry::metrics::Metrics;
use berth_registry::ops::ReadOnly;

use crate::config::{self, LogFormat, Settings};
use crate::{access, tls};

pub mod banner;
pub mod connections;
mod housekeeping;
pub mod storage;

use storage::OpenedStorage;

// The flags live with the settings they resolve into (config.rs), so that config never
// imports serve.
pub use crate::config::{S3Args, ServeArgs};

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
    if !settings.mirrors.is_empty() {
        registry = registry.with_mirrors(std::mem::take(&mut settings.mirrors));
    }
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
