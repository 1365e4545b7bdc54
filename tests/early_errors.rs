//! A request refused before its body is read still gets its answer: the
//! server drains the body instead of closing on a client that is still
//! sending (which the client would see as a broken pipe, not as the error).

mod common;

use common::{client, error_codes, header, Server, OCI_MANIFEST};

/// Larger than loopback socket buffers, so an undrained body would block the client.
const BIG: usize = 16 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misplaced_large_chunk_gets_416_not_a_broken_pipe() {
    let server = Server::start();
    let (base, c) = (server.url(), client());
    let resp = c
        .post(format!("{base}/v2/early/blobs/uploads/"))
        .send()
        .await
        .expect("POST");
    let url = common::absolute(&base, &header(&resp, "location").expect("Location"));
    for attempt in 0..3 {
        let resp = c
            .patch(&url)
            .header("content-range", format!("100-{}", 100 + BIG - 1))
            .body(vec![1u8; BIG])
            .send()
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: no answer to a misplaced chunk: {e}"));
        assert_eq!(resp.status().as_u16(), 416);
        assert_eq!(header(&resp, "range").as_deref(), Some("0-0"));
    }
    // The session is untouched and still usable.
    let resp = c.get(&url).send().await.expect("status");
    assert_eq!(
        (resp.status().as_u16(), header(&resp, "range").as_deref()),
        (204, Some("0-0"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_manifest_gets_413_not_a_broken_pipe() {
    let server = Server::start();
    let (base, c) = (server.url(), client());
    let mut body = b"{\"schemaVersion\":2,\"annotations\":{\"pad\":\"".to_vec();
    body.resize(BIG, b'x');
    let resp = c
        .put(format!("{base}/v2/early/manifests/big"))
        .header("content-type", OCI_MANIFEST)
        .body(body)
        .send()
        .await
        .expect("an answer to an oversized manifest");
    assert_eq!(resp.status().as_u16(), 413);
    let codes = error_codes(&resp.bytes().await.expect("body")).expect("spec error body");
    assert_eq!(codes, vec!["SIZE_INVALID".to_string()]);
}
