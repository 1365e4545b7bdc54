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
    /// This app's kept previous releases (containers renamed `NAME-prev`, stopped), what
    /// `berth rollback` returns to. Not in `containers`: the planner must neither remove
    /// them as obsolete nor take them for the current release.
    #[serde(default)]
    pub previous: Vec<ActualContainer>,
    /// Every volume on the host (named ones; the app's carry `berth.app`).
    #[serde(default)]
    pub volumes: Vec<ActualVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualVolume {
    pub name: String,
    pub driver: String,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActualNetwork {
    pub id: String,
    pub name: String,
    pub driver: String,
    /// First IPv4 IPAM config entry, if any (Docker allows several; we manage one).
    pub subnet: Option<Ipv4Net>,
    /// The IPAM config's gateway or, where Docker left the one it picked out of it (20.10
    /// does when none was asked for), the one its attached containers were given.
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
    /// The same with their repositories (`reg:5000/app@sha256:…`), as `RepoDigests` has
    /// them: Docker creates `repo@digest` only from an image it holds under that repository.
    #[serde(default)]
    pub repo_digests: Vec<String>,
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

impl ActualHost {
    /// What a host looks like right after a successful apply of `desired`: every network
    /// and container as Berth creates them, running and healthy, images present. Tests use
    /// it as "nothing changed since the last deploy"; it is the planner's own idea of done.
    pub fn after_apply(desired: &crate::desired::DesiredHost) -> ActualHost {
        let networks = desired
            .networks
            .iter()
            .enumerate()
            .map(|(index, network)| ActualNetwork {
                id: format!("network-{index}"),
                name: network.name.clone(),
                driver: network.driver.as_str().to_string(),
                subnet: network.subnet,
                // Docker picks the first address when no gateway is given.
                gateway: network
                    .gateway
                    .or_else(|| network.subnet.and_then(|s| s.hosts().next())),
                ip_range: network.ip_range,
                options: network.options.clone(),
                internal: network.internal,
                labels: network.labels.clone(),
                attached: desired
                    .containers
                    .iter()
                    .filter(|c| c.spec.networks.contains_key(&network.name))
                    .map(|c| AttachedContainer {
                        name: c.name.clone(),
                        app: Some(desired.app.clone()),
                    })
                    .collect(),
            })
            .collect();
        let image_id = |reference: &str| format!("sha256:id-of-{reference}");
        let containers = desired
            .containers
            .iter()
            .enumerate()
            .map(|(index, container)| ActualContainer {
                id: format!("container-{index}"),
                name: container.name.clone(),
                labels: container.labels(&desired.app),
                image: container.spec.image_reference(),
                image_id: image_id(&container.spec.image_reference()),
                image_digests: container.spec.image_digest.iter().cloned().collect(),
                state: ContainerState::Running,
                health: container.spec.healthcheck.as_ref().map(|_| Health::Healthy),
            })
            .collect();
        let images = desired
            .images()
            .into_iter()
            .map(|reference| {
                let (tags, digests, repo_digests) = match reference.split_once('@') {
                    Some((repo, digest)) => (
                        Vec::new(),
                        vec![digest.to_string()],
                        vec![format!("{}@{digest}", crate::plan::repository_of(repo))],
                    ),
                    None => (vec![reference.clone()], Vec::new(), Vec::new()),
                };
                ActualImage {
                    id: image_id(&reference),
                    repo_tags: tags,
                    digests,
                    repo_digests,
                }
            })
            .collect();
        ActualHost {
            networks,
            containers,
            images,
            previous: Vec::new(),
            volumes: desired
                .volumes
                .iter()
                .map(|volume| ActualVolume {
                    name: volume.name.clone(),
                    driver: volume.driver.clone().unwrap_or_else(|| "local".into()),
                    options: volume.driver_opts.clone(),
                    labels: volume.labels.clone(),
                })
                .collect(),
        }
    }
}
