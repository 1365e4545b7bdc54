//! Collecting groups and hosts while the hosts files are read (YAML here, INI in `ini.rs`),
//! then resolving them: `ungrouped` and `all`, depths, and each host's merged variables.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::endpoint::endpoint_from_vars;
use super::vars_files::{load_vars_dir, vars_from_value};
use super::{Group, Host, Inventory};
use crate::error::{Error, Problem, Result};
use crate::template::Vars;
use crate::yaml;

const DEFAULT_GROUP_PRIORITY: i64 = 1;

/// Collects groups and hosts while walking the hosts file, then resolves them.
pub(super) struct Builder {
    /// The file being read, for error messages.
    pub(super) path: PathBuf,
    pub(super) groups: BTreeMap<String, Group>,
    /// Inline vars per host; a host listed in several groups merges them, later wins.
    pub(super) host_inline_vars: BTreeMap<String, Vars>,
}

impl Builder {
    pub(super) fn new(path: &Path) -> Self {
        let mut builder = Builder {
            path: path.to_path_buf(),
            groups: BTreeMap::new(),
            host_inline_vars: BTreeMap::new(),
        };
        builder.ensure_group("all");
        builder.ensure_group("ungrouped");
        builder
    }

    pub(super) fn problem(&self, key: &str, message: impl Into<String>) -> Error {
        Error::Inventory {
            path: self.path.clone(),
            problem: Problem::new(key, message),
        }
    }

    pub(super) fn ensure_group(&mut self, name: &str) -> &mut Group {
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

    pub(super) fn parse_document(&mut self, document: &Value) -> Result<()> {
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

    pub(super) fn link(&mut self, parent: &str, child: &str) {
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

    /// Resolves what was read: Ansible's implicit groups, depths, `group_vars/` and
    /// `host_vars/`, then each host's variables and endpoint.
    pub(super) fn finish(
        mut self,
        dir: PathBuf,
        hosts_file: PathBuf,
        extra_vars: &Vars,
    ) -> Result<Inventory> {
        self.reconcile_groups()?;
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
            let host_file = host_files.remove(name).unwrap_or_default();
            let vars = self.merged_vars(name, &groups, inline, host_file, extra_vars);
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

    /// Ansible's reconcile step: hosts in no group but `all` go into `ungrouped` (and
    /// hosts an INI file listed before its first section leave it once they are in a real
    /// group), and every group without a parent becomes a child of `all`. A name that is
    /// both a host and a group is refused.
    fn reconcile_groups(&mut self) -> Result<()> {
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
        Ok(())
    }

    /// A host's variables in Ansible's precedence (see the module docs), lowest first,
    /// with the magic variables set last. `groups` is in precedence order.
    fn merged_vars(
        &self,
        name: &str,
        groups: &[String],
        inline: &Vars,
        host_file: Vars,
        extra_vars: &Vars,
    ) -> Vars {
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
        vars.extend(host_file);
        vars.extend(extra_vars.clone());
        let short = name.split('.').next().unwrap_or(name);
        vars.insert("inventory_hostname".into(), Value::String(name.to_string()));
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
        vars
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
pub(super) fn check_name(name: &str, what: &str, is_group: bool) -> Result<(), String> {
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
pub(super) fn expand_host_range(pattern: &str) -> Result<Vec<String>, String> {
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
