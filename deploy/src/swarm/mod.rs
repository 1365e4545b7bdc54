//! Swarm mode (`berth deploy --swarm`): the same app file as Swarm services on a manager.
//!
//! Pure part (this module): app + the manager's variables → desired services and overlay
//! networks, and desired vs actual → a plan with reasons. [`run`] talks to the manager.
//!
//! Decisions:
//! - The manager is one inventory host: the first host of the group `managers` when the
//!   inventory has one and no `--limit` is given, else the first host `--limit` (or the whole
//!   inventory) selects. A swarm is one cluster, so one manager is enough; its host vars
//!   render the app file.
//! - Service `APP_SERVICE`, `replicas` tasks in all; `hosts:` does not apply (Swarm places
//!   tasks by `placement`), so a service that sets it gets a warning.
//! - Networks become attachable overlay networks with the app's subnet, gateway and ip_range.
//!   `bridge` is read as overlay (the same file serves both modes); macvlan and ipvlan are
//!   refused. Fixed container addresses cannot be honoured by Swarm: warning, not error.
//! - Ports: Swarm cannot bind a host IP, so one is an error. `mode: host|ingress` picks the
//!   publish mode (Swarm's default, ingress, when unset).
//! - Change detection as in container mode: the service carries `berth.config-hash` and
//!   `berth.config` (the [`SwarmSpec`] as JSON); equal hash = unchanged. Updates also store
//!   the replaced config in `berth.previous-config`, which `berth rollback --swarm` returns
//!   to (Swarm's own PreviousSpec is dropped after an automatic rollback, so it cannot be
//!   relied on for a rollback on purpose).

pub mod init;
pub mod run;
pub mod secrets;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::{AppSource, Build, NetworkDriver, Protocol, PublishMode, RestartPolicy};
use crate::desired::HealthSpec;
use crate::error::{Error, Problem, Result};
use crate::inventory::{DockerEndpoint, Inventory};
use crate::labels;
use crate::plan::Unchanged;
use crate::ship::{BuildUse, ImageBuild};

/// Bumped when the hashed form changes.
const SWARM_HASH_VERSION: &str = "berth-swarm-v1";

/// Label with the config a service had before its last update by Berth (`berth rollback
/// --swarm` returns to it).
pub const PREVIOUS_CONFIG: &str = "berth.previous-config";

/// The inventory group whose first host is the manager when no `--limit` is given.
pub const MANAGERS_GROUP: &str = "managers";

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmDesired {
    pub app: String,
    /// The inventory host used as the manager.
    pub manager: String,
    pub endpoint: DockerEndpoint,
    pub networks: Vec<SwarmNetwork>,
    pub services: Vec<SwarmService>,
    /// What Swarm cannot do as the app file says (fixed addresses, `hosts:`), said once.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmNetwork {
    pub key: String,
    pub name: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub options: BTreeMap<String, String>,
    /// User labels plus `berth.app`.
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmService {
    pub name: String,
    /// The service key in the app file.
    pub key: String,
    pub spec: SwarmSpec,
    pub config_hash: String,
    /// The service's build context (for `berth ship --swarm`); not part of the hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The bytes of `spec.secrets` (names only when serialised); empty for a spec read back
    /// from a label (rollback), whose secrets must still exist on the swarm.
    #[serde(skip_serializing_if = "crate::swarm::secrets::no_values")]
    pub secret_values: crate::storage::SecretValues,
}

/// Everything that defines a service; hashed for change detection (field order is part of
/// the hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwarmSpec {
    pub image: String,
    pub image_digest: Option<String>,
    /// The app file's `entrypoint` (Swarm calls it Command).
    pub entrypoint: Option<Vec<String>>,
    /// The app file's `command` (Swarm calls it Args).
    pub command: Option<Vec<String>>,
    pub env: BTreeMap<String, String>,
    /// User labels (on the service and its containers).
    pub labels: BTreeMap<String, String>,
    pub replicas: u32,
    pub ports: Vec<SwarmPort>,
    /// Docker network name → aliases.
    pub networks: BTreeMap<String, Vec<String>>,
    pub restart: RestartPolicy,
    pub limit_nano_cpus: Option<u64>,
    pub limit_memory: Option<u64>,
    pub reserve_nano_cpus: Option<u64>,
    pub reserve_memory: Option<u64>,
    pub constraints: Vec<String>,
    pub spread: Vec<String>,
    pub max_replicas_per_node: Option<u64>,
    pub healthcheck: Option<HealthSpec>,
    /// Mounts; a volume's `source` is its Docker name. Empty lists are left out of the
    /// stored spec (and the hash), so services deployed before them stay unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<crate::app::Mount>,
    /// The named volumes the mounts use: each node makes one with this driver on first use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<crate::storage::DesiredVolume>,
    /// Secret files (digests, not values): Swarm secrets named `APP_NAME-DIGEST`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<crate::storage::SecretFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SwarmPort {
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: Protocol,
    pub mode: PublishMode,
}

impl std::fmt::Display for SwarmPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(published) = self.published {
            write!(f, "{published}->")?;
        }
        let mode = match self.mode {
            PublishMode::Host => "host",
            PublishMode::Ingress => "ingress",
        };
        write!(f, "{}/{} ({mode})", self.target, self.protocol.as_str())
    }
}

impl SwarmSpec {
    /// `repo:tag@sha256:…` once pinned (the tag kept for people reading `docker service ls`).
    pub fn image_reference(&self) -> String {
        crate::desired::pinned_reference(&self.image, self.image_digest.as_deref())
    }

    pub fn config_hash(&self) -> String {
        crate::desired::versioned_hash(SWARM_HASH_VERSION, self)
    }

    /// Stop-first when a task binds a fixed host-mode port: the new task could not bind it
    /// on the same node while the old one holds it, and a start-first update would hang.
    pub fn needs_stop_first(&self) -> Option<String> {
        self.ports
            .iter()
            .find(|p| p.mode == PublishMode::Host && p.published.is_some())
            .map(|p| format!("host-mode port {p} is held by the old task"))
    }
}

impl SwarmService {
    pub fn from_spec(name: String, key: String, spec: SwarmSpec) -> SwarmService {
        SwarmService {
            name,
            key,
            config_hash: spec.config_hash(),
            spec,
            build: None,
            secret_values: Default::default(),
        }
    }

    /// Labels on the service: the user's plus Berth's bookkeeping.
    pub fn labels(&self, app: &str, previous_config: Option<&str>) -> BTreeMap<String, String> {
        let mut all = self.spec.labels.clone();
        all.insert(labels::APP.into(), app.into());
        all.insert(labels::SERVICE.into(), self.key.clone());
        all.insert(labels::CONFIG_HASH.into(), self.config_hash.clone());
        all.insert(
            labels::CONFIG.into(),
            serde_json::to_string(&self.spec).unwrap_or_default(),
        );
        if let Some(previous) = previous_config {
            all.insert(PREVIOUS_CONFIG.into(), previous.to_string());
        }
        all
    }

    /// Labels on each task's container: the user's, the owner, and the task hash, which
    /// tells the tasks of this config apart from those of the one it replaces.
    pub fn container_labels(&self, app: &str) -> BTreeMap<String, String> {
        let mut all = self.spec.labels.clone();
        all.insert(labels::APP.into(), app.into());
        all.insert(labels::SERVICE.into(), self.key.clone());
        all.insert(labels::CONFIG_HASH.into(), self.task_hash());
        all
    }

    /// The config hash without the replica count: a change of `replicas` alone scales the
    /// service and must not restart the tasks it keeps (their labels stay the same).
    pub fn task_hash(&self) -> String {
        SwarmSpec {
            replicas: 0,
            ..self.spec.clone()
        }
        .config_hash()
    }
}

impl SwarmDesired {
    /// Pins images to digests (reference as written → `sha256:…`); hashes are recomputed.
    pub fn pin_images(&mut self, digests: &BTreeMap<String, String>) {
        for service in &mut self.services {
            if let Some(digest) = digests.get(&service.spec.image) {
                service.spec.image_digest = Some(digest.clone());
                service.config_hash = service.spec.config_hash();
            }
        }
    }
}

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
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut used_networks = BTreeSet::new();
    let mut services = Vec::new();
    let mut ingress_ports: BTreeMap<(u16, Protocol), &str> = BTreeMap::new();

    for (key, service) in &app.services {
        let at = |field: &str| format!("services.{key}{field}");
        if service.labels.keys().any(|l| l.starts_with("berth.")) {
            problems.push(Problem::new(
                at(".labels"),
                "labels starting with `berth.` are reserved for Berth's bookkeeping",
            ));
        }
        let (mounts, volumes) = secrets::swarm_mounts(&app, service);
        let mut secret_values = crate::storage::SecretValues::default();
        let secret_files = match crate::storage::secret_files(
            &app,
            source
                .path
                .parent()
                .unwrap_or_else(|| std::path::Path::new(".")),
            &service.secrets,
            &mut secret_values,
        ) {
            Ok(files) => files,
            Err(message) => {
                problems.push(Problem::new(at(".secrets"), message));
                Vec::new()
            }
        };
        let runtime = crate::app::RuntimeOptions::of(service);
        if !runtime.is_empty() {
            problems.push(Problem::new(
                at(""),
                format!(
                    "{} not supported yet in swarm mode",
                    runtime.differences(&Default::default()).join(", ")
                ),
            ));
        }
        if service.hosts != "all" {
            warnings.push(format!(
                "services.{key}.hosts ({}) does not apply in swarm mode: Swarm places tasks; use placement.constraints",
                service.hosts
            ));
        }
        let mut ports = Vec::new();
        for (index, port) in service.ports.iter().enumerate() {
            if let Some(ip) = port.host_ip {
                problems.push(Problem::new(
                    at(&format!(".ports[{index}]")),
                    format!("host IP {ip}: Swarm publishes on every address of a node and cannot bind one IP; drop it in swarm mode"),
                ));
            }
            let mode = port.mode.unwrap_or(PublishMode::Ingress);
            if let (PublishMode::Ingress, Some(published)) = (mode, port.published) {
                if let Some(other) = ingress_ports.insert((published, port.protocol), key) {
                    problems.push(Problem::new(
                        at(&format!(".ports[{index}]")),
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
                warnings.push(format!(
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
        let mut networks = BTreeMap::new();
        for (network_key, attachment) in &service.networks {
            used_networks.insert(network_key.clone());
            if let Some(address) = attachment.ipv4_address {
                warnings.push(format!(
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
            SwarmService::from_spec(format!("{}_{key}", app.name), key.clone(), spec);
        swarm_service.build = service.build.clone();
        swarm_service.secret_values = secret_values;
        services.push(swarm_service);
    }

    let mut networks = Vec::new();
    for key in &used_networks {
        let Some(network) = app.networks.get(key) else {
            continue;
        };
        let mut options = network.options.clone();
        match network.driver {
            NetworkDriver::Overlay => {}
            NetworkDriver::Bridge => {
                if !options.is_empty() {
                    warnings.push(format!(
                        "networks.{key}: bridge options ({}) dropped: swarm mode creates an overlay network",
                        options.keys().cloned().collect::<Vec<_>>().join(", ")
                    ));
                    options.clear();
                }
            }
            other => problems.push(Problem::new(
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

    if !problems.is_empty() {
        return Err(Error::InvalidHost {
            host: host.name.clone(),
            file: source.path.clone(),
            problems,
        });
    }
    Ok(SwarmDesired {
        app: app.name.clone(),
        manager: host.name.clone(),
        endpoint: host.endpoint.clone(),
        networks,
        services,
        warnings,
    })
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

// ---- actual state and plan -------------------------------------------------------------------

/// A service on the swarm, as planning needs it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ActualService {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl ActualService {
    pub fn app(&self) -> Option<&str> {
        self.labels.get(labels::APP).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ActualSwarmNetwork {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SwarmActual {
    pub services: Vec<ActualService>,
    pub networks: Vec<ActualSwarmNetwork>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SwarmAction {
    CreateNetwork {
        network: SwarmNetwork,
        reason: String,
    },
    CreateService {
        service: SwarmService,
        reason: String,
    },
    UpdateService {
        service: SwarmService,
        id: String,
        /// The config being replaced (kept on the service for `rollback --swarm`).
        previous_config: Option<String>,
        /// `None` = start-first; else why stop-first.
        stop_first: Option<String>,
        reasons: Vec<String>,
    },
    RemoveService {
        name: String,
        id: String,
        reason: String,
    },
    RemoveNetwork {
        name: String,
        id: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmPlan {
    pub manager: String,
    pub endpoint: String,
    pub actions: Vec<SwarmAction>,
    pub unchanged: Vec<Unchanged>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

impl SwarmAction {
    /// The action in a few words (`update service shop_web (start-first)`).
    pub fn text(&self) -> String {
        describe(self).0
    }
}

fn describe(action: &SwarmAction) -> (String, String) {
    match action {
        SwarmAction::CreateNetwork { network, reason } => {
            let mut parts = vec!["overlay".to_string()];
            if let Some(subnet) = network.subnet {
                parts.push(subnet.to_string());
            }
            if let Some(gateway) = network.gateway {
                parts.push(format!("gateway {gateway}"));
            }
            if let Some(range) = network.ip_range {
                parts.push(format!("ip_range {range}"));
            }
            (
                format!("create network {} ({})", network.name, parts.join(" ")),
                reason.clone(),
            )
        }
        SwarmAction::CreateService { service, reason } => (
            format!(
                "create service {} (replicas {})",
                service.name, service.spec.replicas
            ),
            reason.clone(),
        ),
        SwarmAction::UpdateService {
            service,
            stop_first,
            reasons,
            ..
        } => (
            format!(
                "update service {} ({})",
                service.name,
                match stop_first {
                    None => "start-first".to_string(),
                    Some(why) => format!("stop-first: {why}"),
                }
            ),
            reasons.join("; "),
        ),
        SwarmAction::RemoveService { name, reason, .. } => {
            (format!("remove service {name}"), reason.clone())
        }
        SwarmAction::RemoveNetwork { name, reason, .. } => {
            (format!("remove network {name}"), reason.clone())
        }
    }
}

impl SwarmPlan {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "SWARM {} ({})", self.manager, self.endpoint);
        crate::plan::render_plan_lines(
            &mut out,
            self.error.as_deref(),
            self.actions.iter().map(|action| {
                let (what, why) = describe(action);
                let (verb, rest) = what.split_once(' ').unwrap_or((&what, ""));
                (verb.to_string(), rest.to_string(), why)
            }),
            &self.unchanged,
            &self.warnings,
        );
        out
    }
}

/// Desired vs actual → plan. Order: networks, services (app order), service removals,
/// network removals, so a failure leaves the old release running as long as possible.
pub fn plan_swarm(desired: &SwarmDesired, actual: &SwarmActual) -> SwarmPlan {
    let mut plan = SwarmPlan {
        manager: desired.manager.clone(),
        endpoint: desired.endpoint.to_string(),
        actions: Vec::new(),
        unchanged: Vec::new(),
        warnings: desired.warnings.clone(),
        error: None,
    };
    let mut errors = Vec::new();

    for network in &desired.networks {
        match actual.networks.iter().find(|n| n.name == network.name) {
            None => plan.actions.push(SwarmAction::CreateNetwork {
                network: network.clone(),
                reason: "missing".into(),
            }),
            Some(found) if found.labels.get(labels::APP) != Some(&desired.app) => {
                errors.push(format!(
                    "network {} exists and does not belong to app {} (label berth.app)",
                    network.name, desired.app
                ));
            }
            Some(found) => {
                let differences = network_differences(network, found);
                if differences.is_empty() {
                    plan.unchanged.push(Unchanged {
                        kind: "network".into(),
                        name: network.name.clone(),
                    });
                } else {
                    errors.push(format!(
                        "network {} differs ({}); Swarm cannot change a network in use: remove the app's services and the network (docker service rm, docker network rm), then deploy again",
                        network.name,
                        differences.join(", ")
                    ));
                }
            }
        }
    }

    for service in &desired.services {
        match actual.services.iter().find(|s| s.name == service.name) {
            None => plan.actions.push(SwarmAction::CreateService {
                service: service.clone(),
                reason: "missing".into(),
            }),
            Some(found) if found.app() != Some(desired.app.as_str()) => {
                errors.push(format!(
                    "service {} exists and does not belong to app {} (label berth.app)",
                    service.name, desired.app
                ));
            }
            Some(found) => {
                if found.labels.get(labels::CONFIG_HASH) == Some(&service.config_hash) {
                    plan.unchanged.push(Unchanged {
                        kind: "service".into(),
                        name: service.name.clone(),
                    });
                } else {
                    let stored = found.labels.get(labels::CONFIG);
                    plan.actions.push(SwarmAction::UpdateService {
                        service: service.clone(),
                        id: found.id.clone(),
                        previous_config: stored.cloned(),
                        stop_first: service.spec.needs_stop_first(),
                        reasons: spec_differences(stored, &service.spec),
                    });
                }
            }
        }
    }

    let wanted: BTreeSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
    for found in &actual.services {
        if found.app() == Some(desired.app.as_str()) && !wanted.contains(found.name.as_str()) {
            plan.actions.push(SwarmAction::RemoveService {
                name: found.name.clone(),
                id: found.id.clone(),
                reason: "no longer in the app file".into(),
            });
        }
    }
    let wanted: BTreeSet<&str> = desired.networks.iter().map(|n| n.name.as_str()).collect();
    for found in &actual.networks {
        if found.labels.get(labels::APP) == Some(&desired.app)
            && found.driver == "overlay"
            && !wanted.contains(found.name.as_str())
        {
            plan.actions.push(SwarmAction::RemoveNetwork {
                name: found.name.clone(),
                id: found.id.clone(),
                reason: "no longer used by the app".into(),
            });
        }
    }

    if !errors.is_empty() {
        plan.actions.clear();
        plan.error = Some(errors.join("; "));
    }
    plan
}

fn network_differences(desired: &SwarmNetwork, actual: &ActualSwarmNetwork) -> Vec<String> {
    let mut out = Vec::new();
    if actual.driver != "overlay" {
        out.push(format!(
            "driver {} (a container-mode network of the same name?), want overlay",
            actual.driver
        ));
    }
    out.extend(crate::plan::addressing_differences(
        crate::plan::Addressing {
            subnet: desired.subnet,
            gateway: desired.gateway,
            ip_range: desired.ip_range,
            internal: desired.internal,
        },
        crate::plan::Addressing {
            subnet: actual.subnet,
            gateway: actual.gateway,
            ip_range: actual.ip_range,
            internal: actual.internal,
        },
    ));
    if !actual.attachable {
        out.push("not attachable".into());
    }
    out
}

/// Why a service changes, field by field, from its stored config. Env values are never
/// shown (often secrets), only the names of changed variables.
pub fn spec_differences(stored: Option<&String>, desired: &SwarmSpec) -> Vec<String> {
    let Some(old) = stored.and_then(|text| serde_json::from_str::<Value>(text).ok()) else {
        return vec![
            "created by another Berth version or by hand (no readable berth.config)".into(),
        ];
    };
    let Ok(Value::Object(new)) = serde_json::to_value(desired) else {
        return vec!["config changed".into()];
    };
    let empty = Value::Null;
    let mut reasons = Vec::new();
    for (key, new_value) in &new {
        let old_value = old.get(key).unwrap_or(&empty);
        if old_value == new_value {
            continue;
        }
        match key.as_str() {
            "env" => {
                let names: BTreeSet<&String> = old_value
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .chain(new_value.as_object().into_iter().flat_map(|m| m.keys()))
                    .filter(|name| old_value.get(name.as_str()) != new_value.get(name.as_str()))
                    .collect();
                let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
                reasons.push(format!("env {} changed", names.join(", ")));
            }
            "image"
            | "image_digest"
            | "replicas"
            | "limit_nano_cpus"
            | "limit_memory"
            | "reserve_nano_cpus"
            | "reserve_memory"
            | "max_replicas_per_node" => {
                let show = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "none".into(),
                    other => other.to_string(),
                };
                reasons.push(format!("{key} {} → {}", show(old_value), show(new_value)));
            }
            "secrets" => {
                // By name: an entry differs in digest, owner, mode or target.
                let entries =
                    |v: &Value| -> Vec<Value> { v.as_array().cloned().unwrap_or_default() };
                let (old_list, new_list) = (entries(old_value), entries(new_value));
                let names: BTreeSet<String> = old_list
                    .iter()
                    .filter(|e| !new_list.contains(e))
                    .chain(new_list.iter().filter(|e| !old_list.contains(e)))
                    .filter_map(|e| e.get("source").and_then(Value::as_str).map(str::to_string))
                    .collect();
                let names: Vec<String> = names.into_iter().collect();
                reasons.push(format!("secret {} changed", names.join(", ")));
            }
            _ => reasons.push(format!("{key} changed")),
        }
    }
    if reasons.is_empty() {
        reasons.push("config hash differs".into());
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const HOSTS: &str = "all:\n  children:\n    managers: { hosts: { m1: { docker_host: 'unix:///m1.sock', tag: v2 }, m2: } }\n    workers: { hosts: { w1: } }\n";
    const APP: &str = r#"
name: shop
variables: { tag: v1 }
networks:
  front: { subnet: 10.1.4.0/24, gateway: 10.1.4.100, ip_range: 10.1.4.128/25, options: { com.docker.network.bridge.name: br-x } }
  back: { driver: overlay, subnet: 10.2.3.0/24 }
  unused: {}
services:
  web:
    image: "reg/web:{{ tag }}"
    hosts: web
    replicas: 2
    command: [httpd, -f]
    entrypoint: [/bin/sh, -c]
    env: { MODE: prod }
    cpus: 0.5
    memory: 64m
    reservations: { cpus: 0.25, memory: 32m }
    placement: { constraints: [node.labels.zone==a], preferences: [{ spread: node.labels.rack }], max_replicas_per_node: 1 }
    ports: [{ target: 8000, published: 8080, mode: host }, "9000:9000"]
    networks: { front: { aliases: [www] }, back: }
    restart: on-failure:3
    healthcheck: { test: "wget -q localhost:8000", interval: 1s, retries: 2 }
  worker:
    image: reg/worker
    networks: { back: { ipv4_address: 10.2.3.7 } }
"#;

    fn setup(app: &str) -> (tempfile::TempDir, AppSource, Inventory) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hosts.yml"), HOSTS).expect("write");
        let inventory = Inventory::load(dir.path()).expect("inventory");
        let source = AppSource::parse(Path::new("app.yml"), app).expect("app");
        (dir, source, inventory)
    }

    fn desired(app: &str) -> SwarmDesired {
        let (_dir, source, inventory) = setup(app);
        desired_swarm(&source, &inventory, None).expect("desired")
    }

    fn actual_from(desired: &SwarmDesired) -> SwarmActual {
        SwarmActual {
            services: desired
                .services
                .iter()
                .map(|s| ActualService {
                    id: format!("id-{}", s.name),
                    name: s.name.clone(),
                    labels: s.labels(&desired.app, None),
                })
                .collect(),
            networks: desired
                .networks
                .iter()
                .map(|n| ActualSwarmNetwork {
                    id: format!("id-{}", n.name),
                    name: n.name.clone(),
                    driver: "overlay".into(),
                    subnet: n.subnet,
                    gateway: n.gateway,
                    ip_range: n.ip_range,
                    internal: n.internal,
                    attachable: true,
                    labels: n.labels.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn app_file_becomes_services_and_overlay_networks_on_the_manager() {
        let d = desired(APP);
        // The `managers` group picks the manager; its vars render the file.
        assert_eq!(d.manager, "m1");
        assert_eq!(d.endpoint.to_string(), "unix:///m1.sock");
        let web = &d.services[0];
        assert_eq!(web.name, "shop_web");
        assert_eq!(web.spec.image, "reg/web:v2");
        assert_eq!(web.spec.replicas, 2);
        assert_eq!(web.spec.entrypoint.as_deref().unwrap(), ["/bin/sh", "-c"]);
        assert_eq!(web.spec.limit_nano_cpus, Some(500_000_000));
        assert_eq!(web.spec.reserve_nano_cpus, Some(250_000_000));
        assert_eq!(web.spec.reserve_memory, Some(32 << 20));
        assert_eq!(web.spec.constraints, ["node.labels.zone==a"]);
        assert_eq!(web.spec.spread, ["node.labels.rack"]);
        assert_eq!(web.spec.max_replicas_per_node, Some(1));
        let ports: Vec<String> = web.spec.ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["8080->8000/tcp (host)", "9000->9000/tcp (ingress)"]);
        assert_eq!(web.spec.networks["shop_front"], ["www"]);
        assert!(web.spec.networks["shop_back"].is_empty());
        assert_eq!(
            web.spec.needs_stop_first().as_deref(),
            Some("host-mode port 8080->8000/tcp (host) is held by the old task")
        );
        let names: Vec<&str> = d.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(
            names,
            ["shop_back", "shop_front"],
            "unused networks are not created"
        );
        assert!(d.networks[1].options.is_empty());
        assert_eq!(d.networks[1].labels["berth.app"], "shop");
        assert_eq!(
            d.warnings,
            [
                "services.web.hosts (web) does not apply in swarm mode: Swarm places tasks; use placement.constraints",
                "services.worker.networks.back: fixed address 10.2.3.7 ignored: Swarm assigns task addresses itself",
                "networks.front: bridge options (com.docker.network.bridge.name) dropped: swarm mode creates an overlay network",
            ]
        );
    }

    #[test]
    fn limit_picks_the_manager_and_deterministic_hashes() {
        let (_dir, source, inventory) = setup(APP);
        let d = desired_swarm(&source, &inventory, Some("m2")).unwrap();
        assert_eq!(d.manager, "m2");
        assert_eq!(d.services[0].spec.image, "reg/web:v1");
        let again = desired_swarm(&source, &inventory, Some("m2")).unwrap();
        assert_eq!(d.services[0].config_hash, again.services[0].config_hash);
        let err = desired_swarm(&source, &inventory, Some("nobody"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nobody"), "{err}");
    }

    #[test]
    fn what_swarm_cannot_do_is_an_error() {
        let (_dir, source, inventory) = setup(
            r#"
name: a
networks:
  mac: { driver: macvlan }
services:
  one: { image: x, ports: ["127.0.0.1:80:80"], networks: [mac], labels: { berth.app: b } }
  two: { image: x, ports: ["80:8080"] }
"#,
        );
        let err = desired_swarm(&source, &inventory, None)
            .unwrap_err()
            .to_string();
        for expected in [
            "services.one.ports[0]: host IP 127.0.0.1: Swarm publishes on every address",
            "services.one.labels: labels starting with `berth.` are reserved",
            "services.two.ports[0]: 80/tcp is also published by service `one`",
            "networks.mac.driver: macvlan networks are not supported in swarm mode",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in\n{err}");
        }
    }

    #[test]
    fn app_file_errors_for_swarm_fields() {
        let (_dir, _source, inventory) = setup("name: a\n");
        for (body, expected) in [
            (
                "reservations: { cpus: 2 }, cpus: 1",
                "reserves 2 CPUs, more than its limit",
            ),
            (
                "reservations: { memory: 2g }, memory: 1g",
                "more than its limit `memory`",
            ),
            ("reservations: { gpus: 1 }", "unknown field `gpus`"),
            ("placement: { constraints: [zone] }", "is not a constraint"),
            (
                "placement: { max_replicas_per_node: 0 }",
                "must be at least 1",
            ),
            (
                "placement: { preferences: [{ pack: x }] }",
                "a preference is",
            ),
        ] {
            let source = AppSource::parse(
                Path::new("app.yml"),
                &format!("name: a\nservices:\n  s: {{ image: x, {body} }}\n"),
            )
            .expect("parses");
            let err = desired_swarm(&source, &inventory, None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{body}: {err}");
        }
    }

    #[test]
    fn scaling_alone_keeps_the_task_hash() {
        let d = desired(APP);
        let mut scaled = d.services[0].clone();
        scaled.spec.replicas = 5;
        scaled.config_hash = scaled.spec.config_hash();
        assert_ne!(scaled.config_hash, d.services[0].config_hash);
        assert_eq!(scaled.task_hash(), d.services[0].task_hash());
        scaled.spec.env.insert("X".into(), "1".into());
        assert_ne!(scaled.task_hash(), d.services[0].task_hash());
    }

    #[test]
    fn ship_builds_each_image_once() {
        let d = desired(
            "name: a\nservices:\n  one: { image: r/x:1, build: ./x }\n  two: { image: r/x:1, build: ./x }\n  three: { image: r/y }\n",
        );
        let builds = image_builds(&d).unwrap();
        assert_eq!(builds.len(), 1);
        assert_eq!(builds[0].image, "r/x:1");
        assert_eq!(builds[0].services.len(), 2);
        assert_eq!(builds[0].hosts, BTreeSet::from(["m1".to_string()]));
        let clash = desired(
            "name: a\nservices:\n  one: { image: r/x:1, build: ./x }\n  two: { image: r/x:1, build: ./y }\n",
        );
        assert!(image_builds(&clash)
            .unwrap_err()
            .contains("built differently by services one and two"));
    }

    #[test]
    fn fresh_swarm_creates_networks_then_services() {
        let d = desired(APP);
        let plan = plan_swarm(&d, &SwarmActual::default());
        let texts: Vec<String> = plan.actions.iter().map(SwarmAction::text).collect();
        assert_eq!(
            texts,
            [
                "create network shop_back (overlay 10.2.3.0/24)",
                "create network shop_front (overlay 10.1.4.0/24 gateway 10.1.4.100 ip_range 10.1.4.128/25)",
                "create service shop_web (replicas 2)",
                "create service shop_worker (replicas 1)",
            ]
        );
        assert!(plan
            .render()
            .contains("  create   service shop_web (replicas 2)\n"));
    }

    #[test]
    fn unchanged_rerun_plans_nothing() {
        let d = desired(APP);
        let plan = plan_swarm(&d, &actual_from(&d));
        assert!(plan.actions.is_empty(), "{plan:?}");
        assert_eq!(plan.unchanged.len(), 4);
        assert_eq!(plan.error, None);
    }

    #[test]
    fn changes_are_explained_and_removals_come_last() {
        let d = desired(APP);
        let mut actual = actual_from(&d);
        actual.services.push(ActualService {
            id: "id-old".into(),
            name: "shop_old".into(),
            labels: BTreeMap::from([("berth.app".into(), "shop".into())]),
        });
        actual.services.push(ActualService {
            id: "id-foreign".into(),
            name: "other_svc".into(),
            labels: BTreeMap::new(),
        });
        let mut changed = d.clone();
        changed.services[0]
            .spec
            .env
            .insert("MODE".into(), "dev".into());
        changed.services[0].spec.replicas = 3;
        changed.services[0].spec.image_digest = Some("sha256:ab".into());
        changed.services[0].config_hash = changed.services[0].spec.config_hash();
        let plan = plan_swarm(&changed, &actual);
        let texts: Vec<String> = plan.actions.iter().map(SwarmAction::text).collect();
        assert_eq!(
            texts,
            [
                "update service shop_web (stop-first: host-mode port 8080->8000/tcp (host) is held by the old task)",
                "remove service shop_old",
            ]
        );
        let SwarmAction::UpdateService {
            reasons,
            previous_config,
            ..
        } = &plan.actions[0]
        else {
            panic!("not an update: {:?}", plan.actions[0]);
        };
        assert_eq!(
            reasons,
            &[
                "env MODE changed",
                "image_digest none → sha256:ab",
                "replicas 2 → 3"
            ]
        );
        assert_eq!(
            previous_config.as_deref(),
            actual.services[0]
                .labels
                .get(labels::CONFIG)
                .map(String::as_str)
        );
        let printed = plan.render();
        assert!(
            !printed.contains("dev") && !printed.contains("prod"),
            "{printed}"
        );
    }

    #[test]
    fn foreign_or_different_networks_refuse_the_plan() {
        let d = desired(APP);
        let mut actual = actual_from(&d);
        actual.networks[0].labels.clear();
        actual.networks[1].driver = "bridge".into();
        actual.networks[1].subnet = Some("10.9.9.0/24".parse().unwrap());
        let plan = plan_swarm(&d, &actual);
        assert!(plan.actions.is_empty());
        let error = plan.error.unwrap();
        assert!(
            error.contains("network shop_back exists and does not belong to app shop"),
            "{error}"
        );
        assert!(
            error.contains("network shop_front differs (driver bridge (a container-mode network of the same name?), want overlay, subnet 10.9.9.0/24 → 10.1.4.0/24)"),
            "{error}"
        );
    }
}
