//! berth-auth's parsers of untrusted input: the `Authorization` header,
//! token scopes, the token endpoint's query and form, tokens themselves
//! (`TokenVerifier::verify`), and the access rules of the config.
//!
//! The first byte picks what the rest is fed to:
//! 0 `parse_authorization`, 1 `Scope::parse`/`parse_scopes`,
//! 2 `TokenRequest::parse_query`, 3 `TokenForm::parse`, 4 `verify` of the
//! rest as a token, 5 `verify` of a token whose claims are the rest, signed
//! with the trusted key (so the claim checks are reached), 6 `Acl::from_toml`,
//! 7 a one-rule ACL from `PATTERN\nNAME`, compared with a regex oracle.
//!
//! Properties: no panic; credentials, scopes and scope lists print back to
//! what was parsed; granted access never exceeds what was asked or what the
//! rules allow; logging in never takes rights away; an accepted token always
//! has our issuer and audience and has not expired; repository patterns
//! match exactly what an independent regex translation matches.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use berth_auth::acl::{Acl, Identity};
use berth_auth::scope::{
    self, is_valid_repository_name, merge, missing, parse_scopes, to_scope_string, Actions, Scope,
    MAX_SCOPES,
};
use berth_auth::token::{
    parse_authorization, Credentials, SigningKey, TokenForm, TokenIssuer, TokenRequest,
    TokenVerifier, DEFAULT_LEEWAY, MAX_ACCESS_ENTRIES,
};
use p256::ecdsa::signature::Signer;

/// The auth crate's test key (generated for tests, protects nothing): fixed,
/// so a crash found with it reproduces.
const KEY_PEM: &str = include_str!("../../auth/testdata/ec-sec1-private.pem");
const ISSUER: &str = "berth-token";
const AUDIENCE: &str = "registry.example.com";
/// A fixed "now" (2023-11-14), so whether a corpus token has expired never changes.
const NOW: u64 = 1_700_000_000;

struct Keys {
    verifier: TokenVerifier,
    signer: p256::ecdsa::SigningKey,
    kid: String,
}

static KEYS: LazyLock<Keys> = LazyLock::new(|| {
    let key = SigningKey::from_pem(KEY_PEM).expect("test key");
    let kid = key.kid().to_string();
    let verifier = TokenIssuer::new(key, ISSUER).verifier(AUDIENCE);
    let secret = p256::SecretKey::from_sec1_pem(KEY_PEM).expect("test key");
    Keys {
        verifier,
        signer: p256::ecdsa::SigningKey::from(&secret),
        kid,
    }
});

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn check_authorization(value: &str) {
    let Ok(credentials) = parse_authorization(value) else {
        return;
    };
    let printed = match &credentials {
        Credentials::Basic { user, password } => {
            assert!(!user.is_empty() && !user.contains(':'));
            assert!(!user.chars().any(char::is_control));
            let pair = format!("{user}:{}", password.expose());
            format!("Basic {}", STANDARD.encode(pair))
        }
        Credentials::Bearer(token) => {
            let token = token.expose();
            assert!(!token.is_empty() && !token.contains(char::is_whitespace));
            format!("Bearer {token}")
        }
    };
    assert_eq!(parse_authorization(&printed), Ok(credentials));
}

fn check_scope(scope: &Scope) {
    let printed = scope.to_string();
    assert_eq!(Scope::parse(&printed).as_ref(), Ok(scope), "{printed:?}");
    assert!(!scope.name.chars().any(char::is_control));
    if scope.is_image_repository() && is_valid_repository_name(&scope.name) {
        assert!(!scope
            .name
            .split('/')
            .any(|c| c == ".." || c == "." || c.is_empty()));
    }
}

fn check_scopes(input: &str) {
    if let Ok(scope) = Scope::parse(input) {
        check_scope(&scope);
    }
    let Ok(scopes) = parse_scopes(&[input]) else {
        return;
    };
    assert!(scopes.len() <= MAX_SCOPES);
    scopes.iter().for_each(check_scope);
    let printed = to_scope_string(&scopes);
    assert_eq!(
        parse_scopes(&[&printed]).as_ref(),
        Ok(&scopes),
        "{printed:?}"
    );
    let merged = merge(scopes.clone());
    for (i, a) in merged.iter().enumerate() {
        assert!(!merged[i + 1..].iter().any(|b| a.same_resource(b)));
    }
    assert!(missing(&scopes, &scopes).is_empty());
    assert!(missing(&scopes, &merged).is_empty());
    assert!(missing(&merged, &scopes).is_empty());
}

fn check_name(value: &Option<String>) {
    if let Some(v) = value {
        assert!(v.len() <= 256 && !v.chars().any(char::is_control), "{v:?}");
    }
}

fn check_token_request(query: &str) {
    if let Ok(request) = TokenRequest::parse_query(query) {
        assert!(request.scopes.len() <= MAX_SCOPES);
        request.scopes.iter().for_each(check_scope);
        check_name(&request.service);
        check_name(&request.account);
        check_name(&request.client_id);
    }
}

fn check_token_form(body: &str) {
    if let Ok(form) = TokenForm::parse(body) {
        assert!(form.scopes.len() <= MAX_SCOPES);
        form.scopes.iter().for_each(check_scope);
        check_name(&form.service);
        check_name(&form.client_id);
        check_name(&form.username);
        match form.grant_type.as_str() {
            "password" => assert!(form.username.is_some() && form.password.is_some()),
            "refresh_token" => assert!(form.refresh_token.is_some()),
            other => panic!("accepted grant_type {other:?}"),
        }
    }
}

/// A token that verified: its claims must say what the verifier requires.
fn check_verified(token: &str) {
    let Ok(verified) = KEYS.verifier.verify(token, now()) else {
        return;
    };
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    // Only the claims checked here: other claims are skipped unread, as the
    // verifier skips them (serde_json does not even check their UTF-8).
    #[derive(serde::Deserialize)]
    struct Checked {
        iss: serde_json::Value,
        aud: serde_json::Value,
        exp: serde_json::Value,
        #[serde(default)]
        nbf: serde_json::Value,
        #[serde(default)]
        iat: serde_json::Value,
    }
    let claims: Checked =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url payload"))
            .expect("JSON claims");
    assert_eq!(claims.iss, ISSUER, "accepted issuer {}", claims.iss);
    let aud = &claims.aud;
    assert!(
        *aud == AUDIENCE
            || aud
                .as_array()
                .is_some_and(|a| a.iter().any(|x| *x == AUDIENCE)),
        "accepted audience {aud}"
    );
    let exp = claims.exp.as_u64().expect("exp is a number");
    assert_eq!(exp, verified.expires_at);
    assert!(
        NOW <= exp.saturating_add(DEFAULT_LEEWAY.as_secs()),
        "expired token accepted"
    );
    for (key, value) in [("nbf", &claims.nbf), ("iat", &claims.iat)] {
        if let Some(t) = value.as_u64() {
            assert!(
                t <= NOW + DEFAULT_LEEWAY.as_secs(),
                "{key} in the future accepted"
            );
        }
    }
    assert!(verified.access.len() <= MAX_ACCESS_ENTRIES);
    verified.access.iter().for_each(check_scope);
    let _ = verified.identity();
}

/// Sign `claims` (any bytes) as an ES256 JWT with the trusted key.
fn signed(claims: &[u8]) -> String {
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": KEYS.kid});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let signature: p256::ecdsa::Signature = KEYS.signer.sign(signing_input.as_bytes());
    // Low-S, as our issuer signs: the verifier refuses high-S from our key,
    // and half the inputs would stop before the claim checks.
    let signature = signature.normalize_s().unwrap_or(signature);
    format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature.to_bytes())
    )
}

/// Names to ask an ACL about: the name-like words of its own text, plus a few.
fn words(text: &str) -> Vec<&str> {
    let mut names: Vec<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || "._-/".contains(c)))
        .filter(|w| !w.is_empty())
        .take(12)
        .collect();
    names.extend(["alice", "a/b", "team-a/app"]);
    names
}

fn check_acl(text: &str) {
    let Ok(acl) = Acl::from_toml(text) else {
        return;
    };
    let names = words(text);
    let mut who = vec![Identity::Anonymous, Identity::user("alice")];
    who.extend(names.iter().take(3).map(|n| Identity::user(n)));
    for name in &names {
        let anonymous = acl.allowed(&Identity::Anonymous, name);
        if !is_valid_repository_name(name) {
            assert!(anonymous.is_empty(), "rights on invalid name {name:?}");
        }
        let requested = [
            Scope::repository(name, Actions::REPOSITORY_ALL),
            Scope::repository(name, Actions::PULL),
            Scope::catalog(),
        ];
        for identity in &who {
            let allowed = acl.allowed(identity, name);
            // Logging in never takes rights away.
            assert!(allowed.contains(anonymous), "{identity:?} on {name:?}");
            assert_eq!(acl.can_see_repository(identity, name), !allowed.is_empty());
            let granted = acl.grant(identity, &requested);
            // Never more than asked, never more than allowed.
            assert!(missing(&granted, &merge(requested.clone())).is_empty());
            for g in granted.iter().filter(|g| !g.is_catalog()) {
                assert!(allowed.contains(g.actions), "{identity:?} got {g}");
            }
        }
    }
    let _ = acl.warnings(&["alice"]);
}

/// The ACL's pattern language as a regex: `*` is `[^/]*`, a `**` segment
/// is any number of whole segments (at least one when it is last).
fn pattern_regex(pattern: &str) -> String {
    let segments: Vec<&str> = pattern.split('/').collect();
    let mut out = String::from("^");
    for (i, segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if *segment == "**" {
            out.push_str(if last {
                "[^/]+(?:/[^/]+)*"
            } else {
                "(?:[^/]+/)*"
            });
            continue;
        }
        for c in segment.chars() {
            if c == '*' {
                out.push_str("[^/]*");
            } else {
                out.push_str(&regex::escape(&c.to_string()));
            }
        }
        if !last {
            out.push('/');
        }
    }
    out.push('$');
    out
}

fn check_pattern(input: &str) {
    let Some((pattern, name)) = input.split_once('\n') else {
        return;
    };
    if pattern.len() > 64 || name.len() > 128 {
        return;
    }
    let toml = format!(
        "[[rules]]\nwho = \"anonymous\"\nrepositories = [{}]\nactions = [\"pull\"]\n",
        serde_json::to_string(pattern).expect("string")
    );
    let Ok(acl) = Acl::from_toml(&toml) else {
        return;
    };
    let expected = is_valid_repository_name(name)
        && regex::Regex::new(&pattern_regex(pattern))
            .expect("pattern regex")
            .is_match(name);
    let got = acl.allowed(&Identity::Anonymous, name) == Actions::PULL;
    assert_eq!(got, expected, "pattern {pattern:?} on {name:?}");
}

/// One fuzz input (the body of `fuzz_targets/auth.rs`; also replayed by
/// `tests/fuzz_regressions.rs`).
pub fn run(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    if choice % 8 == 5 {
        check_verified(&signed(rest));
        return;
    }
    let Ok(input) = std::str::from_utf8(rest) else {
        return;
    };
    match choice % 8 {
        0 => check_authorization(input),
        1 => check_scopes(input),
        2 => check_token_request(input),
        3 => check_token_form(input),
        4 => check_verified(input),
        6 => check_acl(input),
        _ => check_pattern(input),
    }
    let _ = scope::is_valid_repository_name(input);
}
