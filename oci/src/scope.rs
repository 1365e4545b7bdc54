//! Docker token scopes: the grammar, parsing and printing. The registry's
//! token service parses them; the client builds the ones it asks for.
//!
//! Grammar (distribution's "Token Scope Documentation"):
//!
//! ```text
//! scope          := resourcescope [ ' ' resourcescope ]*
//! resourcescope  := resourcetype ":" resourcename ":" action [ ',' action ]*
//! resourcetype   := /[a-z0-9]+/ [ '(' /[a-z0-9]+/ ')' ]     e.g. repository(plugin)
//! resourcename   := [ hostname '/' ] component [ '/' component ]*
//! hostname       := hostcomponent [ '.' hostcomponent ]* [ ':' port ]
//! action         := /[a-z]*/   (and `*`)
//! ```
//!
//! A name may contain `:` (a host's port), so the type ends at the first `:`
//! and the actions start after the last one.

use std::fmt;

use crate::names::{is_valid_repository_name, MAX_NAME_LEN};

/// At most this many scopes in one request (the token endpoint's repeated
/// `scope=`, a challenge, a token's `access`). Docker asks for 1–3; a mount
/// needs 2. Bounds the work an anonymous caller can ask for.
pub const MAX_SCOPES: usize = 32;
/// Longest single resource scope: a 255-byte name plus a host, type and actions.
pub const MAX_SCOPE_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope too long (over {MAX_SCOPE_LEN} bytes)")]
    TooLong,
    #[error("too many scopes (at most {MAX_SCOPES})")]
    TooMany,
    #[error("malformed scope {0:?}: expected type:name:actions")]
    Malformed(String),
    #[error("invalid resource type in scope {0:?}")]
    InvalidType(String),
    #[error("invalid resource name in scope {0:?}")]
    InvalidName(String),
    #[error("invalid action in scope {0:?}")]
    InvalidAction(String),
}

/// A set of actions. For repositories `*` is read as pull+push+delete; for
/// other resources (`registry:catalog:*`) it stays the `ALL` action.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const PULL: Actions = Actions(1);
    pub const PUSH: Actions = Actions(2);
    pub const DELETE: Actions = Actions(4);
    /// The literal `*` action.
    pub const ALL: Actions = Actions(8);
    /// What `*` means on a repository.
    pub const REPOSITORY_ALL: Actions = Actions(1 | 2 | 4);

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Does this set allow everything in `other`? `ALL` allows anything.
    pub fn contains(self, other: Actions) -> bool {
        self.0 & Self::ALL.0 != 0 || self.0 & other.0 == other.0
    }

    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    /// What both allow (`ALL` on one side yields the other side).
    pub fn intersect(self, other: Actions) -> Actions {
        if self.0 & Self::ALL.0 != 0 {
            other
        } else if other.0 & Self::ALL.0 != 0 {
            self
        } else {
            Actions(self.0 & other.0)
        }
    }

    /// Parse a comma-separated list. Unknown but well-formed actions are
    /// dropped (the token spec lets resource providers define their own, and
    /// we can never grant them); anything outside `[a-z*-]` is an error.
    pub fn parse_list(list: &str) -> Option<Actions> {
        let mut actions = Actions::NONE;
        for action in list.split(',') {
            actions = actions.union(match action {
                "pull" => Actions::PULL,
                "push" => Actions::PUSH,
                "delete" => Actions::DELETE,
                "*" => Actions::ALL,
                other if other.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') => {
                    Actions::NONE
                }
                _ => return None,
            });
        }
        Some(actions)
    }

    /// Action names in the canonical order (`pull,push,delete`, or `*`).
    pub fn names(self) -> Vec<&'static str> {
        if self.0 & Self::ALL.0 != 0 {
            return vec!["*"];
        }
        let mut names = Vec::with_capacity(3);
        for (bit, name) in [
            (Self::PULL, "pull"),
            (Self::PUSH, "push"),
            (Self::DELETE, "delete"),
        ] {
            if self.0 & bit.0 != 0 {
                names.push(name);
            }
        }
        names
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.names().join(","))
    }
}

/// One resource scope: `repository:team-a/app:pull,push`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    pub resource_type: String,
    /// `repository(plugin)` → `Some("plugin")`. Only class-less (or `image`)
    /// repositories are images this registry serves.
    pub class: Option<String>,
    pub name: String,
    pub actions: Actions,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.resource_type)?;
        if let Some(class) = &self.class {
            write!(f, "({class})")?;
        }
        write!(f, ":{}:{}", self.name, self.actions.names().join(","))
    }
}

impl Scope {
    pub fn repository(name: &str, actions: Actions) -> Scope {
        Scope {
            resource_type: "repository".into(),
            class: None,
            name: name.into(),
            actions,
        }
    }

    /// `registry:catalog:*`, needed to list repositories.
    pub fn catalog() -> Scope {
        Scope {
            resource_type: "registry".into(),
            class: None,
            name: "catalog".into(),
            actions: Actions::ALL,
        }
    }

    /// Build a scope from its parts (a token's `access` entry), validating
    /// them as [`Scope::parse`] does.
    pub fn from_parts(
        resource_type: &str,
        class: Option<&str>,
        name: &str,
        actions: &[&str],
    ) -> Result<Scope, ScopeError> {
        let shown = || format!("{resource_type}:{name}");
        if !is_type_word(resource_type) || !class.is_none_or(is_type_word) {
            return Err(ScopeError::InvalidType(shown()));
        }
        let mut set = Actions::NONE;
        for action in actions {
            if action.contains(',') {
                return Err(ScopeError::InvalidAction(shown()));
            }
            set = set.union(
                Actions::parse_list(action).ok_or_else(|| ScopeError::InvalidAction(shown()))?,
            );
        }
        Scope::build(resource_type, class, name, set, shown)
    }

    fn build(
        resource_type: &str,
        class: Option<&str>,
        name: &str,
        mut actions: Actions,
        shown: impl Fn() -> String,
    ) -> Result<Scope, ScopeError> {
        let valid_name = if resource_type == "repository" {
            is_valid_scope_name(name)
        } else {
            // `registry:catalog`, and names of types we do not know: keep
            // them to simple words so nothing odd reaches logs or tokens.
            !name.is_empty()
                && name.len() <= MAX_NAME_LEN
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b))
        };
        if !valid_name {
            return Err(ScopeError::InvalidName(shown()));
        }
        if resource_type == "repository" && actions.contains(Actions::ALL) {
            actions = Actions::REPOSITORY_ALL;
        }
        Ok(Scope {
            resource_type: resource_type.into(),
            class: class.map(str::to_string),
            name: name.into(),
            actions,
        })
    }

    /// Parse one resource scope.
    pub fn parse(input: &str) -> Result<Scope, ScopeError> {
        if input.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong);
        }
        let malformed = || ScopeError::Malformed(input.to_string());
        let (full_type, rest) = input.split_once(':').ok_or_else(malformed)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(malformed)?;
        let (resource_type, class) = match full_type.split_once('(') {
            Some((t, class)) => (
                t,
                Some(
                    class
                        .strip_suffix(')')
                        .ok_or_else(|| ScopeError::InvalidType(input.to_string()))?,
                ),
            ),
            None => (full_type, None),
        };
        if !is_type_word(resource_type) || !class.is_none_or(is_type_word) {
            return Err(ScopeError::InvalidType(input.to_string()));
        }
        let actions =
            Actions::parse_list(actions).ok_or_else(|| ScopeError::InvalidAction(input.into()))?;
        Scope::build(resource_type, class, name, actions, || input.to_string())
    }

    /// A repository of images this registry serves (not `repository(plugin)`).
    pub fn is_image_repository(&self) -> bool {
        self.resource_type == "repository"
            && self.class.as_deref().is_none_or(|class| class == "image")
    }

    pub fn is_catalog(&self) -> bool {
        self.resource_type == "registry" && self.class.is_none() && self.name == "catalog"
    }

    /// Same resource (type, class and name), whatever the actions.
    pub fn same_resource(&self, other: &Scope) -> bool {
        self.resource_type == other.resource_type
            && self.class == other.class
            && self.name == other.name
    }
}

fn is_type_word(word: &str) -> bool {
    !word.is_empty()
        && word.len() <= 32
        && word
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Parse scopes as the token endpoint receives them: each `scope=` value may
/// hold several scopes separated by spaces (older clients).
pub fn parse_scopes<S: AsRef<str>>(values: &[S]) -> Result<Vec<Scope>, ScopeError> {
    let mut scopes = Vec::new();
    for value in values {
        for part in value.as_ref().split(' ').filter(|p| !p.is_empty()) {
            if scopes.len() == MAX_SCOPES {
                return Err(ScopeError::TooMany);
            }
            scopes.push(Scope::parse(part)?);
        }
    }
    Ok(scopes)
}

/// The scopes a challenge or log shows, space separated.
pub fn to_scope_string(scopes: &[Scope]) -> String {
    scopes
        .iter()
        .map(Scope::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A scope's resource name: a repository name, optionally after a
/// `host[:port]/` (the grammar allows it; such names never match our
/// repositories, so they parse but are never granted).
fn is_valid_scope_name(name: &str) -> bool {
    if is_valid_repository_name(name) {
        return true;
    }
    let Some((host, rest)) = name.split_once('/') else {
        return false;
    };
    let (host, port) = match host.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (host, None),
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|part| {
            !part.is_empty()
                && !part.starts_with('-')
                && !part.ends_with('-')
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    name.len() <= MAX_NAME_LEN && host_ok && port_ok && is_valid_repository_name(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Scope {
        Scope::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_repository_scopes() {
        let s = parse("repository:samalba/my-app:pull,push");
        assert_eq!(s.resource_type, "repository");
        assert_eq!(s.class, None);
        assert_eq!(s.name, "samalba/my-app");
        assert_eq!(s.actions, Actions::PULL.union(Actions::PUSH));
        assert!(s.is_image_repository());
        assert_eq!(s.to_string(), "repository:samalba/my-app:pull,push");

        // Order and duplicates do not matter; output is canonical.
        let s = parse("repository:a:push,pull,push");
        assert_eq!(s.to_string(), "repository:a:pull,push");
        // `*` on a repository means everything.
        let s = parse("repository:a/b:*");
        assert_eq!(s.actions, Actions::REPOSITORY_ALL);
        assert_eq!(s.to_string(), "repository:a/b:pull,push,delete");
        // An empty action list is allowed by the grammar.
        assert!(parse("repository:a:").actions.is_empty());
        // Unknown actions are dropped, not errors.
        assert_eq!(
            parse("repository:a:pull,metadata-read").actions,
            Actions::PULL
        );
    }

    #[test]
    fn names_with_host_and_port() {
        let s = parse("repository:localhost:5000/team/app:pull");
        assert_eq!(s.name, "localhost:5000/team/app");
        assert_eq!(s.actions, Actions::PULL);
        assert!(!is_valid_repository_name(&s.name));
        let s = parse("repository:registry.example.com/app:push");
        assert_eq!(s.name, "registry.example.com/app");
        assert!(Scope::parse("repository:host:port/app:pull").is_err());
        assert!(Scope::parse("repository:host:/app:pull").is_err());
    }

    #[test]
    fn parses_catalog_and_classes() {
        let s = parse("registry:catalog:*");
        assert!(s.is_catalog());
        assert_eq!(s, Scope::catalog());
        assert_eq!(s.to_string(), "registry:catalog:*");
        let s = parse("repository(plugin):vieux/sshfs:pull");
        assert_eq!(s.class.as_deref(), Some("plugin"));
        assert!(!s.is_image_repository());
        assert_eq!(s.to_string(), "repository(plugin):vieux/sshfs:pull");
        assert!(parse("repository(image):a:pull").is_image_repository());
    }

    #[test]
    fn rejects_malformed_scopes() {
        for bad in [
            "",
            "repository",
            "repository:name",
            ":name:pull",
            "Repository:a:pull",
            "repository(:a:pull",
            "repository(x:a:pull",
            "repository()x:a:pull",
            "repo sitory:a:pull",
            "repository::pull",
            "repository:A:pull",
            "repository:../etc:pull",
            "repository:a/../b:pull",
            "repository:/abs:pull",
            "repository:a//b:pull",
            "repository:a/:pull",
            "repository:a\n:pull",
            "repository:a\u{0}b:pull",
            "repository:%2e%2e/x:pull",
            "repository:a:PULL",
            "repository:a:pull;rm",
            "repository:a:pull, push",
            "registry:cat alog:*",
            "registry::*",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("repository:{}:pull", "a".repeat(MAX_SCOPE_LEN));
        assert_eq!(Scope::parse(&long), Err(ScopeError::TooLong));
        let long_name = format!("repository:{}:pull", "a".repeat(MAX_NAME_LEN + 1));
        assert!(Scope::parse(&long_name).is_err());
        // Errors never panic on multi-byte input near the separators.
        assert!(Scope::parse("répository:ä:püll").is_err());
        assert!(Scope::parse("repository(ü):a:pull").is_err());
    }

    #[test]
    fn parses_many_scopes() {
        let scopes = parse_scopes(&[
            "repository:a:pull repository:b:push",
            "registry:catalog:*",
            "  ",
        ])
        .expect("parse");
        assert_eq!(scopes.len(), 3);
        assert_eq!(
            to_scope_string(&scopes),
            "repository:a:pull repository:b:push registry:catalog:*"
        );
        let many: Vec<String> = (0..=MAX_SCOPES)
            .map(|i| format!("repository:r{i}:pull"))
            .collect();
        assert_eq!(parse_scopes(&many), Err(ScopeError::TooMany));
        assert!(parse_scopes(&["repository:a:pull repository:../x:pull"]).is_err());
        assert_eq!(parse_scopes::<&str>(&[]), Ok(vec![]));
    }

    #[test]
    fn from_parts_validates() {
        let s = Scope::from_parts("repository", None, "a/b", &["pull", "push"]).expect("ok");
        assert_eq!(s, parse("repository:a/b:pull,push"));
        assert!(Scope::from_parts("repository", None, "../a", &["pull"]).is_err());
        assert!(Scope::from_parts("repository", None, "a", &["pull,push"]).is_err());
        assert!(Scope::from_parts("repository", None, "a", &["PULL"]).is_err());
        assert!(Scope::from_parts("Repo", None, "a", &["pull"]).is_err());
        assert!(Scope::from_parts("repository", Some("Plug"), "a", &["pull"]).is_err());
        assert_eq!(
            Scope::from_parts("repository", None, "a", &["*"]).map(|s| s.actions),
            Ok(Actions::REPOSITORY_ALL)
        );
    }

    #[test]
    fn actions_algebra() {
        let pp = Actions::PULL.union(Actions::PUSH);
        assert!(pp.contains(Actions::PULL));
        assert!(!pp.contains(Actions::DELETE));
        assert!(pp.contains(Actions::NONE));
        assert!(Actions::ALL.contains(Actions::DELETE));
        assert!(!Actions::REPOSITORY_ALL.contains(Actions::ALL));
        assert_eq!(
            pp.intersect(Actions::PUSH.union(Actions::DELETE)),
            Actions::PUSH
        );
        assert_eq!(Actions::ALL.intersect(pp), pp);
        assert_eq!(pp.intersect(Actions::ALL), pp);
        assert_eq!(format!("{:?}", pp), "[pull,push]");
        assert_eq!(Actions::parse_list(""), Some(Actions::NONE));
        assert_eq!(Actions::parse_list("pull,Push"), None);
    }
}
