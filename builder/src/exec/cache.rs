//! The build cache's key → layer index (one JSON file per key under
//! `keys/`), and its exchange with registries: `--cache-from` pulls a
//! cache another build pushed with `--cache-to`.

use std::collections::BTreeMap;
use std::fs;

use berth_client::copy::{copy_image, CopyOptions};
use berth_client::image::{media, ImageDest, ManifestKind, NoProgress};
use berth_client::layout::OciLayoutDest;
use berth_client::location::Location;
use berth_client::remote::RegistrySource;
use berth_client::{ImageRef, Manifest};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::error::{json_error, ExecError, IoContext, R};
use super::{Digest, Executor, Layer, LayerRecord};

/// The config media type of a cache pushed with `--cache-to`.
pub const CACHE_MEDIA_TYPE: &str = "application/vnd.berth.build.cache.v1+json";

/// The config blob of a pushed cache: key → layer.
#[derive(Serialize, Deserialize)]
struct CacheFile {
    entries: BTreeMap<String, CacheEntry>,
}

/// What the cache remembers for one key.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct CacheEntry {
    /// None: the step changed nothing (no layer).
    pub layer: Option<LayerRecord>,
    pub created: String,
}

impl Executor<'_> {
    /// Pull a cache pushed by `--cache-to` and add its entries (keys this
    /// cache has already win). Returns how many entries it held.
    pub(super) fn import_cache(&self, reference: &str) -> R<usize> {
        let r = ImageRef::parse(reference)?;
        let registry = self.client.registry(&r.registry)?;
        let layout_dir = self.layout.dir().to_path_buf();
        let tag = format!("cache-from/{}", Location::store_name(&r));
        let report = self.runtime.block_on(async {
            let source = RegistrySource::new(registry, r.clone());
            let dest = OciLayoutDest::create(&layout_dir, Some(&tag)).await?;
            copy_image(
                &source,
                &dest,
                Some(&tag),
                &CopyOptions::default(),
                &NoProgress,
            )
            .await
        })?;
        let bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&report.digest))?;
        let ManifestKind::Image { config, .. } =
            Manifest::new(bytes, report.media_type.clone()).parse()?
        else {
            return Err(ExecError::NotACache("not a build cache (an index)".into()));
        };
        if config.media_type != CACHE_MEDIA_TYPE {
            return Err(ExecError::NotACache(format!(
                "not a build cache (its config is {}, not {CACHE_MEDIA_TYPE})",
                config.media_type
            )));
        }
        let bytes = self
            .runtime
            .block_on(self.layout.read_small_blob(&config.digest))?;
        let file: CacheFile =
            serde_json::from_slice(&bytes).map_err(json_error("the cache index is not valid"))?;
        for (key, entry) in &file.entries {
            let hex = key.trim_start_matches("sha256:");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            if !self.keys_dir.join(hex).exists() {
                self.write_entry(key, entry)?;
            }
        }
        Ok(file.entries.len())
    }

    /// Push this build's cache entries and their layers as one artifact.
    pub(super) fn export_cache(&self, reference: &str) -> R<()> {
        let r = ImageRef::parse(reference)?;
        let file = CacheFile {
            entries: self.used.lock().map(|u| u.clone()).unwrap_or_default(),
        };
        let config_bytes = serde_json::to_vec(&file).map_err(json_error("cache index"))?;
        let config_digest = Digest::sha256_of(&config_bytes);
        self.runtime
            .block_on(self.layout.put_blob_bytes(&config_digest, &config_bytes))?;
        let mut seen = std::collections::BTreeSet::new();
        let layers: Vec<Value> = file
            .entries
            .values()
            .filter_map(|e| e.layer.as_ref())
            .filter(|l| seen.insert(l.blob.digest.clone()))
            .map(|l| json!({"mediaType": l.blob.media_type, "digest": l.blob.digest.to_string(), "size": l.blob.size}))
            .collect();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "artifactType": CACHE_MEDIA_TYPE,
            "config": {"mediaType": CACHE_MEDIA_TYPE, "digest": config_digest.to_string(), "size": config_bytes.len()},
            "layers": layers,
        });
        let manifest = Manifest::new(
            serde_json::to_vec(&manifest).map_err(json_error("cache manifest"))?,
            media::OCI_MANIFEST,
        );
        let tag = "cache-to";
        let layout_dir = self.layout.dir().to_path_buf();
        let registry = self.client.registry(&r.registry)?;
        self.runtime.block_on(async {
            let dest = OciLayoutDest::create(&layout_dir, Some(tag)).await?;
            dest.put_manifest(&manifest, Some(tag)).await?;
            dest.commit().await?;
            let source =
                berth_client::layout::OciLayoutSource::open(&layout_dir, Some(tag)).await?;
            let remote = berth_client::remote::RegistryDest::new(registry, r.clone(), 4);
            copy_image(
                &source,
                &remote,
                r.tag_or_latest().as_deref(),
                &CopyOptions::default(),
                &NoProgress,
            )
            .await
        })?;
        Ok(())
    }

    /// The layer (None: the step changed nothing) and creation time cached
    /// under `key`, unless `--no-cache` or its blob is gone.
    pub(super) fn cache_get(&self, key: &str) -> Option<(Option<Layer>, String)> {
        if self.options.no_cache {
            return None;
        }
        let path = self.keys_dir.join(key.trim_start_matches("sha256:"));
        let entry: CacheEntry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        match entry.layer {
            None => Some((None, entry.created)),
            Some(record) => {
                let blob = self.layout.blob_path(&record.blob.digest);
                if !fs::metadata(&blob).is_ok_and(|m| m.len() == record.blob.size) {
                    return None;
                }
                let dir = self.ensure_layer_dir(&record).ok()?;
                Some((Some(Layer { record, dir }), entry.created))
            }
        }
    }

    pub(super) fn cache_put(&self, key: &str, layer: Option<&Layer>, created: &str) -> R<()> {
        let entry = CacheEntry {
            layer: layer.map(|l| l.record.clone()),
            created: created.to_string(),
        };
        self.write_entry(key, &entry)
    }

    /// Remember that this build used (or made) `key`'s entry, for `--cache-to`.
    pub(super) fn record_used(&self, key: &str, layer: Option<&Layer>, created: &str) {
        if let Ok(mut used) = self.used.lock() {
            used.insert(
                key.to_string(),
                CacheEntry {
                    layer: layer.map(|l| l.record.clone()),
                    created: created.to_string(),
                },
            );
        }
    }

    fn write_entry(&self, key: &str, entry: &CacheEntry) -> R<()> {
        let path = self.keys_dir.join(key.trim_start_matches("sha256:"));
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        fs::write(&tmp, serde_json::to_vec(entry).unwrap_or_default())
            .and_then(|_| fs::rename(&tmp, &path))
            .with_context(|| format!("cannot write {}", path.display()))
    }
}
