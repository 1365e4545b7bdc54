//! The app as one cluster sees it: rendered with the variables of the hosts an inventory
//! (and `--limit`) selects, as a deploy would, then folded into one description per service.
//!
//! Container mode runs `replicas` containers of a service on every selected host its
//! `hosts:` pattern matches; a cluster has no hosts, so the exported replica count is
//! `replicas × matched hosts`. The first matched host (in inventory order) gives the
//! service's rendered values; a host that renders the service differently is a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{ExportError, Note};
use crate::app::{App, AppSource, Service};
use crate::inventory::Inventory;

/// The app rendered for one inventory, ready to be written in another engine's terms.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The app as the first selected host renders it (networks, volumes, secrets).
    pub app: App,
    /// Service key → the service as its first host renders it, with the cluster-wide count.
    pub services: BTreeMap<String, RenderedService>,
    /// Where relative secret files are read from (the app file's folder).
    pub app_dir: PathBuf,
    /// What did not carry over exactly, found while folding hosts together.
    pub notes: Vec<Note>,
}

#[derive(Debug, Clone)]
pub struct RenderedService {
    pub service: Service,
    /// The selected hosts that run it, in inventory order.
    pub hosts: Vec<String>,
    /// `service.replicas` × the number of hosts.
    pub replicas: u32,
}

/// Renders the app for every host `limit` selects and folds the result per service.
pub fn render(
    source: &AppSource,
    inventory: &Inventory,
    limit: Option<&str>,
) -> Result<Rendered, ExportError> {
    let selected = inventory.select(limit)?;
    let Some(first) = selected.first() else {
        return Err(ExportError::Invalid(format!(
            "no hosts selected{}",
            limit
                .map(|l| format!(" with --limit {l}"))
                .unwrap_or_default()
        )));
    };
    let app = source.render(&first.vars)?;
    // Service key → each selected host that runs it, with its rendering, in inventory order.
    let mut placements: BTreeMap<String, Vec<(String, Service)>> = BTreeMap::new();
    for host in &selected {
        let host_app = source.render(&host.vars)?;
        for (key, service) in host_app.services {
            let placed = inventory.select(Some(&service.hosts))?;
            if placed.iter().any(|p| p.name == host.name) {
                placements
                    .entry(key)
                    .or_default()
                    .push((host.name.clone(), service));
            }
        }
    }
    let mut notes = Vec::new();
    let services: BTreeMap<String, RenderedService> = placements
        .into_iter()
        .map(|(key, hosts)| {
            let folded = fold(&key, hosts, &mut notes);
            (key, folded)
        })
        .collect();
    for key in app.services.keys() {
        if !services.contains_key(key) {
            notes.push(Note::new(
                format!("services.{key}"),
                "runs on none of the selected hosts: not exported",
            ));
        }
    }
    for (key, folded) in &services {
        if folded.hosts.len() > 1 {
            notes.push(Note::new(
                format!("services.{key}.replicas"),
                format!(
                    "{} per host on {} hosts ({}): exported as {} replicas",
                    folded.service.replicas,
                    folded.hosts.len(),
                    folded.hosts.join(", "),
                    folded.replicas
                ),
            ));
        }
    }
    Ok(Rendered {
        app,
        services,
        app_dir: source
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        notes,
    })
}

/// One service over the hosts that run it: the rendering most hosts share (the first such
/// on a tie), with every host's replicas; hosts that render it otherwise are notes, since
/// one Deployment cannot hold two (a canary host, a host_vars override).
fn fold(key: &str, hosts: Vec<(String, Service)>, notes: &mut Vec<Note>) -> RenderedService {
    let sharing = |service: &Service| {
        hosts
            .iter()
            .filter(|(_, other)| differing_fields(service, other).is_empty())
            .count()
    };
    let mut chosen = 0;
    for (index, (_, service)) in hosts.iter().enumerate() {
        if sharing(service) > sharing(&hosts[chosen].1) {
            chosen = index;
        }
    }
    let (chosen_host, service) = hosts[chosen].clone();
    for (host, other) in &hosts {
        let differences = differing_fields(&service, other);
        if !differences.is_empty() {
            notes.push(Note::new(
                format!("services.{key}"),
                format!(
                    "host {host} renders {} otherwise than host {chosen_host}, whose rendering most hosts share and is exported (export each group with --limit to keep both)",
                    differences.join(", ")
                ),
            ));
        }
    }
    let replicas = hosts
        .iter()
        .fold(0u32, |sum, (_, s)| sum.saturating_add(s.replicas));
    RenderedService {
        service,
        hosts: hosts.into_iter().map(|(host, _)| host).collect(),
        replicas,
    }
}

/// The fields (`env.LOG_LEVEL`, `image`, ...) two hosts' renderings of a service differ in.
fn differing_fields(a: &Service, b: &Service) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    for (name, left) in &a {
        let right = b.get(name).unwrap_or(&Value::Null);
        if left == right || name == "hosts" {
            continue;
        }
        match (left, right) {
            (Value::Object(l), Value::Object(r)) if name == "env" || name == "labels" => {
                let keys: std::collections::BTreeSet<&String> = l.keys().chain(r.keys()).collect();
                fields.extend(
                    keys.into_iter()
                        .filter(|k| l.get(*k) != r.get(*k))
                        .map(|k| format!("{name}.{k}")),
                );
            }
            _ => fields.push(name.clone()),
        }
    }
    fields
}
