//! Every check must be able to fail: against a server that accepts every
//! request (200 `{}` for reads, 201/202 with a Location for writes) all checks
//! except the two `/v2/` checks must fail, and the run must not panic.

use berth_conformance::{run, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn serve_one(mut s: TcpStream) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 65536];
    // Read the head.
    let head_end = loop {
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let method = head.split_whitespace().next().unwrap_or("get").to_string();
    let content_length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let chunked = head.contains("transfer-encoding: chunked");
    // Drain the body so that closing does not reset the connection.
    loop {
        let body = &buf[head_end..];
        let done = if chunked {
            body.windows(5).any(|w| w == b"0\r\n\r\n")
        } else {
            body.len() >= content_length
        };
        if done {
            break;
        }
        match s.read(&mut tmp).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
    let (status, body) = match method.as_str() {
        "post" | "patch" | "delete" => ("202 Accepted", ""),
        "put" => ("201 Created", ""),
        _ => ("200 OK", "{}"),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\n\
         Location: /v2/yes/blobs/uploads/00000000-0000-4000-a000-000000000000\r\n\
         Range: 0-0\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_can_fail() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve_one(s));
        }
    });
    let report = run(&Options {
        url: format!("http://{addr}"),
        namespace: "conformance/yes".to_string(),
        only: None,
        credentials: None,
        next: false,
    })
    .await;
    // The checks of features after v1.1 fail against it too.
    let next = run(&Options {
        url: format!("http://{addr}"),
        namespace: "conformance/yes".to_string(),
        only: Some("next.".to_string()),
        credentials: None,
        next: true,
    })
    .await;
    server.abort();
    assert!(
        next.results.len() >= 4,
        "the NEXT checks ran: {:?}",
        next.results.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    for r in &next.results {
        assert!(
            !r.passed,
            "{} passed against a yes-to-everything server",
            r.id
        );
    }
    let passed: Vec<&str> = report
        .results
        .iter()
        .filter(|r| r.passed)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(
        passed,
        vec!["base.v2", "base.v2.api-version-header"],
        "checks that a yes-to-everything server passes"
    );
    for r in report.failed() {
        assert!(!r.detail.contains("panicked"), "{}: {}", r.id, r.detail);
        assert!(!r.detail.contains("timed out"), "{}: {}", r.id, r.detail);
    }
}
