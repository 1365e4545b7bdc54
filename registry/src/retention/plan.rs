//! Deciding, from one repository's tags, manifests and times, what a
//! retention policy removes and why. Pure: no storage, no clock of its own.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use berth_auth::acl::glob_match;
use berth_storage::{Digest, ManifestMeta, ManifestRecord, PullTimes, TagRecord};
use serde::Serialize;

use super::Policy;
use crate::immutable::ImmutableTags;

/// The `artifactType` of the deployment records `berth deploy` pushes as
/// referrers of what it deployed: a manifest that is the subject of one is
/// kept, with its tags.
pub const DEPLOYMENT_ARTIFACT_TYPE: &str = "application/vnd.berth.deployment.v1+json";

/// What one repository holds, as retention reads it.
pub struct RepositoryState {
    pub tags: Vec<TagRecord>,
    /// Manifests with their metadata (references, subject, artifact type).
    pub manifests: Vec<(ManifestRecord, ManifestMeta)>,
    pub pulls: PullTimes,
}

/// One tag or manifest a policy looked at: kept or removed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub repository: String,
    /// The tag; `None` for an untagged manifest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: Digest,
    pub reason: String,
}

/// A repository's plan: tags and manifests to remove, tags kept by a rule.
#[derive(Debug, Default)]
pub struct RepositoryPlan {
    pub remove_tags: Vec<Decision>,
    pub remove_manifests: Vec<Decision>,
    pub kept: Vec<Decision>,
}

/// "3h 20m ago", to the second: what an operator reads in a reason.
fn ago(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or_default().as_secs();
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

fn within(now: SystemTime, then: SystemTime, span: Duration) -> bool {
    now.duration_since(then).map_or(true, |age| age <= span)
}

/// Why a tag stays before its age is even looked at, if it does.
fn standing_reason(
    policy: &Policy,
    immutable: &ImmutableTags,
    repository: &str,
    tag: &TagRecord,
    deployed: &HashSet<Digest>,
) -> Option<String> {
    if let Some(glob) = policy.protect.iter().find(|g| glob_match(g, &tag.tag)) {
        return Some(format!("protected (matches {glob:?})"));
    }
    if let Some(rule) = immutable.rule_name(repository, &tag.tag) {
        return Some(format!("immutable (rule {rule})"));
    }
    if deployed.contains(&tag.digest) {
        return Some("deployed (a deployment record refers to its manifest)".into());
    }
    None
}

/// Decide for one repository under `policy`, at `now`. Untagged manifests
/// pushed or pulled within `grace` stay whatever the policy says (a push in
/// progress uploads an index's children before the index).
pub fn plan(
    policy: &Policy,
    immutable: &ImmutableTags,
    repository: &str,
    state: &RepositoryState,
    now: SystemTime,
    grace: Duration,
) -> RepositoryPlan {
    let mut out = RepositoryPlan::default();
    let deployed: HashSet<Digest> = state
        .manifests
        .iter()
        .filter(|(_, m)| m.artifact_type.as_deref() == Some(DEPLOYMENT_ARTIFACT_TYPE))
        .filter_map(|(_, m)| m.subject.clone())
        .collect();
    let pulled = |d: &Digest| state.pulls.get(d).copied();
    let decision = |tag: Option<&str>, digest: &Digest, reason: String| Decision {
        repository: repository.to_string(),
        tag: tag.map(str::to_string),
        digest: digest.clone(),
        reason,
    };

    // Tags the policy covers, newest push first.
    let mut covered: Vec<&TagRecord> = state
        .tags
        .iter()
        .filter(|t| policy.covers_tag(&t.tag))
        .collect();
    covered.sort_by(|a, b| b.pushed.cmp(&a.pushed).then_with(|| a.tag.cmp(&b.tag)));
    let judges_tags = policy.keep_newest.is_some() || policy.keep_within.is_some();
    let mut removed_tags = HashSet::new();
    for (rank, tag) in covered.iter().enumerate() {
        if let Some(reason) = standing_reason(policy, immutable, repository, tag, &deployed) {
            out.kept.push(decision(Some(&tag.tag), &tag.digest, reason));
            continue;
        }
        if !judges_tags {
            continue;
        }
        let last_pull = pulled(&tag.digest);
        let keep = match (policy.keep_newest, policy.keep_within) {
            (Some(n), _) if (rank as u64) < n => Some(format!("among the newest {n}")),
            (_, Some(span)) if within(now, tag.pushed, span) => Some(format!(
                "pushed {}, within keep_within {}",
                ago(now, tag.pushed),
                humantime::format_duration(span)
            )),
            (_, Some(span)) if last_pull.is_some_and(|p| within(now, p, span)) => Some(format!(
                "pulled {}, within keep_within {}",
                ago(now, last_pull.unwrap_or(now)),
                humantime::format_duration(span)
            )),
            _ => None,
        };
        if let Some(reason) = keep {
            out.kept.push(decision(Some(&tag.tag), &tag.digest, reason));
            continue;
        }
        let mut why = Vec::new();
        if let Some(n) = policy.keep_newest {
            why.push(format!("not among the newest {n}"));
        }
        why.push(format!("pushed {}", ago(now, tag.pushed)));
        why.push(match last_pull {
            Some(p) => format!("last pulled {}", ago(now, p)),
            None => "never pulled".to_string(),
        });
        if let Some(span) = policy.keep_within {
            why.push(format!("keep_within {}", humantime::format_duration(span)));
        }
        removed_tags.insert(tag.tag.clone());
        out.remove_tags
            .push(decision(Some(&tag.tag), &tag.digest, why.join(", ")));
    }

    if let Some(older_than) = policy.untagged_older_than {
        untagged(
            &mut out,
            state,
            &removed_tags,
            &deployed,
            now,
            older_than.max(grace),
            &decision,
        );
    }
    out
}

/// Untagged manifests older than `older_than` go, unless something kept
/// needs them: an index that lists them, a manifest they refer to as
/// `subject` (signatures, SBOMs), a kept referrer that refers to them, or a
/// deployment record.
fn untagged(
    out: &mut RepositoryPlan,
    state: &RepositoryState,
    removed_tags: &HashSet<String>,
    deployed: &HashSet<Digest>,
    now: SystemTime,
    older_than: Duration,
    decision: &dyn Fn(Option<&str>, &Digest, String) -> Decision,
) {
    let metas: BTreeMap<&Digest, &ManifestMeta> = state
        .manifests
        .iter()
        .map(|(r, m)| (&r.digest, m))
        .collect();
    let last_seen = |r: &ManifestRecord| match state.pulls.get(&r.digest) {
        Some(p) if *p > r.pushed => *p,
        _ => r.pushed,
    };
    // Roots: still tagged, deployed, or too young to judge.
    let mut live: HashSet<Digest> = state
        .tags
        .iter()
        .filter(|t| !removed_tags.contains(&t.tag))
        .map(|t| t.digest.clone())
        .collect();
    live.extend(deployed.iter().cloned());
    live.extend(
        state
            .manifests
            .iter()
            .filter(|(r, _)| within(now, last_seen(r), older_than))
            .map(|(r, _)| r.digest.clone()),
    );
    // A live manifest recorded without its references (an older version)
    // might need any other: keep them all, as garbage collection does.
    if live
        .iter()
        .any(|d| metas.get(d).is_some_and(|m| m.references.is_none()))
    {
        return;
    }
    // Children of live indexes, referrers of live manifests and subjects of live referrers
    // (a fresh signature keeps what it signs), to a fixpoint.
    loop {
        let before = live.len();
        for (record, meta) in &state.manifests {
            if live.contains(&record.digest) {
                for child in meta.references.iter().flatten() {
                    if metas.contains_key(child) {
                        live.insert(child.clone());
                    }
                }
                if let Some(subject) = meta.subject.as_ref().filter(|s| metas.contains_key(s)) {
                    live.insert(subject.clone());
                }
            } else if meta.subject.as_ref().is_some_and(|s| live.contains(s)) {
                live.insert(record.digest.clone());
            }
        }
        if live.len() == before {
            break;
        }
    }
    for (record, _) in &state.manifests {
        if live.contains(&record.digest) {
            continue;
        }
        let pulled = match state.pulls.get(&record.digest) {
            Some(p) => format!("last pulled {}", ago(now, *p)),
            None => "never pulled".to_string(),
        };
        out.remove_manifests.push(decision(
            None,
            &record.digest,
            format!(
                "untagged, pushed {}, {pulled}, older than {}",
                ago(now, record.pushed),
                humantime::format_duration(older_than)
            ),
        ));
    }
}
