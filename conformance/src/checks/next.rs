//! Features of the distribution-spec after v1.1 (its main branch), opt-in with `--next`:
//! one manifest PUT setting several tags (`?tag=`), also by a sha512 digest; sparse indexes
//! (children not all pushed); `Docker-Content-Digest` on every manifest and blob GET/HEAD.
//!
//! A registry must have its options for these turned on (for Berth: `[manifests]
//! sparse_indexes = true`); with sparse indexes on, the v1.1 check
//! `pull.manifest.index-missing-child` is skipped, since it asserts the opposite.

use super::{check, Check};
use crate::http::Ctx;
use crate::util::{self, with_platform, Manifest, OCI_INDEX};
use anyhow::{Context as _, Result};
use reqwest::Method;

pub fn checks() -> Vec<Check> {
    vec![
        check!("next.manifest.tag-query", Next,
            "PUT /manifests/<digest>?tag=a&tag=b -> 201 with an OCI-Tag header per tag; both tags then resolve to the digest",
            tag_query),
        check!("next.manifest.tag-query-sha512", Next,
            "PUT /manifests/<sha512 digest>?tag=t -> 201; GET by the digest and by t return the exact bytes",
            tag_query_sha512),
        check!("next.manifest.sparse-index", Next,
            "an index whose children are not all pushed is accepted (201) and pulled back by tag",
            sparse_index),
        check!("next.digest-header-everywhere", Next,
            "every GET and HEAD of a blob and of a manifest (by tag and by digest) sends Docker-Content-Digest",
            digest_header_everywhere),
    ]
}

async fn put_with_tags(
    c: &Ctx,
    repo: &str,
    digest: &str,
    m: &Manifest,
    tags: &[&str],
) -> Result<crate::http::Resp> {
    let query: Vec<String> = tags
        .iter()
        .map(|t| format!("tag={}", util::qenc(t)))
        .collect();
    let url = c.url(&format!(
        "/v2/{repo}/manifests/{digest}?{}",
        query.join("&")
    ))?;
    let rb = c
        .request(Method::PUT, url)
        .header("Content-Type", &m.media_type)
        .body(m.bytes.clone());
    c.send(rb).await
}

async fn tag_query(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let r = put_with_tags(c, &repo, &img.manifest.digest, &img.manifest, &["a", "b"]).await?;
    r.expect_status(&[201])?;
    let oci_tags: Vec<String> = r
        .headers
        .get_all("OCI-Tag")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
        .collect();
    for tag in ["a", "b"] {
        if !oci_tags.iter().any(|t| t == tag) {
            bail!("201 without OCI-Tag: {tag} (OCI-Tag headers: {oci_tags:?})");
        }
        let g = c.get_manifest(&repo, tag).await?;
        g.expect_status(&[200])
            .with_context(|| format!("GET of tag {tag}"))?;
        g.expect_header("Docker-Content-Digest", &img.manifest.digest)?;
    }
    Ok(format!("201, OCI-Tag {oci_tags:?}, both tags resolve"))
}

async fn tag_query_sha512(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.make_image(1);
    c.push_blobs(&repo, &[&img.config, &img.layers[0]]).await?;
    let digest = util::sha512_digest(&img.manifest.bytes);
    let r = put_with_tags(c, &repo, &digest, &img.manifest, &["t512"]).await?;
    r.expect_status(&[201])?;
    let by_digest = c.get_manifest(&repo, &digest).await?;
    by_digest.expect_status(&[200])?;
    by_digest.expect_body(&img.manifest.bytes)?;
    by_digest.expect_header("Docker-Content-Digest", &digest)?;
    let by_tag = c.get_manifest(&repo, "t512").await?;
    by_tag.expect_status(&[200])?;
    by_tag.expect_body(&img.manifest.bytes)?;
    Ok("201; GET by sha512 digest and by tag return the bytes".into())
}

async fn sparse_index(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let present = c.push_image(&repo, None, 1).await?;
    let absent = c.make_image(1);
    let idx = util::oci_index(
        &[
            with_platform(present.manifest.descriptor(), "amd64"),
            with_platform(absent.manifest.descriptor(), "arm64"),
        ],
        &[],
    );
    let r = c
        .put_manifest_raw(&repo, "sparse", OCI_INDEX, idx.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    let g = c.get_manifest(&repo, "sparse").await?;
    g.expect_status(&[200])?;
    g.expect_body(&idx.bytes)?;
    let missing = c.get_manifest(&repo, &absent.manifest.digest).await?;
    missing.expect_status(&[404])?;
    Ok("201; the index pulls back, its missing child is still 404".into())
}

async fn digest_header_everywhere(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    let img = c.push_image(&repo, Some("latest"), 1).await?;
    let layer = &img.layers[0];
    let mut seen = 0;
    for method in [Method::GET, Method::HEAD] {
        let path = format!("/v2/{repo}/blobs/{}", layer.digest);
        let r = c.send(c.request(method.clone(), c.url(&path)?)).await?;
        r.expect_status(&[200])?;
        r.expect_header("Docker-Content-Digest", &layer.digest)?;
        seen += 1;
        for reference in ["latest", img.manifest.digest.as_str()] {
            let r = if method == Method::GET {
                c.get_manifest(&repo, reference).await?
            } else {
                c.head_manifest(&repo, reference).await?
            };
            r.expect_status(&[200])?;
            r.expect_header("Docker-Content-Digest", &img.manifest.digest)?;
            seen += 1;
        }
    }
    Ok(format!("{seen} responses, each with the digest"))
}
