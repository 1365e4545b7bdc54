//! Glob matching shared by access rules, retention and `berth sync` tag filters.

/// `*` matches any run of characters (no `/`: segments are split already).
/// Used for repository names and tags, which cannot contain `?`, so `?` is literal here.
pub fn glob_match(glob: &str, text: &str) -> bool {
    match_with(glob.as_bytes(), text.as_bytes(), None)
}

/// Shell-style glob for host and group names (Ansible's `--limit`): `*` any run of
/// characters, `?` exactly one character.
pub fn shell_glob_match(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let text: Vec<char> = text.chars().collect();
    match_with(&glob, &text, Some('?'))
}

/// Classic backtracking on the last star: O(len(glob) * len(text)) at worst, never
/// exponential however many stars a pattern has.
fn match_with<T: Copy + PartialEq + From<u8>>(g: &[T], t: &[T], any_one: Option<T>) -> bool {
    let star = T::from(b'*');
    let (mut gi, mut ti) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while ti < t.len() {
        if gi < g.len() && g[gi] == star {
            backtrack = Some((gi, ti));
            gi += 1;
        } else if gi < g.len() && (g[gi] == t[ti] || Some(g[gi]) == any_one) {
            gi += 1;
            ti += 1;
        } else if let Some((sg, st)) = backtrack {
            gi = sg + 1;
            ti = st + 1;
            backtrack = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    g[gi..].iter().all(|&c| c == star)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_literals() {
        assert!(glob_match("team-*", "team-a"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b", "aXc"));
        assert!(
            !glob_match("a?c", "abc"),
            "`?` is literal for names and tags"
        );
    }

    #[test]
    fn shell_globs_take_question_marks_per_character() {
        assert!(shell_glob_match("web?", "web1"));
        assert!(!shell_glob_match("web?", "web12"));
        assert!(
            shell_glob_match("h?st", "hést"),
            "one character, not one byte"
        );
        assert!(shell_glob_match("**a", "bba"));
    }

    #[test]
    fn many_stars_stay_fast() {
        let text = "a".repeat(10_000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &text));
        assert!(!shell_glob_match(&format!("{}b", "*a".repeat(50)), &text));
    }
}
