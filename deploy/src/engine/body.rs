//! Create requests: a desired container or network as the Engine API's request bodies.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HealthConfig, HostConfig,
    IpamConfig, NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use ipnet::Ipv4Net;

use super::storage;
use crate::desired::{ContainerSpec, DesiredContainer};

pub(super) fn restart_policy(policy: &crate::app::RestartPolicy) -> RestartPolicy {
    let name = match policy.name.as_str() {
        "always" => RestartPolicyNameEnum::ALWAYS,
        "unless-stopped" => RestartPolicyNameEnum::UNLESS_STOPPED,
        "on-failure" => RestartPolicyNameEnum::ON_FAILURE,
        "no" => RestartPolicyNameEnum::NO,
        _ => RestartPolicyNameEnum::EMPTY,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: policy.max_retries.map(i64::from),
    }
}

pub(super) fn endpoint_settings(attachment: &crate::app::ServiceNetwork) -> EndpointSettings {
    EndpointSettings {
        ipam_config: attachment
            .ipv4_address
            .map(|ip: Ipv4Addr| EndpointIpamConfig {
                ipv4_address: Some(ip.to_string()),
                ..Default::default()
            }),
        aliases: (!attachment.aliases.is_empty()).then(|| attachment.aliases.clone()),
        ..Default::default()
    }
}

/// The create request for a desired container: image pinned by digest, Berth's labels,
/// ports with host IPs, every network with its fixed address, limits and healthcheck.
pub fn container_body(app: &str, desired: &DesiredContainer) -> ContainerCreateBody {
    let spec: &ContainerSpec = &desired.spec;
    let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    let mut exposed = Vec::new();
    for port in &spec.ports {
        let key = format!("{}/{}", port.target, port.protocol.as_str());
        exposed.push(key.clone());
        port_bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: port.host_ip.map(|ip| ip.to_string()),
                host_port: port.published.map(|p| p.to_string()),
            });
    }
    exposed.sort();
    exposed.dedup();
    // Daemons older than API 1.44 take one network at create time; the others are
    // connected before the container starts (see [`later_networks`]).
    let first = spec.networks.iter().next();
    let endpoints: HashMap<String, EndpointSettings> = first
        .map(|(name, attachment)| (name.clone(), endpoint_settings(attachment)))
        .into_iter()
        .collect();
    let network_mode = first.map(|(name, _)| name.clone());
    let mut host_config = HostConfig {
        port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
        restart_policy: Some(restart_policy(&spec.restart)),
        nano_cpus: spec.nano_cpus.and_then(|n| i64::try_from(n).ok()),
        memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
        network_mode,
        ..Default::default()
    };
    storage::add_mounts(app, spec, &mut host_config);
    let healthcheck = spec.healthcheck.as_ref().map(|check| HealthConfig {
        test: Some(check.test.clone()),
        interval: check.interval_ns.and_then(|n| i64::try_from(n).ok()),
        timeout: check.timeout_ns.and_then(|n| i64::try_from(n).ok()),
        retries: check.retries.map(i64::from),
        start_period: check.start_period_ns.and_then(|n| i64::try_from(n).ok()),
        start_interval: None,
    });
    let mut body = ContainerCreateBody {
        image: Some(spec.image_reference()),
        cmd: spec.command.clone(),
        entrypoint: spec.entrypoint.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(desired.labels(app).into_iter().collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        healthcheck,
        stop_signal: spec.stop_signal.clone(),
        stop_timeout: spec.stop_grace_period_s.and_then(|s| i64::try_from(s).ok()),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(endpoints),
        }),
        ..Default::default()
    };
    apply_runtime_options(&spec.runtime, &mut body);
    body
}

/// User, working dir, hostname, capabilities, init, read-only root, tmpfs, ulimits and
/// logging, where the create request carries them.
fn apply_runtime_options(options: &crate::app::RuntimeOptions, body: &mut ContainerCreateBody) {
    let non_empty = |list: &Vec<String>| (!list.is_empty()).then(|| list.clone());
    body.user = options.user.clone();
    body.working_dir = options.working_dir.clone();
    body.hostname = options.hostname.clone();
    body.tty = options.tty.then_some(true);
    body.open_stdin = options.stdin_open.then_some(true);
    let host = body.host_config.get_or_insert_with(Default::default);
    host.extra_hosts = non_empty(&options.extra_hosts);
    host.cap_add = non_empty(&options.cap_add);
    host.cap_drop = non_empty(&options.cap_drop);
    host.init = options.init;
    host.readonly_rootfs = options.read_only.then_some(true);
    host.tmpfs = (!options.tmpfs.is_empty()).then(|| {
        options
            .tmpfs
            .iter()
            .map(|(path, opts)| (path.clone(), opts.clone()))
            .collect()
    });
    host.ulimits = (!options.ulimits.is_empty()).then(|| {
        options
            .ulimits
            .iter()
            .map(|(name, limit)| bollard::models::ResourcesUlimits {
                name: Some(name.clone()),
                soft: Some(limit.soft),
                hard: Some(limit.hard),
            })
            .collect()
    });
    host.privileged = options.privileged.then_some(true);
    host.dns = non_empty(&options.dns);
    host.dns_search = non_empty(&options.dns_search);
    host.security_opt = non_empty(&options.security_opt);
    host.sysctls = (!options.sysctls.is_empty()).then(|| {
        options
            .sysctls
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    });
    host.shm_size = options.shm_size.and_then(|s| i64::try_from(s).ok());
    host.pids_limit = options.pids_limit;
    host.log_config =
        options
            .logging
            .as_ref()
            .map(|logging| bollard::models::HostConfigLogConfig {
                typ: logging.driver.clone(),
                config: (!logging.options.is_empty()).then(|| {
                    logging
                        .options
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }),
            });
}

/// The networks a container joins after create (all but the first, which
/// [`container_body`] sets).
pub fn later_networks(
    spec: &ContainerSpec,
) -> impl Iterator<Item = (&String, &crate::app::ServiceNetwork)> {
    spec.networks.iter().skip(1)
}

/// The IPAM config a network is created with: none (Docker picks) without a subnet.
pub(crate) fn ipam_config(
    subnet: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    ip_range: Option<Ipv4Net>,
) -> Option<IpamConfig> {
    subnet.map(|subnet| IpamConfig {
        subnet: Some(subnet.to_string()),
        gateway: gateway.map(|g| g.to_string()),
        ip_range: ip_range.map(|r| r.to_string()),
        auxiliary_addresses: None,
    })
}
