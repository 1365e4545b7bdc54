//! What the registry's HTTP API tests share: an in-memory registry and one
//! way to send it a request and read the whole reply.

#![allow(dead_code)] // each test file uses its own part of this

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use berth_registry::Registry;
use berth_storage::{Digest, MemoryStorage};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub fn app() -> Router {
    Registry::new(Arc::new(MemoryStorage::new())).router()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The header's value, or "" when absent.
    pub fn header_str(&self, name: &str) -> &str {
        self.header(name).unwrap_or("")
    }

    /// The first error's code; the body must be the spec's JSON.
    pub fn error_code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).expect("JSON error body");
        v["errors"][0]["code"].as_str().unwrap_or("").to_string()
    }

    /// (status, first error's code, its message); empty strings when the body
    /// is not the spec's JSON.
    pub fn error(&self) -> (StatusCode, String, String) {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        let e = &v["errors"][0];
        (
            self.status,
            e["code"].as_str().unwrap_or("").to_string(),
            e["message"].as_str().unwrap_or("").to_string(),
        )
    }
}

pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let response = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

/// A blob pushed in one POST; panics unless 201.
pub async fn push_blob(app: &Router, repo: &str, data: &[u8]) -> Digest {
    let d = Digest::sha256_of(data);
    let uri = format!("/v2/{repo}/blobs/uploads/?digest={d}");
    let r = call(app, "POST", &uri, &[], data.to_vec()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    d
}
