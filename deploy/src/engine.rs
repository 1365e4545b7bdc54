//! One Docker host through the Docker Engine API (bollard): connecting, reading the actual
//! state into [`ActualHost`], and the small operations the applier is made of.
//!
//! Connections: `unix://PATH`, `tcp://HOST:PORT` (plain, or TLS with the client certificate,
//! key and CA the inventory names), `ssh://[USER@]HOST[:PORT]` (through [`crate::ssh`]). The
//! API version is negotiated, so daemons as old as Debian 12's Docker 20.10 (API 1.41) work. Every call is bounded by a timeout; an
//! unreachable host fails on its own with the address it tried.

use std::path::Path;
use std::time::Duration;

use bollard::models::{
    HealthStatusEnum, Ipam, NetworkConnectRequest, NetworkCreateRequest, NetworkDisconnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, ListImagesOptions,
    ListNetworksOptions, RemoveContainerOptions, RenameContainerOptions, StopContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::StreamExt;

use crate::actual::{ActualHost, Health};
use crate::desired::{DesiredContainer, DesiredNetwork};
use crate::inventory::{DockerEndpoint, TlsFiles};
use crate::labels;
use crate::ssh::{SshTarget, SshTunnel};

mod body;
pub(crate) use body::ipam_config;
pub use body::{container_body, later_networks};
use body::{endpoint_settings, restart_policy};
mod error;
mod read;
pub use read::actual_host;
pub(crate) use read::ipv4_addressing;
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

/// `tcp://HOST:PORT`, an IPv6 host in brackets.
fn tcp_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

/// The CA, client certificate and key of a TLS endpoint, each present on disk. Berth always
/// verifies the daemon: `docker_tls_verify: false` is refused rather than ignored.
fn tls_files<'a>(
    tls: &'a TlsFiles,
    shown: &str,
) -> Result<(&'a Path, &'a Path, &'a Path), EngineError> {
    let settings_error = |message: String| EngineError::TlsSettings {
        endpoint: shown.to_string(),
        message,
    };
    let (Some(ca), Some(cert), Some(key)) = (&tls.ca_cert, &tls.client_cert, &tls.client_key)
    else {
        return Err(settings_error(
            "TLS needs a CA certificate, a client certificate and its key \
             (docker_cert_path with ca.pem, cert.pem, key.pem, or docker_tls_ca_cert, \
             docker_tls_client_cert and docker_tls_client_key)"
                .to_string(),
        ));
    };
    if !tls.verify {
        return Err(settings_error(
            "docker_tls_verify: false is not supported; give the daemon's CA in \
             docker_tls_ca_cert instead"
                .to_string(),
        ));
    }
    for file in [ca, cert, key] {
        if !file.is_file() {
            return Err(settings_error(format!(
                "TLS file {} not found",
                file.display()
            )));
        }
    }
    Ok((ca, cert, key))
}

impl Engine {
    /// Connects and negotiates the API version, within `timeout`.
    pub async fn connect(
        endpoint: &DockerEndpoint,
        timeout: Duration,
    ) -> Result<Engine, EngineError> {
        let shown = endpoint.to_string();
        let connect_error = |e: bollard::errors::Error| EngineError::Connect {
            endpoint: shown.clone(),
            message: e.to_string(),
        };
        let mut tunnel = None;
        let docker = match endpoint {
            DockerEndpoint::Unix { path } => {
                let path = path.to_string_lossy();
                Docker::connect_with_unix(&path, REQUEST_TIMEOUT_SECS, API_DEFAULT_VERSION)
                    .map_err(connect_error)?
            }
            DockerEndpoint::Tcp {
                host,
                port,
                tls: None,
            } => Docker::connect_with_http(
                &tcp_url(host, *port),
                REQUEST_TIMEOUT_SECS,
                API_DEFAULT_VERSION,
            )
            .map_err(connect_error)?,
            DockerEndpoint::Tcp {
                host,
                port,
                tls: Some(tls),
            } => {
                let (ca, cert, key) = tls_files(tls, &shown)?;
                Docker::connect_with_ssl(
                    &tcp_url(host, *port),
                    key,
                    cert,
                    ca,
                    REQUEST_TIMEOUT_SECS,
                    API_DEFAULT_VERSION,
                )
                .map_err(connect_error)?
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
                    .map_err(connect_error)?
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bollard::models::RestartPolicyNameEnum;

    use super::read::health_from_status;
    use super::*;
    use crate::app::{Port, Protocol, ServiceNetwork};
    use crate::desired::{ContainerSpec, HealthSpec};

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
