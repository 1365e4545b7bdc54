//! The S3 backend's own tests, against s3s-fs (and `object_store`'s
//! in-memory store for the read-ahead).

use futures::stream::StreamExt;
use object_store::{PutMode, PutOptions, UpdateVersion};

use super::*;
use crate::s3_test_server::S3TestServer;
use crate::{testsuite, Algorithm};

/// s3s-fs, or None (a skip) outside CI when it is not installed.
fn server() -> Option<S3TestServer> {
    match S3TestServer::start("brt") {
        Ok(Some(server)) => Some(server),
        Ok(None) => {
            let ci = test_ci::in_ci();
            assert!(
                !ci,
                "CI=true but s3s-fs is not installed (scripts/test.sh installs it)"
            );
            eprintln!("SKIP: s3s-fs not installed (cargo install s3s-fs --version 0.14.1 --features binary --locked)");
            None
        }
        Err(e) => panic!("cannot start s3s-fs: {e}"),
    }
}

fn storage(server: &S3TestServer, prefix: &str) -> S3Storage {
    S3Storage::new(&server.options(prefix)).expect("S3 storage")
}

async fn read_all(s: &S3Storage, d: &Digest) -> Vec<u8> {
    let read = s.blob_read(d, None).await.expect("read");
    let mut out = Vec::new();
    let mut stream = read.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

use crate::s3_test_server::pattern;

/// A blob no repository links to when a collection marks, linked from another replica
/// before the sweep, is kept: the links are listed once more right before deleting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_linked_by_another_replica_during_a_collection_is_kept() {
    let Some(server) = server() else { return };
    let (one, two) = (storage(&server, "gcrace"), storage(&server, "gcrace"));
    let mut digests = Vec::new();
    for data in [b"relinked meanwhile".as_slice(), b"garbage".as_slice()] {
        let session = one.upload_create("a").await.expect("create");
        let d = Digest::sha256_of(data);
        one.upload_complete("a", &session.id, &d, Some(testsuite::stream_of(data)))
            .await
            .expect("push");
        assert!(one.unlink_blob("a", &d).await.expect("unlink"));
        digests.push(d);
    }
    let (kept, gone) = (digests[0].clone(), digests[1].clone());
    let relink = async {
        two.link_blob("b", &kept)
            .await
            .expect("link from replica two");
    };
    let report = one
        .collect_garbage_pausing(Duration::ZERO, false, relink)
        .await
        .expect("collect");
    assert_eq!(report.blobs_removed, 1, "{report:?}");
    assert!(two.blob_linked("b", &kept).await.expect("linked"));
    assert_eq!(read_all(&two, &kept).await, b"relinked meanwhile");
    assert!(one.blob_size(&gone).await.expect("size").is_none());
}

/// A tag delete that read the tag before another replica re-tagged it must not take the
/// new value with a blind write: the tombstone is conditional on the version it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_tag_delete_never_removes_a_re_tag() {
    let Some(server) = server() else { return };
    let (one, two) = (storage(&server, "retag"), storage(&server, "retag"));
    let meta = ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        subject: None,
        artifact_type: None,
        annotations: None,
        references: Some(Vec::new()),
    };
    let (v1, v2) = (
        Bytes::from_static(b"{\"v\":1}"),
        Bytes::from_static(b"{\"v\":2}"),
    );
    let (d1, d2) = (Digest::sha256_of(&v1), Digest::sha256_of(&v2));
    one.manifest_put("r", &d1, v1, &meta, Some("latest"))
        .await
        .expect("tag v1");
    // Replica one reads the tag to delete it ...
    let rel = LAYOUT.tag("r", "latest");
    let (_, read_version) = one.get_bytes(&rel).await.expect("get").expect("tag");
    // ... replica two re-tags meanwhile ...
    two.manifest_put("r", &d2, v2, &meta, Some("latest"))
        .await
        .expect("re-tag v2");
    // ... and replica one's tombstone over the version it read is refused.
    assert!(
        !one.tombstone_tag(&rel, read_version)
            .await
            .expect("tombstone"),
        "a stale tombstone was written over the re-tag"
    );
    assert_eq!(
        two.tag_resolve("r", "latest").await.expect("resolve"),
        Some(d2.clone())
    );
    assert_eq!(
        one.tag_resolve("r", "latest").await.expect("resolve"),
        Some(d2)
    );
}

/// Two replicas append to one session at once: the one that read the state first and
/// writes last must be refused, never saved over the other's bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_appends_on_two_replicas_never_mix() {
    let Some(server) = server() else { return };
    let (one, two) = (storage(&server, "race"), storage(&server, "race"));
    let session = one.upload_create("r").await.expect("create");
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
    let late: ByteStream = Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let id = session.id.clone();
    let slow = tokio::spawn(async move { two.upload_append("r", &id, None, late).await });
    // Replica two has read the state and waits for its body; replica one appends meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let right = pattern(1000, 1);
    one.upload_append("r", &session.id, None, testsuite::stream_of(&right))
        .await
        .expect("append on one");
    tx.send(Ok(Bytes::from(pattern(1000, 2))))
        .await
        .expect("send");
    drop(tx);
    let result = slow.await.expect("task");
    assert!(
        matches!(result, Err(StorageError::RangeMismatch { offset: 1000 })),
        "the late append was accepted: {result:?}"
    );
    let digest = Digest::sha256_of(&right);
    one.upload_complete("r", &session.id, &digest, None)
        .await
        .expect("complete with the right bytes");
    assert_eq!(read_all(&one, &digest).await, right);
}

/// What the upload protocol relies on across replicas: the server refuses a create over
/// an existing object and an update over a version it no longer holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_honours_conditional_writes() {
    let Some(server) = server() else { return };
    let s = storage(&server, "conditional");
    let path = s.path("probe");
    let create = || PutOptions::from(PutMode::Create);
    let first = s
        .store
        .put_opts(&path, PutPayload::from_static(b"one"), create())
        .await
        .expect("first create");
    let again = s
        .store
        .put_opts(&path, PutPayload::from_static(b"two"), create())
        .await;
    assert!(
        matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. })
        ),
        "a second create succeeded: {again:?}"
    );
    let (_, e_tag) = s.get_bytes("probe").await.expect("get").expect("present");
    assert!(
        e_tag.is_some(),
        "no ETag on GET: updates could not be conditional"
    );
    assert_eq!(e_tag, first.e_tag);
    let update = |e_tag: Option<String>| {
        PutOptions::from(PutMode::Update(UpdateVersion {
            e_tag,
            version: None,
        }))
    };
    s.store
        .put_opts(
            &path,
            PutPayload::from_static(b"three"),
            update(first.e_tag.clone()),
        )
        .await
        .expect("update over the version read");
    let stale = s
        .store
        .put_opts(
            &path,
            PutPayload::from_static(b"four"),
            update(first.e_tag.clone()),
        )
        .await;
    assert!(
        matches!(stale, Err(object_store::Error::Precondition { .. })),
        "an update over a stale version succeeded: {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_suite() {
    let Some(server) = server() else { return };
    let s = storage(&server, "suite/prefix");
    s.check().await.expect("bucket answers");
    testsuite::run_all(&s).await;
    // Everything stayed below the prefix.
    let stray: Vec<_> = std::fs::read_dir(server.root().join("brt"))
        .expect("bucket folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "suite" && !n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "objects outside the prefix: {stray:?}");
}

/// A chunked upload of odd-sized chunks that crosses part boundaries,
/// alternating between two storages (two replicas) over one bucket,
/// finished on the second; read back through the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_chunked_upload_across_replicas() {
    let Some(server) = server() else { return };
    let a = storage(&server, "");
    let b = storage(&server, "");
    let data = pattern(PART_SIZE * 2 + 3 * 1024 * 1024 + 17, 1);
    let digest = Digest::sha256_of(&data);
    let up = a.upload_create("big/app").await.expect("create");
    let chunks = [1usize, 5 << 20, 7 << 20, 100, (6 << 20) - 3];
    let mut at = 0;
    for (i, len) in chunks.iter().enumerate() {
        let replica = if i % 2 == 0 { &a } else { &b };
        let end = (at + len).min(data.len());
        let st = replica
            .upload_append(
                "big/app",
                &up.id,
                Some(at as u64),
                testsuite::stream_of(&data[at..end]),
            )
            .await
            .expect("append");
        at = end;
        assert_eq!(st.offset, at as u64);
    }
    let size = b
        .upload_complete(
            "big/app",
            &up.id,
            &digest,
            Some(testsuite::stream_of(&data[at..])),
        )
        .await
        .expect("complete");
    assert_eq!(size, data.len() as u64);
    assert_eq!(a.blob_size(&digest).await.expect("size"), Some(size));
    assert!(read_all(&a, &digest).await == data, "bytes differ");
    let read = a
        .blob_read(
            &digest,
            Some(ByteRange::From {
                start: PART_SIZE as u64 - 2,
                end: Some(PART_SIZE as u64 + 1),
            }),
        )
        .await
        .expect("range");
    let mut got = Vec::new();
    let mut stream = read.stream;
    while let Some(c) = stream.next().await {
        got.extend_from_slice(&c.expect("chunk"));
    }
    assert_eq!(got, &data[PART_SIZE - 2..PART_SIZE + 2]);
    // Nothing of the session is left.
    assert!(a.list("uploads/").await.expect("list").is_empty());
    // The blob was not copied: one data object and one empty pointer.
    let data_objects = a.list("data/").await.expect("list");
    assert_eq!(data_objects.len(), 1);
    assert_eq!(data_objects[0].size, size);
    let pointer = a
        .head_opt(&LAYOUT.blob(&digest))
        .await
        .expect("head")
        .expect("pointer");
    assert_eq!(pointer.meta.size, 0);
}

/// A big upload with a wrong digest stores nothing, and a big sha512
/// upload is verified by reading it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_uploads_are_verified() {
    let Some(server) = server() else { return };
    let s = storage(&server, "v");
    let data = pattern(PART_SIZE + 1000, 2);
    let wrong = Digest::sha256_of(b"not it");
    let up = s.upload_create("r").await.expect("create");
    let err = s
        .upload_complete("r", &up.id, &wrong, Some(testsuite::stream_of(&data)))
        .await
        .expect_err("mismatch");
    assert!(matches!(err, StorageError::DigestMismatch { .. }));
    assert!(s.list("blobs/").await.expect("list").is_empty());
    assert!(s.list("data/").await.expect("list").is_empty());
    assert!(s.list("uploads/").await.expect("list").is_empty());

    let d512 = Digest::of(Algorithm::Sha512, &data);
    let up = s.upload_create("r").await.expect("create");
    s.upload_complete("r", &up.id, &d512, Some(testsuite::stream_of(&data)))
        .await
        .expect("sha512");
    assert!(read_all(&s, &d512).await == data);
}

/// The request budget: what a push and a pull cost in S3 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counts_stay_low() {
    let Some(server) = server() else { return };
    let s = storage(&server, "");
    let layer = b"a small layer".to_vec();
    let digest = Digest::sha256_of(&layer);
    // docker: HEAD the blob, POST, PUT with the body.
    let before = s.request_counts();
    assert!(!s.blob_linked("app", &digest).await.expect("head"));
    let up = s.upload_create("app").await.expect("create");
    s.upload_complete("app", &up.id, &digest, Some(testsuite::stream_of(&layer)))
        .await
        .expect("complete");
    let push = s.request_counts().since(&before);
    eprintln!("monolithic push of a small blob: {push:?}");
    // Plus one PUT, the first time this process writes to the repository:
    // its catalog object (see catalog.rs).
    assert!(push.total() <= 7, "{push:?}");

    let meta = ManifestMeta {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        subject: None,
        artifact_type: None,
        annotations: None,
        references: Some(vec![digest.clone()]),
    };
    let body = Bytes::from_static(b"{}");
    let md = Digest::sha256_of(&body);
    s.manifest_put("app", &md, body, &meta, Some("v1"))
        .await
        .expect("put");
    // Pull by tag: resolve, then manifest.
    let before = s.request_counts();
    let d = s
        .tag_resolve("app", "v1")
        .await
        .expect("tag")
        .expect("tagged");
    s.manifest_get("app", &d)
        .await
        .expect("get")
        .expect("there");
    let pull = s.request_counts().since(&before);
    eprintln!("manifest pull by tag: {pull:?}");
    assert!(pull.total() <= 3, "{pull:?}");
}

async fn collect(mut stream: ByteStream) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// An in-memory object store holding `data` at `obj`.
async fn memory_store(data: &[u8]) -> Arc<dyn ObjectStore> {
    let store = Arc::new(object_store::memory::InMemory::new());
    store
        .put(&Path::from("obj"), PutPayload::from(data.to_vec()))
        .await
        .expect("put");
    store
}

/// Parallel ranged reads return exactly the bytes asked for, in order,
/// for spans that start and end on, next to and between range
/// boundaries, whether buffers are plentiful, scarce or missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranged_reads_return_the_bytes_in_order() {
    const R: u64 = 1000;
    for len in [R + 1, 2 * R - 1, 2 * R, 2 * R + 1, 7 * R + 3] {
        let data = pattern(len as usize, len as u32);
        let store = memory_store(&data).await;
        let spans = [
            (0, len),
            (1, len),
            (0, len - 1),
            (R - 1, len),
            (R, len),
            (R + 1, len.min(3 * R + 1)),
            (3, len - 2),
        ];
        for (ahead, buffers) in [(3, 16), (1, 16), (3, 1), (3, 0), (0, 4)] {
            let how = ReadAhead::new(R, ahead, buffers);
            for (start, end) in spans {
                if end <= start {
                    continue;
                }
                let stream = how
                    .read(store.clone(), Path::from("obj"), start, end)
                    .await
                    .expect("read");
                let got = collect(stream).await.expect("bytes");
                assert!(
                    got == data[start as usize..end as usize],
                    "len {len} ahead {ahead} buffers {buffers} span {start}..{end}: \
                     {} bytes, wrong content",
                    got.len()
                );
                assert_eq!(how.buffers.available_permits(), buffers, "buffers leaked");
            }
        }
    }
}

/// Buffers are shared: a read started while another holds them all still
/// completes (streaming the rest in one GET), and dropping a read half way
/// gives its buffers back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_ahead_buffers_are_bounded_and_returned() {
    const R: u64 = 1000;
    let data = pattern(20 * R as usize + 7, 9);
    let store = memory_store(&data).await;
    let how = ReadAhead::new(R, 3, 4);
    let path = Path::from("obj");
    let len = data.len() as u64;
    let mut first = how
        .read(store.clone(), path.clone(), 0, len)
        .await
        .expect("read");
    // The first read fetches 3 ranges ahead, leaving one buffer.
    assert_eq!(how.buffers.available_permits(), 1);
    let second = how
        .read(store.clone(), path.clone(), 0, len)
        .await
        .expect("read");
    assert_eq!(how.buffers.available_permits(), 0);
    let third = how
        .read(store.clone(), path.clone(), 5, len)
        .await
        .expect("read");
    assert!(collect(third).await.expect("third") == data[5..]);
    assert!(collect(second).await.expect("second") == data[..]);
    let chunk = first.next().await.expect("a chunk").expect("bytes");
    assert_eq!(chunk[..], data[..chunk.len()]);
    drop(first);
    assert_eq!(how.buffers.available_permits(), 4);
}

/// A missing object is an error when the read starts, not mid-stream.
#[tokio::test]
async fn ranged_read_of_a_missing_object_fails_up_front() {
    let store = memory_store(b"x").await;
    let how = ReadAhead::new(10, 3, 4);
    let err = match how.read(store, Path::from("nothing"), 0, 100).await {
        Ok(_) => panic!("read of a missing object succeeded"),
        Err(e) => e,
    };
    assert!(matches!(err, object_store::Error::NotFound { .. }), "{err}");
    assert_eq!(how.buffers.available_permits(), 4);
}

/// A big blob on a real S3 server, read in small parallel ranges: the
/// whole blob, and Range requests across and inside range boundaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_blob_reads_in_parallel_ranges() {
    let Some(mut server) = server() else { return };
    const R: u64 = 1 << 20;
    let s = storage(&server, "ranged").with_read_ahead(R, 3, 4);
    let data = pattern(PART_SIZE + 3 * R as usize + 12_345, 4);
    let digest = Digest::sha256_of(&data);
    let up = s.upload_create("r").await.expect("create");
    s.upload_complete("r", &up.id, &digest, Some(testsuite::stream_of(&data)))
        .await
        .expect("complete");
    let before = s.request_counts();
    assert!(read_all(&s, &digest).await == data, "whole blob differs");
    let gets = s.request_counts().since(&before).total();
    assert!(gets >= 12, "read in {gets} requests, not in 1 MiB ranges");
    let len = data.len() as u64;
    for (start, end) in [
        (R - 1, R),
        (R, 2 * R - 1),
        (R + 1, 5 * R + 2),
        (3 * R + 100, 3 * R + 200),
        (0, len - 1),
        (len - R - 3, len - 1),
    ] {
        let range = ByteRange::From {
            start,
            end: Some(end),
        };
        let read = s.blob_read(&digest, Some(range)).await.expect("range");
        assert_eq!(read.range, Some((start, end)));
        let got = collect(read.stream).await.expect("bytes");
        assert!(
            got == data[start as usize..=end as usize],
            "range {start}-{end} differs"
        );
    }
    let read = s
        .blob_read(&digest, Some(ByteRange::Suffix(2 * R + 1)))
        .await
        .expect("suffix");
    let got = collect(read.stream).await.expect("bytes");
    assert!(got == data[data.len() - (2 * R as usize + 1)..]);
    assert_eq!(s.read_ahead.buffers.available_permits(), 4);

    // S3 going away mid-read fails the stream (the client sees a cut
    // body, never a short one), and a read started then is Unavailable.
    let read = s.blob_read(&digest, None).await.expect("read");
    server.stop();
    let err = collect(read.stream)
        .await
        .expect_err("read past the outage");
    eprintln!("mid-read: {err}");
    let err = match s.blob_read(&digest, None).await {
        Ok(_) => panic!("read with S3 down succeeded"),
        Err(e) => e,
    };
    assert!(matches!(err, StorageError::Unavailable(_)), "{err}");
    assert_eq!(s.read_ahead.buffers.available_permits(), 4);
}

/// A bucket written by an older berth has no catalog objects: the first page
/// rebuilds them from the tree (once, with a marker), and a repository
/// created afterwards by another replica is listed without a rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_catalog_index_is_rebuilt() {
    let Some(server) = server() else { return };
    let old = storage(&server, "cat");
    for repo in ["b/x", "a", "b"] {
        let up = old.upload_create(repo).await.expect("create");
        let data = repo.as_bytes();
        old.upload_complete(
            repo,
            &up.id,
            &Digest::sha256_of(data),
            Some(testsuite::stream_of(data)),
        )
        .await
        .expect("push");
    }
    // What an older version leaves: no catalog objects, no marker.
    for item in old.list(crate::layout::CATALOG).await.expect("list") {
        old.delete(&item.key).await.expect("delete");
    }
    assert!(!old
        .exists(crate::layout::CATALOG_COMPLETE)
        .await
        .expect("head"));
    let fresh = storage(&server, "cat");
    let page = fresh.repositories_after(None, Some(2)).await.expect("page");
    assert_eq!(page.names, ["a", "b"]);
    assert!(page.more);
    assert!(fresh
        .exists(crate::layout::CATALOG_COMPLETE)
        .await
        .expect("head"));
    let other = storage(&server, "cat");
    other
        .link_blob("b/a", &Digest::sha256_of(b"a"))
        .await
        .expect("mount");
    let page = fresh
        .repositories_after(Some("b"), None)
        .await
        .expect("page");
    assert_eq!(page.names, ["b/a", "b/x"]);
}
