//! HTTP plumbing shared by the checks: the context, a buffered response type,
//! assertion helpers, and a tiny raw HTTP/1.1 client for requests that a URL
//! library would normalise away (dot segments, empty segments, chunked bodies).

use crate::util::{excerpt, Blob, Manifest, Rng, MANIFEST_ACCEPT};
use anyhow::{anyhow, Context as _, Result};
use reqwest::header::HeaderMap;
use reqwest::{Method, Url};
use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The error codes the specification defines.
pub const SPEC_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

/// A failed assertion. Its `Display` is the message alone; it also remembers
/// where the check asserted (`site`: the line in a check, or in a fixture
/// helper, that called the assertion), which assertion it was (`assertion`:
/// the `bail!` line itself, inside a [`Resp`] helper for the helpers), and its
/// kind. The fault-injection test (`tests/faults.rs`) uses them to show that
/// every assertion of the suite can fail.
#[derive(Clone, Debug)]
pub struct Failure {
    pub message: String,
    pub site: (&'static str, u32),
    pub assertion: (&'static str, u32),
    pub kind: &'static str,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    pub fn error(
        site: (&'static str, u32),
        assertion: (&'static str, u32),
        kind: &'static str,
        message: String,
    ) -> anyhow::Error {
        anyhow::Error::new(Failure {
            message,
            site,
            assertion,
            kind,
        })
    }
}

/// Fails a [`Resp`] assertion helper (all `#[track_caller]`): the site is the
/// line that called the helper, the assertion this line.
macro_rules! fail {
    ($kind:expr, $($arg:tt)*) => {{
        let caller = std::panic::Location::caller();
        return Err(Failure::error(
            (caller.file(), caller.line()),
            (file!(), line!()),
            $kind,
            format!($($arg)*),
        ));
    }};
}

/// A fully buffered response.
pub struct Resp {
    pub what: String,
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// Set when the body could not be read completely.
    pub body_error: Option<String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string())
    }

    /// One-line description for failure messages.
    pub fn summary(&self) -> String {
        let mut s = format!("{} -> {}", self.what, self.status);
        if !self.body.is_empty() {
            s.push_str(&format!(" body: {}", excerpt(&self.body)));
        }
        if let Some(e) = &self.body_error {
            s.push_str(&format!(" ({e})"));
        }
        s
    }

    #[track_caller]
    pub fn expect_status(&self, allowed: &[u16]) -> Result<()> {
        if !allowed.contains(&self.status) {
            fail!(
                "status",
                "expected status {:?}: {}",
                allowed,
                self.summary()
            );
        }
        Ok(())
    }

    #[track_caller]
    pub fn require_header(&self, name: &str) -> Result<String> {
        match self.header(name) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => fail!("header", "missing header {name}: {}", self.summary()),
        }
    }

    #[track_caller]
    pub fn expect_header(&self, name: &str, want: &str) -> Result<()> {
        let got = self.require_header(name)?;
        if got != want {
            fail!(
                "header",
                "header {name} is {got:?}, expected {want:?} ({})",
                self.what
            );
        }
        Ok(())
    }

    /// `Location` header, required.
    #[track_caller]
    pub fn location(&self) -> Result<String> {
        self.require_header("location")
    }

    #[track_caller]
    pub fn json(&self) -> Result<Value> {
        match serde_json::from_slice(&self.body) {
            Ok(v) => Ok(v),
            Err(e) => fail!(
                "json",
                "response body is not JSON ({e}): {}",
                self.summary()
            ),
        }
    }

    #[track_caller]
    pub fn expect_body(&self, want: &[u8]) -> Result<()> {
        if let Some(e) = &self.body_error {
            fail!("body", "{}: {e}", self.what);
        }
        if self.body != want {
            fail!(
                "body",
                "body differs from the uploaded bytes ({} bytes received, {} expected; sha256 {} vs {}): {}",
                self.body.len(),
                want.len(),
                crate::util::sha256_digest(&self.body),
                crate::util::sha256_digest(want),
                self.what
            );
        }
        Ok(())
    }

    /// Validates the spec's error body `{"errors":[{"code":..,"message":..}]}`
    /// and that one of the codes is in `codes` (any spec code when `codes` is empty).
    /// Returns the codes found.
    #[track_caller]
    pub fn expect_error_body(&self, codes: &[&str]) -> Result<Vec<String>> {
        let Ok(v) = serde_json::from_slice::<Value>(&self.body) else {
            fail!(
                "error-body",
                "error response has no JSON error body (expected {{\"errors\":[{{\"code\":..}}]}}): {}",
                self.summary()
            );
        };
        let Some(errors) = v.get("errors").and_then(Value::as_array) else {
            fail!(
                "error-body",
                "error body has no \"errors\" array: {}",
                self.summary()
            );
        };
        if errors.is_empty() {
            fail!(
                "error-body",
                "error body has an empty \"errors\" array: {}",
                self.summary()
            );
        }
        let mut found = Vec::new();
        for e in errors {
            let Some(code) = e.get("code").and_then(Value::as_str) else {
                fail!(
                    "error-body",
                    "error entry without string \"code\": {}",
                    self.summary()
                );
            };
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                fail!(
                    "error-body",
                    "error code {code:?} is not uppercase letters and underscores"
                );
            }
            if let Some(m) = e.get("message") {
                if !m.is_string() {
                    fail!(
                        "error-body",
                        "error \"message\" is not a string: {}",
                        self.summary()
                    );
                }
            }
            found.push(code.to_string());
        }
        let wanted: &[&str] = if codes.is_empty() { SPEC_CODES } else { codes };
        if !found.iter().any(|c| wanted.contains(&c.as_str())) {
            fail!(
                "error-body",
                "error code(s) {:?}, expected one of {:?}: {}",
                found,
                wanted,
                self.summary()
            );
        }
        Ok(found)
    }

    /// Status in `statuses` and a spec error body with one of `codes`.
    #[track_caller]
    pub fn expect_error(&self, statuses: &[u16], codes: &[&str]) -> Result<String> {
        self.expect_status(statuses)?;
        let found = self.expect_error_body(codes)?;
        Ok(format!("{} {}", self.status, found.join(",")))
    }

    /// A URL from the `Link: <url>; rel="next"` header, if any.
    #[track_caller]
    pub fn link_next(&self) -> Result<Option<String>> {
        let Some(link) = self.header("link") else {
            return Ok(None);
        };
        for part in link.split(',') {
            let part = part.trim();
            let (Some(start), Some(end)) = (part.find('<'), part.find('>')) else {
                continue;
            };
            if end < start {
                continue;
            }
            let params = &part[end + 1..];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().replace(' ', "");
                p.eq_ignore_ascii_case("rel=\"next\"") || p.eq_ignore_ascii_case("rel=next")
            });
            if is_next {
                return Ok(Some(part[start + 1..end].to_string()));
            }
        }
        fail!("link", "Link header without rel=\"next\": {link:?}")
    }
}

/// What a request's credentials are remembered under: its repository (or the
/// catalog) and whether it deletes, since tokens are scoped that way.
fn scope_of(method: &Method, path: &str) -> String {
    format!("{} {}", repository_of(path), *method == Method::DELETE)
}

/// The repository a `/v2/NAME/...` path names (the rest of the path for `/v2/` and `_catalog`).
fn repository_of(path: &str) -> &str {
    let rest = path.strip_prefix("/v2/").unwrap_or(path);
    ["/blobs/", "/manifests/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker).map(|i| &rest[..i]))
        .max_by_key(|n| n.len())
        .unwrap_or(rest)
}

/// Shared state of one run.
pub struct Ctx {
    pub client: reqwest::Client,
    pub base: Url,
    /// User name and password for registries with auth on (Basic, or the
    /// Docker token flow that a Bearer challenge points to).
    pub credentials: Option<(String, String)>,
    /// With credentials: the `Authorization` value last accepted per scope,
    /// sent up front (as Docker does) so streamed bodies, which cannot be
    /// sent twice, and endpoints anonymous callers may also use (a filtered
    /// catalog) are seen as the user's.
    authorizations: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The `WWW-Authenticate` of an anonymous `GET /v2/` (empty: none), asked once.
    challenge: std::sync::Mutex<Option<String>>,
    /// Unique per run; every repository this run writes starts with it.
    pub root: String,
    pub rng: Rng,
}

/// A pushed image: config, layers and manifest.
#[derive(Clone)]
pub struct Image {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Manifest,
}

impl Ctx {
    pub fn new(url: &str, namespace: &str, credentials: Option<(String, String)>) -> Result<Ctx> {
        let trimmed = url.trim_end_matches('/');
        let base = Url::parse(&format!("{trimmed}/"))
            .with_context(|| format!("invalid registry URL {url:?}"))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .context("building HTTP client")?;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ ((std::process::id() as u64) << 32);
        let rng = Rng::new(seed);
        let ns = namespace.trim_matches('/');
        let root = format!("{}/run-{}", ns, rng.token(10));
        Ok(Ctx {
            client,
            base,
            credentials,
            authorizations: Default::default(),
            challenge: Default::default(),
            root,
            rng,
        })
    }

    /// Repository `<root>-<suffix>`, or the root itself for an empty suffix.
    pub fn repo(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            self.root.clone()
        } else {
            format!("{}-{}", self.root, suffix)
        }
    }

    /// Resolves a path (`/v2/...`) or a Location value (absolute or relative).
    pub fn url(&self, path_or_url: &str) -> Result<Url> {
        self.base
            .join(path_or_url)
            .with_context(|| format!("cannot resolve URL {path_or_url:?}"))
    }

    /// Location plus `digest=` query parameter, preserving existing parameters.
    pub fn with_digest(&self, location: &str, digest: &str) -> Result<Url> {
        let mut u = self.url(location)?;
        u.query_pairs_mut().append_pair("digest", digest);
        Ok(u)
    }

    pub fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Result<Resp> {
        let mut req = rb.build().context("building request")?;
        let what = format!("{} {}", req.method(), display_path(req.url()));
        let scope = scope_of(req.method(), req.url().path());
        if self.credentials.is_some() && !req.headers().contains_key(reqwest::header::AUTHORIZATION)
        {
            let mut known = self.remembered_authorization(req.method().as_str(), req.url().path());
            if known.is_none() {
                known = self
                    .log_in_for(req.method(), req.url().path())
                    .await
                    .with_context(|| format!("{what}: logging in"))?;
                if let (Some(value), Ok(mut map)) = (&known, self.authorizations.lock()) {
                    map.insert(scope.clone(), value.clone());
                }
            }
            if let Some(value) = known.and_then(|v| v.parse().ok()) {
                req.headers_mut()
                    .insert(reqwest::header::AUTHORIZATION, value);
            }
        }
        // Kept to send again with credentials when the registry asks for them.
        let retry = self.credentials.as_ref().and_then(|_| req.try_clone());
        let mut resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| anyhow!("{what}: request failed: {e}"))?;
        if let (401, Some(mut again)) = (resp.status().as_u16(), retry) {
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let authorization = self
                .authorization(&challenge)
                .await
                .with_context(|| format!("{what}: logging in"))?;
            again.headers_mut().insert(
                reqwest::header::AUTHORIZATION,
                authorization
                    .parse()
                    .context("Authorization header value")?,
            );
            if let Ok(mut known) = self.authorizations.lock() {
                known.insert(scope, authorization);
            }
            resp = self
                .client
                .execute(again)
                .await
                .map_err(|e| anyhow!("{what}: request failed: {e}"))?;
        }
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        // A broken body (e.g. shorter than Content-Length) must not hide the
        // status: keep the status and note the error.
        let (body, body_error) = match resp.bytes().await {
            Ok(b) => (b.to_vec(), None),
            Err(e) => (Vec::new(), Some(format!("reading body failed: {e}"))),
        };
        Ok(Resp {
            what,
            status,
            headers,
            body,
            body_error,
        })
    }

    /// Credentials for a request before sending it, as Docker does: the
    /// challenge of `GET /v2/` says how (Basic, or a token for the scope the
    /// request needs). None when the registry asks for nothing.
    async fn log_in_for(&self, method: &Method, path: &str) -> Result<Option<String>> {
        let challenge = {
            let cached = self.challenge.lock().ok().and_then(|c| c.clone());
            match cached {
                Some(c) => c,
                None => {
                    let resp = self
                        .client
                        .get(self.url("/v2/")?)
                        .send()
                        .await
                        .context("GET /v2/")?;
                    let c = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    if let Ok(mut slot) = self.challenge.lock() {
                        *slot = Some(c.clone());
                    }
                    c
                }
            }
        };
        if challenge.is_empty() {
            return Ok(None);
        }
        let rest = path.strip_prefix("/v2/").unwrap_or(path);
        let scope = if rest == "_catalog" {
            Some("registry:catalog:*".to_string())
        } else if rest.is_empty() {
            None
        } else {
            let name = repository_of(path);
            let actions = if *method == Method::DELETE {
                "pull,push,delete"
            } else {
                "pull,push"
            };
            Some(format!("repository:{name}:{actions}"))
        };
        let challenge = match scope {
            Some(scope) if challenge.starts_with("Bearer ") => {
                format!("{challenge},scope=\"{scope}\"")
            }
            _ => challenge,
        };
        self.authorization(&challenge).await.map(Some)
    }

    /// The credentials last accepted for the scope of this request, if any.
    fn remembered_authorization(&self, method: &str, path_and_query: &str) -> Option<String> {
        let method = Method::from_bytes(method.as_bytes()).ok()?;
        let path = path_and_query.split('?').next().unwrap_or_default();
        let scope = scope_of(&method, path);
        self.authorizations.lock().ok()?.get(&scope).cloned()
    }

    /// The `Authorization` value that answers a `WWW-Authenticate` challenge:
    /// Basic credentials, or a token fetched from the Bearer realm with them.
    async fn authorization(&self, challenge: &str) -> Result<String> {
        use base64::Engine as _;
        let (user, password) = self
            .credentials
            .as_ref()
            .context("the registry wants credentials: pass --username and --password")?;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        else {
            return Ok(format!("Basic {basic}"));
        };
        let param = |name: &str| -> Option<String> {
            // realm="...",service="...",scope="..." (values hold no quotes here)
            let start = params.find(&format!("{name}=\""))? + name.len() + 2;
            let end = params[start..].find('"')? + start;
            Some(params[start..end].to_string())
        };
        let realm = param("realm").context("Bearer challenge without realm")?;
        let mut url = Url::parse(&realm).with_context(|| format!("bad realm {realm:?}"))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = param("service") {
                q.append_pair("service", &service);
            }
            if let Some(scope) = param("scope") {
                for s in scope.split(' ') {
                    q.append_pair("scope", s);
                }
            }
        }
        let resp = self
            .client
            .get(url)
            .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"))
            .send()
            .await
            .context("token request failed")?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the token response")?;
        let body: Value = serde_json::from_slice(&bytes).context("token response is not JSON")?;
        if !status.is_success() {
            anyhow::bail!("token endpoint answered {status}: {body}");
        }
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .context("token response without token")?;
        Ok(format!("Bearer {token}"))
    }

    pub async fn get(&self, path: &str) -> Result<Resp> {
        self.send(self.request(Method::GET, self.url(path)?)).await
    }

    pub async fn head(&self, path: &str) -> Result<Resp> {
        self.send(self.request(Method::HEAD, self.url(path)?)).await
    }

    pub async fn delete(&self, path: &str) -> Result<Resp> {
        self.send(self.request(Method::DELETE, self.url(path)?))
            .await
    }

    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<Resp> {
        let rb = self
            .request(
                Method::GET,
                self.url(&format!("/v2/{repo}/manifests/{reference}"))?,
            )
            .header("Accept", MANIFEST_ACCEPT);
        self.send(rb).await
    }

    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<Resp> {
        let rb = self
            .request(
                Method::HEAD,
                self.url(&format!("/v2/{repo}/manifests/{reference}"))?,
            )
            .header("Accept", MANIFEST_ACCEPT);
        self.send(rb).await
    }

    pub async fn put_manifest_raw(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<Resp> {
        let rb = self
            .request(
                Method::PUT,
                self.url(&format!("/v2/{repo}/manifests/{reference}"))?,
            )
            .header("Content-Type", media_type)
            .body(bytes);
        self.send(rb).await
    }

    /// Pushes a manifest and requires `201 Created`.
    pub async fn put_manifest(&self, repo: &str, reference: &str, m: &Manifest) -> Result<Resp> {
        let r = self
            .put_manifest_raw(repo, reference, &m.media_type, m.bytes.clone())
            .await?;
        r.expect_status(&[201])
            .context("pushing a manifest (fixture)")?;
        Ok(r)
    }

    /// `POST /v2/<repo>/blobs/uploads/`, requires 202 and a Location; returns the Location.
    pub async fn start_upload(&self, repo: &str) -> Result<String> {
        let rb = self
            .request(
                Method::POST,
                self.url(&format!("/v2/{repo}/blobs/uploads/"))?,
            )
            .body(Vec::new());
        let r = self.send(rb).await?;
        r.expect_status(&[202])
            .context("starting an upload session")?;
        r.location()
    }

    pub async fn patch_chunk(
        &self,
        location: &str,
        data: &[u8],
        range: Option<(usize, usize)>,
    ) -> Result<Resp> {
        let mut rb = self
            .request(Method::PATCH, self.url(location)?)
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec());
        if let Some((a, b)) = range {
            rb = rb.header("Content-Range", format!("{a}-{b}"));
        }
        self.send(rb).await
    }

    /// Closing PUT with an optional final chunk.
    pub async fn put_upload(
        &self,
        location: &str,
        digest: &str,
        data: &[u8],
        range: Option<(usize, usize)>,
    ) -> Result<Resp> {
        let mut rb = self
            .request(Method::PUT, self.with_digest(location, digest)?)
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec());
        if let Some((a, b)) = range {
            rb = rb.header("Content-Range", format!("{a}-{b}"));
        }
        self.send(rb).await
    }

    /// Monolithic POST+PUT push, requires 201.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8], digest: &str) -> Result<()> {
        let loc = self.start_upload(repo).await?;
        let r = self.put_upload(&loc, digest, bytes, None).await?;
        r.expect_status(&[201])
            .context("pushing a blob (fixture)")?;
        Ok(())
    }

    pub async fn push_blobs(&self, repo: &str, blobs: &[&Blob]) -> Result<()> {
        for b in blobs {
            self.push_blob(repo, &b.bytes, &b.digest).await?;
        }
        Ok(())
    }

    pub fn random_blob(&self, len: usize) -> Blob {
        Blob::new(self.rng.bytes(len), "application/octet-stream")
    }

    /// A fresh OCI image (config + `layers` random layers) pushed to `repo`;
    /// the manifest is pushed by `reference`, or by its digest when `None`.
    pub async fn push_image(
        &self,
        repo: &str,
        reference: Option<&str>,
        layers: usize,
    ) -> Result<Image> {
        let img = self.make_image(layers);
        let mut all: Vec<&Blob> = vec![&img.config];
        all.extend(img.layers.iter());
        self.push_blobs(repo, &all).await?;
        let reference = reference.unwrap_or(&img.manifest.digest).to_string();
        self.put_manifest(repo, &reference, &img.manifest).await?;
        Ok(img)
    }

    pub fn make_image(&self, layers: usize) -> Image {
        let config = crate::util::config_blob(&self.rng, crate::util::OCI_CONFIG);
        let layers: Vec<Blob> = (0..layers)
            .map(|i| Blob::new(self.rng.bytes(512 + 97 * i), crate::util::OCI_LAYER))
            .collect();
        let refs: Vec<&Blob> = layers.iter().collect();
        let manifest = crate::util::oci_manifest(&config, &refs, &[]);
        Image {
            config,
            layers,
            manifest,
        }
    }

    /// Raw HTTP/1.1 request: the path is sent exactly as given. `chunks`, when
    /// present, is sent with `Transfer-Encoding: chunked`, one HTTP chunk each.
    pub async fn raw(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        chunks: Option<&[&[u8]]>,
    ) -> Result<Resp> {
        let host = self
            .base
            .host_str()
            .ok_or_else(|| anyhow!("registry URL has no host"))?
            .to_string();
        if self.base.scheme() != "http" {
            anyhow::bail!("raw requests need a plain http:// registry URL");
        }
        let port = self.base.port_or_known_default().unwrap_or(80);
        let what = format!("{method} {path_and_query}");
        let fut = async {
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let mut stream = tokio::net::TcpStream::connect(&addr)
                .await
                .with_context(|| format!("connect {addr}"))?;
            let host_header = match self.base.port() {
                Some(p) => format!("{}:{p}", self.base.host_str().unwrap_or_default()),
                None => self.base.host_str().unwrap_or_default().to_string(),
            };
            let mut req = format!(
                "{method} {path_and_query} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\nUser-Agent: berth-conformance\r\n"
            );
            for (k, v) in headers {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
            if let Some(authorization) = self.remembered_authorization(method, path_and_query) {
                req.push_str(&format!("Authorization: {authorization}\r\n"));
            }
            if chunks.is_some() {
                req.push_str("Transfer-Encoding: chunked\r\n");
            } else if method != "GET" && method != "HEAD" {
                req.push_str("Content-Length: 0\r\n");
            }
            req.push_str("\r\n");
            stream.write_all(req.as_bytes()).await?;
            if let Some(chunks) = chunks {
                for c in chunks {
                    stream
                        .write_all(format!("{:x}\r\n", c.len()).as_bytes())
                        .await?;
                    stream.write_all(c).await?;
                    stream.write_all(b"\r\n").await?;
                    stream.flush().await?;
                }
                stream.write_all(b"0\r\n\r\n").await?;
            }
            stream.flush().await?;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await?;
            anyhow::Ok(buf)
        };
        let buf = tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .map_err(|_| anyhow!("{what}: timed out"))?
            .map_err(|e| anyhow!("{what}: {e:#}"))?;
        parse_raw_response(what, &buf, method == "HEAD")
    }
}

/// Path and query for messages; long query values (upload state tokens) are elided.
fn display_path(u: &Url) -> String {
    let Some(q) = u.query() else {
        return u.path().to_string();
    };
    let parts: Vec<String> = q
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if v.len() > 80 && k != "digest" => format!("{k}={}…", &v[..12]),
            _ => kv.to_string(),
        })
        .collect();
    format!("{}?{}", u.path(), parts.join("&"))
}

fn parse_raw_response(what: String, buf: &[u8], head: bool) -> Result<Resp> {
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{what}: malformed HTTP response ({} bytes)", buf.len()))?;
    let head_text = String::from_utf8_lossy(&buf[..split]).to_string();
    let rest = &buf[split + 4..];
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{what}: bad status line {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(k.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(v.trim()),
            ) {
                headers.append(name, value);
            }
        }
    }
    let chunked = headers
        .get("transfer-encoding")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
        .is_some_and(|v| v.contains("chunked"));
    let body = if head || status == 204 || status == 304 {
        Vec::new()
    } else if chunked {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok(Resp {
        what,
        status,
        headers,
        body,
        body_error: None,
    })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..eol]).to_string();
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        data = &data[eol + 2..];
        if size == 0 || data.len() < size {
            out.extend_from_slice(&data[..size.min(data.len())]);
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size..];
        if data.starts_with(b"\r\n") {
            data = &data[2..];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &str, link: Option<&str>) -> Resp {
        let mut headers = HeaderMap::new();
        if let Some(l) = link {
            headers.insert("link", l.parse().expect("header"));
        }
        Resp {
            what: "GET /x".into(),
            status,
            headers,
            body: body.as_bytes().to_vec(),
            body_error: None,
        }
    }

    #[test]
    fn error_body_validation() {
        let r = resp(
            404,
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"x"}]}"#,
            None,
        );
        assert!(r.expect_error(&[404], &["BLOB_UNKNOWN"]).is_ok());
        assert!(r.expect_error(&[404], &["MANIFEST_UNKNOWN"]).is_err());
        assert!(r.expect_error(&[400], &["BLOB_UNKNOWN"]).is_err());
        assert!(resp(404, "not found", None).expect_error_body(&[]).is_err());
        assert!(resp(404, r#"{"errors":[]}"#, None)
            .expect_error_body(&[])
            .is_err());
        assert!(resp(404, r#"{"errors":[{"code":"bad code"}]}"#, None)
            .expect_error_body(&[])
            .is_err());
    }

    #[test]
    fn link_parsing() {
        let r = resp(200, "", Some(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#));
        assert_eq!(
            r.link_next().expect("ok").as_deref(),
            Some("/v2/a/tags/list?n=2&last=b")
        );
        assert_eq!(resp(200, "", None).link_next().expect("ok"), None);
        assert!(resp(200, "", Some("</x>; rel=\"prev\""))
            .link_next()
            .is_err());
    }

    #[test]
    fn raw_parsing() {
        let raw = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let r = parse_raw_response("GET /".into(), raw, false).expect("parse");
        assert_eq!(r.status, 404);
        assert_eq!(r.body, b"hello world");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
    }
}
