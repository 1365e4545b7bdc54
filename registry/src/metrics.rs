//! Prometheus metrics (`prometheus-client`): requests by route kind, method
//! and status class, latency, bytes in and out, uploads in progress, auth
//! failures, rate-limited requests, garbage collections, and the standard
//! `process_*` series. Recorded by a layer beside the request log (GC by the
//! server's housekeeping); exposed at `/metrics` on the main listener or on
//! one of its own.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry as PromRegistry;

use crate::route::Route;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabels {
    backend: &'static str,
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// The server's metrics; clones share them.
#[derive(Clone)]
pub struct Metrics(Arc<Inner>);

struct Inner {
    registry: PromRegistry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    received: Counter,
    sent: Counter,
    uploads: Gauge,
    auth_failures: Family<ReasonLabels, Counter>,
    rate_limited: Counter,
    gc: GcMetrics,
    events: EventMetrics,
    retention: RetentionMetrics,
    /// `[[sync]]` runs by result, and the images they handled by action.
    sync_runs: Family<ResultLabels, Counter>,
    sync_images: Family<ResultLabels, Counter>,
    storage_operations: Family<StorageLabels, Counter>,
    /// The S3 backend whose request counts each scrape reads, once it is known.
    s3: Arc<std::sync::OnceLock<Arc<berth_storage::S3Storage>>>,
    /// `[metrics] token`: a Bearer token that may read `/metrics`.
    token: Option<String>,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to ~50 s: a manifest HEAD to a big blob upload.
    Histogram::new(exponential_buckets(0.0005, 2.5, 13))
}

/// The server's periodic garbage collections.
struct GcMetrics {
    runs: Family<ResultLabels, Counter>,
    duration: Histogram,
    links_removed: Counter,
    blobs_removed: Counter,
    bytes_freed: Counter,
}

impl GcMetrics {
    fn register(registry: &mut PromRegistry) -> GcMetrics {
        use prometheus_client::registry::Unit;
        let gc = GcMetrics {
            runs: Family::default(),
            // 1 ms to ~17 min (4^10 ms): a small folder to a big bucket.
            duration: Histogram::new(exponential_buckets(0.001, 4.0, 11)),
            links_removed: Counter::default(),
            blobs_removed: Counter::default(),
            bytes_freed: Counter::default(),
        };
        registry.register(
            "gc_runs",
            "Garbage collections run by the server, by result (ok or error)",
            gc.runs.clone(),
        );
        registry.register_with_unit(
            "gc_duration",
            "Time each garbage collection took",
            Unit::Seconds,
            gc.duration.clone(),
        );
        registry.register(
            "gc_links_removed",
            "Repository links to blobs no manifest needs, removed by garbage collection",
            gc.links_removed.clone(),
        );
        registry.register(
            "gc_blobs_removed",
            "Blobs no repository links to, removed by garbage collection",
            gc.blobs_removed.clone(),
        );
        registry.register_with_unit(
            "gc_freed",
            "Blob bytes freed by garbage collection",
            Unit::Bytes,
            gc.bytes_freed.clone(),
        );
        gc
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabels {
    r#type: &'static str,
}

/// Webhook events (`[[notifications]]`): queued in the outbox, delivered, failed attempts.
struct EventMetrics {
    queued: Family<TypeLabels, Counter>,
    sent: Counter,
    failed: Counter,
    in_outbox: Gauge,
}

impl EventMetrics {
    fn register(registry: &mut PromRegistry) -> EventMetrics {
        let events = EventMetrics {
            queued: Family::default(),
            sent: Counter::default(),
            failed: Counter::default(),
            in_outbox: Gauge::default(),
        };
        registry.register(
            "events_queued",
            "Events written to the outbox for webhook endpoints, by CloudEvents type",
            events.queued.clone(),
        );
        registry.register(
            "events_sent",
            "Event deliveries an endpoint accepted (one per event and endpoint)",
            events.sent.clone(),
        );
        registry.register(
            "events_failed",
            "Event delivery attempts that failed (retried later)",
            events.failed.clone(),
        );
        registry.register(
            "events_in_outbox",
            "Events waiting in the outbox for some endpoint (all replicas'), at the last pass",
            events.in_outbox.clone(),
        );
        events
    }
}

/// The server's scheduled retention runs.
struct RetentionMetrics {
    runs: Family<ResultLabels, Counter>,
    duration: Histogram,
    tags_removed: Counter,
    manifests_removed: Counter,
}

impl RetentionMetrics {
    fn register(registry: &mut PromRegistry) -> RetentionMetrics {
        let r = RetentionMetrics {
            runs: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 4.0, 11)),
            tags_removed: Counter::default(),
            manifests_removed: Counter::default(),
        };
        registry.register(
            "retention_runs",
            "Retention runs by the server, by result (ok or error)",
            r.runs.clone(),
        );
        registry.register_with_unit(
            "retention_duration",
            "Time each retention run took",
            prometheus_client::registry::Unit::Seconds,
            r.duration.clone(),
        );
        registry.register(
            "retention_tags_removed",
            "Tags removed by retention policies",
            r.tags_removed.clone(),
        );
        registry.register(
            "retention_manifests_removed",
            "Untagged manifests removed by retention policies (their blobs go at the next garbage collection)",
            r.manifests_removed.clone(),
        );
        r
    }
}

impl Metrics {
    pub fn new(token: Option<String>) -> Metrics {
        // The standard process_* names unprefixed on the root; Berth's own under berth_.
        let mut root = PromRegistry::default();
        root.register_collector(Box::new(crate::process_metrics::ProcessCollector::default()));
        let registry = root.sub_registry_with_prefix("berth");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route kind, method and status class",
            requests.clone(),
        );
        let latency =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register_with_unit(
            "http_request_duration",
            "Time from the request's headers to the response's headers, by route kind",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let received = Counter::default();
        registry.register_with_unit(
            "http_received",
            "Request body bytes received",
            prometheus_client::registry::Unit::Bytes,
            received.clone(),
        );
        let sent = Counter::default();
        registry.register_with_unit(
            "http_sent",
            "Response body bytes sent",
            prometheus_client::registry::Unit::Bytes,
            sent.clone(),
        );
        let uploads = Gauge::default();
        registry.register(
            "uploads_in_progress",
            "Upload requests (POST, PATCH, PUT on an upload) being received now",
            uploads.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Requests refused for credentials (401 with credentials sent) or permissions (403)",
            auth_failures.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited_requests",
            "Requests answered 429 (rate limit or login backoff)",
            rate_limited.clone(),
        );
        let gc = GcMetrics::register(registry);
        let events = EventMetrics::register(registry);
        let retention = RetentionMetrics::register(registry);
        let (sync_runs, sync_images) = (Family::default(), Family::default());
        registry.register(
            "sync_runs",
            "[[sync]] job runs, by result (ok or error: the source could not be listed)",
            sync_runs.clone(),
        );
        registry.register(
            "sync_images",
            "Images handled by [[sync]] jobs, by result (copied, skipped or failed)",
            sync_images.clone(),
        );
        let storage_operations = Family::<StorageLabels, Counter>::default();
        registry.register(
            "storage_operations",
            "Storage calls by backend, operation and result (ok; refused: the request was at fault; error: the storage failed)",
            storage_operations.clone(),
        );
        let s3 = Arc::new(std::sync::OnceLock::new());
        registry.register_collector(Box::new(crate::metered::S3RequestsCollector(s3.clone())));
        Metrics(Arc::new(Inner {
            registry: root,
            requests,
            latency,
            received,
            sent,
            uploads,
            auth_failures,
            rate_limited,
            gc,
            events,
            retention,
            sync_runs,
            sync_images,
            storage_operations,
            s3,
            token: token.filter(|t| !t.is_empty()),
        }))
    }

    /// One garbage collection by the server: how long it took and what it removed.
    pub fn record_gc(&self, took: Duration, outcome: Result<&berth_storage::GcReport, ()>) {
        let gc = &self.0.gc;
        gc.duration.observe(took.as_secs_f64());
        let result = match outcome {
            Ok(report) => {
                gc.links_removed.inc_by(report.links_removed);
                gc.blobs_removed.inc_by(report.blobs_removed);
                gc.bytes_freed.inc_by(report.bytes_freed);
                "ok"
            }
            Err(()) => "error",
        };
        gc.runs.get_or_create(&ResultLabels { result }).inc();
    }

    /// One `[[sync]]` run: `Some((copied, skipped, failed))`, or `None` when it failed whole.
    pub fn record_sync(&self, images: Option<(usize, usize, usize)>) {
        let result = match images {
            Some((copied, skipped, failed)) => {
                for (result, n) in [("copied", copied), ("skipped", skipped), ("failed", failed)] {
                    self.0
                        .sync_images
                        .get_or_create(&ResultLabels { result })
                        .inc_by(n as u64);
                }
                "ok"
            }
            None => "error",
        };
        self.0
            .sync_runs
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// An event written to the outbox.
    pub fn event_queued(&self, event_type: &'static str) {
        let labels = TypeLabels { r#type: event_type };
        self.0.events.queued.get_or_create(&labels).inc();
    }

    /// An event delivered to one endpoint.
    pub fn event_sent(&self) {
        self.0.events.sent.inc();
    }

    /// A delivery attempt that failed.
    pub fn event_failed(&self) {
        self.0.events.failed.inc();
    }

    /// How many events the outbox held at the sender's last listing.
    pub fn events_in_outbox(&self, count: usize) {
        self.0.events.in_outbox.set(count as i64);
    }

    /// One storage call and how it ended (see [`crate::metered`]).
    pub fn record_storage(
        &self,
        backend: &'static str,
        operation: &'static str,
        result: &'static str,
    ) {
        self.0
            .storage_operations
            .get_or_create(&StorageLabels {
                backend,
                operation,
                result,
            })
            .inc();
    }

    /// Export the HTTP requests this S3 backend sent (`berth_s3_requests_total{method}`).
    pub fn watch_s3(&self, s3: Arc<berth_storage::S3Storage>) {
        let _ = self.0.s3.set(s3);
    }

    /// One retention run by the server: how long it took and what it removed.
    pub fn record_retention(
        &self,
        took: Duration,
        outcome: Result<&crate::retention::RetentionReport, ()>,
    ) {
        let r = &self.0.retention;
        r.duration.observe(took.as_secs_f64());
        let result = match outcome {
            Ok(report) => {
                r.tags_removed.inc_by(report.tags_removed);
                r.manifests_removed.inc_by(report.manifests_removed);
                "ok"
            }
            Err(()) => "error",
        };
        r.runs.get_or_create(&ResultLabels { result }).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.0.registry);
        text
    }

    /// Whether `headers` carry the `[metrics] token` as a Bearer token.
    pub fn token_matches(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let Some(expected) = &self.0.token else {
            return false;
        };
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        sent.as_bytes().ct_eq(expected.as_bytes()).into()
    }

    pub fn has_token(&self) -> bool {
        self.0.token.is_some()
    }
}

fn route_kind(path: &str) -> &'static str {
    let Some(rest) = path
        .strip_prefix("/v2/")
        .or_else(|| path.strip_prefix("/v2"))
    else {
        return match path {
            "/token" => "token",
            "/metrics" => "metrics",
            "/healthz" | "/readyz" => "health",
            _ => "other",
        };
    };
    // By the path's shape, as route::parse reads it, without validating the
    // name again (a regex per request): the handler does that.
    if rest.is_empty() {
        return "base";
    }
    if rest == "_catalog" {
        return "catalog";
    }
    if rest.ends_with("/tags/list") {
        return "tags";
    }
    if rest.ends_with("/blobs/uploads/") || rest.ends_with("/blobs/uploads") {
        return "upload";
    }
    let Some((head, _)) = rest.rsplit_once('/') else {
        return "other";
    };
    match head.rsplit_once('/') {
        Some((_, "manifests")) => "manifest",
        Some((_, "blobs")) => "blob",
        Some((_, "referrers")) => "referrers",
        Some((name, "uploads")) if name.ends_with("/blobs") => "upload",
        _ => "other",
    }
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Lowers the uploads gauge when the request is answered (or dropped).
struct InProgress(Gauge);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The metrics layer: counts the request, its body bytes both ways and its latency.
pub(crate) async fn record(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let m = &metrics.0;
    let route = route_kind(request.uri().path());
    let method = method_label(request.method());
    let has_credentials = request.headers().contains_key(header::AUTHORIZATION);
    let reads = request.method() == Method::GET || request.method() == Method::HEAD;
    let _upload = (route == "upload" && !reads).then(|| {
        m.uploads.inc();
        InProgress(m.uploads.clone())
    });
    let request = if reads {
        request
    } else {
        let (parts, body) = request.into_parts();
        Request::from_parts(parts, counted(body, m.received.clone()))
    };
    let response = next.run(request).await;
    let status = response.status();
    m.requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: status_class(status),
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    match status {
        StatusCode::UNAUTHORIZED if has_credentials => {
            m.auth_failures
                .get_or_create(&ReasonLabels {
                    reason: "unauthorized",
                })
                .inc();
        }
        StatusCode::FORBIDDEN => {
            m.auth_failures
                .get_or_create(&ReasonLabels { reason: "denied" })
                .inc();
        }
        StatusCode::TOO_MANY_REQUESTS => {
            m.rate_limited.inc();
        }
        _ => {}
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, counted(body, m.sent.clone()))
}

/// Bodies up to this size with an exact length (manifests, JSON, errors) are
/// counted at once instead of frame by frame: the hot path stays unwrapped.
const COUNT_AT_ONCE: u64 = 1 << 20;

fn counted(body: Body, counter: Counter) -> Body {
    if let Some(len) = http_body::Body::size_hint(&body)
        .exact()
        .filter(|&n| n <= COUNT_AT_ONCE)
    {
        counter.inc_by(len);
        return body;
    }
    Body::new(Counted {
        inner: body,
        counter,
    })
}

/// A body that adds the bytes passing through to a counter, keeping the
/// size hint (so `Content-Length` framing is unchanged) and the error
/// underneath (so an `io::Error` still reaches the handlers as itself).
struct Counted {
    inner: Body,
    counter: Counter,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.inc_by(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into_inner()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `GET /metrics` on the main listener: with logins on, a login or the token.
pub(crate) async fn endpoint(State(reg): State<crate::Registry>, request: Request) -> Response {
    let Some(metrics) = &reg.metrics else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (parts, _) = request.into_parts();
    if let Some(access) = &reg.access {
        if !metrics.token_matches(&parts.headers) {
            let client: Option<SocketAddr> = crate::client_addr(&parts.extensions);
            if !parts.headers.contains_key(header::AUTHORIZATION) {
                return crate::error::RegistryError::new(
                    StatusCode::UNAUTHORIZED,
                    crate::error::Code::Unauthorized,
                    "/metrics needs a login or the [metrics] token (Authorization: Bearer TOKEN)",
                )
                .into_response();
            }
            if let Err(e) = access
                .check("GET", &Route::Base, None, &parts.headers, client)
                .await
            {
                return e.into_response();
            }
        }
    }
    exposition(metrics, &parts.headers)
}

/// `GET /metrics` on its own listener (`[metrics] addr`): the token if one is set.
pub async fn standalone(State(metrics): State<Metrics>, headers: HeaderMap) -> Response {
    if metrics.has_token() && !metrics.token_matches(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            "/metrics needs the [metrics] token (Authorization: Bearer TOKEN)\n",
        )
            .into_response();
    }
    exposition(&metrics, &headers)
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_004: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics to a scraper that asks for it (Prometheus does), the classic
/// text format to anything else (curl, `promtool check metrics`).
fn exposition(metrics: &Metrics, headers: &HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = metrics.render();
    let (content_type, text) = if wants_openmetrics {
        (OPENMETRICS, text)
    } else {
        (TEXT_004, openmetrics_to_text_004(&text))
    };
    let mut r = crate::bytes_response(StatusCode::OK, content_type, text.into(), false);
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// The classic text format from OpenMetrics as prometheus-client writes it:
/// counters are described under their sample name (`_total`), and `# UNIT`
/// and `# EOF` lines do not exist there.
fn openmetrics_to_text_004(text: &str) -> String {
    let counters: std::collections::HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        match described {
            Some((prefix, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out.push_str(&format!("{prefix}{name}_total {tail}"));
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// A router serving only `/metrics`, for `[metrics] addr`.
pub fn standalone_router(metrics: Metrics) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(standalone))
        .with_state(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_kinds() {
        assert_eq!(route_kind("/v2/a/b/manifests/v1"), "manifest");
        assert_eq!(route_kind("/v2/a/blobs/sha256:00"), "blob");
        assert_eq!(route_kind("/v2/a/blobs/uploads/"), "upload");
        assert_eq!(route_kind("/v2/a/blobs/uploads/id"), "upload");
        assert_eq!(route_kind("/v2/_catalog"), "catalog");
        assert_eq!(route_kind("/v2/a/tags/list"), "tags");
        assert_eq!(route_kind("/v2/a/referrers/sha256:00"), "referrers");
        assert_eq!(route_kind("/v2/"), "base");
        assert_eq!(route_kind("/token"), "token");
        assert_eq!(route_kind("/nothing"), "other");
        assert_eq!(route_kind("/v2/a/unknown/x"), "other");
        assert_eq!(route_kind("/v2/nothing"), "other");
    }

    #[test]
    fn render_names_every_family() {
        let m = Metrics::new(None);
        m.0.requests
            .get_or_create(&RequestLabels {
                route: "manifest",
                method: "GET",
                status: "2xx",
            })
            .inc();
        let text = openmetrics_to_text_004(&m.render());
        assert!(
            text.contains("# TYPE berth_http_requests_total counter\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        for name in [
            "berth_http_requests_total{route=\"manifest\",method=\"GET\",status=\"2xx\"} 1",
            "berth_http_received_bytes_total",
            "berth_uploads_in_progress",
            "berth_rate_limited_requests_total",
        ] {
            assert!(text.contains(name), "{name} missing:\n{text}");
        }
    }
}
