//! The inventory as `ansible-inventory` prints it (`--list`, `--host`, `--graph`), so the
//! two can be compared (`deploy/tests/ansible_inventory.rs`) and users see familiar output.

use serde_json::Value;

use super::{Group, Host, Inventory};

impl Inventory {
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
