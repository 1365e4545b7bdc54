//! Compose-spec interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?error}`, `${VAR?error}`, `${VAR:+replacement}`, `${VAR+replacement}` and `$$` for a
//! literal `$`. Defaults and replacements may hold further interpolations
//! (`${A:-${B:-x}}`), as the spec allows.
//!
//! Only values are interpolated, never keys; the walk over a whole document is
//! [`interpolate_value`], which names the key of a failed interpolation.

use serde_json::Value;

/// Where variable values come from, highest precedence first (see `super::Lookup`).
pub(crate) trait Resolve {
    fn get(&self, name: &str) -> Option<String>;
}

/// An interpolation that cannot be done, at a dotted key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterpolationError {
    pub key: String,
    pub message: String,
}

/// Interpolates every string value under `value`, in place. `key` is the dotted path of
/// `value`, for errors.
pub(crate) fn interpolate_value(
    value: &mut Value,
    key: &str,
    vars: &dyn Resolve,
) -> Result<(), InterpolationError> {
    match value {
        Value::String(text) => {
            *text = interpolate(text, vars).map_err(|message| InterpolationError {
                key: key.to_string(),
                message,
            })?;
        }
        Value::Array(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                interpolate_value(item, &format!("{key}[{index}]"), vars)?;
            }
        }
        Value::Object(map) => {
            for (name, item) in map.iter_mut() {
                let at = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                interpolate_value(item, &at, vars)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// Interpolates one string.
pub(crate) fn interpolate(text: &str, vars: &dyn Resolve) -> Result<String, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if c != '$' {
            out.push(c);
            at += 1;
            continue;
        }
        match chars.get(at + 1) {
            Some('$') => {
                out.push('$');
                at += 2;
            }
            Some('{') => {
                let close = matching_brace(&chars, at + 1).ok_or_else(|| {
                    format!("invalid interpolation format in {text:?}: `${{` without its `}}`")
                })?;
                let inner: String = chars[at + 2..close].iter().collect();
                out.push_str(&braced(&inner, text, vars)?);
                at = close + 1;
            }
            Some(first) if first.is_ascii_alphabetic() || *first == '_' => {
                let start = at + 1;
                let mut end = start;
                while end < chars.len() && (chars[end].is_ascii_alphanumeric() || chars[end] == '_')
                {
                    end += 1;
                }
                let name: String = chars[start..end].iter().collect();
                out.push_str(&vars.get(&name).unwrap_or_default());
                at = end;
            }
            _ => {
                return Err(format!(
                    "invalid interpolation format in {text:?}: a lone `$` (write `$$` for a literal dollar sign)"
                ))
            }
        }
    }
    Ok(out)
}

/// Index of the `}` that closes the `{` at `open`, counting nested `${...}`.
fn matching_brace(chars: &[char], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = open;
    while at < chars.len() {
        match chars[at] {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// The body of `${...}`: a name, optionally followed by an operator and its word.
fn braced(inner: &str, whole: &str, vars: &dyn Resolve) -> Result<String, String> {
    let name_end = inner
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(inner.len());
    let name = &inner[..name_end];
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !valid_name {
        return Err(format!(
            "invalid interpolation format in {whole:?}: `${{{inner}}}` does not start with a variable name"
        ));
    }
    let rest = &inner[name_end..];
    let value = vars.get(name);
    let (operator, word) = if let Some(word) = rest.strip_prefix(":-") {
        (":-", word)
    } else if let Some(word) = rest.strip_prefix(":?") {
        (":?", word)
    } else if let Some(word) = rest.strip_prefix(":+") {
        (":+", word)
    } else if let Some(word) = rest.strip_prefix('-') {
        ("-", word)
    } else if let Some(word) = rest.strip_prefix('?') {
        ("?", word)
    } else if let Some(word) = rest.strip_prefix('+') {
        ("+", word)
    } else if rest.is_empty() {
        return Ok(value.unwrap_or_default());
    } else {
        return Err(format!(
            "invalid interpolation format in {whole:?}: unknown operator in `${{{inner}}}`"
        ));
    };
    let set_and_not_empty = value.as_deref().is_some_and(|v| !v.is_empty());
    match operator {
        ":-" if set_and_not_empty => Ok(value.unwrap_or_default()),
        "-" if value.is_some() => Ok(value.unwrap_or_default()),
        ":-" | "-" => interpolate(word, vars),
        ":?" if set_and_not_empty => Ok(value.unwrap_or_default()),
        "?" if value.is_some() => Ok(value.unwrap_or_default()),
        ":?" | "?" => {
            let message = interpolate(word, vars)?;
            Err(if message.is_empty() {
                format!("required variable {name} is missing a value")
            } else {
                format!("required variable {name} is missing a value: {message}")
            })
        }
        ":+" if set_and_not_empty => interpolate(word, vars),
        "+" if value.is_some() => interpolate(word, vars),
        _ => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Map(BTreeMap<&'static str, &'static str>);

    impl Resolve for Map {
        fn get(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn vars() -> Map {
        Map(BTreeMap::from([
            ("TAG", "v2"),
            ("EMPTY", ""),
            ("HOST", "db"),
        ]))
    }

    fn run(text: &str) -> Result<String, String> {
        interpolate(text, &vars())
    }

    #[test]
    fn plain_and_braced_names() {
        assert_eq!(run("app:${TAG}").unwrap(), "app:v2");
        assert_eq!(run("app:$TAG-x").unwrap(), "app:v2-x");
        assert_eq!(run("${MISSING}|$MISSING").unwrap(), "|");
        assert_eq!(run("no vars").unwrap(), "no vars");
    }

    #[test]
    fn defaults_distinguish_unset_from_empty() {
        assert_eq!(run("${MISSING:-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(run("${EMPTY-d}").unwrap(), "");
        assert_eq!(run("${MISSING-d}").unwrap(), "d");
        assert_eq!(run("${TAG:-d}").unwrap(), "v2");
        assert_eq!(run("${MISSING:-${HOST}:5432}").unwrap(), "db:5432");
        assert_eq!(run("${MISSING:-${ALSO:-deep}}").unwrap(), "deep");
    }

    #[test]
    fn alternatives() {
        assert_eq!(run("${TAG:+set}").unwrap(), "set");
        assert_eq!(run("${EMPTY:+set}").unwrap(), "");
        assert_eq!(run("${EMPTY+set}").unwrap(), "set");
        assert_eq!(run("${MISSING+set}").unwrap(), "");
    }

    #[test]
    fn required_variables_fail_with_their_message() {
        assert_eq!(
            run("${DB_PASSWORD:?set it in .env}").unwrap_err(),
            "required variable DB_PASSWORD is missing a value: set it in .env"
        );
        assert_eq!(
            run("${EMPTY:?}").unwrap_err(),
            "required variable EMPTY is missing a value"
        );
        assert_eq!(run("${EMPTY?}").unwrap(), "");
        assert!(run("${MISSING?no}").is_err());
    }

    #[test]
    fn dollar_escapes_and_bad_forms() {
        assert_eq!(run("cost: $$5 and $${TAG}").unwrap(), "cost: $5 and ${TAG}");
        assert!(run("${TAG").unwrap_err().contains("without its"));
        assert!(run("a $ b").unwrap_err().contains("lone `$`"));
        assert!(run("${1X}").unwrap_err().contains("variable name"));
        assert!(run("${TAG!x}").unwrap_err().contains("unknown operator"));
    }

    #[test]
    fn walks_values_and_names_the_key() {
        let mut doc = serde_json::json!({
            "services": { "web": { "image": "r/web:${TAG}", "ports": ["${MISSING:?port}"] } }
        });
        let err = interpolate_value(&mut doc, "", &vars()).unwrap_err();
        assert_eq!(err.key, "services.web.ports[0]");
        let mut doc = serde_json::json!({ "image": "r/web:${TAG}", "replicas": 2 });
        interpolate_value(&mut doc, "", &vars()).unwrap();
        assert_eq!(doc["image"], "r/web:v2");
    }
}
