use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_storage::{Digest, ManifestMeta, ManifestRecord, PullTimes, TagRecord};

use super::*;
use crate::immutable::ImmutableConfig;

const DAY: u64 = 24 * 3600;

fn at(days: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000 * DAY + days * DAY)
}

fn now() -> SystemTime {
    at(100)
}

fn d(name: &str) -> Digest {
    Digest::sha256_of(name.as_bytes())
}

fn image() -> ManifestMeta {
    ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        subject: None,
        artifact_type: None,
        annotations: None,
        references: Some(Vec::new()),
    }
}

fn policy(toml_text: &str) -> RetentionPolicies {
    #[derive(serde::Deserialize)]
    struct File {
        retention: Vec<RetentionConfig>,
    }
    let file: File = toml::from_str(toml_text).expect("toml");
    RetentionPolicies::from_config(&file.retention).expect("valid")
}

/// Tags `name` pushed `days` after the epoch, each on its own manifest.
fn state(tags: &[(&str, u64)]) -> RepositoryState {
    RepositoryState {
        tags: tags
            .iter()
            .map(|(t, day)| TagRecord {
                tag: t.to_string(),
                digest: d(t),
                pushed: at(*day),
            })
            .collect(),
        manifests: tags
            .iter()
            .map(|(t, day)| {
                (
                    ManifestRecord {
                        digest: d(t),
                        pushed: at(*day),
                    },
                    image(),
                )
            })
            .collect(),
        pulls: PullTimes::new(),
    }
}

fn run_plan(
    policies: &RetentionPolicies,
    immutable: &ImmutableTags,
    s: &RepositoryState,
) -> RepositoryPlan {
    let p = policies.policy_for("ci/app").expect("policy");
    plan(p, immutable, "ci/app", s, now(), Duration::from_secs(3600))
}

fn tags_of(list: &[Decision]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().filter_map(|x| x.tag.clone()).collect();
    out.sort();
    out
}

#[test]
fn keeps_the_newest_and_the_recent_and_says_why() {
    let p = policy(
        "[[retention]]\nrepositories = [\"ci/**\"]\nkeep_newest = 2\nkeep_within = \"10d\"\nprotect = [\"v*\"]\n",
    );
    let mut s = state(&[
        ("b1", 10),
        ("b2", 20),
        ("b3", 30),
        ("b4", 95),
        ("b5", 96),
        ("v1", 1),
    ]);
    // b2 was pulled 3 days ago: kept by keep_within.
    s.pulls.insert(d("b2"), at(97));
    let planned = run_plan(&p, &ImmutableTags::default(), &s);
    assert_eq!(tags_of(&planned.remove_tags), ["b1", "b3"]);
    assert_eq!(tags_of(&planned.kept), ["b2", "b4", "b5", "v1"]);
    let reason = |tag: &str| {
        planned
            .kept
            .iter()
            .chain(&planned.remove_tags)
            .find(|x| x.tag.as_deref() == Some(tag))
            .map(|x| x.reason.clone())
            .unwrap_or_default()
    };
    assert!(reason("b5").contains("newest 2"), "{}", reason("b5"));
    assert!(reason("b2").starts_with("pulled 3days"), "{}", reason("b2"));
    assert!(reason("v1").starts_with("protected"), "{}", reason("v1"));
    assert!(reason("b1").contains("never pulled"), "{}", reason("b1"));
    assert!(
        reason("b1").contains("not among the newest 2"),
        "{}",
        reason("b1")
    );
    // Without untagged_older_than, manifests of removed tags stay.
    assert!(planned.remove_manifests.is_empty());
}

#[test]
fn immutable_and_deployed_tags_stay() {
    let p = policy("[[retention]]\nrepositories = [\"ci/**\"]\nkeep_newest = 0\n");
    let immutable = ImmutableTags::from_config(&[ImmutableConfig {
        name: Some("releases".into()),
        repositories: vec!["ci/**".into()],
        tags: vec!["rel-*".into()],
    }])
    .expect("valid");
    let mut s = state(&[("rel-1", 1), ("old", 2), ("running", 3)]);
    let record = ManifestMeta {
        subject: Some(d("running")),
        artifact_type: Some(DEPLOYMENT_ARTIFACT_TYPE.into()),
        ..image()
    };
    s.manifests.push((
        ManifestRecord {
            digest: d("record"),
            pushed: at(3),
        },
        record,
    ));
    let planned = run_plan(&p, &immutable, &s);
    assert_eq!(tags_of(&planned.remove_tags), ["old"]);
    let kept = &planned.kept;
    assert!(kept
        .iter()
        .any(|k| k.tag.as_deref() == Some("rel-1") && k.reason.contains("releases")));
    assert!(kept
        .iter()
        .any(|k| k.tag.as_deref() == Some("running") && k.reason.starts_with("deployed")));
}

#[test]
fn untagged_manifests_go_unless_something_kept_needs_them() {
    let p = policy(
        "[[retention]]\nrepositories = [\"ci/**\"]\ntags = [\"*\", \"!latest\"]\nkeep_newest = 1\nuntagged_older_than = \"7d\"\n",
    );
    let mut s = state(&[("latest", 5), ("new", 90), ("old", 10)]);
    let child = |name: &str, day| {
        (
            ManifestRecord {
                digest: d(name),
                pushed: at(day),
            },
            image(),
        )
    };
    // An index tagged `new` lists `amd64`; `sig` signs `latest`; `orphan-sig`
    // signed `old`, which goes; `loose` is old and alone; `young` is recent.
    s.manifests.retain(|(r, _)| r.digest != d("new"));
    s.manifests.push((
        ManifestRecord {
            digest: d("new"),
            pushed: at(90),
        },
        ManifestMeta {
            media_type: "application/vnd.oci.image.index.v1+json".into(),
            references: Some(vec![d("amd64")]),
            ..image()
        },
    ));
    s.manifests.push(child("amd64", 1));
    s.manifests.push((
        ManifestRecord {
            digest: d("sig"),
            pushed: at(1),
        },
        ManifestMeta {
            subject: Some(d("latest")),
            ..image()
        },
    ));
    s.manifests.push((
        ManifestRecord {
            digest: d("orphan-sig"),
            pushed: at(10),
        },
        ManifestMeta {
            subject: Some(d("old")),
            ..image()
        },
    ));
    s.manifests.push(child("loose", 2));
    s.manifests.push(child("young", 98));
    // An old untagged image signed a day ago: the fresh signature keeps it.
    s.manifests.push(child("signed-lately", 2));
    s.manifests.push((
        ManifestRecord {
            digest: d("fresh-sig"),
            pushed: at(99),
        },
        ManifestMeta {
            subject: Some(d("signed-lately")),
            ..image()
        },
    ));
    s.manifests.push(child("pulled", 2));
    s.pulls.insert(d("pulled"), at(99));
    let planned = run_plan(&p, &ImmutableTags::default(), &s);
    assert_eq!(
        tags_of(&planned.remove_tags),
        ["old"],
        "latest is not judged"
    );
    let mut gone: Vec<Digest> = planned
        .remove_manifests
        .iter()
        .map(|x| x.digest.clone())
        .collect();
    gone.sort();
    let mut expected = vec![d("old"), d("orphan-sig"), d("loose")];
    expected.sort();
    assert_eq!(gone, expected);
    assert!(planned
        .remove_manifests
        .iter()
        .all(|x| x.reason.starts_with("untagged")));
}

#[test]
fn a_manifest_without_recorded_references_keeps_everything() {
    let p = policy("[[retention]]\nrepositories = [\"ci/**\"]\nuntagged_older_than = \"1d\"\n");
    let mut s = state(&[("kept", 1)]);
    s.manifests[0].1.references = None;
    s.manifests.push((
        ManifestRecord {
            digest: d("x"),
            pushed: at(1),
        },
        image(),
    ));
    let planned = run_plan(&p, &ImmutableTags::default(), &s);
    assert!(planned.remove_manifests.is_empty());
}

#[test]
fn bad_policies_name_the_key() {
    let bad = |text: &str, key: &str| {
        #[derive(serde::Deserialize)]
        struct File {
            retention: Vec<RetentionConfig>,
        }
        let file: File = toml::from_str(text).expect("toml");
        let e = RetentionPolicies::from_config(&file.retention).expect_err(text);
        assert!(e.starts_with(key), "{e}");
    };
    bad(
        "[[retention]]\nrepositories = [\"Ci/**\"]\nkeep_newest = 1\n",
        "retention[0].repositories",
    );
    bad(
        "[[retention]]\nrepositories = []\nkeep_newest = 1\n",
        "retention[0].repositories",
    );
    bad(
        "[[retention]]\nrepositories = [\"a\"]\nkeep_within = \"soon\"\n",
        "retention[0].keep_within",
    );
    bad(
        "[[retention]]\nrepositories = [\"a\"]\nuntagged_older_than = \"3 parsecs\"\n",
        "retention[0].untagged_older_than",
    );
    bad(
        "[[retention]]\nrepositories = [\"a\"]\nkeep_newest = -1\n",
        "retention[0].keep_newest",
    );
    bad(
        "[[retention]]\nrepositories = [\"a\"]\nkeep_newest = 1\ntags = [\"a/b\"]\n",
        "retention[0].tags",
    );
    bad(
        "[[retention]]\nrepositories = [\"a\"]\nkeep_newest = 1\nprotect = [\"!v*\"]\n",
        "retention[0].protect",
    );
    bad(
        "[[retention]]\nrepositories = [\"a\"]\n",
        "retention[0] removes nothing",
    );
    let unknown: Result<RetentionConfig, _> =
        toml::from_str("repositories = [\"a\"]\nkeep_last = 3\n");
    assert!(unknown
        .expect_err("unknown key")
        .to_string()
        .contains("keep_last"));
}

#[tokio::test]
async fn a_run_removes_what_the_plan_says_and_a_dry_run_nothing() {
    let storage = berth_storage::MemoryStorage::new();
    let put = |tag: &'static str| {
        let bytes = bytes::Bytes::from(format!("{{\"tag\":\"{tag}\"}}"));
        let digest = Digest::sha256_of(&bytes);
        (digest, bytes, tag)
    };
    for (digest, bytes, tag) in [put("a"), put("b"), put("c")] {
        storage
            .manifest_put("ci/app", &digest, bytes, &image(), Some(tag))
            .await
            .expect("put");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Pulled long ago, all three, and a digest deleted before this run.
    let long_ago = UNIX_EPOCH + Duration::from_secs(1_000);
    let mut pulled: PullTimes = [put("a"), put("b"), put("c"), put("deleted")]
        .into_iter()
        .map(|(d, _, _)| (d, long_ago))
        .collect();
    storage
        .record_pulls("ci/app", &pulled)
        .await
        .expect("pulls");
    let p = policy("[[retention]]\nrepositories = [\"ci/**\"]\nkeep_newest = 1\nuntagged_older_than = \"0s\"\n");
    let none = ImmutableTags::default();
    let dry = run(&storage, &p, &none, Duration::ZERO, true)
        .await
        .expect("dry run");
    assert_eq!((dry.tags_removed, dry.manifests_removed), (2, 2));
    assert_eq!(
        storage
            .tags("ci/app")
            .await
            .expect("tags")
            .unwrap_or_default()
            .len(),
        3
    );
    let real = run(&storage, &p, &none, Duration::ZERO, false)
        .await
        .expect("run");
    assert_eq!(
        (real.tags_removed, real.manifests_removed),
        (2, 2),
        "{real:?}"
    );
    assert_eq!(
        storage.tags("ci/app").await.expect("tags"),
        Some(vec!["c".to_string()])
    );
    // The pull record keeps only what is still there.
    pulled.retain(|d, _| *d == put("c").0);
    assert_eq!(storage.pulls("ci/app").await.expect("pulls"), pulled);
    assert_eq!(
        storage
            .manifest_records("ci/app")
            .await
            .expect("records")
            .len(),
        1
    );
}

/// Someone pushes between the plan and the removal: a tag moved meanwhile and a
/// manifest tagged meanwhile both stay (listed as skipped), the rest goes.
#[tokio::test]
async fn what_changed_since_the_plan_is_skipped() {
    let storage = berth_storage::MemoryStorage::new();
    let manifest = |name: &str| {
        let bytes = bytes::Bytes::from(format!("{{\"m\":\"{name}\"}}"));
        (Digest::sha256_of(&bytes), bytes)
    };
    for (name, tag) in [
        ("a", Some("a")),
        ("b", Some("b")),
        ("loose", None),
        ("c", Some("c")),
    ] {
        let (digest, bytes) = manifest(name);
        storage
            .manifest_put("ci/app", &digest, bytes, &image(), tag)
            .await
            .expect("put");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let p = policy("[[retention]]\nrepositories = [\"ci/**\"]\nkeep_newest = 1\nuntagged_older_than = \"0s\"\n");
    let state = read_state(&storage, "ci/app").await.expect("state");
    let planned = plan(
        p.policy_for("ci/app").expect("policy"),
        &ImmutableTags::default(),
        "ci/app",
        &state,
        SystemTime::now(),
        Duration::ZERO,
    );
    assert_eq!(tags_of(&planned.remove_tags), ["a", "b"]);
    // Meanwhile: tag a moves to a new image, and the untagged manifest gets a tag.
    let (moved, bytes) = manifest("a2");
    storage
        .manifest_put("ci/app", &moved, bytes, &image(), Some("a"))
        .await
        .expect("re-push a");
    let (loose, bytes) = manifest("loose");
    storage
        .manifest_put("ci/app", &loose, bytes, &image(), Some("found"))
        .await
        .expect("tag loose");
    let mut report = RetentionReport::default();
    apply(&storage, "ci/app", &state, planned, &mut report)
        .await
        .expect("apply");
    assert_eq!(
        storage.tag_resolve("ci/app", "a").await.expect("a"),
        Some(moved)
    );
    assert_eq!(
        storage.tag_resolve("ci/app", "found").await.expect("found"),
        Some(loose.clone())
    );
    assert!(storage
        .manifest_meta("ci/app", &loose)
        .await
        .expect("meta")
        .is_some());
    assert_eq!(
        storage.tag_resolve("ci/app", "b").await.expect("b"),
        None,
        "b went"
    );
    let skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|d| d.tag.clone().unwrap_or_else(|| d.digest.to_string()))
        .collect();
    assert!(skipped.contains(&"a".to_string()), "{skipped:?}");
    assert!(skipped.contains(&loose.to_string()), "{skipped:?}");
    assert_eq!(report.tags_removed, 1);
}
