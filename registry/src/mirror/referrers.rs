//! `GET /v2/PREFIX/NAME/referrers/DIGEST` through the cache: the upstream's list (it changes
//! as signatures and SBOMs are pushed there, so it is asked each time, and its referrers are
//! then pulled by digest through the cache); when the upstream is down or has no referrers
//! API, the referrers that are cached.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use berth_storage::Storage;

use super::Mirror;
use crate::error::ApiResult;
use crate::{bytes_response, header_value, Req};

pub(crate) async fn get(
    s: &dyn Storage,
    mirror: &Mirror,
    name: &str,
    upstream_name: &str,
    digest: &str,
    req: &Req,
) -> ApiResult<Response> {
    let subject = crate::blobs::parse_digest(digest)?;
    // The upstream's own pagination is not carried over: a paged request is answered locally.
    let paged = req.param("last").is_some() || req.param("n").is_some();
    if !paged {
        let filter = req.param("artifactType");
        match mirror
            .get_referrers(upstream_name, &subject, filter.as_deref())
            .await
        {
            Ok(Some((bytes, filtered))) => {
                let mut r =
                    bytes_response(StatusCode::OK, crate::manifest::OCI_INDEX, bytes, false);
                if let Some(f) = filtered {
                    r.headers_mut()
                        .insert("OCI-Filters-Applied", header_value(&f));
                }
                r.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                return Ok(r);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(repository = %name, %subject, error = %e, "mirror: referrers from the cache only");
            }
        }
    }
    crate::listing::referrers(s, name, digest, req).await
}
