//! `berth export kubernetes`: a Deployment per service, a Service per set of published
//! ports, a PersistentVolumeClaim per named volume, Secrets (kustomize `secretGenerator`
//! reading files, or inline with `--inline-secrets`), and a `kustomization.yaml`, so
//! `kubectl apply -k DIR` deploys it. With several inventories: `base/` holds the objects
//! every inventory renders the same, `overlays/NAME/` the rest of each (whole objects, not
//! patches, so nothing one environment lacks can leak in from another).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, Secret,
    Service as KubeService, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::ByteString;
use serde::Serialize;

use super::kube_pod::pod_spec;
use super::{
    comment_block, dns_label, secret_file_path, secret_values, to_yaml, Export, ExportError,
    ExportOptions, Note, OutputFile, Rendered,
};
use crate::app::{NetworkDriver, Service};

/// The size asked for each volume's claim: Docker volumes have none.
pub const DEFAULT_VOLUME_SIZE: &str = "1Gi";

/// One Kubernetes object, serialised, with the notes written above it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Object {
    /// `kind-name.yaml`.
    file: String,
    yaml: String,
}

/// What one inventory renders to.
struct Rendition {
    objects: Vec<Object>,
    /// Secret key → its value (kustomize reads it from `secrets/KEY`).
    generated_secrets: BTreeMap<String, Vec<u8>>,
    notes: Vec<Note>,
}

/// Exports the app for each named inventory (one: files at the top; several: overlays).
pub fn export(
    inventories: &[(String, Rendered)],
    options: &ExportOptions,
) -> Result<Export, ExportError> {
    let mut renditions = Vec::new();
    for (name, rendered) in inventories {
        renditions.push((name.clone(), rendition(rendered, options)?));
    }
    let mut export = Export::default();
    match renditions.as_slice() {
        [] => return Err(ExportError::Invalid("no inventory given".to_string())),
        [(_, only)] => {
            let app = &inventories[0].1.app.name;
            write_folder(
                &mut export,
                Path::new(""),
                app,
                &only.objects,
                &[],
                only,
                options,
            )?;
            export.notes = only.notes.clone();
        }
        [(_, first), rest @ ..] => {
            let app = &inventories[0].1.app.name;
            let common: Vec<Object> = first
                .objects
                .iter()
                .filter(|object| rest.iter().all(|(_, r)| r.objects.contains(object)))
                .cloned()
                .collect();
            let base = Rendition {
                objects: common.clone(),
                generated_secrets: BTreeMap::new(),
                notes: Vec::new(),
            };
            write_folder(
                &mut export,
                Path::new("base"),
                app,
                &common,
                &[],
                &base,
                options,
            )?;
            for (name, rendition) in &renditions {
                let own: Vec<Object> = rendition
                    .objects
                    .iter()
                    .filter(|object| !common.contains(object))
                    .cloned()
                    .collect();
                let folder = Path::new("overlays").join(name);
                let parents = ["../../base".to_string()];
                write_folder(
                    &mut export,
                    &folder,
                    app,
                    &own,
                    &parents,
                    rendition,
                    options,
                )?;
                export.notes.extend(
                    rendition
                        .notes
                        .iter()
                        .map(|n| Note::new(format!("{name}: {}", n.key), n.message.clone())),
                );
            }
        }
    }
    export.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(export)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kustomization {
    api_version: &'static str,
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    resources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secret_generator: Vec<SecretGenerator>,
}

#[derive(Serialize)]
struct SecretGenerator {
    name: String,
    files: Vec<String>,
}

/// Writes one folder: its objects (one file each, or one file), the secret files the
/// generator reads, and a kustomization naming them all, with the notes on top.
fn write_folder(
    export: &mut Export,
    folder: &Path,
    app: &str,
    objects: &[Object],
    parents: &[String],
    rendition: &Rendition,
    options: &ExportOptions,
) -> Result<(), ExportError> {
    let mut resources: Vec<String> = parents.to_vec();
    if options.single_file && !objects.is_empty() {
        let file = format!("{}.yaml", dns_label(app));
        let joined: Vec<String> = objects.iter().map(|o| o.yaml.clone()).collect();
        export
            .files
            .push(OutputFile::text(folder.join(&file), joined.join("---\n")));
        resources.push(file);
    } else {
        for object in objects {
            export.files.push(OutputFile::text(
                folder.join(&object.file),
                object.yaml.clone(),
            ));
            resources.push(object.file.clone());
        }
    }
    let mut generators = Vec::new();
    for (key, value) in &rendition.generated_secrets {
        let path = secret_file_path(key);
        export.files.push(OutputFile {
            path: folder.join(&path),
            contents: value.clone(),
            secret: true,
        });
        generators.push(SecretGenerator {
            name: dns_label(key),
            files: vec![format!("{key}={}", path_text(&path))],
        });
    }
    let kustomization = Kustomization {
        api_version: "kustomize.config.k8s.io/v1beta1",
        kind: "Kustomization",
        namespace: options.namespace.clone(),
        resources,
        secret_generator: generators,
    };
    let notes: Vec<&Note> = rendition.notes.iter().collect();
    let mut text =
        String::from("# Written by `berth export kubernetes`; apply with `kubectl apply -k .`\n");
    text.push_str(&comment_block(
        "What Kubernetes does differently from the app file:",
        &notes,
    ));
    text.push_str(&to_yaml(&kustomization)?);
    export
        .files
        .push(OutputFile::text(folder.join("kustomization.yaml"), text));
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every object of one inventory's rendering, in a stable order.
fn rendition(rendered: &Rendered, options: &ExportOptions) -> Result<Rendition, ExportError> {
    let mut notes = rendered.notes.clone();
    network_notes(rendered, &mut notes);
    let mut objects = Vec::new();
    let values = secret_values(rendered)?;
    let mut generated_secrets = BTreeMap::new();
    for (key, value) in values {
        if options.inline_secrets {
            let secret = Secret {
                metadata: metadata(&dns_label(&key), &rendered.app.name, None, options),
                data: Some(BTreeMap::from([(key.clone(), ByteString(value))])),
                ..Secret::default()
            };
            objects.push(object("secret", &key, &secret, &[])?);
        } else {
            generated_secrets.insert(key, value);
        }
    }
    for (volume_key, volume) in &rendered.app.volumes {
        let used = rendered.services.values().any(|s| {
            s.service
                .volumes
                .iter()
                .any(|m| m.source.as_deref() == Some(volume_key.as_str()))
        });
        if !used {
            continue;
        }
        let name = dns_label(&rendered.app.volume_docker_name(volume_key));
        if volume.external {
            notes.push(Note::new(
                format!("volumes.{volume_key}"),
                format!("external: create the PersistentVolumeClaim `{name}` yourself"),
            ));
            continue;
        }
        notes.push(Note::new(
            format!("volumes.{volume_key}"),
            format!("a PersistentVolumeClaim `{name}` of {DEFAULT_VOLUME_SIZE} (ReadWriteOnce, the default storage class): Docker volumes have no size; change it before applying"),
        ));
        let claim = PersistentVolumeClaim {
            metadata: metadata(&name, &rendered.app.name, None, options),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec!["ReadWriteOnce".to_string()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([(
                        "storage".to_string(),
                        Quantity(DEFAULT_VOLUME_SIZE.to_string()),
                    )])),
                    limits: None,
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        };
        objects.push(object("persistentvolumeclaim", &name, &claim, &[])?);
    }
    for (key, folded) in &rendered.services {
        service_notes(key, &folded.service, folded.replicas, &mut notes);
        let deployment = deployment(rendered, key, folded.replicas, options, &mut notes);
        let about: Vec<&Note> = notes.iter().filter(|n| n.is_about_service(key)).collect();
        objects.push(object("deployment", key, &deployment, &about)?);
        if let Some(service) = kube_service(rendered, key, &folded.service, options) {
            objects.push(object("service", key, &service, &[])?);
        }
    }
    let mut files = std::collections::BTreeSet::new();
    for object in &objects {
        if !files.insert(object.file.as_str()) {
            return Err(ExportError::Invalid(format!(
                "two objects would both be {}: Kubernetes names allow only a-z, 0-9 and `-`, so keys that differ only in `_`, `.` or case collide; rename one",
                object.file
            )));
        }
    }
    notes.sort();
    notes.dedup();
    Ok(Rendition {
        objects,
        generated_secrets,
        notes,
    })
}

fn object<T: Serialize>(
    kind: &str,
    name: &str,
    value: &T,
    notes: &[&Note],
) -> Result<Object, ExportError> {
    let mut yaml = comment_block("Not as the app file says:", notes);
    yaml.push_str(&to_yaml(value)?);
    Ok(Object {
        file: format!("{kind}-{}.yaml", dns_label(name)),
        yaml,
    })
}

/// The labels that select a service's pods.
fn selector_labels(app: &str, key: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), dns_label(key)),
        ("app.kubernetes.io/part-of".to_string(), dns_label(app)),
    ])
}

fn metadata(name: &str, app: &str, service: Option<&str>, options: &ExportOptions) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/part-of".to_string(), dns_label(app)),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "berth-export".to_string(),
        ),
    ]);
    if let Some(service) = service {
        labels.insert("app.kubernetes.io/name".to_string(), dns_label(service));
    }
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: options.namespace.clone(),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

fn deployment(
    rendered: &Rendered,
    key: &str,
    replicas: u32,
    options: &ExportOptions,
    notes: &mut Vec<Note>,
) -> Deployment {
    let app = &rendered.app;
    let service = &rendered.services[key].service;
    let selector = selector_labels(&app.name, key);
    let mut meta = metadata(&dns_label(key), &app.name, Some(key), options);
    if !service.labels.is_empty() {
        // Docker labels allow any value; Kubernetes labels do not: annotations keep them.
        meta.annotations = Some(service.labels.clone());
    }
    Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                match_expressions: None,
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(app, key, service, options, notes)),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

/// A LoadBalancer Service for a service's published ports (Docker publishes them on the
/// host's addresses; on a cluster without load balancers it still gets node ports).
fn kube_service(
    rendered: &Rendered,
    key: &str,
    service: &Service,
    options: &ExportOptions,
) -> Option<KubeService> {
    let mut ports: Vec<ServicePort> = Vec::new();
    for port in &service.ports {
        let number = i32::from(port.published.unwrap_or(port.target));
        let protocol = port.protocol.as_str().to_ascii_uppercase();
        if ports
            .iter()
            .any(|p| p.port == number && p.protocol.as_deref() == Some(&protocol))
        {
            continue;
        }
        ports.push(ServicePort {
            name: Some(format!("{}-{number}", port.protocol.as_str())),
            port: number,
            target_port: Some(IntOrString::Int(i32::from(port.target))),
            protocol: Some(protocol),
            ..ServicePort::default()
        });
    }
    if ports.is_empty() {
        return None;
    }
    Some(KubeService {
        metadata: metadata(&dns_label(key), &rendered.app.name, Some(key), options),
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".to_string()),
            selector: Some(selector_labels(&rendered.app.name, key)),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        ..KubeService::default()
    })
}

/// Networks: Kubernetes has one flat pod network, so subnets, gateways, drivers and fixed
/// addresses have no place; pods reach a service by its Service name.
fn network_notes(rendered: &Rendered, notes: &mut Vec<Note>) {
    for (key, network) in &rendered.app.networks {
        let used = rendered
            .services
            .values()
            .any(|s| s.service.networks.contains_key(key));
        if !used {
            continue;
        }
        let at = format!("networks.{key}");
        if network.driver == NetworkDriver::Macvlan || network.driver == NetworkDriver::Ipvlan {
            notes.push(Note::new(
                format!("{at}.driver"),
                format!("{} has no Kubernetes form: pods are on the cluster's pod network (a CNI plugin such as Multus can attach another)", network.driver.as_str()),
            ));
        }
        if let Some(subnet) = network.subnet {
            notes.push(Note::new(
                format!("{at}.subnet"),
                format!("{subnet} not kept: the cluster's CNI assigns pod addresses"),
            ));
        }
        if let Some(gateway) = network.gateway {
            notes.push(Note::new(
                format!("{at}.gateway"),
                format!("{gateway} not kept: pods route through the cluster's CNI"),
            ));
        }
        if let Some(range) = network.ip_range {
            notes.push(Note::new(
                format!("{at}.ip_range"),
                format!("{range} not kept"),
            ));
        }
        if network.internal {
            notes.push(Note::new(
                format!("{at}.internal"),
                "no route out is not enforced: write a NetworkPolicy for it",
            ));
        }
    }
}

/// What a Deployment cannot say about one service.
fn service_notes(key: &str, service: &Service, replicas: u32, notes: &mut Vec<Note>) {
    let at = |field: &str| format!("services.{key}{field}");
    for (network, attachment) in &service.networks {
        if let Some(address) = attachment.ipv4_address {
            notes.push(Note::new(
                at(&format!(".networks.{network}.ipv4_address")),
                format!(
                    "fixed address {address} not kept: reach the pods through the Service `{}`",
                    dns_label(key)
                ),
            ));
        }
        if !attachment.aliases.is_empty() {
            notes.push(Note::new(
                at(&format!(".networks.{network}.aliases")),
                format!(
                    "{} not kept: the Service name `{}` is the DNS name",
                    attachment.aliases.join(", "),
                    dns_label(key)
                ),
            ));
        }
    }
    for (index, port) in service.ports.iter().enumerate() {
        if let Some(ip) = port.host_ip.filter(|ip| !ip.is_unspecified()) {
            notes.push(Note::new(
                at(&format!(".ports[{index}]")),
                format!("host IP {ip} not kept: a Service listens on every node (or its load balancer's address)"),
            ));
        }
        if port.published.is_none() {
            notes.push(Note::new(
                at(&format!(".ports[{index}]")),
                format!(
                    "no published port: the Service uses the container port {}",
                    port.target
                ),
            ));
        }
    }
    if matches!(service.restart.name.as_str(), "no" | "on-failure") {
        notes.push(Note::new(
            at(".restart"),
            format!(
                "`{}`: a Deployment always restarts its pods (a Job runs to completion instead)",
                service.restart.name
            ),
        ));
    }
    if let Some(signal) = &service.stop_signal {
        notes.push(Note::new(
            at(".stop_signal"),
            format!("{signal} not kept: Kubernetes sends SIGTERM (use a preStop hook)"),
        ));
    }
    if !service.depends_on.is_empty() {
        notes.push(Note::new(
            at(".depends_on"),
            format!(
                "{}: Kubernetes starts pods in no order; readiness probes gate traffic instead",
                service.depends_on.join(", ")
            ),
        ));
    }
    if service.placement.is_some() {
        notes.push(Note::new(
            at(".placement"),
            "Swarm placement not kept: use nodeSelector/affinity/topologySpreadConstraints",
        ));
    }
    let has_claim = service
        .volumes
        .iter()
        .any(|m| m.kind == crate::app::MountType::Volume && m.source.is_some());
    if has_claim && replicas > 1 {
        notes.push(Note::new(
            at(".volumes"),
            format!("{replicas} replicas share each ReadWriteOnce claim (Docker gave each host its own volume): they must land on one node, or use a StatefulSet"),
        ));
    }
    let unmapped = unmapped_options(service);
    if !unmapped.is_empty() {
        notes.push(Note::new(
            at(""),
            format!("not exported: {}", unmapped.join(", ")),
        ));
    }
}

/// Container options with no field in the exported pod.
fn unmapped_options(service: &Service) -> Vec<&'static str> {
    let mut names = Vec::new();
    let mut check = |name: &'static str, set: bool| {
        if set {
            names.push(name);
        }
    };
    check("extra_hosts", !service.extra_hosts.is_empty());
    check("init", service.init.is_some());
    check("ulimits", !service.ulimits.is_empty());
    check("logging", service.logging.is_some());
    check("dns", !service.dns.is_empty());
    check("dns_search", !service.dns_search.is_empty());
    check("security_opt", !service.security_opt.is_empty());
    check("sysctls", !service.sysctls.is_empty());
    check("shm_size", service.shm_size.is_some());
    check("pids_limit", service.pids_limit.is_some());
    check("container_name", service.container_name.is_some());
    names
}
