//! Dockerfile parser: text in, instructions with line numbers out.
//!
//! It follows the Dockerfile reference and BuildKit's parser:
//! - parser directives (`# syntax=`, `# escape=`, `# check=`) only at the
//!   very top; the first comment, blank line or instruction ends them;
//! - comments are whole lines starting with `#` (leading whitespace
//!   allowed); a `#` anywhere else is text;
//! - the escape character at the end of a line (trailing blanks allowed)
//!   continues the instruction on the next line; comment lines and empty
//!   lines inside a continuation are skipped (the latter with a warning, as
//!   BuildKit gives);
//! - RUN, COPY and ADD may carry heredocs (`<<EOF`, `<<-EOF` stripping
//!   leading tabs, `<<"EOF"`/`<<'EOF'` disabling expansion, several per
//!   instruction, read in order after the instruction's line);
//! - arguments in JSON array form are the exec form; anything that is not a
//!   valid JSON array of strings is the shell form, as in Docker;
//! - `--flag[=value]` words right after the keyword are the instruction's
//!   flags, checked against what that instruction accepts.
//!
//! Values stay as written (quotes, `$VAR`): expansion needs the build args
//! and ENV in scope at each point, which is the planner's job.
//!
//! The parts: `lexer` (directives, continuations, heredocs), `flags`, and
//! `instructions` (one parse function per instruction).

mod flags;
mod instructions;
mod lexer;

use serde::Serialize;

use crate::{BuildError, Warning};
use instructions::parse_instruction;
pub use instructions::{json_array, parse_duration};
use lexer::{heredoc_markers, parse_directives, read_heredoc, split_keyword, strip_continuation};

/// A parsed Dockerfile.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    pub instructions: Vec<Instruction>,
    /// Things BuildKit warns about while parsing (empty continuation lines).
    pub warnings: Vec<Warning>,
}

/// The parser directives at the top of the file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Directives {
    /// `# syntax=docker/dockerfile:1`: recorded, not acted on (Berth always
    /// uses its own parser, which follows the current stable syntax).
    pub syntax: Option<String>,
    /// `\` unless `# escape=`` ` ``.
    pub escape: char,
    /// `# check=...`, recorded as written.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Directives {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// One instruction, with where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Instruction {
    /// The 1-based line the instruction starts on.
    pub line: usize,
    /// The last line it uses (continuations and heredocs included).
    pub end_line: usize,
    /// Upper case: `COPY`.
    pub keyword: String,
    /// The instruction as one line, continuations joined (heredoc bodies
    /// left out): what Docker shows as the step and in the image history.
    pub source: String,
    /// `--name[=value]` flags, values as written.
    pub flags: Vec<Flag>,
    pub heredocs: Vec<Heredoc>,
    pub command: Command,
}

/// A `--name[=value]` flag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flag {
    pub name: String,
    pub value: Option<String>,
}

/// A here-document attached to an instruction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter, quotes removed (`EOF`).
    pub name: String,
    /// The lines between the instruction and the delimiter, each ending in
    /// a newline; leading tabs already stripped for `<<-`.
    pub body: String,
    /// False when the delimiter was quoted (`<<"EOF"`): no variable
    /// expansion in the body.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped.
    pub strip_tabs: bool,
    /// `3<<EOF` feeds file descriptor 3 of a RUN.
    pub fd: Option<u32>,
}

/// A command line: exec form (JSON array) or shell form (text for the
/// SHELL, `/bin/sh -c` by default).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CommandLine {
    Exec(Vec<String>),
    Shell(String),
}

/// `NAME[=default]` of an ARG, value as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

/// `KEY=value` of ENV and LABEL, both as written (quotes and variables
/// are processed by the planner).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// RUN's arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Run {
    pub command: CommandLine,
    /// `--mount=...` values as written (kept as data for the executor).
    pub mounts: Vec<String>,
    pub network: Option<String>,
    pub security: Option<String>,
    pub devices: Vec<String>,
}

/// COPY's and ADD's arguments (ADD's own flags are in `add`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Copy {
    /// Sources as written; `<<EOF` names a heredoc of the instruction.
    pub sources: Vec<String>,
    pub dest: String,
    /// The arguments were a JSON array (paths with spaces).
    pub json_form: bool,
    /// COPY only: `--from=stage|index|image`.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    /// COPY only.
    pub parents: bool,
    pub exclude: Vec<String>,
    /// ADD only.
    pub add: Option<AddOptions>,
}

/// The flags only ADD has.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct AddOptions {
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    /// `--unpack`; unset means Docker's default (local archives unpack,
    /// URLs do not).
    pub unpack: Option<bool>,
}

/// `HEALTHCHECK [options] CMD ...`; durations in nanoseconds as in Docker's
/// image config, unset when not given (Docker's defaults then apply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Healthcheck {
    pub test: CommandLine,
    pub interval: Option<u64>,
    pub timeout: Option<u64>,
    pub start_period: Option<u64>,
    pub start_interval: Option<u64>,
    pub retries: Option<u32>,
}

/// What an instruction says, by instruction.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Command {
    From {
        image: String,
        /// `AS name`, lower-cased (stage names are case-insensitive).
        stage_name: Option<String>,
        platform: Option<String>,
    },
    Arg {
        args: Vec<ArgDecl>,
    },
    Env {
        vars: Vec<KeyValue>,
        /// Written `ENV KEY value` (deprecated form).
        legacy: bool,
    },
    Label {
        labels: Vec<KeyValue>,
        legacy: bool,
    },
    Run(Run),
    Cmd {
        command: CommandLine,
    },
    Entrypoint {
        command: CommandLine,
    },
    Shell {
        shell: Vec<String>,
    },
    Workdir {
        path: String,
    },
    User {
        user: String,
    },
    Expose {
        ports: Vec<String>,
    },
    Volume {
        paths: Vec<String>,
    },
    Copy(Copy),
    Add(Copy),
    /// `None` is `HEALTHCHECK NONE`.
    Healthcheck {
        check: Option<Healthcheck>,
    },
    StopSignal {
        signal: String,
    },
    OnBuild {
        trigger: Box<Instruction>,
    },
    Maintainer {
        name: String,
    },
}

const KEYWORDS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Parse a Dockerfile. Errors name the line and instruction.
pub fn parse(text: &str) -> Result<Dockerfile, BuildError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // CRLF files parse like LF ones.
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let (directives, first) = parse_directives(&lines)?;
    let escape = directives.escape;
    let mut instructions = Vec::new();
    let mut warnings = Vec::new();
    let mut i = first;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let (mut logical, mut continues) = strip_continuation(trimmed, escape);
        let mut empty_continuation_lines = Vec::new();
        i += 1;
        while continues && i < lines.len() {
            let line = lines[i];
            i += 1;
            if line.trim().is_empty() {
                empty_continuation_lines.push(i);
                continue;
            }
            if line.trim_start().starts_with('#') {
                continue;
            }
            let (part, more) = strip_continuation(line, escape);
            logical.push_str(&part);
            continues = more;
        }
        if !empty_continuation_lines.is_empty() {
            warnings.push(Warning {
                line: Some(start + 1),
                check: "NoEmptyContinuation".into(),
                message: format!(
                    "empty continuation line (line {}): Docker will make this an error; remove the blank line or end the instruction",
                    empty_continuation_lines
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        let logical = logical.trim().to_string();
        let (keyword, rest) = split_keyword(&logical);
        let upper = keyword.to_ascii_uppercase();
        // Heredocs belong to RUN, COPY and ADD (also as ONBUILD triggers);
        // their bodies follow the instruction's last line.
        let heredoc_keyword = if upper == "ONBUILD" {
            split_keyword(rest).0.to_ascii_uppercase()
        } else {
            upper.clone()
        };
        let mut heredocs = Vec::new();
        if matches!(heredoc_keyword.as_str(), "RUN" | "COPY" | "ADD") {
            for marker in heredoc_markers(rest) {
                let (heredoc, next) = read_heredoc(&lines, i, marker)
                    .map_err(|message| BuildError::at(start + 1, Some(&upper), message))?;
                heredocs.push(heredoc);
                i = next;
            }
        }
        let instruction = parse_instruction(&logical, start + 1, i, heredocs, escape)?;
        instructions.push(instruction);
    }
    Ok(Dockerfile {
        directives,
        instructions,
        warnings,
    })
}

#[cfg(test)]
mod tests;
