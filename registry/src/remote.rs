//! What a `[[mirror]]` upstream and a `[[sync]]` source have in common: a URL naming a
//! registry (scheme, host, optional path) and the login for it.

use berth_client::credentials::Credentials;

/// A registry URL taken apart.
pub(crate) struct RemoteUrl<'a> {
    /// `HOST[:PORT]` as the client names registries (Docker Hub's API hosts become
    /// `docker.io`, the key its credentials are stored under).
    pub host: String,
    /// The path after the host, without slashes at either end (may be empty).
    pub path: &'a str,
    /// Plain HTTP.
    pub http: bool,
}

/// `http(s)://HOST[:PORT][/PATH]`; the error says what is wrong, without the key.
pub(crate) fn parse_remote_url(url: &str) -> Result<RemoteUrl<'_>, &'static str> {
    let (rest, http) = if let Some(rest) = url.strip_prefix("https://") {
        (rest, false)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (rest, true)
    } else {
        return Err("use an http:// or https:// URL");
    };
    let rest = rest.trim_end_matches('/');
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    if host.is_empty() || host.contains(['?', '#', '@', ' ']) || rest.contains(['?', '#']) {
        return Err("use HOST[:PORT] with no user, query or fragment");
    }
    let host = match host {
        "registry-1.docker.io" | "index.docker.io" => "docker.io",
        other => other,
    };
    Ok(RemoteUrl {
        host: host.to_string(),
        path,
        http,
    })
}

/// `username` and `password` go together; neither means "use the docker config file".
pub(crate) fn basic_credentials(
    at: &str,
    username: &Option<String>,
    password: &Option<String>,
) -> Result<Option<Credentials>, String> {
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials::Basic {
            username: username.clone(),
            password: password.clone(),
        })),
        (None, None) => Ok(None),
        _ => Err(format!(
            "{at}: set both username and password, or neither (then docker_config is used)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_path_and_scheme() {
        let u = parse_remote_url("http://127.0.0.1:5000/team/").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.path, u.http),
            ("127.0.0.1:5000", "team", true)
        );
        let u = parse_remote_url("https://registry-1.docker.io").expect("valid");
        assert_eq!((u.host.as_str(), u.path, u.http), ("docker.io", "", false));
        for bad in [
            "ftp://h",
            "https://",
            "https://u@h",
            "https://h/p?q",
            "h:5000",
        ] {
            assert!(parse_remote_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn username_needs_password() {
        let some = Some("x".to_string());
        assert!(basic_credentials("m", &some, &some)
            .expect("both")
            .is_some());
        assert!(basic_credentials("m", &None, &None)
            .expect("neither")
            .is_none());
        let err = basic_credentials("mirror[0]", &some, &None).expect_err("one");
        assert!(err.starts_with("mirror[0]: set both"), "{err}");
    }
}
