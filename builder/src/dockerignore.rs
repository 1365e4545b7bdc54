//! `.dockerignore`: which files of the build context a build may see.
//!
//! Docker's rules (the build-context documentation and moby's pattern
//! matcher):
//! - one pattern per line; a line whose first character is `#` is a comment
//!   (a `#` after leading blanks is not); blank lines are skipped; each line
//!   is trimmed;
//! - `!` at the start makes an exception: a file it matches is included
//!   again; the LAST matching line decides;
//! - patterns are cleaned like Go's `filepath.Clean` (`./a/../b/` is `b`)
//!   and a leading `/` is dropped: the context root is both the working
//!   directory and the root;
//! - the glob is Go's `filepath.Match`: `*` is any run of characters but
//!   `/`, `?` one character but `/`, `[a-z]`/`[^a-z]` a class, `\` escapes;
//!   plus `**`, which matches any number of directories (`**/` zero or more
//!   whole directories, a trailing `**` anything at all);
//! - a pattern that matches a directory matches everything under it
//!   (`node_modules` excludes `node_modules/x/y.js`).
//!
//! The same [`Glob`] serves COPY/ADD source patterns.

use serde::Serialize;

use crate::BuildError;

/// A parsed `.dockerignore`.
#[derive(Clone, Debug, Default)]
pub struct DockerIgnore {
    rules: Vec<Rule>,
}

/// One line of a `.dockerignore`.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// The cleaned pattern, without its `!`.
    pub pattern: String,
    /// A `!` line: re-includes what it matches.
    pub exception: bool,
    /// 1-based line in the file.
    pub line: usize,
    #[serde(skip)]
    glob: Glob,
}

impl DockerIgnore {
    /// Parse the text of a `.dockerignore`; a malformed pattern is an error
    /// naming its line, as Docker refuses to build with one.
    pub fn parse(text: &str) -> Result<DockerIgnore, BuildError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let fail = |message: String| BuildError {
                file: ".dockerignore".into(),
                line: Some(line),
                instruction: None,
                message,
            };
            // Only a `#` in the very first column starts a comment.
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(fail(
                        "\"!\" alone excludes nothing: write !PATTERN to re-include files".into(),
                    ));
                }
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let glob =
                Glob::new(&cleaned).map_err(|e| fail(format!("bad pattern {pattern:?}: {e}")))?;
            rules.push(Rule {
                pattern: cleaned,
                exception,
                line,
                glob,
            });
        }
        Ok(DockerIgnore { rules })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether any line is a `!` exception (a walker that sees none can
    /// skip every excluded directory outright).
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether `path` (relative to the context root, `/`-separated) is left
    /// out of the build context.
    pub fn is_excluded(&self, path: &str) -> bool {
        self.last_match(&normalize(path))
            .is_some_and(|index| !self.rules[index].exception)
    }

    /// Whether a walker of the context must descend into directory `dir`:
    /// yes if it is not excluded, and also if it is but a later `!` line may
    /// re-include something below it (`node_modules` then
    /// `!node_modules/keep/**`). Only exceptions after the line that
    /// excluded `dir` can: an earlier one is overridden for everything
    /// under `dir` by that line, since a pattern matching a directory
    /// matches all it holds.
    pub fn must_walk(&self, dir: &str) -> bool {
        let dir = normalize(dir);
        let Some(decider) = self.last_match(&dir) else {
            return true;
        };
        if self.rules[decider].exception {
            return true;
        }
        let dir_parts: Vec<&str> = dir.split('/').collect();
        self.rules[decider + 1..]
            .iter()
            .filter(|r| r.exception)
            .any(|r| could_match_below(&r.pattern, &dir_parts))
    }

    fn last_match(&self, path: &str) -> Option<usize> {
        self.rules
            .iter()
            .rposition(|rule| matches_or_parent_matches(&rule.glob, path))
    }
}

/// A pattern matches a path if it matches the path itself or one of the
/// directories above it.
fn matches_or_parent_matches(glob: &Glob, path: &str) -> bool {
    if glob.matches(path) {
        return true;
    }
    path.match_indices('/')
        .any(|(at, _)| glob.matches(&path[..at]))
}

/// Whether a pattern could match something strictly below the directory
/// whose components are `dir`, comparing component by component.
fn could_match_below(pattern: &str, dir: &[&str]) -> bool {
    let segments = split_pattern(pattern);
    for (n, component) in dir.iter().enumerate() {
        let Some(segment) = segments.get(n) else {
            // The pattern ends above `dir`: it matches an ancestor, which
            // the caller's ordering already ruled out; say yes to be safe.
            return true;
        };
        if segment.contains("**") {
            return true;
        }
        match Glob::new(segment) {
            Ok(glob) if glob.matches(component) => {}
            _ => return false,
        }
    }
    true
}

/// Split a pattern at the `/`s that are not escaped.
fn split_pattern(pattern: &str) -> Vec<String> {
    let mut segments = vec![String::new()];
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let current = segments.last_mut().expect("never empty");
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            '/' => segments.push(String::new()),
            c => segments.last_mut().expect("never empty").push(c),
        }
    }
    segments
}

/// A path as the matcher wants it: relative, `/`-separated, cleaned.
fn normalize(path: &str) -> String {
    let cleaned = clean(path);
    cleaned.trim_start_matches('/').to_string()
}

/// Go's `filepath.Clean` for `/`-separated paths: no `.`, no `x/..`, no
/// doubled or trailing `/`.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // `/..` is `/`; a relative path keeps its leading `..`s.
                _ if rooted => {}
                _ => parts.push(".."),
            },
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

/// A compiled glob (Go's `filepath.Match` plus Docker's `**`).
#[derive(Clone, Debug, Default)]
pub struct Glob {
    tokens: Vec<Token>,
}

#[derive(Clone, Debug)]
enum Token {
    Literal(char),
    /// `?`
    AnyChar,
    /// `*`
    Star,
    /// `**/` (or `**` before more pattern): empty, or anything ending in `/`.
    Directories,
    /// A trailing `**`: anything.
    Anything,
    /// `[...]`
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    /// Compile a pattern; a malformed one (unterminated `[`, trailing `\`,
    /// empty class) is an error, as in Go.
    pub fn new(pattern: &str) -> Result<Glob, String> {
        let chars: Vec<char> = pattern.chars().collect();
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            match chars[i] {
                '*' if chars.get(i + 1) == Some(&'*') => {
                    i += 2;
                    // `**/` is `**`: the slash is part of "any directories".
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    tokens.push(if i >= chars.len() {
                        Token::Anything
                    } else {
                        Token::Directories
                    });
                    continue;
                }
                '*' => tokens.push(Token::Star),
                '?' => tokens.push(Token::AnyChar),
                '\\' => {
                    i += 1;
                    let Some(&c) = chars.get(i) else {
                        return Err("a trailing \\ escapes nothing".into());
                    };
                    tokens.push(Token::Literal(c));
                }
                '[' => {
                    let (token, next) = parse_class(&chars, i + 1)?;
                    tokens.push(token);
                    i = next;
                    continue;
                }
                c => tokens.push(Token::Literal(c)),
            }
            i += 1;
        }
        Ok(Glob { tokens })
    }

    /// Whether the whole of `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        // reachable[j]: the tokens so far can match exactly text[..j].
        let mut reachable = vec![false; text.len() + 1];
        reachable[0] = true;
        for token in &self.tokens {
            let mut next = vec![false; text.len() + 1];
            for j in 0..=text.len() {
                if !reachable[j] {
                    continue;
                }
                match token {
                    Token::Literal(c) => {
                        if text.get(j) == Some(c) {
                            next[j + 1] = true;
                        }
                    }
                    Token::AnyChar => {
                        if text.get(j).is_some_and(|&c| c != '/') {
                            next[j + 1] = true;
                        }
                    }
                    Token::Class { negated, ranges } => {
                        if let Some(&c) = text.get(j) {
                            let inside = ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
                            if c != '/' && inside != *negated {
                                next[j + 1] = true;
                            }
                        }
                    }
                    Token::Star => {
                        next[j] = true;
                        let mut k = j;
                        while k < text.len() && text[k] != '/' {
                            k += 1;
                            next[k] = true;
                        }
                    }
                    Token::Directories => {
                        next[j] = true;
                        for k in j + 1..=text.len() {
                            if text[k - 1] == '/' {
                                next[k] = true;
                            }
                        }
                    }
                    Token::Anything => {
                        for slot in next.iter_mut().skip(j) {
                            *slot = true;
                        }
                    }
                }
            }
            reachable = next;
            if !reachable.iter().any(|&r| r) {
                return false;
            }
        }
        reachable[text.len()]
    }
}

/// Parse a class after its `[`; returns it and the index after its `]`.
fn parse_class(chars: &[char], start: usize) -> Result<(Token, usize), String> {
    let mut i = start;
    let negated = chars.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let literal = |i: &mut usize| -> Result<char, String> {
        let c = *chars.get(*i).ok_or("unterminated [ class")?;
        *i += 1;
        if c == '\\' {
            let escaped = *chars.get(*i).ok_or("unterminated [ class")?;
            *i += 1;
            return Ok(escaped);
        }
        Ok(c)
    };
    loop {
        match chars.get(i) {
            None => return Err("unterminated [ class".into()),
            Some(']') if !ranges.is_empty() => {
                return Ok((Token::Class { negated, ranges }, i + 1))
            }
            Some(']') => return Err("empty [] class".into()),
            Some(_) => {
                let lo = literal(&mut i)?;
                let hi = if chars.get(i) == Some(&'-') && chars.get(i + 1) != Some(&']') {
                    i += 1;
                    literal(&mut i)?
                } else {
                    lo
                };
                if hi < lo {
                    return Err(format!("the range {lo}-{hi} runs backwards"));
                }
                ranges.push((lo, hi));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    fn glob(pattern: &str, path: &str) -> bool {
        Glob::new(pattern).unwrap().matches(path)
    }

    #[test]
    fn go_filepath_match_syntax() {
        assert!(glob("*.go", "main.go"));
        assert!(!glob("*.go", "cmd/main.go"), "* stops at /");
        assert!(glob("temp?", "tempa"));
        assert!(!glob("temp?", "temp"));
        assert!(!glob("temp?", "tempab"));
        assert!(!glob("a?b", "a/b"), "? is not /");
        assert!(glob("[a-c]at", "bat"));
        assert!(!glob("[a-c]at", "rat"));
        assert!(glob("[^a-c]at", "rat"));
        assert!(!glob("[^a-c]at", "bat"));
        assert!(glob("x[!]", "x!"), "! is a member, ^ negates");
        assert!(
            glob("arr[[]0].txt", "arr[0].txt"),
            "the reference's way to name ["
        );
        assert!(glob("a\\*b", "a*b"));
        assert!(!glob("a\\*b", "axb"));
        assert!(glob("[\\]]", "]"));
        assert!(glob("", ""));
        for bad in ["[", "[a", "a\\", "[]", "[z-a]"] {
            assert!(Glob::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn double_star_matches_directories() {
        assert!(glob("**/*.go", "main.go"));
        assert!(glob("**/*.go", "a/b/c.go"));
        assert!(!glob("**/*.go", "a/b/c.rs"));
        assert!(glob("a/**/b", "a/b"));
        assert!(glob("a/**/b", "a/x/y/b"));
        assert!(!glob("a/**/b", "a/xb"));
        assert!(glob("a/**", "a/x/y"));
        assert!(
            !glob("a/**", "a"),
            "the directory itself stays, as in Docker"
        );
        assert!(glob("**", "anything/at/all"));
    }

    #[test]
    fn reference_examples() {
        let rules = ignore("# comment\n*/temp*\n*/*/temp*\ntemp?\n");
        assert!(rules.is_excluded("somedir/temporary.txt"));
        assert!(rules.is_excluded("somedir/temp"));
        assert!(rules.is_excluded("somedir/subdir/temporary.txt"));
        assert!(rules.is_excluded("tempa"));
        assert!(!rules.is_excluded("temp"));
        assert!(!rules.is_excluded("a/b/c/temp"));
        assert!(!rules.is_excluded("# comment"));
        assert_eq!(rules.rules().len(), 3);
    }

    #[test]
    fn leading_slash_dot_and_parents_are_cleaned() {
        for pattern in [
            "/foo/bar",
            "foo/bar",
            "./foo/bar",
            "foo/bar/",
            "foo/./x/../bar",
            "foo//bar",
        ] {
            let rules = ignore(pattern);
            assert_eq!(rules.rules()[0].pattern, "foo/bar", "{pattern}");
            assert!(rules.is_excluded("foo/bar"), "{pattern}");
            assert!(
                rules.is_excluded("./foo/bar/baz.txt"),
                "{pattern}: everything below"
            );
            assert!(!rules.is_excluded("bar"), "{pattern}");
            assert!(!rules.is_excluded("x/foo/bar"), "{pattern}");
        }
        assert_eq!(clean("../a/./b/../c"), "../a/c");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("./"), ".");
    }

    #[test]
    fn exceptions_last_match_wins() {
        let rules = ignore("*.md\n!README.md\n");
        assert!(rules.is_excluded("CHANGES.md"));
        assert!(!rules.is_excluded("README.md"));
        assert!(!rules.is_excluded("docs/guide.md"), "*.md is only the root");
        // The reference's two orderings.
        let rules = ignore("*.md\n!README*.md\nREADME-secret.md\n");
        assert!(rules.is_excluded("README-secret.md"));
        assert!(!rules.is_excluded("README.md"));
        assert!(rules.is_excluded("other.md"));
        let rules = ignore("*.md\nREADME-secret.md\n!README*.md\n");
        assert!(!rules.is_excluded("README-secret.md"));
        // Include-only lists.
        let rules = ignore("*\n!src\n!Cargo.toml\n");
        assert!(rules.is_excluded("target/debug/x"));
        assert!(!rules.is_excluded("src/main.rs"));
        assert!(!rules.is_excluded("Cargo.toml"));
        assert!(rules.has_exceptions());
    }

    #[test]
    fn comments_and_blanks() {
        let rules = ignore("\n   \n# a comment\n  # not a comment\n\tsecret.txt  \n");
        let patterns: Vec<&str> = rules.rules().iter().map(|r| r.pattern.as_str()).collect();
        assert_eq!(patterns, vec!["# not a comment", "secret.txt"]);
        assert!(rules.is_excluded("secret.txt"));
        assert_eq!(rules.rules()[1].line, 5);
        assert!(!ignore("").has_exceptions());
    }

    #[test]
    fn malformed_patterns_name_their_line() {
        let err = DockerIgnore::parse("ok\n!\n").unwrap_err().to_string();
        assert!(err.starts_with(".dockerignore:2: "), "{err}");
        let err = DockerIgnore::parse("a\n\nfoo[\n").unwrap_err().to_string();
        assert_eq!(
            err,
            ".dockerignore:3: bad pattern \"foo[\": unterminated [ class"
        );
    }

    #[test]
    fn walking_into_excluded_directories_only_when_an_exception_may_reach_inside() {
        let rules = ignore("node_modules\n!node_modules/keep/**\n");
        assert!(rules.is_excluded("node_modules/x.js"));
        assert!(!rules.is_excluded("node_modules/keep/a.js"));
        assert!(rules.must_walk("node_modules"));
        assert!(rules.must_walk("node_modules/keep"));
        assert!(!rules.must_walk("node_modules/other"));
        assert!(rules.must_walk("src"), "not excluded at all");

        let rules = ignore("*\n!**/*.go\n");
        assert!(rules.must_walk("deep"), "** may reach any depth");
        assert!(!rules.is_excluded("deep/er/x.go"));

        // An exception before the excluding line cannot re-include.
        let rules = ignore("!build/keep\nbuild\n");
        assert!(!rules.must_walk("build"));
        assert!(rules.is_excluded("build/keep"));

        // Exceptions elsewhere do not force a walk.
        let rules = ignore("vendor\n!docs/*.md\n");
        assert!(!rules.must_walk("vendor"));
        let rules = ignore("vendor\n!vendor/a*/LICENSE\n");
        assert!(rules.must_walk("vendor/abc"));
        assert!(!rules.must_walk("vendor/xyz"));
        assert!(!rules.is_excluded("vendor/abc/LICENSE"));
    }
}
