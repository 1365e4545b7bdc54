//! Every assertion of the suite can fail, and every registry defect of the
//! kinds below is noticed by some check.
//!
//! `yes_server.rs` shows that each check fails against a server that says yes
//! to everything, but that proves only each check's first assertion. Here the
//! suite runs against the real in-process Berth registry (memory storage)
//! behind a layer that breaks responses, one kind of defect at a time:
//!
//! 1. Record: the whole suite runs once, cleanly, and must pass. The layer
//!    notes every response: its class (method, endpoint kind, status), which
//!    check saw it and its ordinal within that check and class.
//! 2. Defects (phase 1): derived from what was recorded, each applied to every
//!    response of one class (a registry bug is systematic): a wrong status;
//!    each spec header present dropped and corrupted; a `Link` added to list
//!    answers (rel="next", and one that is not); blob and manifest bodies
//!    truncated and flipped; JSON bodies emptied and mutated (each member
//!    removed, each value changed or retyped, arrays shortened, extended,
//!    reversed, error codes lower-cased); DELETEs answered 202 without
//!    deleting; tag lists that keep deleted tags. Each runs with the checks
//!    that saw that class. It is noticed when one of them fails; one no check
//!    notices must match a rule of [`UNCHECKED`], with the spec's reason. A
//!    defect a rule covers is listed, not run: it can make no check fail.
//!    `FAULTS_ALL=1` runs those too, and fails if a rule covers a defect that
//!    some check notices (a rule too broad hides assertions).
//! 3. Assertions (phase 2): every assertion site of the suite (each line of
//!    `src/checks/*.rs` and of the fixture helpers in `src/http.rs` that
//!    asserts, each `fail!` in the response helpers) must fail under some
//!    fault. A class-wide defect stops a check at its first assertion on that
//!    class, so sites that look at a later response of the same class (after
//!    fixtures, or a second request) are then hit with faults aimed at one
//!    response (the k-th of its class in one check), also with other wrong
//!    statuses, a wrong status with a missing header or a wrong error code,
//!    redirects, and manifest PUTs answered without being done; for each such
//!    site a few at a time, until it fails. The checks that can reach a site
//!    are found from the source: the check function holding the line, or the
//!    checks calling the helper that holds it. Sites no fault reaches must be
//!    in [`UNREACHED`] with the reason.
//!
//! The faults come from Berth's answers, so a new header or status in the
//! registry can add a defect no check notices: the test then names it, to be
//! checked or given a rule. The concurrent-upload check makes one ordinal
//! racy (see [`UNREACHED`]).
//!
//! `cargo test -p berth-conformance --test faults -- --nocapture` prints the
//! report (FAULTS_SITES=1 adds which fault failed each site).

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use berth_conformance::{list, run_with, CheckResult, Options};
use serde_json::Value;
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The headers whose absence or corruption is tried on every response that has them.
const HEADERS: &[&str] = &[
    "location",
    "docker-content-digest",
    "content-length",
    "content-type",
    "range",
    "content-range",
    "link",
    "oci-subject",
    "oci-filters-applied",
    "docker-upload-uuid",
    "www-authenticate",
    "docker-distribution-api-version",
];

/// Headers not tried, and why.
fn header_not_tried(class: &Class, header: &str, bodies_empty: bool) -> Option<&'static str> {
    match header {
        "docker-upload-uuid" => Some("not in the distribution-spec (a Docker-era extra)"),
        "docker-distribution-api-version" if class.kind != "base" => {
            Some("the spec names it for GET /v2/ only")
        }
        "content-length" if bodies_empty && class.method != "HEAD" => {
            Some("no body to describe: only HTTP framing would break")
        }
        _ => None,
    }
}

/// One response as the record run saw it.
#[derive(Clone, Debug)]
struct Seen {
    check: usize,
    class: Class,
    /// Among the responses of its class in its check.
    ordinal: usize,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The responses a fault applies to: method, endpoint kind, status.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Class {
    method: String,
    kind: &'static str,
    status: u16,
}

impl std::fmt::Display for Class {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.method, self.kind, self.status)
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Clone, Debug, PartialEq)]
enum JsonOp {
    /// Remove the member at the path.
    Remove,
    /// A string gets an extra "X", a number +1, a bool flipped.
    Change,
    /// An upper-case string (an error code) in lower case.
    Lower,
    /// A value of another JSON type (a string becomes 7, anything else "x").
    Retype,
    /// Arrays: drop the last element; add one (a copy of the first, or "x"); reverse.
    DropLast,
    Push,
    Reverse,
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    Status(u16),
    DropHeader(&'static str),
    CorruptHeader(&'static str),
    /// `Link: <same path>; rel="next"` on a list answer that had none.
    AddLink,
    /// `Link: <same path>; rel="prev"` on a list answer that had none.
    AddOtherLink,
    /// The body without its last byte (Content-Length adjusted).
    Truncate,
    /// One byte of the body changed (the middle one).
    Flip,
    /// No body at all.
    Empty,
    Json(Vec<Seg>, JsonOp),
    /// The request is not passed on: the answer is the usual success
    /// (DELETE: 202; PUT of a manifest: 201 with Location and the body's digest).
    Ignore,
    /// Tag lists still hold every tag ever pushed to the repository (a
    /// listing that misses deletions).
    StaleTags,
    /// 301 to the request's own path.
    RedirectSelf,
    /// Several at once (aimed faults only).
    Both(Vec<Action>),
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Status(s) => write!(f, "status -> {s}"),
            Action::DropHeader(h) => write!(f, "drop {h}"),
            Action::CorruptHeader(h) => write!(f, "corrupt {h}"),
            Action::AddLink => write!(f, "add Link rel=next"),
            Action::AddOtherLink => write!(f, "add Link rel=prev"),
            Action::Truncate => write!(f, "truncate body"),
            Action::Flip => write!(f, "flip a body byte"),
            Action::Empty => write!(f, "empty body"),
            Action::Json(at, op) => write!(f, "json {} {op:?}", json_path(at)),
            Action::Ignore => write!(f, "answered without doing it"),
            Action::StaleTags => write!(f, "deleted tags still listed"),
            Action::RedirectSelf => write!(f, "301 to itself"),
            Action::Both(list) => {
                let parts: Vec<String> = list.iter().map(|a| a.to_string()).collect();
                write!(f, "{}", parts.join(" + "))
            }
        }
    }
}

fn json_path(at: &[Seg]) -> String {
    let mut s = String::from("$");
    for seg in at {
        match seg {
            Seg::Key(k) => s.push_str(&format!(".{k}")),
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// `action` on the responses of `class`: all of them, or (`ordinal`) only the
/// k-th in a run of one check.
#[derive(Clone, Debug)]
struct Fault {
    class: Class,
    action: Action,
    ordinal: Option<usize>,
    /// The checks to run: those that saw this class in the record run.
    checks: Vec<&'static str>,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ordinal {
            None => write!(f, "{}: {}", self.class, self.action),
            Some(k) => write!(
                f,
                "{} #{k} in {}: {}",
                self.class,
                self.checks.join(","),
                self.action
            ),
        }
    }
}

/// Which API endpoint a path is.
fn endpoint_kind(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix("/v2/") else {
        return if path == "/v2" { "base" } else { "other" };
    };
    if rest.is_empty() {
        "base"
    } else if rest.starts_with("_catalog") {
        "catalog"
    } else if rest.ends_with("/blobs/uploads/") {
        "upload-start"
    } else if rest.contains("/blobs/uploads/") {
        "upload"
    } else if rest.contains("/blobs/") {
        "blob"
    } else if rest.contains("/manifests/") {
        "manifest"
    } else if rest.ends_with("/tags/list") {
        "tags"
    } else if rest.contains("/referrers/") {
        "referrers"
    } else {
        "other"
    }
}

/// The fault layer's state for one run.
struct Layer {
    fault: Option<Fault>,
    /// Index of the check running now (advanced after each check).
    current: AtomicUsize,
    /// Responses so far per (check, class), for ordinals.
    counts: Mutex<HashMap<(usize, Class), usize>>,
    seen: Mutex<Vec<Seen>>,
    applied: AtomicUsize,
    /// Every tag pushed per repository, for `Action::StaleTags`.
    tags: Mutex<HashMap<String, BTreeSet<String>>>,
}

/// What `Action::Ignore` answers instead of doing the request.
async fn ignored(method: &str, path: &str, req: Request) -> Response {
    if method == "DELETE" {
        return StatusCode::ACCEPTED.into_response();
    }
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap_or_default();
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
    let mut r = StatusCode::CREATED.into_response();
    let h = r.headers_mut();
    h.insert("location", HeaderValue::from_str(path).expect("location"));
    h.insert(
        "docker-content-digest",
        HeaderValue::from_str(&digest).expect("digest"),
    );
    r
}

async fn inject(State(layer): State<Arc<Layer>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.to_string())
        .unwrap_or_default();
    let kind = endpoint_kind(req.uri().path());
    let check = layer.current.load(Ordering::SeqCst);
    // Action::Ignore decides before the request is done: it matches the class
    // the request would have had in the record run.
    if let Some(f) = &layer.fault {
        if f.action == Action::Ignore && f.class.method == method && f.class.kind == kind {
            let class = f.class.clone();
            let k = next_ordinal(&layer, check, &class);
            if f.ordinal.is_none_or(|o| o == k) {
                layer.applied.fetch_add(1, Ordering::Relaxed);
                return ignored(&method, &path, req).await;
            }
        }
    }
    let response = next.run(req).await;
    let (mut parts, body) = response.into_parts();
    let mut sized = body.size_hint().exact().is_some();
    let mut body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_default();
    if method == "HEAD" {
        // hyper never sends it.
        body.clear();
    }
    let class = Class {
        method,
        kind,
        status: parts.status.as_u16(),
    };
    let (plain_path, _) = path.split_once('?').unwrap_or((&path, ""));
    if class.method == "PUT" && class.kind == "manifest" && class.status == 201 {
        if let Some((repo, reference)) = plain_path
            .strip_prefix("/v2/")
            .and_then(|r| r.rsplit_once("/manifests/"))
        {
            if !reference.contains(':') {
                let mut tags = layer.tags.lock().expect("tags");
                tags.entry(repo.to_string())
                    .or_default()
                    .insert(reference.to_string());
            }
        }
    }
    let pushed: Vec<String> = plain_path
        .strip_prefix("/v2/")
        .and_then(|r| r.strip_suffix("/tags/list"))
        .and_then(|repo| layer.tags.lock().expect("tags").get(repo).cloned())
        .map(|t| t.into_iter().collect())
        .unwrap_or_default();
    match &layer.fault {
        None => {
            let ordinal = next_ordinal(&layer, check, &class);
            layer.seen.lock().expect("seen").push(Seen {
                check,
                class,
                ordinal,
                headers: parts
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_string(),
                            String::from_utf8_lossy(v.as_bytes()).to_string(),
                        )
                    })
                    .collect(),
                body: body.clone(),
            });
        }
        Some(f) if f.action != Action::Ignore && f.class == class => {
            let k = next_ordinal(&layer, check, &class);
            if f.ordinal.is_none_or(|o| o == k)
                && apply(&f.action, &path, &pushed, &mut parts, &mut body, &mut sized)
            {
                layer.applied.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(_) => {}
    }
    let body = if sized {
        Body::from(body)
    } else {
        // No size hint: hyper sends the body chunked, without Content-Length.
        Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(
            Bytes::from(body),
        )]))
    };
    Response::from_parts(parts, body)
}

fn next_ordinal(layer: &Layer, check: usize, class: &Class) -> usize {
    let mut counts = layer.counts.lock().expect("counts");
    let n = counts.entry((check, class.clone())).or_insert(0);
    *n += 1;
    *n - 1
}

/// Applies a fault; false when it found nothing to change.
fn apply(
    action: &Action,
    path: &str,
    pushed: &[String],
    parts: &mut axum::http::response::Parts,
    body: &mut Vec<u8>,
    sized: &mut bool,
) -> bool {
    let set_len = |parts: &mut axum::http::response::Parts, len: usize| {
        if parts.headers.contains_key("content-length") {
            parts
                .headers
                .insert("content-length", HeaderValue::from(len));
        }
    };
    match action {
        Action::Status(s) => {
            parts.status = StatusCode::from_u16(*s).expect("status");
            true
        }
        Action::DropHeader(name) => {
            if *name == "content-length" {
                // Otherwise hyper would put it back from the body's size.
                *sized = false;
            }
            parts.headers.remove(*name).is_some()
        }
        Action::CorruptHeader(name) => {
            let Some(v) = parts.headers.get(*name) else {
                return false;
            };
            let v = String::from_utf8_lossy(v.as_bytes()).to_string();
            let bad = corrupt(name, &v);
            parts
                .headers
                .insert(*name, HeaderValue::from_str(&bad).expect("header"));
            true
        }
        Action::AddLink | Action::AddOtherLink => {
            if parts.headers.contains_key("link") {
                return false;
            }
            let rel = if *action == Action::AddLink {
                "next"
            } else {
                "prev"
            };
            let link = format!("<{path}>; rel=\"{rel}\"");
            parts
                .headers
                .insert("link", HeaderValue::from_str(&link).expect("link"));
            true
        }
        Action::Ignore => false,
        Action::StaleTags => {
            let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
                return false;
            };
            let Some(tags) = v.get_mut("tags").and_then(Value::as_array_mut) else {
                return false;
            };
            let mut all: Vec<String> = tags
                .iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            let before = all.len();
            for t in pushed {
                if !all.contains(t) {
                    all.push(t.clone());
                }
            }
            if all.len() == before {
                return false;
            }
            all.sort();
            *tags = all.into_iter().map(Value::from).collect();
            *body = serde_json::to_vec(&v).expect("json");
            set_len(parts, body.len());
            true
        }
        Action::RedirectSelf => {
            parts.status = StatusCode::MOVED_PERMANENTLY;
            parts
                .headers
                .insert("location", HeaderValue::from_str(path).expect("location"));
            true
        }
        Action::Both(list) => {
            let mut any = false;
            for a in list {
                any |= apply(a, path, pushed, parts, body, sized);
            }
            any
        }
        Action::Truncate => {
            if body.pop().is_none() {
                return false;
            }
            set_len(parts, body.len());
            true
        }
        Action::Flip => {
            if body.is_empty() {
                return false;
            }
            let i = body.len() / 2;
            body[i] ^= 0x01;
            true
        }
        Action::Empty => {
            if body.is_empty() {
                return false;
            }
            body.clear();
            set_len(parts, 0);
            true
        }
        Action::Json(at, op) => {
            let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
                return false;
            };
            if !mutate(&mut v, at, op) {
                return false;
            }
            *body = serde_json::to_vec(&v).expect("json");
            set_len(parts, body.len());
            true
        }
    }
}

/// A wrong value for a header: another content type, a length or range end
/// off by one, a digest with its last hex digit changed, a Link that is not
/// rel="next", a Location to another path; otherwise the value plus "x".
fn corrupt(name: &str, v: &str) -> String {
    match name {
        "content-type" => {
            if v.starts_with("application/json") {
                "text/plain".into()
            } else {
                "application/json".into()
            }
        }
        "content-length" => format!("{}", v.parse::<u64>().unwrap_or(0) + 1),
        "range" => match v.split_once('-') {
            Some((a, b)) => format!("{a}-{}", b.parse::<u64>().unwrap_or(0) + 1),
            None => format!("{v}x"),
        },
        "content-range" => match v.rsplit_once('/') {
            Some((a, n)) => format!("{a}/{}", n.parse::<u64>().unwrap_or(0) + 1),
            None => format!("{v}x"),
        },
        "link" => v.replace("next", "prev"),
        "location" => match v.split_once('?') {
            Some((p, q)) => format!("{p}x?{q}"),
            None => format!("{v}x"),
        },
        _ => {
            let is_digest = v
                .split_once(':')
                .is_some_and(|(_, h)| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()));
            if is_digest {
                let mut s = v.to_string();
                let last = s.pop().unwrap_or('0');
                s.push(if last == '0' { '1' } else { '0' });
                s
            } else {
                format!("{v}x")
            }
        }
    }
}

fn mutate(v: &mut Value, at: &[Seg], op: &JsonOp) -> bool {
    let Some((last, parent_path)) = at.split_last() else {
        return mutate_value(v, op);
    };
    let mut parent = v;
    for seg in parent_path {
        parent = match (seg, parent) {
            (Seg::Key(k), Value::Object(m)) => match m.get_mut(k) {
                Some(x) => x,
                None => return false,
            },
            (Seg::Index(i), Value::Array(a)) => match a.get_mut(*i) {
                Some(x) => x,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, parent, op) {
        (Seg::Key(k), Value::Object(m), JsonOp::Remove) => m.remove(k).is_some(),
        (Seg::Index(i), Value::Array(a), JsonOp::Remove) if *i < a.len() => {
            a.remove(*i);
            true
        }
        (Seg::Key(k), Value::Object(m), op) => m.get_mut(k).is_some_and(|x| mutate_value(x, op)),
        (Seg::Index(i), Value::Array(a), op) => a.get_mut(*i).is_some_and(|x| mutate_value(x, op)),
        _ => false,
    }
}

fn mutate_value(v: &mut Value, op: &JsonOp) -> bool {
    match (op, &mut *v) {
        (JsonOp::Change, Value::String(s)) => {
            s.push('X');
            true
        }
        (JsonOp::Lower, Value::String(s)) => {
            *s = s.to_lowercase();
            true
        }
        (JsonOp::Change, Value::Number(n)) => {
            *v = Value::from(n.as_u64().unwrap_or(0) + 1);
            true
        }
        (JsonOp::Change, Value::Bool(b)) => {
            *b = !*b;
            true
        }
        (JsonOp::Retype, Value::String(_)) => {
            *v = Value::from(7);
            true
        }
        (JsonOp::Retype, _) => {
            *v = Value::from("x");
            true
        }
        (JsonOp::DropLast, Value::Array(a)) => a.pop().is_some(),
        (JsonOp::Push, Value::Array(a)) => {
            let extra = a.first().cloned().unwrap_or_else(|| Value::from("x"));
            a.push(extra);
            true
        }
        (JsonOp::Reverse, Value::Array(a)) if a.len() > 1 => {
            a.reverse();
            true
        }
        _ => false,
    }
}

/// Structural mutations of a JSON document: each member removed, each scalar
/// changed and retyped (error codes also lower-cased), containers retyped,
/// arrays shortened, extended and reversed; arrays are entered at their first
/// element only.
fn json_mutations(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, JsonOp)>) {
    if !at.is_empty() {
        out.push((at.clone(), JsonOp::Retype));
    }
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push(Seg::Key(k.clone()));
                out.push((at.clone(), JsonOp::Remove));
                json_mutations(x, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            if !a.is_empty() {
                out.push((at.clone(), JsonOp::DropLast));
            }
            out.push((at.clone(), JsonOp::Push));
            if a.len() > 1 {
                out.push((at.clone(), JsonOp::Reverse));
            }
            if let Some(first) = a.first() {
                at.push(Seg::Index(0));
                json_mutations(first, at, out);
                at.pop();
            }
        }
        Value::String(s) => {
            out.push((at.clone(), JsonOp::Change));
            if !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                out.push((at.clone(), JsonOp::Lower));
            }
        }
        Value::Number(_) | Value::Bool(_) => {
            out.push((at.clone(), JsonOp::Change));
        }
        Value::Null => {}
    }
}

/// `*` matches any run of characters, `?` any one character, `|` separates
/// alternatives.
fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| go(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && go(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && go(rest, &t[1..]),
        }
    }
    let t: Vec<char> = text.chars().collect();
    pattern.split('|').any(|alt| {
        let p: Vec<char> = alt.chars().collect();
        go(&p, &t)
    })
}

/// The assertion kinds each call on a line stands for.
const TOKENS: &[(&str, &[&str])] = &[
    (".expect_status(", &["status"]),
    (".expect_error(", &["status", "error-body"]),
    (".expect_error_body(", &["error-body"]),
    (".expect_header(", &["header"]),
    (".require_header(", &["header"]),
    (".location()", &["header"]),
    (".json()", &["json"]),
    (".expect_body(", &["body"]),
    (".link_next()", &["link"]),
    ("bail!(", &["check"]),
    ("failed!(", &["check"]),
];

/// Every assertion site of the suite, from its source: `file:line` -> (line text, kinds).
fn assertion_sites() -> BTreeMap<(String, &'static str), String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut out = BTreeMap::new();
    let mut scan = |rel: &str, text: &str, from: Option<&str>, to: Option<&str>| {
        let mut on = from.is_none();
        for (i, line) in text.lines().enumerate() {
            if let Some(f) = from {
                if line.starts_with(f) {
                    on = true;
                }
            }
            if let Some(t) = to {
                if line.starts_with(t) {
                    on = false;
                }
            }
            let code = line.split("//").next().unwrap_or("");
            if !on || code.contains("anyhow::bail!(") {
                continue;
            }
            for (tok, kinds) in TOKENS {
                if code.contains(tok) {
                    for k in *kinds {
                        out.insert(
                            (format!("conformance/{rel}:{}", i + 1), *k),
                            line.trim().to_string(),
                        );
                    }
                }
            }
        }
    };
    for f in ["mod", "push", "pull", "discovery", "management"] {
        let rel = format!("src/checks/{f}.rs");
        let text = std::fs::read_to_string(format!("{root}/{rel}")).expect("source");
        scan(&rel, &text, None, Some("#[cfg(test)]"));
    }
    let text = std::fs::read_to_string(format!("{root}/src/http.rs")).expect("source");
    // The fixture helpers (impl Ctx) assert; the Resp helpers' own calls report their caller.
    scan(
        "src/http.rs",
        &text,
        Some("impl Ctx {"),
        Some("/// Path and query for messages"),
    );
    out
}

/// The `fail!` lines inside the response helpers: each must fail at least once.
fn helper_assertions() -> BTreeMap<String, String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/src/http.rs")).expect("source");
    let mut out = BTreeMap::new();
    let mut on = false;
    for (i, line) in text.lines().enumerate() {
        if line.starts_with("impl Resp {") {
            on = true;
        } else if on && line.starts_with('}') {
            on = false;
        }
        if on && (line.trim_start().starts_with("fail!(") || line.contains("=> fail!(")) {
            out.insert(
                format!("conformance/src/http.rs:{}", i + 1),
                line.trim().to_string(),
            );
        }
    }
    out
}

/// A plausible wrong status: another success code for a success, the other
/// common client error for a client error.
fn wrong_status(s: u16) -> u16 {
    match s {
        200 => 203,
        201 | 202 | 204 | 206 => 200,
        400 => 404,
        404 | 405 | 413 | 416 => 400,
        300..=399 => 200,
        _ => 500,
    }
}

/// A second wrong status, for the answers a check treats differently: a
/// server error for a client error, the other of 201/202, deletion disabled
/// (405), content missing (404).
fn other_status(method: &str, s: u16) -> u16 {
    match s {
        400..=599 => 500,
        202 if method == "DELETE" => 405,
        201 => 202,
        202 => 201,
        206 => 416,
        _ => 404,
    }
}

/// Whether `Action::Ignore` is tried on a class: DELETEs, and manifest PUTs.
fn ignorable(c: &Class) -> bool {
    (c.method == "DELETE" && c.status == 202)
        || (c.method == "PUT" && c.kind == "manifest" && c.status == 201)
}

/// The body and header actions a set of responses of one class suggests.
fn actions_for(class: &Class, list: &[&Seen]) -> Vec<Action> {
    let bodies_empty = list.iter().all(|s| s.body.is_empty());
    let mut actions = Vec::new();
    for h in HEADERS {
        if header_not_tried(class, h, bodies_empty).is_some() {
            continue;
        }
        if list.iter().any(|s| s.header(h).is_some()) {
            actions.push(Action::DropHeader(h));
            actions.push(Action::CorruptHeader(h));
        }
    }
    let is_list = matches!(class.kind, "tags" | "catalog" | "referrers");
    if is_list && class.status == 200 && list.iter().any(|s| s.header("link").is_none()) {
        actions.push(Action::AddLink);
        actions.push(Action::AddOtherLink);
    }
    let content = matches!(class.kind, "blob" | "manifest") && class.status < 300;
    if !bodies_empty {
        if content {
            actions.push(Action::Truncate);
            actions.push(Action::Flip);
        } else {
            actions.push(Action::Empty);
            let mut muts: Vec<(Vec<Seg>, JsonOp)> = Vec::new();
            let mut plain = false;
            for s in list.iter().filter(|s| !s.body.is_empty()) {
                match serde_json::from_slice::<Value>(&s.body) {
                    Ok(v) => {
                        let mut m = Vec::new();
                        json_mutations(&v, &mut Vec::new(), &mut m);
                        for x in m {
                            if !muts.contains(&x) {
                                muts.push(x);
                            }
                        }
                    }
                    Err(_) => plain = true,
                }
            }
            if plain {
                actions.push(Action::Flip);
            }
            actions.extend(muts.into_iter().map(|(at, op)| Action::Json(at, op)));
        }
    }
    actions
}

/// Phase 1: one fault per class and action, on every response of the class,
/// run with the checks that saw the class.
fn class_faults(order: &[&'static str], seen: &[Seen]) -> Vec<Fault> {
    let mut by_class: BTreeMap<Class, Vec<&Seen>> = BTreeMap::new();
    for s in seen {
        by_class.entry(s.class.clone()).or_default().push(s);
    }
    let mut out = Vec::new();
    for (class, list) in by_class {
        let mut checks: Vec<&'static str> = Vec::new();
        for s in &list {
            if !checks.contains(&order[s.check]) {
                checks.push(order[s.check]);
            }
        }
        let mut actions = vec![Action::Status(wrong_status(class.status))];
        if class.method == "DELETE" && ignorable(&class) {
            actions.push(Action::Ignore);
        }
        if class.kind == "tags" && class.status == 200 {
            actions.push(Action::StaleTags);
        }
        actions.extend(actions_for(&class, &list));
        for action in actions {
            out.push(Fault {
                class: class.clone(),
                action,
                ordinal: None,
                checks: checks.clone(),
            });
        }
    }
    out
}

/// A function of the check sources.
struct Func {
    file: String,
    name: String,
    lines: std::ops::RangeInclusive<usize>,
    body: String,
}

fn functions() -> Vec<Func> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut out = Vec::new();
    for f in ["mod", "push", "pull", "discovery", "management"] {
        let file = format!("conformance/src/checks/{f}.rs");
        let text = std::fs::read_to_string(format!("{root}/src/checks/{f}.rs")).expect("source");
        let lines: Vec<&str> = text.lines().collect();
        let mut starts: Vec<(usize, String)> = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let l = l.strip_prefix("pub ").unwrap_or(l);
            let l = l.strip_prefix("async ").unwrap_or(l);
            if let Some(rest) = l.strip_prefix("fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                starts.push((i + 1, name));
            }
            if l.starts_with("#[cfg(test)]") {
                starts.push((i + 1, String::new()));
            }
        }
        for (j, (start, name)) in starts.iter().enumerate() {
            let end = starts.get(j + 1).map(|(s, _)| s - 1).unwrap_or(lines.len());
            if name.is_empty() {
                continue;
            }
            out.push(Func {
                file: file.clone(),
                name: name.clone(),
                lines: *start..=end,
                body: lines[start - 1..end].join("\n"),
            });
        }
    }
    out
}

/// The ids of the v1.1 checks. The NEXT checks (`src/checks/next.rs`, features after v1.1)
/// need registry options that contradict a v1.1 check; they are shown to fail by
/// `yes_server.rs` and against a strict registry by the workspace's `tests/conformance.rs`.
fn v1_1_ids() -> Vec<&'static str> {
    list()
        .into_iter()
        .filter(|c| c.level != berth_conformance::Level::Next)
        .map(|c| c.id)
        .collect()
}

/// Check function name -> check ids, from the `check!(id, level, about, fn)` tables.
fn check_table() -> HashMap<String, Vec<&'static str>> {
    let root = env!("CARGO_MANIFEST_DIR");
    let ids = v1_1_ids();
    let mut out: HashMap<String, Vec<&'static str>> = HashMap::new();
    for f in ["mod", "push", "pull", "discovery", "management"] {
        let text = std::fs::read_to_string(format!("{root}/src/checks/{f}.rs")).expect("source");
        for (at, _) in text.match_indices("check!(") {
            // Split the macro's arguments at top-level commas, outside strings.
            let mut args = vec![String::new()];
            let (mut depth, mut in_str, mut esc) = (1, false, false);
            for ch in text[at + 7..].chars() {
                if in_str {
                    args.last_mut().expect("arg").push(ch);
                    match (esc, ch) {
                        (true, _) => esc = false,
                        (false, '\\') => esc = true,
                        (false, '"') => in_str = false,
                        _ => {}
                    }
                    continue;
                }
                match ch {
                    '"' => in_str = true,
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        args.push(String::new());
                        continue;
                    }
                    _ => {}
                }
                args.last_mut().expect("arg").push(ch);
            }
            if args.len() < 4 {
                continue;
            }
            let id = args[0].trim().trim_matches('"');
            let name = args[3].trim().to_string();
            if let Some(id) = ids.iter().find(|i| **i == id) {
                out.entry(name).or_default().push(id);
            }
        }
    }
    out
}

/// The checks that can reach a line of the check sources: the check whose
/// function holds it, or the checks that call the helper holding it.
fn owners(
    funcs: &[Func],
    table: &HashMap<String, Vec<&'static str>>,
    site: &str,
) -> Vec<&'static str> {
    let Some((file, line)) = site.rsplit_once(':') else {
        return Vec::new();
    };
    let line: usize = line.parse().unwrap_or(0);
    let Some(f) = funcs
        .iter()
        .find(|f| f.file == file && f.lines.contains(&line))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut todo = vec![f.name.clone()];
    let mut done = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if !done.insert(name.clone()) {
            continue;
        }
        if let Some(ids) = table.get(&name) {
            for id in ids {
                if !out.contains(id) {
                    out.push(*id);
                }
            }
            continue;
        }
        let call = format!("{name}(");
        for g in funcs {
            if g.name != name && g.body.contains(&call) {
                todo.push(g.name.clone());
            }
        }
    }
    out
}

/// Phase 2: faults aimed at one response that may make `site` fail, most
/// likely first: in each check that can reach the site, its responses from the
/// last to the first, with the actions that fit the site's kind. Phase 1's
/// actions only on a response after the first of its class in the check (on
/// the first they act as in phase 1); other statuses, combinations and
/// ignored requests on any.
fn candidates(
    order: &[&'static str],
    seen: &[Seen],
    owners: &[&'static str],
    kind: &str,
) -> Vec<Fault> {
    let mut out: Vec<Fault> = Vec::new();
    for x in owners {
        let Some(xi) = order.iter().position(|o| o == x) else {
            continue;
        };
        for s in seen.iter().filter(|s| s.check == xi).rev() {
            let class = &s.class;
            let wrong = Action::Status(wrong_status(class.status));
            let other = Action::Status(other_status(&class.method, class.status));
            let error = class.status >= 400 && !s.body.is_empty();
            let code = Action::Json(
                vec![
                    Seg::Key("errors".into()),
                    Seg::Index(0),
                    Seg::Key("code".into()),
                ],
                JsonOp::Change,
            );
            let mut later = Vec::new();
            let mut any = vec![other.clone()];
            match kind {
                "status" => later.push(wrong.clone()),
                "header" => {
                    later.extend(actions_for(class, &[s]));
                    for h in HEADERS {
                        if s.header(h).is_some() {
                            any.push(Action::Both(vec![other.clone(), Action::DropHeader(h)]));
                        }
                    }
                    if class.status >= 400 {
                        any.push(Action::Status(301));
                        any.push(Action::RedirectSelf);
                    }
                }
                _ => {
                    if kind == "check" {
                        later.push(wrong.clone());
                        if ignorable(class) {
                            any.push(Action::Ignore);
                        }
                        if class.status >= 400 {
                            any.push(Action::Status(301));
                            any.push(Action::RedirectSelf);
                        }
                    }
                    later.extend(actions_for(class, &[s]));
                    if error {
                        any.push(Action::Both(vec![wrong.clone(), code.clone()]));
                        any.push(Action::Both(vec![other.clone(), code.clone()]));
                    }
                }
            }
            let mut actions = any;
            if s.ordinal > 0 {
                actions.extend(later);
            }
            for action in actions {
                out.push(Fault {
                    class: class.clone(),
                    action,
                    ordinal: Some(s.ordinal),
                    checks: vec![*x],
                });
            }
        }
    }
    out
}

/// At most this many aimed faults per site.
const PHASE2_LIMIT: usize = 120;

/// What one run gave.
struct Run {
    results: Vec<CheckResult>,
    seen: Vec<Seen>,
    applied: usize,
}

/// Runs exactly the checks `ids` (in suite order) against a fresh registry
/// behind the fault layer.
async fn run_suite(ids: &[&'static str], fault: Option<Fault>) -> Run {
    let storage = Arc::new(berth_storage::MemoryStorage::new());
    let layer = Arc::new(Layer {
        fault,
        current: AtomicUsize::new(0),
        counts: Mutex::default(),
        seen: Mutex::default(),
        applied: AtomicUsize::new(0),
        tags: Mutex::default(),
    });
    let app = berth_registry::Registry::new(storage)
        .router()
        .layer(middleware::from_fn_with_state(layer.clone(), inject));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let opts = Options {
        url: format!("http://{addr}"),
        namespace: "conformance/faults".into(),
        only: Some(format!("={}", ids.join(","))),
        credentials: None,
        next: false,
    };
    let l2 = layer.clone();
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        run_with(&opts, move |_| {
            l2.current.fetch_add(1, Ordering::SeqCst);
        }),
    )
    .await;
    server.abort();
    let report = report.unwrap_or_else(|_| panic!("a run of {ids:?} hung for 120 s"));
    let seen = std::mem::take(&mut *layer.seen.lock().expect("seen"));
    Run {
        results: report.results,
        seen,
        applied: layer.applied.load(Ordering::Relaxed),
    }
}

/// Runs faults, four at a time.
async fn run_faults(faults: &[Fault]) -> Vec<(Fault, Run)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for f in faults.iter().cloned() {
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            let run = run_suite(&f.checks, Some(f.clone())).await;
            (f, run)
        }));
    }
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.expect("fault run"));
    }
    runs
}

/// A defect no check notices, on purpose: a glob pattern (see [`glob`]) over `"<METHOD> <kind> <status>: <action>"`, and the reason.
struct Unchecked {
    pattern: &'static str,
    reason: &'static str,
}

const UNCHECKED: &[Unchecked] = &[
    // Error answers.
    Unchecked {
        pattern: "* * 4*: * content-type",
        reason: "a 4xx body MAY be in any format (spec, Error Codes), so its Content-Type says nothing",
    },
    Unchecked {
        pattern: "* * 4*: json $.errors[0].message Remove|* * 4*: json $.errors[0].message Change",
        reason: "an error's message is OPTIONAL and MAY be empty; only a non-string one is wrong",
    },
    Unchecked {
        pattern: "* * 4*: json $.errors[0].detail *",
        reason: "an error's detail is OPTIONAL and MAY be any JSON",
    },
    Unchecked {
        pattern: "* * 4*: json $.errors Push",
        reason: "an error body holds one or more errors",
    },
    Unchecked {
        pattern: "GET blob 416: empty body|PATCH upload 416: empty body|PUT manifest 413: empty body|DELETE blob 400: empty body",
        reason: "a 4xx body MAY be in any format, empty included; these checks ask only for the status (GET blob 416, PATCH 416, PUT manifest 413, DELETE of a malformed digest)",
    },
    Unchecked {
        pattern: "DELETE blob 400: status -> 404|GET blob 400: status -> 404|HEAD blob 400: status -> 404|GET manifest 400: status -> 404|GET tags 400: status -> 404|POST upload-start 400: status -> 404",
        reason: "a malformed name or digest may be answered 400 or 404: the spec lists 404 as these endpoints' failure and names no status for malformed references",
    },
    Unchecked {
        pattern: "PUT manifest 413: status -> 400",
        reason: "413 is a SHOULD: push.manifest.too-large accepts 400 SIZE_INVALID or MANIFEST_INVALID and reports it",
    },
    Unchecked {
        pattern: "PATCH upload 416: * range",
        reason: "the spec asks for no Range on a 416; the client asks for the offset with a GET",
    },
    // Uploads.
    Unchecked {
        pattern: "DELETE upload 204: status -> 200",
        reason: "the spec gives no status for cancelling an upload; push.blob.cancel accepts 200, 202 and 204",
    },
    Unchecked {
        pattern: "POST upload-start 202: * range",
        reason: "Range belongs to PATCH and upload-status answers, not to the POST that opens a session",
    },
    Unchecked {
        pattern: "POST upload-start 201: drop docker-content-digest",
        reason: "a mount's or single POST's Docker-Content-Digest is descriptive, not required (checked when sent)",
    },
    // Reads.
    Unchecked {
        pattern: "GET base 200: empty body",
        reason: "GET /v2/ MAY carry information in its body, which clients SHOULD ignore",
    },
    Unchecked {
        pattern: "GET base 200: * content-type",
        reason: "GET /v2/ MAY carry information in its body, which clients SHOULD ignore",
    },
    Unchecked {
        pattern: "* blob 20?: * content-type",
        reason: "the spec sets no Content-Type for blobs",
    },
    Unchecked {
        pattern: "GET tags 200: * content-type",
        reason: "the tag list MUST be a JSON body, but the spec names no Content-Type for it",
    },
    Unchecked {
        pattern: "GET catalog 200: * content-type",
        reason: "the catalog is beyond the spec; its checks read the JSON body",
    },
    Unchecked {
        pattern: "GET base 200: drop content-length|GET catalog 200: drop content-length|GET manifest 200: drop content-length|GET referrers 200: drop content-length|GET tags 200: drop content-length|GET blob 206: drop content-length",
        reason: "HTTP/1.1 lets a GET answer be chunked; the spec names Content-Length for HEAD only (RFC 9110's SHOULD for blob GETs is pull.blob.get.content-length)",
    },
    Unchecked {
        pattern: "GET blob 206: * docker-content-digest",
        reason: "Docker-Content-Digest describes a whole blob; a 206 carries a slice of it",
    },
    Unchecked {
        pattern: "GET manifest 200: * oci-subject",
        reason: "OCI-Subject answers the PUT of a manifest with a subject; the spec does not define it on GET",
    },
    Unchecked {
        pattern: "GET referrers 200: json $.manifests Reverse",
        reason: "the spec sets no order for referrers",
    },
];

/// An assertion site that no fault makes fail: file, a fragment of the line,
/// the kind of assertion, and why.
struct Unreached {
    file: &'static str,
    fragment: &'static str,
    kind: &'static str,
    reason: &'static str,
}

const UNREACHED: &[Unreached] = &[
    Unreached {
        file: "checks/push.rs",
        fragment: "context(\"second session\")",
        kind: "status",
        reason: "a race: which of the two concurrent uploads reaches the server second varies, so a fault aimed at one may hit the other (the line above, the same assertion on the first session, fails)",
    },
    Unreached {
        file: "checks/discovery.rs",
        fragment: "failed!(\"no referrers response\")",
        kind: "check",
        reason: "cannot fail: the paging loop always runs once",
    },
    Unreached {
        file: "checks/pull.rs",
        fragment: "HEAD returned a body",
        kind: "check",
        reason: "cannot fail over HTTP: both clients (reqwest, the raw one) drop whatever follows a HEAD answer's head",
    },
    Unreached {
        file: "checks/pull.rs",
        fragment: "400 => r.expect_error(&[400], codes_400)",
        kind: "status",
        reason: "the match arm has fixed the status",
    },
    Unreached {
        file: "checks/pull.rs",
        fragment: "404 => r.expect_error(&[404], codes_404)",
        kind: "status",
        reason: "the match arm has fixed the status",
    },
    Unreached {
        file: "checks/push.rs",
        fragment: "let got = r.expect_error(&[400], &[\"SIZE_INVALID\", \"MANIFEST_INVALID\"])?;",
        kind: "status",
        reason: "the match arm has fixed the status",
    },
    Unreached {
        file: "checks/pull.rs",
        fragment: "404 if r.json().is_err()",
        kind: "json",
        reason: "a probe: a non-JSON 404 is legal",
    },
    Unreached {
        file: "checks/push.rs",
        fragment: "r.json().is_ok() {",
        kind: "json",
        reason: "a probe: a non-JSON 4xx body is legal; a JSON one is then checked",
    },
    Unreached {
        file: "checks/pull.rs",
        fragment: "r.json().is_ok() {",
        kind: "json",
        reason: "a probe: a non-JSON 4xx body is legal; a JSON one is then checked",
    },
    Unreached {
        file: "checks/push.rs",
        fragment: "internal: padded manifest",
        kind: "check",
        reason: "guards the test's own data, not the registry",
    },
    Unreached {
        file: "checks/push.rs",
        fragment: "connection closed instead of 413?",
        kind: "check",
        reason: "needs the connection cut during the upload; the layer can only answer",
    },
    Unreached {
        file: "checks/push.rs",
        fragment: "the 201 of the fallback PUT",
        kind: "header",
        reason: "single-post's 202 fallback: only a registry without single-POST uploads gets there, and its closing PUT would then have to lack Location; a fault changes one answer",
    },
];

#[derive(Default)]
struct Tally {
    check_runs: usize,
    /// (site, kind) -> the faults that failed it.
    failed_at: BTreeMap<(String, &'static str), Vec<String>>,
    helper_lines: BTreeSet<String>,
}

impl Tally {
    fn add(&mut self, f: &Fault, run: &Run) {
        self.check_runs += run.results.len();
        for r in run.results.iter().filter(|r| !r.passed) {
            if let Some(a) = &r.assertion {
                self.failed_at
                    .entry((a.site.clone(), a.kind))
                    .or_default()
                    .push(format!("{f} [{}]", r.id));
                self.helper_lines.insert(a.line.clone());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_defect_is_noticed_and_every_assertion_can_fail() {
    let started = Instant::now();
    let ids = v1_1_ids();

    // 1. Record: the whole suite, cleanly.
    let record = run_suite(&ids, None).await;
    let failed: Vec<String> = record
        .results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{}: {}", r.id, r.detail))
        .collect();
    assert!(
        failed.is_empty(),
        "clean run through the layer failed:\n{}",
        failed.join("\n")
    );
    let order: Vec<&'static str> = record
        .results
        .iter()
        .map(|r| *ids.iter().find(|i| **i == r.id).expect("id"))
        .collect();
    eprintln!(
        "clean run: {} checks, {} responses in {:.1?}",
        order.len(),
        record.seen.len(),
        started.elapsed()
    );

    // 2. Phase 1: class-wide defects.
    let t = Instant::now();
    let faults = class_faults(&order, &record.seen);
    // A defect a rule already calls unchecked makes no check fail (it adds
    // no assertion site either), so it is only listed, unless FAULTS_ALL=1
    // runs it too, to show that no check notices it.
    let all = std::env::var("FAULTS_ALL").is_ok();
    let rule = |f: &Fault| {
        let text = f.to_string();
        UNCHECKED.iter().find(|u| glob(u.pattern, &text))
    };
    let mut declared: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let to_run: Vec<Fault> = faults
        .iter()
        .filter(|f| match rule(f) {
            Some(u) if !all => {
                declared.entry(u.reason).or_default().push(f.to_string());
                false
            }
            _ => true,
        })
        .cloned()
        .collect();
    let runs = run_faults(&to_run).await;
    let mut tally = Tally::default();
    let mut caught = 0;
    let mut idle = Vec::new();
    let mut unexplained = Vec::new();
    let mut explained: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut too_broad = Vec::new();
    for (f, run) in &runs {
        tally.add(f, run);
        if run.applied == 0 {
            idle.push(f.to_string());
        } else if run.results.iter().any(|r| !r.passed) {
            caught += 1;
            if let Some(u) = rule(f) {
                // Only with FAULTS_ALL: a rule must not cover a noticed defect,
                // or skipping it would hide the assertions it reaches.
                too_broad.push(format!(
                    "{f} is noticed, but {:?} calls it unchecked",
                    u.pattern
                ));
            }
        } else {
            let text = f.to_string();
            match UNCHECKED.iter().find(|u| glob(u.pattern, &text)) {
                Some(u) => explained.entry(u.reason).or_default().push(text),
                None => unexplained.push(text),
            }
        }
    }
    let ran = explained.values().map(Vec::len).sum::<usize>();
    for (reason, list) in &declared {
        explained
            .entry(reason)
            .or_default()
            .extend(list.iter().map(|t| format!("{t} (not run)")));
    }
    eprintln!(
        "phase 1: {} defects ({} check runs, {:.1?}): {caught} noticed, {} unchecked on purpose ({ran} run to show it), {} UNEXPLAINED, {} changed nothing",
        faults.len(),
        tally.check_runs,
        t.elapsed(),
        explained.values().map(Vec::len).sum::<usize>(),
        unexplained.len(),
        idle.len()
    );
    for (reason, list) in &explained {
        eprintln!("  unchecked on purpose: {reason}");
        for t in list {
            eprintln!("      {t}");
        }
    }
    for t in &idle {
        eprintln!("  changed nothing: {t}");
    }
    for t in &unexplained {
        eprintln!("  UNEXPLAINED: no check notices {t}");
    }
    for t in &too_broad {
        eprintln!("  RULE TOO BROAD: {t}");
    }

    // 3. Phase 2: for each site not failed yet (and not known to be
    // unreachable), aimed faults, a few at a time, until it fails.
    let sites = assertion_sites();
    let known = |site: &str, kind: &str, text: &str| {
        let file = site.rsplit_once(':').map(|(f, _)| f).unwrap_or("");
        UNREACHED
            .iter()
            .find(|u| file.ends_with(u.file) && text.contains(u.fragment) && u.kind == kind)
    };
    let funcs = functions();
    let table = check_table();
    let t = Instant::now();
    let before = tally.check_runs;
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut searched = 0;
    for ((site, kind), text) in &sites {
        if tally.failed_at.contains_key(&(site.clone(), kind)) || known(site, kind, text).is_some()
        {
            continue;
        }
        searched += 1;
        let own = owners(&funcs, &table, site);
        let list: Vec<Fault> = candidates(&order, &record.seen, &own, kind)
            .into_iter()
            .filter(|f| !tried.contains(&f.to_string()))
            .take(PHASE2_LIMIT)
            .collect();
        for batch in list.chunks(4) {
            for f in batch {
                tried.insert(f.to_string());
            }
            for (f, run) in run_faults(batch).await {
                tally.add(&f, &run);
            }
            if tally.failed_at.contains_key(&(site.clone(), kind)) {
                break;
            }
        }
    }
    eprintln!(
        "phase 2: {searched} sites searched with {} aimed faults ({:.1?})",
        tally.check_runs - before,
        t.elapsed()
    );

    // 4. Every assertion site failed at least once.
    let mut unreached = Vec::new();
    for ((site, kind), text) in &sites {
        if tally.failed_at.contains_key(&(site.clone(), kind)) {
            continue;
        }
        match known(site, kind, text) {
            Some(u) => eprintln!(
                "  never fails, on purpose: {site} {kind} `{text}`: {}",
                u.reason
            ),
            None => unreached.push(format!("{site} {kind} `{text}`")),
        }
    }
    let stray: Vec<String> = tally
        .failed_at
        .keys()
        .filter(|k| !sites.contains_key(*k))
        .map(|(s, k)| format!("{s} {k}"))
        .collect();
    let helpers = helper_assertions();
    let helpers_unreached: Vec<String> = helpers
        .iter()
        .filter(|(l, _)| !tally.helper_lines.contains(*l))
        .map(|(l, t)| format!("{l} `{t}`"))
        .collect();
    eprintln!(
        "assertion sites: {} of {} failed under some fault; response-helper assertions: {} of {}",
        sites
            .keys()
            .filter(|k| tally.failed_at.contains_key(*k))
            .count(),
        sites.len(),
        helpers.len() - helpers_unreached.len(),
        helpers.len()
    );
    if std::env::var("FAULTS_SITES").is_ok() {
        for ((site, kind), by) in &tally.failed_at {
            eprintln!("  {site} {kind} x{}: {}", by.len(), by[0]);
        }
    }
    for u in &unreached {
        eprintln!("  UNREACHED: {u}");
    }
    for u in &helpers_unreached {
        eprintln!("  UNREACHED response-helper assertion: {u}");
    }
    for s in &stray {
        eprintln!("  SITE THE SCANNER MISSED: {s}");
    }
    eprintln!(
        "{} check runs in {:.1?}",
        tally.check_runs + order.len(),
        started.elapsed()
    );
    assert!(
        too_broad.is_empty(),
        "rules that cover noticed defects (above)"
    );
    assert!(
        unexplained.is_empty()
            && unreached.is_empty()
            && helpers_unreached.is_empty()
            && stray.is_empty(),
        "{} unexplained defects, {} unreached sites, {} unreached helper assertions, {} sites the scanner missed (see the report above)",
        unexplained.len(),
        unreached.len(),
        helpers_unreached.len(),
        stray.len()
    );
}
