//! Volumes and secrets of swarm services.
//!
//! - Named volumes: Swarm has no cluster-wide volume object here; each node makes the
//!   volume when a task first mounts it, from the driver, options and labels in the mount.
//!   Nothing removes them (as in container mode).
//! - Secrets: Swarm secrets are immutable, so each value is its own secret, named
//!   `APP_NAME-DIGEST` (12 hex digits of the salted digest): a changed value is a new secret
//!   and the service update rotates to it. After a deploy, the app's secrets that no service
//!   uses any more (neither its spec nor the previous spec Swarm and `berth rollback` return
//!   to) are removed.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use bollard::models::{
    MountVolumeOptionsDriverConfig, SecretSpec, ServiceSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecSecrets,
};
use bollard::query_parameters::{ListSecretsOptions, ListServicesOptions};

use super::SwarmService;
use crate::app::{App, Mount, MountType, Service};
use crate::engine::{api_error, Engine};
use crate::labels;
use crate::storage::{DesiredVolume, SecretFile, SecretValues};

/// Label on a swarm secret: the app's secret key it holds a value of.
const SECRET_KEY_LABEL: &str = "berth.secret";

pub(crate) fn no_values(values: &SecretValues) -> bool {
    values.0.is_empty()
}

/// A service's mounts (volume sources as Docker names) and the named volumes they use.
pub(crate) fn swarm_mounts(app: &App, service: &Service) -> (Vec<Mount>, Vec<DesiredVolume>) {
    let mut mounts = Vec::new();
    let mut volumes = Vec::new();
    for mount in &service.volumes {
        let mut mount = mount.clone();
        if mount.kind == MountType::Volume {
            if let Some(key) = mount.source.clone() {
                let name = app.volume_docker_name(&key);
                if let Some(volume) = app.volumes.get(&key) {
                    let mut labels = volume.labels.clone();
                    labels.insert(labels::APP.into(), app.name.clone());
                    if !volumes.iter().any(|v: &DesiredVolume| v.name == name) {
                        volumes.push(DesiredVolume {
                            key: key.clone(),
                            name: name.clone(),
                            driver: volume.driver.clone(),
                            driver_opts: volume.driver_opts.clone(),
                            labels,
                            external: volume.external,
                        });
                    }
                }
                mount.source = Some(name);
            }
        }
        mounts.push(mount);
    }
    (mounts, volumes)
}

/// The Swarm secret holding one secret file's value.
pub fn secret_name(app: &str, file: &SecretFile) -> String {
    let digest = file.digest.get(..12).unwrap_or(&file.digest);
    format!("{app}_{}-{digest}", file.source)
}

/// The mounts of `service` as the Engine API takes them in a task's container spec.
pub(crate) fn engine_mounts(service: &SwarmService) -> Vec<bollard::models::Mount> {
    service
        .spec
        .mounts
        .iter()
        .map(|mount| {
            let mut engine_mount = crate::engine::storage_mount(mount);
            // A node creates a missing named volume from what the mount says about it.
            let volume = mount
                .source
                .as_ref()
                .and_then(|name| service.spec.volumes.iter().find(|v| &v.name == name))
                .filter(|v| !v.external && mount.kind == MountType::Volume);
            if let Some(volume) = volume {
                let options = engine_mount
                    .volume_options
                    .get_or_insert_with(Default::default);
                options.labels = Some(volume.labels.clone().into_iter().collect());
                options.driver_config = Some(MountVolumeOptionsDriverConfig {
                    name: volume.driver.clone(),
                    options: Some(volume.driver_opts.clone().into_iter().collect()),
                });
            }
            engine_mount
        })
        .collect()
}

/// Makes sure every secret `service` uses exists on the swarm (creating the missing ones
/// from the values read at deploy time) and sets the references in `spec`.
pub(crate) async fn attach_secrets(
    engine: &Engine,
    app: &str,
    service: &SwarmService,
    spec: &mut ServiceSpec,
) -> Result<(), String> {
    if service.spec.secrets.is_empty() {
        return Ok(());
    }
    let existing: HashMap<String, String> = list_app_secrets(engine, app)
        .await?
        .into_iter()
        .map(|(id, name, _)| (name, id))
        .collect();
    let mut references = Vec::new();
    for file in &service.spec.secrets {
        let name = secret_name(app, file);
        let id = match existing.get(&name) {
            Some(id) => id.clone(),
            None => {
                let Some(bytes) = service.secret_values.0.get(&file.source) else {
                    return Err(format!(
                        "Swarm secret {name} (secret `{}`) no longer exists and its value is not at hand (a rollback to a release whose secret was removed)",
                        file.source
                    ));
                };
                let created = engine
                    .docker()
                    .create_secret(SecretSpec {
                        name: Some(name.clone()),
                        labels: Some(HashMap::from([
                            (labels::APP.to_string(), app.to_string()),
                            (SECRET_KEY_LABEL.to_string(), file.source.clone()),
                        ])),
                        data: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| api_error(&format!("creating Swarm secret {name}"), e))?;
                created.id
            }
        };
        // Under /run/secrets Swarm wants the bare file name; other targets stay absolute.
        let file_name = file
            .target
            .strip_prefix(&format!("{}/", crate::app::SECRETS_DIR))
            .unwrap_or(&file.target)
            .to_string();
        references.push(TaskSpecContainerSpecSecrets {
            file: Some(TaskSpecContainerSpecFile {
                name: Some(file_name),
                uid: Some(file.uid.to_string()),
                gid: Some(file.gid.to_string()),
                mode: Some(file.mode),
            }),
            secret_id: Some(id),
            secret_name: Some(name),
        });
    }
    if let Some(container) = spec
        .task_template
        .as_mut()
        .and_then(|t| t.container_spec.as_mut())
    {
        container.secrets = Some(references);
    }
    Ok(())
}

/// (id, name, key) of the app's Swarm secrets.
async fn list_app_secrets(
    engine: &Engine,
    app: &str,
) -> Result<Vec<(String, String, String)>, String> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{}={app}", labels::APP)])]);
    let secrets = engine
        .docker()
        .list_secrets(Some(ListSecretsOptions {
            filters: Some(filters),
        }))
        .await
        .map_err(|e| api_error("listing Swarm secrets", e))?;
    Ok(secrets
        .into_iter()
        .filter_map(|secret| {
            let spec = secret.spec?;
            let key = spec
                .labels
                .as_ref()
                .and_then(|l| l.get(SECRET_KEY_LABEL).cloned())
                .unwrap_or_default();
            Some((secret.id?, spec.name?, key))
        })
        .collect())
}

/// Removes the app's Swarm secrets that no service refers to in its spec or previous spec.
/// Returns the names removed.
pub(crate) async fn remove_unused(engine: &Engine, app: &str) -> Result<Vec<String>, String> {
    let secrets = list_app_secrets(engine, app).await?;
    if secrets.is_empty() {
        return Ok(Vec::new());
    }
    let services = engine
        .docker()
        .list_services(None::<ListServicesOptions>)
        .await
        .map_err(|e| api_error("listing services", e))?;
    let referenced = |spec: Option<&ServiceSpec>| -> Vec<String> {
        spec.and_then(|s| s.task_template.as_ref())
            .and_then(|t| t.container_spec.as_ref())
            .and_then(|c| c.secrets.as_ref())
            .map(|refs| refs.iter().filter_map(|r| r.secret_id.clone()).collect())
            .unwrap_or_default()
    };
    let used: BTreeSet<String> = services
        .iter()
        .flat_map(|s| referenced(s.spec.as_ref()))
        .collect();
    // Bollard does not read a service's PreviousSpec; Berth's own record of it (the label
    // `berth rollback --swarm` returns to) names the secrets it uses.
    let kept_for_rollback: BTreeSet<String> = services
        .iter()
        .filter_map(|s| {
            s.spec
                .as_ref()?
                .labels
                .as_ref()?
                .get(super::PREVIOUS_CONFIG)
        })
        .filter_map(|text| serde_json::from_str::<super::SwarmSpec>(text).ok())
        .flat_map(|spec| {
            spec.secrets
                .iter()
                .map(|file| secret_name(app, file))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut removed = Vec::new();
    for (id, name, _) in secrets {
        if used.contains(&id) || kept_for_rollback.contains(&name) {
            continue;
        }
        engine
            .docker()
            .delete_secret(&id)
            .await
            .map_err(|e| api_error(&format!("removing unused Swarm secret {name}"), e))?;
        removed.push(name);
    }
    Ok(removed)
}
