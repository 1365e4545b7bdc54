//! Desired vs actual state → a plan: per host, the actions to take and why, in the order to
//! take them. Pure data: printed for `--check`, serialised for `--json`, executed by the
//! applier later. Nothing here talks to Docker.
//!
//! Rules:
//! - Order per host: pulls first (a missing image fails before anything is disturbed), then
//!   networks, then containers (in app order), removals last (containers, then networks), so a
//!   failed apply leaves the old release running as long as possible.
//! - A container is unchanged when its `berth.config-hash` label equals the desired hash and
//!   it is running. A changed one is explained by diffing its stored `berth.config` label
//!   against the desired config. Env values are never printed (they are often secrets): only
//!   which variable changed.
//! - A network whose settings differ is recreated only when every container attached to it
//!   belongs to this app; otherwise that host gets an error and no actions, because removing
//!   it would cut off containers Berth does not manage.
//! - Replacement is start-first (new container up and healthy before the old one goes) unless
//!   both could not run at once: the same published host port or the same fixed address, or
//!   the old one must leave a network being recreated. Then it is stop-first.
//! - Only this app's containers and networks (label `berth.app`) are ever removed; a
//!   same-named container of another app is an error, never a takeover.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use serde::Serialize;

use crate::actual::{ActualContainer, ActualHost, ActualNetwork, ContainerState};
use crate::app::Port;
use crate::desired::{ContainerSpec, DesiredContainer, DesiredHost, DesiredNetwork};
use crate::labels;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub app: String,
    pub hosts: Vec<HostPlan>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub endpoint: String,
    pub actions: Vec<Action>,
    pub unchanged: Vec<Unchanged>,
    /// Things skipped on purpose that the user should know about.
    pub warnings: Vec<String>,
    /// Why nothing can be done on this host (unreachable, a conflict); other hosts go on.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplaceStrategy {
    /// Create and start the new container (under a temporary name), wait for health, then
    /// remove the old one and rename the new: no downtime.
    StartFirst,
    /// Stop the old container first (kept, not removed, until the new one is healthy, so it
    /// can be restarted on rollback).
    StopFirst,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    PullImage {
        image: String,
        reason: String,
    },
    CreateVolume {
        volume: crate::storage::DesiredVolume,
        reason: String,
    },
    /// Only `berth down --volumes` plans this: a deploy never removes a volume.
    RemoveVolume {
        name: String,
        reason: String,
    },
    CreateNetwork {
        network: DesiredNetwork,
        reason: String,
    },
    /// Stop and disconnect `detach` (this app's containers, all replaced later in the plan),
    /// remove the network, create it anew.
    RecreateNetwork {
        network: DesiredNetwork,
        detach: Vec<String>,
        reasons: Vec<String>,
    },
    CreateContainer {
        container: DesiredContainer,
        reason: String,
    },
    ReplaceContainer {
        container: DesiredContainer,
        old_id: String,
        strategy: ReplaceStrategy,
        strategy_reason: String,
        reasons: Vec<String>,
    },
    StartContainer {
        name: String,
        id: String,
        reason: String,
    },
    RemoveContainer {
        name: String,
        id: String,
        reason: String,
    },
    RemoveNetwork {
        name: String,
        id: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unchanged {
    pub kind: String,
    pub name: String,
}

impl HostPlan {
    pub fn ok(&self) -> usize {
        self.unchanged.len()
    }

    pub fn changed(&self) -> usize {
        self.actions.len()
    }

    pub fn failed(&self) -> usize {
        usize::from(self.error.is_some())
    }
}

impl Plan {
    /// True when no host needs any action and none failed: a re-run changes nothing.
    pub fn is_noop(&self) -> bool {
        self.hosts
            .iter()
            .all(|host| host.actions.is_empty() && host.error.is_none())
    }

    /// The plan as a human reads it: one block per host, one line per action with its
    /// reasons, then a recap in Ansible's `ok=N changed=N failed=N` form.
    pub fn render(&self) -> String {
        let mut out: String = self.hosts.iter().map(HostPlan::render).collect();
        let _ = writeln!(out, "RECAP");
        let width = self.hosts.iter().map(|h| h.host.len()).max().unwrap_or(0);
        for host in &self.hosts {
            let _ = writeln!(
                out,
                "{:<width$} : ok={} changed={} failed={}",
                host.host,
                host.ok(),
                host.changed(),
                host.failed()
            );
        }
        out
    }
}

impl HostPlan {
    /// One host's block of the printed plan (hosts finish at different times; each block
    /// can be printed as soon as its host is planned).
    pub fn render(&self) -> String {
        let mut out = format!("HOST {} ({})\n", self.host, self.endpoint);
        render_plan_lines(
            &mut out,
            self.error.as_deref(),
            self.actions.iter().map(|action| {
                let (verb, what, why) = describe(action);
                (verb.to_string(), what, why)
            }),
            &self.unchanged,
            &self.warnings,
        );
        out.push('\n');
        out
    }
}

/// An action in a few words (`replace container app_web_1 (start-first)`), as the plan
/// prints it without its reasons.
pub fn action_text(action: &Action) -> String {
    let (verb, what, _) = describe(action);
    format!("{verb} {what}")
}

/// The body of a printed plan, shared by hosts and swarms: the error, one line per action
/// (`verb what`, then the reason indented), `ok` per unchanged object, then the warnings.
pub(crate) fn render_plan_lines(
    out: &mut String,
    error: Option<&str>,
    actions: impl Iterator<Item = (String, String, String)>,
    unchanged: &[Unchanged],
    warnings: &[String],
) {
    if let Some(error) = error {
        let _ = writeln!(out, "  failed   {error}");
    }
    for (verb, what, why) in actions {
        let _ = writeln!(out, "  {verb:<8} {what}");
        if !why.is_empty() {
            let _ = writeln!(out, "           {why}");
        }
    }
    for unchanged in unchanged {
        let _ = writeln!(out, "  ok       {} {}", unchanged.kind, unchanged.name);
    }
    for warning in warnings {
        let _ = writeln!(out, "  warning  {warning}");
    }
}

fn describe(action: &Action) -> (&'static str, String, String) {
    match action {
        Action::PullImage { image, reason } => ("pull", format!("image {image}"), reason.clone()),
        Action::CreateVolume { volume, reason } => (
            "create",
            format!(
                "volume {} ({})",
                volume.name,
                volume.driver.as_deref().unwrap_or("local")
            ),
            reason.clone(),
        ),
        Action::RemoveVolume { name, reason } => {
            ("remove", format!("volume {name}"), reason.clone())
        }
        Action::CreateNetwork { network, reason } => (
            "create",
            format!("network {} ({})", network.name, network_summary(network)),
            reason.clone(),
        ),
        Action::RecreateNetwork {
            network,
            reasons,
            detach,
        } => {
            let mut why = reasons.join("; ");
            if !detach.is_empty() {
                let _ = write!(why, "; detaches {}", detach.join(", "));
            }
            (
                "recreate",
                format!("network {} ({})", network.name, network_summary(network)),
                why,
            )
        }
        Action::CreateContainer { container, reason } => (
            "create",
            format!("container {}", container.name),
            reason.clone(),
        ),
        Action::ReplaceContainer {
            container,
            strategy,
            strategy_reason,
            reasons,
            ..
        } => {
            let strategy = match strategy {
                ReplaceStrategy::StartFirst => "start-first".to_string(),
                ReplaceStrategy::StopFirst => format!("stop-first: {strategy_reason}"),
            };
            (
                "replace",
                format!("container {} ({strategy})", container.name),
                reasons.join("; "),
            )
        }
        Action::StartContainer { name, reason, .. } => {
            ("start", format!("container {name}"), reason.clone())
        }
        Action::RemoveContainer { name, reason, .. } => {
            ("remove", format!("container {name}"), reason.clone())
        }
        Action::RemoveNetwork { name, reason, .. } => {
            ("remove", format!("network {name}"), reason.clone())
        }
    }
}

fn network_summary(network: &DesiredNetwork) -> String {
    let mut parts = vec![network.driver.as_str().to_string()];
    if let Some(subnet) = network.subnet {
        parts.push(subnet.to_string());
    }
    if let Some(gateway) = network.gateway {
        parts.push(format!("gateway {gateway}"));
    }
    if let Some(range) = network.ip_range {
        parts.push(format!("ip_range {range}"));
    }
    parts.join(" ")
}

/// Plans every desired host. `actual` holds what the reader found per host, or why it could
/// not read it (that host then fails alone).
pub fn plan(
    app: &str,
    desired: &[DesiredHost],
    actual: &BTreeMap<String, Result<ActualHost, String>>,
) -> Plan {
    let hosts = desired
        .iter()
        .map(|host| match actual.get(&host.host) {
            Some(Ok(actual)) => plan_host(host, actual),
            Some(Err(error)) => failed_host(host, error.clone()),
            None => failed_host(host, "actual state was not read".to_string()),
        })
        .collect();
    Plan {
        app: app.to_string(),
        hosts,
    }
}

fn failed_host(desired: &DesiredHost, error: String) -> HostPlan {
    HostPlan {
        host: desired.host.clone(),
        endpoint: desired.endpoint.to_string(),
        actions: Vec::new(),
        unchanged: Vec::new(),
        warnings: Vec::new(),
        error: Some(error),
    }
}

fn network_name(action: &Action) -> &str {
    match action {
        Action::CreateNetwork { network, .. } | Action::RecreateNetwork { network, .. } => {
            &network.name
        }
        _ => "",
    }
}

fn state_name(state: ContainerState) -> &'static str {
    match state {
        ContainerState::Created => "created but not started",
        ContainerState::Running => "running",
        ContainerState::Paused => "paused",
        ContainerState::Restarting => "restarting",
        ContainerState::Removing => "being removed",
        ContainerState::Exited => "exited",
        ContainerState::Dead => "dead",
    }
}

pub(crate) fn stored_spec(container: &ActualContainer) -> Result<ContainerSpec, String> {
    match container.labels.get(labels::CONFIG) {
        None => Err(format!("created without Berth's {} label", labels::CONFIG)),
        Some(json) => serde_json::from_str(json).map_err(|_| {
            format!(
                "unreadable {} label (another Berth version?)",
                labels::CONFIG
            )
        }),
    }
}

fn image_present(actual: &ActualHost, reference: &str) -> bool {
    match reference.split_once('@') {
        // The digest under this repository: the same manifest pulled from another
        // repository or registry does not let Docker create `repo@digest`.
        Some((repo, digest)) => {
            let wanted = format!("{}@{digest}", familiar(&repository_of(repo)));
            actual.images.iter().any(|image| {
                image.repo_digests.iter().any(|d| match d.rsplit_once('@') {
                    Some((r, dg)) => dg == digest && format!("{}@{dg}", familiar(r)) == wanted,
                    None => false,
                })
            })
        }
        None => {
            let with_tag = normalise_tag(reference);
            actual.images.iter().any(|image| {
                image
                    .repo_tags
                    .iter()
                    .any(|tag| normalise_tag(tag) == with_tag)
            })
        }
    }
}

/// The repository of a reference without its tag (`reg:5000/app:v1` → `reg:5000/app`).
pub(crate) fn repository_of(reference: &str) -> String {
    let repo = reference.split('@').next().unwrap_or(reference);
    let (head, last) = match repo.rsplit_once('/') {
        Some((head, last)) => (Some(head), last),
        None => (None, repo),
    };
    let last = last.split(':').next().unwrap_or(last);
    match head {
        Some(head) => format!("{head}/{last}"),
        None => last.to_string(),
    }
}

/// Docker Hub's long and short spellings as one (`docker.io/library/x`, `library/x`, `x`).
fn familiar(repository: &str) -> &str {
    let r = repository.strip_prefix("docker.io/").unwrap_or(repository);
    r.strip_prefix("library/").unwrap_or(r)
}

/// `reg/app` means `reg/app:latest`; a `:` in the last path segment is a tag, an earlier
/// one a registry port.
fn normalise_tag(reference: &str) -> String {
    let last_segment = reference.rsplit('/').next().unwrap_or(reference);
    if last_segment.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

/// The addressing of a network, as the app wants it or as Docker reports it; bridge and
/// overlay networks (container and swarm mode) compare it the same way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Addressing {
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
}

/// Why a network's addressing differs, one reason per field.
pub(crate) fn addressing_differences(want: Addressing, have: Addressing) -> Vec<String> {
    let mut reasons = Vec::new();
    let show = |value: Option<String>| value.unwrap_or_else(|| "(none)".to_string());
    // Unset subnet/gateway means "Docker picks": whatever it picked is fine.
    if want.subnet.is_some() && want.subnet != have.subnet {
        reasons.push(format!(
            "subnet {} → {}",
            show(have.subnet.map(|s| s.to_string())),
            show(want.subnet.map(|s| s.to_string()))
        ));
    }
    if want.gateway.is_some() && want.gateway != have.gateway {
        reasons.push(format!(
            "gateway {} → {}",
            show(have.gateway.map(|g| g.to_string())),
            show(want.gateway.map(|g| g.to_string()))
        ));
    }
    if want.ip_range != have.ip_range {
        reasons.push(format!(
            "ip_range {} → {}",
            show(have.ip_range.map(|r| r.to_string())),
            show(want.ip_range.map(|r| r.to_string()))
        ));
    }
    if want.internal != have.internal {
        reasons.push(format!("internal {} → {}", have.internal, want.internal));
    }
    reasons
}

fn network_differences(desired: &DesiredNetwork, actual: &ActualNetwork) -> Vec<String> {
    let mut reasons = Vec::new();
    if desired.driver.as_str() != actual.driver {
        reasons.push(format!(
            "driver {} → {}",
            actual.driver,
            desired.driver.as_str()
        ));
    }
    reasons.extend(addressing_differences(
        Addressing {
            subnet: desired.subnet,
            gateway: desired.gateway,
            ip_range: desired.ip_range,
            internal: desired.internal,
        },
        Addressing {
            subnet: actual.subnet,
            gateway: actual.gateway,
            ip_range: actual.ip_range,
            internal: actual.internal,
        },
    ));
    // Docker adds options of its own; only the ones the app sets are compared.
    for (key, value) in &desired.options {
        match actual.options.get(key) {
            None => reasons.push(format!("option {key} added")),
            Some(current) if current != value => {
                reasons.push(format!("option {key} {current} → {value}"))
            }
            Some(_) => {}
        }
    }
    reasons
}

/// Field-by-field explanation of a container config change.
fn spec_differences(old: &ContainerSpec, new: &ContainerSpec) -> Vec<String> {
    let mut reasons = Vec::new();
    if old.image != new.image {
        reasons.push(format!("image {} → {}", old.image, new.image));
    }
    if old.image_digest != new.image_digest {
        let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "(unpinned)".to_string());
        reasons.push(format!(
            "image changed {} → {}",
            show(&old.image_digest),
            show(&new.image_digest)
        ));
    }
    let words = |w: &Option<Vec<String>>| {
        w.as_ref()
            .map(|w| format!("{w:?}"))
            .unwrap_or_else(|| "(image default)".to_string())
    };
    if old.command != new.command {
        reasons.push(format!(
            "command {} → {}",
            words(&old.command),
            words(&new.command)
        ));
    }
    if old.entrypoint != new.entrypoint {
        reasons.push(format!(
            "entrypoint {} → {}",
            words(&old.entrypoint),
            words(&new.entrypoint)
        ));
    }
    map_differences("env", &old.env, &new.env, false, &mut reasons);
    reasons.extend(volumes::mount_differences(old, new));
    map_differences("label", &old.labels, &new.labels, true, &mut reasons);
    if old.ports != new.ports {
        let list = |ports: &[Port]| {
            if ports.is_empty() {
                "(none)".to_string()
            } else {
                ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        reasons.push(format!("ports {} → {}", list(&old.ports), list(&new.ports)));
    }
    for (name, attachment) in &new.networks {
        match old.networks.get(name) {
            None => reasons.push(format!("network {name} attached")),
            Some(before) if before.ipv4_address != attachment.ipv4_address => {
                let show = |a: Option<std::net::Ipv4Addr>| {
                    a.map(|a| a.to_string())
                        .unwrap_or_else(|| "(dynamic)".to_string())
                };
                reasons.push(format!(
                    "network {name} address {} → {}",
                    show(before.ipv4_address),
                    show(attachment.ipv4_address)
                ));
            }
            Some(before) if before.aliases != attachment.aliases => {
                reasons.push(format!("network {name} aliases changed"))
            }
            Some(_) => {}
        }
    }
    for name in old
        .networks
        .keys()
        .filter(|name| !new.networks.contains_key(*name))
    {
        reasons.push(format!("network {name} detached"));
    }
    if old.restart != new.restart {
        reasons.push(format!(
            "restart {} → {}",
            restart_text(&old.restart),
            restart_text(&new.restart)
        ));
    }
    if old.nano_cpus != new.nano_cpus {
        let show = |n: Option<u64>| {
            n.map(|n| format!("{}", n as f64 / 1e9))
                .unwrap_or_else(|| "(unlimited)".to_string())
        };
        reasons.push(format!(
            "cpus {} → {}",
            show(old.nano_cpus),
            show(new.nano_cpus)
        ));
    }
    if old.memory != new.memory {
        let show = |m: Option<u64>| {
            m.map(human_bytes)
                .unwrap_or_else(|| "(unlimited)".to_string())
        };
        reasons.push(format!(
            "memory {} → {}",
            show(old.memory),
            show(new.memory)
        ));
    }
    if old.healthcheck != new.healthcheck {
        reasons.push("healthcheck changed".to_string());
    }
    if old.stop_signal != new.stop_signal {
        reasons.push("stop_signal changed".to_string());
    }
    if old.stop_grace_period_s != new.stop_grace_period_s {
        reasons.push("stop_grace_period changed".to_string());
    }
    for option in old.runtime.differences(&new.runtime) {
        reasons.push(format!("{option} changed"));
    }
    reasons
}

fn map_differences(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    show_values: bool,
    reasons: &mut Vec<String>,
) {
    for (key, value) in new {
        match old.get(key) {
            None => reasons.push(format!("{what} {key} added")),
            Some(before) if before != value && show_values => {
                reasons.push(format!("{what} {key} {before} → {value}"))
            }
            Some(before) if before != value => reasons.push(format!("{what} {key} changed")),
            Some(_) => {}
        }
    }
    for key in old.keys().filter(|key| !new.contains_key(*key)) {
        reasons.push(format!("{what} {key} removed"));
    }
}

fn restart_text(policy: &crate::app::RestartPolicy) -> String {
    match policy.max_retries {
        Some(retries) => format!("{}:{retries}", policy.name),
        None if policy.name.is_empty() => "no".to_string(),
        None => policy.name.clone(),
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}b")
}

/// Start-first needs the old and new container to coexist: no shared published host port,
/// no shared fixed address. Without the old config (no label) we cannot know, so any
/// published port or fixed address means stop-first.
fn choose_strategy(old: Option<&ContainerSpec>, new: &ContainerSpec) -> (ReplaceStrategy, String) {
    let fixed_addresses = |spec: &ContainerSpec| -> Vec<(String, std::net::Ipv4Addr)> {
        spec.networks
            .iter()
            .filter_map(|(name, a)| a.ipv4_address.map(|ip| (name.clone(), ip)))
            .collect()
    };
    let Some(old) = old else {
        if let Some(port) = new.ports.iter().find(|p| p.published.is_some()) {
            return (
                ReplaceStrategy::StopFirst,
                format!("publishes {port} and the old container's ports are unknown"),
            );
        }
        if let Some((network, ip)) = fixed_addresses(new).first() {
            return (
                ReplaceStrategy::StopFirst,
                format!(
                    "fixed address {ip} on {network} and the old container's addresses are unknown"
                ),
            );
        }
        return (ReplaceStrategy::StartFirst, String::new());
    };
    for port in new.ports.iter().filter(|p| p.published.is_some()) {
        let clash = old.ports.iter().any(|o| {
            o.published == port.published
                && o.protocol == port.protocol
                && crate::desired::host_ips_overlap(o.host_ip, port.host_ip)
        });
        if clash {
            return (
                ReplaceStrategy::StopFirst,
                format!(
                    "host port {}/{} is published by both",
                    port.published.unwrap_or_default(),
                    port.protocol.as_str()
                ),
            );
        }
    }
    let old_addresses = fixed_addresses(old);
    for (network, ip) in fixed_addresses(new) {
        if old_addresses.iter().any(|(n, i)| *n == network && *i == ip) {
            return (
                ReplaceStrategy::StopFirst,
                format!("both need address {ip} on {network}"),
            );
        }
    }
    (ReplaceStrategy::StartFirst, String::new())
}

pub(crate) mod down;
mod host;
pub use host::plan_host;
pub(crate) mod volumes;

#[cfg(test)]
mod tests;
