//! What the deployer finds on a host: plain data that the Docker API reader fills in.
//!
//! Only what planning needs is kept, already normalised (names without Docker's leading `/`,
//! label maps, digests as `sha256:…`), so the planner never depends on API quirks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ActualHost {
    pub networks: Vec<ActualNetwork>,
    /// Every container on the host (not only this app's): foreign ones matter for network
    /// recreation and for names that would clash.
    pub containers: Vec<ActualContainer>,
    pub images: Vec<ActualImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActualNetwork {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// First IPv4 IPAM config entry, if any (Docker allows several; we manage one).
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub internal: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Containers attached right now, with their owning app (from the `berth.app` label).
    #[serde(default)]
    pub attached: Vec<AttachedContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedContainer {
    pub name: String,
    pub app: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Starting,
    Healthy,
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActualContainer {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The image reference the container was created with (`Config.Image`).
    pub image: String,
    /// The local image ID (config digest) it runs.
    pub image_id: String,
    /// Registry manifest digests known for that image (from its `RepoDigests`, repository
    /// part stripped): what a desired `@sha256:` pin is compared with.
    #[serde(default)]
    pub image_digests: Vec<String>,
    pub state: ContainerState,
    pub health: Option<Health>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualImage {
    pub id: String,
    #[serde(default)]
    pub repo_tags: Vec<String>,
    /// Manifest digests, repository part stripped (`sha256:…`).
    #[serde(default)]
    pub digests: Vec<String>,
}

impl ActualContainer {
    /// The app that owns this container, if any.
    pub fn app(&self) -> Option<&str> {
        self.labels.get(crate::labels::APP).map(String::as_str)
    }
}

impl ActualHost {
    pub fn network(&self, name: &str) -> Option<&ActualNetwork> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&ActualContainer> {
        self.containers.iter().find(|c| c.name == name)
    }
}
