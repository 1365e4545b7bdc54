//! Filling the cache with one blob: one task per (repository, digest) reads the upstream
//! body and hands each chunk, without copying it, to two places: a storage upload (which
//! writes it once, hashes it once and checks the digest before the blob becomes visible)
//! and a window of recent chunks in memory that every client of the blob reads from. A
//! client that falls behind the window (or joins late) waits for the fill to end and reads
//! the rest from storage. The task is not the request's, so a client that hangs up does
//! not stop it. Clients are held back from the blob's last byte until storage says every
//! byte matched the digest ([`Storage::upload_complete_notify`]), which it does before it
//! makes the blob durable: a client of a corrupt upstream gets a cut-off body, never a
//! complete wrong blob, and a client of a good one does not wait for the fsync.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_storage::{ByteRange, ByteStream, Digest, Storage};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Mirror;

/// Bytes taken from the upstream before they are handed on (at most), so the hash and the
/// storage upload work in few large steps without waiting for data.
const BATCH: usize = 1 << 20;
/// Recent bytes kept in memory for the fill's clients; a client further behind reads from
/// storage once the blob is stored.
const WINDOW: u64 = 32 << 20;
/// How long the fill waits, at most, for a client about to fall behind the window (a
/// client slower than the upstream: one writing to a slow disk). Within it the fill is
/// paced by its slowest client, as a direct pull is; past it that client is left behind
/// for good (it reads the rest from storage once the blob is stored), so a client that
/// trickles cannot hold the fill, or the other clients, back for longer than this.
const PACE_WAIT: Duration = Duration::from_millis(500);
/// How long one fill waits for its clients in all: clients that each read fast, then
/// stall at a different offset, cost the fill (and everyone on it) this much at most.
const PACE_BUDGET: Duration = Duration::from_secs(2);
/// KiB on their way into storage (at most): past this the fill waits for storage, so
/// memory stays bounded; below it a client is paced by the upstream, not by the disk.
const STORAGE_LAG_KIB: usize = 64 << 10;
/// How long a replica's claim on a fill lasts in shared storage without renewal (a crashed
/// replica's fill is taken over after this), how often it is renewed, and how often a
/// replica waiting for another one's fill looks again.
const LEASE_TTL: Duration = Duration::from_secs(30);
const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_POLL: Duration = Duration::from_millis(500);
/// A finished fill stays findable this long, so a request that saw the blob missing just
/// before it was linked joins the finished fill instead of fetching it again.
const LINGER: Duration = Duration::from_secs(10);

/// Where a fill stands.
#[derive(Clone, Debug, Default)]
pub(super) struct State {
    /// The blob's size, once the upstream said it.
    pub size: Option<u64>,
    /// Bytes received from the upstream (and in the window, unless it moved past them).
    pub written: u64,
    /// `Some(Ok)`: stored and verified. `Some(Err)`: failed (nothing is stored).
    pub done: Option<Result<(), String>>,
    /// The upstream does not have the blob.
    pub not_found: bool,
    /// Every byte arrived and matches the digest (storage may still be writing).
    pub verified: bool,
}

/// The most recent chunks of the blob, each with its offset: bytes from `start` on.
#[derive(Default)]
struct Window {
    start: u64,
    len: u64,
    chunks: VecDeque<(u64, Bytes)>,
}

impl Window {
    fn push(&mut self, batch: &[Bytes]) {
        for chunk in batch {
            self.chunks
                .push_back((self.start + self.len, chunk.clone()));
            self.len += chunk.len() as u64;
        }
        while self.len > WINDOW {
            let Some((_, old)) = self.chunks.pop_front() else {
                break;
            };
            self.len -= old.len() as u64;
            self.start += old.len() as u64;
        }
    }

    /// Bytes from `offset` up to `limit` (one chunk's worth, without copying); `None` when
    /// `offset` is no longer in the window. Found by binary search: a window holds
    /// thousands of small chunks.
    fn read(&self, offset: u64, limit: u64) -> Option<Bytes> {
        if offset < self.start {
            return None;
        }
        let i = self.chunks.partition_point(|(at, _)| *at <= offset);
        let (at, chunk) = self.chunks.get(i.checked_sub(1)?)?;
        let end = at + chunk.len() as u64;
        if offset >= end {
            return None;
        }
        let from = (offset - at) as usize;
        let to = (end.min(limit) - at) as usize;
        Some(chunk.slice(from..to))
    }
}

pub(super) struct Fill {
    storage: Arc<dyn Storage>,
    digest: Digest,
    window: Mutex<Window>,
    state: watch::Sender<State>,
    readers: Mutex<Readers>,
    /// Told whenever a reader moves on or goes away.
    moved: tokio::sync::Notify,
}

/// Where each client reading the window stands, so the fill can wait for the slowest
/// before moving the window past it (see [`PACE_WAIT`]).
#[derive(Default)]
struct Readers {
    next_id: u64,
    /// Reader → its offset; readers left behind are not in it.
    at: HashMap<u64, u64>,
}

/// A client's place among the fill's readers, given up when its body is dropped.
struct ReaderSlot {
    fill: Arc<Fill>,
    id: u64,
}

impl ReaderSlot {
    /// A new reader from offset 0: paced for only while the window still holds byte 0 (a
    /// client joining later reads from storage once the blob is stored).
    fn new(fill: Arc<Fill>) -> ReaderSlot {
        let id = {
            let window = fill.window.lock().unwrap_or_else(|e| e.into_inner());
            let mut readers = fill.readers.lock().unwrap_or_else(|e| e.into_inner());
            let id = readers.next_id;
            readers.next_id += 1;
            if window.start == 0 {
                readers.at.insert(id, 0);
            }
            id
        };
        ReaderSlot { fill, id }
    }

    /// Out of the fill's pacing for good (it reads from storage once the blob is stored).
    fn left_behind(&self) {
        let mut readers = self.fill.readers.lock().unwrap_or_else(|e| e.into_inner());
        if readers.at.remove(&self.id).is_some() {
            drop(readers);
            self.fill.moved.notify_waiters();
        }
    }

    fn moved_to(&self, offset: u64) {
        let mut readers = self.fill.readers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = readers.at.get_mut(&self.id) {
            *at = offset;
        }
        drop(readers);
        self.fill.moved.notify_waiters();
    }
}

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        let mut readers = self.fill.readers.lock().unwrap_or_else(|e| e.into_inner());
        readers.at.remove(&self.id);
        drop(readers);
        self.fill.moved.notify_waiters();
    }
}

type Key = (String, Digest);

/// The fills in flight (and those finished in the last [`LINGER`]).
pub(super) struct Fills {
    map: Arc<Mutex<HashMap<Key, Arc<Fill>>>>,
    /// This process, as the owner of fill leases in shared storage.
    owner: String,
}

impl Default for Fills {
    fn default() -> Fills {
        let mut bytes = [0u8; 12];
        // Without randomness, the time and PID still tell replicas apart.
        if getrandom::fill(&mut bytes).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
            bytes[8..].copy_from_slice(&std::process::id().to_le_bytes());
        }
        Fills {
            map: Arc::default(),
            owner: hex::encode(bytes),
        }
    }
}

impl Fills {
    /// Repositories with a fill in flight (eviction leaves them alone).
    pub fn repositories_filling(&self) -> std::collections::HashSet<String> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter(|(_, fill)| fill.state.borrow().done.is_none())
            .map(|((name, _), _)| name.clone())
            .collect()
    }

    /// The fill of `digest` for the local repository `name`: the one in flight, or a new
    /// one (started in a task of its own).
    pub fn join_or_start(
        &self,
        storage: &Arc<dyn Storage>,
        mirror: &Arc<Mirror>,
        name: &str,
        upstream_name: &str,
        digest: &Digest,
    ) -> Arc<Fill> {
        let key = (name.to_string(), digest.clone());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fill) = map.get(&key) {
            return fill.clone();
        }
        let fill = Arc::new(Fill {
            storage: storage.clone(),
            digest: digest.clone(),
            window: Mutex::default(),
            state: watch::Sender::new(State::default()),
            readers: Mutex::default(),
            moved: tokio::sync::Notify::new(),
        });
        map.insert(key.clone(), fill.clone());
        let job = Job {
            storage: storage.clone(),
            mirror: mirror.clone(),
            name: name.to_string(),
            upstream_name: upstream_name.to_string(),
            digest: digest.clone(),
            fill: fill.clone(),
            owner: self.owner.clone(),
        };
        let map = self.map.clone();
        tokio::spawn(async move {
            let result = job.fetch_and_store().await;
            let forget = || {
                map.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
            };
            match result {
                Ok(()) => {
                    let bytes = job.fill.state.borrow().written;
                    tracing::info!(repository = %job.name, digest = %job.digest, bytes, "mirror: blob cached");
                    job.fill.state.send_modify(|s| s.done = Some(Ok(())));
                    tokio::time::sleep(LINGER).await;
                    forget();
                }
                Err(why) => {
                    tracing::warn!(repository = %job.name, digest = %job.digest, error = %why, "mirror: blob not cached");
                    // Forgotten before its clients hear of the failure, so a retry fetches again.
                    forget();
                    job.fill.state.send_modify(|s| s.done = Some(Err(why)));
                }
            }
        });
        fill
    }
}

struct Job {
    storage: Arc<dyn Storage>,
    mirror: Arc<Mirror>,
    name: String,
    upstream_name: String,
    digest: Digest,
    fill: Arc<Fill>,
    owner: String,
}

/// Renews a fill lease until dropped.
struct Renewing(JoinHandle<()>);

impl Drop for Renewing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Chunks for the storage upload, each with its share of [`STORAGE_LAG_KIB`].
type Queued = (io::Result<Bytes>, Option<tokio::sync::OwnedSemaphorePermit>);

/// The sending side of the storage queue: waits only when storage lags too far.
struct ChunkSender {
    tx: futures::channel::mpsc::UnboundedSender<Queued>,
    lag: Arc<tokio::sync::Semaphore>,
}

impl ChunkSender {
    /// `Err` when storage stopped reading.
    async fn send(&mut self, item: io::Result<Bytes>) -> Result<(), ()> {
        let kib = match &item {
            Ok(chunk) => chunk.len().div_ceil(1024).clamp(1, STORAGE_LAG_KIB) as u32,
            Err(_) => 0,
        };
        let permit = match kib {
            0 => None,
            _ => Some(
                self.lag
                    .clone()
                    .acquire_many_owned(kib)
                    .await
                    .map_err(|_| ())?,
            ),
        };
        self.tx.unbounded_send((item, permit)).map_err(|_| ())
    }
}

/// A queue into storage bounded by bytes, and the stream storage reads it from (a chunk's
/// share of the bound is given back as storage takes it).
fn storage_queue() -> (ChunkSender, ByteStream) {
    let (tx, rx) = futures::channel::mpsc::unbounded::<Queued>();
    let lag = Arc::new(tokio::sync::Semaphore::new(STORAGE_LAG_KIB));
    (
        ChunkSender { tx, lag },
        Box::pin(rx.map(|(item, _permit)| item)),
    )
}

impl Job {
    async fn fetch_and_store(&self) -> Result<(), String> {
        let lease = format!("fill-{}", self.digest.hex());
        if !self.take_lease(&lease).await? {
            return self.stored_by_another_replica().await;
        }
        let renewing = {
            let (storage, lease, owner) = (self.storage.clone(), lease.clone(), self.owner.clone());
            Renewing(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LEASE_RENEW).await;
                    if let Err(e) = storage.lease_acquire(&lease, &owner, LEASE_TTL).await {
                        tracing::warn!(%lease, error = %e, "mirror: could not renew a fill lease");
                    }
                }
            }))
        };
        let result = self.fetch_and_store_leased().await;
        drop(renewing);
        if let Err(e) = self.storage.lease_release(&lease, &self.owner).await {
            tracing::warn!(%lease, error = %e, "mirror: could not release a fill lease (it expires)");
        }
        result
    }

    /// Wait until this replica holds the blob's fill lease (`Ok(true)`), or the blob is
    /// stored (`Ok(false)`: another replica over the same storage filled it). A lease whose
    /// holder crashed expires after [`LEASE_TTL`] and is taken over.
    async fn take_lease(&self, lease: &str) -> Result<bool, String> {
        let stored = || async {
            self.storage
                .blob_size(&self.digest)
                .await
                .map(|size| size.is_some())
                .map_err(|e| format!("cannot look the blob up: {e}"))
        };
        let mut waited = false;
        loop {
            if stored().await? {
                return Ok(false);
            }
            let held = self
                .storage
                .lease_acquire(lease, &self.owner, LEASE_TTL)
                .await
                .map_err(|e| format!("cannot take the fill lease: {e}"))?;
            if held {
                // It may have been stored between the look and the lease.
                if waited && stored().await? {
                    let _ = self.storage.lease_release(lease, &self.owner).await;
                    return Ok(false);
                }
                return Ok(true);
            }
            if !waited {
                tracing::info!(repository = %self.name, digest = %self.digest, "mirror: another replica is filling this blob; waiting for it");
                waited = true;
            }
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// The blob another replica stored: linked here (after the upstream confirms this
    /// repository has it, when it was stored for another), then served from storage.
    async fn stored_by_another_replica(&self) -> Result<(), String> {
        let s = self.storage.as_ref();
        let size = s
            .blob_size(&self.digest)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the blob vanished after another replica stored it")?;
        if !s
            .blob_linked(&self.name, &self.digest)
            .await
            .map_err(|e| e.to_string())?
        {
            let upstream = self
                .mirror
                .head_blob(&self.upstream_name, &self.digest)
                .await
                .map_err(|e| e.to_string())?;
            if upstream.is_none() {
                self.fill.state.send_modify(|s| s.not_found = true);
                return Err("the upstream does not have it".into());
            }
            s.link_blob(&self.name, &self.digest)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.fill.state.send_modify(|s| {
            s.size = Some(size);
            s.written = size;
            s.verified = true;
        });
        Ok(())
    }

    async fn fetch_and_store_leased(&self) -> Result<(), String> {
        let body = match self
            .mirror
            .get_blob(&self.upstream_name, &self.digest)
            .await
        {
            Ok(Some(body)) => body,
            Ok(None) => {
                self.fill.state.send_modify(|s| s.not_found = true);
                return Err("the upstream does not have it".into());
            }
            Err(e) => return Err(e.to_string()),
        };
        self.fill.state.send_modify(|s| s.size = body.size);
        let (mut tx, data) = storage_queue();
        let (matched_tx, matched) = tokio::sync::oneshot::channel();
        let store = tokio::spawn(store(
            self.storage.clone(),
            self.name.clone(),
            self.digest.clone(),
            data,
            matched_tx,
        ));
        let copied = self.copy(body.stream, body.size, &mut tx).await;
        if let Err(e) = &copied {
            // Storage must not take a cut-off body for a whole one.
            let _ = tx.send(Err(io::Error::other(e.clone()))).await;
        }
        drop(tx);
        // Storage hashed every byte and they match: the clients get the last one now,
        // while storage makes the blob durable (an fsync of the whole file) and links it.
        if copied.is_ok() && matched.await.is_ok() {
            self.fill.state.send_modify(|s| s.verified = true);
        }
        let stored = store.await.map_err(|e| format!("storing it failed: {e}"))?;
        match (copied, stored) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(n)) if body.size.is_some_and(|size| size != n) => Err(format!(
                "the upstream announced {} bytes but sent {n}",
                body.size.unwrap_or_default()
            )),
            (Ok(()), Ok(_)) => Ok(()),
        }
    }

    /// Upstream → the clients' window and the storage queue, batch by batch. Clients see
    /// a batch as soon as it arrives; storage hashes it (once) as it writes it.
    async fn copy(
        &self,
        stream: ByteStream,
        size: Option<u64>,
        tx: &mut ChunkSender,
    ) -> Result<(), String> {
        let mut stream = stream.fuse();
        let mut offset = 0u64;
        let mut storage_reading = true;
        let mut pace_budget = PACE_BUDGET;
        loop {
            let batch = match next_batch(&mut stream).await {
                Ok(Some(batch)) => batch,
                Ok(None) => return Ok(()),
                Err(e) => return Err(format!("the upstream's body broke off: {e}")),
            };
            let len: u64 = batch.iter().map(|c| c.len() as u64).sum();
            if size.is_some_and(|size| offset + len > size) {
                return Err("the upstream sent more bytes than it announced".into());
            }
            offset += len;
            let waited = self
                .fill
                .wait_for_readers(offset.saturating_sub(WINDOW), pace_budget.min(PACE_WAIT))
                .await;
            pace_budget = pace_budget.saturating_sub(waited);
            self.fill.window_push(&batch);
            self.fill.state.send_modify(|s| s.written = offset);
            for chunk in batch {
                // Storage stopped reading: its own error says why and ends the fill (its
                // clients get a cut-off body); the upstream is still read to the end, so
                // the clients' bytes so far stay in order.
                if storage_reading && tx.send(Ok(chunk)).await.is_err() {
                    storage_reading = false;
                }
            }
        }
    }
}

/// Store the blob from `data`: the upload is created here, beside the first bytes' way to
/// the clients rather than before it, so their first byte waits for the upstream only
/// (the bytes queue meanwhile, bounded by [`STORAGE_LAG_KIB`]). `matched` is told once
/// storage has hashed every byte and they match the digest. A failed upload is removed.
async fn store(
    storage: Arc<dyn Storage>,
    name: String,
    digest: Digest,
    data: ByteStream,
    matched: tokio::sync::oneshot::Sender<()>,
) -> Result<u64, String> {
    let upload = storage
        .upload_create(&name)
        .await
        .map_err(|e| format!("cannot start storing it: {e}"))?;
    let stored = storage
        .upload_complete_notify(&name, &upload.id, &digest, Some(data), matched)
        .await;
    if stored.is_err() {
        let _ = storage.upload_cancel(&name, &upload.id).await;
    }
    stored.map_err(|e| e.to_string())
}

/// The next chunk, and whatever further chunks are ready now (up to [`BATCH`] bytes).
async fn next_batch(
    stream: &mut futures::stream::Fuse<ByteStream>,
) -> io::Result<Option<Vec<Bytes>>> {
    let Some(first) = stream.next().await.transpose()? else {
        return Ok(None);
    };
    let mut len = first.len();
    let mut batch = vec![first];
    while len < BATCH {
        match stream.next().now_or_never() {
            Some(Some(chunk)) => {
                let chunk = chunk?;
                len += chunk.len();
                batch.push(chunk);
            }
            _ => break,
        }
    }
    Ok(Some(batch))
}

/// What a client's body reads next.
enum Source {
    /// The fill's window, from this offset.
    Window(u64),
    /// Storage, once the blob is stored (the client fell behind the window).
    Stored(ByteStream),
}

impl Fill {
    /// Wait until every reader is at `start` or past it (the window is about to drop the
    /// bytes before it), for at most `limit`; readers still behind then are left behind
    /// (they read from storage once the blob is stored). Returns how long it waited.
    async fn wait_for_readers(&self, start: u64, limit: Duration) -> Duration {
        let behind = |readers: &Readers| readers.at.values().any(|&at| at < start);
        let began = tokio::time::Instant::now();
        loop {
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if !behind(&self.readers.lock().unwrap_or_else(|e| e.into_inner())) {
                return began.elapsed();
            }
            if tokio::time::timeout_at(began + limit, moved).await.is_err() {
                let mut readers = self.readers.lock().unwrap_or_else(|e| e.into_inner());
                readers.at.retain(|_, at| *at >= start);
                return began.elapsed();
            }
        }
    }

    fn window_push(&self, batch: &[Bytes]) {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(batch);
    }

    fn window_read(&self, offset: u64, limit: u64) -> Option<Bytes> {
        self.window
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, limit)
    }

    /// Wait until the upstream answered: the blob's size (`None`: not announced), or why
    /// there is no blob (`Err(true)`: the upstream does not have it).
    pub async fn started(&self) -> Result<Option<u64>, (bool, String)> {
        let mut rx = self.state.subscribe();
        let state = rx
            .wait_for(|s| s.size.is_some() || s.done.is_some())
            .await
            .map(|s| s.clone())
            .unwrap_or_default();
        match state.done {
            Some(Err(e)) if state.size.is_none() => Err((state.not_found, e)),
            Some(Ok(())) => Ok(Some(state.written)),
            _ => Ok(state.size),
        }
    }

    /// The blob's bytes as they arrive; the last byte only once the digest is verified.
    /// Ends with an error if the fill fails.
    pub fn reader(self: Arc<Fill>) -> ByteStream {
        let rx = self.state.subscribe();
        let slot = ReaderSlot::new(self);
        Box::pin(futures::stream::try_unfold(
            (slot, rx, Source::Window(0)),
            |(slot, mut rx, source)| async move {
                let fill = slot.fill.clone();
                let offset = match source {
                    Source::Stored(mut stream) => {
                        return Ok(stream
                            .next()
                            .await
                            .transpose()?
                            .map(|chunk| (chunk, (slot, rx, Source::Stored(stream)))));
                    }
                    Source::Window(offset) => offset,
                };
                loop {
                    let state = rx.borrow_and_update().clone();
                    let verified = match &state.done {
                        Some(Err(e)) if !state.verified => return Err(io::Error::other(e.clone())),
                        Some(_) => true,
                        None => state.verified,
                    };
                    let limit = match (verified, state.size) {
                        (true, _) => state.written,
                        (false, Some(size)) => state.written.min(size.saturating_sub(1)),
                        (false, None) => 0,
                    };
                    if offset < limit {
                        if let Some(chunk) = fill.window_read(offset, limit) {
                            let next = offset + chunk.len() as u64;
                            slot.moved_to(next);
                            return Ok(Some((chunk, (slot, rx, Source::Window(next)))));
                        }
                        // Behind the window: no reason for the fill to wait for this one.
                        slot.left_behind();
                        if matches!(state.done, Some(Ok(()))) {
                            let range = ByteRange::From {
                                start: offset,
                                end: None,
                            };
                            let read = fill.storage.blob_read(&fill.digest, Some(range)).await;
                            let mut stream = read.map_err(io::Error::other)?.stream;
                            return Ok(stream
                                .next()
                                .await
                                .transpose()?
                                .map(|chunk| (chunk, (slot, rx, Source::Stored(stream)))));
                        }
                        // Fell behind the window: the rest comes from storage once stored.
                    } else if verified {
                        return Ok(None);
                    }
                    if rx.changed().await.is_err() {
                        return Err(io::Error::other("the cache fill stopped"));
                    }
                }
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_keeps_recent_bytes_and_slices_without_copying() {
        let mut w = Window::default();
        let chunk = Bytes::from(vec![7u8; (WINDOW / 4) as usize]);
        for _ in 0..4 {
            w.push(std::slice::from_ref(&chunk));
        }
        assert_eq!(
            (w.start, w.len),
            (0, WINDOW),
            "exactly the window: all kept"
        );
        let part = w.read(10, 20).expect("in the window");
        assert_eq!(part.len(), 10, "stops at the limit");
        assert_eq!(part.as_ptr(), chunk[10..].as_ptr(), "a slice of the chunk");
        w.push(&[Bytes::from_static(b"tail")]);
        assert_eq!(w.start, WINDOW / 4, "the oldest chunk is dropped");
        assert!(w.read(0, WINDOW).is_none(), "behind the window");
        let tail = w.read(WINDOW, WINDOW + 4).expect("the newest bytes");
        assert_eq!(&tail[..], b"tail");
        assert!(w.read(WINDOW + 4, WINDOW + 8).is_none(), "not yet arrived");
    }

    /// The fill waits for a reader behind the window's new start, goes on at once when it
    /// moves past, and leaves behind (for good) one that does not; a reader joining after
    /// the window moved on is never waited for; a dropped reader is forgotten.
    #[tokio::test]
    async fn the_fill_waits_briefly_for_readers_and_leaves_stragglers_behind() {
        let fill = Arc::new(Fill {
            storage: Arc::new(berth_storage::MemoryStorage::new()),
            digest: Digest::sha256_of(b"x"),
            window: Mutex::default(),
            state: watch::Sender::new(State::default()),
            readers: Mutex::default(),
            moved: tokio::sync::Notify::new(),
        });
        let registered = |fill: &Fill| {
            let readers = fill.readers.lock().expect("readers");
            let mut at: Vec<u64> = readers.at.values().copied().collect();
            at.sort();
            at
        };
        let (a, b) = (ReaderSlot::new(fill.clone()), ReaderSlot::new(fill.clone()));
        assert_eq!(registered(&fill), [0, 0]);
        // `a` catches up while the fill waits; `b` never does and is left behind.
        let waiting = tokio::spawn({
            let fill = fill.clone();
            async move { fill.wait_for_readers(10, Duration::from_millis(50)).await }
        });
        tokio::task::yield_now().await;
        a.moved_to(10);
        b.moved_to(5);
        let waited = waiting.await.expect("wait");
        assert!(
            waited >= Duration::from_millis(50),
            "waited the limit for b"
        );
        assert_eq!(registered(&fill), [10], "b left behind");
        b.moved_to(20);
        assert_eq!(registered(&fill), [10], "for good");
        // Nobody behind: it returns without waiting for a reader (a huge limit would hang).
        fill.wait_for_readers(10, Duration::from_secs(3600)).await;
        fill.window_push(&[Bytes::from(vec![0u8; (WINDOW + 1) as usize])]);
        fill.window_push(&[Bytes::from_static(b"more")]);
        let late = ReaderSlot::new(fill.clone());
        assert_eq!(registered(&fill), [10], "a late reader is not waited for");
        drop((a, late));
        assert!(
            registered(&fill).is_empty(),
            "a dropped reader is forgotten"
        );
    }
}
