//! `berth serve`: its flags, and the start-up in phases (settings and
//! logging, storage, the registry's router, background housekeeping, the
//! listeners) until a signal stops it. The connection loop is in
//! [`connections`], the start-up message in [`banner`], opening the storage
//! (shared with `gc` and `usage`) in [`storage`].

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::Router;
use berth_registry::events::Events;
use berth_registry::immutable::ImmutableTags;
use berth_registry::metrics::Metrics;
use berth_registry::ops::{ReadOnly, Reloadable};
use berth_registry::pulls::PullLog;
use berth_registry::quota::Quotas;
use berth_registry::retention::RetentionPolicies;

use crate::config::{self, LogFormat, Settings};
use crate::{access, tls};

pub mod banner;
pub mod connections;
mod housekeeping;
pub mod storage;
mod ui;

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
    let mut opened = storage::open_storage(&settings)?;
    // Held until the process ends: `berth gc` checks it before a short-grace collection.
    let _serving = storage::hold_serve_lock(&settings)?;
    let metrics = settings
        .metrics
        .enabled
        .then(|| Metrics::new(settings.metrics.token.clone()));
    if let Some(m) = &metrics {
        // Every call counted, the housekeeping's too.
        let backend = if opened.s3.is_some() { "s3" } else { "fs" };
        opened.storage = Arc::new(berth_registry::metered::MeteredStorage::new(
            opened.storage,
            backend,
            m.clone(),
        ));
        if let Some(s3) = &opened.s3 {
            m.watch_s3(s3.clone());
        }
    }
    let (app, shared) = registry_router(&mut settings, opened.storage.clone(), metrics)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let targets = housekeeping::ReloadTargets {
            read_only: shared.read_only.clone(),
            read_only_flag: reload.1,
            immutable: shared.immutable.clone(),
            quotas: shared.quotas.clone(),
            retention: shared.retention.clone(),
        };
        housekeeping::reload_on_sighup(reload.0, targets);
        if let Some(events) = shared.events.clone() {
            events.spawn_sender();
        }
        run(settings, opened, app, shared, limits).await
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

/// What the router shares with the background tasks.
struct Shared {
    metrics: Option<Metrics>,
    read_only: ReadOnly,
    pulls: PullLog,
    immutable: Reloadable<ImmutableTags>,
    quotas: Reloadable<Quotas>,
    retention: Reloadable<RetentionPolicies>,
    /// `[[notifications]]`: the events whose sender starts with the runtime.
    events: Option<Events>,
    /// `[[mirror]]` caches, for eviction beyond their `max_size`.
    mirrors: Arc<berth_registry::mirror::Mirrors>,
}

/// The registry with everything the settings turn on (logins, rate limit,
/// immutable tags, quotas, metrics, read-only), as a router, and what it
/// shares with the background tasks: its metrics (when on, also for a
/// `[metrics] addr` listener of their own), read-only switch, pull notes,
/// reloadable rules and events (when `[[notifications]]` are set).
fn registry_router(
    settings: &mut Settings,
    storage: Arc<dyn berth_storage::Storage>,
    metrics: Option<Metrics>,
) -> Result<(Router, Shared)> {
    let mut registry = berth_registry::Registry::new(storage.clone());
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
    if let Some(m) = &metrics {
        registry = registry.with_metrics(m.clone(), settings.metrics.addr.is_none());
    }
    let notifications = std::mem::take(&mut settings.notifications);
    let events = if notifications.is_empty() {
        None
    } else {
        let events =
            Events::new(storage, notifications, metrics.clone()).map_err(|e| anyhow::anyhow!(e))?;
        registry = registry.with_events(events.clone());
        Some(events)
    };
    if let Some(options) = ui::options(settings)? {
        registry = registry.with_ui(options);
    }
    let read_only = registry.read_only();
    read_only.set(settings.read_only);
    let shared = Shared {
        metrics,
        read_only,
        pulls: registry.pull_log(),
        immutable: registry.immutable_tags(),
        quotas: registry.quota_rules(),
        retention: Reloadable::new(std::mem::take(&mut settings.retention)),
        events,
        mirrors: registry.mirrors(),
    };
    Ok((registry.router(), shared))
}

/// Everything that needs the runtime: the bucket check, housekeeping, the
/// listeners, and serving until a signal.
async fn run(
    settings: Settings,
    opened: OpenedStorage,
    app: Router,
    shared: Shared,
    limits: connections::Limits,
) -> Result<()> {
    if let Some(s3) = &opened.s3 {
        s3.check().await.with_context(|| {
            format!("cannot reach the bucket of {}: check --s3-endpoint, the region and the AWS_* credentials", settings.storage)
        })?;
    }
    if opened.s3.is_none() {
        // Build the disk catalog index now, in the background: at 100,000 repositories its
        // walk takes seconds, which the first catalog or UI request would otherwise wait for.
        let storage = opened.storage.clone();
        tokio::spawn(async move {
            if let Err(e) = storage.repositories_after(None, Some(1)).await {
                tracing::warn!(error = %e, "could not read the repositories at start");
            }
        });
    }
    let Shared {
        metrics,
        read_only,
        pulls,
        immutable,
        retention,
        mirrors,
        ..
    } = shared;
    housekeeping::spawn(
        &settings,
        opened.storage.clone(),
        read_only.clone(),
        metrics.clone(),
    );
    housekeeping::spawn_pull_flushes(
        opened.storage.clone(),
        pulls.clone(),
        settings.pull_flush_interval,
        read_only.clone(),
    );
    mirrors.warm_up();
    if mirrors.has_size_limits() {
        housekeeping::spawn_mirror_eviction(
            opened.storage.clone(),
            housekeeping::Eviction {
                mirrors,
                pulls: pulls.clone(),
                every: settings.pull_flush_interval,
                grace: settings.gc_grace,
            },
            read_only.clone(),
        );
    }
    if let Some(every) = settings.retention_interval {
        let job = housekeeping::RetentionJob {
            policies: retention,
            immutable,
            every,
            grace: settings.gc_grace,
        };
        housekeeping::spawn_retention(opened.storage.clone(), job, read_only, metrics.clone());
    }
    if let (Some(m), Some(addr)) = (metrics, &settings.metrics.addr) {
        serve_metrics_apart(m, addr).await?;
    }
    let listener = bind(&settings.addr).await?;
    banner::announce(&listener, &settings);
    let acceptor = settings.tls.as_ref().map(tls::acceptor).transpose()?;
    connections::serve(listener, acceptor, app, limits, shutdown_signal()).await;
    tracing::info!("stopped: all in-flight requests finished");
    housekeeping::flush_pulls(opened.storage.as_ref(), &pulls).await;
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
    match connections::listen(addr).await {
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
