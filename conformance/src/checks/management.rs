//! Content management: deleting tags, manifests and blobs.

use super::discovery::{build_referrers, expect_descriptor, referrers};
use super::{check, Check};
use crate::http::Ctx;
use anyhow::{Context as _, Result};
use serde_json::Value;

pub fn checks() -> Vec<Check> {
    vec![
        check!("management.manifest.delete-tag", Must,
            "DELETE /manifests/<tag> -> 202 and removes only the tag: the tag 404s, the manifest by digest still 200s",
            delete_tag),
        check!("management.manifest.delete-digest", Must,
            "DELETE /manifests/<digest> -> 202; GET by digest -> 404 MANIFEST_UNKNOWN; the tag that pointed to it is gone",
            delete_digest),
        check!("management.manifest.delete-unknown", Must,
            "DELETE of a manifest that does not exist -> 404 MANIFEST_UNKNOWN",
            delete_unknown_manifest),
        check!("management.blob.delete", Must,
            "DELETE /blobs/<digest> -> 202; GET -> 404 BLOB_UNKNOWN; HEAD -> 404",
            delete_blob),
        check!("management.blob.delete-unknown", Must,
            "DELETE of a blob that does not exist -> 404 BLOB_UNKNOWN",
            delete_unknown_blob),
        check!("management.manifest.repush-after-delete", Must,
            "a deleted manifest can be pushed again (201) and is served again by tag and digest",
            repush_manifest_after_delete),
        check!("management.blob.repush-after-delete", Must,
            "a deleted blob can be uploaded again (201) and is served again",
            repush_blob_after_delete),
        check!("management.delete-is-repository-scoped", Must,
            "deleting a blob or manifest in one repository leaves the same content in another repository intact",
            delete_scoped),
        check!("management.referrers.delete-referrer", Must,
            "a deleted referrer disappears from the referrers list; the other stays",
            delete_referrer),
    ]
}

async fn tag_listed(c: &Ctx, repo: &str, tag: &str) -> Result<bool> {
    let r = c.get(&format!("/v2/{repo}/tags/list")).await?;
    r.expect_status(&[200])?;
    let v = r.json()?;
    Ok(v.get("tags")
        .and_then(Value::as_array)
        .is_some_and(|t| t.iter().any(|x| x.as_str() == Some(tag))))
}

async fn delete_tag(c: &Ctx) -> Result<String> {
    let repo = c.repo("delete");
    let img = c.push_image(&repo, Some("del-tag"), 1).await?;
    c.put_manifest(&repo, "keep-tag", &img.manifest).await?;
    let d = c.delete(&format!("/v2/{repo}/manifests/del-tag")).await?;
    if d.status == 400 || d.status == 405 {
        bail!(
            "tag deletion unsupported ({}; a spec-legal answer only when tag deletion is disabled): {}",
            d.status,
            d.summary()
        );
    }
    d.expect_status(&[202])?;
    let g = c.get_manifest(&repo, "del-tag").await?;
    g.expect_error(&[404], &["MANIFEST_UNKNOWN"])
        .context("GET of the deleted tag")?;
    let g = c.get_manifest(&repo, &img.manifest.digest).await?;
    g.expect_status(&[200])
        .context("the manifest by digest must survive a tag delete")?;
    g.expect_body(&img.manifest.bytes)?;
    let g = c.get_manifest(&repo, "keep-tag").await?;
    g.expect_status(&[200])
        .context("another tag of the same manifest must survive")?;
    if tag_listed(c, &repo, "del-tag").await? {
        bail!("the deleted tag is still in tags/list");
    }
    Ok("tag removed, manifest kept".into())
}

async fn delete_digest(c: &Ctx) -> Result<String> {
    let repo = c.repo("delete");
    c.push_image(&repo, Some("survivor"), 1).await?;
    let img = c.push_image(&repo, Some("del-digest"), 1).await?;
    let d = c
        .delete(&format!("/v2/{repo}/manifests/{}", img.manifest.digest))
        .await?;
    d.expect_status(&[202])?;
    let g = c.get_manifest(&repo, &img.manifest.digest).await?;
    g.expect_error(&[404], &["MANIFEST_UNKNOWN"])
        .context("GET by digest after delete")?;
    let h = c.head_manifest(&repo, &img.manifest.digest).await?;
    h.expect_status(&[404])
        .context("HEAD by digest after delete")?;
    let g = c.get_manifest(&repo, "del-digest").await?;
    g.expect_error(&[404], &["MANIFEST_UNKNOWN"])
        .context("GET of the tag that pointed to the deleted manifest")?;
    if tag_listed(c, &repo, "del-digest").await? {
        bail!("the tag of the deleted manifest is still in tags/list");
    }
    Ok("manifest and its tag gone".into())
}

async fn delete_unknown_manifest(c: &Ctx) -> Result<String> {
    let repo = c.repo("delete");
    c.push_image(&repo, Some("survivor"), 1).await?;
    let d = c
        .delete(&format!("/v2/{repo}/manifests/{}", c.rng.unknown_digest()))
        .await?;
    d.expect_error(&[404], &["MANIFEST_UNKNOWN"])
}

async fn delete_blob(c: &Ctx) -> Result<String> {
    let repo = c.repo("delete");
    let blob = c.random_blob(800);
    c.push_blob(&repo, &blob.bytes, &blob.digest).await?;
    let d = c
        .delete(&format!("/v2/{repo}/blobs/{}", blob.digest))
        .await?;
    d.expect_status(&[202])?;
    let g = c.get(&format!("/v2/{repo}/blobs/{}", blob.digest)).await?;
    g.expect_error(&[404], &["BLOB_UNKNOWN"])
        .context("GET after delete")?;
    let h = c.head(&format!("/v2/{repo}/blobs/{}", blob.digest)).await?;
    h.expect_status(&[404]).context("HEAD after delete")?;
    Ok("202, then 404".into())
}

async fn delete_unknown_blob(c: &Ctx) -> Result<String> {
    let repo = c.repo("delete");
    let blob = c.random_blob(100);
    c.push_blob(&repo, &blob.bytes, &blob.digest).await?;
    let d = c
        .delete(&format!("/v2/{repo}/blobs/{}", c.rng.unknown_digest()))
        .await?;
    d.expect_error(&[404], &["BLOB_UNKNOWN"])
}

async fn repush_manifest_after_delete(c: &Ctx) -> Result<String> {
    let repo = c.repo("delete");
    c.push_image(&repo, Some("survivor"), 1).await?;
    let img = c.push_image(&repo, Some("phoenix"), 1).await?;
    let d = c
        .delete(&format!("/v2/{repo}/manifests/{}", img.manifest.digest))
        .await?;
    d.expect_status(&[202])?;
    let g = c.get_manifest(&repo, &img.manifest.digest).await?;
    g.expect_status(&[404]).context("after delete")?;
    let r = c
        .put_manifest_raw(
            &repo,
            "phoenix",
            &img.manifest.media_type,
            img.manifest.bytes.clone(),
        )
        .await?;
    r.expect_status(&[201]).context("pushing it again")?;
    for reference in ["phoenix", img.manifest.digest.as_str()] {
        let g = c.get_manifest(&repo, reference).await?;
        g.expect_status(&[200])
            .with_context(|| format!("GET {reference} after the re-push"))?;
        g.expect_body(&img.manifest.bytes)?;
    }
    Ok("re-pushed and served".into())
}

async fn repush_blob_after_delete(c: &Ctx) -> Result<String> {
    let repo = c.repo("delete");
    let blob = c.random_blob(900);
    c.push_blob(&repo, &blob.bytes, &blob.digest).await?;
    let path = format!("/v2/{repo}/blobs/{}", blob.digest);
    c.delete(&path).await?.expect_status(&[202])?;
    c.get(&path)
        .await?
        .expect_status(&[404])
        .context("after delete")?;
    let loc = c.start_upload(&repo).await?;
    let put = c.put_upload(&loc, &blob.digest, &blob.bytes, None).await?;
    put.expect_status(&[201]).context("uploading it again")?;
    let g = c.get(&path).await?;
    g.expect_status(&[200]).context("GET after the re-upload")?;
    g.expect_body(&blob.bytes)?;
    Ok("re-uploaded and served".into())
}

async fn delete_scoped(c: &Ctx) -> Result<String> {
    let a = c.repo("scoped-a");
    let b = c.repo("scoped-b");
    let img = c.make_image(1);
    for repo in [&a, &b] {
        c.push_blobs(repo, &[&img.config, &img.layers[0]]).await?;
        c.put_manifest(repo, "shared", &img.manifest).await?;
    }
    let layer = &img.layers[0];
    c.delete(&format!("/v2/{a}/manifests/{}", img.manifest.digest))
        .await?
        .expect_status(&[202])
        .context("DELETE manifest in A")?;
    c.delete(&format!("/v2/{a}/blobs/{}", layer.digest))
        .await?
        .expect_status(&[202])
        .context("DELETE blob in A")?;
    c.get(&format!("/v2/{a}/blobs/{}", layer.digest))
        .await?
        .expect_status(&[404])
        .context("blob in A after delete")?;
    let g = c.get(&format!("/v2/{b}/blobs/{}", layer.digest)).await?;
    g.expect_status(&[200])
        .context("the same blob in B after deleting it in A")?;
    g.expect_body(&layer.bytes)?;
    let g = c.get_manifest(&b, "shared").await?;
    g.expect_status(&[200])
        .context("the same manifest in B after deleting it in A")?;
    g.expect_body(&img.manifest.bytes)?;
    Ok("repository B unaffected".into())
}

async fn delete_referrer(c: &Ctx) -> Result<String> {
    let set = build_referrers(c, &c.repo(&format!("referrers-{}", c.rng.token(4))));
    set.push_all(c).await?;
    let d = c
        .delete(&format!("/v2/{}/manifests/{}", set.repo, set.sig.digest))
        .await?;
    d.expect_status(&[202])?;
    let (list, _) = referrers(c, &set.repo, &set.subject.manifest.digest, "").await?;
    if list
        .iter()
        .any(|d| d.get("digest").and_then(Value::as_str) == Some(set.sig.digest.as_str()))
    {
        bail!("the deleted referrer is still listed");
    }
    expect_descriptor(
        &list,
        &set.sbom,
        Some("application/vnd.berth.conformance.sbom.v1"),
        &set.sbom_annotations,
    )
    .context("the remaining referrer")?;
    Ok("deleted referrer no longer listed".into())
}
