//! Quotas: `[[quota]]` rules limiting, per repository pattern, the bytes of
//! blobs a repository's tagged manifests reference (`max_bytes`) and its
//! number of tags (`max_tags`).
//!
//! Usage is read from the shared storage at each check, so every replica sees
//! the same numbers; what a manifest references is cached per manifest digest
//! (a manifest never changes), so a check costs the tag list and one tag
//! resolve per tag. Concurrent pushes (on one replica or several) can overshoot
//! by at most the uploads in flight: each checks before the others land.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::http::StatusCode;
use berth_auth::acl::Pattern;
use berth_storage::{Digest, Storage};
use serde::Deserialize;

use crate::error::{ApiResult, Code, RegistryError};

/// One `[[quota]]` table as written in the config file.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Shown in refusals; default: the rule's position and patterns.
    pub name: Option<String>,
    /// Repository patterns (`team/**`, `dev/*`), as in `[access]` rules.
    pub repositories: Vec<String>,
    /// Bytes of unique blobs the repository's tagged manifests reference.
    pub max_bytes: Option<i64>,
    /// Number of tags in the repository.
    pub max_tags: Option<i64>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    repositories: Vec<Pattern>,
    max_bytes: Option<u64>,
    max_tags: Option<u64>,
}

/// What a repository uses, as `berth usage` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub bytes: u64,
    pub tags: u64,
}

/// The compiled rules (the first rule naming a repository applies) and the
/// per-manifest cache of referenced blobs.
#[derive(Debug, Default)]
pub struct Quotas {
    rules: Vec<Rule>,
    /// Manifest digest → (blob digest → size) it references, children included.
    referenced: Mutex<HashMap<Digest, BTreeMap<Digest, u64>>>,
}

/// Past this many cached manifests the cache starts over (bounded memory).
const CACHE_LIMIT: usize = 100_000;

fn limit(at: &str, key: &str, value: Option<i64>) -> Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(v) if v > 0 => Ok(Some(v as u64)),
        Some(v) => Err(format!("{at}.{key} = {v}: a limit is a positive number")),
    }
}

impl Quotas {
    /// Compile the rules; errors name the rule and key (`quota[1].max_bytes`).
    pub fn from_config(configs: &[QuotaConfig]) -> Result<Quotas, String> {
        let mut rules = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let at = format!("quota[{i}]");
            if config.repositories.is_empty() {
                return Err(format!(
                    "{at}.repositories is empty: name at least one repository pattern, e.g. \"team/**\""
                ));
            }
            let repositories = config
                .repositories
                .iter()
                .map(|p| Pattern::parse(p).map_err(|e| format!("{at}.repositories: {p:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let max_bytes = limit(&at, "max_bytes", config.max_bytes)?;
            let max_tags = limit(&at, "max_tags", config.max_tags)?;
            if max_bytes.is_none() && max_tags.is_none() {
                return Err(format!("{at}: set max_bytes, max_tags or both"));
            }
            let name = match &config.name {
                Some(name) => format!("{name:?}"),
                None => format!("{at} (repositories = {:?})", config.repositories),
            };
            rules.push(Rule {
                name,
                repositories,
                max_bytes,
                max_tags,
            });
        }
        Ok(Quotas {
            rules,
            referenced: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    fn rule_for(&self, repository: &str) -> Option<&Rule> {
        self.rules
            .iter()
            .find(|r| r.repositories.iter().any(|p| p.matches(repository)))
    }

    /// The blobs (with sizes) a manifest references, children of an index included.
    async fn manifest_blobs(
        &self,
        s: &dyn Storage,
        repository: &str,
        manifest: &Digest,
        depth: usize,
    ) -> ApiResult<BTreeMap<Digest, u64>> {
        if let Some(found) = self.cache_get(manifest) {
            return Ok(found);
        }
        let mut blobs = BTreeMap::new();
        if let Some(meta) = s.manifest_meta(repository, manifest).await? {
            for reference in meta.references.unwrap_or_default() {
                let child_is_manifest = depth < 4
                    && reference != *manifest
                    && s.manifest_meta(repository, &reference).await?.is_some();
                if child_is_manifest {
                    let child =
                        Box::pin(self.manifest_blobs(s, repository, &reference, depth + 1)).await?;
                    blobs.extend(child);
                } else if let Some(size) = s.blob_size(&reference).await? {
                    blobs.insert(reference, size);
                }
            }
            self.cache_put(manifest, &blobs);
        }
        Ok(blobs)
    }

    fn cache_get(&self, manifest: &Digest) -> Option<BTreeMap<Digest, u64>> {
        let cache = self.referenced.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(manifest).cloned()
    }

    fn cache_put(&self, manifest: &Digest, blobs: &BTreeMap<Digest, u64>) {
        let mut cache = self.referenced.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(manifest.clone(), blobs.clone());
    }

    /// The repository's unique referenced blobs and its tag count.
    async fn referenced_blobs(
        &self,
        s: &dyn Storage,
        repository: &str,
    ) -> ApiResult<(BTreeMap<Digest, u64>, u64)> {
        self.referenced_blobs_except(s, repository, None).await
    }

    /// As `referenced_blobs`, leaving out what `skip_tag` points at (the tag a
    /// manifest PUT is about to move).
    async fn referenced_blobs_except(
        &self,
        s: &dyn Storage,
        repository: &str,
        skip_tag: Option<&str>,
    ) -> ApiResult<(BTreeMap<Digest, u64>, u64)> {
        let tags = s.tags(repository).await?.unwrap_or_default();
        let mut blobs = BTreeMap::new();
        for tag in tags.iter().filter(|t| Some(t.as_str()) != skip_tag) {
            if let Some(manifest) = s.tag_resolve(repository, tag).await? {
                blobs.extend(self.manifest_blobs(s, repository, &manifest, 0).await?);
            }
        }
        Ok((blobs, tags.len() as u64))
    }

    /// Bytes of unique blobs the repository's tagged manifests reference, and its tags.
    pub async fn usage(&self, s: &dyn Storage, repository: &str) -> ApiResult<Usage> {
        let (blobs, tags) = self.referenced_blobs(s, repository).await?;
        Ok(Usage {
            bytes: blobs.values().sum(),
            tags,
        })
    }

    /// Before an upload whose size the client declared: refused when adding
    /// `size` bytes would pass `max_bytes`.
    pub async fn check_upload(
        &self,
        s: &dyn Storage,
        repository: &str,
        digest: Option<&Digest>,
        size: u64,
    ) -> ApiResult<()> {
        let Some((rule, max)) = self
            .rule_for(repository)
            .and_then(|r| r.max_bytes.map(|m| (r, m)))
        else {
            return Ok(());
        };
        let (blobs, _) = self.referenced_blobs(s, repository).await?;
        if digest.is_some_and(|d| blobs.contains_key(d)) {
            return Ok(()); // already counted
        }
        let used: u64 = blobs.values().sum();
        if used.saturating_add(size) > max {
            return Err(refusal(format!(
                "quota of {repository} exceeded (rule {}): max_bytes is {max}, {used} bytes used, this blob of {size} bytes would make {}",
                rule.name,
                used.saturating_add(size)
            )));
        }
        Ok(())
    }

    /// A manifest PUT setting `tags` (one, or several with `?tag=a&tag=b`): refused when
    /// the new ones among them would take the repository past `max_tags`. Re-pushing a tag
    /// is fine; the new tags of one request count together.
    pub async fn check_tags(
        &self,
        s: &dyn Storage,
        repository: &str,
        tags: &[&str],
    ) -> ApiResult<()> {
        let Some((rule, max)) = self
            .rule_for(repository)
            .and_then(|r| r.max_tags.map(|m| (r, m)))
        else {
            return Ok(());
        };
        let mut new = Vec::new();
        for tag in tags {
            if !new.contains(tag) && s.tag_resolve(repository, tag).await?.is_none() {
                new.push(*tag);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        let used = s.tags(repository).await?.unwrap_or_default().len() as u64;
        if used + new.len() as u64 > max {
            return Err(refusal(format!(
                "quota of {repository} exceeded (rule {}): max_tags is {max} and {used} tags are in use; new tag {} refused (delete a tag or re-push an existing one)",
                rule.name,
                new.join(", ")
            )));
        }
        Ok(())
    }

    /// A manifest PUT to `tag`: refused when, with this manifest's blobs in
    /// place of what the tag pointed at, the repository would pass `max_bytes`.
    /// The blobs were checked one by one as they arrived; this catches a push
    /// whose layers together pass the quota.
    pub async fn check_manifest(
        &self,
        s: &dyn Storage,
        repository: &str,
        tag: &str,
        references: &[crate::manifest::Reference],
    ) -> ApiResult<()> {
        use crate::manifest::Reference as R;
        let Some((rule, max)) = self
            .rule_for(repository)
            .and_then(|r| r.max_bytes.map(|m| (r, m)))
        else {
            return Ok(());
        };
        let (mut blobs, _) = self
            .referenced_blobs_except(s, repository, Some(tag))
            .await?;
        let before: u64 = blobs.values().sum();
        for reference in references {
            match reference {
                R::Blob(d) => {
                    if let Some(size) = s.blob_size(d).await? {
                        blobs.insert(d.clone(), size);
                    }
                }
                R::Manifest(d) => blobs.extend(self.manifest_blobs(s, repository, d, 1).await?),
            }
        }
        let after: u64 = blobs.values().sum();
        if after > max {
            return Err(refusal(format!(
                "quota of {repository} exceeded (rule {}): max_bytes is {max}, {before} bytes used by the other tags, tag {tag} would make {after}",
                rule.name
            )));
        }
        Ok(())
    }

    /// (max_bytes, max_tags) of the rule for this repository.
    pub fn limits(&self, repository: &str) -> (Option<u64>, Option<u64>) {
        self.rule_for(repository)
            .map_or((None, None), |r| (r.max_bytes, r.max_tags))
    }

    /// Whether any rule limits bytes for this repository (the completion check
    /// needs the blob's size first).
    pub fn limits_bytes(&self, repository: &str) -> bool {
        self.rule_for(repository)
            .is_some_and(|r| r.max_bytes.is_some())
    }
}

fn refusal(message: String) -> RegistryError {
    RegistryError::new(StatusCode::FORBIDDEN, Code::Denied, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(repositories: &[&str], max_bytes: Option<i64>, max_tags: Option<i64>) -> QuotaConfig {
        QuotaConfig {
            name: None,
            repositories: repositories.iter().map(|s| s.to_string()).collect(),
            max_bytes,
            max_tags,
        }
    }

    #[test]
    fn first_matching_rule_applies() {
        let q = Quotas::from_config(&[
            rule(&["team/big"], Some(1000), None),
            rule(&["team/**"], Some(10), Some(2)),
        ])
        .expect("valid");
        assert_eq!(q.rule_for("team/big").and_then(|r| r.max_bytes), Some(1000));
        assert_eq!(q.rule_for("team/app").and_then(|r| r.max_tags), Some(2));
        assert!(q.rule_for("other").is_none());
        assert!(q.limits_bytes("team/app"));
        assert!(!q.limits_bytes("other"));
    }

    /// One PUT with `?tag=b&tag=c` counts both new tags; re-pushed and repeated tags do not.
    #[tokio::test]
    async fn new_tags_of_one_request_count_together() {
        let s = berth_storage::MemoryStorage::new();
        let body = bytes::Bytes::from_static(b"{}");
        let digest = berth_storage::Digest::sha256_of(&body);
        let meta = berth_storage::ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(Vec::new()),
        };
        s.manifest_put("team/app", &digest, body, &meta, Some("a"))
            .await
            .expect("put");
        let q = Quotas::from_config(&[rule(&["team/**"], None, Some(2))]).expect("valid");
        let e = q
            .check_tags(&s, "team/app", &["b", "c"])
            .await
            .expect_err("two new tags on top of one");
        assert!(e.message.contains("new tag b, c refused"), "{}", e.message);
        q.check_tags(&s, "team/app", &["a", "b"])
            .await
            .expect("one new");
        q.check_tags(&s, "team/app", &["b", "b"])
            .await
            .expect("one new, twice");
        q.check_tags(&s, "other", &["x", "y", "z"])
            .await
            .expect("no rule");
    }

    #[test]
    fn bad_rules_name_the_key() {
        let e = Quotas::from_config(&[rule(&["Team/**"], Some(1), None)]).expect_err("pattern");
        assert!(e.starts_with("quota[0].repositories"), "{e}");
        let e = Quotas::from_config(&[rule(&["a"], Some(0), None)]).expect_err("zero");
        assert!(e.starts_with("quota[0].max_bytes"), "{e}");
        let e = Quotas::from_config(&[rule(&["a"], None, Some(-3))]).expect_err("negative");
        assert!(e.starts_with("quota[0].max_tags"), "{e}");
        let e = Quotas::from_config(&[rule(&["a"], None, None)]).expect_err("no limit");
        assert!(e.starts_with("quota[0]"), "{e}");
        let e = Quotas::from_config(&[rule(&[], Some(1), None)]).expect_err("no repositories");
        assert!(e.starts_with("quota[0].repositories"), "{e}");
    }
}
