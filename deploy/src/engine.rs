//! One Docker host through the Docker Engine API (bollard): connecting, reading the actual
//! state into [`ActualHost`], and the small operations the applier is made of.
//!
//! Connections: `unix://PATH`, `tcp://HOST:PORT` (plain, or TLS with the client certificate,
//! key and CA the inventory names), `ssh://[USER@]HOST[:PORT]` (through [`crate::ssh`]). The
//! API version is negotiated, so daemons as old as Debian 12's Docker 20.10 (API 1.41) work. Every call is bounded by a timeout; an
//! unreachable host fails on its own with the address it tried.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, EndpointIpamConfig,
    EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig, Ipam, IpamConfig,
    NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest, NetworkingConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    ListNetworksOptions, RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::StreamExt;
use ipnet::Ipv4Net;

use crate::actual::{
    ActualContainer, ActualHost, ActualImage, ActualNetwork, AttachedContainer, ContainerState,
    Health,
};
use crate::desired::{ContainerSpec, DesiredContainer, DesiredNetwork};
use crate::inventory::DockerEndpoint;
use crate::labels;
use crate::ssh::{SshTarget, SshTunnel};

mod error;
mod storage;
pub(crate) use error::api_error;
use error::with_causes;
pub use error::EngineError;
pub(crate) use storage::docker_mount as storage_mount;

/// Seconds bollard waits for one API call; pulls of big images are the slow ones.
const REQUEST_TIMEOUT_SECS: u64 = 600;

/// Registry credentials for pulls (what `docker login` stored for the image's registry).
#[derive(Clone, Default)]
pub struct PullAuth {
    pub username: Option<String>,
    pub password: Option<String>,
    pub identity_token: Option<String>,
    pub server: String,
}

impl std::fmt::Debug for PullAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PullAuth({}, ***)", self.server)
    }
}

/// A connected Docker host.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
    /// For `ssh://` hosts: the tunnel bollard's socket leads through; it lives as long as
    /// any clone of the engine.
    _tunnel: Option<std::sync::Arc<SshTunnel>>,
    /// Engine API calls made through this connection (all clones), for `--timings`.
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn is_not_found(err: &bollard::errors::Error) -> bool {
    matches!(
        err,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

impl Engine {
    /// Connects and negotiates the API version, within `timeout`.
    pub async fn connect(
        endpoint: &DockerEndpoint,
        timeout: Duration,
    ) -> Result<Engine, EngineError> {
        let shown = endpoint.to_string();
        let mut tunnel = None;
        let docker = match endpoint {
            DockerEndpoint::Unix { path } => {
                let path = path.to_string_lossy();
                Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                    .map_err(|e| EngineError::Connect {
                        endpoint: shown.clone(),
                        message: e.to_string(),
                    })?
            }
            DockerEndpoint::Tcp {
                host,
                port,
                tls: None,
            } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                Docker::connect_with_http(
                    &format!("tcp://{host}:{port}"),
                    REQUEST_TIMEOUT_SECS,
                    API_DEFAULT_VERSION,
                )
                .map_err(|e| EngineError::Connect {
                        endpoint: shown.clone(),
                        message: e.to_string(),
                    })?
            }
            DockerEndpoint::Tcp {
                host,
                port,
                tls: Some(tls),
            } => {
                let (Some(ca), Some(cert), Some(key)) =
                    (&tls.ca_cert, &tls.client_cert, &tls.client_key)
                else {
                    return Err(EngineError::TlsSettings {
                        endpoint: shown,
                        message: "TLS needs a CA certificate, a client certificate and its key \
                         (docker_cert_path with ca.pem, cert.pem, key.pem, or docker_tls_ca_cert, \
                         docker_tls_client_cert and docker_tls_client_key)"
                            .to_string(),
                    });
                };
                if !tls.verify {
                    return Err(EngineError::TlsSettings {
                        endpoint: shown,
                        message: "docker_tls_verify: false is not supported; give the daemon's \
                         CA in docker_tls_ca_cert instead"
                            .to_string(),
                    });
                }
                for file in [ca, cert, key] {
                    if !file.is_file() {
                        return Err(EngineError::TlsSettings {
                            endpoint: shown,
                            message: format!("TLS file {} not found", file.display()),
                        });
                    }
                }
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                Docker::connect_with_ssl(
                    &format!("tcp://{host}:{port}"),
                    key,
                    cert,
                    ca,
                    REQUEST_TIMEOUT_SECS,
                    API_DEFAULT_VERSION,
                )
                .map_err(|e| EngineError::Connect {
                        endpoint: shown.clone(),
                        message: e.to_string(),
                    })?
            }
            DockerEndpoint::Ssh {
                user,
                host,
                port,
                identity_file,
                options,
            } => {
                let target = SshTarget {
                    user: user.clone(),
                    host: host.clone(),
                    port: *port,
                    identity_file: identity_file.clone(),
                    options: options.clone(),
                };
                let opened = SshTunnel::open(&target, timeout)
                    .await
                    .map_err(EngineError::SshTunnel)?;
                let socket = opened.socket().to_string_lossy().into_owned();
                tunnel = Some(std::sync::Arc::new(opened));
                Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                    .map_err(|e| EngineError::Connect {
                        endpoint: shown.clone(),
                        message: e.to_string(),
                    })?
            }
        };
        let docker = tokio::time::timeout(timeout, docker.negotiate_version())
            .await
            .map_err(|_| EngineError::NoAnswer {
                endpoint: shown.clone(),
                timeout,
            })?
            .map_err(|e| EngineError::Unreachable {
                endpoint: shown.clone(),
                message: with_causes(&e),
            })?;
        Ok(Engine {
            docker,
            endpoint: shown,
            _tunnel: tunnel,
            // The version negotiation above was one.
            calls: std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1)),
        })
    }

    /// The API client, for the swarm module's service calls.
    pub(crate) fn docker(&self) -> &Docker {
        self.api()
    }

    /// The API client for one call (counted).
    fn api(&self) -> &Docker {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.docker
    }

    /// Engine API calls made so far through this connection.
    pub fn api_calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Everything planning needs: all networks, all containers (this app's and others'),
    /// all images. Three list calls, no per-object inspect, so an unchanged re-run is quick.
    pub async fn read(&self, app: &str) -> Result<ActualHost, EngineError> {
        let containers = self
            .api()
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await
            .map_err(|e| api_error("listing containers", e))?;
        let networks = self
            .api()
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(|e| api_error("listing networks", e))?;
        let images = self
            .api()
            .list_images(Some(ListImagesOptions::default()))
            .await
            .map_err(|e| api_error("listing images", e))?;

        let mut actual = actual_host(app, containers, networks, images);
        actual.volumes = self.read_volumes().await?;
        Ok(actual)
    }

    /// Pulls an image (`repo@sha256:…` or `repo:tag`), reading the progress stream to its
    /// end; an error anywhere in it fails the pull.
    pub async fn pull(&self, image: &str, auth: Option<PullAuth>) -> Result<(), EngineError> {
        let credentials = auth.map(|auth| bollard::auth::DockerCredentials {
            username: auth.username,
            password: auth.password,
            identitytoken: auth.identity_token,
            serveraddress: Some(auth.server),
            ..Default::default()
        });
        let mut stream = self.api().create_image(
            Some(CreateImageOptions {
                from_image: Some(image.to_string()),
                ..Default::default()
            }),
            None,
            credentials,
        );
        while let Some(item) = stream.next().await {
            item.map_err(|e| api_error(&format!("pulling {image}"), e))?;
        }
        Ok(())
    }

    pub async fn create_network(&self, network: &DesiredNetwork) -> Result<String, EngineError> {
        let ipam_config = ipam_config(network.subnet, network.gateway, network.ip_range);
        let request = NetworkCreateRequest {
            name: network.name.clone(),
            driver: Some(network.driver.as_str().to_string()),
            internal: Some(network.internal),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(ipam_config.into_iter().collect()),
                options: None,
            }),
            options: Some(
                network
                    .options
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            labels: Some(
                network
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            ..Default::default()
        };
        let response = self
            .api()
            .create_network(request)
            .await
            .map_err(|e| api_error(&format!("creating network {}", network.name), e))?;
        Ok(response.id)
    }

    pub async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self.api().remove_network(name).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("removing network {name}"), e)),
        }
    }

    pub async fn disconnect(&self, network: &str, container: &str) -> Result<(), EngineError> {
        self.api()
            .disconnect_network(
                network,
                NetworkDisconnectRequest {
                    container: container.to_string(),
                    force: Some(true),
                },
            )
            .await
            .map_err(|e| api_error(&format!("disconnecting {container} from {network}"), e))
    }

    /// Attaches a (stopped) container to a network again with its fixed address and aliases.
    pub async fn attach(
        &self,
        network: &str,
        container: &str,
        attachment: &crate::app::ServiceNetwork,
    ) -> Result<(), EngineError> {
        self.api()
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: container.to_string(),
                    endpoint_config: Some(endpoint_settings(attachment)),
                },
            )
            .await
            .map_err(|e| api_error(&format!("connecting {container} to {network}"), e))
    }

    /// Creates (not starts) a container for `desired` under `name`.
    pub async fn create_container(
        &self,
        app: &str,
        desired: &DesiredContainer,
        name: &str,
        deploy_id: &str,
    ) -> Result<String, EngineError> {
        let mut body = container_body(app, desired);
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(labels::DEPLOY.to_string(), deploy_id.to_string());
        }
        let response = self
            .api()
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name.to_string()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| api_error(&format!("creating container {name}"), e))?;
        Ok(response.id)
    }

    pub async fn start(&self, name: &str) -> Result<(), EngineError> {
        self.api()
            .start_container(name, None)
            .await
            .map_err(|e| api_error(&format!("starting {name}"), e))
    }

    pub async fn stop(&self, name: &str) -> Result<(), EngineError> {
        match self
            .api()
            .stop_container(
                name,
                // No `t`: the daemon waits the container's own StopTimeout (the service's
                // stop_grace_period), 10 s when it has none.
                Some(StopContainerOptions::default()),
            )
            .await
        {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(e) => Err(api_error(&format!("stopping {name}"), e)),
        }
    }

    /// Removes a container (stopping it first); a missing one is fine.
    pub async fn remove(&self, name: &str) -> Result<(), EngineError> {
        match self
            .api()
            .remove_container(
                name,
                Some(RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("removing container {name}"), e)),
        }
    }

    pub async fn rename(&self, from: &str, to: &str) -> Result<(), EngineError> {
        self.api()
            .rename_container(
                from,
                RenameContainerOptions {
                    name: to.to_string(),
                },
            )
            .await
            .map_err(|e| api_error(&format!("renaming {from} to {to}"), e))
    }

    /// Sets a container's restart policy (a kept previous release gets `no`, so a daemon
    /// restart never starts it next to the current one; rollback restores the stored one).
    pub async fn set_restart(
        &self,
        name: &str,
        policy: &crate::app::RestartPolicy,
    ) -> Result<(), EngineError> {
        self.api()
            .update_container(
                name,
                bollard::models::ContainerUpdateBody {
                    restart_policy: Some(restart_policy(policy)),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| api_error(&format!("updating restart policy of {name}"), e))
    }

    /// Current state and health of a container (`None` when it does not exist).
    pub async fn status(&self, name: &str) -> Result<Option<Status>, EngineError> {
        let inspect = match self.api().inspect_container(name, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(api_error(&format!("inspecting {name}"), e)),
        };
        let state = inspect.state.unwrap_or_default();
        let health = state.health.as_ref().and_then(|h| h.status).and_then(|s| {
            Some(match s {
                HealthStatusEnum::STARTING => Health::Starting,
                HealthStatusEnum::HEALTHY => Health::Healthy,
                HealthStatusEnum::UNHEALTHY => Health::Unhealthy,
                _ => return None,
            })
        });
        let last_check = state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|log| log.last())
            .and_then(|entry| entry.output.clone())
            .map(|output| output.trim().to_string())
            .filter(|output| !output.is_empty());
        Ok(Some(Status {
            running: state.running.unwrap_or(false),
            restarting: state.restarting.unwrap_or(false),
            exit_code: state.exit_code,
            error: state.error.filter(|e| !e.is_empty()),
            health,
            last_check,
        }))
    }
}

impl Engine {
    /// Names of the networks a container is attached to (`None` when it does not exist).
    pub async fn networks_of(&self, name: &str) -> Result<Option<Vec<String>>, EngineError> {
        let inspect = match self.api().inspect_container(name, None).await {
            Ok(inspect) => inspect,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(api_error(&format!("inspecting {name}"), e)),
        };
        Ok(Some(
            inspect
                .network_settings
                .and_then(|settings| settings.networks)
                .map(|networks| networks.into_keys().collect())
                .unwrap_or_default(),
        ))
    }
}

/// The host's state from the three list calls' answers (`GET /containers/json?all=1`,
/// `GET /networks`, `GET /images/json`), as the Engine API returns them: what
/// [`Engine::read`] plans with. Separate so tests can feed it JSON captured from a real
/// daemon (deploy/tests/fixtures/engine-capture/).
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

/// What [`Engine::status`] reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub running: bool,
    /// Exited and about to be restarted by its restart policy: not a healthy start.
    pub restarting: bool,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
    pub health: Option<Health>,
    /// Output of the latest healthcheck run, to say why a container is unhealthy.
    pub last_check: Option<String>,
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
fn health_from_status(status: &str) -> Option<Health> {
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

fn restart_policy(policy: &crate::app::RestartPolicy) -> RestartPolicy {
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

fn endpoint_settings(attachment: &crate::app::ServiceNetwork) -> EndpointSettings {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Port, Protocol, ServiceNetwork};
    use crate::desired::HealthSpec;

    fn desired() -> DesiredContainer {
        let spec = ContainerSpec {
            image: "reg:5000/web:v1".into(),
            image_digest: Some(format!("sha256:{}", "a".repeat(64))),
            command: Some(vec!["httpd".into(), "-f".into()]),
            entrypoint: None,
            env: BTreeMap::from([("MODE".into(), "prod".into())]),
            labels: BTreeMap::from([("team".into(), "web".into())]),
            ports: vec![
                Port {
                    host_ip: Some("127.0.0.1".parse().expect("ip")),
                    published: Some(8080),
                    target: 80,
                    protocol: Protocol::Tcp,
                    mode: None,
                },
                Port {
                    host_ip: None,
                    published: None,
                    target: 53,
                    protocol: Protocol::Udp,
                    mode: None,
                },
            ],
            networks: BTreeMap::from([
                (
                    "app_back".into(),
                    ServiceNetwork {
                        ipv4_address: Some("10.2.3.2".parse().expect("ip")),
                        aliases: vec![],
                    },
                ),
                (
                    "app_front".into(),
                    ServiceNetwork {
                        ipv4_address: None,
                        aliases: vec!["web".into()],
                    },
                ),
            ]),
            restart: crate::app::RestartPolicy {
                name: "on-failure".into(),
                max_retries: Some(3),
            },
            nano_cpus: Some(500_000_000),
            memory: Some(64 << 20),
            healthcheck: Some(HealthSpec {
                test: vec!["CMD".into(), "true".into()],
                interval_ns: Some(1_000_000_000),
                timeout_ns: None,
                retries: Some(2),
                start_period_ns: None,
            }),
            stop_signal: Some("SIGQUIT".into()),
            stop_grace_period_s: Some(3),
            runtime: Default::default(),
            mounts: Vec::new(),
            secrets: Vec::new(),
        };
        DesiredContainer {
            name: "app_web_1".into(),
            service: "web".into(),
            replica: 1,
            config_hash: spec.config_hash(),
            spec,
            build: None,
            naming: crate::app::Naming::Berth,
            secret_values: Default::default(),
            settle_ns: None,
            depends_on: Vec::new(),
        }
    }

    #[test]
    fn create_body_carries_the_whole_spec() {
        let container = desired();
        let body = container_body("app", &container);
        assert_eq!(
            body.image.as_deref(),
            Some(format!("reg:5000/web:v1@sha256:{}", "a".repeat(64)).as_str())
        );
        assert_eq!(body.env, Some(vec!["MODE=prod".to_string()]));
        let labels = body.labels.expect("labels");
        assert_eq!(labels["team"], "web");
        assert_eq!(labels[labels::APP], "app");
        assert_eq!(labels[labels::CONFIG_HASH], container.config_hash);
        assert_eq!(
            body.exposed_ports,
            Some(vec!["53/udp".to_string(), "80/tcp".to_string()])
        );
        let host = body.host_config.expect("host config");
        let bindings = host.port_bindings.expect("bindings");
        let web = bindings["80/tcp"].as_ref().expect("80/tcp")[0].clone();
        assert_eq!(web.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(web.host_port.as_deref(), Some("8080"));
        let dns = bindings["53/udp"].as_ref().expect("53/udp")[0].clone();
        assert_eq!((dns.host_ip, dns.host_port), (None, None));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 << 20));
        let restart = host.restart_policy.expect("restart");
        assert_eq!(restart.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(restart.maximum_retry_count, Some(3));
        let check = body.healthcheck.expect("healthcheck");
        assert_eq!(check.interval, Some(1_000_000_000));
        assert_eq!(check.retries, Some(2));
        assert_eq!(check.timeout, None);
        assert_eq!(body.stop_signal.as_deref(), Some("SIGQUIT"));
        assert_eq!(body.stop_timeout, Some(3));
    }

    #[test]
    fn one_network_at_create_the_rest_connected_later() {
        let container = desired();
        let body = container_body("app", &container);
        let host = body.host_config.expect("host config");
        assert_eq!(host.network_mode.as_deref(), Some("app_back"));
        let endpoints = body
            .networking_config
            .and_then(|n| n.endpoints_config)
            .expect("endpoints");
        assert_eq!(endpoints.len(), 1);
        let back = &endpoints["app_back"];
        assert_eq!(
            back.ipam_config
                .as_ref()
                .and_then(|c| c.ipv4_address.as_deref()),
            Some("10.2.3.2")
        );
        let later: Vec<&String> = later_networks(&container.spec)
            .map(|(name, _)| name)
            .collect();
        assert_eq!(later, ["app_front"]);
        let front = endpoint_settings(&container.spec.networks["app_front"]);
        assert_eq!(front.aliases, Some(vec!["web".to_string()]));
        assert!(front.ipam_config.is_none());
    }

    #[test]
    fn health_is_read_from_the_status_text() {
        assert_eq!(
            health_from_status("Up 3 seconds (healthy)"),
            Some(Health::Healthy)
        );
        assert_eq!(
            health_from_status("Up 1 second (health: starting)"),
            Some(Health::Starting)
        );
        assert_eq!(
            health_from_status("Up 9 seconds (unhealthy)"),
            Some(Health::Unhealthy)
        );
        assert_eq!(health_from_status("Exited (0) 2 minutes ago"), None);
    }

    #[tokio::test]
    async fn incomplete_endpoints_say_what_to_do() {
        let tls = DockerEndpoint::Tcp {
            host: "127.0.0.1".into(),
            port: 2376,
            tls: Some(crate::inventory::TlsFiles {
                ca_cert: Some("/nonexistent/ca.pem".into()),
                client_cert: None,
                client_key: None,
                verify: true,
            }),
        };
        let error = Engine::connect(&tls, Duration::from_secs(1))
            .await
            .err()
            .expect("incomplete TLS is refused")
            .to_string();
        assert!(
            error.contains("needs a CA certificate, a client certificate"),
            "{error}"
        );
        let missing = DockerEndpoint::Unix {
            path: "/nonexistent/docker.sock".into(),
        };
        let error = Engine::connect(&missing, Duration::from_secs(1))
            .await
            .err()
            .expect("a missing socket is unreachable")
            .to_string();
        assert!(error.contains("/nonexistent/docker.sock"), "{error}");
    }
}
