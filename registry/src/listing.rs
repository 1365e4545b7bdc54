//! Content discovery: tags list, catalog and referrers.

use axum::http::{header, StatusCode};
use axum::response::Response;
use berth_storage::Storage;
use serde_json::json;

use crate::blobs::parse_digest;
use crate::error::{ApiResult, Code, RegistryError};
use crate::{header_value, http, json_response, manifest, Req};

/// One page of a sorted list: the entries after `last`, at most `n`, and
/// whether more remain.
pub fn paginate(sorted: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let start = match last {
        Some(last) => sorted.partition_point(|x| x.as_str() <= last),
        None => 0,
    };
    let mut page: Vec<String> = sorted.into_iter().skip(start).collect();
    let more = n.is_some_and(|n| n > 0 && page.len() > n);
    if let Some(n) = n {
        page.truncate(n);
    }
    (page, more)
}

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
    let all = s.tags(name).await?.ok_or_else(|| {
        RegistryError::not_found(
            Code::NameUnknown,
            format!("repository {name} is not known to the registry"),
        )
    })?;
    let (page, more) = paginate(all, n, last.as_deref());
    let body = json!({ "name": name, "tags": page });
    Ok(page_response(
        body,
        &format!("/v2/{name}/tags/list"),
        n,
        &page,
        more,
    ))
}

/// The catalog, with only the repositories `visible` lets through.
pub async fn catalog(
    s: &dyn Storage,
    req: &Req,
    visible: &(dyn Fn(&str) -> bool + Sync),
) -> ApiResult<Response> {
    let (n, last) = page_params(req)?;
    let mut repositories = s.repositories().await?;
    repositories.retain(|r| visible(r));
    let (page, more) = paginate(repositories, n, last.as_deref());
    let body = json!({ "repositories": page });
    Ok(page_response(body, "/v2/_catalog", n, &page, more))
}

pub async fn referrers(
    s: &dyn Storage,
    name: &str,
    digest: &str,
    req: &Req,
) -> ApiResult<Response> {
    let subject = parse_digest(digest)?;
    let mut list = s.referrers(name, &subject).await?;
    let filter = req.param("artifactType");
    if let Some(t) = &filter {
        list.retain(|d| d.artifact_type.as_deref() == Some(t.as_str()));
    }
    let body = json!({
        "schemaVersion": 2,
        "mediaType": manifest::OCI_INDEX,
        "manifests": list,
    });
    let mut r = crate::bytes_response(
        StatusCode::OK,
        manifest::OCI_INDEX,
        body.to_string().into(),
        false,
    );
    if filter.is_some() {
        r.headers_mut()
            .insert("OCI-Filters-Applied", header_value("artifactType"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::paginate;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pages() {
        let all = v(&["a", "b", "c", "d"]);
        assert_eq!(paginate(all.clone(), None, None), (all.clone(), false));
        assert_eq!(paginate(all.clone(), Some(2), None), (v(&["a", "b"]), true));
        assert_eq!(
            paginate(all.clone(), Some(2), Some("b")),
            (v(&["c", "d"]), false)
        );
        assert_eq!(
            paginate(all.clone(), Some(10), Some("bb")),
            (v(&["c", "d"]), false)
        );
        assert_eq!(paginate(all.clone(), None, Some("d")), (v(&[]), false));
        assert_eq!(paginate(all, Some(0), None), (v(&[]), false));
    }
}
