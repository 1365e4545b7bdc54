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

mod desired;
pub use desired::{desired_swarm, image_builds};
mod plan;
mod service_spec;
pub use plan::{
    plan_swarm, spec_differences, ActualService, ActualSwarmNetwork, SwarmAction, SwarmActual,
    SwarmPlan,
};

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::app::{Build, Protocol, PublishMode, RestartPolicy};
use crate::desired::HealthSpec;
use crate::inventory::DockerEndpoint;
use crate::labels;

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

#[cfg(test)]
mod tests;
