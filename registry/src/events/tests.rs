use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use berth_storage::{MemoryStorage, Storage};

use super::*;

pub(super) fn pushed(tags: &[&str]) -> Happened {
    Happened {
        action: Action::Push,
        repository: "prod/app".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        digest: Digest::sha256_of(b"manifest"),
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        size: Some(8),
    }
}

pub(super) fn notifications(toml_text: &str) -> Notifications {
    #[derive(Deserialize)]
    struct File {
        notifications: Vec<NotificationConfig>,
    }
    let file: File = toml::from_str(toml_text).expect("toml");
    Notifications::from_config(&file.notifications).expect("valid")
}

#[test]
fn an_event_is_cloudevents_json_with_the_image_facts() {
    let now = UNIX_EPOCH + Duration::from_millis(1_765_000_000_123);
    let client = "127.0.0.7:40000".parse().ok();
    let events = pushed(&["v1"]).events(Some("alice"), client, now);
    assert_eq!(events.len(), 1);
    let json = serde_json::to_value(&events[0]).expect("json");
    let id = json["id"].as_str().expect("id").to_string();
    assert!(
        id.starts_with("1765000000123-") && berth_storage::outbox::is_outbox_id(&id),
        "{id}"
    );
    let digest = Digest::sha256_of(b"manifest").to_string();
    assert_eq!(
        json,
        serde_json::json!({
            "specversion": "1.0",
            "id": id,
            "source": "/v2/prod/app",
            "type": "dev.berth.image.pushed",
            "time": "2025-12-06T05:46:40.123Z",
            "datacontenttype": "application/json",
            "subject": "v1",
            "data": {
                "repository": "prod/app",
                "tag": "v1",
                "digest": digest,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "size": 8,
                "actor": "alice",
                "clientAddress": "127.0.0.7",
            }
        })
    );
}

#[test]
fn one_event_per_tag_each_with_its_own_id_and_an_untagged_one_without() {
    let now = std::time::SystemTime::now();
    let events = pushed(&["a", "b"]).events(None, None, now);
    let tags: Vec<_> = events.iter().map(|e| e.data.tag.clone()).collect();
    assert_eq!(tags, [Some("a".to_string()), Some("b".to_string())]);
    assert_ne!(events[0].id, events[1].id);
    let untagged = pushed(&[]).events(Some(""), None, now);
    assert_eq!(untagged.len(), 1);
    assert_eq!(untagged[0].data.tag, None);
    assert_eq!(untagged[0].subject, untagged[0].data.digest);
    assert_eq!(untagged[0].data.actor, None, "anonymous has no actor");
}

#[tokio::test]
async fn only_events_some_endpoint_wants_reach_the_outbox() {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let rules = notifications(
        r#"
        [[notifications]]
        name = "a"
        url = "http://127.0.0.1:9/"
        repositories = ["prod/**"]
        [[notifications]]
        name = "b"
        url = "http://127.0.0.1:9/b"
        actions = ["push"]
        "#,
    );
    let events = Events::new(storage.clone(), rules, None).expect("events");
    events
        .record(&pushed(&["v1", "v2"]), None, None)
        .await
        .expect("record");
    let mut pulled = pushed(&["v1"]);
    pulled.action = Action::Pull;
    events
        .record(&pulled, None, None)
        .await
        .expect("nobody wants pulls");
    let mut elsewhere = pushed(&["v1"]);
    elsewhere.action = Action::Delete;
    elsewhere.repository = "dev/app".into();
    events
        .record(&elsewhere, None, None)
        .await
        .expect("nobody wants dev deletes");

    let ids = storage.outbox_list().await.expect("list");
    assert_eq!(
        ids.len(),
        2,
        "one record per tag of the push, none for the rest"
    );
    for id in ids {
        let raw = storage.outbox_get(&id).await.expect("get").expect("there");
        let record: Record = serde_json::from_slice(&raw).expect("record");
        assert_eq!(record.event.id, id);
        assert_eq!(record.pending, ["a", "b"]);
    }
}

/// A receiver on 127.0.0.1 that refuses its first `refuse` requests with 503, then
/// records each event id it accepts, `delay` after the request came.
pub(super) async fn receiver(refuse: usize, delay: Duration) -> Receiver {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let accepted = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::new(AtomicUsize::new(0));
    let (sink, requests) = (accepted.clone(), seen.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (sink, seen) = (sink.clone(), seen.clone());
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) < refuse {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                tokio::time::sleep(delay).await;
                let event: CloudEvent = serde_json::from_slice(&body).expect("a CloudEvent");
                sink.lock().expect("sink").push(event.id);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver {
        url,
        accepted,
        requests,
    }
}

pub(super) struct Receiver {
    pub url: String,
    /// Ids of the events answered 204.
    pub accepted: Arc<std::sync::Mutex<Vec<String>>>,
    /// Every request, refused or not.
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
}

/// Two replicas' senders over one storage, a receiver that fails at first: every event is
/// accepted exactly once (claims keep the senders apart; failures are retried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_over_one_storage_deliver_each_event_once() {
    let Receiver { url, accepted, .. } = receiver(3, Duration::from_millis(20)).await;
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let rules = || {
        notifications(&format!(
            "[[notifications]]\nurl = \"{url}\"\ntimeout = \"2s\""
        ))
    };
    let a = Events::new(storage.clone(), rules(), None).expect("a");
    let b = Events::new(storage.clone(), rules(), None).expect("b");
    for i in 0..20 {
        let happened = pushed(&[&format!("v{i}")]);
        // Half the requests reach each replica.
        let replica = if i % 2 == 0 { &a } else { &b };
        replica.record(&happened, None, None).await.expect("record");
    }
    // Both start on a full outbox at once, listing the same records in the same order.
    let senders = [a.spawn_sender(), b.spawn_sender()];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !storage.outbox_list().await.expect("list").is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox never emptied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for sender in senders {
        sender.abort();
    }
    let mut ids = accepted.lock().expect("accepted").clone();
    assert_eq!(ids.len(), 20, "each event accepted once: {ids:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "no event accepted twice");
}
