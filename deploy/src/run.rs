//! `berth deploy` and `berth rollback` over many hosts: pin images to digests once, then
//! per host (in parallel, bounded) connect, read, plan, and apply unless checking. Every
//! host ends with a [`HostReport`]; one unreachable or failing host never stops the others.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use berth_client::credentials::{Credentials, DockerConfig};
use berth_client::registry::{Client, ClientConfig};
use berth_client::ImageRef;
use futures::{FutureExt, StreamExt};
use serde::Serialize;

use crate::actual::ActualHost;
use crate::apply::{apply_host_timed, rollback_host, ActionResult, ApplyOptions, Outcome};
use crate::desired::DesiredHost;
use crate::engine::{Engine, PullAuth};
use crate::inventory::DockerEndpoint;
use crate::plan::{plan_host, HostPlan};
use crate::timings::{HostTimings, PhaseClock};

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Plan only (`--check`): read every host, print what would change, change nothing.
    pub check: bool,
    /// Hosts worked on at once.
    pub parallel: usize,
    /// How long a host may take to answer the first API call before it counts as unreachable.
    pub connect_timeout: Duration,
    pub apply: ApplyOptions,
    /// Resolve tags to registry digests and deploy `repo@sha256:…` (on by default).
    pub pin: bool,
    /// How to reach registries for pinning (and whose credentials pulls use).
    pub registry: ClientConfig,
    /// Digests already known for some image references (`berth ship` just pushed them):
    /// used as they are instead of asking the registry, so a tag moved by someone else in
    /// the meantime cannot swap the image.
    pub known_digests: BTreeMap<String, String>,
    /// `berth down`: the plan removes everything of the app (the desired hosts are empty);
    /// `Some(true)` removes its volumes too.
    pub down: Option<bool>,
    /// `--timings`: report where each host's time went and its Engine API calls.
    pub timings: bool,
    /// `--rolling N` / `N%`: hosts change in batches of this size, one batch after the
    /// other, and a batch with a failed host stops the hosts after it.
    pub rolling: Option<Rolling>,
}

/// How many hosts a rolling deploy changes at once (Kamal's boot limit, Ansible's `serial`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rolling {
    Hosts(usize),
    /// A share of the hosts deployed, rounded up (at least one host).
    Percent(u8),
}

impl Rolling {
    /// `3` or `25%`.
    pub fn parse(text: &str) -> Result<Rolling, String> {
        let bad = || format!("--rolling {text:?}: give a number of hosts (3) or a share (25%)");
        if let Some(percent) = text.strip_suffix('%') {
            return match percent.trim().parse::<u8>() {
                Ok(p @ 1..=100) => Ok(Rolling::Percent(p)),
                _ => Err(bad()),
            };
        }
        match text.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Rolling::Hosts(n)),
            _ => Err(bad()),
        }
    }

    /// Hosts per batch when `hosts` are deployed.
    pub fn batch_size(self, hosts: usize) -> usize {
        match self {
            Rolling::Hosts(n) => n,
            Rolling::Percent(p) => (hosts * usize::from(p)).div_ceil(100),
        }
        .max(1)
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            check: false,
            parallel: 8,
            connect_timeout: Duration::from_secs(10),
            apply: ApplyOptions::default(),
            pin: true,
            registry: ClientConfig::default(),
            known_digests: BTreeMap::new(),
            down: None,
            timings: false,
            rolling: None,
        }
    }
}

/// Progress as it happens, for a CLI to print.
pub enum Event<'a> {
    /// A host's plan is known (before anything is applied there).
    Planned(&'a HostPlan),
    /// One action on a host finished.
    Action {
        host: &'a str,
        result: &'a ActionResult,
    },
    /// A host is done (or could not be reached).
    Finished(&'a HostReport),
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub endpoint: String,
    /// The Docker API could not be reached (the message is in `error`).
    pub unreachable: bool,
    /// Why nothing (more) could be done on this host: unreachable, a conflict the planner
    /// refused, an image that could not be resolved.
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<HostPlan>,
    pub results: Vec<ActionResult>,
    pub ok: usize,
    pub changed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// With `--timings` (deploys that reached the host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<HostTimings>,
    /// Images this run took off the host (for deployment records).
    #[serde(skip)]
    pub taken_off: Vec<crate::record::TakenOff>,
    /// What runs on the host after a rollback (for deployment records).
    #[serde(skip)]
    pub running_after_rollback: Vec<crate::record::Running>,
}

impl HostReport {
    fn new(host: &DesiredHost) -> HostReport {
        HostReport::empty(&host.host, &host.endpoint)
    }

    /// A report with nothing done yet, for a host (or a Swarm's manager) at `endpoint`.
    pub(crate) fn empty(host: &str, endpoint: &DockerEndpoint) -> HostReport {
        HostReport {
            host: host.to_string(),
            endpoint: endpoint.to_string(),
            unreachable: false,
            error: None,
            plan: None,
            results: Vec::new(),
            ok: 0,
            changed: 0,
            failed: 0,
            skipped: 0,
            timings: None,
            taken_off: Vec::new(),
            running_after_rollback: Vec::new(),
        }
    }

    pub(crate) fn fail(mut self, error: String, unreachable: bool) -> HostReport {
        self.unreachable = unreachable;
        if !unreachable {
            self.failed += 1;
        }
        self.error = Some(error);
        self
    }

    pub(crate) fn count_results(&mut self) {
        for result in &self.results {
            match result.outcome {
                Outcome::Changed => self.changed += 1,
                Outcome::Failed => self.failed += 1,
                Outcome::Skipped => self.skipped += 1,
            }
        }
    }

    pub fn succeeded(&self) -> bool {
        self.error.is_none() && self.failed == 0
    }

    /// The host's recap line, as Ansible prints it.
    pub fn recap_line(&self, width: usize) -> String {
        format!(
            "{:<width$} : ok={} changed={} unreachable={} failed={} skipped={}",
            self.host,
            self.ok,
            self.changed,
            usize::from(self.unreachable),
            self.failed,
            self.skipped
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Deploy,
    Check,
    Rollback,
    Down,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub app: String,
    pub mode: Mode,
    /// Image reference as written → the digest every host was given.
    pub images: BTreeMap<String, String>,
    pub hosts: Vec<HostReport>,
}

impl RunReport {
    /// True when every host was reached and nothing failed.
    pub fn succeeded(&self) -> bool {
        self.hosts.iter().all(HostReport::succeeded)
    }

    /// `RECAP` block: one line per host, then the hosts that failed or were unreachable,
    /// each with its reason.
    pub fn recap(&self) -> String {
        let width = self.hosts.iter().map(|h| h.host.len()).max().unwrap_or(0);
        let mut out = String::from("RECAP\n");
        for host in &self.hosts {
            out.push_str(&host.recap_line(width));
            out.push('\n');
        }
        for host in &self.hosts {
            if let Some(timings) = &host.timings {
                out.push_str(&timings.line(&host.host));
                out.push('\n');
            }
        }
        for host in &self.hosts {
            if host.unreachable {
                out.push_str(&format!(
                    "UNREACHABLE {}: {}\n",
                    host.host,
                    host.error.as_deref().unwrap_or("")
                ));
            } else if let Some(error) = &host.error {
                out.push_str(&format!("FAILED {}: {error}\n", host.host));
            } else if let Some(failed) = host.results.iter().find(|r| r.outcome == Outcome::Failed)
            {
                out.push_str(&format!(
                    "FAILED {}: {}: {}\n",
                    host.host,
                    failed.action,
                    failed.message.as_deref().unwrap_or("")
                ));
            }
        }
        out
    }
}

/// Resolves every image reference to its registry manifest digest, each once.
pub async fn resolve_digests(
    client: &Client,
    images: &BTreeSet<String>,
) -> BTreeMap<String, Result<String, String>> {
    let lookups = images.iter().map(|image| async move {
        let result = async {
            let reference = ImageRef::parse(image).map_err(|e| e.to_string())?;
            if let Some(digest) = &reference.digest {
                return Ok(digest.to_string());
            }
            let registry = client
                .registry(&reference.registry)
                .map_err(|e| e.to_string())?;
            let tag = reference.reference();
            match registry
                .manifest_head(&reference.repository, &tag)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(digest) => Ok(digest.to_string()),
                // No digest header: fetch the manifest and hash it ourselves.
                None => registry
                    .manifest_get(&reference.repository, &tag)
                    .await
                    .map(|manifest| manifest.digest.to_string())
                    .map_err(|e| e.to_string()),
            }
        }
        .await
        .map_err(|e: String| format!("cannot resolve image {image} to a digest: {e}"));
        (image.clone(), result)
    });
    futures::future::join_all(lookups)
        .await
        .into_iter()
        .collect()
}

/// Credentials `docker login` (or `berth login`) stored for each image's registry.
pub(crate) fn pull_credentials(
    config: &ClientConfig,
    images: &BTreeSet<String>,
) -> BTreeMap<String, PullAuth> {
    let Ok(docker_config) = DockerConfig::load(&config.docker_config) else {
        return BTreeMap::new();
    };
    let mut auth = BTreeMap::new();
    for image in images {
        let Ok(reference) = ImageRef::parse(image) else {
            continue;
        };
        let credentials = match &config.credentials {
            Some(credentials) => Some(credentials.clone()),
            None => docker_config
                .credentials_for(&reference.registry)
                .ok()
                .flatten(),
        };
        let entry = match credentials {
            Some(Credentials::Basic { username, password }) => PullAuth {
                username: Some(username),
                password: Some(password),
                identity_token: None,
                server: reference.registry.clone(),
            },
            Some(Credentials::IdentityToken(token)) => PullAuth {
                username: None,
                password: None,
                identity_token: Some(token),
                server: reference.registry.clone(),
            },
            None => continue,
        };
        auth.insert(image.clone(), entry);
    }
    auth
}

/// Run `work` for every host, at most `parallel` at a time, announcing each
/// report as it finishes; the reports come back sorted by host.
async fn each_host<F, Fut>(
    desired: Vec<DesiredHost>,
    parallel: usize,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
    work: F,
) -> Vec<HostReport>
where
    F: Fn(DesiredHost) -> Fut,
    Fut: std::future::Future<Output = HostReport>,
{
    let work = &work;
    let mut hosts: Vec<HostReport> = futures::stream::iter(desired)
        .map(|host| async move {
            let report = work(host).await;
            on_event(Event::Finished(&report));
            report
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    hosts.sort_by(|a, b| a.host.cmp(&b.host));
    hosts
}

/// Every host at once (up to `--parallel`), or in `--rolling` batches (not for `--check`).
async fn all_or_rolling<F, Fut>(
    desired: Vec<DesiredHost>,
    options: &RunOptions,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
    work: F,
) -> Vec<HostReport>
where
    F: Fn(DesiredHost) -> Fut,
    Fut: std::future::Future<Output = HostReport>,
{
    match options.rolling.filter(|_| !options.check) {
        None => each_host(desired, options.parallel, on_event, work).await,
        Some(rolling) => {
            let size = rolling.batch_size(desired.len());
            in_batches(desired, size, on_event, work).await
        }
    }
}

/// `--rolling`: `size` hosts at a time, batch after batch (in inventory order); once a batch
/// has a failed host, the hosts after it are left as they are and reported as not deployed.
async fn in_batches<F, Fut>(
    desired: Vec<DesiredHost>,
    size: usize,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
    work: F,
) -> Vec<HostReport>
where
    F: Fn(DesiredHost) -> Fut,
    Fut: std::future::Future<Output = HostReport>,
{
    let mut reports = Vec::new();
    let mut rest = desired.into_iter();
    let mut failed_batch = None;
    for batch in 1.. {
        let hosts: Vec<DesiredHost> = rest.by_ref().take(size).collect();
        if hosts.is_empty() {
            break;
        }
        let done = each_host(hosts, size, on_event, &work).await;
        let failed = done.iter().any(|r| !r.succeeded());
        reports.extend(done);
        if failed {
            failed_batch = Some(batch);
            break;
        }
    }
    if let Some(batch) = failed_batch {
        for host in rest {
            let mut report = HostReport::new(&host);
            report.error = Some(format!(
                "not deployed: --rolling stopped after batch {batch}, where a host failed; the host is as it was"
            ));
            report.skipped = 1;
            on_event(Event::Finished(&report));
            reports.push(report);
        }
    }
    reports.sort_by(|a, b| a.host.cmp(&b.host));
    reports
}

/// What resolving the app's tags gave: digests, the images that could not be resolved
/// (with why), and the pull credentials of the pinned references.
#[derive(Clone, Default)]
struct Resolution {
    pins: BTreeMap<String, String>,
    unresolved: BTreeMap<String, String>,
    pull_auth: BTreeMap<String, PullAuth>,
}

/// Resolves the tags `desired` names (unless already known or not pinning).
async fn resolve(desired: Vec<DesiredHost>, options: &RunOptions) -> Resolution {
    let written: BTreeSet<String> = desired
        .iter()
        .flat_map(|host| host.containers.iter().map(|c| c.spec.image.clone()))
        .collect();
    let mut pins: BTreeMap<String, String> = options
        .known_digests
        .iter()
        .filter(|(image, _)| written.contains(*image))
        .map(|(image, digest)| (image.clone(), digest.clone()))
        .collect();
    let mut unresolved = BTreeMap::new();
    if options.pin {
        let client = Client::new(options.registry.clone());
        let unknown: BTreeSet<String> = written
            .iter()
            .filter(|image| !pins.contains_key(*image))
            .cloned()
            .collect();
        for (image, result) in resolve_digests(&client, &unknown).await {
            match result {
                Ok(digest) => {
                    pins.insert(image, digest);
                }
                Err(error) => {
                    unresolved.insert(image, error);
                }
            }
        }
    }
    let pulled: BTreeSet<String> = desired
        .into_iter()
        .flat_map(|mut host| {
            host.pin_images(&pins);
            host.images()
        })
        .collect();
    Resolution {
        pull_auth: pull_credentials(&options.registry, &pulled),
        pins,
        unresolved,
    }
}

/// `berth deploy` (or `--check`) of `desired` hosts. Tags are resolved while the hosts
/// connect and are read, so a host's pulls start as soon as both are done.
pub async fn deploy(
    app: &str,
    desired: Vec<DesiredHost>,
    options: &RunOptions,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
) -> RunReport {
    let resolution = resolve(desired.clone(), options).shared();
    let hosts = all_or_rolling(desired, options, on_event, |host| {
        deploy_host(host, options, resolution.clone(), on_event)
    })
    .await;
    RunReport {
        app: app.to_string(),
        mode: if options.check {
            Mode::Check
        } else {
            Mode::Deploy
        },
        images: resolution.await.pins,
        hosts,
    }
}

/// Connects to a host and reads its state; the error ends the host's report.
async fn connect_and_read(
    desired: &DesiredHost,
    options: &RunOptions,
) -> Result<(Engine, ActualHost, HostTimings), (String, bool)> {
    let started = Instant::now();
    let engine = Engine::connect(&desired.endpoint, options.connect_timeout)
        .await
        .map_err(|error| (error.to_string(), error.is_unreachable()))?;
    let mut timings = HostTimings {
        connect: started.elapsed().as_secs_f64(),
        ..HostTimings::default()
    };
    let reading = Instant::now();
    let actual = engine
        .read(&desired.app)
        .await
        .map_err(|error| (format!("reading the host's state: {error}"), false))?;
    timings.read = reading.elapsed().as_secs_f64();
    Ok((engine, actual, timings))
}

async fn deploy_host(
    mut desired: DesiredHost,
    options: &RunOptions,
    resolution: impl std::future::Future<Output = Resolution>,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
) -> HostReport {
    let report = HostReport::new(&desired);
    let started = Instant::now();
    let connecting = async {
        let connected = connect_and_read(&desired, options).await;
        (connected, Instant::now())
    };
    let (resolution, (connected, read_at)) = futures::future::join(resolution, connecting).await;
    // An image that cannot be resolved fails the host before anything else is said of it.
    let failed_images: Vec<&str> = desired
        .containers
        .iter()
        .filter_map(|c| resolution.unresolved.get(&c.spec.image).map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !failed_images.is_empty() {
        return report.fail(failed_images.join("; "), false);
    }
    let (engine, actual, mut timings) = match connected {
        Ok(connected) => connected,
        Err((error, unreachable)) => return report.fail(error, unreachable),
    };
    // Resolving outlasted connecting and reading only when the registry is slower.
    timings.resolve = read_at.elapsed().as_secs_f64();
    desired.pin_images(&resolution.pins);
    let mut apply_options = options.apply.clone();
    apply_options.pull_auth = resolution.pull_auth;
    let mut plan = plan_host(&desired, &actual);
    if let Some(volumes) = options.down {
        crate::plan::down::adjust_plan(&mut plan, &actual, &desired.app, volumes);
    }
    on_event(Event::Planned(&plan));
    let mut report = report;
    report.ok = plan.ok();
    if let Some(error) = &plan.error {
        report.plan = Some(redacted(&plan));
        return report.fail(error.clone(), false);
    }
    if options.check {
        report.changed = plan.changed();
    } else {
        let host = desired.host.clone();
        let clock = PhaseClock::default();
        report.results = apply_host_timed(
            &engine,
            &desired,
            &plan,
            &actual,
            &apply_options,
            &|result| {
                on_event(Event::Action {
                    host: &host,
                    result,
                })
            },
            &clock,
        )
        .await;
        report.count_results();
        report.taken_off = crate::record::taken_off(&plan, &actual, &report.results);
        if options.timings {
            clock.fill(&mut timings);
            timings.total = started.elapsed().as_secs_f64();
            timings.api_calls = engine.api_calls();
            report.timings = Some(timings);
        }
    }
    report.plan = Some(redacted(&plan));
    report
}

/// The plan as reports carry it: env values replaced by `***` (they are often secrets, and
/// `--json` output ends up in CI logs); the names stay, as in the printed plan.
fn redacted(plan: &HostPlan) -> HostPlan {
    let mut plan = plan.clone();
    for action in &mut plan.actions {
        if let crate::plan::Action::CreateContainer { container, .. }
        | crate::plan::Action::ReplaceContainer { container, .. } = action
        {
            for value in container.spec.env.values_mut() {
                *value = "***".to_string();
            }
        }
    }
    plan
}

/// `berth rollback`: on every host, swap each container with its kept previous release.
pub async fn rollback(
    app: &str,
    desired: Vec<DesiredHost>,
    options: &RunOptions,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
) -> RunReport {
    let hosts = all_or_rolling(desired, options, on_event, |host| {
        rollback_one(host, options, on_event)
    })
    .await;
    RunReport {
        app: app.to_string(),
        mode: Mode::Rollback,
        images: BTreeMap::new(),
        hosts,
    }
}

async fn rollback_one(
    desired: DesiredHost,
    options: &RunOptions,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
) -> HostReport {
    let mut report = HostReport::new(&desired);
    let engine = match Engine::connect(&desired.endpoint, options.connect_timeout).await {
        Ok(engine) => engine,
        Err(error) => {
            let unreachable = error.is_unreachable();
            return report.fail(error.to_string(), unreachable);
        }
    };
    let actual = match engine.read(&desired.app).await {
        Ok(actual) => actual,
        Err(error) => return report.fail(format!("reading the host's state: {error}"), false),
    };
    let host = desired.host.clone();
    report.results = rollback_host(&engine, &desired.app, &actual, &options.apply, &|result| {
        on_event(Event::Action {
            host: &host,
            result,
        })
    })
    .await;
    // The same list rollback_host went through, from the same state read before it.
    let created = crate::apply::created_by_latest_deploy(&actual, &desired.app);
    (report.running_after_rollback, report.taken_off) =
        crate::record::rolled_back(&actual, &desired.app, &created, &report.results);
    report.count_results();
    report.ok = actual
        .containers
        .iter()
        .filter(|c| c.app() == Some(desired.app.as_str()))
        .count()
        .saturating_sub(report.results.len());
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_sizes_parse_and_round_up() {
        assert_eq!(Rolling::parse("3"), Ok(Rolling::Hosts(3)));
        assert_eq!(Rolling::parse("25%"), Ok(Rolling::Percent(25)));
        for bad in ["0", "0%", "101%", "-1", "x", "", "%"] {
            let e = Rolling::parse(bad).expect_err(bad);
            assert!(e.contains("--rolling"), "{e}");
        }
        assert_eq!(Rolling::Hosts(2).batch_size(5), 2);
        assert_eq!(Rolling::Percent(25).batch_size(10), 3);
        assert_eq!(Rolling::Percent(1).batch_size(3), 1);
        assert_eq!(Rolling::Percent(100).batch_size(7), 7);
        assert_eq!(Rolling::Percent(50).batch_size(0), 1);
    }

    fn host(name: &str) -> HostReport {
        HostReport {
            host: name.to_string(),
            endpoint: format!("unix:///run/{name}.sock"),
            unreachable: false,
            error: None,
            plan: None,
            results: Vec::new(),
            ok: 0,
            changed: 0,
            failed: 0,
            skipped: 0,
            taken_off: Vec::new(),
            running_after_rollback: Vec::new(),
            timings: None,
        }
    }

    #[test]
    fn recap_names_unreachable_and_failed_hosts_with_their_reasons() {
        let mut good = host("web1");
        good.ok = 4;
        let down = host("web22").fail("unix:///run/web22.sock: no such file".into(), true);
        let mut broken = host("web3");
        broken.results = vec![
            ActionResult {
                action: "replace container app_web_1 (start-first)".into(),
                outcome: Outcome::Failed,
                message: Some("app_web_1 is unhealthy".into()),
            },
            ActionResult {
                action: "remove container app_old_1".into(),
                outcome: Outcome::Skipped,
                message: None,
            },
        ];
        broken.count_results();
        let report = RunReport {
            app: "app".into(),
            mode: Mode::Deploy,
            images: BTreeMap::new(),
            hosts: vec![good, down, broken],
        };
        assert!(!report.succeeded());
        assert_eq!(
            report.recap(),
            "RECAP\n\
             web1  : ok=4 changed=0 unreachable=0 failed=0 skipped=0\n\
             web22 : ok=0 changed=0 unreachable=1 failed=0 skipped=0\n\
             web3  : ok=0 changed=0 unreachable=0 failed=1 skipped=1\n\
             UNREACHABLE web22: unix:///run/web22.sock: no such file\n\
             FAILED web3: replace container app_web_1 (start-first): app_web_1 is unhealthy\n"
        );
    }

    #[test]
    fn all_reached_and_nothing_failed_is_success() {
        let report = RunReport {
            app: "app".into(),
            mode: Mode::Check,
            images: BTreeMap::new(),
            hosts: vec![host("a"), host("b")],
        };
        assert!(report.succeeded());
    }
}
