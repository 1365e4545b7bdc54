//! Push workflow: blob uploads (monolithic, single POST, chunked, streamed),
//! upload sessions, mounts, manifest uploads.

use super::{check, Check};
use crate::http::{Ctx, Resp};
use crate::util::{self, Blob, Manifest, OCI_LAYER_NONDIST, OCI_MANIFEST};
use anyhow::{Context as _, Result};
use reqwest::Method;
use serde_json::json;

pub fn checks() -> Vec<Check> {
    vec![
        check!("push.blob.post-put", Must,
            "POST /blobs/uploads/ -> 202 + Location; PUT <location>?digest= -> 201 + Location; the blob is pullable",
            post_put),
        check!("push.blob.post-put.digest-header", Should,
            "the 201 of a completed upload carries Docker-Content-Digest equal to the digest",
            post_put_digest_header),
        check!("push.blob.single-post", Should,
            "POST /blobs/uploads/?digest= with the body -> 201 (or 202 fallback then PUT -> 201)",
            single_post),
        check!("push.blob.chunked", Must,
            "PATCH chunks with Content-Range/Content-Length -> 202 + Location + Range each, following each Location; PUT -> 201",
            chunked),
        check!("push.blob.chunked.final-chunk-in-put", Must,
            "the last chunk may travel in the closing PUT (with Content-Range)",
            chunked_final_in_put),
        check!("push.blob.patch-without-content-range", Should,
            "PATCH with the whole blob and no Content-Range (streamed upload) -> 202 + Range; PUT -> 201",
            patch_without_range),
        check!("push.blob.patch-chunked-transfer-encoding", Should,
            "PATCH with Transfer-Encoding: chunked and neither Content-Length nor Content-Range (docker push style) -> 202",
            patch_chunked_encoding),
        check!("push.blob.chunk-out-of-order", Must,
            "a first chunk not starting at 0, or a chunk leaving a gap, -> 416",
            chunk_out_of_order),
        check!("push.blob.upload-status", Must,
            "GET <location> of an active upload -> 204 with Location and Range 0-<end>; resuming from that Location works",
            upload_status),
        check!("push.blob.resume-after-416", Must,
            "after a 416 the session survives: GET shows the accepted range and the next in-order chunk is accepted",
            resume_after_416),
        check!("push.blob.first-location-reused", Extra,
            "the FIRST Location (from POST) still works after a PATCH, for the next PATCH and the PUT (stateless sessions)",
            first_location_reused),
        check!("push.blob.cancel", Must,
            "DELETE <location> cancels the upload (SHOULD 204); GET <location> then -> 404 BLOB_UPLOAD_UNKNOWN",
            cancel_upload),
        check!("push.blob.unknown-upload", Must,
            "GET/PATCH/PUT on an upload id that never existed -> 404 BLOB_UPLOAD_UNKNOWN",
            unknown_upload),
        check!("push.blob.digest-mismatch", Must,
            "PUT ?digest= not matching the content -> 400 DIGEST_INVALID, and the blob is not retrievable",
            digest_mismatch),
        check!("push.blob.invalid-digest-param", Must,
            "closing PUT with a malformed ?digest= -> 400 DIGEST_INVALID; without ?digest= -> 400 (never 5xx, nothing stored)",
            invalid_digest_param),
        check!("push.blob.empty", Must,
            "a 0-byte blob can be pushed and pulled (HEAD Content-Length: 0)",
            empty_blob),
        check!("push.blob.chunked-large", Must,
            "a ~6 MiB blob in 2 MiB PATCH chunks arrives intact",
            chunked_large),
        check!("push.blob.session-closed-after-put", Should,
            "after the closing PUT the upload URL is gone: GET/PATCH -> 404 BLOB_UPLOAD_UNKNOWN",
            session_closed_after_put),
        check!("push.blob.concurrent-same-content", Must,
            "two concurrent uploads of the same content both complete (201), and re-pushing an existing blob succeeds",
            concurrent_same_content),
        check!("push.blob.sha512", Should,
            "push a blob by sha512 digest; HEAD/GET by that digest return it",
            sha512),
        check!("push.blob.mount", Must,
            "POST ?mount=<digest>&from=<repo> of an existing blob -> 201 + Location (or 202 session: reported)",
            mount),
        check!("push.blob.mount-unknown-blob", Should,
            "mount of a blob that does not exist -> 202 with a working upload session",
            mount_unknown),
        check!("push.blob.mount-without-from", Should,
            "POST ?mount=<digest> without from, blob exists elsewhere -> 201 or 202 (both legal; reported)",
            mount_without_from),
        check!("push.manifest.by-tag", Must,
            "PUT /manifests/<tag> -> 201 + Location (pullable) + Docker-Content-Digest equal to the digest",
            manifest_by_tag),
        check!("push.manifest.by-digest", Must,
            "PUT /manifests/<digest> -> 201 + Location + Docker-Content-Digest",
            manifest_by_digest),
        check!("push.manifest.tag-update", Must,
            "pushing another manifest to an existing tag moves the tag",
            manifest_tag_update),
        check!("push.manifest.content-type-parameters", Should,
            "a manifest pushed with Content-Type parameters is accepted; GET returns the bare media type",
            manifest_content_type_params),
        check!("push.manifest.without-media-type-field", Should,
            "a manifest with no mediaType field is served with the Content-Type it was pushed with",
            manifest_without_media_type),
        check!("push.manifest.tag-format", Should,
            "tags matching [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127} are accepted (incl. 128 chars); 129 chars or a leading . or - -> 400 (or 404: the spec names no status; end-7 lists 404)",
            manifest_tag_format),
        check!("push.manifest.digest-mismatch", Must,
            "PUT /manifests/<digest> whose digest does not match the body -> 400 DIGEST_INVALID",
            manifest_digest_mismatch),
        check!("push.manifest.blob-unknown", Should,
            "a manifest referencing a missing layer blob -> 400 MANIFEST_BLOB_UNKNOWN",
            manifest_blob_unknown),
        check!("push.manifest.invalid-json", Should,
            "a manifest body that is not JSON -> 400 MANIFEST_INVALID",
            manifest_invalid_json),
        check!("push.manifest.nondistributable-layer", Should,
            "a manifest with a non-distributable layer whose blob is absent is accepted",
            manifest_nondistributable),
        check!("push.manifest.size-4mb-accepted", Should,
            "a manifest of 4,000,000 bytes is accepted (clients and registries SHOULD support at least 4 MB)",
            manifest_4mb_ok),
        check!("push.manifest.too-large", Should,
            "a manifest over 4 MiB -> 413 (or 400 SIZE_INVALID/MANIFEST_INVALID: reported)",
            manifest_too_large),
    ]
}

fn upload_path(repo: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/")
}

/// `Range: 0-<end>` on an upload response.
fn expect_range(r: &Resp, end: usize) -> Result<()> {
    let got = r.require_header("range")?;
    let want = format!("0-{end}");
    if got != want {
        bail!("Range is {got:?}, expected {want:?} ({})", r.what);
    }
    Ok(())
}

/// GET the blob and compare bytes.
pub async fn expect_blob(c: &Ctx, repo: &str, blob: &Blob) -> Result<()> {
    let r = c.get(&format!("/v2/{repo}/blobs/{}", blob.digest)).await?;
    r.expect_status(&[200])
        .context("the uploaded blob is not pullable")?;
    r.expect_body(&blob.bytes)
}

async fn expect_blob_absent(c: &Ctx, repo: &str, digest: &str) -> Result<()> {
    let r = c.head(&format!("/v2/{repo}/blobs/{digest}")).await?;
    if r.status != 404 {
        bail!("blob {digest} should not exist: {}", r.summary());
    }
    Ok(())
}

async fn post_put(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(3000);
    let r = c
        .send(
            c.request(Method::POST, c.url(&upload_path(&repo))?)
                .body(Vec::new()),
        )
        .await?;
    r.expect_status(&[202])?;
    let loc = r.location()?;
    let put = c.put_upload(&loc, &blob.digest, &blob.bytes, None).await?;
    put.expect_status(&[201])?;
    let blob_loc = put.location()?;
    let got = c.get(&blob_loc).await?;
    got.expect_status(&[200])
        .context("GET of the Location returned by the 201")?;
    got.expect_body(&blob.bytes)?;
    expect_blob(c, &repo, &blob).await?;
    let _ = (loc, blob_loc);
    Ok("202 + Location, then 201 + Location (pullable)".into())
}

async fn post_put_digest_header(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(1000);
    let loc = c.start_upload(&repo).await?;
    let put = c.put_upload(&loc, &blob.digest, &blob.bytes, None).await?;
    put.expect_status(&[201])?;
    put.expect_header("docker-content-digest", &blob.digest)?;
    Ok("Docker-Content-Digest matches".into())
}

async fn single_post(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(2048);
    let url = c.url(&format!(
        "{}?digest={}",
        upload_path(&repo),
        util::qenc(&blob.digest)
    ))?;
    let r = c
        .send(
            c.request(Method::POST, url)
                .header("Content-Type", "application/octet-stream")
                .body(blob.bytes.clone()),
        )
        .await?;
    let how = match r.status {
        201 => {
            r.location()?;
            expect_digest_if_sent(&r, &blob)?;
            "201 Created: single-POST upload supported".to_string()
        }
        202 => {
            let loc = r.location()?;
            let put = c.put_upload(&loc, &blob.digest, &blob.bytes, None).await?;
            put.expect_status(&[201])
                .context("completing the 202 fallback with PUT")?;
            put.location().context("the 201 of the fallback PUT")?;
            "202 Accepted fallback (single POST unsupported), PUT -> 201".to_string()
        }
        _ => bail!("expected 201 or 202: {}", r.summary()),
    };
    expect_blob(c, &repo, &blob).await?;
    Ok(how)
}

async fn chunked(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(3 * 1024 + 17);
    let mut loc = c.start_upload(&repo).await?;
    let cuts = [0, 1024, 2048, blob.bytes.len()];
    let mut locations = vec![loc.clone()];
    for w in cuts.windows(2) {
        let (a, b) = (w[0], w[1]);
        let r = c
            .patch_chunk(&loc, &blob.bytes[a..b], Some((a, b - 1)))
            .await?;
        r.expect_status(&[202])
            .with_context(|| format!("chunk {a}-{}", b - 1))?;
        expect_range(&r, b - 1)?;
        loc = r.location()?;
        locations.push(loc.clone());
    }
    let put = c.put_upload(&loc, &blob.digest, &[], None).await?;
    put.expect_status(&[201])?;
    put.location()?;
    expect_blob(c, &repo, &blob).await?;
    Ok(format!("3 chunks, {} locations followed", locations.len()))
}

async fn chunked_final_in_put(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(2000);
    let loc = c.start_upload(&repo).await?;
    let r = c
        .patch_chunk(&loc, &blob.bytes[..1200], Some((0, 1199)))
        .await?;
    r.expect_status(&[202])?;
    expect_range(&r, 1199)?;
    let loc = r.location()?;
    let put = c
        .put_upload(&loc, &blob.digest, &blob.bytes[1200..], Some((1200, 1999)))
        .await?;
    put.expect_status(&[201])?;
    put.location()?;
    expect_blob(c, &repo, &blob).await?;
    Ok("final chunk accepted in PUT".into())
}

async fn patch_without_range(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(4096);
    let loc = c.start_upload(&repo).await?;
    let r = c.patch_chunk(&loc, &blob.bytes, None).await?;
    r.expect_status(&[202])?;
    expect_range(&r, blob.bytes.len() - 1)?;
    let loc = r.location()?;
    let put = c.put_upload(&loc, &blob.digest, &[], None).await?;
    put.expect_status(&[201])?;
    expect_blob(c, &repo, &blob).await?;
    Ok("202 with Range, then 201".into())
}

async fn patch_chunked_encoding(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(5000);
    let loc = c.start_upload(&repo).await?;
    let url = c.url(&loc)?;
    let path = match url.query() {
        Some(q) => format!("{}?{}", url.path(), q),
        None => url.path().to_string(),
    };
    let parts: [&[u8]; 3] = [
        &blob.bytes[..1000],
        &blob.bytes[1000..3000],
        &blob.bytes[3000..],
    ];
    let r = c
        .raw(
            "PATCH",
            &path,
            &[("Content-Type", "application/octet-stream")],
            Some(&parts),
        )
        .await?;
    r.expect_status(&[202])?;
    expect_range(&r, blob.bytes.len() - 1)?;
    let loc = r.location()?;
    let put = c.put_upload(&loc, &blob.digest, &[], None).await?;
    put.expect_status(&[201])?;
    expect_blob(c, &repo, &blob).await?;
    Ok("chunked transfer-encoding PATCH accepted".into())
}

async fn chunk_out_of_order(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let data = c.rng.bytes(100);
    // First chunk not starting at 0.
    let loc = c.start_upload(&repo).await?;
    let r = c.patch_chunk(&loc, &data[..50], Some((50, 99))).await?;
    r.expect_status(&[416])
        .context("first chunk with Content-Range 50-99")?;
    if !r.body.is_empty() && r.json().is_ok() {
        r.expect_error_body(&[])?;
    }
    let _ = c.delete(&loc).await;
    // A gap after a valid chunk.
    let loc = c.start_upload(&repo).await?;
    let r = c.patch_chunk(&loc, &data[..40], Some((0, 39))).await?;
    r.expect_status(&[202])?;
    let loc = r.location()?;
    let r = c.patch_chunk(&loc, &data[60..], Some((60, 99))).await?;
    r.expect_status(&[416])
        .context("chunk 60-99 after 0-39 (gap)")?;
    if !r.body.is_empty() && r.json().is_ok() {
        r.expect_error_body(&[])?;
    }
    let _ = c.delete(&loc).await;
    Ok("both out-of-order chunks refused with 416".into())
}

async fn upload_status(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(3000);
    let loc = c.start_upload(&repo).await?;
    let r = c
        .patch_chunk(&loc, &blob.bytes[..1000], Some((0, 999)))
        .await?;
    r.expect_status(&[202])?;
    let loc = r.location()?;
    let st = c.get(&loc).await?;
    st.expect_status(&[204])?;
    expect_range(&st, 999)?;
    let loc = st.location()?;
    let r = c
        .patch_chunk(&loc, &blob.bytes[1000..], Some((1000, 2999)))
        .await?;
    r.expect_status(&[202])
        .context("resuming with the Location from the status response")?;
    let loc = r.location()?;
    let st = c.get(&loc).await?;
    st.expect_status(&[204])?;
    expect_range(&st, 2999)?;
    let put = c
        .put_upload(&st.location()?, &blob.digest, &[], None)
        .await?;
    put.expect_status(&[201])?;
    expect_blob(c, &repo, &blob).await?;
    Ok("204 with Range 0-999, then 0-2999".into())
}

async fn resume_after_416(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(300);
    let loc = c.start_upload(&repo).await?;
    let r = c
        .patch_chunk(&loc, &blob.bytes[..100], Some((0, 99)))
        .await?;
    r.expect_status(&[202])?;
    let loc = r.location()?;
    let r = c
        .patch_chunk(&loc, &blob.bytes[150..], Some((150, 299)))
        .await?;
    r.expect_status(&[416])?;
    let st = c.get(&loc).await?;
    st.expect_status(&[204])
        .context("upload status after the 416")?;
    expect_range(&st, 99)?;
    let loc = st.location()?;
    let r = c
        .patch_chunk(&loc, &blob.bytes[100..], Some((100, 299)))
        .await?;
    r.expect_status(&[202])
        .context("in-order chunk after the 416")?;
    let put = c
        .put_upload(&r.location()?, &blob.digest, &[], None)
        .await?;
    put.expect_status(&[201])?;
    expect_blob(c, &repo, &blob).await?;
    Ok("session survived the 416".into())
}

async fn first_location_reused(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(2000);
    let first = c.start_upload(&repo).await?;
    let r = c
        .patch_chunk(&first, &blob.bytes[..800], Some((0, 799)))
        .await?;
    r.expect_status(&[202])?;
    let st = c.get(&first).await?;
    st.expect_status(&[204])
        .context("GET status on the first Location")?;
    expect_range(&st, 799).context("status through the first Location")?;
    let r = c
        .patch_chunk(&first, &blob.bytes[800..], Some((800, 1999)))
        .await?;
    r.expect_status(&[202])
        .context("second PATCH sent to the first Location")?;
    expect_range(&r, 1999)?;
    let put = c.put_upload(&first, &blob.digest, &[], None).await?;
    put.expect_status(&[201])
        .context("closing PUT sent to the first Location")?;
    expect_blob(c, &repo, &blob).await?;
    Ok("first Location stays valid".into())
}

async fn cancel_upload(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let data = c.rng.bytes(500);
    let loc = c.start_upload(&repo).await?;
    let r = c.patch_chunk(&loc, &data, Some((0, 499))).await?;
    r.expect_status(&[202])?;
    let loc = r.location()?;
    let d = c.delete(&loc).await?;
    d.expect_status(&[200, 202, 204])
        .context("DELETE of the upload session")?;
    let st = c.get(&loc).await?;
    let got = st
        .expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"])
        .context("GET status after cancel")?;
    let r = c.patch_chunk(&loc, &data, Some((500, 999))).await?;
    r.expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"])
        .context("PATCH after cancel")?;
    Ok(format!("DELETE -> {}, then {got}", d.status))
}

async fn unknown_upload(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    // Create the repository first, so that only the upload id is unknown.
    let blob = c.random_blob(64);
    c.push_blob(&repo, &blob.bytes, &blob.digest).await?;
    let h = hex::encode(c.rng.bytes(16));
    let id = format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    );
    let loc = format!("/v2/{repo}/blobs/uploads/{id}");
    let g = c.get(&loc).await?;
    g.expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"])
        .context("GET")?;
    let p = c.patch_chunk(&loc, b"abc", Some((0, 2))).await?;
    p.expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"])
        .context("PATCH")?;
    let put = c
        .put_upload(&loc, &util::sha256_digest(b"abc"), b"abc", None)
        .await?;
    put.expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"])
        .context("PUT")?;
    Ok("404 BLOB_UPLOAD_UNKNOWN for GET, PATCH and PUT".into())
}

async fn digest_mismatch(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(700);
    let wrong = c.rng.unknown_digest();
    let loc = c.start_upload(&repo).await?;
    let put = c.put_upload(&loc, &wrong, &blob.bytes, None).await?;
    let got = put.expect_error(&[400], &["DIGEST_INVALID"])?;
    expect_blob_absent(c, &repo, &wrong)
        .await
        .context("blob under the claimed digest")?;
    expect_blob_absent(c, &repo, &blob.digest)
        .await
        .context("blob under the content's real digest")?;
    Ok(got)
}

async fn invalid_digest_param(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let mut seen = Vec::new();
    for bad in ["sha256:not-a-hex-digest", "sha256:1234", "nodigest"] {
        let loc = c.start_upload(&repo).await?;
        let put = c.put_upload(&loc, bad, b"hello", None).await?;
        let got = put
            .expect_error(&[400], &["DIGEST_INVALID"])
            .with_context(|| format!("?digest={bad}"))?;
        seen.push(format!("{bad}: {got}"));
        let _ = c.delete(&loc).await;
    }
    // The closing PUT MUST carry the digest: without it, nothing is stored.
    let loc = c.start_upload(&repo).await?;
    let r = c
        .send(
            c.request(Method::PUT, c.url(&loc)?)
                .header("Content-Type", "application/octet-stream")
                .body(b"hello".to_vec()),
        )
        .await?;
    let got = r
        .expect_error(&[400], &["DIGEST_INVALID", "BLOB_UPLOAD_INVALID"])
        .context("closing PUT without ?digest=")?;
    seen.push(format!("no digest: {got}"));
    let _ = c.delete(&loc).await;
    Ok(seen.join("; "))
}

async fn empty_blob(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = Blob::new(Vec::new(), "application/octet-stream");
    let loc = c.start_upload(&repo).await?;
    let put = c.put_upload(&loc, &blob.digest, &[], None).await?;
    put.expect_status(&[201])?;
    let h = c.head(&format!("/v2/{repo}/blobs/{}", blob.digest)).await?;
    h.expect_status(&[200])?;
    let len = h.require_header("content-length")?;
    if len != "0" {
        bail!("HEAD Content-Length {len}, expected 0");
    }
    expect_blob(c, &repo, &blob).await?;
    Ok("0-byte blob pushed and pulled".into())
}

async fn chunked_large(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let chunk = 2 * 1024 * 1024;
    let blob = c.random_blob(3 * chunk + 12345);
    let mut loc = c.start_upload(&repo).await?;
    let mut start = 0;
    while start < blob.bytes.len() {
        let end = (start + chunk).min(blob.bytes.len());
        let r = c
            .patch_chunk(&loc, &blob.bytes[start..end], Some((start, end - 1)))
            .await?;
        r.expect_status(&[202])?;
        expect_range(&r, end - 1)?;
        loc = r.location()?;
        start = end;
    }
    let put = c.put_upload(&loc, &blob.digest, &[], None).await?;
    put.expect_status(&[201])?;
    expect_blob(c, &repo, &blob).await?;
    Ok(format!("{} bytes in 2 MiB chunks", blob.bytes.len()))
}

async fn session_closed_after_put(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(700);
    let loc = c.start_upload(&repo).await?;
    let r = c.patch_chunk(&loc, &blob.bytes, Some((0, 699))).await?;
    r.expect_status(&[202])?;
    let loc = r.location()?;
    let put = c.put_upload(&loc, &blob.digest, &[], None).await?;
    put.expect_status(&[201])?;
    let st = c.get(&loc).await?;
    let got = st
        .expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"])
        .context("GET status of a completed upload")?;
    let p = c.patch_chunk(&loc, b"more", Some((700, 703))).await?;
    p.expect_error(&[404], &["BLOB_UPLOAD_UNKNOWN"])
        .context("PATCH to a completed upload")?;
    expect_blob(c, &repo, &blob).await?;
    Ok(got)
}

async fn concurrent_same_content(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let blob = c.random_blob(64 * 1024);
    let one = async {
        let loc = c.start_upload(&repo).await?;
        let r = c
            .patch_chunk(&loc, &blob.bytes[..30000], Some((0, 29999)))
            .await?;
        r.expect_status(&[202])?;
        let loc = r.location()?;
        c.put_upload(
            &loc,
            &blob.digest,
            &blob.bytes[30000..],
            Some((30000, blob.bytes.len() - 1)),
        )
        .await
    };
    let two = async {
        let loc = c.start_upload(&repo).await?;
        c.put_upload(&loc, &blob.digest, &blob.bytes, None).await
    };
    let (a, b) = tokio::join!(one, two);
    a?.expect_status(&[201]).context("first session")?;
    b?.expect_status(&[201]).context("second session")?;
    // And once more now that the blob exists.
    let loc = c.start_upload(&repo).await?;
    let again = c.put_upload(&loc, &blob.digest, &blob.bytes, None).await?;
    again
        .expect_status(&[201])
        .context("re-pushing an existing blob")?;
    expect_blob(c, &repo, &blob).await?;
    Ok("two concurrent uploads and a re-push all 201".into())
}

async fn sha512(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let bytes = c.rng.bytes(1500);
    let digest = util::sha512_digest(&bytes);
    let loc = c.start_upload(&repo).await?;
    let put = c.put_upload(&loc, &digest, &bytes, None).await?;
    put.expect_status(&[201])?;
    let h = c.head(&format!("/v2/{repo}/blobs/{digest}")).await?;
    h.expect_status(&[200]).context("HEAD by sha512 digest")?;
    let g = c.get(&format!("/v2/{repo}/blobs/{digest}")).await?;
    g.expect_status(&[200]).context("GET by sha512 digest")?;
    g.expect_body(&bytes)?;
    if let Some(d) = g.header("docker-content-digest") {
        if !util::digest_matches(&d, &g.body) {
            bail!("Docker-Content-Digest {d} does not match the body");
        }
        return Ok(format!(
            "pushed and pulled; Docker-Content-Digest {}",
            &d[..10.min(d.len())]
        ));
    }
    Ok("pushed and pulled by sha512".into())
}

async fn mount(c: &Ctx) -> Result<String> {
    let src = c.repo("mount-src");
    let dst = c.repo("mount-dst");
    let blob = c.random_blob(900);
    c.push_blob(&src, &blob.bytes, &blob.digest).await?;
    // Make sure the destination repository exists too.
    let other = c.random_blob(32);
    c.push_blob(&dst, &other.bytes, &other.digest).await?;
    let url = c.url(&format!(
        "{}?mount={}&from={}",
        upload_path(&dst),
        util::qenc(&blob.digest),
        util::qenc(&src)
    ))?;
    let r = c
        .send(c.request(Method::POST, url).body(Vec::new()))
        .await?;
    match r.status {
        201 => {
            let loc = r.location()?;
            expect_digest_if_sent(&r, &blob)?;
            let g = c.get(&loc).await?;
            g.expect_status(&[200])
                .context("GET of the mount's Location")?;
            expect_blob(c, &dst, &blob).await?;
            Ok("201 Created: blob mounted".into())
        }
        202 => {
            complete_fallback_session(c, &dst, &r, &blob).await?;
            Ok("202 Accepted: registry declined to mount; the upload session it opened works (allowed)".into())
        }
        _ => bail!("expected 201 (or 202): {}", r.summary()),
    }
}

/// A Docker-Content-Digest on a 201 that creates a blob "returns the
/// canonical digest of the uploaded blob which MAY differ from the provided
/// digest" (another algorithm), so it must be a digest of the blob's bytes.
fn expect_digest_if_sent(r: &Resp, blob: &Blob) -> Result<()> {
    if let Some(d) = r.header("docker-content-digest") {
        if !util::digest_matches(&d, &blob.bytes) {
            bail!(
                "Docker-Content-Digest {d} is not a digest of the blob ({}): {}",
                blob.digest,
                r.what
            );
        }
    }
    Ok(())
}

/// After a 202 answer to a mount, the session must be usable for a normal upload.
async fn complete_fallback_session(c: &Ctx, repo: &str, r: &Resp, blob: &Blob) -> Result<()> {
    let loc = r.location()?;
    let put = c.put_upload(&loc, &blob.digest, &blob.bytes, None).await?;
    put.expect_status(&[201])
        .context("completing the upload session opened by the 202")?;
    expect_blob(c, repo, blob).await
}

async fn mount_unknown(c: &Ctx) -> Result<String> {
    let src = c.repo("mount-src");
    let dst = c.repo("mount-dst");
    let seed = c.random_blob(16);
    c.push_blob(&src, &seed.bytes, &seed.digest).await?;
    let missing = c.rng.unknown_digest();
    let url = c.url(&format!(
        "{}?mount={}&from={}",
        upload_path(&dst),
        util::qenc(&missing),
        util::qenc(&src)
    ))?;
    let r = c
        .send(c.request(Method::POST, url).body(Vec::new()))
        .await?;
    r.expect_status(&[202])?;
    let loc = r.location()?;
    let blob = c.random_blob(400);
    let put = c.put_upload(&loc, &blob.digest, &blob.bytes, None).await?;
    put.expect_status(&[201])
        .context("using the session the failed mount opened")?;
    expect_blob(c, &dst, &blob).await?;
    expect_blob_absent(c, &dst, &missing).await?;
    Ok("202 with a working session".into())
}

async fn mount_without_from(c: &Ctx) -> Result<String> {
    let src = c.repo("mount-src");
    let dst = c.repo("mount-nofrom");
    let blob = c.random_blob(600);
    c.push_blob(&src, &blob.bytes, &blob.digest).await?;
    let url = c.url(&format!(
        "{}?mount={}",
        upload_path(&dst),
        util::qenc(&blob.digest)
    ))?;
    let r = c
        .send(c.request(Method::POST, url).body(Vec::new()))
        .await?;
    match r.status {
        201 => {
            r.location()?;
            expect_blob(c, &dst, &blob).await?;
            Ok("201 Created: mounted without from".into())
        }
        202 => {
            complete_fallback_session(c, &dst, &r, &blob).await?;
            Ok("202 Accepted: upload session opened instead, and it works".into())
        }
        _ => bail!("expected 201 or 202: {}", r.summary()),
    }
}

/// Checks the 201 of a manifest PUT: Location (pullable) and Docker-Content-Digest.
async fn check_manifest_created(c: &Ctx, r: &Resp, m: &Manifest) -> Result<()> {
    r.expect_status(&[201])?;
    let loc = r.location()?;
    r.expect_header("docker-content-digest", &m.digest)?;
    let rb = c
        .request(Method::GET, c.url(&loc)?)
        .header("Accept", util::MANIFEST_ACCEPT);
    let g = c.send(rb).await?;
    g.expect_status(&[200])
        .context("GET of the Location returned by the manifest PUT")?;
    g.expect_body(&m.bytes)
}

async fn manifest_by_tag(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(2);
    c.push_blobs(&repo, &[&img.config, &img.layers[0], &img.layers[1]])
        .await?;
    let r = c
        .put_manifest_raw(&repo, "by-tag", OCI_MANIFEST, img.manifest.bytes.clone())
        .await?;
    check_manifest_created(c, &r, &img.manifest).await?;
    Ok("201 with Location and Docker-Content-Digest".into())
}

async fn manifest_by_digest(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let r = c
        .put_manifest_raw(
            &repo,
            &img.manifest.digest,
            OCI_MANIFEST,
            img.manifest.bytes.clone(),
        )
        .await?;
    check_manifest_created(c, &r, &img.manifest).await?;
    Ok("201 with Location and Docker-Content-Digest".into())
}

async fn manifest_tag_update(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let a = c.push_image(&repo, Some("moving"), 1).await?;
    let b = c.push_image(&repo, Some("moving"), 1).await?;
    let g = c.get_manifest(&repo, "moving").await?;
    g.expect_status(&[200])?;
    if g.body == a.manifest.bytes {
        bail!("the tag still returns the first manifest after the second push");
    }
    g.expect_body(&b.manifest.bytes)?;
    let old = c.get_manifest(&repo, &a.manifest.digest).await?;
    old.expect_status(&[200])
        .context("the first manifest by digest")?;
    Ok("tag now points to the second manifest".into())
}

async fn manifest_digest_mismatch(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let wrong = c.rng.unknown_digest();
    let r = c
        .put_manifest_raw(&repo, &wrong, OCI_MANIFEST, img.manifest.bytes.clone())
        .await?;
    let got = r.expect_error(&[400], &["DIGEST_INVALID"])?;
    let g = c.head_manifest(&repo, &wrong).await?;
    if g.status != 404 {
        bail!("manifest stored under the wrong digest: {}", g.summary());
    }
    Ok(got)
}

async fn manifest_blob_unknown(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    // Config present, layer never uploaded.
    c.push_blobs(&repo, &[&img.config]).await?;
    let r = c
        .put_manifest_raw(
            &repo,
            "missing-layer",
            OCI_MANIFEST,
            img.manifest.bytes.clone(),
        )
        .await?;
    r.expect_error(&[400], &["MANIFEST_BLOB_UNKNOWN"])
}

async fn manifest_content_type_params(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let r = c
        .put_manifest_raw(
            &repo,
            "ct-params",
            &format!("{OCI_MANIFEST}; charset=utf-8"),
            img.manifest.bytes.clone(),
        )
        .await?;
    r.expect_status(&[201])?;
    let g = c.get_manifest(&repo, "ct-params").await?;
    g.expect_status(&[200])?;
    g.expect_body(&img.manifest.bytes)?;
    let ct = g.require_header("content-type")?;
    if ct != OCI_MANIFEST {
        bail!("Content-Type {ct:?}, expected exactly {OCI_MANIFEST:?} (registries SHOULD NOT add parameters)");
    }
    Ok("parameters ignored".into())
}

async fn manifest_without_media_type(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let v = json!({
        "schemaVersion": 2,
        "config": img.config.descriptor(),
        "layers": [img.layers[0].descriptor()],
    });
    let m = Manifest::from_value(&v, OCI_MANIFEST);
    let r = c
        .put_manifest_raw(&repo, "no-media-type", OCI_MANIFEST, m.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    let g = c.get_manifest(&repo, "no-media-type").await?;
    g.expect_status(&[200])?;
    g.expect_body(&m.bytes)?;
    let ct = g.require_header("content-type")?;
    if ct.split(';').next().unwrap_or("").trim() != OCI_MANIFEST {
        bail!("Content-Type {ct:?}, expected the pushed {OCI_MANIFEST:?}");
    }
    Ok("served with the pushed Content-Type".into())
}

async fn manifest_tag_format(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.push_image(&repo, None, 1).await?;
    let long_ok = format!("a{}", "b".repeat(127));
    for tag in [long_ok.as_str(), "_Under.Score-1", "UPPER", "1.2.3"] {
        let r = c
            .put_manifest_raw(&repo, tag, OCI_MANIFEST, img.manifest.bytes.clone())
            .await?;
        r.expect_status(&[201])
            .with_context(|| format!("valid tag {tag:?} ({} chars)", tag.len()))?;
        let g = c.get_manifest(&repo, tag).await?;
        g.expect_status(&[200])
            .with_context(|| format!("GET valid tag {tag:?}"))?;
    }
    let too_long = format!("a{}", "b".repeat(128));
    let mut answers = Vec::new();
    for tag in [too_long.as_str(), ".dot", "-dash"] {
        let r = c
            .put_manifest_raw(&repo, tag, OCI_MANIFEST, img.manifest.bytes.clone())
            .await?;
        // The spec requires tags to match the pattern ("`<reference>` as a tag
        // MUST be at most 128 characters in length and MUST match ...") but
        // names no status for a PUT that breaks it. Its endpoint table lists
        // 404 and 413 as the failures of a manifest PUT (end-7), and the
        // reference registry (distribution) answers 404 from its router,
        // whose route pattern the tag does not match. 400 is what the
        // official conformance suite expects for a malformed reference
        // (07_error_codes: PUT to sha256:totallywrong -> 400), so both pass;
        // anything else (201, 5xx) fails.
        match r.status {
            400 | 404 => {
                if r.json().is_ok() {
                    r.expect_error_body(&[
                        "TAG_INVALID",
                        "MANIFEST_INVALID",
                        "NAME_INVALID",
                        "MANIFEST_UNKNOWN",
                    ])
                    .with_context(|| format!("invalid tag {tag:?}"))?;
                }
                answers.push(r.status.to_string());
            }
            _ => bail!(
                "invalid tag {:?} ({} chars): expected 400 (or 404): {}",
                tag,
                tag.len(),
                r.summary()
            ),
        }
    }
    answers.dedup();
    Ok(format!(
        "valid tags accepted; invalid ones -> {}",
        answers.join(",")
    ))
}

async fn manifest_invalid_json(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    c.push_image(&repo, Some("exists"), 1).await?;
    let r = c
        .put_manifest_raw(
            &repo,
            "invalid-json",
            OCI_MANIFEST,
            b"{\"schemaVersion\": 2, \"mediaType\": \"application/vnd.oci".to_vec(),
        )
        .await?;
    r.expect_error(&[400], &["MANIFEST_INVALID"])
}

async fn manifest_nondistributable(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let config = util::config_blob(&c.rng, util::OCI_CONFIG);
    let layer = c.random_blob(1000);
    let foreign = Blob::new(c.rng.bytes(2000), OCI_LAYER_NONDIST);
    let normal = Blob::new(layer.bytes.clone(), util::OCI_LAYER);
    c.push_blobs(&repo, &[&config, &normal]).await?;
    let mut foreign_desc = foreign.descriptor();
    foreign_desc["urls"] = json!(["https://example.invalid/layers/foreign.tar.gz"]);
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [foreign_desc, normal.descriptor()],
    });
    let m = Manifest::from_value(&v, OCI_MANIFEST);
    let r = c
        .put_manifest_raw(&repo, "nondistributable", OCI_MANIFEST, m.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    let g = c.get_manifest(&repo, "nondistributable").await?;
    g.expect_status(&[200])?;
    g.expect_body(&m.bytes)?;
    Ok("accepted without the non-distributable blob".into())
}

/// An OCI manifest of exactly `size` bytes (padded with an annotation).
fn padded_manifest(config: &Blob, layer: &Blob, size: usize) -> Manifest {
    let build = |pad: usize| {
        let v = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": [layer.descriptor()],
            "annotations": { "org.example.padding": "p".repeat(pad) },
        });
        serde_json::to_vec(&v).unwrap_or_default()
    };
    let base = build(0).len();
    let bytes = build(size.saturating_sub(base));
    Manifest::from_bytes(bytes, OCI_MANIFEST)
}

async fn manifest_4mb_ok(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let m = padded_manifest(&img.config, &img.layers[0], 4_000_000);
    if m.bytes.len() != 4_000_000 {
        bail!("internal: padded manifest is {} bytes", m.bytes.len());
    }
    let r = c
        .put_manifest_raw(&repo, "four-mb", OCI_MANIFEST, m.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    let g = c.get_manifest(&repo, &m.digest).await?;
    g.expect_status(&[200])?;
    g.expect_body(&m.bytes)?;
    Ok("4,000,000-byte manifest stored and returned".into())
}

async fn manifest_too_large(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let size = 4 * 1024 * 1024 + 4096;
    let m = padded_manifest(&img.config, &img.layers[0], size);
    let r = c
        .put_manifest_raw(&repo, "too-large", OCI_MANIFEST, m.bytes.clone())
        .await;
    let r = match r {
        Ok(r) => r,
        // A registry may close the connection on an oversized body.
        Err(e) => bail!("request failed (connection closed instead of 413?): {e:#}"),
    };
    match r.status {
        413 => {
            if !r.body.is_empty() && r.json().is_ok() {
                r.expect_error_body(&[])?;
            }
            Ok(format!("413 for {size} bytes"))
        }
        400 => {
            let got = r.expect_error(&[400], &["SIZE_INVALID", "MANIFEST_INVALID"])?;
            Ok(format!("{got} instead of the SHOULD 413"))
        }
        _ => bail!("expected 413: {}", r.summary()),
    }
}
