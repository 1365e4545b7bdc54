//! Checks that hold whatever host the app lands on, one validator per section of the app
//! file (and per concern within a service), each adding its problems at dotted key paths.
//! Per-host checks (port clashes, duplicate addresses among the containers a host actually
//! runs) live in `desired`.
//!
//! Problems come out in file order (networks, then services, then volumes and secrets),
//! and within a service in the order its fields are checked, so one run lists everything.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::{App, Network, Placement, Service};
use crate::error::Problem;

impl App {
    /// Every problem of the app file, so a user fixes them in one round.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.validate_networks(&mut problems);
        self.validate_services(&mut problems);
        self.validate_storage(&mut problems);
        if let Err(problem) = self.start_order() {
            problems.push(problem);
        }
        problems
    }

    /// `networks:`: valid and distinct Docker names, and addressing that fits together
    /// within each network and across them (no overlapping subnets).
    fn validate_networks(&self, problems: &mut Vec<Problem>) {
        let mut docker_names: BTreeMap<String, &str> = BTreeMap::new();
        let mut subnets: Vec<(&str, Ipv4Net)> = Vec::new();
        for (key, network) in &self.networks {
            let at = |field: &str| format!("networks.{key}{field}");
            if let Err(message) = check_docker_name(key) {
                problems.push(Problem::new(at(""), message));
            }
            let docker_name = self.network_docker_name(key);
            if let Some(other) = docker_names.insert(docker_name.clone(), key) {
                problems.push(Problem::new(
                    at(""),
                    format!("Docker name `{docker_name}` is also used by network `{other}`"),
                ));
            }
            match network.subnet {
                Some(subnet) => {
                    check_subnet(key, network, subnet, &subnets, problems);
                    subnets.push((key, subnet.trunc()));
                }
                None => {
                    if network.gateway.is_some() {
                        problems.push(Problem::new(at(".gateway"), "a gateway needs a subnet"));
                    }
                    if network.ip_range.is_some() {
                        problems.push(Problem::new(at(".ip_range"), "an ip_range needs a subnet"));
                    }
                }
            }
        }
    }

    /// `services:`, one service at a time, each concern by its own check.
    fn validate_services(&self, problems: &mut Vec<Problem>) {
        let mut container_names: BTreeMap<&str, &str> = BTreeMap::new();
        for (key, service) in &self.services {
            let at = |field: &str| format!("services.{key}{field}");
            if let Err(message) = check_docker_name(key) {
                problems.push(Problem::new(at(""), message));
            }
            if service.image.trim().is_empty() {
                problems.push(Problem::new(at(".image"), "must not be empty"));
            }
            if service.hosts.trim().is_empty() {
                problems.push(Problem::new(at(".hosts"), "must not be empty (use `all`)"));
            }
            check_resources(key, service, problems);
            check_container_name(key, service, &mut container_names, problems);
            self.check_depends_on(key, service, problems);
            if let Some(placement) = &service.placement {
                check_placement(key, placement, problems);
            }
            for name in service.env.keys() {
                if name.is_empty() || name.contains('=') {
                    problems.push(Problem::new(
                        at(".env"),
                        format!("invalid variable name {name:?}"),
                    ));
                }
            }
            for (index, port) in service.ports.iter().enumerate() {
                if port.target == 0 {
                    problems.push(Problem::new(
                        at(&format!(".ports[{index}]")),
                        "container port 0 is not valid",
                    ));
                }
            }
            self.check_service_networks(key, service, problems);
        }
    }

    /// Each `depends_on` entry names another service of the app (cycles are found by
    /// [`App::start_order`]).
    fn check_depends_on(&self, key: &str, service: &Service, problems: &mut Vec<Problem>) {
        for dependency in &service.depends_on {
            if dependency == key || !self.services.contains_key(dependency) {
                problems.push(Problem::new(
                    format!("services.{key}.depends_on"),
                    format!("`{dependency}` is not another service of this app"),
                ));
            }
        }
    }

    /// A service's `networks:` name defined networks, and a fixed address fits its
    /// network's subnet and is given to one container only.
    fn check_service_networks(&self, key: &str, service: &Service, problems: &mut Vec<Problem>) {
        for (network_key, attachment) in &service.networks {
            let field = format!("services.{key}.networks.{network_key}");
            let Some(network) = self.networks.get(network_key) else {
                let known: Vec<&str> = self.networks.keys().map(String::as_str).collect();
                problems.push(Problem::new(
                    field,
                    format!(
                        "unknown network `{network_key}` (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
                continue;
            };
            let Some(address) = attachment.ipv4_address else {
                continue;
            };
            let Some(subnet) = network.subnet.map(|s| s.trunc()) else {
                problems.push(Problem::new(field, format!("a fixed address ({address}) needs the network to have a subnet (Docker only assigns user addresses on user subnets)")));
                continue;
            };
            if !subnet.contains(&address) {
                problems.push(Problem::new(
                    field.clone(),
                    format!("{address} is outside subnet {subnet}"),
                ));
            } else if is_reserved(subnet, address) {
                problems.push(Problem::new(
                    field.clone(),
                    format!("{address} is the network or broadcast address of {subnet}"),
                ));
            } else if network.gateway == Some(address) {
                problems.push(Problem::new(
                    field.clone(),
                    format!("{address} is the network's gateway"),
                ));
            }
            if service.replicas > 1 {
                problems.push(Problem::new(
                    field,
                    format!(
                        "{} replicas cannot share the fixed address {address}",
                        service.replicas
                    ),
                ));
            }
        }
    }
}

/// A network's subnet: no host bits, gateway and ip_range inside it, no overlap with the
/// subnets of the networks checked before it.
fn check_subnet(
    key: &str,
    network: &Network,
    subnet: Ipv4Net,
    earlier: &[(&str, Ipv4Net)],
    problems: &mut Vec<Problem>,
) {
    let at = |field: &str| format!("networks.{key}{field}");
    if subnet.network() != subnet.addr() {
        problems.push(Problem::new(
            at(".subnet"),
            format!(
                "{subnet} has host bits set; did you mean {}?",
                subnet.trunc()
            ),
        ));
    }
    if let Some(gateway) = network.gateway {
        if !subnet.contains(&gateway) {
            problems.push(Problem::new(
                at(".gateway"),
                format!("{gateway} is outside subnet {}", subnet.trunc()),
            ));
        } else if is_reserved(subnet, gateway) {
            problems.push(Problem::new(
                at(".gateway"),
                format!(
                    "{gateway} is the network or broadcast address of {}",
                    subnet.trunc()
                ),
            ));
        }
    }
    if let Some(range) = network.ip_range {
        if !(subnet.contains(&range.network()) && subnet.contains(&range.broadcast())) {
            problems.push(Problem::new(
                at(".ip_range"),
                format!("{range} is not inside subnet {}", subnet.trunc()),
            ));
        }
    }
    for (other_key, other) in earlier {
        if other.contains(&subnet.network()) || subnet.contains(&other.network()) {
            problems.push(Problem::new(
                at(".subnet"),
                format!(
                    "{} overlaps {other} of network `{other_key}`",
                    subnet.trunc()
                ),
            ));
        }
    }
}

/// `cpus` is a positive number, and `reservations` stay within the limits.
fn check_resources(key: &str, service: &Service, problems: &mut Vec<Problem>) {
    let at = |field: &str| format!("services.{key}{field}");
    if let Some(cpus) = service.cpus {
        if !(cpus > 0.0 && cpus.is_finite()) {
            problems.push(Problem::new(
                at(".cpus"),
                format!("{cpus} is not a positive number of CPUs"),
            ));
        }
    }
    let Some(reservations) = &service.reservations else {
        return;
    };
    if let Some(cpus) = reservations.cpus {
        if !(cpus > 0.0 && cpus.is_finite()) {
            problems.push(Problem::new(
                at(".reservations.cpus"),
                format!("{cpus} is not a positive number of CPUs"),
            ));
        } else if service.cpus.is_some_and(|limit| cpus > limit) {
            problems.push(Problem::new(
                at(".reservations.cpus"),
                format!(
                    "reserves {cpus} CPUs, more than its limit `cpus: {}`",
                    service.cpus.unwrap_or_default()
                ),
            ));
        }
    }
    if let (Some(reserved), Some(limit)) = (reservations.memory, service.memory) {
        if reserved > limit {
            problems.push(Problem::new(
                at(".reservations.memory"),
                format!("reserves {reserved} bytes, more than its limit `memory` ({limit} bytes)"),
            ));
        }
    }
}

/// A `container_name` is a valid Docker name, used by one service, with one replica.
fn check_container_name<'a>(
    key: &'a str,
    service: &'a Service,
    taken: &mut BTreeMap<&'a str, &'a str>,
    problems: &mut Vec<Problem>,
) {
    let Some(name) = &service.container_name else {
        return;
    };
    let at = format!("services.{key}.container_name");
    if let Some(other) = taken.insert(name, key) {
        problems.push(Problem::new(
            at.clone(),
            format!("{name} is also the container name of service `{other}`"),
        ));
    }
    if let Err(message) = check_docker_name(name) {
        problems.push(Problem::new(at.clone(), message));
    }
    if service.replicas > 1 {
        problems.push(Problem::new(
            at,
            format!(
                "{} replicas cannot share the container name {name}",
                service.replicas
            ),
        ));
    }
}

/// Swarm placement: constraints are `KEY==VALUE` or `KEY!=VALUE`, spread descriptors one
/// word, `max_replicas_per_node` at least 1.
fn check_placement(key: &str, placement: &Placement, problems: &mut Vec<Problem>) {
    let at = |field: &str| format!("services.{key}.placement{field}");
    for (index, constraint) in placement.constraints.iter().enumerate() {
        let valid = ["==", "!="].iter().any(|op| {
            constraint
                .split_once(op)
                .is_some_and(|(key, value)| !key.trim().is_empty() && !value.trim().is_empty())
        });
        if !valid {
            problems.push(Problem::new(
                at(&format!(".constraints[{index}]")),
                format!("{constraint:?} is not a constraint (KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a)"),
            ));
        }
    }
    for (index, spread) in placement.preferences.iter().enumerate() {
        if spread.trim().is_empty() || spread.contains(char::is_whitespace) {
            problems.push(Problem::new(
                at(&format!(".preferences[{index}]")),
                format!("{spread:?} is not a spread descriptor (e.g. node.labels.zone)"),
            ));
        }
    }
    if placement.max_replicas_per_node == Some(0) {
        problems.push(Problem::new(
            at(".max_replicas_per_node"),
            "must be at least 1 (leave it out for no limit)",
        ));
    }
}

fn is_reserved(subnet: Ipv4Net, address: Ipv4Addr) -> bool {
    // /31 and /32 have no network/broadcast addresses to avoid (RFC 3021).
    subnet.prefix_len() < 31 && (address == subnet.network() || address == subnet.broadcast())
}

/// Docker's rule for container and network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn check_docker_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(())
    } else {
        Err(format!("{name:?} is not a valid Docker name (letters, digits, _ . -, starting with a letter or digit)"))
    }
}
