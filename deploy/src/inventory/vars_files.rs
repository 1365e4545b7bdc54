//! `group_vars/` and `host_vars/`, read as Ansible's `host_group_vars` plugin reads them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Problem, Result};
use crate::template::Vars;
use crate::yaml;

const VARS_FILE_EXTENSIONS: [&str; 3] = ["yml", "yaml", "json"];

pub(super) fn vars_from_value(value: &Value) -> Result<Vars, String> {
    match value {
        Value::Null => Ok(Vars::new()),
        Value::Object(map) => Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        other => Err(format!(
            "expected a mapping of variables, found {}",
            yaml::kind_of(other)
        )),
    }
}

fn vars_file_name_matches(file_name: &str) -> Option<&str> {
    if file_name.starts_with('.') {
        return None;
    }
    match file_name.rsplit_once('.') {
        Some((stem, extension)) if VARS_FILE_EXTENSIONS.contains(&extension) => Some(stem),
        Some(_) => None,
        None => Some(file_name),
    }
}

/// Reads `group_vars/` or `host_vars/` as Ansible's `host_group_vars` plugin does: for each
/// group or host NAME, the first of `NAME` (a file, or a directory whose files are merged in
/// path order), `NAME.yml`, `NAME.yaml`, `NAME.json`. Symlinks are followed.
pub(super) fn load_vars_dir(
    dir: &Path,
    known: &BTreeSet<String>,
    what: &str,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, Vars>> {
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    for path in read_dir_sorted(dir)? {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') || known.contains(file_name) {
            continue;
        }
        let stem = if path.is_dir() {
            Some(file_name)
        } else {
            vars_file_name_matches(file_name)
        };
        if let Some(stem) = stem.filter(|stem| !known.contains(*stem)) {
            warnings.push(format!(
                "{}: no {what} named `{stem}` in the inventory; ignored",
                path.display()
            ));
        }
    }
    for name in known {
        let mut files = None;
        for extension in ["", ".yml", ".yaml", ".json"] {
            let candidate = dir.join(format!("{name}{extension}"));
            if !candidate.exists() {
                continue;
            }
            if candidate.is_dir() {
                if !extension.is_empty() {
                    continue;
                }
                files = Some(collect_vars_files(&candidate)?);
            } else {
                files = Some(vec![candidate]);
            }
            break;
        }
        let Some(files) = files else {
            continue;
        };
        let merged: &mut Vars = out.entry(name.clone()).or_default();
        for file in files {
            let vars =
                vars_from_value(&yaml::read_file(&file)?).map_err(|message| Error::Inventory {
                    path: file.clone(),
                    problem: Problem::new("", message),
                })?;
            merged.extend(vars);
        }
    }
    Ok(out)
}

fn collect_vars_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in read_dir_sorted(dir)? {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if path.is_dir() {
            if !file_name.starts_with('.') {
                files.extend(collect_vars_files(&path)?);
            }
        } else if vars_file_name_matches(file_name).is_some() {
            files.push(path);
        }
    }
    Ok(files)
}

pub(super) fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
    let io_error = |source| Error::Io {
        path: dir.to_path_buf(),
        error: source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        paths.push(entry.map_err(io_error)?.path());
    }
    paths.sort();
    Ok(paths)
}
