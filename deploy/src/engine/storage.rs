//! Volumes, mounts and secret files through the Engine API (see [`crate::storage`] for
//! why secrets travel the way they do).

use bollard::models::{
    ContainerCreateBody, HostConfig, Mount as DockerMount, MountTmpfsOptions, MountType,
    MountVolumeOptions, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListVolumesOptions, RemoveContainerOptions, RemoveVolumeOptions,
    UploadToContainerOptions,
};

use super::{api_error, is_not_found, Engine, EngineError};
use crate::actual::ActualVolume;
use crate::app::{Mount, MountType as AppMountType};
use crate::desired::{ContainerSpec, DesiredContainer};
use crate::storage::{secrets_host_dir, secrets_tar, DesiredVolume};

/// Where the helper container sees the host's secret folder.
const HELPER_DIR: &str = "/berth-secrets";

impl Engine {
    pub async fn read_volumes(&self) -> Result<Vec<ActualVolume>, EngineError> {
        let listed = self
            .api()
            .list_volumes(None::<ListVolumesOptions>)
            .await
            .map_err(|e| api_error("listing volumes", e))?;
        let mut volumes: Vec<ActualVolume> = listed
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|volume| ActualVolume {
                name: volume.name,
                driver: volume.driver,
                options: volume.options.into_iter().collect(),
                labels: volume.labels.into_iter().collect(),
            })
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    pub async fn create_volume(&self, volume: &DesiredVolume) -> Result<(), EngineError> {
        let request = VolumeCreateRequest {
            name: Some(volume.name.clone()),
            driver: volume.driver.clone(),
            driver_opts: Some(volume.driver_opts.clone().into_iter().collect()),
            labels: Some(volume.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.api()
            .create_volume(request)
            .await
            .map(|_| ())
            .map_err(|e| api_error(&format!("creating volume {}", volume.name), e))
    }

    /// Removes a volume; a missing one is fine, one still in use is an error (Docker's).
    pub async fn remove_volume(&self, name: &str) -> Result<(), EngineError> {
        match self
            .api()
            .remove_volume(name, None::<RemoveVolumeOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("removing volume {name}"), e)),
        }
    }

    /// Puts a container's secret files into their host folder, before the container is
    /// created: through a helper container (the service's own image, which is on the host by
    /// now) that bind-mounts the folder, is given the files by archive upload, and is
    /// removed without ever starting.
    pub async fn write_secrets(
        &self,
        app: &str,
        container: &DesiredContainer,
    ) -> Result<(), EngineError> {
        let spec = &container.spec;
        if spec.secrets.is_empty() {
            return Ok(());
        }
        let host_dir = secrets_host_dir(app, &spec.secrets);
        let archive =
            secrets_tar(&spec.secrets, &container.secret_values).map_err(EngineError::Secrets)?;
        let helper = format!("{}-secrets", container.name);
        let remove_helper = || async {
            match self
                .api()
                .remove_container(
                    &helper,
                    Some(RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    }),
                )
                .await
            {
                Err(e) if !is_not_found(&e) => Err(api_error(&format!("removing {helper}"), e)),
                _ => Ok(()),
            }
        };
        remove_helper().await?;
        let body = ContainerCreateBody {
            image: Some(spec.image_reference()),
            // Never run; create wants a command for images without one.
            entrypoint: Some(vec!["/berth-secrets-helper-is-never-started".to_string()]),
            network_disabled: Some(true),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{host_dir}:{HELPER_DIR}")]),
                network_mode: Some("none".to_string()),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.api()
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(helper.clone()),
                    ..Default::default()
                }),
                body,
            )
            .await
            .map_err(|e| api_error(&format!("creating secrets helper {helper}"), e))?;
        let uploaded = self
            .api()
            .upload_to_container(
                &helper,
                Some(UploadToContainerOptions {
                    path: HELPER_DIR.to_string(),
                    ..Default::default()
                }),
                bollard::body_full(archive.into()),
            )
            .await
            .map_err(|e| api_error(&format!("writing secrets of {}", container.name), e));
        let removed = remove_helper().await;
        uploaded.and(removed)
    }
}

/// The create request's mounts: `Mounts` for volumes, tmpfs and binds whose host path must
/// exist (Docker refuses a missing one, naming it), secret files among them (read-only,
/// from their host folder: after a reboot emptied it, the container fails to start rather
/// than run with an empty folder in place of its secret); legacy `Binds` for binds that may
/// create their host path.
pub(super) fn add_mounts(app: &str, spec: &ContainerSpec, host_config: &mut HostConfig) {
    let mut mounts = Vec::new();
    let mut binds = Vec::new();
    for mount in &spec.mounts {
        match mount.kind {
            AppMountType::Bind if mount.bind.as_ref().is_some_and(|b| b.create_host_path) => {
                let mode = if mount.read_only { "ro" } else { "rw" };
                binds.push(format!(
                    "{}:{}:{mode}",
                    mount.source.as_deref().unwrap_or_default(),
                    mount.target
                ));
            }
            _ => mounts.push(docker_mount(mount)),
        }
    }
    if !spec.secrets.is_empty() {
        let host_dir = secrets_host_dir(app, &spec.secrets);
        for file in &spec.secrets {
            mounts.push(DockerMount {
                target: Some(file.target.clone()),
                source: Some(format!("{host_dir}/{}", file.host_file_name())),
                typ: Some(MountType::BIND),
                read_only: Some(true),
                ..Default::default()
            });
        }
    }
    if !mounts.is_empty() {
        host_config.mounts = Some(mounts);
    }
    if !binds.is_empty() {
        host_config.binds = Some(binds);
    }
}

pub(crate) fn docker_mount(mount: &Mount) -> DockerMount {
    let typ = match mount.kind {
        AppMountType::Volume => MountType::VOLUME,
        AppMountType::Bind => MountType::BIND,
        AppMountType::Tmpfs => MountType::TMPFS,
    };
    DockerMount {
        target: Some(mount.target.clone()),
        source: mount.source.clone(),
        typ: Some(typ),
        read_only: Some(mount.read_only),
        volume_options: mount.volume.as_ref().map(|options| MountVolumeOptions {
            no_copy: Some(options.nocopy),
            ..Default::default()
        }),
        tmpfs_options: mount.tmpfs.as_ref().map(|options| MountTmpfsOptions {
            size_bytes: options.size.and_then(|s| i64::try_from(s).ok()),
            mode: options.mode.map(i64::from),
            options: None,
        }),
        ..Default::default()
    }
}
