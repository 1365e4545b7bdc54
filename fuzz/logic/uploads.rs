//! The upload state machine of `berth_storage` (POST, PATCH, PUT ?digest=,
//! DELETE and GET on upload sessions), on `FsStorage` in a fresh folder and
//! on `MemoryStorage`, driven by sequences of requests over three
//! repositories ("alpha", "beta/one" and "beta", a prefix of it) and four
//! upload slots, in any order.
//!
//! A sequence is made of steps: a POST into a slot, or a group of one to
//! three requests run concurrently (joined on one task of a current-thread
//! runtime; the file system backend's blocking work runs on real threads).
//! A request may name its slot's session under its own repository, under
//! another one, or by a forged id (upper-cased, cut short, with `/../`, an
//! id never issued); a PATCH may claim the right or a wrong start offset; a
//! body comes in small chunks (once per input a chunk over the backend's
//! 1 MiB write batch), may pause between chunks, and may break off with an
//! `io::Error`; a PUT names the right digest (sha256 or sha512), the digest
//! of one byte less or more, an unrelated one, or that of a blob stored
//! earlier, with or without a last chunk. A request may also be dropped
//! after a few polls (a client that went away); the next request on its
//! session is then a PATCH with an empty body, which waits for whatever the
//! dropped one left running.
//!
//! Properties:
//! - every blob stored hashes to its name (the file system backend's whole
//!   `blobs/` folder is read back; for both backends every digest a PUT
//!   named is read back), and `tmp/` is empty once all requests have ended;
//! - a PUT answered `Ok(size)` left a blob of that size, linked into its
//!   repository, and no blob is linked into a repository where no PUT of
//!   it went;
//! - a request naming a session under another repository, or by a forged
//!   id, gets `UploadUnknown` and changes nothing;
//! - each session behaves as a sequence of atomic requests: what every
//!   request got (offsets, `RangeMismatch` offsets, sizes, `DigestMismatch`
//!   actual digests, `BodyInterrupted`, `UploadUnknown`) must be what a
//!   small reference model gives for SOME order of the requests that ran
//!   concurrently (a linearizability check; a dropped request may have had
//!   no effect, left a prefix of its body, or, for a PUT, ended the session);
//! - no reported offset exceeds the bytes sent to that session;
//! - no panic, no other error (`Io`, `Corrupt`, ...).
//!
//! Bugs this target found, since fixed in `berth_storage` (their inputs are
//! kept in fuzz/regressions/uploads/ and replayed by tests/fuzz_regressions.rs):
//! - `FsStorage` released a session's lock before closing its data file, so
//!   a request taking the lock in between found the `flock` still held and
//!   answered a PATCH or PUT `RangeMismatch` when it should have gone ahead
//!   (fs-flock-outlives-session-lock*; a race that shows about once in 100
//!   runs on a loaded machine, so those inputs do not catch it every time).
//! - `MemoryStorage` checked a PATCH's claimed start before reading the
//!   body, so two PATCHes whose bodies pause both passed the check and the
//!   second landed at the wrong offset (memory-patch-start-race).
//!
//! Storage roots live under /dev/shm when it exists (fsync is then free;
//! BERTH_FUZZ_DIR overrides), one per input, removed after it. Each input
//! takes a few milliseconds; one with the 1 MiB chunk takes ~50-100 ms.
//! BERTH_FUZZ_TRACE=1 prints each input's requests and answers (to read a
//! seed or a crash: `cargo fuzz run uploads FILE`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::task::{Context, Poll};

use arbitrary::{Result as AResult, Unstructured};
use berth_storage::digest::Hasher;
use berth_storage::{
    Algorithm, ByteStream, Digest, FsStorage, MemoryStorage, Storage, StorageError, UploadStatus,
};
use bytes::Bytes;

const REPOS: [&str; 3] = ["alpha", "beta/one", "beta"];
const SLOTS: usize = 4;
/// Steps per input: short sequences keep an input at a few milliseconds
/// (most of it is the file system backend's hops to blocking threads).
const MAX_STEPS: usize = 10;
const MAX_CHUNK: usize = 24;
const MAX_ITEMS: usize = 5;
/// Larger than the file system backend's write batch (1 MiB), so a body
/// with it is written in two batches, the second while the first is busy.
const BIG_CHUNK: usize = (1 << 20) + 3;
/// Beyond this many possible states a session's model gives up (its
/// answers are then checked only against the bytes sent to it).
const MAX_CANDIDATES: usize = 24;

// ---------------------------------------------------------------- input ---

#[derive(Debug, Clone)]
enum Step {
    Create { slot: usize, repo: usize },
    Group(Vec<Op>),
}

#[derive(Debug, Clone)]
struct Op {
    slot: usize,
    name: Name,
    kind: Kind,
    /// Drop the request after this many polls.
    budget: Option<u8>,
}

/// How a request names its slot's session.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Name {
    Own,
    /// The right id under another repository (an offset into REPOS, 1 or 2).
    OtherRepo(usize),
    Upper,
    Truncated,
    Traversal,
    NeverIssued,
}

#[derive(Debug, Clone)]
enum Kind {
    Append { start: Start, body: Body },
    Complete { want: Want, body: Option<Body> },
    Cancel,
    Status,
}

#[derive(Debug, Clone, Copy)]
enum Start {
    None,
    Right,
    Off(i8),
}

#[derive(Debug, Clone, Copy)]
enum Want {
    Right(Algorithm),
    OneLess,
    OneMore,
    Unrelated(u8),
    Existing(u8),
}

#[derive(Clone)]
enum Item {
    Chunk(Bytes),
    Pause,
}

impl fmt::Debug for Item {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Item::Chunk(b) if b.len() > 64 => write!(f, "Chunk({} bytes)", b.len()),
            Item::Chunk(b) => write!(f, "Chunk({:?})", String::from_utf8_lossy(b)),
            Item::Pause => write!(f, "Pause"),
        }
    }
}

#[derive(Debug, Clone)]
struct Body {
    items: Vec<Item>,
    breaks: bool,
}

impl Body {
    fn chunks(&self) -> Vec<Bytes> {
        self.items
            .iter()
            .filter_map(|i| match i {
                Item::Chunk(b) => Some(b.clone()),
                Item::Pause => None,
            })
            .collect()
    }

    fn len(&self) -> u64 {
        self.chunks().iter().map(|c| c.len() as u64).sum()
    }
}

struct Decoder<'a, 'b> {
    u: &'b mut Unstructured<'a>,
    big_used: bool,
    created: [bool; SLOTS],
}

impl Decoder<'_, '_> {
    fn steps(&mut self) -> AResult<Vec<Step>> {
        let mut steps = Vec::new();
        while !self.u.is_empty() && steps.len() < MAX_STEPS {
            steps.push(self.step()?);
        }
        Ok(steps)
    }

    fn step(&mut self) -> AResult<Step> {
        let b: u8 = self.u.arbitrary()?;
        // The first step always creates a session.
        if b.is_multiple_of(5) || !self.created.contains(&true) {
            let slot = usize::from(b / 5) % SLOTS;
            self.created[slot] = true;
            return Ok(Step::Create {
                slot,
                repo: self.u.choose_index(REPOS.len())?,
            });
        }
        let n = match b % 5 {
            1 | 2 => 1,
            3 => 2,
            _ => 3,
        };
        let mut ops = Vec::new();
        for _ in 0..n {
            ops.push(self.op()?);
        }
        Ok(Step::Group(ops))
    }

    fn op(&mut self) -> AResult<Op> {
        // A request goes to a slot that has had a session (forged ids
        // cover sessions that never were).
        let mut slot = self.u.choose_index(SLOTS)?;
        if !self.created[slot] {
            slot = (1..SLOTS)
                .map(|d| (slot + d) % SLOTS)
                .find(|s| self.created[*s])
                .unwrap_or(slot);
        }
        let name = match self.u.int_in_range(0u8..=15)? {
            0 | 1 => Name::OtherRepo(1),
            2 => Name::OtherRepo(2),
            3 => Name::Upper,
            4 => Name::Truncated,
            5 => Name::Traversal,
            6 => Name::NeverIssued,
            _ => Name::Own,
        };
        let kind = match self.u.int_in_range(0u8..=9)? {
            0..=3 => {
                let start = match self.u.int_in_range(0u8..=3)? {
                    0 | 1 => Start::None,
                    2 => Start::Right,
                    _ => Start::Off(match self.u.arbitrary::<i8>()? {
                        0 => 1,
                        d => d,
                    }),
                };
                Kind::Append {
                    start,
                    body: self.body()?,
                }
            }
            4..=6 => {
                let want = match self.u.int_in_range(0u8..=9)? {
                    0..=3 => Want::Right(Algorithm::Sha256),
                    4 => Want::Right(Algorithm::Sha512),
                    5 => Want::OneLess,
                    6 => Want::OneMore,
                    7 => Want::Unrelated(self.u.arbitrary()?),
                    _ => Want::Existing(self.u.arbitrary()?),
                };
                let body = if self.u.arbitrary()? {
                    Some(self.body()?)
                } else {
                    None
                };
                Kind::Complete { want, body }
            }
            7 => Kind::Cancel,
            _ => Kind::Status,
        };
        // Only PATCH and PUT are dropped part-way: both keep the session's
        // lock until the work they started on a blocking thread has ended.
        let budget = match kind {
            Kind::Append { .. } | Kind::Complete { .. } if self.u.ratio(1u8, 6u8)? => {
                Some(self.u.int_in_range(0u8..=12)?)
            }
            _ => None,
        };
        Ok(Op {
            slot,
            name,
            kind,
            budget,
        })
    }

    fn body(&mut self) -> AResult<Body> {
        let n = self.u.int_in_range(0..=MAX_ITEMS)?;
        let mut items = Vec::new();
        for _ in 0..n {
            let b: u8 = self.u.arbitrary()?;
            if b < 40 {
                items.push(Item::Pause);
            } else if b == 255 && !self.big_used && self.u.arbitrary::<u8>()? == b'B' {
                // Two bytes to ask for it, at most once per input: such an
                // input costs ten times a small one.
                self.big_used = true;
                items.push(Item::Chunk(Bytes::from(vec![b'B'; BIG_CHUNK])));
            } else {
                let len = usize::from(b) % (MAX_CHUNK + 1);
                let bytes = self.u.bytes(len.min(self.u.len()))?;
                items.push(Item::Chunk(Bytes::copy_from_slice(bytes)));
            }
        }
        Ok(Body {
            items,
            breaks: self.u.ratio(1u8, 5u8)?,
        })
    }
}

// ---------------------------------------------------------------- model ---

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
enum St {
    Gone,
    Live(Bytes),
}

impl fmt::Debug for St {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            St::Gone => write!(f, "Gone"),
            St::Live(b) if b.len() > 64 => {
                write!(f, "Live({} bytes, {})", b.len(), Digest::sha256_of(b))
            }
            St::Live(b) => write!(f, "Live({:?})", String::from_utf8_lossy(b)),
        }
    }
}

/// What a request got, comparable with what the model says it should get.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Offset(u64),
    Size(u64),
    Done,
    Unknown,
    Range(u64),
    Mismatch(Digest),
    Interrupted,
    Failed(String),
}

fn outcome_of_status(r: Result<UploadStatus, StorageError>, repo: &str, id: &str) -> Outcome {
    match r {
        Ok(s) => {
            assert_eq!(s.repository, repo, "status names another repository");
            assert_eq!(s.id, id, "status names another id");
            Outcome::Offset(s.offset)
        }
        Err(e) => outcome_of_error(e),
    }
}

fn outcome_of_error(e: StorageError) -> Outcome {
    match e {
        StorageError::UploadUnknown => Outcome::Unknown,
        StorageError::RangeMismatch { offset } => Outcome::Range(offset),
        StorageError::DigestMismatch { actual, .. } => Outcome::Mismatch(actual),
        StorageError::BodyInterrupted(_) => Outcome::Interrupted,
        other => Outcome::Failed(format!("{other:?}")),
    }
}

/// A request as the model sees it: its start offset and digest resolved.
#[derive(Clone)]
enum Req {
    Append {
        start: Option<u64>,
        chunks: Vec<Bytes>,
        breaks: bool,
    },
    Complete {
        digest: Digest,
        body: Option<(Vec<Bytes>, bool)>,
    },
    Cancel,
    Status,
}

/// Chunks as text when short, else their sizes (the log is built for every
/// input, so it must stay cheap).
struct Chunks<'a>(&'a [Bytes]);

impl fmt::Debug for Chunks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut l = f.debug_list();
        for c in self.0 {
            if c.len() > 64 {
                l.entry(&format_args!("<{} bytes>", c.len()));
            } else {
                l.entry(&String::from_utf8_lossy(c));
            }
        }
        l.finish()
    }
}

impl fmt::Debug for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Req::Append {
                start,
                chunks,
                breaks,
            } => write!(
                f,
                "PATCH start={start:?} {:?}{}",
                Chunks(chunks),
                if *breaks { " then breaks" } else { "" }
            ),
            Req::Complete { digest, body } => {
                write!(f, "PUT ?digest={digest}")?;
                match body {
                    Some((chunks, breaks)) => write!(
                        f,
                        " {:?}{}",
                        Chunks(chunks),
                        if *breaks { " then breaks" } else { "" }
                    ),
                    None => Ok(()),
                }
            }
            Req::Cancel => write!(f, "DELETE"),
            Req::Status => write!(f, "GET"),
        }
    }
}

fn hash(alg: Algorithm, parts: &[&[u8]]) -> Digest {
    let mut h = Hasher::new(alg);
    for p in parts {
        h.update(p);
    }
    h.finish()
}

fn extended(base: &[u8], chunks: &[Bytes]) -> Bytes {
    let mut v = base.to_vec();
    for c in chunks {
        v.extend_from_slice(c);
    }
    Bytes::from(v)
}

/// One request on one session, as the trait documents it.
fn apply(st: &St, req: &Req) -> (Outcome, St) {
    let St::Live(bytes) = st else {
        return (Outcome::Unknown, St::Gone);
    };
    let len = bytes.len() as u64;
    match req {
        Req::Status => (Outcome::Offset(len), st.clone()),
        Req::Cancel => (Outcome::Done, St::Gone),
        Req::Append {
            start,
            chunks,
            breaks,
        } => {
            if start.is_some_and(|s| s != len) {
                return (Outcome::Range(len), st.clone());
            }
            let after = extended(bytes, chunks);
            let out = if *breaks {
                Outcome::Interrupted
            } else {
                Outcome::Offset(after.len() as u64)
            };
            (out, St::Live(after))
        }
        Req::Complete { digest, body } => {
            let mut content = bytes.clone();
            if let Some((chunks, breaks)) = body {
                content = extended(&content, chunks);
                if *breaks {
                    return (Outcome::Interrupted, St::Live(content));
                }
            }
            let actual = hash(digest.algorithm(), &[&content]);
            if &actual == digest {
                (Outcome::Size(content.len() as u64), St::Gone)
            } else {
                (Outcome::Mismatch(actual), St::Gone)
            }
        }
    }
}

/// The states a request dropped part-way may have left.
fn dropped(st: &St, req: &Req) -> Vec<St> {
    let St::Live(bytes) = st else {
        return vec![St::Gone];
    };
    let mut out = vec![st.clone()];
    let prefixes = |chunks: &[Bytes], out: &mut Vec<St>| {
        for k in 1..=chunks.len() {
            out.push(St::Live(extended(bytes, &chunks[..k])));
        }
    };
    match req {
        Req::Append { start, chunks, .. } => {
            if start.is_none_or(|s| s == bytes.len() as u64) {
                prefixes(chunks, &mut out);
            }
        }
        Req::Complete { body, .. } => {
            if let Some((chunks, _)) = body {
                prefixes(chunks, &mut out);
            }
            if !body.as_ref().is_some_and(|(_, breaks)| *breaks) {
                out.push(St::Gone);
            }
        }
        Req::Cancel | Req::Status => {}
    }
    out
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    match n {
        0 => vec![vec![]],
        1 => vec![vec![0]],
        2 => vec![vec![0, 1], vec![1, 0]],
        _ => vec![
            vec![0, 1, 2],
            vec![0, 2, 1],
            vec![1, 0, 2],
            vec![1, 2, 0],
            vec![2, 0, 1],
            vec![2, 1, 0],
        ],
    }
}

/// The states a session may be in after `reqs` ran concurrently from any of
/// `before`, given what each got (`None`: dropped). Empty: no order explains
/// the answers.
fn linearize(before: &[St], reqs: &[(Req, Option<Outcome>)]) -> Vec<St> {
    let mut after = BTreeSet::new();
    for st in before {
        for perm in permutations(reqs.len()) {
            let mut frontier = vec![st.clone()];
            for &i in &perm {
                let (req, got) = &reqs[i];
                frontier = match got {
                    Some(got) => frontier
                        .iter()
                        .filter_map(|s| {
                            let (want, next) = apply(s, req);
                            (&want == got).then_some(next)
                        })
                        .collect(),
                    None => frontier.iter().flat_map(|s| dropped(s, req)).collect(),
                };
                if frontier.is_empty() {
                    break;
                }
            }
            after.extend(frontier);
        }
    }
    after.into_iter().collect()
}

// --------------------------------------------------------------- bodies ---

/// A request body: chunks, pauses (pending once, woken at once), and
/// perhaps an error at the end.
struct BodyStream {
    items: std::vec::IntoIter<Item>,
    breaks: bool,
    done: bool,
}

impl futures::Stream for BodyStream {
    type Item = io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.items.next() {
            Some(Item::Chunk(b)) => Poll::Ready(Some(Ok(b))),
            Some(Item::Pause) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            None => {
                self.done = true;
                if self.breaks {
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "fuzz: body broke off",
                    ))))
                } else {
                    Poll::Ready(None)
                }
            }
        }
    }
}

fn stream(body: &Body) -> ByteStream {
    Box::pin(BodyStream {
        items: body.items.clone().into_iter(),
        breaks: body.breaks,
        done: false,
    })
}

/// Polls a future at most `left` times, then drops it (`None`).
struct Budget<F> {
    fut: Option<Pin<Box<F>>>,
    left: Option<u8>,
}

impl<F: Future> Future for Budget<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(left) = this.left.as_mut() {
            if *left == 0 {
                this.fut = None;
                return Poll::Ready(None);
            }
            *left -= 1;
        }
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Ready(None);
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(v) => {
                this.fut = None;
                Poll::Ready(Some(v))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

// ------------------------------------------------------------------ run ---

struct Slot {
    repo: usize,
    id: String,
    /// Possible states; `None` once there were too many to follow.
    states: Option<Vec<St>>,
    /// Bytes sent to the session in bodies so far.
    sent: u64,
}

/// A request ready to send: whom it names and what the model makes of it.
struct Issued {
    slot: usize,
    repo: String,
    id: String,
    own: bool,
    req: Req,
    /// The body as sent (with its pauses).
    body: Option<Body>,
    budget: Option<u8>,
}

struct Run<'a, S: Storage> {
    storage: &'a S,
    backend: &'static str,
    slots: Vec<Option<Slot>>,
    /// Every digest a PUT named.
    named: BTreeSet<Digest>,
    /// Blobs PUT stored: digest -> (size, repositories).
    stored: BTreeMap<Digest, (u64, BTreeSet<String>)>,
    /// Where a blob may be linked: where a PUT of it succeeded or was
    /// dropped part-way, under the session's own repository.
    may_link: BTreeSet<(String, Digest)>,
    log: Vec<String>,
}

impl<S: Storage> Run<'_, S> {
    fn fail(&self, what: String) -> ! {
        panic!(
            "[{}] {what}\n--- requests so far:\n{}",
            self.backend,
            self.log.join("\n")
        );
    }

    fn base(&self, slot: usize) -> Bytes {
        match self.slots[slot].as_ref().and_then(|s| s.states.as_ref()) {
            Some(states) => states
                .iter()
                .find_map(|s| match s {
                    St::Live(b) => Some(b.clone()),
                    St::Gone => None,
                })
                .unwrap_or_default(),
            None => Bytes::new(),
        }
    }

    fn issue(&self, op: &Op) -> Issued {
        let (repo_idx, real_id) = match &self.slots[op.slot] {
            Some(s) => (s.repo, Some(s.id.clone())),
            None => (op.slot % REPOS.len(), None),
        };
        let never = "0123456789abcdef0123456789abcdef".to_string();
        let (repo, id, own) = match (real_id, op.name) {
            (None, _) => (repo_idx, never, false),
            (Some(id), Name::Own) => (repo_idx, id, true),
            (Some(id), Name::OtherRepo(d)) => ((repo_idx + d) % REPOS.len(), id, false),
            (Some(id), Name::Upper) => (repo_idx, id.to_uppercase(), false),
            (Some(id), Name::Truncated) => (repo_idx, id[..31].to_string(), false),
            (Some(id), Name::Traversal) => (repo_idx, format!("../uploads/{id}"), false),
            (Some(_), Name::NeverIssued) => (repo_idx, never, false),
        };
        let base = self.base(op.slot);
        let (req, body) = match &op.kind {
            Kind::Status => (Req::Status, None),
            Kind::Cancel => (Req::Cancel, None),
            Kind::Append { start, body } => {
                let len = base.len() as u64;
                let start = match start {
                    Start::None => None,
                    Start::Right => Some(len),
                    Start::Off(d) => Some(len.wrapping_add_signed(i64::from(*d))),
                };
                let req = Req::Append {
                    start,
                    chunks: body.chunks(),
                    breaks: body.breaks,
                };
                (req, Some(body.clone()))
            }
            Kind::Complete { want, body } => {
                let tail = body.as_ref().map(|b| b.chunks()).unwrap_or_default();
                let content = extended(&base, &tail);
                let digest = match want {
                    Want::Right(alg) => hash(*alg, &[&content]),
                    Want::OneLess => hash(
                        Algorithm::Sha256,
                        &[&content[..content.len().saturating_sub(1)]],
                    ),
                    Want::OneMore => hash(Algorithm::Sha256, &[&content, b"x"]),
                    Want::Unrelated(b) => hash(Algorithm::Sha256, &[b"unrelated", &[*b]]),
                    Want::Existing(i) => {
                        if self.stored.is_empty() {
                            hash(Algorithm::Sha256, &[b""])
                        } else {
                            let i = usize::from(*i) % self.stored.len();
                            self.stored.keys().nth(i).cloned().unwrap()
                        }
                    }
                };
                let req = Req::Complete {
                    digest,
                    body: body.as_ref().map(|b| (b.chunks(), b.breaks)),
                };
                (req, body.clone())
            }
        };
        Issued {
            slot: op.slot,
            repo: REPOS[repo].to_string(),
            id,
            own,
            req,
            body,
            budget: op.budget,
        }
    }

    async fn send(&self, i: &Issued) -> Option<Outcome> {
        let s = self.storage;
        let (repo, id) = (i.repo.as_str(), i.id.as_str());
        let fut = async move {
            match &i.req {
                Req::Status => outcome_of_status(s.upload_status(repo, id).await, repo, id),
                Req::Cancel => match s.upload_cancel(repo, id).await {
                    Ok(()) => Outcome::Done,
                    Err(e) => outcome_of_error(e),
                },
                Req::Append { start, .. } => {
                    let body = stream(i.body.as_ref().expect("append has a body"));
                    outcome_of_status(s.upload_append(repo, id, *start, body).await, repo, id)
                }
                Req::Complete { digest, .. } => {
                    let body = i.body.as_ref().map(stream);
                    match s.upload_complete(repo, id, digest, body).await {
                        Ok(size) => Outcome::Size(size),
                        Err(e) => outcome_of_error(e),
                    }
                }
            }
        };
        Budget {
            fut: Some(Box::pin(fut)),
            left: i.budget,
        }
        .await
    }

    async fn create(&mut self, slot: usize, repo: usize) {
        let status = match self.storage.upload_create(REPOS[repo]).await {
            Ok(s) => s,
            Err(e) => self.fail(format!("upload_create({}) failed: {e:?}", REPOS[repo])),
        };
        if status.offset != 0 || status.repository != REPOS[repo] {
            self.fail(format!("upload_create gave {status:?}"));
        }
        if self.slots.iter().flatten().any(|s| s.id == status.id) {
            self.fail(format!("upload_create reused id {}", status.id));
        }
        self.log.push(format!(
            "POST {} -> slot {slot} = {}",
            REPOS[repo], status.id
        ));
        // The slot's previous session (if any) is simply abandoned.
        self.slots[slot] = Some(Slot {
            repo,
            id: status.id,
            states: Some(vec![St::Live(Bytes::new())]),
            sent: 0,
        });
    }

    async fn group(&mut self, ops: &[Op]) {
        let issued: Vec<Issued> = ops.iter().map(|op| self.issue(op)).collect();
        let got: Vec<Option<Outcome>> = {
            let futs = issued.iter().map(|i| self.send(i));
            futures::future::join_all(futs).await
        };
        for (i, g) in issued.iter().zip(&got) {
            let tag = if issued.len() > 1 { "  &" } else { "" };
            let pauses = i.body.as_ref().map_or(0, |b| {
                b.items.iter().filter(|i| matches!(i, Item::Pause)).count()
            });
            self.log.push(format!(
                "{tag}slot {} {} {} {:?} pauses={pauses} budget={:?} -> {:?}",
                i.slot, i.repo, i.id, i.req, i.budget, g
            ));
            if let Req::Complete { digest, .. } = &i.req {
                self.named.insert(digest.clone());
            }
            if let Some(Outcome::Failed(e)) = g {
                self.fail(format!("slot {} failed: {e}", i.slot));
            }
            if !i.own && g.as_ref().is_some_and(|g| g != &Outcome::Unknown) {
                self.fail(format!(
                    "slot {} named as {} {} (not its own) got {g:?}, not UploadUnknown",
                    i.slot, i.repo, i.id
                ));
            }
        }
        // Bytes sent, whether or not they were kept.
        for i in issued.iter().filter(|i| i.own) {
            let n = i.body.as_ref().map_or(0, |b| b.len());
            if let Some(slot) = self.slots[i.slot].as_mut() {
                slot.sent += n;
            }
        }
        // Each session's requests, in some order, must explain the answers.
        let mut barriers = Vec::new();
        for slot in 0..SLOTS {
            let reqs: Vec<(Req, Option<Outcome>)> = issued
                .iter()
                .zip(&got)
                .filter(|(i, _)| i.own && i.slot == slot)
                .map(|(i, g)| (i.req.clone(), g.clone()))
                .collect();
            if reqs.is_empty() {
                continue;
            }
            if reqs.iter().any(|(_, g)| g.is_none()) {
                barriers.push(slot);
            }
            self.check_offsets(slot, reqs.iter().filter_map(|(_, g)| g.as_ref()));
            self.advance(slot, &reqs);
        }
        for (i, g) in issued.iter().zip(&got) {
            if let (Req::Complete { digest, .. }, Some(Outcome::Size(size))) = (&i.req, g) {
                let entry = self
                    .stored
                    .entry(digest.clone())
                    .or_insert((*size, BTreeSet::new()));
                if entry.0 != *size {
                    let before = entry.0;
                    self.fail(format!(
                        "{digest} stored as {size} bytes, before as {before}"
                    ));
                }
                entry.1.insert(i.repo.clone());
            }
            if let (true, Req::Complete { digest, .. }, None | Some(Outcome::Size(_))) =
                (i.own, &i.req, g)
            {
                self.may_link.insert((i.repo.clone(), digest.clone()));
            }
        }
        // A dropped request may have left a write running: an empty PATCH
        // waits for the session's lock, so for it to end.
        for slot in barriers {
            let Some(s) = &self.slots[slot] else { continue };
            let issued = Issued {
                slot,
                repo: REPOS[s.repo].to_string(),
                id: s.id.clone(),
                own: true,
                req: Req::Append {
                    start: None,
                    chunks: Vec::new(),
                    breaks: false,
                },
                body: Some(Body {
                    items: Vec::new(),
                    breaks: false,
                }),
                budget: None,
            };
            let got = self.send(&issued).await;
            self.log
                .push(format!("slot {slot} barrier (empty PATCH) -> {got:?}"));
            if let Some(Outcome::Failed(e)) = &got {
                self.fail(format!("slot {slot} barrier failed: {e}"));
            }
            self.check_offsets(slot, got.iter());
            self.advance(slot, &[(issued.req, got)]);
        }
    }

    fn check_offsets<'o>(&self, slot: usize, got: impl Iterator<Item = &'o Outcome>) {
        let sent = self.slots[slot].as_ref().map_or(0, |s| s.sent);
        for g in got {
            if let Outcome::Offset(n) | Outcome::Size(n) | Outcome::Range(n) = g {
                if *n > sent {
                    self.fail(format!(
                        "slot {slot} reports {g:?} but only {sent} bytes were sent to it"
                    ));
                }
            }
        }
    }

    fn advance(&mut self, slot: usize, reqs: &[(Req, Option<Outcome>)]) {
        let Some(s) = &self.slots[slot] else { return };
        let Some(before) = &s.states else { return };
        let after = linearize(before, reqs);
        if after.is_empty() {
            self.fail(format!(
                "slot {slot}: no order of {reqs:#?}\nexplains the answers, from any of {before:?}"
            ));
        }
        let keep = after.len() <= MAX_CANDIDATES;
        if let Some(s) = self.slots[slot].as_mut() {
            s.states = keep.then_some(after);
        }
    }

    /// No PUT links a blob into a repository other than its session's.
    async fn check_links(&self) {
        for d in &self.named {
            for repo in REPOS {
                let linked = match self.storage.blob_linked(repo, d).await {
                    Ok(l) => l,
                    Err(e) => self.fail(format!("blob_linked({repo}, {d}) failed: {e:?}")),
                };
                if linked && !self.may_link.contains(&(repo.to_string(), d.clone())) {
                    self.fail(format!(
                        "{d} is linked into {repo}, where no PUT of it went"
                    ));
                }
            }
        }
    }

    async fn check_end(&mut self) {
        // Every session the model still follows answers a status request as
        // one of its possible states.
        for slot in 0..SLOTS {
            let Some(s) = &self.slots[slot] else { continue };
            let (repo, id) = (REPOS[s.repo], s.id.clone());
            let got = outcome_of_status(self.storage.upload_status(repo, &id).await, repo, &id);
            self.log
                .push(format!("slot {slot} final status -> {got:?}"));
            self.check_offsets(slot, std::iter::once(&got));
            self.advance(slot, &[(Req::Status, Some(got))]);
        }
        // Every digest a PUT named: absent, or bytes that hash to it.
        for d in &self.named {
            let bytes = match self.storage.blob_bytes(d).await {
                Ok(b) => b,
                Err(e) => self.fail(format!("blob_bytes({d}) failed: {e:?}")),
            };
            if let Some(bytes) = bytes {
                let actual = hash(d.algorithm(), &[&bytes]);
                if &actual != d {
                    self.fail(format!(
                        "blob {d} holds {} bytes that hash to {actual}",
                        bytes.len()
                    ));
                }
            }
        }
        // Every PUT answered Ok: there, of that size, linked where it was put.
        for (d, (size, repos)) in &self.stored {
            match self.storage.blob_size(d).await {
                Ok(Some(n)) if n == *size => {}
                other => self.fail(format!("blob {d} stored as {size} bytes: size {other:?}")),
            }
            for repo in repos {
                match self.storage.blob_linked(repo, d).await {
                    Ok(true) => {}
                    other => self.fail(format!("blob {d} put into {repo}: linked {other:?}")),
                }
            }
        }
    }
}

async fn run_on<S: Storage>(
    storage: &S,
    backend: &'static str,
    links_on_disk: bool,
    steps: &[Step],
) -> (Vec<String>, BTreeSet<(String, Digest)>) {
    let mut run = Run {
        storage,
        backend,
        slots: (0..SLOTS).map(|_| None).collect(),
        named: BTreeSet::new(),
        stored: BTreeMap::new(),
        may_link: BTreeSet::new(),
        log: Vec::new(),
    };
    for step in steps {
        match step {
            Step::Create { slot, repo } => run.create(*slot, *repo).await,
            Step::Group(ops) => run.group(ops).await,
        }
    }
    run.check_end().await;
    if !links_on_disk {
        run.check_links().await;
    }
    if trace() {
        eprintln!("[{backend}]\n{}", run.log.join("\n"));
    }
    (run.log, run.may_link)
}

/// The file system backend's own folder: every file under `blobs/` is
/// named by the digest of its bytes, every link under a repository's
/// `_layers/` is one a PUT there may have made, and `tmp/` is empty.
fn check_fs_tree(root: &Path, log: &[String], may_link: &BTreeSet<(String, Digest)>) {
    let fail = |what: String| -> ! { panic!("[fs] {what}\n--- requests:\n{}", log.join("\n")) };
    let list = |dir: &Path| -> Vec<PathBuf> {
        match std::fs::read_dir(dir) {
            Ok(rd) => rd.map(|e| e.expect("read_dir entry").path()).collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => fail(format!("read_dir {}: {e}", dir.display())),
        }
    };
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    for alg_dir in list(&root.join("blobs")) {
        for fan in list(&alg_dir) {
            for blob in list(&fan) {
                let (alg, fan_name, hex) = (name(&alg_dir), name(&fan), name(&blob));
                let digest: Digest = match format!("{alg}:{hex}").parse() {
                    Ok(d) => d,
                    Err(e) => fail(format!("stray file {}: {e}", blob.display())),
                };
                if !hex.starts_with(&fan_name) {
                    fail(format!("blob {} in the wrong folder", blob.display()));
                }
                let bytes = std::fs::read(&blob).expect("read blob");
                let actual = hash(digest.algorithm(), &[&bytes]);
                if actual != digest {
                    fail(format!(
                        "blob file {digest} holds {} bytes that hash to {actual}",
                        bytes.len()
                    ));
                }
            }
        }
    }
    for repo in REPOS {
        for alg_dir in list(&root.join("repositories").join(repo).join("_layers")) {
            for link in list(&alg_dir) {
                let digest: Digest = match format!("{}:{}", name(&alg_dir), name(&link)).parse() {
                    Ok(d) => d,
                    Err(e) => fail(format!("stray link {}: {e}", link.display())),
                };
                if !may_link.contains(&(repo.to_string(), digest.clone())) {
                    fail(format!(
                        "{digest} is linked into {repo}, where no PUT of it went"
                    ));
                }
            }
        }
    }
    let left = list(&root.join("tmp"));
    if !left.is_empty() {
        fail(format!("tmp/ not empty once all requests ended: {left:?}"));
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}

/// A folder for this process's storage roots: on tmpfs when there is one
/// (fsync is then free), else in the temporary folder.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("BERTH_FUZZ_DIR")
            .map(PathBuf::from)
            .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
            .unwrap_or_else(std::env::temp_dir);
        // Folders of fuzzing processes that are gone (a crash leaves its
        // last input's storage behind).
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("berth-fuzz-uploads-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = base.join(format!("berth-fuzz-uploads-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create fuzz scratch folder");
        dir
    })
}

/// BERTH_FUZZ_TRACE=1: print every input's requests and answers.
fn trace() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("BERTH_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

/// One fuzz input (the body of `fuzz_targets/uploads.rs`; also replayed by
/// `tests/fuzz_regressions.rs`).
pub fn run(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let steps = match (Decoder {
        u: &mut u,
        big_used: false,
        created: [false; SLOTS],
    })
    .steps()
    {
        Ok(steps) => steps,
        Err(_) => return,
    };
    if steps.is_empty() {
        return;
    }
    static N: AtomicU64 = AtomicU64::new(0);
    let root = scratch().join(N.fetch_add(1, Ordering::Relaxed).to_string());
    let rt = runtime();

    let memory = MemoryStorage::new();
    rt.block_on(run_on(&memory, "memory", false, &steps));

    let fs = FsStorage::open(&root).expect("open FsStorage");
    let (log, may_link) = rt.block_on(run_on(&fs, "fs", true, &steps));
    check_fs_tree(&root, &log, &may_link);
    drop(fs);
    let _ = std::fs::remove_dir_all(&root);
}
