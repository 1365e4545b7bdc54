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
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Problem, Result};
use crate::template::{has_template, Templater, Vars};
use crate::units;
use crate::yaml;

mod runtime;
pub use runtime::{Logging, RuntimeOptions, Ulimit};
mod storage;
pub use storage::{
    parse_short_mount, BindOptions, Mount, MountType, Secret, SecretRef, TmpfsOptions, Volume,
    VolumeOptions, DEFAULT_SECRET_MODE, SECRETS_DIR,
};

/// An app file as read from disk, before per-host rendering.
#[derive(Debug, Clone)]
pub struct AppSource {
    pub path: PathBuf,
    pub name: String,
    /// Default values of variables; inventory vars override them.
    pub variables: Vars,
    networks: Value,
    volumes: Value,
    secrets: Value,
    services: Value,
    /// Set when the file is a compose file (`crate::compose`), which renders itself.
    compose: Option<Box<crate::compose::ComposeSource>>,
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A published port. `published: None` asks Docker for an ephemeral host port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub host_ip: Option<IpAddr>,
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: Protocol,
    /// Swarm's publish mode; `None` = Swarm's default (ingress). Skipped when unset so the
    /// config hashes of containers deployed before this field existed stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PublishMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On the node that runs the task only (no routing mesh).
    Host,
    /// Through Swarm's routing mesh, on every node.
    Ingress,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        if let Some(published) = self.published {
            write!(f, "{published}")?;
        }
        if self.host_ip.is_some() || self.published.is_some() {
            write!(f, "->")?;
        }
        write!(f, "{}/{}", self.target, self.protocol.as_str())
    }
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

impl AppSource {
    pub fn load(path: &Path) -> Result<AppSource> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        AppSource::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<AppSource> {
        let document = yaml::parse_str(path, text)?;
        if crate::compose::is_compose(path, &document) {
            let compose = crate::compose::ComposeSource::load(path, text, document)?;
            return Ok(AppSource {
                path: path.to_path_buf(),
                name: compose.project.clone(),
                variables: Vars::new(),
                networks: Value::Null,
                volumes: Value::Null,
                secrets: Value::Null,
                services: Value::Null,
                compose: Some(Box::new(compose)),
            });
        }
        AppSource::from_value(path, document)
    }

    /// Is this app read from a compose file?
    pub fn is_compose(&self) -> bool {
        self.compose.is_some()
    }

    fn from_value(path: &Path, document: Value) -> Result<AppSource> {
        let invalid = |key: &str, message: String| Error::InvalidApp {
            file: path.to_path_buf(),
            problems: vec![Problem::new(key, message)],
        };
        let Value::Object(mut top) = document else {
            return Err(invalid(
                "",
                format!(
                    "expected a mapping with name, services, networks, variables; found {}",
                    yaml::kind_of(&document)
                ),
            ));
        };
        if let Some(unknown) = top.keys().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
            return Err(invalid(
                unknown,
                format!(
                    "unknown key `{unknown}` (expected {})",
                    TOP_LEVEL_KEYS.join(", ")
                ),
            ));
        }
        let name = match top.remove("name") {
            Some(Value::String(name)) => name,
            Some(other) => {
                return Err(invalid(
                    "name",
                    format!("expected text, found {}", yaml::kind_of(&other)),
                ))
            }
            None => {
                return Err(invalid(
                    "name",
                    "missing: every app needs a name (it labels what Berth creates)".to_string(),
                ))
            }
        };
        if has_template(&name) {
            return Err(invalid(
                "name",
                "the app name cannot be templated: it identifies what this app owns on every host"
                    .to_string(),
            ));
        }
        check_docker_name(&name).map_err(|message| invalid("name", message))?;
        let variables = match top.remove("variables") {
            None | Some(Value::Null) => Vars::new(),
            Some(Value::Object(map)) => map.into_iter().collect(),
            Some(other) => {
                return Err(invalid(
                    "variables",
                    format!("expected a mapping, found {}", yaml::kind_of(&other)),
                ))
            }
        };
        let section = |value: Option<Value>, key: &str| match value {
            None | Some(Value::Null) => Ok(Value::Object(Default::default())),
            Some(map @ Value::Object(_)) => Ok(map),
            Some(other) => Err(invalid(
                key,
                format!("expected a mapping, found {}", yaml::kind_of(&other)),
            )),
        };
        let networks = section(top.remove("networks"), "networks")?;
        let volumes = section(top.remove("volumes"), "volumes")?;
        let secrets = section(top.remove("secrets"), "secrets")?;
        let services = section(top.remove("services"), "services")?;
        Ok(AppSource {
            path: path.to_path_buf(),
            name,
            variables,
            networks,
            volumes,
            secrets,
            services,
            compose: None,
        })
    }

    /// The variables a host sees: the app's defaults, overridden by the host's inventory vars.
    pub fn vars_for(&self, host_vars: &Vars) -> Vars {
        let mut vars = self.variables.clone();
        vars.extend(host_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        vars
    }

    /// Renders templates with a host's variables, types the result and validates it.
    pub fn render(&self, host_vars: &Vars) -> Result<App> {
        if let Some(compose) = &self.compose {
            return compose.render(host_vars);
        }
        let vars = self.vars_for(host_vars);
        let templater = Templater::new(&vars);
        let template_error = |e: crate::template::TemplateError| Error::Template {
            file: self.path.clone(),
            key: e.key,
            message: e.message,
        };
        let networks = templater
            .render(&self.networks, "networks")
            .map_err(template_error)?;
        let volumes = templater
            .render(&self.volumes, "volumes")
            .map_err(template_error)?;
        let secrets = templater
            .render(&self.secrets, "secrets")
            .map_err(template_error)?;
        let services = templater
            .render(&self.services, "services")
            .map_err(template_error)?;
        let sections = RenderedSections {
            networks: &networks,
            volumes: &volumes,
            secrets: &secrets,
            services: &services,
        };
        typed_app(&self.path, &self.name, sections, Naming::Berth)
    }
}

/// An app's sections after templating (or compose conversion), before typing.
pub(crate) struct RenderedSections<'a> {
    pub networks: &'a Value,
    pub volumes: &'a Value,
    pub secrets: &'a Value,
    pub services: &'a Value,
}

/// Types rendered sections (Berth's shape) and validates the app.
pub(crate) fn typed_app(
    path: &Path,
    name: &str,
    sections: RenderedSections,
    naming: Naming,
) -> Result<App> {
    let mut problems = Vec::new();
    let networks: BTreeMap<String, Network> =
        typed_entries(sections.networks, "networks", &mut problems);
    let volumes: BTreeMap<String, Volume> =
        typed_entries(sections.volumes, "volumes", &mut problems);
    let secrets: BTreeMap<String, Secret> =
        typed_entries(sections.secrets, "secrets", &mut problems);
    let services: BTreeMap<String, Service> =
        typed_entries(sections.services, "services", &mut problems);
    let app = App {
        name: name.to_string(),
        networks,
        volumes,
        secrets,
        services,
        naming,
    };
    if problems.is_empty() {
        problems = app.validate();
    }
    if problems.is_empty() {
        Ok(app)
    } else {
        Err(Error::InvalidApp {
            file: path.to_path_buf(),
            problems,
        })
    }
}

/// Types each entry of a section separately, so one bad service does not hide the others'
/// errors and every error names its entry.
fn typed_entries<T: for<'de> Deserialize<'de>>(
    section: &Value,
    key: &str,
    problems: &mut Vec<Problem>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    let Value::Object(entries) = section else {
        return out;
    };
    for (name, body) in entries {
        let entry_key = format!("{key}.{name}");
        // `web:` with nothing under it is an empty mapping, not null.
        let body = if body.is_null() {
            Value::Object(Default::default())
        } else {
            body.clone()
        };
        match serde_path_to_error::deserialize::<_, T>(body) {
            Ok(typed) => {
                out.insert(name.clone(), typed);
            }
            Err(err) => {
                let path = err.path().to_string();
                let at = if path == "." {
                    entry_key.clone()
                } else {
                    format!("{entry_key}.{path}")
                };
                problems.push(Problem::new(at, err.into_inner().to_string()));
            }
        }
    }
    out
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

    /// Checks that hold whatever host the app lands on. Per-host checks (port clashes,
    /// duplicate addresses among the containers a host actually runs) live in `desired`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut docker_names: BTreeMap<String, &str> = BTreeMap::new();
        let mut container_names: BTreeMap<&str, &str> = BTreeMap::new();
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
                        if !(subnet.contains(&range.network())
                            && subnet.contains(&range.broadcast()))
                        {
                            problems.push(Problem::new(
                                at(".ip_range"),
                                format!("{range} is not inside subnet {}", subnet.trunc()),
                            ));
                        }
                    }
                    for (other_key, other) in &subnets {
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
            if let Some(cpus) = service.cpus {
                if !(cpus > 0.0 && cpus.is_finite()) {
                    problems.push(Problem::new(
                        at(".cpus"),
                        format!("{cpus} is not a positive number of CPUs"),
                    ));
                }
            }
            if let Some(reservations) = &service.reservations {
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
            if let Some(name) = &service.container_name {
                if let Some(other) = container_names.insert(name, key) {
                    problems.push(Problem::new(
                        at(".container_name"),
                        format!("{name} is also the container name of service `{other}`"),
                    ));
                }
                if let Err(message) = check_docker_name(name) {
                    problems.push(Problem::new(at(".container_name"), message));
                }
                if service.replicas > 1 {
                    problems.push(Problem::new(
                        at(".container_name"),
                        format!(
                            "{} replicas cannot share the container name {name}",
                            service.replicas
                        ),
                    ));
                }
            }
            for dependency in &service.depends_on {
                if dependency == key || !self.services.contains_key(dependency) {
                    problems.push(Problem::new(
                        at(".depends_on"),
                        format!("`{dependency}` is not another service of this app"),
                    ));
                }
            }
            if let Some(placement) = &service.placement {
                for (index, constraint) in placement.constraints.iter().enumerate() {
                    let valid = ["==", "!="].iter().any(|op| {
                        constraint.split_once(op).is_some_and(|(key, value)| {
                            !key.trim().is_empty() && !value.trim().is_empty()
                        })
                    });
                    if !valid {
                        problems.push(Problem::new(
                            at(&format!(".placement.constraints[{index}]")),
                            format!("{constraint:?} is not a constraint (KEY==VALUE or KEY!=VALUE, e.g. node.labels.zone==a)"),
                        ));
                    }
                }
                for (index, spread) in placement.preferences.iter().enumerate() {
                    if spread.trim().is_empty() || spread.contains(char::is_whitespace) {
                        problems.push(Problem::new(
                            at(&format!(".placement.preferences[{index}]")),
                            format!(
                                "{spread:?} is not a spread descriptor (e.g. node.labels.zone)"
                            ),
                        ));
                    }
                }
                if placement.max_replicas_per_node == Some(0) {
                    problems.push(Problem::new(
                        at(".placement.max_replicas_per_node"),
                        "must be at least 1 (leave it out for no limit)",
                    ));
                }
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
            for (network_key, attachment) in &service.networks {
                let field = at(&format!(".networks.{network_key}"));
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
        self.validate_storage(&mut problems);
        if let Err(problem) = self.start_order() {
            problems.push(problem);
        }
        problems
    }
}

const TOP_LEVEL_KEYS: [&str; 6] = [
    "name",
    "variables",
    "networks",
    "volumes",
    "secrets",
    "services",
];

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

// ---- deserialisers for the forms users write ------------------------------------------------

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match scalar_text(&v) {
                Some(text) => Ok((k, text)),
                None => Err(D::Error::custom(format!(
                    "value of `{k}` must be text, a number or a boolean"
                ))),
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "expected a mapping, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

fn env_map<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let value = Value::deserialize(d)?;
    match value {
        Value::Array(items) => {
            let mut map = BTreeMap::new();
            for (index, item) in items.iter().enumerate() {
                let text = scalar_text(item)
                    .ok_or_else(|| D::Error::custom("env list items must be NAME=value"))?;
                // Not quoted: without its `=` the whole item may be the (secret) value.
                let (name, value) = text.split_once('=').ok_or_else(|| {
                    D::Error::custom(format!(
                        "env item {index} has no `=`; it must be NAME=value (the item is not \
                         shown: env values may be secrets)"
                    ))
                })?;
                if map.insert(name.to_string(), value.to_string()).is_some() {
                    return Err(D::Error::custom(format!("env {name} is set twice")));
                }
            }
            Ok(map)
        }
        other => string_map(other).map_err(D::Error::custom),
    }
}

fn optional_words<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(text) => units::split_words(&text)
            .map(Some)
            .map_err(D::Error::custom),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                scalar_text(item).ok_or_else(|| D::Error::custom("list items must be text"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        other => Err(D::Error::custom(format!(
            "expected text or a list, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

fn port_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<Port>, D::Error> {
    let items = yaml::list_items(Value::deserialize(d)?, "ports").map_err(D::Error::custom)?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_port(item)
                .map_err(|message| D::Error::custom(format!("ports[{index}]: {message}")))
        })
        .collect()
}

fn parse_port(item: &Value) -> std::result::Result<Port, String> {
    let port_number = |text: &str| -> std::result::Result<u16, String> {
        if text.contains('-') {
            return Err(format!(
                "port ranges ({text}) are not supported; list each port"
            ));
        }
        text.parse::<u16>()
            .map_err(|_| format!("invalid port {text:?}"))
    };
    match item {
        Value::Number(n) => {
            let target = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("invalid port {n}"))?;
            Ok(Port {
                host_ip: None,
                published: None,
                target,
                protocol: Protocol::Tcp,
                mode: None,
            })
        }
        Value::String(text) => {
            // [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]; an IPv6 host IP is written in brackets.
            let (spec, protocol) = match text.rsplit_once('/') {
                Some((spec, protocol)) => (spec, parse_protocol(protocol)?),
                None => (text.as_str(), Protocol::Tcp),
            };
            let (host_ip, rest) = if let Some(bracketed) = spec.strip_prefix('[') {
                let (ip, rest) = bracketed
                    .split_once("]:")
                    .ok_or_else(|| format!("{text:?}: expected [IPv6]:PUBLISHED:TARGET"))?;
                (
                    Some(
                        ip.parse::<IpAddr>()
                            .map_err(|_| format!("{text:?}: invalid IP {ip:?}"))?,
                    ),
                    rest,
                )
            } else {
                let parts: Vec<&str> = spec.split(':').collect();
                match parts.as_slice() {
                    [ip, published, target] => {
                        let ip = ip
                            .parse::<IpAddr>()
                            .map_err(|_| format!("{text:?}: invalid host IP {ip:?}"))?;
                        return Ok(Port {
                            host_ip: Some(ip),
                            published: optional_port(published, port_number)?,
                            target: port_number(target)?,
                            protocol,
                            mode: None,
                        });
                    }
                    _ => (None, spec),
                }
            };
            let parts: Vec<&str> = rest.split(':').collect();
            match parts.as_slice() {
                [target] if host_ip.is_none() => Ok(Port {
                    host_ip,
                    published: None,
                    target: port_number(target)?,
                    protocol,
                    mode: None,
                }),
                [published, target] => Ok(Port {
                    host_ip,
                    published: optional_port(published, port_number)?,
                    target: port_number(target)?,
                    protocol,
                    mode: None,
                }),
                _ => Err(format!(
                    "{text:?}: expected [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]"
                )),
            }
        }
        Value::Object(map) => {
            if let Some(unknown) = map.keys().find(|k| {
                !["target", "published", "host_ip", "protocol", "mode"].contains(&k.as_str())
            }) {
                return Err(format!(
                    "unknown key `{unknown}` (expected target, published, host_ip, protocol, mode)"
                ));
            }
            let text_of = |key: &str| {
                map.get(key)
                    .filter(|v| !v.is_null())
                    .map(|v| scalar_text(v).ok_or_else(|| format!("{key} must be a scalar")))
                    .transpose()
            };
            let target =
                port_number(&text_of("target")?.ok_or("missing `target` (the container port)")?)?;
            let published = text_of("published")?.map(|p| port_number(&p)).transpose()?;
            let host_ip = text_of("host_ip")?
                .map(|ip| {
                    ip.parse::<IpAddr>()
                        .map_err(|_| format!("invalid host_ip {ip:?}"))
                })
                .transpose()?;
            let protocol = text_of("protocol")?
                .map(|p| parse_protocol(&p))
                .transpose()?
                .unwrap_or(Protocol::Tcp);
            let mode = text_of("mode")?
                .map(|m| match m.as_str() {
                    "host" => Ok(PublishMode::Host),
                    "ingress" => Ok(PublishMode::Ingress),
                    other => Err(format!("unknown port mode {other:?} (host or ingress)")),
                })
                .transpose()?;
            Ok(Port {
                host_ip,
                published,
                target,
                protocol,
                mode,
            })
        }
        other => Err(format!(
            "expected \"HOST:CONTAINER\" or a mapping, found {}",
            yaml::kind_of(other)
        )),
    }
}

fn optional_port(
    text: &str,
    parse: impl Fn(&str) -> std::result::Result<u16, String>,
) -> std::result::Result<Option<u16>, String> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

fn parse_protocol(text: &str) -> std::result::Result<Protocol, String> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        other => Err(format!("unknown protocol {other:?} (tcp, udp or sctp)")),
    }
}

fn service_networks<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, ServiceNetwork>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::Array(items) => {
            let mut out = BTreeMap::new();
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| D::Error::custom("network list items are network names"))?;
                if out
                    .insert(name.to_string(), ServiceNetwork::default())
                    .is_some()
                {
                    return Err(D::Error::custom(format!(
                        "network `{name}` is listed twice"
                    )));
                }
            }
            Ok(out)
        }
        Value::Object(map) => map
            .into_iter()
            .map(|(name, body)| {
                let body = if body.is_null() {
                    Value::Object(Default::default())
                } else {
                    body
                };
                serde_json::from_value(body)
                    .map(|attachment| (name.clone(), attachment))
                    .map_err(|e| D::Error::custom(format!("{name}: {e}")))
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "expected a list or mapping of networks, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

/// Placement preferences: `node.labels.zone` or Compose's `{ spread: node.labels.zone }`.
fn spread_list<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    let items =
        yaml::list_items(Value::deserialize(d)?, "spread preferences").map_err(D::Error::custom)?;
    items
        .into_iter()
        .map(|item| match item {
            Value::String(text) => Ok(text),
            Value::Object(map) if map.len() == 1 => match map.get("spread") {
                Some(Value::String(text)) => Ok(text.clone()),
                _ => Err(D::Error::custom(
                    "a preference is `{ spread: node.labels.NAME }`",
                )),
            },
            _ => Err(D::Error::custom(
                "a preference is `node.labels.NAME` or `{ spread: node.labels.NAME }`",
            )),
        })
        .collect()
}

fn restart_policy<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<RestartPolicy, D::Error> {
    let value = Value::deserialize(d)?;
    // YAML 1.1 readers turn a bare `no` into false; accept it as the policy users meant.
    let text = match value {
        Value::Bool(false) | Value::Null => {
            return Ok(RestartPolicy {
                name: "no".into(),
                max_retries: None,
            })
        }
        Value::String(text) => text,
        other => {
            return Err(D::Error::custom(format!(
                "expected a restart policy, found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    match text.split_once(':') {
        None if ["no", "always", "unless-stopped", "on-failure"].contains(&text.as_str()) => {
            Ok(RestartPolicy {
                name: text,
                max_retries: None,
            })
        }
        Some(("on-failure", retries)) => {
            let retries = retries
                .parse::<u32>()
                .map_err(|_| D::Error::custom(format!("invalid retry count in {text:?}")))?;
            Ok(RestartPolicy {
                name: "on-failure".into(),
                max_retries: Some(retries),
            })
        }
        _ => Err(D::Error::custom(format!(
            "unknown restart policy {text:?} (no, always, unless-stopped, on-failure[:N])"
        ))),
    }
}

fn optional_cpus<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| D::Error::custom("invalid number")),
        Value::String(text) => text
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("invalid number of CPUs {text:?}"))),
        other => Err(D::Error::custom(format!(
            "expected a number of CPUs, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

fn optional_bytes<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid size {n}"))),
        Value::String(text) => units::parse_bytes(&text)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a size like 512m, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

fn optional_signal<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let text = match Value::deserialize(d)? {
        Value::Null => return Ok(None),
        Value::String(text) => text,
        Value::Number(n) => n.to_string(),
        other => {
            return Err(D::Error::custom(format!(
                "expected a signal like SIGTERM, found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    // Names (SIGTERM, TERM, SIGRTMIN+3) or numbers; Docker checks the name itself.
    let ok = !text.is_empty()
        && text.len() <= 16
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
    if ok {
        Ok(Some(text))
    } else {
        Err(D::Error::custom(format!(
            "expected a signal like SIGTERM, found {text:?}"
        )))
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(text) => units::parse_duration_ns(&text)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a duration like 30s, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

fn health_test<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(text) if text.trim().is_empty() => {
            Err(D::Error::custom("empty healthcheck test"))
        }
        Value::String(text) => Ok(vec!["CMD-SHELL".into(), text]),
        Value::Array(items) => {
            let words: Vec<String> = items
                .iter()
                .map(|i| scalar_text(i).ok_or_else(|| D::Error::custom("test items must be text")))
                .collect::<std::result::Result<_, _>>()?;
            match words.first().map(String::as_str) {
                None => Err(D::Error::custom("empty healthcheck test")),
                Some("CMD" | "CMD-SHELL" | "NONE") => Ok(words),
                Some(_) => Ok(std::iter::once("CMD".to_string()).chain(words).collect()),
            }
        }
        other => Err(D::Error::custom(format!(
            "expected a command (text or list), found {}",
            yaml::kind_of(&other)
        ))),
    }
}

fn optional_build<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Build>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(context) => Ok(Some(Build {
            context,
            dockerfile: None,
            args: BTreeMap::new(),
            target: None,
        })),
        map @ Value::Object(_) => serde_json::from_value(map)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a context path or a mapping, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const APP: &str = r#"
name: shop
variables: { tag: v1, web_port: 80 }
networks:
  front: { subnet: 10.1.4.0/24, gateway: 10.1.4.100 }
  back: { driver: bridge, subnet: 10.2.3.0/24, ip_range: 10.2.3.128/25 }
services:
  web:
    image: "registry:5000/web:{{ tag }}"
    ports: ["0.0.0.0:{{ web_port }}:8000", "9000", "127.0.0.1::9001/udp", "[::1]:9443:443", { target: 53, published: 5353, protocol: udp }]
    networks: { front: { ipv4_address: 10.1.4.2, aliases: [www] }, back: }
    env: { MODE: prod, WORKERS: 4, DEBUG: false }
    command: python3 -m http.server 8000
    restart: unless-stopped
    cpus: 0.5
    memory: 256m
    healthcheck: { test: "wget -q -O- localhost:8000", interval: 10s, retries: 3 }
  worker:
    image: registry:5000/worker
    replicas: "{{ workers }}"
    networks: [back]
    env: [A=1, B=x=y]
    entrypoint: [/bin/worker, --fast]
    healthcheck: { test: [pgrep, worker] }
    build: ./worker
"#;

    fn source(text: &str) -> AppSource {
        AppSource::parse(Path::new("app.yml"), text).expect("app parses")
    }

    fn vars(value: Value) -> Vars {
        serde_json::from_value(value).expect("mapping")
    }

    fn problems(text: &str, host_vars: Value) -> Vec<String> {
        match source(text).render(&vars(host_vars)) {
            Err(Error::InvalidApp { problems, .. }) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(other) => vec![other.to_string()],
            Ok(_) => Vec::new(),
        }
    }

    #[test]
    fn renders_and_types_a_full_app() {
        let app = source(APP)
            .render(&vars(json!({"workers": 2, "tag": "v2"})))
            .unwrap();
        let web = &app.services["web"];
        assert_eq!(web.image, "registry:5000/web:v2");
        assert_eq!(
            web.command.as_deref().unwrap(),
            ["python3", "-m", "http.server", "8000"]
        );
        assert_eq!(web.env["WORKERS"], "4");
        assert_eq!(web.env["DEBUG"], "false");
        assert_eq!(web.memory, Some(256 * 1024 * 1024));
        assert_eq!(
            web.restart,
            RestartPolicy {
                name: "unless-stopped".into(),
                max_retries: None
            }
        );
        assert_eq!(
            web.healthcheck.as_ref().unwrap().test,
            ["CMD-SHELL", "wget -q -O- localhost:8000"]
        );
        assert_eq!(
            web.healthcheck.as_ref().unwrap().interval,
            Some(10_000_000_000)
        );
        let ports: Vec<String> = web.ports.iter().map(ToString::to_string).collect();
        assert_eq!(
            ports,
            [
                "0.0.0.0:80->8000/tcp",
                "9000/tcp",
                "127.0.0.1:->9001/udp",
                "[::1]:9443->443/tcp",
                "5353->53/udp"
            ]
        );
        assert_eq!(
            web.networks["front"].ipv4_address,
            Some(Ipv4Addr::new(10, 1, 4, 2))
        );
        assert_eq!(web.networks["back"], ServiceNetwork::default());
        let worker = &app.services["worker"];
        assert_eq!(worker.replicas, 2);
        assert_eq!(worker.env["B"], "x=y");
        assert_eq!(
            worker.healthcheck.as_ref().unwrap().test,
            ["CMD", "pgrep", "worker"]
        );
        assert_eq!(worker.build.as_ref().unwrap().context, "./worker");
        assert_eq!(worker.hosts, "all");
        assert_eq!(app.network_docker_name("front"), "shop_front");
    }

    #[test]
    fn inventory_vars_override_app_defaults() {
        let src = source(APP);
        let app = src
            .render(&vars(json!({"workers": 1, "web_port": 8080})))
            .unwrap();
        assert_eq!(app.services["web"].ports[0].published, Some(8080));
        assert_eq!(app.services["web"].image, "registry:5000/web:v1");
    }

    #[test]
    fn undefined_variable_names_file_and_key() {
        let err = source(APP).render(&Vars::new()).unwrap_err().to_string();
        assert_eq!(
            err,
            "app.yml: services.worker.replicas: undefined variable `workers`"
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let found = problems(
            "name: a\nservices:\n  web: { image: x, enviroment: { A: 1 } }\n",
            json!({}),
        );
        assert_eq!(found.len(), 1);
        assert!(
            found[0].starts_with("services.web.enviroment: unknown field `enviroment`"),
            "{found:?}"
        );
        let err = AppSource::parse(Path::new("app.yml"), "name: a\nservice: {}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `service`"), "{err}");
    }

    #[test]
    fn an_env_item_without_equals_is_not_quoted() {
        // A forgotten `=` leaves the whole item, value included, in one string.
        let found = problems(
            "name: a\nservices:\n  web: { image: x, env: [\"MODE=prod\", \"TOKEN {{ token }}\"] }\n",
            json!({ "token": "s3cr3t-value" }),
        );
        assert_eq!(
            found,
            ["services.web.env: env item 1 has no `=`; it must be NAME=value (the item is not shown: env values may be secrets)"]
        );
    }

    #[test]
    fn type_errors_name_the_field() {
        let found = problems("name: a\nservices:\n  web: { image: x, replicas: many }\n  db: { image: y, memory: lots }\n", json!({}));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("services.db.memory: invalid size"),
            "{found:?}"
        );
        assert!(found[1].starts_with("services.web.replicas:"), "{found:?}");
    }

    #[test]
    fn name_is_required_and_fixed() {
        // (Without `variables`, a file with services and no name is a compose file.)
        assert!(
            AppSource::parse(Path::new("a.yml"), "variables: {}\nservices: {}\n")
                .unwrap_err()
                .to_string()
                .contains("name: missing")
        );
        assert!(AppSource::parse(Path::new("a.yml"), "name: '{{ x }}'\n")
            .unwrap_err()
            .to_string()
            .contains("cannot be templated"));
        assert!(AppSource::parse(Path::new("a.yml"), "name: 'my app'\n")
            .unwrap_err()
            .to_string()
            .contains("not a valid Docker name"));
    }

    #[test]
    fn network_consistency() {
        let found = problems(
            r#"
name: a
networks:
  hostbits: { subnet: 10.0.0.5/24 }
  outside: { subnet: 10.1.0.0/24, gateway: 10.9.0.1 }
  broadcast: { subnet: 10.2.0.0/24, gateway: 10.2.0.255 }
  range: { subnet: 10.3.0.0/24, ip_range: 10.3.1.0/25 }
  lonely: { gateway: 10.4.0.1 }
  overlap: { subnet: 10.1.0.128/25 }
"#,
            json!({}),
        );
        let expected = [
            "networks.broadcast.gateway: 10.2.0.255 is the network or broadcast address of 10.2.0.0/24",
            "networks.hostbits.subnet: 10.0.0.5/24 has host bits set; did you mean 10.0.0.0/24?",
            "networks.lonely.gateway: a gateway needs a subnet",
            "networks.outside.gateway: 10.9.0.1 is outside subnet 10.1.0.0/24",
            "networks.overlap.subnet: 10.1.0.128/25 overlaps 10.1.0.0/24 of network `outside`",
            "networks.range.ip_range: 10.3.1.0/25 is not inside subnet 10.3.0.0/24",
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn service_network_references_and_addresses() {
        let found = problems(
            r#"
name: a
networks:
  n: { subnet: 10.0.0.0/24, gateway: 10.0.0.1 }
  auto: {}
services:
  a: { image: x, networks: { nope: {} } }
  b: { image: x, networks: { n: { ipv4_address: 10.0.1.2 } } }
  c: { image: x, networks: { n: { ipv4_address: 10.0.0.1 } } }
  d: { image: x, networks: { auto: { ipv4_address: 10.0.0.9 } } }
  e: { image: x, replicas: 2, networks: { n: { ipv4_address: 10.0.0.9 } } }
"#,
            json!({}),
        );
        let expected = [
            "services.a.networks.nope: unknown network `nope` (defined: auto, n)",
            "services.b.networks.n: 10.0.1.2 is outside subnet 10.0.0.0/24",
            "services.c.networks.n: 10.0.0.1 is the network's gateway",
            "services.d.networks.auto: a fixed address (10.0.0.9) needs the network to have a subnet (Docker only assigns user addresses on user subnets)",
            "services.e.networks.n: 2 replicas cannot share the fixed address 10.0.0.9",
        ];
        assert_eq!(found, expected);
    }

    #[test]
    fn port_syntax_errors() {
        for (port, expected) in [
            ("'8000-8010:8000-8010'", "port ranges"),
            ("'1.2.3:80:80'", "invalid host IP"),
            ("'80:80/icmp'", "unknown protocol"),
            ("'99999'", "invalid port"),
            ("'a:b:c:d'", "expected [HOST_IP:]"),
            ("{ published: 80 }", "missing `target`"),
            ("{ target: 80, mode: mesh }", "unknown port mode"),
            ("{ target: 80, node: 1 }", "unknown key `node`"),
        ] {
            let found = problems(
                &format!("name: a\nservices:\n  web: {{ image: x, ports: [{port}] }}\n"),
                json!({}),
            );
            assert_eq!(found.len(), 1, "{port}: {found:?}");
            assert!(found[0].contains(expected), "{port}: {found:?}");
        }
    }

    #[test]
    fn restart_policies() {
        let restart = |text: &str| {
            source(&format!(
                "name: a\nservices:\n  w: {{ image: x, restart: {text} }}\n"
            ))
            .render(&Vars::new())
            .map(|app| app.services["w"].restart.clone())
        };
        assert_eq!(restart("no").unwrap().name, "no");
        assert_eq!(
            restart("'on-failure:5'").unwrap(),
            RestartPolicy {
                name: "on-failure".into(),
                max_retries: Some(5)
            }
        );
        assert!(restart("sometimes")
            .unwrap_err()
            .to_string()
            .contains("unknown restart policy"));
    }

    #[test]
    fn stop_signal_and_grace_period() {
        let stop = |fields: &str| {
            source(&format!(
                "name: a\nservices:\n  w: {{ image: x, {fields} }}\n"
            ))
            .render(&Vars::new())
            .map(|app| {
                let w = &app.services["w"];
                (w.stop_signal.clone(), w.stop_grace_period)
            })
        };
        assert_eq!(
            stop("stop_signal: SIGQUIT, stop_grace_period: 1500ms").unwrap(),
            (Some("SIGQUIT".into()), Some(1_500_000_000))
        );
        assert_eq!(stop("stop_signal: 9").unwrap().0.as_deref(), Some("9"));
        assert_eq!(stop("replicas: 1").unwrap(), (None, None));
        assert!(stop("stop_signal: 'TERM; rm'")
            .unwrap_err()
            .to_string()
            .contains("expected a signal"));
        assert!(stop("stop_grace_period: soon").is_err());
    }

    #[test]
    fn empty_service_body_reports_missing_image() {
        let found = problems("name: a\nservices:\n  web:\n", json!({}));
        assert_eq!(found, ["services.web: missing field `image`"]);
    }
}
