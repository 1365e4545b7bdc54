//! Repository names and tags, validated before they ever become part of a
//! storage path (so `..`, absolute paths and control characters never reach disk).

use std::sync::LazyLock;

use regex::Regex;

/// distribution-spec: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
static NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
        .expect("static regex")
});

/// distribution-spec: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
static TAG: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$").expect("static regex"));

/// Longest repository name accepted; clients commonly cap the whole reference at 255.
pub const MAX_NAME_LEN: usize = 255;

pub fn is_valid_repository_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && NAME.is_match(name)
}

pub fn is_valid_tag(tag: &str) -> bool {
    TAG.is_match(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "a",
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
            "", "A", "a/", "/a", "a//b", "../a", "a/../b", "a/.", ".a", "a_", "a___b", "a b",
            "a\n", "_tags",
        ] {
            assert!(!is_valid_repository_name(bad), "{bad:?}");
        }
        assert!(!is_valid_repository_name(&"a".repeat(256)));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0", "_x", "A-b_c.d"] {
            assert!(is_valid_tag(ok), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "..", &"a".repeat(129)] {
            assert!(!is_valid_tag(bad), "{bad:?}");
        }
    }
}
