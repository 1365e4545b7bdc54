//! Percent-coding of query strings and `application/x-www-form-urlencoded`
//! bodies, written once for the registry (query parameters, `Link` headers),
//! the token service (its query and form), the client (token requests) and
//! the conformance suite.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// RFC 3986's unreserved characters stay; everything else is escaped.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// As [`UNRESERVED`], but `/` stays too: repository names in `Link` headers
/// remain readable (`last=team/app`), and `/` needs no escape in a query.
const UNRESERVED_AND_SLASH: &AsciiSet = &UNRESERVED.remove(b'/');

/// Why a query or form value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PercentError {
    #[error("`%` not followed by two hex digits")]
    BadEscape,
    #[error("decoded bytes are not UTF-8")]
    NotUtf8,
}

/// Escape everything but unreserved characters (`A-Z a-z 0-9 - . _ ~`), as
/// a query value or form field needs.
pub fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, UNRESERVED).to_string()
}

/// Like [`encode`] but leaves `/` as it is (for `Link` headers).
pub fn encode_keeping_slash(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, UNRESERVED_AND_SLASH).to_string()
}

/// Decode a form or query value strictly: `+` is a space, every `%` must
/// start a two-hex-digit escape, and the result must be UTF-8.
pub fn decode_form(value: &str) -> Result<String, PercentError> {
    if !escapes_are_valid(value.as_bytes()) {
        return Err(PercentError::BadEscape);
    }
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| PercentError::NotUtf8)
}

/// Decode a form or query value leniently: `+` is a space, a `%` that does
/// not start an escape stays as it is, and bytes that are not UTF-8 become
/// U+FFFD. For parameters where a garbled value simply matches nothing.
pub fn decode_form_lossy(value: &str) -> String {
    let spaced = value.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn escapes_are_valid(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| {
        b != b'%'
            || bytes
                .get(i + 1..i + 3)
                .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_but_unreserved() {
        assert_eq!(
            encode("repository:a:pull push"),
            "repository%3Aa%3Apull%20push"
        );
        assert_eq!(
            encode("application/vnd.x+json"),
            "application%2Fvnd.x%2Bjson"
        );
        assert_eq!(encode("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(encode("é"), "%C3%A9");
        assert_eq!(encode_keeping_slash("a b:c"), "a%20b%3Ac");
        assert_eq!(encode_keeping_slash("team/app"), "team/app");
    }

    #[test]
    fn decodes_strictly() {
        assert_eq!(
            decode_form("repository%3Asamalba%2Fmy-app%3Apull%2Cpush").as_deref(),
            Ok("repository:samalba/my-app:pull,push")
        );
        assert_eq!(decode_form("a+b%2Bc").as_deref(), Ok("a b+c"));
        assert_eq!(decode_form("%c3%a9").as_deref(), Ok("é"));
        assert_eq!(decode_form(""), Ok(String::new()));
        for bad in ["%", "%4", "%zz", "a%g1", "%+1"] {
            assert_eq!(decode_form(bad), Err(PercentError::BadEscape), "{bad:?}");
        }
        assert_eq!(decode_form("%ff"), Err(PercentError::NotUtf8));
    }

    #[test]
    fn decodes_leniently() {
        assert_eq!(decode_form_lossy("a%2Fb"), "a/b");
        assert_eq!(decode_form_lossy("sha256%3Aab"), "sha256:ab");
        assert_eq!(decode_form_lossy("a+b"), "a b");
        assert_eq!(decode_form_lossy("100%"), "100%");
        assert_eq!(decode_form_lossy("%zz%4"), "%zz%4");
        assert_eq!(decode_form_lossy("%ff"), "\u{fffd}");
    }

    #[test]
    fn round_trips() {
        for value in ["", "a b", "a+b", "100%", "team/app", "ä/ö:ü", "%2F"] {
            assert_eq!(decode_form(&encode(value)).as_deref(), Ok(value));
            assert_eq!(decode_form_lossy(&encode_keeping_slash(value)), value);
        }
    }
}
