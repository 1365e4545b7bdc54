//! What the pages show about a manifest, read from its JSON and its config
//! blob. Parsing is lenient (a field that is missing or of the wrong type is
//! simply not shown): pages must render whatever a client pushed.
//!
//! Summaries are cached by manifest digest: content addressed by digest never
//! changes, so the cache needs no invalidation, only a bound.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use berth_storage::{Digest, Storage};
use serde_json::Value;

/// Config blobs larger than this are not read (a real image config is kilobytes).
const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Summaries cached at most; the cache is emptied when full.
const MAX_CACHED: usize = 100_000;

/// One row of a repository's tag table (also stored, see `records`).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Summary {
    /// "image", "index" or the media type of anything else.
    pub kind: String,
    pub platforms: Vec<String>,
    /// Compressed size: config and layers, of every child for an index.
    pub size: u64,
    /// The newest `created` of the image config(s), as written there.
    pub created: Option<String>,
    /// Every blob (config, layer) with its size, to add sizes up without
    /// counting shared layers twice.
    pub blobs: Vec<(String, u64)>,
}

/// A child manifest of an index.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub platform: String,
}

/// A layer with the history step that made it.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub created_by: Option<String>,
}

/// The parts of an image config the image page shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub platform: String,
    pub created: Option<String>,
    pub env: Vec<String>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: Option<String>,
    pub workdir: Option<String>,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `created_by` of each history entry that made a layer, in layer order.
    pub layer_history: Vec<Option<String>>,
    /// Every history entry (empty-layer steps too), for the full build history.
    pub history: Vec<String>,
}

/// A manifest, parsed.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    Index {
        children: Vec<Child>,
    },
    Image {
        config_digest: String,
        config_size: u64,
        layers: Vec<Layer>,
    },
    Other,
}

/// The manifest's `annotations` and `artifactType`, whatever its kind.
pub fn annotations(manifest: &Value) -> BTreeMap<String, String> {
    string_map(manifest.get("annotations"))
}

pub fn parse_manifest(manifest: &Value) -> Parsed {
    if let Some(list) = manifest.get("manifests").and_then(Value::as_array) {
        let children = list
            .iter()
            .map(|d| Child {
                digest: str_of(d, "digest"),
                media_type: str_of(d, "mediaType"),
                size: d.get("size").and_then(Value::as_u64).unwrap_or(0),
                platform: d.get("platform").map(platform_of).unwrap_or_default(),
            })
            .collect();
        return Parsed::Index { children };
    }
    let Some(config) = manifest.get("config") else {
        return Parsed::Other;
    };
    let layers = manifest
        .get("layers")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .map(|d| Layer {
                    digest: str_of(d, "digest"),
                    media_type: str_of(d, "mediaType"),
                    size: d.get("size").and_then(Value::as_u64).unwrap_or(0),
                    created_by: None,
                })
                .collect()
        })
        .unwrap_or_default();
    Parsed::Image {
        config_digest: str_of(config, "digest"),
        config_size: config.get("size").and_then(Value::as_u64).unwrap_or(0),
        layers,
    }
}

/// "linux/amd64" (with "/v8" and the like when there is a variant).
pub fn platform_of(v: &Value) -> String {
    let part = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let mut p = format!("{}/{}", part("os"), part("architecture"));
    if !part("variant").is_empty() {
        p = format!("{p}/{}", part("variant"));
    }
    if p == "/" {
        String::new()
    } else {
        p
    }
}

pub fn parse_config(config: &Value) -> Config {
    let c = config.get("config").unwrap_or(&Value::Null);
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        v.and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
    };
    let keys = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_object)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let non_empty = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let history_entries = config
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let step = |h: &Value| {
        h.get("created_by")
            .and_then(Value::as_str)
            .or_else(|| h.get("comment").and_then(Value::as_str))
            .map(str::to_string)
    };
    Config {
        platform: platform_of(config),
        created: non_empty(config.get("created")),
        env: strings(c.get("Env")).unwrap_or_default(),
        entrypoint: strings(c.get("Entrypoint")),
        cmd: strings(c.get("Cmd")),
        user: non_empty(c.get("User")),
        workdir: non_empty(c.get("WorkingDir")),
        ports: keys(c.get("ExposedPorts")),
        volumes: keys(c.get("Volumes")),
        labels: string_map(c.get("Labels")),
        layer_history: history_entries
            .iter()
            .filter(|h| h.get("empty_layer").and_then(Value::as_bool) != Some(true))
            .map(step)
            .collect(),
        history: history_entries.iter().filter_map(step).collect(),
    }
}

fn str_of(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str().map_or_else(|| v.to_string(), str::to_string),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A manifest of `repository` read from storage: (media type, JSON, bytes).
pub async fn load_manifest(
    s: &dyn Storage,
    repository: &str,
    digest: &Digest,
) -> berth_storage::Result<Option<(String, Value, bytes::Bytes)>> {
    let Some((meta, bytes)) = s.manifest_get(repository, digest).await? else {
        return Ok(None);
    };
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Some((meta.media_type, json, bytes)))
}

/// An image config blob, if the repository holds it and it is not huge.
pub async fn load_config(
    s: &dyn Storage,
    repository: &str,
    digest: &str,
) -> berth_storage::Result<Option<(Value, bytes::Bytes)>> {
    let Ok(digest) = digest.parse::<Digest>() else {
        return Ok(None);
    };
    if !s.blob_linked(repository, &digest).await? {
        return Ok(None);
    }
    match s.blob_size(&digest).await? {
        Some(size) if size <= MAX_CONFIG_BYTES => {}
        _ => return Ok(None),
    }
    let Some(bytes) = s.blob_bytes(&digest).await? else {
        return Ok(None);
    };
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok(Some((json, bytes)))
}

/// Summaries by manifest digest.
#[derive(Default)]
pub struct SummaryCache {
    map: Mutex<HashMap<String, Arc<Summary>>>,
}

impl SummaryCache {
    pub fn get(&self, digest: &Digest) -> Option<Arc<Summary>> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&digest.to_string()).cloned()
    }

    pub fn put(&self, digest: &Digest, summary: Arc<Summary>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_CACHED {
            map.clear();
        }
        map.insert(digest.to_string(), summary);
    }

    /// The summary of a manifest of `repository` (None when it is not
    /// there). An index's children are read one level deep.
    pub async fn summary(
        &self,
        s: &dyn Storage,
        repository: &str,
        digest: &Digest,
    ) -> berth_storage::Result<Option<Arc<Summary>>> {
        if let Some(hit) = self.get(digest) {
            return Ok(Some(hit));
        }
        let Some((media_type, json, _)) = load_manifest(s, repository, digest).await? else {
            return Ok(None);
        };
        let summary = match parse_manifest(&json) {
            Parsed::Index { children } => {
                let mut sum = Summary {
                    kind: "index".into(),
                    ..Summary::default()
                };
                for child in children {
                    let Ok(d) = child.digest.parse::<Digest>() else {
                        continue;
                    };
                    let Some(c) = self.image_summary(s, repository, &d).await? else {
                        continue;
                    };
                    sum.size += c.size;
                    sum.blobs.extend(c.blobs.iter().cloned());
                    sum.created = sum.created.max(c.created.clone());
                    let platform = if child.platform.is_empty() {
                        c.platforms.first().cloned().unwrap_or_default()
                    } else {
                        child.platform
                    };
                    if !platform.is_empty() && !platform.starts_with("unknown/") {
                        sum.platforms.push(platform);
                    }
                }
                sum
            }
            Parsed::Image { .. } => image_summary_of(s, repository, &json).await?,
            Parsed::Other => Summary {
                kind: media_type,
                ..Summary::default()
            },
        };
        let summary = Arc::new(summary);
        self.put(digest, summary.clone());
        Ok(Some(summary))
    }

    /// A child of an index: an image's summary, cached too.
    async fn image_summary(
        &self,
        s: &dyn Storage,
        repository: &str,
        digest: &Digest,
    ) -> berth_storage::Result<Option<Arc<Summary>>> {
        if let Some(hit) = self.get(digest) {
            return Ok(Some(hit));
        }
        let Some((_, json, _)) = load_manifest(s, repository, digest).await? else {
            return Ok(None);
        };
        if !matches!(parse_manifest(&json), Parsed::Image { .. }) {
            return Ok(None);
        }
        let summary = Arc::new(image_summary_of(s, repository, &json).await?);
        self.put(digest, summary.clone());
        Ok(Some(summary))
    }
}

async fn image_summary_of(
    s: &dyn Storage,
    repository: &str,
    json: &Value,
) -> berth_storage::Result<Summary> {
    let Parsed::Image {
        config_digest,
        config_size,
        layers,
    } = parse_manifest(json)
    else {
        return Ok(Summary::default());
    };
    let mut blobs = vec![(config_digest.clone(), config_size)];
    blobs.extend(layers.iter().map(|l| (l.digest.clone(), l.size)));
    let config = load_config(s, repository, &config_digest)
        .await?
        .map(|(v, _)| parse_config(&v))
        .unwrap_or_default();
    Ok(Summary {
        kind: "image".into(),
        platforms: if config.platform.is_empty() {
            Vec::new()
        } else {
            vec![config.platform]
        },
        size: blobs.iter().map(|(_, n)| n).sum(),
        created: config.created,
        blobs,
    })
}

/// The compressed size of some summaries together, shared blobs counted once.
pub fn total_size<'a>(summaries: impl IntoIterator<Item = &'a Summary>) -> u64 {
    let mut seen = HashMap::new();
    for s in summaries {
        for (d, n) in &s.blobs {
            seen.insert(d.as_str(), *n);
        }
    }
    seen.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn configs_give_their_fields_and_history_per_layer() {
        let config = json!({
            "architecture": "arm64", "os": "linux", "variant": "v8",
            "created": "2026-01-02T03:04:05Z",
            "config": {
                "Env": ["PATH=/bin", 7], "Cmd": ["sh"], "User": "app", "WorkingDir": "",
                "ExposedPorts": {"80/tcp": {}}, "Volumes": {"/data": {}},
                "Labels": {"a": "<script>", "n": 3}
            },
            "history": [
                {"created_by": "ADD rootfs /"},
                {"created_by": "ENV X=1", "empty_layer": true},
                {"comment": "buildkit step"}
            ]
        });
        let c = parse_config(&config);
        assert_eq!(c.platform, "linux/arm64/v8");
        assert_eq!(c.env, ["PATH=/bin"]);
        assert_eq!(c.cmd.as_deref(), Some(&["sh".to_string()][..]));
        assert_eq!(c.entrypoint, None);
        assert_eq!(c.user.as_deref(), Some("app"));
        assert_eq!(c.workdir, None);
        assert_eq!(c.ports, ["80/tcp"]);
        assert_eq!(c.volumes, ["/data"]);
        assert_eq!(c.labels["a"], "<script>");
        assert_eq!(c.labels["n"], "3");
        assert_eq!(
            c.layer_history,
            [Some("ADD rootfs /".into()), Some("buildkit step".into())]
        );
        assert_eq!(c.history.len(), 3);
    }

    #[test]
    fn anything_parses_without_panicking() {
        for v in [
            json!(null),
            json!([]),
            json!({"config": 5}),
            json!({"manifests": {}}),
        ] {
            let _ = parse_manifest(&v);
            let _ = parse_config(&v);
            let _ = annotations(&v);
        }
        let index = json!({"manifests": [{"digest": "sha256:1", "size": 5,
            "platform": {"os": "linux", "architecture": "amd64"}}]});
        let Parsed::Index { children } = parse_manifest(&index) else {
            panic!("an index")
        };
        assert_eq!(children[0].platform, "linux/amd64");
    }

    #[test]
    fn shared_blobs_count_once() {
        let a = Summary {
            blobs: vec![("c1".into(), 1), ("l".into(), 100)],
            ..Summary::default()
        };
        let b = Summary {
            blobs: vec![("c2".into(), 2), ("l".into(), 100)],
            ..Summary::default()
        };
        assert_eq!(total_size([&a, &b]), 103);
    }
}
