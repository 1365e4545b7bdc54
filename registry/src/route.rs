//! Turning a `/v2/...` path into the resource it names. Repository names
//! contain slashes, so the path is read from its end; nothing is decoded, so
//! `%2e%2e` or `..` simply fail name validation.

use berth_oci::names::is_valid_repository_name;

#[derive(Debug, PartialEq, Eq)]
pub enum Route<'a> {
    Base,
    Catalog,
    Tags { name: &'a str },
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    UploadStart { name: &'a str },
    Upload { name: &'a str, id: &'a str },
    Referrers { name: &'a str, digest: &'a str },
}

impl Route<'_> {
    /// A short name of the endpoint, for request logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Base => "base",
            Route::Catalog => "catalog",
            Route::Tags { .. } => "tags",
            Route::Manifest { .. } => "manifest",
            Route::Blob { .. } => "blob",
            Route::UploadStart { .. } | Route::Upload { .. } => "upload",
            Route::Referrers { .. } => "referrers",
        }
    }

    /// The repository the request is about, if any.
    pub fn repository(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. } => Some(name),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError<'a> {
    /// The path names no API endpoint.
    NotFound,
    /// The endpoint is known but the repository name is not valid.
    InvalidName(&'a str),
}

/// Parse the part of the path after `/v2/`.
pub fn parse(rest: &str) -> Result<Route<'_>, RouteError<'_>> {
    if rest.is_empty() {
        return Ok(Route::Base);
    }
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let route = if let Some(name) = rest.strip_suffix("/tags/list") {
        Route::Tags { name }
    } else if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        Route::UploadStart { name }
    } else {
        let (head, last) = rest.rsplit_once('/').ok_or(RouteError::NotFound)?;
        if last.is_empty() {
            return Err(RouteError::NotFound);
        }
        let (name, kind) = head.rsplit_once('/').ok_or(RouteError::NotFound)?;
        match kind {
            "manifests" => Route::Manifest {
                name,
                reference: last,
            },
            "blobs" => Route::Blob { name, digest: last },
            "referrers" => Route::Referrers { name, digest: last },
            "uploads" => match name.strip_suffix("/blobs") {
                Some(name) => Route::Upload { name, id: last },
                None => return Err(RouteError::NotFound),
            },
            _ => return Err(RouteError::NotFound),
        }
    };
    let name = route.name().unwrap_or_default();
    if !is_valid_repository_name(name) {
        return Err(RouteError::InvalidName(name));
    }
    Ok(route)
}

impl<'a> Route<'a> {
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Route::Base | Route::Catalog => None,
            Route::Tags { name }
            | Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::UploadStart { name }
            | Route::Upload { name, .. }
            | Route::Referrers { name, .. } => Some(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse(""), Ok(Route::Base));
        assert_eq!(parse("_catalog"), Ok(Route::Catalog));
        assert_eq!(parse("a/b/tags/list"), Ok(Route::Tags { name: "a/b" }));
        assert_eq!(
            parse("a/b/manifests/latest"),
            Ok(Route::Manifest {
                name: "a/b",
                reference: "latest"
            })
        );
        assert_eq!(
            parse("lib/blobs/sha256:abc"),
            Ok(Route::Blob {
                name: "lib",
                digest: "sha256:abc"
            })
        );
        assert_eq!(
            parse("x/blobs/uploads/"),
            Ok(Route::UploadStart { name: "x" })
        );
        assert_eq!(
            parse("x/blobs/uploads"),
            Ok(Route::UploadStart { name: "x" })
        );
        assert_eq!(
            parse("x/y/blobs/uploads/id1"),
            Ok(Route::Upload {
                name: "x/y",
                id: "id1"
            })
        );
        assert_eq!(
            parse("x/referrers/sha256:1"),
            Ok(Route::Referrers {
                name: "x",
                digest: "sha256:1"
            })
        );
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(
            parse("blobs/manifests/manifests/v1"),
            Ok(Route::Manifest {
                name: "blobs/manifests",
                reference: "v1"
            })
        );
    }

    #[test]
    fn bad_paths() {
        assert_eq!(parse("nothing"), Err(RouteError::NotFound));
        assert_eq!(parse("a/unknown/x"), Err(RouteError::NotFound));
        assert_eq!(parse("a/manifests/"), Err(RouteError::NotFound));
        assert_eq!(parse("x/uploads/id"), Err(RouteError::NotFound));
        assert_eq!(
            parse("../x/tags/list"),
            Err(RouteError::InvalidName("../x"))
        );
        assert_eq!(
            parse("%2e%2e/x/blobs/uploads/"),
            Err(RouteError::InvalidName("%2e%2e/x"))
        );
        assert_eq!(
            parse("Upper/manifests/v1"),
            Err(RouteError::InvalidName("Upper"))
        );
        assert_eq!(
            parse("a//b/manifests/v1"),
            Err(RouteError::InvalidName("a//b"))
        );
    }
}
