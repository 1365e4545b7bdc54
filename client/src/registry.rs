//! HTTP access to one registry: scheme discovery (HTTPS, or plain HTTP on
//! loopback and registries marked insecure, as Docker does), auth (anonymous,
//! Basic, Bearer tokens cached per scope), retries with backoff, and the
//! distribution-spec operations the copy engine and the CLI need.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use berth_oci::{percent, ByteStream, Digest};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::header::{
    HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::OnceCell;

use crate::auth::{Challenge, TokenCache, TokenResponse};
use crate::credentials::{Credentials, DockerConfig};
use crate::error::{Error, IoContext, Result};
use crate::image::{media, BlobInfo, BlobOutcome, BlobProgress, ImageSource, Manifest};
use crate::reference::{is_loopback_host, DOCKER_HUB};

/// How the client behaves; shared by every registry it talks to.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Registries (`host[:port]`) to reach over plain HTTP or unverified
    /// HTTPS. Loopback addresses are always allowed plain HTTP, as in Docker.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) trusted for every registry, on top of the
    /// system roots and Docker's `/etc/docker/certs.d/HOST/*.crt`.
    pub ca_file: Option<PathBuf>,
    /// Docker's per-registry certificate folders (`ca.crt`, `client.cert`, `client.key`).
    pub certs_dir: PathBuf,
    /// `~/.docker/config.json` (or `$DOCKER_CONFIG`).
    pub docker_config: PathBuf,
    /// Credentials that win over the config file (`--creds`), for every registry.
    pub credentials: Option<Credentials>,
    /// Blobs up to this size go in one request; larger ones in chunks of this size.
    pub chunk_size: u64,
    /// Attempts for a request that failed with a connection error or a 5xx.
    pub attempts: u32,
    /// First pause between attempts; doubles each time.
    pub backoff: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            insecure_registries: Vec::new(),
            ca_file: None,
            certs_dir: PathBuf::from("/etc/docker/certs.d"),
            docker_config: DockerConfig::default_path(),
            credentials: None,
            chunk_size: 64 << 20,
            attempts: 5,
            backoff: Duration::from_millis(250),
        }
    }
}

/// Hands out one [`Registry`] per host, so connections and tokens are shared.
pub struct Client {
    config: Arc<ClientConfig>,
    registries: Mutex<HashMap<String, Arc<Registry>>>,
}

impl Client {
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config: Arc::new(config),
            registries: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The registry named in references as `registry` (e.g. `docker.io`, `localhost:5000`).
    pub fn registry(&self, registry: &str) -> Result<Arc<Registry>> {
        let mut map = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = map.get(registry) {
            return Ok(r.clone());
        }
        let r = Arc::new(Registry::new(registry, self.config.clone())?);
        map.insert(registry.to_string(), r.clone());
        Ok(r)
    }
}

/// One registry host.
pub struct Registry {
    name: String,
    api_host: String,
    config: Arc<ClientConfig>,
    http: reqwest::Client,
    /// Whether plain HTTP may be tried (loopback or marked insecure).
    allow_http: bool,
    base: OnceCell<String>,
    credentials: Mutex<Option<Credentials>>,
    credentials_loaded: Mutex<bool>,
    challenge: Mutex<Option<Challenge>>,
    tokens: Mutex<TokenCache>,
    token_fetch: tokio::sync::Mutex<()>,
}

/// What a mount attempt gave.
pub enum MountResult {
    Mounted,
    /// The registry opened an upload session instead (the blob is not there to mount).
    Upload(String),
}

impl Registry {
    fn new(name: &str, config: Arc<ClientConfig>) -> Result<Registry> {
        let api_host = if name == DOCKER_HUB {
            crate::reference::DOCKER_HUB_API.to_string()
        } else {
            name.to_string()
        };
        let insecure = config.insecure_registries.iter().any(|r| r == name);
        let allow_http = insecure || is_loopback_host(name);
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // A registry that stops sending for this long is gone; a slow
            // but moving transfer is never cut off.
            .read_timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(16);
        let mut certs = Vec::new();
        if let Some(ca) = &config.ca_file {
            certs.extend(read_certs(ca)?);
        }
        let host_dir = config.certs_dir.join(name);
        if let Ok(entries) = std::fs::read_dir(&host_dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|e| e == "crt") {
                    certs.extend(read_certs(&path)?);
                }
            }
            let (cert, key) = (host_dir.join("client.cert"), host_dir.join("client.key"));
            if cert.exists() && key.exists() {
                let mut pem = std::fs::read(&cert).ctx(|| format!("reading {}", cert.display()))?;
                pem.extend(std::fs::read(&key).ctx(|| format!("reading {}", key.display()))?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    Error::malformed(format!("client certificate in {}", host_dir.display()), e)
                })?;
                builder = builder.identity(identity);
            }
        }
        if !certs.is_empty() {
            builder = builder.tls_certs_merge(certs);
        }
        if insecure {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder.build().map_err(|e| Error::Tls {
            registry: name.to_string(),
            detail: error_chain(&e),
        })?;
        Ok(Registry {
            name: name.to_string(),
            api_host,
            config,
            http,
            allow_http,
            base: OnceCell::new(),
            credentials: Mutex::new(None),
            credentials_loaded: Mutex::new(false),
            challenge: Mutex::new(None),
            tokens: Mutex::new(TokenCache::default()),
            token_fetch: tokio::sync::Mutex::new(()),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Use these credentials instead of the configured ones (for `berth login`).
    pub fn set_credentials(&self, credentials: Option<Credentials>) {
        *lock(&self.credentials) = credentials;
        *lock(&self.credentials_loaded) = true;
        lock(&self.tokens).clear();
    }

    fn credentials(&self) -> Result<Option<Credentials>> {
        let mut loaded = lock(&self.credentials_loaded);
        if !*loaded {
            let creds = match &self.config.credentials {
                Some(c) => Some(c.clone()),
                None => {
                    DockerConfig::load(&self.config.docker_config)?.credentials_for(&self.name)?
                }
            };
            *lock(&self.credentials) = creds;
            *loaded = true;
        }
        Ok(lock(&self.credentials).clone())
    }

    /// `scheme://host` of the API, found once by `GET /v2/` (which also tells
    /// how to authenticate). HTTPS only, except: a registry marked insecure
    /// gets HTTPS then plain HTTP (as Docker does), and a loopback registry
    /// plain HTTP then HTTPS — loopback traffic never leaves the machine, and
    /// trying TLS first would cost every command a handshake attempt.
    pub async fn base(&self) -> Result<&str> {
        self.base
            .get_or_try_init(|| async {
                let https = format!("https://{}", self.api_host);
                let http = format!("http://{}", self.api_host);
                let order = if is_loopback_host(&self.name) {
                    vec![http, https]
                } else if self.allow_http {
                    vec![https, http]
                } else {
                    vec![https]
                };
                let mut first_error = None;
                let count = order.len();
                for (i, base) in order.into_iter().enumerate() {
                    // Only the last scheme gets retries: a refused or garbled
                    // first try is the answer that moves on to the next scheme.
                    let attempts = if i + 1 == count {
                        self.config.attempts
                    } else {
                        1
                    };
                    match self.ping(&base, attempts).await {
                        Ok(()) => return Ok(base),
                        // A TLS failure says most about what to fix (a CA to
                        // trust), so it wins over the other scheme's error.
                        Err(e @ Error::Tls { .. }) => first_error = Some(e),
                        Err(
                            e @ (Error::Connect { .. }
                            | Error::Registry {
                                status: 0 | 400, ..
                            }),
                        ) => {
                            if !matches!(first_error, Some(Error::Tls { .. })) {
                                first_error.get_or_insert(e);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
                Err(first_error.unwrap_or_else(|| Error::Connect {
                    registry: self.name.clone(),
                    detail: "no scheme to try".into(),
                }))
            })
            .await
            .map(String::as_str)
    }

    async fn ping(&self, base: &str, attempts: u32) -> Result<()> {
        let url = format!("{base}/v2/");
        let resp = self
            .with_retries_n("GET /v2/", attempts, || self.http.get(&url).send())
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED => {
                self.learn_challenge(resp.headers());
                Ok(())
            }
            // Some registries answer /v2/ with 404 for anonymous clients but
            // serve the API all the same; let the real request tell.
            StatusCode::NOT_FOUND => Ok(()),
            s => Err(self.status_error("GET /v2/", s, resp).await),
        }
    }

    fn learn_challenge(&self, headers: &HeaderMap) {
        let challenges: Vec<Challenge> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(Challenge::parse)
            .collect();
        // Prefer Bearer when a registry offers both.
        let best = challenges
            .iter()
            .find(|c| matches!(c, Challenge::Bearer { .. }))
            .or(challenges.first())
            .cloned();
        if best.is_some() {
            *lock(&self.challenge) = best;
        }
    }

    /// The Authorization header for a request needing `scopes`, if the
    /// registry asked for auth.
    async fn authorization(&self, scopes: &[String]) -> Result<Option<HeaderValue>> {
        let challenge = lock(&self.challenge).clone();
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => match self.credentials()? {
                Some(Credentials::Basic { username, password }) => {
                    Ok(Some(basic_header(&username, &password)))
                }
                _ => Err(Error::Unauthorized {
                    registry: self.name.clone(),
                    detail: "it asks for a user name and password and none are stored".into(),
                }),
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                let key = TokenCache::key(scopes);
                if let Some(token) = lock(&self.tokens).get(&key) {
                    return Ok(Some(bearer_header(&token)));
                }
                // Parallel blob uploads all miss the cache at first: one asks
                // the token service, the others wait for its answer.
                let _fetching = self.token_fetch.lock().await;
                if let Some(token) = lock(&self.tokens).get(&key) {
                    return Ok(Some(bearer_header(&token)));
                }
                let (token, lifetime) =
                    self.fetch_token(&realm, service.as_deref(), scopes).await?;
                let header = bearer_header(&token);
                lock(&self.tokens).put(key, token, lifetime);
                Ok(Some(header))
            }
        }
    }

    /// Ask the token service for a token (Docker's token spec; OAuth2
    /// refresh-token grant when the stored credential is an identity token).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, Duration)> {
        let creds = self.credentials()?;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let action = format!("token request to {realm}");
        let resp = match &creds {
            Some(Credentials::IdentityToken(refresh)) => {
                let scope = scopes.join(" ");
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", refresh.as_str()),
                    ("client_id", "berth"),
                    ("scope", scope.as_str()),
                ];
                if let Some(s) = service {
                    form.push(("service", s));
                }
                let body = form_encode(&form);
                self.with_retries(&action, || {
                    self.http
                        .post(realm)
                        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                        .body(body.clone())
                        .send()
                })
                .await?
            }
            _ => {
                self.with_retries(&action, || {
                    let mut req = self.http.get(realm).query(&query);
                    if let Some(Credentials::Basic { username, password }) = &creds {
                        req = req.header(AUTHORIZATION, basic_header(username, password));
                    }
                    req.send()
                })
                .await?
            }
        };
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(Error::Unauthorized {
                registry: self.name.clone(),
                detail: if creds.is_some() {
                    "the token service refused the user name or password".into()
                } else {
                    "the token service wants credentials".into()
                },
            });
        }
        if status == StatusCode::BAD_REQUEST && matches!(creds, Some(Credentials::IdentityToken(_)))
        {
            // OAuth2 refuses a refresh token it no longer takes (expired,
            // revoked) with 400 `invalid_grant` (RFC 6749, 5.2): a login
            // problem, like a 401, for which the answer is to log in again.
            let body = resp.bytes().await.unwrap_or_default();
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(match error.as_str() {
                "invalid_grant" | "invalid_client" | "unauthorized_client" => Error::Unauthorized {
                    registry: self.name.clone(),
                    detail: format!(
                        "the token service refused the stored identity token ({error})"
                    ),
                },
                _ => Error::Registry {
                    registry: self.name.clone(),
                    action,
                    status: status.as_u16(),
                    detail: String::from_utf8_lossy(&body[..body.len().min(300)])
                        .trim()
                        .to_string(),
                },
            });
        }
        if !status.is_success() {
            return Err(self.status_error(&action, status, resp).await);
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&action, e))?;
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| Error::malformed("token response", e))?;
        parsed
            .into_token()
            .ok_or_else(|| Error::malformed("token response", "no token in it"))
    }

    /// Check credentials the way `docker login` does: `GET /v2/` with them,
    /// and a token without scopes where the registry uses tokens.
    pub async fn login(&self, credentials: Credentials) -> Result<()> {
        self.set_credentials(Some(credentials));
        self.base().await?;
        let challenge = lock(&self.challenge).clone();
        match challenge {
            None => Ok(()), // the registry has no auth at all
            Some(Challenge::Bearer { realm, service, .. }) => self
                .fetch_token(&realm, service.as_deref(), &[])
                .await
                .map(|_| ()),
            Some(Challenge::Basic) => {
                let resp = self.send(Method::GET, "/v2/", &[], |r| r).await?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(Error::Unauthorized {
                        registry: self.name.clone(),
                        detail: "the registry refused the user name or password".into(),
                    })
                }
            }
        }
    }

    /// Send a request whose body (if any) can be rebuilt: authorised for
    /// `scopes`, retried on connection errors and 5xx, re-authorised once on 401.
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        scopes: &[String],
        configure: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Response> {
        let url = self.url(path_or_url).await?;
        let action = format!("{method} {}", strip_base(&url));
        let mut reauthorised = false;
        let mut scopes = scopes.to_vec();
        loop {
            let auth = self.authorization(&scopes).await?;
            let resp = self
                .with_retries(&action, || {
                    let mut req = configure(self.http.request(method.clone(), &url));
                    if let Some(a) = &auth {
                        req = req.header(AUTHORIZATION, a.clone());
                    }
                    req.send()
                })
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED && !reauthorised {
                reauthorised = true;
                let had_challenge = lock(&self.challenge).is_some();
                self.learn_challenge(resp.headers());
                lock(&self.tokens).clear();
                // The registry may name a scope we did not think of (Docker
                // Hub does for some repositories): ask for it too.
                if let Some(Challenge::Bearer {
                    scope: Some(extra), ..
                }) = lock(&self.challenge).clone()
                {
                    if !scopes.contains(&extra) {
                        scopes.push(extra);
                    }
                }
                if lock(&self.challenge).is_some() && (!had_challenge || auth.is_some()) {
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// Run a request, retrying connection errors, 5xx and 429 with backoff.
    async fn with_retries<F, Fut>(&self, action: &str, attempt: F) -> Result<Response>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = reqwest::Result<Response>>,
    {
        self.with_retries_n(action, self.config.attempts, attempt)
            .await
    }

    async fn with_retries_n<F, Fut>(
        &self,
        action: &str,
        attempts: u32,
        mut attempt: F,
    ) -> Result<Response>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = reqwest::Result<Response>>,
    {
        let mut delay = self.config.backoff;
        let attempts = attempts.max(1);
        for n in 1..=attempts {
            let last = n == attempts;
            match attempt().await {
                Ok(resp) if is_retryable_status(resp.status()) && !last => {
                    tracing::debug!(registry = %self.name, %action, status = %resp.status(), "retrying");
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    let err = self.transport_error(action, e);
                    if last || !err.is_transient() {
                        return Err(err);
                    }
                    tracing::debug!(registry = %self.name, %action, error = %err, "retrying");
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(8));
        }
        unreachable!("the last attempt always returns")
    }

    fn transport_error(&self, action: &str, e: reqwest::Error) -> Error {
        let chain = error_chain(&e);
        let lower = chain.to_lowercase();
        if lower.contains("certificate")
            || lower.contains("tls")
            || lower.contains("handshake")
            || lower.contains("corrupt message")
            || lower.contains("invalidcontenttype")
        {
            Error::Tls {
                registry: self.name.clone(),
                detail: chain,
            }
        } else if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
            Error::Connect {
                registry: self.name.clone(),
                detail: format!("{action}: {chain}"),
            }
        } else {
            Error::Registry {
                registry: self.name.clone(),
                action: action.to_string(),
                status: 0,
                detail: chain,
            }
        }
    }

    /// The error for an unexpected status, with the registry's own error
    /// message from the body when it sent one.
    async fn status_error(&self, action: &str, status: StatusCode, resp: Response) -> Error {
        // A token that lacks the scope (the account may pull but not push)
        // is a refusal, not a login problem: say so.
        let insufficient_scope = resp
            .headers()
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("insufficient_scope"));
        let body = resp.bytes().await.unwrap_or_default();
        let detail = spec_error_detail(&body).unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)])
                .trim()
                .to_string();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text
            }
        });
        match status {
            StatusCode::UNAUTHORIZED if !insufficient_scope && !detail.starts_with("DENIED") => {
                Error::Unauthorized {
                    registry: self.name.clone(),
                    detail,
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Error::Denied {
                registry: self.name.clone(),
                what: action.to_string(),
                detail,
            },
            _ => Error::Registry {
                registry: self.name.clone(),
                action: action.to_string(),
                status: status.as_u16(),
                detail,
            },
        }
    }

    async fn url(&self, path_or_url: &str) -> Result<String> {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            return Ok(path_or_url.to_string());
        }
        let base = self.base().await?;
        Ok(format!("{base}{path_or_url}"))
    }

    // --- manifests -------------------------------------------------------------------------

    /// Fetch a manifest by tag or digest. By digest, the bytes are verified.
    pub async fn manifest_get(&self, repository: &str, reference: &str) -> Result<Manifest> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let resp = self
            .send(
                Method::GET,
                &path,
                &[crate::auth::pull_scope(repository)],
                |r| r.header(ACCEPT, media::ACCEPT_ALL),
            )
            .await?;
        let what = format!("{}/{repository}:{reference}", self.name);
        let resp = self
            .expect_ok(resp, &format!("GET manifest {what}"), &what)
            .await?;
        let media_type = header_str(resp.headers(), CONTENT_TYPE)
            .map(|ct| ct.split(';').next().unwrap_or(ct).trim().to_string())
            .filter(|ct| !ct.is_empty() && ct != "application/json" && ct != "text/plain");
        let announced = header_str(resp.headers(), "docker-content-digest")
            .and_then(|d| d.parse::<Digest>().ok());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error("reading manifest", e))?;
        let media_type = media_type
            .or_else(|| Manifest::sniff_media_type(&bytes))
            .unwrap_or_else(|| media::OCI_MANIFEST.to_string());
        if let Ok(digest) = reference.parse::<Digest>() {
            return Manifest::verified(bytes, media_type, &digest);
        }
        if let Some(d) = announced {
            return Manifest::verified(bytes, media_type, &d);
        }
        Ok(Manifest::new(bytes, media_type))
    }

    /// Digest of what a tag points at, without fetching the manifest (`None` if unknown).
    pub async fn manifest_head(&self, repository: &str, reference: &str) -> Result<Option<Digest>> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let resp = self
            .send(
                Method::HEAD,
                &path,
                &[crate::auth::pull_scope(repository)],
                |r| r.header(ACCEPT, media::ACCEPT_ALL),
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let what = format!("{}/{repository}:{reference}", self.name);
        let resp = self
            .expect_ok(resp, &format!("HEAD manifest {what}"), &what)
            .await?;
        Ok(header_str(resp.headers(), "docker-content-digest").and_then(|d| d.parse().ok()))
    }

    /// Store a manifest under a tag or its digest.
    pub async fn manifest_put(
        &self,
        repository: &str,
        reference: &str,
        manifest: &Manifest,
    ) -> Result<()> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let bytes = manifest.bytes.clone();
        let resp = self
            .send(
                Method::PUT,
                &path,
                &[crate::auth::push_scope(repository)],
                |r| {
                    r.header(CONTENT_TYPE, manifest.media_type.as_str())
                        .body(bytes.clone())
                },
            )
            .await?;
        let what = format!("{}/{repository}:{reference}", self.name);
        self.expect_ok(resp, &format!("PUT manifest {what}"), &what)
            .await?;
        Ok(())
    }

    /// Delete a manifest by digest, or a tag (where the registry allows it).
    pub async fn manifest_delete(&self, repository: &str, reference: &str) -> Result<()> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let resp = self
            .send(
                Method::DELETE,
                &path,
                &[crate::auth::delete_scope(repository)],
                |r| r,
            )
            .await?;
        let what = format!("{}/{repository}:{reference}", self.name);
        self.expect_ok(resp, &format!("DELETE {what}"), &what)
            .await?;
        Ok(())
    }

    /// All tags of a repository, following `Link` pagination.
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        let mut next = Some(format!("/v2/{repository}/tags/list?n=1000"));
        while let Some(path) = next.take() {
            let resp = self
                .send(
                    Method::GET,
                    &path,
                    &[crate::auth::pull_scope(repository)],
                    |r| r,
                )
                .await?;
            let what = format!("repository {}/{repository}", self.name);
            let resp = self
                .expect_ok(resp, &format!("GET tags of {what}"), &what)
                .await?;
            next = header_str(resp.headers(), "link").and_then(parse_next_link);
            #[derive(serde::Deserialize)]
            struct TagList {
                tags: Option<Vec<String>>,
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| self.transport_error("reading tags", e))?;
            let list: TagList =
                serde_json::from_slice(&body).map_err(|e| Error::malformed("tag list", e))?;
            tags.extend(list.tags.unwrap_or_default());
        }
        Ok(tags)
    }

    /// The registry's repositories (`GET /v2/_catalog`), `page_size` per
    /// request, following `Link` to the next page.
    pub async fn catalog(&self, page_size: usize) -> Result<Vec<String>> {
        let mut repositories = Vec::new();
        let mut next = Some(format!("/v2/_catalog?n={}", page_size.max(1)));
        while let Some(path) = next.take() {
            let resp = self
                .send(Method::GET, &path, &[crate::auth::catalog_scope()], |r| r)
                .await?;
            let what = format!("the catalog of {}", self.name);
            let resp = self.expect_ok(resp, &format!("GET {what}"), &what).await?;
            next = header_str(resp.headers(), "link").and_then(parse_next_link);
            #[derive(serde::Deserialize)]
            struct Catalog {
                repositories: Option<Vec<String>>,
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| self.transport_error("reading the catalog", e))?;
            let page: Catalog =
                serde_json::from_slice(&body).map_err(|e| Error::malformed("catalog", e))?;
            let page = page.repositories.unwrap_or_default();
            // A server that ignores `last` would send the same page forever.
            if page.is_empty() || repositories.last() == page.last() {
                break;
            }
            repositories.extend(page);
        }
        Ok(repositories)
    }

    // --- blobs -----------------------------------------------------------------------------

    pub async fn blob_exists(&self, repository: &str, digest: &Digest) -> Result<bool> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let resp = self
            .send(
                Method::HEAD,
                &path,
                &[crate::auth::push_scope(repository)],
                |r| r,
            )
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self
                .status_error(&format!("HEAD blob {digest}"), s, resp)
                .await),
        }
    }

    /// Read a blob from `offset`. Registries that ignore `Range` are handled
    /// by skipping the first bytes.
    pub async fn blob_get(
        &self,
        repository: &str,
        digest: &Digest,
        offset: u64,
    ) -> Result<ByteStream> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let resp = self
            .send(
                Method::GET,
                &path,
                &[crate::auth::pull_scope(repository)],
                |r| {
                    if offset > 0 {
                        r.header(RANGE, format!("bytes={offset}-"))
                    } else {
                        r
                    }
                },
            )
            .await?;
        let what = format!("blob {digest} in {}/{repository}", self.name);
        let resp = self.expect_ok(resp, &format!("GET {what}"), &what).await?;
        let skip = if offset > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            offset
        } else {
            0
        };
        let stream = resp
            .bytes_stream()
            .map_err(|e| std::io::Error::other(error_chain(&e)));
        Ok(skip_bytes(Box::pin(stream), skip))
    }

    /// Try a cross-repository mount of `digest` from `from` into `repository`.
    pub async fn blob_mount(
        &self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<MountResult> {
        let path = format!("/v2/{repository}/blobs/uploads/?mount={digest}&from={from}");
        let scopes = [
            crate::auth::push_scope(repository),
            crate::auth::pull_scope(from),
        ];
        let resp = self
            .send(Method::POST, &path, &scopes, |r| {
                r.header(CONTENT_LENGTH, "0")
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountResult::Mounted),
            StatusCode::ACCEPTED => Ok(MountResult::Upload(self.location(&resp, "mount")?)),
            s => Err(self
                .status_error(&format!("mount {digest} from {from}"), s, resp)
                .await),
        }
    }

    async fn upload_start(&self, repository: &str) -> Result<String> {
        let path = format!("/v2/{repository}/blobs/uploads/");
        let resp = self
            .send(
                Method::POST,
                &path,
                &[crate::auth::push_scope(repository)],
                |r| r.header(CONTENT_LENGTH, "0"),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self
                .status_error(
                    &format!("start upload to {repository}"),
                    resp.status(),
                    resp,
                )
                .await);
        }
        self.location(&resp, "upload start")
    }

    /// Where an upload stands: the next byte the registry expects.
    async fn upload_offset(&self, repository: &str, location: &str) -> Result<Option<u64>> {
        let resp = self
            .send(
                Method::GET,
                location,
                &[crate::auth::push_scope(repository)],
                |r| r,
            )
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => Ok(Some(
                header_str(resp.headers(), RANGE)
                    .and_then(parse_range_end)
                    .map_or(0, |end| end + 1),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            s => Err(self.status_error("upload status", s, resp).await),
        }
    }

    fn location(&self, resp: &Response, action: &str) -> Result<String> {
        let loc = header_str(resp.headers(), LOCATION).ok_or_else(|| Error::Registry {
            registry: self.name.clone(),
            action: action.into(),
            status: resp.status().as_u16(),
            detail: "no Location header in the answer".into(),
        })?;
        // Relative locations are relative to the registry's base URL.
        if loc.starts_with("http://") || loc.starts_with("https://") {
            Ok(loc.to_string())
        } else {
            let base = self.base.get().map(String::as_str).unwrap_or_default();
            Ok(format!(
                "{base}{}",
                if loc.starts_with('/') {
                    loc.to_string()
                } else {
                    format!("/{loc}")
                }
            ))
        }
    }

    /// Push a small blob held in memory (an artifact's config or payload) in one request,
    /// unless the repository holds it already.
    pub async fn blob_push_bytes(
        &self,
        repository: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<BlobInfo> {
        let blob = BlobInfo {
            media_type: media_type.to_string(),
            digest: crate::image::sha256(&bytes),
            size: bytes.len() as u64,
        };
        if self.blob_exists(repository, &blob.digest).await? {
            return Ok(blob);
        }
        let mut location = self.upload_start(repository).await?;
        let mut offset = 0;
        let mut data: ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
        self.upload_from(
            repository,
            &blob,
            &mut location,
            &mut offset,
            &mut data,
            &crate::image::NoProgress,
        )
        .await?;
        Ok(blob)
    }

    /// Push a blob read from `source`: skip it if present, mount it when the
    /// source is another repository of this registry, else upload it — in one
    /// request when small, in chunks when large, resuming after errors.
    pub async fn blob_push(
        &self,
        repository: &str,
        blob: &BlobInfo,
        source: &dyn ImageSource,
        progress: &dyn BlobProgress,
    ) -> Result<BlobOutcome> {
        if self.blob_exists(repository, &blob.digest).await? {
            return Ok(BlobOutcome::Exists);
        }
        let mut location = None;
        if let Some((src_registry, src_repository)) = source.registry_repository() {
            if src_registry == self.name && src_repository != repository {
                match self
                    .blob_mount(repository, &blob.digest, &src_repository)
                    .await?
                {
                    MountResult::Mounted => return Ok(BlobOutcome::Mounted),
                    MountResult::Upload(loc) => location = Some(loc),
                }
            }
        }
        let mut location = match location {
            Some(l) => l,
            None => self.upload_start(repository).await?,
        };
        let mut offset = 0u64;
        let mut failures = 0u32;
        let mut data = source.blob(blob, 0).await?;
        loop {
            let result = self
                .upload_from(
                    repository,
                    blob,
                    &mut location,
                    &mut offset,
                    &mut data,
                    progress,
                )
                .await;
            match result {
                Ok(()) => return Ok(BlobOutcome::Copied),
                // 416: the registry expects another offset, e.g. it was still
                // storing bytes of the broken request when we asked where the
                // upload stood. Ask again and go on from there.
                Err(e)
                    if (e.is_transient() || matches!(e, Error::Registry { status: 416, .. }))
                        && failures + 1 < self.config.attempts.max(1) =>
                {
                    failures += 1;
                    tracing::debug!(registry = %self.name, digest = %blob.digest, error = %e, "upload interrupted; resuming");
                    tokio::time::sleep(self.config.backoff * 2u32.pow(failures.min(5))).await;
                    offset = match self.upload_offset(repository, &location).await? {
                        Some(o) if o <= blob.size => o,
                        _ => {
                            location = self.upload_start(repository).await?;
                            0
                        }
                    };
                    progress.restart_at(offset);
                    data = source.blob(blob, offset).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Send the rest of a blob from `offset`: chunks while more than one chunk
    /// remains, then the final PUT with the digest.
    async fn upload_from(
        &self,
        repository: &str,
        blob: &BlobInfo,
        location: &mut String,
        offset: &mut u64,
        data: &mut ByteStream,
        progress: &dyn BlobProgress,
    ) -> Result<()> {
        let scopes = [crate::auth::push_scope(repository)];
        let chunk = self.config.chunk_size.max(1);
        let mut leftover = Bytes::new();
        loop {
            let remaining = blob.size - *offset;
            let last = remaining <= chunk;
            let len = if last { remaining } else { chunk };
            let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
            let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
            let url = if last {
                with_query(location, &format!("digest={}", blob.digest))
            } else {
                location.clone()
            };
            let auth = self.authorization(&scopes).await?;
            let mut req = self
                .http
                .request(if last { Method::PUT } else { Method::PATCH }, &url)
                .header(CONTENT_LENGTH, len)
                .header(CONTENT_TYPE, "application/octet-stream");
            if len > 0 && (!last || *offset > 0) {
                req = req.header(
                    "content-range",
                    format!("{}-{}", *offset, *offset + len - 1).as_str(),
                );
            }
            req = if len == 0 {
                req.body(Bytes::new())
            } else {
                req.body(body)
            };
            if let Some(a) = auth {
                req = req.header(AUTHORIZATION, a);
            }
            let feed = feed_chunk(data, &mut leftover, len, tx, progress);
            let (sent, fed) = tokio::join!(req.send(), feed);
            // A source error explains a broken request better than the request error.
            fed?;
            let resp = sent.map_err(|e| self.transport_error("uploading blob", e))?;
            let status = resp.status();
            if last {
                if status == StatusCode::CREATED || status.is_success() {
                    *offset = blob.size;
                    return Ok(());
                }
                return Err(self
                    .status_error(&format!("finish upload of {}", blob.digest), status, resp)
                    .await);
            }
            if status != StatusCode::ACCEPTED && !status.is_success() {
                return Err(self
                    .status_error(&format!("upload chunk of {}", blob.digest), status, resp)
                    .await);
            }
            *location = self.location(&resp, "upload chunk")?;
            *offset += len;
            if let Some(end) = header_str(resp.headers(), RANGE).and_then(parse_range_end) {
                if end + 1 != *offset {
                    return Err(Error::Registry {
                        registry: self.name.clone(),
                        action: "upload chunk".into(),
                        status: status.as_u16(),
                        detail: format!(
                            "registry reports {} bytes received, {} were sent",
                            end + 1,
                            *offset
                        ),
                    });
                }
            }
        }
    }

    /// Turn a non-success answer into an error: 404 → `NotFound(what)`.
    async fn expect_ok(&self, resp: Response, action: &str, what: &str) -> Result<Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        if status == StatusCode::NOT_FOUND {
            let body = resp.bytes().await.unwrap_or_default();
            let detail = spec_error_detail(&body)
                .map(|d| format!(" ({d})"))
                .unwrap_or_default();
            return Err(Error::not_found(format!("{what}{detail}")));
        }
        Err(self.status_error(action, status, resp).await)
    }
}

/// Move up to `len` bytes from the source (starting with `leftover`) into the
/// request body, counting progress. Bytes past `len` stay in `leftover`.
async fn feed_chunk(
    data: &mut ByteStream,
    leftover: &mut Bytes,
    len: u64,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    progress: &dyn BlobProgress,
) -> Result<()> {
    let mut sent = 0u64;
    while sent < len {
        let mut piece = if leftover.is_empty() {
            match data.next().await {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    let _ = tx.send(Err(std::io::Error::other("source failed"))).await;
                    return Err(Error::io("reading the blob from its source", e));
                }
                None => {
                    let _ = tx
                        .send(Err(std::io::Error::other("source ended early")))
                        .await;
                    return Err(Error::SizeMismatch {
                        what: "blob from its source".into(),
                        expected: len,
                        actual: sent,
                    });
                }
            }
        } else {
            std::mem::take(leftover)
        };
        let want = (len - sent) as usize;
        if piece.len() > want {
            *leftover = piece.split_off(want);
        }
        sent += piece.len() as u64;
        progress.advance(piece.len() as u64);
        if tx.send(Ok(piece)).await.is_err() {
            // The request ended (its error is reported by the caller).
            return Ok(());
        }
    }
    Ok(())
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Drop the first `n` bytes of a stream.
fn skip_bytes(stream: ByteStream, n: u64) -> ByteStream {
    if n == 0 {
        return stream;
    }
    let mut remaining = n;
    Box::pin(stream.filter_map(move |item| {
        let out = match item {
            Ok(mut b) if remaining > 0 => {
                if (b.len() as u64) <= remaining {
                    remaining -= b.len() as u64;
                    None
                } else {
                    let rest = b.split_off(remaining as usize);
                    remaining = 0;
                    Some(Ok(rest))
                }
            }
            other => Some(other),
        };
        futures::future::ready(out)
    }))
}

fn read_certs(path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).ctx(|| format!("reading CA file {}", path.display()))?;
    reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| Error::malformed(format!("CA file {}", path.display()), e))
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!(
        "Basic {}",
        BASE64.encode(format!("{username}:{password}"))
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

fn bearer_header(token: &str) -> HeaderValue {
    let mut v = HeaderValue::from_str(&format!("Bearer {token}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

fn header_str(headers: &HeaderMap, name: impl reqwest::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn is_retryable_status(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `reqwest` hides the useful part (refused connection, bad certificate) in
/// the source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn strip_base(url: &str) -> &str {
    url.find("/v2/").map_or(url, |i| &url[i..])
}

fn with_query(url: &str, param: &str) -> String {
    if url.contains('?') {
        format!("{url}&{param}")
    } else {
        format!("{url}?{param}")
    }
}

/// `Range: 0-1023` (the spec's form; `bytes=0-1023` is tolerated) → 1023.
fn parse_range_end(value: &str) -> Option<u64> {
    let v = value.trim().trim_start_matches("bytes=");
    v.split_once('-')?.1.trim().parse().ok()
}

/// `Link: </v2/x/tags/list?n=2&last=b>; rel="next"` → the path.
fn parse_next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
            return None;
        }
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        Some(strip_base(target).to_string())
    })
}

/// The spec's error body: `{"errors":[{"code":"...","message":"..."}]}` → "CODE: message".
fn spec_error_detail(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    let parsed: Errors = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = parsed
        .errors
        .into_iter()
        .map(|e| match (e.code, e.message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c,
            (None, Some(m)) => m,
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent::encode(k), percent::encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_parsers() {
        assert_eq!(parse_range_end("0-1023"), Some(1023));
        assert_eq!(parse_range_end("bytes=0-9"), Some(9));
        assert_eq!(parse_range_end("junk"), None);
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(
            parse_next_link(r#"<https://r.example/v2/a/tags/list?last=c>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=c")
        );
        assert_eq!(parse_next_link(r#"</x>; rel="prev""#), None);
        assert_eq!(
            spec_error_detail(
                br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            )
            .as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        assert_eq!(spec_error_detail(b"<html>"), None);
        assert_eq!(
            with_query("http://h/u?x=1", "digest=d"),
            "http://h/u?x=1&digest=d"
        );
        assert_eq!(
            form_encode(&[("scope", "repository:a:pull push")]),
            "scope=repository%3Aa%3Apull%20push"
        );
    }

    #[tokio::test]
    async fn skip_bytes_across_chunks() {
        let chunks: Vec<std::io::Result<Bytes>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defg")),
            Ok(Bytes::from_static(b"h")),
        ];
        let s: ByteStream = Box::pin(futures::stream::iter(chunks));
        let out: Vec<Bytes> = skip_bytes(s, 4).try_collect().await.unwrap();
        assert_eq!(out.concat(), b"efgh");
    }
}
