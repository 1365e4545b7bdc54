//! Registry authentication of the `berth` client, end to end:
//!
//! * Bearer tokens: an in-test token service and auth proxy in front of a real `berth serve`
//!   (Docker's token flow: 401 + `WWW-Authenticate: Bearer realm=..,service=..,scope=..`,
//!   Basic credentials at the realm, opaque tokens with scopes and `expires_in`). Login, push,
//!   pull, token caching per scope, an account without push rights, logout.
//! * Basic auth: Debian's `docker-registry` with an htpasswd (bcrypt) file: login, `--creds`,
//!   wrong credentials, and credentials shared with the docker CLI both ways.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
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
    /// Every request to the token endpoint, as its sorted scope list ("" for none).
    token_requests: Mutex<Vec<String>>,
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
            forwarded: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/token", get(token_endpoint))
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

/// `GET /token?service=test&scope=repository:NAME:ACTIONS...` with Basic credentials.
async fn token_endpoint(
    State(s): State<Arc<AuthState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut scopes: Vec<String> = Vec::new();
    for pair in query.unwrap_or_default().split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if percent_decode(k) == "scope" {
                // One parameter may hold several space-separated scopes.
                scopes.extend(percent_decode(v).split(' ').map(str::to_string));
            }
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
    let mut access: HashMap<String, BTreeSet<String>> = HashMap::new();
    for scope in &scopes {
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
    json_response(
        StatusCode::OK,
        json!({"token": token, "access_token": token, "expires_in": expires_in,
               "issued_at": "2024-01-01T00:00:00Z"}),
    )
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
