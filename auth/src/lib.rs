//! Berth's authentication and authorisation, as pure logic the registry calls
//! on every request: no HTTP types, no async, no I/O except reading and
//! writing the token signing key.
//!
//! - [`htpasswd`]: accounts from an `htpasswd -B` file (bcrypt only).
//! - [`scope`]: Docker token scopes (`repository:NAME:pull,push`) and the
//!   scopes each API request needs.
//! - [`acl`]: who may do what to which repositories, from the config.
//! - [`token`]: the built-in token service (signed JWTs), token verification
//!   (ours or an external issuer's), the token endpoint's query and answer,
//!   `WWW-Authenticate` challenges, `Authorization` header parsing.
//! - [`ratelimit`]: a per-client token bucket with bounded memory.

pub mod acl;
pub mod htpasswd;
pub mod ratelimit;
pub mod scope;
pub mod token;

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
    fn hex_encodes() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
        assert_eq!(hex(&[]), "");
    }
}
