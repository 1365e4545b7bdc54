//! Why connecting to a Docker host or one of its API calls failed.
//!
//! Typed so callers can tell an unreachable host (recaps count it apart from a failure)
//! from a call Docker refused, without reading message text; the messages themselves say
//! what was done, on which endpoint, and Docker's own words, as before.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The API client could not be set up for the endpoint (e.g. an unusable address or
    /// unreadable TLS files).
    #[error("cannot connect to {endpoint}: {message}")]
    Connect { endpoint: String, message: String },

    /// The inventory's TLS settings for a `tcp://` endpoint are incomplete or unsupported.
    #[error("{endpoint}: {message}")]
    TlsSettings { endpoint: String, message: String },

    /// The SSH tunnel of an `ssh://` endpoint did not open; the message names the host.
    #[error("{0}")]
    SshTunnel(String),

    /// The daemon did not answer the first call (API version negotiation) in time.
    #[error("{endpoint} did not answer within {}s", .timeout.as_secs())]
    NoAnswer { endpoint: String, timeout: Duration },

    /// The first call failed: nothing listens there, or TLS or the protocol is wrong.
    #[error("{endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },

    /// Docker answered a call with an error status; `message` is Docker's own, which names
    /// the container, port or address at fault.
    #[error("{what}: {message} (HTTP {status})")]
    Api {
        what: String,
        status: u16,
        message: String,
    },

    /// An error inside a streamed answer (an image pull's progress).
    #[error("{what}: {message}")]
    Stream { what: String, message: String },

    /// A call got no answer within the request timeout.
    #[error("{what}: the Docker API did not answer in time")]
    CallTimeout { what: String },

    /// A call failed on the way (connection dropped, unreadable answer), with its causes.
    #[error("{what}: {message}")]
    Transport { what: String, message: String },

    /// A container's secret files could not be packed for upload.
    #[error("{0}")]
    Secrets(String),
}

impl EngineError {
    /// The host was never reached, so nothing was done there: recaps count it as
    /// unreachable rather than failed.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            EngineError::Connect { .. }
                | EngineError::TlsSettings { .. }
                | EngineError::SshTunnel(_)
                | EngineError::NoAnswer { .. }
                | EngineError::Unreachable { .. }
        )
    }

    /// The HTTP status, when Docker answered with an error status.
    pub fn status(&self) -> Option<u16> {
        match self {
            EngineError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Plans, reports and action results carry errors as text: lets `?` hand an engine error
/// to code that returns `Result<_, String>`.
impl From<EngineError> for String {
    fn from(error: EngineError) -> String {
        error.to_string()
    }
}

/// A failed Engine API call, said in words: what was done, and Docker's own message.
pub(crate) fn api_error(what: &str, err: bollard::errors::Error) -> EngineError {
    use bollard::errors::Error as E;
    let what = what.to_string();
    match err {
        E::DockerResponseServerError {
            status_code,
            message,
        } => EngineError::Api {
            what,
            status: status_code,
            message,
        },
        E::DockerStreamError { error } => EngineError::Stream {
            what,
            message: error,
        },
        E::RequestTimeoutError => EngineError::CallTimeout { what },
        other => EngineError::Transport {
            what,
            message: with_causes(&other),
        },
    }
}

/// An error with its causes (`client error (SendRequest): ...: invalid peer certificate`):
/// the transport's top-level message alone rarely says what went wrong.
pub(crate) fn with_causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_as_before() {
        let refused = api_error(
            "starting web",
            bollard::errors::Error::DockerResponseServerError {
                status_code: 409,
                message: "port is already allocated".into(),
            },
        );
        assert_eq!(
            refused.to_string(),
            "starting web: port is already allocated (HTTP 409)"
        );
        assert_eq!(refused.status(), Some(409));
        assert!(!refused.is_unreachable());
        let slow = api_error("pulling x", bollard::errors::Error::RequestTimeoutError);
        assert_eq!(
            slow.to_string(),
            "pulling x: the Docker API did not answer in time"
        );
        let gone = EngineError::NoAnswer {
            endpoint: "tcp://h:2375".into(),
            timeout: Duration::from_secs(10),
        };
        assert_eq!(gone.to_string(), "tcp://h:2375 did not answer within 10s");
        assert!(gone.is_unreachable());
    }
}
