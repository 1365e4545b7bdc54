//! One logical line into an [`Instruction`]: the keyword, its flags, and
//! one parse function per instruction for its arguments.

use super::flags::{suggest, take_flags, Flags};
use super::lexer::{parse_marker, split_keyword};
use super::{
    AddOptions, ArgDecl, Command, CommandLine, Copy, Healthcheck, Heredoc, Instruction, KeyValue,
    Run, KEYWORDS,
};
use crate::expand::split_words;
use crate::BuildError;

/// Parse one logical line (continuations joined) into an instruction.
pub(super) fn parse_instruction(
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
        let trigger = parse_onbuild(rest, line, next_index, &heredocs, escape)?;
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
        return Err(err(missing_arguments(&upper).into()));
    }
    let command = parse_command(&upper, args, &flags, &heredocs, escape).map_err(err)?;
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

/// ONBUILD's trigger: any instruction but ONBUILD, FROM and MAINTAINER.
fn parse_onbuild(
    rest: &str,
    line: usize,
    next_index: usize,
    heredocs: &[Heredoc],
    escape: char,
) -> Result<Instruction, BuildError> {
    let err = |message: String| BuildError::at(line, Some("ONBUILD"), message);
    if rest.is_empty() {
        return Err(err(
            "requires an instruction to trigger, e.g. ONBUILD COPY . /app".into(),
        ));
    }
    let inner = split_keyword(rest).0.to_ascii_uppercase();
    if matches!(inner.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
        return Err(err(format!("{inner} isn't allowed as an ONBUILD trigger")));
    }
    parse_instruction(rest, line, next_index, heredocs.to_vec(), escape)
}

/// Why an instruction without arguments is an error.
fn missing_arguments(keyword: &str) -> &'static str {
    match keyword {
        "COPY" | "ADD" => "requires at least two arguments: the source(s) and the destination",
        "HEALTHCHECK" => "requires NONE or CMD followed by a command",
        "SHELL" => "requires a JSON array, e.g. SHELL [\"/bin/bash\", \"-c\"]",
        _ => "requires at least one argument",
    }
}

/// The command of a known `keyword` with its (checked) flags and its
/// non-empty arguments, one function per instruction that needs one.
fn parse_command(
    keyword: &str,
    args: &str,
    flags: &Flags,
    heredocs: &[Heredoc],
    escape: char,
) -> Result<Command, String> {
    Ok(match keyword {
        "FROM" => parse_from(args, flags)?,
        "ARG" => parse_arg(args, escape)?,
        "ENV" => {
            let (vars, legacy) = parse_name_values(args, escape)?;
            Command::Env { vars, legacy }
        }
        "LABEL" => {
            let (labels, legacy) = parse_name_values(args, escape)?;
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
        "SHELL" => parse_shell(args)?,
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
        "VOLUME" => parse_volume(args)?,
        "COPY" | "ADD" => parse_copy(keyword == "ADD", args, flags, heredocs)?,
        "HEALTHCHECK" => parse_healthcheck(args, flags)?,
        _ => unreachable!("every keyword in KEYWORDS is handled above"),
    })
}

/// `FROM IMAGE [AS NAME]`.
fn parse_from(args: &str, flags: &Flags) -> Result<Command, String> {
    let words: Vec<&str> = args.split_whitespace().collect();
    let stage_name = match words.as_slice() {
        [_] => None,
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            if !valid_stage_name(name) {
                return Err(format!(
                    "invalid name for build stage: {name:?}: a name starts with a letter and holds only letters, digits, '-', '_' and '.'"
                ));
            }
            Some(name.to_ascii_lowercase())
        }
        _ => return Err("requires either one or three arguments: FROM IMAGE [AS NAME]".into()),
    };
    Ok(Command::From {
        image: words[0].to_string(),
        stage_name,
        platform: flags.string("platform"),
    })
}

/// `ARG NAME[=default] ...`.
fn parse_arg(args: &str, escape: char) -> Result<Command, String> {
    let mut decls = Vec::new();
    for word in split_words(args, escape) {
        let (name, default) = match word.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (word.clone(), None),
        };
        if name.is_empty() {
            return Err(format!("{word:?} has no name: write NAME or NAME=default"));
        }
        decls.push(ArgDecl { name, default });
    }
    Ok(Command::Arg { args: decls })
}

/// `SHELL ["executable", "parameters"]`: JSON form only.
fn parse_shell(args: &str) -> Result<Command, String> {
    match json_array(args) {
        Some(shell) if !shell.is_empty() => Ok(Command::Shell { shell }),
        Some(_) => Err("the JSON array must name a shell".into()),
        None => {
            Err("requires the arguments in JSON form, e.g. SHELL [\"/bin/bash\", \"-c\"]".into())
        }
    }
}

/// `VOLUME ["/a", "/b"]` or `VOLUME /a /b`.
fn parse_volume(args: &str) -> Result<Command, String> {
    let paths =
        json_array(args).unwrap_or_else(|| args.split_whitespace().map(str::to_string).collect());
    if paths.iter().any(|p| p.trim().is_empty()) {
        return Err("a volume cannot be an empty string".into());
    }
    if paths.is_empty() {
        return Err("requires at least one path".into());
    }
    Ok(Command::Volume { paths })
}

/// COPY and ADD: sources and destination (JSON or plain form), their
/// flags, and the heredocs their sources name.
fn parse_copy(
    is_add: bool,
    args: &str,
    flags: &Flags,
    heredocs: &[Heredoc],
) -> Result<Command, String> {
    let (list, json_form) = match json_array(args) {
        Some(list) => (list, true),
        None => (args.split_whitespace().map(str::to_string).collect(), false),
    };
    let Some((dest, sources)) = list.split_last() else {
        return Err("requires at least two arguments: the source(s) and the destination".into());
    };
    if sources.is_empty() {
        return Err(format!(
            "requires at least two arguments, but only one was given ({dest:?}): the destination could not be determined"
        ));
    }
    let copy = Copy {
        sources: sources.to_vec(),
        dest: dest.clone(),
        json_form,
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.boolean("link")?.unwrap_or(false),
        parents: flags.boolean("parents")?.unwrap_or(false),
        exclude: flags.list("exclude"),
        add: if is_add {
            Some(AddOptions {
                checksum: flags.string("checksum"),
                keep_git_dir: flags.boolean("keep-git-dir")?.unwrap_or(false),
                unpack: flags.boolean("unpack")?,
            })
        } else {
            None
        },
    };
    // A heredoc source must have a body, and a body must be used.
    for source in &copy.sources {
        if let Some(marker) = parse_marker(source) {
            if !heredocs.iter().any(|h| h.name == marker.name) {
                return Err(format!("no heredoc body for {source}"));
            }
        }
    }
    Ok(if is_add {
        Command::Add(copy)
    } else {
        Command::Copy(copy)
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
