//! `WWW-Authenticate` challenges and the `Authorization` header (Basic or
//! Bearer).

use base64::Engine;

use super::{Secret, MAX_TOKEN_LEN};
use crate::scope::Scope;

/// A quoted-string for a header parameter: `"` and `\` escaped; control
/// characters (CR/LF would split the header) dropped.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `Bearer realm="...",service="...",scope="..."` and, when a valid token
/// lacked what the request needs, `error="insufficient_scope"` (RFC 6750).
/// Several scopes go space-separated in one `scope`, as distribution does.
pub fn bearer_challenge(
    realm: &str,
    service: &str,
    scopes: &[Scope],
    insufficient_scope: bool,
) -> String {
    let mut value = format!("Bearer realm={},service={}", quoted(realm), quoted(service));
    if !scopes.is_empty() {
        value.push_str(",scope=");
        value.push_str(&quoted(&crate::scope::to_scope_string(scopes)));
    }
    if insufficient_scope {
        value.push_str(",error=\"insufficient_scope\"");
    }
    value
}

/// `Basic realm="..."`, for registries that take htpasswd logins directly.
pub fn basic_challenge(realm: &str) -> String {
    format!("Basic realm={}", quoted(realm))
}

/// What an `Authorization` header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic { user: String, password: Secret },
    Bearer(Secret),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthHeaderError {
    #[error("Authorization header too long")]
    TooLong,
    #[error("unsupported Authorization scheme (use Basic or Bearer)")]
    Scheme,
    #[error("Basic credentials are not valid base64 of user:password")]
    Basic,
    #[error("empty Bearer token")]
    Bearer,
}

/// Parse an `Authorization` header value. The scheme is case-insensitive.
/// Basic is base64 of `user:password` (the password may contain `:`; the
/// user may not). Nothing from the header is echoed in errors.
pub fn parse_authorization(value: &str) -> Result<Credentials, AuthHeaderError> {
    if value.len() > MAX_TOKEN_LEN {
        return Err(AuthHeaderError::TooLong);
    }
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(AuthHeaderError::Scheme)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let engine = base64::engine::general_purpose::STANDARD;
        let decoded = engine
            .decode(rest)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(rest))
            .map_err(|_| AuthHeaderError::Basic)?;
        let text = String::from_utf8(decoded).map_err(|_| AuthHeaderError::Basic)?;
        let (user, password) = text.split_once(':').ok_or(AuthHeaderError::Basic)?;
        if user.is_empty() || user.chars().any(char::is_control) {
            return Err(AuthHeaderError::Basic);
        }
        Ok(Credentials::Basic {
            user: user.to_string(),
            password: Secret(password.to_string()),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(AuthHeaderError::Bearer);
        }
        Ok(Credentials::Bearer(Secret(rest.to_string())))
    } else {
        Err(AuthHeaderError::Scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::test_support::*;

    #[test]
    fn builds_challenges() {
        let scopes = scopes(&["repository:team/app:pull,push", "repository:src:pull"]);
        assert_eq!(
            bearer_challenge(
                "https://reg.example.com/token",
                "reg.example.com",
                &scopes,
                false
            ),
            r#"Bearer realm="https://reg.example.com/token",service="reg.example.com",scope="repository:team/app:pull,push repository:src:pull""#
        );
        assert_eq!(
            bearer_challenge("https://r/token", "r", &scopes[..1], true),
            r#"Bearer realm="https://r/token",service="r",scope="repository:team/app:pull,push",error="insufficient_scope""#
        );
        assert_eq!(
            bearer_challenge("https://r/token", "r", &[], false),
            r#"Bearer realm="https://r/token",service="r""#
        );
        // Quotes escaped; CR/LF can never split the header.
        let nasty = bearer_challenge("a\"b\\c\r\nSet-Cookie: x", "s", &[], false);
        assert_eq!(nasty, r#"Bearer realm="a\"b\\cSet-Cookie: x",service="s""#);
        assert!(!nasty.contains('\n') && !nasty.contains('\r'));
        assert_eq!(basic_challenge("Berth"), r#"Basic realm="Berth""#);
    }

    #[test]
    fn parses_authorization_headers() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let basic = |user: &str, password: &str| Credentials::Basic {
            user: user.into(),
            password: Secret::new(password),
        };
        assert_eq!(
            parse_authorization(&format!("Basic {}", b64("alice:wonder"))),
            Ok(basic("alice", "wonder"))
        );
        assert_eq!(
            parse_authorization(&format!("basic  {} ", b64("a:b:c"))),
            Ok(basic("a", "b:c"))
        );
        assert_eq!(
            parse_authorization(&format!("BASIC {}", b64("a:"))),
            Ok(basic("a", ""))
        );
        let unpadded = b64("alice:wonderland!").trim_end_matches('=').to_string();
        assert_eq!(
            parse_authorization(&format!("Basic {unpadded}")),
            Ok(basic("alice", "wonderland!"))
        );
        assert_eq!(
            parse_authorization("Bearer abc.def.ghi"),
            Ok(Credentials::Bearer(Secret::new("abc.def.ghi")))
        );
        for (bad, err) in [
            (format!("Basic {}", b64("no-colon")), AuthHeaderError::Basic),
            (format!("Basic {}", b64(":pw")), AuthHeaderError::Basic),
            (format!("Basic {}", b64("a\nb:pw")), AuthHeaderError::Basic),
            ("Basic !!!notbase64".to_string(), AuthHeaderError::Basic),
            (
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode([0xff, b':', 0xfe])
                ),
                AuthHeaderError::Basic,
            ),
            ("Basic".to_string(), AuthHeaderError::Scheme),
            ("Bearer ".to_string(), AuthHeaderError::Scheme),
            ("Bearer a b".to_string(), AuthHeaderError::Bearer),
            ("Digest username=x".to_string(), AuthHeaderError::Scheme),
            ("".to_string(), AuthHeaderError::Scheme),
            (
                format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN)),
                AuthHeaderError::TooLong,
            ),
        ] {
            assert_eq!(parse_authorization(&bad), Err(err), "{bad:?}");
        }
        let shown = format!(
            "{:?}",
            parse_authorization(&format!("Basic {}", b64("u:hunter2")))
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        let shown = format!("{:?}", parse_authorization("Bearer s3cr3t"));
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
