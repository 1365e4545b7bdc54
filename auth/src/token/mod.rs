//! The built-in token service and everything around Bearer/Basic auth:
//!
//! - [`SigningKey`] / [`TokenIssuer`]: signed JWTs as distribution's "Token
//!   Authentication Implementation" defines them (`iss`, `sub`, `aud`, `exp`,
//!   `nbf`, `iat`, `jti`, `access: [{type, name, actions}]`), ES256 only.
//! - [`TokenVerifier`]: checks a token (signature, algorithm, `exp`/`nbf` with
//!   a small leeway, `aud`, `iss`) against our key or an external issuer's
//!   public keys (PEM keys or certificates, or a JWKS), and returns its access.
//! - [`TokenRequest`]: the token endpoint's query (`service`, repeated
//!   `scope`, `account`, `offline_token`, `client_id`), and [`TokenForm`] for
//!   the OAuth2 POST form; [`IssuedToken::response_json`] for the answer.
//! - [`bearer_challenge`] / [`basic_challenge`]: `WWW-Authenticate` values.
//! - [`parse_authorization`]: the `Authorization` header (Basic or Bearer).
//!
//! Why ES256 for what we sign: 64-byte signatures and fast, and the pure-Rust
//! RSA crate has a known timing side channel on private-key operations
//! (RUSTSEC-2023-0071) that does not affect verification — so we verify RS256
//! from external issuers but never sign with RSA.
//!
//! Time is always passed in (`now`), so every check is testable and pure.
//!
//! Layout: [`keys`] (our signing key and its id), [`issue`] (signing
//! tokens), [`verify`] (checking ours and external issuers' tokens),
//! [`form`] (the token endpoint's query and POST form), [`challenge`]
//! (`WWW-Authenticate` values and the `Authorization` header). The claims
//! both signing and checking use stay here.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::scope::{Scope, ScopeError, MAX_SCOPES};

pub mod challenge;
pub mod form;
pub mod issue;
pub mod keys;
pub mod verify;

// The flat `berth_auth::token::*` paths the registry, the CLI and the fuzz
// targets use.
pub use challenge::{
    basic_challenge, bearer_challenge, parse_authorization, AuthHeaderError, Credentials,
};
pub use form::{RequestError, TokenForm, TokenRequest};
pub use issue::{rfc3339, IssuedToken, TokenIssuer};
pub use keys::SigningKey;
pub use verify::{TokenVerifier, VerifiedToken};

/// Tokens and `Authorization` headers longer than this are refused before any
/// parsing. Ours are well under 2 KiB; external issuers' rarely pass 4 KiB.
pub const MAX_TOKEN_LEN: usize = 8192;
/// Default token lifetime: short, so a leaked token is soon useless; clients
/// ask for a new one on the next 401.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Clock skew tolerated on `exp`/`nbf`/`iat` between issuer and registry.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Longest query string or form body the token endpoint parses.
pub const MAX_QUERY_LEN: usize = 16 * 1024;
/// At most this many `access` entries in a token we verify (external issuers
/// may list more than one request's worth of scopes).
pub const MAX_ACCESS_ENTRIES: usize = 4 * MAX_SCOPES;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token too long")]
    TooLong,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted")]
    Algorithm(String),
    #[error("token signed by an unknown key")]
    UnknownKey,
    #[error("token signature does not verify")]
    BadSignature,
    /// An ES256 signature of ours whose S is in the upper half: we only
    /// issue low-S signatures, so this is someone's rewrite of one.
    #[error("token signature is not in canonical (low-S) form")]
    HighS,
    /// RFC 7515 §4.1.11: a receiver must refuse a token whose `crit` names
    /// an extension it does not understand, and we understand none.
    #[error("token header names critical extensions (crit) this registry does not understand")]
    Critical,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet")]
    NotYetValid,
    #[error("token issued for another service")]
    WrongAudience,
    #[error("token issued by an untrusted issuer")]
    WrongIssuer,
    #[error("token access claim is invalid: {0}")]
    BadAccess(ScopeError),
    #[error("signing key: {0}")]
    Key(String),
}

/// Seconds since the Unix epoch (0 for times before it).
fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A value that must never reach logs: `Debug` and `Display` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// ---------------------------------------------------------------------------
// Claims

/// One `access` entry of a token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccessEntry {
    #[serde(rename = "type")]
    resource_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class: Option<String>,
    name: String,
    #[serde(default)]
    actions: Vec<String>,
}

impl From<&Scope> for AccessEntry {
    fn from(scope: &Scope) -> AccessEntry {
        AccessEntry {
            resource_type: scope.resource_type.clone(),
            class: scope.class.clone(),
            name: scope.name.clone(),
            actions: scope
                .actions
                .names()
                .into_iter()
                .map(String::from)
                .collect(),
        }
    }
}

/// `aud` may be one string or a list (RFC 7519 §4.1.3).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(a) => a == audience,
            Audience::Many(list) => list.iter().any(|a| a == audience),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Claims {
    iss: String,
    #[serde(default)]
    sub: String,
    aud: Audience,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    #[serde(default)]
    access: Vec<AccessEntry>,
}

/// Fixtures the tests of every submodule share.
#[cfg(test)]
mod test_support {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use base64::Engine;
    use jsonwebtoken::{Algorithm, Header};

    use super::issue::low_s;
    use super::{Scope, SigningKey, TokenIssuer};
    use crate::scope::parse_scopes;

    pub(super) const RSA_PRIVATE: &str = include_str!("../../testdata/rsa-private.pem");
    pub(super) const RSA_PUBLIC: &str = include_str!("../../testdata/rsa-public.pem");
    pub(super) const EC_SEC1_PRIVATE: &str = include_str!("../../testdata/ec-sec1-private.pem");
    pub(super) const EC_CERT: &str = include_str!("../../testdata/ec-cert.pem");

    pub(super) const ISS: &str = "berth-token";
    pub(super) const AUD: &str = "registry.example.com";

    pub(super) fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    pub(super) fn issuer() -> TokenIssuer {
        let (key, _) = SigningKey::generate().expect("key");
        TokenIssuer::new(key, ISS)
    }

    pub(super) fn scopes(s: &[&str]) -> Vec<Scope> {
        parse_scopes(s).expect("scopes")
    }

    pub(super) fn b64url(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub(super) fn part(token: &str, index: usize) -> serde_json::Value {
        let part = token.split('.').nth(index).expect("part");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("b64");
        serde_json::from_slice(&bytes).expect("json")
    }

    /// Sign arbitrary claims with a key, for tokens our issuer would never make.
    pub(super) fn sign_raw(key: &SigningKey, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(key.kid().to_string());
        low_s(jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")).expect("low-S")
    }

    pub(super) fn claims_at(now: u64) -> serde_json::Value {
        serde_json::json!({
            "iss": ISS, "sub": "alice", "aud": AUD,
            "exp": now + 300, "nbf": now, "iat": now,
            "access": [{"type": "repository", "name": "a", "actions": ["pull"]}],
        })
    }
}
