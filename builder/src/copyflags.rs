//! The COPY/ADD flags as pure rules over strings (the executor applies
//! them): which flag combinations are refused, `--exclude` patterns (the
//! `.dockerignore` syntax and matcher), and the paths `--parents` keeps,
//! with rsync's `./` pivot (`COPY --parents ./x/./y/a /dst/` writes
//! `/dst/y/a`).

use crate::dockerfile::AddOptions;
use crate::dockerignore::clean;
use crate::exec::git::is_git_url;
use crate::plan::chain_key;
use crate::DockerIgnore;

/// The key a COPY/ADD layer is cached under, and the key of the state after
/// the step (what the next step chains on). They are the same chained key,
/// except with `--link`: the layer's own key leaves out the parent (the
/// layer does not depend on it, so a changed base or earlier step reuses
/// it) while the state after it chains the parent with that layer.
pub fn layer_keys(
    parent: &str,
    material: &str,
    content: Option<&str>,
    link: bool,
) -> (String, String) {
    if link {
        let layer_key = chain_key("link", material, content);
        let next = chain_key(parent, "link", Some(&layer_key));
        (layer_key, next)
    } else {
        let key = chain_key(parent, material, content);
        (key.clone(), key)
    }
}

/// Whether a source is a URL ADD fetches (http(s) or a Git repository).
pub fn is_remote(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://") || is_git_url(source)
}

/// The refusals BuildKit makes before anything runs.
pub fn check(
    sources: &[String],
    link: bool,
    chown: Option<&str>,
    add: Option<&AddOptions>,
    exclude: &[String],
) -> Result<(), String> {
    if add.is_none() {
        if let Some(url) = sources.iter().find(|s| is_remote(s)) {
            return Err(format!("source can't be a URL for COPY ({url}); use ADD"));
        }
    }
    if let Some(checksum) = add.and_then(|a| a.checksum.as_deref()) {
        if sources.len() != 1 {
            return Err("--checksum can't be specified for multiple sources".into());
        }
        let source = &sources[0];
        if is_git_url(source) {
            if checksum.is_empty() || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "--checksum={checksum}: for a git source the checksum is a commit (or a prefix of one) in hex"
                ));
            }
        } else if is_remote(source) {
            let hex = checksum.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "--checksum={checksum}: expected sha256:<64 hex digits> (SHA-256 is the only supported algorithm)"
                ));
            }
        } else {
            return Err(format!(
                "--checksum can't be specified for non-HTTP(S) sources ({source})"
            ));
        }
    }
    if link {
        if let Some(spec) = chown {
            let named = spec
                .split(':')
                .any(|part| !part.is_empty() && part.parse::<u32>().is_err());
            if named {
                return Err(format!(
                    "--chown={spec} with --link: the files are copied into an empty filesystem, so user and group names can't be resolved; use numeric ids (e.g. --chown=1000:1000)"
                ));
            }
        }
    }
    exclude_rules(exclude)?;
    Ok(())
}

/// `--exclude` patterns as one rule set (`None` without any).
pub fn exclude_rules(patterns: &[String]) -> Result<Option<DockerIgnore>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for p in patterns {
        if p.trim().is_empty() || p.contains('\n') {
            return Err(format!("--exclude={p:?}: an empty or multi-line pattern"));
        }
    }
    DockerIgnore::parse(&patterns.join("\n"))
        .map(Some)
        .map_err(|e| format!("--exclude: {}", e.message))
}

/// For `--parents`: the part of a source's path that is not kept (the
/// directories before a `./` pivot, cleaned), empty without a pivot.
pub fn parents_pivot(source: &str) -> String {
    let parts: Vec<&str> = source.split('/').collect();
    let mut seen_name = false;
    for (i, part) in parts.iter().enumerate() {
        if *part == "." && seen_name {
            let before = clean(&format!("/{}", parts[..i].join("/")));
            return before.trim_start_matches('/').to_string();
        }
        if !part.is_empty() && *part != "." {
            seen_name = true;
        }
    }
    String::new()
}

/// The path `--parents` writes under the destination for a match at `rel`
/// (relative to the source root) whose source had the pivot `strip`.
pub fn kept_path<'r>(rel: &'r str, strip: &str) -> &'r str {
    if strip.is_empty() {
        return rel;
    }
    match rel.strip_prefix(strip) {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.trim_start_matches('/'),
        _ => rel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(checksum: &str) -> AddOptions {
        AddOptions {
            checksum: Some(checksum.into()),
            ..AddOptions::default()
        }
    }

    #[test]
    fn checksum_link_and_exclude_refusals() {
        let sha = format!("sha256:{}", "a".repeat(64));
        let one = |s: &str| vec![s.to_string()];
        assert!(check(&one("https://h/f"), false, None, Some(&add(&sha)), &[]).is_ok());
        assert!(check(
            &one("https://h/r.git#main"),
            false,
            None,
            Some(&add("be1f38e")),
            &[]
        )
        .is_ok());
        let e = check(&one("local.tgz"), false, None, Some(&add(&sha)), &[]).unwrap_err();
        assert!(e.contains("non-HTTP(S)"), "{e}");
        let two = vec!["https://h/a".to_string(), "https://h/b".to_string()];
        assert!(check(&two, false, None, Some(&add(&sha)), &[])
            .unwrap_err()
            .contains("multiple sources"));
        assert!(
            check(&one("https://h/f"), false, None, Some(&add("md5:abc")), &[])
                .unwrap_err()
                .contains("sha256")
        );
        assert!(check(&one("https://h/r.git"), false, None, Some(&add("xyz")), &[]).is_err());
        assert!(check(&one("a"), true, Some("1000:1000"), None, &[]).is_ok());
        assert!(check(&one("a"), false, Some("app"), None, &[]).is_ok());
        let e = check(&one("a"), true, Some("app:1000"), None, &[]).unwrap_err();
        assert!(e.contains("numeric ids"), "{e}");
        assert!(check(&one("a"), false, None, None, &["".to_string()]).is_err());
        assert!(check(&one("https://h/r.git"), false, None, None, &[])
            .unwrap_err()
            .contains("use ADD"));
    }

    #[test]
    fn exclude_patterns_match_like_dockerignore() {
        let rules = exclude_rules(&["*.txt".into(), "docs/**/*.md".into(), "!keep.txt".into()])
            .unwrap()
            .unwrap();
        assert!(rules.is_excluded("a.txt"));
        assert!(!rules.is_excluded("sub/a.txt"), "* does not cross /");
        assert!(rules.is_excluded("docs/x/y.md"));
        assert!(!rules.is_excluded("keep.txt"));
        assert!(exclude_rules(&[]).unwrap().is_none());
    }

    #[test]
    fn parents_keep_the_path_after_the_pivot() {
        assert_eq!(parents_pivot("./x/a.txt"), "");
        assert_eq!(parents_pivot("x/a.txt"), "");
        assert_eq!(parents_pivot("./x/./y/*.txt"), "x");
        assert_eq!(parents_pivot("/usr/./local/bin/tool"), "usr");
        assert_eq!(parents_pivot("a/b/./c"), "a/b");
        assert_eq!(kept_path("x/y/a.txt", "x"), "y/a.txt");
        assert_eq!(kept_path("x/y/a.txt", ""), "x/y/a.txt");
        assert_eq!(kept_path("xy/a.txt", "x"), "xy/a.txt");
        assert_eq!(kept_path("x", "x"), "");
    }
}
