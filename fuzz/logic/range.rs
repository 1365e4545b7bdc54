//! The registry's `Range` (blob GET) and `Content-Range` (upload PATCH)
//! parsers in `berth_registry::http`, the resolution of a range against a
//! blob's size (`berth_storage::ByteRange::resolve`), and the query-string
//! decoder, on arbitrary header values.
//!
//! Properties: no panic; a parsed range prints back to the same range; a
//! resolved range lies inside the blob; an accepted `Content-Range` covers a
//! length the upload handler can compute (`end - start + 1` without
//! overflow); the `Range` the registry reports for an upload reads back as
//! the bytes received; percent-encoding a query value and decoding it gives
//! the value back.

use berth_registry::http::{
    parse_content_range, parse_range, percent_encode, query_param, upload_range,
};
use berth_storage::ByteRange;

fn check_range(value: &str) {
    let Some(range) = parse_range(value) else {
        return;
    };
    let printed = match range {
        ByteRange::From { start, end: None } => format!("bytes={start}-"),
        ByteRange::From {
            start,
            end: Some(end),
        } => format!("bytes={start}-{end}"),
        ByteRange::Suffix(n) => format!("bytes=-{n}"),
    };
    assert_eq!(
        parse_range(&printed),
        Some(range),
        "{value:?} printed as {printed:?}"
    );
    let mut sizes = vec![0, 1, 2, 1024, u64::MAX - 1, u64::MAX];
    match range {
        ByteRange::From { start, end } => {
            sizes.extend([start, start.saturating_add(1)]);
            if let Some(end) = end {
                sizes.extend([end, end.saturating_add(1), end.saturating_add(2)]);
            }
        }
        ByteRange::Suffix(n) => sizes.extend([n.saturating_sub(1), n, n.saturating_add(1)]),
    }
    for size in sizes {
        if let Some((start, end)) = range.resolve(size) {
            assert!(
                start <= end && end < size,
                "{range:?} on {size} gave {start}-{end}"
            );
            // blobs::get sends Content-Length: end - start + 1.
            let len = end - start + 1;
            assert!(len <= size);
            if let ByteRange::From {
                start: s,
                end: Some(e),
            } = range
            {
                assert_eq!(start, s);
                assert!(end <= e);
            }
        }
    }
}

fn check_content_range(value: &str) {
    let Some((start, end)) = parse_content_range(value) else {
        return;
    };
    assert!(start <= end, "{value:?} gave {start}-{end}");
    // uploads::checked_chunk_start compares `end - start + 1` with Content-Length.
    assert!(
        (end - start).checked_add(1).is_some(),
        "{value:?} gave {start}-{end}: its length overflows u64"
    );
    for printed in [
        format!("{start}-{end}"),
        format!("bytes {start}-{end}/*"),
        format!("bytes={start}-{end}"),
    ] {
        assert_eq!(
            parse_content_range(&printed),
            Some((start, end)),
            "{printed:?}"
        );
    }
}

/// One fuzz input (the body of `fuzz_targets/range.rs`; also replayed by
/// `tests/fuzz_regressions.rs`).
pub fn run(data: &[u8]) {
    if data.len() >= 8 {
        // The Range header of an upload's status: what was received so far.
        let offset = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
        let header = upload_range(offset);
        let text = header.to_str().expect("ASCII header");
        let expected = (0, offset.saturating_sub(1));
        assert_eq!(parse_content_range(text), Some(expected), "{text}");
    }
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    check_range(value);
    check_content_range(value);
    // Query values: `last=` and `n=` of listings, `digest=` and `mount=`/`from=` of uploads.
    let encoded = percent_encode(value);
    assert!(encoded.is_ascii());
    let query = format!("x=1&k={encoded}&k=other");
    assert_eq!(query_param(Some(&query), "k").as_deref(), Some(value));
    let _ = query_param(Some(value), "digest");
    let _ = query_param(Some(value), "n");
}
