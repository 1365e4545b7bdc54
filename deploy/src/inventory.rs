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
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Problem, Result};
use crate::template::{Templater, Vars};
use crate::yaml;

pub mod extra_vars;
mod ini;

const HOSTS_FILE_NAMES: [&str; 6] = [
    "hosts.yml",
    "hosts.yaml",
    "hosts",
    "inventory.yml",
    "inventory.yaml",
    "inventory",
];
const VARS_FILE_EXTENSIONS: [&str; 3] = ["yml", "yaml", "json"];
const DEFAULT_GROUP_PRIORITY: i64 = 1;
const DEFAULT_UNIX_SOCKET: &str = "/var/run/docker.sock";

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DockerEndpoint {
    Unix {
        path: PathBuf,
    },
    Tcp {
        host: String,
        port: u16,
        tls: Option<TlsFiles>,
    },
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        /// `ansible_ssh_private_key_file`, relative to the inventory directory.
        #[serde(skip_serializing_if = "Option::is_none")]
        identity_file: Option<PathBuf>,
        /// `ansible_ssh_common_args` then `ansible_ssh_extra_args`, split like a shell would.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        options: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Verify the daemon's certificate (against `ca_cert` or the system roots).
    pub verify: bool,
}

impl fmt::Display for DockerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerEndpoint::Unix { path } => write!(f, "unix://{}", path.display()),
            DockerEndpoint::Tcp { host, port, tls } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(
                    f,
                    "tcp://{host}:{port}{}",
                    if tls.is_some() { " (tls)" } else { "" }
                )
            }
            DockerEndpoint::Ssh {
                user, host, port, ..
            } => {
                write!(f, "ssh://")?;
                if let Some(user) = user {
                    write!(f, "{user}@")?;
                }
                write!(f, "{host}")?;
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
        }
    }
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

    /// What was read, in the shape of `ansible-inventory --list`: `_meta.hostvars` (each
    /// host's merged variables, without the magic `inventory_hostname*`/`group_names`; hosts
    /// without variables left out) and one entry per group with its direct `hosts` (none for
    /// `all`) and `children`, empty lists and empty groups left out, lists sorted.
    pub fn ansible_list(&self) -> Value {
        let mut top = serde_json::Map::new();
        let mut hostvars = serde_json::Map::new();
        for host in self.hosts.values() {
            let vars = ansible_host_vars(host);
            if !vars.is_empty() {
                hostvars.insert(host.name.clone(), Value::Object(vars));
            }
        }
        top.insert("_meta".into(), serde_json::json!({ "hostvars": hostvars }));
        for group in self.groups.values() {
            let mut entry = serde_json::Map::new();
            if group.name != "all" && !group.hosts.is_empty() {
                entry.insert("hosts".into(), serde_json::json!(group.hosts));
            }
            if !group.children.is_empty() {
                entry.insert("children".into(), serde_json::json!(group.children));
            }
            if !entry.is_empty() {
                top.insert(group.name.clone(), Value::Object(entry));
            }
        }
        Value::Object(top)
    }

    /// A host's merged variables as `ansible-inventory --host NAME` prints them (its entry
    /// in `_meta.hostvars` of [`Inventory::ansible_list`], `{}` when it has none); `None`
    /// for a host the inventory does not have.
    pub fn ansible_host(&self, name: &str) -> Option<Value> {
        self.hosts
            .get(name)
            .map(|host| Value::Object(ansible_host_vars(host)))
    }

    /// The group tree as `ansible-inventory --graph [GROUP]` prints it, from `group`
    /// (default `all`): `@GROUP:` then, one level deeper each (`  |` per level, then `--`),
    /// the child groups (recursively, a group under two parents shown under both) and then
    /// the group's direct hosts (none listed for `all`). Ansible lists both in the order it
    /// read them; Berth keeps no such order, so `ungrouped` comes first under `all` (as in
    /// Ansible, which creates it first) and the others by name. `None` for an unknown group.
    pub fn ansible_graph(&self, group: Option<&str>) -> Option<String> {
        let start = self.groups.get(group.unwrap_or("all"))?;
        let mut lines = Vec::new();
        self.graph_group(start, 0, &mut lines);
        let mut text = lines.join("\n");
        text.push('\n');
        Some(text)
    }

    fn graph_group(&self, group: &Group, depth: usize, lines: &mut Vec<String>) {
        let indent = |depth: usize, name: &str| {
            if depth == 0 {
                name.to_string()
            } else {
                format!("{}--{name}", "  |".repeat(depth))
            }
        };
        lines.push(indent(depth, &format!("@{}:", group.name)));
        let mut children: Vec<&str> = group.children.iter().map(String::as_str).collect();
        children.sort_by_key(|name| (*name != "ungrouped", *name));
        for child in children {
            if let Some(child) = self.groups.get(child) {
                self.graph_group(child, depth + 1, lines);
            }
        }
        if group.name != "all" {
            for host in &group.hosts {
                lines.push(indent(depth + 1, host));
            }
        }
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

/// Collects groups and hosts while walking the hosts file, then resolves them.
struct Builder {
    /// The file being read, for error messages.
    path: PathBuf,
    groups: BTreeMap<String, Group>,
    /// Inline vars per host; a host listed in several groups merges them, later wins.
    host_inline_vars: BTreeMap<String, Vars>,
}

/// A host's variables as `ansible-inventory` shows them: without the magic
/// `inventory_hostname*`/`group_names`.
fn ansible_host_vars(host: &Host) -> serde_json::Map<String, Value> {
    const MAGIC: [&str; 3] = [
        "inventory_hostname",
        "inventory_hostname_short",
        "group_names",
    ];
    host.vars
        .iter()
        .filter(|(key, _)| !MAGIC.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

impl Builder {
    fn new(path: &Path) -> Self {
        let mut builder = Builder {
            path: path.to_path_buf(),
            groups: BTreeMap::new(),
            host_inline_vars: BTreeMap::new(),
        };
        builder.ensure_group("all");
        builder.ensure_group("ungrouped");
        builder
    }

    fn problem(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Inventory {
            path: self.path.clone(),
            problem: Problem::new(key, message),
        }
    }

    fn ensure_group(&mut self, name: &str) -> &mut Group {
        self.groups
            .entry(name.to_string())
            .or_insert_with(|| Group {
                name: name.to_string(),
                parents: BTreeSet::new(),
                children: BTreeSet::new(),
                hosts: BTreeSet::new(),
                inline_vars: Vars::new(),
                file_vars: Vars::new(),
                depth: 0,
                priority: DEFAULT_GROUP_PRIORITY,
            })
    }

    fn parse_document(&mut self, document: &Value) -> Result<()> {
        let top = match document {
            Value::Null => return Ok(()),
            Value::Object(map) => map,
            other => {
                return Err(self.problem(
                    "",
                    format!(
                        "expected a mapping of groups (all: ...), found {}",
                        yaml::kind_of(other)
                    ),
                ))
            }
        };
        // Groups without a parent become children of `all` in `finish`, as in Ansible.
        for (name, body) in top {
            self.parse_group(name, body, name)?;
        }
        Ok(())
    }

    fn link(&mut self, parent: &str, child: &str) {
        self.ensure_group(parent).children.insert(child.to_string());
        self.ensure_group(child).parents.insert(parent.to_string());
    }

    fn parse_group(&mut self, name: &str, body: &Value, key: &str) -> Result<()> {
        check_name(name, "group", true).map_err(|message| self.problem(key, message))?;
        self.ensure_group(name);
        let map = match body {
            Value::Null => return Ok(()),
            Value::Object(map) => map,
            other => {
                return Err(self.problem(
                    key,
                    format!(
                        "a group is a mapping of hosts/vars/children, found {}",
                        yaml::kind_of(other)
                    ),
                ))
            }
        };
        for (section, value) in map {
            let section_key = format!("{key}.{section}");
            match section.as_str() {
                "hosts" => self.parse_hosts(name, value, &section_key)?,
                "vars" => {
                    let vars = vars_from_value(value).map_err(|message| self.problem(&section_key, message))?;
                    if let Some(priority) = vars.get("ansible_group_priority") {
                        let priority = priority
                            .as_i64()
                            .ok_or_else(|| self.problem(&section_key, "ansible_group_priority must be an integer"))?;
                        self.ensure_group(name).priority = priority;
                    }
                    self.ensure_group(name).inline_vars.extend(vars);
                }
                "children" => match value {
                    Value::Null => {}
                    Value::Object(children) => {
                        for (child, child_body) in children {
                            self.parse_group(child, child_body, &format!("{section_key}.{child}"))?;
                            self.link(name, child);
                        }
                    }
                    other => return Err(self.problem(&section_key, format!("children is a mapping of groups, found {}", yaml::kind_of(other)))),
                },
                other => {
                    return Err(self.problem(&section_key, format!("unknown key `{other}` in group `{name}` (expected hosts, vars or children)")))
                }
            }
        }
        Ok(())
    }

    fn parse_hosts(&mut self, group: &str, value: &Value, key: &str) -> Result<()> {
        let hosts = match value {
            Value::Null => return Ok(()),
            Value::Object(hosts) => hosts,
            other => {
                return Err(self.problem(
                    key,
                    format!(
                        "hosts is a mapping of host names to vars, found {}",
                        yaml::kind_of(other)
                    ),
                ))
            }
        };
        for (pattern, host_vars) in hosts {
            let host_key = format!("{key}.{pattern}");
            let names =
                expand_host_range(pattern).map_err(|message| self.problem(&host_key, message))?;
            let vars =
                vars_from_value(host_vars).map_err(|message| self.problem(&host_key, message))?;
            for name in names {
                check_name(&name, "host", false)
                    .map_err(|message| self.problem(&host_key, message))?;
                self.ensure_group(group).hosts.insert(name.clone());
                self.host_inline_vars
                    .entry(name)
                    .or_default()
                    .extend(vars.clone());
            }
        }
        Ok(())
    }

    fn finish(mut self, dir: PathBuf, hosts_file: PathBuf, extra_vars: &Vars) -> Result<Inventory> {
        // Ansible puts hosts that are in no group but `all` into `ungrouped`, and takes
        // hosts an INI file listed before its first section out of it once they are in a
        // real group.
        let grouped: BTreeSet<String> = self
            .groups
            .values()
            .filter(|group| group.name != "all" && group.name != "ungrouped")
            .flat_map(|group| group.hosts.iter().cloned())
            .collect();
        self.ensure_group("ungrouped")
            .hosts
            .retain(|host| !grouped.contains(host));
        let all_direct: Vec<String> = self.groups["all"].hosts.iter().cloned().collect();
        for host in all_direct {
            if !grouped.contains(&host) {
                self.ensure_group("ungrouped").hosts.insert(host);
            }
        }
        // Every group without a parent is a child of `all` (Ansible's reconcile step).
        let orphans: Vec<String> = self
            .groups
            .values()
            .filter(|group| group.name != "all" && group.parents.is_empty())
            .map(|group| group.name.clone())
            .collect();
        for name in orphans {
            self.link("all", &name);
        }
        for name in self.host_inline_vars.keys() {
            if self.groups.contains_key(name) {
                return Err(self.problem(
                    "",
                    format!(
                        "`{name}` is both a host and a group; --limit could not tell them apart"
                    ),
                ));
            }
        }
        self.compute_depths()?;

        let mut warnings = Vec::new();
        let group_files = load_vars_dir(
            &dir.join("group_vars"),
            &self.groups.keys().cloned().collect(),
            "group",
            &mut warnings,
        )?;
        for (name, vars) in group_files {
            if let Some(group) = self.groups.get_mut(&name) {
                group.file_vars = vars;
            }
        }
        let host_names: BTreeSet<String> = self.host_inline_vars.keys().cloned().collect();
        let mut host_files =
            load_vars_dir(&dir.join("host_vars"), &host_names, "host", &mut warnings)?;

        let mut hosts = BTreeMap::new();
        for (name, inline) in &self.host_inline_vars {
            let groups = self.groups_of_host(name);
            let mut vars = Vars::new();
            let other_groups = || {
                groups
                    .iter()
                    .filter(|g| *g != "all")
                    .map(|g| &self.groups[g])
            };
            vars.extend(self.groups["all"].inline_vars.clone());
            for group in other_groups() {
                vars.extend(group.inline_vars.clone());
            }
            vars.extend(self.groups["all"].file_vars.clone());
            for group in other_groups() {
                vars.extend(group.file_vars.clone());
            }
            vars.extend(inline.clone());
            vars.extend(host_files.remove(name).unwrap_or_default());
            vars.extend(extra_vars.clone());
            let short = name.split('.').next().unwrap_or(name);
            vars.insert("inventory_hostname".into(), Value::String(name.clone()));
            vars.insert(
                "inventory_hostname_short".into(),
                Value::String(short.to_string()),
            );
            let group_names: Vec<Value> = groups
                .iter()
                .filter(|g| *g != "all")
                .map(|g| Value::String(g.clone()))
                .collect();
            vars.insert("group_names".into(), Value::Array(group_names));
            let endpoint =
                endpoint_from_vars(name, &vars, &dir).map_err(|problem| Error::Inventory {
                    path: hosts_file.clone(),
                    problem,
                })?;
            hosts.insert(
                name.clone(),
                Host {
                    name: name.clone(),
                    groups,
                    vars,
                    endpoint,
                },
            );
        }
        Ok(Inventory {
            dir,
            hosts_file,
            groups: self.groups,
            hosts,
            warnings,
        })
    }

    /// Depth = longest path from `all`, as Ansible computes it; also rejects cycles, which
    /// would make "child overrides parent" meaningless.
    fn compute_depths(&mut self) -> Result<()> {
        fn depth_of(
            groups: &BTreeMap<String, Group>,
            name: &str,
            stack: &mut Vec<String>,
            memo: &mut BTreeMap<String, usize>,
        ) -> Result<usize, String> {
            if let Some(depth) = memo.get(name) {
                return Ok(*depth);
            }
            if stack.iter().any(|entry| entry == name) {
                return Err(format!(
                    "groups form a cycle: {} -> {name}",
                    stack.join(" -> ")
                ));
            }
            stack.push(name.to_string());
            let mut depth = 0;
            for parent in &groups[name].parents {
                depth = depth.max(depth_of(groups, parent, stack, memo)? + 1);
            }
            stack.pop();
            memo.insert(name.to_string(), depth);
            Ok(depth)
        }
        let mut memo = BTreeMap::new();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in &names {
            depth_of(&self.groups, name, &mut Vec::new(), &mut memo)
                .map_err(|message| self.problem("", message))?;
        }
        for (name, depth) in memo {
            if let Some(group) = self.groups.get_mut(&name) {
                group.depth = depth;
            }
        }
        Ok(())
    }

    /// All groups containing the host, with ancestors, sorted the way Ansible merges them.
    fn groups_of_host(&self, host: &str) -> Vec<String> {
        let mut found = BTreeSet::new();
        let mut pending: Vec<&str> = self
            .groups
            .values()
            .filter(|g| g.hosts.contains(host))
            .map(|g| g.name.as_str())
            .collect();
        while let Some(name) = pending.pop() {
            if found.insert(name.to_string()) {
                pending.extend(self.groups[name].parents.iter().map(String::as_str));
            }
        }
        found.insert("all".to_string());
        let mut groups: Vec<&Group> = found.iter().map(|name| &self.groups[name]).collect();
        groups.sort_by(|a, b| (a.depth, a.priority, &a.name).cmp(&(b.depth, b.priority, &b.name)));
        groups.into_iter().map(|g| g.name.clone()).collect()
    }
}

/// Names appear in `--limit` patterns, so they must not contain pattern syntax.
fn check_name(name: &str, what: &str, is_group: bool) -> Result<(), String> {
    let forbidden: &[char] = if is_group {
        &[',', ':', '!', '&', '*', '?', '[', ']', '~']
    } else {
        &[',', '!', '&', '*', '?', '[', ']', '~']
    };
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || forbidden.contains(&c))
    {
        return Err(format!(
            "invalid {what} name {name:?}: no spaces or any of {}",
            forbidden.iter().collect::<String>()
        ));
    }
    Ok(())
}

/// Expands Ansible host ranges: `web[01:03]` → web01, web02, web03; `db-[a:c]`; `[1:9:2]`.
fn expand_host_range(pattern: &str) -> Result<Vec<String>, String> {
    let Some(open) = pattern.find('[') else {
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find(']')
        .map(|i| open + i)
        .ok_or_else(|| format!("unclosed `[` in host pattern {pattern:?}"))?;
    let (prefix, range, suffix) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let parts: Vec<&str> = range.split(':').collect();
    let (start, end, step) = match parts.as_slice() {
        [start, end] => (*start, *end, 1usize),
        [start, end, step] => (
            *start,
            *end,
            step.parse::<usize>()
                .ok()
                .filter(|s| *s > 0)
                .ok_or_else(|| format!("invalid step in {pattern:?}"))?,
        ),
        _ => {
            return Err(format!(
                "host range in {pattern:?} must be [start:end] or [start:end:step]"
            ))
        }
    };
    let items: Vec<String> =
        if let (Ok(first), Ok(last)) = (start.parse::<u64>(), end.parse::<u64>()) {
            if first > last {
                return Err(format!("host range {pattern:?} goes backwards"));
            }
            let width = if start.len() > 1 && start.starts_with('0') {
                start.len()
            } else {
                0
            };
            (first..=last)
                .step_by(step)
                .map(|n| format!("{n:0width$}"))
                .collect()
        } else {
            let letter = |s: &str| {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if c.is_ascii_alphabetic() => Some(c),
                    _ => None,
                }
            };
            match (letter(start), letter(end)) {
                (Some(first), Some(last)) if first <= last => {
                    (first..=last).step_by(step).map(String::from).collect()
                }
                _ => {
                    return Err(format!(
                        "host range in {pattern:?} must be numbers or single letters, ascending"
                    ))
                }
            }
        };
    let mut names = Vec::new();
    for item in items {
        for rest in expand_host_range(suffix)? {
            names.push(format!("{prefix}{item}{rest}"));
        }
    }
    Ok(names)
}

fn vars_from_value(value: &Value) -> Result<Vars, String> {
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
fn load_vars_dir(
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

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>> {
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

fn endpoint_from_vars(
    host: &str,
    vars: &Vars,
    inventory_dir: &Path,
) -> Result<DockerEndpoint, Problem> {
    let templater = Templater::new(vars);
    let key = |name: &str| format!("host {host}: {name}");
    let text_var = |name: &str| -> Result<Option<String>, Problem> {
        match vars.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => templater
                .render_string(text, name)
                .map(Some)
                .map_err(|e| Problem::new(key(name), e.message)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(Problem::new(
                key(name),
                format!("expected text, found {}", yaml::kind_of(other)),
            )),
        }
    };
    let bool_var = |name: &str| -> Result<Option<bool>, Problem> {
        match text_var(name)?.as_deref() {
            None => Ok(None),
            Some("true" | "yes" | "1" | "True" | "on") => Ok(Some(true)),
            Some("false" | "no" | "0" | "False" | "off") => Ok(Some(false)),
            Some(other) => Err(Problem::new(
                key(name),
                format!("expected true or false, found {other:?}"),
            )),
        }
    };
    let bool_var = |name: &str| match vars.get(name) {
        Some(Value::Bool(b)) => Ok(Some(*b)),
        _ => bool_var(name),
    };
    let resolve_path = |text: String| {
        let path = PathBuf::from(text);
        if path.is_absolute() {
            path
        } else {
            inventory_dir.join(path)
        }
    };

    let ssh_identity = || Ok(text_var("ansible_ssh_private_key_file")?.map(resolve_path));
    let ssh_options = || -> Result<Vec<String>, Problem> {
        let mut options = Vec::new();
        for name in ["ansible_ssh_common_args", "ansible_ssh_extra_args"] {
            if let Some(text) = text_var(name)? {
                options.extend(
                    crate::units::split_words(&text).map_err(|e| Problem::new(key(name), e))?,
                );
            }
        }
        Ok(options)
    };

    let Some(url) = text_var("docker_host")? else {
        if text_var("ansible_connection")?.as_deref() == Some("local") {
            return Ok(DockerEndpoint::Unix {
                path: PathBuf::from(DEFAULT_UNIX_SOCKET),
            });
        }
        let port = match text_var("ansible_port")? {
            None => None,
            Some(text) => Some(text.parse::<u16>().map_err(|_| {
                Problem::new(key("ansible_port"), format!("invalid port {text:?}"))
            })?),
        };
        return Ok(DockerEndpoint::Ssh {
            user: text_var("ansible_user")?,
            host: text_var("ansible_host")?.unwrap_or_else(|| host.to_string()),
            port,
            identity_file: ssh_identity()?,
            options: ssh_options()?,
        });
    };

    let cert_dir = text_var("docker_cert_path")?.map(resolve_path);
    let from_dir = |file: &str| cert_dir.as_ref().map(|dir| dir.join(file));
    let ca_cert = text_var("docker_tls_ca_cert")?
        .map(resolve_path)
        .or_else(|| from_dir("ca.pem"));
    let client_cert = text_var("docker_tls_client_cert")?
        .map(resolve_path)
        .or_else(|| from_dir("cert.pem"));
    let client_key = text_var("docker_tls_client_key")?
        .map(resolve_path)
        .or_else(|| from_dir("key.pem"));
    let tls_wanted = bool_var("docker_tls")?.unwrap_or(false)
        || ca_cert.is_some()
        || client_cert.is_some()
        || client_key.is_some();
    let verify = bool_var("docker_tls_verify")?.unwrap_or(true);
    if client_cert.is_some() != client_key.is_some() {
        return Err(Problem::new(
            key("docker_tls_client_cert"),
            "a client certificate needs its key and the key its certificate",
        ));
    }

    let parsed =
        parse_endpoint_url(&url).map_err(|message| Problem::new(key("docker_host"), message))?;
    match parsed {
        ParsedEndpoint::Tcp { host, port } => {
            let tls = tls_wanted.then_some(TlsFiles {
                ca_cert,
                client_cert,
                client_key,
                verify,
            });
            let port = port.unwrap_or(if tls.is_some() { 2376 } else { 2375 });
            Ok(DockerEndpoint::Tcp { host, port, tls })
        }
        _ if tls_wanted => Err(Problem::new(
            key("docker_host"),
            format!("TLS settings only apply to tcp:// endpoints, not {url}"),
        )),
        ParsedEndpoint::Unix(path) => Ok(DockerEndpoint::Unix { path }),
        ParsedEndpoint::Ssh { user, host, port } => Ok(DockerEndpoint::Ssh {
            user,
            host,
            port,
            identity_file: ssh_identity()?,
            options: ssh_options()?,
        }),
    }
}

enum ParsedEndpoint {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: Option<u16>,
    },
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

fn parse_endpoint_url(url: &str) -> Result<ParsedEndpoint, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a URL; expected unix:///path, tcp://host:port or ssh://user@host"
        ));
    };
    match scheme {
        "unix" => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{url:?}: a unix socket path must be absolute (unix:///var/run/docker.sock)"
                ));
            }
            Ok(ParsedEndpoint::Unix(PathBuf::from(rest)))
        }
        "tcp" => {
            let (host, port) = split_host_port(rest.trim_end_matches('/'), url)?;
            Ok(ParsedEndpoint::Tcp { host, port })
        }
        "ssh" => {
            let (user, host_port) = match rest.trim_end_matches('/').rsplit_once('@') {
                Some((user, host_port)) if !user.is_empty() => (Some(user.to_string()), host_port),
                Some(_) => return Err(format!("{url:?}: empty user name")),
                None => (None, rest.trim_end_matches('/')),
            };
            let (host, port) = split_host_port(host_port, url)?;
            Ok(ParsedEndpoint::Ssh { user, host, port })
        }
        other => Err(format!(
            "{url:?}: unsupported scheme {other:?}; use unix://, tcp:// or ssh://"
        )),
    }
}

fn split_host_port(text: &str, url: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?}: missing or invalid host"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: invalid port {p:?}"))
        })
        .transpose()?;
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Writes files (path → content) into a fresh directory and loads it as an inventory.
    fn inventory(files: &[(&str, &str)]) -> Result<Inventory> {
        let dir = tempfile::tempdir().expect("temp dir");
        for (path, content) in files {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().expect("has parent")).expect("mkdir");
            std::fs::write(&full, content).expect("write");
        }
        let result = Inventory::load(dir.path());
        // Keep the directory alive until loading is done; paths in the result are only text.
        drop(dir);
        result
    }

    fn var<'i>(inv: &'i Inventory, host: &str, name: &str) -> &'i Value {
        &inv.host(host).expect("host exists").vars[name]
    }

    const HOSTS: &str = r#"
all:
  vars: { level: all-inline, all_only: a }
  children:
    web:
      vars: { level: web-inline, web_only: w }
      hosts:
        web1: { level: host-inline }
        web2:
      children:
        web_eu:
          vars: { level: web_eu-inline }
          hosts: { web3: }
    db:
      hosts: { db1: { ansible_host: 10.0.0.5, ansible_user: deploy } }
"#;

    #[test]
    fn groups_children_and_hosts() {
        let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
        let names: Vec<_> = inv.hosts().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["db1", "web1", "web2", "web3"]);
        assert_eq!(
            inv.hosts_of_group("web").into_iter().collect::<Vec<_>>(),
            ["web1", "web2", "web3"]
        );
        assert_eq!(inv.host("web3").unwrap().groups, ["all", "web", "web_eu"]);
        assert_eq!(inv.group("web_eu").unwrap().depth, 2);
        assert_eq!(var(&inv, "web3", "group_names"), &json!(["web", "web_eu"]));
    }

    #[test]
    fn ansible_graph_renders_the_group_tree_as_ansible_inventory() {
        let inv = inventory(&[(
            "hosts",
            "lonely\n[web]\nweb2\nweb1\n[eu]\nweb1\n[prod:children]\nweb\neu\n[empty]\n",
        )])
        .unwrap();
        assert_eq!(
            inv.ansible_graph(None).unwrap(),
            "@all:\n\
             \x20 |--@ungrouped:\n\
             \x20 |  |--lonely\n\
             \x20 |--@empty:\n\
             \x20 |--@prod:\n\
             \x20 |  |--@eu:\n\
             \x20 |  |  |--web1\n\
             \x20 |  |--@web:\n\
             \x20 |  |  |--web1\n\
             \x20 |  |  |--web2\n"
        );
        // From a group: that group at depth 0, and `all`'s rule (no hosts) only for `all`.
        assert_eq!(
            inv.ansible_graph(Some("web")).unwrap(),
            "@web:\n  |--web1\n  |--web2\n"
        );
        assert_eq!(inv.ansible_graph(Some("nosuch")), None);
    }

    #[test]
    fn ansible_graph_shows_a_group_under_each_parent_and_empty_ungrouped() {
        let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
        assert_eq!(
            inv.ansible_graph(Some("all")).unwrap(),
            "@all:\n\
             \x20 |--@ungrouped:\n\
             \x20 |--@db:\n\
             \x20 |  |--db1\n\
             \x20 |--@web:\n\
             \x20 |  |--@web_eu:\n\
             \x20 |  |  |--web3\n\
             \x20 |  |--web1\n\
             \x20 |  |--web2\n"
        );
        let twice = inventory(&[(
            "hosts",
            "[a]\nh1\n[b]\nh2\n[a:children]\nc\n[b:children]\nc\n[c]\nh3\n",
        )])
        .unwrap();
        assert_eq!(twice.ansible_graph(None).unwrap().matches("@c:").count(), 2);
        assert_eq!(
            twice.ansible_graph(None).unwrap().matches("|--h3").count(),
            2
        );
    }

    #[test]
    fn ansible_host_is_the_hostvars_entry() {
        let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
        let list = inv.ansible_list();
        assert_eq!(
            inv.ansible_host("db1").unwrap(),
            list["_meta"]["hostvars"]["db1"]
        );
        assert!(inv
            .ansible_host("db1")
            .unwrap()
            .get("group_names")
            .is_none());
        assert_eq!(inv.ansible_host("nosuch"), None);
    }

    #[test]
    fn inline_precedence_all_then_parent_then_child_then_host() {
        let inv = inventory(&[("hosts.yml", HOSTS)]).unwrap();
        assert_eq!(var(&inv, "web1", "level"), "host-inline");
        assert_eq!(var(&inv, "web2", "level"), "web-inline");
        assert_eq!(var(&inv, "web3", "level"), "web_eu-inline");
        assert_eq!(var(&inv, "db1", "level"), "all-inline");
        assert_eq!(var(&inv, "web3", "web_only"), "w");
        assert_eq!(var(&inv, "db1", "all_only"), "a");
    }

    #[test]
    fn files_beat_inline_and_host_vars_beat_everything() {
        let inv = inventory(&[
            ("hosts.yml", HOSTS),
            (
                "group_vars/all.yml",
                "level: all-file\nfrom_all_file: true\nword: yes\n",
            ),
            ("group_vars/web", "level: web-file\n"),
            ("host_vars/web1.yaml", "level: web1-file\n"),
        ])
        .unwrap();
        // host_vars file > host inline
        assert_eq!(var(&inv, "web1", "level"), "web1-file");
        // group_vars/web file > web inline
        assert_eq!(var(&inv, "web2", "level"), "web-file");
        // Ansible's order: a parent's group_vars FILE beats a child's INLINE vars.
        assert_eq!(var(&inv, "web3", "level"), "web-file");
        // group_vars/all file > every inline group var
        assert_eq!(var(&inv, "db1", "level"), "all-file");
        assert_eq!(var(&inv, "db1", "from_all_file"), &json!(true));
        // YAML 1.2: `yes` is text, not a boolean (see yaml.rs).
        assert_eq!(var(&inv, "db1", "word"), "yes");
    }

    #[test]
    fn child_group_file_beats_parent_group_file() {
        let inv = inventory(&[
            ("hosts.yml", HOSTS),
            ("group_vars/web.yml", "level: web\n"),
            ("group_vars/web_eu.yml", "level: web_eu\n"),
        ])
        .unwrap();
        assert_eq!(var(&inv, "web3", "level"), "web_eu");
        assert_eq!(var(&inv, "web1", "level"), "host-inline");
    }

    #[test]
    fn same_depth_groups_merge_by_priority_then_name() {
        let hosts = r#"
all:
  children:
    alpha: { hosts: { h: }, vars: { v: alpha } }
    beta:  { hosts: { h: }, vars: { v: beta } }
"#;
        let inv = inventory(&[("hosts.yml", hosts)]).unwrap();
        assert_eq!(var(&inv, "h", "v"), "beta");
        let with_priority = hosts.replace(
            "vars: { v: alpha }",
            "vars: { v: alpha, ansible_group_priority: 10 }",
        );
        let inv = inventory(&[("hosts.yml", &with_priority)]).unwrap();
        assert_eq!(var(&inv, "h", "v"), "alpha");
    }

    #[test]
    fn merging_replaces_whole_variables() {
        let inv = inventory(&[(
            "hosts.yml",
            "all:\n  vars: { env: { A: 1, B: 2 } }\n  hosts: { h: { env: { A: 9 } } }\n",
        )])
        .unwrap();
        assert_eq!(var(&inv, "h", "env"), &json!({"A": 9}));
    }

    #[test]
    fn vars_directory_files_merge_in_order() {
        let inv = inventory(&[
            ("hosts.yml", HOSTS),
            ("group_vars/web/10-base.yml", "x: base\ny: base\n"),
            ("group_vars/web/20-over.yml", "x: over\n"),
            ("group_vars/web/notes.txt", "not: vars\n"),
        ])
        .unwrap();
        assert_eq!(var(&inv, "web2", "x"), "over");
        assert_eq!(var(&inv, "web2", "y"), "base");
        assert!(!inv.host("web2").unwrap().vars.contains_key("not"));
    }

    #[test]
    fn top_level_groups_ungrouped_and_ranges() {
        let inv = inventory(&[(
            "hosts",
            "all:\n  hosts: { lonely: }\nweb:\n  hosts:\n    web[01:03].prod:\n    x-[a:b]:\n",
        )])
        .unwrap();
        let web: Vec<_> = inv.hosts_of_group("web").into_iter().collect();
        assert_eq!(
            web,
            ["web01.prod", "web02.prod", "web03.prod", "x-a", "x-b"]
        );
        assert_eq!(
            inv.hosts_of_group("ungrouped")
                .into_iter()
                .collect::<Vec<_>>(),
            ["lonely"]
        );
        assert_eq!(var(&inv, "web02.prod", "inventory_hostname_short"), "web02");
    }

    #[test]
    fn host_range_errors() {
        assert!(expand_host_range("web[3:1]").is_err());
        assert!(expand_host_range("web[1:").is_err());
        assert!(expand_host_range("web[a:zz]").is_err());
        assert_eq!(expand_host_range("h[1:5:2]").unwrap(), ["h1", "h3", "h5"]);
    }

    #[test]
    fn structural_errors_name_the_key() {
        let err = inventory(&[("hosts.yml", "all:\n  childs: {}\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("all.childs: unknown key `childs`"), "{err}");
        let err = inventory(&[("hosts.yml", "all:\n  hosts: [a, b]\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("all.hosts: hosts is a mapping"), "{err}");
        let err = inventory(&[("hosts.yml", "all:\n  hosts: { 'bad name': }\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid host name"), "{err}");
        let err = inventory(&[("hosts.yml", "web:\n  hosts: { web: }\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("both a host and a group"), "{err}");
    }

    #[test]
    fn group_cycles_are_rejected() {
        let err = inventory(&[(
            "hosts.yml",
            "a:\n  children:\n    b:\n      children:\n        a:\n",
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("cycle"), "{err}");
    }

    #[test]
    fn ini_inventory_with_sections_vars_children_and_types() {
        let inv = inventory(&[
            (
                "inventory",
                "; the write-up's testing inventory\n\
                 lonely a=1\n\
                 [back]\n\
                 web-back[1:2].testing n=5 q=\"5\" s='\"5\"' b=True t=true sp=\"a b\" c=x#comment\n\
                 web-back3.testing:2222 ansible_host=10.0.0.3 ansible_user=deploy\n\
                 [back:vars]\n\
                 level=back\n\
                 text=hello world # kept\n\
                 [top:children]\n\
                 back\n\
                 [top:vars]\n\
                 level=top\n\
                 ansible_group_priority=3\n",
            ),
            ("group_vars/all", "from_file: all\n"),
        ])
        .unwrap();
        assert_eq!(var(&inv, "web-back1.testing", "n"), &json!(5));
        assert_eq!(var(&inv, "web-back1.testing", "q"), &json!(5));
        assert_eq!(var(&inv, "web-back1.testing", "s"), &json!("5"));
        assert_eq!(var(&inv, "web-back1.testing", "b"), &json!(true));
        assert_eq!(var(&inv, "web-back1.testing", "t"), &json!("true"));
        assert_eq!(var(&inv, "web-back2.testing", "sp"), &json!("a b"));
        assert_eq!(var(&inv, "web-back2.testing", "c"), &json!("x"));
        assert_eq!(
            var(&inv, "web-back2.testing", "text"),
            &json!("hello world # kept")
        );
        // child group `back` beats its parent `top`
        assert_eq!(var(&inv, "web-back2.testing", "level"), &json!("back"));
        assert_eq!(var(&inv, "lonely", "from_file"), &json!("all"));
        assert_eq!(inv.hosts_of_group("top").len(), 3);
        assert!(inv.hosts_of_group("ungrouped").contains("lonely"));
        assert_eq!(
            inv.host("web-back3.testing").unwrap().endpoint,
            DockerEndpoint::Ssh {
                user: Some("deploy".into()),
                host: "10.0.0.3".into(),
                port: Some(2222),
                identity_file: None,
                options: vec![],
            }
        );
        assert_eq!(
            inv.group("all").unwrap().children.len(),
            2,
            "ungrouped and top"
        );
    }

    #[test]
    fn ini_errors_name_file_line_and_key() {
        for (text, expected) in [
            (
                "[web]\nweb1 novalue\n",
                "inventory: line 2: novalue: expected key=value",
            ),
            (
                "[nope:vars]\na=1\n[web]\nh\n",
                "line 1: nope: section [nope:vars]",
            ),
            (
                "[top:children]\nmissing\n",
                "line 2: missing: [top:children] names group",
            ),
            (
                "[web:hosts2]\n",
                "line 1: web: section [web:hosts2] has unknown type",
            ),
            ("[web]\nh x='open\n", "line 2: no closing quotation"),
            ("[web]\nweb[3:1]\n", "line 2: web[3:1]: host range"),
        ] {
            let err = inventory(&[("inventory", text)]).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        let err = inventory(&[("group_vars/all.yml", "a: 1\n")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no inventory file"), "{err}");
        // A YAML file with a YAML mistake gets the YAML error, not an INI one.
        let err = inventory(&[("hosts", "all:\n  hosts:\n    a: {\n")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("line 1:"), "{err}");
    }

    #[test]
    fn directory_inventory_mixes_ini_and_yaml_and_vars_files_match_whole_names() {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |path: &str, text: &str| {
            let full = dir.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(full, text).unwrap();
        };
        write("10-web", "[web]\nweb-back2.prod\nweb-back3.prod\n");
        write("20-db.yml", "db:\n  hosts: { db1: }\n");
        write("README.md", "not an inventory\n");
        write("notes.ini", "[ignored]\nx\n");
        write("group_vars/web/10.yml", "a: dir\nb: dir\n");
        write("group_vars/web/20.yml", "b: later\n");
        write("group_vars/db", "a: extensionless\n");
        write(
            "group_vars/db.yml",
            "a: shadowed by the extensionless file\n",
        );
        write("host_vars/web-back2.prod", "log_level: debug\n");
        std::os::unix::fs::symlink(
            "web-back2.prod",
            dir.path().join("host_vars/web-back3.prod"),
        )
        .unwrap();
        let inv = Inventory::load(dir.path()).unwrap();
        let names: Vec<_> = inv.hosts().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["db1", "web-back2.prod", "web-back3.prod"]);
        assert_eq!(var(&inv, "web-back2.prod", "b"), "later");
        assert_eq!(var(&inv, "db1", "a"), "extensionless");
        assert_eq!(var(&inv, "web-back2.prod", "log_level"), "debug");
        assert_eq!(var(&inv, "web-back3.prod", "log_level"), "debug");
        assert!(inv.group("ignored").is_none());
        let extra: Vars = [("b".to_string(), json!("extra"))].into_iter().collect();
        let inv = Inventory::load_with_extra_vars(dir.path(), &extra).unwrap();
        assert_eq!(var(&inv, "web-back2.prod", "b"), "extra");
        assert_eq!(var(&inv, "db1", "b"), "extra");
    }

    #[test]
    fn unknown_group_vars_file_is_a_warning() {
        let inv = inventory(&[("hosts.yml", HOSTS), ("group_vars/webb.yml", "a: 1\n")]).unwrap();
        assert_eq!(inv.warnings.len(), 1);
        assert!(inv.warnings[0].contains("no group named `webb`"));
    }

    #[test]
    fn vars_file_must_be_a_mapping() {
        let err = inventory(&[("hosts.yml", HOSTS), ("host_vars/web1.yml", "- a\n- b\n")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("web1.yml") && err.contains("expected a mapping"),
            "{err}"
        );
    }

    fn endpoint_of(host_vars: &str) -> Result<DockerEndpoint> {
        let inv = inventory(&[(
            "hosts.yml",
            &format!("all:\n  hosts:\n    h1: {host_vars}\n"),
        )])?;
        Ok(inv.host("h1").expect("h1").endpoint.clone())
    }

    #[test]
    fn endpoint_defaults_to_ssh_like_ansible() {
        assert_eq!(
            endpoint_of("").unwrap(),
            DockerEndpoint::Ssh {
                user: None,
                host: "h1".into(),
                port: None,
                identity_file: None,
                options: vec![],
            }
        );
        assert_eq!(
            endpoint_of("{ ansible_host: 10.0.0.1, ansible_user: ops, ansible_port: 2222 }")
                .unwrap(),
            DockerEndpoint::Ssh {
                user: Some("ops".into()),
                host: "10.0.0.1".into(),
                port: Some(2222),
                identity_file: None,
                options: vec![],
            }
        );
        assert_eq!(
            endpoint_of("{ ansible_connection: local }").unwrap(),
            DockerEndpoint::Unix {
                path: DEFAULT_UNIX_SOCKET.into()
            }
        );
    }

    #[test]
    fn ssh_endpoints_take_ansible_s_key_and_ssh_arguments() {
        let endpoint = endpoint_of(
            "{ docker_host: 'ssh://deploy@web1', ansible_ssh_private_key_file: keys/id_ed25519, \
             ansible_ssh_common_args: \"-o StrictHostKeyChecking=accept-new -J 'bastion'\", \
             ansible_ssh_extra_args: -4 }",
        )
        .unwrap();
        let DockerEndpoint::Ssh {
            identity_file,
            options,
            ..
        } = endpoint
        else {
            panic!("not ssh: {endpoint:?}");
        };
        let identity = identity_file.expect("identity");
        assert!(
            identity.is_absolute() || identity.starts_with("."),
            "{identity:?}"
        );
        assert!(identity.ends_with("keys/id_ed25519"), "{identity:?}");
        assert_eq!(
            options,
            [
                "-o",
                "StrictHostKeyChecking=accept-new",
                "-J",
                "bastion",
                "-4"
            ]
        );
        let broken = endpoint_of("{ ansible_ssh_common_args: \"-o 'unclosed\" }");
        assert!(broken.is_err(), "{broken:?}");
    }

    #[test]
    fn endpoint_urls() {
        assert_eq!(
            endpoint_of("{ docker_host: 'unix:///run/d.sock' }").unwrap(),
            DockerEndpoint::Unix {
                path: "/run/d.sock".into()
            }
        );
        assert_eq!(
            endpoint_of("{ docker_host: 'tcp://10.9.0.2' }").unwrap(),
            DockerEndpoint::Tcp {
                host: "10.9.0.2".into(),
                port: 2375,
                tls: None
            }
        );
        assert_eq!(
            endpoint_of("{ docker_host: 'tcp://[fd00::2]:2380' }").unwrap(),
            DockerEndpoint::Tcp {
                host: "fd00::2".into(),
                port: 2380,
                tls: None
            }
        );
        assert_eq!(
            endpoint_of("{ docker_host: 'ssh://me@box:22' }").unwrap(),
            DockerEndpoint::Ssh {
                user: Some("me".into()),
                host: "box".into(),
                port: Some(22),
                identity_file: None,
                options: vec![],
            }
        );
        // docker_host may be templated from other vars.
        assert_eq!(
            endpoint_of("{ ip: 10.9.0.3, docker_host: 'tcp://{{ ip }}:2375' }")
                .unwrap()
                .to_string(),
            "tcp://10.9.0.3:2375"
        );
    }

    #[test]
    fn endpoint_tls_files_resolve_relative_to_inventory() {
        let inv = inventory(&[(
            "hosts.yml",
            "all:\n  hosts:\n    h1: { docker_host: 'tcp://d:2376', docker_cert_path: certs }\n",
        )])
        .unwrap();
        let DockerEndpoint::Tcp {
            tls: Some(tls),
            port,
            ..
        } = &inv.host("h1").unwrap().endpoint
        else {
            panic!("expected tcp+tls")
        };
        assert_eq!(*port, 2376);
        assert_eq!(tls.ca_cert.as_ref().unwrap(), &inv.dir.join("certs/ca.pem"));
        assert_eq!(
            tls.client_key.as_ref().unwrap(),
            &inv.dir.join("certs/key.pem")
        );
        assert!(tls.verify);
        let DockerEndpoint::Tcp {
            tls: Some(tls),
            port,
            ..
        } = endpoint_of("{ docker_host: 'tcp://d', docker_tls: true, docker_tls_verify: false }")
            .unwrap()
        else {
            panic!("expected tcp+tls")
        };
        assert_eq!(port, 2376);
        assert!(!tls.verify && tls.client_cert.is_none());
    }

    #[test]
    fn endpoint_errors() {
        for (vars, expected) in [
            ("{ docker_host: 'http://x' }", "unsupported scheme"),
            ("{ docker_host: 'x:2375' }", "is not a URL"),
            ("{ docker_host: 'tcp://x:99999' }", "invalid port"),
            (
                "{ docker_host: 'unix://relative.sock' }",
                "must be absolute",
            ),
            (
                "{ docker_host: 'ssh://h', docker_tls: true }",
                "only apply to tcp://",
            ),
            (
                "{ docker_host: 'tcp://h', docker_tls_client_cert: c.pem }",
                "needs its key",
            ),
            (
                "{ docker_host: 'tcp://{{ nope }}' }",
                "undefined variable `nope`",
            ),
            ("{ docker_host: [1] }", "expected text"),
        ] {
            let err = endpoint_of(vars).unwrap_err().to_string();
            assert!(err.contains(expected), "{vars}: {err}");
        }
    }
}
