//! The app file: what runs (services), on which networks, with which variables.
//!
//! ```yaml
//! name: app_example                  # owner label on everything created; not templated
//! variables:                         # defaults; any inventory var of the host overrides them
//!   registry: docker-host:5000
//!   tag: v3
//! networks:
//!   test_nw:
//!     driver: bridge                 # bridge (default), macvlan, ipvlan, overlay
//!     subnet: 10.1.4.0/24
//!     gateway: 10.1.4.100
//!     ip_range: 10.1.4.128/25        # optional: where Docker picks dynamic addresses
//!     options: { com.docker.network.bridge.name: br-test }
//!     name: test_nw                  # optional Docker name; default APP_KEY
//! services:
//!   web:
//!     image: "{{ registry }}/app_example_image:{{ tag }}"
//!     hosts: web                     # which inventory hosts run it (a --limit pattern); default all
//!     replicas: 1                    # containers per host
//!     command: python3 -m http.server 8000     # or a list
//!     entrypoint: [/entrypoint.sh]
//!     env: { MODE: production }      # or [MODE=production]
//!     labels: { team: web }
//!     ports: ["0.0.0.0:80:8000/tcp", { target: 9000, published: 9000, host_ip: 127.0.0.1, protocol: udp }]
//!     networks: { test_nw: { ipv4_address: 10.1.4.2, aliases: [web] } }   # or [test_nw]
//!     restart: unless-stopped        # no, always, on-failure[:N]
//!     cpus: 0.5
//!     memory: 256m
//!     healthcheck: { test: "curl -f http://localhost:8000/", interval: 10s, timeout: 3s, retries: 3, start_period: 5s }
//!     stop_signal: SIGQUIT           # what `docker stop` sends first (default: the image's, else SIGTERM)
//!     stop_grace_period: 3s          # then SIGKILL after this long (default 10s)
//!     build: { context: ./web, dockerfile: Dockerfile, args: { V: 1 } }   # for `berth ship`
//!     depends_on: [db]               # a host starts db (healthy, if it has a check) first
//!     settle: 2s                     # no healthcheck: started once running this long (0.3s)
//!     user: "1000"                   # also working_dir, hostname, extra_hosts, cap_add,
//!                                    # cap_drop, init, read_only, tmpfs, ulimits, logging
//!                                    # (container mode; see app/runtime.rs)
//!     # Swarm mode only (`berth deploy --swarm`); container mode ignores them:
//!     reservations: { cpus: 0.25, memory: 64m }     # what the scheduler sets aside per task
//!     placement:
//!       constraints: [node.labels.zone==a]          # Swarm constraint expressions
//!       preferences: [{ spread: node.labels.zone }] # or plain `node.labels.zone`
//!       max_replicas_per_node: 1
//! ```
//!
//! Top-level `volumes:` and `secrets:`, and a service's `volumes:` (mounts) and `secrets:`,
//! follow the compose-spec; see [`storage`](self::Volume) for their forms.
//!
//! A port may also say `mode: host` or `mode: ingress` (Swarm's publish modes; ingress, the
//! routing mesh, is Swarm's default). Container mode publishes every port on its own host
//! and ignores `mode`.
//!
//! String values anywhere under `networks` and `services` are templates (see
//! [`crate::template`]), rendered per host with the app's `variables` overlaid by the host's
//! inventory vars. Rendering happens before typing, so numbers and lists can come from
//! variables too. Unknown keys are errors: a misspelt `enviroment:` must not be ignored.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::error::Problem;

// Deserialisers the serde attributes below name (and the sibling modules share).
mod de;
use de::{
    env_map, health_test, optional_build, optional_bytes, optional_cpus, optional_duration,
    optional_signal, optional_words, restart_policy, scalar_text, service_networks, spread_list,
    string_map,
};
mod ports;
use ports::port_list;
pub use ports::{Port, Protocol, PublishMode};
mod runtime;
pub use runtime::{Logging, RuntimeOptions, Ulimit};
mod source;
pub use source::AppSource;
pub(crate) use source::{typed_app, RenderedSections};
mod storage;
pub use storage::{
    parse_short_mount, BindOptions, Mount, MountType, Secret, SecretRef, TmpfsOptions, Volume,
    VolumeOptions, DEFAULT_SECRET_MODE, SECRETS_DIR,
};
mod validate;
pub(crate) use validate::check_docker_name;

/// An app file rendered for one host's variables, typed and validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct App {
    pub name: String,
    pub networks: BTreeMap<String, Network>,
    /// Named volumes the app owns (or uses, when `external`); see [`Volume`].
    pub volumes: BTreeMap<String, Volume>,
    /// Where each secret's value is read; see [`Secret`].
    pub secrets: BTreeMap<String, Secret>,
    pub services: BTreeMap<String, Service>,
    /// How containers are named and labelled (Berth's own or Compose's scheme).
    #[serde(skip_serializing_if = "Naming::is_berth")]
    pub naming: Naming,
}

/// Container names and labels: Berth's (`APP_SERVICE_N`) or Compose v2's (`PROJECT-SERVICE-N`
/// with the `com.docker.compose.*` labels), for apps read from a compose file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    #[default]
    Berth,
    Compose,
}

impl Naming {
    pub(crate) fn is_berth(&self) -> bool {
        *self == Naming::Berth
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkDriver {
    #[default]
    Bridge,
    Macvlan,
    Ipvlan,
    Overlay,
}

impl NetworkDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            NetworkDriver::Bridge => "bridge",
            NetworkDriver::Macvlan => "macvlan",
            NetworkDriver::Ipvlan => "ipvlan",
            NetworkDriver::Overlay => "overlay",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The network's name on the Docker host; default `APP_KEY`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub driver: NetworkDriver,
    #[serde(default)]
    pub subnet: Option<Ipv4Net>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub ip_range: Option<Ipv4Net>,
    #[serde(default, deserialize_with = "string_map")]
    pub options: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub labels: BTreeMap<String, String>,
    /// No route to the outside world (Docker's `--internal`).
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub image: String,
    /// Which inventory hosts run this service, as a `--limit` pattern.
    #[serde(default = "all_hosts")]
    pub hosts: String,
    #[serde(default = "one")]
    pub replicas: u32,
    #[serde(default, deserialize_with = "optional_words")]
    pub command: Option<Vec<String>>,
    #[serde(default, deserialize_with = "optional_words")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, alias = "environment", deserialize_with = "env_map")]
    pub env: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "port_list")]
    pub ports: Vec<Port>,
    #[serde(default, deserialize_with = "service_networks")]
    pub networks: BTreeMap<String, ServiceNetwork>,
    #[serde(default, deserialize_with = "restart_policy")]
    pub restart: RestartPolicy,
    #[serde(default, deserialize_with = "optional_cpus")]
    pub cpus: Option<f64>,
    /// Memory limit in bytes (written as `512m`, `1g`, or a number of bytes).
    #[serde(default, deserialize_with = "optional_bytes")]
    pub memory: Option<u64>,
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    /// The signal a stop sends first (`SIGTERM`, `QUIT`, `9`, ...).
    #[serde(default, deserialize_with = "optional_signal")]
    pub stop_signal: Option<String>,
    /// How long a stop waits for the container to exit before killing it (nanoseconds).
    #[serde(default, deserialize_with = "optional_duration")]
    pub stop_grace_period: Option<u64>,
    #[serde(default, deserialize_with = "optional_build")]
    pub build: Option<Build>,
    /// Swarm mode: resources the scheduler reserves per task (container mode ignores it).
    #[serde(default)]
    pub reservations: Option<Reservations>,
    /// Swarm mode: where tasks may run (container mode places by `hosts` instead).
    #[serde(default)]
    pub placement: Option<Placement>,
    /// Services whose containers a host starts (and waits for, when they have a
    /// healthcheck) before this one's: Compose's `depends_on`.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// Without a healthcheck: how long a new container must keep running to count as
    /// started (nanoseconds; `--settle`'s default when unset). Not part of the container's
    /// config: changing it replaces nothing.
    #[serde(default, deserialize_with = "optional_duration")]
    pub settle: Option<u64>,
    // Container options (see `app/runtime.rs`).
    #[serde(default, deserialize_with = "runtime::optional_text")]
    pub user: Option<String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default, deserialize_with = "runtime::extra_hosts")]
    pub extra_hosts: Vec<String>,
    #[serde(default)]
    pub cap_add: Vec<String>,
    #[serde(default)]
    pub cap_drop: Vec<String>,
    #[serde(default)]
    pub init: Option<bool>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, deserialize_with = "runtime::tmpfs")]
    pub tmpfs: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "runtime::ulimits")]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(default)]
    pub logging: Option<Logging>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default, deserialize_with = "runtime::one_or_list")]
    pub dns: Vec<String>,
    #[serde(default, deserialize_with = "runtime::one_or_list")]
    pub dns_search: Vec<String>,
    #[serde(default)]
    pub security_opt: Vec<String>,
    #[serde(default, deserialize_with = "runtime::sysctls")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "optional_bytes")]
    pub shm_size: Option<u64>,
    #[serde(default)]
    pub pids_limit: Option<i64>,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin_open: bool,
    /// The container's name instead of `APP_SERVICE_1` (one replica only), as Compose's
    /// `container_name`.
    #[serde(default)]
    pub container_name: Option<String>,
    /// Mounts: named volumes, bind mounts, tmpfs (see [`Mount`]).
    #[serde(
        default,
        deserialize_with = "storage::mount_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub volumes: Vec<Mount>,
    /// Secrets given to the service as files (see [`SecretRef`]).
    #[serde(
        default,
        deserialize_with = "storage::secret_refs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub secrets: Vec<SecretRef>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservations {
    #[serde(default, deserialize_with = "optional_cpus")]
    pub cpus: Option<f64>,
    #[serde(default, deserialize_with = "optional_bytes")]
    pub memory: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Swarm constraint expressions (`node.labels.zone==a`, `node.role!=manager`).
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Spread descriptors (`node.labels.zone`), in order of preference.
    #[serde(default, deserialize_with = "spread_list")]
    pub preferences: Vec<String>,
    #[serde(default)]
    pub max_replicas_per_node: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceNetwork {
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    #[serde(default)]
    pub aliases: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// `no`, `always`, `unless-stopped` or `on-failure`, as the Docker API spells them.
    pub name: String,
    pub max_retries: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    /// Docker's form: `["CMD", ...]`, `["CMD-SHELL", "..."]` or `["NONE"]`.
    #[serde(deserialize_with = "health_test")]
    pub test: Vec<String>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub interval: Option<u64>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default, deserialize_with = "optional_duration")]
    pub start_period: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Build {
    pub context: String,
    #[serde(default)]
    pub dockerfile: Option<String>,
    #[serde(default, deserialize_with = "string_map")]
    pub args: BTreeMap<String, String>,
    #[serde(default)]
    pub target: Option<String>,
}

fn all_hosts() -> String {
    "all".to_string()
}

fn one() -> u32 {
    1
}

impl App {
    /// Service keys in the order a host starts them: by name, except that a service comes
    /// after those it `depends_on`. A cycle is an error naming one service on it.
    pub fn start_order(&self) -> std::result::Result<Vec<&str>, Problem> {
        fn visit<'a>(
            app: &'a App,
            key: &'a str,
            order: &mut Vec<&'a str>,
            visiting: &mut Vec<&'a str>,
        ) -> std::result::Result<(), Problem> {
            if order.contains(&key) {
                return Ok(());
            }
            if visiting.contains(&key) {
                return Err(Problem::new(
                    format!("services.{key}.depends_on"),
                    format!("dependency cycle: {} -> {key}", visiting.join(" -> ")),
                ));
            }
            visiting.push(key);
            if let Some(service) = app.services.get(key) {
                for dependency in &service.depends_on {
                    if app.services.contains_key(dependency) {
                        visit(app, dependency, order, visiting)?;
                    }
                }
            }
            visiting.pop();
            order.push(key);
            Ok(())
        }
        let mut order = Vec::new();
        for key in self.services.keys() {
            visit(self, key, &mut order, &mut Vec::new())?;
        }
        Ok(order)
    }

    /// The Docker name of a network key.
    pub fn network_docker_name(&self, key: &str) -> String {
        match self.networks.get(key).and_then(|n| n.name.clone()) {
            Some(name) => name,
            None => format!("{}_{key}", self.name),
        }
    }
}

#[cfg(test)]
mod tests;
