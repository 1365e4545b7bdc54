//! Many clients at once, and a graceful shutdown with a request in flight.

mod common;

use std::time::Duration;

use common::{client, digest_of, header, push_blob, push_manifest, Server, OCI_MANIFEST};

const CLIENTS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_pushing_one_blob_and_one_tag_end_consistent() {
    let server = Server::start();
    let base = server.url();
    let c = client();
    let repo = "race/app";
    let shared = b"the same layer, pushed by everyone".to_vec();

    // Every client pushes the same blob plus a config of its own, then races to tag its
    // own manifest as `latest`.
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let (c, base, shared) = (c.clone(), base.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            let layer = push_blob(&c, &base, repo, &shared).await;
            let config = format!("{{\"client\":{i}}}").into_bytes();
            push_blob(&c, &base, repo, &config).await;
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": digest_of(&config), "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer, "size": shared.len()}],
            }))
            .expect("manifest JSON");
            push_manifest(&c, &base, repo, "latest", OCI_MANIFEST, &manifest).await
        }));
    }
    let mut pushed = Vec::new();
    for t in tasks {
        pushed.push(t.await.expect("client task"));
    }

    // The tag points at exactly one of the pushed manifests, and its bytes match its digest.
    common::assert_latest_is_one_of(&c, &base, repo, &pushed).await;
    // Every manifest is still there by digest, and the shared blob is stored once.
    for d in &pushed {
        let r = c
            .head(format!("{base}/v2/{repo}/manifests/{d}"))
            .send()
            .await
            .expect("HEAD manifest");
        assert_eq!(r.status().as_u16(), 200, "manifest {d} lost");
    }
    let (_, tags) = common::get_json(&c, &format!("{base}/v2/{repo}/tags/list")).await;
    assert_eq!(tags["tags"], serde_json::json!(["latest"]));
    let shared_hex = digest_of(&shared).trim_start_matches("sha256:").to_string();
    let blob = server
        .storage()
        .join("blobs/sha256")
        .join(&shared_hex[..2])
        .join(&shared_hex);
    assert_eq!(std::fs::read(&blob).expect("shared blob on disk"), shared);
    let leftovers = std::fs::read_dir(server.storage().join("uploads"))
        .expect("uploads folder")
        .count();
    assert_eq!(leftovers, 0, "finished uploads left sessions behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_upload_in_flight_finish() {
    let mut server = Server::start();
    let base = server.url();
    let c = client();
    let resp = c
        .post(format!("{base}/v2/graceful/blobs/uploads/"))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(resp.status().as_u16(), 202);
    let url = common::absolute(&base, &header(&resp, "location").expect("Location"));

    // A body that arrives slowly: half now, half after SIGTERM has been sent.
    let chunk = vec![7u8; 1 << 20];
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let patch = tokio::spawn({
        let (c, url) = (c.clone(), url.clone());
        async move { c.patch(url).body(body).send().await }
    });
    for _ in 0..4 {
        tx.send(Ok(chunk.clone())).await.expect("send chunk");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.pid().expect("server pid");
    // SAFETY: kill(2) on our own child's PID, not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..4 {
        tx.send(Ok(chunk.clone()))
            .await
            .expect("send chunk after SIGTERM");
    }
    drop(tx);
    let resp = patch.await.expect("patch task").expect("PATCH answered");
    assert_eq!(
        resp.status().as_u16(),
        202,
        "in-flight PATCH was cut off by SIGTERM"
    );
    assert_eq!(header(&resp, "range").as_deref(), Some("0-8388607"));

    // The server exits by itself; after a restart the upload is whole and can finish.
    server.stop();
    server.start_again();
    let data = vec![7u8; 8 << 20];
    let resp = c
        .put(common::with_query(&url, "digest", &digest_of(&data)))
        .send()
        .await
        .expect("PUT");
    assert_eq!(resp.status().as_u16(), 201);
}
