//! Pull workflow: blobs (GET/HEAD/Range), manifests by tag and digest, indexes,
//! Docker formats, and the error answers for unknown or malformed references.

use super::{check, Check};
use crate::http::{Ctx, Resp};
use crate::util::{
    self, with_platform, Blob, Manifest, DOCKER_CONFIG, DOCKER_LAYER, DOCKER_LIST, DOCKER_MANIFEST,
    OCI_INDEX, OCI_MANIFEST,
};
use anyhow::{Context as _, Result};
use reqwest::Method;
use serde_json::json;

pub fn checks() -> Vec<Check> {
    vec![
        check!("pull.blob.head", Must,
            "HEAD /blobs/<digest> -> 200, Content-Length = size, Docker-Content-Digest, no body",
            blob_head),
        check!("pull.blob.get", Must,
            "GET /blobs/<digest> -> 200, the exact bytes, Docker-Content-Digest; a Content-Length, when sent, equals the size",
            blob_get),
        check!("pull.blob.get.content-length", Should,
            "GET /blobs/<digest> sends Content-Length equal to the size (RFC 9110 SHOULD; the spec names it for HEAD only)",
            blob_get_content_length),
        check!("pull.blob.range", Should,
            "GET with Range: bytes=a-b (and a-) -> 206, Content-Range, the exact slice",
            blob_range),
        check!("pull.blob.range-invalid", Should,
            "GET with a Range past the end -> 416 with Content-Range: bytes */<size> (RFC 9110 SHOULD)",
            blob_range_invalid),
        check!("pull.blob.unknown", Must,
            "GET/HEAD of an unknown blob -> 404 (GET body: BLOB_UNKNOWN)",
            blob_unknown),
        check!("pull.repository-isolation", Must,
            "a blob or manifest pushed to one repository is 404 in another repository",
            repository_isolation),
        check!("pull.manifest.get-by-tag", Must,
            "GET /manifests/<tag> -> 200, exact bytes, Content-Type = mediaType, Docker-Content-Digest",
            manifest_get_tag),
        check!("pull.manifest.get-by-digest", Must,
            "GET /manifests/<digest> -> 200, exact bytes, Content-Type, Docker-Content-Digest",
            manifest_get_digest),
        check!("pull.manifest.head-by-tag", Must,
            "HEAD /manifests/<tag> -> 200, Content-Length, Content-Type, Docker-Content-Digest, no body",
            manifest_head_tag),
        check!("pull.manifest.head-by-digest", Must,
            "HEAD /manifests/<digest> -> 200, Content-Length, Content-Type, Docker-Content-Digest",
            manifest_head_digest),
        check!("pull.manifest.unknown", Must,
            "GET/HEAD of an unknown tag or digest -> 404 (GET body: MANIFEST_UNKNOWN)",
            manifest_unknown),
        check!("pull.manifest.unknown-repository", Must,
            "GET of a manifest in a repository that does not exist -> 404 (NAME_UNKNOWN or MANIFEST_UNKNOWN)",
            manifest_unknown_repo),
        check!("pull.manifest.oci-index", Must,
            "an OCI image index referencing pushed manifests round-trips by tag and digest",
            oci_index),
        check!("pull.manifest.index-missing-child", Should,
            "an index referencing a manifest that does not exist -> 400 MANIFEST_BLOB_UNKNOWN",
            index_missing_child),
        check!("pull.manifest.docker-schema2", Should,
            "a Docker schema2 manifest round-trips with its media type",
            docker_schema2),
        check!("pull.manifest.docker-manifest-list", Should,
            "a Docker manifest list round-trips with its media type",
            docker_list),
        check!("pull.name-invalid", Should,
            "invalid repository names (uppercase, dot-dot, empty component) -> 400 NAME_INVALID or 404, never 5xx",
            name_invalid),
        check!("pull.digest-invalid", Should,
            "malformed digests in blob and manifest URLs -> 400 DIGEST_INVALID or 404, never 5xx",
            digest_invalid),
    ]
}

/// Content-Type without parameters.
fn content_type(r: &Resp) -> Result<String> {
    let ct = r.require_header("content-type")?;
    Ok(ct.split(';').next().unwrap_or("").trim().to_string())
}

async fn fixture(c: &Ctx) -> Result<(String, crate::http::Image, String)> {
    let repo = c.repo("");
    let tag = format!("pull-{}", c.rng.token(8));
    let img = c
        .push_image(&repo, Some(&tag), 2)
        .await
        .context("fixture: pushing an image")?;
    Ok((repo, img, tag))
}

/// GET a manifest and compare bytes, Content-Type and Docker-Content-Digest.
pub async fn expect_manifest(c: &Ctx, repo: &str, reference: &str, m: &Manifest) -> Result<()> {
    let g = c.get_manifest(repo, reference).await?;
    g.expect_status(&[200])?;
    g.expect_body(&m.bytes)?;
    let ct = content_type(&g)?;
    if ct != m.media_type {
        bail!(
            "Content-Type {ct:?}, expected the manifest's mediaType {:?}",
            m.media_type
        );
    }
    g.expect_header("docker-content-digest", &m.digest)?;
    Ok(())
}

async fn expect_manifest_head(c: &Ctx, repo: &str, reference: &str, m: &Manifest) -> Result<()> {
    let h = c.head_manifest(repo, reference).await?;
    h.expect_status(&[200])?;
    if !h.body.is_empty() {
        bail!("HEAD returned a body of {} bytes", h.body.len());
    }
    let len = h.require_header("content-length")?;
    if len != m.bytes.len().to_string() {
        bail!("Content-Length {len}, expected {}", m.bytes.len());
    }
    let ct = content_type(&h)?;
    if ct != m.media_type {
        bail!("Content-Type {ct:?}, expected {:?}", m.media_type);
    }
    h.expect_header("docker-content-digest", &m.digest)?;
    Ok(())
}

async fn blob_head(c: &Ctx) -> Result<String> {
    let (repo, img, _) = fixture(c).await?;
    let b = &img.layers[0];
    let h = c.head(&format!("/v2/{repo}/blobs/{}", b.digest)).await?;
    h.expect_status(&[200])?;
    if !h.body.is_empty() {
        bail!("HEAD returned a body of {} bytes", h.body.len());
    }
    let len = h.require_header("content-length")?;
    if len != b.bytes.len().to_string() {
        bail!("Content-Length {len}, expected {}", b.bytes.len());
    }
    h.expect_header("docker-content-digest", &b.digest)?;
    Ok("200 with Content-Length and Docker-Content-Digest".into())
}

async fn blob_get(c: &Ctx) -> Result<String> {
    let (repo, img, _) = fixture(c).await?;
    for b in [&img.config, &img.layers[0], &img.layers[1]] {
        let g = c.get(&format!("/v2/{repo}/blobs/{}", b.digest)).await?;
        g.expect_status(&[200])?;
        // Before the body: a wrong Content-Length also breaks the body's
        // framing, and this names the cause. A chunked answer without one is
        // legal HTTP (pull.blob.get.content-length asks for it).
        if let Some(len) = g.header("content-length") {
            if len != b.bytes.len().to_string() {
                bail!("Content-Length {len}, expected {}", b.bytes.len());
            }
        }
        g.expect_body(&b.bytes)?;
        g.expect_header("docker-content-digest", &b.digest)?;
    }
    Ok("3 blobs returned byte for byte".into())
}

/// The distribution-spec asks for Content-Length only on HEAD ("A successful
/// response SHOULD contain the size in bytes of the uploaded blob in the
/// header Content-Length"); for GET, HTTP itself does: "an origin server
/// SHOULD send a Content-Length header field when the content size is known
/// prior to sending the complete header section" (RFC 9110 section 8.6). A
/// registry always knows a blob's size, so this check is a SHOULD.
async fn blob_get_content_length(c: &Ctx) -> Result<String> {
    let (repo, img, _) = fixture(c).await?;
    let b = &img.layers[1];
    let g = c.get(&format!("/v2/{repo}/blobs/{}", b.digest)).await?;
    g.expect_status(&[200])?;
    let len = g.require_header("content-length")?;
    if len != b.bytes.len().to_string() {
        bail!("Content-Length {len}, expected {}", b.bytes.len());
    }
    g.expect_body(&b.bytes)?;
    Ok(format!("Content-Length: {len}"))
}

async fn get_range(c: &Ctx, repo: &str, b: &Blob, range: &str) -> Result<Resp> {
    let rb = c
        .request(
            Method::GET,
            c.url(&format!("/v2/{repo}/blobs/{}", b.digest))?,
        )
        .header("Range", range);
    c.send(rb).await
}

async fn blob_range(c: &Ctx) -> Result<String> {
    let (repo, img, _) = fixture(c).await?;
    let b = &img.layers[1];
    let n = b.bytes.len();
    let r = get_range(c, &repo, b, "bytes=10-99").await?;
    r.expect_status(&[206])?;
    r.expect_header("content-range", &format!("bytes 10-99/{n}"))?;
    r.expect_body(&b.bytes[10..100])?;
    let r = get_range(c, &repo, b, &format!("bytes={}-", n - 50)).await?;
    r.expect_status(&[206])?;
    r.expect_header("content-range", &format!("bytes {}-{}/{n}", n - 50, n - 1))?;
    r.expect_body(&b.bytes[n - 50..])?;
    Ok("206 with the right Content-Range and bytes".into())
}

async fn blob_range_invalid(c: &Ctx) -> Result<String> {
    let (repo, img, _) = fixture(c).await?;
    let b = &img.layers[0];
    let n = b.bytes.len();
    let r = get_range(c, &repo, b, &format!("bytes={}-{}", n + 100, n + 200)).await?;
    r.expect_status(&[416])?;
    // RFC 9110 section 15.5.17: a 416 to a byte-range request "SHOULD generate
    // a Content-Range header field specifying the current length of the
    // selected representation" (`bytes */<length>`, section 14.4).
    r.expect_header("content-range", &format!("bytes */{n}"))?;
    // A 4xx body may be in any format; a JSON one must be the error format.
    if r.json().is_ok() {
        r.expect_error_body(&[])?;
    }
    let mut detail = format!("416, Content-Range bytes */{n}");
    if let Some(e) = &r.body_error {
        detail.push_str(&format!(" (note: broken body: {e})"));
    }
    Ok(detail)
}

async fn blob_unknown(c: &Ctx) -> Result<String> {
    let (repo, _, _) = fixture(c).await?;
    let d = c.rng.unknown_digest();
    let g = c.get(&format!("/v2/{repo}/blobs/{d}")).await?;
    let got = g.expect_error(&[404], &["BLOB_UNKNOWN"])?;
    let h = c.head(&format!("/v2/{repo}/blobs/{d}")).await?;
    h.expect_status(&[404]).context("HEAD")?;
    Ok(got)
}

async fn repository_isolation(c: &Ctx) -> Result<String> {
    let a = c.repo("iso-a");
    let b = c.repo("iso-b");
    let img = c.push_image(&a, Some("only-in-a"), 1).await?;
    c.push_image(&b, Some("other"), 1).await?;
    let g = c
        .get(&format!("/v2/{b}/blobs/{}", img.layers[0].digest))
        .await?;
    g.expect_error(&[404], &["BLOB_UNKNOWN"])
        .context("GET in B of a blob only pushed to A")?;
    let h = c
        .head(&format!("/v2/{b}/blobs/{}", img.layers[0].digest))
        .await?;
    h.expect_status(&[404])
        .context("HEAD in B of a blob only pushed to A")?;
    let g = c.get_manifest(&b, &img.manifest.digest).await?;
    g.expect_error(&[404], &["MANIFEST_UNKNOWN"])
        .context("GET in B of a manifest only pushed to A")?;
    let g = c.get_manifest(&b, "only-in-a").await?;
    g.expect_error(&[404], &["MANIFEST_UNKNOWN"])
        .context("GET in B of a tag only in A")?;
    Ok("blobs, manifests and tags stay in their repository".into())
}

async fn manifest_get_tag(c: &Ctx) -> Result<String> {
    let (repo, img, tag) = fixture(c).await?;
    expect_manifest(c, &repo, &tag, &img.manifest).await?;
    Ok("exact bytes, Content-Type and digest".into())
}

async fn manifest_get_digest(c: &Ctx) -> Result<String> {
    let (repo, img, _) = fixture(c).await?;
    expect_manifest(c, &repo, &img.manifest.digest, &img.manifest).await?;
    Ok("exact bytes, Content-Type and digest".into())
}

async fn manifest_head_tag(c: &Ctx) -> Result<String> {
    let (repo, img, tag) = fixture(c).await?;
    expect_manifest_head(c, &repo, &tag, &img.manifest).await?;
    Ok("200 with headers".into())
}

async fn manifest_head_digest(c: &Ctx) -> Result<String> {
    let (repo, img, _) = fixture(c).await?;
    expect_manifest_head(c, &repo, &img.manifest.digest, &img.manifest).await?;
    Ok("200 with headers".into())
}

async fn manifest_unknown(c: &Ctx) -> Result<String> {
    let (repo, _, _) = fixture(c).await?;
    let tag = format!("missing-{}", c.rng.token(8));
    let g = c.get_manifest(&repo, &tag).await?;
    let a = g
        .expect_error(&[404], &["MANIFEST_UNKNOWN"])
        .context("unknown tag")?;
    let d = c.rng.unknown_digest();
    let g = c.get_manifest(&repo, &d).await?;
    g.expect_error(&[404], &["MANIFEST_UNKNOWN"])
        .context("unknown digest")?;
    let h = c.head_manifest(&repo, &tag).await?;
    h.expect_status(&[404]).context("HEAD unknown tag")?;
    let h = c.head_manifest(&repo, &d).await?;
    h.expect_status(&[404]).context("HEAD unknown digest")?;
    Ok(a)
}

async fn manifest_unknown_repo(c: &Ctx) -> Result<String> {
    let repo = c.repo(&format!("never-{}", c.rng.token(6)));
    let g = c.get_manifest(&repo, "latest").await?;
    g.expect_error(&[404], &["NAME_UNKNOWN", "MANIFEST_UNKNOWN"])
}

async fn oci_index(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let a = c.push_image(&repo, None, 1).await?;
    let b = c.push_image(&repo, None, 1).await?;
    let idx = util::oci_index(
        &[
            with_platform(a.manifest.descriptor(), "amd64"),
            with_platform(b.manifest.descriptor(), "arm64"),
        ],
        &[],
    );
    let r = c
        .put_manifest_raw(&repo, "index", OCI_INDEX, idx.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    r.expect_header("docker-content-digest", &idx.digest)?;
    expect_manifest(c, &repo, "index", &idx).await?;
    expect_manifest(c, &repo, &idx.digest, &idx).await?;
    expect_manifest(c, &repo, &a.manifest.digest, &a.manifest)
        .await
        .context("child manifest")?;
    Ok("index stored and returned with its media type".into())
}

async fn index_missing_child(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let a = c.push_image(&repo, None, 1).await?;
    let missing = json!({
        "mediaType": OCI_MANIFEST,
        "digest": c.rng.unknown_digest(),
        "size": 777,
        "platform": { "architecture": "arm64", "os": "linux" },
    });
    let idx = util::oci_index(
        &[with_platform(a.manifest.descriptor(), "amd64"), missing],
        &[],
    );
    let r = c
        .put_manifest_raw(&repo, "bad-index", OCI_INDEX, idx.bytes.clone())
        .await?;
    r.expect_error(&[400], &["MANIFEST_BLOB_UNKNOWN"])
}

fn docker_image(c: &Ctx) -> (Blob, Blob, Manifest) {
    let config = util::config_blob(&c.rng, DOCKER_CONFIG);
    let layer = Blob::new(c.rng.bytes(1234), DOCKER_LAYER);
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
    });
    let m = Manifest::from_value(&v, DOCKER_MANIFEST);
    (config, layer, m)
}

async fn docker_schema2(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let (config, layer, m) = docker_image(c);
    c.push_blobs(&repo, &[&config, &layer]).await?;
    let r = c
        .put_manifest_raw(&repo, "docker-v2", DOCKER_MANIFEST, m.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    expect_manifest(c, &repo, "docker-v2", &m).await?;
    expect_manifest(c, &repo, &m.digest, &m).await?;
    Ok("round trip ok".into())
}

async fn docker_list(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let (config, layer, m) = docker_image(c);
    c.push_blobs(&repo, &[&config, &layer]).await?;
    c.put_manifest(&repo, &m.digest, &m).await?;
    let v = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [with_platform(m.descriptor(), "amd64")],
    });
    let list = Manifest::from_value(&v, DOCKER_LIST);
    let r = c
        .put_manifest_raw(&repo, "docker-list", DOCKER_LIST, list.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    expect_manifest(c, &repo, "docker-list", &list).await?;
    Ok("round trip ok".into())
}

/// 400 with one of `codes_400`, or 404 with a spec error body; never anything else.
fn invalid_ref_answer(r: &Resp, codes_400: &[&str], codes_404: &[&str]) -> Result<String> {
    let head = r.what.starts_with("HEAD");
    match r.status {
        400 | 404 if head => Ok(r.status.to_string()),
        400 => r.expect_error(&[400], codes_400),
        // The spec lets a 4xx body be in any format; a JSON one must be the
        // error format (a router's plain "404 page not found" is legal).
        404 if r.json().is_err() => Ok("404 (non-JSON body)".into()),
        404 => r.expect_error(&[404], codes_404),
        _ => bail!("expected 400 {:?} or 404: {}", codes_400, r.summary()),
    }
}

async fn name_invalid(c: &Ctx) -> Result<String> {
    let root = c.repo("");
    let upper = format!("{root}/UPPER");
    let last = root.rsplit('/').next().unwrap_or("run");
    let cases: Vec<(&str, String)> = vec![
        ("GET", format!("/v2/{upper}/manifests/latest")),
        ("GET", format!("/v2/{upper}/tags/list")),
        ("POST", format!("/v2/{upper}/blobs/uploads/")),
        ("GET", format!("/v2/../{root}-x/manifests/latest")),
        ("GET", format!("/v2/{root}/../../x/tags/list")),
        (
            "POST",
            format!("/v2/{root}/../{last}-dotdot/blobs/uploads/"),
        ),
        ("GET", format!("/v2/{root}//b/manifests/latest")),
        ("POST", format!("/v2/{root}//b/blobs/uploads/")),
        ("GET", format!("/v2/{root}/-dash/tags/list")),
    ];
    let mut answers = Vec::new();
    for (method, path) in &cases {
        let r = c.raw(method, path, &[], None).await?;
        // Path normalisation (RFC 3986 dot-segment removal, Go's ServeMux
        // redirect to the cleaned path) is a legitimate answer as long as the
        // target is clean and on the same registry.
        if matches!(r.status, 301 | 302 | 307 | 308) {
            let loc = r.location()?;
            let u = c.url(&loc)?;
            let dirty =
                u.path().split('/').any(|s| s == ".." || s == ".") || u.path().contains("//");
            if dirty || u.host_str() != c.base.host_str() {
                bail!("{method} {path}: redirected to {loc}");
            }
            answers.push(format!("{} redirect to the cleaned path", r.status));
            continue;
        }
        let got = invalid_ref_answer(
            &r,
            &["NAME_INVALID"],
            &[
                "NAME_UNKNOWN",
                "NAME_INVALID",
                "MANIFEST_UNKNOWN",
                "BLOB_UNKNOWN",
            ],
        )
        .with_context(|| format!("{method} {path}"))?;
        answers.push(got);
    }
    answers.sort();
    answers.dedup();
    Ok(format!(
        "{} requests answered: {}",
        cases.len(),
        answers.join("; ")
    ))
}

async fn digest_invalid(c: &Ctx) -> Result<String> {
    let (repo, _, _) = fixture(c).await?;
    let upper_hex = format!("sha256:{}", "A".repeat(64));
    let bads = [
        "sha256:not-a-hex-digest",
        "sha256:1234",
        upper_hex.as_str(),
        "sha256:",
    ];
    let mut answers = Vec::new();
    for bad in bads {
        let r = c.get(&format!("/v2/{repo}/blobs/{bad}")).await?;
        let got = invalid_ref_answer(&r, &["DIGEST_INVALID"], &["BLOB_UNKNOWN", "DIGEST_INVALID"])
            .with_context(|| format!("GET blob {bad}"))?;
        answers.push(got);
        let r = c.head(&format!("/v2/{repo}/blobs/{bad}")).await?;
        invalid_ref_answer(&r, &[], &[]).with_context(|| format!("HEAD blob {bad}"))?;
        let r = c.get_manifest(&repo, bad).await?;
        let got = invalid_ref_answer(
            &r,
            &["DIGEST_INVALID", "MANIFEST_INVALID", "TAG_INVALID"],
            &["MANIFEST_UNKNOWN", "DIGEST_INVALID"],
        )
        .with_context(|| format!("GET manifest {bad}"))?;
        answers.push(got);
        let r = c.delete(&format!("/v2/{repo}/blobs/{bad}")).await?;
        match r.status {
            400 | 404 | 405 => {
                // A 4xx body may be in any format; a JSON one must be the error format.
                if r.json().is_ok() {
                    r.expect_error_body(&[])
                        .with_context(|| format!("DELETE blob {bad}"))?;
                }
            }
            _ => bail!("DELETE blob {bad}: expected 400/404/405: {}", r.summary()),
        }
    }
    answers.sort();
    answers.dedup();
    Ok(answers.join("; "))
}
