//! Reading YAML files into generic values.
//!
//! We parse with `serde-saphyr`: a pure-Rust, panic-free YAML parser that is actively
//! maintained, rejects duplicate keys (a silent-override trap in hand-edited inventories) and
//! reports line/column with a snippet. The archived `serde_yaml` and its forks built on the
//! transpiled `unsafe-libyaml` (`serde_yml`, `serde_norway`, `serde_yaml_ng`) were avoided:
//! deprecated, unsound, or carrying thousands of lines of unsafe C-in-Rust.
//!
//! Files go to `serde_json::Value` first (not straight to typed structs) because the app file
//! must be templated per host before it has its final shape, e.g. `replicas: "{{ n }}"`.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};

pub(crate) fn parse_str(path: &Path, text: &str) -> Result<Value> {
    // An empty file (or one with only comments) is a valid, empty vars file in Ansible.
    if text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    }) {
        return Ok(Value::Null);
    }
    let mut options = serde_saphyr::Options::default();
    // YAML 1.2 booleans only (`true`/`false`). YAML 1.1 also reads `y`, `n`, `yes`, `no`,
    // `on`, `off` as booleans, which silently turns `image: y`, a host named `n` or a
    // country code `NO` into `true`/`false`. Code that wants a flag accepts those words
    // itself, where a flag is expected.
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options::<Value>(text, options).map_err(|err| {
        // The parser names the text `<input>` and starts with "error: ": say the file.
        let message = err
            .to_string()
            .replace("<input>", &path.display().to_string());
        Error::Yaml {
            path: path.to_path_buf(),
            message: message
                .strip_prefix("error: ")
                .unwrap_or(&message)
                .to_string(),
        }
    })
}

pub(crate) fn read_file(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    parse_str(path, &text)
}

/// The items of a list field as users write it: nothing (null) is an empty list, anything
/// other than a list is "expected a list of WHAT, found ...".
pub(crate) fn list_items(value: Value, what: &str) -> std::result::Result<Vec<Value>, String> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => Ok(items),
        other => Err(format!(
            "expected a list of {what}, found {}",
            kind_of(&other)
        )),
    }
}

/// A human name for a JSON value's type, for "expected a mapping, found a list" messages.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
