//! The registry auth dance: parse `WWW-Authenticate` challenges, fetch Bearer
//! tokens from the realm (Docker's token spec, and the OAuth2 refresh-token
//! form for identity tokens), and cache them per scope until they expire.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use berth_oci::{Actions, Scope};
use serde::Deserialize;

/// What a registry asked for in `WWW-Authenticate`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parse a `WWW-Authenticate` value. Unknown schemes give `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        let params = parse_params(rest);
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("basic") {
            Some(Challenge::Basic)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Challenge::Bearer {
                realm: get("realm")?,
                service: get("service"),
                scope: get("scope"),
            })
        } else {
            None
        }
    }
}

/// `k="v", k2=v2`: values may be quoted and hold commas (`scope="repository:a:pull,push"`).
fn parse_params(input: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if *c == ',' {
                    break;
                }
                value.push(*c);
                chars.next();
            }
            value = value.trim().to_string();
        }
        out.push((key, value));
    }
    out
}

/// A token endpoint's answer (`token` per Docker's spec, `access_token` per OAuth2).
#[derive(Deserialize)]
pub struct TokenResponse {
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenResponse {
    pub fn into_token(self) -> Option<(String, Duration)> {
        let token = self.token.or(self.access_token).filter(|t| !t.is_empty())?;
        // The spec's default lifetime is 60 s when the server does not say.
        let lifetime = Duration::from_secs(self.expires_in.unwrap_or(60).max(1));
        Some((token, lifetime))
    }
}

/// Tokens by scope set, dropped a little before they expire.
#[derive(Default)]
pub struct TokenCache {
    tokens: HashMap<String, (String, Instant)>,
}

impl TokenCache {
    /// The cache key for a set of scopes (order does not matter).
    pub fn key(scopes: &[String]) -> String {
        let mut sorted: Vec<&str> = scopes.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        sorted.join(" ")
    }

    pub fn get(&self, key: &str) -> Option<String> {
        self.tokens
            .get(key)
            .filter(|(_, expires)| Instant::now() < *expires)
            .map(|(t, _)| t.clone())
    }

    pub fn put(&mut self, key: String, token: String, lifetime: Duration) {
        // Renew 10 s early (or halfway, for very short tokens) so a token does
        // not expire between being read here and reaching the registry.
        let margin = Duration::from_secs(10).min(lifetime / 2);
        self.tokens
            .insert(key, (token, Instant::now() + lifetime - margin));
    }

    pub fn clear(&mut self) {
        self.tokens.clear();
    }
}

/// Scope strings of Docker's token spec, printed by the one scope grammar
/// (`berth_oci::scope`) the registry's token service parses them with.
pub fn pull_scope(repository: &str) -> String {
    Scope::repository(repository, Actions::PULL).to_string()
}

pub fn push_scope(repository: &str) -> String {
    Scope::repository(repository, Actions::PULL.union(Actions::PUSH)).to_string()
}

pub fn delete_scope(repository: &str) -> String {
    Scope::repository(repository, Actions::DELETE).to_string()
}

/// `registry:catalog:*`, to list the registry's repositories.
pub fn catalog_scope() -> String {
    Scope::catalog().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/ubuntu:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=http://127.0.0.1:1/token, service=x"#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/token".into(),
                service: Some("x".into()),
                scope: None,
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            Challenge::parse("Bearer service=x"),
            None,
            "a realm is required"
        );
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(""), None);
        // Hostile input: unterminated quotes and escapes never panic.
        let _ = Challenge::parse(r#"Bearer realm="abc\"#);
        let _ = Challenge::parse("Bearer ===,,,\"");
    }

    #[test]
    fn token_cache_expires() {
        let mut cache = TokenCache::default();
        assert_eq!(pull_scope("a/b"), "repository:a/b:pull");
        assert_eq!(push_scope("a/b"), "repository:a/b:pull,push");
        assert_eq!(delete_scope("a/b"), "repository:a/b:delete");
        assert_eq!(catalog_scope(), "registry:catalog:*");
        let key = TokenCache::key(&[push_scope("a"), pull_scope("b")]);
        assert_eq!(key, TokenCache::key(&[pull_scope("b"), push_scope("a")]));
        cache.put(key.clone(), "t".into(), Duration::from_secs(300));
        assert_eq!(cache.get(&key).as_deref(), Some("t"));
        cache.put(key.clone(), "short".into(), Duration::from_millis(2));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get(&key), None);
        let r: TokenResponse = serde_json::from_str(r#"{"access_token":"x"}"#).unwrap();
        assert_eq!(r.into_token(), Some(("x".into(), Duration::from_secs(60))));
        let r: TokenResponse = serde_json::from_str(r#"{"token":""}"#).unwrap();
        assert_eq!(r.into_token(), None);
    }
}
