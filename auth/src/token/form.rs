//! The token endpoint's input: the `GET /token` query ([`TokenRequest`])
//! and the OAuth2 `POST /token` form ([`TokenForm`]).

use super::{Secret, MAX_QUERY_LEN};
use crate::scope::{Scope, ScopeError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("request too long")]
    TooLong,
    #[error("invalid percent-encoding or UTF-8 in {0:?}")]
    Encoding(String),
    #[error(transparent)]
    Scope(#[from] ScopeError),
    #[error("{0}")]
    Invalid(String),
}

/// Split `a=1&b=2` into decoded pairs (`+` is a space, as in forms).
fn form_pairs(input: &str) -> Result<Vec<(String, String)>, RequestError> {
    if input.len() > MAX_QUERY_LEN {
        return Err(RequestError::TooLong);
    }
    input
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(key)?;
            let value = percent_decode(value).map_err(|_| RequestError::Encoding(key.clone()))?;
            Ok((key, value))
        })
        .collect()
}

/// One form value, strictly: a bad escape or bytes that are not UTF-8 are refused.
fn percent_decode(input: &str) -> Result<String, RequestError> {
    berth_oci::percent::decode_form(input).map_err(|_| RequestError::Encoding(String::new()))
}

/// Names we put in tokens and logs: no control characters, bounded.
fn check_name(what: &str, value: &str) -> Result<(), RequestError> {
    if value.len() > 256 || value.chars().any(char::is_control) {
        return Err(RequestError::Invalid(format!(
            "{what} is too long or contains control characters"
        )));
    }
    Ok(())
}

/// `GET /token?service=...&scope=...&scope=...&account=...&offline_token=true&client_id=...`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<Scope>,
    /// The user the client says it is; must match the Basic credentials
    /// when both are given (distribution's token servers check that too).
    pub account: Option<String>,
    /// The client wants a refresh token too (`docker login`). We do not issue
    /// refresh tokens yet, so clients keep using the password.
    pub offline_token: bool,
    pub client_id: Option<String>,
}

impl TokenRequest {
    /// Parse the query string (without `?`). Repeated `scope` accumulate,
    /// and each may hold several space-separated scopes; for other keys the
    /// first value counts. Unknown keys are ignored.
    pub fn parse_query(query: &str) -> Result<TokenRequest, RequestError> {
        let mut request = TokenRequest::default();
        let mut scope_values = Vec::new();
        for (key, value) in form_pairs(query)? {
            match key.as_str() {
                "scope" => scope_values.push(value),
                "service" if request.service.is_none() => {
                    check_name("service", &value)?;
                    request.service = Some(value);
                }
                "account" if request.account.is_none() => {
                    check_name("account", &value)?;
                    request.account = Some(value);
                }
                "client_id" if request.client_id.is_none() => {
                    check_name("client_id", &value)?;
                    request.client_id = Some(value);
                }
                "offline_token" => request.offline_token = value == "true",
                _ => {}
            }
        }
        request.scopes = crate::scope::parse_scopes(&scope_values)?;
        Ok(request)
    }
}

/// `POST /token` (OAuth2 form, `application/x-www-form-urlencoded`), as
/// clients with an identity token or `--password-stdin` OAuth flows send.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenForm {
    pub grant_type: String,
    pub service: Option<String>,
    pub client_id: Option<String>,
    /// `access_type=offline`: a refresh token is wanted.
    pub offline: bool,
    pub scopes: Vec<Scope>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub refresh_token: Option<Secret>,
}

impl TokenForm {
    pub fn parse(body: &str) -> Result<TokenForm, RequestError> {
        let mut form = TokenForm::default();
        let mut scope_values = Vec::new();
        for (key, value) in form_pairs(body)? {
            match key.as_str() {
                "grant_type" if form.grant_type.is_empty() => form.grant_type = value,
                "service" if form.service.is_none() => {
                    check_name("service", &value)?;
                    form.service = Some(value);
                }
                "client_id" if form.client_id.is_none() => {
                    check_name("client_id", &value)?;
                    form.client_id = Some(value);
                }
                "access_type" => form.offline = value == "offline",
                "scope" => scope_values.push(value),
                "username" if form.username.is_none() => {
                    check_name("username", &value)?;
                    form.username = Some(value);
                }
                "password" if form.password.is_none() => form.password = Some(Secret(value)),
                "refresh_token" if form.refresh_token.is_none() => {
                    form.refresh_token = Some(Secret(value))
                }
                _ => {}
            }
        }
        match form.grant_type.as_str() {
            "password" if form.username.is_some() && form.password.is_some() => {}
            "password" => {
                return Err(RequestError::Invalid(
                    "grant_type=password needs username and password".into(),
                ))
            }
            "refresh_token" if form.refresh_token.is_some() => {}
            "refresh_token" => {
                return Err(RequestError::Invalid(
                    "grant_type=refresh_token needs refresh_token".into(),
                ))
            }
            other => {
                return Err(RequestError::Invalid(format!(
                    "unsupported grant_type {:?}",
                    other.chars().take(32).collect::<String>()
                )))
            }
        }
        form.scopes = crate::scope::parse_scopes(&scope_values)?;
        Ok(form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::to_scope_string;

    #[test]
    fn parses_token_queries() {
        let q = "account=alice&client_id=docker&offline_token=true&service=registry.example.com\
                 &scope=repository%3Asamalba%2Fmy-app%3Apull%2Cpush&scope=repository:b:pull+registry:catalog:*";
        let request = TokenRequest::parse_query(q).expect("parse");
        assert_eq!(request.account.as_deref(), Some("alice"));
        assert_eq!(request.client_id.as_deref(), Some("docker"));
        assert_eq!(request.service.as_deref(), Some("registry.example.com"));
        assert!(request.offline_token);
        assert_eq!(
            to_scope_string(&request.scopes),
            "repository:samalba/my-app:pull,push repository:b:pull registry:catalog:*"
        );
        let request =
            TokenRequest::parse_query("service=a&service=b&offline_token=1&x=y").expect("parse");
        assert_eq!(request.service.as_deref(), Some("a"), "first value counts");
        assert!(!request.offline_token);
        assert_eq!(
            TokenRequest::parse_query("").expect("empty"),
            TokenRequest::default()
        );
        for bad in [
            "scope=repository:../x:pull",
            "scope=%zz",
            "scope=%e9",
            "scope=%",
            "scope=%4",
            "account=al%0Aice",
            "service=%00",
        ] {
            assert!(TokenRequest::parse_query(bad).is_err(), "{bad}");
        }
        let many = (0..40)
            .map(|i| format!("scope=repository:r{i}:pull"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            TokenRequest::parse_query(&many),
            Err(RequestError::Scope(ScopeError::TooMany))
        );
        let huge = format!("scope={}", "a".repeat(MAX_QUERY_LEN));
        assert_eq!(TokenRequest::parse_query(&huge), Err(RequestError::TooLong));
    }

    #[test]
    fn parses_oauth_forms() {
        let form = TokenForm::parse(
            "grant_type=password&username=alice&password=p%40ss%3Aword&service=reg&client_id=podman&access_type=offline&scope=repository%3Aa%3Apull+repository%3Ab%3Apush",
        )
        .expect("form");
        assert_eq!(form.username.as_deref(), Some("alice"));
        assert_eq!(
            form.password.as_ref().map(Secret::expose),
            Some("p@ss:word")
        );
        assert!(form.offline);
        assert_eq!(
            to_scope_string(&form.scopes),
            "repository:a:pull repository:b:push"
        );
        assert!(!format!("{form:?}").contains("p@ss"), "password redacted");
        let form = TokenForm::parse("grant_type=refresh_token&refresh_token=r1&service=reg")
            .expect("form");
        assert_eq!(form.refresh_token.as_ref().map(Secret::expose), Some("r1"));
        assert!(!format!("{form:?}").contains("r1"));
        for bad in [
            "grant_type=password&username=a",
            "grant_type=refresh_token",
            "grant_type=client_credentials",
            "",
            "grant_type=password&username=a&password=b&scope=bad",
        ] {
            assert!(TokenForm::parse(bad).is_err(), "{bad}");
        }
    }
}
