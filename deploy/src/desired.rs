//! Inventory + app file → what each host should run.
//!
//! Deterministic: the same inputs give byte-identical output (sorted maps, no clocks, no
//! randomness), so a config hash can stand in for the whole container config.
//!
//! Decisions:
//! - Containers are named `APP_SERVICE_N` (N = 1..=replicas), like Compose's
//!   `project_service_N`, so a human can find them with `docker ps`.
//! - A host gets only the networks its containers use.
//! - Every container carries `berth.config-hash` (SHA-256 of its canonical config) and
//!   `berth.config` (that config as JSON). The planner compares hashes to find "unchanged"
//!   without inspecting every field, and diffs the stored config to explain a change.
//! - Config errors fail the whole run before any host is touched: they are deterministic,
//!   and a half-applied deploy is worse than none.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{
    App, AppSource, Build, Healthcheck, Mount, MountType, Naming, NetworkDriver, Port,
    RestartPolicy, RuntimeOptions, Service, ServiceNetwork,
};
use crate::error::{Error, Problem, Result};
use crate::inventory::{DockerEndpoint, Host, Inventory};
use crate::labels;
use crate::storage::{self, DesiredVolume, SecretFile, SecretValues};

/// Bumped when the hashed form changes, so old and new hashes never compare equal by accident.
const CONFIG_HASH_VERSION: &str = "berth-config-v1";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredHost {
    pub host: String,
    pub endpoint: DockerEndpoint,
    pub app: String,
    pub networks: Vec<DesiredNetwork>,
    /// Named volumes the host's containers mount (external ones only checked for).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<DesiredVolume>,
    pub containers: Vec<DesiredContainer>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredNetwork {
    /// Key in the app file.
    pub key: String,
    /// Name on the Docker host.
    pub name: String,
    pub driver: NetworkDriver,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub options: BTreeMap<String, String>,
    pub internal: bool,
    /// User labels plus `berth.app`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredContainer {
    pub name: String,
    pub service: String,
    pub replica: u32,
    pub spec: ContainerSpec,
    pub config_hash: String,
    /// Present only for services with a build context (used by `berth ship`).
    pub build: Option<Build>,
    /// Compose-named containers also carry the `com.docker.compose.*` labels.
    #[serde(skip_serializing_if = "Naming::is_berth")]
    pub naming: Naming,
    /// The bytes of `spec.secrets` (names only when serialised).
    #[serde(skip_serializing_if = "is_empty_values")]
    pub secret_values: SecretValues,
    /// The service's `settle:` (nanoseconds), outside the spec: it changes no container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle_ns: Option<u64>,
    /// The services this one's containers start after (`depends_on`), for the host's
    /// start order; outside the spec too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

fn is_empty_values(values: &SecretValues) -> bool {
    values.0.is_empty()
}

/// Everything that defines a container; hashed for change detection. Field order is the
/// hash's canonical order, so reordering fields changes every hash (bump the version then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The image reference as written in the app file.
    pub image: String,
    /// The registry manifest digest it resolved to (`sha256:…`), once known. Containers are
    /// created from `image@digest`, so a moved tag is a visible change, not a silent one.
    pub image_digest: Option<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// User labels only; Berth's own labels are added by [`DesiredContainer::labels`].
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    /// Docker network name → attachment.
    pub networks: BTreeMap<String, ServiceNetwork>,
    pub restart: RestartPolicy,
    /// CPU limit in billionths of a CPU, as the Docker API takes it (integers hash stably;
    /// floats might not print the same everywhere).
    pub nano_cpus: Option<u64>,
    pub memory: Option<u64>,
    pub healthcheck: Option<HealthSpec>,
    /// Left out of the stored spec (and so of the hash) when unset, so containers deployed
    /// before these existed are not seen as changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Whole seconds, as Docker's `StopTimeout` takes them (rounded up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_s: Option<u64>,
    /// User, working dir, hostname, capabilities, ulimits, logging, ...; left out when unset.
    #[serde(default, skip_serializing_if = "RuntimeOptions::is_empty")]
    pub runtime: RuntimeOptions,
    /// Volumes, binds and tmpfs; a volume's `source` is its Docker name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Secret files (digests, not values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretFile>,
}

/// A healthcheck as the Docker API takes it (durations in nanoseconds). Separate from the
/// app file's [`Healthcheck`], which parses `30s`-style text: the stored `berth.config`
/// label must read back exactly what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub test: Vec<String>,
    pub interval_ns: Option<u64>,
    pub timeout_ns: Option<u64>,
    pub retries: Option<u32>,
    pub start_period_ns: Option<u64>,
}

impl From<&Healthcheck> for HealthSpec {
    fn from(check: &Healthcheck) -> Self {
        HealthSpec {
            test: check.test.clone(),
            interval_ns: check.interval,
            timeout_ns: check.timeout,
            retries: check.retries,
            start_period_ns: check.start_period,
        }
    }
}

impl ContainerSpec {
    /// The image reference a container is created from: pinned by digest when known.
    pub fn image_reference(&self) -> String {
        pinned_reference(&self.image, self.image_digest.as_deref())
    }

    pub fn config_hash(&self) -> String {
        versioned_hash(CONFIG_HASH_VERSION, self)
    }
}

/// `spec` as labels store it and plans compare it: env values replaced by their digests
/// (values already in that form, read back from a label, are kept).
pub fn without_env_values(app: &str, spec: &ContainerSpec) -> ContainerSpec {
    let mut stored = spec.clone();
    for (key, value) in stored.env.iter_mut() {
        if !value.starts_with(storage::ENV_DIGEST_PREFIX) {
            *value = storage::env_digest(app, key, value);
        }
    }
    stored
}

/// `repo:tag@sha256:…` when the digest is known (any digest already in `image` replaced),
/// else `image` as written. Shared by containers and swarm services.
pub(crate) fn pinned_reference(image: &str, digest: Option<&str>) -> String {
    match digest {
        Some(digest) => format!("{}@{digest}", image.split('@').next().unwrap_or(image)),
        None => image.to_string(),
    }
}

/// SHA-256 (hex) of a format version line and a config's JSON: equal hash, nothing to do.
pub(crate) fn versioned_hash(version: &str, config: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    hasher.update(version.as_bytes());
    hasher.update(b"\n");
    // Serialising plain structs and BTreeMaps cannot fail; the fallback keeps the hash
    // total without an unwrap.
    hasher.update(serde_json::to_vec(config).unwrap_or_default());
    hex::encode(hasher.finalize())
}

impl DesiredContainer {
    /// The service's own settle time, when it sets one.
    pub fn settle(&self) -> Option<std::time::Duration> {
        self.settle_ns.map(std::time::Duration::from_nanos)
    }

    /// All labels to set on the container: the user's plus Berth's bookkeeping.
    pub fn labels(&self, app: &str) -> BTreeMap<String, String> {
        let mut all = self.spec.labels.clone();
        all.insert(labels::APP.into(), app.into());
        all.insert(labels::SERVICE.into(), self.service.clone());
        all.insert(labels::REPLICA.into(), self.replica.to_string());
        all.insert(labels::CONFIG_HASH.into(), self.config_hash.clone());
        // Env values may be secrets: the label keeps digests (the config hash covers values).
        all.insert(
            labels::CONFIG.into(),
            serde_json::to_string(&without_env_values(app, &self.spec)).unwrap_or_default(),
        );
        if self.naming == Naming::Compose {
            let container = crate::compose::ComposeContainer {
                project: app,
                service: &self.service,
                replica: self.replica,
                config_hash: &self.config_hash,
                image: &self.spec.image,
            };
            crate::compose::add_container_labels(&mut all, &container);
        }
        all
    }
}

impl DesiredHost {
    /// Image references to have on the host, each once, sorted.
    pub fn images(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .containers
            .iter()
            .map(|c| c.spec.image_reference())
            .collect();
        set.into_iter().collect()
    }

    /// Pins images to registry digests (reference as written → `sha256:…`), as resolved by
    /// the registry client before planning. Hashes are recomputed.
    pub fn pin_images(&mut self, digests: &BTreeMap<String, String>) {
        for container in &mut self.containers {
            if let Some(digest) = digests.get(&container.spec.image) {
                container.spec.image_digest = Some(digest.clone());
                container.config_hash = container.spec.config_hash();
            }
        }
    }
}

pub fn container_name(app: &str, service: &str, replica: u32) -> String {
    format!("{app}_{service}_{replica}")
}

/// Desired state of every host the limit selects, sorted by host name.
pub fn desired_state(
    source: &AppSource,
    inventory: &Inventory,
    limit: Option<&str>,
) -> Result<Vec<DesiredHost>> {
    inventory
        .select(limit)?
        .into_iter()
        .map(|host| desired_host(source, inventory, host))
        .collect()
}

/// Desired state of one host.
pub fn desired_host(source: &AppSource, inventory: &Inventory, host: &Host) -> Result<DesiredHost> {
    let app = source.render(&host.vars)?;
    let invalid = |problems: Vec<Problem>| Error::InvalidHost {
        host: host.name.clone(),
        file: source.path.clone(),
        problems,
    };

    let mut containers = Vec::new();
    let mut used = UsedKeys::default();
    let app_dir = source
        .path
        .parent()
        .unwrap_or_else(|| std::path::Path::new("."));
    // `validate` has refused dependency cycles already.
    let order = app.start_order().unwrap_or_default();
    for (service_key, service) in order
        .into_iter()
        .filter_map(|key| app.services.get_key_value(key))
    {
        let placed = inventory.select(Some(&service.hosts)).map_err(|err| {
            invalid(vec![Problem::new(
                format!("services.{service_key}.hosts"),
                err.to_string(),
            )])
        })?;
        if !placed.iter().any(|placed| placed.name == host.name) {
            continue;
        }
        let mut secret_values = SecretValues::default();
        let secrets = storage::secret_files(&app, app_dir, &service.secrets, &mut secret_values)
            .map_err(|message| {
                invalid(vec![Problem::new(
                    format!("services.{service_key}.secrets"),
                    message,
                )])
            })?;
        let spec = container_spec(&app, service, secrets, &mut used);
        for replica in 1..=service.replicas {
            containers.push(DesiredContainer {
                name: match (&service.container_name, app.naming) {
                    (Some(name), _) => name.clone(),
                    (None, Naming::Berth) => container_name(&app.name, service_key, replica),
                    (None, Naming::Compose) => {
                        crate::compose::container_name(&app.name, service_key, replica)
                    }
                },
                service: service_key.clone(),
                replica,
                config_hash: spec.config_hash(),
                spec: spec.clone(),
                build: service.build.clone(),
                naming: app.naming,
                secret_values: secret_values.clone(),
                settle_ns: service.settle,
                depends_on: service.depends_on.clone(),
            });
        }
    }

    let problems = host_problems(&app, &containers);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(DesiredHost {
        host: host.name.clone(),
        endpoint: host.endpoint.clone(),
        app: app.name.clone(),
        networks: desired_networks(&app, &used.networks),
        volumes: desired_volumes(&app, &used.volumes),
        containers,
    })
}

/// Network and volume keys the host's containers use: only those are created there.
#[derive(Default)]
struct UsedKeys {
    networks: BTreeSet<String>,
    volumes: BTreeSet<String>,
}

/// A service's container config, with network and volume keys turned into Docker names
/// (and noted in `used`).
fn container_spec(
    app: &App,
    service: &Service,
    secrets: Vec<SecretFile>,
    used: &mut UsedKeys,
) -> ContainerSpec {
    let networks: BTreeMap<String, ServiceNetwork> = service
        .networks
        .iter()
        .map(|(key, attachment)| {
            used.networks.insert(key.clone());
            (app.network_docker_name(key), attachment.clone())
        })
        .collect();
    let mounts: Vec<Mount> = service
        .volumes
        .iter()
        .map(|mount| {
            let mut mount = mount.clone();
            if mount.kind == MountType::Volume {
                if let Some(key) = &mount.source {
                    used.volumes.insert(key.clone());
                    mount.source = Some(app.volume_docker_name(key));
                }
            }
            mount
        })
        .collect();
    ContainerSpec {
        image: service.image.clone(),
        image_digest: None,
        command: service.command.clone(),
        entrypoint: service.entrypoint.clone(),
        env: service.env.clone(),
        labels: service.labels.clone(),
        ports: service.ports.clone(),
        networks,
        restart: service.restart.clone(),
        nano_cpus: service.cpus.map(|cpus| (cpus * 1e9).round() as u64),
        memory: service.memory,
        healthcheck: service.healthcheck.as_ref().map(HealthSpec::from),
        stop_signal: service.stop_signal.clone(),
        stop_grace_period_s: service
            .stop_grace_period
            .map(|ns| ns.div_ceil(1_000_000_000)),
        runtime: RuntimeOptions::of(service),
        mounts,
        secrets,
    }
}

/// The app's networks `used` names, labelled as the app's.
fn desired_networks(app: &App, used: &BTreeSet<String>) -> Vec<DesiredNetwork> {
    used.iter()
        .filter_map(|key| app.networks.get(key).map(|network| (key, network)))
        .map(|(key, network)| {
            let mut labels = network.labels.clone();
            labels.insert(labels::APP.into(), app.name.clone());
            DesiredNetwork {
                key: key.clone(),
                name: app.network_docker_name(key),
                driver: network.driver,
                subnet: network.subnet.map(|s| s.trunc()),
                gateway: network.gateway,
                ip_range: network.ip_range,
                options: network.options.clone(),
                internal: network.internal,
                labels,
            }
        })
        .collect()
}

/// The app's volumes `used` names, labelled as the app's.
fn desired_volumes(app: &App, used: &BTreeSet<String>) -> Vec<DesiredVolume> {
    used.iter()
        .filter_map(|key| app.volumes.get(key).map(|volume| (key, volume)))
        .map(|(key, volume)| {
            let mut labels = volume.labels.clone();
            labels.insert(labels::APP.into(), app.name.clone());
            DesiredVolume {
                key: key.clone(),
                name: app.volume_docker_name(key),
                driver: volume.driver.clone(),
                driver_opts: volume.driver_opts.clone(),
                labels,
                external: volume.external,
            }
        })
        .collect()
}

/// Conflicts among the containers one host runs: Docker would refuse them one by one in
/// the middle of an apply; we refuse them all before starting.
fn host_problems(app: &App, containers: &[DesiredContainer]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut published: Vec<(&Port, &str)> = Vec::new();
    let mut addresses: BTreeMap<(&str, Ipv4Addr), &str> = BTreeMap::new();
    for container in containers {
        let key = format!("services.{}", container.service);
        if container
            .spec
            .labels
            .keys()
            .any(|label| label.starts_with("berth."))
        {
            problems.push(Problem::new(
                format!("{key}.labels"),
                "labels starting with `berth.` are reserved for Berth's bookkeeping",
            ));
        }
        for port in &container.spec.ports {
            let Some(number) = port.published else {
                continue;
            };
            if let Some((_, other)) = published.iter().find(|(seen, _)| {
                seen.published == Some(number)
                    && seen.protocol == port.protocol
                    && host_ips_overlap(seen.host_ip, port.host_ip)
            }) {
                problems.push(Problem::new(
                    format!("{key}.ports"),
                    format!(
                        "{} and {other} both publish {number}/{} on this host",
                        container.name,
                        port.protocol.as_str()
                    ),
                ));
            }
            published.push((port, &container.name));
        }
        for (network, attachment) in &container.spec.networks {
            let Some(address) = attachment.ipv4_address else {
                continue;
            };
            if let Some(other) = addresses.insert((network.as_str(), address), &container.name) {
                problems.push(Problem::new(
                    format!("{key}.networks"),
                    format!(
                        "{} and {other} both want {address} on network {network}",
                        container.name
                    ),
                ));
            }
        }
    }
    // Replicas of one service publishing a fixed port is the most common way to get here;
    // say how to fix it rather than only that it clashes.
    for (service_key, service) in &app.services {
        if service.replicas > 1 && service.ports.iter().any(|p| p.published.is_some()) {
            if let Some(problem) = problems
                .iter_mut()
                .find(|p| p.key == format!("services.{service_key}.ports"))
            {
                problem
                    .message
                    .push_str(" (replicas > 1 need distinct or ephemeral published ports)");
            }
        }
    }
    problems
}

/// Whether two published-port host IPs can collide: unset or `0.0.0.0`/`::` binds every
/// address, so it collides with any other binding of the same port.
pub(crate) fn host_ips_overlap(a: Option<IpAddr>, b: Option<IpAddr>) -> bool {
    match (a, b) {
        (None, _) | (_, None) => true,
        (Some(a), Some(b)) => a == b || a.is_unspecified() || b.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn setup(app_text: &str, hosts: &str) -> (tempfile::TempDir, AppSource, Inventory) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hosts.yml"), hosts).expect("write");
        let inventory = Inventory::load(dir.path()).expect("inventory");
        let source = AppSource::parse(Path::new("app.yml"), app_text).expect("app");
        (dir, source, inventory)
    }

    const HOSTS: &str = "all:\n  children:\n    web: { hosts: { w1: , w2: { tag: v2 } } }\n    db: { hosts: { d1: } }\n";
    const APP: &str = r#"
name: shop
variables: { tag: v1 }
networks:
  front: { subnet: 10.1.4.0/24, gateway: 10.1.4.100 }
  back: { subnet: 10.2.3.0/24 }
services:
  web:
    image: "reg/web:{{ tag }}"
    hosts: web
    replicas: 2
    networks: [front]
    cpus: 0.25
  db:
    image: reg/db
    hosts: db
    networks: { back: { ipv4_address: 10.2.3.5 } }
    ports: ["5432:5432"]
"#;

    #[test]
    fn places_services_by_hosts_pattern_and_names_replicas() {
        let (_dir, source, inventory) = setup(APP, HOSTS);
        let desired = desired_state(&source, &inventory, None).unwrap();
        let summary: Vec<(String, Vec<String>, Vec<String>)> = desired
            .iter()
            .map(|h| {
                (
                    h.host.clone(),
                    h.containers.iter().map(|c| c.name.clone()).collect(),
                    h.networks.iter().map(|n| n.name.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (
                    "d1".to_string(),
                    vec!["shop_db_1".to_string()],
                    vec!["shop_back".to_string()]
                ),
                (
                    "w1".to_string(),
                    vec!["shop_web_1".to_string(), "shop_web_2".to_string()],
                    vec!["shop_front".to_string()]
                ),
                (
                    "w2".to_string(),
                    vec!["shop_web_1".to_string(), "shop_web_2".to_string()],
                    vec!["shop_front".to_string()]
                ),
            ]
        );
        let web = &desired[1].containers[0];
        assert_eq!(web.spec.nano_cpus, Some(250_000_000));
        assert_eq!(web.spec.networks.keys().collect::<Vec<_>>(), ["shop_front"]);
        assert_eq!(desired[1].networks[0].labels[labels::APP], "shop");
    }

    #[test]
    fn host_vars_change_only_that_hosts_hash() {
        let (_dir, source, inventory) = setup(APP, HOSTS);
        let desired = desired_state(&source, &inventory, Some("web")).unwrap();
        assert_eq!(desired[0].containers[0].spec.image, "reg/web:v1");
        assert_eq!(desired[1].containers[0].spec.image, "reg/web:v2");
        assert_ne!(
            desired[0].containers[0].config_hash,
            desired[1].containers[0].config_hash
        );
        // Replicas share a config, so share a hash.
        assert_eq!(
            desired[0].containers[0].config_hash,
            desired[0].containers[1].config_hash
        );
    }

    #[test]
    fn deterministic_output() {
        let (_dir, source, inventory) = setup(APP, HOSTS);
        let first =
            serde_json::to_string(&desired_state(&source, &inventory, None).unwrap()).unwrap();
        let second =
            serde_json::to_string(&desired_state(&source, &inventory, None).unwrap()).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn labels_carry_hash_and_config() {
        // Every optional field set: the stored config must read back exactly as written.
        let with_everything = APP.replace("ports: [\"5432:5432\"]", "ports: [\"5432:5432\"]\n    healthcheck: { test: [pg_isready], interval: 1m, timeout: 1s, retries: 2, start_period: 10s }\n    memory: 1g\n    restart: 'on-failure:3'\n    command: [postgres, -c, 'x=1']\n    labels: { team: data }\n    env: { A: '1' }");
        let (_dir, source, inventory) = setup(&with_everything, HOSTS);
        let desired = desired_state(&source, &inventory, Some("d1")).unwrap();
        let db = &desired[0].containers[0];
        assert_eq!(
            db.spec.healthcheck.as_ref().unwrap().interval_ns,
            Some(60_000_000_000)
        );
        let labels = db.labels("shop");
        assert_eq!(labels[labels::CONFIG_HASH], db.config_hash);
        assert_eq!(labels[labels::REPLICA], "1");
        let stored: ContainerSpec = serde_json::from_str(&labels[labels::CONFIG]).unwrap();
        // Env values are stored as salted digests, everything else as it is.
        assert_eq!(stored, without_env_values("shop", &db.spec));
        assert!(!labels[labels::CONFIG].contains("\"A\":\"1\""));
        assert_eq!(
            stored.env["A"],
            storage::env_digest("shop", "A", &db.spec.env["A"])
        );
        assert_eq!(db.config_hash.len(), 64);
    }

    #[test]
    fn pinning_a_digest_changes_reference_and_hash() {
        let (_dir, source, inventory) = setup(APP, HOSTS);
        let mut host = desired_state(&source, &inventory, Some("d1"))
            .unwrap()
            .remove(0);
        let before = host.containers[0].config_hash.clone();
        host.pin_images(&BTreeMap::from([(
            "reg/db".to_string(),
            "sha256:abc".to_string(),
        )]));
        assert_eq!(host.images(), ["reg/db@sha256:abc"]);
        assert_ne!(host.containers[0].config_hash, before);
    }

    #[test]
    fn port_clash_between_replicas_is_explained() {
        let app = "name: a\nservices:\n  web: { image: x, replicas: 2, ports: ['80:8000'] }\n";
        let (_dir, source, inventory) = setup(app, HOSTS);
        let err = desired_state(&source, &inventory, Some("w1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("a_web_2 and a_web_1 both publish 80/tcp on this host (replicas > 1 need distinct or ephemeral published ports)"), "{err}");
    }

    #[test]
    fn port_clash_across_services_respects_host_ip_and_protocol() {
        let clash = "name: a\nservices:\n  one: { image: x, ports: ['127.0.0.1:80:80'] }\n  two: { image: x, ports: ['80:80'] }\n";
        let (_dir, source, inventory) = setup(clash, HOSTS);
        assert!(desired_state(&source, &inventory, Some("w1"))
            .unwrap_err()
            .to_string()
            .contains("both publish 80/tcp"));
        let fine = "name: a\nservices:\n  one: { image: x, ports: ['127.0.0.1:80:80', '53:53/udp'] }\n  two: { image: x, ports: ['127.0.0.2:80:80', '53:53/tcp', '8080'] }\n";
        let (_dir, source, inventory) = setup(fine, HOSTS);
        assert!(desired_state(&source, &inventory, Some("w1")).is_ok());
    }

    #[test]
    fn duplicate_fixed_addresses_on_one_host() {
        let app = "name: a\nnetworks: { n: { subnet: 10.0.0.0/24 } }\nservices:\n  one: { image: x, networks: { n: { ipv4_address: 10.0.0.7 } } }\n  two: { image: x, networks: { n: { ipv4_address: 10.0.0.7 } } }\n";
        let (_dir, source, inventory) = setup(app, HOSTS);
        let err = desired_state(&source, &inventory, Some("w1"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a_two_1 and a_one_1 both want 10.0.0.7 on network a_n"),
            "{err}"
        );
    }

    #[test]
    fn same_address_on_different_hosts_is_fine() {
        let app = "name: a\nnetworks: { n: { subnet: 10.0.0.0/24 } }\nservices:\n  one: { image: x, hosts: w1, networks: { n: { ipv4_address: 10.0.0.7 } } }\n  two: { image: x, hosts: w2, networks: { n: { ipv4_address: 10.0.0.7 } } }\n";
        let (_dir, source, inventory) = setup(app, HOSTS);
        assert_eq!(desired_state(&source, &inventory, None).unwrap().len(), 3);
    }

    #[test]
    fn reserved_labels_and_unknown_placement_groups() {
        let app = "name: a\nservices:\n  one: { image: x, labels: { berth.app: other } }\n";
        let (_dir, source, inventory) = setup(app, HOSTS);
        assert!(desired_state(&source, &inventory, None)
            .unwrap_err()
            .to_string()
            .contains("reserved"));
        let app = "name: a\nservices:\n  one: { image: x, hosts: webz }\n";
        let (_dir, source, inventory) = setup(app, HOSTS);
        let err = desired_state(&source, &inventory, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("services.one.hosts") && err.contains("`webz` matches no host or group"),
            "{err}"
        );
    }
}
