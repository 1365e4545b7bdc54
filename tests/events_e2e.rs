//! `[[notifications]]` webhooks on a real `berth serve`, with a receiver in the test (axum on
//! 127.0.0.1): `docker push` sends a pushed CloudEvent with the digest docker printed; with
//! the receiver stopped, events queued survive a restart of berth and all arrive once it is
//! back, none twice;
//! on S3 (s3s-fs) another replica delivers what a stopped one queued, and each request writes
//! its events once; bad `[[notifications]]` tables fail at start naming the key.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use common::*;

/// What the receiver got: one entry per POST.
#[derive(Clone, Debug)]
struct Received {
    content_type: String,
    authorization: String,
    event: serde_json::Value,
}

type Inbox = Arc<Mutex<Vec<Received>>>;

/// A webhook receiver on 127.0.0.1 that records every POST to `/hook` and answers 204.
struct Receiver {
    port: u16,
    inbox: Inbox,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `port` (0: any free one), appending to `inbox`.
    async fn start(port: u16, inbox: Inbox) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let sink = inbox.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let text = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_string()
                    };
                    let event = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
                    sink.lock().expect("inbox").push(Received {
                        content_type: text("content-type"),
                        authorization: text("authorization"),
                        event,
                    });
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Receiver {
            port,
            inbox,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        let inbox = self.inbox.lock().expect("inbox");
        inbox.iter().map(|r| r.event.clone()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A port nothing listens on (bound, then released), for a receiver started later.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

fn notifications(url: &str, actions: &str) -> String {
    format!(
        "[[notifications]]\nname = \"test\"\nurl = \"{url}\"\nactions = {actions}\n\
         headers = {{ Authorization = \"Bearer hook-secret\" }}\ntimeout = \"3s\"\n"
    )
}

/// Waits (up to a minute) until `done` holds, else fails with `what` and the server log.
async fn wait_until(what: &str, server: &Server, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- server log ---\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn outbox_records(storage: &Path) -> usize {
    fs::read_dir(storage.join("outbox/events")).map_or(0, |d| d.count())
}

/// Each event id once, and how many times the receiver saw it.
fn deliveries(events: &[serde_json::Value]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for e in events {
        *seen
            .entry(e["id"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    seen
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A one-layer image made by `docker import` of a folder with one file.
fn import_image(work: &Path, name: &str) {
    let root = work.join(unique("root"));
    fs::create_dir_all(&root).expect("mkdir image root");
    fs::write(root.join("hello.txt"), format!("events test {name}\n")).expect("write file");
    let tar = root.with_extension("tar");
    run_ok(
        cmd("tar", ["-C"]).arg(&root).arg("-cf").arg(&tar).arg("."),
        Duration::from_secs(60),
    );
    run_ok(
        cmd("docker", ["import"]).arg(&tar).arg(name),
        Duration::from_secs(120),
    );
}

/// Removes the test's local images, also when it panics.
struct RemoveImages(Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = run(cmd("docker", ["rmi", "-f", image]), Duration::from_secs(60));
        }
    }
}

/// Extracts `sha256:...` from the `TAG: digest: sha256:... size: N` line of `docker push`.
fn pushed_digest(push_output: &str) -> String {
    push_output
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .filter(|d| d.starts_with("sha256:") && d.len() == 71)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{push_output}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_push_sends_a_pushed_cloudevent() {
    if !require_tool("docker") {
        return;
    }
    let receiver = Receiver::start(0, Inbox::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = notifications(&receiver.url(), "[\"push\", \"pull\"]");
    let server = Server::start_berth_with_config(dir.path(), &config, false);
    let image = format!("{}/hooks/app:v1", server.host());
    let _cleanup = RemoveImages(vec![image.clone()]);

    import_image(dir.path(), &image);
    let push = run_ok(cmd("docker", ["push", &image]), Duration::from_secs(300));
    let digest = pushed_digest(&push);

    let pushed = |r: &Receiver| {
        r.events()
            .into_iter()
            .filter(|e| e["type"] == "dev.berth.image.pushed")
            .collect::<Vec<_>>()
    };
    wait_until("the pushed event", &server, || {
        !pushed(&receiver).is_empty()
    })
    .await;
    let events = pushed(&receiver);
    assert_eq!(
        events.len(),
        1,
        "one push of one tag, one event: {events:#?}"
    );
    let e = &events[0];
    assert_eq!(e["specversion"], "1.0", "{e}");
    assert_eq!(e["source"], "/v2/hooks/app", "{e}");
    assert_eq!(e["subject"], "v1", "{e}");
    assert_eq!(e["data"]["repository"], "hooks/app", "{e}");
    assert_eq!(e["data"]["tag"], "v1", "{e}");
    assert_eq!(
        e["data"]["digest"],
        digest.as_str(),
        "the digest docker printed: {e}"
    );
    assert_eq!(e["data"]["mediaType"], DOCKER_MANIFEST, "{e}");
    assert!(e["data"]["size"].as_u64().is_some_and(|s| s > 100), "{e}");
    assert_eq!(e["data"]["clientAddress"], "127.0.0.1", "{e}");
    assert!(e["data"]["actor"].is_null(), "no logins, no actor: {e}");
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{e}");
    {
        let inbox = receiver.inbox.lock().expect("inbox");
        let r = inbox
            .iter()
            .find(|r| r.event["type"] == "dev.berth.image.pushed");
        let r = r.expect("the pushed delivery");
        assert_eq!(r.content_type, "application/cloudevents+json");
        assert_eq!(
            r.authorization, "Bearer hook-secret",
            "configured headers are sent"
        );
    }
    // The event is a log line too.
    let log = server.log();
    assert!(
        log.lines().any(|l| l.contains("berth::events")
            && l.contains("dev.berth.image.pushed")
            && l.contains(&digest)),
        "a berth::events log line with the digest:\n{log}"
    );
    // A pull (a different action the endpoint asked for) gets its own event.
    run_ok(cmd("docker", ["rmi", &image]), Duration::from_secs(60));
    run_ok(cmd("docker", ["pull", &image]), Duration::from_secs(300));
    wait_until("the pulled event", &server, || {
        receiver.events().iter().any(|e| {
            e["type"] == "dev.berth.image.pulled" && e["data"]["digest"] == digest.as_str()
        })
    })
    .await;
    wait_until("an empty outbox", &server, || {
        outbox_records(server.storage()) == 0
    })
    .await;
}

/// Pushes two tags, deletes one, mounts a blob: five requests, five events.
async fn make_events(c: &reqwest::Client, base: &str) -> Vec<String> {
    let (manifest, layer, _) = push_tiny_image(c, base, "team/app", "v1").await;
    let (config, layer_bytes, bytes) = tiny_image("team/app:v1");
    drop((config, layer_bytes));
    push_manifest(c, base, "team/app", "v2", OCI_MANIFEST, &bytes).await;
    let resp = c
        .delete(format!("{base}/v2/team/app/manifests/v2"))
        .send()
        .await
        .expect("DELETE tag");
    assert_eq!(resp.status().as_u16(), 202, "delete v2");
    let resp = c
        .post(format!(
            "{base}/v2/team/copy/blobs/uploads/?mount={layer}&from=team/app"
        ))
        .send()
        .await
        .expect("mount");
    assert_eq!(resp.status().as_u16(), 201, "mount");
    // A pull the endpoint did not ask for: no event.
    let resp = c
        .get(format!("{base}/v2/team/app/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
    vec![manifest, layer]
}

fn assert_the_four_events(events: &[serde_json::Value], manifest: &str, layer: &str) {
    let seen = deliveries(events);
    assert_eq!(seen.len(), 4, "four events: {events:#?}");
    assert!(seen.values().all(|&n| n == 1), "none twice: {seen:?}");
    let summary: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
            (
                s(&e["type"]),
                s(&e["data"]["repository"]),
                s(&e["data"]["tag"]),
            )
        })
        .collect();
    for expected in [
        ("dev.berth.image.pushed", "team/app", "v1"),
        ("dev.berth.image.pushed", "team/app", "v2"),
        ("dev.berth.image.deleted", "team/app", "v2"),
        ("dev.berth.image.mounted", "team/copy", "-"),
    ] {
        let expected = (
            expected.0.to_string(),
            expected.1.to_string(),
            expected.2.to_string(),
        );
        assert!(summary.contains(&expected), "{expected:?} in {summary:?}");
    }
    for e in events {
        let want = if e["type"] == "dev.berth.image.mounted" {
            layer
        } else {
            manifest
        };
        assert_eq!(e["data"]["digest"], want, "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_receiver_outage_and_a_restart() {
    let mut first = Receiver::start(0, Inbox::default()).await;
    let port = first.port;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = notifications(&first.url(), "[\"push\", \"delete\", \"mount\"]");
    let mut server = Server::start_berth_with_config(dir.path(), &config, false);
    let c = client();
    let base = server.url();
    push_tiny_image(&c, &base, "team/first", "v0").await;
    wait_until("the first event", &server, || first.events().len() == 1).await;
    wait_until("an empty outbox", &server, || {
        outbox_records(server.storage()) == 0
    })
    .await;
    first.stop().await;

    let digests = make_events(&c, &base).await;
    // Written before each answer, and kept while the receiver is down.
    assert_eq!(outbox_records(server.storage()), 4, "one record per event");
    wait_until("a failed delivery attempt", &server, || {
        server.log().contains("event delivery failed")
    })
    .await;
    // The sender's next pass sees all four (it may not have run since the last request).
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let text = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        if metric(&text, "berth_events_in_outbox") == 4.0 || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        metric(&metrics, "berth_events_queued_total"),
        5.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "berth_events_failed_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "berth_events_sent_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "berth_events_in_outbox"), 4.0, "{metrics}");

    server.restart();
    assert_eq!(
        outbox_records(server.storage()),
        4,
        "the outbox survived the restart"
    );
    let receiver = Receiver::start(port, Inbox::default()).await;
    wait_until("every event", &server, || {
        deliveries(&receiver.events()).len() >= 4
    })
    .await;
    wait_until("an empty outbox", &server, || {
        outbox_records(server.storage()) == 0
    })
    .await;
    // Another pass of the sender finds nothing more to send, and the first event, delivered
    // before the outage, is not sent again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_the_four_events(&receiver.events(), &digests[0], &digests[1]);
    assert!(
        !server.storage().join("outbox/claims").exists()
            || fs::read_dir(server.storage().join("outbox/claims")).map_or(0, |d| d.count()) == 0,
        "no claims left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_another_replica_delivers_what_a_stopped_one_queued() {
    let Some(s3) = s3_server("events") else {
        return;
    };
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("berth.toml");
    let toml = notifications(
        &format!("http://127.0.0.1:{port}/hook"),
        "[\"push\", \"delete\", \"mount\"]",
    );
    fs::write(&config_path, toml).expect("write config");
    let args = ["--config", config_path.to_str().expect("utf-8 path")];
    let mut a = Server::start_s3(&s3, "reg", &args);
    let b = Server::start_s3(&s3, "reg", &args);
    let c = client();

    let digests = make_events(&c, &a.url()).await;
    let records = || s3_objects(&s3, "reg/outbox/events").len();
    assert_eq!(
        records(),
        4,
        "each request wrote its event once, in the bucket"
    );
    a.stop();
    let receiver = Receiver::start(port, Inbox::default()).await;
    wait_until("every event, from replica b", &b, || {
        deliveries(&receiver.events()).len() >= 4
    })
    .await;
    wait_until("an empty outbox", &b, || records() == 0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_the_four_events(&receiver.events(), &digests[0], &digests[1]);
    assert!(
        s3_objects(&s3, "reg/outbox/claims").is_empty(),
        "no claims left"
    );
}

/// The outbox objects s3s-fs holds under `folder` of the bucket (it keeps each object as a
/// file named like the key; its own sidecar files are not outbox ids).
fn s3_objects(s3: &berth_storage::s3_test_server::S3TestServer, folder: &str) -> Vec<String> {
    let dir = s3.root().join("events").join(folder);
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| berth_storage::outbox::is_outbox_id(name))
        .collect()
}

#[test]
fn bad_notifications_fail_at_start_naming_the_key() {
    for (table, key) in [
        ("url = \"ftp://127.0.0.1/hook\"", "notifications[0].url"),
        ("url = \"127.0.0.1:9000/hook\"", "notifications[0].url"),
        (
            "url = \"http://127.0.0.1/hook\"\nactions = [\"push\", \"tag\"]",
            "notifications[0].actions",
        ),
        (
            "url = \"http://127.0.0.1/hook\"\nrepositories = [\"Team/**\"]",
            "notifications[0].repositories",
        ),
        (
            "url = \"http://127.0.0.1/hook\"\ntimeout = \"a while\"",
            "notifications[0].timeout",
        ),
        (
            "url = \"http://127.0.0.1/hook\"\nretries = 3",
            "unknown field `retries`",
        ),
    ] {
        let e = serve_refuses(&format!("[[notifications]]\n{table}\n"));
        assert!(e.contains(key), "{table}: {e}");
    }
}
