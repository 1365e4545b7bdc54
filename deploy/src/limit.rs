//! `--limit` host patterns, as Ansible users write them.
//!
//! - terms separated by `,` or `:`; each term is a host or group name (a group means all
//!   hosts in it and its descendants), `all`, or a glob with `*` and `?`;
//! - `!term` removes hosts, `&term` keeps only hosts also in the term;
//! - as in Ansible, plain terms are united first, then intersections, then exclusions, in
//!   whatever order they were written; a pattern with no plain term starts from `all`.
//!
//! Stricter than Ansible on purpose: a term that matches nothing is an error rather than a
//! warning, because a typo in `--limit` of a deploy would otherwise deploy to nothing (or,
//! in an exclusion, to a host the user meant to spare). Regex (`~`) and subscripts (`[0]`)
//! are not supported and say so.

use std::collections::BTreeSet;

use crate::error::{Error, Result};

/// The hosts and groups a pattern selects from. A trait rather than `Inventory` itself, so
/// this module does not import `inventory`, which calls it (for `Inventory::select`).
pub(crate) trait HostsAndGroups {
    /// Every host's name.
    fn host_names(&self) -> Vec<&str>;
    /// Every group's name.
    fn group_names(&self) -> Vec<&str>;
    /// Hosts of a group including those of its descendant groups.
    fn hosts_of_group(&self, group: &str) -> BTreeSet<&str>;
}

/// The names of the hosts `pattern` selects, sorted.
pub(crate) fn select<'i, I: HostsAndGroups + ?Sized>(
    inventory: &'i I,
    pattern: &str,
) -> Result<Vec<&'i str>> {
    let error = |message: String| Error::Limit {
        pattern: pattern.to_string(),
        message,
    };
    let mut plain = Vec::new();
    let mut intersections = Vec::new();
    let mut exclusions = Vec::new();
    for raw in pattern.split([',', ':']) {
        let term = raw.trim();
        if term.is_empty() {
            continue;
        }
        if let Some(rest) = term.strip_prefix('!') {
            exclusions.push(rest);
        } else if let Some(rest) = term.strip_prefix('&') {
            intersections.push(rest);
        } else {
            plain.push(term);
        }
    }
    if plain.is_empty() && intersections.is_empty() && exclusions.is_empty() {
        return Err(error("empty pattern".to_string()));
    }
    if plain.is_empty() {
        plain.push("all");
    }

    let mut selected = BTreeSet::new();
    for term in plain {
        selected.extend(hosts_matching(inventory, term).map_err(error)?);
    }
    for term in intersections {
        let keep = hosts_matching(inventory, term).map_err(error)?;
        selected.retain(|host| keep.contains(host));
    }
    for term in exclusions {
        let drop = hosts_matching(inventory, term).map_err(error)?;
        selected.retain(|host| !drop.contains(host));
    }
    if selected.is_empty() {
        return Err(error("selects no host".to_string()));
    }
    Ok(selected.into_iter().collect())
}

fn hosts_matching<'i, I: HostsAndGroups + ?Sized>(
    inventory: &'i I,
    term: &str,
) -> Result<BTreeSet<&'i str>, String> {
    if term.starts_with('~') {
        return Err(format!(
            "`{term}`: regular-expression patterns are not supported; use * globs"
        ));
    }
    if term.contains('[') {
        return Err(format!(
            "`{term}`: group subscripts are not supported; name the hosts"
        ));
    }
    if term.is_empty() {
        return Err("`!` or `&` without a name".to_string());
    }
    let mut hosts = BTreeSet::new();
    for host in inventory.host_names() {
        if glob_matches(term, host) {
            hosts.insert(host);
        }
    }
    for group in inventory.group_names() {
        if glob_matches(term, group) {
            hosts.extend(inventory.hosts_of_group(group));
        }
    }
    // `*` alone is Ansible's synonym for all; an empty inventory is the only way it matches
    // nothing, and then there is nothing to complain about.
    if hosts.is_empty() && term != "*" {
        return Err(format!(
            "`{term}` matches no host or group in the inventory"
        ));
    }
    Ok(hosts)
}

pub use berth_oci::glob::shell_glob_match as glob_matches;

#[cfg(test)]
mod tests {
    use super::*;
    // Tests only: they go through `Inventory::select`, the way callers use patterns.
    use crate::inventory::Inventory;

    fn fixture() -> (tempfile::TempDir, Inventory) {
        let dir = tempfile::tempdir().expect("temp dir");
        let hosts = r#"
all:
  children:
    web:
      hosts: { web-back1.testing: , web-back2.testing: , web-back3.testing: }
      children:
        canary: { hosts: { web-back1.testing: } }
    db:
      hosts: { db1.testing: }
"#;
        std::fs::write(dir.path().join("hosts.yml"), hosts).expect("write");
        let inventory = Inventory::load(dir.path()).expect("loads");
        (dir, inventory)
    }

    fn names(inventory: &Inventory, pattern: &str) -> Result<Vec<String>> {
        Ok(inventory
            .select(Some(pattern))?
            .into_iter()
            .map(|h| h.name.clone())
            .collect())
    }

    #[test]
    fn no_limit_selects_everything() {
        let (_dir, inv) = fixture();
        assert_eq!(inv.select(None).unwrap().len(), 4);
        assert_eq!(names(&inv, "all").unwrap().len(), 4);
        assert_eq!(names(&inv, "*").unwrap().len(), 4);
    }

    #[test]
    fn hosts_groups_and_lists() {
        let (_dir, inv) = fixture();
        assert_eq!(names(&inv, "db1.testing").unwrap(), ["db1.testing"]);
        assert_eq!(
            names(&inv, "canary,db").unwrap(),
            ["db1.testing", "web-back1.testing"]
        );
        assert_eq!(
            names(&inv, "canary:db").unwrap(),
            ["db1.testing", "web-back1.testing"]
        );
        assert_eq!(names(&inv, "web").unwrap().len(), 3);
    }

    #[test]
    fn exclusions_and_intersections_apply_after_unions() {
        let (_dir, inv) = fixture();
        assert_eq!(
            names(&inv, "!canary,web").unwrap(),
            ["web-back2.testing", "web-back3.testing"]
        );
        assert_eq!(names(&inv, "!web").unwrap(), ["db1.testing"]);
        assert_eq!(names(&inv, "all,&canary").unwrap(), ["web-back1.testing"]);
        assert_eq!(
            names(&inv, "web-back*,!web-back3.testing").unwrap(),
            ["web-back1.testing", "web-back2.testing"]
        );
    }

    #[test]
    fn globs() {
        let (_dir, inv) = fixture();
        assert_eq!(names(&inv, "web-back?.testing").unwrap().len(), 3);
        assert_eq!(names(&inv, "*.testing,!web*").unwrap(), ["db1.testing"]);
        assert!(glob_matches("a*b*c", "aXbYc"));
        assert!(glob_matches("*", ""));
        assert!(!glob_matches("a*b", "aXc"));
        assert!(glob_matches("**a", "bba"));
    }

    #[test]
    fn typos_and_unsupported_syntax_are_errors() {
        let (_dir, inv) = fixture();
        let err = names(&inv, "web,dbb").unwrap_err().to_string();
        assert!(err.contains("`dbb` matches no host or group"), "{err}");
        assert!(names(&inv, "!nope")
            .unwrap_err()
            .to_string()
            .contains("`nope`"));
        assert!(names(&inv, "~web.*")
            .unwrap_err()
            .to_string()
            .contains("regular-expression"));
        assert!(names(&inv, "web[0]")
            .unwrap_err()
            .to_string()
            .contains("subscripts"));
        assert!(names(&inv, "web,!web")
            .unwrap_err()
            .to_string()
            .contains("selects no host"));
        assert!(names(&inv, " , ")
            .unwrap_err()
            .to_string()
            .contains("empty pattern"));
    }
}
