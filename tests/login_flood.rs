//! Password guessing against `berth serve` with the built-in token service (issue 13):
//!
//! * a flood of 300 concurrent wrong-password `/token` requests (bcrypt cost 10, from
//!   127.0.0.2) must not freeze the registry: a manifest HEAD from 127.0.0.1 keeps answering
//!   within 2 s; most of the flood gets 429 + `Retry-After` without running bcrypt; the
//!   flooding address and the guessed account are backed off; other accounts and addresses
//!   still log in;
//! * with the token scheme, Basic credentials on `/v2/` are refused with the Bearer
//!   challenge, and the challenge's realm is the configured one whatever `Host` says;
//! * tokens signed with the server's own key but with a high-S signature or a `crit`
//!   header are refused.

mod common;

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;

/// Generous: before the fix a HEAD took ~12 s during such a flood.
const HEAD_BOUND: Duration = Duration::from_secs(2);
const FLOOD: usize = 300;
const REALM: &str = "https://registry.example.com/token";

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// alice, bob, carol with bcrypt cost 10 (`htpasswd -B`'s usual cost for real files).
fn start(dir: &Path, auth_extra: &str) -> (Server, PathBuf) {
    let htpasswd = dir.join("htpasswd");
    write_htpasswd(
        &htpasswd,
        &[("alice", "apw"), ("bob", "bpw"), ("carol", "cpw")],
        10,
    );
    let key = dir.join("token-key.pem");
    let toml = format!(
        "[auth]\nhtpasswd = \"{}\"\ntoken_key = \"{}\"\n{auth_extra}\n",
        htpasswd.display(),
        key.display()
    );
    (Server::start_berth_with_config(dir, &toml, true), key)
}

/// A client whose connections come from `ip` (any 127.0.0.0/8 address reaches the server).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::V4(ip))
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

async fn token_request(
    c: &reqwest::Client,
    base: &str,
    user: &str,
    password: &str,
) -> reqwest::Response {
    c.get(format!(
        "{base}/token?service=berth&scope=repository:team/app:pull,push"
    ))
    .header("authorization", basic(user, password))
    .send()
    .await
    .expect("token request")
}

async fn token(c: &reqwest::Client, base: &str, user: &str, password: &str) -> String {
    let resp = token_request(c, base, user, password).await;
    assert_eq!(resp.status().as_u16(), 200, "token for {user}");
    let body: serde_json::Value =
        serde_json::from_slice(&resp.bytes().await.expect("body")).expect("token JSON");
    body["token"].as_str().expect("token field").to_string()
}

/// Pushes a tiny image to team/app:1 with a Bearer token.
async fn push_image(c: &reqwest::Client, base: &str, auth: &str) {
    let (config, layer, manifest) = tiny_image("login-flood");
    for blob in [&config, &layer] {
        let resp = c
            .post(format!(
                "{base}/v2/team/app/blobs/uploads/?digest={}",
                digest_of(blob)
            ))
            .header("authorization", auth)
            .body(blob.clone())
            .send()
            .await
            .expect("push blob");
        assert_eq!(resp.status().as_u16(), 201);
    }
    let resp = c
        .put(format!("{base}/v2/team/app/manifests/1"))
        .header("authorization", auth)
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("push manifest");
    assert_eq!(resp.status().as_u16(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_keeps_the_registry_answering() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start(dir.path(), "");
    let base = server.url();
    let local = client_from(Ipv4Addr::new(127, 0, 0, 1));
    let attacker = client_from(Ipv4Addr::new(127, 0, 0, 2));

    // alice logs in before the flood: her token keeps working during it.
    let alice = format!("Bearer {}", token(&local, &base, "alice", "apw").await);
    push_image(&local, &base, &alice).await;

    // 300 concurrent wrong passwords for alice from another address...
    let flood = {
        let (attacker, base) = (attacker.clone(), base.clone());
        tokio::spawn(async move {
            let requests = (0..FLOOD).map(|i| {
                let (attacker, base) = (attacker.clone(), base.clone());
                async move {
                    let resp =
                        token_request(&attacker, &base, "alice", &format!("guess-{i}")).await;
                    let status = resp.status().as_u16();
                    let retry_after = header(&resp, "retry-after");
                    let body = resp.bytes().await.unwrap_or_default();
                    (status, retry_after, body)
                }
            });
            futures::future::join_all(requests).await
        })
    };
    // ...while a manifest HEAD with alice's token keeps being answered.
    let mut probes = Vec::new();
    while !flood.is_finished() || probes.is_empty() {
        let started = Instant::now();
        let resp = local
            .head(format!("{base}/v2/team/app/manifests/1"))
            .header("authorization", &alice)
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .expect("HEAD during the flood");
        assert_eq!(resp.status().as_u16(), 200, "HEAD during the flood");
        probes.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = flood.await.expect("flood task");
    let slowest = probes.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{} HEADs during the flood, slowest {slowest:?}; flood answers: {} x 401, {} x 429",
        probes.len(),
        results.iter().filter(|r| r.0 == 401).count(),
        results.iter().filter(|r| r.0 == 429).count()
    );
    assert!(
        slowest < HEAD_BOUND,
        "a HEAD took {slowest:?} during the login flood (bound {HEAD_BOUND:?})"
    );

    // Every guess failed; most were refused with 429 before any bcrypt ran.
    let mut checked = 0;
    for (status, retry_after, body) in &results {
        assert!(
            matches!(status, 401 | 429),
            "flood request answered {status}"
        );
        if *status == 429 {
            let secs: u64 = retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .expect("429 without a Retry-After in seconds");
            assert!(secs >= 1);
            assert_eq!(error_codes(body).unwrap_or_default(), ["TOOMANYREQUESTS"]);
            checked += 1;
        }
    }
    assert!(checked > 0, "no flood request was refused with 429");
    let bcrypts = results.iter().filter(|r| r.0 == 401).count();
    assert!(
        bcrypts <= 64,
        "{bcrypts} of {FLOOD} guesses were checked with bcrypt: the checks are not bounded"
    );

    // Another account from another address logs in at once.
    token(&local, &base, "bob", "bpw").await;
    // The flooding address is backed off, even with another account's right password.
    let resp = token_request(&attacker, &base, "carol", "cpw").await;
    assert_eq!(
        resp.status().as_u16(),
        429,
        "the flooding address is not backed off"
    );
    assert!(header(&resp, "retry-after").is_some());
    // The guessed account is backed off from every address: a wrong password is not checked.
    let resp = token_request(&local, &base, "alice", "another-guess").await;
    assert_eq!(
        resp.status().as_u16(),
        429,
        "the guessed account is not backed off"
    );
    // alice's right password, verified before the flood, still works.
    token(&local, &base, "alice", "apw").await;
    // carol, never locked, logs in from the unflooded address.
    token(&local, &base, "carol", "cpw").await;

    // One warning per lockout (account and address), never a password.
    let log = server.log();
    let lockouts: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("too many failed logins"))
        .collect();
    assert_eq!(
        lockouts
            .iter()
            .filter(|l| l.contains("for account") && l.contains("\"alice\""))
            .count(),
        1,
        "account lockout lines: {lockouts:#?}"
    );
    assert_eq!(
        lockouts
            .iter()
            .filter(|l| l.contains("from address") && l.contains("127.0.0.2"))
            .count(),
        1,
        "address lockout lines: {lockouts:#?}"
    );
    assert!(!log.contains("guess-"), "a password reached the log");
}

/// The server key's P-256 signer, read from the PEM file the server wrote.
fn server_signer(key_path: &Path) -> p256::ecdsa::SigningKey {
    use p256::pkcs8::DecodePrivateKey;
    let pem = fs::read_to_string(key_path).expect("server key file");
    let secret = p256::SecretKey::from_pkcs8_pem(&pem).expect("P-256 key");
    p256::ecdsa::SigningKey::from(&secret)
}

/// A JWT with this header and claims, signed (low-S) with `signer`.
fn forge(signer: &p256::ecdsa::SigningKey, header: serde_json::Value, claims: &str) -> String {
    use p256::ecdsa::signature::Signer;
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.as_bytes())
    );
    let signature: p256::ecdsa::Signature = signer.sign(input.as_bytes());
    let signature = signature.normalize_s().unwrap_or(signature);
    format!("{input}.{}", b64url(&signature.to_bytes()))
}

/// The same token with its signature's S replaced by n - S: equally valid to a verifier that
/// accepts both, but a different string.
fn flip_s(token: &str) -> (String, bool) {
    let (input, signature) = token.rsplit_once('.').expect("JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .expect("signature base64");
    let signature = p256::ecdsa::Signature::from_slice(&bytes).expect("ES256 signature");
    let was_low = signature.normalize_s().is_none();
    let (r, s) = signature.split_scalars();
    let flipped =
        p256::ecdsa::Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).expect("flip");
    (format!("{input}.{}", b64url(&flipped.to_bytes())), was_low)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_scheme_refuses_basic_high_s_and_crit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, key_path) = start(dir.path(), &format!("realm = \"{REALM}\""));
    let base = server.url();
    let c = client();

    // Basic credentials on /v2/ with the token scheme: 401 with the Bearer challenge, even
    // when they are right (passwords are checked at /token only).
    for path in ["/v2/", "/v2/team/app/tags/list"] {
        let resp = c
            .get(format!("{base}{path}"))
            .header("authorization", basic("bob", "bpw"))
            .send()
            .await
            .expect("GET with Basic");
        assert_eq!(resp.status().as_u16(), 401, "Basic accepted on {path}");
        let challenge = header(&resp, "www-authenticate").unwrap_or_default();
        assert!(
            challenge.starts_with(&format!("Bearer realm=\"{REALM}\"")),
            "{challenge}"
        );
        assert_eq!(
            error_codes(&resp.bytes().await.expect("body")).unwrap_or_default(),
            ["UNAUTHORIZED"]
        );
    }
    // The configured realm, whatever Host the client sent.
    let raw = raw_request(
        server.port,
        b"GET /v2/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
        Duration::from_secs(10),
    )
    .expect("raw GET /v2/");
    assert_eq!(raw.status, Some(401));
    assert_eq!(
        raw.header("www-authenticate").as_deref(),
        Some(format!("Bearer realm=\"{REALM}\",service=\"berth\"").as_str())
    );

    // Tokens we issue are low-S; the same token with S flipped is refused.
    for _ in 0..8 {
        let t = token(&c, &base, "bob", "bpw").await;
        let resp = c
            .get(format!("{base}/v2/team/app/tags/list"))
            .header("authorization", format!("Bearer {t}"))
            .send()
            .await
            .expect("GET with token");
        assert_eq!(resp.status().as_u16(), 404, "the issued token works");
        let (flipped, was_low) = flip_s(&t);
        assert!(was_low, "an issued token has a high-S signature");
        let resp = c
            .get(format!("{base}/v2/team/app/tags/list"))
            .header("authorization", format!("Bearer {flipped}"))
            .send()
            .await
            .expect("GET with flipped token");
        assert_eq!(resp.status().as_u16(), 401, "a high-S token was accepted");
    }

    // A token forged with the server's own key: accepted as is, refused with `crit`.
    let signer = server_signer(&key_path);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({
        "iss": "berth-token-service", "sub": "bob", "aud": "berth",
        "exp": now + 300, "nbf": now, "iat": now,
        "access": [{"type": "repository", "name": "team/app", "actions": ["pull"]}],
    })
    .to_string();
    let plain = forge(
        &signer,
        serde_json::json!({"alg": "ES256", "typ": "JWT"}),
        &claims,
    );
    let critical = forge(
        &signer,
        serde_json::json!({"alg": "ES256", "typ": "JWT", "crit": ["berth-test"], "berth-test": true}),
        &claims,
    );
    for (token, expected, what) in [
        (plain, 404, "a token signed with the server key"),
        (critical, 401, "a token with a crit header"),
    ] {
        let resp = c
            .get(format!("{base}/v2/team/app/tags/list"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .expect("GET with forged token");
        assert_eq!(resp.status().as_u16(), expected, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_scheme_logins_are_backed_off_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, _) = start(dir.path(), "scheme = \"basic\"");
    let base = server.url();
    let c = client();
    let get = |user: &'static str, password: &'static str| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            c.get(format!("{base}/v2/"))
                .header("authorization", basic(user, password))
                .send()
                .await
                .expect("GET /v2/")
        }
    };
    // Five wrong passwords are answered 401; then the account is backed off.
    for i in 0..5 {
        assert_eq!(
            get("carol", "wrong").await.status().as_u16(),
            401,
            "guess {i}"
        );
    }
    let resp = get("carol", "cpw").await;
    assert_eq!(resp.status().as_u16(), 429, "carol not backed off");
    let secs: u64 = header(&resp, "retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    assert_eq!(
        error_codes(&resp.bytes().await.expect("body")).unwrap_or_default(),
        ["TOOMANYREQUESTS"]
    );
    // The address is backed off as well, so bob waits too; once the 1 s lock
    // has passed, carol's right password works and resets her count.
    assert_eq!(get("bob", "bpw").await.status().as_u16(), 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get("carol", "cpw").await.status().as_u16(), 200);
    assert_eq!(get("bob", "bpw").await.status().as_u16(), 200);
}
