//! `berth serve` settings: flags and `BERTH_*` variables over a TOML file over defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use clap::ValueEnum;

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
    /// MiB of small blobs and manifests kept in memory by digest [default: 64]; 0: none
    #[arg(long, env = "BERTH_S3_CACHE_MIB", value_name = "MIB")]
    pub(crate) s3_cache_mib: Option<u64>,
    /// How long a repository link, once seen, is trusted without asking S3 (another
    /// replica's delete shows after at most this) [default: 60s]; 0s: always ask
    #[arg(long, env = "BERTH_S3_LINK_CACHE", value_name = "DURATION")]
    pub(crate) s3_link_cache: Option<String>,
}

#[derive(clap::Parser, Debug, Default)]
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
    pub(crate) auth_scheme: Option<AuthScheme>,
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

/// `:5000` (the form docker's registry takes) means every IPv4 address.
pub fn normalise_addr(addr: &str) -> String {
    match addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => addr.to_string(),
    }
}

pub const DEFAULT_ADDR: &str = "0.0.0.0:5000";
pub const DEFAULT_STORAGE: &str = "./berth-data";
/// How recent a push must be for the server's own collections to spare it.
pub const DEFAULT_GC_GRACE: Duration = Duration::from_secs(3600);

/// `--log-format` / `log_format`: how `berth serve` writes its log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug)]
pub struct Settings {
    pub addr: String,
    pub storage: String,
    pub log_format: LogFormat,
    pub gc_interval: Option<Duration>,
    /// What the server's own collections spare (pushed or reused more recently).
    pub gc_grace: Duration,
    /// S3 connection settings, used when `storage` is `s3://...`.
    pub s3: S3Settings,
    /// Authentication; off when neither an htpasswd file nor trusted token
    /// keys are given.
    pub auth: AuthSettings,
    /// `[access]`: groups and rules. Empty: every logged-in user may do
    /// everything, anonymous clients nothing (what an htpasswd-only registry does).
    pub access: berth_auth::acl::AclConfig,
    pub tls: Option<crate::tls::TlsSettings>,
    pub limits: LimitSettings,
    /// `--read-only` / `[storage] read_only`: pulls only, every write refused.
    pub read_only: bool,
    /// `[[immutable]]` rules, compiled (bad patterns fail at start).
    pub immutable: berth_registry::immutable::ImmutableTags,
    /// `[[quota]]` rules, compiled (bad patterns and limits fail at start).
    pub quotas: berth_registry::quota::Quotas,
    /// `[[notifications]]` webhook endpoints, compiled (bad URLs fail at start).
    pub notifications: berth_registry::events::Notifications,
    pub metrics: MetricsSettings,
    /// `[manifests]`: what a pushed manifest must satisfy.
    pub manifests: ManifestSettings,
    /// `[[retention]]` policies, compiled (bad patterns and durations fail at start).
    pub retention: berth_registry::retention::RetentionPolicies,
    /// `retention_interval`: run the policies this often while serving; off by default.
    pub retention_interval: Option<Duration>,
    /// `pull_flush_interval`: how often noted manifest pulls are written to storage.
    pub pull_flush_interval: Duration,
    /// `[ui]`: the web UI.
    pub ui: UiSettings,
    /// `[[mirror]]` upstreams, compiled (bad URLs and keys fail at start).
    pub mirrors: berth_registry::mirror::Mirrors,
    /// `[[sync]]` jobs (replication from remote registries), compiled (bad keys fail at start).
    pub sync_jobs: berth_registry::sync_jobs::SyncJobs,
}

/// The `[ui]` table: the web UI under `/ui/`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UiSettings {
    /// Default true.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Without logins, let the UI delete tags and manifests (read-only otherwise).
    #[serde(default)]
    pub allow_delete: bool,
    /// How long a UI login lasts, e.g. "8h" (the default).
    pub session_lifetime: Option<String>,
}

impl Default for UiSettings {
    fn default() -> Self {
        UiSettings {
            enabled: true,
            allow_delete: false,
            session_lifetime: None,
        }
    }
}

/// How often a server writes the pulls it noted, by default: pull times are
/// at most this far behind (retention windows are days).
pub const DEFAULT_PULL_FLUSH_INTERVAL: Duration = Duration::from_secs(60);

/// The `[manifests]` table.
#[derive(Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ManifestSettings {
    /// Accept an image index whose child manifests are not all pushed (a "sparse" index,
    /// e.g. one platform copied out of a multi-platform image). Off: every child must be
    /// in the repository first (MANIFEST_BLOB_UNKNOWN), as distribution does by default.
    #[serde(default)]
    pub sparse_indexes: bool,
}

/// The `[metrics]` table: Prometheus `/metrics`.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MetricsSettings {
    /// Default true.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// Serve `/metrics` on a listener of its own (e.g. "127.0.0.1:9090")
    /// instead of the main one.
    pub addr: Option<String>,
    /// A Bearer token that may read `/metrics` (besides a login, when logins are on).
    pub token: Option<String>,
}

fn enabled_by_default() -> bool {
    true
}

impl Default for MetricsSettings {
    fn default() -> Self {
        MetricsSettings {
            enabled: true,
            addr: None,
            token: None,
        }
    }
}

/// The `[auth]` table (and `--htpasswd`, `--auth-scheme`).
#[derive(Deserialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// `htpasswd -B` file: the accounts for Basic logins and the token endpoint.
    pub htpasswd: Option<PathBuf>,
    pub scheme: Option<AuthScheme>,
    /// `service` in challenges, audience of tokens. Default "berth".
    pub service: Option<String>,
    /// Token endpoint URL for challenges, used whatever `Host` a client sends.
    /// Unset: `/token` on the host the client used (its `Host` header).
    pub realm: Option<String>,
    /// PEM file of the token signing key, created if missing. Replicas must share it.
    pub token_key: Option<PathBuf>,
    /// e.g. "5m"
    pub token_lifetime: Option<String>,
    /// `iss` of the tokens we issue, or of the external issuer we trust.
    pub issuer: Option<String>,
    /// Public keys (PEM certificates/keys, or a JWKS JSON file) of an external
    /// token service to trust instead of running our own.
    pub trust_keys: Option<PathBuf>,
    /// Wrong passwords in a row, per account and per client address, before
    /// logins are backed off (1 s, doubling per failure, at most 15 min).
    /// Default 5; 0 turns the backoff off.
    pub login_failures_before_backoff: Option<u32>,
}

impl AuthSettings {
    pub fn enabled(&self) -> bool {
        self.htpasswd.is_some() || self.trust_keys.is_some()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthScheme {
    /// Docker's token flow (what Docker Hub, GHCR and Harbor use).
    Token,
    /// Basic credentials on every request (what an htpasswd-only distribution does).
    Basic,
}

/// The `[tls]` table.
#[derive(Deserialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct TlsTable {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
}

/// The `[limits]` table as written.
#[derive(Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct LimitsTable {
    rate: Option<f64>,
    burst: Option<u32>,
    /// e.g. "5m"
    idle_timeout: Option<String>,
    /// e.g. "30s"
    header_timeout: Option<String>,
    /// e.g. "7d"
    upload_expiry: Option<String>,
    /// Bytes per second a request body must average; 0 turns it off.
    min_upload_rate: Option<u64>,
    /// e.g. "30s": the span the minimum rate is judged over.
    min_upload_rate_window: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// Requests per second per client address, on average (off when unset).
    pub rate: Option<f64>,
    /// Requests a client may make at once. Default: 4 seconds' worth, at least 100.
    pub burst: Option<u32>,
    /// A connection on which nothing moves for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed for a request's headers.
    pub header_timeout: Duration,
    /// Upload sessions untouched for this long are removed.
    pub upload_expiry: Duration,
    /// Request bodies slower than this many bytes per second, over
    /// `min_upload_rate_window`, are cut (trickling uploads). 0: off.
    pub min_upload_rate: u64,
    pub min_upload_rate_window: Duration,
}

pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// A week, as the reference registry.
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// 1 KiB/s over 30 s: far below any real link, far above a trickle.
pub const DEFAULT_MIN_UPLOAD_RATE: u64 = 1024;
pub const DEFAULT_MIN_UPLOAD_RATE_WINDOW: Duration = Duration::from_secs(30);

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            rate: None,
            burst: None,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            upload_expiry: DEFAULT_UPLOAD_EXPIRY,
            min_upload_rate: DEFAULT_MIN_UPLOAD_RATE,
            min_upload_rate_window: DEFAULT_MIN_UPLOAD_RATE_WINDOW,
        }
    }
}

/// The `[s3]` table, flags and `BERTH_S3_*` variables. Anything unset falls
/// back to the usual `AWS_*` variables (read by the storage backend).
#[derive(Deserialize, Default, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    #[serde(default)]
    pub virtual_hosted: bool,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub redirect_blobs: bool,
    /// 16 MiB ranges a big blob read fetches ahead (0: one GET per blob).
    pub read_ahead: Option<usize>,
    /// MiB of small blobs and manifests kept by digest (0: none).
    pub cache_mib: Option<u64>,
    /// How long a seen repository link is trusted, e.g. "60s" ("0s": always ask S3).
    pub link_cache: Option<String>,
}

impl S3Settings {
    /// Storage options for `s3://BUCKET/PREFIX` with these settings.
    pub fn options(&self, url: &str) -> Result<berth_storage::S3Options> {
        let mut o = berth_storage::S3Options::from_url(url).map_err(anyhow::Error::msg)?;
        o.endpoint = self.endpoint.clone();
        o.region = self.region.clone();
        o.access_key_id = self.access_key_id.clone();
        o.secret_access_key = self.secret_access_key.clone();
        o.session_token = self.session_token.clone();
        o.virtual_hosted = self.virtual_hosted;
        // AWS_ALLOW_HTTP is honoured too, as other AWS tools do; either way
        // plain HTTP is only ever used when someone asked for it.
        o.allow_http = self.allow_http
            || std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        o.redirect_blobs = self.redirect_blobs;
        o.read_ahead = self.read_ahead;
        if let Some(mib) = self.cache_mib {
            o.cache_bytes = Some(mib.checked_mul(1 << 20).ok_or_else(|| {
                anyhow::anyhow!("s3.cache_mib = {mib} is too large (MiB of memory)")
            })?);
        }
        if let Some(text) = &self.link_cache {
            o.link_cache = Some(humantime::parse_duration(text).with_context(|| {
                format!(
                    "invalid s3.link_cache {text:?} (use e.g. \"60s\", or \"0s\" to always ask S3)"
                )
            })?);
        }
        if let Some(endpoint) = &o.endpoint {
            if endpoint.starts_with("http://") && !o.allow_http {
                anyhow::bail!(
                    "S3 endpoint {endpoint} is plain HTTP: pass --s3-allow-http (or allow_http = true in [s3]) if that is intended"
                );
            }
        }
        Ok(o)
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<String>,
    /// A location string, or a `[storage]` table (see [`storage_entry`]).
    storage: Option<toml::Value>,
    log_format: Option<LogFormat>,
    /// e.g. "24h"
    gc_interval: Option<String>,
    /// e.g. "1h"
    gc_grace: Option<String>,
    #[serde(default)]
    s3: S3Settings,
    #[serde(default)]
    auth: AuthSettings,
    #[serde(default)]
    access: berth_auth::acl::AclConfig,
    #[serde(default)]
    tls: TlsTable,
    #[serde(default)]
    limits: LimitsTable,
    #[serde(default)]
    immutable: Vec<berth_registry::immutable::ImmutableConfig>,
    #[serde(default)]
    quota: Vec<berth_registry::quota::QuotaConfig>,
    #[serde(default)]
    notifications: Vec<berth_registry::events::NotificationConfig>,
    #[serde(default)]
    metrics: MetricsSettings,
    #[serde(default)]
    manifests: ManifestSettings,
    #[serde(default)]
    retention: Vec<berth_registry::retention::RetentionConfig>,
    /// e.g. "24h"
    retention_interval: Option<String>,
    /// e.g. "1m"
    pull_flush_interval: Option<String>,
    #[serde(default)]
    ui: UiSettings,
    #[serde(default)]
    mirror: Vec<berth_registry::mirror::MirrorConfig>,
    #[serde(default)]
    sync: Vec<berth_registry::sync_jobs::SyncJobConfig>,
}

/// `storage = "LOCATION"`, or a `[storage]` table with `path` and
/// `read_only`: (location, read_only). Unknown keys are named.
fn storage_entry(value: Option<toml::Value>) -> Result<(Option<String>, bool)> {
    use toml::Value;
    let table = match value {
        None => return Ok((None, false)),
        Some(Value::String(location)) => return Ok((Some(location), false)),
        Some(Value::Table(table)) => table,
        Some(other) => bail!(
            "invalid storage in the config file: a location string or a [storage] table, not a {}",
            other.type_str()
        ),
    };
    let (mut location, mut read_only) = (None, false);
    for (key, value) in table {
        match (key.as_str(), value) {
            ("path", Value::String(path)) => location = Some(path),
            ("read_only", Value::Boolean(on)) => read_only = on,
            ("path", _) => bail!("invalid storage.path in the config file: use a string (a folder or s3://BUCKET/PREFIX)"),
            ("read_only", _) => bail!("invalid storage.read_only in the config file: use true or false"),
            (other, _) => bail!("unknown key storage.{other} in the config file (known: path, read_only)"),
        }
    }
    Ok((location, read_only))
}

/// What a reload on SIGHUP puts in force: the keys that are safe to change while serving.
pub struct Reloaded {
    pub read_only: bool,
    pub immutable: berth_registry::immutable::ImmutableTags,
    pub quotas: berth_registry::quota::Quotas,
    pub retention: berth_registry::retention::RetentionPolicies,
}

/// The reloadable keys of the config file as it is now. The whole file is read and checked
/// as at start, so a reload with a broken file changes nothing.
pub fn reloadable_in_file(path: &Path) -> Result<Reloaded> {
    let settings = resolve(ServeArgs {
        config: Some(path.to_path_buf()),
        ..Default::default()
    })?;
    Ok(Reloaded {
        read_only: settings.read_only,
        immutable: settings.immutable,
        quotas: settings.quotas,
        retention: settings.retention,
    })
}

fn load(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

pub fn resolve(args: ServeArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => load(path)?,
        None => FileConfig::default(),
    };
    let (file_storage, file_read_only) = storage_entry(file.storage)?;
    let immutable = berth_registry::immutable::ImmutableTags::from_config(&file.immutable)
        .map_err(|e| anyhow::anyhow!("invalid config file: {e}"))?;
    let quotas = berth_registry::quota::Quotas::from_config(&file.quota)
        .map_err(|e| anyhow::anyhow!("invalid config file: {e}"))?;
    let notifications = berth_registry::events::Notifications::from_config(&file.notifications)
        .map_err(|e| anyhow::anyhow!("invalid config file: {e}"))?;
    let retention = berth_registry::retention::RetentionPolicies::from_config(&file.retention)
        .map_err(|e| anyhow::anyhow!("invalid config file: {e}"))?;
    let retention_interval = file
        .retention_interval
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .context("invalid retention_interval in the config file (use e.g. \"24h\")")?;
    let pull_flush_interval = match file.pull_flush_interval.as_deref() {
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|d| !d.is_zero())
            .context("invalid pull_flush_interval in the config file (use e.g. \"1m\")")?,
        None => DEFAULT_PULL_FLUSH_INTERVAL,
    };
    if retention_interval.is_some() && retention.is_empty() {
        bail!("retention_interval is set in the config file but no [[retention]] policy is: add one or remove retention_interval");
    }
    let mirrors = berth_registry::mirror::Mirrors::from_config(&file.mirror)
        .map_err(|e| anyhow::anyhow!("invalid config file: {e}"))?;
    let sync_jobs = berth_registry::sync_jobs::SyncJobs::from_config(&file.sync)
        .map_err(|e| anyhow::anyhow!("invalid config file: {e}"))?;
    let file_gc = file
        .gc_interval
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .context("invalid gc_interval in the config file (use e.g. \"24h\")")?;
    let file_gc_grace = file
        .gc_grace
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .context("invalid gc_grace in the config file (use e.g. \"1h\")")?;
    Ok(Settings {
        addr: normalise_addr(
            &args
                .addr
                .or(file.addr)
                .unwrap_or_else(|| DEFAULT_ADDR.to_string()),
        ),
        storage: args
            .storage
            .or(file_storage)
            .unwrap_or_else(|| DEFAULT_STORAGE.to_string()),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        gc_interval: args.gc_interval.or(file_gc),
        gc_grace: args.gc_grace.or(file_gc_grace).unwrap_or(DEFAULT_GC_GRACE),
        s3: S3Settings {
            endpoint: args.s3.s3_endpoint.or(file.s3.endpoint),
            region: args.s3.s3_region.or(file.s3.region),
            access_key_id: file.s3.access_key_id,
            secret_access_key: file.s3.secret_access_key,
            session_token: file.s3.session_token,
            virtual_hosted: args.s3.s3_virtual_hosted || file.s3.virtual_hosted,
            allow_http: args.s3.s3_allow_http || file.s3.allow_http,
            redirect_blobs: args.redirect_blobs || file.s3.redirect_blobs,
            read_ahead: args.s3.s3_read_ahead.or(file.s3.read_ahead),
            cache_mib: args.s3.s3_cache_mib.or(file.s3.cache_mib),
            link_cache: args.s3.s3_link_cache.or(file.s3.link_cache),
        },
        auth: AuthSettings {
            htpasswd: args.htpasswd.or(file.auth.htpasswd),
            scheme: args.auth_scheme.or(file.auth.scheme),
            ..file.auth
        },
        access: file.access,
        tls: {
            let cert = args.tls_cert.or(file.tls.cert);
            let key = args.tls_key.or(file.tls.key);
            let client_ca = args.tls_client_ca.or(file.tls.client_ca);
            match (cert, key) {
                (Some(cert), Some(key)) => Some(crate::tls::TlsSettings {
                    cert,
                    key,
                    client_ca,
                }),
                (None, None) if client_ca.is_none() => None,
                _ => anyhow::bail!(
                    "HTTPS needs both --tls-cert and --tls-key (a client CA alone does nothing)"
                ),
            }
        },
        limits: LimitSettings {
            rate: args.rate_limit.or(file.limits.rate),
            burst: file.limits.burst,
            idle_timeout: match file.limits.idle_timeout.as_deref() {
                Some(text) => humantime::parse_duration(text)
                    .context("invalid limits.idle_timeout (use e.g. \"5m\")")?,
                None => DEFAULT_IDLE_TIMEOUT,
            },
            header_timeout: match file.limits.header_timeout.as_deref() {
                Some(text) => humantime::parse_duration(text)
                    .context("invalid limits.header_timeout (use e.g. \"30s\")")?,
                None => DEFAULT_HEADER_TIMEOUT,
            },
            upload_expiry: match file.limits.upload_expiry.as_deref() {
                Some(text) => humantime::parse_duration(text)
                    .context("invalid limits.upload_expiry (use e.g. \"7d\")")?,
                None => DEFAULT_UPLOAD_EXPIRY,
            },
            min_upload_rate: args
                .min_upload_rate
                .or(file.limits.min_upload_rate)
                .unwrap_or(DEFAULT_MIN_UPLOAD_RATE),
            min_upload_rate_window: match file.limits.min_upload_rate_window.as_deref() {
                Some(text) => humantime::parse_duration(text)
                    .context("invalid limits.min_upload_rate_window (use e.g. \"30s\")")?,
                None => DEFAULT_MIN_UPLOAD_RATE_WINDOW,
            },
        },
        read_only: args.read_only || file_read_only,
        manifests: file.manifests,
        ui: file.ui,
        immutable,
        quotas,
        notifications,
        mirrors,
        sync_jobs,
        metrics: file.metrics,
        retention,
        retention_interval,
        pull_flush_interval,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(s.addr, "0.0.0.0:5000");
        assert_eq!(s.storage, "./berth-data");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.gc_interval, None);
        assert_eq!(s.gc_grace, Duration::from_secs(3600));
        assert_eq!(s.s3, S3Settings::default());
        assert!(!s.auth.enabled(), "no auth unless asked");
        assert!(s.tls.is_none(), "plain HTTP unless asked");
        assert_eq!(s.limits, LimitSettings::default());
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:6000\"\nstorage = \"/srv/b\"\nlog_format = \"json\"\ngc_interval = \"12h\"\ngc_grace = \"10m\"\n",
        )
        .expect("write");
        let args = ServeArgs {
            addr: Some("127.0.0.1:7000".into()),
            config: Some(path.clone()),
            ..Default::default()
        };
        let s = resolve(args).expect("resolve");
        assert_eq!(s.addr, "127.0.0.1:7000");
        assert_eq!(s.storage, "/srv/b");
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.gc_interval, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(s.gc_grace, Duration::from_secs(600));
    }

    #[test]
    fn s3_table_and_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "storage = \"s3://bucket/some/prefix\"\n[s3]\nendpoint = \"http://127.0.0.1:9000\"\nregion = \"eu-west-1\"\nread_ahead = 0\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n",
        )
        .expect("write");
        let s = resolve(ServeArgs {
            config: Some(path.clone()),
            s3: S3Args {
                s3_region: Some("us-east-2".into()),
                ..Default::default()
            },
            redirect_blobs: true,
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(s.s3.region.as_deref(), Some("us-east-2"));
        assert!(s.s3.redirect_blobs);
        // Plain HTTP only when asked.
        let err =
            s.s3.options(&s.storage)
                .expect_err("http without allow_http");
        assert!(format!("{err:#}").contains("--s3-allow-http"), "{err:#}");
        let s = resolve(ServeArgs {
            config: Some(path),
            s3: S3Args {
                s3_allow_http: true,
                ..Default::default()
            },
            ..Default::default()
        })
        .expect("resolve");
        let o = s.s3.options(&s.storage).expect("options");
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("bucket", "some/prefix")
        );
        assert_eq!(o.access_key_id.as_deref(), Some("k"));
        assert_eq!(o.read_ahead, Some(0), "[s3] read_ahead reaches the backend");
        assert!(o.allow_http);
        assert!(
            S3Settings::default().options("s3://x").is_err(),
            "bucket name too short"
        );
    }

    #[test]
    fn s3_read_cache_keys() {
        let settings = |text: &str| -> S3Settings { toml::from_str(text).expect("parse [s3]") };
        let o = settings("cache_mib = 0\nlink_cache = \"5s\"\n")
            .options("s3://bucket")
            .expect("options");
        assert_eq!(o.cache_bytes, Some(0), "cache_mib = 0 turns the cache off");
        assert_eq!(o.link_cache, Some(Duration::from_secs(5)));
        let o = S3Settings::default()
            .options("s3://bucket")
            .expect("options");
        assert_eq!((o.cache_bytes, o.link_cache), (None, None), "defaults");
        let err = settings("link_cache = \"soon\"\n")
            .options("s3://bucket")
            .expect_err("bad duration");
        assert!(format!("{err:#}").contains("s3.link_cache"), "{err:#}");
        let err = settings(&format!("cache_mib = {}\n", u64::MAX >> 4))
            .options("s3://bucket")
            .expect_err("overflow");
        assert!(format!("{err:#}").contains("s3.cache_mib"), "{err:#}");
    }

    #[test]
    fn auth_tls_and_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "[auth]\nhtpasswd = \"/etc/berth/htpasswd\"\nservice = \"reg\"\n\
             [access.groups]\nteam-a = [\"alice\"]\n\
             [[access.rules]]\nwho = \"group:team-a\"\nrepositories = [\"team-a/**\"]\nactions = [\"push\", \"pull\"]\n\
             [tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[limits]\nrate = 20.0\n",
        )
        .expect("write");
        let s = resolve(ServeArgs {
            config: Some(path.clone()),
            auth_scheme: Some(AuthScheme::Basic),
            ..Default::default()
        })
        .expect("resolve");
        assert!(s.auth.enabled());
        assert_eq!(s.auth.scheme, Some(AuthScheme::Basic), "flag wins");
        assert_eq!(s.auth.service.as_deref(), Some("reg"));
        assert_eq!(s.access.rules.len(), 1);
        assert_eq!(
            s.tls.as_ref().map(|t| t.cert.clone()),
            Some(PathBuf::from("/c.pem"))
        );
        assert_eq!(s.limits.rate, Some(20.0));
        let err = resolve(ServeArgs {
            tls_cert: Some("/c.pem".into()),
            ..Default::default()
        })
        .expect_err("cert without key");
        assert!(format!("{err:#}").contains("--tls-key"), "{err:#}");
    }

    #[test]
    fn min_upload_rate_from_file_and_flag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "[limits]\nmin_upload_rate = 100\nmin_upload_rate_window = \"2s\"\n",
        )
        .expect("write");
        let s = resolve(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(s.limits.min_upload_rate, 100);
        assert_eq!(s.limits.min_upload_rate_window, Duration::from_secs(2));
        let s = resolve(ServeArgs {
            config: Some(path),
            min_upload_rate: Some(0),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(s.limits.min_upload_rate, 0, "the flag wins, 0 turns it off");
    }

    #[test]
    fn retention_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        let parse = |text: &str| {
            std::fs::write(&path, text).expect("write");
            resolve(ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
        };
        let s = parse("retention_interval = \"12h\"\npull_flush_interval = \"5s\"\n[[retention]]\nrepositories = [\"ci/**\"]\nkeep_newest = 3\n").expect("valid");
        assert_eq!(s.retention_interval, Some(Duration::from_secs(12 * 3600)));
        assert_eq!(s.pull_flush_interval, Duration::from_secs(5));
        assert!(s.retention.policy_for("ci/app").is_some());
        for (text, key) in [
            (
                "[[retention]]\nrepositories = [\"ci/**\"]\nkeep_within = \"a while\"\n",
                "retention[0].keep_within",
            ),
            (
                "[[retention]]\nrepositories = [\"ci/**\"]\nkeep_newest = 1\nkeep_last = 2\n",
                "keep_last",
            ),
            ("retention_interval = \"often\"\n", "retention_interval"),
            ("retention_interval = \"1h\"\n", "retention_interval"),
            ("pull_flush_interval = \"0s\"\n", "pull_flush_interval"),
        ] {
            let e = format!("{:#}", parse(text).expect_err(text));
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn mirror_tables() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "[[mirror]]\nupstream = \"https://registry-1.docker.io\"\nprefix = \"docker.io\"\nnamespace = \"docker.io\"\nmanifest_ttl = \"10m\"\nmax_size = \"50GiB\"\n",
        )
        .expect("write");
        let s = resolve(ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        })
        .expect("resolve");
        assert!(s.mirrors.find("docker.io/library/alpine").is_some());
        for (text, named) in [
            (
                "[[mirror]]\nupstream = \"https://h\"\nprefix = \"p\"\nttl = \"5m\"\n",
                "ttl",
            ),
            (
                "[[mirror]]\nupstream = \"h:5000\"\nprefix = \"p\"\n",
                "mirror[0].upstream",
            ),
        ] {
            std::fs::write(&path, text).expect("write");
            let err = resolve(ServeArgs {
                config: Some(path.clone()),
                ..Default::default()
            })
            .expect_err("bad mirror table");
            assert!(format!("{err:#}").contains(named), "{err:#}");
        }
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, "adr = 1\n").expect("write");
        let err = resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .expect_err("unknown key");
        assert!(
            format!("{err:#}").contains("invalid config file"),
            "{err:#}"
        );
    }
}
