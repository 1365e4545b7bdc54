//! Counting the requests sent to S3.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use serde::Serialize;

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
pub(super) struct CountingConnector(pub(super) Arc<RequestCounts>);

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
