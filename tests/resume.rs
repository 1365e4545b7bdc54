//! Resumable uploads across server deaths: a long streaming PATCH interrupted by `kill -9`
//! resumes from the offset the server reports after restart, and a chunked upload survives
//! graceful restarts and `kill -9` between chunks without losing a byte.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

const MIB: u64 = 1024 * 1024;
/// Size of the generator's repeating block.
const BLOCK: u64 = MIB;

/// Deterministic test data of any length, generated on the fly: byte `p` depends only on `p`,
/// so any range can be regenerated (to resume) without keeping anything in memory. Each 1 MiB
/// block is a fixed pseudo-random block with the block number written into its first 8 bytes.
#[derive(Clone)]
struct Pattern {
    block: Arc<Vec<u8>>,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        let mut x = seed | 1;
        let mut block = Vec::with_capacity(BLOCK as usize);
        while block.len() < BLOCK as usize {
            // xorshift64*
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            block.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        Pattern {
            block: Arc::new(block),
        }
    }

    /// The bytes at `[offset, offset + len)`.
    fn bytes(&self, offset: u64, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize);
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let index = pos / BLOCK;
            let start_in_block = pos % BLOCK;
            let take = (BLOCK - start_in_block).min(end - pos);
            let from = out.len();
            out.extend_from_slice(
                &self.block[start_in_block as usize..(start_in_block + take) as usize],
            );
            // Stamp the block number over the first 8 bytes of the block (where in range).
            let stamp = index.to_le_bytes();
            for (i, b) in stamp.iter().enumerate() {
                let p = index * BLOCK + i as u64;
                if p >= pos && p < pos + take {
                    out[from + (p - pos) as usize] = *b;
                }
            }
            pos += take;
        }
        out
    }

    fn digest(&self, len: u64) -> String {
        let mut hasher = Sha256::new();
        let mut pos = 0;
        while pos < len {
            let n = (4 * MIB).min(len - pos);
            hasher.update(self.bytes(pos, n));
            pos += n;
        }
        format!("sha256:{}", hex::encode(hasher.finalize()))
    }

    /// A request body streaming `[start, end)` in 1 MiB pieces; `yielded` counts the bytes
    /// handed to the HTTP client. If `pause_at` is set, the stream stops producing once it has
    /// yielded that many bytes (counted from `start`), sends on `paused`, and then hangs.
    fn body(
        &self,
        start: u64,
        end: u64,
        yielded: Arc<AtomicU64>,
        pause_at: Option<(u64, tokio::sync::oneshot::Sender<()>)>,
    ) -> reqwest::Body {
        struct State {
            pattern: Pattern,
            pos: u64,
            end: u64,
            yielded: Arc<AtomicU64>,
            pause: Option<(u64, tokio::sync::oneshot::Sender<()>)>,
        }
        let state = State {
            pattern: self.clone(),
            pos: start,
            end,
            yielded,
            pause: pause_at.map(|(n, tx)| (start + n, tx)),
        };
        let stream = futures::stream::unfold(state, |mut s| async move {
            if let Some((at, _)) = &s.pause {
                if s.pos >= *at {
                    if let Some((_, tx)) = s.pause.take() {
                        let _ = tx.send(());
                    }
                    std::future::pending::<()>().await;
                }
            }
            if s.pos >= s.end {
                return None;
            }
            let n = MIB.min(s.end - s.pos);
            let chunk = s.pattern.bytes(s.pos, n);
            s.pos += n;
            s.yielded.fetch_add(n, Ordering::SeqCst);
            Some((Ok::<Vec<u8>, std::io::Error>(chunk), s))
        });
        reqwest::Body::wrap_stream(stream)
    }
}

/// Parses an upload `Range` header (`0-<last>` or `bytes=0-<last>`) into the number of bytes
/// stored.
fn stored_bytes(range: &str) -> u64 {
    let r = range.trim().trim_start_matches("bytes=");
    let (first, last) = r
        .split_once('-')
        .unwrap_or_else(|| panic!("malformed upload Range header {range:?}"));
    assert_eq!(first, "0", "upload Range must start at 0: {range:?}");
    let last: u64 = last
        .parse()
        .unwrap_or_else(|_| panic!("malformed upload Range header {range:?}"));
    last + 1
}

/// GET on the upload URL: must be 204 with a Range. Returns (bytes stored, newest upload URL).
async fn upload_status(c: &reqwest::Client, base: &str, upload: &str) -> (u64, String) {
    let resp = c
        .get(upload)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET upload status {upload}: {e:?}"));
    let status = resp.status().as_u16();
    let range = header(&resp, "range");
    let location = header(&resp, "location").map(|l| absolute(base, &l));
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 204, "GET {upload} (upload status): {body}");
    let range = range.unwrap_or_else(|| panic!("GET {upload} returned no Range header"));
    (
        stored_bytes(&range),
        location.unwrap_or_else(|| upload.to_string()),
    )
}

/// Sends one chunk with PATCH + Content-Range; expects 202 and a Range covering
/// `[0, offset + len)`. Returns the newest upload URL.
async fn patch_chunk(
    c: &reqwest::Client,
    base: &str,
    upload: &str,
    pattern: &Pattern,
    offset: u64,
    len: u64,
) -> String {
    let resp = c
        .patch(upload)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", offset, offset + len - 1))
        .body(pattern.bytes(offset, len))
        .send()
        .await
        .unwrap_or_else(|e| panic!("PATCH {upload} at {offset}: {e:?}"));
    let status = resp.status().as_u16();
    let range = header(&resp, "range");
    let location = header(&resp, "location").map(|l| absolute(base, &l));
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 202, "PATCH {offset}-{}: {body}", offset + len - 1);
    let range = range.expect("PATCH response without Range header");
    assert_eq!(
        stored_bytes(&range),
        offset + len,
        "Range after PATCH: {range}"
    );
    location.unwrap_or_else(|| upload.to_string())
}

/// Streams the blob back and checks its length and sha256.
async fn assert_blob(c: &reqwest::Client, base: &str, repo: &str, digest: &str, len: u64) {
    let url = format!("{base}/v2/{repo}/blobs/{digest}");
    let head = c.head(&url).send().await.expect("HEAD blob");
    assert_eq!(head.status().as_u16(), 200, "HEAD {url}");
    assert_eq!(
        header(&head, "content-length").and_then(|v| v.parse::<u64>().ok()),
        Some(len),
        "HEAD {url} Content-Length"
    );
    let mut resp = c.get(&url).send().await.expect("GET blob");
    assert_eq!(resp.status().as_u16(), 200, "GET {url}");
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    while let Some(chunk) = resp.chunk().await.expect("reading blob body") {
        total += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(total, len, "length of the blob served");
    assert_eq!(
        format!("sha256:{}", hex::encode(hasher.finalize())),
        digest,
        "content of the blob served does not match its digest"
    );
}

async fn start_upload(c: &reqwest::Client, base: &str, repo: &str) -> String {
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(
        resp.status().as_u16(),
        202,
        "POST /v2/{repo}/blobs/uploads/"
    );
    absolute(
        base,
        &header(&resp, "location").expect("Location of the new upload"),
    )
}

async fn finish_upload(
    c: &reqwest::Client,
    upload: &str,
    digest: &str,
    last: Option<Vec<u8>>,
    range: Option<String>,
) {
    let mut req = c
        .put(with_query(upload, "digest", digest))
        .header("content-type", "application/octet-stream");
    if let Some(range) = range {
        req = req.header("content-range", range);
    }
    let resp = req
        .body(last.unwrap_or_default())
        .send()
        .await
        .unwrap_or_else(|e| panic!("PUT {upload}: {e:?}"));
    let status = resp.status().as_u16();
    let returned = header(&resp, "docker-content-digest");
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(
        status, 201,
        "PUT ?digest={digest} to finish the upload: {body}"
    );
    assert_eq!(
        returned.as_deref(),
        Some(digest),
        "Docker-Content-Digest of the finished upload"
    );
    // The session is over: its URL is gone.
    let resp = c.get(upload).send().await.expect("GET finished upload");
    assert_eq!(
        resp.status().as_u16(),
        404,
        "GET on the upload URL after the upload was completed"
    );
}

/// Bytes left below `dir` (recursively).
fn du(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => du(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// After a completed upload Berth must not keep its data in the upload area (a disk leak of
/// one blob per upload).
async fn assert_upload_area_released(server: &Server) {
    if server.kind != ServerKind::Berth {
        return;
    }
    let area = server.storage().join("uploads");
    let mut left = du(&area);
    for _ in 0..50 {
        if left < MIB {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = du(&area);
    }
    panic!(
        "{left} bytes still in {} after the upload completed",
        area.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_streaming_patch_then_resume() {
    const TOTAL: u64 = 200 * MIB;
    const KILL_AFTER: u64 = 100 * MIB;
    let mut server = Server::start();
    let base = server.url();
    let c = client();
    let repo = "resume/big";
    let pattern = Pattern::new(0x5eed_0001);

    let t = Instant::now();
    let digest = pattern.digest(TOTAL);
    eprintln!("digest of {TOTAL} bytes: {digest} ({:?})", t.elapsed());

    let upload = start_upload(&c, &base, repo).await;

    // One PATCH, no Content-Range, no Content-Length: a chunked stream that stops after
    // KILL_AFTER bytes and hangs there, as a client on a dying connection would.
    let yielded = Arc::new(AtomicU64::new(0));
    let (paused_tx, paused_rx) = tokio::sync::oneshot::channel();
    let body = pattern.body(0, TOTAL, yielded.clone(), Some((KILL_AFTER, paused_tx)));
    let request = c
        .patch(&upload)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send();
    let in_flight = tokio::spawn(request);
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(300), paused_rx)
        .await
        .expect("streaming 100 MiB into the server took more than 300 s")
        .expect("body stream dropped before reaching the kill point");
    eprintln!(
        "streamed {} bytes in {:?}",
        yielded.load(Ordering::SeqCst),
        t.elapsed()
    );
    // Let the server drain what is in the socket buffers, then kill it hard.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sent = yielded.load(Ordering::SeqCst);
    server.kill9();
    match tokio::time::timeout(Duration::from_secs(30), in_flight).await {
        Ok(Ok(Ok(resp))) => panic!(
            "the interrupted PATCH got a response although the body never finished: {}",
            resp.status()
        ),
        Ok(Ok(Err(e))) => eprintln!("interrupted PATCH failed as expected: {e}"),
        Ok(Err(join)) => panic!("PATCH task panicked: {join}"),
        Err(_) => panic!("the PATCH did not notice the server's death within 30 s"),
    }

    server.start_again();
    let (stored, upload) = upload_status(&c, &base, &upload).await;
    eprintln!("after kill -9: server kept {stored} of {sent} bytes sent");
    assert!(
        stored > 0,
        "nothing of the {sent} bytes streamed survived kill -9"
    );
    assert!(
        stored <= sent,
        "server claims {stored} bytes but only {sent} were sent"
    );

    // Continue from where the server says it is, with an explicit range and length.
    let rest = TOTAL - stored;
    let resp = c
        .patch(&upload)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{stored}-{}", TOTAL - 1))
        .header("content-length", rest.to_string())
        .body(pattern.body(stored, TOTAL, Arc::new(AtomicU64::new(0)), None))
        .send()
        .await
        .expect("PATCH with the rest of the blob");
    let status = resp.status().as_u16();
    let range = header(&resp, "range");
    let location = header(&resp, "location").map(|l| absolute(&base, &l));
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 202, "PATCH {stored}-{}: {text}", TOTAL - 1);
    assert_eq!(
        range.as_deref().map(stored_bytes),
        Some(TOTAL),
        "Range after the resumed PATCH: {range:?}"
    );
    let upload = location.unwrap_or(upload);

    finish_upload(&c, &upload, &digest, None, None).await;
    assert_blob(&c, &base, repo, &digest, TOTAL).await;
    assert_upload_area_released(&server).await;
}

#[tokio::test]
async fn restarts_between_chunks_lose_nothing() {
    const CHUNK: u64 = 5 * MIB;
    const TOTAL: u64 = 3 * CHUNK + 12_345;
    let mut server = Server::start();
    let base = server.url();
    let c = client();
    let repo = "resume/chunks";
    let pattern = Pattern::new(0x5eed_0002);
    let digest = pattern.digest(TOTAL);

    let upload = start_upload(&c, &base, repo).await;
    let upload = patch_chunk(&c, &base, &upload, &pattern, 0, CHUNK).await;

    // Graceful restart between chunks.
    server.restart();
    let (stored, upload) = upload_status(&c, &base, &upload).await;
    assert_eq!(stored, CHUNK, "bytes stored after a graceful restart");
    let upload = patch_chunk(&c, &base, &upload, &pattern, CHUNK, CHUNK).await;

    // kill -9 between chunks: every acknowledged (202) chunk must still be there.
    server.kill9();
    server.start_again();
    let (stored, upload) = upload_status(&c, &base, &upload).await;
    assert_eq!(
        stored,
        2 * CHUNK,
        "bytes stored after kill -9 between chunks"
    );

    // A chunk that does not start at the current offset is refused with 416 and the Range.
    let resp = c
        .patch(&upload)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", 2 * CHUNK + 1, 3 * CHUNK))
        .body(pattern.bytes(2 * CHUNK + 1, CHUNK))
        .send()
        .await
        .expect("out-of-order PATCH");
    assert_eq!(resp.status().as_u16(), 416, "out-of-order chunk");
    if let Some(range) = header(&resp, "range") {
        assert_eq!(stored_bytes(&range), 2 * CHUNK, "Range in the 416 response");
    }
    let (stored, upload) = upload_status(&c, &base, &upload).await;
    assert_eq!(
        stored,
        2 * CHUNK,
        "a refused chunk must not change the upload"
    );

    let upload = patch_chunk(&c, &base, &upload, &pattern, 2 * CHUNK, CHUNK).await;
    server.restart();
    // The last bytes ride on the closing PUT.
    let last = pattern.bytes(3 * CHUNK, TOTAL - 3 * CHUNK);
    finish_upload(
        &c,
        &upload,
        &digest,
        Some(last),
        Some(format!("{}-{}", 3 * CHUNK, TOTAL - 1)),
    )
    .await;
    server.restart();
    assert_blob(&c, &base, repo, &digest, TOTAL).await;
    assert_upload_area_released(&server).await;
}
