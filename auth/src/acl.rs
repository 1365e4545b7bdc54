//! Who may do what to which repositories: rules from the config.
//!
//! ```toml
//! [groups]
//! team-a = ["alice", "bob"]
//!
//! [[rules]]
//! who = "group:team-a"            # or "user:NAME", "authenticated", "anonymous"
//! repositories = ["team-a/**"]
//! actions = ["pull", "push"]      # pull, push, delete, or "*" for all three
//!
//! [[rules]]
//! who = "anonymous"
//! repositories = ["public/*"]
//! actions = ["pull"]
//! ```
//!
//! **Semantics: union, allow-only.** Every rule that matches the caller and
//! the repository adds its actions; order does not matter and there are no
//! deny rules. With no matching rule, nothing is allowed. We chose this over
//! first-match because a first-match list changes meaning when someone adds a
//! rule in the wrong place (a broad `pull` above a team's `push` silently
//! removes the push), and allow-only rules cannot hide a grant further down.
//!
//! `anonymous` rules apply to everyone, logged in or not (logging in never
//! takes rights away); `authenticated` rules to any user who logged in.
//!
//! **Patterns** match whole repository names, segment by segment (segments are
//! separated by `/`):
//! - `*` matches any run of characters within one segment: `team-*`, `*/app`;
//!   a lone `*` matches only one-segment names (`busybox`, not `a/busybox`);
//! - `**` is a whole segment and matches across segments: `team-a/**` matches
//!   everything under `team-a/` (not `team-a` itself), `**/cache` matches
//!   `cache` and `x/y/cache`, `a/**/b` matches `a/b` and `a/x/y/b`, and a lone
//!   `**` matches every repository.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::scope::{is_valid_repository_name, Actions, Scope};

/// Who is asking: nobody (no credentials) or a user who logged in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    Anonymous,
    User(String),
}

impl Identity {
    pub fn user(name: &str) -> Identity {
        Identity::User(name.into())
    }

    /// The name for a token's `sub` (empty for anonymous, as distribution does).
    pub fn subject(&self) -> &str {
        match self {
            Identity::Anonymous => "",
            Identity::User(name) => name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("access rules: {0}")]
    Toml(String),
    #[error("rule {rule}: {message}")]
    Rule { rule: usize, message: String },
    #[error("group {group:?}: {message}")]
    Group { group: String, message: String },
}

/// The `[access]` part of the config as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclConfig {
    #[serde(default)]
    pub groups: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub who: String,
    pub repositories: Vec<String>,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    Anonymous,
    Authenticated,
    User(String),
    Group(String),
}

#[derive(Debug, Clone)]
struct Rule {
    who: Who,
    patterns: Vec<Pattern>,
    actions: Actions,
}

/// Checked, ready-to-use rules.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    groups: BTreeMap<String, BTreeSet<String>>,
    rules: Vec<Rule>,
}

impl Acl {
    /// Parse the TOML text of the access rules (the `[groups]` table and the
    /// `[[rules]]` array).
    pub fn from_toml(text: &str) -> Result<Acl, AclError> {
        let config: AclConfig = toml::from_str(text).map_err(|e| AclError::Toml(e.to_string()))?;
        Acl::from_config(&config)
    }

    /// Check a config: every pattern, action and group must be valid, and a
    /// rule may only name groups that exist (a misspelt group would otherwise
    /// grant nothing without a word, and later grant to whoever gets that name).
    pub fn from_config(config: &AclConfig) -> Result<Acl, AclError> {
        let mut groups = BTreeMap::new();
        for (group, members) in &config.groups {
            let err = |message: String| AclError::Group {
                group: group.clone(),
                message,
            };
            if !is_principal_name(group) {
                return Err(err("invalid group name".into()));
            }
            let mut set = BTreeSet::new();
            for member in members {
                if !is_principal_name(member) {
                    return Err(err(format!("invalid member name {member:?}")));
                }
                set.insert(member.clone());
            }
            groups.insert(group.clone(), set);
        }
        let mut rules = Vec::with_capacity(config.rules.len());
        for (index, rule) in config.rules.iter().enumerate() {
            let err = |message: String| AclError::Rule {
                rule: index + 1,
                message,
            };
            let who = parse_who(&rule.who).map_err(err)?;
            if let Who::Group(group) = &who {
                if !groups.contains_key(group) {
                    return Err(err(format!("group {group:?} is not defined in [groups]")));
                }
            }
            if rule.repositories.is_empty() {
                return Err(err("no repositories".into()));
            }
            let patterns = rule
                .repositories
                .iter()
                .map(|p| Pattern::parse(p).map_err(|why| err(format!("pattern {p:?}: {why}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let mut actions = Actions::NONE;
            for action in &rule.actions {
                actions = actions.union(match action.as_str() {
                    "pull" => Actions::PULL,
                    "push" => Actions::PUSH,
                    "delete" => Actions::DELETE,
                    "*" => Actions::REPOSITORY_ALL,
                    other => {
                        return Err(err(format!(
                            "unknown action {other:?} (use pull, push, delete or *)"
                        )))
                    }
                });
            }
            if actions.is_empty() {
                return Err(err("no actions".into()));
            }
            rules.push(Rule {
                who,
                patterns,
                actions,
            });
        }
        Ok(Acl { groups, rules })
    }

    fn applies(&self, rule_who: &Who, who: &Identity) -> bool {
        match (rule_who, who) {
            (Who::Anonymous, _) => true,
            (_, Identity::Anonymous) => false,
            (Who::Authenticated, Identity::User(_)) => true,
            (Who::User(name), Identity::User(user)) => name == user,
            (Who::Group(group), Identity::User(user)) => self
                .groups
                .get(group)
                .is_some_and(|members| members.contains(user)),
        }
    }

    /// Everything `who` may do on `repository` (the union of matching rules).
    /// Names that are not valid repository names get nothing, whatever the
    /// patterns say.
    pub fn allowed(&self, who: &Identity, repository: &str) -> Actions {
        if !is_valid_repository_name(repository) {
            return Actions::NONE;
        }
        self.rules
            .iter()
            .filter(|rule| self.applies(&rule.who, who))
            .filter(|rule| rule.patterns.iter().any(|p| p.matches(repository)))
            .fold(Actions::NONE, |acc, rule| acc.union(rule.actions))
    }

    /// May `who` list the catalog? Any logged-in user may (the listing is
    /// filtered with [`Acl::can_see_repository`]); anonymous callers only
    /// when some rule gives anonymous callers anything.
    pub fn can_list_catalog(&self, who: &Identity) -> bool {
        match who {
            Identity::User(_) => true,
            Identity::Anonymous => self.rules.iter().any(|r| r.who == Who::Anonymous),
        }
    }

    /// Whether a repository appears in `who`'s catalog: when they may do
    /// anything at all with it.
    pub fn can_see_repository(&self, who: &Identity, repository: &str) -> bool {
        !self.allowed(who, repository).is_empty()
    }

    /// What a token for `who` gets when it asks for `requested`: for each
    /// resource, the requested actions that are allowed. As the token spec
    /// says, asking for more than allowed is not an error: the token simply
    /// carries less, and the registry then refuses what is missing. Resources
    /// with nothing allowed are left out; repeated resources are merged.
    pub fn grant(&self, who: &Identity, requested: &[Scope]) -> Vec<Scope> {
        crate::scope::merge(requested.iter().cloned())
            .into_iter()
            .filter_map(|mut scope| {
                if scope.is_catalog() {
                    let allowed =
                        self.can_list_catalog(who) && scope.actions.contains(Actions::ALL);
                    return allowed.then_some(scope);
                }
                if !scope.is_image_repository() {
                    return None;
                }
                scope.actions = scope.actions.intersect(self.allowed(who, &scope.name));
                (!scope.actions.is_empty()).then_some(scope)
            })
            .collect()
    }

    /// Users named in rules or groups, for checking against the htpasswd file.
    pub fn named_users(&self) -> BTreeSet<&str> {
        let mut users: BTreeSet<&str> = self
            .groups
            .values()
            .flat_map(|members| members.iter().map(String::as_str))
            .collect();
        for rule in &self.rules {
            if let Who::User(user) = &rule.who {
                users.insert(user);
            }
        }
        users
    }

    /// Likely mistakes that are still valid config, to log at startup: users
    /// that are not in the account list, and a lone `*` (which matches only
    /// one-segment names, where `**` was probably meant).
    pub fn warnings(&self, known_users: &[&str]) -> Vec<String> {
        let mut warnings = Vec::new();
        for user in self.named_users() {
            if !known_users.contains(&user) {
                warnings.push(format!(
                    "access rules name user {user:?}, who has no account"
                ));
            }
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.patterns.iter().any(|p| p.source == "*") {
                warnings.push(format!(
                    "rule {}: pattern \"*\" matches only names without '/'; use \"**\" for every repository",
                    index + 1
                ));
            }
        }
        warnings
    }
}

fn is_principal_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && !name.chars().any(|c| c.is_control() || c == ':')
}

fn parse_who(who: &str) -> Result<Who, String> {
    match who {
        "anonymous" => Ok(Who::Anonymous),
        "authenticated" => Ok(Who::Authenticated),
        _ => match who.split_once(':') {
            Some(("user", name)) if is_principal_name(name) => Ok(Who::User(name.into())),
            Some(("group", name)) if is_principal_name(name) => Ok(Who::Group(name.into())),
            _ => Err(format!(
                "who = {who:?}: use \"user:NAME\", \"group:NAME\", \"authenticated\" or \"anonymous\""
            )),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A segment, possibly with `*` wildcards.
    Glob(String),
    /// `**`: any number of whole segments.
    Any,
}

/// A compiled repository-name pattern (`*` within a segment, `**` for whole
/// segments); also used by the registry's immutable-tag rules.
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
}

impl Pattern {
    pub fn parse(source: &str) -> Result<Pattern, String> {
        if source.is_empty() || source.len() > 255 {
            return Err("empty or longer than 255 bytes".into());
        }
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b);
        if !source.bytes().all(allowed) {
            return Err("only lowercase letters, digits, . _ - / and * are allowed".into());
        }
        let mut segments = Vec::new();
        for segment in source.split('/') {
            if segment.is_empty() {
                return Err("empty segment (leading, trailing or doubled '/')".into());
            }
            if segment == "**" {
                if segments.last() == Some(&Segment::Any) {
                    return Err("'**/**' is the same as '**'".into());
                }
                segments.push(Segment::Any);
            } else if segment.contains("**") {
                return Err("'**' must be a whole segment, as in team/** or **/cache".into());
            } else {
                segments.push(Segment::Glob(segment.into()));
            }
        }
        Ok(Pattern {
            source: source.into(),
            segments,
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('/').collect();
        let (p, n) = (self.segments.len(), parts.len());
        // done[i][j]: do pattern segments i.. match name segments j..?
        // Dynamic programming keeps `**` linear-ish whatever the pattern.
        let mut done = vec![vec![false; n + 1]; p + 1];
        done[p][n] = true;
        for i in (0..p).rev() {
            for j in (0..=n).rev() {
                done[i][j] = match &self.segments[i] {
                    // Trailing `**` needs at least one segment: `a/**` is what
                    // is inside `a`, not `a` itself.
                    Segment::Any if i == p - 1 => j < n,
                    Segment::Any => done[i + 1][j] || (j < n && done[i][j + 1]),
                    Segment::Glob(glob) => {
                        j < n && glob_match(glob, parts[j]) && done[i + 1][j + 1]
                    }
                };
            }
        }
        done[0][0]
    }
}

/// `*` matches any run of characters (the one matcher every glob in Berth uses).
pub use berth_oci::glob::glob_match;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{parse_scopes, to_scope_string};

    const CONFIG: &str = r#"
        [groups]
        team-a = ["alice", "bob"]
        ops = ["olga"]

        [[rules]]
        who = "group:team-a"
        repositories = ["team-a/**"]
        actions = ["pull", "push"]

        [[rules]]
        who = "authenticated"
        repositories = ["**"]
        actions = ["pull"]

        [[rules]]
        who = "anonymous"
        repositories = ["public/*", "library/busybox"]
        actions = ["pull"]

        [[rules]]
        who = "group:ops"
        repositories = ["**"]
        actions = ["*"]

        [[rules]]
        who = "user:carol"
        repositories = ["team-a/docs", "carol-*"]
        actions = ["push", "delete"]
    "#;

    fn acl() -> Acl {
        Acl::from_toml(CONFIG).expect("config")
    }

    fn alice() -> Identity {
        Identity::user("alice")
    }

    #[test]
    fn union_of_matching_rules() {
        let acl = acl();
        let pp = Actions::PULL.union(Actions::PUSH);
        assert_eq!(acl.allowed(&alice(), "team-a/app"), pp);
        assert_eq!(acl.allowed(&alice(), "team-a/x/y"), pp);
        assert_eq!(
            acl.allowed(&alice(), "team-a"),
            Actions::PULL,
            "not inside team-a/"
        );
        assert_eq!(acl.allowed(&alice(), "team-b/app"), Actions::PULL);
        assert_eq!(
            acl.allowed(&Identity::user("olga"), "any/thing"),
            Actions::REPOSITORY_ALL
        );
        // carol: push+delete from her rule, pull from "authenticated".
        assert_eq!(
            acl.allowed(&Identity::user("carol"), "team-a/docs"),
            Actions::REPOSITORY_ALL
        );
        assert_eq!(
            acl.allowed(&Identity::user("carol"), "carol-tools"),
            Actions::REPOSITORY_ALL
        );
        assert_eq!(
            acl.allowed(&Identity::user("carol"), "carol-tools/x"),
            Actions::PULL
        );
        // Anonymous rules apply to logged-in users too.
        assert_eq!(acl.allowed(&Identity::Anonymous, "public/x"), Actions::PULL);
        assert_eq!(
            acl.allowed(&Identity::Anonymous, "public/x/y"),
            Actions::NONE
        );
        assert_eq!(
            acl.allowed(&Identity::Anonymous, "library/busybox"),
            Actions::PULL
        );
        assert_eq!(
            acl.allowed(&Identity::Anonymous, "team-a/app"),
            Actions::NONE
        );
        // A user that is in no group and no rule gets the authenticated rules.
        assert_eq!(
            acl.allowed(&Identity::user("mallory"), "team-a/app"),
            Actions::PULL
        );
    }

    #[test]
    fn rule_order_does_not_matter() {
        let mut config: AclConfig = toml::from_str(CONFIG).expect("toml");
        let forward = Acl::from_config(&config).expect("acl");
        config.rules.reverse();
        let backward = Acl::from_config(&config).expect("acl");
        for who in [
            alice(),
            Identity::Anonymous,
            Identity::user("carol"),
            Identity::user("olga"),
        ] {
            for repo in ["team-a/app", "public/x", "carol-x", "library/busybox", "z"] {
                assert_eq!(
                    forward.allowed(&who, repo),
                    backward.allowed(&who, repo),
                    "{who:?} {repo}"
                );
            }
        }
    }

    #[test]
    fn grants_the_intersection() {
        let acl = acl();
        let requested = parse_scopes(&[
            "repository:team-a/app:pull,push",
            "repository:team-b/app:pull,push,delete",
            "repository:secret/app:push",
            "repository:team-a/app:delete",
            "registry:catalog:*",
            "repository(plugin):team-a/app:pull",
            "repository:localhost:5000/team-a/app:pull",
            "unknown:thing:pull",
        ])
        .expect("scopes");
        let granted = acl.grant(&alice(), &requested);
        assert_eq!(
            to_scope_string(&granted),
            "repository:team-a/app:pull,push repository:team-b/app:pull registry:catalog:*"
        );
        // Anonymous: only the public pull; no catalog unless some anonymous rule exists (it does).
        let granted = acl.grant(&Identity::Anonymous, &requested);
        assert_eq!(to_scope_string(&granted), "registry:catalog:*");
        let granted = acl.grant(
            &Identity::Anonymous,
            &parse_scopes(&["repository:public/x:pull,push"]).expect("scope"),
        );
        assert_eq!(to_scope_string(&granted), "repository:public/x:pull");
        assert!(acl.grant(&alice(), &[]).is_empty());
    }

    #[test]
    fn catalog_visibility() {
        let acl = acl();
        assert!(acl.can_see_repository(&alice(), "team-b/app"));
        assert!(acl.can_see_repository(&Identity::Anonymous, "public/a"));
        assert!(!acl.can_see_repository(&Identity::Anonymous, "team-a/app"));
        assert!(acl.can_list_catalog(&Identity::user("nobody")));
        let private = Acl::from_toml(
            "[[rules]]\nwho = \"authenticated\"\nrepositories = [\"**\"]\nactions = [\"pull\"]",
        )
        .expect("acl");
        assert!(!private.can_list_catalog(&Identity::Anonymous));
        assert!(private
            .grant(&Identity::Anonymous, &[Scope::catalog()])
            .is_empty());
        assert!(!private.can_see_repository(&Identity::Anonymous, "a"));
        // The catalog scope must ask for `*`.
        let partial = Scope::parse("registry:catalog:pull").expect("scope");
        assert!(private.grant(&alice(), &[partial]).is_empty());
    }

    #[test]
    fn empty_rules_allow_nothing() {
        let acl = Acl::from_toml("").expect("empty");
        assert!(acl.allowed(&alice(), "a").is_empty());
        assert!(acl
            .grant(&alice(), &[Scope::repository("a", Actions::PULL)])
            .is_empty());
    }

    #[test]
    fn invalid_names_never_match() {
        let acl = Acl::from_toml(
            "[[rules]]\nwho = \"anonymous\"\nrepositories = [\"**\"]\nactions = [\"*\"]",
        )
        .expect("acl");
        for bad in [
            "../etc",
            "a/../b",
            "/a",
            "a//b",
            "",
            "A",
            "a\n",
            "localhost:5000/a",
        ] {
            assert!(acl.allowed(&alice(), bad).is_empty(), "{bad:?}");
        }
        assert_eq!(acl.allowed(&alice(), "a/b/c"), Actions::REPOSITORY_ALL);
    }

    #[test]
    fn patterns() {
        let m = |pattern: &str, name: &str| Pattern::parse(pattern).expect(pattern).matches(name);
        assert!(m("*", "busybox"));
        assert!(!m("*", "library/busybox"));
        assert!(m("**", "library/busybox"));
        assert!(m("**", "a"));
        assert!(m("team-a/*", "team-a/app"));
        assert!(!m("team-a/*", "team-a/app/x"));
        assert!(!m("team-a/*", "team-a"));
        assert!(m("team-a/**", "team-a/app/x"));
        assert!(!m("team-a/**", "team-a"));
        assert!(!m("team-a/**", "team-ab/x"));
        assert!(m("**/cache", "cache"));
        assert!(m("**/cache", "a/b/cache"));
        assert!(!m("**/cache", "a/cache/x"));
        assert!(m("a/**/b", "a/b"));
        assert!(m("a/**/b", "a/x/y/b"));
        assert!(!m("a/**/b", "a/x/c"));
        assert!(m("team-*", "team-a"));
        assert!(!m("team-*", "team-a/x"));
        assert!(m("*-cache/*", "go-cache/x"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(m("a*b*c", "abc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("exact/name", "exact/name"));
        assert!(!m("exact/name", "exact/name2"));
        assert!(m("*/*/*", "a/b/c"));
        assert!(!m("*/*/*", "a/b"));
        // Hostile: many stars against a long name stays fast (quadratic at worst).
        let name = "a".repeat(255);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*b", &name));
        let deep = vec!["a"; 127].join("/");
        assert!(!m("**/x/**/y/**/z", &deep));
    }

    #[test]
    fn rejects_bad_config() {
        let rule = |who: &str, repos: &str, actions: &str| {
            format!("[groups]\ng = [\"u\"]\n[[rules]]\nwho = {who}\nrepositories = {repos}\nactions = {actions}\n")
        };
        for (text, what) in [
            (rule("\"root\"", "[\"a\"]", "[\"pull\"]"), "who"),
            (rule("\"user:\"", "[\"a\"]", "[\"pull\"]"), "who"),
            (rule("\"group:nope\"", "[\"a\"]", "[\"pull\"]"), "not defined"),
            (rule("\"user:u\"", "[]", "[\"pull\"]"), "no repositories"),
            (rule("\"user:u\"", "[\"a\"]", "[]"), "no actions"),
            (rule("\"user:u\"", "[\"a\"]", "[\"write\"]"), "unknown action"),
            (rule("\"user:u\"", "[\"A\"]", "[\"pull\"]"), "pattern"),
            (rule("\"user:u\"", "[\"a//b\"]", "[\"pull\"]"), "empty segment"),
            (rule("\"user:u\"", "[\"/a\"]", "[\"pull\"]"), "empty segment"),
            (rule("\"user:u\"", "[\"a**\"]", "[\"pull\"]"), "whole segment"),
            (rule("\"user:u\"", "[\"***\"]", "[\"pull\"]"), "whole segment"),
            (rule("\"user:u\"", "[\"**/**\"]", "[\"pull\"]"), "same as"),
            (rule("\"user:u\"", "[\"\"]", "[\"pull\"]"), "empty"),
            (rule("\"user:u\"", "[\"a?b\"]", "[\"pull\"]"), "only lowercase"),
            ("[[rules]]\nwho = \"anonymous\"\n".to_string(), "missing field"),
            ("[[rules]]\nwho = \"anonymous\"\nrepositories=[\"a\"]\nactions=[\"pull\"]\ntypo = 1\n".to_string(), "unknown field"),
            ("[groups]\n\"g:x\" = [\"u\"]\n".to_string(), "invalid group"),
            ("[groups]\ng = [\"u:x\"]\n".to_string(), "invalid member"),
        ] {
            let err = Acl::from_toml(&text).expect_err(&text);
            assert!(err.to_string().contains(what), "{text}\n→ {err}");
        }
        let err = Acl::from_toml(&rule("\"user:u\"", "[\"a\"]", "[\"write\"]")).expect_err("x");
        assert!(err.to_string().starts_with("rule 1:"), "{err}");
    }

    #[test]
    fn warnings_for_likely_mistakes() {
        let acl = Acl::from_toml(
            "[groups]\ng = [\"bob\"]\n[[rules]]\nwho = \"user:alice\"\nrepositories = [\"*\"]\nactions = [\"pull\"]\n",
        )
        .expect("acl");
        let warnings = acl.warnings(&["alice"]);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("\"bob\""));
        assert!(warnings[1].contains("\"**\""));
        assert!(acl.warnings(&["alice", "bob"]).len() == 1);
        assert_eq!(
            acl.named_users().into_iter().collect::<Vec<_>>(),
            vec!["alice", "bob"]
        );
    }

    #[test]
    fn identity_subject() {
        assert_eq!(Identity::Anonymous.subject(), "");
        assert_eq!(alice().subject(), "alice");
    }
}
