//! Operator endpoints and switches: `/healthz`, `/readyz`, read-only mode and
//! rules a config reload replaces while serving.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::Response;
use berth_storage::Digest;

use crate::error::{Code, RegistryError};
use crate::{bytes_response, Registry};

/// How long `/readyz` waits for the storage before it answers 503: a load
/// balancer's probe must get an answer, not hang with a stuck bucket.
pub const READINESS_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /healthz`: the process is up and serving HTTP. Touches nothing else,
/// so an orchestrator never restarts a replica for a storage outage.
pub(crate) async fn healthz() -> Response {
    bytes_response(StatusCode::OK, "text/plain", "ok\n".into(), false)
}

/// `GET /readyz`: the storage answers. One bounded lookup of the empty blob's
/// size (a `stat` on disk, one `HEAD` on S3); whether it exists does not
/// matter, only that the storage replied in time.
pub(crate) async fn readyz(State(reg): State<Registry>) -> Response {
    let empty_blob = Digest::sha256_of(b"");
    let probe = reg.storage.blob_size(&empty_blob);
    let (status, text) = match tokio::time::timeout(READINESS_PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".to_string()),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness probe: storage failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: storage failed: {e}\n"),
            )
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READINESS_PROBE_TIMEOUT.as_millis() as u64,
                "readiness probe: storage did not answer in time"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "not ready: storage did not answer within {} ms\n",
                    READINESS_PROBE_TIMEOUT.as_millis()
                ),
            )
        }
    };
    bytes_response(status, "text/plain", text.into(), false)
}

/// Read-only (maintenance) mode, shared by every clone of the registry so it
/// can be switched while serving.
#[derive(Clone, Default, Debug)]
pub struct ReadOnly(Arc<AtomicBool>);

impl ReadOnly {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Refuse a write while read-only. Reads (GET, HEAD) always pass.
    pub(crate) fn check(&self, method: &Method) -> Result<(), RegistryError> {
        if !self.is_on() || *method == Method::GET || *method == Method::HEAD {
            return Ok(());
        }
        Err(RegistryError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unsupported,
            format!(
                "this registry is read-only (maintenance mode): {method} is refused, pulls work; retry the push once an operator turns read-only mode off"
            ),
        ))
    }
}

/// Rules a config reload (SIGHUP) may replace while serving, shared by every
/// clone. A request uses the rules current when it looked, whole: never half
/// of the old file and half of the new.
#[derive(Debug)]
pub struct Reloadable<T>(Arc<std::sync::RwLock<Arc<T>>>);

impl<T> Clone for Reloadable<T> {
    fn clone(&self) -> Self {
        Reloadable(self.0.clone())
    }
}

impl<T: Default> Default for Reloadable<T> {
    fn default() -> Self {
        Reloadable::new(T::default())
    }
}

impl<T> Reloadable<T> {
    pub fn new(rules: T) -> Reloadable<T> {
        Reloadable(Arc::new(std::sync::RwLock::new(Arc::new(rules))))
    }

    /// The rules in force now.
    pub fn current(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Put new rules in force for every request that starts from now on.
    pub fn replace(&self, rules: T) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
    }
}
