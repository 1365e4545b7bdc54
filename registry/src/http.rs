//! Header and query-string helpers (pure functions).

use axum::http::{HeaderMap, HeaderValue};
use berth_oci::percent::decode_form_lossy;
use berth_storage::ByteRange;

/// The `Range` header of an upload: `0-<last byte>`. An empty upload is
/// reported as `0-0`, as the reference registry and Docker clients expect.
pub fn upload_range(offset: u64) -> HeaderValue {
    let end = offset.saturating_sub(1);
    HeaderValue::from_str(&format!("0-{end}")).unwrap_or(HeaderValue::from_static("0-0"))
}

pub fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Parse a blob GET `Range: bytes=a-b | a- | -n`. Only a single range is
/// supported; `None` means the header is malformed or asks for several ranges.
pub fn parse_range(value: &str) -> Option<ByteRange> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (start.trim(), end.trim()) {
        ("", "") => None,
        ("", n) => Some(ByteRange::Suffix(num(n)?)),
        (s, "") => Some(ByteRange::From {
            start: num(s)?,
            end: None,
        }),
        (s, e) => Some(ByteRange::From {
            start: num(s)?,
            end: Some(num(e)?),
        }),
    }
}

/// Parse an upload chunk's `Content-Range: <start>-<end>` (the spec's form;
/// `bytes start-end[/total]` is accepted too). Returns inclusive (start, end)
/// with `end - start + 1` (the chunk's length) representable in a `u64`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let v = value.trim();
    let v = v.strip_prefix("bytes").map(str::trim_start).unwrap_or(v);
    let v = v.strip_prefix('=').unwrap_or(v);
    let v = v.split('/').next().unwrap_or(v);
    let (start, end) = v.split_once('-')?;
    let start = start.trim().parse::<u64>().ok()?;
    let end = end.trim().parse::<u64>().ok()?;
    // `0-18446744073709551615` would be 2^64 bytes: its length overflows.
    (end >= start && end - start < u64::MAX).then_some((start, end))
}

/// Query parameters, percent-decoded. Repeated keys keep the first value.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    let query = query?;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode_form_lossy(k) == key).then(|| decode_form_lossy(v))
    })
}

/// Every value of a repeated query parameter (`?tag=a&tag=b`), percent-decoded, in order.
pub fn query_params(query: Option<&str>, key: &str) -> Vec<String> {
    let Some(query) = query else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_form_lossy(k) == key).then(|| decode_form_lossy(v))
        })
        .collect()
}

/// Percent-encode a value for use in a query string (for `Link` headers;
/// `/` stays readable).
pub use berth_oci::percent::encode_keeping_slash as percent_encode;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_parameters_keep_every_value_in_order() {
        let q = Some("tag=a&n=1&tag=b%2Dc&tagx=no&tag=");
        assert_eq!(query_params(q, "tag"), vec!["a", "b-c", ""]);
        assert_eq!(query_param(q, "tag").as_deref(), Some("a"));
        assert!(query_params(None, "tag").is_empty());
        assert!(query_params(Some("n=1"), "tag").is_empty());
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-9"),
            Some(ByteRange::From {
                start: 0,
                end: Some(9)
            })
        );
        assert_eq!(
            parse_range("bytes=5-"),
            Some(ByteRange::From {
                start: 5,
                end: None
            })
        );
        assert_eq!(parse_range("bytes=-3"), Some(ByteRange::Suffix(3)));
        for bad in [
            "0-9",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=0-1,3-4",
            "items=0-1",
        ] {
            assert_eq!(parse_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=5-5"), Some((5, 5)));
        for bad in ["", "5", "9-5", "a-b", "-5"] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
        // Its length, end - start + 1, overflowed u64 (a panic in
        // checked_chunk_start in debug builds); the range fuzz target checks this.
        assert_eq!(parse_content_range("0-18446744073709551615"), None);
        assert_eq!(
            parse_content_range("1-18446744073709551615"),
            Some((1, u64::MAX))
        );
        assert_eq!(
            parse_content_range("0-18446744073709551614"),
            Some((0, u64::MAX - 1))
        );
    }

    #[test]
    fn queries() {
        let q = Some("n=2&last=a%2Fb&digest=sha256%3Aab&empty");
        assert_eq!(query_param(q, "n").as_deref(), Some("2"));
        assert_eq!(query_param(q, "last").as_deref(), Some("a/b"));
        assert_eq!(query_param(q, "digest").as_deref(), Some("sha256:ab"));
        assert_eq!(query_param(q, "empty").as_deref(), Some(""));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(Some("x=%zz%4"), "x").as_deref(), Some("%zz%4"));
        assert_eq!(percent_encode("a b:c"), "a%20b%3Ac");
    }

    #[test]
    fn upload_ranges() {
        assert_eq!(upload_range(0), "0-0");
        assert_eq!(upload_range(10), "0-9");
    }
}
