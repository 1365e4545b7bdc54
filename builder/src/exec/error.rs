//! Why a build stopped. Every variant's message is what `berth build`
//! prints, so the text stays as users (and tests/cli_messages.rs) know it.

use std::io;
use std::sync::Arc;

use crate::BuildError;

/// An execution error, ready to show the user.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// A file-system operation on the host (in the cache, a scratch
    /// directory, the build context) failed; `what` names the path or task.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// An error that belongs to a Dockerfile instruction: bad input found
    /// while running it (a `--chown` user, a missing secret), or a plan
    /// error; rendered `Dockerfile:LINE: INSTRUCTION: message`.
    #[error("{0}")]
    Dockerfile(BuildError),
    /// A RUN step's process ran and exited with a non-zero status (128 +
    /// the signal when killed by one). `at` locates the step; its message
    /// is empty, so it renders as the `Dockerfile:LINE: RUN: ` prefix.
    #[error("{at}process {command:?} did not complete successfully: exit code: {code}")]
    RunFailed {
        at: BuildError,
        command: String,
        code: i32,
    },
    /// The container runtime could not run a step (runc failed to start,
    /// the overlay for it could not be mounted).
    #[error("{what}: {source}")]
    Runtime {
        what: String,
        #[source]
        source: io::Error,
    },
    /// A registry or OCI layout operation failed.
    #[error(transparent)]
    Client(#[from] berth_client::Error),
    /// A base image could not be pulled.
    #[error("cannot pull the base image {reference}: {source}")]
    Pull {
        reference: String,
        #[source]
        source: berth_client::Error,
    },
    /// A pulled image or layer is not what its manifest and config say.
    #[error("{0}")]
    InvalidImage(String),
    /// JSON that could not be read or written; `what` names the document.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A `--cache-from` reference that is not a build cache.
    #[error("{0}")]
    NotACache(String),
    /// Pushing the cache to `--cache-to REF` failed.
    #[error("--cache-to {reference}: {source}")]
    CacheExport {
        reference: String,
        #[source]
        source: Box<ExecError>,
    },
    /// The multi-platform image index could not be made (a platform
    /// that does not parse).
    #[error("{0}")]
    InvalidOutput(String),
    /// This host cannot build: not root, or the isolation asked for with
    /// `BERTH_BUILD_ISOLATION` is not available.
    #[error("{0}")]
    Host(String),
    /// A broken invariant or a panicked worker thread: a bug in Berth.
    #[error("{0}")]
    Internal(String),
    /// The error of a stage another platform's build ran (the stages were
    /// the same, so they ran once and share the outcome).
    #[error(transparent)]
    Shared(Arc<ExecError>),
}

pub(super) type R<T> = Result<T, ExecError>;

/// Name what an I/O error was doing (`cannot create /x: No such file ...`).
pub(super) trait IoContext<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> R<T>;
    /// The same, as the container runtime's failure.
    fn runtime_context(self, what: impl FnOnce() -> String) -> R<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn with_context(self, what: impl FnOnce() -> String) -> R<T> {
        self.map_err(|source| ExecError::Io {
            what: what(),
            source,
        })
    }

    fn runtime_context(self, what: impl FnOnce() -> String) -> R<T> {
        self.map_err(|source| ExecError::Runtime {
            what: what(),
            source,
        })
    }
}

/// A JSON error about `what` (for `map_err`).
pub(super) fn json_error(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> ExecError {
    let what = what.into();
    move |source| ExecError::Json { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_their_wording() {
        let at = BuildError::at(4, Some("run"), "");
        let failed = ExecError::RunFailed {
            at,
            command: "/bin/sh -c false".into(),
            code: 1,
        };
        assert_eq!(
            failed.to_string(),
            "Dockerfile:4: RUN: process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
        );
        let io: io::Result<()> = Err(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(
            io.with_context(|| "cannot create /x".into())
                .unwrap_err()
                .to_string(),
            "cannot create /x: entity not found"
        );
        let shared = ExecError::Shared(Arc::new(ExecError::Internal("stage 1 panicked".into())));
        assert_eq!(shared.to_string(), "stage 1 panicked");
        let export = ExecError::CacheExport {
            reference: "r/c".into(),
            source: Box::new(ExecError::NotACache("x".into())),
        };
        assert_eq!(export.to_string(), "--cache-to r/c: x");
    }
}
