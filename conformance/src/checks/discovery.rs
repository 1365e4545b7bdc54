//! Content discovery: tag listing with pagination, the catalog, and the
//! referrers API.

use super::{check, Check};
use crate::http::{Ctx, Image, Resp};
use crate::util::{self, Blob, Manifest, OCI_EMPTY, OCI_INDEX, OCI_MANIFEST};
use anyhow::{Context as _, Result};
use serde_json::{json, Value};

pub fn checks() -> Vec<Check> {
    vec![
        check!("discovery.tags.list", Must,
            "GET /tags/list -> 200 {\"name\":..,\"tags\":[..]} with every tag, in lexical order",
            tags_list),
        check!("discovery.tags.pagination", Must,
            "?n=3 returns exactly 3 tags and a Link rel=\"next\"; following Link walks all tags; the last page has no Link",
            tags_pagination),
        check!("discovery.tags.last", Must,
            "?n=2&last=<tag> and ?last=<tag> return the tags after <tag>, non-inclusive",
            tags_last),
        check!("discovery.tags.n-zero", Must,
            "?n=0 -> 200 with an empty list and no Link header",
            tags_n_zero),
        check!("discovery.tags.unknown-repository", Must,
            "tags of a repository that does not exist -> 404 NAME_UNKNOWN",
            tags_unknown_repo),
        check!("discovery.catalog.list", Extra,
            "GET /v2/_catalog -> 200 {\"repositories\":[..]} containing this run's repositories",
            catalog_list),
        check!("discovery.catalog.pagination", Extra,
            "_catalog supports n, last and Link rel=\"next\"",
            catalog_pagination),
        check!("discovery.referrers.subject-missing-accepted", Must,
            "a manifest whose subject does not exist yet is accepted (201)",
            referrer_subject_missing),
        check!("discovery.referrers.oci-subject-header", Must,
            "PUT of a manifest with subject -> OCI-Subject: <subject digest>",
            oci_subject_header),
        check!("discovery.referrers.list", Must,
            "GET /referrers/<digest> -> 200 OCI index listing referrers with mediaType, size, digest, artifactType (own or config.mediaType), annotations",
            referrers_list),
        check!("discovery.referrers.listed-before-subject", Must,
            "a referrer pushed before its subject is listed, before and after the subject is pushed",
            referrers_before_subject),
        check!("discovery.referrers.index-referrer", Must,
            "an index with a subject and no artifactType is listed without artifactType, with its annotations",
            referrers_index_referrer),
        check!("discovery.referrers.filter", Should,
            "?artifactType= returns only matching referrers and sets OCI-Filters-Applied: artifactType",
            referrers_filter),
        check!("discovery.referrers.unknown-subject", Must,
            "referrers of a digest nothing refers to -> 200 with an empty manifests list",
            referrers_unknown_subject),
        check!("discovery.referrers.invalid-digest", Must,
            "referrers of a malformed digest -> 400",
            referrers_invalid_digest),
    ]
}

const TAGS: [&str; 8] = [
    "v2", "latest", "1.0", "z-last", "alpha", "v10", "m_mid", "beta",
];

fn sorted_tags() -> Vec<String> {
    let mut t: Vec<String> = TAGS.iter().map(|s| s.to_string()).collect();
    t.sort();
    t
}

/// A fresh repository holding one manifest under all of [`TAGS`].
async fn tagged_repo(c: &Ctx) -> Result<String> {
    let repo = c.repo(&format!("tags-{}", c.rng.token(5)));
    let img = c.push_image(&repo, Some(TAGS[0]), 1).await?;
    for t in &TAGS[1..] {
        c.put_manifest(&repo, t, &img.manifest).await?;
    }
    Ok(repo)
}

/// Parses a tags/list body and checks `name`.
fn tags_of(r: &Resp, repo: &str) -> Result<Vec<String>> {
    r.expect_status(&[200])?;
    let v = r.json()?;
    let name = v.get("name").and_then(Value::as_str);
    if name != Some(repo) {
        bail!("\"name\" is {name:?}, expected {repo:?}");
    }
    let tags = v
        .get("tags")
        .and_then(Value::as_array)
        .ok_or_else(|| failed!("\"tags\" is not a list: {}", r.summary()))?;
    tags.iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or_else(|| failed!("non-string tag {t}"))
        })
        .collect()
}

async fn tags_list(c: &Ctx) -> Result<String> {
    let repo = tagged_repo(c).await?;
    let r = c.get(&format!("/v2/{repo}/tags/list")).await?;
    let tags = tags_of(&r, &repo)?;
    let want = sorted_tags();
    if tags != want {
        bail!("tags {tags:?}, expected {want:?}");
    }
    Ok(format!("{} tags in order", tags.len()))
}

async fn tags_pagination(c: &Ctx) -> Result<String> {
    let repo = tagged_repo(c).await?;
    let want = sorted_tags();
    let mut url = format!("/v2/{repo}/tags/list?n=3");
    let mut all = Vec::new();
    let mut links = Vec::new();
    for page in 0..10 {
        let r = c.get(&url).await?;
        let tags = tags_of(&r, &repo).with_context(|| format!("page {}", page + 1))?;
        let expected_len = (want.len() - all.len()).min(3);
        if tags.len() != expected_len {
            bail!(
                "page {} has {} tags {:?}, expected {}",
                page + 1,
                tags.len(),
                tags,
                expected_len
            );
        }
        all.extend(tags);
        let next = r.link_next()?;
        let remaining = want.len() - all.len();
        match next {
            Some(link) => {
                if remaining == 0 {
                    bail!("Link header {link:?} on the last page");
                }
                links.push(link.clone());
                url = link;
            }
            None => {
                if remaining > 0 {
                    bail!(
                        "no Link rel=\"next\" header after page {} while {} tags remain (got {:?})",
                        page + 1,
                        remaining,
                        all
                    );
                }
                break;
            }
        }
    }
    if all != want {
        bail!("paginated tags {all:?}, expected {want:?}");
    }
    Ok(format!("3 pages; Links {}", links.join(" , ")))
}

async fn tags_last(c: &Ctx) -> Result<String> {
    let repo = tagged_repo(c).await?;
    let want = sorted_tags();
    let r = c
        .get(&format!("/v2/{repo}/tags/list?n=2&last=beta"))
        .await?;
    let tags = tags_of(&r, &repo)?;
    let pos = want.iter().position(|t| t == "beta").unwrap_or(0);
    let exp: Vec<String> = want[pos + 1..pos + 3].to_vec();
    if tags != exp {
        bail!("?n=2&last=beta gave {tags:?}, expected {exp:?}");
    }
    let r = c.get(&format!("/v2/{repo}/tags/list?last=v10")).await?;
    let tags = tags_of(&r, &repo)?;
    let pos = want.iter().position(|t| t == "v10").unwrap_or(0);
    let exp: Vec<String> = want[pos + 1..].to_vec();
    if tags != exp {
        bail!("?last=v10 gave {tags:?}, expected {exp:?}");
    }
    Ok("last is honoured, with and without n".into())
}

async fn tags_n_zero(c: &Ctx) -> Result<String> {
    let repo = tagged_repo(c).await?;
    let r = c.get(&format!("/v2/{repo}/tags/list?n=0")).await?;
    let tags = tags_of(&r, &repo)?;
    if !tags.is_empty() {
        bail!("?n=0 returned {tags:?}");
    }
    if let Some(l) = r.header("link") {
        bail!("?n=0 returned a Link header {l:?}");
    }
    Ok("empty list, no Link".into())
}

async fn tags_unknown_repo(c: &Ctx) -> Result<String> {
    let repo = c.repo(&format!("never-{}", c.rng.token(6)));
    let r = c.get(&format!("/v2/{repo}/tags/list")).await?;
    r.expect_error(&[404], &["NAME_UNKNOWN"])
}

fn repositories_of(r: &Resp) -> Result<Vec<String>> {
    r.expect_status(&[200])?;
    let v = r.json()?;
    let repos = v
        .get("repositories")
        .and_then(Value::as_array)
        .ok_or_else(|| failed!("\"repositories\" is not a list: {}", r.summary()))?;
    repos
        .iter()
        .map(|t| {
            t.as_str()
                .map(str::to_string)
                .ok_or_else(|| failed!("non-string repository {t}"))
        })
        .collect()
}

async fn catalog_repos(c: &Ctx) -> Result<(String, String)> {
    let a = c.repo("cat-a");
    let b = c.repo("cat-b");
    c.push_image(&a, Some("latest"), 1).await?;
    c.push_image(&b, Some("latest"), 1).await?;
    Ok((a, b))
}

async fn catalog_list(c: &Ctx) -> Result<String> {
    let (a, b) = catalog_repos(c).await?;
    let mut url = "/v2/_catalog?n=1000".to_string();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let r = c.get(&url).await?;
        let page = repositories_of(&r)?;
        let mut sorted = page.clone();
        sorted.sort();
        if sorted != page {
            bail!("catalog page is not in lexical order");
        }
        seen.extend(page);
        pages += 1;
        match r.link_next()? {
            Some(l) if pages < 50 => url = l,
            Some(l) => bail!(
                "the catalog does not end: page {pages} ({} repositories so far) still links to {l}",
                seen.len()
            ),
            None => break,
        }
    }
    for want in [&a, &b] {
        if !seen.contains(want) {
            bail!(
                "{want} missing from the catalog ({} repositories listed)",
                seen.len()
            );
        }
    }
    Ok(format!(
        "{} repositories listed, this run's found",
        seen.len()
    ))
}

async fn catalog_pagination(c: &Ctx) -> Result<String> {
    let (a, b) = catalog_repos(c).await?;
    let r = c.get("/v2/_catalog?n=1").await?;
    let page = repositories_of(&r)?;
    if page.len() != 1 {
        bail!("?n=1 returned {} repositories", page.len());
    }
    let link = r
        .link_next()?
        .ok_or_else(|| failed!("?n=1 with more repositories has no Link rel=\"next\""))?;
    let r2 = c.get(&link).await?;
    let page2 = repositories_of(&r2).context("following the Link")?;
    if page2.len() != 1 || page2[0] <= page[0] {
        bail!(
            "following the Link gave {page2:?} after {:?}: expected the next repository",
            page
        );
    }
    let r = c
        .get(&format!("/v2/_catalog?n=1&last={}", util::qenc(&a)))
        .await?;
    let page = repositories_of(&r)?;
    if page != vec![b.clone()] {
        bail!("?n=1&last={a} gave {page:?}, expected [{b:?}]");
    }
    Ok(format!("n, Link ({link}) and last work"))
}

// ---------------------------------------------------------------- referrers

const SBOM_TYPE: &str = "application/vnd.berth.conformance.sbom.v1";
const SIG_CONFIG_TYPE: &str = "application/vnd.berth.conformance.signature.config.v1+json";

/// A subject image and two referrers of it, with every blob they need.
pub struct Referrers {
    pub repo: String,
    pub subject: Image,
    /// Has `artifactType` = [`SBOM_TYPE`].
    pub sbom: Manifest,
    pub sbom_annotations: Value,
    /// No `artifactType`; its config mediaType is [`SIG_CONFIG_TYPE`].
    pub sig: Manifest,
    pub sig_annotations: Value,
    /// Blobs of the subject and of both referrers.
    pub blobs: Vec<Blob>,
}

/// Builds (without pushing anything) a subject image and two referrers in `repo`.
pub fn build_referrers(c: &Ctx, repo: &str) -> Referrers {
    let subject = c.make_image(1);
    let empty = Blob::new(b"{}".to_vec(), OCI_EMPTY);
    let sbom_layer = Blob::new(
        c.rng.bytes(300),
        "application/vnd.berth.conformance.sbom.layer.v1+json",
    );
    let sbom_annotations = json!({
        "org.opencontainers.image.created": "2024-01-02T03:04:05Z",
        "org.example.kind": "sbom",
        "org.example.nonce": c.rng.token(8),
    });
    let sbom = util::oci_manifest(
        &empty,
        &[&sbom_layer],
        &[
            ("artifactType", json!(SBOM_TYPE)),
            ("subject", subject.manifest.descriptor()),
            ("annotations", sbom_annotations.clone()),
        ],
    );
    let sig_config = Blob::new(
        format!("{{\"signer\":\"{}\"}}", c.rng.token(8)).into_bytes(),
        SIG_CONFIG_TYPE,
    );
    let sig_layer = Blob::new(
        c.rng.bytes(200),
        "application/vnd.berth.conformance.signature.v1",
    );
    let sig_annotations = json!({ "org.example.kind": "signature" });
    let sig = util::oci_manifest(
        &sig_config,
        &[&sig_layer],
        &[
            ("subject", subject.manifest.descriptor()),
            ("annotations", sig_annotations.clone()),
        ],
    );
    let mut blobs = vec![subject.config.clone()];
    blobs.extend(subject.layers.iter().cloned());
    blobs.extend([empty, sbom_layer, sig_config, sig_layer]);
    Referrers {
        repo: repo.to_string(),
        subject,
        sbom,
        sbom_annotations,
        sig,
        sig_annotations,
        blobs,
    }
}

impl Referrers {
    pub async fn push_blobs(&self, c: &Ctx) -> Result<()> {
        let refs: Vec<&Blob> = self.blobs.iter().collect();
        c.push_blobs(&self.repo, &refs).await
    }

    pub async fn push_subject(&self, c: &Ctx) -> Result<()> {
        c.put_manifest(
            &self.repo,
            &self.subject.manifest.digest,
            &self.subject.manifest,
        )
        .await
        .map(|_| ())
    }

    /// Blobs, subject, then both referrers (by digest).
    pub async fn push_all(&self, c: &Ctx) -> Result<()> {
        self.push_blobs(c).await?;
        self.push_subject(c).await?;
        c.put_manifest(&self.repo, &self.sbom.digest, &self.sbom)
            .await?;
        c.put_manifest(&self.repo, &self.sig.digest, &self.sig)
            .await?;
        Ok(())
    }
}

/// GET /referrers/<digest> (plus `query`), following Link pages; validates
/// the index and returns its descriptors and the first response.
pub async fn referrers(
    c: &Ctx,
    repo: &str,
    digest: &str,
    query: &str,
) -> Result<(Vec<Value>, Resp)> {
    let mut url = format!("/v2/{repo}/referrers/{digest}{query}");
    let mut all = Vec::new();
    let mut first = None;
    for _ in 0..20 {
        let r = c.get(&url).await?;
        r.expect_status(&[200])?;
        let ct = r.require_header("content-type")?;
        if ct.split(';').next().unwrap_or("").trim() != OCI_INDEX {
            bail!("Content-Type {ct:?}, expected {OCI_INDEX}");
        }
        let v = r.json()?;
        if v.get("schemaVersion").and_then(Value::as_u64) != Some(2) {
            bail!("schemaVersion is not 2: {}", r.summary());
        }
        if v.get("mediaType").and_then(Value::as_str) != Some(OCI_INDEX) {
            bail!("mediaType is not {OCI_INDEX}: {}", r.summary());
        }
        let list = v
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| failed!("\"manifests\" is not a list: {}", r.summary()))?;
        all.extend(list.iter().cloned());
        let next = r.link_next()?;
        if first.is_none() {
            first = Some(r);
        }
        match next {
            Some(l) => url = l,
            None => break,
        }
    }
    let first = first.ok_or_else(|| failed!("no referrers response"))?;
    Ok((all, first))
}

/// Finds `m` in a referrers list and checks its descriptor fields.
pub fn expect_descriptor(
    list: &[Value],
    m: &Manifest,
    artifact_type: Option<&str>,
    annotations: &Value,
) -> Result<()> {
    let d = list
        .iter()
        .find(|d| d.get("digest").and_then(Value::as_str) == Some(m.digest.as_str()))
        .ok_or_else(|| {
            failed!(
                "referrer {} missing from the list of {} descriptor(s)",
                m.digest,
                list.len()
            )
        })?;
    if d.get("mediaType").and_then(Value::as_str) != Some(m.media_type.as_str()) {
        bail!(
            "descriptor mediaType {:?}, expected {}",
            d.get("mediaType"),
            m.media_type
        );
    }
    if d.get("size").and_then(Value::as_u64) != Some(m.bytes.len() as u64) {
        bail!(
            "descriptor size {:?}, expected {}",
            d.get("size"),
            m.bytes.len()
        );
    }
    let at = d.get("artifactType").and_then(Value::as_str);
    if at != artifact_type {
        bail!(
            "descriptor artifactType {:?}, expected {:?} ({})",
            at,
            artifact_type,
            m.digest
        );
    }
    let got = d.get("annotations").cloned().unwrap_or(Value::Null);
    if let Some(want) = annotations.as_object() {
        for (k, v) in want {
            if got.get(k) != Some(v) {
                bail!("descriptor annotations {got}, expected to include {k}={v}");
            }
        }
    }
    Ok(())
}

async fn referrer_subject_missing(c: &Ctx) -> Result<String> {
    let set = build_referrers(c, &c.repo("referrers"));
    set.push_blobs(c).await?;
    let r = c
        .put_manifest_raw(
            &set.repo,
            &set.sbom.digest,
            OCI_MANIFEST,
            set.sbom.bytes.clone(),
        )
        .await?;
    r.expect_status(&[201])?;
    let g = c.get_manifest(&set.repo, &set.sbom.digest).await?;
    g.expect_status(&[200])
        .context("GET of the referrer pushed before its subject")?;
    g.expect_body(&set.sbom.bytes)?;
    Ok("201 Created while the subject does not exist; pullable".into())
}

async fn oci_subject_header(c: &Ctx) -> Result<String> {
    let set = build_referrers(c, &c.repo("referrers"));
    set.push_blobs(c).await?;
    set.push_subject(c).await?;
    let r = c
        .put_manifest_raw(
            &set.repo,
            &set.sig.digest,
            OCI_MANIFEST,
            set.sig.bytes.clone(),
        )
        .await?;
    r.expect_status(&[201])?;
    r.expect_header("oci-subject", &set.subject.manifest.digest)?;
    Ok("OCI-Subject set".into())
}

async fn referrers_list(c: &Ctx) -> Result<String> {
    let set = build_referrers(c, &c.repo(&format!("referrers-{}", c.rng.token(4))));
    set.push_all(c).await?;
    let (list, _) = referrers(c, &set.repo, &set.subject.manifest.digest, "").await?;
    if list.len() != 2 {
        bail!("{} descriptors listed, expected 2: {:?}", list.len(), list);
    }
    expect_descriptor(&list, &set.sbom, Some(SBOM_TYPE), &set.sbom_annotations)
        .context("referrer with artifactType")?;
    expect_descriptor(&list, &set.sig, Some(SIG_CONFIG_TYPE), &set.sig_annotations)
        .context("referrer without artifactType (config.mediaType expected)")?;
    Ok("both referrers listed with the right fields".into())
}

async fn referrers_before_subject(c: &Ctx) -> Result<String> {
    let set = build_referrers(c, &c.repo(&format!("referrers-{}", c.rng.token(4))));
    set.push_blobs(c).await?;
    c.put_manifest(&set.repo, &set.sbom.digest, &set.sbom)
        .await?;
    let (list, _) = referrers(c, &set.repo, &set.subject.manifest.digest, "")
        .await
        .context("before the subject is pushed")?;
    expect_descriptor(&list, &set.sbom, Some(SBOM_TYPE), &set.sbom_annotations)
        .context("before the subject is pushed")?;
    set.push_subject(c).await?;
    let (list, _) = referrers(c, &set.repo, &set.subject.manifest.digest, "")
        .await
        .context("after the subject is pushed")?;
    expect_descriptor(&list, &set.sbom, Some(SBOM_TYPE), &set.sbom_annotations)
        .context("after the subject is pushed")?;
    Ok("listed before and after the subject exists".into())
}

async fn referrers_index_referrer(c: &Ctx) -> Result<String> {
    let set = build_referrers(c, &c.repo(&format!("referrers-{}", c.rng.token(4))));
    set.push_all(c).await?;
    let annotations = json!({ "org.example.kind": "bundle" });
    let idx = util::oci_index(
        &[set.sbom.descriptor(), set.sig.descriptor()],
        &[
            ("subject", set.subject.manifest.descriptor()),
            ("annotations", annotations.clone()),
        ],
    );
    let r = c
        .put_manifest_raw(&set.repo, &idx.digest, OCI_INDEX, idx.bytes.clone())
        .await?;
    r.expect_status(&[201])?;
    let (list, _) = referrers(c, &set.repo, &set.subject.manifest.digest, "").await?;
    expect_descriptor(&list, &idx, None, &annotations)?;
    Ok("index referrer listed without artifactType".into())
}

async fn referrers_filter(c: &Ctx) -> Result<String> {
    let set = build_referrers(c, &c.repo(&format!("referrers-{}", c.rng.token(4))));
    set.push_all(c).await?;
    let q = format!("?artifactType={}", util::qenc(SBOM_TYPE));
    let (list, first) = referrers(c, &set.repo, &set.subject.manifest.digest, &q).await?;
    let applied = first.header("oci-filters-applied").unwrap_or_default();
    if !applied.split(',').any(|f| f.trim() == "artifactType") {
        bail!(
            "no OCI-Filters-Applied: artifactType header ({} descriptors returned)",
            list.len()
        );
    }
    if list.len() != 1 {
        bail!("filtered list has {} descriptors, expected 1", list.len());
    }
    expect_descriptor(&list, &set.sbom, Some(SBOM_TYPE), &set.sbom_annotations)?;
    Ok("filtered to 1 with OCI-Filters-Applied".into())
}

async fn referrers_unknown_subject(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    c.push_image(&repo, Some("referrers-base"), 1).await?;
    let (list, _) = referrers(c, &repo, &c.rng.unknown_digest(), "").await?;
    if !list.is_empty() {
        bail!("{} descriptors for a digest nothing refers to", list.len());
    }
    Ok("200 with an empty manifests list".into())
}

async fn referrers_invalid_digest(c: &Ctx) -> Result<String> {
    let repo = c.repo("");
    c.push_image(&repo, Some("referrers-base"), 1).await?;
    let r = c
        .get(&format!("/v2/{repo}/referrers/sha256:not-a-digest"))
        .await?;
    r.expect_error(&[400], &["DIGEST_INVALID"])
}
