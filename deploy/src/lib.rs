//! Berth's deployer: everything `berth deploy` decides, and the code that carries it out.
//!
//! The flow is pure data, so every decision can be printed (`--check`) and tested without hosts:
//!
//! ```text
//! inventory (hosts, group_vars, host_vars) ─┐
//!                                           ├─> desired state per host ─┐
//! app file (services, networks, variables) ─┘                           ├─> plan (actions + reasons)
//!                        actual state per host (read from Docker later) ─┘
//! ```
//!
//! Those steps (`inventory`, `app`, `compose`, `desired`, `plan`, `limit`, `template`) are
//! pure: they read files but open no socket and run no process. The modules that act on hosts
//! build on their types and do both: `engine` talks to the Docker Engine API (unix socket,
//! TCP/TLS, or `ssh`, which runs the system `ssh` client); `run` and `swarm::run` also ask
//! registries for image digests; `apply`, `ready`, `down` and `swarm` act through `engine`.

pub mod actual;
pub mod app;
pub mod apply;
pub mod compose;
pub mod desired;
pub mod down;
pub mod engine;
pub mod error;
pub mod export;
pub mod inventory;
pub mod limit;
pub mod plan;
pub mod ready;
pub mod record;
pub mod run;
pub mod ship;
pub mod ssh;
pub mod stages;
pub mod storage;
pub mod swarm;
pub mod template;
pub mod timings;
mod units;
mod yaml;

pub use actual::{
    ActualContainer, ActualHost, ActualImage, ActualNetwork, AttachedContainer, ContainerState,
    Health,
};
pub use app::{App, AppSource, Naming, Network, NetworkDriver, Service};

pub use desired::{
    container_name, desired_host, desired_state, ContainerSpec, DesiredContainer, DesiredHost,
    DesiredNetwork,
};
pub use error::{Error, Problem};
pub use inventory::{DockerEndpoint, Host, Inventory, TlsFiles};
pub use plan::{plan, plan_host, Action, HostPlan, Plan, ReplaceStrategy, Unchanged};

pub use template::Vars;

/// Label keys Berth writes on everything it creates; the planner reads them back.
pub mod labels {
    /// The app that owns a container or network. Anything without it (or with another app's
    /// name) is "foreign" and never removed or recreated by this app's deploy.
    pub const APP: &str = "berth.app";
    /// The service key in the app file a container was created from.
    pub const SERVICE: &str = "berth.service";
    /// The replica number (1-based) of a container within its service on one host.
    pub const REPLICA: &str = "berth.replica";
    /// SHA-256 of the container's canonical config: equal hash means nothing to do.
    pub const CONFIG_HASH: &str = "berth.config-hash";
    /// The canonical config itself (JSON), so a changed container can be explained field by
    /// field without comparing against `docker inspect` output, which Docker normalises
    /// (image env merged in, defaults filled) and would report as spurious changes.
    pub const CONFIG: &str = "berth.config";
    /// Name suffix of a container kept as the previous release (stopped, restart policy
    /// `no`): `APP_SERVICE_N-prev`. `berth rollback` swaps it back in.
    pub const PREVIOUS_SUFFIX: &str = "-prev";
    /// Name suffix of a new container while it is started and checked next to the old one
    /// (start-first replacement); renamed to the real name once healthy.
    pub const NEXT_SUFFIX: &str = "-next";
    /// The run that created a container (a sortable time-based id, not part of its config):
    /// `berth rollback` removes the containers the latest deploy created.
    pub const DEPLOY: &str = "berth.deploy";
}
