//! Many clients at once, and a graceful shutdown with a request in flight.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    client, digest_of, header, push_blob, push_manifest, Server, ServerKind, OCI_MANIFEST,
};

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
    // The signal must find the request in the server's hands (one still in the client would
    // just be refused: a stopping server takes no new requests): wait until part of the body
    // is in the session's data file.
    let id = url
        .split('?')
        .next()
        .and_then(|path| path.rsplit('/').next())
        .expect("upload id in the Location")
        .to_string();
    let storage = server.storage().to_path_buf();
    wait_for("the first half of the body is on disk", || {
        upload_data_len(&storage, &id) > 0
    })
    .await;
    let shutdowns = server.log().matches("shutting down").count();
    let pid = server.pid().expect("server pid");
    // SAFETY: kill(2) on our own child's PID, not yet reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
    // The second half goes only once the server has taken the signal (it logs it), so it
    // really arrives during the shutdown. (distribution, the reference server, logs nothing.)
    if server.kind == ServerKind::Berth {
        wait_for("the server logs that it is shutting down", || {
            server.log().matches("shutting down").count() > shutdowns
        })
        .await;
    }
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

/// Waits until `done` (polled every 10 ms), or fails the test after a minute.
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Bytes in the data file of upload `id` (`uploads/ID/data` in berth's storage,
/// `.../_uploads/ID/data` in distribution's), 0 while there is none.
fn upload_data_len(dir: &Path, id: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut len = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_dir() {
            len = len.max(upload_data_len(&path, id));
        } else if path.ends_with(Path::new(id).join("data")) {
            len = len.max(meta.len());
        }
    }
    len
}
