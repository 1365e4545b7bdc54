//! S3 backend (any S3-compatible object store), over `object_store`.
//!
//! Keys under `s3://BUCKET/PREFIX` are named by [`crate::layout`]
//! ([`Layout::S3`]).
//!
//! # Where a finished upload goes, and why
//!
//! S3 has no rename, and a multipart upload's key is fixed when it starts,
//! before the digest is known. Copying the finished object to its
//! content-addressed key (what the reference registry does) reads and writes
//! the whole blob again inside S3, which makes big pushes slow. Instead:
//!
//! * an upload that ends within one part (< 8 MiB, nearly every config and
//!   manifest and most small layers) is kept in memory and written with one
//!   PUT straight to `blobs/<alg>/<hex>`;
//! * a bigger one streams into a multipart upload at `data/<upload id>`; on
//!   completion `blobs/<alg>/<hex>` becomes an empty *pointer* object whose
//!   user metadata names the data key and the size.
//!
//! The cost of the pointer is one extra small GET the first time a replica
//! reads that blob (pointers are cached: a digest's content never changes), in
//! exchange for never copying blob bytes. A re-push of a big blob writes a new
//! data object and re-points; the old one is swept by garbage collection.
//!
//! # Stateless replicas
//!
//! An upload session lives entirely in the bucket: offset, serialised SHA-256
//! state, multipart upload id, part ETags, and the bytes that do not fill a
//! part yet (an object of its own, written under a new name each time so a
//! failure between writing it and saving the state never leaves the state
//! pointing at the wrong bytes). So any replica can take the next chunk. The
//! state is written with `If-Match` on the ETag it was read with: two
//! replicas appending to one session at once cannot both win.
//!
//! The referrers of a subject are one JSON index, changed by read, modify
//! and write with `If-Match` (`If-None-Match: *` for the first), retried on
//! conflict: racing pushes of two referrers both end up listed, and a
//! listing is one GET.
//!
//! Tags are plain objects (an S3 PUT is atomic, so a racing tag write ends
//! with one whole value). Removing a tag (tag delete, or deleting the
//! manifest it points at) overwrites it with an empty tombstone *only if it
//! still holds the ETag that was read*, so a concurrent re-tag on another
//! replica is never lost. This needs a server that honours `If-Match` and
//! `If-None-Match` on PUT (AWS S3 since 2024, MinIO, R2, s3s-fs; not garage).
//!
//! ListMultipartUploads is never used (several S3-compatible servers lack it):
//! abandoned multipart uploads are found through their session state.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, AttributeValue, Attributes, GetOptions, GetRange, GetResult, ObjectStore,
    ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::digest::{restore_sha256_state, save_sha256_state, Hasher};
use crate::gc::{self, BlobBytes, GcStore, Stored};
use crate::layout::{
    is_upload_id, parse_tag, tag_content, Layout, LinkKind, DATA, REPOSITORIES, UPLOADS,
};
use crate::upload_locks::UploadGuard;
use crate::{
    Algorithm, BlobRead, ByteRange, ByteStream, Descriptor, Digest, GcReport, ManifestMeta, Result,
    Storage, StorageError, UploadStatus,
};

/// Size of the parts big uploads are cut into. S3 wants at least 5 MiB for
/// every part but the last; bigger parts mean fewer requests, smaller ones
/// less memory per upload.
pub const PART_SIZE: usize = 8 << 20;
/// Parts of one upload sent at once while the next one fills. Memory per
/// upload stays below `(PARTS_IN_FLIGHT + 1) * PART_SIZE` whatever its size.
const PARTS_IN_FLIGHT: usize = 2;
/// User metadata of a pointer object: the data key and the blob size.
const META_DATA_KEY: &str = "berth-data";
const META_SIZE: &str = "berth-size";
/// How long a presigned blob URL (`--redirect-blobs`) stays valid.
const REDIRECT_TTL: Duration = Duration::from_secs(20 * 60);
/// Resolved pointers kept in memory; past this the cache is simply cleared.
const POINTER_CACHE_MAX: usize = 100_000;
/// Attempts at a conditional tag write before giving up.
const TAG_RETRIES: usize = 8;
/// Big blob reads are cut into ranged GETs of this size (see [`ReadAhead`]).
const READ_RANGE: u64 = 16 << 20;
/// Ranges one read fetches ahead of the one being sent, while buffers last
/// (`--s3-read-ahead` overrides it). With the one being sent from memory,
/// a read holds at most 4 x 16 MiB = 64 MiB.
const READ_AHEAD: usize = 3;
/// Read-ahead buffers (of [`READ_RANGE`] each) for the whole server:
/// 8 x 16 MiB = 128 MiB at most, however many pulls run at once.
const READ_BUFFERS: usize = 8;
/// Largest frame handed to the HTTP layer from a read-ahead buffer.
const READ_FRAME: usize = 1 << 20;

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

/// S3 requests sent so far, by HTTP method (retries included): the measure
/// of how chatty the backend is.
#[derive(Debug, Default)]
pub struct RequestCounts {
    get: AtomicU64,
    head: AtomicU64,
    put: AtomicU64,
    post: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCountsSnapshot {
    pub get: u64,
    pub head: u64,
    pub put: u64,
    pub post: u64,
    pub delete: u64,
    pub other: u64,
}

impl RequestCountsSnapshot {
    pub fn total(&self) -> u64 {
        self.get + self.head + self.put + self.post + self.delete + self.other
    }

    /// Requests since `earlier`.
    pub fn since(&self, earlier: &RequestCountsSnapshot) -> RequestCountsSnapshot {
        RequestCountsSnapshot {
            get: self.get - earlier.get,
            head: self.head - earlier.head,
            put: self.put - earlier.put,
            post: self.post - earlier.post,
            delete: self.delete - earlier.delete,
            other: self.other - earlier.other,
        }
    }
}

impl RequestCounts {
    fn record(&self, method: &str) {
        let counter = match method {
            "GET" => &self.get,
            "HEAD" => &self.head,
            "PUT" => &self.put,
            "POST" => &self.post,
            "DELETE" => &self.delete,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> RequestCountsSnapshot {
        RequestCountsSnapshot {
            get: self.get.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            put: self.put.load(Ordering::Relaxed),
            post: self.post.load(Ordering::Relaxed),
            delete: self.delete.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
        }
    }
}

/// Counts every HTTP request `object_store` sends, below its retry logic, so
/// retries and list pages count too.
#[derive(Debug)]
struct CountingConnector(Arc<RequestCounts>);

impl HttpConnector for CountingConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(CountingService {
            inner,
            counts: self.0.clone(),
        }))
    }
}

#[derive(Debug)]
struct CountingService {
    inner: HttpClient,
    counts: Arc<RequestCounts>,
}

#[async_trait]
impl HttpService for CountingService {
    async fn call(&self, req: HttpRequest) -> std::result::Result<HttpResponse, HttpError> {
        self.counts.record(req.method().as_str());
        self.inner.execute(req).await
    }
}

/// How this backend spells the storage layout.
const LAYOUT: Layout = Layout::S3;

pub struct S3Storage {
    store: Arc<AmazonS3>,
    /// `PREFIX/` or empty.
    prefix: String,
    redirect_blobs: bool,
    counts: Arc<RequestCounts>,
    /// digest -> (data key relative to the prefix, size) of big blobs.
    pointers: Mutex<HashMap<Digest, (String, u64)>>,
    /// Held for reading by every write that links a blob, for writing by
    /// garbage collection in this process.
    gc_lock: tokio::sync::RwLock<()>,
    /// Appends to one session are serialised within a process; across
    /// replicas the conditional state write does it.
    upload_locks: crate::upload_locks::UploadLocks,
    /// How big blob reads fetch ahead, and the server-wide buffer budget.
    read_ahead: ReadAhead,
}

#[derive(Clone, Serialize, Deserialize)]
struct Session {
    repository: String,
    created_unix: u64,
    /// Bytes received: those in `parts`, then `tail` bytes in the tail object.
    offset: u64,
    /// Serialised SHA-256 state over the first `offset` bytes.
    sha256: String,
    /// Multipart upload at `data/<id>`, once the upload outgrew one part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multipart: Option<String>,
    /// ETags of the parts uploaded so far, in order.
    #[serde(default)]
    parts: Vec<String>,
    #[serde(default)]
    tail: u64,
    /// The object holding the tail bytes, if one was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail_key: Option<String>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Map an object store failure. A server that cannot be reached or answers
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

/// 5xx is `Unavailable` (the client may retry); refused credentials and the
/// like are plain failures.
fn s3_error(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::Generic { .. } => StorageError::Unavailable(e.to_string()),
        other => StorageError::Io(io::Error::other(other)),
    }
}

fn json<T: Serialize>(value: &T) -> Result<Bytes> {
    Ok(Bytes::from(
        serde_json::to_vec(value).map_err(io::Error::other)?,
    ))
}

fn http_get() -> http::Method {
    http::Method::GET
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
            // One DELETE per key: the bulk `POST ?delete` is missing on some
            // S3-compatible servers and needs Content-MD5 on others.
            .with_disable_bulk_delete(true)
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
        let store = builder
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
            prefix,
            redirect_blobs: options.redirect_blobs,
            counts,
            pointers: Mutex::new(HashMap::new()),
            gc_lock: tokio::sync::RwLock::new(()),
            upload_locks: Default::default(),
            read_ahead: ReadAhead::new(READ_RANGE, read_ahead, READ_BUFFERS),
        })
    }

    /// Read big blobs in ranges of `range` bytes, `ahead` fetched ahead, with
    /// `buffers` range buffers in all (tests use small ranges).
    #[cfg(test)]
    fn with_read_ahead(mut self, range: u64, ahead: usize, buffers: usize) -> S3Storage {
        self.read_ahead = ReadAhead::new(range, ahead, buffers);
        self
    }

    /// S3 requests sent so far.
    pub fn request_counts(&self) -> RequestCountsSnapshot {
        self.counts.snapshot()
    }

    /// Check that the bucket answers (one LIST of at most a page), so a
    /// misconfiguration shows at start-up rather than at the first push.
    pub async fn check(&self) -> Result<()> {
        self.store
            .list_with_delimiter(Some(&self.path(UPLOADS)))
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    fn path(&self, rel: &str) -> Path {
        Path::from(format!("{}{rel}", self.prefix))
    }

    fn rel_of<'a>(&self, location: &'a Path) -> &'a str {
        let full: &str = location.as_ref();
        full.strip_prefix(&self.prefix).unwrap_or(full)
    }

    // --- small object helpers ---

    async fn get_opt(&self, rel: &str) -> Result<Option<GetResult>> {
        match self.store.get(&self.path(rel)).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// An object's bytes and ETag.
    async fn get_bytes(&self, rel: &str) -> Result<Option<(Bytes, Option<String>)>> {
        let Some(r) = self.get_opt(rel).await? else {
            return Ok(None);
        };
        let e_tag = r.meta.e_tag.clone();
        match r.bytes().await {
            Ok(b) => Ok(Some((b, e_tag))),
            // Deleted between the response head and its body.
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn head_opt(&self, rel: &str) -> Result<Option<GetResult>> {
        let options = GetOptions::new().with_head(true);
        match self.store.get_opts(&self.path(rel), options).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn exists(&self, rel: &str) -> Result<bool> {
        Ok(self.head_opt(rel).await?.is_some())
    }

    async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        self.store
            .put(&self.path(rel), PutPayload::from(bytes))
            .await
            .map_err(s3_error)?;
        Ok(())
    }

    /// Delete, treating "already gone" as done.
    async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_error(e)),
        }
    }

    async fn list(&self, rel_prefix: &str) -> Result<Vec<Stored>> {
        let prefix = self.path(rel_prefix);
        let objects: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(s3_error)?;
        Ok(objects
            .into_iter()
            .map(|m| Stored {
                key: self.rel_of(&m.location).to_string(),
                size: m.size,
                modified: SystemTime::from(m.last_modified),
            })
            .collect())
    }

    // --- blobs ---

    fn cached_pointer(&self, d: &Digest) -> Option<(String, u64)> {
        let cache = self.pointers.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(d).cloned()
    }

    fn cache_pointer(&self, d: &Digest, key: &str, size: u64) {
        let mut cache = self.pointers.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= POINTER_CACHE_MAX {
            cache.clear();
        }
        cache.insert(d.clone(), (key.to_string(), size));
    }

    fn forget_pointer(&self, d: &Digest) {
        let mut cache = self.pointers.lock().unwrap_or_else(|e| e.into_inner());
        cache.remove(d);
    }

    /// The pointer in a blob object's metadata: (data key, size).
    fn pointer_of(attributes: &Attributes) -> Result<Option<(String, u64)>> {
        let Some(key) = attributes.get(&Attribute::Metadata(META_DATA_KEY.into())) else {
            return Ok(None);
        };
        let size = attributes
            .get(&Attribute::Metadata(META_SIZE.into()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| StorageError::Corrupt(format!("blob pointer to {key:?} has no size")))?;
        if !key.starts_with(DATA) {
            return Err(StorageError::Corrupt(format!(
                "blob pointer to {key:?} outside data/"
            )));
        }
        Ok(Some((key.to_string(), size)))
    }

    /// Where a blob's bytes are and how many there are (one HEAD).
    async fn locate(&self, d: &Digest) -> Result<Option<(String, u64)>> {
        let Some(head) = self.head_opt(&LAYOUT.blob(d)).await? else {
            self.forget_pointer(d);
            return Ok(None);
        };
        match Self::pointer_of(&head.attributes)? {
            Some((key, size)) => {
                self.cache_pointer(d, &key, size);
                Ok(Some((key, size)))
            }
            None => Ok(Some((LAYOUT.blob(d), head.meta.size))),
        }
    }

    fn stream_of(result: GetResult) -> ByteStream {
        Box::pin(result.into_stream().map_err(io::Error::other))
    }

    /// Bytes `[start, end]` of the object at `rel` (which has at least `end + 1`
    /// bytes), in parallel ranges when that is worth it; `None` if it is gone.
    async fn read_span(&self, rel: &str, start: u64, end: u64) -> Result<Option<ByteStream>> {
        if !self.read_ahead.worth_it(start, end + 1) {
            return Ok(self.get_range(rel, start, end).await?.map(Self::stream_of));
        }
        let store: Arc<dyn ObjectStore> = self.store.clone();
        match self
            .read_ahead
            .read(store, self.path(rel), start, end + 1)
            .await
        {
            Ok(stream) => Ok(Some(stream)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// All of a data object of `size` bytes; `None` if it is gone.
    async fn read_whole(&self, rel: &str, size: u64) -> Result<Option<ByteStream>> {
        if self.read_ahead.worth_it(0, size) {
            return self.read_span(rel, 0, size - 1).await;
        }
        Ok(self.get_opt(rel).await?.map(Self::stream_of))
    }

    async fn get_range(&self, rel: &str, start: u64, end: u64) -> Result<Option<GetResult>> {
        let options = GetOptions::new().with_range(Some(GetRange::Bounded(start..end + 1)));
        match self.store.get_opts(&self.path(rel), options).await {
            Ok(r) => Ok(Some(r)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3_error(e)),
        }
    }

    // --- upload sessions ---

    async fn load_session(&self, repository: &str, id: &str) -> Result<(Session, Option<String>)> {
        if !is_upload_id(id) {
            return Err(StorageError::UploadUnknown);
        }
        let Some((raw, e_tag)) = self.get_bytes(&LAYOUT.upload_state(id)).await? else {
            return Err(StorageError::UploadUnknown);
        };
        let session: Session = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("upload {id} state: {e}")))?;
        if session.repository != repository {
            return Err(StorageError::UploadUnknown);
        }
        Ok((session, e_tag))
    }

    /// Lock a session in this process and read its state. The lock is keyed
    /// by id and never dropped while anyone holds or waits for it, so a
    /// request naming another repository's session only waits its turn to
    /// be told the session is unknown; it changes nothing. (Reading before
    /// locking, as the filesystem does, would cost every append one more
    /// GET here.)
    async fn lock_session(
        &self,
        repository: &str,
        id: &str,
    ) -> Result<(UploadGuard, Session, Option<String>)> {
        if !is_upload_id(id) {
            return Err(StorageError::UploadUnknown);
        }
        let guard = self.upload_locks.lock(id).await;
        let (session, e_tag) = self.load_session(repository, id).await?;
        Ok((guard, session, e_tag))
    }

    /// Write a session's state if nobody else did since we read `e_tag`.
    async fn save_session(
        &self,
        id: &str,
        session: &Session,
        e_tag: &mut Option<String>,
    ) -> Result<()> {
        let mode = match e_tag.clone() {
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            None => PutMode::Overwrite,
        };
        let result = self
            .store
            .put_opts(
                &self.path(&LAYOUT.upload_state(id)),
                PutPayload::from(json(session)?),
                PutOptions::from(mode),
            )
            .await;
        match result {
            Ok(r) => {
                *e_tag = r.e_tag;
                Ok(())
            }
            Err(object_store::Error::Precondition { .. }) => {
                // Another replica moved the session on: report where it is now.
                let (now, _) = self.load_session(&session.repository, id).await?;
                Err(StorageError::RangeMismatch { offset: now.offset })
            }
            Err(e) => Err(s3_error(e)),
        }
    }

    /// Remove a session's objects (state last, so a failure leaves it findable).
    async fn drop_session(&self, id: &str, session: &Session) -> Result<()> {
        if let Some(mp) = &session.multipart {
            // Best effort: a completed upload is already gone.
            let _ = self
                .store
                .abort_multipart(&self.path(&LAYOUT.upload_data(id)), mp)
                .await;
        }
        if let Some(tail) = &session.tail_key {
            self.delete(tail).await?;
        }
        self.delete(&LAYOUT.upload_state(id)).await
    }
}

/// Streams bytes into an upload session: hashes them, cuts parts and sends
/// them while the next one fills, and keeps what does not fill a part.
struct Writer<'a> {
    s: &'a S3Storage,
    id: String,
    session: Session,
    e_tag: Option<String>,
    hasher: Sha256,
    buf: BytesMut,
    /// The session as last saved.
    opened: Session,
    inflight: FuturesOrdered<BoxFuture<'static, Result<String>>>,
    next_part: usize,
}

impl<'a> Writer<'a> {
    async fn open(
        s: &'a S3Storage,
        id: &str,
        session: Session,
        e_tag: Option<String>,
    ) -> Result<Writer<'a>> {
        let hasher = restore_sha256_state(&session.sha256)
            .ok_or_else(|| StorageError::Corrupt(format!("upload {id}: bad hash state")))?;
        let mut buf = BytesMut::new();
        if session.tail > 0 {
            let key = session.tail_key.clone().unwrap_or_default();
            let (tail, _) = s.get_bytes(&key).await?.ok_or_else(|| {
                StorageError::Corrupt(format!("upload {id}: tail {key:?} is missing"))
            })?;
            if tail.len() as u64 != session.tail {
                return Err(StorageError::Corrupt(format!(
                    "upload {id}: tail holds {} bytes, {} recorded",
                    tail.len(),
                    session.tail
                )));
            }
            buf.extend_from_slice(&tail);
        }
        Ok(Writer {
            s,
            id: id.to_string(),
            next_part: session.parts.len(),
            opened: session.clone(),
            session,
            e_tag,
            hasher,
            buf,
            inflight: FuturesOrdered::new(),
        })
    }

    fn data_path(&self) -> Path {
        self.s.path(&LAYOUT.upload_data(&self.id))
    }

    /// Take in a chunk; send every full part.
    async fn push(&mut self, chunk: Bytes) -> Result<()> {
        self.hasher.update(&chunk);
        self.session.offset += chunk.len() as u64;
        self.buf.extend_from_slice(&chunk);
        while self.buf.len() >= PART_SIZE {
            let part = self.buf.split_to(PART_SIZE).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        let upload_id = match &self.session.multipart {
            Some(id) => id.clone(),
            None => {
                let path = self.data_path();
                let id = self
                    .s
                    .store
                    .create_multipart(&path)
                    .await
                    .map_err(s3_error)?;
                // Record the upload at once, so it can be aborted (purge,
                // cancel) even if this request dies: without
                // ListMultipartUploads nothing else would find it.
                let mut committed = self.opened.clone();
                committed.multipart = Some(id.clone());
                self.s
                    .save_session(&self.id, &committed, &mut self.e_tag)
                    .await?;
                self.opened = committed;
                self.session.multipart = Some(id.clone());
                id
            }
        };
        let store = self.s.store.clone();
        let path = self.data_path();
        let idx = self.next_part;
        self.next_part += 1;
        self.inflight.push_back(Box::pin(async move {
            let part = store
                .put_part(&path, &upload_id, idx, PutPayload::from(part))
                .await
                .map_err(s3_error)?;
            Ok(part.content_id)
        }));
        while self.inflight.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<()> {
        if let Some(done) = self.inflight.next().await {
            self.session.parts.push(done?);
        }
        Ok(())
    }

    async fn settle_all(&mut self) -> Result<()> {
        while !self.inflight.is_empty() {
            self.settle_one().await?;
        }
        Ok(())
    }

    /// End of the bytes for now (an append, or a body that broke off): send
    /// the parts in flight, keep what does not fill a part as the new tail
    /// object, then save the state. The previous tail is dropped only after
    /// the state stops naming it.
    async fn persist(&mut self) -> Result<()> {
        self.settle_all().await?;
        let old_tail = self.session.tail_key.clone();
        if self.buf.is_empty() {
            self.session.tail = 0;
            self.session.tail_key = None;
        } else if self.session.offset != self.opened.offset || old_tail.is_none() {
            // Named by the offset it ends at: a tail written by a request that
            // failed before saving the state never overwrites the one the
            // saved state names (that one ends at a smaller offset).
            let key = LAYOUT.upload_tail(&self.id, self.session.offset);
            // Created, never overwritten: two writers racing on one session
            // (two replicas) must not swap the bytes under the state the
            // winner saves. The loser hears where the session stands.
            match self
                .s
                .store
                .put_opts(
                    &self.s.path(&key),
                    PutPayload::from(Bytes::copy_from_slice(&self.buf)),
                    PutOptions::from(PutMode::Create),
                )
                .await
            {
                Ok(_) => {}
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => {
                    let (now, _) = self
                        .s
                        .load_session(&self.session.repository, &self.id)
                        .await?;
                    return Err(StorageError::RangeMismatch { offset: now.offset });
                }
                Err(e) => return Err(s3_error(e)),
            }
            self.session.tail = self.buf.len() as u64;
            self.session.tail_key = Some(key);
        }
        self.session.sha256 = save_sha256_state(&self.hasher);
        self.s
            .save_session(&self.id, &self.session, &mut self.e_tag)
            .await?;
        self.opened = self.session.clone();
        if let Some(old) = old_tail {
            if self.session.tail_key.as_deref() != Some(old.as_str()) {
                // Best effort: purge and cancel find leftovers by prefix.
                let _ = self.s.delete(&old).await;
            }
        }
        Ok(())
    }
}

/// Feed a request body into a writer. Returns the body's own error, if it
/// broke off, separately from storage failures.
async fn feed(w: &mut Writer<'_>, mut data: ByteStream) -> Result<Option<io::Error>> {
    while let Some(item) = data.next().await {
        match item {
            Ok(chunk) if chunk.is_empty() => {}
            Ok(chunk) => w.push(chunk).await?,
            Err(e) => return Ok(Some(e)),
        }
    }
    Ok(None)
}

impl S3Storage {
    /// Finish an upload whose bytes are all in `w`: verify, store, link.
    async fn finish_upload(
        &self,
        repository: &str,
        mut w: Writer<'_>,
        expected: &Digest,
    ) -> Result<u64> {
        let id = w.id.clone();
        let size = w.session.offset;
        let Some(upload_id) = w.session.multipart.clone() else {
            // Small: all of it is in memory. One PUT to the content address.
            let bytes = w.buf.split().freeze();
            // Hashed again from the very bytes stored (at most a part, so
            // cheap): the saved running hash may come from another writer's
            // request, and these bytes are what readers will get.
            let actual = Digest::of(expected.algorithm(), &bytes);
            if &actual != expected {
                self.drop_session(&id, &w.opened).await?;
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
            let _no_gc = self.gc_lock.read().await;
            // Rewritten even if present: a fresh modification time keeps a
            // concurrent garbage collection from taking a blob just re-pushed.
            self.put(&LAYOUT.blob(expected), bytes).await?;
            self.put(&LAYOUT.layer_link(repository, expected), Bytes::new())
                .await?;
            drop(_no_gc);
            self.drop_session(&id, &w.opened).await?;
            return Ok(size);
        };
        // Big: the SHA-256 is known before the last part is sent, so a wrong
        // digest costs no completion.
        if expected.algorithm() == Algorithm::Sha256 {
            let actual = Hasher::Sha256(w.hasher.clone()).finish();
            if &actual != expected {
                w.settle_all().await?;
                self.drop_session(&id, &w.opened).await?;
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        if !w.buf.is_empty() {
            let last = w.buf.split().freeze();
            w.send_part(last).await?;
        }
        w.settle_all().await?;
        let data = self.path(&LAYOUT.upload_data(&id));
        let parts = w
            .session
            .parts
            .iter()
            .map(|etag| object_store::multipart::PartId {
                content_id: etag.clone(),
            })
            .collect();
        self.store
            .complete_multipart(&data, &upload_id, parts)
            .await
            .map_err(s3_error)?;
        if expected.algorithm() == Algorithm::Sha512 {
            // The running hash is SHA-256 only; sha512 uploads are rare enough to re-read.
            let mut h = Hasher::new(Algorithm::Sha512);
            let mut stream = Self::stream_of(self.store.get(&data).await.map_err(s3_error)?);
            while let Some(chunk) = stream.next().await {
                h.update(&chunk?);
            }
            let actual = h.finish();
            if &actual != expected {
                self.delete(&LAYOUT.upload_data(&id)).await?;
                let mut done = w.opened.clone();
                done.multipart = None;
                self.drop_session(&id, &done).await?;
                return Err(StorageError::DigestMismatch {
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let mut attributes = Attributes::new();
        attributes.insert(
            Attribute::Metadata(META_DATA_KEY.into()),
            AttributeValue::from(LAYOUT.upload_data(&id)),
        );
        attributes.insert(
            Attribute::Metadata(META_SIZE.into()),
            AttributeValue::from(size.to_string()),
        );
        let options = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let options = PutOptions {
            mode: PutMode::Create,
            ..options
        };
        let _no_gc = self.gc_lock.read().await;
        // Created only if absent: an existing blob is never repointed (its
        // bytes are already stored), so no upload can replace what a digest
        // serves; our copy of the data is dropped instead.
        match self
            .store
            .put_opts(
                &self.path(&LAYOUT.blob(expected)),
                PutPayload::new(),
                options,
            )
            .await
        {
            Ok(_) => self.cache_pointer(expected, &LAYOUT.upload_data(&id), size),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                self.delete(&LAYOUT.upload_data(&id)).await?;
            }
            Err(e) => return Err(s3_error(e)),
        }
        self.put(&LAYOUT.layer_link(repository, expected), Bytes::new())
            .await?;
        drop(_no_gc);
        let mut done = w.opened.clone();
        done.multipart = None; // completed: nothing to abort
        self.drop_session(&id, &done).await?;
        Ok(size)
    }

    /// The tag objects of a repository: (name in the key, listing).
    async fn tag_objects(&self, repository: &str) -> Result<Vec<(String, Stored)>> {
        let dir = format!("{}/", LAYOUT.tags(repository));
        let mut out = Vec::new();
        for item in self.list(&dir).await? {
            if let Some(tag) = item.key.strip_prefix(&dir) {
                if !tag.contains('/') {
                    out.push((tag.to_string(), item));
                }
            }
        }
        Ok(out)
    }

    /// Change the referrers index of `subject` with `edit`, conditionally on
    /// the version read; retried when another writer got there first.
    async fn edit_referrers(
        &self,
        repository: &str,
        subject: &Digest,
        edit: impl Fn(&mut Vec<Descriptor>),
    ) -> Result<()> {
        let rel = LAYOUT.referrers(repository, subject);
        for _ in 0..TAG_RETRIES {
            let (mut list, mode) = match self.get_bytes(&rel).await? {
                Some((raw, e_tag)) => {
                    let list: Vec<Descriptor> = serde_json::from_slice(&raw)
                        .map_err(|e| StorageError::Corrupt(format!("{rel}: {e}")))?;
                    let mode = match e_tag {
                        Some(e_tag) => PutMode::Update(UpdateVersion {
                            e_tag: Some(e_tag),
                            version: None,
                        }),
                        None => PutMode::Overwrite,
                    };
                    (list, mode)
                }
                None => (Vec::new(), PutMode::Create),
            };
            edit(&mut list);
            match self
                .store
                .put_opts(
                    &self.path(&rel),
                    PutPayload::from(json(&list)?),
                    PutOptions::from(mode),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(object_store::Error::Precondition { .. })
                | Err(object_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(s3_error(e)),
            }
        }
        Err(StorageError::Unavailable(format!(
            "the referrers of {subject} kept changing; try again"
        )))
    }

    /// Replace a tag object with a tombstone if it still holds `e_tag`.
    /// False when it changed meanwhile (someone re-tagged: their value stays).
    async fn tombstone_tag(&self, rel: &str, e_tag: Option<String>) -> Result<bool> {
        let mode = match e_tag {
            Some(e_tag) => PutMode::Update(UpdateVersion {
                e_tag: Some(e_tag),
                version: None,
            }),
            None => PutMode::Overwrite,
        };
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::new(), PutOptions::from(mode))
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(s3_error(e)),
        }
    }

    /// S3 has no empty folders: once its last link is deleted a repository
    /// would vanish from the catalog, where on disk its folder stays. A
    /// marker (not a digest, so never taken for a link) keeps it listed.
    async fn keep_repository(&self, repository: &str, kind: LinkKind) -> Result<()> {
        self.put(&LAYOUT.kept_marker(repository, kind), Bytes::new())
            .await
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        Ok(self.locate(digest).await?.map(|(_, size)| size))
    }

    async fn blob_read(&self, digest: &Digest, range: Option<ByteRange>) -> Result<BlobRead> {
        let Some(range) = range else {
            // Whole blob: one GET, two for a big blob this replica has not seen yet.
            if let Some((key, size)) = self.cached_pointer(digest) {
                if let Some(stream) = self.read_whole(&key, size).await? {
                    return Ok(BlobRead {
                        size,
                        range: None,
                        stream,
                    });
                }
                self.forget_pointer(digest);
            }
            let r = self
                .get_opt(&LAYOUT.blob(digest))
                .await?
                .ok_or(StorageError::BlobUnknown)?;
            let Some((key, size)) = Self::pointer_of(&r.attributes)? else {
                return Ok(BlobRead {
                    size: r.meta.size,
                    range: None,
                    stream: Self::stream_of(r),
                });
            };
            drop(r);
            self.cache_pointer(digest, &key, size);
            let stream = self
                .read_whole(&key, size)
                .await?
                .ok_or(StorageError::BlobUnknown)?;
            return Ok(BlobRead {
                size,
                range: None,
                stream,
            });
        };
        for _ in 0..2 {
            let (key, size) = match self.cached_pointer(digest) {
                Some(found) => found,
                None => self
                    .locate(digest)
                    .await?
                    .ok_or(StorageError::BlobUnknown)?,
            };
            let (start, end) = range
                .resolve(size)
                .ok_or(StorageError::RangeNotSatisfiable { size })?;
            match self.read_span(&key, start, end).await? {
                Some(stream) => {
                    return Ok(BlobRead {
                        size,
                        range: Some((start, end)),
                        stream,
                    })
                }
                // A cached pointer to data collected since: look again.
                None => self.forget_pointer(digest),
            }
        }
        Err(StorageError::BlobUnknown)
    }

    async fn blob_bytes(&self, digest: &Digest) -> Result<Option<Bytes>> {
        let Some(r) = self.get_opt(&LAYOUT.blob(digest)).await? else {
            return Ok(None);
        };
        let key = match Self::pointer_of(&r.attributes)? {
            Some((key, _)) => key,
            None => return Ok(Some(r.bytes().await.map_err(s3_error)?)),
        };
        Ok(self.get_bytes(&key).await?.map(|(b, _)| b))
    }

    async fn blob_redirect_url(&self, digest: &Digest) -> Result<Option<String>> {
        if !self.redirect_blobs {
            return Ok(None);
        }
        let key = match self.cached_pointer(digest) {
            Some((key, _)) => key,
            None => match self.locate(digest).await? {
                Some((key, _)) => key,
                None => return Ok(None),
            },
        };
        let url = self
            .store
            .signed_url(http_get(), &self.path(&key), REDIRECT_TTL)
            .await
            .map_err(s3_error)?;
        Ok(Some(url.to_string()))
    }

    async fn blob_linked(&self, repository: &str, digest: &Digest) -> Result<bool> {
        // The link alone: collection removes a blob only after its last link,
        // so a link implies the blob (one HEAD instead of two).
        self.exists(&LAYOUT.layer_link(repository, digest)).await
    }

    async fn link_blob(&self, repository: &str, digest: &Digest) -> Result<()> {
        let _no_gc = self.gc_lock.read().await;
        if self.locate(digest).await?.is_none() {
            return Err(StorageError::BlobUnknown);
        }
        self.put(&LAYOUT.layer_link(repository, digest), Bytes::new())
            .await
    }

    async fn unlink_blob(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let rel = LAYOUT.layer_link(repository, digest);
        if !self.exists(&rel).await? {
            return Ok(false);
        }
        self.delete(&rel).await?;
        self.keep_repository(repository, LinkKind::Layer).await?;
        Ok(true)
    }

    async fn upload_create(&self, repository: &str) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let session = Session {
            repository: repository.to_string(),
            created_unix: now_unix(),
            offset: 0,
            sha256: save_sha256_state(&Sha256::new()),
            multipart: None,
            parts: Vec::new(),
            tail: 0,
            tail_key: None,
        };
        self.put(&LAYOUT.upload_state(&id), json(&session)?).await?;
        Ok(UploadStatus {
            id,
            repository: repository.to_string(),
            offset: 0,
        })
    }

    async fn upload_status(&self, repository: &str, id: &str) -> Result<UploadStatus> {
        let (session, _) = self.load_session(repository, id).await?;
        Ok(UploadStatus {
            id: id.to_string(),
            repository: session.repository,
            offset: session.offset,
        })
    }

    async fn upload_append(
        &self,
        repository: &str,
        id: &str,
        start: Option<u64>,
        data: ByteStream,
    ) -> Result<UploadStatus> {
        let (_guard, session, e_tag) = self.lock_session(repository, id).await?;
        if let Some(start) = start {
            if start != session.offset {
                return Err(StorageError::RangeMismatch {
                    offset: session.offset,
                });
            }
        }
        let mut w = Writer::open(self, id, session, e_tag).await?;
        let body_error = feed(&mut w, data).await?;
        // Also when the body broke off: what arrived is kept for a resume.
        w.persist().await?;
        if let Some(e) = body_error {
            return Err(StorageError::BodyInterrupted(e));
        }
        Ok(UploadStatus {
            id: id.to_string(),
            repository: w.session.repository.clone(),
            offset: w.session.offset,
        })
    }

    async fn upload_complete(
        &self,
        repository: &str,
        id: &str,
        digest: &Digest,
        data: Option<ByteStream>,
    ) -> Result<u64> {
        let (_guard, session, e_tag) = self.lock_session(repository, id).await?;
        let mut w = Writer::open(self, id, session, e_tag).await?;
        if let Some(data) = data {
            if let Some(e) = feed(&mut w, data).await? {
                w.persist().await?;
                return Err(StorageError::BodyInterrupted(e));
            }
        }
        self.finish_upload(repository, w, digest).await
    }

    async fn upload_cancel(&self, repository: &str, id: &str) -> Result<()> {
        let (_guard, session, _) = self.lock_session(repository, id).await?;
        self.drop_session(id, &session).await?;
        // Tails left by failed requests.
        for item in self.list(&format!("{}/", LAYOUT.upload(id))).await? {
            self.delete(&item.key).await?;
        }
        Ok(())
    }

    async fn purge_uploads(&self, max_age: Duration) -> Result<usize> {
        let cutoff = SystemTime::now().checked_sub(max_age).unwrap_or(UNIX_EPOCH);
        // Sessions are judged by their last write: a long chunked upload
        // that is still moving is not abandoned.
        let mut by_id: HashMap<String, Vec<Stored>> = HashMap::new();
        for item in self.list(UPLOADS).await? {
            let id = LAYOUT.upload_of(&item.key).to_string();
            by_id.entry(id).or_default().push(item);
        }
        let mut purged = 0;
        for (id, items) in by_id {
            let state_key = LAYOUT.upload_state(&id);
            let state = items.iter().find(|i| i.key == state_key);
            let newest = items.iter().map(|i| i.modified).max().unwrap_or(UNIX_EPOCH);
            let stale = match state {
                Some(state) => state.modified < cutoff,
                None => newest < cutoff,
            };
            if !stale {
                continue;
            }
            if state.is_some() {
                if let Some((raw, _)) = self.get_bytes(&LAYOUT.upload_state(&id)).await? {
                    if let Ok(session) = serde_json::from_slice::<Session>(&raw) {
                        if let Some(mp) = &session.multipart {
                            let _ = self
                                .store
                                .abort_multipart(&self.path(&LAYOUT.upload_data(&id)), mp)
                                .await;
                        }
                    }
                }
                purged += 1;
            }
            for item in items.iter().filter(|i| i.key != state_key) {
                self.delete(&item.key).await?;
            }
            self.delete(&LAYOUT.upload_state(&id)).await?;
        }
        Ok(purged)
    }

    async fn manifest_put(
        &self,
        repository: &str,
        digest: &Digest,
        bytes: Bytes,
        meta: &ManifestMeta,
        tag: Option<&str>,
    ) -> Result<()> {
        let _no_gc = self.gc_lock.read().await;
        // What the manifest needs is checked under the same exclusion as the
        // link that protects it, so no collection of this process runs in
        // between (one HEAD per reference, all at once).
        let checks = meta.references.iter().flatten().map(|needed| async move {
            let linked = self.exists(&LAYOUT.layer_link(repository, needed)).await?
                || self
                    .exists(&LAYOUT.manifest_link(repository, needed))
                    .await?;
            Ok::<_, StorageError>((linked, needed))
        });
        for (linked, needed) in futures::future::try_join_all(checks).await? {
            if !linked {
                return Err(StorageError::ReferenceUnknown(needed.clone()));
            }
        }
        // Order matters: bytes, the link that makes them visible, then the
        // referrer entry and the tag that point at it.
        let size = bytes.len() as u64;
        self.put(&LAYOUT.blob(digest), bytes).await?;
        self.put(&LAYOUT.manifest_link(repository, digest), json(meta)?)
            .await?;
        if let Some(subject) = &meta.subject {
            let descriptor = Descriptor {
                media_type: meta.media_type.clone(),
                digest: digest.clone(),
                size,
                artifact_type: meta.artifact_type.clone(),
                annotations: meta.annotations.clone(),
            };
            self.edit_referrers(repository, subject, |list| {
                list.retain(|d| d.digest != descriptor.digest);
                list.push(descriptor.clone());
            })
            .await?;
        }
        if let Some(tag) = tag {
            // An S3 PUT is atomic: racing tag writes end with one whole value.
            self.put(&LAYOUT.tag(repository, tag), tag_content(tag, digest))
                .await?;
        }
        Ok(())
    }

    async fn manifest_meta(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<ManifestMeta>> {
        let rel = LAYOUT.manifest_link(repository, digest);
        let Some((raw, _)) = self.get_bytes(&rel).await? else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(&raw)
            .map_err(|e| StorageError::Corrupt(format!("{rel}: {e}")))?;
        Ok(Some(meta))
    }

    /// Link and bytes fetched at once: two GETs, one round trip of latency.
    async fn manifest_get(
        &self,
        repository: &str,
        digest: &Digest,
    ) -> Result<Option<(ManifestMeta, Bytes)>> {
        let (meta, bytes) = tokio::try_join!(
            self.manifest_meta(repository, digest),
            self.blob_bytes(digest)
        )?;
        Ok(meta.zip(bytes))
    }

    async fn manifest_delete(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let Some(meta) = self.manifest_meta(repository, digest).await? else {
            return Ok(false);
        };
        // Tags first, so no tag is left pointing at a manifest that is gone;
        // each only if it still points here when it is removed.
        for (_, item) in self.tag_objects(repository).await? {
            if item.size == 0 {
                continue;
            }
            if let Some((raw, e_tag)) = self.get_bytes(&item.key).await? {
                if matches!(parse_tag(&raw), Some((Ok(d), _)) if &d == digest) {
                    self.tombstone_tag(&item.key, e_tag).await?;
                }
            }
        }
        if let Some(subject) = &meta.subject {
            self.edit_referrers(repository, subject, |list| {
                list.retain(|d| &d.digest != digest)
            })
            .await?;
        }
        self.delete(&LAYOUT.manifest_link(repository, digest))
            .await?;
        self.keep_repository(repository, LinkKind::Manifest).await?;
        Ok(true)
    }

    async fn tag_resolve(&self, repository: &str, tag: &str) -> Result<Option<Digest>> {
        let rel = LAYOUT.tag(repository, tag);
        let Some((raw, _)) = self.get_bytes(&rel).await? else {
            return Ok(None);
        };
        match parse_tag(&raw) {
            None => Ok(None), // tombstone
            Some((Ok(digest), _)) => Ok(Some(digest)),
            Some((Err(()), _)) => Err(StorageError::Corrupt(format!("{rel}: not a digest"))),
        }
    }

    async fn tag_delete(&self, repository: &str, tag: &str) -> Result<bool> {
        let rel = LAYOUT.tag(repository, tag);
        for _ in 0..TAG_RETRIES {
            let Some((raw, e_tag)) = self.get_bytes(&rel).await? else {
                return Ok(false);
            };
            if raw.is_empty() {
                return Ok(false);
            }
            if self.tombstone_tag(&rel, e_tag).await? {
                return Ok(true);
            }
            // Re-tagged meanwhile: delete what it holds now.
        }
        Err(StorageError::Unavailable(format!(
            "tag {repository}:{tag} kept changing while being deleted; try again"
        )))
    }

    async fn tags(&self, repository: &str) -> Result<Option<Vec<String>>> {
        let objects = self.tag_objects(repository).await?;
        if objects.is_empty() {
            let repo = self.path(&format!("{}/", LAYOUT.repository(repository)));
            let listing = self
                .store
                .list_with_delimiter(Some(&repo))
                .await
                .map_err(s3_error)?;
            let exists = listing.common_prefixes.iter().any(|p| {
                p.filename()
                    .is_some_and(|name| LinkKind::ALL.iter().any(|k| name == k.folder()))
            });
            return Ok(exists.then(Vec::new));
        }
        let mut tags = Vec::new();
        for (name, item) in objects {
            if item.size == 0 {
                continue;
            }
            if !name.starts_with('=') {
                tags.push(name);
                continue;
            }
            // A long tag under a hashed name: the tag is inside.
            if let Some((raw, _)) = self.get_bytes(&item.key).await? {
                if let Some((_, Some(tag))) = parse_tag(&raw) {
                    tags.push(tag);
                }
            }
        }
        tags.sort();
        Ok(Some(tags))
    }

    async fn referrers(&self, repository: &str, subject: &Digest) -> Result<Vec<Descriptor>> {
        let rel = LAYOUT.referrers(repository, subject);
        let mut out: Vec<Descriptor> = match self.get_bytes(&rel).await? {
            Some((raw, _)) => serde_json::from_slice(&raw)
                .map_err(|e| StorageError::Corrupt(format!("{rel}: {e}")))?,
            None => Vec::new(),
        };
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    async fn repositories(&self) -> Result<Vec<String>> {
        // Walk the tree a level at a time: a LIST per repository path instead
        // of listing every link of every repository.
        let mut out = BTreeSet::new();
        let mut stack = vec![String::new()];
        while let Some(repo) = stack.pop() {
            let dir = if repo.is_empty() {
                REPOSITORIES.to_string()
            } else {
                format!("{}/", LAYOUT.repository(&repo))
            };
            let listing = self
                .store
                .list_with_delimiter(Some(&self.path(&dir)))
                .await
                .map_err(s3_error)?;
            for p in &listing.common_prefixes {
                let Some(name) = p.filename() else { continue };
                if name.starts_with('_') {
                    if !repo.is_empty() && LinkKind::ALL.iter().any(|k| name == k.folder()) {
                        out.insert(repo.clone());
                    }
                } else if repo.is_empty() {
                    stack.push(name.to_string());
                } else {
                    stack.push(format!("{repo}/{name}"));
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    async fn collect_garbage(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        self.collect_garbage_pausing(grace, dry_run, std::future::ready(()))
            .await
    }
}

impl S3Storage {
    /// Collect garbage; `after_mark` runs between choosing the candidates
    /// and looking at the links once more (see [`gc::collect`]).
    async fn collect_garbage_pausing(
        &self,
        grace: Duration,
        dry_run: bool,
        after_mark: impl std::future::Future<Output = ()>,
    ) -> Result<GcReport> {
        let _exclusive = self.gc_lock.write().await;
        gc::collect(self, grace, dry_run, after_mark).await
    }
}

#[async_trait]
impl GcStore for S3Storage {
    fn layout(&self) -> Layout {
        LAYOUT
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Stored>> {
        S3Storage::list(self, prefix).await
    }

    async fn read(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.get_bytes(key).await?.map(|(bytes, _)| bytes))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        S3Storage::delete(self, key).await
    }

    /// Empty objects are pointers (or the empty blob): read where they point.
    async fn blob_bytes_of(&self, blob: &Stored) -> Result<BlobBytes> {
        if blob.size != 0 {
            return Ok(BlobBytes::Inline);
        }
        let Some(head) = self.head_opt(&blob.key).await? else {
            return Ok(BlobBytes::Gone);
        };
        Ok(match Self::pointer_of(&head.attributes)? {
            Some((key, size)) => BlobBytes::At { key, size },
            None => BlobBytes::Inline,
        })
    }

    fn forget_blob(&self, digest: &Digest) {
        self.forget_pointer(digest);
    }
}

// --- big reads ---

/// How big reads are fetched: in ranges of `range` bytes, up to `ahead` of
/// them fetched in parallel ahead of the one being sent, each held in one of
/// the server-wide `buffers`.
///
/// One GET stream from an S3 server is often slower than the network (AWS
/// serves roughly 100 MB/s per connection; s3s-fs is bound by one core per
/// request), so a big blob is read as ranged GETs in parallel and sent in
/// order. The range being sent streams straight from its response; the ones
/// after it are read into memory, at most `ahead` per read and `buffers`
/// (times `range` bytes) for the whole server, taken without waiting: when
/// none is free a read simply fetches less ahead, and with none at all it
/// streams everything left in one GET, as a small read always does. So
/// memory stays bounded however many pulls run, and no pull waits for
/// another one's client.
#[derive(Clone, Debug)]
struct ReadAhead {
    range: u64,
    ahead: usize,
    buffers: Arc<tokio::sync::Semaphore>,
}

/// A range being fetched into memory; aborted if the read is dropped.
struct Fetch {
    task: tokio::task::JoinHandle<object_store::Result<Bytes>>,
    len: u64,
    _buffer: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Current {
    /// Streaming straight from a GET response.
    Stream(futures::stream::BoxStream<'static, object_store::Result<Bytes>>),
    /// Sending a range fetched ahead (its buffer is released when done).
    Buffered {
        bytes: Bytes,
        _fetch: Fetch,
    },
    Idle,
}

struct RangedRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// First byte not requested yet.
    next: u64,
    /// One past the last byte to send.
    end: u64,
    current: Current,
    fetching: std::collections::VecDeque<Fetch>,
    how: ReadAhead,
    done: bool,
}

fn range_options(start: u64, end: u64) -> GetOptions {
    GetOptions::new().with_range(Some(GetRange::Bounded(start..end)))
}

impl ReadAhead {
    fn new(range: u64, ahead: usize, buffers: usize) -> ReadAhead {
        ReadAhead {
            range: range.max(1),
            ahead,
            buffers: Arc::new(tokio::sync::Semaphore::new(buffers)),
        }
    }

    /// Whether bytes `[start, end)` are worth reading in parallel ranges.
    fn worth_it(&self, start: u64, end: u64) -> bool {
        self.ahead > 0 && end.saturating_sub(start) > self.range
    }

    /// Bytes `[start, end)` of the object at `path`, which has at least `end`
    /// bytes. The first GET is sent before this returns, so a missing object
    /// or an unreachable server is an error here rather than mid-stream.
    async fn read(
        &self,
        store: Arc<dyn ObjectStore>,
        path: Path,
        start: u64,
        end: u64,
    ) -> object_store::Result<ByteStream> {
        let first_end = if self.worth_it(start, end) && self.buffers.available_permits() > 0 {
            start + self.range
        } else {
            end
        };
        let first = store
            .get_opts(&path, range_options(start, first_end))
            .await?;
        let mut read = RangedRead {
            store,
            path,
            next: first_end,
            end,
            current: Current::Stream(first.into_stream()),
            fetching: Default::default(),
            how: self.clone(),
            done: false,
        };
        read.fetch_ahead();
        Ok(Box::pin(futures::stream::unfold(read, |mut read| async {
            let item = read.next_chunk().await?;
            Some((item, read))
        })))
    }
}

impl RangedRead {
    /// Start fetching the next ranges, as far as free buffers allow.
    fn fetch_ahead(&mut self) {
        while self.fetching.len() < self.how.ahead && self.next < self.end {
            let Ok(buffer) = self.how.buffers.clone().try_acquire_owned() else {
                break;
            };
            let (start, end) = (self.next, (self.next + self.how.range).min(self.end));
            self.next = end;
            let (store, path) = (self.store.clone(), self.path.clone());
            let task = tokio::spawn(async move {
                store
                    .get_opts(&path, range_options(start, end))
                    .await?
                    .bytes()
                    .await
            });
            self.fetching.push_back(Fetch {
                task,
                len: end - start,
                _buffer: buffer,
            });
        }
    }

    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        let item = self.advance().await;
        if !matches!(item, Some(Ok(_))) {
            // Finished or failed: stop, and abort what is still being fetched.
            self.done = true;
            self.fetching.clear();
            self.current = Current::Idle;
        }
        item
    }

    async fn advance(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            self.fetch_ahead();
            match &mut self.current {
                Current::Stream(stream) => match stream.next().await {
                    Some(Ok(bytes)) => return Some(Ok(bytes)),
                    Some(Err(e)) => return Some(Err(io::Error::other(e))),
                    None => self.current = Current::Idle,
                },
                Current::Buffered { bytes, .. } if !bytes.is_empty() => {
                    let n = bytes.len().min(READ_FRAME);
                    return Some(Ok(bytes.split_to(n)));
                }
                Current::Buffered { .. } => self.current = Current::Idle,
                Current::Idle => {
                    if let Some(mut fetch) = self.fetching.pop_front() {
                        let bytes = match (&mut fetch.task).await {
                            Ok(Ok(bytes)) => bytes,
                            Ok(Err(e)) => return Some(Err(io::Error::other(e))),
                            Err(e) => return Some(Err(io::Error::other(e))),
                        };
                        if bytes.len() as u64 != fetch.len {
                            return Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "S3 sent {} bytes of a {}-byte range",
                                    bytes.len(),
                                    fetch.len
                                ),
                            )));
                        }
                        self.current = Current::Buffered {
                            bytes,
                            _fetch: fetch,
                        };
                        continue;
                    }
                    if self.next >= self.end {
                        return None;
                    }
                    // Nothing fetched ahead (no buffer was free): stream the
                    // next range, or all the rest if still none is free.
                    let end = if self.how.buffers.available_permits() > 0 {
                        (self.next + self.how.range).min(self.end)
                    } else {
                        self.end
                    };
                    let options = range_options(self.next, end);
                    match self.store.get_opts(&self.path, options).await {
                        Ok(r) => self.current = Current::Stream(r.into_stream()),
                        Err(e) => return Some(Err(io::Error::other(e))),
                    }
                    self.next = end;
                }
            }
        }
    }
}

/// The one definition of "running in CI" that every test crate shares.
#[cfg(test)]
#[path = "../../tests/common/ci.rs"]
mod test_ci;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3_test_server::S3TestServer;
    use crate::testsuite;

    /// s3s-fs, or None (a skip) outside CI when it is not installed.
    fn server() -> Option<S3TestServer> {
        match S3TestServer::start("brt") {
            Ok(Some(server)) => Some(server),
            Ok(None) => {
                let ci = test_ci::in_ci();
                assert!(
                    !ci,
                    "CI=true but s3s-fs is not installed (scripts/test.sh installs it)"
                );
                eprintln!("SKIP: s3s-fs not installed (cargo install s3s-fs --version 0.14.1 --features binary --locked)");
                None
            }
            Err(e) => panic!("cannot start s3s-fs: {e}"),
        }
    }

    fn storage(server: &S3TestServer, prefix: &str) -> S3Storage {
        S3Storage::new(&server.options(prefix)).expect("S3 storage")
    }

    async fn read_all(s: &S3Storage, d: &Digest) -> Vec<u8> {
        let read = s.blob_read(d, None).await.expect("read");
        let mut out = Vec::new();
        let mut stream = read.stream;
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        out
    }

    use crate::s3_test_server::pattern;

    /// A blob no repository links to when a collection marks, linked from another replica
    /// before the sweep, is kept: the links are listed once more right before deleting.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blob_linked_by_another_replica_during_a_collection_is_kept() {
        let Some(server) = server() else { return };
        let (one, two) = (storage(&server, "gcrace"), storage(&server, "gcrace"));
        let mut digests = Vec::new();
        for data in [b"relinked meanwhile".as_slice(), b"garbage".as_slice()] {
            let session = one.upload_create("a").await.expect("create");
            let d = Digest::sha256_of(data);
            one.upload_complete("a", &session.id, &d, Some(testsuite::stream_of(data)))
                .await
                .expect("push");
            assert!(one.unlink_blob("a", &d).await.expect("unlink"));
            digests.push(d);
        }
        let (kept, gone) = (digests[0].clone(), digests[1].clone());
        let relink = async {
            two.link_blob("b", &kept)
                .await
                .expect("link from replica two");
        };
        let report = one
            .collect_garbage_pausing(Duration::ZERO, false, relink)
            .await
            .expect("collect");
        assert_eq!(report.blobs_removed, 1, "{report:?}");
        assert!(two.blob_linked("b", &kept).await.expect("linked"));
        assert_eq!(read_all(&two, &kept).await, b"relinked meanwhile");
        assert!(one.blob_size(&gone).await.expect("size").is_none());
    }

    /// A tag delete that read the tag before another replica re-tagged it must not take the
    /// new value with a blind write: the tombstone is conditional on the version it read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stale_tag_delete_never_removes_a_re_tag() {
        let Some(server) = server() else { return };
        let (one, two) = (storage(&server, "retag"), storage(&server, "retag"));
        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(Vec::new()),
        };
        let (v1, v2) = (
            Bytes::from_static(b"{\"v\":1}"),
            Bytes::from_static(b"{\"v\":2}"),
        );
        let (d1, d2) = (Digest::sha256_of(&v1), Digest::sha256_of(&v2));
        one.manifest_put("r", &d1, v1, &meta, Some("latest"))
            .await
            .expect("tag v1");
        // Replica one reads the tag to delete it ...
        let rel = LAYOUT.tag("r", "latest");
        let (_, read_version) = one.get_bytes(&rel).await.expect("get").expect("tag");
        // ... replica two re-tags meanwhile ...
        two.manifest_put("r", &d2, v2, &meta, Some("latest"))
            .await
            .expect("re-tag v2");
        // ... and replica one's tombstone over the version it read is refused.
        assert!(
            !one.tombstone_tag(&rel, read_version)
                .await
                .expect("tombstone"),
            "a stale tombstone was written over the re-tag"
        );
        assert_eq!(
            two.tag_resolve("r", "latest").await.expect("resolve"),
            Some(d2.clone())
        );
        assert_eq!(
            one.tag_resolve("r", "latest").await.expect("resolve"),
            Some(d2)
        );
    }

    /// Two replicas append to one session at once: the one that read the state first and
    /// writes last must be refused, never saved over the other's bytes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_appends_on_two_replicas_never_mix() {
        let Some(server) = server() else { return };
        let (one, two) = (storage(&server, "race"), storage(&server, "race"));
        let session = one.upload_create("r").await.expect("create");
        let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
        let late: ByteStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        }));
        let id = session.id.clone();
        let slow = tokio::spawn(async move { two.upload_append("r", &id, None, late).await });
        // Replica two has read the state and waits for its body; replica one appends meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let right = pattern(1000, 1);
        one.upload_append("r", &session.id, None, testsuite::stream_of(&right))
            .await
            .expect("append on one");
        tx.send(Ok(Bytes::from(pattern(1000, 2))))
            .await
            .expect("send");
        drop(tx);
        let result = slow.await.expect("task");
        assert!(
            matches!(result, Err(StorageError::RangeMismatch { offset: 1000 })),
            "the late append was accepted: {result:?}"
        );
        let digest = Digest::sha256_of(&right);
        one.upload_complete("r", &session.id, &digest, None)
            .await
            .expect("complete with the right bytes");
        assert_eq!(read_all(&one, &digest).await, right);
    }

    /// What the upload protocol relies on across replicas: the server refuses a create over
    /// an existing object and an update over a version it no longer holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_honours_conditional_writes() {
        let Some(server) = server() else { return };
        let s = storage(&server, "conditional");
        let path = s.path("probe");
        let create = || PutOptions::from(PutMode::Create);
        let first = s
            .store
            .put_opts(&path, PutPayload::from_static(b"one"), create())
            .await
            .expect("first create");
        let again = s
            .store
            .put_opts(&path, PutPayload::from_static(b"two"), create())
            .await;
        assert!(
            matches!(
                again,
                Err(object_store::Error::AlreadyExists { .. })
                    | Err(object_store::Error::Precondition { .. })
            ),
            "a second create succeeded: {again:?}"
        );
        let (_, e_tag) = s.get_bytes("probe").await.expect("get").expect("present");
        assert!(
            e_tag.is_some(),
            "no ETag on GET: updates could not be conditional"
        );
        assert_eq!(e_tag, first.e_tag);
        let update = |e_tag: Option<String>| {
            PutOptions::from(PutMode::Update(UpdateVersion {
                e_tag,
                version: None,
            }))
        };
        s.store
            .put_opts(
                &path,
                PutPayload::from_static(b"three"),
                update(first.e_tag.clone()),
            )
            .await
            .expect("update over the version read");
        let stale = s
            .store
            .put_opts(
                &path,
                PutPayload::from_static(b"four"),
                update(first.e_tag.clone()),
            )
            .await;
        assert!(
            matches!(stale, Err(object_store::Error::Precondition { .. })),
            "an update over a stale version succeeded: {stale:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shared_suite() {
        let Some(server) = server() else { return };
        let s = storage(&server, "suite/prefix");
        s.check().await.expect("bucket answers");
        testsuite::run_all(&s).await;
        // Everything stayed below the prefix.
        let stray: Vec<_> = std::fs::read_dir(server.root().join("brt"))
            .expect("bucket folder")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "suite" && !n.starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "objects outside the prefix: {stray:?}");
    }

    /// A chunked upload of odd-sized chunks that crosses part boundaries,
    /// alternating between two storages (two replicas) over one bucket,
    /// finished on the second; read back through the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_chunked_upload_across_replicas() {
        let Some(server) = server() else { return };
        let a = storage(&server, "");
        let b = storage(&server, "");
        let data = pattern(PART_SIZE * 2 + 3 * 1024 * 1024 + 17, 1);
        let digest = Digest::sha256_of(&data);
        let up = a.upload_create("big/app").await.expect("create");
        let chunks = [1usize, 5 << 20, 7 << 20, 100, (6 << 20) - 3];
        let mut at = 0;
        for (i, len) in chunks.iter().enumerate() {
            let replica = if i % 2 == 0 { &a } else { &b };
            let end = (at + len).min(data.len());
            let st = replica
                .upload_append(
                    "big/app",
                    &up.id,
                    Some(at as u64),
                    testsuite::stream_of(&data[at..end]),
                )
                .await
                .expect("append");
            at = end;
            assert_eq!(st.offset, at as u64);
        }
        let size = b
            .upload_complete(
                "big/app",
                &up.id,
                &digest,
                Some(testsuite::stream_of(&data[at..])),
            )
            .await
            .expect("complete");
        assert_eq!(size, data.len() as u64);
        assert_eq!(a.blob_size(&digest).await.expect("size"), Some(size));
        assert!(read_all(&a, &digest).await == data, "bytes differ");
        let read = a
            .blob_read(
                &digest,
                Some(ByteRange::From {
                    start: PART_SIZE as u64 - 2,
                    end: Some(PART_SIZE as u64 + 1),
                }),
            )
            .await
            .expect("range");
        let mut got = Vec::new();
        let mut stream = read.stream;
        while let Some(c) = stream.next().await {
            got.extend_from_slice(&c.expect("chunk"));
        }
        assert_eq!(got, &data[PART_SIZE - 2..PART_SIZE + 2]);
        // Nothing of the session is left.
        assert!(a.list("uploads/").await.expect("list").is_empty());
        // The blob was not copied: one data object and one empty pointer.
        let data_objects = a.list("data/").await.expect("list");
        assert_eq!(data_objects.len(), 1);
        assert_eq!(data_objects[0].size, size);
        let pointer = a
            .head_opt(&LAYOUT.blob(&digest))
            .await
            .expect("head")
            .expect("pointer");
        assert_eq!(pointer.meta.size, 0);
    }

    /// A big upload with a wrong digest stores nothing, and a big sha512
    /// upload is verified by reading it back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_uploads_are_verified() {
        let Some(server) = server() else { return };
        let s = storage(&server, "v");
        let data = pattern(PART_SIZE + 1000, 2);
        let wrong = Digest::sha256_of(b"not it");
        let up = s.upload_create("r").await.expect("create");
        let err = s
            .upload_complete("r", &up.id, &wrong, Some(testsuite::stream_of(&data)))
            .await
            .expect_err("mismatch");
        assert!(matches!(err, StorageError::DigestMismatch { .. }));
        assert!(s.list("blobs/").await.expect("list").is_empty());
        assert!(s.list("data/").await.expect("list").is_empty());
        assert!(s.list("uploads/").await.expect("list").is_empty());

        let d512 = Digest::of(Algorithm::Sha512, &data);
        let up = s.upload_create("r").await.expect("create");
        s.upload_complete("r", &up.id, &d512, Some(testsuite::stream_of(&data)))
            .await
            .expect("sha512");
        assert!(read_all(&s, &d512).await == data);
    }

    /// The request budget: what a push and a pull cost in S3 requests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn request_counts_stay_low() {
        let Some(server) = server() else { return };
        let s = storage(&server, "");
        let layer = b"a small layer".to_vec();
        let digest = Digest::sha256_of(&layer);
        // docker: HEAD the blob, POST, PUT with the body.
        let before = s.request_counts();
        assert!(!s.blob_linked("app", &digest).await.expect("head"));
        let up = s.upload_create("app").await.expect("create");
        s.upload_complete("app", &up.id, &digest, Some(testsuite::stream_of(&layer)))
            .await
            .expect("complete");
        let push = s.request_counts().since(&before);
        eprintln!("monolithic push of a small blob: {push:?}");
        assert!(push.total() <= 6, "{push:?}");

        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(vec![digest.clone()]),
        };
        let body = Bytes::from_static(b"{}");
        let md = Digest::sha256_of(&body);
        s.manifest_put("app", &md, body, &meta, Some("v1"))
            .await
            .expect("put");
        // Pull by tag: resolve, then manifest.
        let before = s.request_counts();
        let d = s
            .tag_resolve("app", "v1")
            .await
            .expect("tag")
            .expect("tagged");
        s.manifest_get("app", &d)
            .await
            .expect("get")
            .expect("there");
        let pull = s.request_counts().since(&before);
        eprintln!("manifest pull by tag: {pull:?}");
        assert!(pull.total() <= 3, "{pull:?}");
    }

    async fn collect(mut stream: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    /// An in-memory object store holding `data` at `obj`.
    async fn memory_store(data: &[u8]) -> Arc<dyn ObjectStore> {
        let store = Arc::new(object_store::memory::InMemory::new());
        store
            .put(&Path::from("obj"), PutPayload::from(data.to_vec()))
            .await
            .expect("put");
        store
    }

    /// Parallel ranged reads return exactly the bytes asked for, in order,
    /// for spans that start and end on, next to and between range
    /// boundaries, whether buffers are plentiful, scarce or missing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ranged_reads_return_the_bytes_in_order() {
        const R: u64 = 1000;
        for len in [R + 1, 2 * R - 1, 2 * R, 2 * R + 1, 7 * R + 3] {
            let data = pattern(len as usize, len as u32);
            let store = memory_store(&data).await;
            let spans = [
                (0, len),
                (1, len),
                (0, len - 1),
                (R - 1, len),
                (R, len),
                (R + 1, len.min(3 * R + 1)),
                (3, len - 2),
            ];
            for (ahead, buffers) in [(3, 16), (1, 16), (3, 1), (3, 0), (0, 4)] {
                let how = ReadAhead::new(R, ahead, buffers);
                for (start, end) in spans {
                    if end <= start {
                        continue;
                    }
                    let stream = how
                        .read(store.clone(), Path::from("obj"), start, end)
                        .await
                        .expect("read");
                    let got = collect(stream).await.expect("bytes");
                    assert!(
                        got == data[start as usize..end as usize],
                        "len {len} ahead {ahead} buffers {buffers} span {start}..{end}: \
                         {} bytes, wrong content",
                        got.len()
                    );
                    assert_eq!(how.buffers.available_permits(), buffers, "buffers leaked");
                }
            }
        }
    }

    /// Buffers are shared: a read started while another holds them all still
    /// completes (streaming the rest in one GET), and dropping a read half way
    /// gives its buffers back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_ahead_buffers_are_bounded_and_returned() {
        const R: u64 = 1000;
        let data = pattern(20 * R as usize + 7, 9);
        let store = memory_store(&data).await;
        let how = ReadAhead::new(R, 3, 4);
        let path = Path::from("obj");
        let len = data.len() as u64;
        let mut first = how
            .read(store.clone(), path.clone(), 0, len)
            .await
            .expect("read");
        // The first read fetches 3 ranges ahead, leaving one buffer.
        assert_eq!(how.buffers.available_permits(), 1);
        let second = how
            .read(store.clone(), path.clone(), 0, len)
            .await
            .expect("read");
        assert_eq!(how.buffers.available_permits(), 0);
        let third = how
            .read(store.clone(), path.clone(), 5, len)
            .await
            .expect("read");
        assert!(collect(third).await.expect("third") == data[5..]);
        assert!(collect(second).await.expect("second") == data[..]);
        let chunk = first.next().await.expect("a chunk").expect("bytes");
        assert_eq!(chunk[..], data[..chunk.len()]);
        drop(first);
        assert_eq!(how.buffers.available_permits(), 4);
    }

    /// A missing object is an error when the read starts, not mid-stream.
    #[tokio::test]
    async fn ranged_read_of_a_missing_object_fails_up_front() {
        let store = memory_store(b"x").await;
        let how = ReadAhead::new(10, 3, 4);
        let err = match how.read(store, Path::from("nothing"), 0, 100).await {
            Ok(_) => panic!("read of a missing object succeeded"),
            Err(e) => e,
        };
        assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
        assert_eq!(how.buffers.available_permits(), 4);
    }

    /// A big blob on a real S3 server, read in small parallel ranges: the
    /// whole blob, and Range requests across and inside range boundaries.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn big_blob_reads_in_parallel_ranges() {
        let Some(mut server) = server() else { return };
        const R: u64 = 1 << 20;
        let s = storage(&server, "ranged").with_read_ahead(R, 3, 4);
        let data = pattern(PART_SIZE + 3 * R as usize + 12_345, 4);
        let digest = Digest::sha256_of(&data);
        let up = s.upload_create("r").await.expect("create");
        s.upload_complete("r", &up.id, &digest, Some(testsuite::stream_of(&data)))
            .await
            .expect("complete");
        let before = s.request_counts();
        assert!(read_all(&s, &digest).await == data, "whole blob differs");
        let gets = s.request_counts().since(&before).total();
        assert!(gets >= 12, "read in {gets} requests, not in 1 MiB ranges");
        let len = data.len() as u64;
        for (start, end) in [
            (R - 1, R),
            (R, 2 * R - 1),
            (R + 1, 5 * R + 2),
            (3 * R + 100, 3 * R + 200),
            (0, len - 1),
            (len - R - 3, len - 1),
        ] {
            let range = ByteRange::From {
                start,
                end: Some(end),
            };
            let read = s.blob_read(&digest, Some(range)).await.expect("range");
            assert_eq!(read.range, Some((start, end)));
            let got = collect(read.stream).await.expect("bytes");
            assert!(
                got == data[start as usize..=end as usize],
                "range {start}-{end} differs"
            );
        }
        let read = s
            .blob_read(&digest, Some(ByteRange::Suffix(2 * R + 1)))
            .await
            .expect("suffix");
        let got = collect(read.stream).await.expect("bytes");
        assert!(got == data[data.len() - (2 * R as usize + 1)..]);
        assert_eq!(s.read_ahead.buffers.available_permits(), 4);

        // S3 going away mid-read fails the stream (the client sees a cut
        // body, never a short one), and a read started then is Unavailable.
        let read = s.blob_read(&digest, None).await.expect("read");
        server.stop();
        let err = collect(read.stream)
            .await
            .expect_err("read past the outage");
        eprintln!("mid-read: {err}");
        let err = match s.blob_read(&digest, None).await {
            Ok(_) => panic!("read with S3 down succeeded"),
            Err(e) => e,
        };
        assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
        assert_eq!(s.read_ahead.buffers.available_permits(), 4);
    }
}
