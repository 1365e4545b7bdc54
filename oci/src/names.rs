//! Repository names and tags: the one grammar every Berth crate checks them
//! with (storage paths, token scopes, image references, the registry's router).
//! A valid name or tag is safe to put in a storage path: no `..`, no absolute
//! paths, no control characters.
//!
//! Hand-written scanners rather than regexes: the grammar is small, and this
//! crate stays free of a regex engine. The fuzz target `reference` checks
//! them against the distribution-spec regexes quoted below.

/// Longest repository name accepted; clients commonly cap the whole reference at 255.
pub const MAX_NAME_LEN: usize = 255;

/// Longest tag (the distribution spec's `{0,127}` after the first character).
pub const MAX_TAG_LEN: usize = 128;

/// A repository name as the distribution spec defines it:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`,
/// at most [`MAX_NAME_LEN`] bytes.
pub fn is_valid_repository_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && !name.is_empty() && name.split('/').all(is_valid_component)
}

/// One path component: lowercase alphanumeric runs joined by `.`, `_`, `__` or `-+`.
fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            while i < bytes.len() && alnum(bytes[i]) {
                i += 1;
            }
            expect_alnum = false;
            continue;
        }
        if expect_alnum {
            return false;
        }
        // A separator: `.`, `_`, `__`, or one or more `-`.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start {
            return false;
        }
        expect_alnum = true;
    }
    !expect_alnum
}

/// A tag as the distribution spec defines it: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    bytes.len() <= MAX_TAG_LEN
        && (first.is_ascii_alphanumeric() || first == b'_')
        && rest
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names() {
        for ok in [
            "a",
            "0",
            "library/busybox",
            "a/b/c",
            "my-app",
            "a__b",
            "a.b",
            "x--y/z_1",
        ] {
            assert!(is_valid_repository_name(ok), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "../a",
            "a/../b",
            "a/.",
            ".a",
            "a_",
            "a___b",
            "a b",
            "a\n",
            "_tags",
            "a-",
            "-a",
            "a._b",
            "a/.hidden",
            "..",
            ".",
            "a/..",
        ] {
            assert!(!is_valid_repository_name(bad), "{bad:?}");
        }
        assert!(is_valid_repository_name(&"a".repeat(MAX_NAME_LEN)));
        assert!(!is_valid_repository_name(&"a".repeat(MAX_NAME_LEN + 1)));
        assert!(!is_valid_repository_name(&"a".repeat(256)));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0", "_x", "A-b_c.d", "0"] {
            assert!(is_valid_tag(ok), "{ok}");
        }
        for bad in [
            "",
            ".x",
            "-x",
            "a/b",
            "..",
            "a\n",
            "tag ",
            "ä",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_tag(bad), "{bad:?}");
        }
        assert!(is_valid_tag(&"a".repeat(MAX_TAG_LEN)));
    }
}
