//! The app as one cluster sees it: rendered with the variables of the hosts an inventory
//! (and `--limit`) selects, as a deploy would, then folded into one description per service.
//!
//! Container mode runs `replicas` containers of a service on every selected host its
//! `hosts:` pattern matches; a cluster has no hosts, so the exported replica count is
//! `replicas × matched hosts`. The first matched host (in inventory order) gives the
//! service's rendered values; a host that renders the service differently is a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    let mut services: BTreeMap<String, RenderedService> = BTreeMap::new();
    let mut notes = Vec::new();
    for host in &selected {
        let host_app = source.render(&host.vars)?;
        for (key, service) in &host_app.services {
            let placed = inventory.select(Some(&service.hosts))?;
            if !placed.iter().any(|p| p.name == host.name) {
                continue;
            }
            match services.get_mut(key) {
                None => {
                    services.insert(
                        key.clone(),
                        RenderedService {
                            service: service.clone(),
                            hosts: vec![host.name.clone()],
                            replicas: service.replicas,
                        },
                    );
                }
                Some(folded) => {
                    if !same_apart_from_hosts(&folded.service, service) {
                        notes.push(Note::new(
                            format!("services.{key}"),
                            format!(
                                "host {} renders this service differently from host {}; exported as {} renders it (export each group with --limit to keep both)",
                                host.name, folded.hosts[0], folded.hosts[0]
                            ),
                        ));
                    }
                    folded.hosts.push(host.name.clone());
                    folded.replicas = folded.replicas.saturating_add(service.replicas);
                }
            }
        }
    }
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

/// Two renderings of a service are the same service if only `hosts` tells them apart.
fn same_apart_from_hosts(a: &Service, b: &Service) -> bool {
    let mut b = b.clone();
    b.hosts = a.hosts.clone();
    *a == b
}
