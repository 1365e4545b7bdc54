//! Carrying out one host's plan through the Engine API, and `berth rollback`.
//!
//! Rules:
//! - Actions run in stages (`stages.rs`): pulls next to network and volume changes, then
//!   containers in `depends_on` waves (independent ones together), then removals. The
//!   first failed stage stops the host (later stages are reported as skipped), so removals,
//!   which come last, never happen after a failed rollout.
//! - A replaced container is never deleted: it is stopped, its restart policy set to `no`
//!   (a daemon restart must not start it next to the new one) and renamed `NAME-prev`.
//!   That is the release `berth rollback` returns to.
//! - Start-first: the new container starts as `NAME-next` next to the old one; only when
//!   it is ready is the old one stopped and the names swapped. Stop-first: the new one is
//!   created as `NAME-next` (not started), then the old one is stopped and set aside (its
//!   ports or fixed addresses are needed), then the new one takes the name and starts.
//! - Ready (see `ready.rs`) = the healthcheck passed, run early by Berth itself or by
//!   dockerd, when the service has one; else still running after a short settle time; both
//!   bounded by a timeout. A container that is not ready is removed and
//!   the old one put back (renamed, its restart policy and networks restored, started).
//! - A host is all or nothing: when an action fails, the containers this deploy already
//!   created or replaced on that host are undone too (created ones removed, replaced ones'
//!   previous releases put back), so the host runs what it ran before. The older kept
//!   release (`NAME-prev` before this deploy) waits as `NAME-prev-old` until the host's
//!   whole rollout succeeded, so the rollback targets survive a failed deploy as well.
//!   A failed removal (they come last, after the rollout succeeded) undoes nothing.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::actual::{ActualContainer, ActualHost};
use crate::app::RestartPolicy;
use crate::desired::{DesiredContainer, DesiredHost, HealthSpec};
use crate::engine::{later_networks, Engine, PullAuth};
use crate::labels::{NEXT_SUFFIX, PREVIOUS_SUFFIX};
use crate::plan::{stored_spec, Action, HostPlan, ReplaceStrategy};
use crate::ready::Readiness;
use crate::timings::{Phase, PhaseClock};

/// How long a container without a healthcheck must keep running to count as started.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Longest wait for a new container to become healthy (or to settle).
    pub health_timeout: Duration,
    /// How long a container without a healthcheck must keep running to count as started.
    pub settle: Duration,
    /// Registry credentials per image reference, for pulls.
    pub pull_auth: BTreeMap<String, PullAuth>,
    /// The `berth.deploy` label of the containers this run creates.
    pub deploy_id: String,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            health_timeout: Duration::from_secs(120),
            settle: DEFAULT_SETTLE,
            pull_auth: BTreeMap::new(),
            deploy_id: new_deploy_id(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Changed,
    Failed,
    Skipped,
}

/// What happened to one planned action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActionResult {
    /// The action in words (`replace container app_web_1`).
    pub action: String,
    pub outcome: Outcome,
    /// Why it failed, what was restored, or why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Carries out `plan` on one host, independent actions at the same time (see
/// `stages.rs`). Returns one result per action, in plan order.
pub async fn apply_host(
    engine: &Engine,
    desired: &DesiredHost,
    plan: &HostPlan,
    actual: &ActualHost,
    options: &ApplyOptions,
    on_result: &(dyn Fn(&ActionResult) + Send + Sync),
) -> Vec<ActionResult> {
    let clock = PhaseClock::default();
    apply_host_timed(engine, desired, plan, actual, options, on_result, &clock).await
}

/// [`apply_host`], recording where the time went in `clock` (`--timings`).
pub async fn apply_host_timed(
    engine: &Engine,
    desired: &DesiredHost,
    plan: &HostPlan,
    actual: &ActualHost,
    options: &ApplyOptions,
    on_result: &(dyn Fn(&ActionResult) + Send + Sync),
    clock: &PhaseClock,
) -> Vec<ActionResult> {
    let applier = Applier {
        clock,
        engine,
        app: &desired.app,
        desired,
        actual,
        options,
        detached: Mutex::new(BTreeMap::new()),
        done: Mutex::new(Vec::new()),
    };
    let mut results: Vec<Option<ActionResult>> = vec![None; plan.actions.len()];
    let skipped = |index: usize| ActionResult {
        action: crate::plan::action_text(&plan.actions[index]),
        outcome: Outcome::Skipped,
        message: Some("an earlier action on this host failed".to_string()),
    };
    let mut failed = false;
    for stage in crate::stages::stages(&plan.actions, desired) {
        if failed {
            for index in stage.into_iter().flatten() {
                let result = skipped(index);
                on_result(&result);
                results[index] = Some(result);
            }
            continue;
        }
        // Every lane runs to its end or its first failure; the stage's failures are
        // reported after all its lanes stopped, with what undoing the host did.
        let stage_started = Instant::now();
        let lanes = stage.into_iter().map(|lane| {
            let applier = &applier;
            async move {
                let mut ran = Vec::new();
                let mut lane_failed = false;
                for index in lane {
                    if lane_failed {
                        ran.push((index, Err(None)));
                        continue;
                    }
                    let action = &plan.actions[index];
                    match applier.run(action).await {
                        Ok(()) => {
                            let result = ActionResult {
                                action: crate::plan::action_text(action),
                                outcome: Outcome::Changed,
                                message: None,
                            };
                            on_result(&result);
                            ran.push((index, Ok(result)));
                        }
                        Err(message) => {
                            lane_failed = true;
                            ran.push((index, Err(Some(message))));
                        }
                    }
                }
                ran
            }
        });
        let mut failures = Vec::new();
        for (index, outcome) in futures::future::join_all(lanes).await.into_iter().flatten() {
            match outcome {
                Ok(result) => results[index] = Some(result),
                Err(Some(message)) => failures.push((index, message)),
                Err(None) => {
                    let result = skipped(index);
                    on_result(&result);
                    results[index] = Some(result);
                }
            }
        }
        if failures.is_empty() {
            clock.end_stage(stage_started.elapsed());
            continue;
        }
        failed = true;
        failures.sort_by_key(|(index, _)| *index);
        // Undone before the failures are reported, so their messages say how the host was
        // left.
        let undo = if failures
            .iter()
            .any(|(index, _)| undoes_rollout(&plan.actions[*index]))
        {
            clock.time(Phase::Remove, applier.undo()).await
        } else {
            None
        };
        clock.end_stage(stage_started.elapsed());
        for (index, mut message) in failures {
            if let Some(undo) = &undo {
                message.push_str("; ");
                message.push_str(undo);
            }
            let result = ActionResult {
                action: crate::plan::action_text(&plan.actions[index]),
                outcome: Outcome::Failed,
                message: Some(message),
            };
            on_result(&result);
            results[index] = Some(result);
        }
    }
    if !failed {
        let started = Instant::now();
        clock.time(Phase::Remove, applier.finish()).await;
        clock.end_stage(started.elapsed());
    }
    results.into_iter().flatten().collect()
}

/// Whether a failure of `action` undoes the host's rollout. Removals come after every
/// container is up: the rollout itself succeeded then.
fn undoes_rollout(action: &Action) -> bool {
    !matches!(
        action,
        Action::RemoveContainer { .. } | Action::RemoveNetwork { .. } | Action::RemoveVolume { .. }
    )
}

/// A container change this deploy completed on a host, for undoing it if a later action
/// fails.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    /// `name` did not exist before this deploy.
    Created(String),
    /// `name` was replaced; what ran before is `NAME-prev`, and an older kept release (if
    /// `kept_older`) waits as `NAME-prev-old`.
    Replaced { name: String, kept_older: bool },
}

/// One step of undoing (or, after success, finishing) completed changes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Remove(String),
    /// Put `NAME-prev` back as `NAME` and start it (see [`Applier::restore`]).
    Restore(String),
    Rename {
        from: String,
        to: String,
    },
}

/// The steps that return a host to where it was before `done`, latest change first.
fn undo_steps(done: &[Done]) -> Vec<Step> {
    let mut steps = Vec::new();
    for change in done.iter().rev() {
        match change {
            Done::Created(name) => steps.push(Step::Remove(name.clone())),
            Done::Replaced { name, kept_older } => {
                steps.push(Step::Remove(name.clone()));
                steps.push(Step::Restore(name.clone()));
                if *kept_older {
                    steps.push(Step::Rename {
                        from: older_name(name),
                        to: previous_name(name),
                    });
                }
            }
        }
    }
    steps
}

/// After the whole host succeeded: the older releases kept for an undo are not needed.
fn finish_steps(done: &[Done]) -> Vec<Step> {
    done.iter()
        .filter_map(|change| match change {
            Done::Replaced {
                name,
                kept_older: true,
            } => Some(Step::Remove(older_name(name))),
            _ => None,
        })
        .collect()
}

struct Applier<'a> {
    clock: &'a PhaseClock,
    engine: &'a Engine,
    app: &'a str,
    desired: &'a DesiredHost,
    actual: &'a ActualHost,
    options: &'a ApplyOptions,
    /// Containers taken off a network that was recreated: container → network names, so a
    /// restored old container can be attached again.
    detached: Mutex<BTreeMap<String, Vec<String>>>,
    /// Container changes completed so far on this host, in order of completion.
    done: Mutex<Vec<Done>>,
}

impl Applier<'_> {
    async fn run(&self, action: &Action) -> Result<(), String> {
        match action {
            Action::PullImage { image, .. } => {
                let pull = self
                    .engine
                    .pull(image, self.options.pull_auth.get(image).cloned());
                self.clock
                    .time(Phase::Pull, pull)
                    .await
                    .map_err(String::from)
            }
            Action::CreateNetwork { network, .. } => {
                let create = self.engine.create_network(network);
                self.clock
                    .time(Phase::Create, create)
                    .await
                    .map(|_| ())
                    .map_err(String::from)
            }
            Action::CreateVolume { volume, .. } => {
                let create = self.engine.create_volume(volume);
                self.clock
                    .time(Phase::Create, create)
                    .await
                    .map_err(String::from)
            }
            Action::RemoveVolume { name, .. } => {
                let remove = self.engine.remove_volume(name);
                self.clock
                    .time(Phase::Remove, remove)
                    .await
                    .map_err(String::from)
            }
            Action::RecreateNetwork { .. } => {
                self.clock.time(Phase::Create, self.recreate(action)).await
            }
            Action::CreateContainer { container, .. } => {
                let name = container.name.clone();
                let next = next_name(&name);
                self.clock
                    .time(Phase::Remove, self.engine.remove(&next))
                    .await?;
                if let Err(error) = self.launch(container, &name).await {
                    let cleanup = self.engine.remove(&name);
                    let cleanup = self.clock.time(Phase::Remove, cleanup).await.err();
                    let cleanup = cleanup.map(String::from);
                    return Err(with_cleanup(error, cleanup));
                }
                lock(&self.done).push(Done::Created(name));
                Ok(())
            }
            Action::ReplaceContainer {
                container,
                strategy,
                ..
            } => match strategy {
                ReplaceStrategy::StartFirst => self.replace_start_first(container).await,
                ReplaceStrategy::StopFirst => self.replace_stop_first(container).await,
            },
            Action::StartContainer { name, .. } => {
                // Its secret files may be gone (a host reboot empties /run): written again,
                // unchanged (the config hash matched, so did their digests).
                if let Some(container) = self.desired.containers.iter().find(|c| &c.name == name) {
                    let write = self.engine.write_secrets(self.app, container);
                    self.clock.time(Phase::Create, write).await?;
                }
                self.clock
                    .time(Phase::Start, self.engine.start(name))
                    .await?;
                let check = self
                    .actual
                    .container(name)
                    .and_then(|c| stored_spec(c).ok())
                    .and_then(|spec| spec.healthcheck);
                let settle = self
                    .desired
                    .containers
                    .iter()
                    .find(|c| &c.name == name)
                    .and_then(|c| c.settle());
                self.wait_ready(name, check.as_ref(), settle).await
            }
            Action::RemoveContainer { name, .. } => self
                .clock
                .time(Phase::Remove, self.engine.remove(name))
                .await
                .map_err(String::from),
            Action::RemoveNetwork { name, .. } => self
                .clock
                .time(Phase::Remove, self.engine.remove_network(name))
                .await
                .map_err(String::from),
        }
    }

    /// Stops and disconnects the containers on a network that is recreated, and recreates it.
    async fn recreate(&self, action: &Action) -> Result<(), String> {
        match action {
            Action::RecreateNetwork {
                network, detach, ..
            } => {
                for name in detach {
                    self.engine.stop(name).await?;
                    self.engine.disconnect(&network.name, name).await?;
                    lock(&self.detached)
                        .entry(name.clone())
                        .or_default()
                        .push(network.name.clone());
                }
                self.engine.remove_network(&network.name).await?;
                self.engine
                    .create_network(network)
                    .await
                    .map(|_| ())
                    .map_err(String::from)
            }
            _ => Ok(()),
        }
    }

    /// Creates, connects and starts `container` under `name`, and waits until it is ready.
    async fn launch(&self, container: &DesiredContainer, name: &str) -> Result<(), String> {
        self.create(container, name).await?;
        self.start_ready(container, name).await
    }

    /// Creates `container` under `name`, not started: its secret files, the container with
    /// its first network attached in the create call, its other networks connected.
    async fn create(&self, container: &DesiredContainer, name: &str) -> Result<(), String> {
        let create = async {
            self.engine.write_secrets(self.app, container).await?;
            self.engine
                .create_container(self.app, container, name, &self.options.deploy_id)
                .await?;
            for (network, attachment) in later_networks(&container.spec) {
                self.engine.attach(network, name, attachment).await?;
            }
            Ok::<(), String>(())
        };
        self.clock.time(Phase::Create, create).await
    }

    /// Starts `name` (made by [`Self::create`]) and waits until it is ready.
    async fn start_ready(&self, container: &DesiredContainer, name: &str) -> Result<(), String> {
        self.clock
            .time(Phase::Start, self.engine.start(name))
            .await?;
        self.wait_ready(
            name,
            container.spec.healthcheck.as_ref(),
            container.settle(),
        )
        .await
    }

    /// Removes a successor that will not run; `error` says why, plus a failed removal.
    async fn drop_next(&self, next: &str, error: String) -> String {
        let cleanup = self.clock.time(Phase::Remove, self.engine.remove(next));
        let cleanup = cleanup.await.err().map(String::from);
        with_cleanup(error, cleanup)
    }

    async fn replace_start_first(&self, container: &DesiredContainer) -> Result<(), String> {
        let name = container.name.as_str();
        let next = next_name(name);
        self.clock
            .time(Phase::Remove, self.engine.remove(&next))
            .await?;
        if let Err(error) = self.launch(container, &next).await {
            let cleanup = self.engine.remove(&next);
            let cleanup = self.clock.time(Phase::Remove, cleanup).await.err();
            let cleanup = cleanup.map(String::from);
            return Err(with_cleanup(
                format!("{error}; the new container was removed, {name} kept running"),
                cleanup,
            ));
        }
        // The new one is ready: set the old one aside, give the new one its name. An older
        // kept release waits as NAME-prev-old until the host's whole rollout succeeded.
        let swap = async {
            let kept_older = self.keep_older(name).await?;
            self.set_aside(name).await?;
            self.engine.rename(&next, name).await?;
            Ok::<bool, String>(kept_older)
        };
        let kept_older = self.clock.time(Phase::Remove, swap).await?;
        lock(&self.done).push(Done::Replaced {
            name: name.to_string(),
            kept_older,
        });
        Ok(())
    }

    /// Renames an existing `NAME-prev` to `NAME-prev-old` (removing a stale one of an
    /// interrupted deploy first). True if there was one.
    async fn keep_older(&self, name: &str) -> Result<bool, String> {
        let previous = previous_name(name);
        let older = older_name(name);
        self.engine.remove(&older).await?;
        let had_previous = self.actual.previous.iter().any(|c| c.name == previous);
        if had_previous {
            self.engine.rename(&previous, &older).await?;
        }
        Ok(had_previous)
    }

    async fn replace_stop_first(&self, container: &DesiredContainer) -> Result<(), String> {
        let name = container.name.as_str();
        // The successor is created before the old one stops (Docker takes ports and fixed
        // addresses only at start), so the service is down for the old one's stop and the
        // new one's start only, and a create that fails leaves the old one untouched.
        let next = next_name(name);
        self.clock
            .time(Phase::Remove, self.engine.remove(&next))
            .await?;
        if let Err(error) = self.create(container, &next).await {
            let error = format!("{error}; the new container was removed, {name} kept running");
            return Err(self.drop_next(&next, error).await);
        }
        // An older kept release stays until the host's rollout succeeded: if it fails, the
        // host is back exactly where it was, rollback target included.
        let previous = previous_name(name);
        let older = older_name(name);
        let aside = async {
            let had_previous = self.keep_older(name).await?;
            self.set_aside(name).await?;
            Ok::<bool, String>(had_previous)
        };
        let had_previous = match self.clock.time(Phase::Remove, aside).await {
            Ok(had_previous) => had_previous,
            Err(error) => return Err(self.drop_next(&next, error).await),
        };
        let launched = async {
            let rename = self.engine.rename(&next, name);
            self.clock.time(Phase::Create, rename).await?;
            self.start_ready(container, name).await
        };
        if let Err(error) = launched.await {
            let mut message = format!("{error}; the new container was removed");
            let restored = async {
                self.engine.remove(name).await?;
                // Still there when the rename failed.
                self.engine.remove(&next).await?;
                self.restore(name).await?;
                if had_previous {
                    self.engine.rename(&older, &previous).await?;
                }
                Ok::<(), String>(())
            }
            .await;
            match restored {
                Ok(()) => message.push_str(&format!(", the previous {name} is running again")),
                Err(why) => message.push_str(&format!(
                    ", and restoring the previous {name} failed: {why}"
                )),
            }
            return Err(message);
        }
        lock(&self.done).push(Done::Replaced {
            name: name.to_string(),
            kept_older: had_previous,
        });
        Ok(())
    }

    /// Undoes every change this deploy completed on the host (after a failure). Says what
    /// was undone, or None if there was nothing to undo. Every step is tried, even after one
    /// failed, so as much as possible is put back.
    async fn undo(&self) -> Option<String> {
        let done = std::mem::take(&mut *lock(&self.done));
        let steps = undo_steps(&done);
        if steps.is_empty() {
            return None;
        }
        let mut problems = Vec::new();
        for step in &steps {
            if let Err(why) = self.step(step).await {
                problems.push(why);
            }
        }
        let names: Vec<String> = done
            .iter()
            .map(|change| match change {
                Done::Created(name) | Done::Replaced { name, .. } => name.clone(),
            })
            .collect();
        Some(if problems.is_empty() {
            format!(
                "undid this deploy's earlier changes on the host: {} (back as before)",
                names.join(", ")
            )
        } else {
            format!(
                "undoing this deploy's earlier changes ({}) failed: {}",
                names.join(", "),
                problems.join("; ")
            )
        })
    }

    /// After the whole host succeeded: removes the older releases kept for an undo. Best
    /// effort: a leftover `NAME-prev-old` is planned for removal by the next deploy.
    async fn finish(&self) {
        let done = std::mem::take(&mut *lock(&self.done));
        for step in finish_steps(&done) {
            let _ = self.step(&step).await;
        }
    }

    async fn step(&self, step: &Step) -> Result<(), String> {
        match step {
            Step::Remove(name) => self.engine.remove(name).await.map_err(String::from),
            Step::Restore(name) => self.restore(name).await,
            Step::Rename { from, to } => self.engine.rename(from, to).await.map_err(String::from),
        }
    }

    /// Stops `name` and keeps it as `NAME-prev` (replacing an older kept one).
    async fn set_aside(&self, name: &str) -> Result<(), String> {
        let previous = previous_name(name);
        self.engine.remove(&previous).await?;
        self.engine.set_restart(name, &no_restart()).await?;
        self.engine.stop(name).await?;
        self.engine
            .rename(name, &previous)
            .await
            .map_err(String::from)
    }

    /// Puts the container set aside by [`Self::set_aside`] back under `name` and starts it.
    async fn restore(&self, name: &str) -> Result<(), String> {
        let previous = previous_name(name);
        self.engine.rename(&previous, name).await?;
        let spec = self
            .actual
            .container(name)
            .and_then(|c| stored_spec(c).ok());
        if let Some(spec) = &spec {
            self.engine.set_restart(name, &spec.restart).await?;
            let detached = lock(&self.detached).get(name).cloned().unwrap_or_default();
            for network in &detached {
                let attachment = spec.networks.get(network).cloned().unwrap_or_default();
                self.engine.attach(network, name, &attachment).await?;
            }
        }
        self.engine.start(name).await.map_err(String::from)
    }

    async fn wait_ready(
        &self,
        name: &str,
        check: Option<&HealthSpec>,
        settle: Option<Duration>,
    ) -> Result<(), String> {
        let ready = wait_ready(self.engine, name, check, settle, self.options);
        self.clock.time(Phase::Ready, ready).await
    }
}

/// Waits until `name` is ready (see `ready.rs`): its healthcheck passed (Berth's own early
/// run or dockerd's), or it kept running for the settle time (`settle` overrides the
/// options' default for one service).
pub async fn wait_ready(
    engine: &Engine,
    name: &str,
    check: Option<&HealthSpec>,
    settle: Option<Duration>,
    options: &ApplyOptions,
) -> Result<(), String> {
    let readiness = Readiness::of(check, settle.unwrap_or(options.settle));
    crate::ready::wait_ready(engine, name, &readiness, options.health_timeout).await
}

/// `berth rollback` on one host: every container with a kept previous release
/// (`NAME-prev`) is swapped with it. The current one is kept as the new `NAME-prev`, so a
/// second rollback returns to where the first started.
pub async fn rollback_host(
    engine: &Engine,
    app: &str,
    actual: &ActualHost,
    options: &ApplyOptions,
    on_result: &(dyn Fn(&ActionResult) + Send + Sync),
) -> Vec<ActionResult> {
    let mut results = Vec::new();
    let mut failed = false;
    for previous in &actual.previous {
        let name = previous
            .name
            .strip_suffix(PREVIOUS_SUFFIX)
            .unwrap_or(&previous.name)
            .to_string();
        let action = format!("rollback container {name}");
        let result = if failed {
            ActionResult {
                action,
                outcome: Outcome::Skipped,
                message: Some("an earlier rollback on this host failed".to_string()),
            }
        } else {
            match swap_back(engine, actual, previous, &name, options).await {
                Ok(message) => ActionResult {
                    action,
                    outcome: Outcome::Changed,
                    message: Some(message),
                },
                Err(message) => {
                    failed = true;
                    ActionResult {
                        action,
                        outcome: Outcome::Failed,
                        message: Some(message),
                    }
                }
            }
        };
        on_result(&result);
        results.push(result);
    }
    // Then the containers the rolled-back deploy created: there was nothing before them.
    for created in created_by_latest_deploy(actual, app) {
        let action = format!("remove container {}", created.name);
        let result = if failed {
            ActionResult {
                action,
                outcome: Outcome::Skipped,
                message: Some("an earlier rollback on this host failed".to_string()),
            }
        } else {
            match engine.remove(&created.name).await {
                Ok(()) => ActionResult {
                    action,
                    outcome: Outcome::Changed,
                    message: Some("created by the deploy rolled back".to_string()),
                },
                Err(message) => {
                    failed = true;
                    ActionResult {
                        action,
                        outcome: Outcome::Failed,
                        message: Some(message.to_string()),
                    }
                }
            }
        };
        on_result(&result);
        results.push(result);
    }
    results
}

/// The app's current containers that the host's latest deploy created (its `berth.deploy`
/// id is the highest among the app's containers, kept releases included) and that have no
/// kept previous release. A host's first deploy is never undone this way (rollback is not
/// `berth down`): some container of the app must carry an older id (or none: made before
/// the label existed). After such a rollback the removed ones are gone, so a second
/// rollback does not reach further back for containers to remove unless older ids remain.
pub(crate) fn created_by_latest_deploy<'a>(
    actual: &'a ActualHost,
    app: &str,
) -> Vec<&'a ActualContainer> {
    let id = |c: &ActualContainer| {
        c.labels
            .get(crate::labels::DEPLOY)
            .cloned()
            .unwrap_or_default()
    };
    let current: Vec<&ActualContainer> = actual
        .containers
        .iter()
        .filter(|c| c.app() == Some(app))
        .collect();
    let all_ids: Vec<String> = current
        .iter()
        .copied()
        .chain(actual.previous.iter())
        .map(id)
        .collect();
    let Some(latest) = all_ids.iter().max() else {
        return Vec::new();
    };
    if latest.is_empty() || all_ids.iter().all(|other| other == latest) {
        return Vec::new();
    }
    current
        .into_iter()
        .filter(|c| &id(c) == latest)
        .filter(|c| {
            let kept = format!("{}{PREVIOUS_SUFFIX}", c.name);
            !actual.previous.iter().any(|p| p.name == kept)
        })
        .collect()
}

async fn swap_back(
    engine: &Engine,
    actual: &ActualHost,
    previous: &ActualContainer,
    name: &str,
    options: &ApplyOptions,
) -> Result<String, String> {
    let current = actual.container(name);
    let parked = next_name(name);
    engine.remove(&parked).await?;
    if current.is_some() {
        engine.set_restart(name, &no_restart()).await?;
        engine.stop(name).await?;
        engine.rename(name, &parked).await?;
    }
    let previous_spec = stored_spec(previous).ok();
    let brought_back = async {
        engine.rename(&previous.name, name).await?;
        if let Some(spec) = &previous_spec {
            engine.set_restart(name, &spec.restart).await?;
            // A network recreated since this release ran took it off that network.
            let attached = engine.networks_of(name).await?.unwrap_or_default();
            for (network, attachment) in &spec.networks {
                if !attached.contains(network) {
                    engine.attach(network, name, attachment).await?;
                }
            }
        }
        engine.start(name).await?;
        let check = previous_spec
            .as_ref()
            .and_then(|spec| spec.healthcheck.as_ref());
        wait_ready(engine, name, check, None, options).await
    }
    .await;
    match brought_back {
        Ok(()) => {
            if current.is_some() {
                engine.rename(&parked, &previous.name).await?;
            }
            Ok(format!("now runs {}", previous.image))
        }
        Err(error) => {
            // Undo: the previous release goes back aside, the current one returns.
            let undo = async {
                engine.set_restart(name, &no_restart()).await?;
                engine.stop(name).await?;
                engine.rename(name, &previous.name).await?;
                if let Some(current) = current {
                    engine.rename(&parked, name).await?;
                    if let Ok(spec) = stored_spec(current) {
                        engine.set_restart(name, &spec.restart).await?;
                    }
                    engine.start(name).await?;
                }
                Ok::<(), String>(())
            }
            .await;
            Err(match undo {
                Ok(()) => format!("{error}; kept the current {name}"),
                Err(why) => format!("{error}; putting the current {name} back failed: {why}"),
            })
        }
    }
}

/// A deploy id: the time in nanoseconds, zero-padded so ids sort as text in time order.
pub fn new_deploy_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{nanos:020}")
}

/// Name suffix (after `-prev`) of an older kept release while a stop-first rollout runs.
const OLDER_SUFFIX: &str = "-old";

/// The lock is never held across an await; a panic elsewhere leaves the data usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn no_restart() -> RestartPolicy {
    RestartPolicy {
        name: "no".to_string(),
        max_retries: None,
    }
}

fn next_name(name: &str) -> String {
    format!("{name}{NEXT_SUFFIX}")
}

fn previous_name(name: &str) -> String {
    format!("{name}{PREVIOUS_SUFFIX}")
}

fn older_name(name: &str) -> String {
    format!("{name}{PREVIOUS_SUFFIX}{OLDER_SUFFIX}")
}

fn with_cleanup(error: String, cleanup: Option<String>) -> String {
    match cleanup {
        None => error,
        Some(why) => format!("{error} (and removing it failed: {why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replaced(name: &str, kept_older: bool) -> Done {
        Done::Replaced {
            name: name.to_string(),
            kept_older,
        }
    }

    fn remove(name: &str) -> Step {
        Step::Remove(name.to_string())
    }

    #[test]
    fn undo_reverses_completed_changes_latest_first() {
        let done = [
            replaced("app_web_1", true),
            Done::Created("app_extra_1".to_string()),
            replaced("app_nodes_1", false),
        ];
        assert_eq!(
            undo_steps(&done),
            [
                remove("app_nodes_1"),
                Step::Restore("app_nodes_1".to_string()),
                remove("app_extra_1"),
                remove("app_web_1"),
                Step::Restore("app_web_1".to_string()),
                Step::Rename {
                    from: "app_web_1-prev-old".to_string(),
                    to: "app_web_1-prev".to_string(),
                },
            ]
        );
    }

    #[test]
    fn nothing_done_nothing_to_undo_or_finish() {
        assert!(undo_steps(&[]).is_empty());
        assert!(finish_steps(&[]).is_empty());
    }

    #[test]
    fn finishing_drops_only_the_kept_older_releases() {
        let done = [
            replaced("app_web_1", true),
            replaced("app_nodes_1", false),
            Done::Created("app_extra_1".to_string()),
        ];
        assert_eq!(finish_steps(&done), [remove("app_web_1-prev-old")]);
    }

    #[test]
    fn removals_do_not_undo_a_finished_rollout() {
        let remove_container = Action::RemoveContainer {
            name: "app_old_1".to_string(),
            id: "abc".to_string(),
            reason: "gone".to_string(),
        };
        assert!(!undoes_rollout(&remove_container));
        let remove_network = Action::RemoveNetwork {
            name: "app_net".to_string(),
            id: "def".to_string(),
            reason: "gone".to_string(),
        };
        assert!(!undoes_rollout(&remove_network));
    }
}
