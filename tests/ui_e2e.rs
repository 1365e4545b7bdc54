//! The web UI in a real browser: Debian's `chromium` driven through `chromedriver`
//! (WebDriver, the `fantoccini` crate) against a real `berth serve` with logins and access
//! rules, images pushed by `skopeo` from an OCI layout this test writes (a label
//! `<script>alert(1)</script>`, history steps, env, ports). Anonymous, a user who may
//! delete and one who may only pull: log in, open a repository and an image, see layers
//! and history, copy a pull command, delete a tag (and fail to). Screenshots of each page go
//! to `$CARGO_TARGET_TMPDIR/ui_e2e/`. Needs chromium, chromedriver, skopeo.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const EVIL: &str = "<script>alert(1)</script>";
const TIMEOUT: Duration = Duration::from_secs(120);

const RULES: &str = r#"
[[access.rules]]
who = "user:admin"
repositories = ["**"]
actions = ["*"]

[[access.rules]]
who = "user:alice"
repositories = ["team/**"]
actions = ["pull", "delete"]

[[access.rules]]
who = "user:bob"
repositories = ["team/**"]
actions = ["pull"]

[[access.rules]]
who = "anonymous"
repositories = ["public/*"]
actions = ["pull"]
"#;

/// chromedriver on a loopback port, stopped by PID when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(dir: &Path) -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = fs::File::create(dir.join("chromedriver.log")).expect("log file");
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        Driver { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": which("chromium").expect("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1200,1000",
                     "--no-proxy-server"]
        }
    });
    let serde_json::Value::Object(caps) = caps else {
        unreachable!()
    };
    let url = format!("http://127.0.0.1:{}", driver.port);
    // chromedriver takes a moment to listen.
    let mut last = None;
    for _ in 0..100 {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot open a chromium session through chromedriver: {last:?}");
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, *data).expect("tar");
    }
    b.into_inner().expect("tar")
}

/// An OCI layout with one image: two gzip layers, a config with a hostile label, env,
/// ports, a user, and history steps (one with no layer).
fn write_layout(dir: &Path, tag: &str, seed: &str) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("layout dir");
    let put = |data: &[u8]| {
        let digest = digest_of(data);
        fs::write(blobs.join(&digest[7..]), data).expect("blob");
        digest
    };
    let tars = [
        tar_of(&[("etc/os-release", b"NAME=test\n")]),
        tar_of(&[("app/run.sh", format!("echo {seed}\n").as_bytes())]),
    ];
    let layers: Vec<(String, usize, String)> = tars
        .iter()
        .map(|t| {
            let gz = gzip(t);
            (put(&gz), gz.len(), digest_of(t))
        })
        .collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "created": "2026-11-30T10:00:00Z",
        "config": {
            "Env": ["PATH=/usr/bin:/bin", format!("SEED={seed}")],
            "Entrypoint": ["/app/run.sh"], "Cmd": ["--serve"], "User": "app",
            "WorkingDir": "/app", "ExposedPorts": {"8080/tcp": {}},
            "Volumes": {"/data": {}},
            "Labels": {"org.opencontainers.image.title": seed, "evil": EVIL}
        },
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.2.clone()).collect::<Vec<_>>()},
        "history": [
            {"created_by": "ADD os-release /etc/"},
            {"created_by": "ENV SEED=1", "empty_layer": true},
            {"created_by": format!("COPY run.sh /app/ # {EVIL}")}
        ]
    }))
    .expect("config");
    let config_digest = put(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|(d, n, _)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n
        })).collect::<Vec<_>>(),
        "annotations": {"org.example.note": EVIL}
    }))
    .expect("manifest");
    let manifest_digest = put(&manifest);
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("oci-layout");
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag}
        }]}))
        .expect("index"),
    )
    .expect("index.json");
}

fn skopeo_push(layout: &Path, tag: &str, server: &Server, target: &str) {
    run_ok(
        cmd(
            "skopeo",
            [
                "copy".to_string(),
                "--dest-tls-verify=false".into(),
                "--dest-creds=admin:adminpw".into(),
                format!("oci:{}:{tag}", layout.display()),
                format!("docker://{}/{target}", server.host()),
            ],
        ),
        TIMEOUT,
    );
}

const SIGNATURE: &str = "application/vnd.example.signature.v1+json";

/// A referrer of `repo:tag` (an artifact with `subject`), pushed over the API as admin.
async fn push_signature(base: &str, repo: &str, tag: &str) {
    let http = client();
    let put_blob = |data: &'static [u8]| {
        let http = http.clone();
        let url = format!("{base}/v2/{repo}/blobs/uploads/?digest={}", digest_of(data));
        async move {
            let r = http
                .post(url)
                .basic_auth("admin", Some("adminpw"))
                .body(data)
                .send()
                .await
                .expect("POST blob");
            assert_eq!(r.status().as_u16(), 201, "blob upload");
        }
    };
    put_blob(b"{}").await;
    put_blob(b"signature bytes").await;
    let subject = http
        .head(format!("{base}/v2/{repo}/manifests/{tag}"))
        .basic_auth("admin", Some("adminpw"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .expect("HEAD subject");
    let digest = header(&subject, "docker-content-digest").expect("subject digest");
    let size: u64 = header(&subject, "content-length")
        .and_then(|n| n.parse().ok())
        .expect("size");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": SIGNATURE,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": digest_of(b"signature bytes"), "size": 15}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size},
        "annotations": {"org.opencontainers.image.created": "2026-12-01T00:00:00Z"}
    }))
    .expect("manifest");
    let r = http
        .put(format!(
            "{base}/v2/{repo}/manifests/{}",
            digest_of(&manifest)
        ))
        .basic_auth("admin", Some("adminpw"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .await
        .expect("PUT referrer");
    assert_eq!(r.status().as_u16(), 201, "referrer push");
}

struct Shots(PathBuf);

impl Shots {
    async fn take(&self, c: &Client, name: &str) {
        let png = c.screenshot().await.expect("screenshot");
        fs::write(self.0.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

async fn text_of(c: &Client, css: &str) -> String {
    let url = c.current_url().await.map(|u| u.to_string());
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css} on {url:?}: {e}"))
        .text()
        .await
        .expect("text")
}

async fn login(c: &Client, base: &str, user: &str, password: &str, next: &str) {
    c.goto(&format!("{base}/ui/login?next={next}"))
        .await
        .expect("login page");
    // Wait for the form rather than find it once: under load the page can still be the
    // previous one when goto returns.
    if let Err(e) = c
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("form.login"))
        .await
    {
        let url = c.current_url().await.map(|u| u.to_string());
        let page = c.source().await.unwrap_or_default();
        panic!("no login form on {url:?}: {e}\n{page}");
    }
    let form = c
        .form(Locator::Css("form.login"))
        .await
        .expect("login form");
    form.set_by_name("username", user).await.expect("user");
    form.set_by_name("password", password)
        .await
        .expect("password");
    form.submit().await.expect("submit");
    // Signed in, or the form again with its error: either way the answer has landed.
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("p.error, .who strong"))
        .await
        .expect("the login's answer");
}

async fn logout(c: &Client) {
    c.find(Locator::Css(".who button"))
        .await
        .expect("log out button")
        .click()
        .await
        .expect("log out");
    // The click returns before the logout POST's redirect has landed; a goto issued now can
    // race it (the redirect then replaces the next page). Wait for the signed-out header.
    c.wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(".who a[href^='/ui/login']"))
        .await
        .expect("signed-out header after logging out");
}

/// Click what navigates, then wait until the browser is at `path`: the click can return
/// before the navigation has landed, and a check made then reads the old page.
async fn click_to(c: &Client, what: Locator<'_>, path: &str) -> Result<(), String> {
    c.find(what)
        .await
        .map_err(|e| e.to_string())?
        .click()
        .await
        .map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let url = c.current_url().await.map_err(|e| e.to_string())?;
        if url.path() == path {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "after the click the browser is at {url}, not {path}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// No alert is open: the label's script never ran.
async fn assert_no_alert(c: &Client) {
    assert!(
        c.get_alert_text().await.is_err(),
        "a script ran: an alert is open"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn browse_log_in_and_delete_in_chromium() {
    if !(require_tool("chromium") && require_tool("chromedriver") && require_tool("skopeo")) {
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let htpasswd = work.path().join("htpasswd");
    write_htpasswd(
        &htpasswd,
        &[("admin", "adminpw"), ("alice", "alicepw"), ("bob", "bobpw")],
        4,
    );
    let toml = format!(
        "[auth]\nhtpasswd = \"{}\"\nscheme = \"basic\"\n{RULES}",
        htpasswd.display()
    );
    let server = Server::start_berth_with_config(work.path(), &toml, true);
    let base = server.url();
    for (repo, tags) in [
        ("team/app", &["v1", "v2"][..]),
        ("team/api", &["1.0"][..]),
        ("public/hello", &["latest"][..]),
    ] {
        for tag in tags {
            let layout = work
                .path()
                .join(format!("layout-{}-{tag}", repo.replace('/', "-")));
            write_layout(&layout, tag, &format!("{repo}:{tag}"));
            skopeo_push(&layout, tag, &server, &format!("{repo}:{tag}"));
        }
    }
    push_signature(&base, "team/app", "v1").await;
    let shots = Shots(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui_e2e"));
    fs::create_dir_all(&shots.0).expect("screenshot dir");
    let driver = Driver::start(work.path());
    let c = browser(&driver).await;
    let result = scenario(&c, &base, &shots).await;
    let _ = c.close().await;
    if let Err(e) = result {
        panic!(
            "{e}\nchromedriver log:\n{}",
            fs::read_to_string(work.path().join("chromedriver.log")).unwrap_or_default()
        );
    }
    // What the browser deleted is gone from the API too; what bob could not delete is there.
    let http = client();
    let status = |tag: &str| {
        let http = http.clone();
        let url = format!("{base}/v2/team/app/manifests/{tag}");
        async move {
            http.head(url)
                .basic_auth("admin", Some("adminpw"))
                .header("accept", "application/vnd.oci.image.manifest.v1+json")
                .send()
                .await
                .expect("HEAD")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("v1").await, 404, "alice deleted v1 in the UI");
    assert_eq!(status("v2").await, 200, "bob could not delete v2");
    println!("screenshots in {}", shots.0.display());
}

async fn scenario(c: &Client, base: &str, shots: &Shots) -> Result<(), String> {
    // Anonymous: only what the rules give anonymous.
    c.goto(&format!("{base}/"))
        .await
        .map_err(|e| e.to_string())?;
    let url = c.current_url().await.map_err(|e| e.to_string())?;
    assert_eq!(url.path(), "/ui/", "a browser at / lands on the UI");
    let main = text_of(c, "main").await;
    assert!(main.contains("public/hello"), "{main}");
    assert!(
        !main.contains("team/"),
        "anonymous sees team repositories: {main}"
    );
    shots.take(c, "catalog-anonymous").await;
    c.goto(&format!("{base}/ui/r/team/app"))
        .await
        .map_err(|e| e.to_string())?;
    assert!(text_of(c, "h1").await.contains("Not found"));

    // A wrong password, then alice, sent on to where she wanted to go.
    login(c, base, "alice", "wrong", "/ui/r/team/app").await;
    assert!(text_of(c, ".error")
        .await
        .contains("Wrong user name or password"));
    login(c, base, "alice", "alicepw", "/ui/r/team/app").await;
    let url = c.current_url().await.map_err(|e| e.to_string())?;
    assert_eq!(url.path(), "/ui/r/team/app");
    let table = text_of(c, "main table").await;
    assert!(
        table.contains("v1") && table.contains("v2") && table.contains("linux/amd64"),
        "{table}"
    );
    let pull = text_of(c, ".pull").await;
    assert!(
        pull.contains(&format!("docker pull {}/team/app:", url.authority())),
        "{pull}"
    );
    // The copy button appears with JavaScript and reacts.
    let copy = c
        .find(Locator::Css("button.copy"))
        .await
        .map_err(|e| e.to_string())?;
    assert!(
        copy.is_displayed().await.map_err(|e| e.to_string())?,
        "copy button shown"
    );
    copy.click().await.map_err(|e| e.to_string())?;
    // The label changes when the clipboard's promise settles, not at the click.
    let mut label = String::new();
    for _ in 0..200 {
        label = copy.text().await.map_err(|e| e.to_string())?;
        if label != "Copy" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(label == "Copied" || label == "Select and copy", "{label}");
    shots.take(c, "repository").await;

    c.goto(&format!("{base}/ui/"))
        .await
        .map_err(|e| e.to_string())?;
    let main = text_of(c, "main").await;
    assert!(
        main.contains("team/app") && main.contains("team/api") && main.contains("public/hello")
    );
    assert!(text_of(c, ".who").await.contains("alice"));
    shots.take(c, "catalog").await;
    c.goto(&format!("{base}/ui/?q=api"))
        .await
        .map_err(|e| e.to_string())?;
    let main = text_of(c, "main table").await;
    assert!(
        main.contains("team/api") && !main.contains("team/app"),
        "filter: {main}"
    );

    // The image: config, layers with their history, the hostile label as text.
    c.goto(&format!("{base}/ui/r/team/app"))
        .await
        .map_err(|e| e.to_string())?;
    click_to(c, Locator::LinkText("v1"), "/ui/r/team/app/_/v1").await?;
    assert_no_alert(c).await;
    let layers = text_of(c, "table.layers").await;
    assert!(layers.contains("ADD os-release /etc/"), "{layers}");
    assert!(
        layers.contains(&format!("COPY run.sh /app/ # {EVIL}")),
        "{layers}"
    );
    assert!(
        !layers.contains("ENV SEED=1"),
        "an empty-layer step is no layer's"
    );
    let main = text_of(c, "main").await;
    for expected in [
        EVIL,
        "8080/tcp",
        "/data",
        "SEED=team/app:v1",
        "[\"/app/run.sh\"]",
        "app",
    ] {
        assert!(
            main.contains(expected),
            "{expected} not on the image page:\n{main}"
        );
    }
    let scripts: i64 = c
        .execute("return document.querySelectorAll('script').length", vec![])
        .await
        .map_err(|e| e.to_string())?
        .as_i64()
        .unwrap_or(-1);
    assert_eq!(scripts, 1, "only the page's own script element");
    // The whole page in one picture: a tall window for this shot.
    c.set_window_size(1200, 2100)
        .await
        .map_err(|e| e.to_string())?;
    shots.take(c, "image").await;
    c.set_window_size(1200, 1000)
        .await
        .map_err(|e| e.to_string())?;

    // Delete v1, with the confirmation step.
    click_to(c, Locator::Css("a.danger"), "/ui/r/team/app/_/v1/delete").await?;
    assert!(text_of(c, "main").await.contains("Delete the tag"));
    shots.take(c, "confirm-delete").await;
    click_to(c, Locator::Css("button.danger"), "/ui/r/team/app").await?;
    let table = text_of(c, "main table").await;
    assert!(!table.contains("v1") && table.contains("v2"), "{table}");
    logout(c).await;

    // bob may pull but not delete: no delete link, and the page itself refuses.
    login(c, base, "bob", "bobpw", "https://evil.example/").await;
    let url = c.current_url().await.map_err(|e| e.to_string())?;
    assert_eq!(url.path(), "/ui/", "no open redirect after login");
    assert_eq!(url.host_str(), Some("127.0.0.1"));
    c.goto(&format!("{base}/ui/r/team/app/_/v2"))
        .await
        .map_err(|e| e.to_string())?;
    assert!(
        c.find(Locator::Css("a.danger")).await.is_err(),
        "bob is offered delete"
    );
    c.goto(&format!("{base}/ui/r/team/app/_/v2/delete"))
        .await
        .map_err(|e| e.to_string())?;
    assert!(text_of(c, "main")
        .await
        .contains("You may not delete in team/app"));
    shots.take(c, "delete-refused").await;
    Ok(())
}
