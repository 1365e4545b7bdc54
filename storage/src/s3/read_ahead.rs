//! Big blob reads in parallel ranged GETs, within a server-wide memory budget.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::StreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore};

use crate::ByteStream;

/// Big blob reads are cut into ranged GETs of this size (see [`ReadAhead`]).
pub(super) const READ_RANGE: u64 = 16 << 20;
/// Ranges one read fetches ahead of the one being sent, while buffers last
/// (`--s3-read-ahead` overrides it). With the one being sent from memory,
/// a read holds at most 4 x 16 MiB = 64 MiB.
pub(super) const READ_AHEAD: usize = 3;
/// Read-ahead buffers (of [`READ_RANGE`] each) for the whole server:
/// 8 x 16 MiB = 128 MiB at most, however many pulls run at once.
pub(super) const READ_BUFFERS: usize = 8;
/// Largest frame handed to the HTTP layer from a read-ahead buffer.
const READ_FRAME: usize = 1 << 20;

/// How big reads are fetched: in ranges of `range` bytes, up to `ahead` of
/// them fetched in parallel ahead of the one being sent, each held in one of
/// the server-wide `buffers`.
///
/// One GET stream from an S3 server is often slower than the network (AWS
/// serves roughly 100 MB/s per connection; s3s-fs is bound by one core per
/// request), so a big blob is read as ranged GETs in parallel and sent in
/// order. The range being sent streams straight from its response; the ones
/// after it are read into memory, at most `ahead` per read and `buffers`
/// (times `range` bytes) for the whole server, taken without waiting: when
/// none is free a read simply fetches less ahead, and with none at all it
/// streams everything left in one GET, as a small read always does. So
/// memory stays bounded however many pulls run, and no pull waits for
/// another one's client.
#[derive(Clone, Debug)]
pub(super) struct ReadAhead {
    range: u64,
    ahead: usize,
    pub(super) buffers: Arc<tokio::sync::Semaphore>,
}

/// A range being fetched into memory; aborted if the read is dropped.
struct Fetch {
    task: tokio::task::JoinHandle<object_store::Result<Bytes>>,
    len: u64,
    _buffer: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Fetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Current {
    /// Streaming straight from a GET response.
    Stream(futures::stream::BoxStream<'static, object_store::Result<Bytes>>),
    /// Sending a range fetched ahead (its buffer is released when done).
    Buffered {
        bytes: Bytes,
        _fetch: Fetch,
    },
    Idle,
}

struct RangedRead {
    store: Arc<dyn ObjectStore>,
    path: Path,
    /// First byte not requested yet.
    next: u64,
    /// One past the last byte to send.
    end: u64,
    current: Current,
    fetching: std::collections::VecDeque<Fetch>,
    how: ReadAhead,
    done: bool,
}

fn range_options(start: u64, end: u64) -> GetOptions {
    GetOptions::new().with_range(Some(GetRange::Bounded(start..end)))
}

impl ReadAhead {
    pub(super) fn new(range: u64, ahead: usize, buffers: usize) -> ReadAhead {
        ReadAhead {
            range: range.max(1),
            ahead,
            buffers: Arc::new(tokio::sync::Semaphore::new(buffers)),
        }
    }

    /// Whether bytes `[start, end)` are worth reading in parallel ranges.
    pub(super) fn worth_it(&self, start: u64, end: u64) -> bool {
        self.ahead > 0 && end.saturating_sub(start) > self.range
    }

    /// Bytes `[start, end)` of the object at `path`, which has at least `end`
    /// bytes. The first GET is sent before this returns, so a missing object
    /// or an unreachable server is an error here rather than mid-stream.
    pub(super) async fn read(
        &self,
        store: Arc<dyn ObjectStore>,
        path: Path,
        start: u64,
        end: u64,
    ) -> object_store::Result<ByteStream> {
        let first_end = if self.worth_it(start, end) && self.buffers.available_permits() > 0 {
            start + self.range
        } else {
            end
        };
        let first = store
            .get_opts(&path, range_options(start, first_end))
            .await?;
        let mut read = RangedRead {
            store,
            path,
            next: first_end,
            end,
            current: Current::Stream(first.into_stream()),
            fetching: Default::default(),
            how: self.clone(),
            done: false,
        };
        read.fetch_ahead();
        Ok(Box::pin(futures::stream::unfold(read, |mut read| async {
            let item = read.next_chunk().await?;
            Some((item, read))
        })))
    }
}

impl RangedRead {
    /// Start fetching the next ranges, as far as free buffers allow.
    fn fetch_ahead(&mut self) {
        while self.fetching.len() < self.how.ahead && self.next < self.end {
            let Ok(buffer) = self.how.buffers.clone().try_acquire_owned() else {
                break;
            };
            let (start, end) = (self.next, (self.next + self.how.range).min(self.end));
            self.next = end;
            let (store, path) = (self.store.clone(), self.path.clone());
            let task = tokio::spawn(async move {
                store
                    .get_opts(&path, range_options(start, end))
                    .await?
                    .bytes()
                    .await
            });
            self.fetching.push_back(Fetch {
                task,
                len: end - start,
                _buffer: buffer,
            });
        }
    }

    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if self.done {
            return None;
        }
        let item = self.advance().await;
        if !matches!(item, Some(Ok(_))) {
            // Finished or failed: stop, and abort what is still being fetched.
            self.done = true;
            self.fetching.clear();
            self.current = Current::Idle;
        }
        item
    }

    async fn advance(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            self.fetch_ahead();
            match &mut self.current {
                Current::Stream(stream) => match stream.next().await {
                    Some(Ok(bytes)) => return Some(Ok(bytes)),
                    Some(Err(e)) => return Some(Err(io::Error::other(e))),
                    None => self.current = Current::Idle,
                },
                Current::Buffered { bytes, .. } if !bytes.is_empty() => {
                    let n = bytes.len().min(READ_FRAME);
                    return Some(Ok(bytes.split_to(n)));
                }
                Current::Buffered { .. } => self.current = Current::Idle,
                Current::Idle => {
                    if let Some(mut fetch) = self.fetching.pop_front() {
                        let bytes = match (&mut fetch.task).await {
                            Ok(Ok(bytes)) => bytes,
                            Ok(Err(e)) => return Some(Err(io::Error::other(e))),
                            Err(e) => return Some(Err(io::Error::other(e))),
                        };
                        if bytes.len() as u64 != fetch.len {
                            return Some(Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                format!(
                                    "S3 sent {} bytes of a {}-byte range",
                                    bytes.len(),
                                    fetch.len
                                ),
                            )));
                        }
                        self.current = Current::Buffered {
                            bytes,
                            _fetch: fetch,
                        };
                        continue;
                    }
                    if self.next >= self.end {
                        return None;
                    }
                    // Nothing fetched ahead (no buffer was free): stream the
                    // next range, or all the rest if still none is free.
                    let end = if self.how.buffers.available_permits() > 0 {
                        (self.next + self.how.range).min(self.end)
                    } else {
                        self.end
                    };
                    let options = range_options(self.next, end);
                    match self.store.get_opts(&self.path, options).await {
                        Ok(r) => self.current = Current::Stream(r.into_stream()),
                        Err(e) => return Some(Err(io::Error::other(e))),
                    }
                    self.next = end;
                }
            }
        }
    }
}
