//! Berth's authentication and authorisation, as pure logic the registry calls
//! on every request: no HTTP types, no async, no I/O except reading and
//! writing the token signing key (and the password-check threads of [`pool`]).
//!
//! - [`htpasswd`]: accounts from an `htpasswd -B` file (bcrypt only).
//! - [`scope`]: Docker token scopes (`repository:NAME:pull,push`) and the
//!   scopes each API request needs.
//! - [`acl`]: who may do what to which repositories, from the config.
//! - [`token`]: the built-in token service (signed JWTs), token verification
//!   (ours or an external issuer's), the token endpoint's query and answer,
//!   `WWW-Authenticate` challenges, `Authorization` header parsing.
//! - [`ratelimit`]: a per-client token bucket with bounded memory.
//! - [`throttle`]: exponential backoff after failed logins, per account and
//!   per client address, with bounded memory.
//! - [`pool`]: a few threads of its own with a bounded queue, where bcrypt
//!   runs (never on the async runtime's shared blocking pool).

pub mod acl;
pub mod htpasswd;
pub mod pool;
pub mod ratelimit;
pub mod scope;
pub mod throttle;
pub mod token;

use acl::Identity;
use scope::Scope;

/// What the registry answers a request, once it knows who is asking, what
/// the request needs ([`scope::required_scopes`]) and what the caller holds
/// (a token's access, or [`acl::Acl::grant`] for Basic logins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    /// No credentials: 401 `UNAUTHORIZED` with a challenge for `missing`;
    /// logging in may help.
    Unauthorized {
        missing: Vec<Scope>,
    },
    /// A valid token without these scopes, which a new token could carry:
    /// 401 with `error="insufficient_scope"` so the client fetches one (a
    /// token for repository A used on repository B ends up here).
    InsufficientScope {
        missing: Vec<Scope>,
    },
    /// The caller is known and the rules will never allow this: 403 `DENIED`,
    /// so clients stop instead of fetching tokens in a loop.
    Denied {
        missing: Vec<Scope>,
    },
}

/// Decide a request. `grantable` is what the access rules would grant this
/// identity for `required` (`Some(acl.grant(..))` with the built-in token
/// service or Basic auth); `None` when an external issuer decides, in which
/// case a missing scope is always worth a new token.
///
/// `/v2/` needs no scope, so this allows it for anyone; with token auth on,
/// the registry must still answer 401 to a request that carries no
/// credentials at all (that is how `docker login` finds the realm), while a
/// request with an anonymous token (`sub` empty) gets 200.
pub fn decide(
    identity: &Identity,
    required: &[Scope],
    granted: &[Scope],
    grantable: Option<&[Scope]>,
) -> Outcome {
    let missing = scope::missing(required, granted);
    if missing.is_empty() {
        return Outcome::Allowed;
    }
    if *identity == Identity::Anonymous {
        return Outcome::Unauthorized { missing };
    }
    match grantable {
        Some(grantable) if !scope::missing(&missing, grantable).is_empty() => {
            Outcome::Denied { missing }
        }
        _ => Outcome::InsufficientScope { missing },
    }
}

/// Compare two secrets in time that depends only on their lengths, so an
/// attacker cannot learn a secret byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Lowercase hex (for random ids; no need for a crate).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret!"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn decides_requests() {
        let acl = acl::Acl::from_toml(
            "[[rules]]\nwho = \"authenticated\"\nrepositories = [\"**\"]\nactions = [\"pull\"]\n\
             [[rules]]\nwho = \"user:alice\"\nrepositories = [\"a/**\"]\nactions = [\"push\"]",
        )
        .expect("acl");
        let alice = Identity::user("alice");
        let push = scope::required_scopes(
            "POST",
            &scope::Endpoint::UploadStart {
                name: "a/app",
                mount_from: None,
            },
        )
        .expect("endpoint");
        let pull_only = scope::parse_scopes(&["repository:a/app:pull"]).expect("scope");
        let full = acl.grant(&alice, &push);
        assert_eq!(decide(&alice, &push, &full, Some(&full)), Outcome::Allowed);
        // Alice holds a pull token but may push: fetch a better token.
        assert_eq!(
            decide(&alice, &push, &pull_only, Some(&full)),
            Outcome::InsufficientScope {
                missing: push.clone()
            }
        );
        // Bob may never push there: 403, no token loop.
        let bob = Identity::user("bob");
        let bobs = acl.grant(&bob, &push);
        assert!(matches!(
            decide(&bob, &push, &bobs, Some(&bobs)),
            Outcome::Denied { .. }
        ));
        // External issuer: we cannot know, so ask for a token.
        assert!(matches!(
            decide(&bob, &push, &bobs, None),
            Outcome::InsufficientScope { .. }
        ));
        assert!(matches!(
            decide(&Identity::Anonymous, &push, &[], Some(&[])),
            Outcome::Unauthorized { .. }
        ));
        // /v2/ needs no scope: any identity (an anonymous token too) passes.
        assert_eq!(
            decide(&Identity::Anonymous, &[], &[], None),
            Outcome::Allowed
        );
    }

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(hex(&[]), "");
    }
}
