//! Browser sessions of the web UI: random ids kept in this process (a restart
//! or another replica asks the user to log in again), an expiry, and the CSRF
//! token every state-changing form carries.
//!
//! CSRF: every page sets a random `berth_csrf` cookie (HttpOnly, SameSite=Strict)
//! when the browser has none, and every form carries the same value in a
//! hidden field; a POST whose field does not equal the cookie is refused. A
//! logged-in session has its own token, made at login, which its forms carry
//! instead, so a token planted in a cookie before login is worthless after it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

pub const SESSION_COOKIE: &str = "berth_session";
pub const CSRF_COOKIE: &str = "berth_csrf";

/// Sessions kept at most; past this the oldest ones are dropped (a flood of
/// logins cannot grow the table without bound).
const MAX_SESSIONS: usize = 10_000;

/// A logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    expires: Instant,
}

/// Sessions by id.
pub struct Sessions {
    lifetime: Duration,
    table: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new(lifetime: Duration) -> Sessions {
        Sessions {
            lifetime,
            table: Mutex::new(HashMap::new()),
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Start a session for `user`: (session id, its CSRF token).
    pub fn create(&self, user: &str) -> (String, String) {
        self.create_at(user, Instant::now())
    }

    fn create_at(&self, user: &str, now: Instant) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, s| s.expires > now);
            while table.len() >= MAX_SESSIONS {
                let oldest = table
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(k) => table.remove(&k),
                    None => break,
                };
            }
        }
        table.insert(
            id.clone(),
            Session {
                user: user.to_string(),
                csrf: csrf.clone(),
                expires: now + self.lifetime,
            },
        );
        (id, csrf)
    }

    /// The live session with this id; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_at(id, Instant::now())
    }

    fn get_at(&self, id: &str, now: Instant) -> Option<Session> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.get(id) {
            Some(s) if s.expires > now => Some(s.clone()),
            Some(_) => {
                table.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

/// 32 random bytes from the OS, as hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    // The OS generator does not fail on Linux after boot; if it ever did, a
    // predictable token would be worse than refusing, hence the panic.
    getrandom::fill(&mut bytes).expect("the OS random number generator failed");
    hex::encode(bytes)
}

/// Equal tokens, compared in constant time; empty never matches.
pub fn tokens_match(a: &str, b: &str) -> bool {
    !a.is_empty() && a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// A cookie's value from the `Cookie` request headers.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, for the whole UI, Secure
/// under TLS; `max_age` None deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: Option<Duration>, secure: bool) -> String {
    let age = max_age.map_or(0, |d| d.as_secs());
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/ui; Max-Age={age}; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    #[test]
    fn sessions_expire() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let (id, csrf) = sessions.create_at("alice", now);
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        let s = sessions.get_at(&id, now).expect("live");
        assert_eq!(s.user, "alice");
        assert_eq!(s.csrf, csrf);
        assert!(sessions
            .get_at(&id, now + Duration::from_secs(61))
            .is_none());
        // Gone for good once seen expired.
        assert!(sessions.get_at(&id, now).is_none());
        assert!(sessions.get_at("nonsense", now).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let now = Instant::now();
        let (first, _) = sessions.create_at("a", now);
        for i in 1..=MAX_SESSIONS {
            sessions.create_at("a", now + Duration::from_millis(i as u64));
        }
        let len = sessions.table.lock().unwrap().len();
        assert!(len <= MAX_SESSIONS, "{len}");
        // The oldest went first.
        assert!(sessions.get_at(&first, now).is_none());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abc", "abd"));
        assert!(!tokens_match("abc", "ab"));
        assert!(!tokens_match("", ""));
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn cookies_are_read_strictly() {
        let mut h = HeaderMap::new();
        h.insert(
            "cookie",
            HeaderValue::from_static("x=1; berth_session=abc123; berth_csrf=<bad>"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc123"));
        assert_eq!(cookie(&h, CSRF_COOKIE), None);
        assert_eq!(cookie(&h, "y"), None);
        let c = set_cookie(SESSION_COOKIE, "ab", Some(Duration::from_secs(5)), true);
        assert_eq!(
            c,
            "berth_session=ab; Path=/ui; Max-Age=5; HttpOnly; SameSite=Strict; Secure"
        );
    }
}
