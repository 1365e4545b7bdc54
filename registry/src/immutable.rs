//! Immutable tags: `[[immutable]]` rules naming repositories and tags that,
//! once pushed, keep pointing at the same manifest.
//!
//! The rules live in each replica's config and the tags in the shared storage,
//! so every replica refuses the same requests. The check reads the tag before
//! the write; two *first* pushes of one tag racing each other are not ordered
//! by it (the later write wins, as without the rule), but once a tag exists
//! nothing overwrites it.

use axum::http::StatusCode;
use berth_auth::acl::{glob_match, Pattern};
use berth_storage::{Digest, Storage};
use serde::Deserialize;

use crate::error::{ApiResult, Code, RegistryError};

/// One `[[immutable]]` table as written in the config file.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImmutableConfig {
    /// Shown in refusals; default: the rule's position and patterns.
    pub name: Option<String>,
    /// Repository patterns (`prod/**`, `team/*`), as in `[access]` rules.
    pub repositories: Vec<String>,
    /// Tag globs (`*` any run of characters); `!` before a glob excludes.
    /// Only exclusions (or none at all): every other tag.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    repositories: Vec<Pattern>,
    include: Vec<String>,
    exclude: Vec<String>,
}

impl Rule {
    fn covers(&self, repository: &str, tag: &str) -> bool {
        self.covers_repository(repository)
            && (self.include.is_empty() || self.include.iter().any(|g| glob_match(g, tag)))
            && !self.exclude.iter().any(|g| glob_match(g, tag))
    }

    fn covers_repository(&self, repository: &str) -> bool {
        self.repositories.iter().any(|p| p.matches(repository))
    }
}

/// The compiled rules; empty when none are configured.
#[derive(Debug, Default)]
pub struct ImmutableTags {
    rules: Vec<Rule>,
}

/// A tag glob as rules write it (`v*`, `*-rc*`): the tag alphabet and `*`.
pub(crate) fn is_tag_glob(glob: &str) -> bool {
    !glob.is_empty()
        && glob.len() <= 128
        && glob
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-*".contains(&b))
}

impl ImmutableTags {
    /// Compile the rules; errors name the rule and key (`immutable[1].tags`).
    pub fn from_config(configs: &[ImmutableConfig]) -> Result<ImmutableTags, String> {
        let mut rules = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let at = format!("immutable[{i}]");
            if config.repositories.is_empty() {
                return Err(format!(
                    "{at}.repositories is empty: name at least one repository pattern, e.g. \"prod/**\""
                ));
            }
            let repositories = config
                .repositories
                .iter()
                .map(|p| Pattern::parse(p).map_err(|e| format!("{at}.repositories: {p:?}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            let (mut include, mut exclude) = (Vec::new(), Vec::new());
            for tag in &config.tags {
                let (list, glob) = match tag.strip_prefix('!') {
                    Some(glob) => (&mut exclude, glob),
                    None => (&mut include, tag.as_str()),
                };
                if !is_tag_glob(glob) {
                    return Err(format!(
                        "{at}.tags: {tag:?}: a tag glob is up to 128 of [A-Za-z0-9_.-*], with an optional leading ! to exclude"
                    ));
                }
                list.push(glob.to_string());
            }
            let name = match &config.name {
                Some(name) => format!("{name:?}"),
                None => format!(
                    "{at} (repositories = {:?}, tags = {:?})",
                    config.repositories, config.tags
                ),
            };
            rules.push(Rule {
                name,
                repositories,
                include,
                exclude,
            });
        }
        Ok(ImmutableTags { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The name of the rule that makes `tag` of `repository` immutable, if any.
    pub fn rule_name(&self, repository: &str, tag: &str) -> Option<&str> {
        self.rule_for(repository, tag).map(|r| r.name.as_str())
    }

    fn rule_for(&self, repository: &str, tag: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.covers(repository, tag))
    }

    /// A manifest PUT to `tag`: refused when the tag is immutable and already
    /// points at another manifest. The identical manifest again is fine.
    pub async fn check_put(
        &self,
        s: &dyn Storage,
        repository: &str,
        tag: &str,
        digest: &Digest,
    ) -> ApiResult<()> {
        let Some(rule) = self.rule_for(repository, tag) else {
            return Ok(());
        };
        match s.tag_resolve(repository, tag).await? {
            Some(current) if current != *digest => Err(refusal(format!(
                "tag {tag} of {repository} is immutable (rule {}): it points at {current} and cannot be moved to {digest}; push a new tag instead",
                rule.name
            ))),
            _ => Ok(()),
        }
    }

    /// A tag DELETE: refused when the tag is immutable.
    pub fn check_tag_delete(&self, repository: &str, tag: &str) -> ApiResult<()> {
        match self.rule_for(repository, tag) {
            Some(rule) => Err(refusal(format!(
                "tag {tag} of {repository} is immutable (rule {}): it cannot be deleted",
                rule.name
            ))),
            None => Ok(()),
        }
    }

    /// A manifest DELETE by digest: refused when an immutable tag points at it.
    pub async fn check_manifest_delete(
        &self,
        s: &dyn Storage,
        repository: &str,
        digest: &Digest,
    ) -> ApiResult<()> {
        if !self.rules.iter().any(|r| r.covers_repository(repository)) {
            return Ok(());
        }
        let tags = s.tags(repository).await?.unwrap_or_default();
        for tag in tags {
            let Some(rule) = self.rule_for(repository, &tag) else {
                continue;
            };
            if s.tag_resolve(repository, &tag).await?.as_ref() == Some(digest) {
                return Err(refusal(format!(
                    "manifest {digest} of {repository} is what immutable tag {tag} points at (rule {}): it cannot be deleted",
                    rule.name
                )));
            }
        }
        Ok(())
    }
}

fn refusal(message: String) -> RegistryError {
    RegistryError::new(StatusCode::CONFLICT, Code::Denied, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(repositories: &[&str], tags: &[&str]) -> Result<ImmutableTags, String> {
        ImmutableTags::from_config(&[ImmutableConfig {
            name: None,
            repositories: repositories.iter().map(|s| s.to_string()).collect(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        }])
    }

    #[test]
    fn patterns_with_exclusions() {
        let r = rules(&["prod/**"], &["v*", "!*-rc*"]).expect("valid");
        assert!(r.rule_for("prod/app", "v1.2").is_some());
        assert!(r.rule_for("prod/a/b", "v2").is_some());
        assert!(r.rule_for("prod/app", "v1.2-rc1").is_none(), "excluded");
        assert!(r.rule_for("prod/app", "latest").is_none(), "not included");
        assert!(r.rule_for("dev/app", "v1").is_none(), "other repository");
        assert!(r.rule_for("prod", "v1").is_none(), "prod/** is inside prod");
        let all_but_latest = rules(&["*"], &["!latest"]).expect("valid");
        assert!(all_but_latest.rule_for("app", "v1").is_some());
        assert!(all_but_latest.rule_for("app", "latest").is_none());
    }

    #[test]
    fn bad_patterns_name_the_key() {
        let e = rules(&["Prod/**"], &["v*"]).expect_err("uppercase repository");
        assert!(e.starts_with("immutable[0].repositories"), "{e}");
        let e = rules(&["prod/**"], &["v/1"]).expect_err("slash in tag");
        assert!(e.starts_with("immutable[0].tags"), "{e}");
        let e = rules(&["prod/**"], &["!"]).expect_err("empty exclusion");
        assert!(e.starts_with("immutable[0].tags"), "{e}");
        let e = rules(&[], &["v*"]).expect_err("no repositories");
        assert!(e.starts_with("immutable[0].repositories"), "{e}");
    }
}
