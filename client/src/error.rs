//! Client errors. Each message is one line that says what went wrong and,
//! where we can tell, what the user should do about it.

use std::io;

use berth_oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid image reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{registry}: authentication required or refused ({detail}); run `berth login {registry}` (or `docker login`) with valid credentials")]
    Unauthorized { registry: String, detail: String },
    #[error(
        "{registry}: access denied to {what} ({detail}); the account lacks the right to do this"
    )]
    Denied {
        registry: String,
        what: String,
        detail: String,
    },
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{registry}: TLS failed ({detail}); if the registry uses a private CA pass --ca-file, or mark it insecure with --insecure if it speaks plain HTTP")]
    Tls { registry: String, detail: String },
    #[error(
        "{registry}: cannot connect ({detail}); check the address and that the registry is running"
    )]
    Connect { registry: String, detail: String },
    #[error("{registry}: {status} on {action}: {detail}")]
    Registry {
        registry: String,
        action: String,
        status: u16,
        detail: String,
    },
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual}; the data was not written"
    )]
    DigestMismatch {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}; the data was not written")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("malformed {what}: {detail}")]
    Malformed { what: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn malformed(what: impl Into<String>, detail: impl ToString) -> Error {
        Error::Malformed {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Error {
        Error::NotFound { what: what.into() }
    }

    /// Whether trying again later may succeed (connection errors, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } => true,
            Error::Registry { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Lets a `Result<_, io::Error>` pick up context in one call.
pub trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, io::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
