//! Planning one host, in phases: networks (and which containers must leave a network being
//! recreated), volumes, containers, removals, pulls. Each phase adds its actions; the plan
//! puts them in the order of the module's rules (pulls first, removals last).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    choose_strategy, failed_host, image_present, network_differences, network_name,
    spec_differences, state_name, stored_spec, Action, HostPlan, ReplaceStrategy, Unchanged,
};
use crate::actual::{ActualContainer, ActualHost, ActualNetwork, ContainerState};
use crate::desired::{ContainerSpec, DesiredContainer, DesiredHost};
use crate::labels;

/// Plans one host.
pub fn plan_host(desired: &DesiredHost, actual: &ActualHost) -> HostPlan {
    match plan_host_inner(desired, actual) {
        Ok(plan) => plan,
        Err(error) => failed_host(desired, error),
    }
}

/// The phases; an error (a conflict the plan must not resolve by force) fails the host.
fn plan_host_inner(desired: &DesiredHost, actual: &ActualHost) -> Result<HostPlan, String> {
    let mut plan = HostPlan {
        host: desired.host.clone(),
        endpoint: desired.endpoint.to_string(),
        actions: Vec::new(),
        unchanged: Vec::new(),
        warnings: Vec::new(),
        error: None,
    };
    let networks = plan_networks(desired, actual, &mut plan)?;
    let volume_actions = super::volumes::plan_volumes(desired, actual, &mut plan)?;
    let container_actions = plan_containers(desired, actual, &networks.detached_by, &mut plan)?;
    let removals = plan_removals(desired, actual, &container_actions, &mut plan);
    let pulls = plan_pulls(desired, actual);

    let mut network_actions = networks.actions;
    network_actions.sort_by(|a, b| network_name(a).cmp(network_name(b)));
    plan.actions = pulls
        .into_iter()
        .chain(volume_actions)
        .chain(network_actions)
        .chain(container_actions)
        .chain(removals)
        .collect();
    Ok(plan)
}

fn unchanged(kind: &str, name: &str) -> Unchanged {
    Unchanged {
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

/// What the networks phase decided.
struct NetworkChanges {
    actions: Vec<Action>,
    /// Container → the networks being recreated under it (a container may sit on several).
    detached_by: BTreeMap<String, Vec<String>>,
}

/// Networks to create or recreate, and the app containers that must leave a network being
/// recreated. A network other apps' containers use is never recreated: that is an error.
fn plan_networks(
    desired: &DesiredHost,
    actual: &ActualHost,
    plan: &mut HostPlan,
) -> Result<NetworkChanges, String> {
    let app = desired.app.as_str();
    let mut changes = NetworkChanges {
        actions: Vec::new(),
        detached_by: BTreeMap::new(),
    };
    for network in &desired.networks {
        let Some(existing) = actual.network(&network.name) else {
            changes.actions.push(Action::CreateNetwork {
                network: network.clone(),
                reason: "not present".to_string(),
            });
            continue;
        };
        let reasons = network_differences(network, existing);
        if reasons.is_empty() {
            plan.unchanged.push(unchanged("network", &network.name));
            continue;
        }
        let foreign: Vec<&str> = existing
            .attached
            .iter()
            .filter(|c| c.app.as_deref() != Some(app))
            .map(|c| c.name.as_str())
            .collect();
        if !foreign.is_empty() {
            return Err(format!(
                "network {} must be recreated ({}) but containers outside app {app} use it: {}; remove or disconnect them, or keep the network's settings",
                network.name,
                reasons.join("; "),
                foreign.join(", ")
            ));
        }
        let detach: Vec<String> = existing.attached.iter().map(|c| c.name.clone()).collect();
        for name in &detach {
            changes
                .detached_by
                .entry(name.clone())
                .or_default()
                .push(network.name.clone());
        }
        changes.actions.push(Action::RecreateNetwork {
            network: network.clone(),
            detach,
            reasons,
        });
    }
    Ok(changes)
}

/// Containers to create, start or replace. A same-named container of another app is an
/// error, never a takeover.
fn plan_containers(
    desired: &DesiredHost,
    actual: &ActualHost,
    detached_by: &BTreeMap<String, Vec<String>>,
    plan: &mut HostPlan,
) -> Result<Vec<Action>, String> {
    let app = desired.app.as_str();
    let mut actions = Vec::new();
    for container in &desired.containers {
        let Some(existing) = actual.container(&container.name) else {
            actions.push(Action::CreateContainer {
                container: container.clone(),
                reason: "not present".to_string(),
            });
            continue;
        };
        if existing.app() != Some(app) {
            return Err(format!(
                "a container named {} already exists and does not belong to app {app} (label {}={}); rename or remove it",
                container.name,
                labels::APP,
                existing.app().unwrap_or("none")
            ));
        }
        let detached = detached_by.get(&container.name);
        let previous = stored_spec(existing);
        let reasons = replace_reasons(app, container, existing, &previous, detached);
        if reasons.is_empty() {
            if matches!(
                existing.state,
                ContainerState::Created | ContainerState::Exited
            ) {
                actions.push(Action::StartContainer {
                    name: container.name.clone(),
                    id: existing.id.clone(),
                    reason: format!("container is {}", state_name(existing.state)),
                });
            } else {
                plan.unchanged.push(unchanged("container", &container.name));
            }
            continue;
        }
        let (strategy, strategy_reason) = if let Some(networks) = detached {
            (
                ReplaceStrategy::StopFirst,
                format!(
                    "it must leave network {} while it is recreated",
                    networks.join(", ")
                ),
            )
        } else {
            choose_strategy(previous.as_ref().ok(), &container.spec)
        };
        actions.push(Action::ReplaceContainer {
            container: container.clone(),
            old_id: existing.id.clone(),
            strategy,
            strategy_reason,
            reasons,
        });
    }
    Ok(actions)
}

/// Why an existing container of the app must be replaced (empty: it is current).
/// `previous` is its stored config; `detached` the networks recreated under it.
fn replace_reasons(
    app: &str,
    container: &DesiredContainer,
    existing: &ActualContainer,
    previous: &Result<ContainerSpec, String>,
    detached: Option<&Vec<String>>,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for network in detached.into_iter().flatten() {
        reasons.push(format!("network {network} is recreated"));
    }
    let hash_matches = existing.labels.get(labels::CONFIG_HASH) == Some(&container.config_hash);
    if !hash_matches {
        match previous {
            Ok(previous) => {
                // Compared as labels store them: env values by their digests.
                let differences = spec_differences(
                    &crate::desired::without_env_values(app, previous),
                    &crate::desired::without_env_values(app, &container.spec),
                );
                if differences.is_empty() {
                    reasons
                        .push("config hash changed (written by another Berth version)".to_string());
                }
                reasons.extend(differences);
            }
            Err(why) => reasons.push(why.clone()),
        }
    }
    if matches!(
        existing.state,
        ContainerState::Dead | ContainerState::Removing
    ) && reasons.is_empty()
    {
        reasons.push(format!("container is {}", state_name(existing.state)));
    }
    reasons
}

/// Removals: only what this app owns and no longer wants here. Containers first, then
/// kept previous releases, then networks nobody else still uses.
fn plan_removals(
    desired: &DesiredHost,
    actual: &ActualHost,
    container_actions: &[Action],
    plan: &mut HostPlan,
) -> Vec<Action> {
    let wanted: BTreeSet<&str> = desired.containers.iter().map(|c| c.name.as_str()).collect();
    let mut removed = BTreeSet::new();
    let mut removals = obsolete_containers(&desired.app, actual, &wanted, &mut removed);
    removals.extend(stale_previous_releases(
        actual,
        &wanted,
        container_actions,
        &mut removed,
    ));
    removals.extend(obsolete_networks(desired, actual, &wanted, &removed, plan));
    removals
}

/// The app's containers this host no longer runs; their names go into `removed`.
fn obsolete_containers<'a>(
    app: &str,
    actual: &'a ActualHost,
    wanted: &BTreeSet<&str>,
    removed: &mut BTreeSet<&'a str>,
) -> Vec<Action> {
    let mut obsolete: Vec<&ActualContainer> = actual
        .containers
        .iter()
        .filter(|c| c.app() == Some(app) && !wanted.contains(c.name.as_str()))
        .collect();
    obsolete.sort_by(|a, b| a.name.cmp(&b.name));
    let mut removals = Vec::new();
    for container in obsolete {
        removed.insert(container.name.as_str());
        let what = match (
            container.labels.get(labels::SERVICE),
            container.labels.get(labels::REPLICA),
        ) {
            (Some(service), Some(replica)) => {
                format!("service {service} replica {replica} is no longer in the app for this host")
            }
            _ => "no longer in the app for this host".to_string(),
        };
        removals.push(Action::RemoveContainer {
            name: container.name.clone(),
            id: container.id.clone(),
            reason: what,
        });
    }
    removals
}

/// Kept previous releases (`NAME-prev`) to remove: rollback swaps every one of them back
/// in, so after a deploy that changes containers only the changed ones may keep one; a
/// container that stays unchanged loses its older predecessor. Those of containers that
/// are gone from the app go too. Their names go into `removed`.
fn stale_previous_releases<'a>(
    actual: &'a ActualHost,
    wanted: &BTreeSet<&str>,
    container_actions: &[Action],
    removed: &mut BTreeSet<&'a str>,
) -> Vec<Action> {
    let changes_containers = container_actions.iter().any(|action| {
        matches!(
            action,
            Action::CreateContainer { .. } | Action::ReplaceContainer { .. }
        )
    });
    let replaced: BTreeSet<&str> = container_actions
        .iter()
        .filter_map(|action| match action {
            Action::CreateContainer { container, .. }
            | Action::ReplaceContainer { container, .. } => Some(container.name.as_str()),
            _ => None,
        })
        .collect();
    let mut removals = Vec::new();
    for previous in &actual.previous {
        let base = previous
            .name
            .strip_suffix(labels::PREVIOUS_SUFFIX)
            .unwrap_or(&previous.name);
        let reason = if !wanted.contains(base) {
            format!("previous release of {base}, which is no longer in the app for this host")
        } else if changes_containers && !replaced.contains(base) {
            format!(
                "previous release of {base}, which this deploy leaves unchanged (rollback returns only what the latest deploy changed)"
            )
        } else {
            continue;
        };
        removed.insert(previous.name.as_str());
        removals.push(Action::RemoveContainer {
            name: previous.name.clone(),
            id: previous.id.clone(),
            reason,
        });
    }
    removals
}

/// The app's networks this host no longer needs; one that containers staying on the host
/// still use is kept, with a warning.
fn obsolete_networks(
    desired: &DesiredHost,
    actual: &ActualHost,
    wanted_containers: &BTreeSet<&str>,
    removed_containers: &BTreeSet<&str>,
    plan: &mut HostPlan,
) -> Vec<Action> {
    let app = desired.app.as_str();
    let wanted_networks: BTreeSet<&str> =
        desired.networks.iter().map(|n| n.name.as_str()).collect();
    let mut obsolete: Vec<&ActualNetwork> = actual
        .networks
        .iter()
        .filter(|n| {
            n.labels.get(labels::APP).map(String::as_str) == Some(app)
                && !wanted_networks.contains(n.name.as_str())
        })
        .collect();
    obsolete.sort_by(|a, b| a.name.cmp(&b.name));
    let mut removals = Vec::new();
    for network in obsolete {
        let users: Vec<&str> = network
            .attached
            .iter()
            .filter(|c| {
                !removed_containers.contains(c.name.as_str())
                    && !wanted_containers.contains(c.name.as_str())
            })
            .map(|c| c.name.as_str())
            .collect();
        if users.is_empty() {
            removals.push(Action::RemoveNetwork {
                name: network.name.clone(),
                id: network.id.clone(),
                reason: "no longer used by the app on this host".to_string(),
            });
        } else {
            plan.warnings.push(format!(
                "network {} is no longer used by the app but is kept: {} still use it",
                network.name,
                users.join(", ")
            ));
        }
    }
    removals
}

/// Images the host does not have yet: pulled first, so a missing image fails the host
/// before anything is disturbed.
fn plan_pulls(desired: &DesiredHost, actual: &ActualHost) -> Vec<Action> {
    let mut pulls = Vec::new();
    for image in desired.images() {
        if !image_present(actual, &image) {
            pulls.push(Action::PullImage {
                reason: "not on the host".to_string(),
                image,
            });
        }
    }
    pulls
}
