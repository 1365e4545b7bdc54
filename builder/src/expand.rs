//! Docker's word processing: quotes, escapes and variable substitution.
//!
//! The builder expands variables itself only in some instructions
//! ([`EXPANDED_INSTRUCTIONS`], from the Dockerfile reference's "Environment
//! replacement"); in RUN, CMD and ENTRYPOINT the shell does it at run time,
//! so the builder leaves their text alone.
//!
//! Rules (the Dockerfile reference and BuildKit's shell lexer):
//! - `$NAME` and `${NAME}` give the value, or nothing when unset.
//! - `${NAME:-word}` the value if set and non-empty, else `word`;
//!   `${NAME-word}` the value if set (even empty), else `word`.
//! - `${NAME:+word}` `word` if set and non-empty, else nothing;
//!   `${NAME+word}` `word` if set (even empty), else nothing.
//! - `${NAME:?message}` / `${NAME?message}` fail the build when unset
//!   (or empty, with the colon).
//! - `word` may itself hold variables (`${A:-$B}`).
//! - The escape character (`\`, or `` ` `` with `# escape=`` ` ``) makes the
//!   next character literal: `\$FOO` is the text `$FOO`.
//! - Single quotes keep everything literal; double quotes group words and
//!   still expand `$`, and there the escape only escapes `"`, `$` and itself.
//! - Quotes are removed from the result.
//!
//! The pattern modifiers (`${v#p}`, `${v%p}`, `${v/p/r}`) are only in
//! pre-release Dockerfile syntax; they are refused with a clear message
//! rather than silently mis-expanded.

/// The instructions whose arguments the builder expands (the reference's
/// list; ONBUILD's trigger is expanded when it runs, in the child build).
pub const EXPANDED_INSTRUCTIONS: &[&str] = &[
    "ADD",
    "COPY",
    "ENV",
    "EXPOSE",
    "FROM",
    "LABEL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
    // ARG defaults are expanded too (`ARG B=${A}-x`), as in BuildKit.
    "ARG",
];

/// Whether the builder substitutes variables in this instruction's
/// arguments (RUN, CMD and ENTRYPOINT: no, their shell does).
pub fn is_expanded(keyword: &str) -> bool {
    EXPANDED_INSTRUCTIONS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(keyword))
}

/// Expand one word: quotes removed, escapes applied, variables substituted
/// from `vars`. Whitespace does not split: the result is one string.
pub fn expand_word(
    word: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    Lexer::new(word, escape, false, vars).process_all()
}

/// Expand a heredoc's body as BuildKit does for `COPY <<EOF`: variables
/// substituted, but quotes and escape characters kept in the text (an
/// escape still stops the `$` after it from expanding).
pub fn expand_heredoc(
    body: &str,
    escape: char,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    Lexer::new(body, escape, true, vars).process_all()
}

/// Split text into words at unquoted, unescaped whitespace, keeping the
/// quotes and escapes in each word (they are processed later, by
/// [`expand_word`]). This is how ENV, LABEL and ARG find their `K=V` pairs,
/// and how flags and heredoc markers are found.
pub fn split_words(text: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                word.push(c);
                if c == escape && q == '"' {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                } else if c == q {
                    quote = None;
                }
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                in_word = true;
                word.push(c);
                if c == escape {
                    if let Some(next) = chars.next() {
                        word.push(next);
                    }
                } else if c == '\'' || c == '"' {
                    quote = Some(c);
                }
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// A variable lookup over `K=V` strings (an image's `Env`), the last
/// definition winning.
pub fn lookup_in(env: &[String], name: &str) -> Option<String> {
    let prefix_len = name.len();
    env.iter().rev().find_map(|entry| {
        (entry.len() > prefix_len
            && entry.as_bytes()[prefix_len] == b'='
            && entry.starts_with(name))
        .then(|| entry[prefix_len + 1..].to_string())
    })
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    /// Heredoc mode: quotes and escapes stay in the output.
    raw: bool,
    vars: &'a dyn Fn(&str) -> Option<String>,
}

/// What ends a run of text being processed.
#[derive(Clone, Copy, PartialEq)]
enum Stop {
    End,
    /// The `}` closing a `${NAME:-word}`.
    Brace,
}

impl<'a> Lexer<'a> {
    fn new(
        text: &str,
        escape: char,
        raw: bool,
        vars: &'a dyn Fn(&str) -> Option<String>,
    ) -> Lexer<'a> {
        Lexer {
            chars: text.chars().collect(),
            pos: 0,
            escape,
            raw,
            vars,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn process_all(&mut self) -> Result<String, String> {
        self.process(Stop::End)
    }

    fn process(&mut self, stop: Stop) -> Result<String, String> {
        let mut out = String::new();
        while let Some(c) = self.next() {
            if stop == Stop::Brace && c == '}' {
                return Ok(out);
            }
            if c == self.escape {
                if self.raw {
                    out.push(c);
                }
                // An escape at the very end escapes nothing and vanishes.
                if let Some(next) = self.next() {
                    out.push(next);
                }
            } else if c == '\'' {
                self.single_quoted(&mut out)?;
            } else if c == '"' {
                self.double_quoted(&mut out)?;
            } else if c == '$' {
                self.dollar(&mut out)?;
            } else {
                out.push(c);
            }
        }
        if stop == Stop::Brace {
            return Err("missing '}' in a ${...} substitution".into());
        }
        Ok(out)
    }

    fn single_quoted(&mut self, out: &mut String) -> Result<(), String> {
        if self.raw {
            out.push('\'');
        }
        loop {
            match self.next() {
                Some('\'') => break,
                Some(c) => out.push(c),
                None => return Err("unexpected end of text looking for the closing ' quote".into()),
            }
        }
        if self.raw {
            out.push('\'');
        }
        Ok(())
    }

    fn double_quoted(&mut self, out: &mut String) -> Result<(), String> {
        if self.raw {
            out.push('"');
        }
        loop {
            match self.next() {
                Some('"') => break,
                Some('$') => self.dollar(out)?,
                Some(c) if c == self.escape => match self.peek() {
                    // Inside double quotes only these can be escaped; any
                    // other escape character is kept as written.
                    Some(n) if n == '"' || n == '$' || n == self.escape => {
                        if self.raw {
                            out.push(c);
                        }
                        out.push(n);
                        self.pos += 1;
                    }
                    _ => out.push(c),
                },
                Some(c) => out.push(c),
                None => {
                    return Err("unexpected end of text looking for the closing \" quote".into())
                }
            }
        }
        if self.raw {
            out.push('"');
        }
        Ok(())
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    fn dollar(&mut self, out: &mut String) -> Result<(), String> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                self.braced(out)
            }
            Some(c) if c.is_ascii_alphanumeric() || c == '_' => {
                let name = self.name();
                out.push_str(&(self.vars)(&name).unwrap_or_default());
                Ok(())
            }
            // A `$` not followed by a name is just a dollar sign.
            _ => {
                out.push('$');
                Ok(())
            }
        }
    }

    fn braced(&mut self, out: &mut String) -> Result<(), String> {
        let name = self.name();
        if name.is_empty() {
            return Err(format!(
                "bad substitution: ${{{}: a variable name must follow ${{",
                self.rest_preview()
            ));
        }
        let value = (self.vars)(&name);
        let colon = self.peek() == Some(':');
        if colon {
            self.pos += 1;
        }
        let modifier = self.next();
        match modifier {
            Some('}') if !colon => {
                out.push_str(&value.unwrap_or_default());
                Ok(())
            }
            Some(m @ ('-' | '+' | '?')) => {
                let word = self.process(Stop::Brace)?;
                // With a colon an empty value counts as unset.
                let set = match &value {
                    Some(v) => !(colon && v.is_empty()),
                    None => false,
                };
                match m {
                    '-' => out.push_str(&if set { value.unwrap_or_default() } else { word }),
                    '+' => {
                        if set {
                            out.push_str(&word)
                        }
                    }
                    _ => {
                        if !set {
                            let why = if word.is_empty() {
                                if colon {
                                    "is not allowed to be unset or empty".to_string()
                                } else {
                                    "is not allowed to be unset".to_string()
                                }
                            } else {
                                word
                            };
                            return Err(format!("{name}: {why}"));
                        }
                        out.push_str(&value.unwrap_or_default());
                    }
                }
                Ok(())
            }
            Some(m @ ('#' | '%' | '/')) if !colon => Err(format!(
                "${{{name}{m}...}}: pattern substitution is only in pre-release Dockerfile syntax; \
                 compute the value in a RUN step instead"
            )),
            Some(other) => Err(format!(
                "bad substitution in ${{{name}{}{other}...}}: use ${{{name}}}, ${{{name}:-default}}, \
                 ${{{name}:+alternative}} or ${{{name}:?message}}",
                if colon { ":" } else { "" }
            )),
            None => Err(format!("missing '}}' after ${{{name}")),
        }
    }

    fn rest_preview(&self) -> String {
        self.chars[self.pos..].iter().take(10).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "FOO" => Some("/bar".into()),
            "EMPTY" => Some(String::new()),
            "NAME" => Some("John Doe".into()),
            "B" => Some("bee".into()),
            _ => None,
        }
    }

    fn x(word: &str) -> String {
        expand_word(word, '\\', &vars).unwrap()
    }

    #[test]
    fn plain_and_braced_variables() {
        // The reference's example: WORKDIR ${FOO}, ADD . $FOO, COPY \$FOO /quux.
        assert_eq!(x("${FOO}"), "/bar");
        assert_eq!(x("$FOO"), "/bar");
        assert_eq!(x("\\$FOO"), "$FOO");
        assert_eq!(x("\\${FOO}"), "${FOO}");
        assert_eq!(x("${FOO}_baz"), "/bar_baz");
        assert_eq!(x("$FOO_baz"), "", "FOO_baz is another, unset, name");
        assert_eq!(x("$UNSET/x"), "/x");
        assert_eq!(x("cost: 5$"), "cost: 5$");
        assert_eq!(x("a$-b"), "a$-b");
    }

    #[test]
    fn modifiers_follow_the_reference() {
        assert_eq!(x("${FOO:-word}"), "/bar");
        assert_eq!(x("${UNSET:-word}"), "word");
        assert_eq!(x("${EMPTY:-word}"), "word");
        assert_eq!(
            x("${EMPTY-word}"),
            "",
            "set but empty: kept without the colon"
        );
        assert_eq!(x("${UNSET-word}"), "word");
        assert_eq!(x("${FOO:+word}"), "word");
        assert_eq!(x("${EMPTY:+word}"), "");
        assert_eq!(x("${EMPTY+word}"), "word");
        assert_eq!(x("${UNSET+word}"), "");
        // The word may hold variables, and nest.
        assert_eq!(x("${UNSET:-$B}"), "bee");
        assert_eq!(x("${UNSET:-${ALSO:-${B}}}"), "bee");
        assert_eq!(x("${UNSET:-a b}"), "a b");
        assert_eq!(x("${FOO:?}"), "/bar");
        let err = expand_word("${UNSET:?set it with --build-arg}", '\\', &vars).unwrap_err();
        assert_eq!(err, "UNSET: set it with --build-arg");
        let err = expand_word("${EMPTY:?}", '\\', &vars).unwrap_err();
        assert!(err.contains("unset or empty"), "{err}");
        assert_eq!(x("${EMPTY?}"), "");
    }

    #[test]
    fn bad_substitutions_are_errors() {
        for (word, needle) in [
            ("${FOO", "missing '}'"),
            ("${}", "bad substitution"),
            ("${FOO:x}", "bad substitution"),
            ("${FOO#/}", "pre-release"),
            ("${UNSET:-abc", "missing '}'"),
            ("'open", "closing ' quote"),
            ("\"open", "closing \" quote"),
        ] {
            let err = expand_word(word, '\\', &vars).unwrap_err();
            assert!(err.contains(needle), "{word}: {err}");
        }
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(x("\"John Doe\""), "John Doe");
        assert_eq!(x("Rex\\ The\\ Dog"), "Rex The Dog");
        assert_eq!(x("'$FOO'"), "$FOO", "single quotes stop expansion");
        assert_eq!(x("\"$FOO\""), "/bar", "double quotes do not");
        assert_eq!(x("\"say \\\"hi\\\"\""), "say \"hi\"");
        assert_eq!(
            x("\"a\\b\""),
            "a\\b",
            "an escape before other characters stays in double quotes"
        );
        assert_eq!(x("a\\b"), "ab", "outside quotes it escapes anything");
        assert_eq!(x("\"\\$FOO\""), "$FOO");
        assert_eq!(x("'it''s'"), "its");
        assert_eq!(x("pre\"$NAME\"post"), "preJohn Doepost");
        assert_eq!(x("trailing\\"), "trailing");
    }

    #[test]
    fn backtick_escape_leaves_backslashes_alone() {
        // With `# escape=``, Windows paths keep their backslashes.
        let w = |s: &str| expand_word(s, '`', &vars).unwrap();
        assert_eq!(w("c:\\example\\"), "c:\\example\\");
        assert_eq!(w("`$FOO"), "$FOO");
        assert_eq!(w("$FOO\\x"), "/bar\\x");
        assert_eq!(w("\"C:\\Program` Files\""), "C:\\Program` Files");
    }

    #[test]
    fn heredoc_bodies_keep_quotes_and_escapes() {
        let h = |s: &str| expand_heredoc(s, '\\', &vars).unwrap();
        assert_eq!(h("echo \"hello ${FOO}\"\n"), "echo \"hello /bar\"\n");
        assert_eq!(h("price \\$5 and $B\n"), "price \\$5 and bee\n");
        assert_eq!(h("keep 'single $B'\n"), "keep 'single $B'\n");
    }

    #[test]
    fn splitting_keeps_quotes_for_later() {
        assert_eq!(
            split_words(r#"A=1 B="two words" C=a\ b  D='x y'"#, '\\'),
            vec!["A=1", "B=\"two words\"", "C=a\\ b", "D='x y'"]
        );
        assert_eq!(split_words("  ", '\\'), Vec::<String>::new());
        assert_eq!(split_words("a \"open", '\\'), vec!["a", "\"open"]);
        assert_eq!(split_words(r#""a \" b" c"#, '\\'), vec![r#""a \" b""#, "c"]);
        assert_eq!(split_words("x` y z", '`'), vec!["x` y", "z"]);
    }

    #[test]
    fn which_instructions_expand() {
        for k in [
            "ADD",
            "copy",
            "ENV",
            "EXPOSE",
            "FROM",
            "LABEL",
            "STOPSIGNAL",
            "USER",
            "VOLUME",
            "WORKDIR",
        ] {
            assert!(is_expanded(k), "{k}");
        }
        for k in [
            "RUN",
            "CMD",
            "ENTRYPOINT",
            "SHELL",
            "HEALTHCHECK",
            "MAINTAINER",
        ] {
            assert!(!is_expanded(k), "{k}");
        }
    }

    #[test]
    fn env_lookup_takes_the_last_definition() {
        let env = vec!["A=1".to_string(), "AB=2".into(), "A=3".into(), "E=".into()];
        assert_eq!(lookup_in(&env, "A").as_deref(), Some("3"));
        assert_eq!(lookup_in(&env, "AB").as_deref(), Some("2"));
        assert_eq!(lookup_in(&env, "E").as_deref(), Some(""));
        assert_eq!(lookup_in(&env, "B"), None);
    }
}
