//! Retention: `[[retention]]` policies that remove old tags and untagged
//! manifests by repository pattern, run by `berth retention` and on the
//! server's schedule. The blobs they free go at the next garbage collection.
//!
//! A policy keeps, among the tags it covers (`tags`), the newest
//! `keep_newest` by push time and any pushed or pulled within `keep_within`;
//! tags matching `protect`, immutable tags and tags of deployed manifests
//! always stay. Untagged manifests whose last push and pull are older than
//! `untagged_older_than` go too, unless a kept index lists them, they refer
//! to a kept manifest (signatures, SBOMs) or a deployment record refers to
//! them.

use std::time::{Duration, SystemTime};

use berth_auth::acl::{glob_match, Pattern};
use berth_storage::{Storage, StorageError};
use serde::{Deserialize, Serialize};

use crate::immutable::{is_tag_glob, ImmutableTags};

mod plan;

pub use plan::{plan, Decision, RepositoryPlan, RepositoryState, DEPLOYMENT_ARTIFACT_TYPE};

/// One `[[retention]]` table as written in the config file.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Shown in reports; default: the policy's position.
    pub name: Option<String>,
    /// Repository patterns (`ci/**`), as in `[access]` rules. The first
    /// policy naming a repository applies to it.
    pub repositories: Vec<String>,
    /// Tag globs the policy judges (`!` before a glob excludes); default all.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Keep this many of the newest (by push) judged tags.
    pub keep_newest: Option<i64>,
    /// Keep judged tags pushed or pulled within this long (e.g. "30d").
    pub keep_within: Option<String>,
    /// Tag globs that always stay.
    #[serde(default)]
    pub protect: Vec<String>,
    /// Remove untagged manifests last pushed and pulled longer ago than this.
    pub untagged_older_than: Option<String>,
}

/// A compiled policy.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    repositories: Vec<Pattern>,
    include: Vec<String>,
    exclude: Vec<String>,
    pub keep_newest: Option<u64>,
    pub keep_within: Option<Duration>,
    pub protect: Vec<String>,
    pub untagged_older_than: Option<Duration>,
}

impl Policy {
    fn covers_repository(&self, repository: &str) -> bool {
        self.repositories.iter().any(|p| p.matches(repository))
    }

    pub(crate) fn covers_tag(&self, tag: &str) -> bool {
        (self.include.is_empty() || self.include.iter().any(|g| glob_match(g, tag)))
            && !self.exclude.iter().any(|g| glob_match(g, tag))
    }
}

/// The compiled policies; empty when none are configured.
#[derive(Debug, Default)]
pub struct RetentionPolicies {
    policies: Vec<Policy>,
}

fn duration(at: &str, key: &str, text: &Option<String>) -> Result<Option<Duration>, String> {
    text.as_deref()
        .map(|t| {
            humantime::parse_duration(t)
                .map_err(|e| format!("{at}.{key} = {t:?}: {e} (use e.g. \"30d\" or \"12h\")"))
        })
        .transpose()
}

fn globs(at: &str, key: &str, list: &[String], negations: bool) -> Result<(), String> {
    for glob in list {
        let bare = if negations {
            glob.strip_prefix('!').unwrap_or(glob)
        } else {
            glob.as_str()
        };
        if !is_tag_glob(bare) {
            return Err(format!(
                "{at}.{key}: {glob:?}: a tag glob is up to 128 of [A-Za-z0-9_.-*]{}",
                if negations {
                    ", with an optional leading ! to exclude"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

fn compile(i: usize, config: &RetentionConfig) -> Result<Policy, String> {
    let at = format!("retention[{i}]");
    if config.repositories.is_empty() {
        return Err(format!(
            "{at}.repositories is empty: name at least one repository pattern, e.g. \"ci/**\""
        ));
    }
    let repositories = config
        .repositories
        .iter()
        .map(|p| Pattern::parse(p).map_err(|e| format!("{at}.repositories: {p:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    globs(&at, "tags", &config.tags, true)?;
    globs(&at, "protect", &config.protect, false)?;
    let (exclude, include): (Vec<String>, Vec<String>) = config
        .tags
        .iter()
        .cloned()
        .partition(|g| g.starts_with('!'));
    let keep_newest = match config.keep_newest {
        None => None,
        Some(n) if n >= 0 => Some(n as u64),
        Some(n) => return Err(format!("{at}.keep_newest = {n}: a count is 0 or more")),
    };
    let keep_within = duration(&at, "keep_within", &config.keep_within)?;
    let untagged_older_than = duration(&at, "untagged_older_than", &config.untagged_older_than)?;
    if keep_newest.is_none() && keep_within.is_none() && untagged_older_than.is_none() {
        return Err(format!(
            "{at} removes nothing: give keep_newest, keep_within or untagged_older_than"
        ));
    }
    Ok(Policy {
        name: config.name.clone().unwrap_or(at),
        repositories,
        include,
        exclude: exclude.iter().map(|g| g[1..].to_string()).collect(),
        keep_newest,
        keep_within,
        protect: config.protect.clone(),
        untagged_older_than,
    })
}

impl RetentionPolicies {
    /// Compile the policies; errors name the policy and key (`retention[1].keep_within`).
    pub fn from_config(configs: &[RetentionConfig]) -> Result<RetentionPolicies, String> {
        let policies = configs
            .iter()
            .enumerate()
            .map(|(i, c)| compile(i, c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RetentionPolicies { policies })
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policy that applies to `repository`: the first naming it.
    pub fn policy_for(&self, repository: &str) -> Option<&Policy> {
        self.policies
            .iter()
            .find(|p| p.covers_repository(repository))
    }
}

/// What a retention run removed (or, in a dry run, would remove) and kept.
#[derive(Debug, Default, Serialize)]
pub struct RetentionReport {
    pub dry_run: bool,
    pub tags_removed: u64,
    pub manifests_removed: u64,
    /// Tags and manifests removed, each with its policy's reason.
    pub removed: Vec<Decision>,
    /// Tags a policy judged and kept, with the reason.
    pub kept: Vec<Decision>,
    /// Planned removals skipped because the repository changed meanwhile.
    pub skipped: Vec<Decision>,
}

/// Run every policy over every repository it names. `grace`: untagged
/// manifests pushed or pulled this recently stay (the GC grace period).
pub async fn run(
    storage: &dyn Storage,
    policies: &RetentionPolicies,
    immutable: &ImmutableTags,
    grace: Duration,
    dry_run: bool,
) -> Result<RetentionReport, StorageError> {
    let mut report = RetentionReport {
        dry_run,
        ..Default::default()
    };
    if policies.is_empty() {
        return Ok(report);
    }
    for repository in storage.repositories().await? {
        let Some(policy) = policies.policy_for(&repository) else {
            continue;
        };
        let state = read_state(storage, &repository).await?;
        let planned = plan(
            policy,
            immutable,
            &repository,
            &state,
            SystemTime::now(),
            grace,
        );
        report.kept.extend(planned.kept.iter().cloned());
        if dry_run {
            report.tags_removed += planned.remove_tags.len() as u64;
            report.manifests_removed += planned.remove_manifests.len() as u64;
            report.removed.extend(planned.remove_tags);
            report.removed.extend(planned.remove_manifests);
        } else {
            apply(storage, &repository, &state, planned, &mut report).await?;
        }
    }
    Ok(report)
}

async fn read_state(
    storage: &dyn Storage,
    repository: &str,
) -> Result<RepositoryState, StorageError> {
    let tags = storage.tag_records(repository).await?;
    let pulls = storage.pulls(repository).await?;
    let mut manifests = Vec::new();
    for record in storage.manifest_records(repository).await? {
        // Gone since the listing: nothing to decide about it.
        if let Some(meta) = storage.manifest_meta(repository, &record.digest).await? {
            manifests.push((record, meta));
        }
    }
    Ok(RepositoryState {
        tags,
        manifests,
        pulls,
    })
}

/// Remove what the plan says, looking again first: a tag moved or a manifest
/// pushed or tagged since the plan was made stays (it is a new decision).
async fn apply(
    storage: &dyn Storage,
    repository: &str,
    before: &RepositoryState,
    planned: RepositoryPlan,
    report: &mut RetentionReport,
) -> Result<(), StorageError> {
    let tags_now = storage.tag_records(repository).await?;
    let as_of = |tags: &[berth_storage::TagRecord], tag: &str| {
        tags.iter()
            .find(|t| t.tag == tag)
            .map(|t| (t.digest.clone(), t.pushed))
    };
    for d in planned.remove_tags {
        let Some(tag) = &d.tag else { continue };
        let unchanged = as_of(&tags_now, tag);
        if unchanged.is_none() || unchanged != as_of(&before.tags, tag) {
            report.skipped.push(d);
            continue;
        }
        if storage.tag_delete(repository, tag).await? {
            report.tags_removed += 1;
            report.removed.push(d);
        }
    }
    if planned.remove_manifests.is_empty() {
        return forget_gone_pulls(storage, repository, before).await;
    }
    let tagged: Vec<_> = storage
        .tag_records(repository)
        .await?
        .into_iter()
        .map(|t| t.digest)
        .collect();
    let records = storage.manifest_records(repository).await?;
    for d in planned.remove_manifests {
        let pushed_then = before
            .manifests
            .iter()
            .find(|(r, _)| r.digest == d.digest)
            .map(|(r, _)| r.pushed);
        let pushed_now = records
            .iter()
            .find(|r| r.digest == d.digest)
            .map(|r| r.pushed);
        if tagged.contains(&d.digest) || pushed_now != pushed_then {
            report.skipped.push(d);
            continue;
        }
        if storage.manifest_delete(repository, &d.digest).await? {
            report.manifests_removed += 1;
            report.removed.push(d);
        }
    }
    forget_gone_pulls(storage, repository, before).await
}

/// Drop pull times of manifests no longer in the repository (removed now or
/// deleted earlier), so the record stays the size of the repository.
async fn forget_gone_pulls(
    storage: &dyn Storage,
    repository: &str,
    before: &RepositoryState,
) -> Result<(), StorageError> {
    if before.pulls.is_empty() {
        return Ok(());
    }
    let present: std::collections::HashSet<_> = storage
        .manifest_records(repository)
        .await?
        .into_iter()
        .map(|r| r.digest)
        .collect();
    let gone: Vec<_> = before
        .pulls
        .keys()
        .filter(|d| !present.contains(*d))
        .cloned()
        .collect();
    if gone.is_empty() {
        return Ok(());
    }
    storage.forget_pulls(repository, &gone).await
}

#[cfg(test)]
mod tests;
