//! `berth deploy` and `berth rollback`: argument handling and output only; the work is in
//! `berth-deploy`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use berth_deploy::apply::{ActionResult, Outcome};
use berth_deploy::run::{self, Event, RunOptions, RunReport};
use berth_deploy::swarm::{self, run::SwarmOptions};
use berth_deploy::{desired_state, AppSource, Inventory};
use clap::Args;

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    pub(crate) common: CommonArgs,
    /// Print the plan, change nothing
    #[arg(long)]
    pub(crate) check: bool,
    /// Deploy the tags as written instead of resolving them to registry digests first
    /// (then hosts may run different images if a tag moves during the deploy)
    #[arg(long)]
    no_pin: bool,
    /// Longest wait for a new container to become healthy before it is rolled back
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    health_timeout: Duration,
    /// How long a new container without a healthcheck must keep running to count as
    /// started (a service's `settle:` overrides it)
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Print per host where the time went (connect, read, pull, create, start, ready,
    /// remove) and how many Engine API calls it took; in `--json` as each host's `timings`
    #[arg(long)]
    timings: bool,
    /// Registry (HOST[:PORT]) to reach over plain HTTP or unverified HTTPS when resolving
    /// digests; repeatable. Loopback registries need no flag.
    #[arg(long = "insecure", value_name = "REGISTRY", value_delimiter = ',')]
    pub(crate) insecure: Vec<String>,
    /// Extra CA certificate (PEM) to trust when resolving digests
    #[arg(long, value_name = "FILE")]
    pub(crate) ca_file: Option<PathBuf>,
    /// USER:PASSWORD for the registry instead of the stored login (also sent to the hosts
    /// for their pulls)
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "BERTH_CREDS",
        hide_env_values = true
    )]
    pub(crate) creds: Option<String>,
    /// Deploy the app as Swarm services through a manager: the first host of the inventory
    /// group `managers`, or the first host --limit selects
    #[arg(long)]
    pub(crate) swarm: bool,
    /// Push no deployment record (the OCI artifact that tells the registry where each
    /// image now runs)
    #[arg(long)]
    pub(crate) no_record: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Return the app's Swarm services to the config before their last update
    #[arg(long)]
    swarm: bool,
    /// With --swarm: longest wait for the services to converge again
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    health_timeout: Duration,
    /// Push no deployment record saying which images the rollback put back and took off
    #[arg(long)]
    no_record: bool,
}

#[derive(Args, Debug)]
pub(crate) struct CommonArgs {
    /// The app file (services, networks, variables); `berth down` also takes the app's name
    pub(crate) app: PathBuf,
    /// Inventory: an Ansible hosts file (YAML or INI) or a directory of them, with
    /// group_vars/ and host_vars/ beside it
    #[arg(long, short = 'i')]
    pub(crate) inventory: PathBuf,
    /// Extra variables over every host's (highest precedence), as ansible-playbook -e:
    /// KEY=VALUE pairs, @FILE (YAML or JSON), or an inline JSON/YAML mapping; repeatable,
    /// later ones win
    #[arg(long = "extra-vars", short = 'e', value_name = "VARS")]
    extra_vars: Vec<String>,
    /// Only these hosts or groups (Ansible's --limit patterns: web:&prod:!web3)
    #[arg(long, short = 'l')]
    pub(crate) limit: Option<String>,
    /// Print the plan and the results as one JSON document on stdout
    #[arg(long)]
    pub(crate) json: bool,
    /// Hosts worked on at once
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// Change N hosts (or N% of them) at a time, batch after batch in inventory order; a
    /// batch with a failed host stops the rest, which stay as they were (not with --swarm:
    /// Swarm's own update_config.parallelism applies there)
    #[arg(long, value_name = "N|N%", value_parser = berth_deploy::run::Rolling::parse)]
    rolling: Option<berth_deploy::run::Rolling>,
    /// Seconds a host may take to answer before it counts as unreachable
    #[arg(long, default_value = "10s", value_parser = crate::durations::seconds_or_duration)]
    connect_timeout: Duration,
}

pub fn deploy(args: DeployArgs) -> Result<()> {
    if args.swarm {
        return deploy_swarm(&args, BTreeMap::new(), None);
    }
    let (source, desired) = load(&args.common)?;
    deploy_loaded(&args, &source, desired, BTreeMap::new(), None)
}

/// Deploys hosts already loaded; `known_digests` are images whose digest is already known
/// (`berth ship` pushed them), `extra` is added to the `--json` report (ship's builds).
pub(crate) fn deploy_loaded(
    args: &DeployArgs,
    source: &AppSource,
    desired: Vec<berth_deploy::DesiredHost>,
    known_digests: BTreeMap<String, String>,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<()> {
    let registry = crate::session::client_config(
        &args.insecure,
        args.ca_file.as_ref(),
        args.creds.as_deref(),
    )?;
    let mut options = options(&args.common);
    options.check = args.check;
    options.pin = !args.no_pin;
    options.apply.health_timeout = args.health_timeout;
    options.apply.settle = args.settle;
    options.timings = args.timings;
    options.registry = registry;
    options.known_digests = known_digests;
    let printer = Printer::new(args.common.json);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let services = berth_deploy::record::planned_services(&desired);
    let registry = options.registry.clone();
    let report = runtime.block_on(run::deploy(&source.name, desired, &options, &|event| {
        printer.event(event)
    }));
    if !args.check && !args.no_record {
        let facts = crate::deploy_record::facts(&source.name, &args.common.inventory);
        let records = berth_deploy::record::container_records(&facts, &services, &report);
        crate::deploy_record::push(&runtime, &registry, records, &printer);
    }
    finish(&printer, &report, "deploy", extra)
}

pub fn rollback(args: RollbackArgs) -> Result<()> {
    if args.swarm {
        return rollback_swarm(&args);
    }
    let (source, desired) = load(&args.common)?;
    let options = options(&args.common);
    let printer = Printer::new(args.common.json);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(run::rollback(&source.name, desired, &options, &|event| {
        printer.event(event)
    }));
    if !args.no_record {
        let facts = crate::deploy_record::facts(&source.name, &args.common.inventory);
        let records = berth_deploy::record::rollback_records(&facts, &report);
        // As `berth down`: the stored login pushes them.
        let registry = crate::session::client_config(&[], None, None)?;
        crate::deploy_record::push(&runtime, &registry, records, &printer);
    }
    for host in &report.hosts {
        if host.error.is_none() && host.results.is_empty() {
            printer.line(&format!(
                "{}: no previous release kept, nothing to roll back",
                host.host
            ));
        }
    }
    finish(&printer, &report, "rollback", None)
}

/// `berth deploy --swarm`: one plan for the whole swarm, applied through its manager.
pub(crate) fn deploy_swarm(
    args: &DeployArgs,
    known_digests: BTreeMap<String, String>,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<()> {
    let desired = load_swarm(&args.common)?;
    let registry = crate::session::client_config(
        &args.insecure,
        args.ca_file.as_ref(),
        args.creds.as_deref(),
    )?;
    let options = SwarmOptions {
        check: args.check,
        connect_timeout: args.common.connect_timeout,
        health_timeout: args.health_timeout,
        pin: !args.no_pin,
        registry,
        known_digests,
        ..SwarmOptions::default()
    };
    let printer = Printer::new(args.common.json);
    let manager = desired.manager.clone();
    let app = desired.app.clone();
    let services: Vec<(String, String)> = desired
        .services
        .iter()
        .map(|s| (s.name.clone(), s.spec.image.clone()))
        .collect();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(swarm::run::deploy(
        desired,
        &options,
        &|plan| printer.line(&plan.render()),
        &|result| printer.line(&action_line(&manager, result)),
    ));
    if !args.check && !args.no_record {
        let facts = crate::deploy_record::facts(&app, &args.common.inventory);
        let records = berth_deploy::record::swarm_records(&facts, &services, &report.run);
        crate::deploy_record::push(&runtime, &options.registry, records, &printer);
    }
    finish_swarm(&printer, &report, "deploy", extra)
}

fn rollback_swarm(args: &RollbackArgs) -> Result<()> {
    let desired = load_swarm(&args.common)?;
    let options = SwarmOptions {
        connect_timeout: args.common.connect_timeout,
        health_timeout: args.health_timeout,
        ..SwarmOptions::default()
    };
    let printer = Printer::new(args.common.json);
    let manager = desired.manager.clone();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let report = runtime.block_on(swarm::run::rollback(
        desired,
        &options,
        &|plan| printer.line(&plan.render()),
        &|result| printer.line(&action_line(&manager, result)),
    ));
    finish_swarm(&printer, &report, "rollback", None)
}

pub(crate) fn load_swarm(common: &CommonArgs) -> Result<swarm::SwarmDesired> {
    let source = AppSource::load(&common.app)?;
    let inventory = load_inventory(common)?;
    Ok(swarm::desired_swarm(
        &source,
        &inventory,
        common.limit.as_deref(),
    )?)
}

/// Like [`finish`], with the swarm plan in the `--json` report (and ship's builds, if any).
fn finish_swarm(
    printer: &Printer,
    report: &swarm::run::SwarmReport,
    what: &str,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<()> {
    let plan = serde_json::to_value(&report.plan).context("cannot format the plan")?;
    let mut extras = serde_json::Map::new();
    extras.insert("swarm_plan".to_string(), plan);
    if let Some((key, value)) = extra {
        extras.insert(key.to_string(), value);
    }
    finish_with(printer, &report.run, what, extras)
}

pub(crate) fn load(common: &CommonArgs) -> Result<(AppSource, Vec<berth_deploy::DesiredHost>)> {
    let source = AppSource::load(&common.app)?;
    let inventory = load_inventory(common)?;
    let desired = desired_state(&source, &inventory, common.limit.as_deref())?;
    if desired.is_empty() {
        bail!(
            "no hosts selected from {}{}",
            common.inventory.display(),
            common
                .limit
                .as_deref()
                .map(|l| format!(" with --limit {l}"))
                .unwrap_or_default()
        );
    }
    Ok((source, desired))
}

/// The inventory with `-e/--extra-vars` on top.
pub(crate) fn load_inventory(common: &CommonArgs) -> Result<Inventory> {
    let extra = berth_deploy::inventory::extra_vars::parse_all(&common.extra_vars)?;
    Ok(Inventory::load_with_extra_vars(&common.inventory, &extra)?)
}

pub(crate) fn options(common: &CommonArgs) -> RunOptions {
    RunOptions {
        parallel: common.parallel.max(1),
        connect_timeout: common.connect_timeout,
        rolling: common.rolling,
        ..RunOptions::default()
    }
}

pub(crate) fn finish(
    printer: &Printer,
    report: &RunReport,
    what: &str,
    extra: Option<(&str, serde_json::Value)>,
) -> Result<()> {
    let extras = extra
        .map(|(key, value)| (key.to_string(), value))
        .into_iter()
        .collect();
    finish_with(printer, report, what, extras)
}

fn finish_with(
    printer: &Printer,
    report: &RunReport,
    what: &str,
    extras: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    if printer.json {
        let mut value = serde_json::to_value(report).context("cannot format the report")?;
        if let Some(object) = value.as_object_mut() {
            object.extend(extras);
        }
        let text = serde_json::to_string_pretty(&value).context("cannot format the report")?;
        println!("{text}");
    } else {
        printer.line(&report.recap());
    }
    if report.succeeded() {
        return Ok(());
    }
    let failed: Vec<&str> = report
        .hosts
        .iter()
        .filter(|h| !h.succeeded())
        .map(|h| h.host.as_str())
        .collect();
    bail!(
        "{what} failed on {} of {} host(s): {}",
        failed.len(),
        report.hosts.len(),
        failed.join(", ")
    )
}

/// Prints events as they come (plain lines, never interleaved mid-line), or nothing until
/// the end with `--json`.
pub(crate) struct Printer {
    json: bool,
    out: Mutex<()>,
}

impl Printer {
    pub(crate) fn new(json: bool) -> Printer {
        Printer {
            json,
            out: Mutex::new(()),
        }
    }

    pub(crate) fn line(&self, text: &str) {
        if self.json {
            return;
        }
        let _guard = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{}", text.trim_end());
        let _ = stdout.flush();
    }

    pub(crate) fn event(&self, event: Event<'_>) {
        match event {
            Event::Planned(plan) => {
                let mut text = plan.render();
                // The plan's own recap line is replaced by the run's recap at the end.
                if text.ends_with("\n\n") {
                    text.pop();
                }
                self.line(&text);
            }
            Event::Action { host, result } => self.line(&action_line(host, result)),
            Event::Finished(report) => {
                if report.unreachable {
                    self.line(&format!(
                        "HOST {} ({})\n  unreachable {}",
                        report.host,
                        report.endpoint,
                        report.error.as_deref().unwrap_or("")
                    ));
                } else if report.plan.is_none() {
                    if let Some(error) = &report.error {
                        self.line(&format!(
                            "HOST {} ({})\n  failed   {error}",
                            report.host, report.endpoint
                        ));
                    }
                }
            }
        }
    }
}

fn action_line(host: &str, result: &ActionResult) -> String {
    let status = match result.outcome {
        Outcome::Changed => "changed",
        Outcome::Failed => "FAILED",
        Outcome::Skipped => "skipped",
    };
    match &result.message {
        Some(message) => format!("{status}: [{host}] {}: {message}", result.action),
        None => format!("{status}: [{host}] {}", result.action),
    }
}
