//! `--flag[=value]` words after the keyword, checked against what each
//! instruction accepts (with a suggestion for a misspelt one).

use super::{Flag, KEYWORDS};

/// Split the leading `--flag[=value]` words off an instruction's arguments.
/// `--` alone ends the flags.
pub(super) fn take_flags(text: &str, escape: char) -> Result<(Vec<Flag>, &str), String> {
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
pub(super) struct Flags {
    pub all: Vec<Flag>,
}

#[derive(PartialEq)]
enum FlagKind {
    Text,
    Bool,
    /// May be given more than once.
    List,
}

impl Flags {
    pub(super) fn check(keyword: &str, all: Vec<Flag>) -> Result<Flags, String> {
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

    pub(super) fn string(&self, name: &str) -> Option<String> {
        self.all
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.value.clone())
    }

    pub(super) fn list(&self, name: &str) -> Vec<String> {
        self.all
            .iter()
            .filter(|f| f.name == name)
            .filter_map(|f| f.value.clone())
            .collect()
    }

    /// `--link` is true; `--link=false` false; unset is None.
    pub(super) fn boolean(&self, name: &str) -> Result<Option<bool>, String> {
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
pub(super) fn suggest(word: &str) -> Option<&'static str> {
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
