//! Connections and bodies that hold the server's resources without using them: silent
//! connections (plain and TLS) are closed after the header timeout, a flood of them beyond the
//! open-file limit is shed without killing the server, and trickling upload bodies are cut
//! (keeping what arrived for a resume) while uploads at a steady rate above the minimum
//! complete. Real `berth serve`, real sockets.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// Header timeout of these servers: short, so the tests are quick.
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// How much later than the header timeout a close may come on a loaded machine.
const SLACK: Duration = Duration::from_secs(4);

/// A config with a short header timeout and an idle timeout far beyond it (so a close within
/// the header timeout is not the idle timeout's doing), plus `extra` lines in `[limits]`.
fn config(dir: &Path, extra: &str) -> Vec<String> {
    let path = dir.join("berth.toml");
    fs::write(
        &path,
        format!(
            "[limits]\nheader_timeout = \"{}s\"\nidle_timeout = \"60s\"\n{extra}",
            HEADER_TIMEOUT.as_secs()
        ),
    )
    .expect("write config");
    vec!["--config".into(), path.display().to_string()]
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(HEADER_TIMEOUT + SLACK + Duration::from_secs(5)))
        .expect("read timeout");
    s
}

/// Reads until the server closes the connection; how long that took. Fails if it is still
/// open when the read timeout passes, or if the server answered something other than a 408.
fn wait_closed(mut s: TcpStream, what: &str) -> Duration {
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{what}: still open after {:?} ({e})", started.elapsed()),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{what}: answered {text}"
    );
    started.elapsed()
}

/// Opens one connection per opening, sends its bytes and nothing more, then checks each is
/// closed within the header timeout of being opened.
fn assert_openings_closed_in_time(port: u16, openings: &[&[u8]], what: impl Fn(&[u8]) -> String) {
    let opened = Instant::now();
    let conns: Vec<TcpStream> = openings
        .iter()
        .map(|bytes| {
            let mut s = connect(port);
            s.write_all(bytes).expect("write");
            s
        })
        .collect();
    for (s, bytes) in conns.into_iter().zip(openings) {
        assert_closed_in_time(s, opened, &what(bytes));
    }
}

fn assert_closed_in_time(s: TcpStream, opened: Instant, what: &str) {
    wait_closed(s, what);
    let took = opened.elapsed();
    assert!(
        took >= HEADER_TIMEOUT - Duration::from_millis(100) && took <= HEADER_TIMEOUT + SLACK,
        "{what}: closed {took:?} after connecting (header timeout {HEADER_TIMEOUT:?})"
    );
}

#[test]
fn silent_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_berth_with(&config(dir.path(), ""), false, false);
    // Nothing at all; half of the HTTP/2 preface (hyper waits for the rest to tell the
    // protocol); a first request line with no end.
    let partial: [&[u8]; 3] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\n",
    ];
    assert_openings_closed_in_time(server.port, &partial, |bytes| {
        format!("after {:?}", String::from_utf8_lossy(bytes))
    });
    // A keep-alive connection that goes quiet after its first request is closed too.
    let mut kept = connect(server.port);
    kept.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).expect("first answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_closed_in_time(kept, Instant::now(), "quiet after one request");
    // Real requests still work.
    assert_eq!(raw_status(server.port, "GET", "/v2/"), Some(200));
}

#[test]
fn silent_tls_connections_are_closed_after_the_header_timeout() {
    if !require_tool("openssl") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, ca_key) = make_test_ca(dir.path());
    let (cert, key) = make_test_cert(dir.path(), (&ca, &ca_key), "server", false);
    let mut args = config(dir.path(), "");
    args.extend([
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]);
    let server = Server::start_berth_with(&args, false, true);
    // No handshake at all; a ClientHello record header that never gets its body.
    let partial: [&[u8]; 2] = [b"", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]];
    assert_openings_closed_in_time(server.port, &partial, |bytes| {
        format!("TLS after {bytes:?}")
    });
}

/// Open files of a process.
fn open_files(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_flood_of_silent_connections_is_shed_and_the_server_recovers() {
    const FD_LIMIT: u64 = 256;
    const FLOOD: usize = 400;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_berth_with_fd_limit(&config(dir.path(), ""), FD_LIMIT);
    let pid = server.pid().expect("pid");
    let started = Instant::now();
    let mut flood = Vec::new();
    let mut most_files = 0;
    for _ in 0..FLOOD {
        // The kernel completes connections in the listen backlog, so connect succeeds
        // whether or not the server takes them.
        if let Ok(s) = TcpStream::connect(("127.0.0.1", server.port)) {
            flood.push(s);
        }
        most_files = most_files.max(open_files(pid));
    }
    assert!(
        flood.len() > FD_LIMIT as usize,
        "only {} connected",
        flood.len()
    );
    std::thread::sleep(Duration::from_millis(300));
    most_files = most_files.max(open_files(pid));
    let log = server.log();
    assert!(
        log.contains("closing new connections") && log.contains("open-file limit of 256"),
        "the log does not say connections are shed:\n{log}"
    );
    assert!(
        (most_files as u64) < FD_LIMIT,
        "the server used {most_files} of its {FD_LIMIT} files"
    );
    // The header timeout frees everything the server took; shed ones were closed at once.
    for s in flood {
        s.set_read_timeout(Some(HEADER_TIMEOUT + SLACK))
            .expect("read timeout");
        wait_closed(s, "flood connection");
    }
    let took = started.elapsed();
    assert!(
        took < HEADER_TIMEOUT * 2 + SLACK,
        "flood connections were closed only after {took:?}"
    );
    // Alive, and serving again.
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the server died:\n{}",
        server.log()
    );
    assert_eq!(raw_status(server.port, "GET", "/v2/"), Some(200));
    assert!(
        server.log().contains("open-file limit"),
        "the start-up log does not name the open-file limit"
    );
}

/// Starts an upload; its location path.
fn start_upload(port: u16, repo: &str) -> String {
    let response = raw_request(
        port,
        format!(
            "POST /v2/{repo}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
        Duration::from_secs(10),
    )
    .expect("POST answer");
    assert_eq!(response.status, Some(202), "{}", response.head);
    response.header("location").expect("Location")
}

/// Sends `body` as a PATCH to `location`, `chunk` bytes every `every`, until it is all sent or
/// the server answers. Returns (bytes sent, the answer, seconds until the answer).
fn patch_paced(
    port: u16,
    location: &str,
    body: &[u8],
    chunk: usize,
    every: Duration,
) -> (usize, String, Duration) {
    let mut s = connect(port);
    s.write_all(
        format!(
            "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .expect("write head");
    let mut reader = s.try_clone().expect("clone socket");
    let started = Instant::now();
    let answer = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = reader.read_to_end(&mut text);
        (String::from_utf8_lossy(&text).into_owned(), Instant::now())
    });
    let mut sent = 0;
    for piece in body.chunks(chunk) {
        if answer.is_finished() {
            break;
        }
        std::thread::sleep(every);
        if s.write_all(piece).is_err() {
            break;
        }
        sent += piece.len();
    }
    let (text, at) = answer.join().expect("reader thread");
    (sent, text, at.duration_since(started))
}

/// The upload's offset, from `GET` on its location (`Range: 0-LAST`).
fn upload_offset(port: u16, location: &str) -> u64 {
    let response = raw_request(
        port,
        format!("GET {location} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .expect("status answer");
    assert_eq!(response.status, Some(204), "{}", response.head);
    let range = response.header("range").expect("Range");
    let last: i64 = range
        .strip_prefix("0-")
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("Range {range}"));
    (last + 1) as u64
}

#[test]
fn trickling_bodies_are_cut_and_resumable_steady_ones_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 100 bytes/s over 2 s: a trickle of 5 bytes/s is cut after about 2.1 s.
    let server = Server::start_berth_with(
        &config(
            dir.path(),
            "min_upload_rate = 100\nmin_upload_rate_window = \"2s\"\n",
        ),
        false,
        false,
    );
    let content: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let digest = digest_of(&content);

    // One byte every 200 ms.
    let location = start_upload(server.port, "trickle");
    let (sent, answer, took) = patch_paced(
        server.port,
        &location,
        &content,
        1,
        Duration::from_millis(200),
    );
    assert!(
        sent < content.len(),
        "the whole trickled body was taken ({sent} bytes over {took:?})"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(2) + SLACK,
        "trickle cut after {took:?}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 400") && answer.contains("minimum upload rate"),
        "{answer}"
    );
    let log = server.log();
    assert!(
        log.contains("request body slower than the minimum upload rate: cut")
            && log.contains("127.0.0.1"),
        "the cut is not logged with the client:\n{log}"
    );
    // What arrived is kept: resume from the offset and finish.
    let offset = upload_offset(server.port, &location);
    assert!(
        offset > 0 && offset as usize <= sent,
        "offset {offset} after {sent} bytes sent"
    );
    let rest = &content[offset as usize..];
    let response = raw_request(
        server.port,
        &[
            format!(
                "PUT {}{}digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                location,
                if location.contains('?') { "&" } else { "?" },
                rest.len()
            )
            .into_bytes(),
            rest.to_vec(),
        ]
        .concat(),
        Duration::from_secs(10),
    )
    .expect("PUT answer");
    assert_eq!(response.status, Some(201), "{}", response.body_text());
    let blob = raw_request(
        server.port,
        format!("GET /v2/trickle/blobs/{digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(10),
    )
    .expect("blob");
    assert_eq!(blob.body, content, "the resumed blob differs");

    // 40 bytes every 200 ms (200 bytes/s, twice the minimum) for 5 s: never cut.
    let location = start_upload(server.port, "steady");
    let (sent, answer, took) = patch_paced(
        server.port,
        &location,
        &content,
        40,
        Duration::from_millis(200),
    );
    assert_eq!(
        sent,
        content.len(),
        "steady upload cut after {took:?}: {answer}"
    );
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(upload_offset(server.port, &location), content.len() as u64);
}
