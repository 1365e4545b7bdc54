//! Deployment records (see `berth_oci::deployment`): after a deploy, each image it placed or
//! took off a host gets one OCI artifact in its repository whose `subject` is the image's
//! manifest. Building the records is pure; pushing them runs after the hosts are done, all
//! images at once, and a push that fails is a warning for the caller, never a failed deploy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::SystemTime;

use berth_client::credentials::{Credentials, DockerConfig};
use berth_client::image::media;
use berth_client::registry::{Client, ClientConfig};
use berth_client::{ImageRef, Manifest};
use berth_oci::deployment::{HostEntry, Record, Status, SwarmEntry, ARTIFACT_TYPE};
use bytes::Bytes;
use serde_json::json;

use crate::actual::{ActualContainer, ActualHost};
use crate::apply::{ActionResult, Outcome};
use crate::desired::DesiredHost;
use crate::plan::{Action, HostPlan};
use crate::run::{HostReport, RunReport};
use crate::swarm::SwarmAction;

/// The same for every record of a run.
#[derive(Clone, Debug)]
pub struct RunFacts {
    pub app: String,
    pub inventory: String,
    /// When the run ended ([`now`]).
    pub time: String,
    pub berth_version: String,
    /// `$USER@hostname`, used where no registry login names the deployer.
    pub local_user: String,
}

/// The current time as records write it: RFC 3339, UTC, milliseconds.
pub fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// `$USER@hostname` (either part may be unknown).
pub fn local_user() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        user
    } else {
        format!("{user}@{host}")
    }
}

/// The name records give an inventory: the file's stem, or the folder's name.
pub fn inventory_name(path: &std::path::Path) -> String {
    let name = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    name.map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// An image a host stopped running in this deploy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TakenOff {
    pub service: String,
    /// `registry/repository@digest`, from the container that ran it.
    pub image: String,
    pub status: Status,
}

/// What `plan` took off the host, by its results (one per action, in plan order): the
/// images of replaced and removed containers whose digest the host knew.
pub(crate) fn taken_off(
    plan: &HostPlan,
    actual: &ActualHost,
    results: &[ActionResult],
) -> Vec<TakenOff> {
    let mut out = Vec::new();
    for (action, result) in plan.actions.iter().zip(results) {
        if result.outcome != Outcome::Changed {
            continue;
        }
        let (id, status) = match action {
            Action::ReplaceContainer { old_id, .. } => (old_id, Status::Replaced),
            Action::RemoveContainer { id, .. } => (id, Status::Removed),
            _ => continue,
        };
        let Some(old) = actual.containers.iter().find(|c| &c.id == id) else {
            continue;
        };
        if let Some(image) = pinned_image(old) {
            out.push(TakenOff {
                service: service_of(old),
                image,
                status,
            });
        }
    }
    out
}

/// `registry/repository@digest` of the image a container runs, when known: its reference
/// pinned, or deployed by tag and the host knows one digest for it.
fn pinned_image(c: &ActualContainer) -> Option<String> {
    let mut reference = ImageRef::parse(&c.image).ok()?;
    if reference.digest.is_none() {
        let [digest] = c.image_digests.as_slice() else {
            return None;
        };
        reference = reference.with_digest(digest.parse().ok()?);
    }
    let digest = reference.digest.as_ref()?;
    Some(format!("{}@{digest}", reference.name()))
}

fn service_of(c: &ActualContainer) -> String {
    c.labels
        .get(crate::labels::SERVICE)
        .cloned()
        .unwrap_or_else(|| c.name.clone())
}

/// What runs on a host after `berth rollback`, per service: `registry/repository@digest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Running {
    pub service: String,
    pub image: String,
}

/// What a rollback on one host left running and took off, from the host's state read
/// before it and its results (one per kept previous release, in `actual.previous` order,
/// then one per container the rolled-back deploy created, in `created` order). Running:
/// every container of `app` after the rollback (the kept releases put back, the containers
/// it did not touch), as a deploy's record lists every service of an image, so a record's
/// host entry tells the whole truth. Taken off: the current containers the kept releases
/// replaced, and the created containers it removed.
pub(crate) fn rolled_back(
    actual: &ActualHost,
    app: &str,
    created: &[&ActualContainer],
    results: &[ActionResult],
) -> (Vec<Running>, Vec<TakenOff>) {
    let changed = |i: usize| {
        results
            .get(i)
            .is_some_and(|r| r.outcome == Outcome::Changed)
    };
    if !(0..results.len()).any(changed) {
        return (Vec::new(), Vec::new()); // nothing rolled back here: nothing to record
    }
    let swapped: HashMap<&str, &ActualContainer> = actual
        .previous
        .iter()
        .enumerate()
        .filter(|(i, _)| changed(*i))
        .map(|(_, p)| {
            let name = p.name.strip_suffix(crate::labels::PREVIOUS_SUFFIX);
            (name.unwrap_or(&p.name), p)
        })
        .collect();
    let removed: HashSet<&str> = created
        .iter()
        .enumerate()
        .filter(|(i, _)| changed(actual.previous.len() + i))
        .map(|(_, c)| c.name.as_str())
        .collect();
    let (mut running, mut gone) = (Vec::new(), Vec::new());
    let mut note = |c: &ActualContainer, status: Option<Status>| {
        let Some(image) = pinned_image(c) else { return };
        let service = service_of(c);
        match status {
            Some(status) => gone.push(TakenOff {
                service,
                image,
                status,
            }),
            None => running.push(Running { service, image }),
        }
    };
    let current: Vec<&ActualContainer> = actual
        .containers
        .iter()
        .filter(|c| c.app() == Some(app))
        .collect();
    for c in &current {
        if removed.contains(c.name.as_str()) {
            note(c, Some(Status::Removed));
        } else if let Some(previous) = swapped.get(c.name.as_str()) {
            note(previous, None);
            note(c, Some(Status::Replaced));
        } else {
            note(c, None);
        }
    }
    // A kept release whose current container was gone: put back all the same.
    for (name, previous) in &swapped {
        if !current.iter().any(|c| c.name == *name) {
            note(previous, None);
        }
    }
    (running, gone)
}

/// Each host's `(service, image as written)` before the run pins them.
pub fn planned_services(desired: &[DesiredHost]) -> BTreeMap<String, Vec<(String, String)>> {
    desired
        .iter()
        .map(|host| {
            let mut services: Vec<(String, String)> = host
                .containers
                .iter()
                .map(|c| (c.service.clone(), c.spec.image.clone()))
                .collect();
            services.dedup();
            (host.host.clone(), services)
        })
        .collect()
}

/// One record to push: where (`registry/repository@digest`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub subject: ImageRef,
    pub record: Record,
}

/// Records of a container-mode run: one per image deployed (with each host's result) and
/// one per image taken off a host (unless the same run placed it on that host again).
pub fn container_records(
    facts: &RunFacts,
    services: &BTreeMap<String, Vec<(String, String)>>,
    report: &RunReport,
) -> Vec<Pending> {
    let mut by_image: BTreeMap<String, Pending> = BTreeMap::new();
    for host in &report.hosts {
        let running =
            services
                .get(&host.host)
                .into_iter()
                .flatten()
                .filter_map(|(service, written)| {
                    let digest = report.images.get(written)?;
                    Some((written.as_str(), digest.as_str(), service.as_str()))
                });
        add_running(&mut by_image, facts, host, running);
    }
    add_taken_off(&mut by_image, facts, report);
    finish(by_image)
}

/// Records of `berth rollback`: one per image running on a host after it (with that host's
/// result and every service running it there) and one per image taken off (replaced by the
/// kept release, or a created container removed) unless it still runs on that host.
pub fn rollback_records(facts: &RunFacts, report: &RunReport) -> Vec<Pending> {
    let mut by_image: BTreeMap<String, Pending> = BTreeMap::new();
    for host in &report.hosts {
        let running = host.running_after_rollback.iter().filter_map(|r| {
            let (name, digest) = r.image.split_once('@')?;
            Some((name, digest, r.service.as_str()))
        });
        add_running(&mut by_image, facts, host, running);
    }
    add_taken_off(&mut by_image, facts, report);
    finish(by_image)
}

/// `host`'s entry (its result, the services running each image, each named once) on the
/// record of every image in `running`: (image as written, digest, service).
fn add_running<'a>(
    by_image: &mut BTreeMap<String, Pending>,
    facts: &RunFacts,
    host: &HostReport,
    running: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
) {
    let result = if host.succeeded() {
        Status::Ok
    } else {
        Status::Failed
    };
    let mut per_image: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
    for (image, digest, service) in running {
        let services = per_image.entry((image, digest)).or_default();
        if !services.iter().any(|s| s == service) {
            services.push(service.to_string());
        }
    }
    for ((image, digest), services) in per_image {
        let Some(pending) = pending_for(by_image, facts, image, digest) else {
            continue;
        };
        pending.record.hosts.push(HostEntry {
            host: host.host.clone(),
            services,
            result,
        });
    }
}

/// One entry per image a host stopped running, on that image's record, unless the same
/// run placed the image on that host again.
fn add_taken_off(by_image: &mut BTreeMap<String, Pending>, facts: &RunFacts, report: &RunReport) {
    for host in &report.hosts {
        for gone in &host.taken_off {
            let Some((name, digest)) = gone.image.split_once('@') else {
                continue;
            };
            let Some(pending) = pending_for(by_image, facts, name, digest) else {
                continue;
            };
            let hosts = &mut pending.record.hosts;
            match hosts.iter_mut().find(|h| h.host == host.host) {
                // Placed there again by this run (a replaced container of the same image).
                Some(entry) if matches!(entry.result, Status::Ok | Status::Failed) => {}
                Some(entry) => entry.services.push(gone.service.clone()),
                None => hosts.push(HostEntry {
                    host: host.host.clone(),
                    services: vec![gone.service.clone()],
                    result: gone.status,
                }),
            }
        }
    }
}

/// Records of a Swarm run: one per image, naming the services that run it.
pub fn swarm_records(
    facts: &RunFacts,
    services: &[(String, String)],
    report: &RunReport,
) -> Vec<Pending> {
    let status = if report.succeeded() {
        Status::Ok
    } else {
        Status::Failed
    };
    let mut by_image: BTreeMap<String, Pending> = BTreeMap::new();
    for (service, written) in services {
        let Some(digest) = report.images.get(written) else {
            continue;
        };
        if let Some(pending) = pending_for(&mut by_image, facts, written, digest) {
            pending.record.swarm_services.push(SwarmEntry {
                service: service.clone(),
                result: status,
            });
        }
    }
    // The images updated services stopped running get a `replaced` entry, so their pages
    // stop naming those services.
    for gone in report.hosts.iter().flat_map(|h| &h.taken_off) {
        let Some((name, digest)) = gone.image.split_once('@') else {
            continue;
        };
        if let Some(pending) = pending_for(&mut by_image, facts, name, digest) {
            let entries = &mut pending.record.swarm_services;
            if !entries.iter().any(|e| e.service == gone.service) {
                entries.push(SwarmEntry {
                    service: gone.service.clone(),
                    result: gone.status,
                });
            }
        }
    }
    finish(by_image)
}

/// What a Swarm run took off its services, by its results (one per action, in plan order):
/// an updated service whose stored config named another digest. Computed from the plan
/// before it is redacted (the stored config goes with the redaction).
pub(crate) fn swarm_taken_off(actions: &[SwarmAction], results: &[ActionResult]) -> Vec<TakenOff> {
    let mut out = Vec::new();
    for (action, result) in actions.iter().zip(results) {
        let SwarmAction::UpdateService {
            service,
            previous_config: Some(previous),
            ..
        } = action
        else {
            continue;
        };
        if result.outcome != Outcome::Changed {
            continue;
        }
        // Read as plain JSON: a config stored by another Berth version still names its image.
        let Ok(old) = serde_json::from_str::<serde_json::Value>(previous) else {
            continue;
        };
        let (Some(old_image), Some(old_digest)) = (
            old.get("image").and_then(|v| v.as_str()),
            old.get("image_digest").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        if service.spec.image_digest.as_deref() == Some(old_digest) {
            continue;
        }
        let Ok(reference) = ImageRef::parse(old_image) else {
            continue;
        };
        out.push(TakenOff {
            service: service.name.clone(),
            image: format!("{}@{old_digest}", reference.name()),
            status: Status::Replaced,
        });
    }
    out
}

/// The record for `name@digest` in `by_image`, started if new; `None` when the reference
/// or the digest does not parse.
fn pending_for<'a>(
    by_image: &'a mut BTreeMap<String, Pending>,
    facts: &RunFacts,
    name: &str,
    digest: &str,
) -> Option<&'a mut Pending> {
    let parsed_digest = digest.parse().ok()?;
    let subject = ImageRef::parse(name).ok()?.with_digest(parsed_digest);
    let key = format!("{}/{}@{digest}", subject.registry, subject.repository);
    Some(by_image.entry(key).or_insert_with(|| Pending {
        subject,
        record: Record {
            app: facts.app.clone(),
            inventory: facts.inventory.clone(),
            image: name.to_string(),
            digest: digest.to_string(),
            time: facts.time.clone(),
            who: facts.local_user.clone(),
            berth_version: facts.berth_version.clone(),
            result: Status::Ok,
            hosts: Vec::new(),
            swarm_services: Vec::new(),
        },
    }))
}

/// Sets each record's overall result: failed when any host or service failed.
fn finish(by_image: BTreeMap<String, Pending>) -> Vec<Pending> {
    by_image
        .into_values()
        .map(|mut pending| {
            let record = &mut pending.record;
            let failed = record.hosts.iter().any(|h| h.result == Status::Failed)
                || record
                    .swarm_services
                    .iter()
                    .any(|s| s.result == Status::Failed);
            if failed {
                record.result = Status::Failed;
            }
            pending
        })
        .collect()
}

/// The artifact manifest for `record` (its JSON is `layer`) about `subject`.
pub fn artifact_manifest(
    record: &Record,
    subject: &Manifest,
    empty: &berth_client::image::BlobInfo,
    layer: &berth_client::image::BlobInfo,
) -> serde_json::Value {
    json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": { "mediaType": berth_oci::media_type::OCI_EMPTY, "digest": empty.digest.to_string(), "size": empty.size, "data": "e30=" },
        "layers": [ { "mediaType": ARTIFACT_TYPE, "digest": layer.digest.to_string(), "size": layer.size } ],
        "subject": { "mediaType": subject.media_type, "digest": subject.digest.to_string(), "size": subject.bytes.len() },
        "annotations": { "org.opencontainers.image.created": record.time },
    })
}

/// The registry login `config` uses for `registry`, if it is a user name.
fn login_user(config: &ClientConfig, registry: &str) -> Option<String> {
    let credentials = match &config.credentials {
        Some(c) => Some(c.clone()),
        None => DockerConfig::load(&config.docker_config)
            .ok()?
            .credentials_for(registry)
            .ok()?,
    };
    match credentials {
        Some(Credentials::Basic { username, .. }) if !username.is_empty() => Some(username),
        _ => None,
    }
}

/// Pushes one record; the error says what went wrong.
async fn push_one(client: &Client, mut pending: Pending) -> Result<String, String> {
    let subject = &pending.subject;
    let registry = client
        .registry(&subject.registry)
        .map_err(|e| e.to_string())?;
    if let Some(user) = login_user(client.config(), &subject.registry) {
        pending.record.who = user;
    }
    let repository = &subject.repository;
    let digest = pending.record.digest.clone();
    let manifest = registry
        .manifest_get(repository, &digest)
        .await
        .map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&pending.record).map_err(|e| e.to_string())?;
    let empty = registry.blob_push_bytes(
        repository,
        berth_oci::media_type::OCI_EMPTY,
        Bytes::from_static(b"{}"),
    );
    let layer = registry.blob_push_bytes(repository, ARTIFACT_TYPE, Bytes::from(body));
    let (empty, layer) = futures::future::try_join(empty, layer)
        .await
        .map_err(|e| e.to_string())?;
    let artifact = artifact_manifest(&pending.record, &manifest, &empty, &layer);
    let bytes = serde_json::to_vec(&artifact).map_err(|e| e.to_string())?;
    let artifact = Manifest::new(bytes, media::OCI_MANIFEST);
    registry
        .manifest_put(repository, &artifact.digest.to_string(), &artifact)
        .await
        .map_err(|e| e.to_string())?;
    Ok(artifact.digest.to_string())
}

/// Pushes every record at once. Returns one line per record: what was recorded, or a
/// warning saying why not.
pub async fn push_all(config: &ClientConfig, records: Vec<Pending>) -> Vec<Result<String, String>> {
    let client = Client::new(config.clone());
    let pushes = records.into_iter().map(|pending| {
        let client = &client;
        async move {
            let what = format!(
                "{}/{}@{}",
                pending.subject.registry, pending.subject.repository, pending.record.digest
            );
            match push_one(client, pending).await {
                Ok(artifact) => Ok(format!("recorded the deployment of {what} ({artifact})")),
                Err(error) => Err(format!(
                    "warning: the deployment record for {what} could not be pushed: {error}"
                )),
            }
        }
    });
    futures::future::join_all(pushes).await
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
