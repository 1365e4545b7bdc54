//! The first half of `berth build`: everything that can be decided without
//! running a container, as pure functions over text.
//!
//! - [`dockerfile`] parses a Dockerfile (directives, continuations,
//!   heredocs, exec and shell forms, flags) into instructions with lines.
//! - [`expand`] is Docker's word processing: quotes, escapes and
//!   `$VAR`/`${VAR:-word}` substitution, for the instructions the builder
//!   expands itself.
//! - [`dockerignore`] decides which context files a build may see.
//! - [`plan`] compiles a Dockerfile, build args and a target into stages,
//!   steps and cache keys: the data the executor runs and `--dry-run` prints.
//!
//! Those four touch nothing outside their arguments, so every rule is
//! unit-tested on strings: compile, then execute, as BuildKit splits its
//! frontend from its solver. Then [`exec`] runs a plan: base images, RUN in
//! runc over overlayfs (or chroot), COPY/ADD, the layer cache, and the
//! image written into an OCI layout.

use std::fmt;

use serde::Serialize;

pub mod copyflags;
pub mod dockerfile;
pub mod dockerignore;
pub mod exec;
pub mod expand;
pub mod mounts;
pub mod plan;
pub mod platforms;

pub use dockerfile::{parse, Dockerfile, Instruction};
pub use dockerignore::DockerIgnore;
pub use plan::{plan, Plan, PlanOptions};

/// An error in a Dockerfile, a `.dockerignore` or the build options,
/// rendered as Docker does: `Dockerfile:LINE: INSTRUCTION: message`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BuildError {
    /// The file the error is in (`Dockerfile`, `.dockerignore`, or the
    /// `-f` name); empty for errors in the options themselves.
    pub file: String,
    /// 1-based line, when the error belongs to one.
    pub line: Option<usize>,
    /// The instruction keyword (`COPY`), upper case, when there is one.
    pub instruction: Option<String>,
    pub message: String,
}

impl BuildError {
    /// An error at a line of the Dockerfile.
    pub fn at(line: usize, instruction: Option<&str>, message: impl Into<String>) -> BuildError {
        BuildError {
            file: "Dockerfile".into(),
            line: Some(line),
            instruction: instruction.map(str::to_ascii_uppercase),
            message: message.into(),
        }
    }

    /// An error in the build options (`--target`, `--platform`, ...).
    pub fn options(message: impl Into<String>) -> BuildError {
        BuildError {
            file: String::new(),
            line: None,
            instruction: None,
            message: message.into(),
        }
    }

    /// The same error, naming another file (the `-f` name).
    pub fn in_file(mut self, file: &str) -> BuildError {
        if !self.file.is_empty() {
            self.file = file.to_string();
        }
        self
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (false, Some(line)) => write!(f, "{}:{line}: ", self.file)?,
            (false, None) => write!(f, "{}: ", self.file)?,
            (true, _) => {}
        }
        if let Some(instruction) = &self.instruction {
            write!(f, "{instruction}: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {}

/// Something worth telling the user that does not stop the build (as
/// Docker's build checks and "build-args were not consumed" warnings).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Warning {
    /// 1-based line of the Dockerfile, when the warning belongs to one.
    pub line: Option<usize>,
    /// A short stable name, as Docker's build checks have (`MaintainerDeprecated`).
    pub check: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {} ({})", self.message, self.check),
            None => write!(f, "{} ({})", self.message, self.check),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_render_like_docker() {
        let e = BuildError::at(3, Some("copy"), "requires at least two arguments");
        assert_eq!(
            e.to_string(),
            "Dockerfile:3: COPY: requires at least two arguments"
        );
        assert_eq!(
            BuildError::at(1, None, "unknown instruction: FORM")
                .in_file("build/app.Dockerfile")
                .to_string(),
            "build/app.Dockerfile:1: unknown instruction: FORM"
        );
        assert_eq!(
            BuildError::options("target stage \"x\" not found").to_string(),
            "target stage \"x\" not found"
        );
    }
}
