use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use berth_storage::{MemoryStorage, Storage};

use super::*;

fn pushed(tags: &[&str]) -> Happened {
    Happened {
        action: Action::Push,
        repository: "prod/app".into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        digest: Digest::sha256_of(b"manifest"),
        media_type: Some("application/vnd.oci.image.manifest.v1+json".into()),
        size: Some(8),
    }
}

fn notifications(toml_text: &str) -> Notifications {
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
