//! The test suite every storage backend must pass. Each backend's own tests
//! call [`run_all`] on a fresh, empty store.

use bytes::Bytes;
use futures::StreamExt;

use crate::{Algorithm, ByteRange, ByteStream, Digest, ManifestMeta, Storage, StorageError};

/// A one-chunk stream of `data`.
pub fn stream_of(data: &[u8]) -> ByteStream {
    let bytes = Bytes::copy_from_slice(data);
    Box::pin(futures::stream::iter([Ok(bytes)]))
}

async fn read_all(storage: &dyn Storage, digest: &Digest, range: Option<ByteRange>) -> Vec<u8> {
    let read = storage.blob_read(digest, range).await.expect("blob_read");
    let mut out = Vec::new();
    let mut stream = read.stream;
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("chunk"));
    }
    out
}

async fn push_blob(storage: &dyn Storage, repo: &str, data: &[u8]) -> Digest {
    let digest = Digest::sha256_of(data);
    let up = storage.upload_create(repo).await.expect("upload_create");
    let size = storage
        .upload_complete(repo, &up.id, &digest, Some(stream_of(data)))
        .await
        .expect("upload_complete");
    assert_eq!(size, data.len() as u64);
    digest
}

/// Store `json` as a manifest of `repo` tagged `tag`; its digest.
async fn put_tagged(s: &dyn Storage, repo: &str, json: String, tag: &str) -> Digest {
    let bytes = Bytes::from(json);
    let digest = Digest::sha256_of(&bytes);
    s.manifest_put(
        repo,
        &digest,
        bytes,
        &meta("application/x-m", None),
        Some(tag),
    )
    .await
    .expect("manifest_put");
    digest
}

fn meta(media_type: &str, subject: Option<&Digest>) -> ManifestMeta {
    ManifestMeta {
        media_type: media_type.to_string(),
        subject: subject.cloned(),
        artifact_type: subject.map(|_| "application/x-test".to_string()),
        annotations: None,
        references: Some(Vec::new()),
    }
}

pub async fn run_all(storage: &dyn Storage) {
    empty_store(storage).await;
    monolithic_upload(storage).await;
    chunked_upload(storage).await;
    wrong_digest_stores_nothing(storage).await;
    notified_completion(storage).await;
    sha512_upload(storage).await;
    cancel_upload(storage).await;
    purge_keeps_fresh_uploads(storage).await;
    blobs_are_shared_but_linked_per_repository(storage).await;
    ranges(storage).await;
    manifests_tags_and_referrers(storage).await;
    referrers_after_a_digest(storage).await;
    catalog_is_sorted_and_nested(storage).await;
    pages_match_the_whole_lists(storage).await;
    garbage_collection(storage).await;
    outbox_records_and_claims(storage).await;
    push_and_pull_times(storage).await;
    summaries_and_tag_stamps(storage).await;
}

/// Summary parts round-trip per repository and are never taken for a
/// repository; the tag stamp changes with every tag push (the same digest
/// again too), move and delete, and is `None` for an unknown repository.
async fn summaries_and_tag_stamps(s: &dyn Storage) {
    use crate::SummaryPart;
    let repo = "stamps/app";
    assert_eq!(s.tags_stamp(repo).await.expect("stamp"), None);
    s.summary_put(repo, SummaryPart::Row, Bytes::from_static(b"ghost"))
        .await
        .expect("summary_put");
    assert_eq!(
        s.summary_get(repo, SummaryPart::Row).await.expect("get"),
        None,
        "no repository, no record"
    );
    let push = |n: u32, tag: &'static str| async move {
        put_tagged(s, repo, format!("{{\"stamp\":{n}}}"), tag).await;
        s.tags_stamp(repo).await.expect("stamp").expect("a stamp")
    };
    let mut seen = vec![push(1, "a").await];
    seen.push(push(2, "b").await);
    seen.push(push(3, "a").await); // moved
    seen.push(push(3, "a").await); // pushed again, same digest
    s.tag_delete(repo, "b").await.expect("tag_delete");
    seen.push(s.tags_stamp(repo).await.expect("stamp").expect("a stamp"));
    for (i, a) in seen.iter().enumerate() {
        for b in &seen[i + 1..] {
            assert_ne!(a, b, "every change gives a new stamp: {seen:?}");
        }
    }
    assert_eq!(
        s.tags_stamp(repo).await.expect("stamp").as_ref(),
        seen.last(),
        "no change, same stamp"
    );
    for (part, body) in [
        (SummaryPart::Row, &b"row"[..]),
        (SummaryPart::Manifests, b"m"),
    ] {
        assert_eq!(s.summary_get(repo, part).await.expect("get"), None);
        s.summary_put(repo, part, Bytes::from_static(body))
            .await
            .expect("put");
    }
    s.summary_put(repo, SummaryPart::Row, Bytes::from_static(b"row2"))
        .await
        .expect("replace");
    assert_eq!(
        s.summary_get(repo, SummaryPart::Row)
            .await
            .expect("get")
            .as_deref(),
        Some(&b"row2"[..])
    );
    assert_eq!(
        s.summary_get(repo, SummaryPart::Manifests)
            .await
            .expect("get")
            .as_deref(),
        Some(&b"m"[..])
    );
    let repos = s.repositories().await.expect("repositories");
    assert!(repos.iter().all(|r| !r.contains("_summary")), "{repos:?}");
}

/// The event outbox: records kept in id order until deleted; a claim is
/// exclusive until released or expired, and a bad id is refused.
async fn outbox_records_and_claims(s: &dyn Storage) {
    use std::time::Duration;
    assert!(s.outbox_list().await.expect("list").is_empty());
    s.outbox_put("0002-b", Bytes::from_static(b"two"))
        .await
        .expect("put");
    s.outbox_put("0001-a", Bytes::from_static(b"one"))
        .await
        .expect("put");
    assert_eq!(s.outbox_list().await.expect("list"), ["0001-a", "0002-b"]);
    s.outbox_put("0001-a", Bytes::from_static(b"one'"))
        .await
        .expect("replace");
    assert_eq!(
        s.outbox_get("0001-a").await.expect("get").as_deref(),
        Some(&b"one'"[..])
    );
    assert!(
        s.outbox_get("../x").await.is_err(),
        "ids cannot leave the outbox"
    );

    let minute = Duration::from_secs(60);
    assert!(s.outbox_claim("0001-a", "r1", minute).await.expect("claim"));
    assert!(
        !s.outbox_claim("0001-a", "r2", minute).await.expect("claim"),
        "held by r1"
    );
    assert!(s.outbox_claim("0001-a", "r1", minute).await.expect("renew"));
    s.outbox_release("0001-a", "r2")
        .await
        .expect("release of another's claim");
    assert!(
        !s.outbox_claim("0001-a", "r2", minute).await.expect("claim"),
        "still r1's"
    );
    s.outbox_release("0001-a", "r1").await.expect("release");
    assert!(s
        .outbox_claim("0001-a", "r2", Duration::ZERO)
        .await
        .expect("claim"));
    assert!(s
        .outbox_claim("0001-a", "r1", minute)
        .await
        .expect("expired: taken over"));

    s.outbox_delete("0001-a").await.expect("delete");
    s.outbox_delete("0001-a").await.expect("delete again");
    assert_eq!(s.outbox_get("0001-a").await.expect("get"), None);
    assert!(s
        .outbox_claim("0001-a", "r2", minute)
        .await
        .expect("claim gone with it"));
    s.outbox_release("0001-a", "r2").await.expect("release");
    s.outbox_delete("0002-b").await.expect("delete");
    assert!(s.outbox_list().await.expect("list").is_empty());
}

async fn empty_store(s: &dyn Storage) {
    let d = Digest::sha256_of(b"nothing");
    assert_eq!(s.blob_size(&d).await.expect("size"), None);
    assert!(matches!(
        s.blob_read(&d, None).await,
        Err(StorageError::BlobUnknown)
    ));
    assert!(s.tags("nope").await.expect("tags").is_none());
    assert!(matches!(
        s.link_blob("r", &d).await,
        Err(StorageError::BlobUnknown)
    ));
}

async fn monolithic_upload(s: &dyn Storage) {
    let d = push_blob(s, "mono", b"monolithic").await;
    assert_eq!(s.blob_size(&d).await.expect("size"), Some(10));
    assert!(s.blob_linked("mono", &d).await.expect("linked"));
    assert_eq!(read_all(s, &d, None).await, b"monolithic");
    assert_eq!(
        s.blob_bytes(&d).await.expect("bytes").as_deref(),
        Some(&b"monolithic"[..])
    );
    // Empty blobs are legal.
    let empty = push_blob(s, "mono", b"").await;
    assert_eq!(s.blob_size(&empty).await.expect("size"), Some(0));
    assert!(read_all(s, &empty, None).await.is_empty());
}

async fn chunked_upload(s: &dyn Storage) {
    let up = s.upload_create("chunks").await.expect("create");
    assert_eq!(up.offset, 0);
    let st = s
        .upload_append("chunks", &up.id, Some(0), stream_of(b"abc"))
        .await
        .expect("first chunk");
    assert_eq!(st.offset, 3);
    match s
        .upload_append("chunks", &up.id, Some(1), stream_of(b"zzz"))
        .await
    {
        Err(StorageError::RangeMismatch { offset }) => assert_eq!(offset, 3),
        other => panic!("out-of-order chunk accepted: {:?}", other.map(|s| s.offset)),
    }
    let st = s
        .upload_append("chunks", &up.id, None, stream_of(b"def"))
        .await
        .expect("streamed chunk");
    assert_eq!(st.offset, 6);
    assert_eq!(
        s.upload_status("chunks", &up.id)
            .await
            .expect("status")
            .offset,
        6
    );
    // The session belongs to its repository only.
    assert!(matches!(
        s.upload_status("other", &up.id).await,
        Err(StorageError::UploadUnknown)
    ));
    let d = Digest::sha256_of(b"abcdefgh");
    s.upload_complete("chunks", &up.id, &d, Some(stream_of(b"gh")))
        .await
        .expect("complete");
    assert_eq!(read_all(s, &d, None).await, b"abcdefgh");
    assert!(matches!(
        s.upload_status("chunks", &up.id).await,
        Err(StorageError::UploadUnknown)
    ));
}

async fn wrong_digest_stores_nothing(s: &dyn Storage) {
    let up = s.upload_create("wrong").await.expect("create");
    let claimed = Digest::sha256_of(b"something else");
    let err = s
        .upload_complete(
            "wrong",
            &up.id,
            &claimed,
            Some(stream_of(b"actual content")),
        )
        .await
        .expect_err("mismatch must fail");
    assert!(matches!(err, StorageError::DigestMismatch { .. }));
    assert_eq!(s.blob_size(&claimed).await.expect("size"), None);
    assert_eq!(
        s.blob_size(&Digest::sha256_of(b"actual content"))
            .await
            .expect("size"),
        None
    );
    assert!(!s.blob_linked("wrong", &claimed).await.expect("linked"));
}

/// `upload_complete_notify`: `matched` is told for bytes that match (also a blob of more
/// than one S3 part); for bytes that do not, or a body that breaks off, it never is, and
/// nothing becomes visible, whatever digest the caller hoped for.
async fn notified_completion(s: &dyn Storage) {
    use tokio::sync::oneshot;
    let big: Vec<u8> = (0..(crate::s3::PART_SIZE + 5))
        .map(|i| (i % 251) as u8)
        .collect();
    let chunks = || -> ByteStream {
        let parts: Vec<_> = big
            .chunks(1 << 20)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(futures::stream::iter(parts))
    };
    let d = Digest::sha256_of(&big);
    let up = s.upload_create("notify").await.expect("create");
    let (tx, rx) = oneshot::channel();
    let size = s
        .upload_complete_notify("notify", &up.id, &d, Some(chunks()), tx)
        .await
        .expect("complete");
    assert_eq!(size, big.len() as u64);
    rx.await.expect("told that the bytes matched");
    assert_eq!(read_all(s, &d, None).await, big);
    assert!(s.blob_linked("notify", &d).await.expect("linked"));

    // The attacker's case: a digest that is not the bytes' (here: the bytes with one
    // byte changed, so the lengths agree) is refused, the caller is never told, and
    // neither digest is visible anywhere.
    let mut forged = big.clone();
    forged[7] ^= 1;
    let claimed = Digest::sha256_of(&forged);
    let up = s.upload_create("notify-bad").await.expect("create");
    let (tx, rx) = oneshot::channel();
    let err = s
        .upload_complete_notify("notify-bad", &up.id, &claimed, Some(chunks()), tx)
        .await
        .expect_err("a mismatch must fail");
    assert!(matches!(err, StorageError::DigestMismatch { .. }), "{err}");
    assert!(
        rx.await.is_err(),
        "a mismatch must never be reported as a match"
    );
    assert_eq!(s.blob_size(&claimed).await.expect("size"), None);
    assert!(!s.blob_linked("notify-bad", &claimed).await.expect("linked"));
    assert!(!s.blob_linked("notify-bad", &d).await.expect("linked"));

    // A body that breaks off: not told, nothing stored under the digest it was meant for.
    let data = b"cut short";
    let cut = Digest::sha256_of(data);
    let up = s.upload_create("notify-cut").await.expect("create");
    let (tx, rx) = oneshot::channel();
    let body: ByteStream = Box::pin(futures::stream::iter([
        Ok(Bytes::from_static(&data[..3])),
        Err(std::io::Error::other("the upstream went away")),
    ]));
    let err = s
        .upload_complete_notify("notify-cut", &up.id, &cut, Some(body), tx)
        .await
        .expect_err("a cut body must fail");
    assert!(matches!(err, StorageError::BodyInterrupted(_)), "{err}");
    assert!(
        rx.await.is_err(),
        "a cut body must never be reported as a match"
    );
    assert_eq!(s.blob_size(&cut).await.expect("size"), None);
}

async fn sha512_upload(s: &dyn Storage) {
    let data = b"sha512 content";
    let d = Digest::of(Algorithm::Sha512, data);
    let up = s.upload_create("five12").await.expect("create");
    s.upload_append("five12", &up.id, None, stream_of(&data[..5]))
        .await
        .expect("append");
    s.upload_complete("five12", &up.id, &d, Some(stream_of(&data[5..])))
        .await
        .expect("complete");
    assert_eq!(read_all(s, &d, None).await, data);
}

async fn cancel_upload(s: &dyn Storage) {
    let up = s.upload_create("cancel").await.expect("create");
    s.upload_append("cancel", &up.id, None, stream_of(b"xyz"))
        .await
        .expect("append");
    s.upload_cancel("cancel", &up.id).await.expect("cancel");
    assert!(matches!(
        s.upload_status("cancel", &up.id).await,
        Err(StorageError::UploadUnknown)
    ));
    assert!(matches!(
        s.upload_cancel("cancel", &up.id).await,
        Err(StorageError::UploadUnknown)
    ));
}

async fn purge_keeps_fresh_uploads(s: &dyn Storage) {
    let up = s.upload_create("purge").await.expect("create");
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(s.purge_uploads(hour).await.expect("purge"), 0);
    assert_eq!(
        s.upload_status("purge", &up.id).await.expect("kept").offset,
        0
    );
    // Let the session age past a zero-second limit (timestamps are whole seconds).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(
        s.purge_uploads(std::time::Duration::ZERO)
            .await
            .expect("purge")
            >= 1
    );
    assert!(matches!(
        s.upload_status("purge", &up.id).await,
        Err(StorageError::UploadUnknown)
    ));
}

async fn blobs_are_shared_but_linked_per_repository(s: &dyn Storage) {
    let d = push_blob(s, "share/a", b"shared bytes").await;
    assert!(!s.blob_linked("share/b", &d).await.expect("linked"));
    s.link_blob("share/b", &d).await.expect("mount");
    assert!(s.blob_linked("share/b", &d).await.expect("linked"));
    // Pushing the same content again is fine (dedup).
    assert_eq!(push_blob(s, "share/c", b"shared bytes").await, d);
    assert!(s.unlink_blob("share/a", &d).await.expect("unlink"));
    assert!(!s.unlink_blob("share/a", &d).await.expect("unlink again"));
    assert!(!s.blob_linked("share/a", &d).await.expect("linked"));
    assert!(s.blob_linked("share/b", &d).await.expect("still in b"));
}

async fn ranges(s: &dyn Storage) {
    let d = push_blob(s, "ranges", b"0123456789").await;
    let r = |start, end| Some(ByteRange::From { start, end });
    assert_eq!(read_all(s, &d, r(2, Some(4))).await, b"234");
    assert_eq!(read_all(s, &d, r(7, None)).await, b"789");
    assert_eq!(read_all(s, &d, Some(ByteRange::Suffix(2))).await, b"89");
    let read = s.blob_read(&d, r(2, Some(4))).await.expect("range");
    assert_eq!((read.size, read.range), (10, Some((2, 4))));
    assert!(matches!(
        s.blob_read(&d, r(10, None)).await,
        Err(StorageError::RangeNotSatisfiable { size: 10 })
    ));
}

/// `referrers_after`, whichever way a backend lists: digest order, strictly after.
async fn referrers_after_a_digest(s: &dyn Storage) {
    use futures::TryStreamExt;
    let repo = "ref/paged";
    let subject = Digest::sha256_of(b"paged subject");
    let mut digests = Vec::new();
    for i in 0..3 {
        let body = Bytes::from(format!("{{\"schemaVersion\":2,\"n\":{i}}}"));
        let d = Digest::sha256_of(&body);
        s.manifest_put(
            repo,
            &d,
            body,
            &meta("application/x-m", Some(&subject)),
            None,
        )
        .await
        .expect("put referrer");
        digests.push(d);
    }
    digests.sort();
    let subject = &subject;
    let after = |a: Option<Digest>| async move {
        let stream = s.referrers_after(repo, subject, a.as_ref()).await;
        let list: Vec<crate::Descriptor> = stream.expect("list").try_collect().await.expect("read");
        list.into_iter().map(|d| d.digest).collect::<Vec<_>>()
    };
    assert_eq!(after(None).await, digests);
    assert_eq!(after(Some(digests[0].clone())).await, digests[1..]);
    assert_eq!(after(Some(digests[2].clone())).await, Vec::<Digest>::new());
    // An `after` that is not a referrer still splits the order.
    let between = Digest::sha256_of(b"x");
    let want: Vec<Digest> = digests.iter().filter(|d| **d > between).cloned().collect();
    assert_eq!(after(Some(between)).await, want);
    for d in &digests {
        assert!(s.manifest_delete(repo, d).await.expect("delete"));
    }
    assert_eq!(after(None).await, Vec::<Digest>::new());
}

async fn manifests_tags_and_referrers(s: &dyn Storage) {
    let repo = "man/ifest";
    let body = Bytes::from_static(b"{\"schemaVersion\":2}");
    let d = Digest::sha256_of(&body);
    let oci = "application/vnd.oci.image.manifest.v1+json";
    assert!(s.manifest_meta(repo, &d).await.expect("meta").is_none());
    s.manifest_put(repo, &d, body.clone(), &meta(oci, None), Some("v1"))
        .await
        .expect("put");
    s.manifest_put(repo, &d, body.clone(), &meta(oci, None), Some("latest"))
        .await
        .expect("put again under another tag");
    assert_eq!(
        s.manifest_meta(repo, &d).await.expect("meta"),
        Some(meta(oci, None))
    );
    assert_eq!(s.blob_bytes(&d).await.expect("bytes"), Some(body.clone()));
    assert_eq!(
        s.tag_resolve(repo, "v1").await.expect("tag"),
        Some(d.clone())
    );
    assert_eq!(
        s.tags(repo).await.expect("tags"),
        Some(vec!["latest".to_string(), "v1".to_string()])
    );
    // Another repository does not see it.
    assert!(s
        .manifest_meta("man/other", &d)
        .await
        .expect("meta")
        .is_none());

    // A referrer whose subject is not stored is still accepted and listed.
    let ref_body = Bytes::from_static(b"{\"schemaVersion\":2,\"subject\":1}");
    let rd = Digest::sha256_of(&ref_body);
    let subject = Digest::sha256_of(b"not pushed yet");
    s.manifest_put(
        repo,
        &rd,
        ref_body.clone(),
        &meta(oci, Some(&subject)),
        None,
    )
    .await
    .expect("put referrer");
    let refs = s.referrers(repo, &subject).await.expect("referrers");
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].digest, rd);
    assert_eq!(refs[0].size, ref_body.len() as u64);
    assert_eq!(refs[0].artifact_type.as_deref(), Some("application/x-test"));
    assert!(s
        .referrers("man/other", &subject)
        .await
        .expect("refs")
        .is_empty());

    // Deleting a tag leaves the manifest; deleting the manifest takes its tags.
    assert!(s.tag_delete(repo, "v1").await.expect("tag delete"));
    assert!(!s.tag_delete(repo, "v1").await.expect("tag delete again"));
    assert!(s.manifest_meta(repo, &d).await.expect("meta").is_some());
    assert!(s.manifest_delete(repo, &d).await.expect("delete"));
    assert!(!s.manifest_delete(repo, &d).await.expect("delete again"));
    assert_eq!(s.tag_resolve(repo, "latest").await.expect("tag"), None);
    assert!(s.manifest_delete(repo, &rd).await.expect("delete referrer"));
    assert!(s.referrers(repo, &subject).await.expect("refs").is_empty());
    assert_eq!(s.tags(repo).await.expect("tags"), Some(vec![]));
}

async fn catalog_is_sorted_and_nested(s: &dyn Storage) {
    push_blob(s, "zz/top", b"z").await;
    push_blob(s, "zz/top/nested", b"n").await;
    let repos = s.repositories().await.expect("repositories");
    let mut sorted = repos.clone();
    sorted.sort();
    assert_eq!(repos, sorted);
    for expected in ["mono", "chunks", "share/a", "zz/top", "zz/top/nested"] {
        assert!(
            repos.iter().any(|r| r == expected),
            "{expected} missing from {repos:?}"
        );
    }
    assert!(
        !repos.iter().any(|r| r == "wrong"),
        "failed upload created a repository"
    );
    // The unchecked list may hold more (names removed since), never fewer, in order.
    let unchecked = s.repository_names_unchecked().await.expect("names");
    assert!(unchecked.windows(2).all(|w| w[0] < w[1]), "{unchecked:?}");
    for repo in &repos {
        assert!(
            unchecked.contains(repo),
            "{repo} missing from {unchecked:?}"
        );
    }
}

/// Catalog and tag pages read from a backend's indexes are exactly the pages
/// of the whole sorted lists, for every `last` (names, strings between
/// names, strings that are no name at all) and every `n`; deleted tags and
/// tags stored under hashed names (S3) included.
async fn pages_match_the_whole_lists(s: &dyn Storage) {
    use crate::NamePage;
    let repo = "pages/t";
    let body = Bytes::from_static(b"{\"pages\":1}");
    let d = Digest::sha256_of(&body);
    let long = format!("l{}", "o".repeat(60));
    let tags = ["1", "9z", "A1", "_under", "a", "a.b", "a-b", &long, "z"];
    for tag in tags {
        s.manifest_put(
            repo,
            &d,
            body.clone(),
            &meta("application/x", None),
            Some(tag),
        )
        .await
        .expect("tag");
    }
    assert!(s.tag_delete(repo, "a").await.expect("delete"));
    let all_tags = s.tags(repo).await.expect("tags").expect("repository");
    assert_eq!(all_tags.len(), tags.len() - 1);
    assert!(!all_tags.iter().any(|t| t == "a"), "deleted tag listed");
    let all_repos = s.repositories().await.expect("repositories");
    let mut lasts: Vec<Option<String>> = vec![None];
    for probe in [
        "", "0", "=", "Z", "a", "l", "zzz", "~", "pages", "pages/", "..", "a b",
    ] {
        lasts.push(Some(probe.to_string()));
    }
    lasts.extend(all_tags.iter().chain(&all_repos).cloned().map(Some));
    for last in &lasts {
        for n in [None, Some(0), Some(1), Some(2), Some(100)] {
            let after = last.as_deref();
            let page = s.tags_after(repo, after, n).await.expect("tags page");
            assert_eq!(
                page,
                Some(NamePage::of(&all_tags, after, n)),
                "tags after {last:?}, n={n:?}"
            );
            let page = s.repositories_after(after, n).await.expect("catalog page");
            assert_eq!(
                page,
                NamePage::of(&all_repos, after, n),
                "catalog after {last:?}, n={n:?}"
            );
        }
    }
    assert_eq!(
        s.tags_after("pages/none", None, Some(5))
            .await
            .expect("page"),
        None
    );
    assert_eq!(
        s.tags_after("pages/none", Some("a"), Some(5))
            .await
            .expect("page"),
        None
    );
    push_blob(s, "pages/untagged", b"untagged").await;
    assert_eq!(
        s.tags_after("pages/untagged", Some("a"), Some(5))
            .await
            .expect("page"),
        Some(NamePage::default())
    );
}

/// Runs last: it sweeps everything the earlier tests left unreferenced.
async fn garbage_collection(s: &dyn Storage) {
    let repo = "gc/app";
    let needed = push_blob(s, repo, b"layer the manifest needs").await;
    let orphan = push_blob(s, repo, b"layer nobody references").await;
    let shared = push_blob(s, repo, b"layer another repository also links").await;
    s.link_blob("gc/other", &shared).await.expect("mount");
    let other_body = Bytes::from_static(b"{\"gc\":\"other\"}");
    let mut other = meta("application/vnd.oci.image.manifest.v1+json", None);
    other.references = Some(vec![shared.clone()]);
    s.manifest_put(
        "gc/other",
        &Digest::sha256_of(&other_body),
        other_body,
        &other,
        None,
    )
    .await
    .expect("put manifest in gc/other");
    let body = Bytes::from_static(b"{\"gc\":1}");
    let manifest = Digest::sha256_of(&body);
    let mut m = meta("application/vnd.oci.image.manifest.v1+json", None);
    m.references = Some(vec![needed.clone()]);
    s.manifest_put(repo, &manifest, body.clone(), &m, Some("v1"))
        .await
        .expect("put manifest");

    // Within the grace period nothing goes, however unreferenced.
    let hour = std::time::Duration::from_secs(3600);
    let report = s.collect_garbage(hour, false).await.expect("gc");
    assert_eq!(
        report,
        crate::GcReport::default(),
        "grace period not honoured"
    );
    // Let everything age past a one-second grace period (file times may be coarse).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let grace = std::time::Duration::from_secs(1);

    let dry = s.collect_garbage(grace, true).await.expect("dry run");
    assert!(dry.links_removed >= 2 && dry.blobs_removed >= 1, "{dry:?}");
    assert!(
        s.blob_linked(repo, &orphan).await.expect("linked"),
        "dry run removed a link"
    );

    let report = s.collect_garbage(grace, false).await.expect("gc");
    assert_eq!(report, dry, "dry run and real run disagree");
    assert!(s.blob_linked(repo, &needed).await.expect("linked"));
    assert!(!s.blob_linked(repo, &orphan).await.expect("linked"));
    assert_eq!(
        s.blob_size(&orphan).await.expect("size"),
        None,
        "orphan blob kept"
    );
    // Unreferenced in gc/app, but needed in gc/other: the bytes stay.
    assert!(!s.blob_linked(repo, &shared).await.expect("linked"));
    assert!(s.blob_linked("gc/other", &shared).await.expect("linked"));
    let (_, bytes) = s
        .manifest_get(repo, &manifest)
        .await
        .expect("get")
        .expect("manifest kept");
    assert_eq!(bytes, body);

    // A manifest recorded without references keeps every link of its repository.
    let unknown = "gc/unknown";
    let kept = push_blob(s, unknown, b"layer of a manifest with unknown references").await;
    let legacy = Bytes::from_static(b"{\"legacy\":1}");
    let mut m = meta("application/vnd.oci.image.manifest.v1+json", None);
    m.references = None;
    s.manifest_put(unknown, &Digest::sha256_of(&legacy), legacy, &m, None)
        .await
        .expect("put legacy manifest");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    s.collect_garbage(grace, false).await.expect("gc");
    assert!(s.blob_linked(unknown, &kept).await.expect("linked"));
}

/// What retention reads: tags and manifests with their push times, and pull
/// times merged the later-wins way, not shown as a repository or a tag.
async fn push_and_pull_times(s: &dyn Storage) {
    use std::time::{Duration, SystemTime};
    let repo = "times/app";
    let before = SystemTime::now() - Duration::from_secs(5);
    let long_tag = "t".repeat(100);
    let mut digests = Vec::new();
    for (i, tag) in ["a", "b", long_tag.as_str()].into_iter().enumerate() {
        digests.push(put_tagged(s, repo, format!("{{\"times\":{i}}}"), tag).await);
    }
    let tags = s.tag_records(repo).await.expect("tag_records");
    let names: Vec<&str> = tags.iter().map(|t| t.tag.as_str()).collect();
    assert_eq!(names, ["a", "b", long_tag.as_str()]);
    assert_eq!(tags[0].digest, digests[0]);
    assert_eq!(
        tags[2].digest, digests[2],
        "a long tag is found by its name"
    );
    assert!(tags.iter().all(|t| t.pushed >= before), "{tags:?}");
    s.tag_delete(repo, "b").await.expect("tag_delete");
    let tags = s.tag_records(repo).await.expect("tag_records");
    assert!(tags.iter().all(|t| t.tag != "b"), "a deleted tag is gone");
    let manifests = s.manifest_records(repo).await.expect("manifest_records");
    let mut expected = digests.clone();
    expected.sort();
    let found: Vec<Digest> = manifests.iter().map(|m| m.digest.clone()).collect();
    assert_eq!(found, expected, "untagged manifests are listed too");
    assert!(manifests.iter().all(|m| m.pushed >= before));

    assert!(s.pulls(repo).await.expect("pulls").is_empty());
    let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    let first = crate::PullTimes::from([
        (digests[0].clone(), at(2_000)),
        (digests[1].clone(), at(1_000)),
    ]);
    s.record_pulls(repo, &first).await.expect("record_pulls");
    let later = crate::PullTimes::from([
        (digests[0].clone(), at(1_500)),
        (digests[1].clone(), at(3_000)),
    ]);
    s.record_pulls(repo, &later).await.expect("record_pulls");
    let pulls = s.pulls(repo).await.expect("pulls");
    assert_eq!(pulls[&digests[0]], at(2_000), "an older time does not win");
    assert_eq!(pulls[&digests[1]], at(3_000));
    s.forget_pulls(repo, std::slice::from_ref(&digests[0]))
        .await
        .expect("forget_pulls");
    let pulls = s.pulls(repo).await.expect("pulls");
    assert!(!pulls.contains_key(&digests[0]), "forgotten");
    assert_eq!(pulls[&digests[1]], at(3_000), "the others stay");
    let repos = s.repositories().await.expect("repositories");
    assert!(repos.iter().all(|r| !r.contains("_pulls")), "{repos:?}");
    assert!(s.tags(repo).await.expect("tags").unwrap_or_default().len() == 2);
}
