//! Berth's OCI Distribution v1.1 HTTP server. Handlers are thin: they parse
//! the request, call [`berth_storage::Storage`] and map errors to the spec's
//! JSON error bodies.

use std::io;
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

mod blobs;
pub mod error;
pub mod http;
mod listing;
pub mod manifest;
mod manifests;
pub mod route;
mod uploads;

use error::{ApiResult, Code, RegistryError};
use route::{Route, RouteError};

/// Shared state of the server: just the storage (everything else lives there,
/// so replicas over shared storage are interchangeable).
#[derive(Clone)]
pub struct Registry {
    storage: Arc<dyn Storage>,
}

impl Registry {
    pub fn new(storage: Arc<dyn Storage>) -> Registry {
        Registry { storage }
    }

    /// The axum router for the whole `/v2/` API.
    pub fn router(self) -> Router {
        Router::new()
            .route("/v2", any(dispatch))
            .route("/v2/", any(dispatch))
            .route("/v2/{*rest}", any(dispatch))
            .fallback(|| async {
                RegistryError::not_found(
                    Code::Unsupported,
                    "not a registry API path: the API lives under /v2/",
                )
            })
            .layer(middleware::from_fn(common_headers_and_log))
            .with_state(self)
    }
}

const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");

async fn common_headers_and_log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert("Docker-Distribution-API-Version", API_VERSION);
    let status = response.status();
    let micros = started.elapsed().as_micros() as u64;
    // Writes and errors at info; reads (the hot path) at debug.
    if status.is_server_error() {
        tracing::warn!(%method, %path, status = status.as_u16(), micros, "request");
    } else if method == Method::GET || method == Method::HEAD {
        tracing::debug!(%method, %path, status = status.as_u16(), micros, "request");
    } else {
        tracing::info!(%method, %path, status = status.as_u16(), micros, "request");
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

    pub fn header(&self, name: &str) -> Option<&str> {
        http::header_str(&self.headers, name)
    }
}

/// The request body as a storage stream.
pub(crate) fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(io::Error::other))
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

async fn dispatch(State(reg): State<Registry>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let rest = path
        .strip_prefix("/v2/")
        .or_else(|| path.strip_prefix("/v2"))
        .unwrap_or("");
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
    let req = Req {
        method: parts.method.clone(),
        query: parts.uri.query().map(str::to_string),
        headers: parts.headers,
    };
    let mut body = Some(body);
    let result = match route {
        Ok(route) => handle(&reg, route, req, &mut body).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(response) => response,
        Err(e) => {
            if let Some(unread) = body.take() {
                drain(body_stream(unread)).await;
            }
            e.into_response()
        }
    }
}

async fn handle(
    reg: &Registry,
    route: Route<'_>,
    req: Req,
    body: &mut Option<Body>,
) -> ApiResult<Response> {
    let s = reg.storage.as_ref();
    let m = req.method.clone();
    match route {
        Route::Base if m == Method::GET || m == Method::HEAD => Ok(json_response(
            StatusCode::OK,
            b"{}".to_vec(),
            m == Method::HEAD,
        )),
        Route::Catalog if m == Method::GET => listing::catalog(s, &req).await,
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
            uploads::start(s, name, &req, body).await
        }
        Route::Upload { name, id } => match m {
            Method::GET | Method::HEAD => uploads::status(s, name, id).await,
            Method::PATCH => uploads::patch(s, name, id, &req, body).await,
            Method::PUT => uploads::finish(s, name, id, &req, body).await,
            Method::DELETE => uploads::cancel(s, name, id).await,
            _ => Err(method_not_allowed(&m)),
        },
        Route::Manifest { name, reference } => match m {
            Method::GET | Method::HEAD => manifests::get(s, name, reference, &req).await,
            Method::PUT => manifests::put(s, name, reference, &req, body).await,
            Method::DELETE => manifests::delete(s, name, reference).await,
            _ => Err(method_not_allowed(&m)),
        },
        _ => Err(method_not_allowed(&m)),
    }
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
