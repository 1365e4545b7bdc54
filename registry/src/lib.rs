//! Berth's OCI Distribution v1.1 HTTP server. Handlers are thin: they parse
//! the request, call [`berth_storage::Storage`] and map errors to the spec's
//! JSON error bodies.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use berth_storage::{ByteStream, Storage};
use futures::TryStreamExt;

pub mod access;
mod blobs;
pub mod error;
pub mod events;
pub mod http;
pub mod immutable;
mod listing;
pub mod manifest;
mod manifests;
pub mod metered;
pub mod metrics;
pub mod mirror;
pub mod ops;
pub mod process_metrics;
pub mod pulls;
pub mod quota;
mod remote;
pub mod retention;
pub mod route;
pub mod sync_jobs;
pub mod ui;
mod uploads;

use error::{ApiResult, Code, RegistryError};
use route::{Route, RouteError};

/// Shared state of the server: the storage (all data lives there, so replicas
/// over shared storage are interchangeable) and the access rules.
#[derive(Clone)]
pub struct Registry {
    storage: Arc<dyn Storage>,
    access: Option<Arc<access::Access>>,
    rate_limit: Option<Arc<access::ClientRateLimit>>,
    read_only: ops::ReadOnly,
    immutable: ops::Reloadable<immutable::ImmutableTags>,
    quotas: ops::Reloadable<quota::Quotas>,
    /// Accept image indexes whose child manifests are not all pushed.
    sparse_indexes: bool,
    metrics: Option<metrics::Metrics>,
    /// `/metrics` on this router (not on a listener of its own).
    metrics_route: bool,
    /// `[[notifications]]`: events queued in the outbox before answering.
    events: Option<events::Events>,
    /// Manifest pulls noted for retention, written to storage in batches.
    pulls: pulls::PullLog,
    /// The web UI under `/ui/`, when on.
    ui: Option<Arc<ui::Ui>>,
    /// `[[mirror]]` upstreams (pull-through cache).
    mirrors: Arc<mirror::Mirrors>,
}

impl Registry {
    pub fn new(storage: Arc<dyn Storage>) -> Registry {
        Registry {
            storage,
            access: None,
            rate_limit: None,
            read_only: ops::ReadOnly::default(),
            immutable: ops::Reloadable::default(),
            quotas: ops::Reloadable::default(),
            sparse_indexes: false,
            metrics: None,
            metrics_route: false,
            events: None,
            pulls: pulls::PullLog::default(),
            ui: None,
            mirrors: Arc::default(),
        }
    }

    /// Queue an event for each push, pull, delete and mount that a
    /// `[[notifications]]` endpoint wants (start its sender separately).
    pub fn with_events(mut self, events: events::Events) -> Registry {
        self.events = Some(events);
        self
    }

    /// Tell the web UI that a manifest or tag of `repository` changed.
    fn ui_changed(&self, repository: &str, changed: bool) {
        if let (true, Some(ui)) = (changed, &self.ui) {
            ui.changed(self.storage.clone(), repository);
        }
    }

    /// Serve the web UI under `/ui/` (and send browsers from `/` there).
    pub fn with_ui(mut self, options: ui::UiOptions) -> Registry {
        self.ui = Some(Arc::new(ui::Ui::new(options)));
        self
    }

    /// Serve `[[mirror]]` upstreams as a pull-through cache.
    pub fn with_mirrors(mut self, mirrors: mirror::Mirrors) -> Registry {
        self.mirrors = Arc::new(mirrors);
        self
    }

    /// Record metrics; `route`: answer `/metrics` on this router too.
    pub fn with_metrics(mut self, metrics: metrics::Metrics, route: bool) -> Registry {
        self.metrics = Some(metrics);
        self.metrics_route = route;
        self
    }

    /// The manifest pulls noted since the last flush (the server flushes them).
    /// The `[[mirror]]` caches (for housekeeping's eviction).
    pub fn mirrors(&self) -> Arc<mirror::Mirrors> {
        self.mirrors.clone()
    }

    pub fn pull_log(&self) -> pulls::PullLog {
        self.pulls.clone()
    }

    /// The read-only switch: on, every write is refused with 405.
    pub fn read_only(&self) -> ops::ReadOnly {
        self.read_only.clone()
    }

    /// The `[[immutable]]` rules in force (retention keeps what they protect).
    pub fn immutable_tags(&self) -> ops::Reloadable<immutable::ImmutableTags> {
        self.immutable.clone()
    }

    /// The `[[quota]]` rules in force, for a config reload to replace.
    pub fn quota_rules(&self) -> ops::Reloadable<quota::Quotas> {
        self.quotas.clone()
    }

    /// Refuse moving or deleting tags the rules name.
    pub fn with_immutable_tags(mut self, rules: immutable::ImmutableTags) -> Registry {
        self.immutable = ops::Reloadable::new(rules);
        self
    }

    /// Refuse pushes past the `[[quota]]` rules.
    pub fn with_quotas(mut self, rules: quota::Quotas) -> Registry {
        self.quotas = ops::Reloadable::new(rules);
        self
    }

    /// Accept an image index whose child manifests are not all in the repository (a
    /// "sparse" index, e.g. one platform copied out of a multi-platform image). Off by
    /// default, as in distribution: a pull of a missing platform fails only later.
    pub fn with_sparse_indexes(mut self, on: bool) -> Registry {
        self.sparse_indexes = on;
        self
    }

    /// Turn on authentication and authorisation.
    pub fn with_access(mut self, access: access::Access) -> Registry {
        self.access = Some(Arc::new(access));
        self
    }

    /// Limit the request rate per client address.
    pub fn with_rate_limit(mut self, limit: berth_auth::ratelimit::RateLimit) -> Registry {
        self.rate_limit = Some(Arc::new(access::ClientRateLimit::new(limit)));
        self
    }

    /// The axum router for the whole `/v2/` API (and `/token` when this
    /// server issues tokens). Serve it with
    /// `into_make_service_with_connect_info::<SocketAddr>()` so rate limits
    /// and failed-login logs see client addresses.
    pub fn router(self) -> Router {
        let issues_tokens = self.access.as_ref().is_some_and(|a| a.issues_tokens());
        let router = Router::new();
        let router = if issues_tokens {
            router.route("/token", any(token_endpoint))
        } else {
            router
        };
        let router = if self.metrics_route {
            router.route("/metrics", axum::routing::get(metrics::endpoint))
        } else {
            router
        };
        let router = if self.ui.is_some() {
            ui::routes(router)
        } else {
            router
        };
        let metrics = self.metrics.clone();
        let router = router
            .route("/healthz", axum::routing::get(ops::healthz))
            .route("/readyz", axum::routing::get(ops::readyz))
            .route("/v2", any(dispatch))
            .route("/v2/", any(dispatch))
            .route("/v2/{*rest}", any(dispatch))
            .fallback(|| async {
                RegistryError::not_found(
                    Code::Unsupported,
                    "not a registry API path: the API lives under /v2/",
                )
            })
            .layer(middleware::from_fn(common_headers_and_log));
        // Beside the request log, outside it: counts every answer.
        let router = match metrics {
            Some(m) => router.layer(middleware::from_fn_with_state(m, metrics::record)),
            None => router,
        };
        router.with_state(self)
    }
}

const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");

/// What [`dispatch`] learnt about a request, left on its response for the log line.
#[derive(Clone, Default)]
struct RequestInfo {
    route: &'static str,
    repository: String,
    user: String,
}

async fn common_headers_and_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let client = client_addr(request.extensions())
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let bytes_in = http::header_str(request.headers(), "content-length")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("Docker-Distribution-API-Version", API_VERSION);
    let status = response.status();
    let info = response
        .extensions_mut()
        .remove::<RequestInfo>()
        .unwrap_or_else(|| RequestInfo {
            route: if path == "/token" { "token" } else { "other" },
            ..RequestInfo::default()
        });
    // The body's length when known (HEAD answers carry the would-be length).
    let bytes = if method == Method::HEAD {
        0
    } else {
        axum::body::HttpBody::size_hint(response.body())
            .exact()
            .or_else(|| {
                http::header_str(response.headers(), "content-length")?
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let ms = format!("{ms:.1}");
    // One line per request, reads and 404s included; BERTH_LOG=warn quiets it.
    macro_rules! log_request {
        ($level:ident) => {
            tracing::$level!(
                %method,
                route = %info.route,
                repository = %info.repository,
                status = status.as_u16(),
                bytes,
                bytes_in,
                ms = %ms,
                %client,
                user = %if info.user.is_empty() { "-" } else { &info.user },
                %path,
                "request"
            )
        };
    }
    if status.is_server_error() {
        log_request!(warn);
    } else {
        log_request!(info);
    }
    response
}

/// Everything a handler needs from the request.
pub(crate) struct Req {
    pub method: Method,
    pub query: Option<String>,
    pub headers: axum::http::HeaderMap,
}

impl Req {
    pub fn param(&self, key: &str) -> Option<String> {
        http::query_param(self.query.as_deref(), key)
    }

    /// Every value of a repeated query parameter, in order.
    pub fn params(&self, key: &str) -> Vec<String> {
        http::query_params(self.query.as_deref(), key)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        http::header_str(&self.headers, name)
    }
}

/// The request body as a storage stream. An `io::Error` under the body (the
/// connection loop ending one that is slower than the minimum upload rate)
/// comes out as itself, so its kind and message reach storage, the client's
/// error and the logs.
pub(crate) fn body_stream(body: Body) -> ByteStream {
    Box::pin(
        body.into_data_stream()
            .map_err(|e| match e.into_inner().downcast::<io::Error>() {
                Ok(io) => *io,
                Err(other) => io::Error::other(other),
            }),
    )
}

/// Take the request body out of its slot. A handler that fails before
/// taking it leaves it there, and [`dispatch`] drains it.
pub(crate) fn take_body(slot: &mut Option<Body>) -> ByteStream {
    body_stream(slot.take().unwrap_or_else(Body::empty))
}

/// At most this much of a rejected request body is read and discarded.
const DRAIN_LIMIT: u64 = 64 << 20;

/// Read and discard the rest of a rejected request body, so a client still
/// sending it reads our error instead of a broken pipe. Bounded: past
/// `DRAIN_LIMIT` the connection is simply closed.
pub(crate) async fn drain(mut stream: ByteStream) {
    use futures::StreamExt;
    let mut seen = 0u64;
    while let Some(Ok(chunk)) = stream.next().await {
        seen += chunk.len() as u64;
        if seen > DRAIN_LIMIT {
            break;
        }
    }
}

/// The client's address, when the server was started with connect info.
fn client_addr(extensions: &axum::http::Extensions) -> Option<SocketAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

async fn dispatch(State(reg): State<Registry>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let client = client_addr(&parts.extensions);
    let path = parts.uri.path();
    let rest = path
        .strip_prefix("/v2/")
        .or_else(|| path.strip_prefix("/v2"))
        .unwrap_or("");
    // A mirrored name asked for without its prefix (`?ns=`, a default mirror) is served as
    // the local repository `PREFIX/NAME`, access rules included.
    let mirrored = mirror_path(&reg.mirrors, rest, parts.uri.query());
    let rest = mirrored.as_deref().unwrap_or(rest);
    let route = route::parse(rest).map_err(|e| match e {
        RouteError::NotFound => {
            RegistryError::not_found(Code::Unsupported, format!("no API endpoint at {path}"))
        }
        RouteError::InvalidName(name) => RegistryError::bad_request(
            Code::NameInvalid,
            format!(
                "invalid repository name {name:?}: use lowercase letters, digits and separators (. _ __ -), components joined by /"
            ),
        ),
    });
    let mut headers = parts.headers;
    // HTTP/2 carries the host in the URI (`:authority`), not in a Host header.
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    let req = Req {
        method: parts.method.clone(),
        query: parts.uri.query().map(str::to_string),
        headers,
    };
    let mut body = Some(body);
    let mut info = RequestInfo {
        route: "other",
        ..RequestInfo::default()
    };
    let result = match route {
        Ok(route) => {
            info.route = route.kind();
            info.repository = route.repository().unwrap_or_default().to_string();
            match authorise(&reg, &route, &req, client).await {
                Ok(caller) => {
                    if let Some(c) = &caller {
                        info.user = c.identity.subject().to_string();
                    }
                    match handle(&reg, route, req, caller, &mut body).await {
                        Ok(response) => announce(&reg, response, &info.user, client).await,
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let mut response = match result {
        Ok(response) => response,
        Err(e) => {
            if let Some(unread) = body.take() {
                drain(body_stream(unread)).await;
            }
            e.into_response()
        }
    };
    response.extensions_mut().insert(info);
    response
}

/// Queue the event a handler left on its response, before the response goes
/// out. A push, delete or mount whose event cannot be stored fails (the
/// client retries, and the event is written then); a pull is still served.
async fn announce(
    reg: &Registry,
    mut response: Response,
    actor: &str,
    client: Option<SocketAddr>,
) -> ApiResult<Response> {
    let Some(happened) = response.extensions_mut().remove::<events::Happened>() else {
        return Ok(response);
    };
    let Some(events) = &reg.events else {
        return Ok(response);
    };
    match events.record(&happened, Some(actor), client).await {
        Ok(()) => Ok(response),
        Err(e) if happened.action == events::Action::Pull => {
            tracing::error!(target: "berth::events", error = %e, repository = %happened.repository, "cannot queue a pull event; the pull is served without it");
            Ok(response)
        }
        Err(e) => {
            tracing::error!(target: "berth::events", error = %e, repository = %happened.repository, "cannot queue an event; the request fails so the client retries");
            Err(e.into())
        }
    }
}

/// The path (after `/v2/`) with the repository name a mirror maps it to, if it does.
fn mirror_path(mirrors: &mirror::Mirrors, rest: &str, query: Option<&str>) -> Option<String> {
    if mirrors.is_empty() {
        return None;
    }
    let name = route::parse(rest).ok()?.repository()?.to_string();
    let ns = http::query_param(query, "ns");
    let local = mirrors.rewrite(&name, ns.as_deref())?;
    Some(format!("{local}{}", &rest[name.len()..]))
}

/// Rate limit, then access rules. `None` when access control is off.
async fn authorise(
    reg: &Registry,
    route: &Route<'_>,
    req: &Req,
    client: Option<SocketAddr>,
) -> ApiResult<Option<access::Caller>> {
    if let Some(limit) = &reg.rate_limit {
        limit.check(client)?;
    }
    let Some(access) = &reg.access else {
        return Ok(None);
    };
    let mount_from = match route {
        Route::UploadStart { .. } if req.param("mount").is_some() => req.param("from"),
        _ => None,
    };
    access
        .check(
            req.method.as_str(),
            route,
            mount_from.as_deref(),
            &req.headers,
            client,
        )
        .await
        .map(Some)
}

async fn handle(
    reg: &Registry,
    route: Route<'_>,
    req: Req,
    caller: Option<access::Caller>,
    body: &mut Option<Body>,
) -> ApiResult<Response> {
    let s = reg.storage.as_ref();
    let m = req.method.clone();
    reg.read_only.check(&m)?;
    if let Some(name) = route.repository() {
        if let Some((mirror, upstream)) = reg.mirrors.find(name) {
            let reads = m == Method::GET || m == Method::HEAD;
            // Read-only: the cache is served as it is (filling it would write).
            let fill = reads && !reg.read_only.is_on();
            match route {
                Route::Manifest { reference, .. } if fill => {
                    let response =
                        mirror::manifest_get(s, mirror, name, upstream, reference, &req).await?;
                    // Pull times order the mirror's eviction.
                    if m == Method::GET {
                        note_pull(&reg.pulls, name, &response);
                    }
                    return Ok(response);
                }
                Route::Blob { digest, .. } if fill => {
                    return mirror::blob_get(
                        &reg.storage,
                        &reg.mirrors,
                        mirror,
                        name,
                        upstream,
                        digest,
                        &req,
                    )
                    .await
                }
                Route::Referrers { digest, .. } if fill => {
                    return mirror::referrers_get(s, mirror, name, upstream, digest, &req).await
                }
                _ if !reads && !mirror.allow_push => {
                    return Err(RegistryError::new(
                        StatusCode::FORBIDDEN,
                        Code::Denied,
                        format!(
                            "{name} is a mirror of {}: pushes and deletes are refused (allow_push = true in its [[mirror]] accepts them)",
                            mirror.prefix
                        ),
                    ))
                }
                _ => {}
            }
        }
    }
    match route {
        Route::Base if m == Method::GET || m == Method::HEAD => Ok(json_response(
            StatusCode::OK,
            b"{}".to_vec(),
            m == Method::HEAD,
        )),
        Route::Catalog if m == Method::GET => {
            let visible = |repository: &str| match (&reg.access, &caller) {
                (Some(access), Some(caller)) => access.can_see(caller, repository),
                _ => true,
            };
            listing::catalog(s, &req, &visible).await
        }
        Route::Tags { name } if m == Method::GET => listing::tags(s, name, &req).await,
        Route::Referrers { name, digest } if m == Method::GET => {
            listing::referrers(s, name, digest, &req).await
        }
        Route::Blob { name, digest } => match m {
            Method::GET | Method::HEAD => blobs::get(s, name, digest, &req).await,
            Method::DELETE => blobs::delete(s, name, digest).await,
            _ => Err(method_not_allowed(&m)),
        },
        Route::UploadStart { name } if m == Method::POST => {
            // A mount without `from=` may take a blob from anywhere only
            // without access control: with it, that would copy a blob from a
            // repository the caller cannot read into one it can.
            let any_source = reg.access.is_none();
            uploads::start(s, &reg.quotas.current(), name, &req, any_source, body).await
        }
        Route::Upload { name, id } => match m {
            Method::GET | Method::HEAD => uploads::status(s, name, id).await,
            Method::PATCH => uploads::patch(s, name, id, &req, body).await,
            Method::PUT => uploads::finish(s, &reg.quotas.current(), name, id, &req, body).await,
            Method::DELETE => uploads::cancel(s, name, id).await,
            _ => Err(method_not_allowed(&m)),
        },
        Route::Manifest { name, reference } => match m {
            Method::GET | Method::HEAD => {
                let response = manifests::get(s, name, reference, &req).await?;
                if m == Method::GET {
                    note_pull(&reg.pulls, name, &response);
                }
                Ok(response)
            }
            Method::PUT => {
                let (immutable, quotas) = (reg.immutable.current(), reg.quotas.current());
                let rules = manifests::PutRules {
                    immutable: &immutable,
                    quotas: &quotas,
                    sparse_indexes: reg.sparse_indexes,
                };
                let result = manifests::put(s, &rules, name, reference, &req, body).await;
                reg.ui_changed(name, result.is_ok());
                result
            }
            Method::DELETE => {
                let result = manifests::delete(s, &reg.immutable.current(), name, reference).await;
                reg.ui_changed(name, result.is_ok());
                result
            }
            _ => Err(method_not_allowed(&m)),
        },
        _ => Err(method_not_allowed(&m)),
    }
}

/// A manifest GET answered: note its digest (HEADs are checks, not pulls).
fn note_pull(log: &pulls::PullLog, repository: &str, response: &Response) {
    let digest = response
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if let Some(digest) = digest {
        log.record(repository, &digest);
    }
}

/// Largest `POST /token` form read.
const TOKEN_FORM_LIMIT: usize = 16 * 1024;

async fn token_endpoint(State(reg): State<Registry>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let client = client_addr(&parts.extensions);
    if let Some(limit) = &reg.rate_limit {
        if let Err(e) = limit.check(client) {
            return e.into_response();
        }
    }
    let Some(access) = &reg.access else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let form = match parts.method {
        Method::GET | Method::HEAD => None,
        Method::POST => match axum::body::to_bytes(body, TOKEN_FORM_LIMIT).await {
            Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
            Err(_) => {
                return token_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request",
                    "form too large",
                )
            }
        },
        _ => {
            return token_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                "use GET or POST",
            )
        }
    };
    use access::TokenEndpointError as E;
    match access
        .token(parts.uri.query(), form.as_deref(), &parts.headers, client)
        .await
    {
        Ok(json) => {
            let mut r = bytes_response(StatusCode::OK, "application/json", json.into(), false);
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err(E::NotFound) => StatusCode::NOT_FOUND.into_response(),
        Err(E::BadRequest(message)) => {
            token_error(StatusCode::BAD_REQUEST, "invalid_request", &message)
        }
        Err(E::Unauthorized(challenge)) => {
            let mut r = token_error(
                StatusCode::UNAUTHORIZED,
                "invalid_grant",
                "wrong user name or password",
            );
            if let Ok(v) = HeaderValue::from_str(&challenge) {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            r
        }
        // The spec's error body with TOOMANYREQUESTS, as the rate limit
        // above answers: Docker's token client reads that shape too.
        Err(E::TooMany(e)) => e.into_response(),
        Err(E::Internal(message)) => {
            tracing::error!(error = %message, "cannot issue a token");
            token_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "cannot issue a token",
            )
        }
    }
}

/// An OAuth2-style error body (`error`, `error_description`) for the token endpoint.
fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = serde_json::json!({ "error": error, "error_description": description });
    bytes_response(status, "application/json", body.to_string().into(), false)
}

fn method_not_allowed(m: &Method) -> RegistryError {
    RegistryError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        Code::Unsupported,
        format!("{m} is not supported on this endpoint"),
    )
}

/// A JSON body with its length; HEAD gets the headers only.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>, head: bool) -> Response {
    bytes_response(status, "application/json", body.into(), head)
}

pub(crate) fn bytes_response(
    status: StatusCode,
    content_type: &str,
    body: bytes::Bytes,
    head: bool,
) -> Response {
    let len = body.len();
    let mut response = if head {
        Response::new(Body::empty())
    } else {
        Response::new(Body::from(body))
    };
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// An empty response with the given status.
pub(crate) fn empty(status: StatusCode) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    response
}

pub(crate) fn header_value(s: &str) -> HeaderValue {
    // Values we build are ASCII (digests, validated names, numbers).
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""))
}
