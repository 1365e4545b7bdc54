//! Images in and out: pull a base image (or `COPY --from` image) into the
//! cache layout with its layers unpacked, and write the built image's
//! config and manifest.

use std::collections::BTreeMap;

use berth_client::copy::{copy_image, CopyOptions, CopyReport, Platforms};
use berth_client::image::{media, BlobInfo, ManifestKind, NoProgress};
use berth_client::import::{ContainerConfig, Empty};
use berth_client::layout::OciLayoutDest;
use berth_client::location::Location;
use berth_client::remote::RegistrySource;
use berth_client::{ImageRef, Manifest};
use serde_json::{json, Value};

use super::error::{json_error, ExecError, IoContext, R};
use super::{outputs, BuiltImage, Digest, Executor, ImageInfo, Layer, LayerRecord, StageResult};
use crate::plan::{Plan, Stage, StageConfig};

impl Executor<'_> {
    /// Pull an image into the cache layout and unpack its layers.
    pub(super) fn resolve_image(&self, reference: &str, platform: &str) -> R<ImageInfo> {
        let r = ImageRef::parse(reference)?;
        self.say(&format!("resolving {reference} for {platform}"));
        let wanted: berth_client::Platform = platform.parse()?;
        let report = self.pull_image(reference, &r, platform, &wanted)?;
        let bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&report.digest))?;
        let manifest = Manifest::new(bytes, report.media_type.clone());
        let ManifestKind::Image { config, layers } = manifest.parse()? else {
            return Err(ExecError::InvalidImage(format!(
                "{reference}: not an image manifest"
            )));
        };
        let config_bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&config.digest))?;
        let value: Value = serde_json::from_slice(&config_bytes).map_err(json_error(format!(
            "{reference}: the image config is not JSON"
        )))?;
        let pulled_arch = value["architecture"].as_str().unwrap_or_default();
        if !pulled_arch.is_empty() && pulled_arch != wanted.architecture {
            // BuildKit's InvalidBaseImagePlatform check: a single-platform
            // image is used as it is, whatever platform it was made for.
            self.say(&format!(
                "warning: {reference} is a {}/{pulled_arch} image, used for {platform}: its programs may not run there (InvalidBaseImagePlatform)",
                value["os"].as_str().unwrap_or("linux")
            ));
        }
        // A config that does not parse is used as an empty one.
        let container: ContainerConfig =
            serde_json::from_value(value.get("config").cloned().unwrap_or(Value::Null))
                .unwrap_or_default();
        let diff_ids: Vec<Digest> = value["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|d| d.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        if diff_ids.len() != layers.len() {
            return Err(ExecError::InvalidImage(format!(
                "{reference}: the config lists {} diff_ids for {} layers",
                diff_ids.len(),
                layers.len()
            )));
        }
        let mut out = Vec::new();
        for (blob, diff_id) in layers.into_iter().zip(diff_ids) {
            let record = LayerRecord { diff_id, blob };
            let dir = self.ensure_layer_dir(&record)?;
            out.push(Layer { record, dir });
        }
        Ok(ImageInfo {
            digest: report.digest,
            config: container,
            created: value["created"]
                .as_str()
                .unwrap_or("1970-01-01T00:00:00Z")
                .to_string(),
            layers: out,
            history: value["history"].as_array().cloned().unwrap_or_default(),
        })
    }

    /// Copy `wanted`'s image of `reference` into the cache layout: from the
    /// local store when it holds a bare name, else from its registry.
    fn pull_image(
        &self,
        reference: &str,
        r: &ImageRef,
        platform: &str,
        wanted: &berth_client::Platform,
    ) -> R<CopyReport> {
        let mut tag = Location::store_name(r);
        if platform != crate::plan::Platform::host().to_string() {
            // One tag per platform: pulling another platform's image must
            // not take the tag (and so the blobs' protection) from this one.
            tag = format!("{tag}#{}", platform.replace('/', "-"));
        }
        let registry = self.client.registry(&r.registry)?;
        let layout_dir = self.layout.dir().to_path_buf();
        let local_store = match &self.options.local_store {
            Some(store)
                if berth_client::location::is_bare_name(reference)
                    && self
                        .runtime
                        .block_on(berth_client::location::local_store_has(store, r)) =>
            {
                self.say(&format!("using {reference} from the local store"));
                Some(store.clone())
            }
            _ => None,
        };
        self.runtime
            .block_on(async {
                let source: Box<dyn berth_client::image::ImageSource> = match &local_store {
                    Some(store) => Box::new(
                        berth_client::layout::OciLayoutSource::open(
                            store,
                            Some(&Location::store_name(r)),
                        )
                        .await?,
                    ),
                    None => Box::new(RegistrySource::new(registry, r.clone())),
                };
                let dest = OciLayoutDest::create(&layout_dir, Some(&tag)).await?;
                copy_image(
                    source.as_ref(),
                    &dest,
                    Some(&tag),
                    &CopyOptions {
                        platforms: Platforms::One(wanted.clone()),
                        jobs: 4,
                        oci_media_types: false,
                    },
                    &NoProgress,
                )
                .await
            })
            .map_err(|source| ExecError::Pull {
                reference: reference.to_string(),
                source,
            })
    }

    /// Write the config and manifest of the target stage's image.
    pub(super) fn write_image(
        &self,
        plan: &Plan,
        stage: &Stage,
        result: &StageResult,
        images: &BTreeMap<String, ImageInfo>,
    ) -> R<BuiltImage> {
        let platform = stage
            .platform
            .clone()
            .unwrap_or_else(|| plan.target_platform.clone());
        let mut parts = platform.split('/');
        let os = parts.next().unwrap_or("linux").to_string();
        let arch = parts.next().unwrap_or("amd64").to_string();
        let variant = parts.next().map(str::to_string);
        let mut container = to_container_config(&stage.config);
        container.labels.extend(self.options.labels.clone());
        let created = match self.options.source_date_epoch {
            Some(_) => self.now(),
            None => result.created.clone(),
        };
        let mut config = json!({
            "created": created,
            "architecture": arch,
            "os": os,
            "config": container,
            "rootfs": {
                "type": "layers",
                "diff_ids": result.layers.iter().map(|l| l.record.diff_id.to_string()).collect::<Vec<_>>(),
            },
            "history": result.history,
        });
        if let Some(v) = variant {
            config["variant"] = v.into();
        }
        if let Some(a) = &stage.config.author {
            config["author"] = a.clone().into();
        }
        let config_bytes = serde_json::to_vec(&config).map_err(json_error("image config"))?;
        let config_blob = BlobInfo {
            media_type: media::OCI_CONFIG.to_string(),
            digest: Digest::sha256_of(&config_bytes),
            size: config_bytes.len() as u64,
        };
        let mut layers: Vec<Value> = Vec::new();
        for l in &result.layers {
            let blob = self.output_blob(l, images)?;
            let media_type = match blob.media_type.as_str() {
                media::DOCKER_LAYER_GZIP => media::OCI_LAYER_GZIP,
                media::DOCKER_LAYER => media::OCI_LAYER,
                other => other,
            };
            layers.push(json!({"mediaType": media_type, "digest": blob.digest.to_string(), "size": blob.size}));
        }
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config_blob.digest.to_string(), "size": config_blob.size},
            "layers": layers,
        });
        let annotations = outputs::annotations_for(
            &self.options.annotations,
            outputs::AnnotationLevel::Manifest,
            Some(&platform),
        );
        if !annotations.is_empty() {
            manifest["annotations"] = json!(annotations);
        }
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(json_error("manifest"))?;
        self.runtime.block_on(
            self.layout
                .put_blob_bytes(&config_blob.digest, &config_bytes),
        )?;
        Ok(BuiltImage {
            platform,
            manifest: Manifest::new(manifest_bytes, media::OCI_MANIFEST),
            config: config_blob,
            layer_dirs: result.layers.iter().map(|l| l.dir.clone()).collect(),
        })
    }

    /// A layer's blob in the build's compression: layers of base images
    /// stay as pulled (unless `force_compression`), the others are
    /// recompressed when their cached blob has another compression.
    fn output_blob(&self, layer: &Layer, images: &BTreeMap<String, ImageInfo>) -> R<BlobInfo> {
        let blob = &layer.record.blob;
        let wanted = self.options.compression;
        if outputs::Compression::of_media_type(&blob.media_type) == Some(wanted) {
            return Ok(blob.clone());
        }
        let from_base = images
            .values()
            .any(|i| i.layers.iter().any(|b| b.record.blob.digest == blob.digest));
        if from_base && !self.options.force_compression {
            return Ok(blob.clone());
        }
        outputs::recompress(
            &self.layout.blob_path(&blob.digest),
            blob,
            &layer.record.diff_id,
            wanted,
            &self.layout.dir().join("blobs"),
            &self.options.cache_dir.join("recompressed"),
            |d| self.layout.blob_path(d),
        )
        .with_context(|| {
            format!(
                "cannot recompress layer {} as {}",
                blob.digest,
                wanted.name()
            )
        })
    }
}

/// The plan's config with Docker's names, as it goes into the image.
pub fn to_container_config(c: &StageConfig) -> ContainerConfig {
    ContainerConfig {
        user: c.user.clone(),
        exposed_ports: c
            .exposed_ports
            .iter()
            .map(|p| (p.clone(), Empty {}))
            .collect(),
        env: c.env.clone(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        volumes: c.volumes.iter().map(|p| (p.clone(), Empty {})).collect(),
        working_dir: c.working_dir.clone(),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        on_build: c.on_build.clone(),
        healthcheck: c.healthcheck.clone(),
        shell: c.shell.clone(),
    }
}

/// An image's config as the plan's starting point.
pub fn to_stage_config(c: &ContainerConfig) -> StageConfig {
    StageConfig {
        user: c.user.clone().filter(|u| !u.is_empty()),
        exposed_ports: c.exposed_ports.keys().cloned().collect(),
        env: c.env.clone(),
        entrypoint: c.entrypoint.clone(),
        cmd: c.cmd.clone(),
        volumes: c.volumes.keys().cloned().collect(),
        working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone(),
        on_build: c.on_build.clone(),
        healthcheck: c.healthcheck.clone(),
        shell: c.shell.clone(),
        author: None,
    }
}
