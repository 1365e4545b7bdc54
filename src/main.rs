//! The `berth` command line. Argument parsing, configuration and process
//! concerns only; the registry itself lives in `berth-registry`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Deserialize;

mod access;
mod all_tags;
mod build;
mod build_output;
mod build_progress;
mod catalog;
mod completion;
mod config;
mod deploy;
mod down;
mod durations;
mod examples;
mod hints;
mod images;
mod inventory;
mod local_images;
mod login_prompt;
mod man;
mod progress;
mod serve_banner;
mod serve_loop;
mod session;
mod ship;
mod swarm_init;
mod tls;
mod usage;

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
    /// Bytes and tags per repository, with the `[[quota]]` limits that apply.
    Usage(usage::UsageArgs),
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
    /// List the repositories of a registry.
    Catalog(catalog::CatalogArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completion(completion::CompletionArgs),
    /// Write man pages (berth.1 and one per subcommand), generated from this binary's help.
    Man(man::ManArgs),
    /// List the images in the local store (what `build -t`, `pull`, `tag` and `import` made).
    Images(local_images::ImagesArgs),
    /// Remove images from the local store by name.
    Rmi(local_images::RmiArgs),
    /// Remove a tag or manifest.
    Rm(images::RmArgs),
    /// Save credentials for a registry (shared with `docker login`).
    Login(images::LoginArgs),
    /// Forget the credentials for a registry.
    Logout(images::LogoutArgs),
    /// Build an image from a Dockerfile (runc + overlayfs, no daemon); --dry-run prints the plan;
    /// `berth build prune` empties the RUN --mount=type=cache folders
    Build(Box<build::BuildArgs>),
    /// Run an app on the hosts of an inventory: plan (printed with reasons), then apply
    /// with health-gated, rolled-back-on-failure replacement; --check only plans.
    Deploy(deploy::DeployArgs),
    /// Return every host of an inventory to the app's previous release.
    Rollback(deploy::RollbackArgs),
    /// Remove what deploys of an app made on the hosts of an inventory (containers, its
    /// networks others do not use; its volumes only with --volumes).
    Down(down::DownArgs),
    /// Swarm bootstrap: `berth swarm init -i INV` makes the inventory's managers and
    /// workers one Swarm, with node labels from `swarm_labels`.
    Swarm(swarm_init::SwarmArgs),
    /// Print what was read from an inventory (with -e on top), like ansible-inventory:
    /// --list, --host NAME or --graph [GROUP].
    Inventory(inventory::InventoryArgs),
    /// Build every service with a build context, push it, and deploy the pushed digests
    /// (for CI: no TTY needed, non-zero exit on any failure, --json report).
    Ship(ship::ShipArgs),
}

/// How to reach S3 when the storage is `s3://BUCKET/PREFIX` (serve and gc share them).
#[derive(clap::Args, Debug, Default)]
pub struct S3Args {
    /// S3 endpoint URL, for S3-compatible servers (default: AWS, or AWS_ENDPOINT_URL)
    #[arg(long, env = "BERTH_S3_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// S3 region (default: AWS_REGION / AWS_DEFAULT_REGION, else us-east-1)
    #[arg(long, env = "BERTH_S3_REGION")]
    s3_region: Option<String>,
    /// Address the bucket as BUCKET.host (virtual-hosted) instead of host/BUCKET (path-style, the default)
    #[arg(long, env = "BERTH_S3_VIRTUAL_HOSTED")]
    s3_virtual_hosted: bool,
    /// Allow a plain-HTTP S3 endpoint (credentials and content travel unencrypted)
    #[arg(long, env = "BERTH_S3_ALLOW_HTTP")]
    s3_allow_http: bool,
    /// 16 MiB ranges a big blob read fetches ahead in parallel [default: 3]; 0 reads
    /// each blob with one GET (for S3 servers that copy the object per ranged GET, e.g. moto)
    #[arg(long, env = "BERTH_S3_READ_AHEAD", value_name = "N")]
    s3_read_ahead: Option<usize>,
}

#[derive(Parser, Debug)]
pub struct GcArgs {
    /// The storage folder, or s3://BUCKET/PREFIX [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// TOML config file (its `storage` key and [s3] table are used)
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
    /// Address to listen on; `:PORT` means every address [default: 0.0.0.0:5000]
    #[arg(long, env = "BERTH_ADDR")]
    addr: Option<String>,
    /// Where to store images: a folder, or s3://BUCKET/PREFIX [default: ./berth-data]
    #[arg(long, env = "BERTH_STORAGE")]
    storage: Option<String>,
    #[command(flatten)]
    s3: S3Args,
    /// S3 only: answer blob GETs with a 307 redirect to a presigned S3 URL
    /// instead of passing the bytes through the registry
    #[arg(long, env = "BERTH_REDIRECT_BLOBS")]
    redirect_blobs: bool,
    /// Log format [default: text]
    #[arg(long, env = "BERTH_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Collect garbage this often while serving (e.g. 24h); off by default.
    /// Safe during pushes: it keeps anything touched in the last hour.
    #[arg(long, env = "BERTH_GC_INTERVAL", value_parser = humantime::parse_duration)]
    gc_interval: Option<Duration>,
    /// What the server's collections spare: anything pushed or reused more
    /// recently than this [default: 1h]
    #[arg(long, env = "BERTH_GC_GRACE", value_parser = humantime::parse_duration)]
    gc_grace: Option<Duration>,
    /// TOML file with any of: addr, storage, log_format, gc_interval and an
    /// [s3] table (endpoint, region, access_key_id, secret_access_key,
    /// session_token, virtual_hosted, allow_http, redirect_blobs). Flags and
    /// BERTH_* variables override it.
    #[arg(long, env = "BERTH_CONFIG")]
    config: Option<PathBuf>,
    /// Turn on logins: accounts from this `htpasswd -B` file (bcrypt). Access
    /// rules go in the config file's [access] table.
    #[arg(long, env = "BERTH_HTPASSWD", value_name = "FILE")]
    htpasswd: Option<PathBuf>,
    /// How clients log in: Docker's token flow (default, with the built-in
    /// /token endpoint) or Basic credentials on every request.
    #[arg(long, env = "BERTH_AUTH_SCHEME", value_enum)]
    auth_scheme: Option<config::AuthScheme>,
    /// Serve HTTPS with this PEM certificate chain (re-read when it changes).
    #[arg(long, env = "BERTH_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's PEM private key.
    #[arg(long, env = "BERTH_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA bundle (mTLS).
    #[arg(long, env = "BERTH_TLS_CLIENT_CA", value_name = "PEM")]
    tls_client_ca: Option<PathBuf>,
    /// Requests per second per client address (429 with Retry-After beyond).
    #[arg(long, env = "BERTH_RATE_LIMIT", value_name = "PER_SECOND")]
    rate_limit: Option<f64>,
    /// Cut request bodies that average less than this over
    /// limits.min_upload_rate_window (30 s) [default: 1024]; 0 turns it off.
    #[arg(long, env = "BERTH_MIN_UPLOAD_RATE", value_name = "BYTES_PER_SECOND")]
    min_upload_rate: Option<u64>,
    /// Maintenance mode: pulls work, every write gets 405 UNSUPPORTED, and the
    /// server's own garbage collection and upload expiry do not run.
    #[arg(long, env = "BERTH_READ_ONLY")]
    read_only: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = examples::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Gc(args) => gc(args),
        Command::Usage(args) => usage::usage(args),
        Command::Push(args) => images::push(args),
        Command::Pull(args) => images::pull(args),
        Command::Copy(args) => images::copy(args),
        Command::Import(args) => images::import(args),
        Command::Tag(args) => images::tag(args),
        Command::Inspect(args) => images::inspect(args),
        Command::Ls(args) => images::ls(args),
        Command::Catalog(args) => catalog::catalog(args),
        Command::Completion(args) => completion::completion::<Cli>(args),
        Command::Man(args) => man::man::<Cli>(args),
        Command::Images(args) => local_images::images(args),
        Command::Rmi(args) => local_images::rmi(args),
        Command::Rm(args) => images::rm(args),
        Command::Login(args) => images::login(args),
        Command::Logout(args) => images::logout(args),
        Command::Build(args) => build::build(*args),
        Command::Deploy(args) => deploy::deploy(args),
        Command::Rollback(args) => deploy::rollback(args),
        Command::Down(args) => down::down(args),
        Command::Swarm(args) => swarm_init::swarm(args),
        Command::Inventory(args) => inventory::inventory(args),
        Command::Ship(args) => ship::ship(args),
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
    let mut settings = config::resolve(args)?;
    init_logging(settings.log_format);
    // Raises the open-file limit before anything opens files.
    let limits = serve_loop::Limits::new(&settings.limits);
    restrict_umask();
    let opened = open_storage(&settings)?;
    let storage = opened.storage.clone();
    let mut registry = berth_registry::Registry::new(storage.clone());
    if let Some(access) = access::build(&settings)? {
        registry = registry.with_access(access);
    }
    if let Some(limit) = access::rate_limit(&settings.limits)? {
        registry = registry.with_rate_limit(limit);
    }
    registry = registry.with_immutable_tags(std::mem::take(&mut settings.immutable));
    registry = registry.with_quotas(std::mem::take(&mut settings.quotas));
    let metrics = settings
        .metrics
        .enabled
        .then(|| berth_registry::metrics::Metrics::new(settings.metrics.token.clone()));
    if let Some(m) = &metrics {
        registry = registry.with_metrics(m.clone(), settings.metrics.addr.is_none());
    }
    registry.read_only().set(settings.read_only);
    let app = registry.router();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        if let Some(s3) = &opened.s3 {
            s3.check().await.with_context(|| {
                format!("cannot reach the bucket of {}: check --s3-endpoint, the region and the AWS_* credentials", settings.storage)
            })?;
        }
        // Read-only: the server's own deletions (expiry, GC) stay off too.
        if settings.read_only {
            tracing::warn!("read-only mode: pulls work, every write is refused with 405; upload expiry and GC are off");
        } else {
            tokio::spawn(purge_abandoned_uploads(
                storage.clone(),
                settings.limits.upload_expiry,
            ));
        }
        if let Some(every) = settings.gc_interval.filter(|_| !settings.read_only) {
            tokio::spawn(collect_garbage_periodically(
                storage,
                every,
                settings.gc_grace,
            ));
        }
        if let (Some(m), Some(addr)) = (metrics, &settings.metrics.addr) {
            serve_metrics_apart(m, addr).await?;
        }
        let listener = match tokio::net::TcpListener::bind(&settings.addr).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
                "cannot listen on {}: the port is in use (another registry?); pick another with --addr",
                settings.addr
            ),
            Err(e) => bail!("cannot listen on {}: {e}", settings.addr),
        };
        serve_banner::announce(&listener, &settings);
        let acceptor = settings.tls.as_ref().map(tls::acceptor).transpose()?;
        serve_loop::serve(listener, acceptor, app, limits, shutdown_signal()).await;
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
    })
}

struct OpenedStorage {
    storage: Arc<dyn berth_storage::Storage>,
    /// The same storage when it is S3, for its request counts and start-up check.
    s3: Option<Arc<berth_storage::S3Storage>>,
}

fn open_storage(settings: &config::Settings) -> Result<OpenedStorage> {
    if settings.storage.starts_with("s3://") {
        let options = settings.s3.options(&settings.storage)?;
        let s3 = Arc::new(
            // Display only: the error's source repeats its own message.
            berth_storage::S3Storage::new(&options)
                .map_err(|e| anyhow::anyhow!("cannot use {}: {e}", settings.storage))?,
        );
        return Ok(OpenedStorage {
            storage: s3.clone(),
            s3: Some(s3),
        });
    }
    if settings.s3.redirect_blobs {
        bail!("--redirect-blobs needs S3 storage (--storage s3://BUCKET/PREFIX)");
    }
    let storage = berth_storage::FsStorage::open(&settings.storage)
        .with_context(|| format!("cannot open storage folder {}", settings.storage))?;
    Ok(OpenedStorage {
        storage: Arc::new(storage),
        s3: None,
    })
}

/// Files the registry creates (blobs, manifests, tags, upload data) are not
/// for other users of the machine: no write for the group and nothing for
/// others (0640 files, 0750 folders), whatever umask the service manager
/// left us. A stricter umask is kept as it is.
fn restrict_umask() {
    // SAFETY: umask(2) only swaps the process's file-mode mask.
    let before = unsafe { libc::umask(0o027) };
    if before & 0o027 != 0o027 {
        tracing::debug!(before = format!("{before:03o}"), "umask tightened");
    }
    // SAFETY: as above; puts back any bits the old mask had beyond 027.
    unsafe { libc::umask(before | 0o027) };
}

async fn collect_garbage_periodically(
    storage: Arc<dyn berth_storage::Storage>,
    every: Duration,
    grace: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await; // the first tick is immediate: wait one interval first
    loop {
        ticks.tick().await;
        match storage.collect_garbage(grace, false).await {
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
    let settings = config::resolve(ServeArgs {
        storage: args.storage,
        config: args.config,
        s3: args.s3,
        ..Default::default()
    })?;
    let storage_path = &settings.storage;
    if !storage_path.starts_with("s3://")
        && !std::path::Path::new(storage_path).join("blobs").is_dir()
    {
        bail!("{storage_path} is not a berth storage folder (no blobs/ in it): check --storage");
    }
    let storage = open_storage(&settings)?.storage;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime
        .block_on(storage.collect_garbage(args.grace, args.dry_run))
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

/// Upload sessions untouched for `max_age` are abandoned pushes.
async fn purge_abandoned_uploads(storage: Arc<dyn berth_storage::Storage>, max_age: Duration) {
    // Hourly, or more often when sessions expire sooner than that.
    let mut every = tokio::time::interval(
        (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
    );
    loop {
        every.tick().await;
        match storage.purge_uploads(max_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "purged abandoned upload sessions"),
            Err(e) => tracing::warn!(error = %e, "could not purge abandoned uploads"),
        }
    }
}

/// `[metrics] addr`: `/metrics` on a plain-HTTP listener of its own.
async fn serve_metrics_apart(metrics: berth_registry::metrics::Metrics, addr: &str) -> Result<()> {
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
