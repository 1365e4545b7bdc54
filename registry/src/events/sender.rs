//! Delivery: POST each outbox record to the endpoints still pending, retry
//! with exponential backoff, remove the record once every endpoint has it.
//!
//! The outbox is listed every [`POLL`] (and at once when this process queued
//! an event), so records left by an earlier run or by another replica are
//! delivered too. Backoff is per endpoint: while every endpoint a record waits
//! for is failing, the record is skipped without a storage request. A record is claimed before it is sent; a replica that finds
//! it claimed leaves it to the claim's owner until the claim expires.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue};
use berth_storage::StorageError;

use super::{Inner, Record};

/// How often the outbox is listed when nothing wakes the sender.
const POLL: Duration = Duration::from_secs(2);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(300);
/// A claim lasts every endpoint's timeout and this margin.
const CLAIM_MARGIN: Duration = Duration::from_secs(30);

const CLOUDEVENTS_JSON: HeaderValue = HeaderValue::from_static("application/cloudevents+json");

/// How an attempt at one record ended.
enum Outcome {
    /// Every endpoint has it (or it was gone already).
    Done,
    /// Some endpoint still has to get it.
    Pending,
    /// Another sender holds it.
    Claimed,
}

/// When to try a failing endpoint again.
struct Retry {
    attempts: u32,
    next: Instant,
}

fn backoff(attempts: u32) -> Duration {
    FIRST_RETRY
        .saturating_mul(1u32 << attempts.min(16))
        .min(MAX_RETRY)
}

/// What this process's sender remembers between passes.
#[derive(Default)]
struct State {
    /// Endpoints that failed, each retried with its own exponential backoff: a dead
    /// receiver is tried with one event per backoff step, not with each queued event.
    endpoints_down: HashMap<String, Retry>,
    /// The endpoints each record was last seen waiting for: while they are all down the
    /// record is not even read (no storage requests for a backlog behind a dead receiver).
    waiting_for: HashMap<String, Vec<String>>,
    /// Records that do not parse: left in place for an operator, logged once.
    broken: HashSet<String>,
}

impl State {
    fn is_down(&self, endpoint: &str, now: Instant) -> bool {
        self.endpoints_down
            .get(endpoint)
            .is_some_and(|r| r.next > now)
    }

    fn failed(&mut self, endpoint: &str) {
        let now = Instant::now();
        let retry = self
            .endpoints_down
            .entry(endpoint.to_string())
            .or_insert(Retry {
                attempts: 0,
                next: now,
            });
        retry.next = now + backoff(retry.attempts);
        retry.attempts = retry.attempts.saturating_add(1);
    }

    fn succeeded(&mut self, endpoint: &str) {
        self.endpoints_down.remove(endpoint);
    }

    /// Whether reading the record can lead to a delivery now.
    fn worth_trying(&self, id: &str, now: Instant) -> bool {
        !self.broken.contains(id)
            && !self
                .waiting_for
                .get(id)
                .is_some_and(|keys| keys.iter().all(|k| self.is_down(k, now)))
    }

    /// How long to sleep: until the next endpoint may be retried, at most [`POLL`].
    fn next_wake(&self) -> Duration {
        let now = Instant::now();
        self.endpoints_down
            .values()
            .map(|r| r.next.saturating_duration_since(now))
            .min()
            .unwrap_or(POLL)
            .clamp(Duration::from_millis(50), POLL)
    }
}

pub(super) async fn run(inner: Arc<Inner>) {
    let mut state = State::default();
    loop {
        if let Err(e) = round(&inner, &mut state).await {
            tracing::warn!(target: "berth::events", error = %e, "cannot read the event outbox; trying again");
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(state.next_wake()) => {}
        }
    }
}

/// One pass over the outbox, oldest first.
async fn round(inner: &Inner, state: &mut State) -> Result<(), StorageError> {
    let ids = inner.storage.outbox_list().await?;
    if let Some(m) = &inner.metrics {
        m.events_in_outbox(ids.len());
    }
    let listed: HashSet<&String> = ids.iter().collect();
    state.waiting_for.retain(|id, _| listed.contains(id));
    state.broken.retain(|id| listed.contains(id));
    for id in &ids {
        let now = Instant::now();
        if inner
            .rules
            .endpoints
            .iter()
            .all(|e| state.is_down(&e.key, now))
        {
            break; // nothing can be delivered before the next retry
        }
        if !state.worth_trying(id, now) {
            continue;
        }
        if let Err(e) = deliver(inner, id, state).await {
            tracing::warn!(target: "berth::events", id = %id, error = %e, "cannot deliver an event now");
        }
    }
    Ok(())
}

/// Claim one record, send it to each endpoint still pending, save what is left.
async fn deliver(inner: &Inner, id: &str, state: &mut State) -> Result<Outcome, StorageError> {
    let ttl = inner.rules.total_timeout() + CLAIM_MARGIN;
    if !inner.storage.outbox_claim(id, &inner.owner, ttl).await? {
        return Ok(Outcome::Claimed);
    }
    let outcome = send_claimed(inner, id, state).await;
    // After a delete the claim is gone with the record: nothing to release.
    if !matches!(outcome, Ok(Outcome::Done)) {
        inner.storage.outbox_release(id, &inner.owner).await?;
    }
    outcome
}

async fn send_claimed(inner: &Inner, id: &str, state: &mut State) -> Result<Outcome, StorageError> {
    let Some(raw) = inner.storage.outbox_get(id).await? else {
        // Delivered and removed by another sender since the listing: drop the
        // claim just made with it.
        inner.storage.outbox_delete(id).await?;
        return Ok(Outcome::Done);
    };
    let mut record: Record = match serde_json::from_slice(&raw) {
        Ok(record) => record,
        Err(e) => {
            tracing::error!(target: "berth::events", id, error = %e, "an outbox record does not parse; it is left in place");
            state.broken.insert(id.to_string());
            return Ok(Outcome::Pending);
        }
    };
    let body = serde_json::to_vec(&record.event).map_err(std::io::Error::other)?;
    let before = record.pending.len();
    let mut still = Vec::new();
    for key in std::mem::take(&mut record.pending) {
        let Some(endpoint) = inner.rules.endpoint(&key) else {
            tracing::warn!(target: "berth::events", id, endpoint = %key, "no [[notifications]] endpoint has this name any more; the event is dropped for it");
            continue;
        };
        if state.is_down(&key, Instant::now()) {
            still.push(key);
            continue;
        }
        match post(inner, endpoint, body.clone()).await {
            Ok(()) => {
                tracing::info!(target: "berth::events", id, endpoint = %key, "event delivered");
                state.succeeded(&key);
                if let Some(m) = &inner.metrics {
                    m.event_sent();
                }
            }
            Err(why) => {
                tracing::warn!(target: "berth::events", id, endpoint = %key, error = %why, "event delivery failed; will retry");
                state.failed(&key);
                if let Some(m) = &inner.metrics {
                    m.event_failed();
                }
                still.push(key);
            }
        }
    }
    if still.is_empty() {
        inner.storage.outbox_delete(id).await?;
        state.waiting_for.remove(id);
        return Ok(Outcome::Done);
    }
    state.waiting_for.insert(id.to_string(), still.clone());
    if still.len() != before {
        record.pending = still;
        let bytes = serde_json::to_vec(&record).map_err(std::io::Error::other)?;
        inner.storage.outbox_put(id, bytes.into()).await?;
    }
    Ok(Outcome::Pending)
}

/// One delivery attempt: a 2xx answer within the endpoint's timeout.
async fn post(inner: &Inner, endpoint: &super::Endpoint, body: Vec<u8>) -> Result<(), String> {
    let response = inner
        .http
        .post(endpoint.url.clone())
        .headers(endpoint.headers.clone())
        .header(header::CONTENT_TYPE, CLOUDEVENTS_JSON)
        .timeout(endpoint.timeout)
        .body(body)
        .send()
        .await
        // Without the URL, whose query may hold a secret: the endpoint's name says which.
        .map_err(|e| format!("{:#}", e.without_url()))?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the endpoint answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(9), MAX_RETRY);
        assert_eq!(backoff(u32::MAX), MAX_RETRY);
    }

    /// Two senders (replicas) attempt one record at the same moment, the receiver slow to
    /// answer: the claim lets one send it and tells the other it is taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claimed_record_is_sent_by_one_sender_only() {
        use crate::events::tests::{notifications, pushed, receiver};
        use crate::events::Events;
        use berth_storage::{MemoryStorage, Storage};

        let crate::events::tests::Receiver { url, accepted, .. } =
            receiver(0, Duration::from_millis(300)).await;
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let rules = || notifications(&format!("[[notifications]]\nurl = \"{url}\""));
        let a = Events::new(storage.clone(), rules(), None).expect("a");
        let b = Events::new(storage.clone(), rules(), None).expect("b");
        a.record(&pushed(&["v1"]), None, None)
            .await
            .expect("record");
        let ids = storage.outbox_list().await.expect("list");
        let id = ids.first().expect("one record").clone();
        let (mut state_a, mut state_b) = (State::default(), State::default());
        let (first, second) = tokio::join!(
            deliver(&a.0, &id, &mut state_a),
            deliver(&b.0, &id, &mut state_b)
        );
        let outcomes = [first.expect("a"), second.expect("b")];
        let sent = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Done))
            .count();
        let claimed = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Claimed))
            .count();
        assert_eq!(
            (sent, claimed),
            (1, 1),
            "one sends, the other finds it claimed"
        );
        assert_eq!(accepted.lock().expect("accepted").len(), 1, "sent once");
        assert!(storage.outbox_list().await.expect("list").is_empty());
    }

    /// A receiver that keeps failing and a backlog of ten events: a pass tries it once,
    /// and the passes during its backoff neither call it nor read the backlog again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_endpoint_is_tried_once_per_backoff_step() {
        use crate::events::tests::{notifications, pushed, receiver};
        use crate::events::Events;
        use berth_storage::{MemoryStorage, Storage};
        use std::sync::atomic::Ordering;

        let r = receiver(usize::MAX, Duration::ZERO).await;
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
        let rules = notifications(&format!("[[notifications]]\nurl = \"{}\"", r.url));
        let events = Events::new(storage.clone(), rules, None).expect("events");
        for i in 0..10 {
            let happened = pushed(&[&format!("v{i}")]);
            events.record(&happened, None, None).await.expect("record");
        }
        let mut state = State::default();
        round(&events.0, &mut state).await.expect("first pass");
        assert_eq!(
            r.requests.load(Ordering::SeqCst),
            1,
            "one attempt in a pass"
        );
        assert_eq!(state.waiting_for.len(), 1, "only the first record was read");
        round(&events.0, &mut state).await.expect("second pass");
        assert_eq!(
            r.requests.load(Ordering::SeqCst),
            1,
            "none during the backoff"
        );
        assert_eq!(
            storage.outbox_list().await.expect("list").len(),
            10,
            "all kept"
        );
        // Another endpoint's records are not held up by it.
        assert!(state.worth_trying("unread", Instant::now()));
        state
            .waiting_for
            .insert("both".into(), vec![r.url.clone(), "other".into()]);
        assert!(state.worth_trying("both", Instant::now()));
    }
}
