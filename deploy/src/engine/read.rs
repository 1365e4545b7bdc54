//! The host's state as planning needs it ([`ActualHost`]), from the Engine API's list
//! answers: only what the planner uses, normalised (see `actual.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum};
use ipnet::Ipv4Net;

use crate::actual::{
    ActualContainer, ActualHost, ActualImage, ActualNetwork, AttachedContainer, ContainerState,
    Health,
};
use crate::labels;

/// The host's state from the three list calls' answers (`GET /containers/json?all=1`,
/// `GET /networks`, `GET /images/json`), as the Engine API returns them: what
/// [`Engine::read`](super::Engine::read) plans with. Separate so tests can feed it JSON
/// captured from a real daemon (deploy/tests/fixtures/engine-capture/).
pub fn actual_host(
    app: &str,
    containers: Vec<ContainerSummary>,
    networks: Vec<bollard::models::Network>,
    images: Vec<bollard::models::ImageSummary>,
) -> ActualHost {
    let images: Vec<ActualImage> = images
        .into_iter()
        .map(|image| ActualImage {
            id: image.id,
            repo_tags: image
                .repo_tags
                .into_iter()
                .filter(|t| t != "<none>:<none>")
                .collect(),
            digests: image
                .repo_digests
                .iter()
                .filter_map(|d| d.rsplit_once('@').map(|(_, digest)| digest.to_string()))
                .collect(),
            repo_digests: image.repo_digests,
        })
        .collect();
    let digests_of: HashMap<&str, &Vec<String>> = images
        .iter()
        .map(|image| (image.id.as_str(), &image.digests))
        .collect();

    let mut actual = ActualHost {
        images: images.clone(),
        ..ActualHost::default()
    };
    // Network name → containers attached (from each container's own network list, which
    // the network list call does not give).
    let mut attached: BTreeMap<String, Vec<AttachedContainer>> = BTreeMap::new();
    // Network name → the gateways its running containers were given.
    let mut gateways: BTreeMap<String, BTreeSet<Ipv4Addr>> = BTreeMap::new();
    for summary in containers {
        let Some(container) = actual_container(&summary, &digests_of) else {
            continue;
        };
        if let Some(networks) = summary
            .network_settings
            .as_ref()
            .and_then(|s| s.networks.as_ref())
        {
            for (network, endpoint) in networks {
                if let Some(gateway) = endpoint.gateway.as_deref().and_then(|g| g.parse().ok()) {
                    gateways.entry(network.clone()).or_default().insert(gateway);
                }
                attached
                    .entry(network.clone())
                    .or_default()
                    .push(AttachedContainer {
                        name: container.name.clone(),
                        app: container.app().map(str::to_string),
                    });
            }
        }
        let ours = container.app() == Some(app);
        if ours && container.name.ends_with(labels::PREVIOUS_SUFFIX) {
            actual.previous.push(container);
        } else if ours && container.name.ends_with(labels::NEXT_SUFFIX) {
            // A leftover of an interrupted deploy; the applier removes it before reuse.
        } else {
            actual.containers.push(container);
        }
    }
    for network in networks {
        let Some(name) = network.name.clone() else {
            continue;
        };
        let (subnet, mut gateway, ip_range) = ipv4_addressing(network.ipam.as_ref());
        // Docker 20.10 leaves the gateway it picked (the subnet's first address) out of the
        // IPAM config when none was asked for; its containers' endpoints still show it. An
        // app that names that gateway asks for no change.
        if let (None, Some(subnet), Some(seen)) = (gateway, subnet, gateways.get(&name)) {
            if let [only] = seen.iter().collect::<Vec<_>>()[..] {
                gateway = subnet.contains(only).then_some(*only);
            }
        }
        let mut containers = attached.remove(&name).unwrap_or_default();
        containers.sort_by(|a, b| a.name.cmp(&b.name));
        actual.networks.push(ActualNetwork {
            id: network.id.unwrap_or_default(),
            name,
            driver: network.driver.unwrap_or_default(),
            subnet,
            gateway,
            ip_range,
            options: network.options.unwrap_or_default().into_iter().collect(),
            internal: network.internal.unwrap_or(false),
            labels: network.labels.unwrap_or_default().into_iter().collect(),
            attached: containers,
        });
    }
    actual.networks.sort_by(|a, b| a.name.cmp(&b.name));
    actual.containers.sort_by(|a, b| a.name.cmp(&b.name));
    actual.previous.sort_by(|a, b| a.name.cmp(&b.name));
    actual
}

fn actual_container(
    summary: &ContainerSummary,
    digests_of: &HashMap<&str, &Vec<String>>,
) -> Option<ActualContainer> {
    let name = summary
        .names
        .as_ref()?
        .first()?
        .trim_start_matches('/')
        .to_string();
    let image_id = summary.image_id.clone().unwrap_or_default();
    let state = match summary.state {
        Some(ContainerSummaryStateEnum::CREATED) => ContainerState::Created,
        Some(ContainerSummaryStateEnum::RUNNING) => ContainerState::Running,
        Some(ContainerSummaryStateEnum::PAUSED) => ContainerState::Paused,
        Some(ContainerSummaryStateEnum::RESTARTING) => ContainerState::Restarting,
        Some(ContainerSummaryStateEnum::REMOVING) => ContainerState::Removing,
        Some(ContainerSummaryStateEnum::DEAD) => ContainerState::Dead,
        _ => ContainerState::Exited,
    };
    Some(ActualContainer {
        id: summary.id.clone().unwrap_or_default(),
        name,
        labels: summary
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        image: summary.image.clone().unwrap_or_default(),
        image_digests: digests_of
            .get(image_id.as_str())
            .map(|d| d.to_vec())
            .unwrap_or_default(),
        image_id,
        state,
        health: summary.status.as_deref().and_then(health_from_status),
    })
}

/// The health part of `docker ps`'s status text (`Up 5 minutes (healthy)`): the list call
/// of API 1.41 has no health field, and inspecting every container would cost a call each.
pub(super) fn health_from_status(status: &str) -> Option<Health> {
    if status.contains("(healthy)") {
        Some(Health::Healthy)
    } else if status.contains("(unhealthy)") {
        Some(Health::Unhealthy)
    } else if status.contains("(health: starting)") {
        Some(Health::Starting)
    } else {
        None
    }
}

/// The IPv4 subnet, gateway and ip range of a network's IPAM (its first IPv4 config; Docker
/// lists IPv6 ones beside it). Unparseable or empty values count as unset.
pub(crate) fn ipv4_addressing(
    ipam: Option<&bollard::models::Ipam>,
) -> (Option<Ipv4Net>, Option<Ipv4Addr>, Option<Ipv4Net>) {
    let ipv4 = ipam
        .and_then(|ipam| ipam.config.as_ref())
        .and_then(|configs| {
            configs.iter().find(|c| {
                c.subnet
                    .as_deref()
                    .is_some_and(|s| s.parse::<Ipv4Net>().is_ok())
            })
        });
    (
        ipv4.and_then(|c| c.subnet.as_deref())
            .and_then(|s| s.parse().ok()),
        ipv4.and_then(|c| c.gateway.as_deref())
            .and_then(|g| g.parse().ok()),
        ipv4.and_then(|c| c.ip_range.as_deref())
            .filter(|r| !r.is_empty())
            .and_then(|r| r.parse().ok()),
    )
}
