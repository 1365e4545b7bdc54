//! Ansible inventories: one directory per environment (`deploy/testing/`,
//! `deploy/production/`) holding hosts files (YAML or INI), `group_vars/` and `host_vars/`,
//! read to the same hosts, groups and variables as `ansible-inventory` reads them
//! (`deploy/tests/ansible_inventory.rs` compares the two).
//!
//! # Files
//! - `-i FILE`: one hosts file; `-i DIR`: every file in the directory (sorted, recursively),
//!   except hidden ones, `group_vars/`, `host_vars/` and Ansible's ignored extensions
//!   (`.md`, `.txt`, `.ini`, `.cfg`, `.bak`, `~`, …). A file ending in `.yml`, `.yaml` or
//!   `.json`, or parsing as a YAML mapping, is Ansible's YAML inventory format: top-level groups
//!   (`all` and any others; groups without a parent become children of `all`), each with
//!   `hosts:` (name → inline vars or nothing), `vars:` and `children:`. Anything else is read
//!   as Ansible's INI format (see `ini.rs`: sections, `:vars`, `:children`, `host k=v` with
//!   Python-literal values, `host:port`). Host ranges `web[01:03]` and `db-[a:c]` are
//!   expanded as Ansible does in both.
//! - `group_vars/` and `host_vars/` beside the hosts file (in the directory given): for each
//!   group or host NAME the first of `NAME` (a file, or a directory of `*.yml`/`*.yaml`/`*.json`
//!   and extensionless files merged in path order), `NAME.yml`, `NAME.yaml`, `NAME.json`, as
//!   Ansible's `host_group_vars` plugin; symlinks are followed.
//! - `-e/--extra-vars` (`extra_vars.rs`) go over everything, as in Ansible.
//!
//! # Precedence (lowest first), as Ansible's default `VARIABLE_PRECEDENCE`
//! 1. inline `vars:` of `all` in the hosts file
//! 2. inline `vars:` of the host's other groups, parents before children
//! 3. `group_vars/all`
//! 4. `group_vars/GROUP` of the host's other groups, parents before children
//! 5. the host's inline vars in the hosts file
//! 6. `host_vars/HOST`
//! 7. `-e/--extra-vars`
//!
//! So a file in `group_vars/` beats any inline group var, even a child group's — surprising,
//! but it is what Ansible does and what its users' inventories rely on. Groups of equal depth
//! are ordered by `ansible_group_priority` (default 1), then by name; a later group wins.
//! Merging replaces whole top-level variables (Ansible's default `hash_behaviour=replace`).
//! Magic variables `inventory_hostname`, `inventory_hostname_short` and `group_names` are set
//! last, as in Ansible.
//!
//! # Docker endpoint of a host
//! - `docker_host`: `unix:///path`, `tcp://HOST[:PORT]` or `ssh://[USER@]HOST[:PORT]`;
//! - TLS for `tcp://`: `docker_cert_path` (a directory with `ca.pem`, `cert.pem`, `key.pem`,
//!   as `DOCKER_CERT_PATH`), or `docker_tls_ca_cert`, `docker_tls_client_cert`,
//!   `docker_tls_client_key` one by one, `docker_tls: true` for server-verified TLS without a
//!   client certificate, `docker_tls_verify: false` to skip server verification. Relative
//!   paths are relative to the inventory directory. Port defaults: 2375 plain, 2376 TLS.
//! - without `docker_host`: `ansible_connection: local` means the local socket; otherwise SSH
//!   to `ansible_host` (default: the host's name) as `ansible_user` on `ansible_port`,
//!   exactly where Ansible would have connected.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Problem, Result};
use crate::template::Vars;
use crate::yaml;

mod ansible;
mod builder;
use builder::Builder;
// For ini.rs, which fills the same builder.
use builder::{check_name, expand_host_range};
mod endpoint;
pub use endpoint::{DockerEndpoint, TlsFiles};
pub mod extra_vars;
mod ini;
mod vars_files;
use vars_files::read_dir_sorted;

const HOSTS_FILE_NAMES: [&str; 6] = [
    "hosts.yml",
    "hosts.yaml",
    "hosts",
    "inventory.yml",
    "inventory.yaml",
    "inventory",
];

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: String,
    pub parents: BTreeSet<String>,
    pub children: BTreeSet<String>,
    /// Hosts listed directly in this group (not via children).
    pub hosts: BTreeSet<String>,
    /// `vars:` written in the hosts file.
    pub inline_vars: Vars,
    /// Merged contents of `group_vars/NAME*`.
    pub file_vars: Vars,
    /// Longest distance from `all`; deeper groups override shallower ones.
    pub depth: usize,
    pub priority: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    /// Every group the host belongs to (directly or through children), `all` included,
    /// in precedence order: the last one wins.
    pub groups: Vec<String>,
    /// Effective variables after applying the precedence rules.
    pub vars: Vars,
    pub endpoint: DockerEndpoint,
}

#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    pub dir: PathBuf,
    pub hosts_file: PathBuf,
    groups: BTreeMap<String, Group>,
    hosts: BTreeMap<String, Host>,
    /// Non-fatal findings, e.g. a `group_vars/` file for a group that does not exist
    /// (Ansible ignores those silently; they are usually typos).
    pub warnings: Vec<String>,
}

impl Inventory {
    /// Loads an inventory from a hosts file (YAML or INI) or a directory, taking that
    /// directory (or the file's) for `group_vars/` and `host_vars/`.
    pub fn load(path: &Path) -> Result<Inventory> {
        Inventory::load_with_extra_vars(path, &Vars::new())
    }

    /// Like [`Inventory::load`], with `-e/--extra-vars` on top of every host's variables
    /// (Ansible's highest precedence).
    ///
    /// A directory is read as Ansible reads one: every file in it (sorted by name, in
    /// subdirectories too) is an inventory source, except hidden files, `group_vars/`,
    /// `host_vars/` and Ansible's ignored extensions (`.md`, `.txt`, `.ini`, `.cfg`, `~`, …).
    /// Each file is YAML when it ends in `.yml`, `.yaml` or `.json` or parses as a YAML
    /// mapping, INI otherwise.
    pub fn load_with_extra_vars(path: &Path, extra_vars: &Vars) -> Result<Inventory> {
        let (dir, sources) = if path.is_dir() {
            let mut sources = Vec::new();
            collect_sources(path, &mut sources)?;
            if sources.is_empty() {
                return Err(Error::Inventory {
                    path: path.to_path_buf(),
                    problem: Problem::new(
                        "",
                        format!(
                            "no inventory file in this directory (e.g. {})",
                            HOSTS_FILE_NAMES.join(", ")
                        ),
                    ),
                });
            }
            (path.to_path_buf(), sources)
        } else {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (dir, vec![path.to_path_buf()])
        };
        let mut builder = Builder::new(&sources[0]);
        for source in &sources {
            let text = std::fs::read_to_string(source).map_err(|source_error| Error::Io {
                path: source.clone(),
                error: source_error,
            })?;
            builder.path = source.clone();
            let extension = source.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(extension, "yml" | "yaml" | "json") {
                let document = yaml::parse_str(source, &text)?;
                builder.parse_document(&document)?;
                continue;
            }
            match yaml::parse_str(source, &text) {
                Ok(document @ (Value::Object(_) | Value::Null)) => {
                    builder.parse_document(&document)?
                }
                // Not a YAML mapping: INI, as Ansible falls back from its yaml plugin to ini.
                // A YAML file with a syntax error reports that error, not INI's.
                Ok(_) => ini::parse(&mut builder, &text)?,
                Err(yaml_error) => {
                    if let Err(ini_error) = ini::parse(&mut builder, &text) {
                        return Err(if looks_like_yaml(&text) {
                            yaml_error
                        } else {
                            ini_error
                        });
                    }
                }
            }
        }
        let hosts_file = sources[0].clone();
        builder.finish(dir, hosts_file, extra_vars)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.get(name)
    }

    /// All hosts, sorted by name.
    pub fn hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.get(name)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Hosts of a group including those of its descendant groups, sorted by name.
    pub fn hosts_of_group(&self, name: &str) -> BTreeSet<&str> {
        self.hosts
            .values()
            .filter(|host| host.groups.iter().any(|group| group == name))
            .map(|host| host.name.as_str())
            .collect()
    }

    /// The hosts an Ansible-style `--limit` pattern selects (all hosts when `None`).
    pub fn select(&self, limit: Option<&str>) -> Result<Vec<&Host>> {
        let names = match limit {
            None => self.hosts.keys().map(String::as_str).collect(),
            Some(pattern) => crate::limit::select(self, pattern)?,
        };
        Ok(names
            .into_iter()
            .filter_map(|name| self.hosts.get(name))
            .collect())
    }
}

impl crate::limit::HostsAndGroups for Inventory {
    fn host_names(&self) -> Vec<&str> {
        self.hosts.keys().map(String::as_str).collect()
    }

    fn group_names(&self) -> Vec<&str> {
        self.groups.keys().map(String::as_str).collect()
    }

    fn hosts_of_group(&self, group: &str) -> BTreeSet<&str> {
        Inventory::hosts_of_group(self, group)
    }
}

/// Ansible's `INVENTORY_IGNORE_EXTS` (with its `REJECT_EXTS`): files a directory inventory
/// skips.
const IGNORED_EXTENSIONS: [&str; 13] = [
    ".pyc", ".pyo", ".swp", ".bak", "~", ".rpm", ".md", ".txt", ".rst", ".orig", ".ini", ".cfg",
    ".retry",
];

/// The first meaningful line is `key:` or `key: value` (YAML), not `[section]` or a host.
fn looks_like_yaml(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .is_some_and(|line| {
            line == "---" || line.ends_with(':') || (line.contains(": ") && !line.contains('='))
        })
}

fn collect_sources(dir: &Path, sources: &mut Vec<PathBuf>) -> Result<()> {
    for path in read_dir_sorted(dir)? {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.starts_with('.')
            || matches!(name, "group_vars" | "host_vars" | "vars_plugins")
            || IGNORED_EXTENSIONS.iter().any(|ext| name.ends_with(ext))
        {
            continue;
        }
        if path.is_dir() {
            collect_sources(&path, sources)?;
        } else {
            sources.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
