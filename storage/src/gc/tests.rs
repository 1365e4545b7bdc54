//! The scalable collector on real backends: a filesystem and s3s-fs. Many
//! repositories spread over every bucket; referenced blobs survive,
//! unreferenced ones go, blobs pushed during the run survive; a second run
//! reads the mark log instead of every manifest link; deletes are batched.

use std::time::Duration;

use super::GcStore;
use super::{blob_bucket, blob_prefixes, BLOB_BUCKETS, MARK_BUCKETS};
use crate::layout::Layout;
use crate::s3_test_server::S3TestServer;
use crate::testsuite::stream_of;
use crate::{Digest, FsStorage, ManifestMeta, S3Storage, Storage};

async fn push(s: &dyn Storage, repo: &str, data: &[u8]) -> Digest {
    let d = Digest::sha256_of(data);
    let session = s.upload_create(repo).await.expect("create");
    s.upload_complete(repo, &session.id, &d, Some(stream_of(data)))
        .await
        .expect("push");
    d
}

/// What a registry of `repos` repositories holds, and what must go.
struct Filled {
    kept: Vec<Digest>,
    gone: Vec<Digest>,
    manifests: usize,
}

/// Per repository: a manifest referencing 3 blobs (kept), 2 blobs linked but
/// referenced by no manifest (their links and bytes go), 1 orphan blob with
/// no link at all (goes).
async fn fill(s: &dyn Storage, repos: usize) -> Filled {
    let (mut kept, mut gone) = (Vec::new(), Vec::new());
    for r in 0..repos {
        let repo = format!("r{r:03}/app");
        let mut refs = Vec::new();
        for i in 0..3 {
            refs.push(push(s, &repo, format!("kept {r} {i}").as_bytes()).await);
        }
        for i in 0..2 {
            gone.push(push(s, &repo, format!("unreferenced {r} {i}").as_bytes()).await);
        }
        let orphan = push(s, &repo, format!("orphan {r}").as_bytes()).await;
        assert!(s.unlink_blob(&repo, &orphan).await.expect("unlink"));
        gone.push(orphan);
        let bytes = format!("{{\"manifest\":{r}}}").into_bytes();
        let digest = Digest::sha256_of(&bytes);
        let meta = ManifestMeta {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            subject: None,
            artifact_type: None,
            annotations: None,
            references: Some(refs.clone()),
        };
        s.manifest_put(&repo, &digest, bytes.into(), &meta, Some("v1"))
            .await
            .expect("manifest");
        kept.extend(refs);
        kept.push(digest);
    }
    Filled {
        kept,
        gone,
        manifests: repos,
    }
}

async fn assert_outcome(s: &dyn Storage, filled: &Filled) {
    for d in &filled.kept {
        assert!(s.blob_size(d).await.expect("size").is_some(), "{d} lost");
    }
    for d in &filled.gone {
        assert!(s.blob_size(d).await.expect("size").is_none(), "{d} left");
    }
}

/// Every blob key of both layouts lies under one of its bucket's prefixes,
/// and the buckets between them cover every digest: a blob is never listed
/// in a bucket other than the one its marks were spilled to.
#[test]
fn every_blob_is_listed_in_the_bucket_its_marks_go_to() {
    let mut used = [false; BLOB_BUCKETS];
    for i in 0..2000u32 {
        let d = Digest::sha256_of(&i.to_le_bytes());
        let b = blob_bucket(&d);
        used[b] = true;
        for layout in [Layout::Fs, Layout::S3] {
            let key = layout.blob(&d);
            let here = blob_prefixes(layout, "sha256", b);
            assert!(
                here.iter().any(|p| key.starts_with(p)),
                "{key} not in {here:?}"
            );
            for other in (0..BLOB_BUCKETS).filter(|o| *o != b) {
                let there = blob_prefixes(layout, "sha256", other);
                assert!(
                    !there.iter().any(|p| key.starts_with(p)),
                    "{key} in {other}"
                );
            }
        }
    }
    assert!(used.iter().all(|u| *u), "2000 digests reach every bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_disk_garbage_goes_and_pushes_during_the_run_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = FsStorage::open(dir.path().join("data")).expect("open");
    let filled = fill(&s, 40).await;
    // File times may be coarse: let everything age past a zero grace.
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Another process pushes while the collection runs (it cannot take this
    // one's lock): what it writes after the collection started stays.
    let other = FsStorage::open(dir.path().join("data")).expect("open again");
    let pusher = async {
        let mut pushed = Vec::new();
        for i in 0..40 {
            pushed.push(push(&other, "late/app", format!("late {i}").as_bytes()).await);
        }
        pushed
    };
    let (report, pushed) = tokio::join!(s.collect_garbage(Duration::ZERO, false), pusher);
    let report = report.expect("collect");
    assert_eq!(report.links_removed, 80, "{report:?}");
    assert_eq!(report.blobs_removed, 120, "{report:?}");
    assert_outcome(&s, &filled).await;
    for d in &pushed {
        assert!(
            other.blob_linked("late/app", d).await.expect("linked"),
            "{d} pushed during the run lost"
        );
    }
    // The mark log is written, and a run over it changes nothing.
    assert!(dir.path().join("data/gc/marks").is_dir());
    let again = s
        .collect_garbage(Duration::from_secs(3600), false)
        .await
        .expect("again");
    assert_eq!((again.links_removed, again.blobs_removed), (0, 0));
    assert_outcome(&s, &filled).await;
}

fn s3_server() -> Option<S3TestServer> {
    match S3TestServer::start("gcscale") {
        Ok(Some(server)) => Some(server),
        Ok(None) => {
            assert!(
                !crate::s3::test_ci::in_ci(),
                "CI=true but s3s-fs is not installed (scripts/test.sh installs it)"
            );
            eprintln!("SKIP: s3s-fs not installed");
            None
        }
        Err(e) => panic!("cannot start s3s-fs: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_deletes_are_batched_and_the_mark_log_spares_reads() {
    let Some(server) = s3_server() else { return };
    let s = S3Storage::new(&server.options("p")).expect("S3 storage");
    let replica = S3Storage::new(&server.options("p")).expect("second replica");
    let filled = fill(&s, 40).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // LastModified has 1 s steps
    let late = async {
        // Another replica pushes a new image's blob and links an old
        // candidate between the choice and the sweep: both stay.
        let fresh = push(&replica, "late/app", b"pushed during the run").await;
        replica
            .link_blob("late/app", &filled.gone[0])
            .await
            .expect("relink from another replica");
        fresh
    };
    let before = s.request_counts();
    let report = s
        .collect_garbage_pausing(Duration::ZERO, false, async {
            let fresh = late.await;
            assert!(replica.blob_size(&fresh).await.expect("size").is_some());
        })
        .await
        .expect("collect");
    let first = s.request_counts().since(&before);
    assert_eq!(report.links_removed, 80, "{report:?}");
    assert_eq!(report.blobs_removed, 119, "one relinked: {report:?}");
    let relinked = filled.gone[0].clone();
    let rest = Filled {
        kept: filled.kept.clone(),
        gone: filled.gone[1..].to_vec(),
        manifests: filled.manifests,
    };
    assert_outcome(&s, &rest).await;
    assert!(s.blob_size(&relinked).await.expect("size").is_some());
    // 80 links and 119 blobs went in a few DeleteObjects, not one DELETE each.
    assert_eq!(first.delete, 0, "{first:?}");
    assert_eq!(first.post, 2, "links, then blobs: {first:?}");
    assert!(
        first.get >= filled.manifests as u64,
        "every manifest read once: {first:?}"
    );

    // No manifest needs what the other replica linked: the next run, past
    // the grace, takes both links and blobs.
    let next = s
        .collect_garbage(Duration::ZERO, false)
        .await
        .expect("next");
    assert_eq!((next.links_removed, next.blobs_removed), (2, 2), "{next:?}");
    // With the mark log, a run reads no manifest link; without it (gone),
    // exactly one GET more per manifest; then the log is back.
    let with_log = gets_of_a_quiet_run(&s).await;
    for b in 0..MARK_BUCKETS {
        s.delete(&super::mark::mark_log_key(b))
            .await
            .expect("drop the log");
    }
    let without_log = gets_of_a_quiet_run(&s).await;
    assert_eq!(without_log, with_log + filled.manifests as u64);
    assert_eq!(gets_of_a_quiet_run(&s).await, with_log);
    assert_outcome(&s, &rest).await;
}

/// GETs (reads and list pages) of a collection that finds nothing.
async fn gets_of_a_quiet_run(s: &S3Storage) -> u64 {
    let before = s.request_counts();
    let report = s
        .collect_garbage(Duration::ZERO, false)
        .await
        .expect("quiet run");
    assert_eq!(
        (report.links_removed, report.blobs_removed),
        (0, 0),
        "{report:?}"
    );
    s.request_counts().since(&before).get
}
