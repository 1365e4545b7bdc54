//! Registry authentication of the `berth` client, end to end:
//!
//! * Bearer tokens: an in-test token service and auth proxy in front of a real `berth serve`
//!   (Docker's token flow: 401 + `WWW-Authenticate: Bearer realm=..,service=..,scope=..`,
//!   Basic credentials at the realm, opaque tokens with scopes and `expires_in`). Login, push,
//!   pull, token caching per scope, an account without push rights, logout. The token service
//!   also hands out refresh tokens (`offline_token=true`, as `docker login` asks) and takes the
//!   OAuth2 refresh-token grant, which is how the client uses a stored identity token.
//! * Docker credential helpers: a `docker-credential-bertht` script on PATH, named by
//!   `credsStore` or `credHelpers`, in front of `berth serve` with logins.
//! * Basic auth: Debian's `docker-registry` with an htpasswd (bcrypt) file: login, `--creds`,
//!   wrong credentials, and credentials shared with the docker CLI both ways.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::*;
use futures::TryStreamExt;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(300);
/// A command that must fail (wrong rights, wrong password) gets this long: it must not hang.
const FAIL_FAST: Duration = Duration::from_secs(90);
const SERVICE: &str = "test";

// ---------------------------------------------------------------------------------------------
// Token service + auth proxy
// ---------------------------------------------------------------------------------------------

/// What a token allows: repository → actions.
#[derive(Clone, Debug)]
struct Grant {
    user: String,
    access: HashMap<String, BTreeSet<String>>,
    expires: Instant,
}

struct AuthState {
    /// `http://127.0.0.1:PORT` of the berth serve behind the proxy.
    backend: String,
    /// `http://127.0.0.1:PORT` of the proxy (and token service) itself.
    public: String,
    http: reqwest::Client,
    tokens: Mutex<HashMap<String, Grant>>,
    next_token: AtomicU64,
    /// Every `GET` of the token endpoint, as its sorted scope list ("" for none).
    token_requests: Mutex<Vec<String>>,
    /// Refresh tokens handed out (to `offline_token=true` requests), with their user.
    refresh_tokens: Mutex<HashMap<String, String>>,
    /// Every `POST` of the token endpoint (OAuth2 grants), as its form fields.
    grants: Mutex<Vec<HashMap<String, String>>>,
    /// Registry requests that reached the backend.
    forwarded: AtomicUsize,
}

/// Users and what they may do: alice everything, bob only pull.
fn allowed_actions(user: &str) -> &'static [&'static str] {
    match user {
        "alice" => &["pull", "push", "delete"],
        "bob" => &["pull"],
        _ => &[],
    }
}

fn check_password(user: &str, password: &str) -> bool {
    matches!((user, password), ("alice", "secret") | ("bob", "bobpw"))
}

/// A token service and an auth proxy on one port, in front of a real `berth serve`.
struct TokenRegistry {
    rt: Option<tokio::runtime::Runtime>,
    state: Arc<AuthState>,
    port: u16,
    _backend: Server,
}

impl TokenRegistry {
    fn start() -> TokenRegistry {
        let backend = Server::start_kind(ServerKind::Berth);
        let port = free_port();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime for the token registry");
        let state = Arc::new(AuthState {
            backend: backend.url(),
            public: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy HTTP client"),
            tokens: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(1),
            token_requests: Mutex::new(Vec::new()),
            refresh_tokens: Mutex::new(HashMap::new()),
            grants: Mutex::new(Vec::new()),
            forwarded: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/token", get(token_endpoint).post(token_grant))
            .fallback(proxy)
            .with_state(state.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(SocketAddr::from((
                [127, 0, 0, 1],
                port,
            ))))
            .expect("bind the token registry's port");
        rt.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TokenRegistry {
            rt: Some(rt),
            state,
            port,
            _backend: backend,
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Token requests so far (each as its sorted scope list).
    fn token_requests(&self) -> Vec<String> {
        self.state.token_requests.lock().unwrap().clone()
    }

    fn forwarded(&self) -> usize {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    /// OAuth2 grants so far (each as its form fields).
    fn grants(&self) -> Vec<HashMap<String, String>> {
        self.state.grants.lock().unwrap().clone()
    }

    /// What `docker login` does where the token service gives refresh tokens: a token request
    /// with the password and `offline_token=true`; the answer's `refresh_token` is what Docker
    /// stores as the `identitytoken`, with no password.
    fn refresh_token(&self, user: &str, password: &str) -> String {
        let request = format!(
            "GET /token?service={SERVICE}&client_id=docker&offline_token=true HTTP/1.1\r\n\
             Host: {}\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            self.host(),
            BASE64.encode(format!("{user}:{password}"))
        );
        let resp = raw_request(self.port, request.as_bytes(), Duration::from_secs(30))
            .expect("token service answers");
        assert_eq!(resp.status, Some(200), "{}", resp.body_text());
        let body: Value = serde_json::from_slice(&resp.body).expect("token JSON");
        body["refresh_token"]
            .as_str()
            .expect("a refresh_token for offline_token=true")
            .to_string()
    }
}

impl Drop for TokenRegistry {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        // `_backend` (berth serve) is stopped by its own Drop.
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `k=v&k2=v2` (a query or a form), decoded.
fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

/// `GET /token?service=test&scope=repository:NAME:ACTIONS...` with Basic credentials; with
/// `offline_token=true` the answer also carries a refresh token.
async fn token_endpoint(
    State(s): State<Arc<AuthState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let pairs = form_pairs(&query.unwrap_or_default());
    let mut scopes: Vec<String> = Vec::new();
    for (k, v) in &pairs {
        if k == "scope" {
            // One parameter may hold several space-separated scopes.
            scopes.extend(v.split(' ').map(str::to_string));
        }
    }
    scopes.retain(|s| !s.is_empty());
    scopes.sort();
    s.token_requests.lock().unwrap().push(scopes.join(" "));

    let user = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| BASE64.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|text| {
            let (u, p) = text.split_once(':')?;
            check_password(u, p).then(|| u.to_string())
        });
    let Some(user) = user else {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "invalid user name or password"}]}),
        );
    };
    let offline = pairs
        .iter()
        .any(|(k, v)| k == "offline_token" && v == "true");
    let refresh_token = offline.then(|| {
        let token = unique("refresh");
        s.refresh_tokens
            .lock()
            .unwrap()
            .insert(token.clone(), user.clone());
        token
    });
    let (token, expires_in) = issue(&s, user, &scopes);
    let mut body = json!({"token": token, "access_token": token, "expires_in": expires_in,
                          "issued_at": "2024-01-01T00:00:00Z"});
    if let Some(refresh_token) = refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    json_response(StatusCode::OK, body)
}

/// `POST /token`: the OAuth2 refresh-token grant, with a refresh token this service gave out.
/// Answers as OAuth2 does (`access_token` only, no `token`); a refresh token it does not know
/// gets OAuth2's `400 invalid_grant`.
async fn token_grant(State(s): State<Arc<AuthState>>, body: String) -> Response {
    let form: HashMap<String, String> = form_pairs(&body).into_iter().collect();
    s.grants.lock().unwrap().push(form.clone());
    let field = |name: &str| form.get(name).map(String::as_str);
    if field("grant_type") != Some("refresh_token") || field("service") != Some(SERVICE) {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "unsupported_grant_type"}),
        );
    }
    let user = field("refresh_token")
        .and_then(|token| s.refresh_tokens.lock().unwrap().get(token).cloned());
    let Some(user) = user else {
        return json_response(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_grant", "error_description": "unknown refresh token"}),
        );
    };
    let mut scopes: Vec<String> = field("scope")
        .unwrap_or_default()
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    scopes.sort();
    let (token, expires_in) = issue(&s, user, &scopes);
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": expires_in, "scope": scopes.join(" ")}),
    )
}

/// A new token for `user` with what it may do of `scopes`, and its lifetime in seconds.
fn issue(s: &AuthState, user: String, scopes: &[String]) -> (String, u64) {
    let mut access: HashMap<String, BTreeSet<String>> = HashMap::new();
    for scope in scopes {
        let mut parts = scope.splitn(3, ':');
        let (Some("repository"), Some(name), Some(actions)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let granted = access.entry(name.to_string()).or_default();
        for action in actions.split(',') {
            if allowed_actions(&user).contains(&action) {
                granted.insert(action.to_string());
            }
        }
    }
    let token = format!(
        "tok-{}-{}",
        s.next_token.fetch_add(1, Ordering::SeqCst),
        unique("t")
    );
    let expires_in = 300;
    s.tokens.lock().unwrap().insert(
        token.clone(),
        Grant {
            user,
            access,
            expires: Instant::now() + Duration::from_secs(expires_in),
        },
    );
    (token, expires_in)
}

/// The repository and action a registry request needs (`None` for `/v2/` itself).
fn needed(method: &Method, path: &str) -> Option<(String, &'static str)> {
    let rest = path.strip_prefix("/v2/")?;
    let cut = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|m| rest.rfind(m))
        .min()?;
    let name = rest[..cut].to_string();
    let action = match *method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "push",
    };
    Some((name, action))
}

fn challenge(s: &AuthState, scope: Option<&str>, error: Option<&str>) -> HeaderValue {
    let mut v = format!("Bearer realm=\"{}/token\",service=\"{SERVICE}\"", s.public);
    if let Some(scope) = scope {
        v.push_str(&format!(",scope=\"{scope}\""));
    }
    if let Some(e) = error {
        v.push_str(&format!(",error=\"{e}\""));
    }
    HeaderValue::from_str(&v).expect("challenge header")
}

/// Checks the Bearer token, then forwards the request to berth serve, streaming both ways.
async fn proxy(State(s): State<Arc<AuthState>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let need = needed(&method, &path);
    let scope = need.as_ref().map(|(name, action)| match *action {
        "pull" => format!("repository:{name}:pull"),
        "delete" => format!("repository:{name}:delete"),
        _ => format!("repository:{name}:pull,push"),
    });
    let grant = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| s.tokens.lock().unwrap().get(t.trim()).cloned())
        .filter(|g| Instant::now() < g.expires);
    let Some(grant) = grant else {
        let mut r = json_response(
            StatusCode::UNAUTHORIZED,
            json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            challenge(&s, scope.as_deref(), None),
        );
        return r;
    };
    if let Some((name, action)) = &need {
        let ok = grant
            .access
            .get(name)
            .is_some_and(|actions| actions.contains(*action));
        if !ok {
            // What Docker Hub does: 401, insufficient_scope, DENIED.
            let mut r = json_response(
                StatusCode::UNAUTHORIZED,
                json!({"errors": [{"code": "DENIED",
                    "message": format!("requested access to the resource is denied ({} may not {action} {name})", grant.user)}]}),
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                challenge(&s, scope.as_deref(), Some("insufficient_scope")),
            );
            return r;
        }
    }

    // Forward.
    s.forwarded.fetch_add(1, Ordering::SeqCst);
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or(path);
    let (parts, body) = req.into_parts();
    let mut out = s
        .http
        .request(method.clone(), format!("{}{path_and_query}", s.backend));
    for (name, value) in &parts.headers {
        if [
            header::HOST,
            header::AUTHORIZATION,
            header::CONNECTION,
            header::TRANSFER_ENCODING,
        ]
        .contains(name)
        {
            continue;
        }
        out = out.header(name, value);
    }
    let has_body = parts.headers.contains_key(header::CONTENT_LENGTH)
        || parts.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        out = out.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return json_response(
                StatusCode::BAD_GATEWAY,
                json!({"errors": [{"code": "UNKNOWN", "message": format!("proxy: {e}")}]}),
            )
        }
    };
    let mut r = Response::new(Body::empty());
    *r.status_mut() = resp.status();
    for (name, value) in resp.headers() {
        if [header::CONNECTION, header::TRANSFER_ENCODING].contains(name) {
            continue;
        }
        let value = if name == header::LOCATION {
            let v = value.to_str().unwrap_or_default();
            HeaderValue::from_str(&v.replace(&s.backend, &s.public)).unwrap_or(value.clone())
        } else {
            value.clone()
        };
        r.headers_mut().append(name, value);
    }
    if method != Method::HEAD {
        *r.body_mut() = Body::from_stream(resp.bytes_stream().map_err(std::io::Error::other));
    }
    r
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn config_auths(cli: &BerthCli) -> Value {
    match std::fs::read(cli.config_json()) {
        Ok(bytes) => {
            let v: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", cli.config_json().display()));
            v["auths"].clone()
        }
        Err(_) => Value::Null,
    }
}

fn login(cli: &BerthCli, registry: &str, user: &str, password: &str) -> CmdOutput {
    run_with_input(
        cli.cmd(["login", registry, "-u", user, "--password-stdin"]),
        Some(format!("{password}\n").as_bytes()),
        FAIL_FAST,
    )
}

fn assert_login_hint(out: &CmdOutput, what: &str) {
    assert!(
        !out.status.success(),
        "{what}: expected a failure\n{}",
        out.describe()
    );
    eprintln!("{what}: {}", out.stderr.trim());
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("login"),
        "{what}: the error should tell to log in:\n{}",
        out.describe()
    );
}

fn import_rootfs(cli: &BerthCli, dest: &str, extra: &[&str]) -> Value {
    let rootfs = cli.path("rootfs.tar");
    if !rootfs.exists() {
        write_busybox_rootfs(&rootfs, false);
    }
    let mut c = cli.cmd(["import", rootfs.to_str().unwrap(), dest, "--json"]);
    c.args(extra);
    let out = run(c, T);
    assert!(out.status.success(), "import:\n{}", out.describe());
    parse_json(&out.stdout, "import --json")
}

fn json_digest(v: &Value) -> String {
    v["digest"]
        .as_str()
        .filter(|d| d.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {v}"))
        .to_string()
}

/// Token requests made since `before`, and how many distinct scope sets they asked for.
fn token_stats(reg: &TokenRegistry, before: usize) -> (usize, usize, Vec<String>) {
    let all = reg.token_requests();
    let new = all[before..].to_vec();
    let distinct: BTreeSet<&String> = new.iter().collect();
    (new.len(), distinct.len(), new)
}

/// A Docker credential helper, `docker-credential-bertht`, alone in a directory to put first on
/// PATH. `get` prints `answer.json` when asked about the one server it knows, and otherwise
/// says "credentials not found" with exit 1, as Docker's helpers do; `store` and `erase`
/// succeed. Every call is logged as `ACTION INPUT`.
struct Helper {
    dir: tempfile::TempDir,
}

impl Helper {
    fn new(server: &str) -> Helper {
        let dir = tempfile::Builder::new()
            .prefix("berth-helper-")
            .tempdir()
            .expect("helper directory");
        std::fs::write(dir.path().join("server"), server).expect("write server");
        let script = dir.path().join("docker-credential-bertht");
        std::fs::write(
            &script,
            r#"#!/bin/sh
dir=$(dirname "$0")
input=$(cat)
printf '%s %s\n' "$1" "$input" >> "$dir/calls.log"
case "$1" in
get)
    if [ "$input" = "$(cat "$dir/server")" ] && [ -f "$dir/answer.json" ]; then
        cat "$dir/answer.json"
    else
        echo "credentials not found in native keychain"
        exit 1
    fi ;;
store|erase) ;;
*) echo "unknown action: $1" >&2; exit 1 ;;
esac
"#,
        )
        .expect("write helper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod helper");
        Helper { dir }
    }

    /// What `get` answers from now on (`None`: "credentials not found").
    fn answer(&self, server: &str, credentials: Option<(&str, &str)>) {
        let path = self.dir.path().join("answer.json");
        match credentials {
            Some((user, secret)) => std::fs::write(
                path,
                json!({"ServerURL": server, "Username": user, "Secret": secret}).to_string(),
            )
            .expect("write answer"),
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }

    /// The calls so far, one `ACTION INPUT` line each.
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `berth ARGS` in `cli`'s environment with this helper first on PATH.
    fn berth<const N: usize>(&self, cli: &BerthCli, args: [&str; N]) -> Command {
        let mut c = cli.cmd(args);
        let mut path = OsString::from(self.dir.path());
        if let Some(rest) = std::env::var_os("PATH") {
            path.push(":");
            path.push(rest);
        }
        c.env("PATH", path);
        c
    }
}

fn write_docker_config(cli: &BerthCli, config: &Value) {
    std::fs::write(cli.config_json(), config.to_string()).expect("write config.json");
}

/// `berth serve` with logins (its built-in token service) and one account, alice/apw; no
/// access rules, so a logged-in user may do everything.
fn serve_with_logins(dir: &Path) -> Server {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "apw")], 4);
    let toml = format!(
        "[auth]\nhtpasswd = \"{}\"\ntoken_key = \"{}\"\n",
        htpasswd.display(),
        dir.join("token-key.pem").display()
    );
    Server::start_berth_with_config(dir, &toml, true)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn token_auth_login_push_pull_logout() {
    let reg = TokenRegistry::start();
    let host = reg.host();
    let cli = BerthCli::new();
    let image = format!("{host}/team/app:1");

    // No credentials: a push fails and says to log in.
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let layout = cli.path("layout");
    let src = format!("oci:{}:v1", layout.display());
    run_ok(cli.cmd(["import", rootfs.to_str().unwrap(), &src, "-q"]), T);
    let out = run(cli.cmd(["push", &src, &image]), FAIL_FAST);
    assert_login_hint(&out, "push without credentials");
    assert_eq!(
        reg.forwarded(),
        0,
        "nothing may reach the registry unauthenticated"
    );

    // Wrong password: login fails and stores nothing.
    let out = login(&cli, &host, "alice", "wrong");
    assert!(
        !out.status.success(),
        "login with a wrong password must fail:\n{}",
        out.describe()
    );
    assert!(
        config_auths(&cli).get(&host).is_none(),
        "a failed login stored credentials: {}",
        config_auths(&cli)
    );

    // Right password: config.json in Docker's format.
    let out = login(&cli, &host, "alice", "secret");
    assert!(out.status.success(), "login:\n{}", out.describe());
    let auths = config_auths(&cli);
    assert_eq!(
        auths[&host]["auth"],
        BASE64.encode("alice:secret"),
        "config.json must hold Docker's base64 auth for {host}: {auths}"
    );

    // Push and pull succeed, with few token requests (cached per scope).
    let before = reg.token_requests().len();
    let forwarded_before = reg.forwarded();
    let pushed = run(cli.cmd(["push", &src, &image, "--json"]), T);
    assert!(pushed.status.success(), "push:\n{}", pushed.describe());
    let digest = json_digest(&parse_json(&pushed.stdout, "push --json"));
    let (count, distinct, scopes) = token_stats(&reg, before);
    let requests = reg.forwarded() - forwarded_before;
    eprintln!("push: {count} token requests ({scopes:?}) for {requests} registry requests");
    assert!(count >= 1, "push must have fetched a token");
    assert!(
        count <= distinct + 2,
        "push asked for {count} tokens for {distinct} scope sets ({requests} registry \
         requests): tokens are not cached per scope: {scopes:?}"
    );
    assert!(
        scopes
            .iter()
            .any(|s| s.contains("repository:team/app:pull,push")),
        "push should ask for pull,push on team/app: {scopes:?}"
    );

    let before = reg.token_requests().len();
    let out_layout = cli.path("pulled");
    let pulled = run(
        cli.cmd(["pull", &image, "--json"])
            .arg(format!("oci:{}:v1", out_layout.display())),
        T,
    );
    assert!(pulled.status.success(), "pull:\n{}", pulled.describe());
    assert_eq!(json_digest(&parse_json(&pulled.stdout, "pull")), digest);
    let (count, distinct, scopes) = token_stats(&reg, before);
    assert!(
        (1..=distinct + 2).contains(&count),
        "pull asked for {count} tokens for {distinct} scope sets: {scopes:?}"
    );
    let tags = run_ok(cli.cmd(["ls", &format!("{host}/team/app")]), T);
    assert_eq!(tags.trim(), "1");

    // The docker CLI reads the credentials berth wrote (its daemon does the token flow).
    if require_tool("docker") {
        let out = run(cli.docker(["pull", &image]), T);
        let _ = run(cli.docker(["rmi", "-f", &image]), T);
        assert!(
            out.status.success(),
            "docker pull with berth's credentials:\n{}",
            out.describe()
        );
    }

    // bob may pull but not push: a clear error, quickly, and no token storm.
    let bob = BerthCli::new();
    let out = login(&bob, &host, "bob", "bobpw");
    assert!(out.status.success(), "bob's login:\n{}", out.describe());
    let before = reg.token_requests().len();
    let started = Instant::now();
    let out = run(
        bob.cmd(["push", &src, &format!("{host}/team/bobs:1")]),
        FAIL_FAST,
    );
    assert!(
        !out.status.success(),
        "bob's push must fail:\n{}",
        out.describe()
    );
    let err = out.stderr.to_lowercase();
    assert!(
        err.contains("denied") || err.contains("unauthorized") || err.contains("not allowed"),
        "bob's push should fail with denied/unauthorized:\n{}",
        out.describe()
    );
    let (count, _, scopes) = token_stats(&reg, before);
    eprintln!(
        "bob's push failed after {:.1}s with {count} token requests: {}",
        started.elapsed().as_secs_f64(),
        out.stderr.trim()
    );
    assert!(
        count <= 6,
        "bob's push asked for {count} tokens: {scopes:?}"
    );
    let pulled = run(
        bob.cmd(["pull", &image, "-q"])
            .arg(format!("oci:{}:v1", bob.path("pulled").display())),
        T,
    );
    assert!(
        pulled.status.success(),
        "bob may pull:\n{}",
        pulled.describe()
    );

    // Logout removes the entry; a push then fails again.
    let out = run(cli.cmd(["logout", &host]), T);
    assert!(out.status.success(), "logout:\n{}", out.describe());
    assert!(
        config_auths(&cli).get(&host).is_none(),
        "logout left the entry: {}",
        config_auths(&cli)
    );
    let out = run(
        cli.cmd(["push", &src, &format!("{host}/team/app:2")]),
        FAIL_FAST,
    );
    assert_login_hint(&out, "push after logout");
}

#[test]
fn basic_auth_htpasswd_registry() {
    let server = Server::start_distribution_htpasswd(&[("alice", "secret")]);
    let host = server.host();
    let cli = BerthCli::new();
    let image = format!("{host}/basic/app:1");

    // No credentials.
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let out = run(
        cli.cmd(["import", rootfs.to_str().unwrap(), &image]),
        FAIL_FAST,
    );
    assert_login_hint(&out, "import to an auth registry without credentials");

    // Wrong password: nothing stored.
    let out = login(&cli, &host, "alice", "nope");
    assert!(!out.status.success(), "wrong login:\n{}", out.describe());
    assert!(config_auths(&cli).get(&host).is_none());

    // Login, then import (push) and pull.
    let out = login(&cli, &host, "alice", "secret");
    assert!(out.status.success(), "login:\n{}", out.describe());
    assert_eq!(
        config_auths(&cli)[&host]["auth"],
        BASE64.encode("alice:secret")
    );
    let digest = json_digest(&import_rootfs(&cli, &image, &[]));
    let pulled = run(
        cli.cmd(["pull", &image, "--json"])
            .arg(format!("oci:{}:v1", cli.path("pulled").display())),
        T,
    );
    assert!(pulled.status.success(), "pull:\n{}", pulled.describe());
    assert_eq!(json_digest(&parse_json(&pulled.stdout, "pull")), digest);

    // --creds without any login.
    let fresh = BerthCli::new();
    let v = parse_json(
        &run_ok(
            fresh.cmd(["inspect", &image, "--json", "--creds", "alice:secret"]),
            T,
        ),
        "inspect --creds",
    );
    assert_eq!(json_digest(&v), digest);
    let out = run(
        fresh
            .cmd(["pull", &image, "--creds", "alice:wrong"])
            .arg(format!("oci:{}:v1", fresh.path("x").display())),
        FAIL_FAST,
    );
    assert_login_hint(&out, "pull with wrong --creds");
    let out = run(fresh.cmd(["inspect", &image]), FAIL_FAST);
    assert_login_hint(&out, "inspect without credentials");

    if require_tool("docker") {
        // docker reads what berth login wrote.
        let out = run(cli.docker(["pull", &image]), T);
        let _ = run(cli.docker(["rmi", "-f", &image]), T);
        assert!(
            out.status.success(),
            "docker pull with berth's login:\n{}",
            out.describe()
        );

        // berth reads what docker login wrote.
        let docker_side = BerthCli::new();
        let out = run_with_input(
            docker_side.docker(["login", &host, "-u", "alice", "--password-stdin"]),
            Some(b"secret\n"),
            T,
        );
        assert!(out.status.success(), "docker login:\n{}", out.describe());
        let copy = format!("{host}/basic/fromdocker:1");
        let v = parse_json(
            &run_ok(docker_side.cmd(["copy", &image, &copy, "--json"]), T),
            "copy with docker's login",
        );
        assert_eq!(json_digest(&v), digest);
        let out = run(docker_side.cmd(["logout", &host]), T);
        assert!(out.status.success(), "berth logout:\n{}", out.describe());
        let out = run(docker_side.cmd(["inspect", &copy]), FAIL_FAST);
        assert_login_hint(&out, "inspect after berth logout of docker's login");
    }

    // Logout.
    run_ok(cli.cmd(["logout", &host]), T);
    assert!(config_auths(&cli).get(&host).is_none());
    let out = run(cli.cmd(["ls", &format!("{host}/basic/app")]), FAIL_FAST);
    assert_login_hint(&out, "ls after logout");
}

#[test]
fn docker_credential_helpers_with_berth_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve_with_logins(dir.path());
    let host = server.host();
    let image = format!("{host}/helped/app:1");
    let cli = BerthCli::new();
    let digest = json_digest(&import_rootfs(&cli, &image, &["--creds", "alice:apw"]));
    let helper = Helper::new(&host);
    let inspect = |cli: &BerthCli| run(helper.berth(cli, ["inspect", &image, "--json"]), T);

    // Nothing stored: refused.
    let out = run(cli.cmd(["inspect", &image]), FAIL_FAST);
    assert_login_hint(&out, "inspect without credentials");

    // credsStore: the helper is asked about this registry, and its answer logs in.
    write_docker_config(&cli, &json!({"credsStore": "bertht"}));
    helper.answer(&host, Some(("alice", "apw")));
    let out = inspect(&cli);
    assert!(
        out.status.success(),
        "inspect via credsStore:\n{}",
        out.describe()
    );
    assert_eq!(
        json_digest(&parse_json(&out.stdout, "inspect --json")),
        digest
    );
    let calls = helper.calls();
    assert!(
        !calls.is_empty() && calls.iter().all(|c| *c == format!("get {host}")),
        "the helper should be asked `get {host}` only: {calls:?}"
    );
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("token issued") && l.contains("alice")),
        "berth serve issued no token to alice:\n{log}"
    );
    let pulled = run(
        helper
            .berth(&cli, ["pull", &image, "--json"])
            .arg(format!("oci:{}:v1", cli.path("pulled").display())),
        T,
    );
    assert!(
        pulled.status.success(),
        "pull via credsStore:\n{}",
        pulled.describe()
    );
    assert_eq!(json_digest(&parse_json(&pulled.stdout, "pull")), digest);

    // The secret that logs in is the helper's: a wrong one is refused, and so is a helper
    // that has nothing for this registry.
    helper.answer(&host, Some(("alice", "wrong")));
    assert_login_hint(&inspect(&cli), "inspect with the helper's wrong password");
    helper.answer(&host, None);
    assert_login_hint(&inspect(&cli), "inspect with nothing in the helper");

    // credHelpers: the helper named for this registry wins over `auths`...
    helper.answer(&host, Some(("alice", "apw")));
    let wrong = BASE64.encode("alice:wrong");
    let right = BASE64.encode("alice:apw");
    write_docker_config(
        &cli,
        &json!({"auths": {&host: {"auth": wrong}}, "credHelpers": {&host: "bertht"}}),
    );
    let before = helper.calls().len();
    let out = inspect(&cli);
    assert!(
        out.status.success(),
        "inspect via credHelpers:\n{}",
        out.describe()
    );
    assert!(
        helper.calls().len() > before,
        "credHelpers did not run the helper"
    );
    // ...and one named for another registry is not asked about this one.
    write_docker_config(
        &cli,
        &json!({"auths": {&host: {"auth": right}}, "credHelpers": {"registry.example:5000": "bertht"}}),
    );
    let before = helper.calls().len();
    let out = inspect(&cli);
    assert!(
        out.status.success(),
        "inspect via auths:\n{}",
        out.describe()
    );
    assert_eq!(
        helper.calls().len(),
        before,
        "another registry's helper was asked"
    );

    // `berth login` stores through the helper; config.json keeps an empty entry, no secret.
    write_docker_config(&cli, &json!({"credsStore": "bertht"}));
    let out = run_with_input(
        helper.berth(&cli, ["login", &host, "-u", "alice", "--password-stdin"]),
        Some(b"apw\n"),
        T,
    );
    assert!(
        out.status.success(),
        "login via credsStore:\n{}",
        out.describe()
    );
    let stored = helper
        .calls()
        .iter()
        .find_map(|c| c.strip_prefix("store ").map(str::to_string))
        .expect("the helper was asked to store");
    assert_eq!(
        serde_json::from_str::<Value>(&stored).expect("store input is JSON"),
        json!({"ServerURL": &host, "Username": "alice", "Secret": "apw"})
    );
    assert_eq!(config_auths(&cli)[&host], json!({}));
    let text = std::fs::read_to_string(cli.config_json()).expect("config.json");
    assert!(!text.contains("apw"), "a secret in config.json: {text}");
    let out = run(helper.berth(&cli, ["logout", &host]), T);
    assert!(out.status.success(), "logout:\n{}", out.describe());
    assert!(
        helper.calls().contains(&format!("erase {host}")),
        "logout did not erase through the helper: {:?}",
        helper.calls()
    );

    // A helper that is not installed: an error that names it.
    write_docker_config(&cli, &json!({"credsStore": "bertht-missing"}));
    let out = run(helper.berth(&cli, ["inspect", &image]), FAIL_FAST);
    assert!(
        !out.status.success() && out.stderr.contains("docker-credential-bertht-missing"),
        "a missing helper should be named:\n{}",
        out.describe()
    );
}

#[test]
fn identity_tokens_use_the_oauth2_refresh_token_grant() {
    let reg = TokenRegistry::start();
    let host = reg.host();
    let image = format!("{host}/team/app:1");
    let pusher = BerthCli::new();
    let digest = json_digest(&import_rootfs(
        &pusher,
        &image,
        &["--creds", "alice:secret"],
    ));

    // config.json as `docker login` leaves it with such a token service: the refresh token as
    // `identitytoken`, the user name without a password in `auth`.
    let refresh = reg.refresh_token("alice", "secret");
    let cli = BerthCli::new();
    write_docker_config(
        &cli,
        &json!({"auths": {&host: {"auth": BASE64.encode("alice:"), "identitytoken": &refresh}}}),
    );
    let password_requests = reg.token_requests().len();
    let grants_before = reg.grants().len();
    let pulled = run(
        cli.cmd(["pull", &image, "--json"])
            .arg(format!("oci:{}:v1", cli.path("pulled").display())),
        T,
    );
    assert!(
        pulled.status.success(),
        "pull with an identity token:\n{}",
        pulled.describe()
    );
    assert_eq!(json_digest(&parse_json(&pulled.stdout, "pull")), digest);
    // A push needs a token with push rights: a second grant with the same refresh token.
    let tagged = run(cli.cmd(["tag", &image, &format!("{host}/team/app:2")]), T);
    assert!(
        tagged.status.success(),
        "tag with an identity token:\n{}",
        tagged.describe()
    );
    assert_eq!(
        reg.token_requests().len(),
        password_requests,
        "the client asked for tokens with a password it does not have"
    );
    let grants = reg.grants()[grants_before..].to_vec();
    eprintln!("grants: {grants:?}");
    assert!(!grants.is_empty(), "no refresh-token grant was made");
    for grant in &grants {
        let field = |name: &str| grant.get(name).map(String::as_str);
        assert_eq!(field("grant_type"), Some("refresh_token"), "{grant:?}");
        assert_eq!(field("refresh_token"), Some(refresh.as_str()), "{grant:?}");
        assert_eq!(field("service"), Some(SERVICE), "{grant:?}");
        assert_eq!(field("client_id"), Some("berth"), "{grant:?}");
    }
    let scopes: Vec<&str> = grants
        .iter()
        .filter_map(|g| g.get("scope").map(String::as_str))
        .collect();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains("repository:team/app:pull"))
            && scopes
                .iter()
                .any(|s| s.contains("repository:team/app:pull,push")),
        "the grants should ask for pull, then pull,push on team/app: {scopes:?}"
    );

    // A refresh token the service does not know (revoked): refused, with the hint to log in.
    write_docker_config(
        &cli,
        &json!({"auths": {&host: {"auth": BASE64.encode("alice:"), "identitytoken": "revoked"}}}),
    );
    let grants_before = reg.grants().len();
    let out = run(cli.cmd(["inspect", &image]), FAIL_FAST);
    assert!(reg.grants().len() > grants_before, "no grant was tried");
    assert_login_hint(&out, "inspect with a revoked identity token");

    // From a credential helper: the user name `<token>` means the secret is an identity token.
    let helper = Helper::new(&host);
    helper.answer(&host, Some(("<token>", &refresh)));
    write_docker_config(&cli, &json!({"credsStore": "bertht"}));
    let grants_before = reg.grants().len();
    let out = run(helper.berth(&cli, ["inspect", &image, "--json"]), T);
    assert!(
        out.status.success(),
        "inspect with the helper's identity token:\n{}",
        out.describe()
    );
    assert_eq!(
        json_digest(&parse_json(&out.stdout, "inspect --json")),
        digest
    );
    let grants = reg.grants()[grants_before..].to_vec();
    assert!(
        !grants.is_empty()
            && grants
                .iter()
                .all(|g| g.get("refresh_token") == Some(&refresh)),
        "the helper's identity token should go in a refresh grant: {grants:?}"
    );
    assert_eq!(reg.token_requests().len(), password_requests);
}
