//! Compose files as app files: `berth deploy compose.yaml -i INV`.
//!
//! A compose file (the compose-spec, as `docker compose` reads it) is recognised by its
//! content ([`is_compose`]) where app files are loaded, and turned into Berth's own app model
//! per host:
//!
//! 1. interpolation (`interpolate.rs`): `${VAR}` and friends take the host's inventory
//!    variables (with `-e` on top), then the process environment, then `.env` beside the file;
//! 2. conversion (`convert.rs`): compose sections → Berth's `networks`/`services`, refusing
//!    unknown keys and the ones Berth cannot express yet (`model.rs` lists both);
//! 3. typing and validation: the same code as Berth's own app files.
//!
//! The project name (top-level `name`, else `COMPOSE_PROJECT_NAME`, else the file's folder)
//! is the app name; containers are named `PROJECT-SERVICE-N` and labelled as Compose v2
//! labels them, so `docker compose ps` on a host lists them.

pub(crate) mod convert;
pub(crate) mod interpolate;
pub(crate) mod model;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::app::{App, Naming};
use crate::error::{Error, Problem, Result};
use crate::template::Vars;
use interpolate::{interpolate, interpolate_value, Resolve};

/// Top-level keys only Berth's own app file has.
const BERTH_ONLY_TOP: &[&str] = &["variables"];
/// Service keys only Berth's own app file has (`environment` is an alias in both).
const BERTH_ONLY_SERVICE: &[&str] = &[
    "hosts",
    "env",
    "replicas",
    "memory",
    "reservations",
    "placement",
];

/// Is this document a compose file rather than a Berth app file? Both have top-level
/// `services`; a compose file has no `name` (Berth requires one), or a key Berth's format
/// lacks (`version`, `volumes`, `x-*`, ...), or a service or network key only Compose has,
/// or Compose's file name (`compose.yaml`, `docker-compose.yml`, `deploy-compose.yml`, ...).
/// Any other file that reads either way (`name`, and services with only shared keys) stays
/// a Berth app file, which is what it was before compose support.
pub fn is_compose(path: &Path, document: &Value) -> bool {
    let Value::Object(top) = document else {
        return false;
    };
    if !top.contains_key("services") || top.keys().any(|k| BERTH_ONLY_TOP.contains(&k.as_str())) {
        return false;
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let compose_name = ["compose.yaml", "compose.yml"]
        .iter()
        .any(|suffix| file_name == *suffix || file_name.ends_with(&format!("-{suffix}")));
    if compose_name
        || !top.contains_key("name")
        || top
            .keys()
            .any(|k| !["name", "networks", "volumes", "secrets", "services"].contains(&k.as_str()))
    {
        return true;
    }
    let bodies = |section: &str| -> Vec<&Map<String, Value>> {
        match top.get(section) {
            Some(Value::Object(entries)) => entries.values().filter_map(Value::as_object).collect(),
            _ => Vec::new(),
        }
    };
    let services = bodies("services");
    if services
        .iter()
        .any(|s| s.keys().any(|k| BERTH_ONLY_SERVICE.contains(&k.as_str())))
    {
        return false;
    }
    let compose_only = |k: &String| {
        k.starts_with("x-")
            || (model::SERVICE.contains(&k.as_str())
                || model::SERVICE_NOT_YET.contains(&k.as_str()))
                && !matches!(
                    k.as_str(),
                    "image"
                        | "command"
                        | "entrypoint"
                        | "environment"
                        | "ports"
                        | "networks"
                        | "healthcheck"
                        | "restart"
                        | "stop_signal"
                        | "stop_grace_period"
                        | "labels"
                        | "build"
                        | "cpus"
                        | "volumes"
                        | "secrets"
                        | "depends_on"
                        | "user"
                        | "working_dir"
                        | "hostname"
                        | "extra_hosts"
                        | "cap_add"
                        | "cap_drop"
                        | "init"
                        | "read_only"
                        | "tmpfs"
                        | "ulimits"
                        | "logging"
                        | "privileged"
                        | "dns"
                        | "dns_search"
                        | "security_opt"
                        | "sysctls"
                        | "shm_size"
                        | "pids_limit"
                        | "tty"
                        | "stdin_open"
                        | "container_name"
                )
    };
    services.iter().any(|s| s.keys().any(compose_only))
        || bodies("networks").iter().any(|n| {
            n.keys()
                .any(|k| ["ipam", "driver_opts", "external"].contains(&k.as_str()))
        })
}

/// A compose file as read from disk, before per-host interpolation.
#[derive(Debug, Clone)]
pub struct ComposeSource {
    pub path: PathBuf,
    /// The project directory: relative paths (`env_file`, `.env`, build contexts) start here.
    dir: PathBuf,
    /// The file's text, to find the line of a key in errors.
    text: String,
    document: Map<String, Value>,
    /// `.env` beside the file, if any.
    dotenv: BTreeMap<String, String>,
    pub project: String,
}

/// Variable lookup, highest first: the host's inventory variables (which carry `-e` on
/// top), the process environment, `.env`.
struct Lookup<'a> {
    host: &'a Vars,
    dotenv: &'a BTreeMap<String, String>,
}

impl Resolve for Lookup<'_> {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = self.host.get(name) {
            return match value {
                Value::Null => Some(String::new()),
                Value::String(text) => Some(text.clone()),
                Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
                // Lists and mappings have no text form in a compose value; JSON is the
                // least surprising one.
                other => Some(other.to_string()),
            };
        }
        if let Ok(value) = std::env::var(name) {
            return Some(value);
        }
        self.dotenv.get(name).cloned()
    }
}

impl ComposeSource {
    pub(crate) fn load(path: &Path, text: &str, document: Value) -> Result<ComposeSource> {
        let Value::Object(document) = document else {
            return Err(invalid(path, text, Problem::new("", "expected a mapping")));
        };
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dotenv_path = dir.join(".env");
        let dotenv = match std::fs::read_to_string(&dotenv_path) {
            Ok(text) => convert::parse_env_file(&text)
                .map_err(|message| Error::Inventory {
                    path: dotenv_path.clone(),
                    problem: Problem::new("", message),
                })?
                .into_iter()
                .collect(),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(Error::Io {
                    path: dotenv_path,
                    error: source,
                })
            }
        };
        let no_host_vars = Vars::new();
        let lookup = Lookup {
            host: &no_host_vars,
            dotenv: &dotenv,
        };
        let project = project_name(path, &dir, &document, &lookup)
            .map_err(|problem| invalid(path, text, problem))?;
        Ok(ComposeSource {
            path: path.to_path_buf(),
            dir,
            text: text.to_string(),
            document,
            dotenv,
            project,
        })
    }

    /// Interpolates with one host's variables, converts and validates.
    pub(crate) fn render(&self, host_vars: &Vars) -> Result<App> {
        let lookup = Lookup {
            host: host_vars,
            dotenv: &self.dotenv,
        };
        let mut document = Value::Object(self.document.clone());
        interpolate_value(&mut document, "", &lookup).map_err(|err| Error::Template {
            file: self.path.clone(),
            key: with_line(&self.text, &err.key),
            message: err.message,
        })?;
        let Value::Object(document) = document else {
            return Err(invalid(
                &self.path,
                &self.text,
                Problem::new("", "expected a mapping"),
            ));
        };
        let mut converter = convert::Converter {
            dir: &self.dir,
            project: &self.project,
            vars: &lookup,
            problems: Vec::new(),
        };
        let converted = converter.document(&document);
        if !converter.problems.is_empty() {
            return Err(invalid_all(&self.path, &self.text, converter.problems));
        }
        let sections = crate::app::RenderedSections {
            networks: &converted.networks,
            volumes: &converted.volumes,
            secrets: &converted.secrets,
            services: &converted.services,
        };
        crate::app::typed_app(&self.path, &self.project, sections, Naming::Compose).map_err(|err| {
            match err {
                Error::InvalidApp { file, problems } => invalid_all(&file, &self.text, problems),
                other => other,
            }
        })
    }
}

fn invalid(path: &Path, text: &str, problem: Problem) -> Error {
    invalid_all(path, text, vec![problem])
}

fn invalid_all(path: &Path, text: &str, problems: Vec<Problem>) -> Error {
    Error::InvalidApp {
        file: path.to_path_buf(),
        problems: problems
            .into_iter()
            .map(|p| Problem::new(with_line(text, &p.key), p.message))
            .collect(),
    }
}

/// `key` with ` (line N)` when the key can be found in the text.
fn with_line(text: &str, key: &str) -> String {
    match line_of(text, key) {
        Some(line) if !key.is_empty() => format!("{key} (line {line})"),
        _ => key.to_string(),
    }
}

/// The 1-based line where a dotted key path (`services.web.ports[0].mode`) is written,
/// found by following the path through the file's indentation (block style) or along the
/// line (flow style). `None` when a segment cannot be found, e.g. a key Berth added.
pub(crate) fn line_of(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let segments = key
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .filter(|s| !s.is_empty());
    let mut start = 0usize;
    let mut parent_indent: Option<usize> = None;
    let mut found = None;
    for segment in segments {
        let mut hit = None;
        for (index, line) in lines.iter().enumerate().skip(start) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            // Past the parent's block (only lines after the parent's own line can end it).
            if Some(index) != found && parent_indent.is_some_and(|p| indent <= p) {
                break;
            }
            if has_key(line, segment) {
                hit = Some((index, indent));
                break;
            }
        }
        let (index, indent) = hit?;
        found = Some(index);
        start = index;
        parent_indent = Some(indent);
    }
    found.map(|index| index + 1)
}

/// Does `line` hold `key:` as a mapping key (plain or quoted, block or flow style)?
fn has_key(line: &str, key: &str) -> bool {
    for quoted in [key.to_string(), format!("\"{key}\""), format!("'{key}'")] {
        let mut from = 0;
        while let Some(position) = line[from..].find(&quoted) {
            let begin = from + position;
            let end = begin + quoted.len();
            let before_ok = line[..begin]
                .chars()
                .next_back()
                .is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-' || c == '\t');
            let after_ok = line[end..].starts_with(':');
            if before_ok && after_ok {
                return true;
            }
            from = end;
        }
    }
    false
}

/// Compose's project name: `name:`, else `COMPOSE_PROJECT_NAME`, else the folder's name
/// lowercased with characters outside `[a-z0-9_-]` dropped.
fn project_name(
    path: &Path,
    dir: &Path,
    document: &Map<String, Value>,
    lookup: &Lookup,
) -> std::result::Result<String, Problem> {
    let valid = |name: &str| {
        let mut chars = name.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    if let Some(name) = document.get("name") {
        let Value::String(name) = name else {
            return Err(Problem::new("name", "expected the project name as text"));
        };
        let name = interpolate(name, lookup).map_err(|message| Problem::new("name", message))?;
        if !valid(&name) {
            return Err(Problem::new(
                "name",
                format!("{name:?} is not a valid project name (lowercase letters, digits, `_` and `-`, starting with a letter or digit)"),
            ));
        }
        return Ok(name);
    }
    if let Some(name) = lookup.get("COMPOSE_PROJECT_NAME").filter(|n| !n.is_empty()) {
        if !valid(&name) {
            return Err(Problem::new(
                "",
                format!("COMPOSE_PROJECT_NAME={name:?} is not a valid project name"),
            ));
        }
        return Ok(name);
    }
    let folder = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_default();
    let name: String = folder
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let name = name.trim_start_matches(['_', '-']).to_string();
    if name.is_empty() {
        return Err(Problem::new(
            "name",
            format!(
                "missing, and the folder of {} gives no project name: add `name:`",
                path.display()
            ),
        ));
    }
    Ok(name)
}

/// Compose v2's container name: `PROJECT-SERVICE-N`.
pub fn container_name(project: &str, service: &str, replica: u32) -> String {
    format!("{project}-{service}-{replica}")
}

/// Which container of a compose project, for the labels compose puts on it.
pub(crate) struct ComposeContainer<'a> {
    pub project: &'a str,
    pub service: &'a str,
    pub replica: u32,
    pub config_hash: &'a str,
    pub image: &'a str,
}

/// The labels `docker compose` puts on a service's container and filters on (`ps`, `down`).
pub(crate) fn add_container_labels(labels: &mut BTreeMap<String, String>, c: &ComposeContainer) {
    let mut add = |key: &str, value: String| {
        labels.insert(format!("com.docker.compose.{key}"), value);
    };
    add("project", c.project.to_string());
    add("service", c.service.to_string());
    add("container-number", c.replica.to_string());
    add("oneoff", "False".to_string());
    add("config-hash", c.config_hash.to_string());
    add("version", convert::COMPOSE_VERSION.to_string());
    add("image", c.image.to_string());
}

#[cfg(test)]
mod tests;
