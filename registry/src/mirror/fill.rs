//! Filling the cache with one blob: one task per (repository, digest) reads the upstream
//! body, writes it to an unlinked spool file (which every client of the blob reads, however
//! late it joined) and streams it into a storage upload, which checks the digest before the
//! blob becomes visible. The task is not the request's, so a client that hangs up does not
//! stop it. Clients are held back from the blob's last byte until the digest is verified:
//! a client of a corrupt upstream gets a cut-off body, never a complete wrong blob.

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_storage::{ByteStream, Digest, Storage};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use tokio::sync::watch;

use super::Mirror;

/// Bytes written to the spool, or read from it, at a time (at most).
const BATCH: usize = 1 << 20;
/// A finished fill stays findable this long, so a request that saw the blob missing just
/// before it was linked joins the finished fill instead of fetching it again.
const LINGER: Duration = Duration::from_secs(10);

/// Where a fill stands.
#[derive(Clone, Debug, Default)]
pub(super) struct State {
    /// The blob's size, once the upstream said it.
    pub size: Option<u64>,
    /// Bytes in the spool file.
    pub written: u64,
    /// `Some(Ok)`: stored and verified. `Some(Err)`: failed (nothing is stored).
    pub done: Option<Result<(), String>>,
    /// The upstream does not have the blob.
    pub not_found: bool,
    /// Every byte is in the spool and matches the digest (storage may still be writing).
    pub verified: bool,
}

pub(super) struct Fill {
    spool: Arc<std::fs::File>,
    state: watch::Sender<State>,
}

type Key = (String, Digest);

/// The fills in flight (and those finished in the last [`LINGER`]).
#[derive(Default)]
pub(super) struct Fills {
    map: Arc<Mutex<HashMap<Key, Arc<Fill>>>>,
}

impl Fills {
    /// The fill of `digest` for the local repository `name`: the one in flight, or a new
    /// one (started in a task of its own).
    pub fn join_or_start(
        &self,
        storage: &Arc<dyn Storage>,
        mirror: &Arc<Mirror>,
        name: &str,
        upstream_name: &str,
        digest: &Digest,
    ) -> io::Result<Arc<Fill>> {
        let key = (name.to_string(), digest.clone());
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(fill) = map.get(&key) {
            return Ok(fill.clone());
        }
        let fill = Arc::new(Fill {
            spool: Arc::new(tempfile::tempfile()?),
            state: watch::Sender::new(State::default()),
        });
        map.insert(key.clone(), fill.clone());
        let job = Job {
            storage: storage.clone(),
            mirror: mirror.clone(),
            name: name.to_string(),
            upstream_name: upstream_name.to_string(),
            digest: digest.clone(),
            fill: fill.clone(),
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
        Ok(fill)
    }
}

struct Job {
    storage: Arc<dyn Storage>,
    mirror: Arc<Mirror>,
    name: String,
    upstream_name: String,
    digest: Digest,
    fill: Arc<Fill>,
}

impl Job {
    async fn fetch_and_store(&self) -> Result<(), String> {
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
        let upload = self
            .storage
            .upload_create(&self.name)
            .await
            .map_err(|e| format!("cannot start storing it: {e}"))?;
        let (mut tx, rx) = futures::channel::mpsc::channel::<io::Result<Bytes>>(16);
        let store = {
            let (storage, name, id, digest) = (
                self.storage.clone(),
                self.name.clone(),
                upload.id.clone(),
                self.digest.clone(),
            );
            tokio::spawn(async move {
                let data: ByteStream = Box::pin(rx);
                storage
                    .upload_complete(&name, &id, &digest, Some(data))
                    .await
            })
        };
        let copied = self.copy(body.stream, body.size, &mut tx).await;
        if let Err(e) = &copied {
            // Storage must not take a cut-off body for a whole one.
            let _ = tx.send(Err(io::Error::other(e.clone()))).await;
        }
        drop(tx);
        let stored = store.await.map_err(|e| format!("storing it failed: {e}"))?;
        let result = match (copied, stored) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(format!("{e}")),
            (Ok(()), Ok(n)) if body.size.is_some_and(|size| size != n) => Err(format!(
                "the upstream announced {} bytes but sent {n}",
                body.size.unwrap_or_default()
            )),
            (Ok(()), Ok(_)) => Ok(()),
        };
        if result.is_err() {
            let _ = self.storage.upload_cancel(&self.name, &upload.id).await;
        }
        result
    }

    /// Upstream → spool file and storage, batch by batch.
    async fn copy(
        &self,
        stream: ByteStream,
        size: Option<u64>,
        tx: &mut futures::channel::mpsc::Sender<io::Result<Bytes>>,
    ) -> Result<(), String> {
        let mut stream = stream.fuse();
        let mut offset = 0u64;
        let mut hasher = Some(berth_storage::Hasher::new(self.digest.algorithm()));
        loop {
            let batch = match next_batch(&mut stream).await {
                Ok(Some(batch)) => batch,
                Ok(None) => {
                    // Checked here too, so clients get the last byte without waiting for
                    // storage to sync the blob (which links it only after its own check).
                    let actual = hasher.take().map(|h| h.finish());
                    if actual.as_ref() != Some(&self.digest) {
                        return Err(format!(
                            "the upstream sent content with digest {}, not {}",
                            actual.map(|d| d.to_string()).unwrap_or_default(),
                            self.digest
                        ));
                    }
                    self.fill.state.send_modify(|s| s.verified = true);
                    return Ok(());
                }
                Err(e) => return Err(format!("the upstream's body broke off: {e}")),
            };
            let len: u64 = batch.iter().map(|c| c.len() as u64).sum();
            if size.is_some_and(|size| offset + len > size) {
                return Err("the upstream sent more bytes than it announced".into());
            }
            let spool = self.fill.spool.clone();
            let chunks = batch.clone();
            let mut h = hasher.take();
            hasher = tokio::task::spawn_blocking(move || {
                let mut at = offset;
                for chunk in &chunks {
                    spool.write_all_at(chunk, at)?;
                    if let Some(h) = h.as_mut() {
                        h.update(chunk);
                    }
                    at += chunk.len() as u64;
                }
                Ok::<_, io::Error>(h)
            })
            .await
            .map_err(|e| format!("spool write failed: {e}"))?
            .map_err(|e| format!("spool write failed: {e}"))?;
            for chunk in batch {
                if tx.send(Ok(chunk)).await.is_err() {
                    // Storage stopped reading: its own error says why.
                    return Ok(());
                }
            }
            offset += len;
            self.fill.state.send_modify(|s| s.written = offset);
        }
    }
}

/// The next chunk, and whatever further chunks are ready now (up to [`BATCH`] bytes), so
/// the spool is written in few large writes without waiting for data.
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

impl Fill {
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

    /// The blob's bytes, from the spool as they arrive; the last byte only once the digest
    /// is verified. Ends with an error if the fill fails.
    pub fn reader(self: Arc<Fill>) -> ByteStream {
        let rx = self.state.subscribe();
        Box::pin(futures::stream::try_unfold(
            (self, rx, 0u64),
            |(fill, mut rx, offset)| async move {
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
                        let len = (limit - offset).min(BATCH as u64) as usize;
                        let spool = fill.spool.clone();
                        let chunk = tokio::task::spawn_blocking(move || {
                            let mut buf = vec![0u8; len];
                            spool.read_exact_at(&mut buf, offset).map(|()| buf)
                        })
                        .await
                        .map_err(io::Error::other)??;
                        let next = offset + len as u64;
                        return Ok(Some((Bytes::from(chunk), (fill, rx, next))));
                    }
                    if verified {
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
