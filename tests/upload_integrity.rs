//! Upload integrity under attack: the interleaving an adversarial review used to replace the
//! bytes behind another repository's digest, replayed with raw sockets (chunked bodies paced
//! with sleeps) against `berth serve` on disk, with and without logins, and on S3.
//!
//! The sequence, on one upload id: a slow chunked PATCH holds the session's lock → a PATCH of
//! the same id under another repository name queues on that lock → a PATCH queues behind it
//! → (once the foreign one is refused) a fast PATCH → `PUT ?digest=` of the right bytes. The
//! refusal used to drop the lock from the table while the queued PATCH still held it, so the
//! fast PATCH took a fresh lock and both wrote from the same offset at once. It is played in
//! both orders (which of the two carries the right bytes), since on disk the last state saved
//! wins and on S3 the first. Whatever each request answers, afterwards every blob must hash to
//! its name: the victim's (which existed before) and the one the attacker aimed at (which did
//! not).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// Deterministic bytes that do not compress or repeat.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// One request with a Content-Length body, `Connection: close`.
fn request(port: u16, method: &str, path: &str, auth: Option<&str>, body: &[u8]) -> RawResponse {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    raw_request(port, &raw, WAIT).unwrap_or_else(|| panic!("{method} {path}: no response"))
}

/// A PATCH whose headers are sent at once and whose chunked body follows piece by piece: the
/// first piece after `first`, the others `pause` apart, on a thread of its own. Yields the
/// status (None if the server closed without answering).
fn trickled_patch(
    port: u16,
    path: String,
    auth: Option<String>,
    pieces: Vec<Vec<u8>>,
    (first, pause): (Duration, Duration),
) -> thread::JoinHandle<Option<u16>> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(WAIT)).ok()?;
        let mut head = format!(
            "PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
             Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
        );
        if let Some(auth) = &auth {
            head.push_str(&format!("Authorization: {auth}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).ok()?;
        for (i, piece) in pieces.into_iter().enumerate() {
            thread::sleep(if i == 0 { first } else { pause });
            // A refused request may close early: keep going, the answer is what counts.
            let _ = s.write_all(format!("{:x}\r\n", piece.len()).as_bytes());
            let _ = s.write_all(&piece);
            let _ = s.write_all(b"\r\n");
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let response = parse_raw_response(&buf)?;
        if std::env::var_os("UPLOAD_INTEGRITY_DEBUG").is_some() {
            eprintln!("PATCH answered: {}", response.body_text());
        }
        response.status
    })
}

fn pieces(data: &[u8], n: usize) -> Vec<Vec<u8>> {
    data.chunks(data.len().div_ceil(n))
        .map(<[u8]>::to_vec)
        .collect()
}

/// POST of a new upload session; its Location. Panics unless 202.
fn start_upload(port: u16, repo: &str, auth: Option<&str>) -> String {
    let started = request(
        port,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        auth,
        b"",
    );
    assert_eq!(started.status, Some(202), "POST: {}", started.body_text());
    started.header("location").expect("Location")
}

/// POST + PUT of a whole blob; panics unless 201.
fn push_blob_raw(port: u16, repo: &str, auth: Option<&str>, data: &[u8]) -> String {
    let digest = digest_of(data);
    let location = start_upload(port, repo, auth);
    let done = request(
        port,
        "PUT",
        &format!("{location}?digest={digest}"),
        auth,
        data,
    );
    assert_eq!(done.status, Some(201), "PUT: {}", done.body_text());
    digest
}

/// GET a blob and check that its bytes hash to its name.
fn assert_blob_intact(port: u16, repo: &str, digest: &str, auth: Option<&str>) {
    let got = request(
        port,
        "GET",
        &format!("/v2/{repo}/blobs/{digest}"),
        auth,
        b"",
    );
    assert_eq!(got.status, Some(200), "GET {repo} {digest}: {}", got.head);
    assert_eq!(
        digest_of(&got.body),
        digest,
        "the bytes served for {digest} in {repo} do not hash to it: the blob was poisoned"
    );
}

/// Every file in the blob store hashes to its name (filesystem storage only).
fn assert_blob_store_intact(storage: &Path) {
    let mut stack = vec![storage.join("blobs").join("sha256")];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path: PathBuf = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let bytes = fs::read(&path).expect("read blob");
            assert_eq!(
                sha256_hex(&bytes),
                name,
                "{} does not hash to its name",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no blob found under {}", storage.display());
}

struct Who {
    /// Pushes `victim_repo` (and pulls it).
    victim: Option<String>,
    /// Pushes the attacker's two repositories (and pulls them).
    attacker: Option<String>,
}

/// Which of the two PATCHes that end up writing at once carries the right bytes.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// The PATCH that holds the old lock writes the third quarter of the right bytes, the fast
    /// one on a fresh lock writes other bytes over it and saves, then the first writes the last
    /// quarter and saves last: a state whose hash covers the right bytes, over data that are
    /// not (disk: the last state written wins).
    RightHoldsTheLock,
    /// The fast PATCH on a fresh lock saves the right second half first; the one that holds
    /// the old lock then sends other bytes of the same length: its state write is refused, but
    /// its tail object (named by the offset it ends at, the same) replaced the right one (S3).
    RightOnAFreshLock,
}

/// The attack of the review, aimed at `target` (the right bytes of the digest the PUT names).
/// The fast PATCH goes to `fast_port` (another replica on the same storage, or the same
/// server). Returns the status of the final PUT.
fn replay_attack(
    (port, fast_port): (u16, u16),
    who: &Who,
    (repo, other_repo): (&str, &str),
    target: &[u8],
    order: Order,
) -> u16 {
    let auth = who.attacker.as_deref();
    let location = start_upload(port, repo, auth);
    let id = location.rsplit('/').next().expect("upload id").to_string();
    let half = target.len() / 2;
    let quarter = half + (target.len() - half) / 2;
    let garbage = pattern(target.len() - half, 99);
    let ms = Duration::from_millis;

    // t=0: a slow chunked PATCH that holds the session's lock for about 1.2 s (the first half).
    let slow = trickled_patch(
        port,
        location.clone(),
        who.attacker.clone(),
        pieces(&target[..half], 8),
        (ms(150), ms(150)),
    );
    // t=0.1: the same id under another repository name. It waits for the lock (so on a thread
    // of its own) and is answered 404 at t=1.2; that refusal used to drop the lock from the
    // table while the PATCH queued behind it (next) still held it.
    thread::sleep(ms(100));
    let foreign = {
        let path = format!("/v2/{other_repo}/blobs/uploads/{id}");
        let auth = who.attacker.clone();
        thread::spawn(move || request(port, "PATCH", &path, auth.as_deref(), b"x"))
    };
    // t=0.2: a PATCH that queues behind the foreign one, takes the lock at t=1.2 and reads
    // offset `half`.
    thread::sleep(ms(100));
    let (held_pieces, held_pace) = match order {
        // The third quarter is written at t=1.2, the last quarter at t=2.4.
        Order::RightHoldsTheLock => (
            vec![target[half..quarter].to_vec(), target[quarter..].to_vec()],
            (ms(100), ms(2100)),
        ),
        // Other bytes, sent at t=2.5.
        Order::RightOnAFreshLock => (vec![garbage.clone()], (ms(2300), ms(0))),
    };
    let held = trickled_patch(
        port,
        location.clone(),
        who.attacker.clone(),
        held_pieces,
        held_pace,
    );
    let foreign = foreign.join().expect("foreign PATCH thread");
    assert_eq!(
        foreign.status,
        Some(404),
        "a PATCH of the session under another repository must be unknown: {}",
        foreign.body_text()
    );
    // t=1.6: a fast PATCH, sent whole. With the lock dropped it took a fresh one at once, read
    // offset `half` as well, and ran while the queued PATCH was still writing.
    thread::sleep(ms(400));
    let fast_body = match order {
        Order::RightHoldsTheLock => &garbage[..],
        Order::RightOnAFreshLock => &target[half..],
    };
    let fast = request(fast_port, "PATCH", &location, auth, fast_body);
    let statuses = [slow, held].map(|t| t.join().expect("patch thread"));
    eprintln!(
        "{order:?}: PATCH statuses (slow, queued) {statuses:?}, fast {:?}",
        fast.status
    );
    // Complete with the digest of the right bytes.
    let digest = digest_of(target);
    let done = request(
        port,
        "PUT",
        &format!("{location}?digest={digest}"),
        auth,
        b"",
    );
    let status = done.status.expect("PUT status");
    eprintln!("PUT ?digest= answered {status}: {}", done.body_text());
    assert!(
        [201, 400, 404, 416].contains(&status),
        "completion answered {status}: {}",
        done.body_text()
    );
    status
}

/// `replica`: a second server on the same storage, which gets the fast PATCH.
fn attack_and_check(
    server: &Server,
    replica: Option<&Server>,
    who: &Who,
    repos: [&str; 3],
    on_disk: bool,
) {
    let [victim_repo, repo, other_repo] = repos;
    let port = server.port;
    let ports = (port, replica.map_or(port, |r| r.port));
    // The victim's blob exists before the attack; the attacker can learn its digest.
    let victim_bytes = pattern(64 * 1024, 1);
    let victim = push_blob_raw(port, victim_repo, who.victim.as_deref(), &victim_bytes);
    for order in [Order::RightHoldsTheLock, Order::RightOnAFreshLock] {
        replay_attack(ports, who, (repo, other_repo), &victim_bytes, order);
        assert_blob_intact(port, victim_repo, &victim, who.victim.as_deref());
    }

    // Aimed at digests nobody pushed yet (planting bytes for a later push of them).
    for (seed, order) in [(2, Order::RightHoldsTheLock), (3, Order::RightOnAFreshLock)] {
        let fresh_bytes = pattern(48 * 1024, seed);
        let fresh = digest_of(&fresh_bytes);
        if replay_attack(ports, who, (repo, other_repo), &fresh_bytes, order) == 201 {
            assert_blob_intact(port, repo, &fresh, who.attacker.as_deref());
        }
    }
    if on_disk {
        assert_blob_store_intact(server.storage());
    }
    assert!(server.is_running(), "the server died during the attack");
    if let Some(replica) = replica {
        for line in replica
            .log()
            .lines()
            .filter(|l| l.contains("PATCH") || l.contains("PUT"))
        {
            eprintln!("replica: {line}");
        }
        for line in server
            .log()
            .lines()
            .filter(|l| l.contains("PATCH") || l.contains("PUT"))
        {
            eprintln!("server: {line}");
        }
        assert_blob_intact(replica.port, victim_repo, &victim, who.victim.as_deref());
    }
}

#[test]
fn interleaved_patches_cannot_poison_a_blob_on_disk() {
    let server = Server::start_berth_with(&[], false, false);
    let who = Who {
        victim: None,
        attacker: None,
    };
    attack_and_check(
        &server,
        None,
        &who,
        ["victim/app", "mallory/app", "mallory/other"],
        true,
    );
}

#[test]
fn interleaved_patches_cannot_poison_a_blob_with_logins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "apw"), ("mallory", "mpw")], 4);
    let server = Server::start_berth_with_config(
        dir.path(),
        &format!(
            r#"[auth]
htpasswd = "{}"
token_key = "{}"

[[access.rules]]
who = "user:alice"
repositories = ["alice/**"]
actions = ["pull", "push"]

[[access.rules]]
who = "user:mallory"
repositories = ["mallory/**"]
actions = ["pull", "push"]

[[access.rules]]
who = "anonymous"
repositories = ["alice/**"]
actions = ["pull"]
"#,
            htpasswd.display(),
            dir.path().join("token-key.pem").display()
        ),
        true,
    );
    let token = |user: &str, password: &str, scopes: &[&str]| {
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let query: String = scopes.iter().map(|s| format!("&scope={s}")).collect();
        let got = request(
            server.port,
            "GET",
            &format!("/token?service=berth{query}"),
            Some(&format!("Basic {basic}")),
            b"",
        );
        assert_eq!(got.status, Some(200), "token: {}", got.body_text());
        let body: serde_json::Value = serde_json::from_slice(&got.body).expect("token JSON");
        format!("Bearer {}", body["token"].as_str().expect("token"))
    };
    let who = Who {
        victim: Some(token("alice", "apw", &["repository:alice/app:pull,push"])),
        attacker: Some(token(
            "mallory",
            "mpw",
            &[
                "repository:mallory/app:pull,push",
                "repository:mallory/other:pull,push",
            ],
        )),
    };
    attack_and_check(
        &server,
        None,
        &who,
        ["alice/app", "mallory/app", "mallory/other"],
        true,
    );
    // Anonymous pullers (who never re-upload what HEAD reports) get the victim's true bytes.
    let victim = digest_of(&pattern(64 * 1024, 1));
    assert_blob_intact(server.port, "alice/app", &victim, None);
}

#[test]
fn interleaved_patches_cannot_poison_a_blob_on_s3() {
    let Some(s3) = s3_server("integrity") else {
        return;
    };
    let server = Server::start_s3(&s3, "integrity", &[]);
    let who = Who {
        victim: None,
        attacker: None,
    };
    attack_and_check(
        &server,
        None,
        &who,
        ["victim/app", "mallory/app", "mallory/other"],
        false,
    );
    // Two replicas on one bucket share no lock: the bytes that race in through the second
    // one are kept apart by conditional writes (tails are created, never overwritten; the
    // session's state is written only over the version read) and a small blob is hashed
    // again from the bytes stored.
    let replica = Server::start_s3(&s3, "integrity", &[]);
    attack_and_check(
        &server,
        Some(&replica),
        &who,
        ["victim/app2", "mallory/app2", "mallory/other2"],
        false,
    );
}
