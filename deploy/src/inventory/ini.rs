//! Ansible's INI inventory format, read the way `ansible-inventory` (ansible-core's `ini`
//! plugin) reads it:
//!
//! - `[group]` lists hosts, `[group:vars]` sets group variables, `[group:children]` lists
//!   child groups (which must be declared as a section somewhere in the file); hosts before
//!   the first section are `ungrouped`.
//! - a host line is `NAME[:PORT] key=value ...`, split like a POSIX shell (`shlex`) with `#`
//!   starting a comment; each value is then read as a Python literal when it is one (`5`,
//!   `1.5`, `True`, `None`, `'text'`, `[1, 2]`, `{'k': 1}`) and as text otherwise. The shell
//!   split removes one level of quotes first, so `x="5"` is the number 5 and `x='"5"'` the
//!   text "5". `NAME` may hold ranges (`web[01:03]`, `db-[a:c]`); `:PORT` sets `ansible_port`.
//! - a `:vars` line is `key=value` with everything after the first `=` as the value (no shell
//!   split, so `#` stays in text values), read as a Python literal when it is one.
//! - lines starting with `#` or `;` are comments.

use serde_json::{Map, Number, Value};

use super::{check_name, expand_host_range, Builder};
use crate::error::Result;

#[derive(Clone, Copy, PartialEq)]
enum State {
    Hosts,
    Vars,
    Children,
}

pub(super) fn parse(builder: &mut Builder, text: &str) -> Result<()> {
    let mut group = "ungrouped".to_string();
    let mut state = State::Hosts;
    // Groups named only as a child or in a `:vars` header so far: (line, what, parent).
    let mut pending: Vec<(String, usize, State, String)> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line_no = index + 1;
        let line = raw.trim();
        let at = |key: &str| {
            if key.is_empty() {
                format!("line {line_no}")
            } else {
                format!("line {line_no}: {key}")
            }
        };
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            if let Some((name, kind)) = section_header(line) {
                check_name(&name, "group", true).map_err(|m| builder.problem(&at(&name), m))?;
                state = match kind.as_deref() {
                    None | Some("hosts") => State::Hosts,
                    Some("vars") => State::Vars,
                    Some("children") => State::Children,
                    Some(other) => {
                        return Err(builder.problem(
                            &at(&name),
                            format!("section [{name}:{other}] has unknown type `{other}` (expected vars or children)"),
                        ))
                    }
                };
                if state == State::Vars && !builder.groups.contains_key(&name) {
                    pending.push((name.clone(), line_no, State::Vars, name.clone()));
                } else {
                    pending.retain(|(pending_name, ..)| *pending_name != name);
                    builder.ensure_group(&name);
                }
                group = name;
                continue;
            }
            if line.ends_with(']') {
                return Err(builder.problem(
                    &at(""),
                    format!("invalid section {line:?}: no spaces in a section name"),
                ));
            }
        }
        match state {
            State::Hosts => host_line(builder, &group, line, &at)?,
            State::Vars => vars_line(builder, &group, line, &at)?,
            State::Children => {
                let child = child_line(builder, &group, line, &at)?;
                if !builder.groups.contains_key(&child)
                    && !pending.iter().any(|(name, ..)| *name == child)
                {
                    pending.push((child.clone(), line_no, State::Children, group.clone()));
                }
                builder.link(&group, &child);
            }
        }
    }
    if let Some((name, line_no, state, parent)) = pending.into_iter().next() {
        let message = if state == State::Vars {
            format!("section [{name}:vars] is for a group that is not declared anywhere")
        } else {
            format!("[{parent}:children] names group `{name}`, which is not declared anywhere (add a [{name}] section)")
        };
        return Err(builder.problem(&format!("line {line_no}: {name}"), message));
    }
    Ok(())
}

/// `NAME[:PORT] key=value ...` in a hosts section: the hosts (ranges expanded) join
/// `group` with those inline variables.
fn host_line(
    builder: &mut Builder,
    group: &str,
    line: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<()> {
    let tokens = shell_split(line).map_err(|m| builder.problem(&at(""), m))?;
    let Some((pattern, assignments)) = tokens.split_first() else {
        return Ok(());
    };
    let (pattern, port) = split_port(pattern);
    let names = expand_host_range(pattern).map_err(|m| builder.problem(&at(pattern), m))?;
    let mut vars = crate::template::Vars::new();
    for token in assignments {
        let Some((key, value)) = token.split_once('=') else {
            return Err(builder.problem(
                &at(token),
                format!("expected key=value after the host name, found {token:?}"),
            ));
        };
        vars.insert(key.to_string(), python_value(value));
    }
    if let Some(port) = port {
        vars.insert("ansible_port".into(), Value::from(port));
    }
    for name in names {
        check_name(&name, "host", false).map_err(|m| builder.problem(&at(&name), m))?;
        builder.ensure_group(group).hosts.insert(name.clone());
        builder
            .host_inline_vars
            .entry(name)
            .or_default()
            .extend(vars.clone());
    }
    Ok(())
}

/// `key=value` in a `[group:vars]` section.
fn vars_line(
    builder: &mut Builder,
    group: &str,
    line: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<()> {
    let Some((key, value)) = line.split_once('=') else {
        return Err(builder.problem(
            &at(""),
            format!("expected key=value in [{group}:vars], found {line:?}"),
        ));
    };
    let (key, value) = (key.trim(), python_value(value.trim()));
    if key == "ansible_group_priority" {
        let priority = value.as_i64().ok_or_else(|| {
            builder.problem(&at(key), "ansible_group_priority must be an integer")
        })?;
        builder.ensure_group(group).priority = priority;
    }
    builder
        .ensure_group(group)
        .inline_vars
        .insert(key.to_string(), value);
    Ok(())
}

/// A group name in a `[group:children]` section (a trailing `#` comment dropped).
fn child_line(
    builder: &Builder,
    group: &str,
    line: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<String> {
    let child = line
        .split_once('#')
        .map_or(line, |(name, _)| name)
        .trim()
        .to_string();
    if child.contains(char::is_whitespace) {
        return Err(builder.problem(
            &at(""),
            format!("expected a group name in [{group}:children], found {line:?}"),
        ));
    }
    check_name(&child, "group", true).map_err(|m| builder.problem(&at(&child), m))?;
    Ok(child)
}

/// `[name]` or `[name:kind]`, optionally followed by a `#` comment.
fn section_header(line: &str) -> Option<(String, Option<String>)> {
    let inner = line.strip_prefix('[')?;
    let close = inner.find(']')?;
    let rest = inner[close + 1..].trim();
    if !(rest.is_empty() || rest.starts_with('#')) {
        return None;
    }
    let inside = &inner[..close];
    let (name, kind) = match inside.split_once(':') {
        Some((name, kind)) => (name, Some(kind)),
        None => (inside, None),
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    if let Some(kind) = kind {
        if kind.is_empty() || !kind.chars().all(|c| c.is_alphanumeric() || c == '_') {
            return None;
        }
    }
    Some((name.to_string(), kind.map(str::to_string)))
}

/// `host:22` → (`host`, 22); IPv6 addresses (several `:`) and `[v6]:port` as Ansible does.
fn split_port(pattern: &str) -> (&str, Option<u16>) {
    if let Some(inner) = pattern.strip_prefix('[') {
        if let Some((address, port)) = inner.split_once("]:") {
            if let Ok(port) = port.parse() {
                if address.contains(':') {
                    return (address, Some(port));
                }
            }
        }
    }
    // A range's `[1:3]` colons do not count; only a colon after the last `]`.
    let tail_start = pattern.rfind(']').map_or(0, |i| i + 1);
    let tail = &pattern[tail_start..];
    if tail.matches(':').count() == 1 && !pattern[..tail_start].contains("::") {
        let (host, port) = pattern.rsplit_once(':').expect("one colon");
        if let Ok(port) = port.parse() {
            return (host, Some(port));
        }
    }
    (pattern, None)
}

/// Python's `shlex.split(line, comments=True)` (POSIX mode).
pub(super) fn shell_split(line: &str) -> Result<Vec<String>, String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    let mut in_token = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_token {
                    tokens.push(std::mem::take(&mut current));
                    in_token = false;
                }
            }
            '#' => break,
            '\'' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err(format!("no closing quotation in {line:?}")),
                        Some('\'') => break,
                        Some(c) => current.push(c),
                    }
                }
            }
            '"' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err(format!("no closing quotation in {line:?}")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return Err(format!("no closing quotation in {line:?}")),
                            Some(c @ ('"' | '\\')) => current.push(c),
                            Some(c) => {
                                current.push('\\');
                                current.push(c);
                            }
                        },
                        Some(c) => current.push(c),
                    }
                }
            }
            '\\' => {
                in_token = true;
                match chars.next() {
                    None => return Err(format!("no escaped character at the end of {line:?}")),
                    Some(c) => current.push(c),
                }
            }
            c => {
                in_token = true;
                current.push(c);
            }
        }
    }
    if in_token {
        tokens.push(current);
    }
    Ok(tokens)
}

/// Ansible's `_parse_value`: `ast.literal_eval(text)` when that succeeds, else the text.
pub(super) fn python_value(text: &str) -> Value {
    let mut parser = Literal {
        chars: text.chars().collect(),
        at: 0,
    };
    match parser.whole() {
        Some(value) => value,
        None => Value::String(text.to_string()),
    }
}

/// A recursive-descent reader for the literals `ast.literal_eval` accepts (strings, numbers,
/// True/False/None, lists, tuples, dicts); anything else is "not a literal".
struct Literal {
    chars: Vec<char>,
    at: usize,
}

impl Literal {
    fn whole(&mut self) -> Option<Value> {
        self.skip_space();
        let value = self.value()?;
        self.skip_space();
        if self.peek() == Some('#') || self.at >= self.chars.len() {
            Some(value)
        } else {
            None
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(|c| c == ' ' || c == '\t') {
            self.at += 1;
        }
    }

    fn value(&mut self) -> Option<Value> {
        self.skip_space();
        let value = match self.peek()? {
            '\'' | '"' => {
                // Adjacent literals concatenate, as in Python.
                let mut text = self.string()?;
                loop {
                    self.skip_space();
                    match self.peek() {
                        Some('\'' | '"') => text.push_str(&self.string()?),
                        _ => break,
                    }
                }
                Value::String(text)
            }
            '[' => Value::Array(self.sequence('[', ']')?),
            '(' => {
                let start = self.at;
                let items = self.sequence('(', ')')?;
                // `(1)` is just 1; `(1,)` and `()` are tuples.
                let text: String = self.chars[start..self.at].iter().collect();
                if items.len() == 1 && !text.trim_end_matches(')').trim_end().ends_with(',') {
                    items.into_iter().next()?
                } else {
                    Value::Array(items)
                }
            }
            '{' => self.dict()?,
            c if c.is_ascii_digit() || c == '.' || c == '-' || c == '+' => self.number()?,
            c if c.is_alphabetic() || c == '_' => {
                let start = self.at;
                while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    self.at += 1;
                }
                let word: String = self.chars[start..self.at].iter().collect();
                match word.as_str() {
                    "True" => Value::Bool(true),
                    "False" => Value::Bool(false),
                    "None" => Value::Null,
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(value)
    }

    fn sequence(&mut self, open: char, close: char) -> Option<Vec<Value>> {
        debug_assert_eq!(self.peek(), Some(open));
        self.at += 1;
        let mut items = Vec::new();
        loop {
            self.skip_space();
            if self.peek()? == close {
                self.at += 1;
                return Some(items);
            }
            items.push(self.value()?);
            self.skip_space();
            match self.peek()? {
                ',' => self.at += 1,
                c if c == close => {}
                _ => return None,
            }
        }
    }

    fn dict(&mut self) -> Option<Value> {
        self.at += 1;
        let mut map = Map::new();
        loop {
            self.skip_space();
            if self.peek()? == '}' {
                self.at += 1;
                return Some(Value::Object(map));
            }
            let key = match self.value()? {
                Value::String(text) => text,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => if b { "True" } else { "False" }.to_string(),
                Value::Null => "None".to_string(),
                _ => return None,
            };
            self.skip_space();
            if self.peek()? != ':' {
                return None;
            }
            self.at += 1;
            let value = self.value()?;
            map.insert(key, value);
            self.skip_space();
            match self.peek()? {
                ',' => self.at += 1,
                '}' => {}
                _ => return None,
            }
        }
    }

    fn string(&mut self) -> Option<String> {
        let quote = self.peek()?;
        self.at += 1;
        let mut out = String::new();
        loop {
            let c = self.peek()?;
            self.at += 1;
            match c {
                c if c == quote => return Some(out),
                '\\' => {
                    let e = self.peek()?;
                    self.at += 1;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '0' => out.push('\0'),
                        '\\' | '\'' | '"' => out.push(e),
                        '\n' => {}
                        'x' | 'u' | 'U' => {
                            let width = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let hex: String =
                                self.chars.get(self.at..self.at + width)?.iter().collect();
                            self.at += width;
                            out.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                        }
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
    }

    fn number(&mut self) -> Option<Value> {
        let mut negative = false;
        while let Some(sign @ ('-' | '+')) = self.peek() {
            if sign == '-' {
                negative = !negative;
            }
            self.at += 1;
            self.skip_space();
        }
        let start = self.at;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            || (self.at > start
                && matches!(self.peek(), Some('-' | '+'))
                && matches!(self.chars[self.at - 1], 'e' | 'E')
                && !self.chars[start..self.at]
                    .iter()
                    .any(|c| matches!(c, 'x' | 'X')))
        {
            self.at += 1;
        }
        let token: String = self.chars[start..self.at].iter().collect();
        if token.is_empty()
            || token.starts_with('_')
            || token.ends_with('_')
            || token.contains("__")
        {
            return None;
        }
        let digits = token.replace('_', "");
        let radix = |prefix: &[&str], radix: u32| {
            prefix
                .iter()
                .find_map(|p| digits.strip_prefix(p))
                .map(|rest| (rest.to_string(), radix))
        };
        let int = radix(&["0x", "0X"], 16)
            .or_else(|| radix(&["0o", "0O"], 8))
            .or_else(|| radix(&["0b", "0B"], 2));
        let signed = |magnitude: u64| -> Option<Value> {
            if negative {
                let value = i64::try_from(magnitude).ok()?;
                Some(Value::from(-value))
            } else {
                Some(Value::from(magnitude))
            }
        };
        if let Some((rest, radix)) = int {
            return signed(u64::from_str_radix(&rest, radix).ok()?);
        }
        if digits.chars().all(|c| c.is_ascii_digit()) {
            // Python rejects leading zeros in decimal integers (`010`), except for zero itself.
            if digits.len() > 1 && digits.starts_with('0') && digits.chars().any(|c| c != '0') {
                return None;
            }
            return signed(digits.parse().ok()?);
        }
        let valid_float = digits
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
            && digits.chars().any(|c| c.is_ascii_digit());
        if !valid_float {
            return None;
        }
        let float: f64 = digits.parse().ok()?;
        let float = if negative { -float } else { float };
        Number::from_f64(float).map(Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_python_literals_when_they_can_be() {
        for (text, expected) in [
            ("5", json!(5)),
            ("-3", json!(-3)),
            ("1_000", json!(1000)),
            ("0x1F", json!(31)),
            ("010", json!("010")),
            ("1.5", json!(1.5)),
            ("1e3", json!(1000.0)),
            ("True", json!(true)),
            ("true", json!("true")),
            ("yes", json!("yes")),
            ("None", json!(null)),
            ("'5'", json!("5")),
            ("\"a b\"", json!("a b")),
            ("[1, 'a']", json!([1, "a"])),
            ("(1, 2)", json!([1, 2])),
            ("{'k': 2}", json!({"k": 2})),
            ("1 # comment", json!(1)),
            ("hello world # c", json!("hello world # c")),
            ("10.0.0.3", json!("10.0.0.3")),
            ("web-1", json!("web-1")),
            ("", json!("")),
        ] {
            assert_eq!(python_value(text), expected, "{text}");
        }
    }

    #[test]
    fn host_lines_split_like_a_shell() {
        assert_eq!(
            shell_split(r#"h x="a b" y='"5"' z=\#1 w=1#c"#).unwrap(),
            ["h", "x=a b", "y=\"5\"", "z=#1", "w=1"]
        );
        assert!(shell_split("h x='open").is_err());
        assert_eq!(split_port("web1:2222"), ("web1", Some(2222)));
        assert_eq!(split_port("web[1:3]:22"), ("web[1:3]", Some(22)));
        assert_eq!(split_port("web[1:3]"), ("web[1:3]", None));
        assert_eq!(split_port("fe80::1"), ("fe80::1", None));
        assert_eq!(split_port("[fe80::1]:22"), ("fe80::1", Some(22)));
    }
}
