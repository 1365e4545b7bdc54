//! One error type for the crate; every variant names the file (and key or host) it is about,
//! because a deploy config spread over dozens of YAML files is useless to debug otherwise.

use std::fmt;
use std::path::PathBuf;

/// One thing wrong with an input, at a dotted key path such as `services.web.ports[0]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

fn bullet_list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  - {p}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // Not named `source`: thiserror would make it the error's source, and the
    // chain printed with it would say the OS error twice.
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },

    /// YAML syntax or shape errors; `message` already carries line and column.
    #[error("{}: {message}", path.display())]
    Yaml { path: PathBuf, message: String },

    #[error("{}: {}", path.display(), problem)]
    Inventory { path: PathBuf, problem: Problem },

    #[error("{}: {key}: {message}", file.display())]
    Template {
        file: PathBuf,
        key: String,
        message: String,
    },

    #[error("--limit {pattern:?}: {message}")]
    Limit { pattern: String, message: String },

    /// The app file is wrong regardless of host: all problems are listed at once so a user
    /// fixes them in one round.
    #[error("{}: invalid app file:{}", file.display(), bullet_list(problems))]
    InvalidApp {
        file: PathBuf,
        problems: Vec<Problem>,
    },

    /// The app file is fine but does not work out on this host with its variables
    /// (e.g. two containers publish the same port, an address outside the host's subnet).
    #[error("host {host}: invalid desired state (app file {}):{}", file.display(), bullet_list(problems))]
    InvalidHost {
        host: String,
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
