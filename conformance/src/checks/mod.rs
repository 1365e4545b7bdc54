//! The checks, grouped by the spec's workflow categories.

mod discovery;
mod management;
mod next;
mod pull;
mod push;

use crate::http::Ctx;
use crate::BoxFut;

/// How strongly the specification requires what a check asserts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// A MUST of the specification.
    Must,
    /// A SHOULD (or MAY) of the specification that real clients depend on.
    Should,
    /// Beyond the specification (e.g. `_catalog`, stateless upload URLs).
    Extra,
    /// In the specification's main branch, after v1.1; run only with `--next`.
    Next,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::Extra => "EXTRA",
            Level::Next => "NEXT",
        }
    }
}

pub struct Check {
    pub id: &'static str,
    pub level: Level,
    pub about: &'static str,
    pub run: for<'a> fn(&'a Ctx) -> BoxFut<'a>,
}

macro_rules! check {
    ($id:expr, $level:ident, $about:expr, $f:path) => {
        $crate::checks::Check {
            id: $id,
            level: $crate::checks::Level::$level,
            about: $about,
            run: {
                fn wrap(c: &$crate::http::Ctx) -> $crate::BoxFut<'_> {
                    Box::pin($f(c))
                }
                wrap
            },
        }
    };
}
pub(crate) use check;

pub fn all() -> Vec<Check> {
    let mut v = vec![
        check!("base.v2", Must, "GET /v2/ answers 200", base_v2),
        check!(
            "base.v2.api-version-header",
            Should,
            "GET /v2/ sets Docker-Distribution-API-Version: registry/2.0",
            base_v2_header
        ),
    ];
    v.extend(push::checks());
    v.extend(pull::checks());
    v.extend(discovery::checks());
    v.extend(management::checks());
    v.extend(next::checks());
    v
}

/// The v1.1 checks that assert the opposite of an option the `--next` checks need turned
/// on (an index with a missing child is refused; sparse indexes accept it).
pub const CONTRADICTED_BY_NEXT: &[&str] = &["pull.manifest.index-missing-child"];

async fn base_v2(c: &Ctx) -> anyhow::Result<String> {
    let r = c.get("/v2/").await?;
    r.expect_status(&[200])?;
    Ok("200 OK".into())
}

async fn base_v2_header(c: &Ctx) -> anyhow::Result<String> {
    let r = c.get("/v2/").await?;
    r.expect_status(&[200, 401])?;
    r.expect_header("docker-distribution-api-version", "registry/2.0")?;
    Ok("registry/2.0".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_grouped() {
        let all = all();
        let mut seen = HashSet::new();
        for c in &all {
            assert!(seen.insert(c.id), "duplicate id {}", c.id);
            let group = c.id.split('.').next().unwrap_or_default();
            assert!(
                ["base", "push", "pull", "discovery", "management", "next"].contains(&group),
                "bad group in {}",
                c.id
            );
            assert_eq!(
                group == "next",
                c.level == Level::Next,
                "{}: the next. group is exactly the NEXT level",
                c.id
            );
            assert!(!c.about.is_empty());
        }
        assert!(all.len() > 50);
    }
}
