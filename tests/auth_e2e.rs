//! Logins and access rules with real clients: `docker login/push/pull`, skopeo and `berth`
//! against `berth serve` with the built-in token service, Basic auth, HTTPS with a test CA
//! (certificate reload, client certificates), the conformance suite with credentials, and
//! the attacks of the security table in docs/security.md (wrong-scope, expired and forged tokens,
//! a replayed upload URL, source-less mounts, rate limits).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use berth_auth::acl::Identity;
use berth_auth::scope::Scope;
use berth_auth::token::{SigningKey, TokenIssuer};
use common::*;

const TIMEOUT: Duration = Duration::from_secs(300);

/// alice (team-a), bob (readers), dave (own namespace) and carol (no group); cost-4 bcrypt.
fn write_htpasswd(path: &Path) {
    write_accounts(
        path,
        &[
            ("alice", "apw"),
            ("bob", "bpw"),
            ("carol", "cpw"),
            ("dave", "dpw"),
        ],
    );
}

/// An htpasswd file as `htpasswd -B -C 4` writes it.
fn write_accounts(path: &Path, accounts: &[(&str, &str)]) {
    common::write_htpasswd(path, accounts, 4);
}

const RULES: &str = r#"
[access.groups]
team-a = ["alice"]
readers = ["bob"]

[[access.rules]]
who = "group:team-a"
repositories = ["team-a/**", "public/*"]
actions = ["*"]

[[access.rules]]
who = "group:readers"
repositories = ["team-a/**"]
actions = ["pull"]

[[access.rules]]
who = "user:dave"
repositories = ["dave/*"]
actions = ["pull", "push"]

[[access.rules]]
who = "anonymous"
repositories = ["public/*"]
actions = ["pull"]
"#;

/// A berth server with logins on; `auth_table` is extra `[auth]` content.
fn start_with_auth(dir: &Path, auth_table: &str, extra: &[String]) -> (Server, PathBuf) {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(&htpasswd);
    let key = dir.join("token-key.pem");
    let config = dir.join("berth.toml");
    fs::write(
        &config,
        format!(
            "[auth]\nhtpasswd = \"{}\"\ntoken_key = \"{}\"\n{auth_table}\n{RULES}",
            htpasswd.display(),
            key.display()
        ),
    )
    .expect("write config");
    let mut args = vec!["--config".to_string(), config.display().to_string()];
    args.extend(extra.iter().cloned());
    (Server::start_berth_with(&args, true, false), key)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A token from the server's /token endpoint.
async fn token(server: &Server, user: Option<(&str, &str)>, scopes: &[&str]) -> String {
    let mut url = format!("{}/token?service=berth", server.url());
    for s in scopes {
        url.push_str(&format!("&scope={s}"));
    }
    let mut req = client().get(url);
    if let Some((u, p)) = user {
        req = req.header("authorization", basic(u, p));
    }
    let resp = req.send().await.expect("token request");
    assert_eq!(resp.status().as_u16(), 200, "token for {user:?} {scopes:?}");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("token JSON");
    body["token"].as_str().expect("token field").to_string()
}

async fn get(url: &str, authorization: Option<&str>) -> reqwest::Response {
    let mut req = client().get(url);
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    req.send().await.expect("GET")
}

fn codes(body: &[u8]) -> Vec<String> {
    error_codes(body).unwrap_or_default()
}

/// A busybox image in the docker daemon, imported from a rootfs tarball.
fn docker_image(cli: &BerthCli, name: &str) {
    let rootfs = cli.path("rootfs.tar");
    if !rootfs.exists() {
        write_busybox_rootfs(&rootfs, false);
    }
    run_ok(
        cli.docker(["import", &rootfs.display().to_string(), name]),
        TIMEOUT,
    );
}

/// Removes images from the docker daemon, also when the test fails.
struct Rmi(Vec<String>);
impl Drop for Rmi {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = run(cmd("docker", ["rmi", "-f", image]), TIMEOUT);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_with_docker_skopeo_and_berth() {
    if !require_tool("docker") || !require_tool("skopeo") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start_with_auth(dir.path(), "", &[]);
    let host = server.host();
    let base = server.url();

    // Anonymous /v2/ is how clients find the realm.
    let resp = get(&format!("{base}/v2/"), None).await;
    assert_eq!(resp.status().as_u16(), 401);
    let challenge = header(&resp, "www-authenticate").expect("challenge");
    assert_eq!(
        challenge,
        format!("Bearer realm=\"http://{host}/token\",service=\"berth\"")
    );
    assert_eq!(codes(&resp.bytes().await.expect("body")), ["UNAUTHORIZED"]);
    // A private repository: 401 with the scope a token needs.
    let resp = get(&format!("{base}/v2/team-a/app/manifests/1"), None).await;
    assert_eq!(resp.status().as_u16(), 401);
    assert!(
        header(&resp, "www-authenticate")
            .is_some_and(|c| c.contains("scope=\"repository:team-a/app:pull\"")),
        "{:?}",
        header(&resp, "www-authenticate")
    );

    // docker login + push as alice; her push elsewhere is DENIED.
    let cli = BerthCli::new();
    let image = format!("{host}/team-a/app:1");
    let _cleanup = Rmi(vec![
        image.clone(),
        format!("{host}/other/app:1"),
        format!("{host}/team-a/bob:1"),
        "berth-auth-bb:1".into(),
    ]);
    docker_image(&cli, "berth-auth-bb:1");
    let mut login = cli.docker(["login", "-u", "alice", "--password-stdin", &host]);
    let out = run_with_input(&mut login, Some(b"apw\n"), TIMEOUT);
    assert!(out.status.success(), "docker login: {}", out.describe());
    run_ok(cli.docker(["tag", "berth-auth-bb:1", &image]), TIMEOUT);
    run_ok(cli.docker(["push", &image]), TIMEOUT);
    run_ok(
        cli.docker(["tag", "berth-auth-bb:1", &format!("{host}/other/app:1")]),
        TIMEOUT,
    );
    let denied = run_fail(
        cli.docker(["push", &format!("{host}/other/app:1")]),
        TIMEOUT,
    );
    assert!(denied.stderr.contains("denied"), "{}", denied.describe());

    // A wrong password is refused at login.
    let mut wrong = cli.docker(["login", "-u", "alice", "--password-stdin", &host]);
    let out = run_with_input(&mut wrong, Some(b"nope\n"), TIMEOUT);
    assert!(!out.status.success(), "wrong password accepted");

    // bob (readers) pulls, but cannot push to team-a.
    run_ok(cli.docker(["logout", &host]), TIMEOUT);
    run_ok(cli.docker(["rmi", &image]), TIMEOUT);
    let anonymous = run_fail(cli.docker(["pull", &image]), TIMEOUT);
    assert!(
        anonymous.stderr.contains("unauthorized") || anonymous.stderr.contains("denied"),
        "{}",
        anonymous.describe()
    );
    let mut login = cli.docker(["login", "-u", "bob", "--password-stdin", &host]);
    let out = run_with_input(&mut login, Some(b"bpw\n"), TIMEOUT);
    assert!(out.status.success(), "docker login bob: {}", out.describe());
    run_ok(cli.docker(["pull", &image]), TIMEOUT);
    run_ok(
        cli.docker(["tag", "berth-auth-bb:1", &format!("{host}/team-a/bob:1")]),
        TIMEOUT,
    );
    let denied = run_fail(
        cli.docker(["push", &format!("{host}/team-a/bob:1")]),
        TIMEOUT,
    );
    assert!(denied.stderr.contains("denied"), "{}", denied.describe());

    // skopeo with credentials copies into public/ as alice; anonymous skopeo reads it back.
    run_ok(
        cmd(
            "skopeo",
            [
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                "--src-creds",
                "alice:apw",
                "--dest-creds",
                "alice:apw",
                &format!("docker://{image}"),
                &format!("docker://{host}/public/img:1"),
            ],
        ),
        TIMEOUT,
    );
    run_ok(
        cmd(
            "skopeo",
            [
                "inspect",
                "--tls-verify=false",
                "--no-creds",
                &format!("docker://{host}/public/img:1"),
            ],
        ),
        TIMEOUT,
    );
    run_fail(
        cmd(
            "skopeo",
            [
                "inspect",
                "--tls-verify=false",
                "--no-creds",
                &format!("docker://{image}"),
            ],
        ),
        TIMEOUT,
    );

    // berth login/pull as bob through the same credentials file; push is refused clearly.
    let berth = BerthCli::new();
    let mut login = berth.cmd(["login", "-u", "bob", "--password-stdin", &host]);
    let out = run_with_input(&mut login, Some(b"bpw\n"), TIMEOUT);
    assert!(out.status.success(), "berth login: {}", out.describe());
    let layout = berth.path("layout");
    run_ok(
        berth.cmd(["pull", &image, &format!("oci:{}:1", layout.display())]),
        TIMEOUT,
    );
    let refused = run_fail(
        berth.cmd([
            "copy",
            &format!("oci:{}:1", layout.display()),
            &format!("{host}/team-a/from-berth:1"),
        ]),
        TIMEOUT,
    );
    assert!(
        refused.stderr.to_lowercase().contains("denied"),
        "{}",
        refused.describe()
    );

    // The catalog lists only what the caller may see.
    for (user, password, expected) in [
        ("alice", "apw", vec!["public/img", "team-a/app"]),
        ("carol", "cpw", vec!["public/img"]),
    ] {
        let t = token(&server, Some((user, password)), &["registry:catalog:*"]).await;
        let resp = get(&format!("{base}/v2/_catalog"), Some(&format!("Bearer {t}"))).await;
        assert_eq!(resp.status().as_u16(), 200, "{user} catalog");
        let body: serde_json::Value =
            serde_json::from_slice(&resp.bytes().await.expect("body")).expect("catalog JSON");
        let repos: Vec<&str> = body["repositories"]
            .as_array()
            .expect("repositories")
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        assert_eq!(repos, expected, "{user} sees");
    }

    // Failed logins are logged with the client address, never with the password.
    let log = server.log();
    assert!(
        log.lines()
            .any(|l| l.contains("failed login") && l.contains("127.0.0.1") && l.contains("alice")),
        "no failed-login line in the log"
    );
    assert!(!log.contains("nope"), "a password reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacks_on_tokens_uploads_and_mounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, key_path) = start_with_auth(dir.path(), "", &[]);
    let base = server.url();
    let c = client();

    // alice pushes a blob and an image into team-a/app.
    let alice = token(
        &server,
        Some(("alice", "apw")),
        &["repository:team-a/app:pull,push"],
    )
    .await;
    let alice_auth = format!("Bearer {alice}");
    let (config, layer, manifest) = tiny_image("attacks");
    for blob in [&config, &layer] {
        let resp = c
            .post(format!(
                "{base}/v2/team-a/app/blobs/uploads/?digest={}",
                digest_of(blob)
            ))
            .header("authorization", &alice_auth)
            .body(blob.clone())
            .send()
            .await
            .expect("push blob");
        assert_eq!(resp.status().as_u16(), 201);
    }
    let resp = c
        .put(format!("{base}/v2/team-a/app/manifests/v1"))
        .header("authorization", &alice_auth)
        .header("content-type", OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await
        .expect("push manifest");
    assert_eq!(resp.status().as_u16(), 201);

    // Token for one repository used on another: 401 insufficient_scope.
    let resp = get(
        &format!("{base}/v2/public/img/tags/list"),
        Some(&alice_auth),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 401);
    assert!(header(&resp, "www-authenticate")
        .is_some_and(|c| c.contains("error=\"insufficient_scope\"")));

    // Expired token, signed with the server's own key.
    let key = SigningKey::load_or_generate(&key_path).expect("server key");
    let issuer = TokenIssuer::new(key, "berth-token-service");
    let pull = [Scope::parse("repository:team-a/app:pull").expect("scope")];
    let old = SystemTime::now() - Duration::from_secs(7200);
    let expired = issuer
        .issue(&Identity::user("alice"), "berth", &pull, old)
        .expect("issue");
    let resp = get(
        &format!("{base}/v2/team-a/app/manifests/v1"),
        Some(&format!("Bearer {}", expired.token.expose())),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 401, "expired token accepted");
    // Forged: the right claims, another key.
    let (other_key, _) = SigningKey::generate().expect("key");
    let forged = TokenIssuer::new(other_key, "berth-token-service")
        .issue(&Identity::user("alice"), "berth", &pull, SystemTime::now())
        .expect("issue");
    let resp = get(
        &format!("{base}/v2/team-a/app/manifests/v1"),
        Some(&format!("Bearer {}", forged.token.expose())),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 401, "forged token accepted");
    // Right key, wrong audience.
    let key = SigningKey::load_or_generate(&key_path).expect("server key");
    let other_service = TokenIssuer::new(key, "berth-token-service")
        .issue(
            &Identity::user("alice"),
            "elsewhere",
            &pull,
            SystemTime::now(),
        )
        .expect("issue");
    let resp = get(
        &format!("{base}/v2/team-a/app/manifests/v1"),
        Some(&format!("Bearer {}", other_service.token.expose())),
    )
    .await;
    assert_eq!(
        resp.status().as_u16(),
        401,
        "token for another service accepted"
    );

    // An upload URL of alice's replayed by bob (pull-only there): 403, nothing written.
    let resp = c
        .post(format!("{base}/v2/team-a/app/blobs/uploads/"))
        .header("authorization", &alice_auth)
        .send()
        .await
        .expect("start upload");
    assert_eq!(resp.status().as_u16(), 202);
    let location = absolute(&base, &header(&resp, "location").expect("location"));
    let bob = token(
        &server,
        Some(("bob", "bpw")),
        &["repository:team-a/app:pull,push"],
    )
    .await;
    let resp = c
        .patch(&location)
        .header("authorization", format!("Bearer {bob}"))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 1000])
        .send()
        .await
        .expect("replayed PATCH");
    assert_eq!(resp.status().as_u16(), 403, "bob wrote into alice's upload");
    assert_eq!(codes(&resp.bytes().await.expect("body")), ["DENIED"]);
    let resp = c
        .get(&location)
        .header("authorization", &alice_auth)
        .send()
        .await
        .expect("upload status");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(
        header(&resp, "range").as_deref(),
        Some("0-0"),
        "bytes were written"
    );

    // dave knows the layer's digest: a mount from team-a is DENIED, and one without
    // `from` does not mount (it starts a plain upload instead).
    let dave = token(
        &server,
        Some(("dave", "dpw")),
        &["repository:dave/x:pull,push", "repository:team-a/app:pull"],
    )
    .await;
    let layer_digest = digest_of(&layer);
    let resp = c
        .post(format!(
            "{base}/v2/dave/x/blobs/uploads/?mount={layer_digest}&from=team-a/app"
        ))
        .header("authorization", format!("Bearer {dave}"))
        .send()
        .await
        .expect("mount");
    assert_eq!(
        resp.status().as_u16(),
        403,
        "mount from a repository dave cannot read"
    );
    let resp = c
        .post(format!(
            "{base}/v2/dave/x/blobs/uploads/?mount={layer_digest}"
        ))
        .header("authorization", format!("Bearer {dave}"))
        .send()
        .await
        .expect("mount without from");
    assert_eq!(resp.status().as_u16(), 202, "mounted a blob from anywhere");
    let resp = get(
        &format!("{base}/v2/dave/x/blobs/{layer_digest}"),
        Some(&format!("Bearer {dave}")),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 404, "the blob leaked into dave/x");

    // A token endpoint that is asked with a wrong password says 401, not a token.
    let resp = c
        .get(format!(
            "{base}/token?service=berth&scope=repository:team-a/app:pull"
        ))
        .header("authorization", basic("alice", "wrong"))
        .send()
        .await
        .expect("token");
    assert_eq!(resp.status().as_u16(), 401);
    // Path traversal in names is refused before any storage path is formed.
    let resp = get(
        &format!("{base}/v2/../../etc/passwd/manifests/x"),
        Some(&alice_auth),
    )
    .await;
    assert!(
        matches!(resp.status().as_u16(), 400 | 404),
        "traversal answered {}",
        resp.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_scheme_and_rate_limit() {
    // One request back per 1,000 s: however slowly this test runs, what the limiter allows is
    // the burst plus `elapsed / 1000 s` (computed below), never a race against the refill.
    const RATE: f64 = 0.001;
    const BURST: usize = 40;
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start_with_auth(
        dir.path(),
        &format!("scheme = \"basic\"\n[limits]\nrate = {RATE}\nburst = {BURST}\n"),
        &[],
    );
    let base = server.url();
    let resp = get(&format!("{base}/v2/"), None).await;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        header(&resp, "www-authenticate").as_deref(),
        Some("Basic realm=\"berth\"")
    );
    let resp = get(&format!("{base}/v2/"), Some(&basic("alice", "apw"))).await;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = get(&format!("{base}/v2/"), Some(&basic("alice", "bad"))).await;
    assert_eq!(resp.status().as_u16(), 401);
    let resp = get(
        &format!("{base}/v2/team-a/x/tags/list"),
        Some(&basic("carol", "cpw")),
    )
    .await;
    assert_eq!(resp.status().as_u16(), 403, "carol has no rights on team-a");
    // /token does not exist in Basic mode.
    let resp = get(&format!("{base}/token"), None).await;
    assert_eq!(resp.status().as_u16(), 404);
    // Past the burst: 429 with Retry-After and the TOOMANYREQUESTS code. The limit is per
    // client address; the requests above (and the harness's readiness probe) came from
    // 127.0.0.1, these come from 127.0.0.2, whose bucket is full: exactly BURST pass.
    let other = reqwest::Client::builder()
        .no_proxy()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client on 127.0.0.2");
    let from_other = || {
        other
            .get(format!("{base}/v2/"))
            .header("authorization", basic("alice", "apw"))
            .send()
    };
    let started = std::time::Instant::now();
    let mut passed = 0;
    let mut limited = None;
    for _ in 0..BURST + 20 {
        let resp = from_other().await.expect("GET from 127.0.0.2");
        if resp.status().as_u16() == 429 {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status().as_u16(), 200);
        passed += 1;
    }
    let resp = limited.unwrap_or_else(|| {
        panic!(
            "no 429 after {} requests with burst {BURST} and {RATE}/s",
            BURST + 20
        )
    });
    let retry: u64 = header(&resp, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert_eq!(
        codes(&resp.bytes().await.expect("body")),
        ["TOOMANYREQUESTS"]
    );
    // Still refused right after (one more request would need ~1,000 s of refill).
    for _ in 0..3 {
        let resp = from_other().await.expect("GET from 127.0.0.2");
        if resp.status().as_u16() != 429 {
            passed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let refilled = (elapsed * RATE).floor() as usize;
    assert!(
        (BURST..=BURST + refilled).contains(&passed),
        "{passed} requests passed: the burst is {BURST}, plus {refilled} refilled in {elapsed:.1} s"
    );
    // 127.0.0.1 has its own bucket, and it is not empty.
    let resp = get(&format!("{base}/v2/"), Some(&basic("alice", "apw"))).await;
    assert_eq!(
        resp.status().as_u16(),
        200,
        "one address's limit is not another's"
    );
    // Retry-After is the time to refill one request: up to 1 / RATE, less what has refilled.
    let full_wait = (1.0 / RATE) as u64;
    assert!(
        retry <= full_wait && retry as f64 >= full_wait as f64 - elapsed - 1.0,
        "Retry-After {retry} s at {RATE}/s after {elapsed:.1} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_htpasswd_file_takes_effect_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start_with_auth(dir.path(), "scheme = \"basic\"\n", &[]);
    let url = format!("{}/v2/", server.url());
    let status = |user: &'static str, password: &'static str| {
        let url = url.clone();
        async move {
            get(&url, Some(&basic(user, password)))
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("alice", "apw").await, 200);
    assert_eq!(status("carol", "cpw").await, 200);
    // alice changes her password and carol leaves, as `htpasswd -B` would write it.
    write_accounts(
        &dir.path().join("htpasswd"),
        &[("alice", "new-apw"), ("bob", "bpw"), ("dave", "dpw")],
    );
    // Synchronise on the server seeing the change, not on a guessed delay: alice's old
    // password keeps passing (from the login cache, no bcrypt, no failure counted) until the
    // server re-reads the file, and the first request after that is refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut polls = 0;
    loop {
        polls += 1;
        match status("alice", "apw").await {
            200 => {}
            401 => break,
            other => panic!("alice's old password: {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice's old password still works 60 s after the file changed ({polls} requests)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // pacing only
    }
    assert!(
        server.log().contains("htpasswd file reloaded"),
        "the re-read is logged"
    );
    assert_eq!(status("alice", "new-apw").await, 200, "the new password");
    assert_eq!(status("alice", "apw").await, 401, "the old password");
    assert_eq!(status("carol", "cpw").await, 401, "a removed account");
    assert_eq!(status("bob", "bpw").await, 200, "an unchanged account");
    eprintln!("re-read seen after {polls} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start_with_auth(dir.path(), "", &[]);
    let options = berth_conformance::Options {
        url: server.url(),
        namespace: "team-a/conformance".to_string(),
        only: None,
        credentials: Some(("alice".into(), "apw".into())),
        next: false,
    };
    let report = berth_conformance::run(&options).await;
    let failed = report.failed();
    for f in &failed {
        eprintln!("FAILED {}: {}", f.id, f.detail);
    }
    assert!(report.results.len() > 50, "too few checks ran");
    assert!(
        failed.is_empty(),
        "{} checks failed with auth on",
        failed.len()
    );
    // Without credentials, the same suite fails: auth is really on.
    let anonymous = berth_conformance::run(&berth_conformance::Options {
        credentials: None,
        ..options
    })
    .await;
    assert!(
        !anonymous.failed().is_empty(),
        "anonymous run passed with auth on"
    );
}

/// Writes `certs.d/HOST/ca.crt` for the daemon and removes it afterwards.
struct DockerCa(PathBuf);
impl Drop for DockerCa {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn openssl_serial(port: u16) -> Option<String> {
    let out = run_with_input(
        cmd(
            "openssl",
            [
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "127.0.0.1",
            ],
        ),
        Some(b""),
        Duration::from_secs(20),
    );
    let pem = out.stdout;
    let begin = pem.find("-----BEGIN CERTIFICATE-----")?;
    let end = pem.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
    let serial = run_with_input(
        cmd("openssl", ["x509", "-noout", "-serial"]),
        Some(&pem.as_bytes()[begin..end]),
        Duration::from_secs(20),
    );
    Some(serial.stdout.trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_docker_login_reload_and_client_certificates() {
    if !require_tool("openssl") || !require_tool("docker") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, ca_key) = make_test_ca(dir.path());
    let (cert, key) = make_test_cert(dir.path(), (&ca, &ca_key), "server", false);
    let live_cert = dir.path().join("live.pem");
    let live_key = dir.path().join("live.key");
    fs::copy(&cert, &live_cert).expect("cert");
    fs::copy(&key, &live_key).expect("key");
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd);
    let server = Server::start_berth_with(
        &[
            "--tls-cert".into(),
            live_cert.display().to_string(),
            "--tls-key".into(),
            live_key.display().to_string(),
            "--htpasswd".into(),
            htpasswd.display().to_string(),
        ],
        true,
        true,
    );
    let host = server.host();
    let https = format!("https://{host}");

    // Plain HTTP to the HTTPS port gets no registry answer.
    assert!(
        !matches!(raw_status(server.port, "GET", "/v2/"), Some(200 | 401)),
        "plain HTTP served on the HTTPS port"
    );
    // A client that trusts the CA gets the challenge, with an https realm.
    let ca_pem = fs::read(&ca).expect("ca");
    let trusting = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("ca cert"))
        .build()
        .expect("client");
    let resp = trusting
        .get(format!("{https}/v2/"))
        .send()
        .await
        .expect("HTTPS GET");
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        header(&resp, "www-authenticate"),
        Some(format!(
            "Bearer realm=\"https://{host}/token\",service=\"berth\""
        ))
    );

    // docker trusts the CA from certs.d; login, push and pull over HTTPS.
    let certs_d = PathBuf::from("/etc/docker/certs.d").join(&host);
    if fs::create_dir_all(&certs_d).is_err() {
        assert!(!in_ci(), "cannot write {} (run as root)", certs_d.display());
        eprintln!("SKIPPED docker over HTTPS: /etc/docker/certs.d is not writable");
        return;
    }
    let _ca_guard = DockerCa(certs_d.clone());
    fs::copy(&ca, certs_d.join("ca.crt")).expect("install CA for docker");
    let cli = BerthCli::new();
    let image = format!("{host}/secure/app:1");
    let _cleanup = Rmi(vec![image.clone(), "berth-tls-bb:1".into()]);
    docker_image(&cli, "berth-tls-bb:1");
    let mut login = cli.docker(["login", "-u", "alice", "--password-stdin", &host]);
    let out = run_with_input(&mut login, Some(b"apw\n"), TIMEOUT);
    assert!(
        out.status.success(),
        "docker login over HTTPS: {}",
        out.describe()
    );
    run_ok(cli.docker(["tag", "berth-tls-bb:1", &image]), TIMEOUT);
    run_ok(cli.docker(["push", &image]), TIMEOUT);
    run_ok(cli.docker(["rmi", &image]), TIMEOUT);
    run_ok(cli.docker(["pull", &image]), TIMEOUT);

    // A renewed certificate is served without a restart.
    let before = openssl_serial(server.port).expect("serial before");
    let (new_cert, new_key) = make_test_cert(dir.path(), (&ca, &ca_key), "renewed", false);
    fs::copy(&new_key, dir.path().join("tmp.key")).expect("copy");
    fs::copy(&new_cert, dir.path().join("tmp.pem")).expect("copy");
    fs::rename(dir.path().join("tmp.key"), &live_key).expect("rename key");
    fs::rename(dir.path().join("tmp.pem"), &live_cert).expect("rename cert");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut after = before.clone();
    while after == before && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = openssl_serial(server.port).expect("serial after");
    }
    assert_ne!(after, before, "the renewed certificate was not picked up");
    assert!(server.log().contains("TLS certificate reloaded"));
    run_ok(cli.docker(["pull", &image]), TIMEOUT);

    // mTLS: a server that requires client certificates from the CA.
    let (client_cert, client_key) = make_test_cert(dir.path(), (&ca, &ca_key), "client", true);
    let mtls = Server::start_berth_with(
        &[
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-client-ca".into(),
            ca.display().to_string(),
        ],
        false,
        true,
    );
    let url = format!("https://{}/v2/", mtls.host());
    let no_cert = trusting.get(&url).send().await;
    assert!(
        no_cert.is_err() || no_cert.is_ok_and(|r| r.status().as_u16() != 200),
        "served a client without a certificate"
    );
    let mut identity = fs::read(&client_cert).expect("client cert");
    identity.extend(fs::read(&client_key).expect("client key"));
    let with_cert = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("ca cert"))
        .identity(reqwest::Identity::from_pem(&identity).expect("identity"))
        .build()
        .expect("client");
    let resp = with_cert.get(&url).send().await.expect("mTLS GET");
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn slow_headers_and_stalled_uploads_are_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.toml");
    fs::write(
        &config,
        "[limits]\nheader_timeout = \"2s\"\nidle_timeout = \"3s\"\n",
    )
    .expect("config");
    let server = Server::start_berth_with(
        &["--config".into(), config.display().to_string()],
        false,
        false,
    );
    use std::io::{Read, Write};
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        s
    };
    // Slowloris: headers that never end. The server closes within the header timeout.
    let mut slow = connect();
    let started = std::time::Instant::now();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "slow headers held the connection for {waited:?}"
    );
    // hyper may answer 408 before closing; either way nothing is served.
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");

    // A stalled upload body: cut after the idle timeout, the upload keeps only what came.
    let mut stalled = connect();
    let started = std::time::Instant::now();
    stalled
        .write_all(
            b"POST /v2/slow/blobs/uploads/?digest=sha256:0000000000000000000000000000000000000000000000000000000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\npartial",
        )
        .expect("write");
    let _ = stalled.read(&mut buf);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(15),
        "stalled upload connection closed after {waited:?}"
    );
    // A client that keeps sending slowly is not cut off: 4 s of 1 byte / 500 ms > idle 3 s.
    let body = vec![b'x'; 8];
    let digest = digest_of(&body);
    let mut steady = connect();
    steady
        .write_all(
            format!(
                "POST /v2/slow/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .expect("write head");
    for b in &body {
        std::thread::sleep(Duration::from_millis(500));
        steady.write_all(&[*b]).expect("slow byte");
    }
    let mut response = String::new();
    let _ = steady.read_to_string(&mut response);
    assert!(
        response.starts_with("HTTP/1.1 201"),
        "slow but steady upload: {response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_with_credentials() {
    if !require_tool("podman") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start_with_auth(dir.path(), "", &[]);
    let host = server.host();
    let root = dir.path().join("podman-root");
    let runroot = dir.path().join("podman-run");
    let authfile = dir.path().join("auth.json");
    let podman = |args: &[&str]| {
        let mut c = cmd(
            "podman",
            [
                "--root",
                &root.display().to_string(),
                "--runroot",
                &runroot.display().to_string(),
                "--runtime",
                "runc",
                // vfs: the overlay driver leaves a mount behind in the temporary folder.
                "--storage-driver",
                "vfs",
            ],
        );
        c.args(args);
        c
    };
    let rootfs = dir.path().join("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    run_ok(
        podman(&["import", &rootfs.display().to_string(), "localhost/bb:1"]),
        TIMEOUT,
    );
    let auth = authfile.display().to_string();
    run_ok(
        podman(&[
            "login",
            "--tls-verify=false",
            "--authfile",
            &auth,
            "-u",
            "alice",
            "-p",
            "apw",
            &host,
        ]),
        TIMEOUT,
    );
    let image = format!("{host}/team-a/pod:1");
    run_ok(
        podman(&[
            "push",
            "--tls-verify=false",
            "--authfile",
            &auth,
            "localhost/bb:1",
            &format!("docker://{image}"),
        ]),
        TIMEOUT,
    );
    run_ok(podman(&["rmi", "-a", "-f"]), TIMEOUT);
    run_ok(
        podman(&["pull", "--tls-verify=false", "--authfile", &auth, &image]),
        TIMEOUT,
    );
    let denied = run_fail(
        podman(&[
            "push",
            "--tls-verify=false",
            "--authfile",
            &auth,
            &image,
            &format!("docker://{host}/other/pod:1"),
        ]),
        TIMEOUT,
    );
    // podman words it "denied" or, when it first checks for the blob, "403 (Forbidden)".
    assert!(
        denied.stderr.contains("denied") || denied.stderr.contains("403"),
        "{}",
        denied.describe()
    );
    let _ = run(podman(&["rmi", "-a", "-f"]), TIMEOUT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_token_service_is_trusted_by_its_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (key, _) = SigningKey::generate().expect("key");
    let public = dir.path().join("issuer.pem");
    fs::write(&public, key.public_key_pem()).expect("write public key");
    let config = dir.path().join("berth.toml");
    fs::write(
        &config,
        format!(
            "[auth]\nissuer = \"auth.example\"\ntrust_keys = \"{}\"\nrealm = \"https://auth.example/token\"\nservice = \"reg\"\n",
            public.display()
        ),
    )
    .expect("config");
    let server = Server::start_berth_with(
        &["--config".into(), config.display().to_string()],
        true,
        false,
    );
    let base = server.url();
    let resp = get(&format!("{base}/v2/app/manifests/1"), None).await;
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        header(&resp, "www-authenticate").as_deref(),
        Some("Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:app:pull\"")
    );
    let issuer = TokenIssuer::new(key, "auth.example");
    let pull = [Scope::parse("repository:app:pull").expect("scope")];
    let token = issuer
        .issue(&Identity::user("erin"), "reg", &pull, SystemTime::now())
        .expect("issue");
    let auth = format!("Bearer {}", token.token.expose());
    let resp = get(&format!("{base}/v2/app/manifests/1"), Some(&auth)).await;
    assert_eq!(
        resp.status().as_u16(),
        404,
        "a valid external token is let through"
    );
    let resp = get(&format!("{base}/v2/other/manifests/1"), Some(&auth)).await;
    assert_eq!(resp.status().as_u16(), 401, "its scope is all it allows");
    // No built-in token endpoint when an external service issues tokens.
    assert_eq!(
        get(&format!("{base}/token"), None).await.status().as_u16(),
        404
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_upload_sessions_expire() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.toml");
    fs::write(&config, "[limits]\nupload_expiry = \"2s\"\n").expect("config");
    let server = Server::start_berth_with(
        &["--config".into(), config.display().to_string()],
        false,
        false,
    );
    let base = server.url();
    let c = client();
    let resp = c
        .post(format!("{base}/v2/expiry/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(resp.status().as_u16(), 202);
    let location = absolute(&base, &header(&resp, "location").expect("location"));
    assert_eq!(
        c.get(&location)
            .send()
            .await
            .expect("status")
            .status()
            .as_u16(),
        204
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = c
            .get(&location)
            .send()
            .await
            .expect("status")
            .status()
            .as_u16();
        if status == 404 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "session still alive after 20 s"
        );
    }
}
