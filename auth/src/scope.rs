//! The scopes each registry request needs, and the set operations the
//! token service and the registry decide access with.
//!
//! The scope grammar itself (parsing and printing `repository:NAME:ACTIONS`)
//! lives in `berth_oci::scope`, shared with the client; it is re-exported
//! here so `berth_auth::scope::Scope` and friends keep working.

pub use berth_oci::names::{is_valid_repository_name, MAX_NAME_LEN};
pub use berth_oci::scope::{
    parse_scopes, to_scope_string, Actions, Scope, ScopeError, MAX_SCOPES, MAX_SCOPE_LEN,
};

/// Merge scopes on the same resource (union of actions), keeping the order in
/// which resources first appear.
pub fn merge(scopes: impl IntoIterator<Item = Scope>) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for scope in scopes {
        match out.iter_mut().find(|s| s.same_resource(&scope)) {
            Some(existing) => existing.actions = existing.actions.union(scope.actions),
            None => out.push(scope),
        }
    }
    out
}

/// The part of `required` that `granted` does not cover (empty: allowed).
/// The registry answers 401 with these in the challenge's `scope`.
pub fn missing(required: &[Scope], granted: &[Scope]) -> Vec<Scope> {
    required
        .iter()
        .filter(|need| {
            let have = granted
                .iter()
                .filter(|g| g.same_resource(need))
                .fold(Actions::NONE, |acc, g| acc.union(g.actions));
            !have.contains(need.actions)
        })
        .cloned()
        .collect()
}

/// The API endpoint a request addresses, as the registry's router classifies
/// it (`berth_registry::route::Route`; this crate cannot depend on the
/// registry, so the registry maps its route onto this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/v2/`: no repository; needs only a valid identity.
    Base,
    Catalog,
    Tags {
        name: &'a str,
    },
    Manifest {
        name: &'a str,
    },
    Blob {
        name: &'a str,
    },
    /// `POST /v2/<name>/blobs/uploads/`; `mount_from` is the `from=` of a
    /// cross-repository mount (`?mount=<digest>&from=<repo>`), when present.
    UploadStart {
        name: &'a str,
        mount_from: Option<&'a str>,
    },
    Upload {
        name: &'a str,
    },
    Referrers {
        name: &'a str,
    },
}

/// The scopes a request needs, or `None` when the method is not served there
/// (the router answers 405 without asking for credentials).
///
/// `Some(vec![])` (only for `/v2/`) means "any valid identity": when auth is
/// on, an anonymous caller still gets a 401 there, which is how `docker login`
/// discovers the realm.
///
/// Uploads need pull as well as push (as distribution does): a client that can
/// push to a repository could otherwise probe which blobs it holds.
pub fn required_scopes(method: &str, endpoint: &Endpoint<'_>) -> Option<Vec<Scope>> {
    let read = matches!(method, "GET" | "HEAD");
    let repo = Scope::repository;
    let pull_push = Actions::PULL.union(Actions::PUSH);
    let scopes = match *endpoint {
        Endpoint::Base if read => vec![],
        Endpoint::Catalog if read => vec![Scope::catalog()],
        Endpoint::Tags { name } | Endpoint::Referrers { name } if read => {
            vec![repo(name, Actions::PULL)]
        }
        Endpoint::Manifest { name } | Endpoint::Blob { name } if read => {
            vec![repo(name, Actions::PULL)]
        }
        Endpoint::Manifest { name } if method == "PUT" => vec![repo(name, pull_push)],
        Endpoint::Manifest { name } | Endpoint::Blob { name } if method == "DELETE" => {
            vec![repo(name, Actions::DELETE)]
        }
        Endpoint::UploadStart { name, mount_from } if method == "POST" => {
            let mut scopes = vec![repo(name, pull_push)];
            // A mount reads the blob from the source repository: the caller
            // must be allowed to pull there too, or a mount would copy any
            // blob whose digest it knows into a repository it can read.
            if let Some(from) = mount_from.filter(|from| is_valid_repository_name(from)) {
                if from != name {
                    scopes.push(repo(from, Actions::PULL));
                }
            }
            scopes
        }
        Endpoint::Upload { name }
            if matches!(method, "GET" | "HEAD" | "PATCH" | "PUT" | "DELETE") =>
        {
            vec![repo(name, pull_push)]
        }
        _ => return None,
    };
    Some(scopes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Scope {
        Scope::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn merges_and_finds_missing() {
        let merged = merge([
            parse("repository:a:pull"),
            parse("repository:b:pull"),
            parse("repository:a:push"),
        ]);
        assert_eq!(
            to_scope_string(&merged),
            "repository:a:pull,push repository:b:pull"
        );

        let granted = vec![parse("repository:a:pull"), parse("repository:a:push")];
        assert!(missing(&[parse("repository:a:pull,push")], &granted).is_empty());
        assert_eq!(
            missing(
                &[parse("repository:a:delete"), parse("repository:b:pull")],
                &granted
            ),
            vec![parse("repository:a:delete"), parse("repository:b:pull")]
        );
        // A plugin repository of the same name is another resource.
        assert_eq!(
            missing(&[parse("repository(plugin):a:pull")], &granted).len(),
            1
        );
        assert!(missing(&[Scope::catalog()], &[parse("registry:catalog:*")]).is_empty());
        assert_eq!(
            missing(&[Scope::catalog()], &[parse("registry:catalog:pull")]).len(),
            1
        );
        assert!(missing(&[], &[]).is_empty());
    }

    #[test]
    fn scopes_for_requests() {
        let req =
            |method, endpoint| required_scopes(method, &endpoint).map(|s| to_scope_string(&s));
        let some = |s: &str| Some(s.to_string());
        assert_eq!(req("GET", Endpoint::Base), some(""));
        assert_eq!(req("GET", Endpoint::Catalog), some("registry:catalog:*"));
        assert_eq!(req("POST", Endpoint::Catalog), None);
        assert_eq!(
            req("GET", Endpoint::Tags { name: "a" }),
            some("repository:a:pull")
        );
        assert_eq!(
            req("GET", Endpoint::Referrers { name: "a" }),
            some("repository:a:pull")
        );
        for method in ["GET", "HEAD"] {
            assert_eq!(
                req(method, Endpoint::Manifest { name: "a/b" }),
                some("repository:a/b:pull")
            );
            assert_eq!(
                req(method, Endpoint::Blob { name: "a" }),
                some("repository:a:pull")
            );
        }
        assert_eq!(
            req("PUT", Endpoint::Manifest { name: "a" }),
            some("repository:a:pull,push")
        );
        assert_eq!(
            req("DELETE", Endpoint::Manifest { name: "a" }),
            some("repository:a:delete")
        );
        assert_eq!(
            req("DELETE", Endpoint::Blob { name: "a" }),
            some("repository:a:delete")
        );
        assert_eq!(req("PUT", Endpoint::Blob { name: "a" }), None);
        let start = |from| Endpoint::UploadStart {
            name: "t",
            mount_from: from,
        };
        assert_eq!(req("POST", start(None)), some("repository:t:pull,push"));
        assert_eq!(
            req("POST", start(Some("src/app"))),
            some("repository:t:pull,push repository:src/app:pull")
        );
        // An invalid `from` is never mounted (the registry falls back to an
        // upload), so it adds no scope; mounting from itself needs no more.
        assert_eq!(
            req("POST", start(Some("../x"))),
            some("repository:t:pull,push")
        );
        assert_eq!(
            req("POST", start(Some("t"))),
            some("repository:t:pull,push")
        );
        assert_eq!(req("GET", start(None)), None);
        for method in ["GET", "HEAD", "PATCH", "PUT", "DELETE"] {
            assert_eq!(
                req(method, Endpoint::Upload { name: "a" }),
                some("repository:a:pull,push")
            );
        }
        assert_eq!(req("POST", Endpoint::Upload { name: "a" }), None);
        // Methods are case-sensitive tokens.
        assert_eq!(req("get", Endpoint::Tags { name: "a" }), None);
        assert_eq!(req("OPTIONS", Endpoint::Base), None);
    }
}
