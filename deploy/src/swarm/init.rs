//! `berth swarm init -i INV`: makes the inventory's hosts one Swarm, as the write-up's
//! "automating swarms" step does by hand.
//!
//! - The first host of group `managers` inits the swarm (unless it already leads one),
//!   advertising its `ansible_host` address; the other `managers` join as managers, the
//!   hosts of `workers` as workers, each with the token of its role, advertising its own
//!   `ansible_host`.
//! - Node labels come from the host variable `swarm_labels: {k: v}` (set or changed; labels
//!   the variable does not name are left alone). A host's role follows its group.
//! - Every host is read before anything changes: one already in another swarm (or a worker
//!   whose swarm is not the managers') is refused, naming it, and nothing is done. A
//!   re-run finds everything in place and changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use bollard::models::{
    JoinTokens, LocalNodeState, NodeSpecRoleEnum, SwarmInfo, SwarmInitRequest, SwarmJoinRequest,
};
use bollard::query_parameters::UpdateNodeOptions;
use serde::Serialize;
use serde_json::Value;

use crate::engine::{api_error, Engine};
use crate::inventory::{Host, Inventory};
use crate::swarm::MANAGERS_GROUP;

pub const WORKERS_GROUP: &str = "workers";
/// The host variable with a node's labels.
pub const LABELS_VAR: &str = "swarm_labels";
/// Swarm's management port.
const SWARM_PORT: u16 = 2377;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

/// What happened on one host.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub host: String,
    pub endpoint: String,
    pub role: Role,
    /// Changes made, in words.
    pub changed: Vec<String>,
    /// What was already as wanted.
    pub ok: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub cluster_id: Option<String>,
    pub hosts: Vec<NodeReport>,
}

impl InitReport {
    pub fn succeeded(&self) -> bool {
        self.hosts.iter().all(|h| h.error.is_none())
    }

    pub fn changed(&self) -> usize {
        self.hosts.iter().map(|h| h.changed.len()).sum()
    }

    /// The printed form: one block per host, then a recap.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for host in &self.hosts {
            out.push_str(&format!("HOST {} ({})\n", host.host, host.endpoint));
            if let Some(error) = &host.error {
                out.push_str(&format!("  failed   {error}\n"));
            }
            for line in &host.changed {
                out.push_str(&format!("  changed  {line}\n"));
            }
            for line in &host.ok {
                out.push_str(&format!("  ok       {line}\n"));
            }
        }
        out.push_str("RECAP\n");
        let width = self.hosts.iter().map(|h| h.host.len()).max().unwrap_or(0);
        for host in &self.hosts {
            out.push_str(&format!(
                "{:<width$} : ok={} changed={} failed={}\n",
                host.host,
                host.ok.len(),
                host.changed.len(),
                usize::from(host.error.is_some())
            ));
        }
        if self.succeeded() && self.changed() == 0 {
            out.push_str(&format!(
                "swarm {} already as the inventory says: nothing changed\n",
                self.cluster_id.as_deref().unwrap_or("?")
            ));
        }
        out
    }
}

/// One inventory host as swarm init sees it.
struct Member<'a> {
    host: &'a Host,
    role: Role,
    /// `ansible_host`: the address the node advertises to the others.
    address: String,
    labels: BTreeMap<String, String>,
    engine: Engine,
    info: SwarmInfo,
}

impl Member<'_> {
    fn state(&self) -> LocalNodeState {
        self.info
            .local_node_state
            .unwrap_or(LocalNodeState::INACTIVE)
    }

    fn node_id(&self) -> Option<&str> {
        self.info.node_id.as_deref().filter(|id| !id.is_empty())
    }
}

/// The hosts to bring into the swarm: managers first (the first one leads), then workers.
fn members(inventory: &Inventory) -> Result<Vec<(&Host, Role)>, String> {
    if inventory.group(MANAGERS_GROUP).is_none() {
        return Err(format!(
            "the inventory has no group `{MANAGERS_GROUP}`: its first host inits the swarm"
        ));
    }
    let managers = inventory
        .select(Some(MANAGERS_GROUP))
        .map_err(|e| e.to_string())?;
    if managers.is_empty() {
        return Err(format!("group `{MANAGERS_GROUP}` has no hosts"));
    }
    let mut out: Vec<(&Host, Role)> = managers.into_iter().map(|h| (h, Role::Manager)).collect();
    if inventory.group(WORKERS_GROUP).is_some() {
        for host in inventory
            .select(Some(WORKERS_GROUP))
            .map_err(|e| e.to_string())?
        {
            if !out.iter().any(|(h, _)| h.name == host.name) {
                out.push((host, Role::Worker));
            }
        }
    }
    Ok(out)
}

fn address_of(host: &Host) -> Result<String, String> {
    match host.vars.get("ansible_host") {
        Some(Value::String(address)) if !address.trim().is_empty() => {
            Ok(address.trim().to_string())
        }
        Some(other) => Err(format!(
            "host {}: ansible_host must be an address, found {other}",
            host.name
        )),
        None => Err(format!(
            "host {}: no ansible_host (the address it advertises to the swarm)",
            host.name
        )),
    }
}

fn labels_of(host: &Host) -> Result<BTreeMap<String, String>, String> {
    match host.vars.get(LABELS_VAR) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(key, value)| match value {
                Value::String(text) => Ok((key.clone(), text.clone())),
                Value::Number(n) => Ok((key.clone(), n.to_string())),
                Value::Bool(b) => Ok((key.clone(), b.to_string())),
                _ => Err(format!(
                    "host {}: {LABELS_VAR}.{key} must be text, a number or a boolean",
                    host.name
                )),
            })
            .collect(),
        Some(_) => Err(format!(
            "host {}: {LABELS_VAR} must be a mapping of label names to values",
            host.name
        )),
    }
}

/// Brings the inventory's hosts into one swarm. `Err` is a refusal before any change
/// (bad inventory, unreachable host, a host in another swarm); per-host failures after
/// changes began are in the report.
pub async fn init(inventory: &Inventory, connect_timeout: Duration) -> Result<InitReport, String> {
    // 1. Read every host first: nothing changes if any of them must be refused.
    let members_read = read_members(inventory, connect_timeout).await?;
    let (leader, others) = members_read
        .split_first()
        .ok_or_else(|| "no hosts to make a swarm of".to_string())?;
    let leader_cluster = managed_cluster(leader)?;
    let leader_nodes: Vec<String> = if leader_cluster.is_some() {
        leader
            .engine
            .docker()
            .list_nodes(None)
            .await
            .map_err(|e| api_error("listing the swarm's nodes", e))?
            .into_iter()
            .filter_map(|node| node.id)
            .collect()
    } else {
        Vec::new()
    };
    check_others(others, &leader_cluster, &leader_nodes)?;

    // 2. The leader inits, if it must; then everyone joins with the token of its role.
    let mut reports: Vec<NodeReport> = members_read
        .iter()
        .map(|m| NodeReport {
            host: m.host.name.clone(),
            endpoint: m.engine.endpoint().to_string(),
            role: m.role,
            changed: Vec::new(),
            ok: Vec::new(),
            error: None,
        })
        .collect();
    let leader_remote = format!("{}:{SWARM_PORT}", leader.address);
    let cluster_id = ensure_swarm(leader, leader_cluster, &leader_remote, &mut reports[0]).await?;
    let tokens = leader
        .engine
        .docker()
        .inspect_swarm()
        .await
        .map_err(|e| api_error("reading the swarm's join tokens", e))?
        .join_tokens
        .unwrap_or_default();
    let mut node_ids: Vec<Option<String>> = members_read
        .iter()
        .map(|m| m.node_id().map(str::to_string))
        .collect();
    if node_ids[0].is_none() {
        node_ids[0] = node_id_now(&leader.engine).await;
    }
    let joining = Joining {
        tokens: &tokens,
        cluster_id: &cluster_id,
        leader_remote: &leader_remote,
    };
    join_others(&members_read, &joining, &mut reports, &mut node_ids).await;

    // 3. Roles and labels, through the leader.
    settle_nodes(&members_read, &node_ids, &mut reports).await;
    Ok(InitReport {
        cluster_id: Some(cluster_id),
        hosts: reports,
    })
}

/// Connects to every member and reads its swarm state.
async fn read_members(
    inventory: &Inventory,
    connect_timeout: Duration,
) -> Result<Vec<Member<'_>>, String> {
    let mut members_read = Vec::new();
    for (host, role) in members(inventory)? {
        let address = address_of(host)?;
        let labels = labels_of(host)?;
        let engine = Engine::connect(&host.endpoint, connect_timeout)
            .await
            .map_err(|e| format!("host {}: {e}", host.name))?;
        let info = engine
            .docker()
            .info()
            .await
            .map_err(|e| api_error(&format!("host {}: reading its swarm state", host.name), e))?
            .swarm
            .unwrap_or_default();
        members_read.push(Member {
            host,
            role,
            address,
            labels,
            engine,
            info,
        });
    }
    Ok(members_read)
}

/// The swarm the leader already manages (`None`: it is in none yet); a worker or a node in
/// a broken state is refused.
fn managed_cluster(leader: &Member) -> Result<Option<String>, String> {
    Ok(match leader.state() {
        LocalNodeState::ACTIVE if leader.info.control_available != Some(true) => {
            return Err(format!(
                "host {} (first of `{MANAGERS_GROUP}`) is a worker of a swarm (managed at {}); it must be a manager",
                leader.host.name,
                remote_managers(&leader.info)
            ))
        }
        LocalNodeState::ACTIVE => leader.info.cluster.as_ref().and_then(|c| c.id.clone()),
        LocalNodeState::INACTIVE | LocalNodeState::EMPTY => None,
        other => {
            return Err(format!(
                "host {}: its swarm state is `{other}`{}; fix or leave it first",
                leader.host.name,
                leader
                    .info
                    .error
                    .as_deref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ))
        }
    })
}

/// The other members must be in no swarm yet, or in the leader's already.
fn check_others(
    others: &[Member],
    leader_cluster: &Option<String>,
    leader_nodes: &[String],
) -> Result<(), String> {
    for member in others {
        match member.state() {
            LocalNodeState::INACTIVE | LocalNodeState::EMPTY => {}
            LocalNodeState::ACTIVE => {
                let cluster = member.info.cluster.as_ref().and_then(|c| c.id.clone());
                let same = match (leader_cluster, &cluster) {
                    (Some(ours), Some(theirs)) => ours == theirs,
                    (Some(_), None) => member
                        .node_id()
                        .is_some_and(|id| leader_nodes.iter().any(|n| n == id)),
                    (None, _) => false,
                };
                if !same {
                    return Err(format!(
                        "host {} is already in another swarm ({}, managed at {}); leave it there first (`docker swarm leave`), nothing was changed",
                        member.host.name,
                        cluster
                            .map(|c| format!("cluster {c}"))
                            .unwrap_or_else(|| format!(
                                "node {}",
                                member.node_id().unwrap_or("?")
                            )),
                        remote_managers(&member.info)
                    ));
                }
            }
            other => {
                return Err(format!(
                    "host {}: its swarm state is `{other}`; fix or leave it first",
                    member.host.name
                ))
            }
        }
    }

    Ok(())
}

/// The leader's swarm id: the one it manages, or a new one it inits.
async fn ensure_swarm(
    leader: &Member<'_>,
    leader_cluster: Option<String>,
    leader_remote: &str,
    report: &mut NodeReport,
) -> Result<String, String> {
    Ok(match leader_cluster {
        Some(id) => {
            report.ok.push(format!("manager of swarm {id}"));
            id
        }
        None => {
            leader
                .engine
                .docker()
                .init_swarm(SwarmInitRequest {
                    listen_addr: Some(format!("0.0.0.0:{SWARM_PORT}")),
                    advertise_addr: Some(leader_remote.to_string()),
                    ..Default::default()
                })
                .await
                .map_err(|e| api_error(&format!("host {}: swarm init", leader.host.name), e))?;
            report
                .changed
                .push(format!("swarm init (advertises {leader_remote})"));
            let info = leader
                .engine
                .docker()
                .info()
                .await
                .map_err(|e| api_error("reading the new swarm", e))?;
            info.swarm
                .and_then(|s| s.cluster)
                .and_then(|c| c.id)
                .unwrap_or_default()
        }
    })
}

/// What a member needs to join the leader's swarm.
struct Joining<'a> {
    tokens: &'a JoinTokens,
    cluster_id: &'a str,
    leader_remote: &'a str,
}

/// Every member but the leader joins (unless it is in the swarm already), with the token
/// of its role; a failed join is that member's error.
async fn join_others(
    members_read: &[Member<'_>],
    joining: &Joining<'_>,
    reports: &mut [NodeReport],
    node_ids: &mut [Option<String>],
) {
    let Joining {
        tokens,
        cluster_id,
        leader_remote,
    } = joining;
    for (index, member) in members_read.iter().enumerate().skip(1) {
        let report = &mut reports[index];
        if member.state() == LocalNodeState::ACTIVE {
            report.ok.push(format!("in swarm {cluster_id}"));
            continue;
        }
        let token = match member.role {
            Role::Manager => tokens.manager.clone(),
            Role::Worker => tokens.worker.clone(),
        };
        let joined = member
            .engine
            .docker()
            .join_swarm(SwarmJoinRequest {
                listen_addr: Some(format!("0.0.0.0:{SWARM_PORT}")),
                advertise_addr: Some(format!("{}:{SWARM_PORT}", member.address)),
                remote_addrs: Some(vec![leader_remote.to_string()]),
                join_token: token,
                ..Default::default()
            })
            .await;
        match joined {
            Ok(()) => {
                report.changed.push(format!(
                    "joined swarm {cluster_id} as {} (via {leader_remote})",
                    role_name(member.role)
                ));
                node_ids[index] = node_id_now(&member.engine).await;
            }
            Err(e) => report.error = Some(api_error("swarm join", e).to_string()),
        }
    }
}

/// Roles and labels of every member that joined, set through the leader.
async fn settle_nodes(
    members_read: &[Member<'_>],
    node_ids: &[Option<String>],
    reports: &mut [NodeReport],
) {
    let leader = &members_read[0];
    for (index, member) in members_read.iter().enumerate() {
        if reports[index].error.is_some() {
            continue;
        }
        let Some(node_id) = &node_ids[index] else {
            reports[index].error = Some("its swarm node id is unknown".to_string());
            continue;
        };
        match settle_node(&leader.engine, node_id, member).await {
            Ok((changed, ok)) => {
                reports[index].changed.extend(changed);
                reports[index].ok.extend(ok);
            }
            Err(error) => reports[index].error = Some(error),
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Manager => "manager",
        Role::Worker => "worker",
    }
}

fn remote_managers(info: &SwarmInfo) -> String {
    let addresses: Vec<&str> = info
        .remote_managers
        .iter()
        .flatten()
        .filter_map(|peer| peer.addr.as_deref())
        .collect();
    if addresses.is_empty() {
        info.node_addr.clone().unwrap_or_else(|| "?".to_string())
    } else {
        addresses.join(", ")
    }
}

async fn node_id_now(engine: &Engine) -> Option<String> {
    engine
        .docker()
        .info()
        .await
        .ok()
        .and_then(|info| info.swarm)
        .and_then(|swarm| swarm.node_id)
        .filter(|id| !id.is_empty())
}

/// Sets the node's role and `swarm_labels` where they differ; returns (changed, ok) lines.
async fn settle_node(
    leader: &Engine,
    node_id: &str,
    member: &Member<'_>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let node = leader
        .docker()
        .inspect_node(node_id)
        .await
        .map_err(|e| api_error(&format!("reading node {node_id}"), e))?;
    let mut spec = node.spec.unwrap_or_default();
    let mut changed = Vec::new();
    let mut ok = Vec::new();
    let wanted_role = match member.role {
        Role::Manager => NodeSpecRoleEnum::MANAGER,
        Role::Worker => NodeSpecRoleEnum::WORKER,
    };
    if spec.role != Some(wanted_role) {
        changed.push(format!("role {}", role_name(member.role)));
        spec.role = Some(wanted_role);
    }
    let labels = spec.labels.get_or_insert_with(Default::default);
    let mut set = Vec::new();
    for (key, value) in &member.labels {
        if labels.get(key) != Some(value) {
            labels.insert(key.clone(), value.clone());
            set.push(format!("{key}={value}"));
        }
    }
    if !set.is_empty() {
        changed.push(format!("node labels {}", set.join(" ")));
    } else if !member.labels.is_empty() {
        ok.push(format!(
            "node labels {}",
            member
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if changed.is_empty() {
        return Ok((changed, ok));
    }
    let version = node
        .version
        .and_then(|v| v.index)
        .and_then(|i| i64::try_from(i).ok())
        .unwrap_or_default();
    leader
        .docker()
        .update_node(node_id, spec, UpdateNodeOptions { version })
        .await
        .map_err(|e| api_error(&format!("updating node {node_id}"), e))?;
    Ok((changed, ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn inventory(text: &str) -> (tempfile::TempDir, Inventory) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts.yml");
        std::fs::write(&path, text).unwrap();
        let inventory = Inventory::load(Path::new(&path)).unwrap();
        (dir, inventory)
    }

    #[test]
    fn managers_lead_then_workers_and_labels_are_read() {
        let (_dir, inv) = inventory(
            "all:\n  children:\n    managers:\n      hosts:\n        m1: { ansible_host: 10.0.0.1, swarm_labels: { zone: a, tier: 1 } }\n    workers:\n      hosts:\n        w1: { ansible_host: 10.0.0.2 }\n        m1:\n",
        );
        let found = members(&inv).unwrap();
        let names: Vec<(&str, Role)> = found.iter().map(|(h, r)| (h.name.as_str(), *r)).collect();
        assert_eq!(names, [("m1", Role::Manager), ("w1", Role::Worker)]);
        assert_eq!(address_of(found[0].0).unwrap(), "10.0.0.1");
        let labels = labels_of(found[0].0).unwrap();
        assert_eq!(labels["zone"], "a");
        assert_eq!(labels["tier"], "1");
    }

    #[test]
    fn missing_managers_or_address_is_an_error() {
        let (_dir, inv) = inventory("all:\n  hosts:\n    h1:\n");
        assert!(members(&inv).unwrap_err().contains("no group `managers`"));
        let (_dir, inv) = inventory(
            "all:\n  children:\n    managers:\n      hosts:\n        m1: { swarm_labels: [a] }\n",
        );
        let host = inv.host("m1").unwrap();
        assert!(address_of(host).unwrap_err().contains("no ansible_host"));
        assert!(labels_of(host).unwrap_err().contains("must be a mapping"));
    }
}
