//! The filesystem backend's own tests: crashes, races and stray files.

use std::fs::OpenOptions;
use std::io::Write;

use super::*;
use crate::layout::referrer_entry_name;
use crate::{testsuite, Algorithm};

fn open() -> (tempfile::TempDir, FsStorage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = FsStorage::open(dir.path().join("data")).expect("open");
    (dir, storage)
}

#[tokio::test]
async fn shared_suite() {
    let (_dir, storage) = open();
    testsuite::run_all(&storage).await;
}

#[tokio::test]
async fn a_blob_relinked_during_a_collection_is_kept() {
    let (_dir, storage) = open();
    let files = RootFiles {
        root: storage.root().to_path_buf(),
    };
    crate::gc::scenarios::a_blob_relinked_during_a_collection_is_kept(&files, &storage).await;
}

/// A repository folder removed by hand: the checked catalog drops it at
/// once, the unchecked list (the web UI's) may still name it, and its tags
/// stamp says it is gone, which is how the UI drops its row.
#[tokio::test]
async fn a_repository_removed_by_hand_leaves_the_checked_catalog_at_once() {
    let (_dir, storage) = open();
    for repo in ["hand/keep", "hand/gone"] {
        let status = storage.upload_create(repo).await.expect("create");
        let digest = Digest::sha256_of(repo.as_bytes());
        let body = testsuite::stream_of(repo.as_bytes());
        storage
            .upload_complete(repo, &status.id, &digest, Some(body))
            .await
            .expect("complete");
    }
    let names = |v: Vec<String>| {
        v.into_iter()
            .filter(|r| r.starts_with("hand/"))
            .collect::<Vec<_>>()
    };
    let checked = storage.repositories().await.expect("catalog");
    assert_eq!(names(checked), ["hand/gone", "hand/keep"]);
    assert!(storage
        .tags_stamp("hand/gone")
        .await
        .expect("stamp")
        .is_some());
    std::fs::remove_dir_all(storage.root().join("repositories/hand/gone")).expect("rm");
    let checked = storage.repositories().await.expect("catalog");
    assert_eq!(names(checked), ["hand/keep"]);
    let unchecked = storage.repository_names_unchecked().await.expect("names");
    assert!(names(unchecked).contains(&"hand/keep".to_string()));
    assert_eq!(storage.tags_stamp("hand/gone").await.expect("stamp"), None);
    assert!(storage
        .tags_stamp("hand/keep")
        .await
        .expect("stamp")
        .is_some());
}

#[tokio::test]
async fn uploads_and_tags_survive_reopen() {
    let (dir, storage) = open();
    let status = storage.upload_create("a/b").await.expect("create");
    storage
        .upload_append("a/b", &status.id, None, testsuite::stream_of(b"hello "))
        .await
        .expect("append");
    drop(storage);
    let storage = FsStorage::open(dir.path().join("data")).expect("reopen");
    let again = storage
        .upload_status("a/b", &status.id)
        .await
        .expect("status");
    assert_eq!(again.offset, 6);
    let digest = Digest::sha256_of(b"hello world");
    storage
        .upload_complete(
            "a/b",
            &status.id,
            &digest,
            Some(testsuite::stream_of(b"world")),
        )
        .await
        .expect("complete");
    assert!(storage.blob_linked("a/b", &digest).await.expect("linked"));
}

#[tokio::test]
async fn bytes_past_the_checkpoint_are_dropped_on_resume() {
    let (_dir, storage) = open();
    let status = storage.upload_create("r").await.expect("create");
    storage
        .upload_append("r", &status.id, None, testsuite::stream_of(b"abc"))
        .await
        .expect("append");
    // Simulate a crash after bytes hit the data file but before the state was saved.
    let data = storage.root().join("uploads").join(&status.id).join("data");
    let mut f = OpenOptions::new()
        .append(true)
        .open(&data)
        .expect("open data");
    f.write_all(b"GARBAGE").expect("write");
    drop(f);
    assert_eq!(
        storage
            .upload_status("r", &status.id)
            .await
            .expect("status")
            .offset,
        3
    );
    let digest = Digest::sha256_of(b"abcdef");
    storage
        .upload_complete("r", &status.id, &digest, Some(testsuite::stream_of(b"def")))
        .await
        .expect("complete after crash leftovers");
    let bytes = storage
        .blob_bytes(&digest)
        .await
        .expect("read")
        .expect("present");
    assert_eq!(&bytes[..], b"abcdef");
}

#[tokio::test]
async fn interrupted_body_keeps_received_bytes() {
    let (_dir, storage) = open();
    let status = storage.upload_create("r").await.expect("create");
    let broken: ByteStream = Box::pin(futures::stream::iter(vec![
        Ok(Bytes::from_static(b"12345")),
        Err(io::Error::new(
            ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]));
    let err = storage
        .upload_append("r", &status.id, None, broken)
        .await
        .expect_err("interrupted");
    assert!(matches!(err, StorageError::BodyInterrupted(_)));
    assert_eq!(
        storage
            .upload_status("r", &status.id)
            .await
            .expect("status")
            .offset,
        5
    );
    assert!(storage.repositories().await.expect("repos").is_empty());
}

/// Append `data` to a fresh session of `repo` and return its id.
async fn session_with(storage: &FsStorage, repo: &str, data: &[u8]) -> String {
    let status = storage.upload_create(repo).await.expect("create");
    storage
        .upload_append(repo, &status.id, None, testsuite::stream_of(data))
        .await
        .expect("append");
    status.id
}

/// Appends queued on one session each get their turn and all land, one after another
/// (none refused because the one before still held the data file's flock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_all_land_one_after_another() {
    let (_dir, storage) = open();
    let storage = Arc::new(storage);
    let id = session_with(&storage, "r", b"").await;
    for _ in 0..30 {
        let appends: Vec<_> = (0..3)
            .map(|_| {
                let (storage, id) = (storage.clone(), id.clone());
                tokio::spawn(async move {
                    storage
                        .upload_append("r", &id, None, testsuite::stream_of(b"abc"))
                        .await
                })
            })
            .collect();
        for append in appends {
            let result = append.await.expect("task");
            assert!(result.is_ok(), "a queued append failed: {result:?}");
        }
    }
    let status = storage.upload_status("r", &id).await.expect("status");
    assert_eq!(status.offset, 30 * 3 * 3);
}

#[tokio::test]
async fn completion_never_replaces_an_existing_blob() {
    let (_dir, storage) = open();
    let right = b"the victim's bytes".to_vec();
    let digest = Digest::sha256_of(&right);
    let id = session_with(&storage, "victim", &right).await;
    storage
        .upload_complete("victim", &id, &digest, None)
        .await
        .expect("victim push");
    // A session whose saved state claims the right hash over other bytes
    // (what two writers at once used to leave behind).
    let id = session_with(&storage, "mallory", &right).await;
    let data = storage.root().join("uploads").join(&id).join("data");
    fs::write(&data, b"the attacker's bytes").expect("overwrite data");
    let _ = storage.upload_complete("mallory", &id, &digest, None).await;
    let stored = storage
        .blob_bytes(&digest)
        .await
        .expect("read")
        .expect("blob");
    assert_eq!(&stored[..], &right[..], "an existing blob was replaced");
    assert!(
        !storage.root().join("uploads").join(&id).exists(),
        "the upload was not dropped"
    );
}

#[tokio::test]
async fn stale_hash_state_is_caught_before_a_new_blob_is_made() {
    let (_dir, storage) = open();
    let right = b"bytes the digest names".to_vec();
    let digest = Digest::sha256_of(&right);
    let id = session_with(&storage, "r", &right).await;
    let data = storage.root().join("uploads").join(&id).join("data");
    fs::write(&data, b"other bytes, same len!").expect("overwrite data");
    let err = storage
        .upload_complete("r", &id, &digest, None)
        .await
        .expect_err("must not complete");
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert!(storage.blob_size(&digest).await.expect("size").is_none());
}

#[tokio::test]
async fn a_session_shorter_than_its_state_is_refused() {
    let (_dir, storage) = open();
    let id = session_with(&storage, "r", b"0123456789").await;
    let data = storage.root().join("uploads").join(&id).join("data");
    fs::write(&data, b"01234").expect("truncate data");
    let err = storage
        .upload_complete("r", &id, &Digest::sha256_of(b"0123456789"), None)
        .await
        .expect_err("short data");
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn completion_after_a_crash_between_link_and_cleanup_succeeds() {
    let (_dir, storage) = open();
    let bytes = b"crash right after the link".to_vec();
    let digest = Digest::sha256_of(&bytes);
    let id = session_with(&storage, "r", &bytes).await;
    // The crash: the data is already the blob, the session is still there.
    let paths = storage.paths();
    let blob = paths.blob(&digest);
    fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
    fs::hard_link(paths.upload_data(&id), &blob).expect("link");
    assert_eq!(
        storage
            .upload_status("r", &id)
            .await
            .expect("status")
            .offset,
        bytes.len() as u64
    );
    let size = storage
        .upload_complete("r", &id, &digest, None)
        .await
        .expect("retried completion");
    assert_eq!(size, bytes.len() as u64);
    assert!(storage.blob_linked("r", &digest).await.expect("linked"));
    assert!(matches!(
        storage.upload_status("r", &id).await,
        Err(StorageError::UploadUnknown)
    ));
}

#[tokio::test]
async fn a_session_whose_data_was_renamed_away_is_unknown_not_an_error() {
    let (_dir, storage) = open();
    let bytes = b"renamed by an older version".to_vec();
    let digest = Digest::sha256_of(&bytes);
    let id = session_with(&storage, "r", &bytes).await;
    let paths = storage.paths();
    let blob = paths.blob(&digest);
    fs::create_dir_all(blob.parent().expect("parent")).expect("mkdir");
    fs::rename(paths.upload_data(&id), &blob).expect("rename");
    for result in [
        storage.upload_status("r", &id).await.map(|_| ()),
        storage
            .upload_append("r", &id, None, testsuite::stream_of(b"x"))
            .await
            .map(|_| ()),
        storage
            .upload_complete("r", &id, &digest, None)
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(StorageError::UploadUnknown)),
            "{result:?}"
        );
    }
}

#[tokio::test]
async fn a_manifest_whose_blob_was_collected_is_refused() {
    let (_dir, storage) = open();
    let layer = Digest::sha256_of(b"gone");
    let meta = ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        subject: None,
        artifact_type: None,
        annotations: None,
        references: Some(vec![layer.clone()]),
    };
    let body = Bytes::from_static(b"{}");
    let err = storage
        .manifest_put(
            "r",
            &Digest::sha256_of(&body),
            body.clone(),
            &meta,
            Some("t"),
        )
        .await
        .expect_err("missing layer");
    assert!(
        matches!(err, StorageError::ReferenceUnknown(ref d) if d == &layer),
        "{err}"
    );
    assert!(storage.tag_resolve("r", "t").await.expect("tag").is_none());
}

#[tokio::test]
async fn referrers_after_reads_entries_lazily_and_skips_stray_names() {
    use futures::TryStreamExt;
    let (_dir, storage) = open();
    let subject = Digest::sha256_of(b"subject");
    let meta = ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        subject: Some(subject.clone()),
        artifact_type: None,
        annotations: None,
        references: None,
    };
    let mut digests = Vec::new();
    for (i, algorithm) in [Algorithm::Sha512, Algorithm::Sha256, Algorithm::Sha256]
        .into_iter()
        .enumerate()
    {
        let body = Bytes::from(format!("{{\"n\":{i}}}"));
        let d = Digest::of(algorithm, &body);
        storage
            .manifest_put("r", &d, body, &meta, None)
            .await
            .expect("put referrer");
        digests.push(d);
    }
    digests.sort();
    assert_eq!(digests[2].algorithm(), Algorithm::Sha512, "sha256 first");
    let dir = storage.paths().referrers_dir("r", &subject);
    for stray in [
        "README",
        "sha256-zz",
        "sha256",
        "md5-d41d8cd98f00b204e9800998ecf8427e",
    ] {
        fs::write(dir.join(stray), b"not a descriptor").expect("stray file");
    }
    fs::write(dir.join(format!("sha256:{}", digests[0].hex())), b"{}").expect("stray");
    let list = |after: Option<Digest>| {
        let storage = &storage;
        let subject = &subject;
        async move {
            let stream = storage.referrers_after("r", subject, after.as_ref()).await;
            let all: Vec<Descriptor> = stream.expect("list").try_collect().await.expect("read");
            all.into_iter().map(|d| d.digest).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(None).await, digests);
    assert_eq!(list(Some(digests[0].clone())).await, digests[1..]);

    // Entries are read as the stream is polled: one deleted after the
    // listing is skipped, not an error.
    let mut stream = storage
        .referrers_after("r", &subject, None)
        .await
        .expect("list");
    let first = stream.try_next().await.expect("read").expect("first");
    assert_eq!(first.digest, digests[0]);
    assert!(storage
        .manifest_delete("r", &digests[1])
        .await
        .expect("delete"));
    let rest: Vec<Descriptor> = stream.try_collect().await.expect("rest");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].digest, digests[2]);

    // An entry whose descriptor names another digest would break paging.
    let entry = dir.join(referrer_entry_name(&digests[0]));
    let mut other: Descriptor =
        serde_json::from_slice(&fs::read(&entry).expect("entry")).expect("descriptor");
    other.digest = digests[1].clone();
    fs::write(&entry, serde_json::to_vec(&other).expect("json")).expect("rewrite");
    let err = storage
        .referrers_after("r", &subject, None)
        .await
        .expect("list")
        .try_collect::<Vec<_>>()
        .await
        .expect_err("mismatched entry");
    assert!(matches!(err, StorageError::Corrupt(_)), "{err}");
}

#[tokio::test]
async fn foreign_upload_ids_are_unknown_and_leave_nothing_behind() {
    let (_dir, storage) = open();
    for id in [
        "../../etc",
        "",
        "zz",
        "0123456789abcdef0123456789abcdeg",
        "0123456789abcdef0123456789abcdef",
    ] {
        assert!(matches!(
            storage.upload_status("r", id).await,
            Err(StorageError::UploadUnknown)
        ));
        assert!(matches!(
            storage
                .upload_append("r", id, None, testsuite::stream_of(b"x"))
                .await,
            Err(StorageError::UploadUnknown)
        ));
        assert!(matches!(
            storage.upload_cancel("r", id).await,
            Err(StorageError::UploadUnknown)
        ));
    }
    let locks = storage.upload_locks.len();
    assert_eq!(locks, 0, "unknown upload ids left locks behind");
}
