//! What is on the swarm (services and networks of the app), and the plan that turns it
//! into the desired state, with a reason for every action.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use serde_json::Value;

use super::{SwarmDesired, SwarmNetwork, SwarmService, SwarmSpec};
use crate::labels;
use crate::plan::Unchanged;

/// A service on the swarm, as planning needs it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ActualService {
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl ActualService {
    pub fn app(&self) -> Option<&str> {
        self.labels.get(labels::APP).map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ActualSwarmNetwork {
    pub id: String,
    pub name: String,
    pub driver: String,
    pub subnet: Option<Ipv4Net>,
    pub gateway: Option<Ipv4Addr>,
    pub ip_range: Option<Ipv4Net>,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct SwarmActual {
    pub services: Vec<ActualService>,
    pub networks: Vec<ActualSwarmNetwork>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SwarmAction {
    CreateNetwork {
        network: SwarmNetwork,
        reason: String,
    },
    CreateService {
        service: SwarmService,
        reason: String,
    },
    UpdateService {
        service: SwarmService,
        id: String,
        /// The config being replaced (kept on the service for `rollback --swarm`).
        previous_config: Option<String>,
        /// `None` = start-first; else why stop-first.
        stop_first: Option<String>,
        reasons: Vec<String>,
    },
    RemoveService {
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwarmPlan {
    pub manager: String,
    pub endpoint: String,
    pub actions: Vec<SwarmAction>,
    pub unchanged: Vec<Unchanged>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

impl SwarmAction {
    /// The action in a few words (`update service shop_web (start-first)`).
    pub fn text(&self) -> String {
        describe(self).0
    }
}

fn describe(action: &SwarmAction) -> (String, String) {
    match action {
        SwarmAction::CreateNetwork { network, reason } => {
            let mut parts = vec!["overlay".to_string()];
            if let Some(subnet) = network.subnet {
                parts.push(subnet.to_string());
            }
            if let Some(gateway) = network.gateway {
                parts.push(format!("gateway {gateway}"));
            }
            if let Some(range) = network.ip_range {
                parts.push(format!("ip_range {range}"));
            }
            (
                format!("create network {} ({})", network.name, parts.join(" ")),
                reason.clone(),
            )
        }
        SwarmAction::CreateService { service, reason } => (
            format!(
                "create service {} (replicas {})",
                service.name, service.spec.replicas
            ),
            reason.clone(),
        ),
        SwarmAction::UpdateService {
            service,
            stop_first,
            reasons,
            ..
        } => (
            format!(
                "update service {} ({})",
                service.name,
                match stop_first {
                    None => "start-first".to_string(),
                    Some(why) => format!("stop-first: {why}"),
                }
            ),
            reasons.join("; "),
        ),
        SwarmAction::RemoveService { name, reason, .. } => {
            (format!("remove service {name}"), reason.clone())
        }
        SwarmAction::RemoveNetwork { name, reason, .. } => {
            (format!("remove network {name}"), reason.clone())
        }
    }
}

impl SwarmPlan {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "SWARM {} ({})", self.manager, self.endpoint);
        crate::plan::render_plan_lines(
            &mut out,
            self.error.as_deref(),
            self.actions.iter().map(|action| {
                let (what, why) = describe(action);
                let (verb, rest) = what.split_once(' ').unwrap_or((&what, ""));
                (verb.to_string(), rest.to_string(), why)
            }),
            &self.unchanged,
            &self.warnings,
        );
        out
    }
}

/// Desired vs actual → plan. Order: networks, services (app order), service removals,
/// network removals, so a failure leaves the old release running as long as possible.
pub fn plan_swarm(desired: &SwarmDesired, actual: &SwarmActual) -> SwarmPlan {
    let mut plan = SwarmPlan {
        manager: desired.manager.clone(),
        endpoint: desired.endpoint.to_string(),
        actions: Vec::new(),
        unchanged: Vec::new(),
        warnings: desired.warnings.clone(),
        error: None,
    };
    let mut errors = Vec::new();

    for network in &desired.networks {
        match actual.networks.iter().find(|n| n.name == network.name) {
            None => plan.actions.push(SwarmAction::CreateNetwork {
                network: network.clone(),
                reason: "missing".into(),
            }),
            Some(found) if found.labels.get(labels::APP) != Some(&desired.app) => {
                errors.push(format!(
                    "network {} exists and does not belong to app {} (label berth.app)",
                    network.name, desired.app
                ));
            }
            Some(found) => {
                let differences = network_differences(network, found);
                if differences.is_empty() {
                    plan.unchanged.push(Unchanged {
                        kind: "network".into(),
                        name: network.name.clone(),
                    });
                } else {
                    errors.push(format!(
                        "network {} differs ({}); Swarm cannot change a network in use: remove the app's services and the network (docker service rm, docker network rm), then deploy again",
                        network.name,
                        differences.join(", ")
                    ));
                }
            }
        }
    }

    for service in &desired.services {
        match actual.services.iter().find(|s| s.name == service.name) {
            None => plan.actions.push(SwarmAction::CreateService {
                service: service.clone(),
                reason: "missing".into(),
            }),
            Some(found) if found.app() != Some(desired.app.as_str()) => {
                errors.push(format!(
                    "service {} exists and does not belong to app {} (label berth.app)",
                    service.name, desired.app
                ));
            }
            Some(found) => {
                if found.labels.get(labels::CONFIG_HASH) == Some(&service.config_hash) {
                    plan.unchanged.push(Unchanged {
                        kind: "service".into(),
                        name: service.name.clone(),
                    });
                } else {
                    let stored = found.labels.get(labels::CONFIG);
                    plan.actions.push(SwarmAction::UpdateService {
                        service: service.clone(),
                        id: found.id.clone(),
                        previous_config: stored.cloned(),
                        stop_first: service.spec.needs_stop_first(),
                        reasons: spec_differences(stored, &service.spec),
                    });
                }
            }
        }
    }

    let wanted: BTreeSet<&str> = desired.services.iter().map(|s| s.name.as_str()).collect();
    for found in &actual.services {
        if found.app() == Some(desired.app.as_str()) && !wanted.contains(found.name.as_str()) {
            plan.actions.push(SwarmAction::RemoveService {
                name: found.name.clone(),
                id: found.id.clone(),
                reason: "no longer in the app file".into(),
            });
        }
    }
    let wanted: BTreeSet<&str> = desired.networks.iter().map(|n| n.name.as_str()).collect();
    for found in &actual.networks {
        if found.labels.get(labels::APP) == Some(&desired.app)
            && found.driver == "overlay"
            && !wanted.contains(found.name.as_str())
        {
            plan.actions.push(SwarmAction::RemoveNetwork {
                name: found.name.clone(),
                id: found.id.clone(),
                reason: "no longer used by the app".into(),
            });
        }
    }

    if !errors.is_empty() {
        plan.actions.clear();
        plan.error = Some(errors.join("; "));
    }
    plan
}

fn network_differences(desired: &SwarmNetwork, actual: &ActualSwarmNetwork) -> Vec<String> {
    let mut out = Vec::new();
    if actual.driver != "overlay" {
        out.push(format!(
            "driver {} (a container-mode network of the same name?), want overlay",
            actual.driver
        ));
    }
    out.extend(crate::plan::addressing_differences(
        crate::plan::Addressing {
            subnet: desired.subnet,
            gateway: desired.gateway,
            ip_range: desired.ip_range,
            internal: desired.internal,
        },
        crate::plan::Addressing {
            subnet: actual.subnet,
            gateway: actual.gateway,
            ip_range: actual.ip_range,
            internal: actual.internal,
        },
    ));
    if !actual.attachable {
        out.push("not attachable".into());
    }
    out
}

/// Why a service changes, field by field, from its stored config. Env values are never
/// shown (often secrets), only the names of changed variables.
pub fn spec_differences(stored: Option<&String>, desired: &SwarmSpec) -> Vec<String> {
    let Some(old) = stored.and_then(|text| serde_json::from_str::<Value>(text).ok()) else {
        return vec![
            "created by another Berth version or by hand (no readable berth.config)".into(),
        ];
    };
    let Ok(Value::Object(new)) = serde_json::to_value(desired) else {
        return vec!["config changed".into()];
    };
    let empty = Value::Null;
    let mut reasons = Vec::new();
    for (key, new_value) in &new {
        let old_value = old.get(key).unwrap_or(&empty);
        if old_value == new_value {
            continue;
        }
        match key.as_str() {
            "env" => {
                let names: BTreeSet<&String> = old_value
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .chain(new_value.as_object().into_iter().flat_map(|m| m.keys()))
                    .filter(|name| old_value.get(name.as_str()) != new_value.get(name.as_str()))
                    .collect();
                let names: Vec<&str> = names.into_iter().map(String::as_str).collect();
                reasons.push(format!("env {} changed", names.join(", ")));
            }
            "image"
            | "image_digest"
            | "replicas"
            | "limit_nano_cpus"
            | "limit_memory"
            | "reserve_nano_cpus"
            | "reserve_memory"
            | "max_replicas_per_node" => {
                let show = |v: &Value| match v {
                    Value::String(s) => s.clone(),
                    Value::Null => "none".into(),
                    other => other.to_string(),
                };
                reasons.push(format!("{key} {} → {}", show(old_value), show(new_value)));
            }
            "secrets" => {
                // By name: an entry differs in digest, owner, mode or target.
                let entries =
                    |v: &Value| -> Vec<Value> { v.as_array().cloned().unwrap_or_default() };
                let (old_list, new_list) = (entries(old_value), entries(new_value));
                let names: BTreeSet<String> = old_list
                    .iter()
                    .filter(|e| !new_list.contains(e))
                    .chain(new_list.iter().filter(|e| !old_list.contains(e)))
                    .filter_map(|e| e.get("source").and_then(Value::as_str).map(str::to_string))
                    .collect();
                let names: Vec<String> = names.into_iter().collect();
                reasons.push(format!("secret {} changed", names.join(", ")));
            }
            _ => reasons.push(format!("{key} changed")),
        }
    }
    if reasons.is_empty() {
        reasons.push("config hash differs".into());
    }
    reasons
}
