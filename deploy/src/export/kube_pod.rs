//! One service as a Kubernetes pod template: container, probes, resources, security
//! context and volumes. What has no Kubernetes form becomes a [`Note`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, ExecAction,
    HTTPGetAction, HostPathVolumeSource, KeyToPath, LocalObjectReference,
    PersistentVolumeClaimVolumeSource, PodSpec, Probe, ResourceRequirements, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{dns_label, image_reference, ExportOptions, Note};
use crate::app::{App, Healthcheck, MountType, Service};

/// The pod spec of a service (its one container named after the service key).
pub(crate) fn pod_spec(
    app: &App,
    key: &str,
    service: &Service,
    options: &ExportOptions,
    notes: &mut Vec<Note>,
) -> PodSpec {
    let at = |field: &str| format!("services.{key}{field}");
    let (volumes, mounts) = volumes(app, key, service, notes);
    let (liveness, readiness) = probes(key, service.healthcheck.as_ref(), notes);
    let container = Container {
        name: dns_label(key),
        image: Some(image_reference(&service.image, options)),
        command: service.entrypoint.clone(),
        args: service.command.clone(),
        env: (!service.env.is_empty()).then(|| {
            service
                .env
                .iter()
                .map(|(name, value)| EnvVar {
                    name: name.clone(),
                    value: Some(value.clone()),
                    value_from: None,
                })
                .collect()
        }),
        ports: container_ports(service),
        resources: resources(service),
        liveness_probe: liveness,
        readiness_probe: readiness,
        security_context: security_context(key, service, notes),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        working_dir: service.working_dir.clone(),
        tty: service.tty.then_some(true),
        stdin: service.stdin_open.then_some(true),
        ..Container::default()
    };
    let pull_secrets = pull_secret(&service.image, options).map(|name| {
        notes.push(Note::new(
            at(".image"),
            format!(
                "the registry needs a login: create the pull secret with `kubectl create secret docker-registry {name} --docker-server=HOST --docker-username=USER --docker-password=...`"
            ),
        ));
        vec![LocalObjectReference { name }]
    });
    PodSpec {
        containers: vec![container],
        volumes: (!volumes.is_empty()).then_some(volumes),
        image_pull_secrets: pull_secrets,
        termination_grace_period_seconds: service.stop_grace_period.map(|ns| seconds(ns) as i64),
        hostname: service.hostname.clone(),
        ..PodSpec::default()
    }
}

/// The imagePullSecret a service's image needs: `registry-HOST` when Berth holds a login.
fn pull_secret(image: &str, options: &ExportOptions) -> Option<String> {
    let reference = berth_client::ImageRef::parse(image).ok()?;
    options
        .logins
        .contains(&reference.registry)
        .then(|| format!("registry-{}", dns_label(&reference.registry)))
}

fn container_ports(service: &Service) -> Option<Vec<ContainerPort>> {
    let mut ports: Vec<ContainerPort> = Vec::new();
    for port in &service.ports {
        let protocol = port.protocol.as_str().to_ascii_uppercase();
        let known = ports.iter().any(|p| {
            p.container_port == i32::from(port.target) && p.protocol.as_deref() == Some(&protocol)
        });
        if !known {
            ports.push(ContainerPort {
                container_port: i32::from(port.target),
                protocol: Some(protocol),
                ..ContainerPort::default()
            });
        }
    }
    (!ports.is_empty()).then_some(ports)
}

/// Limits from `cpus`/`memory`, requests from `reservations` (Kubernetes requests the
/// limits when only limits are given, as Docker reserves nothing).
fn resources(service: &Service) -> Option<ResourceRequirements> {
    let quantities = |cpus: Option<f64>, memory: Option<u64>| {
        let mut map = BTreeMap::new();
        if let Some(cpus) = cpus {
            map.insert("cpu".to_string(), Quantity(cpu_quantity(cpus)));
        }
        if let Some(memory) = memory {
            map.insert("memory".to_string(), Quantity(bytes_quantity(memory)));
        }
        (!map.is_empty()).then_some(map)
    };
    let limits = quantities(service.cpus, service.memory);
    let reservations = service.reservations.clone().unwrap_or_default();
    let requests = quantities(reservations.cpus, reservations.memory);
    (limits.is_some() || requests.is_some()).then(|| ResourceRequirements {
        limits,
        requests,
        ..ResourceRequirements::default()
    })
}

/// Bytes as Kubernetes writes them: `256Mi` when a whole number of MiB/GiB, else bytes.
pub(crate) fn bytes_quantity(bytes: u64) -> String {
    const MI: u64 = 1 << 20;
    const GI: u64 = 1 << 30;
    match bytes {
        0 => "0".to_string(),
        b if b.is_multiple_of(GI) => format!("{}Gi", b / GI),
        b if b.is_multiple_of(MI) => format!("{}Mi", b / MI),
        b => b.to_string(),
    }
}

/// `1` for whole CPUs, else millicores (`500m`).
fn cpu_quantity(cpus: f64) -> String {
    let millis = (cpus * 1000.0).round() as u64;
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Whole seconds (rounded up, at least 1: the least a probe or grace period takes).
fn seconds(ns: u64) -> i32 {
    let secs = ns.div_ceil(1_000_000_000).max(1);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

/// Liveness and readiness probes from the healthcheck: an HTTP GET of the container's own
/// address when the check is one (`curl`/`wget` of `http://localhost...`), else the
/// command itself as an exec probe.
fn probes(
    key: &str,
    healthcheck: Option<&Healthcheck>,
    notes: &mut Vec<Note>,
) -> (Option<Probe>, Option<Probe>) {
    let Some(check) = healthcheck else {
        return (None, None);
    };
    let command: Vec<String> = match check.test.first().map(String::as_str) {
        Some("CMD") => check.test[1..].to_vec(),
        Some("CMD-SHELL") => {
            let mut shell = vec!["/bin/sh".to_string(), "-c".to_string()];
            shell.extend(check.test[1..].iter().cloned());
            shell
        }
        _ => return (None, None),
    };
    let mut probe = Probe {
        period_seconds: check.interval.map(seconds),
        timeout_seconds: check.timeout.map(seconds),
        failure_threshold: check
            .retries
            .map(|r| i32::try_from(r.max(1)).unwrap_or(i32::MAX)),
        initial_delay_seconds: check.start_period.map(seconds),
        ..Probe::default()
    };
    match http_check(&check.test) {
        Some((port, path)) => {
            probe.http_get = Some(HTTPGetAction {
                path: Some(path),
                port: IntOrString::Int(i32::from(port)),
                ..HTTPGetAction::default()
            });
            notes.push(Note::new(
                format!("services.{key}.healthcheck"),
                format!(
                    "an HTTP check: probed with httpGet on port {port}, not by running the command"
                ),
            ));
        }
        None => {
            probe.exec = Some(ExecAction {
                command: Some(command),
            })
        }
    }
    (Some(probe.clone()), Some(probe))
}

/// The port and path of a healthcheck that only fetches a local HTTP URL with curl or wget
/// (a plain command, no shell operators): what an httpGet probe does without the tool.
pub(crate) fn http_check(test: &[String]) -> Option<(u16, String)> {
    let words: Vec<String> = match test.first().map(String::as_str) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => {
            let line = test.get(1)?;
            if line.contains(['|', '&', ';', '>', '<', '$', '`']) {
                return None;
            }
            line.split_whitespace().map(str::to_string).collect()
        }
        _ => return None,
    };
    let tool = words.first()?.rsplit('/').next()?;
    if tool != "curl" && tool != "wget" {
        return None;
    }
    let urls: Vec<&String> = words.iter().filter(|w| w.starts_with("http://")).collect();
    let [url] = urls.as_slice() else {
        return None;
    };
    let rest = url.trim_start_matches("http://");
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().ok()?),
        None => (authority, 80),
    };
    matches!(host, "localhost" | "127.0.0.1").then_some((port, path))
}

fn security_context(
    key: &str,
    service: &Service,
    notes: &mut Vec<Note>,
) -> Option<SecurityContext> {
    let mut context = SecurityContext::default();
    if let Some(user) = &service.user {
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user.as_str(), None),
        };
        match (uid.parse::<i64>(), gid.map(str::parse::<i64>)) {
            (Ok(uid), None) => context.run_as_user = Some(uid),
            (Ok(uid), Some(Ok(gid))) => {
                context.run_as_user = Some(uid);
                context.run_as_group = Some(gid);
            }
            _ => notes.push(Note::new(
                format!("services.{key}.user"),
                format!("{user:?} is a name: Kubernetes runs as numeric ids only; set runAsUser by hand"),
            )),
        }
    }
    if service.read_only {
        context.read_only_root_filesystem = Some(true);
    }
    if service.privileged {
        context.privileged = Some(true);
    }
    if !service.cap_add.is_empty() || !service.cap_drop.is_empty() {
        context.capabilities = Some(Capabilities {
            add: (!service.cap_add.is_empty()).then(|| service.cap_add.clone()),
            drop: (!service.cap_drop.is_empty()).then(|| service.cap_drop.clone()),
        });
    }
    (context != SecurityContext::default()).then_some(context)
}

/// Pod volumes and the container's mounts: named volumes as PersistentVolumeClaims,
/// anonymous volumes and tmpfs as emptyDir, bind mounts as hostPath, secrets as files.
fn volumes(
    app: &App,
    key: &str,
    service: &Service,
    notes: &mut Vec<Note>,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    for (index, mount) in service.volumes.iter().enumerate() {
        let name = format!("mount-{index}");
        let source = match (mount.kind, &mount.source) {
            (MountType::Volume, Some(volume_key)) => Volume {
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: dns_label(&app.volume_docker_name(volume_key)),
                    read_only: mount.read_only.then_some(true),
                }),
                ..volume(&name)
            },
            (MountType::Volume, None) | (MountType::Tmpfs, _) => Volume {
                empty_dir: Some(EmptyDirVolumeSource {
                    medium: (mount.kind == MountType::Tmpfs).then(|| "Memory".to_string()),
                    size_limit: mount
                        .tmpfs
                        .as_ref()
                        .and_then(|t| t.size)
                        .map(|size| Quantity(bytes_quantity(size))),
                }),
                ..volume(&name)
            },
            (MountType::Bind, source) => {
                let path = source.clone().unwrap_or_default();
                notes.push(Note::new(
                    format!("services.{key}.volumes[{index}]"),
                    format!("bind mount {path}: a hostPath volume, so every node that may run the pod needs that path"),
                ));
                Volume {
                    host_path: Some(HostPathVolumeSource { path, type_: None }),
                    ..volume(&name)
                }
            }
        };
        volumes.push(source);
        mounts.push(VolumeMount {
            name,
            mount_path: mount.target.clone(),
            read_only: mount.read_only.then_some(true),
            ..VolumeMount::default()
        });
    }
    for (index, (target, _options)) in service.tmpfs.iter().enumerate() {
        let name = format!("tmpfs-{index}");
        volumes.push(Volume {
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".to_string()),
                size_limit: None,
            }),
            ..volume(&name)
        });
        mounts.push(VolumeMount {
            name,
            mount_path: target.clone(),
            ..VolumeMount::default()
        });
    }
    for secret in &service.secrets {
        let name = format!("secret-{}", dns_label(&secret.source));
        if secret.uid.is_some() || secret.gid.is_some() {
            notes.push(Note::new(
                format!("services.{key}.secrets.{}", secret.source),
                "uid/gid of a secret file cannot be set per file in Kubernetes (use the pod's fsGroup)",
            ));
        }
        volumes.push(Volume {
            secret: Some(SecretVolumeSource {
                secret_name: Some(dns_label(&secret.source)),
                items: Some(vec![KeyToPath {
                    key: secret.source.clone(),
                    path: secret.source.clone(),
                    mode: Some(i32::try_from(secret.mode_or_default()).unwrap_or(0o400)),
                }]),
                ..SecretVolumeSource::default()
            }),
            ..volume(&name)
        });
        mounts.push(VolumeMount {
            name,
            mount_path: secret.target_path(),
            sub_path: Some(secret.source.clone()),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, mounts)
}

fn volume(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        ..Volume::default()
    }
}
