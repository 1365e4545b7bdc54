//! Registry events as webhooks (`[[notifications]]`): CloudEvents 1.0 JSON,
//! delivered at least once through a durable outbox in the storage.
//!
//! A request that changes or reads an image leaves a [`Happened`] on its
//! response; [`Events::record`] turns it into one event per tag, writes each
//! to the outbox (only when some endpoint wants it) before the response goes
//! out, logs it (target `berth::events`) and wakes the sender
//! ([`sender`]), which POSTs it to every endpoint that wants it, with retries,
//! and removes it once all have it.

use std::net::SocketAddr;
use std::sync::Arc;

use berth_storage::{Digest, Storage, StorageError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

mod config;
mod sender;

pub use config::{Endpoint, NotificationConfig, Notifications, DEFAULT_TIMEOUT};

use crate::metrics::Metrics;

/// What a request did, as endpoints subscribe to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// A manifest PUT (one event per tag it set).
    Push,
    /// A manifest GET (HEAD reads no content and is not one).
    Pull,
    /// A manifest or tag DELETE.
    Delete,
    /// A blob mounted from another repository (`POST ...?mount=`).
    Mount,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "push" => Some(Action::Push),
            "pull" => Some(Action::Pull),
            "delete" => Some(Action::Delete),
            "mount" => Some(Action::Mount),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Push => "push",
            Action::Pull => "pull",
            Action::Delete => "delete",
            Action::Mount => "mount",
        }
    }

    /// The CloudEvents `type`.
    pub fn event_type(self) -> &'static str {
        match self {
            Action::Push => "dev.berth.image.pushed",
            Action::Pull => "dev.berth.image.pulled",
            Action::Delete => "dev.berth.image.deleted",
            Action::Mount => "dev.berth.image.mounted",
        }
    }
}

/// What a handler did, left on its (successful) response for [`Events::record`].
#[derive(Clone, Debug)]
pub(crate) struct Happened {
    pub action: Action,
    pub repository: String,
    /// One event per tag; none: one event without a tag.
    pub tags: Vec<String>,
    pub digest: Digest,
    pub media_type: Option<String>,
    pub size: Option<u64>,
}

/// A CloudEvents 1.0 event in structured JSON mode.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CloudEvent {
    pub specversion: String,
    /// Unique, and the same on every delivery attempt (receivers deduplicate by it).
    pub id: String,
    /// `/v2/<repository>`: where in this registry it happened.
    pub source: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// RFC 3339, UTC.
    pub time: String,
    pub datacontenttype: String,
    /// The tag, else the digest.
    pub subject: String,
    pub data: EventData,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EventData {
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    /// The user who logged in; null for anonymous requests or with logins off.
    pub actor: Option<String>,
    pub client_address: Option<String>,
}

/// An outbox record: the event and the endpoints that still have to get it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub event: CloudEvent,
    pub pending: Vec<String>,
}

/// A new outbox id: milliseconds since the epoch (so a listing is in order
/// of time) and a random part (so two replicas never collide).
fn new_id(now: std::time::SystemTime) -> String {
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{ms:013}-{}", uuid::Uuid::new_v4().simple())
}

impl Happened {
    /// The events this describes, one per tag.
    pub(crate) fn events(
        &self,
        actor: Option<&str>,
        client: Option<SocketAddr>,
        now: std::time::SystemTime,
    ) -> Vec<CloudEvent> {
        let tags: Vec<Option<&str>> = if self.tags.is_empty() {
            vec![None]
        } else {
            self.tags.iter().map(|t| Some(t.as_str())).collect()
        };
        tags.into_iter()
            .map(|tag| CloudEvent {
                specversion: "1.0".into(),
                id: new_id(now),
                source: format!("/v2/{}", self.repository),
                kind: self.action.event_type().into(),
                time: humantime::format_rfc3339_millis(now).to_string(),
                datacontenttype: "application/json".into(),
                subject: tag.map_or_else(|| self.digest.to_string(), str::to_string),
                data: EventData {
                    repository: self.repository.clone(),
                    tag: tag.map(str::to_string),
                    digest: self.digest.to_string(),
                    media_type: self.media_type.clone(),
                    size: self.size,
                    actor: actor.filter(|a| !a.is_empty()).map(str::to_string),
                    client_address: client.map(|c| c.ip().to_string()),
                },
            })
            .collect()
    }
}

/// The events of a server: where they are queued and who receives them.
/// Clones share everything.
#[derive(Clone)]
pub struct Events(Arc<Inner>);

struct Inner {
    storage: Arc<dyn Storage>,
    rules: Notifications,
    metrics: Option<Metrics>,
    /// Wakes the sender when this process queued an event.
    wake: tokio::sync::Notify,
    /// This process's name on delivery claims.
    owner: String,
    http: reqwest::Client,
}

impl Events {
    pub fn new(
        storage: Arc<dyn Storage>,
        rules: Notifications,
        metrics: Option<Metrics>,
    ) -> Result<Events, String> {
        let http = reqwest::Client::builder()
            // A 3xx is not a delivery: the operator fixes the URL.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Events(Arc::new(Inner {
            storage,
            rules,
            metrics,
            wake: tokio::sync::Notify::new(),
            owner: uuid::Uuid::new_v4().simple().to_string(),
            http,
        })))
    }

    /// Queue the events `happened` describes for the endpoints that want
    /// them, durably; nothing is written when none does.
    pub(crate) async fn record(
        &self,
        happened: &Happened,
        actor: Option<&str>,
        client: Option<SocketAddr>,
    ) -> Result<(), StorageError> {
        let pending = self.0.rules.matching(happened.action, &happened.repository);
        if pending.is_empty() {
            return Ok(());
        }
        for event in happened.events(actor, client, std::time::SystemTime::now()) {
            let record = Record {
                event,
                pending: pending.clone(),
            };
            let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
            self.0
                .storage
                .outbox_put(&record.event.id, Bytes::from(bytes))
                .await?;
            log_event(&record);
            if let Some(m) = &self.0.metrics {
                m.event_queued(happened.action.event_type());
            }
        }
        self.0.wake.notify_one();
        Ok(())
    }

    /// Start delivering what is in the outbox (also what earlier runs and
    /// other replicas left there), until the runtime stops.
    pub fn spawn_sender(&self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(sender::run(self.0.clone()))
    }
}

/// Each event as a structured log line.
fn log_event(record: &Record) {
    let e = &record.event;
    tracing::info!(
        target: "berth::events",
        id = %e.id,
        r#type = %e.kind,
        repository = %e.data.repository,
        tag = %e.data.tag.as_deref().unwrap_or("-"),
        digest = %e.data.digest,
        media_type = %e.data.media_type.as_deref().unwrap_or("-"),
        size = e.data.size.unwrap_or(0),
        actor = %e.data.actor.as_deref().unwrap_or("-"),
        client = %e.data.client_address.as_deref().unwrap_or("-"),
        endpoints = record.pending.len(),
        "event"
    );
}

#[cfg(test)]
mod tests;
