//! Accounts from an htpasswd file, as `htpasswd -B` writes it (`user:$2y$05$...`).
//!
//! Only bcrypt is accepted: the other schemes htpasswd can write (`$apr1$` MD5,
//! `{SHA}`, crypt, plain text) are fast hashes an attacker with the file can
//! brute-force, so a line using one is refused with its line number rather than
//! silently ignored (an ignored user would look like a typo'd password).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Highest bcrypt cost accepted. `htpasswd -C` allows up to 17; a higher cost
/// (a typo like 24) would make every login take minutes and the login endpoint
/// a denial-of-service lever, so it is refused when the file is read.
pub const MAX_COST: u32 = 17;
/// bcrypt's own lower bound.
pub const MIN_COST: u32 = 4;
/// A password longer than this is refused before hashing. bcrypt only reads the
/// first 72 bytes, so this bounds work on hostile input and nothing else.
pub const MAX_PASSWORD_LEN: usize = 4096;
/// Longest user name accepted (in the file and at login).
pub const MAX_USER_LEN: usize = 256;

/// A line of the file that cannot be used. `line` counts from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("htpasswd line {line}: {message}")]
pub struct HtpasswdError {
    pub line: usize,
    pub message: String,
}

/// The parsed file: user name → bcrypt hash.
#[derive(Clone)]
pub struct Htpasswd {
    users: HashMap<String, String>,
    /// A bcrypt hash of a random password at the file's usual cost. Unknown
    /// users are checked against it so a failed login takes as long for a
    /// user that does not exist as for one that does.
    dummy: String,
    /// bcrypt verifications run so far (see [`Htpasswd::bcrypt_runs`]).
    bcrypt_runs: Arc<AtomicU64>,
}

// The hashes are secrets (offline brute-force material): never print them.
impl fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("Htpasswd")
            .field("users", &users)
            .field("hashes", &"<redacted>")
            .finish()
    }
}

impl Htpasswd {
    /// Parse the text of an htpasswd file. Blank lines and `#` comments are
    /// skipped; every other line must be `user:bcrypt-hash`.
    pub fn parse(text: &str) -> Result<Htpasswd, HtpasswdError> {
        let mut users = HashMap::new();
        let mut costs: HashMap<u32, usize> = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let err = |message: String| HtpasswdError { line, message };
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let (user, hash) = entry
                .split_once(':')
                .ok_or_else(|| err("expected user:hash (no ':' found)".into()))?;
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            if user.len() > MAX_USER_LEN || user.chars().any(char::is_control) {
                return Err(err(
                    "user name too long or contains control characters".into()
                ));
            }
            let cost = bcrypt_cost(hash).map_err(|why| {
                // Name the user and the scheme, never the hash itself.
                err(format!("user {user:?}: {why}"))
            })?;
            // htpasswd never writes a user twice; Apache would use the first
            // line and nginx the last, so a duplicate is ambiguous: refuse it.
            if users.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(err(format!("user {user:?} appears more than once")));
            }
            *costs.entry(cost).or_default() += 1;
        }
        // The dummy uses the most common cost so an unknown user takes as long
        // as a typical known one (ties go to the higher cost: slower is safer).
        let cost = costs
            .into_iter()
            .max_by_key(|&(cost, count)| (count, cost))
            .map(|(cost, _)| cost)
            .unwrap_or(5);
        let dummy = dummy_hash(cost);
        Ok(Htpasswd {
            users,
            dummy,
            bcrypt_runs: Arc::default(),
        })
    }

    /// Parse new file contents and, only if they are valid, replace ours. A
    /// half-written or broken file keeps the old accounts (so an edit in
    /// progress never locks everyone out) and returns why it was refused.
    /// The bcrypt count goes on across the reload.
    pub fn reload(&mut self, text: &str) -> Result<(), HtpasswdError> {
        let mut new = Htpasswd::parse(text)?;
        new.share_bcrypt_count(self);
        *self = new;
        Ok(())
    }

    /// bcrypt verifications [`Htpasswd::verify`] has run, on this file and on
    /// those it shares its count with: one per check, whether or not the
    /// user exists, none for input refused before hashing. Tests count these
    /// instead of timing checks (timings flake on a busy machine, counts do
    /// not); it costs one atomic add beside a bcrypt that takes milliseconds.
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    /// Count this file's bcrypt runs together with `previous`'s, so the count
    /// of a server's accounts goes on when the file is re-read.
    pub fn share_bcrypt_count(&mut self, previous: &Htpasswd) {
        self.bcrypt_runs = previous.bcrypt_runs.clone();
    }

    /// Check a password. Always runs one bcrypt verification, whether or not
    /// the user exists, and bcrypt compares its output in constant time.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        if password.len() > MAX_PASSWORD_LEN || user.len() > MAX_USER_LEN {
            return false;
        }
        match self.users.get(user) {
            Some(hash) => self.bcrypt_verify(password, hash),
            None => {
                // Spend the same time on a user that does not exist.
                let _ = self.bcrypt_verify(password, &self.dummy);
                false
            }
        }
    }

    /// The one place bcrypt runs, counted.
    fn bcrypt_verify(&self, password: &str, hash: &str) -> bool {
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        bcrypt::verify(password, hash).unwrap_or(false)
    }

    pub fn contains(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// User names, sorted (for config checks and logs).
    pub fn users(&self) -> Vec<&str> {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        users
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Validate a bcrypt hash (`$2y$NN$` + 22 salt + 31 hash characters) and
/// return its cost, or say which scheme it is if it is not bcrypt.
fn bcrypt_cost(hash: &str) -> Result<u32, String> {
    let scheme = if hash.starts_with("$apr1$") {
        Some("Apache MD5 ($apr1$)")
    } else if hash.starts_with("{SHA}") {
        Some("SHA-1 ({SHA})")
    } else if hash.starts_with("$1$") {
        Some("MD5-crypt ($1$)")
    } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
        Some("SHA-crypt ($5$/$6$)")
    } else if hash.starts_with('$') {
        None
    } else {
        Some("crypt or plain text")
    };
    if let Some(scheme) = scheme {
        return Err(format!(
            "{scheme} is not accepted: only bcrypt is; recreate the entry with `htpasswd -B`"
        ));
    }
    let rest = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .find_map(|prefix| hash.strip_prefix(prefix))
        .ok_or("unknown hash scheme: only bcrypt ($2y$, $2b$, $2a$) is accepted")?;
    let (cost, salted) = rest
        .split_once('$')
        .ok_or("malformed bcrypt hash (no cost)")?;
    if cost.len() != 2 || !cost.bytes().all(|b| b.is_ascii_digit()) {
        return Err("malformed bcrypt hash (cost is not two digits)".into());
    }
    let cost: u32 = cost
        .parse()
        .map_err(|_| "malformed bcrypt hash (cost)".to_string())?;
    if !(MIN_COST..=MAX_COST).contains(&cost) {
        return Err(format!(
            "bcrypt cost {cost} is outside {MIN_COST}..={MAX_COST} (a higher cost makes every login a denial of service)"
        ));
    }
    let bcrypt_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'.' || b == b'/';
    if salted.len() != 53 || !salted.bytes().all(bcrypt_b64) {
        return Err("malformed bcrypt hash (expected 53 characters of salt and hash)".into());
    }
    Ok(cost)
}

/// A hash of a password nobody knows, at the given cost.
fn dummy_hash(cost: u32) -> String {
    let mut secret = [0u8; 16];
    // A fixed password would do too (nobody can log in as a user that does
    // not exist), but a random one keeps the dummy from ever matching.
    let _ = rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut secret);
    let password = crate::hex(&secret);
    bcrypt::hash(password, cost).unwrap_or_else(|_| {
        // Unreachable with cost in MIN_COST..=MAX_COST; a fixed valid hash
        // keeps verify() spending time even so.
        "$2y$05$......................0000000000000000000000000000000".to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cost 4 keeps the tests fast; the format is what `htpasswd -B -C 4` writes.
    fn entry(user: &str, password: &str) -> String {
        let hash = bcrypt::hash(password, 4).expect("hash");
        // bcrypt writes $2b$; htpasswd writes $2y$: the same algorithm.
        format!("{user}:{}", hash.replacen("$2b$", "$2y$", 1))
    }

    #[test]
    fn verifies_bcrypt_users() {
        let text = format!(
            "# team accounts\n\n{}\n  {}  \n",
            entry("alice", "wonderland"),
            entry("bob", "p:ss word")
        );
        let file = Htpasswd::parse(&text).expect("parse");
        assert_eq!(file.users(), vec!["alice", "bob"]);
        assert!(file.verify("alice", "wonderland"));
        assert!(!file.verify("alice", "Wonderland"));
        assert!(!file.verify("alice", ""));
        assert!(file.verify("bob", "p:ss word"), "':' allowed in passwords");
        assert!(!file.verify("carol", "wonderland"));
        assert!(!file.verify("", ""));
        assert!(file.contains("alice") && !file.contains("carol"));
    }

    #[test]
    fn accepts_2a_2b_2y() {
        let hash = bcrypt::hash("pw", 4).expect("hash");
        for prefix in ["$2a$", "$2b$", "$2y$"] {
            let text = format!("u:{}", hash.replacen("$2b$", prefix, 1));
            let file = Htpasswd::parse(&text).expect(prefix);
            assert!(file.verify("u", "pw"), "{prefix}");
        }
    }

    #[test]
    fn real_htpasswd_output() {
        // Written by Apache's `htpasswd -nbB -C 5 testuser testpassword`.
        let text = "testuser:$2y$05$THZtbTUmum4ASBxgAg0Aq.01sUnXB2JsFebAuOJS207mFwiPtQJwK\n";
        let file = Htpasswd::parse(text).expect("parse");
        assert!(file.verify("testuser", "testpassword"));
        assert!(!file.verify("testuser", "testpassword2"));
    }

    #[test]
    fn refuses_other_schemes_naming_the_line() {
        let good = entry("alice", "x");
        for (bad, what) in [
            ("bob:$apr1$abc$def", "$apr1$"),
            ("bob:{SHA}qUqP5cyxm6YcTAhz05Hph5gvu9M=", "{SHA}"),
            ("bob:abJnggxhB/yWI", "plain"),
            ("bob:$6$salt$hash", "SHA-crypt"),
            ("bob:$1$salt$hash", "MD5-crypt"),
            ("bob:$3$x", "unknown hash scheme"),
        ] {
            let err = Htpasswd::parse(&format!("{good}\n# c\n{bad}\n")).expect_err(bad);
            assert_eq!(err.line, 3, "{bad}");
            assert!(err.message.contains("bob"), "{err}");
            assert!(err.to_string().contains(what), "{err}");
            assert!(err.to_string().contains("htpasswd line 3"), "{err}");
            // The refused hash itself is never echoed back.
            let hash = bad.split_once(':').map(|(_, h)| h).unwrap_or_default();
            assert!(!err.to_string().contains(hash), "{err}");
        }
    }

    #[test]
    fn refuses_malformed_lines() {
        let salted = "0AdBk8jIGZpvNvkXI6hG6.j8tiuk7zf7yrv/8N7lJuZ6cWUJHsXOW";
        for bad in [
            "no-colon-here".to_string(),
            format!(":$2y$05${salted}"),
            format!("u:$2y$5${salted}"),
            format!("u:$2y$ab${salted}"),
            format!("u:$2y$31${salted}"),
            format!("u:$2y$03${salted}"),
            "u:$2y$05$short".to_string(),
            format!("u:$2y$05${}!", &salted[..52]),
            "u:$2y$05".to_string(),
            format!("u\u{7}:$2y$05${salted}"),
            format!("{}:$2y$05${salted}", "u".repeat(MAX_USER_LEN + 1)),
        ] {
            let err = Htpasswd::parse(&bad).expect_err(&bad);
            assert_eq!(err.line, 1, "{bad}");
        }
        let dup = format!("u:$2y$05${salted}\nu:$2y$05${salted}");
        let err = Htpasswd::parse(&dup).expect_err("duplicate");
        assert_eq!(err.line, 2);
        assert!(err.message.contains("more than once"));
    }

    #[test]
    fn empty_file_has_no_users() {
        let file = Htpasswd::parse("\n# nobody yet\n").expect("parse");
        assert!(file.is_empty());
        assert!(!file.verify("root", ""));
    }

    #[test]
    fn reload_keeps_old_accounts_on_error() {
        let mut file = Htpasswd::parse(&entry("alice", "a")).expect("parse");
        let err = file.reload("alice:$apr1$x$y").expect_err("md5");
        assert_eq!(err.line, 1);
        assert!(file.verify("alice", "a"), "old accounts kept");
        file.reload(&entry("bob", "b")).expect("reload");
        assert!(!file.verify("alice", "a"), "alice removed");
        assert!(file.verify("bob", "b"));
    }

    #[test]
    fn hostile_inputs_fail_fast() {
        let file = Htpasswd::parse(&entry("alice", "a")).expect("parse");
        let huge = "a".repeat(MAX_PASSWORD_LEN + 1);
        assert!(!file.verify("alice", &huge));
        assert!(!file.verify(&huge, "a"));
        assert!(!file.verify(&"u".repeat(MAX_USER_LEN + 1), "a"));
        assert_eq!(file.bcrypt_runs(), 0, "no bcrypt on oversize input");
        // The longest accepted input is still checked, once.
        assert!(!file.verify("alice", &huge[1..]));
        assert_eq!(file.bcrypt_runs(), 1);
        assert!(!file.verify("alice\0", "a"));
        assert_eq!(file.bcrypt_runs(), 2, "an unknown name costs a bcrypt too");
    }

    #[test]
    fn every_check_costs_one_bcrypt_at_the_files_cost() {
        // An unknown user must cost what a known one does: one verification
        // (counted, not timed) against a dummy hash at the accounts' cost.
        let file = Htpasswd::parse(&format!(
            "{}\n{}",
            entry("alice", "pw"),
            entry("bob", "pw2")
        ))
        .expect("parse");
        assert_eq!(
            bcrypt_cost(&file.dummy),
            Ok(4),
            "dummy at the accounts' cost"
        );
        let mut runs = 0;
        for (user, password, ok) in [
            ("nobody", "pw", false),
            ("alice", "wrong", false),
            ("alice", "pw", true),
            ("", "", false),
            ("bob", "pw2", true),
        ] {
            assert_eq!(file.verify(user, password), ok, "{user}/{password}");
            runs += 1;
            assert_eq!(file.bcrypt_runs(), runs, "{user}/{password}: one bcrypt");
        }
        // The dummy takes the most common cost, ties going to the higher one.
        let at = |cost: u32, user: &str| {
            let hash = bcrypt::hash("pw", cost).expect("hash");
            format!("{user}:{hash}\n")
        };
        let mixed = Htpasswd::parse(&(at(4, "a") + &at(6, "b") + &at(6, "c"))).expect("parse");
        assert_eq!(bcrypt_cost(&mixed.dummy), Ok(6));
        let tie = Htpasswd::parse(&(at(4, "a") + &at(5, "b"))).expect("parse");
        assert_eq!(bcrypt_cost(&tie.dummy), Ok(5));
        let empty = Htpasswd::parse("").expect("parse");
        assert!(!empty.verify("root", "x"));
        assert_eq!(
            empty.bcrypt_runs(),
            1,
            "an empty file still spends a bcrypt"
        );
    }

    #[test]
    fn the_count_goes_on_across_reloads_and_shares() {
        let mut file = Htpasswd::parse(&entry("alice", "a")).expect("parse");
        assert!(file.verify("alice", "a"));
        file.reload(&entry("bob", "b")).expect("reload");
        assert!(file.verify("bob", "b"));
        assert_eq!(file.bcrypt_runs(), 2);
        let mut next = Htpasswd::parse(&entry("carol", "c")).expect("parse");
        assert_eq!(next.bcrypt_runs(), 0, "a new file counts from zero");
        next.share_bcrypt_count(&file);
        assert!(!next.verify("carol", "x"));
        assert_eq!((file.bcrypt_runs(), next.bcrypt_runs()), (3, 3));
    }

    #[test]
    fn debug_never_shows_hashes() {
        let text = entry("alice", "a");
        let file = Htpasswd::parse(&text).expect("parse");
        let shown = format!("{file:?}");
        assert!(shown.contains("alice"));
        assert!(!shown.contains("$2"), "{shown}");
    }
}
