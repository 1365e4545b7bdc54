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

use serde::Serialize;

use crate::expand::{expand_word, split_words};
use crate::{BuildError, Warning};

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

/// Read the directives at the top; returns them and the index of the first
/// line that is not one.
fn parse_directives(lines: &[&str]) -> Result<(Directives, usize), BuildError> {
    let mut directives = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        // An unknown directive is a comment, and ends the directives.
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            break;
        }
        if seen.contains(&key) {
            return Err(BuildError::at(
                i + 1,
                None,
                format!("only one {key} parser directive can be used"),
            ));
        }
        match key.as_str() {
            "escape" => {
                directives.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(BuildError::at(
                            i + 1,
                            None,
                            format!("invalid escape token {value:?}: use ` or \\"),
                        ))
                    }
                }
            }
            "syntax" => directives.syntax = Some(value),
            _ => directives.check = Some(value),
        }
        seen.push(key);
        i += 1;
    }
    Ok((directives, i))
}

/// `# key = value` → (lower-cased key, value), if the line has that shape.
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.trim_start().strip_prefix('#')?;
    let (key, value) = body.split_once('=')?;
    let key = key.trim_matches([' ', '\t']);
    let value = value.trim_matches([' ', '\t']);
    let mut chars = key.chars();
    let first_is_letter = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_is_letter || !chars.all(|c| c.is_ascii_alphanumeric()) || value.is_empty() {
        return None;
    }
    Some((key.to_ascii_lowercase(), value.to_string()))
}

/// A line without its continuation escape (and the blanks after it), and
/// whether it continues.
fn strip_continuation(line: &str, escape: char) -> (String, bool) {
    let end_trimmed = line.trim_end_matches([' ', '\t']);
    match end_trimmed.strip_suffix(escape) {
        Some(before) => (before.to_string(), true),
        None => (line.to_string(), false),
    }
}

/// The first word and the rest (leading blanks removed).
fn split_keyword(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

/// The heredoc markers among an instruction's words (`<<EOF`, `<<-EOF`,
/// `3<<"EOF"`), in order. BuildKit finds them with `\` as the escape
/// whatever the directive says, so this does too.
fn heredoc_markers(rest: &str) -> Vec<HeredocMarker> {
    split_words(rest, '\\')
        .iter()
        .filter_map(|w| parse_marker(w))
        .collect()
}

struct HeredocMarker {
    name: String,
    expand: bool,
    strip_tabs: bool,
    fd: Option<u32>,
}

fn parse_marker(word: &str) -> Option<HeredocMarker> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let (fd, after) = word.split_at(digits);
    let after = after.strip_prefix("<<")?;
    let (strip_tabs, raw_name) = match after.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, after),
    };
    // `<<<` is a here-string, and `<<` alone names nothing.
    if raw_name.is_empty() || raw_name.contains('<') {
        return None;
    }
    let name = expand_word(raw_name, '\\', &|_| None).ok()?;
    if name.is_empty() {
        return None;
    }
    // Any quoting of the delimiter turns expansion off, as in a shell.
    let quoted = raw_name.contains(['"', '\'']);
    Some(HeredocMarker {
        name,
        expand: !quoted,
        strip_tabs,
        fd: if fd.is_empty() { None } else { fd.parse().ok() },
    })
}

/// Read a heredoc's body starting at line index `from`; returns it and the
/// index after its delimiter line.
fn read_heredoc(
    lines: &[&str],
    from: usize,
    marker: HeredocMarker,
) -> Result<(Heredoc, usize), String> {
    let mut body = String::new();
    let mut i = from;
    while i < lines.len() {
        let line = if marker.strip_tabs {
            lines[i].trim_start_matches('\t')
        } else {
            lines[i]
        };
        i += 1;
        if line == marker.name {
            return Ok((
                Heredoc {
                    name: marker.name,
                    body,
                    expand: marker.expand,
                    strip_tabs: marker.strip_tabs,
                    fd: marker.fd,
                },
                i,
            ));
        }
        body.push_str(line);
        body.push('\n');
    }
    Err(format!(
        "unterminated heredoc: no line {:?} ends the <<{} started here",
        marker.name, marker.name
    ))
}

/// Parse one logical line (continuations joined) into an instruction.
fn parse_instruction(
    logical: &str,
    line: usize,
    next_index: usize,
    heredocs: Vec<Heredoc>,
    escape: char,
) -> Result<Instruction, BuildError> {
    let (keyword, rest) = split_keyword(logical);
    let upper = keyword.to_ascii_uppercase();
    if !KEYWORDS.contains(&upper.as_str()) {
        let hint = suggest(&upper)
            .map(|k| format!(" (did you mean {k}?)"))
            .unwrap_or_default();
        return Err(BuildError::at(
            line,
            None,
            format!("unknown instruction: {keyword}{hint}"),
        ));
    }
    let err = |message: String| BuildError::at(line, Some(&upper), message);
    // The last line used: the heredocs' end, or the logical line's end.
    let end_line = next_index.max(line);
    if upper == "ONBUILD" {
        if rest.is_empty() {
            return Err(err(
                "requires an instruction to trigger, e.g. ONBUILD COPY . /app".into(),
            ));
        }
        let inner = split_keyword(rest).0.to_ascii_uppercase();
        if matches!(inner.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
            return Err(err(format!("{inner} isn't allowed as an ONBUILD trigger")));
        }
        let trigger = parse_instruction(rest, line, next_index, heredocs.clone(), escape)?;
        return Ok(Instruction {
            line,
            end_line,
            keyword: upper,
            source: logical.to_string(),
            flags: Vec::new(),
            heredocs,
            command: Command::OnBuild {
                trigger: Box::new(trigger),
            },
        });
    }
    let (flags, args) = take_flags(rest, escape).map_err(err)?;
    let flags = Flags::check(&upper, flags).map_err(err)?;
    if args.is_empty() {
        let why = match upper.as_str() {
            "COPY" | "ADD" => "requires at least two arguments: the source(s) and the destination",
            "HEALTHCHECK" => "requires NONE or CMD followed by a command",
            "SHELL" => "requires a JSON array, e.g. SHELL [\"/bin/bash\", \"-c\"]",
            _ => "requires at least one argument",
        };
        return Err(err(why.into()));
    }
    let command = match upper.as_str() {
        "FROM" => {
            let words: Vec<&str> = args.split_whitespace().collect();
            let stage_name = match words.as_slice() {
                [_] => None,
                [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
                    if !valid_stage_name(name) {
                        return Err(err(format!(
                            "invalid name for build stage: {name:?}: a name starts with a letter and holds only letters, digits, '-', '_' and '.'"
                        )));
                    }
                    Some(name.to_ascii_lowercase())
                }
                _ => {
                    return Err(err(
                        "requires either one or three arguments: FROM IMAGE [AS NAME]".into(),
                    ))
                }
            };
            Command::From {
                image: words[0].to_string(),
                stage_name,
                platform: flags.string("platform"),
            }
        }
        "ARG" => {
            let mut decls = Vec::new();
            for word in split_words(args, escape) {
                let (name, default) = match word.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (word.clone(), None),
                };
                if name.is_empty() {
                    return Err(err(format!(
                        "{word:?} has no name: write NAME or NAME=default"
                    )));
                }
                decls.push(ArgDecl { name, default });
            }
            Command::Arg { args: decls }
        }
        "ENV" => {
            let (vars, legacy) = parse_name_values(args, escape).map_err(err)?;
            Command::Env { vars, legacy }
        }
        "LABEL" => {
            let (labels, legacy) = parse_name_values(args, escape).map_err(err)?;
            Command::Label { labels, legacy }
        }
        "RUN" => Command::Run(Run {
            command: command_line(args),
            mounts: flags.list("mount"),
            network: flags.string("network"),
            security: flags.string("security"),
            devices: flags.list("device"),
        }),
        "CMD" => Command::Cmd {
            command: command_line(args),
        },
        "ENTRYPOINT" => Command::Entrypoint {
            command: command_line(args),
        },
        "SHELL" => match json_array(args) {
            Some(shell) if !shell.is_empty() => Command::Shell { shell },
            Some(_) => return Err(err("the JSON array must name a shell".into())),
            None => {
                return Err(err(
                    "requires the arguments in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]"
                        .into(),
                ))
            }
        },
        "WORKDIR" => Command::Workdir {
            path: args.to_string(),
        },
        "USER" => Command::User {
            user: args.to_string(),
        },
        "STOPSIGNAL" => Command::StopSignal {
            signal: args.to_string(),
        },
        "MAINTAINER" => Command::Maintainer {
            name: args.to_string(),
        },
        "EXPOSE" => Command::Expose {
            ports: args.split_whitespace().map(str::to_string).collect(),
        },
        "VOLUME" => {
            let paths = json_array(args)
                .unwrap_or_else(|| args.split_whitespace().map(str::to_string).collect());
            if paths.iter().any(|p| p.trim().is_empty()) {
                return Err(err("a volume cannot be an empty string".into()));
            }
            if paths.is_empty() {
                return Err(err("requires at least one path".into()));
            }
            Command::Volume { paths }
        }
        "COPY" | "ADD" => {
            let (list, json_form) = match json_array(args) {
                Some(list) => (list, true),
                None => (args.split_whitespace().map(str::to_string).collect(), false),
            };
            let Some((dest, sources)) = list.split_last() else {
                return Err(err(
                    "requires at least two arguments: the source(s) and the destination".into(),
                ));
            };
            if sources.is_empty() {
                return Err(err(format!(
                    "requires at least two arguments, but only one was given ({dest:?}): the destination could not be determined"
                )));
            }
            let is_add = upper == "ADD";
            let copy = Copy {
                sources: sources.to_vec(),
                dest: dest.clone(),
                json_form,
                from: flags.string("from"),
                chown: flags.string("chown"),
                chmod: flags.string("chmod"),
                link: flags.boolean("link").map_err(err)?.unwrap_or(false),
                parents: flags.boolean("parents").map_err(err)?.unwrap_or(false),
                exclude: flags.list("exclude"),
                add: if is_add {
                    Some(AddOptions {
                        checksum: flags.string("checksum"),
                        keep_git_dir: flags.boolean("keep-git-dir").map_err(err)?.unwrap_or(false),
                        unpack: flags.boolean("unpack").map_err(err)?,
                    })
                } else {
                    None
                },
            };
            // A heredoc source must have a body, and a body must be used.
            for source in &copy.sources {
                if let Some(marker) = parse_marker(source) {
                    if !heredocs.iter().any(|h| h.name == marker.name) {
                        return Err(err(format!("no heredoc body for {source}")));
                    }
                }
            }
            if is_add {
                Command::Add(copy)
            } else {
                Command::Copy(copy)
            }
        }
        "HEALTHCHECK" => parse_healthcheck(args, &flags).map_err(err)?,
        _ => unreachable!("every keyword in KEYWORDS is handled above"),
    };
    Ok(Instruction {
        line,
        end_line,
        keyword: upper,
        source: logical.to_string(),
        flags: flags.all,
        heredocs,
        command,
    })
}

fn parse_healthcheck(args: &str, flags: &Flags) -> Result<Command, String> {
    let (kind, rest) = split_keyword(args);
    match kind.to_ascii_uppercase().as_str() {
        "NONE" => {
            if !rest.is_empty() {
                return Err("HEALTHCHECK NONE takes no arguments".into());
            }
            if !flags.all.is_empty() {
                return Err("HEALTHCHECK NONE takes no options".into());
            }
            Ok(Command::Healthcheck { check: None })
        }
        "CMD" => {
            if rest.is_empty() {
                return Err(
                    "CMD needs a command to run, e.g. HEALTHCHECK CMD curl -f http://localhost/"
                        .into(),
                );
            }
            let duration = |name: &str| -> Result<Option<u64>, String> {
                let Some(text) = flags.string(name) else {
                    return Ok(None);
                };
                let ns = parse_duration(&text).ok_or_else(|| {
                    format!("--{name}={text:?} is not a duration: use e.g. 30s, 1m30s, 500ms")
                })?;
                // Docker refuses anything shorter than a millisecond but 0
                // (which means "the default").
                if ns != 0 && ns < 1_000_000 {
                    return Err(format!("--{name}={text:?} cannot be less than 1ms"));
                }
                Ok(Some(ns))
            };
            let retries = match flags.string("retries") {
                None => None,
                Some(text) => Some(text.parse::<u32>().map_err(|_| {
                    format!("--retries={text:?} must be a whole number, 0 or more")
                })?),
            };
            Ok(Command::Healthcheck {
                check: Some(Healthcheck {
                    test: command_line(rest),
                    interval: duration("interval")?,
                    timeout: duration("timeout")?,
                    start_period: duration("start-period")?,
                    start_interval: duration("start-interval")?,
                    retries,
                }),
            })
        }
        other => Err(format!(
            "unknown type {other:?} in HEALTHCHECK (try CMD or NONE)"
        )),
    }
}

/// A Go duration (`1m30s`, `1.5h`, `500ms`, `0`) in nanoseconds.
pub fn parse_duration(text: &str) -> Option<u64> {
    if text == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total < u64::MAX as f64).then_some(total as u64)
}

/// Exec form if the text is a JSON array of strings, else shell form.
fn command_line(args: &str) -> CommandLine {
    match json_array(args) {
        Some(list) => CommandLine::Exec(list),
        None => CommandLine::Shell(args.to_string()),
    }
}

/// The strings of a JSON array, if the whole text is one. Anything else
/// (`[oops`, `["a", 1]`, `[] x`) is not, and callers fall back to the shell
/// form as Docker does.
pub fn json_array(text: &str) -> Option<Vec<String>> {
    if !text.starts_with('[') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// ENV/LABEL: `K=V K2="v 2"`, or the legacy `K value with spaces`.
fn parse_name_values(args: &str, escape: char) -> Result<(Vec<KeyValue>, bool), String> {
    let words = split_words(args, escape);
    let first_has_equals = words.first().is_some_and(|w| w.contains('='));
    if !first_has_equals {
        // Legacy form: the first word is the name, the rest of the text
        // (spaces and all) the value: `ENV ONE TWO= THREE=world` sets ONE.
        let (key, value) = split_keyword(args);
        if value.is_empty() {
            return Err(format!(
                "{key:?} has no value: write {key}=VALUE (or {key}=\"\" for an empty one)"
            ));
        }
        return Ok((
            vec![KeyValue {
                key: key.to_string(),
                value: value.to_string(),
            }],
            true,
        ));
    }
    let mut pairs = Vec::new();
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(format!(
                "can't find = in {word:?}: each word must be NAME=VALUE"
            ));
        };
        if key.is_empty() {
            return Err(format!("{word:?} has an empty name"));
        }
        pairs.push(KeyValue {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok((pairs, false))
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Split the leading `--flag[=value]` words off an instruction's arguments.
/// `--` alone ends the flags.
fn take_flags(text: &str, escape: char) -> Result<(Vec<Flag>, &str), String> {
    let mut flags = Vec::new();
    let mut rest = text.trim_start();
    while rest.starts_with("--") {
        let end = word_end(rest, escape);
        let word = &rest[..end];
        rest = rest[end..].trim_start();
        if word == "--" {
            break;
        }
        let body = &word[2..];
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (body, None),
        };
        if name.is_empty() {
            return Err(format!("malformed flag {word:?}"));
        }
        flags.push(Flag {
            name: name.to_string(),
            value,
        });
    }
    Ok((flags, rest))
}

/// Byte length of the first word of `text`, quotes and escapes respected.
fn word_end(text: &str, escape: char) -> usize {
    let mut quote: Option<char> = None;
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c.is_whitespace() => return at,
            None if c == escape => {
                chars.next();
            }
            None if c == '"' || c == '\'' => quote = Some(c),
            None => {}
        }
    }
    text.len()
}

/// An instruction's flags, checked against what it accepts.
struct Flags {
    all: Vec<Flag>,
}

#[derive(PartialEq)]
enum FlagKind {
    Text,
    Bool,
    /// May be given more than once.
    List,
}

impl Flags {
    fn check(keyword: &str, all: Vec<Flag>) -> Result<Flags, String> {
        use FlagKind::*;
        let accepted: &[(&str, FlagKind)] = match keyword {
            "FROM" => &[("platform", Text)],
            "RUN" => &[
                ("mount", List),
                ("network", Text),
                ("security", Text),
                ("device", List),
            ],
            "COPY" => &[
                ("from", Text),
                ("chown", Text),
                ("chmod", Text),
                ("link", Bool),
                ("parents", Bool),
                ("exclude", List),
            ],
            "ADD" => &[
                ("chown", Text),
                ("chmod", Text),
                ("link", Bool),
                ("checksum", Text),
                ("keep-git-dir", Bool),
                ("unpack", Bool),
                ("exclude", List),
            ],
            "HEALTHCHECK" => &[
                ("interval", Text),
                ("timeout", Text),
                ("start-period", Text),
                ("start-interval", Text),
                ("retries", Text),
            ],
            _ => &[],
        };
        for (n, flag) in all.iter().enumerate() {
            let Some((_, kind)) = accepted.iter().find(|(name, _)| *name == flag.name) else {
                let known: Vec<String> = accepted.iter().map(|(n, _)| format!("--{n}")).collect();
                return Err(if known.is_empty() {
                    format!("unknown flag: --{} ({keyword} takes no flags)", flag.name)
                } else {
                    format!("unknown flag: --{} (use {})", flag.name, known.join(", "))
                });
            };
            if *kind == Text && flag.value.is_none() {
                return Err(format!("missing a value on flag: --{}", flag.name));
            }
            if *kind != List && all[..n].iter().any(|f| f.name == flag.name) {
                return Err(format!("duplicate flag specified: --{}", flag.name));
            }
        }
        Ok(Flags { all })
    }

    fn string(&self, name: &str) -> Option<String> {
        self.all
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.value.clone())
    }

    fn list(&self, name: &str) -> Vec<String> {
        self.all
            .iter()
            .filter(|f| f.name == name)
            .filter_map(|f| f.value.clone())
            .collect()
    }

    /// `--link` is true; `--link=false` false; unset is None.
    fn boolean(&self, name: &str) -> Result<Option<bool>, String> {
        let Some(flag) = self.all.iter().find(|f| f.name == name) else {
            return Ok(None);
        };
        match flag.value.as_deref() {
            None => Ok(Some(true)),
            // The words Go's strconv.ParseBool accepts.
            Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(Some(true)),
            Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(Some(false)),
            Some(other) => Err(format!("--{name}={other:?}: expected true or false")),
        }
    }
}

/// The keyword closest to a misspelt one, if it is close (`FORM` → `FROM`).
fn suggest(word: &str) -> Option<&'static str> {
    KEYWORDS
        .iter()
        .map(|k| (edit_distance(word, k), *k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Instruction {
        let df = parse(text).unwrap();
        assert_eq!(df.instructions.len(), 1, "{:?}", df.instructions);
        df.instructions.into_iter().next().unwrap()
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn shell(i: &Instruction) -> &str {
        match &i.command {
            Command::Run(Run {
                command: CommandLine::Shell(s),
                ..
            }) => s,
            other => panic!("not a shell RUN: {other:?}"),
        }
    }

    fn copy(i: &Instruction) -> &Copy {
        match &i.command {
            Command::Copy(c) | Command::Add(c) => c,
            other => panic!("not COPY/ADD: {other:?}"),
        }
    }

    #[test]
    fn directives_only_at_the_top() {
        let df = parse("# syntax=docker/dockerfile:1\n#ESCAPE = `\n\nFROM x\n").unwrap();
        assert_eq!(df.directives.syntax.as_deref(), Some("docker/dockerfile:1"));
        assert_eq!(df.directives.escape, '`');
        // After a comment, a directive is a comment.
        let df = parse("# About my dockerfile\n# escape=`\nFROM x\n").unwrap();
        assert_eq!(df.directives.escape, '\\');
        // An unknown directive is a comment and ends the directives.
        let df = parse("# unknowndirective=value\n# syntax=value\nFROM x\n").unwrap();
        assert_eq!(df.directives.syntax, None);
        // After an instruction, too.
        let df = parse("FROM x\n# escape=`\n").unwrap();
        assert_eq!(df.directives.escape, '\\');
        // Whitespace variations from the reference.
        for line in [
            "#escape=`",
            "# escape =`",
            "#\tescape= `",
            "# escape = `",
            "#\t  eScApE=`",
        ] {
            let df = parse(&format!("{line}\nFROM x\n")).unwrap();
            assert_eq!(df.directives.escape, '`', "{line}");
        }
        assert!(error("# escape=\\\n# escape=`\nFROM x").contains("Dockerfile:2: only one escape"));
        assert!(error("# escape=x\nFROM x").contains("invalid escape token"));
        // A byte-order mark does not hide a directive.
        let df = parse("\u{feff}# escape=`\nFROM x").unwrap();
        assert_eq!(df.directives.escape, '`');
    }

    #[test]
    fn comments_and_whitespace() {
        let df = parse(
            "  # indented comment\n\n   FROM x\nRUN echo 'we are running some # of cool things'\n",
        )
        .unwrap();
        assert_eq!(df.instructions.len(), 2);
        assert_eq!(df.instructions[0].line, 3);
        assert_eq!(
            shell(&df.instructions[1]),
            "echo 'we are running some # of cool things'"
        );
        // Keywords are case-insensitive.
        let i = one("run echo hi");
        assert_eq!(i.keyword, "RUN");
        // CRLF line endings.
        let df = parse("FROM x\r\nRUN a \\\r\n  b\r\n").unwrap();
        assert_eq!(shell(&df.instructions[1]), "a   b");
    }

    #[test]
    fn continuations_join_lines_and_skip_comments() {
        // The reference: a comment inside a continuation is removed.
        let i = one("RUN echo hello \\\n# comment\nworld");
        assert_eq!(shell(&i), "echo hello world");
        assert_eq!((i.line, i.end_line), (1, 3));
        // Whitespace on continued lines is kept.
        let i = one("RUN echo \"\\\n     hello\\\n     world\"");
        assert_eq!(shell(&i), "echo \"     hello     world\"");
        // Blanks after the escape still continue the line.
        let i = one("RUN a \\  \t\nb");
        assert_eq!(shell(&i), "a b");
        // A continuation at the end of the file just ends.
        let i = one("RUN a \\");
        assert_eq!(shell(&i), "a");
    }

    #[test]
    fn empty_continuation_lines_are_skipped_with_a_warning() {
        let df = parse("FROM x\nRUN a \\\n\n  b\n").unwrap();
        assert_eq!(shell(&df.instructions[1]), "a   b");
        assert_eq!(df.warnings.len(), 1);
        assert_eq!(df.warnings[0].line, Some(2));
        assert!(
            df.warnings[0].message.contains("line 3"),
            "{:?}",
            df.warnings
        );
    }

    #[test]
    fn escape_directive_on_windows_paths() {
        // The reference's failing example: with `\` the `c:\\` ends in an
        // escape, so the next line joins the COPY.
        let df =
            parse("FROM microsoft/nanoserver\nCOPY testfile.txt c:\\\\\nRUN dir c:\\\n").unwrap();
        assert_eq!(df.instructions.len(), 2);
        let c = copy(&df.instructions[1]);
        assert_eq!(c.sources, vec!["testfile.txt", "c:\\RUN", "dir"]);
        assert_eq!(c.dest, "c:");
        // With the backtick escape, backslashes are just characters.
        let df = parse(
            "# escape=`\n\nFROM microsoft/nanoserver\nCOPY testfile.txt c:\\\nRUN dir c:\\\n",
        )
        .unwrap();
        assert_eq!(df.instructions.len(), 3);
        assert_eq!(copy(&df.instructions[1]).dest, "c:\\");
        assert_eq!(shell(&df.instructions[2]), "dir c:\\");
        // ... and the backtick continues lines.
        let df = parse("# escape=`\nFROM x\nRUN New-Item `\n  C:\\Example\n").unwrap();
        assert_eq!(shell(&df.instructions[1]), "New-Item   C:\\Example");
    }

    #[test]
    fn heredocs() {
        let i = one("RUN <<EOF\napt-get update\napt-get install -y curl\nEOF\n");
        assert_eq!(shell(&i), "<<EOF");
        assert_eq!(i.heredocs.len(), 1);
        assert_eq!(i.heredocs[0].name, "EOF");
        assert_eq!(
            i.heredocs[0].body,
            "apt-get update\napt-get install -y curl\n"
        );
        assert!(i.heredocs[0].expand);
        assert_eq!((i.line, i.end_line), (1, 4));

        // Several in one instruction, read in order.
        let df = parse(
            "FROM alpine\nRUN <<FILE1 cat > file1 && <<FILE2 cat > file2\nI am\nfirst\nFILE1\nI am\nsecond\nFILE2\nRUN echo done\n",
        )
        .unwrap();
        let run = &df.instructions[1];
        assert_eq!(run.heredocs.len(), 2);
        assert_eq!(run.heredocs[0].body, "I am\nfirst\n");
        assert_eq!(run.heredocs[1].body, "I am\nsecond\n");
        assert_eq!(shell(&df.instructions[2]), "echo done");
        assert_eq!(df.instructions[2].line, 9);

        // `<<-` strips leading tabs (not spaces), and from the delimiter too.
        let i = one("COPY <<-EOT /script.sh\n\t\techo \"hello ${FOO}\"\n  two spaces\n\tEOT\n");
        assert_eq!(i.heredocs[0].body, "echo \"hello ${FOO}\"\n  two spaces\n");
        assert!(i.heredocs[0].strip_tabs);
        let c = copy(&i);
        assert_eq!(c.sources, vec!["<<-EOT"]);
        assert_eq!(c.dest, "/script.sh");

        // A quoted delimiter turns expansion off.
        for marker in ["<<\"EOT\"", "<<'EOT'", "<<-\"EOT\""] {
            let i = one(&format!("COPY {marker} /x\nbody\nEOT\n"));
            assert!(!i.heredocs[0].expand, "{marker}");
            assert_eq!(i.heredocs[0].name, "EOT");
        }
        // Comment-looking and instruction-looking lines are body text.
        let i = one("RUN <<EOT bash\n# not a comment\nFROM not-an-instruction\nEOT");
        assert_eq!(
            i.heredocs[0].body,
            "# not a comment\nFROM not-an-instruction\n"
        );
        assert_eq!(shell(&i), "<<EOT bash");
        // File descriptors and here-strings.
        let i = one("RUN 3<<EOF cat /dev/fd/3\nx\nEOF");
        assert_eq!(i.heredocs[0].fd, Some(3));
        let i = one("RUN cat <<<word");
        assert!(i.heredocs.is_empty());
        // Only RUN, COPY and ADD take heredocs.
        let df = parse("FROM x\nCMD cat <<EOF\n").unwrap();
        assert!(df.instructions[1].heredocs.is_empty());
        // ONBUILD triggers may carry them.
        let i = one("ONBUILD RUN <<EOF\necho hi\nEOF");
        assert_eq!(i.heredocs[0].body, "echo hi\n");
    }

    #[test]
    fn unterminated_heredoc_is_an_error() {
        let e = error("FROM x\nRUN <<EOF\necho hi\n");
        assert!(
            e.starts_with("Dockerfile:2: RUN: unterminated heredoc"),
            "{e}"
        );
        let e = error("FROM x\nCOPY <<A <<B /dst\na\nA\nb\n");
        assert!(e.contains("\"B\""), "{e}");
    }

    #[test]
    fn exec_and_shell_forms() {
        let i = one(r#"CMD ["/bin/busybox", "sh"]"#);
        assert_eq!(
            i.command,
            Command::Cmd {
                command: CommandLine::Exec(vec!["/bin/busybox".into(), "sh".into()])
            }
        );
        // Not valid JSON: shell form, as Docker does.
        for text in [
            r#"["c:\windows\system32\tasklist.exe"]"#,
            "[oops",
            r#"["a", 1]"#,
            r#"["a"] b"#,
        ] {
            let i = one(&format!("ENTRYPOINT {text}"));
            assert_eq!(
                i.command,
                Command::Entrypoint {
                    command: CommandLine::Shell(text.into())
                },
                "{text}"
            );
        }
        let i = one(r#"RUN ["c:\\windows\\system32\\tasklist.exe"]"#);
        match i.command {
            Command::Run(Run {
                command: CommandLine::Exec(v),
                ..
            }) => assert_eq!(v, vec!["c:\\windows\\system32\\tasklist.exe"]),
            other => panic!("{other:?}"),
        }
        let i = one("CMD []");
        assert_eq!(
            i.command,
            Command::Cmd {
                command: CommandLine::Exec(vec![])
            }
        );
    }

    #[test]
    fn from_forms() {
        let i = one("FROM --platform=$BUILDPLATFORM golang:1.22 AS Build");
        assert_eq!(
            i.command,
            Command::From {
                image: "golang:1.22".into(),
                stage_name: Some("build".into()),
                platform: Some("$BUILDPLATFORM".into()),
            }
        );
        let i = one("from busybox as base");
        assert!(matches!(i.command, Command::From { stage_name: Some(ref n), .. } if n == "base"));
        assert!(error("FROM a b").contains("FROM: requires either one or three"));
        assert!(error("FROM a AS 1st").contains("invalid name for build stage"));
        assert!(error("FROM").contains("Dockerfile:1: FROM: requires at least one argument"));
        assert!(error("FROM --from=x a").contains("unknown flag: --from"));
    }

    #[test]
    fn arg_env_label() {
        let i = one("ARG A B=2 C=\"x y\"");
        assert_eq!(
            i.command,
            Command::Arg {
                args: vec![
                    ArgDecl {
                        name: "A".into(),
                        default: None
                    },
                    ArgDecl {
                        name: "B".into(),
                        default: Some("2".into())
                    },
                    ArgDecl {
                        name: "C".into(),
                        default: Some("\"x y\"".into())
                    },
                ]
            }
        );
        let i = one("ENV MY_NAME=\"John Doe\" MY_DOG=Rex\\ The\\ Dog \\\n    MY_CAT=fluffy");
        let Command::Env { vars, legacy } = &i.command else {
            panic!()
        };
        assert!(!legacy);
        assert_eq!(
            vars.iter()
                .map(|kv| (kv.key.as_str(), kv.value.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("MY_NAME", "\"John Doe\""),
                ("MY_DOG", "Rex\\ The\\ Dog"),
                ("MY_CAT", "fluffy")
            ]
        );
        // The legacy form takes the whole rest as the value.
        let i = one("ENV ONE TWO= THREE=world");
        assert_eq!(
            i.command,
            Command::Env {
                vars: vec![KeyValue {
                    key: "ONE".into(),
                    value: "TWO= THREE=world".into()
                }],
                legacy: true
            }
        );
        let i = one(r#"LABEL "com.example.vendor"="ACME Incorporated" version=1.0"#);
        let Command::Label { labels, .. } = &i.command else {
            panic!()
        };
        assert_eq!(labels[0].key, "\"com.example.vendor\"");
        assert_eq!(labels[1].value, "1.0");
        assert!(error("ENV A=1 B").contains("ENV: can't find = in \"B\""));
        assert!(error("ENV ALONE").contains("ENV: \"ALONE\" has no value"));
        assert!(error("ARG =x").contains("ARG: \"=x\" has no name"));
        assert!(error("LABEL =x").contains("empty name"));
    }

    #[test]
    fn copy_and_add_flags() {
        let i = one("COPY --from=build --chown=55:mygroup --chmod=644 --link files* /somedir/");
        let c = copy(&i);
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(c.chown.as_deref(), Some("55:mygroup"));
        assert_eq!(c.chmod.as_deref(), Some("644"));
        assert!(c.link);
        assert_eq!(c.sources, vec!["files*"]);
        assert_eq!(c.dest, "/somedir/");
        assert_eq!(i.flags.len(), 4);
        let i = one("COPY --link=false --exclude=*.txt --exclude=*.md --parents hom* /mydir/");
        let c = copy(&i);
        assert!(!c.link && c.parents);
        assert_eq!(c.exclude, vec!["*.txt", "*.md"]);
        let i = one(r#"COPY ["with space.txt", "other", "/dest dir/"]"#);
        let c = copy(&i);
        assert!(c.json_form);
        assert_eq!(c.sources, vec!["with space.txt", "other"]);
        assert_eq!(c.dest, "/dest dir/");
        let i = one("ADD --checksum=sha256:24454f83 --keep-git-dir --unpack=false https://example.com/a.tar.gz /");
        let add = copy(&i).add.clone().unwrap();
        assert_eq!(add.checksum.as_deref(), Some("sha256:24454f83"));
        assert!(add.keep_git_dir);
        assert_eq!(add.unpack, Some(false));
        // Quoted flag values keep their quotes for the planner to process.
        let i = one("COPY --chown=\"app user\" a /b");
        assert_eq!(copy(&i).chown.as_deref(), Some("\"app user\""));

        assert!(error("COPY /only").contains("COPY: requires at least two arguments, but only one"));
        assert!(error("COPY --from=a --from=b x y").contains("duplicate flag specified: --from"));
        assert!(error("ADD --from=a x y").contains("unknown flag: --from"));
        assert!(error("COPY --link=maybe a b").contains("expected true or false"));
        assert!(error("COPY --chown a b").contains("missing a value on flag: --chown"));
        assert!(error("COPY <<EOF /x").contains("unterminated heredoc"));
        assert!(error("WORKDIR --x=1 /a").contains("WORKDIR takes no flags"));
    }

    #[test]
    fn run_flags_are_kept_as_data() {
        let i = one("RUN --mount=type=cache,target=/root/.cache/go-build \\\n  --mount=type=secret,id=aws --network=none --security=insecure go build ./...");
        let Command::Run(run) = &i.command else {
            panic!()
        };
        assert_eq!(
            run.mounts,
            vec![
                "type=cache,target=/root/.cache/go-build",
                "type=secret,id=aws"
            ]
        );
        assert_eq!(run.network.as_deref(), Some("none"));
        assert_eq!(run.security.as_deref(), Some("insecure"));
        assert_eq!(run.command, CommandLine::Shell("go build ./...".into()));
        // `--` ends the flags.
        let i = one("RUN -- --not-a-flag");
        assert_eq!(shell(&i), "--not-a-flag");
        assert!(error("RUN --mount=type=cache").contains("RUN: requires at least one argument"));
    }

    #[test]
    fn other_instructions() {
        let df = parse(
            "FROM x\nSHELL [\"/bin/bash\", \"-c\"]\nWORKDIR /my dir\nUSER app:app\nEXPOSE 80 53/udp\nVOLUME [\"/data\", \"/logs\"]\nVOLUME /a /b\nSTOPSIGNAL SIGQUIT\nMAINTAINER Sven <sven@example.com>\n",
        )
        .unwrap();
        let commands: Vec<&Command> = df.instructions.iter().map(|i| &i.command).collect();
        assert_eq!(
            commands[1],
            &Command::Shell {
                shell: vec!["/bin/bash".into(), "-c".into()]
            }
        );
        assert_eq!(
            commands[2],
            &Command::Workdir {
                path: "/my dir".into()
            }
        );
        assert_eq!(
            commands[3],
            &Command::User {
                user: "app:app".into()
            }
        );
        assert_eq!(
            commands[4],
            &Command::Expose {
                ports: vec!["80".into(), "53/udp".into()]
            }
        );
        assert_eq!(
            commands[5],
            &Command::Volume {
                paths: vec!["/data".into(), "/logs".into()]
            }
        );
        assert_eq!(
            commands[6],
            &Command::Volume {
                paths: vec!["/a".into(), "/b".into()]
            }
        );
        assert_eq!(
            commands[7],
            &Command::StopSignal {
                signal: "SIGQUIT".into()
            }
        );
        assert_eq!(
            commands[8],
            &Command::Maintainer {
                name: "Sven <sven@example.com>".into()
            }
        );
        assert!(error("SHELL /bin/bash -c").contains("SHELL: requires the arguments in JSON form"));
        assert!(error("SHELL []").contains("must name a shell"));
        assert!(error("VOLUME [\"\"]").contains("empty string"));
    }

    #[test]
    fn healthcheck() {
        let i = one("HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s --start-interval=500ms --retries=4 \\\n  CMD curl -f http://localhost/ || exit 1");
        let Command::Healthcheck { check: Some(h) } = &i.command else {
            panic!("{i:?}")
        };
        assert_eq!(
            h.test,
            CommandLine::Shell("curl -f http://localhost/ || exit 1".into())
        );
        assert_eq!(h.interval, Some(300_000_000_000));
        assert_eq!(h.timeout, Some(3_000_000_000));
        assert_eq!(h.start_period, Some(90_000_000_000));
        assert_eq!(h.start_interval, Some(500_000_000));
        assert_eq!(h.retries, Some(4));
        let i = one("HEALTHCHECK CMD [\"/bin/check\", \"-q\"]");
        let Command::Healthcheck { check: Some(h) } = &i.command else {
            panic!()
        };
        assert_eq!(
            h.test,
            CommandLine::Exec(vec!["/bin/check".into(), "-q".into()])
        );
        assert_eq!(h.interval, None);
        assert_eq!(
            one("healthcheck none").command,
            Command::Healthcheck { check: None }
        );
        assert!(error("HEALTHCHECK NONE x").contains("takes no arguments"));
        assert!(error("HEALTHCHECK --interval=5s NONE").contains("takes no options"));
        assert!(error("HEALTHCHECK RUN x").contains("unknown type \"RUN\""));
        assert!(error("HEALTHCHECK --interval=soon CMD x").contains("not a duration"));
        assert!(error("HEALTHCHECK --timeout=10us CMD x").contains("less than 1ms"));
        assert!(error("HEALTHCHECK --retries=-1 CMD x").contains("whole number"));
        assert!(error("HEALTHCHECK CMD").contains("needs a command"));
        assert_eq!(parse_duration("1.5h"), Some(5_400_000_000_000));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("10"), None);
    }

    #[test]
    fn onbuild() {
        let i = one("ONBUILD ADD . /app/src");
        let Command::OnBuild { trigger } = &i.command else {
            panic!()
        };
        assert_eq!(trigger.keyword, "ADD");
        assert_eq!(copy(trigger).sources, vec!["."]);
        assert_eq!(i.source, "ONBUILD ADD . /app/src");
        for inner in ["ONBUILD", "FROM", "MAINTAINER"] {
            let e = error(&format!("ONBUILD {inner} x"));
            assert!(
                e.contains(&format!(
                    "ONBUILD: {inner} isn't allowed as an ONBUILD trigger"
                )),
                "{e}"
            );
        }
        assert!(error("ONBUILD").contains("requires an instruction"));
        assert!(error("ONBUILD COPY a").contains("COPY: requires at least two"));
    }

    #[test]
    fn unknown_instructions_are_named_with_a_hint() {
        assert_eq!(
            error("FORM x"),
            "Dockerfile:1: unknown instruction: FORM (did you mean FROM?)"
        );
        assert_eq!(
            error("FROM x\n\nfrobnicate y"),
            "Dockerfile:3: unknown instruction: frobnicate"
        );
    }
}
