//! kill -9 at random moments during concurrent pushes never leaves anything
//! visible but wrong: every stored blob hashes to its name, every tag and
//! manifest resolves to bytes that match their digest.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{client, digest_of, manifest_json, sha256_hex, Server, OCI_MANIFEST};

/// Pushes images (two blobs, a manifest, a tag) until told to stop, ignoring
/// the failures a killed server causes. Counts the pushes that completed.
async fn pusher(base: String, worker: usize, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let c = client();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let repo = format!("crash/w{worker}");
        // Sizes vary so some uploads are large enough to be cut mid-body.
        let layer = vec![(n % 251) as u8; 1024 * (1 + (n as usize * 37) % 2048)];
        let config = format!("{{\"worker\":{worker},\"n\":{n}}}").into_bytes();
        let mut ok = true;
        for blob in [&layer, &config] {
            let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={}", digest_of(blob));
            ok &= matches!(c.post(url).body(blob.clone()).send().await, Ok(r) if r.status().as_u16() == 201);
        }
        let manifest = manifest_json(&config, &[&layer], None);
        let url = format!("{base}/v2/{repo}/manifests/t{}", n % 3);
        let put = c
            .put(url)
            .header("content-type", OCI_MANIFEST)
            .body(manifest)
            .send()
            .await;
        ok &= matches!(put, Ok(r) if r.status().as_u16() == 201);
        if ok {
            done.fetch_add(1, Ordering::Relaxed);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every file with content in the storage is whole and consistent.
fn check_storage_on_disk(root: &Path) -> usize {
    let mut checked = 0;
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
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_concurrent_pushes_leaves_nothing_wrong() {
    let mut server = Server::start();
    let base = server.url();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(pusher(base.clone(), w, stop.clone(), done.clone())))
        .collect();
    // Kill at varied moments, restart on the same storage.
    for delay_ms in [150u64, 420, 90, 700, 260, 510] {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        server.kill9();
        server.start_again();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("pusher task");
    }
    let completed = done.load(Ordering::Relaxed);
    assert!(
        completed > 10,
        "too few pushes completed ({completed}) to mean anything"
    );

    // What the API shows is right.
    let c = client();
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
            let body = resp.bytes().await.expect("body");
            assert_eq!(digest_of(&body), digest, "{repo}:{tag} serves wrong bytes");
            let manifest: serde_json::Value = serde_json::from_slice(&body).expect("manifest JSON");
            let layer = manifest["layers"][0]["digest"]
                .as_str()
                .expect("layer digest");
            let blob = c
                .get(format!("{base}/v2/{repo}/blobs/{layer}"))
                .send()
                .await
                .expect("GET layer");
            assert_eq!(
                blob.status().as_u16(),
                200,
                "{repo}:{tag} references a missing layer"
            );
            assert_eq!(digest_of(&blob.bytes().await.expect("layer")), layer);
            tags_checked += 1;
        }
    }
    assert!(tags_checked > 0);
    // And what is on disk is whole, visible or not.
    let blobs = check_storage_on_disk(server.storage());
    eprintln!("{completed} pushes completed across 6 kills; {tags_checked} tags and {blobs} blobs verified");
}
