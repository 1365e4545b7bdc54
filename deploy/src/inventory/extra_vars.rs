//! `-e/--extra-vars`, as `ansible-playbook -e` reads them: each argument is `@FILE` (YAML or
//! JSON), inline JSON/YAML (`{"tag": "v2"}`, `{tag: v2}`), or `key=value` pairs split like a
//! shell (`tag=v2 env="a b"`, values are text). Later arguments override earlier ones.

use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Problem, Result};
use crate::template::Vars;
use crate::yaml;

/// Merges every `-e` argument in order into one set of variables.
pub fn parse_all<S: AsRef<str>>(arguments: &[S]) -> Result<Vars> {
    let mut vars = Vars::new();
    for argument in arguments {
        vars.extend(parse(argument.as_ref())?);
    }
    Ok(vars)
}

/// One `-e` argument.
pub fn parse(argument: &str) -> Result<Vars> {
    let problem = |key: &str, message: String| Error::Inventory {
        path: "--extra-vars".into(),
        problem: Problem::new(key, message),
    };
    if let Some(file) = argument.strip_prefix('@') {
        let path = Path::new(file);
        let value = yaml::read_file(path)?;
        return mapping(value).map_err(|message| Error::Inventory {
            path: path.to_path_buf(),
            problem: Problem::new("", message),
        });
    }
    let trimmed = argument.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') || trimmed.starts_with("---") {
        let value = yaml::parse_str(Path::new("--extra-vars"), argument)?;
        return mapping(value).map_err(|message| problem(argument, message));
    }
    let mut vars = Vars::new();
    for token in super::ini::shell_split(argument).map_err(|m| problem(argument, m))? {
        let Some((key, value)) = token.split_once('=') else {
            return Err(problem(
                &token,
                "expected key=value, @FILE or a JSON/YAML mapping".to_string(),
            ));
        };
        if key.is_empty() {
            return Err(problem(&token, "empty variable name".to_string()));
        }
        vars.insert(key.to_string(), Value::String(value.to_string()));
    }
    Ok(vars)
}

fn mapping(value: Value) -> Result<Vars, String> {
    match value {
        Value::Null => Ok(Vars::new()),
        Value::Object(map) => Ok(map.into_iter().collect()),
        other => Err(format!(
            "extra vars must be a mapping, found {}",
            yaml::kind_of(&other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_inline_documents_and_files() {
        let vars = parse_all(&[
            "image_tag=v2 note=\"a b\"",
            "{\"n\": 3, \"image_tag\": \"v3\"}",
        ])
        .unwrap();
        assert_eq!(vars["image_tag"], json!("v3"));
        assert_eq!(vars["note"], json!("a b"));
        assert_eq!(vars["n"], json!(3));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("extra.yml");
        std::fs::write(&file, "tag: v9\nlist: [1, 2]\n").unwrap();
        let vars = parse_all(&[format!("@{}", file.display()), "x=1".into()]).unwrap();
        assert_eq!(vars["tag"], json!("v9"));
        assert_eq!(vars["x"], json!("1"));
        let err = parse("justaword").unwrap_err().to_string();
        assert!(
            err.contains("justaword") && err.contains("key=value"),
            "{err}"
        );
        let err = parse("[1, 2]").unwrap_err().to_string();
        assert!(err.contains("must be a mapping"), "{err}");
    }
}
