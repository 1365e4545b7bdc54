//! The app file as Swarm services and overlay networks on the manager (see the module docs
//! of `swarm` for what Swarm mode does with each field).

use std::collections::{BTreeMap, BTreeSet};

use super::{
    secrets, SwarmDesired, SwarmNetwork, SwarmPort, SwarmService, SwarmSpec, MANAGERS_GROUP,
};
use crate::app::{App, AppSource, NetworkDriver, Protocol, PublishMode, Service};
use crate::desired::HealthSpec;
use crate::error::{Error, Problem, Result};
use crate::inventory::Inventory;
use crate::labels;
use crate::ship::{BuildUse, ImageBuild};

/// The manager host: see the module docs.
fn manager<'a>(
    inventory: &'a Inventory,
    limit: Option<&str>,
) -> Result<&'a crate::inventory::Host> {
    let selected = match limit {
        None if inventory.group(MANAGERS_GROUP).is_some() => {
            inventory.select(Some(MANAGERS_GROUP))?
        }
        _ => inventory.select(limit)?,
    };
    selected.into_iter().next().ok_or_else(|| Error::Limit {
        pattern: limit.unwrap_or(MANAGERS_GROUP).to_string(),
        message: "selects no host to use as the Swarm manager".to_string(),
    })
}

/// Desired services and networks on the swarm whose manager the inventory names.
pub fn desired_swarm(
    source: &AppSource,
    inventory: &Inventory,
    limit: Option<&str>,
) -> Result<SwarmDesired> {
    let host = manager(inventory, limit)?;
    let app = source.render(&host.vars)?;
    let mut findings = Findings::default();
    let services = app
        .services
        .iter()
        .map(|(key, service)| swarm_service(source, &app, key, service, &mut findings))
        .collect();
    let networks = swarm_networks(&app, &mut findings);
    if !findings.problems.is_empty() {
        return Err(Error::InvalidHost {
            host: host.name.clone(),
            file: source.path.clone(),
            problems: findings.problems,
        });
    }
    Ok(SwarmDesired {
        app: app.name.clone(),
        manager: host.name.clone(),
        endpoint: host.endpoint.clone(),
        networks,
        services,
        warnings: findings.warnings,
    })
}

/// What turning the app into Swarm services found on the way, in app file order.
#[derive(Default)]
struct Findings<'a> {
    /// What Swarm cannot do as the app file asks: the app is refused.
    problems: Vec<Problem>,
    /// What Swarm does differently from container mode: said, and carried on.
    warnings: Vec<String>,
    /// Ingress ports published so far → the service publishing it: the routing mesh
    /// publishes each on every node, so two services cannot share one.
    ingress_ports: BTreeMap<(u16, Protocol), &'a str>,
    /// Network keys some service attaches to; only those are created.
    used_networks: BTreeSet<String>,
}

/// One service of the app as a Swarm service.
fn swarm_service<'a>(
    source: &AppSource,
    app: &App,
    key: &'a str,
    service: &Service,
    findings: &mut Findings<'a>,
) -> SwarmService {
    let at = |field: &str| format!("services.{key}{field}");
    if service.labels.keys().any(|l| l.starts_with("berth.")) {
        findings.problems.push(Problem::new(
            at(".labels"),
            "labels starting with `berth.` are reserved for Berth's bookkeeping",
        ));
    }
    let (mounts, volumes) = secrets::swarm_mounts(app, service);
    let mut secret_values = crate::storage::SecretValues::default();
    let secret_files = match crate::storage::secret_files(
        app,
        source
            .path
            .parent()
            .unwrap_or_else(|| std::path::Path::new(".")),
        &service.secrets,
        &mut secret_values,
    ) {
        Ok(files) => files,
        Err(message) => {
            findings
                .problems
                .push(Problem::new(at(".secrets"), message));
            Vec::new()
        }
    };
    let runtime = crate::app::RuntimeOptions::of(service);
    if !runtime.is_empty() {
        findings.problems.push(Problem::new(
            at(""),
            format!(
                "{} not supported yet in swarm mode",
                runtime.differences(&Default::default()).join(", ")
            ),
        ));
    }
    if service.hosts != "all" {
        findings.warnings.push(format!(
            "services.{key}.hosts ({}) does not apply in swarm mode: Swarm places tasks; use placement.constraints",
            service.hosts
        ));
    }
    let ports = swarm_ports(key, service, findings);
    let mut networks = BTreeMap::new();
    for (network_key, attachment) in &service.networks {
        findings.used_networks.insert(network_key.clone());
        if let Some(address) = attachment.ipv4_address {
            findings.warnings.push(format!(
                "services.{key}.networks.{network_key}: fixed address {address} ignored: Swarm assigns task addresses itself"
            ));
        }
        networks.insert(
            app.network_docker_name(network_key),
            attachment.aliases.clone(),
        );
    }
    let placement = service.placement.clone().unwrap_or_default();
    let reservations = service.reservations.clone().unwrap_or_default();
    let spec = SwarmSpec {
        image: service.image.clone(),
        image_digest: None,
        entrypoint: service.entrypoint.clone(),
        command: service.command.clone(),
        env: service.env.clone(),
        labels: service.labels.clone(),
        replicas: service.replicas,
        ports,
        networks,
        restart: service.restart.clone(),
        limit_nano_cpus: service.cpus.map(nano_cpus),
        limit_memory: service.memory,
        reserve_nano_cpus: reservations.cpus.map(nano_cpus),
        reserve_memory: reservations.memory,
        constraints: placement.constraints,
        spread: placement.preferences,
        max_replicas_per_node: placement.max_replicas_per_node,
        healthcheck: service.healthcheck.as_ref().map(HealthSpec::from),
        mounts,
        volumes,
        secrets: secret_files,
    };
    let mut swarm_service =
        SwarmService::from_spec(format!("{}_{key}", app.name), key.to_string(), spec);
    swarm_service.build = service.build.clone();
    swarm_service.secret_values = secret_values;
    swarm_service
}

/// A service's published ports in Swarm's terms, sorted. Swarm cannot bind a host IP,
/// and an ingress port belongs to one service across the whole swarm.
fn swarm_ports<'a>(key: &'a str, service: &Service, findings: &mut Findings<'a>) -> Vec<SwarmPort> {
    let mut ports = Vec::new();
    for (index, port) in service.ports.iter().enumerate() {
        let at = format!("services.{key}.ports[{index}]");
        if let Some(ip) = port.host_ip {
            findings.problems.push(Problem::new(
                at.clone(),
                format!("host IP {ip}: Swarm publishes on every address of a node and cannot bind one IP; drop it in swarm mode"),
            ));
        }
        let mode = port.mode.unwrap_or(PublishMode::Ingress);
        if let (PublishMode::Ingress, Some(published)) = (mode, port.published) {
            if let Some(other) = findings
                .ingress_ports
                .insert((published, port.protocol), key)
            {
                findings.problems.push(Problem::new(
                    at,
                    format!(
                        "{published}/{} is also published by service `{other}` (the routing mesh publishes it on every node)",
                        port.protocol.as_str()
                    ),
                ));
            }
        }
        if mode == PublishMode::Host
            && port.published.is_some()
            && service.replicas > 1
            && service
                .placement
                .as_ref()
                .and_then(|p| p.max_replicas_per_node)
                != Some(1)
        {
            findings.warnings.push(format!(
                "services.{key}: {} replicas publish host-mode port {} — only one can run per node; set placement.max_replicas_per_node: 1",
                service.replicas,
                port.published.unwrap_or_default()
            ));
        }
        ports.push(SwarmPort {
            published: port.published,
            target: port.target,
            protocol: port.protocol,
            mode,
        });
    }
    ports.sort();
    ports
}

/// The networks services attach to, as attachable overlay networks: `bridge` is read as
/// overlay (its options dropped, with a warning); other drivers are refused.
fn swarm_networks(app: &App, findings: &mut Findings) -> Vec<SwarmNetwork> {
    let mut networks = Vec::new();
    for key in &findings.used_networks {
        let Some(network) = app.networks.get(key) else {
            continue;
        };
        let mut options = network.options.clone();
        match network.driver {
            NetworkDriver::Overlay => {}
            NetworkDriver::Bridge => {
                if !options.is_empty() {
                    findings.warnings.push(format!(
                        "networks.{key}: bridge options ({}) dropped: swarm mode creates an overlay network",
                        options.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                    options.clear();
                }
            }
            other => findings.problems.push(Problem::new(
                format!("networks.{key}.driver"),
                format!(
                    "{} networks are not supported in swarm mode (bridge or overlay become an overlay network)",
                    other.as_str()
                ),
            )),
        }
        let mut labels = network.labels.clone();
        labels.insert(labels::APP.into(), app.name.clone());
        networks.push(SwarmNetwork {
            key: key.clone(),
            name: app.network_docker_name(key),
            subnet: network.subnet.map(|s| s.trunc()),
            gateway: network.gateway,
            ip_range: network.ip_range,
            internal: network.internal,
            options,
            labels,
        });
    }
    networks
}

/// What `berth ship --swarm` builds: each image a service with a build context runs, once.
/// Two services naming one tag with different build settings are refused.
pub fn image_builds(desired: &SwarmDesired) -> std::result::Result<Vec<ImageBuild>, String> {
    // Every service runs through the manager: it is the one "host" of all builds.
    crate::ship::collect_builds(desired.services.iter().filter_map(|service| {
        Some(BuildUse {
            image: &service.spec.image,
            build: service.build.as_ref()?,
            service: &service.key,
            host: &desired.manager,
        })
    }))
}

fn nano_cpus(cpus: f64) -> u64 {
    (cpus * 1e9).round() as u64
}
