//! Content discovery: tags list, catalog and referrers.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use berth_storage::{Digest, NamePage, Storage};
use bytes::Bytes;
use futures::TryStreamExt;
use serde_json::json;

use crate::blobs::parse_digest;
use crate::error::{ApiResult, Code, RegistryError};
use crate::{header_value, http, json_response, manifest, Req};

fn page_params(req: &Req) -> ApiResult<(Option<usize>, Option<String>)> {
    let n = match req.param("n") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            RegistryError::bad_request(
                Code::Unsupported,
                format!("n={v:?} is not a non-negative integer"),
            )
        })?),
    };
    Ok((n, req.param("last")))
}

/// A page of a list as JSON, with a `Link` to the next page when there is one.
fn page_response(
    body: serde_json::Value,
    base: &str,
    n: Option<usize>,
    page: &[String],
    more: bool,
) -> Response {
    // Display of a JSON value cannot fail, unlike to_vec's generic writer.
    let mut r = json_response(StatusCode::OK, body.to_string().into_bytes(), false);
    if let (true, Some(n), Some(last)) = (more, n, page.last()) {
        let link = format!(
            "<{base}?n={n}&last={}>; rel=\"next\"",
            http::percent_encode(last)
        );
        r.headers_mut().insert(header::LINK, header_value(&link));
    }
    r
}

pub async fn tags(s: &dyn Storage, name: &str, req: &Req) -> ApiResult<Response> {
    let (n, last) = page_params(req)?;
    let page = s
        .tags_after(name, last.as_deref(), n)
        .await?
        .ok_or_else(|| {
            RegistryError::not_found(
                Code::NameUnknown,
                format!("repository {name} is not known to the registry"),
            )
        })?;
    let body = json!({ "name": name, "tags": page.names });
    Ok(page_response(
        body,
        &format!("/v2/{name}/tags/list"),
        n,
        &page.names,
        page.more,
    ))
}

/// The catalog, with only the repositories `visible` lets through.
pub async fn catalog(
    s: &dyn Storage,
    req: &Req,
    visible: &(dyn Fn(&str) -> bool + Sync),
) -> ApiResult<Response> {
    let (n, last) = page_params(req)?;
    let page = visible_page(s, last, n, visible).await?;
    let body = json!({ "repositories": page.names });
    Ok(page_response(
        body,
        "/v2/_catalog",
        n,
        &page.names,
        page.more,
    ))
}

/// The visible repositories after `after`, read from storage a chunk at a
/// time until the page is full (a caller who may see few repositories costs
/// more chunks, never a whole listing held at once unless `n` is absent).
async fn visible_page(
    s: &dyn Storage,
    mut after: Option<String>,
    n: Option<usize>,
    visible: &(dyn Fn(&str) -> bool + Sync),
) -> ApiResult<NamePage> {
    let Some(n) = n else {
        let mut all = s.repositories_after(after.as_deref(), None).await?;
        all.names.retain(|r| visible(r));
        return Ok(all);
    };
    if n == 0 {
        return Ok(NamePage::default());
    }
    let chunk = n.saturating_add(1).max(CATALOG_CHUNK);
    let mut names = Vec::new();
    loop {
        let got = s.repositories_after(after.as_deref(), Some(chunk)).await?;
        after = got.names.last().cloned();
        names.extend(got.names.into_iter().filter(|r| visible(r)));
        if names.len() > n || !got.more {
            break;
        }
    }
    let more = names.len() > n;
    names.truncate(n);
    Ok(NamePage { names, more })
}

/// Repositories read per storage call while filling a catalog page.
const CATALOG_CHUNK: usize = 200;

/// Most descriptors in one referrers page (the spec lets a registry page the
/// list with `Link`; a client may ask for fewer with `n`).
pub const REFERRERS_PAGE_ENTRIES: usize = 1000;

/// Most bytes of descriptors in one referrers page. A page holds at least one
/// descriptor, so a referrer stored before annotations were capped (up to a
/// 4 MiB manifest's worth) is sent alone on its page.
pub const REFERRERS_PAGE_BYTES: usize = 1 << 20;

/// One page of a subject's referrers, as JSON descriptors.
#[derive(Debug, Default)]
struct ReferrersPage {
    /// Each descriptor's JSON, all but the first preceded by a comma.
    entries: Vec<Bytes>,
    bytes: usize,
    last: Option<Digest>,
    /// More matching referrers follow this page.
    more: bool,
}

/// Read the referrers after `after` one at a time until a page is full.
/// Memory stays at one page (plus one descriptor) whatever is stored.
async fn referrers_page(
    s: &dyn Storage,
    name: &str,
    subject: &Digest,
    after: Option<&Digest>,
    artifact_type: Option<&str>,
    max_entries: usize,
    max_bytes: usize,
) -> ApiResult<ReferrersPage> {
    let mut page = ReferrersPage::default();
    let mut stream = s.referrers_after(name, subject, after).await?;
    while let Some(d) = stream.try_next().await? {
        if artifact_type.is_some() && d.artifact_type.as_deref() != artifact_type {
            continue;
        }
        if page.entries.len() >= max_entries {
            page.more = true;
            break;
        }
        let mut json = if page.entries.is_empty() {
            Vec::new()
        } else {
            vec![b',']
        };
        serde_json::to_writer(&mut json, &d).map_err(|e| {
            RegistryError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Unknown,
                format!("cannot encode the descriptor of {}: {e}", d.digest),
            )
        })?;
        if !page.entries.is_empty() && page.bytes + json.len() > max_bytes {
            page.more = true;
            break;
        }
        page.bytes += json.len();
        page.entries.push(json.into());
        page.last = Some(d.digest);
    }
    Ok(page)
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=T][&n=N][&last=D]`: one
/// page of the image index of the subject's referrers, with a `Link` to the
/// next page when more follow (`last` is the last digest of the page before).
pub async fn referrers(
    s: &dyn Storage,
    name: &str,
    digest: &str,
    req: &Req,
) -> ApiResult<Response> {
    let subject = parse_digest(digest)?;
    let (n, last) = page_params(req)?;
    let max_entries = n
        .unwrap_or(REFERRERS_PAGE_ENTRIES)
        .clamp(1, REFERRERS_PAGE_ENTRIES);
    let after = last.as_deref().map(parse_digest).transpose()?;
    let filter = req.param("artifactType");
    let page = referrers_page(
        s,
        name,
        &subject,
        after.as_ref(),
        filter.as_deref(),
        max_entries,
        REFERRERS_PAGE_BYTES,
    )
    .await?;

    // The page is sent piece by piece, never joined into one buffer.
    let head = Bytes::from(format!(
        r#"{{"schemaVersion":2,"mediaType":"{}","manifests":["#,
        manifest::OCI_INDEX
    ));
    let tail = Bytes::from_static(b"]}");
    let len = head.len() + page.bytes + tail.len();
    let chunks = std::iter::once(head)
        .chain(page.entries)
        .chain(std::iter::once(tail))
        .map(Ok::<_, std::convert::Infallible>);
    let mut r = Response::new(Body::from_stream(futures::stream::iter(chunks)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header_value(manifest::OCI_INDEX));
    h.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    if filter.is_some() {
        h.insert("OCI-Filters-Applied", header_value("artifactType"));
    }
    if let (true, Some(last)) = (page.more, &page.last) {
        let mut link = format!("</v2/{name}/referrers/{subject}?last={last}");
        if n.is_some() {
            link.push_str(&format!("&n={max_entries}"));
        }
        if let Some(t) = &filter {
            link.push_str(&format!("&artifactType={}", http::percent_encode(t)));
        }
        link.push_str(">; rel=\"next\"");
        h.insert(header::LINK, header_value(&link));
    }
    Ok(r)
}
