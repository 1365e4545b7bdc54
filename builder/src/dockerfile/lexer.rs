//! The line-level grammar: parser directives, continuations, the keyword,
//! and heredoc markers and bodies.

use super::{Directives, Heredoc};
use crate::expand::{expand_word, split_words};
use crate::BuildError;

/// Read the directives at the top; returns them and the index of the first
/// line that is not one.
pub(super) fn parse_directives(lines: &[&str]) -> Result<(Directives, usize), BuildError> {
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
pub(super) fn strip_continuation(line: &str, escape: char) -> (String, bool) {
    let end_trimmed = line.trim_end_matches([' ', '\t']);
    match end_trimmed.strip_suffix(escape) {
        Some(before) => (before.to_string(), true),
        None => (line.to_string(), false),
    }
}

/// The first word and the rest (leading blanks removed).
pub(super) fn split_keyword(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    match text.find(char::is_whitespace) {
        Some(at) => (&text[..at], text[at..].trim_start()),
        None => (text, ""),
    }
}

/// The heredoc markers among an instruction's words (`<<EOF`, `<<-EOF`,
/// `3<<"EOF"`), in order. BuildKit finds them with `\` as the escape
/// whatever the directive says, so this does too.
pub(super) fn heredoc_markers(rest: &str) -> Vec<HeredocMarker> {
    split_words(rest, '\\')
        .iter()
        .filter_map(|w| parse_marker(w))
        .collect()
}

pub(super) struct HeredocMarker {
    pub name: String,
    expand: bool,
    strip_tabs: bool,
    fd: Option<u32>,
}

pub(super) fn parse_marker(word: &str) -> Option<HeredocMarker> {
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
pub(super) fn read_heredoc(
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
