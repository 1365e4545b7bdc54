//! `[[notifications]]`: webhook endpoints, which actions and repositories each
//! wants, compiled at start so a bad table fails there, naming its key.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use berth_auth::acl::Pattern;
use serde::Deserialize;

use super::Action;

/// How long one delivery may take when `timeout` is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One `[[notifications]]` table as written in the config file.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NotificationConfig {
    /// Names the endpoint in logs and in the outbox (what it still has to
    /// receive); default: the URL without password and query. Renaming it
    /// drops what is queued for it.
    pub name: Option<String>,
    /// `http://` or `https://` URL that receives each event as a POST.
    pub url: String,
    /// Sent with every delivery (e.g. `Authorization`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// e.g. "5s" (the default): one delivery attempt, connect to answer.
    pub timeout: Option<String>,
    /// Among push, pull, delete, mount; default push, delete and mount
    /// (pulls are many: ask for them).
    pub actions: Option<Vec<String>>,
    /// Repository patterns as in `[access]` rules; default every repository.
    #[serde(default)]
    pub repositories: Vec<String>,
}

/// One compiled endpoint.
#[derive(Debug)]
pub struct Endpoint {
    /// Its name in the outbox and logs: `name`, else the URL.
    pub key: String,
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub timeout: Duration,
    actions: Vec<Action>,
    /// Empty: every repository.
    repositories: Vec<Pattern>,
}

impl Endpoint {
    pub fn wants(&self, action: Action, repository: &str) -> bool {
        self.actions.contains(&action)
            && (self.repositories.is_empty()
                || self.repositories.iter().any(|p| p.matches(repository)))
    }
}

/// Every configured endpoint; empty when there are none.
#[derive(Debug, Default)]
pub struct Notifications {
    pub(super) endpoints: Vec<Endpoint>,
}

impl Notifications {
    /// Compile the tables; errors name the table and key (`notifications[1].url`).
    pub fn from_config(configs: &[NotificationConfig]) -> Result<Notifications, String> {
        let mut endpoints: Vec<Endpoint> = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            let endpoint = compile(&format!("notifications[{i}]"), config)?;
            if let Some(j) = endpoints.iter().position(|e| e.key == endpoint.key) {
                return Err(format!(
                    "notifications[{i}] has the same name as notifications[{j}] ({:?}): give each a distinct name",
                    endpoint.key
                ));
            }
            endpoints.push(endpoint);
        }
        Ok(Notifications { endpoints })
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The keys of the endpoints that want this event.
    pub fn matching(&self, action: Action, repository: &str) -> Vec<String> {
        self.endpoints
            .iter()
            .filter(|e| e.wants(action, repository))
            .map(|e| e.key.clone())
            .collect()
    }

    pub fn endpoint(&self, key: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.key == key)
    }

    /// The longest a delivery of one event to every endpoint may take.
    pub fn total_timeout(&self) -> Duration {
        self.endpoints.iter().map(|e| e.timeout).sum()
    }
}

fn compile(at: &str, config: &NotificationConfig) -> Result<Endpoint, String> {
    let url = reqwest::Url::parse(&config.url)
        .map_err(|e| format!("{at}.url: {:?} is not a URL: {e}", config.url))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{at}.url: {:?} must be an http:// or https:// URL with a host",
            config.url
        ));
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &config.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{at}.headers: {name:?} is not a valid header name"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("{at}.headers.{name}: the value is not a valid header value"))?;
        headers.insert(name, value);
    }
    let timeout = match &config.timeout {
        Some(text) => humantime::parse_duration(text)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                format!("{at}.timeout: {text:?} is not a duration above zero (use e.g. \"5s\")")
            })?,
        None => DEFAULT_TIMEOUT,
    };
    let actions = match &config.actions {
        None => vec![Action::Push, Action::Delete, Action::Mount],
        Some(list) if list.is_empty() => {
            return Err(format!(
                "{at}.actions is empty: name at least one of push, pull, delete, mount"
            ))
        }
        Some(list) => list
            .iter()
            .map(|a| {
                Action::parse(a).ok_or_else(|| {
                    format!("{at}.actions: {a:?} is not one of push, pull, delete, mount")
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    let repositories = config
        .repositories
        .iter()
        .map(|p| Pattern::parse(p).map_err(|e| format!("{at}.repositories: {p:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let key = match &config.name {
        Some(name) if name.trim().is_empty() => return Err(format!("{at}.name is empty")),
        Some(name) => name.clone(),
        // The URL without a password or query, which may hold secrets: the key is logged
        // and stored in the outbox.
        None => {
            let mut shown = url.clone();
            let _ = shown.set_password(None);
            shown.set_query(None);
            shown.to_string()
        }
    };
    Ok(Endpoint {
        key,
        url,
        headers,
        timeout,
        actions,
        repositories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(toml_text: &str) -> Result<Notifications, String> {
        #[derive(Deserialize)]
        struct File {
            notifications: Vec<NotificationConfig>,
        }
        let file: File = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        Notifications::from_config(&file.notifications)
    }

    #[test]
    fn endpoints_get_the_actions_and_repositories_they_ask_for() {
        let n = table(
            r#"
            [[notifications]]
            url = "http://127.0.0.1:9/all"
            [[notifications]]
            name = "prod-pulls"
            url = "https://hooks.example/x"
            actions = ["pull", "push"]
            repositories = ["prod/**", "!nothing-here"]
            "#,
        );
        // "!" is not a repository pattern: refused, naming the key.
        let e = n.expect_err("! is not a pattern");
        assert!(e.contains("notifications[1].repositories"), "{e}");
        let n = table(
            r#"
            [[notifications]]
            url = "http://127.0.0.1:9/all"
            [[notifications]]
            name = "prod-pulls"
            url = "https://hooks.example/x"
            actions = ["pull", "push"]
            repositories = ["prod/**"]
            "#,
        )
        .expect("valid");
        assert_eq!(
            n.matching(Action::Push, "prod/app"),
            ["http://127.0.0.1:9/all", "prod-pulls"]
        );
        assert_eq!(n.matching(Action::Pull, "prod/app"), ["prod-pulls"]);
        assert_eq!(n.matching(Action::Pull, "dev/app"), Vec::<String>::new());
        assert_eq!(
            n.matching(Action::Delete, "prod/app"),
            ["http://127.0.0.1:9/all"]
        );
        assert_eq!(n.matching(Action::Mount, "x"), ["http://127.0.0.1:9/all"]);
        assert_eq!(
            n.endpoint("prod-pulls").map(|e| e.timeout),
            Some(DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn a_default_name_shows_no_secret_of_the_url() {
        let n = table("[[notifications]]\nurl = \"https://hook:pw@h.example/x?token=t\"")
            .expect("valid");
        let keys = n.matching(Action::Push, "a");
        assert_eq!(keys, ["https://hook@h.example/x"]);
        let url = &n.endpoint(&keys[0]).expect("endpoint").url;
        assert_eq!(url.query(), Some("token=t"), "still sent to the whole URL");
    }

    #[test]
    fn bad_tables_fail_naming_the_key() {
        let cases = [
            (r#"url = "ftp://127.0.0.1/x""#, "notifications[0].url"),
            (r#"url = "not a url""#, "notifications[0].url"),
            (r#"url = "file:///etc/passwd""#, "notifications[0].url"),
            (
                "url = \"http://h/\"\nactions = [\"push\", \"tag\"]",
                "notifications[0].actions",
            ),
            (
                "url = \"http://h/\"\nactions = []",
                "notifications[0].actions",
            ),
            (
                "url = \"http://h/\"\ntimeout = \"soon\"",
                "notifications[0].timeout",
            ),
            (
                "url = \"http://h/\"\ntimeout = \"0s\"",
                "notifications[0].timeout",
            ),
            (
                "url = \"http://h/\"\nrepositories = [\"a//b\"]",
                "notifications[0].repositories",
            ),
            (
                "url = \"http://h/\"\nheaders = { \"bad name\" = \"x\" }",
                "notifications[0].headers",
            ),
            (
                "url = \"http://h/\"\nheaders = { X-A = \"line\\nbreak\" }",
                "notifications[0].headers",
            ),
            (
                "url = \"http://h/\"\nsecret = \"x\"",
                "unknown field `secret`",
            ),
        ];
        for (body, key) in cases {
            let e = table(&format!("[[notifications]]\n{body}")).expect_err(body);
            assert!(e.contains(key), "{body}: {e}");
        }
        let twice =
            "[[notifications]]\nurl = \"http://h/\"\n[[notifications]]\nurl = \"http://h/\"";
        let e = table(twice).expect_err("same endpoint twice");
        assert!(
            e.contains("notifications[1]") && e.contains("distinct name"),
            "{e}"
        );
    }
}
