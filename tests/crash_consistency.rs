//! kill -9 at random moments during concurrent pushes never leaves anything
//! visible but wrong, and never loses what was acknowledged: every stored blob
//! hashes to its name, every tag and manifest resolves to bytes that match
//! their digest, and every blob and manifest answered with 201 is still served
//! after the last kill.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, digest_of, manifest_json, sha256_hex, Server, OCI_MANIFEST};

/// One manifest PUT a pusher sent: `acked` when the server answered 201.
struct ManifestPush {
    repo: String,
    tag: String,
    digest: String,
    blobs: [String; 2],
    acked: bool,
}

/// Manifest pushes acknowledged so far, across pushers (the test waits for enough).
static MANIFESTS_ACKED: AtomicUsize = AtomicUsize::new(0);
/// Small uploads acknowledged so far, across uploaders.
static SMALL_ACKED: AtomicUsize = AtomicUsize::new(0);

/// Keep the load running until `counter` passes `enough` (at most a minute): on a loaded
/// machine the fixed kill schedule alone can leave too few acknowledgements to mean anything.
async fn wait_for_acks(counter: &AtomicUsize, enough: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::SeqCst) <= enough && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one pusher sent and what the server acknowledged.
#[derive(Default)]
struct Pushed {
    /// Every manifest PUT in the order sent (acknowledged or not).
    manifests: Vec<ManifestPush>,
    /// (repository, digest) of every blob upload answered with 201.
    blobs: Vec<(String, String)>,
}

/// Pushes images (two blobs, a manifest, a tag) until told to stop, ignoring
/// the failures a killed server causes, and records every push and its answer.
async fn pusher(base: String, worker: usize, stop: Arc<AtomicBool>) -> Pushed {
    let c = client();
    let mut pushed = Pushed::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let repo = format!("crash/w{worker}");
        // Sizes vary so some uploads are large enough to be cut mid-body.
        let layer = vec![(n % 251) as u8; 1024 * (1 + (n as usize * 37) % 2048)];
        let config = format!("{{\"worker\":{worker},\"n\":{n}}}").into_bytes();
        for blob in [&layer, &config] {
            let digest = digest_of(blob);
            let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}");
            let resp = c.post(url).body(blob.clone()).send().await;
            if matches!(resp, Ok(r) if r.status().as_u16() == 201) {
                pushed.blobs.push((repo.clone(), digest));
            }
        }
        let manifest = manifest_json(&config, &[&layer], None);
        let tag = format!("t{}", n % 3);
        let put = c
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await;
        let acked = matches!(put, Ok(r) if r.status().as_u16() == 201);
        if acked {
            MANIFESTS_ACKED.fetch_add(1, Ordering::SeqCst);
        }
        pushed.manifests.push(ManifestPush {
            repo,
            tag,
            digest: digest_of(&manifest),
            blobs: [digest_of(&config), digest_of(&layer)],
            acked,
        });
        if !acked {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pushed
}

/// Every file with content in the storage is whole and consistent. Returns the
/// digests of the blobs on disk.
fn check_storage_on_disk(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let blobs = root.join("blobs/sha256");
    for prefix in std::fs::read_dir(&blobs).expect("blobs dir") {
        for entry in std::fs::read_dir(prefix.expect("entry").path()).expect("prefix dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .expect("name")
                .to_string();
            let data = std::fs::read(&path).expect("read blob");
            assert_eq!(
                sha256_hex(&data),
                name,
                "torn or wrong blob at {}",
                path.display()
            );
            found.insert(format!("sha256:{name}"));
        }
    }
    found
}

/// GETs `repo`'s blob or manifest `digest`: it must be served, with bytes that hash to it.
async fn assert_served(c: &reqwest::Client, base: &str, repo: &str, kind: &str, digest: &str) {
    let resp = c
        .get(format!("{base}/v2/{repo}/{kind}/{digest}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {repo} {kind} {digest}: {e}"));
    assert_eq!(
        resp.status().as_u16(),
        200,
        "{repo}: {kind} {digest} was acknowledged with 201 but is not served after the kills"
    );
    let body = resp.bytes().await.expect("body");
    assert_eq!(
        digest_of(&body),
        digest,
        "{repo}: {kind} {digest} serves other bytes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_pushes_leaves_nothing_wrong() {
    let mut server = Server::start();
    let base = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(pusher(base.clone(), w, stop.clone())))
        .collect();
    // Kill at varied moments, restart on the same storage.
    for delay_ms in [150u64, 420, 90, 700, 260, 510] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.kill9();
        server.start_again();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    wait_for_acks(&MANIFESTS_ACKED, 10).await;
    stop.store(true, Ordering::Relaxed);
    let mut pushed = Pushed::default();
    for w in workers {
        let p = w.await.expect("pusher task");
        pushed.manifests.extend(p.manifests);
        pushed.blobs.extend(p.blobs);
    }
    // Once more after the last acknowledgement, so every 201 has lived through a kill.
    server.kill9();
    server.start_again();

    let acked: Vec<&ManifestPush> = pushed.manifests.iter().filter(|m| m.acked).collect();
    assert!(
        acked.len() > 10,
        "too few pushes acknowledged ({}) to mean anything",
        acked.len()
    );
    assert!(
        acked.len() < pushed.manifests.len(),
        "no push failed: the kills missed every request"
    );
    assert!(!pushed.blobs.is_empty(), "no blob upload acknowledged");

    // Everything acknowledged is still served, whole.
    let c = client();
    let mut blobs_acked: BTreeSet<(&str, &str)> = pushed
        .blobs
        .iter()
        .map(|(r, d)| (r.as_str(), d.as_str()))
        .collect();
    for m in &acked {
        assert_served(&c, &base, &m.repo, "manifests", &m.digest).await;
        // A manifest acknowledged with 201 names blobs its repository serves.
        blobs_acked.extend(m.blobs.iter().map(|d| (m.repo.as_str(), d.as_str())));
    }
    for &(repo, digest) in &blobs_acked {
        assert_served(&c, &base, repo, "blobs", digest).await;
    }
    // Each tag serves its last acknowledged push, or a later one whose answer the kill
    // cut off (it may have been stored); never an earlier one, never anything else.
    let mut may_serve: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
    for m in &pushed.manifests {
        let allowed = may_serve.entry((&m.repo, &m.tag)).or_default();
        if m.acked {
            allowed.clear();
        }
        allowed.push(&m.digest);
    }
    let mut acked_tags = 0;
    for ((repo, tag), allowed) in &may_serve {
        let ever_acked = acked.iter().any(|m| m.repo == *repo && m.tag == *tag);
        let resp = c
            .get(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("GET manifest by tag");
        if resp.status().as_u16() == 404 && !ever_acked {
            continue;
        }
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{repo}:{tag} was acknowledged but is not served"
        );
        let digest = common::header(&resp, "docker-content-digest").expect("digest");
        assert_eq!(
            digest_of(&resp.bytes().await.expect("body")),
            digest,
            "{repo}:{tag} serves wrong bytes"
        );
        if ever_acked {
            assert!(
                allowed.contains(&digest.as_str()),
                "{repo}:{tag} serves {digest}, not its last acknowledged push or a later one \
                 ({allowed:?})"
            );
            acked_tags += 1;
        }
    }
    assert!(acked_tags > 0, "no tag was ever acknowledged");

    // What the API lists is right.
    let (_, catalog) = common::get_json(&c, &format!("{base}/v2/_catalog")).await;
    let repos = catalog["repositories"]
        .as_array()
        .expect("repositories")
        .clone();
    assert!(!repos.is_empty());
    let mut tags_checked = 0;
    for repo in repos.iter().filter_map(|r| r.as_str()) {
        let (_, tags) = common::get_json(&c, &format!("{base}/v2/{repo}/tags/list")).await;
        for tag in tags["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t.as_str())
        {
            let resp = c
                .get(format!("{base}/v2/{repo}/manifests/{tag}"))
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .expect("GET manifest");
            assert_eq!(
                resp.status().as_u16(),
                200,
                "{repo}:{tag} listed but not served"
            );
            let digest = common::header(&resp, "docker-content-digest").expect("digest");
            assert!(
                pushed
                    .manifests
                    .iter()
                    .any(|m| m.repo == repo && m.tag == tag && m.digest == digest),
                "{repo}:{tag} serves {digest}, which was never pushed to it"
            );
            let body = resp.bytes().await.expect("body");
            assert_eq!(digest_of(&body), digest, "{repo}:{tag} serves wrong bytes");
            let manifest: serde_json::Value = serde_json::from_slice(&body).expect("manifest JSON");
            let layer = manifest["layers"][0]["digest"]
                .as_str()
                .expect("layer digest");
            assert_served(&c, &base, repo, "blobs", layer).await;
            tags_checked += 1;
        }
    }
    assert!(tags_checked > 0);
    // And what is on disk is whole, visible or not, and holds everything acknowledged.
    let on_disk = check_storage_on_disk(server.storage());
    assert!(!on_disk.is_empty(), "no blob on disk");
    for (_, digest) in &blobs_acked {
        assert!(
            on_disk.contains(*digest),
            "acknowledged {digest} not on disk"
        );
    }
    for m in &acked {
        assert!(
            on_disk.contains(&m.digest),
            "acknowledged manifest {} not on disk",
            m.digest
        );
    }
    eprintln!(
        "{} of {} manifest pushes acknowledged across 7 kills ({} blobs and {acked_tags} tags \
         acknowledged, all served); {tags_checked} listed tags and {} blobs on disk verified",
        acked.len(),
        pushed.manifests.len(),
        blobs_acked.len(),
        on_disk.len()
    );
}

/// Small-blob uploads (POST, then PUT with the body) from one uploader until
/// told to stop; counts itself in `in_flight` while a request is out, and
/// returns every (digest, bytes) answered with 201.
async fn small_uploader(
    base: String,
    worker: usize,
    stop: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
) -> Vec<(String, Vec<u8>)> {
    let c = client();
    let mut acked = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        // 4 KiB, distinct per worker and round, never all one byte.
        let blob: Vec<u8> = (0..4096u64)
            .map(|i| (i.wrapping_mul(31) ^ n.wrapping_mul(7) ^ worker as u64) as u8)
            .chain(format!("w{worker} n{n}").into_bytes())
            .collect();
        let digest = digest_of(&blob);
        in_flight.fetch_add(1, Ordering::SeqCst);
        let answered = async {
            let post = c
                .post(format!("{base}/v2/crash/small/blobs/uploads/"))
                .send()
                .await
                .ok()?;
            let location = common::header(&post, "location")?;
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = if location.starts_with('/') {
                format!("{base}{location}{sep}digest={digest}")
            } else {
                format!("{location}{sep}digest={digest}")
            };
            let put = c.put(url).body(blob.clone()).send().await.ok()?;
            Some(put.status().as_u16() == 201)
        }
        .await;
        in_flight.fetch_sub(1, Ordering::SeqCst);
        match answered {
            Some(true) => {
                SMALL_ACKED.fetch_add(1, Ordering::SeqCst);
                acked.push((digest, blob))
            }
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    acked
}

/// Uploads end with a group commit shared by every upload that is ready at
/// the same moment: kill -9 while dozens of them are in flight, and every
/// blob answered with 201 before a kill is still served, whole, afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_many_small_uploads_keeps_every_acknowledged_blob() {
    const UPLOADERS: usize = 32;
    let mut server = Server::start();
    let base = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..UPLOADERS)
        .map(|w| {
            tokio::spawn(small_uploader(
                base.clone(),
                w,
                stop.clone(),
                in_flight.clone(),
            ))
        })
        .collect();
    let mut busiest_kill = 0;
    for delay_ms in [400u64, 250, 600, 330, 480] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        busiest_kill = busiest_kill.max(in_flight.load(Ordering::SeqCst));
        server.kill9();
        server.start_again();
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    wait_for_acks(&SMALL_ACKED, 10).await;
    busiest_kill = busiest_kill.max(in_flight.load(Ordering::SeqCst));
    // The last kill lands while the uploaders still run: no quiet moment before it.
    server.kill9();
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in workers {
        acked.extend(w.await.expect("uploader task"));
    }
    server.start_again();

    assert!(
        busiest_kill >= UPLOADERS / 2,
        "at most {busiest_kill} uploads were in flight at a kill: the test did not load the server"
    );
    assert!(
        acked.len() > 10,
        "only {} uploads acknowledged",
        acked.len()
    );
    let on_disk = check_storage_on_disk(server.storage());
    let c = client();
    for (digest, blob) in &acked {
        assert!(
            on_disk.contains(digest),
            "acknowledged {digest} not on disk"
        );
        let resp = c
            .get(format!("{base}/v2/crash/small/blobs/{digest}"))
            .send()
            .await
            .expect("GET blob");
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{digest} was acknowledged with 201 but is not served after the kills"
        );
        let body = resp.bytes().await.expect("body");
        assert!(body == blob[..], "{digest} serves other bytes");
    }
    eprintln!(
        "{} small uploads acknowledged across 6 kills (up to {busiest_kill} in flight at a kill), all on disk and served whole",
        acked.len()
    );
}
