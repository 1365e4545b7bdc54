//! `ADD <URL>` against broken or hostile servers: a body that never ends stops
//! at `BERTH_BUILD_ADD_MAX_BYTES` (streamed to disk: berth's peak RSS, read
//! from /proc while it runs, stays far under the body), a server that accepts and never answers fails after
//! `BERTH_BUILD_ADD_IDLE_TIMEOUT`, a silent git remote after
//! `BERTH_BUILD_ADD_GIT_TIMEOUT`; a normal URL still works and revalidates
//! (CACHED) on rebuild. The servers are loopback threads of this test.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// Counts of full bodies (200) and revalidations (304) of `/ok.txt`.
#[derive(Default)]
struct Counts {
    ok_200: AtomicUsize,
    ok_304: AtomicUsize,
}

fn start_server() -> (u16, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().unwrap().port();
    let counts = Arc::new(Counts::default());
    let c = counts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || {
                let _ = serve(conn, &c);
            });
        }
    });
    (port, counts)
}

fn serve(conn: TcpStream, counts: &Counts) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    if path == "/silent" || request.is_empty() || !request.contains("HTTP/") {
        // Accept, then say nothing (also the "git://" case: no HTTP at all).
        std::thread::sleep(Duration::from_secs(15));
        return Ok(());
    }
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("if-none-match") {
                if_none_match = Some(v.trim().to_string());
            }
        }
    }
    match path.as_str() {
        "/endless" => {
            out.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b'x'; 64 * 1024];
            // Until the client gives up (the write fails).
            loop {
                out.write_all(&chunk)?;
            }
        }
        "/ok.txt" if if_none_match.as_deref() == Some("\"v1\"") => {
            counts.ok_304.fetch_add(1, Ordering::SeqCst);
            out.write_all(b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n")
        }
        "/ok.txt" => {
            counts.ok_200.fetch_add(1, Ordering::SeqCst);
            let body = b"fine body\n";
            write!(
                out,
                "HTTP/1.1 200 OK\r\nETag: \"v1\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            out.write_all(body)
        }
        _ => out
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    }
}

/// `ADD URL` of a body that never ends, with a 256 MiB maximum: the build's
/// stderr and berth's peak RSS (`VmHWM`, KiB) sampled while it ran.
fn endless_build(s: &Setup, url: &str) -> (String, u64) {
    let context = s.cli.path("endless");
    write(
        &context.join("Dockerfile"),
        &format!("FROM {}\nADD {url} /big\n", s.base),
        0o644,
    );
    let log = s.cli.path("endless.log");
    let mut cmd = build_cmd(&s.cli, &context, &[]);
    cmd.env("BERTH_BUILD_ADD_MAX_BYTES", (256u64 << 20).to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log file"));
    let mut child = cmd.spawn().expect("spawn berth build");
    let status_file = format!("/proc/{}/status", child.id());
    let start = Instant::now();
    let mut peak_kib = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > BUILD_T {
            let _ = child.kill();
            panic!("berth build did not stop");
        }
        let hwm = std::fs::read_to_string(&status_file).ok().and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        });
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "the build should fail:\n{stderr}");
    (stderr, peak_kib)
}

/// A failing build with short limits: its stderr and how long it took.
fn failing_build(s: &Setup, name: &str, add: &str) -> (String, Duration) {
    let context = s.cli.path(name);
    write(
        &context.join("Dockerfile"),
        &format!("FROM {}\n{add}\n", s.base),
        0o644,
    );
    let mut cmd = build_cmd(&s.cli, &context, &[]);
    cmd.env("BERTH_BUILD_ADD_MAX_BYTES", "1048576")
        .env("BERTH_BUILD_ADD_IDLE_TIMEOUT", "2")
        .env("BERTH_BUILD_ADD_GIT_TIMEOUT", "3");
    let start = Instant::now();
    let out = run(cmd, BUILD_T);
    let took = start.elapsed();
    assert!(
        !out.status.success(),
        "the build should fail:\n{}",
        out.describe()
    );
    (out.stderr, took)
}

#[test]
fn add_url_limits_and_normal_revalidation() {
    if !can_build() {
        return;
    }
    let s = setup();
    let (port, counts) = start_server();

    // (a) A body that never ends: stopped at the maximum size, named; the
    // 256 MiB on the way went to disk, not into berth's memory.
    let url = format!("http://127.0.0.1:{port}/endless");
    let (stderr, peak_kib) = endless_build(&s, &url);
    assert!(
        stderr.contains("Dockerfile:2: ADD:")
            && stderr.contains(&url)
            && stderr.contains("larger than 268435456 bytes")
            && stderr.contains("BERTH_BUILD_ADD_MAX_BYTES"),
        "{stderr}"
    );
    assert!(
        peak_kib > 0 && peak_kib < 128 * 1024,
        "berth's peak RSS was {peak_kib} KiB"
    );

    // (b) A server that accepts and never answers: the idle timeout.
    let url = format!("http://127.0.0.1:{port}/silent");
    let (stderr, took) = failing_build(&s, "silent", &format!("ADD {url} /x"));
    assert!(
        stderr.contains("Dockerfile:2: ADD:")
            && stderr.contains(&url)
            && stderr.contains("no response for 2s")
            && stderr.contains("BERTH_BUILD_ADD_IDLE_TIMEOUT"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(12), "took {took:?}");

    // A silent git remote: git is killed after the git timeout.
    if require_tool("git") {
        let url = format!("git://127.0.0.1:{port}/repo.git");
        let (stderr, took) = failing_build(&s, "silent-git", &format!("ADD {url} /src"));
        assert!(
            stderr.contains("Dockerfile:2: ADD:")
                && stderr.contains("did not finish within 3s")
                && stderr.contains("BERTH_BUILD_ADD_GIT_TIMEOUT"),
            "{stderr}"
        );
        assert!(took < Duration::from_secs(12), "took {took:?}");
    }

    // (c) A normal URL works, and a rebuild revalidates it (304) and stays CACHED.
    let context = s.cli.path("ok");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nADD http://127.0.0.1:{port}/ok.txt /ok.txt\n",
            s.base
        ),
        0o644,
    );
    let (first, _) = build_json(&s.cli, &context, &[]);
    assert_eq!(counts.ok_200.load(Ordering::SeqCst), 1);
    let (again, stderr) = build_json(&s.cli, &context, &[]);
    assert_eq!(
        first["digest"], again["digest"],
        "{first}\n{again}\n{stderr}"
    );
    assert_eq!(again["cached"], again["steps"], "{again}\n{stderr}");
    assert_eq!(counts.ok_200.load(Ordering::SeqCst), 1, "no second body");
    assert_eq!(counts.ok_304.load(Ordering::SeqCst), 1);
}
