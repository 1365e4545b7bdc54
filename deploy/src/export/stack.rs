//! `berth export stack`: the app as a compose file for `docker stack deploy`, with the
//! `deploy:` keys Berth's swarm mode sets (replicas, resources, restart policy, placement),
//! so a team can leave Berth and keep its setup. Networks become attachable overlays (as
//! `berth deploy --swarm` makes them); secrets are files beside the stack file.

use std::net::IpAddr;

use serde_json::{json, Map, Value};

use super::{
    comment_block, image_reference, secret_file_path, secret_values, to_yaml, Export, ExportError,
    ExportOptions, Note, OutputFile, Rendered,
};
use crate::app::{MountType, NetworkDriver, PublishMode, Service};

/// The stack file's name in the output folder.
pub const STACK_FILE: &str = "stack.yml";

pub fn export(rendered: &Rendered, options: &ExportOptions) -> Result<Export, ExportError> {
    let mut notes = rendered.notes.clone();
    let mut services = Map::new();
    for (key, folded) in &rendered.services {
        let service = &folded.service;
        if folded.hosts.len() > 1 || service.hosts != "all" {
            notes.push(Note::new(
                format!("services.{key}.hosts"),
                format!("`{}` does not apply to a stack: Swarm places the {} replicas (use placement.constraints)", service.hosts, service.replicas),
            ));
        }
        services.insert(
            key.clone(),
            stack_service(key, service, options, &mut notes),
        );
    }
    let mut export = Export::default();
    let mut top = Map::new();
    top.insert("version".into(), json!("3.8"));
    top.insert("services".into(), Value::Object(services));
    let networks = networks(rendered, &mut notes);
    if !networks.is_empty() {
        top.insert("networks".into(), Value::Object(networks));
    }
    let volumes = volumes(rendered);
    if !volumes.is_empty() {
        top.insert("volumes".into(), Value::Object(volumes));
    }
    let mut secrets = Map::new();
    for (key, value) in secret_values(rendered)? {
        let path = secret_file_path(&key);
        secrets.insert(key.clone(), json!({ "file": format!("./secrets/{key}") }));
        export.files.push(OutputFile {
            path,
            contents: value,
            secret: true,
        });
    }
    if !secrets.is_empty() {
        notes.push(Note::new(
            "secrets",
            "Swarm secrets cannot change in place: rename one (or remove the stack) to rotate it",
        ));
        top.insert("secrets".into(), Value::Object(secrets));
    }
    notes.sort();
    notes.dedup();
    let refs: Vec<&Note> = notes.iter().collect();
    let mut text = format!(
        "# Written by `berth export stack`; deploy with `docker stack deploy -c {STACK_FILE} {}`\n",
        rendered.app.name
    );
    text.push_str(&comment_block(
        "What Swarm does differently from the app file:",
        &refs,
    ));
    text.push_str(&to_yaml(&Value::Object(top))?);
    export.files.push(OutputFile::text(STACK_FILE, text));
    export.files.sort_by(|a, b| a.path.cmp(&b.path));
    export.notes = notes;
    Ok(export)
}

fn duration(ns: u64) -> String {
    if ns.is_multiple_of(1_000_000_000) {
        format!("{}s", ns / 1_000_000_000)
    } else {
        format!("{}ms", ns / 1_000_000)
    }
}

fn stack_service(
    key: &str,
    service: &Service,
    options: &ExportOptions,
    notes: &mut Vec<Note>,
) -> Value {
    let mut out = Map::new();
    out.insert(
        "image".into(),
        json!(image_reference(&service.image, options)),
    );
    if let Some(entrypoint) = &service.entrypoint {
        out.insert("entrypoint".into(), json!(entrypoint));
    }
    if let Some(command) = &service.command {
        out.insert("command".into(), json!(command));
    }
    if !service.env.is_empty() {
        out.insert("environment".into(), json!(service.env));
    }
    if !service.labels.is_empty() {
        out.insert("labels".into(), json!(service.labels));
    }
    network_keys(key, service, &mut out, notes);
    container_keys(service, &mut out);
    storage_keys(key, service, &mut out, notes);
    if !service.depends_on.is_empty() {
        notes.push(Note::new(
            format!("services.{key}.depends_on"),
            "not kept: docker stack deploy starts services in no order",
        ));
    }
    out.insert("deploy".into(), deploy_keys(service));
    Value::Object(out)
}

/// Published ports and network attachments.
fn network_keys(key: &str, service: &Service, out: &mut Map<String, Value>, notes: &mut Vec<Note>) {
    let ports: Vec<Value> = service
        .ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            if let Some(ip) = port.host_ip.filter(|ip: &IpAddr| !ip.is_unspecified()) {
                notes.push(Note::new(
                    format!("services.{key}.ports[{index}]"),
                    format!("host IP {ip} not kept: Swarm publishes on every address of a node"),
                ));
            }
            let mut p = json!({ "target": port.target, "protocol": port.protocol.as_str() });
            if let Some(published) = port.published {
                p["published"] = json!(published);
            }
            if port.mode == Some(PublishMode::Host) {
                p["mode"] = json!("host");
            }
            p
        })
        .collect();
    if !ports.is_empty() {
        out.insert("ports".into(), json!(ports));
    }
    let mut networks = Map::new();
    for (network, attachment) in &service.networks {
        if let Some(address) = attachment.ipv4_address {
            notes.push(Note::new(
                format!("services.{key}.networks.{network}.ipv4_address"),
                format!("fixed address {address} not kept: Swarm assigns task addresses"),
            ));
        }
        let value = if attachment.aliases.is_empty() {
            Value::Null
        } else {
            json!({ "aliases": attachment.aliases })
        };
        networks.insert(network.clone(), value);
    }
    if !networks.is_empty() {
        out.insert("networks".into(), Value::Object(networks));
    }
}

/// Healthcheck, stop behaviour and the container options a stack file can say.
fn container_keys(service: &Service, out: &mut Map<String, Value>) {
    if let Some(check) = &service.healthcheck {
        let mut h = json!({ "test": check.test });
        if let Some(v) = check.interval {
            h["interval"] = json!(duration(v));
        }
        if let Some(v) = check.timeout {
            h["timeout"] = json!(duration(v));
        }
        if let Some(v) = check.retries {
            h["retries"] = json!(v);
        }
        if let Some(v) = check.start_period {
            h["start_period"] = json!(duration(v));
        }
        out.insert("healthcheck".into(), h);
    }
    if let Some(v) = service.stop_grace_period {
        out.insert("stop_grace_period".into(), json!(duration(v)));
    }
    if let Some(v) = &service.stop_signal {
        out.insert("stop_signal".into(), json!(v));
    }
    for (name, value) in [
        ("user", service.user.as_ref()),
        ("working_dir", service.working_dir.as_ref()),
        ("hostname", service.hostname.as_ref()),
    ] {
        if let Some(value) = value {
            out.insert(name.into(), json!(value));
        }
    }
    if !service.cap_add.is_empty() {
        out.insert("cap_add".into(), json!(service.cap_add));
    }
    if !service.cap_drop.is_empty() {
        out.insert("cap_drop".into(), json!(service.cap_drop));
    }
    if service.read_only {
        out.insert("read_only".into(), json!(true));
    }
}

/// Mounts and secrets.
fn storage_keys(key: &str, service: &Service, out: &mut Map<String, Value>, notes: &mut Vec<Note>) {
    let mounts: Vec<Value> = service
        .volumes
        .iter()
        .map(|m| {
            let mut v = json!({ "type": m.kind.as_str(), "target": m.target });
            if let Some(source) = &m.source {
                v["source"] = json!(source);
            }
            if m.read_only {
                v["read_only"] = json!(true);
            }
            if m.kind == MountType::Bind {
                notes.push(Note::new(
                    format!("services.{key}.volumes"),
                    format!(
                        "bind mount {}: every node that may run a task needs that path",
                        m.source.as_deref().unwrap_or("")
                    ),
                ));
            }
            v
        })
        .collect();
    if !mounts.is_empty() {
        out.insert("volumes".into(), json!(mounts));
    }
    let secrets: Vec<Value> = service
        .secrets
        .iter()
        .map(|s| {
            let mut v = json!({ "source": s.source, "target": s.target_path() });
            if let Some(uid) = s.uid {
                v["uid"] = json!(uid.to_string());
            }
            if let Some(gid) = s.gid {
                v["gid"] = json!(gid.to_string());
            }
            v["mode"] = json!(s.mode_or_default());
            v
        })
        .collect();
    if !secrets.is_empty() {
        out.insert("secrets".into(), json!(secrets));
    }
}

/// The `deploy:` section: what Berth's swarm mode sets on the service.
fn deploy_keys(service: &Service) -> Value {
    let mut deploy = json!({ "replicas": service.replicas });
    let mut resources = Map::new();
    let quantities = |cpus: Option<f64>, memory: Option<u64>| {
        let mut m = Map::new();
        if let Some(cpus) = cpus {
            m.insert("cpus".into(), json!(format!("{cpus}")));
        }
        if let Some(memory) = memory {
            // The compose schema wants a string; Docker reads `M` as MiB.
            let text = if memory.is_multiple_of(1 << 20) {
                format!("{}M", memory >> 20)
            } else {
                memory.to_string()
            };
            m.insert("memory".into(), json!(text));
        }
        m
    };
    let limits = quantities(service.cpus, service.memory);
    if !limits.is_empty() {
        resources.insert("limits".into(), Value::Object(limits));
    }
    let reservations = service.reservations.clone().unwrap_or_default();
    let reserved = quantities(reservations.cpus, reservations.memory);
    if !reserved.is_empty() {
        resources.insert("reservations".into(), Value::Object(reserved));
    }
    if !resources.is_empty() {
        deploy["resources"] = Value::Object(resources);
    }
    let condition = match service.restart.name.as_str() {
        "no" => "none",
        "on-failure" => "on-failure",
        _ => "any",
    };
    let mut restart = json!({ "condition": condition });
    if let Some(max) = service.restart.max_retries {
        restart["max_attempts"] = json!(max);
    }
    deploy["restart_policy"] = restart;
    if let Some(placement) = &service.placement {
        let mut p = Map::new();
        if !placement.constraints.is_empty() {
            p.insert("constraints".into(), json!(placement.constraints));
        }
        if !placement.preferences.is_empty() {
            let spread: Vec<Value> = placement
                .preferences
                .iter()
                .map(|s| json!({ "spread": s }))
                .collect();
            p.insert("preferences".into(), json!(spread));
        }
        if let Some(max) = placement.max_replicas_per_node {
            p.insert("max_replicas_per_node".into(), json!(max));
        }
        if !p.is_empty() {
            deploy["placement"] = Value::Object(p);
        }
    }
    deploy
}

/// The networks services use, as attachable overlays with their subnets.
fn networks(rendered: &Rendered, notes: &mut Vec<Note>) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, network) in &rendered.app.networks {
        let used = rendered
            .services
            .values()
            .any(|s| s.service.networks.contains_key(key));
        if !used {
            continue;
        }
        if network.driver != NetworkDriver::Overlay {
            notes.push(Note::new(
                format!("networks.{key}.driver"),
                format!(
                    "{}: a stack's networks are overlay networks",
                    network.driver.as_str()
                ),
            ));
        }
        if !network.options.is_empty() {
            notes.push(Note::new(
                format!("networks.{key}.options"),
                "driver options not kept (they were for another driver)",
            ));
        }
        let mut n = json!({
            "name": rendered.app.network_docker_name(key),
            "driver": "overlay",
            "attachable": true,
        });
        if network.internal {
            n["internal"] = json!(true);
        }
        if !network.labels.is_empty() {
            n["labels"] = json!(network.labels);
        }
        if let Some(subnet) = network.subnet {
            let mut config = json!({ "subnet": subnet.trunc().to_string() });
            if let Some(gateway) = network.gateway {
                config["gateway"] = json!(gateway.to_string());
            }
            if let Some(range) = network.ip_range {
                config["ip_range"] = json!(range.to_string());
            }
            n["ipam"] = json!({ "config": [config] });
        }
        out.insert(key.clone(), n);
    }
    out
}

fn volumes(rendered: &Rendered) -> Map<String, Value> {
    let mut out = Map::new();
    for (key, volume) in &rendered.app.volumes {
        let used = rendered.services.values().any(|s| {
            s.service
                .volumes
                .iter()
                .any(|m| m.source.as_deref() == Some(key.as_str()))
        });
        if !used {
            continue;
        }
        let mut v = json!({ "name": rendered.app.volume_docker_name(key) });
        if volume.external {
            v["external"] = json!(true);
        } else {
            if let Some(driver) = &volume.driver {
                v["driver"] = json!(driver);
            }
            if !volume.driver_opts.is_empty() {
                v["driver_opts"] = json!(volume.driver_opts);
            }
            if !volume.labels.is_empty() {
                v["labels"] = json!(volume.labels);
            }
        }
        out.insert(key.clone(), v);
    }
    out
}
