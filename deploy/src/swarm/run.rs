//! `berth deploy --swarm` and `berth rollback --swarm` against a manager's Engine API.
//!
//! Rules:
//! - Images are resolved to registry digests once and services run `repo:tag@sha256:…`, so
//!   every node runs the same image (nodes pull it themselves, with the stored login).
//! - Updates: one task at a time, start-first (stop-first when a task holds a fixed
//!   host-mode port), failure action rollback, so Swarm itself undoes a rollout whose tasks
//!   fail or never become healthy.
//! - Converged = no update in progress and exactly `replicas` tasks running with the new
//!   config (task containers carry its hash, replicas left out so that scaling alone
//!   restarts nothing); Swarm counts a task with a healthcheck as
//!   running only once it is healthy. Not converged within `--health-timeout`: an update is
//!   rolled back (by Swarm, or by us when Swarm has not started to), a new service removed,
//!   and the action fails.
//! - The first failed action stops the run; the rest are reported as skipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use berth_client::registry::{Client, ClientConfig};
use bollard::auth::DockerCredentials;
use bollard::models::{
    Ipam, LocalNodeState, NetworkCreateRequest, ServiceUpdateStatusStateEnum, TaskState,
};
use bollard::query_parameters::{
    ListNetworksOptions, ListServicesOptions, ListTasksOptions, UpdateServiceOptions,
};

use crate::apply::{ActionResult, Outcome};
use crate::engine::{api_error, Engine, EngineError, PullAuth};
use crate::labels;
use crate::run::{pull_credentials, resolve_digests, HostReport, Mode, RunReport};

pub use super::service_spec::service_spec;
use super::{
    plan_swarm, spec_differences, ActualService, ActualSwarmNetwork, SwarmAction, SwarmActual,
    SwarmDesired, SwarmNetwork, SwarmPlan, SwarmService, SwarmSpec, PREVIOUS_CONFIG,
};

#[derive(Debug, Clone)]
pub struct SwarmOptions {
    pub check: bool,
    pub connect_timeout: Duration,
    /// Longest wait for a service to converge (tasks running and healthy).
    pub health_timeout: Duration,
    /// How long Swarm watches an updated task for failure before the next one.
    pub monitor: Duration,
    pub pin: bool,
    pub registry: ClientConfig,
    pub known_digests: BTreeMap<String, String>,
}

impl Default for SwarmOptions {
    fn default() -> Self {
        SwarmOptions {
            check: false,
            connect_timeout: Duration::from_secs(10),
            health_timeout: Duration::from_secs(120),
            monitor: Duration::from_secs(5),
            pin: true,
            registry: ClientConfig::default(),
            known_digests: BTreeMap::new(),
        }
    }
}

/// A run's report (one "host": the manager) and the plan it carried out.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    pub run: RunReport,
    pub plan: Option<SwarmPlan>,
}

const POLL: Duration = Duration::from_millis(500);

/// Rejected tasks of a new config after which waiting stops (see `converged`).
const REJECTIONS_BEFORE_GIVING_UP: usize = 3;

#[derive(Default)]
struct TaskCounts {
    running: usize,
    rejected: usize,
    error: String,
}

fn report_for(desired: &SwarmDesired) -> HostReport {
    HostReport::empty(&desired.manager, &desired.endpoint)
}

fn finish(app: &str, mode: Mode, images: BTreeMap<String, String>, host: HostReport) -> RunReport {
    RunReport {
        app: app.to_string(),
        mode,
        images,
        hosts: vec![host],
    }
}

/// Why a Swarm run could not start on its manager.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{endpoint} is not part of an active swarm (run `docker swarm init` there, or point the inventory at a manager)")]
    NotInSwarm { endpoint: String },
    #[error("{endpoint} is a swarm worker, not a manager: services can only be deployed through a manager")]
    Worker { endpoint: String },
}

impl ManagerError {
    /// The manager was never reached (as opposed to: it answered but cannot take services).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ManagerError::Engine(error) if error.is_unreachable())
    }
}

/// Connects and checks that the endpoint is an active Swarm manager.
async fn connect_manager(
    desired: &SwarmDesired,
    timeout: Duration,
) -> Result<Engine, ManagerError> {
    let engine = Engine::connect(&desired.endpoint, timeout).await?;
    let info = engine
        .docker()
        .info()
        .await
        .map_err(|e| api_error("reading the daemon's info", e))?;
    let swarm = info.swarm.unwrap_or_default();
    if swarm.local_node_state != Some(LocalNodeState::ACTIVE) {
        return Err(ManagerError::NotInSwarm {
            endpoint: engine.endpoint().to_string(),
        });
    }
    if swarm.control_available != Some(true) {
        return Err(ManagerError::Worker {
            endpoint: engine.endpoint().to_string(),
        });
    }
    Ok(engine)
}

/// Services and networks on the swarm, as planning needs them.
async fn read(engine: &Engine) -> Result<SwarmActual, String> {
    let docker = engine.docker();
    let services = docker
        .list_services(None::<ListServicesOptions>)
        .await
        .map_err(|e| api_error("listing services", e))?;
    let networks = docker
        .list_networks(None::<ListNetworksOptions>)
        .await
        .map_err(|e| api_error("listing networks", e))?;
    let mut actual = SwarmActual::default();
    for service in services {
        let spec = service.spec.unwrap_or_default();
        let (Some(id), Some(name)) = (service.id, spec.name) else {
            continue;
        };
        actual.services.push(ActualService {
            id,
            name,
            labels: spec.labels.unwrap_or_default().into_iter().collect(),
        });
    }
    for network in networks {
        let Some(name) = network.name else { continue };
        let (subnet, gateway, ip_range) = crate::engine::ipv4_addressing(network.ipam.as_ref());
        actual.networks.push(ActualSwarmNetwork {
            id: network.id.unwrap_or_default(),
            name,
            driver: network.driver.unwrap_or_default(),
            subnet,
            gateway,
            ip_range,
            internal: network.internal.unwrap_or(false),
            attachable: network.attachable.unwrap_or(false),
            labels: network.labels.unwrap_or_default().into_iter().collect(),
        });
    }
    actual.services.sort_by(|a, b| a.name.cmp(&b.name));
    actual.networks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(actual)
}

/// `berth deploy --swarm` (or `--check`).
pub async fn deploy(
    mut desired: SwarmDesired,
    options: &SwarmOptions,
    on_plan: &(dyn Fn(&SwarmPlan) + Send + Sync),
    on_result: &(dyn Fn(&ActionResult) + Send + Sync),
) -> SwarmReport {
    let mode = if options.check {
        Mode::Check
    } else {
        Mode::Deploy
    };
    let app = desired.app.clone();
    let report = report_for(&desired);
    let written: BTreeSet<String> = desired
        .services
        .iter()
        .map(|s| s.spec.image.clone())
        .collect();
    let mut pins: BTreeMap<String, String> = options
        .known_digests
        .iter()
        .filter(|(image, _)| written.contains(*image))
        .map(|(image, digest)| (image.clone(), digest.clone()))
        .collect();
    if options.pin {
        let client = Client::new(options.registry.clone());
        let unknown: BTreeSet<String> = written
            .iter()
            .filter(|image| !pins.contains_key(*image))
            .cloned()
            .collect();
        let mut errors = Vec::new();
        for (image, result) in resolve_digests(&client, &unknown).await {
            match result {
                Ok(digest) => {
                    pins.insert(image, digest);
                }
                Err(error) => errors.push(error),
            }
        }
        if !errors.is_empty() {
            let host = report.fail(errors.join("; "), false);
            return SwarmReport {
                run: finish(&app, mode, pins, host),
                plan: None,
            };
        }
    }
    desired.pin_images(&pins);

    let engine = match connect_manager(&desired, options.connect_timeout).await {
        Ok(engine) => engine,
        Err(error) => {
            let unreachable = error.is_unreachable();
            return SwarmReport {
                run: finish(
                    &app,
                    mode,
                    pins,
                    report.fail(error.to_string(), unreachable),
                ),
                plan: None,
            };
        }
    };
    let actual = match read(&engine).await {
        Ok(actual) => actual,
        Err(error) => {
            let host = report.fail(format!("reading the swarm's state: {error}"), false);
            return SwarmReport {
                run: finish(&app, mode, pins, host),
                plan: None,
            };
        }
    };
    let plan = plan_swarm(&desired, &actual);
    on_plan(&redacted(&plan));
    let mut report = report;
    report.ok = plan.unchanged.len();
    if let Some(error) = &plan.error {
        let host = report.fail(error.clone(), false);
        return SwarmReport {
            run: finish(&app, mode, pins, host),
            plan: Some(redacted(&plan)),
        };
    }
    if options.check {
        report.changed = plan.actions.len();
    } else {
        let images: BTreeSet<String> = desired
            .services
            .iter()
            .map(|s| s.spec.image_reference())
            .collect();
        apply_actions(
            &engine,
            &app,
            options,
            &images,
            &plan,
            &mut report,
            on_result,
        )
        .await;
        report.taken_off = crate::record::swarm_taken_off(&plan.actions, &report.results);
    }
    SwarmReport {
        run: finish(&app, mode, pins, report),
        plan: Some(redacted(&plan)),
    }
}

/// `berth rollback --swarm`: every service of the app that Berth updated before goes back
/// to the config it had before that update (kept in `berth.previous-config`).
pub async fn rollback(
    desired: SwarmDesired,
    options: &SwarmOptions,
    on_plan: &(dyn Fn(&SwarmPlan) + Send + Sync),
    on_result: &(dyn Fn(&ActionResult) + Send + Sync),
) -> SwarmReport {
    let app = desired.app.clone();
    let report = report_for(&desired);
    let engine = match connect_manager(&desired, options.connect_timeout).await {
        Ok(engine) => engine,
        Err(error) => {
            let unreachable = error.is_unreachable();
            return SwarmReport {
                run: finish(
                    &app,
                    Mode::Rollback,
                    BTreeMap::new(),
                    report.fail(error.to_string(), unreachable),
                ),
                plan: None,
            };
        }
    };
    let actual = match read(&engine).await {
        Ok(actual) => actual,
        Err(error) => {
            let host = report.fail(format!("reading the swarm's state: {error}"), false);
            return SwarmReport {
                run: finish(&app, Mode::Rollback, BTreeMap::new(), host),
                plan: None,
            };
        }
    };
    let mut plan = SwarmPlan {
        manager: desired.manager.clone(),
        endpoint: desired.endpoint.to_string(),
        actions: Vec::new(),
        unchanged: Vec::new(),
        warnings: Vec::new(),
        error: None,
    };
    for found in actual
        .services
        .iter()
        .filter(|s| s.app() == Some(app.as_str()))
    {
        let key = found
            .labels
            .get(labels::SERVICE)
            .cloned()
            .unwrap_or_default();
        match found
            .labels
            .get(PREVIOUS_CONFIG)
            .map(|text| serde_json::from_str::<SwarmSpec>(text))
        {
            Some(Ok(spec)) => {
                let service = SwarmService::from_spec(found.name.clone(), key, spec);
                let current = found.labels.get(labels::CONFIG);
                let mut reasons = vec!["rollback to the config before the last update".into()];
                reasons.extend(spec_differences(current, &service.spec));
                plan.actions.push(SwarmAction::UpdateService {
                    stop_first: service.spec.needs_stop_first(),
                    previous_config: current.cloned(),
                    id: found.id.clone(),
                    service,
                    reasons,
                });
            }
            Some(Err(error)) => plan.warnings.push(format!(
                "{}: unreadable {PREVIOUS_CONFIG} label ({error}); left as it is",
                found.name
            )),
            None => plan.warnings.push(format!(
                "{}: no previous release kept, nothing to roll back",
                found.name
            )),
        }
    }
    on_plan(&redacted(&plan));
    let mut report = report;
    let images: BTreeSet<String> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            SwarmAction::UpdateService { service, .. } => Some(service.spec.image_reference()),
            _ => None,
        })
        .collect();
    apply_actions(
        &engine,
        &app,
        options,
        &images,
        &plan,
        &mut report,
        on_result,
    )
    .await;
    SwarmReport {
        run: finish(&app, Mode::Rollback, BTreeMap::new(), report),
        plan: Some(redacted(&plan)),
    }
}

/// Env values replaced by `***` in what is printed or serialised (they are often secrets).
fn redacted(plan: &SwarmPlan) -> SwarmPlan {
    let mut plan = plan.clone();
    for action in &mut plan.actions {
        if let SwarmAction::CreateService { service, .. }
        | SwarmAction::UpdateService { service, .. } = action
        {
            for value in service.spec.env.values_mut() {
                *value = "***".to_string();
            }
        }
        if let SwarmAction::UpdateService {
            previous_config, ..
        } = action
        {
            *previous_config = None;
        }
    }
    plan
}

/// Applies a plan's actions on the manager (pulling with the registry logins for `images`)
/// and counts their results into the report. Shared by deploy and rollback.
async fn apply_actions(
    engine: &Engine,
    app: &str,
    options: &SwarmOptions,
    images: &BTreeSet<String>,
    plan: &SwarmPlan,
    report: &mut HostReport,
    on_result: &(dyn Fn(&ActionResult) + Send + Sync),
) {
    let auth = pull_credentials(&options.registry, images);
    let applier = Applier {
        engine,
        app,
        options,
        auth: &auth,
    };
    report.results = applier.run_all(&plan.actions, on_result).await;
    // Secrets no service uses any more (rotated away, or of removed services) go last, once
    // every update converged.
    if report.results.iter().all(|r| r.outcome == Outcome::Changed) {
        match super::secrets::remove_unused(engine, app).await {
            Ok(removed) if removed.is_empty() => {}
            Ok(removed) => {
                let result = ActionResult {
                    action: format!("remove unused Swarm secrets {}", removed.join(", ")),
                    outcome: Outcome::Changed,
                    message: None,
                };
                on_result(&result);
                report.results.push(result);
            }
            Err(message) => {
                let result = ActionResult {
                    action: "remove unused Swarm secrets".to_string(),
                    outcome: Outcome::Failed,
                    message: Some(message),
                };
                on_result(&result);
                report.results.push(result);
            }
        }
    }
    report.count_results();
}

struct Applier<'a> {
    engine: &'a Engine,
    app: &'a str,
    options: &'a SwarmOptions,
    auth: &'a BTreeMap<String, PullAuth>,
}

impl Applier<'_> {
    async fn run_all(
        &self,
        actions: &[SwarmAction],
        on_result: &(dyn Fn(&ActionResult) + Send + Sync),
    ) -> Vec<ActionResult> {
        let mut results = Vec::new();
        let mut failed = false;
        for action in actions {
            let text = action.text();
            let result = if failed {
                ActionResult {
                    action: text,
                    outcome: Outcome::Skipped,
                    message: Some("an earlier action failed".to_string()),
                }
            } else {
                match self.run(action).await {
                    Ok(()) => ActionResult {
                        action: text,
                        outcome: Outcome::Changed,
                        message: None,
                    },
                    Err(message) => {
                        failed = true;
                        ActionResult {
                            action: text,
                            outcome: Outcome::Failed,
                            message: Some(message),
                        }
                    }
                }
            };
            on_result(&result);
            results.push(result);
        }
        results
    }

    fn credentials(&self, service: &SwarmService) -> Option<DockerCredentials> {
        self.auth
            .get(&service.spec.image_reference())
            .map(|auth| DockerCredentials {
                username: auth.username.clone(),
                password: auth.password.clone(),
                identitytoken: auth.identity_token.clone(),
                serveraddress: Some(auth.server.clone()),
                ..Default::default()
            })
    }

    async fn run(&self, action: &SwarmAction) -> Result<(), String> {
        let docker = self.engine.docker();
        match action {
            SwarmAction::CreateNetwork { network, .. } => self.create_network(network).await,
            SwarmAction::CreateService { service, .. } => {
                let mut spec = service_spec(self.app, service, None, self.options.monitor);
                super::secrets::attach_secrets(self.engine, self.app, service, &mut spec).await?;
                let created = docker
                    .create_service(spec, self.credentials(service))
                    .await
                    .map_err(|e| api_error(&format!("creating service {}", service.name), e))?;
                let id = created.id.unwrap_or_else(|| service.name.clone());
                if let Err(why) = self.converged(&id, service, false).await {
                    // A service that never came up is removed: nothing half-made stays.
                    let removed = match docker.delete_service(&id).await {
                        Ok(()) => "removed it".to_string(),
                        Err(e) => api_error("removing it", e).to_string(),
                    };
                    return Err(format!("{why}; {removed}"));
                }
                Ok(())
            }
            SwarmAction::UpdateService {
                service,
                id,
                previous_config,
                ..
            } => {
                self.update(id, service, previous_config.as_deref()).await?;
                match self.converged(id, service, true).await {
                    Ok(()) => Ok(()),
                    Err(why) => Err(format!("{why}; {}", self.make_sure_rolled_back(id).await)),
                }
            }
            SwarmAction::RemoveService { name, id, .. } => docker
                .delete_service(id)
                .await
                .map_err(|e| api_error(&format!("removing service {name}"), e).to_string()),
            SwarmAction::RemoveNetwork { name, .. } => {
                self.engine.remove_network(name).await.map_err(String::from)
            }
        }
    }

    async fn create_network(&self, network: &SwarmNetwork) -> Result<(), String> {
        let ipam_config =
            crate::engine::ipam_config(network.subnet, network.gateway, network.ip_range);
        let request = NetworkCreateRequest {
            name: network.name.clone(),
            driver: Some("overlay".to_string()),
            scope: Some("swarm".to_string()),
            // Attachable: `docker run --network` and Berth's container mode can join it too.
            attachable: Some(true),
            internal: Some(network.internal),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(ipam_config.into_iter().collect()),
                options: None,
            }),
            options: Some(network.options.clone().into_iter().collect()),
            labels: Some(network.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.engine
            .docker()
            .create_network(request)
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("creating network {}", network.name), e).into())
    }

    /// Sends `service` as the new spec of `id` (at its current version).
    async fn update(
        &self,
        id: &str,
        service: &SwarmService,
        previous_config: Option<&str>,
    ) -> Result<(), String> {
        let docker = self.engine.docker();
        let current = docker
            .inspect_service(id, None)
            .await
            .map_err(|e| api_error(&format!("inspecting service {}", service.name), e))?;
        let mut spec = service_spec(self.app, service, previous_config, self.options.monitor);
        super::secrets::attach_secrets(self.engine, self.app, service, &mut spec).await?;
        docker
            .update_service(
                id,
                spec,
                UpdateServiceOptions {
                    version: version_of(&current),
                    ..Default::default()
                },
                self.credentials(service),
            )
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("updating service {}", service.name), e).into())
    }

    /// Asks Swarm to go back to the service's PreviousSpec (kept right after an update).
    async fn request_rollback(&self, id: &str) -> Result<(), String> {
        let docker = self.engine.docker();
        let current = docker
            .inspect_service(id, None)
            .await
            .map_err(|e| api_error("inspecting the service", e))?;
        let version = version_of(&current);
        docker
            .update_service(
                id,
                current.spec.unwrap_or_default(),
                UpdateServiceOptions {
                    version,
                    rollback: Some("previous".to_string()),
                    ..Default::default()
                },
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| api_error("requesting a rollback", e).into())
    }

    /// Waits until `service` runs `replicas` tasks of its config and no update is in
    /// progress; `Err` says why not (a rollback Swarm started, the last task error, or the
    /// timeout).
    async fn converged(
        &self,
        id: &str,
        service: &SwarmService,
        update: bool,
    ) -> Result<(), String> {
        let docker = self.engine.docker();
        let deadline = Instant::now() + self.options.health_timeout;
        let mut last_error = String::new();
        loop {
            let current = docker
                .inspect_service(id, None)
                .await
                .map_err(|e| api_error(&format!("inspecting service {}", service.name), e))?;
            let status = current.update_status.unwrap_or_default();
            let message = status.message.unwrap_or_default();
            match status.state {
                Some(
                    ServiceUpdateStatusStateEnum::ROLLBACK_STARTED
                    | ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED
                    | ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED,
                ) if update => {
                    let tasks = self.task_errors(id).await;
                    return Err(format!(
                        "service {}: its new tasks failed or never became healthy (Swarm: {message}{}; see docker service ps --no-trunc {})",
                        service.name,
                        if tasks.is_empty() {
                            String::new()
                        } else {
                            format!("; last task error: {tasks}")
                        },
                        service.name
                    ));
                }
                Some(ServiceUpdateStatusStateEnum::PAUSED) => {
                    return Err(format!("update of {} paused: {message}", service.name));
                }
                Some(ServiceUpdateStatusStateEnum::UPDATING) => {}
                _ => {
                    let counts = self.tasks(id, &service.task_hash()).await?;
                    if counts.running == service.spec.replicas as usize {
                        return Ok(());
                    }
                    // Swarm retries a rejected task forever; a few rejections in a row
                    // (an image no node can pull) will not heal by waiting.
                    if counts.rejected >= REJECTIONS_BEFORE_GIVING_UP {
                        return Err(format!(
                            "service {}: tasks rejected {} times: {}",
                            service.name, counts.rejected, counts.error
                        ));
                    }
                    if !counts.error.is_empty() {
                        last_error = counts.error;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "service {} not converged within {}s{}",
                    service.name,
                    self.options.health_timeout.as_secs(),
                    if last_error.is_empty() {
                        String::new()
                    } else {
                        format!(" (last task error: {last_error})")
                    }
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Tasks of this config: how many run (desired state running), how many the node
    /// rejected (the image cannot be pulled, say), and the latest task error of any config.
    async fn tasks(&self, id: &str, hash: &str) -> Result<TaskCounts, String> {
        let filters = HashMap::from([("service".to_string(), vec![id.to_string()])]);
        let tasks = self
            .engine
            .docker()
            .list_tasks(Some(ListTasksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| api_error("listing tasks", e))?;
        let mut counts = TaskCounts::default();
        let mut latest: Option<(String, String)> = None;
        for task in tasks {
            let ours = task
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(labels::CONFIG_HASH))
                .is_some_and(|h| h == hash);
            let status = task.status.unwrap_or_default();
            if ours
                && task.desired_state == Some(TaskState::RUNNING)
                && status.state == Some(TaskState::RUNNING)
            {
                counts.running += 1;
            }
            if ours && status.state == Some(TaskState::REJECTED) {
                counts.rejected += 1;
            }
            if let Some(err) = status.err.filter(|e| !e.is_empty()) {
                let when = status.timestamp.map(|t| t.to_string()).unwrap_or_default();
                if latest.as_ref().is_none_or(|(seen, _)| *seen < when) {
                    latest = Some((when, err));
                }
            }
        }
        counts.error = latest.map(|(_, e)| e).unwrap_or_default();
        Ok(counts)
    }

    async fn task_errors(&self, id: &str) -> String {
        self.tasks(id, "")
            .await
            .map(|counts| counts.error)
            .unwrap_or_default()
    }

    /// After a failed update: wait for Swarm's own rollback, or start one; say which.
    async fn make_sure_rolled_back(&self, id: &str) -> String {
        let docker = self.engine.docker();
        let deadline = Instant::now() + self.options.health_timeout;
        let mut requested = false;
        loop {
            let state = match docker.inspect_service(id, None).await {
                Ok(service) => service.update_status.and_then(|s| s.state),
                Err(e) => return api_error("checking the rollback", e).to_string(),
            };
            match state {
                Some(ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED) => {
                    return "Swarm rolled back to the previous spec".to_string()
                }
                Some(ServiceUpdateStatusStateEnum::ROLLBACK_PAUSED) => {
                    return "Swarm's rollback paused: check docker service ps".to_string()
                }
                Some(ServiceUpdateStatusStateEnum::ROLLBACK_STARTED) => {}
                _ if !requested => {
                    requested = true;
                    if let Err(error) = self.request_rollback(id).await {
                        return format!("rolling back failed too: {error}");
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return "rollback still in progress at the timeout: check docker service ps"
                    .to_string();
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

fn version_of(service: &bollard::models::Service) -> i32 {
    let index = service
        .version
        .as_ref()
        .and_then(|v| v.index)
        .unwrap_or_default();
    i32::try_from(index).unwrap_or(i32::MAX)
}
