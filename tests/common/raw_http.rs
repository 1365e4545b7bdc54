//! HTTP over a raw socket, for readiness checks and for requests a real client would not
//! send (no runtime needed).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One HTTP/1.1 request over a raw socket; returns the status code or None if the server does
/// not answer. Used for readiness checks (sync, no runtime needed).
pub fn raw_status(port: u16, method: &str, path: &str) -> Option<u16> {
    raw_status_at(std::net::Ipv4Addr::LOCALHOST, port, method, path)
}

/// [`raw_status`] to `ip:port`.
pub fn raw_status_at(ip: std::net::Ipv4Addr, port: u16, method: &str, path: &str) -> Option<u16> {
    let response = raw_request_at(
        std::net::SocketAddr::from((ip, port)),
        format!("{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(2),
    )?;
    response.status
}

/// A parsed raw HTTP response.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is (the caller writes `Connection: close`) and reads until the server
/// closes or `timeout` passes. None if the connection failed or nothing came back.
pub fn raw_request(port: u16, request: &[u8], timeout: Duration) -> Option<RawResponse> {
    raw_request_at(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        request,
        timeout,
    )
}

/// [`raw_request`] to any address (a test's own namespace hosts, or its bridge).
pub fn raw_request_at(
    addr: std::net::SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Option<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(request).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    parse_raw_response(&buf)
}

pub fn parse_raw_response(buf: &[u8]) -> Option<RawResponse> {
    if buf.is_empty() {
        return None;
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = buf.get(split + 4..).unwrap_or_default().to_vec();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let mut response = RawResponse { status, head, body };
    if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(&response.body);
    }
    Some(response)
}

/// Decodes a `Transfer-Encoding: chunked` body (best effort: stops at the first malformed or
/// truncated chunk).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            out.extend_from_slice(&raw[..size.min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}
