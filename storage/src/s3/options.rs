//! How to reach the bucket: options, credentials and the client.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::client::ClientOptions;

use super::cache::{ReadCache, CACHE_BYTES, LINK_TTL};
use super::counts::{CountingConnector, RequestCounts};
use super::read_ahead::{ReadAhead, READ_AHEAD, READ_BUFFERS, READ_RANGE};
use super::S3Storage;
use crate::Result;

/// Where and how to reach the bucket. Anything left `None` comes from the
/// usual `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix inside the bucket, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// e.g. `http://127.0.0.1:9000`; None = AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// `https://BUCKET.host/key` instead of `https://host/BUCKET/key`.
    pub virtual_hosted: bool,
    /// Allow a plain-HTTP endpoint. Off unless asked: credentials and
    /// content would cross the network unencrypted.
    pub allow_http: bool,
    /// Blob GETs answer 307 to a presigned URL instead of proxying the bytes.
    pub redirect_blobs: bool,
    /// 16 MiB ranges a big blob read fetches ahead; `None` = the default (3),
    /// 0 = one GET per blob (for servers that copy the object per ranged GET).
    pub read_ahead: Option<usize>,
    /// How long a repository link, once seen, is trusted without asking S3
    /// again; `None` = 60 s, zero = always ask (see `s3/cache.rs`).
    pub link_cache: Option<Duration>,
    /// Byte cap of the in-memory cache of small blobs and manifests by
    /// digest; `None` = 64 MiB, 0 = no cache.
    pub cache_bytes: Option<u64>,
}

impl S3Options {
    /// Parse `s3://BUCKET[/PREFIX]`.
    pub fn from_url(url: &str) -> std::result::Result<S3Options, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3://BUCKET/PREFIX address"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !bucket_ok {
            return Err(format!(
                "{bucket:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, '-', '.')"
            ));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|c| c == "." || c == "..")
            || prefix.contains("//")
            || prefix.chars().any(|c| c.is_control())
        {
            return Err(format!("{prefix:?} is not a usable key prefix"));
        }
        Ok(S3Options {
            bucket: bucket.to_string(),
            prefix,
            ..S3Options::default()
        })
    }
}

/// Without credentials the AWS client asks the cloud's instance metadata
/// service (169.254.169.254) for some, which on a machine outside AWS ends
/// in a confusing 403 or timeout. With an explicit endpoint (an
/// S3-compatible server) that service is never the answer, so say so at once.
const NO_CREDENTIALS: &str = "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or access_key_id and secret_access_key in the config file's [s3] table) for the server named by --s3-endpoint";

/// Whether credentials come from the options or from the environment
/// variables the AWS client reads (static keys, web identity, container
/// credentials), so the metadata service would not be asked.
fn credentials_configured(options: &S3Options) -> bool {
    let env = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    (options.access_key_id.is_some() && options.secret_access_key.is_some())
        || (env("AWS_ACCESS_KEY_ID") && env("AWS_SECRET_ACCESS_KEY"))
        || env("AWS_WEB_IDENTITY_TOKEN_FILE")
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || env("AWS_SKIP_SIGNATURE")
}

impl S3Storage {
    /// Connect to a bucket. Nothing is sent until the first request.
    pub fn new(options: &S3Options) -> Result<S3Storage> {
        let counts = Arc::new(RequestCounts::default());
        let mut client = ClientOptions::new()
            .with_allow_http(options.allow_http)
            .with_connect_timeout(Duration::from_secs(5));
        // AWS tools read extra trusted roots from AWS_CA_BUNDLE; do the same
        // (object_store itself ignores it). An unreadable bundle is an error
        // rather than a silent fallback to the system roots.
        if let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("AWS_CA_BUNDLE={}: {e}", path.to_string_lossy()),
                )
            })?;
            let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
                io::Error::other(format!("AWS_CA_BUNDLE={}: {e}", path.to_string_lossy()))
            })?;
            for cert in certs {
                client = client.with_root_certificate(cert);
            }
        }
        let endpoint_named = options.endpoint.is_some()
            || ["AWS_ENDPOINT_URL", "AWS_ENDPOINT"]
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        if endpoint_named && !credentials_configured(options) {
            return Err(io::Error::other(NO_CREDENTIALS).into());
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&options.bucket)
            .with_client_options(client)
            .with_http_connector(CountingConnector(counts.clone()))
            // Retry briefly, then let the registry answer 503 so the client
            // retries: a long internal retry only holds its connection open.
            .with_retry(object_store::RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                ..Default::default()
            });
        if let Some(endpoint) = &options.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(key) = &options.access_key_id {
            builder = builder.with_access_key_id(key);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret);
        }
        if let Some(token) = &options.session_token {
            builder = builder.with_token(token);
        }
        if options.virtual_hosted {
            builder = builder.with_virtual_hosted_style_request(true);
        }
        // Garbage collection deletes in batches (DeleteObjects, 1000 keys a
        // request) and falls back to one DELETE per key where that fails.
        let bulk_store = builder
            .clone()
            .build()
            .map_err(|e| io::Error::other(format!("S3 configuration: {e}")))?;
        // One DELETE per key: the bulk `POST ?delete` is missing on some
        // S3-compatible servers and needs Content-MD5 on others.
        let store = builder
            .with_disable_bulk_delete(true)
            .build()
            .map_err(|e| io::Error::other(format!("S3 configuration: {e}")))?;
        // Ranges a big read fetches ahead; 0 = one GET per read, for servers
        // where a ranged GET costs as much as the whole object (moto).
        let read_ahead = options.read_ahead.unwrap_or(READ_AHEAD);
        let prefix = if options.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", options.prefix.trim_matches('/'))
        };
        Ok(S3Storage {
            store: Arc::new(store),
            bulk_store: Arc::new(bulk_store),
            prefix,
            redirect_blobs: options.redirect_blobs,
            counts,
            pointers: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            upload_locks: Default::default(),
            read_ahead: ReadAhead::new(READ_RANGE, read_ahead, READ_BUFFERS),
            catalog: Default::default(),
            reads: ReadCache::new(
                options.link_cache.unwrap_or(LINK_TTL),
                options.cache_bytes.unwrap_or(CACHE_BYTES),
            ),
        })
    }
}
