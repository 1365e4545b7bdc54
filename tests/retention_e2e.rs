//! `[[retention]]` on a real `berth serve`, on disk and on S3 (s3s-fs): `berth retention
//! --dry-run --json` lists the right tags and manifests with their reasons and removes
//! nothing; the real run (the server's schedule on disk, the CLI on S3) removes them; protected,
//! immutable, deployed and recently pulled tags stay (the pull made by a real `skopeo
//! inspect`), and so does a signature of a kept image; the runs are counted in `/metrics`
//! (checked by `promtool`); a bad policy fails at start naming the key.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Tags and untagged manifests older than this go (the test waits past it once).
const WINDOW_SECS: u64 = 20;

fn config(extra: &str) -> String {
    format!(
        r#"gc_grace = "0s"
pull_flush_interval = "200ms"
{extra}
[[immutable]]
name = "releases"
repositories = ["ci/**"]
tags = ["rel-*"]

[[retention]]
name = "ci builds"
repositories = ["ci/**"]
tags = ["*", "!latest"]
keep_newest = 1
keep_within = "{WINDOW_SECS}s"
protect = ["v*"]
untagged_older_than = "{WINDOW_SECS}s"
"#
    )
}

/// A manifest pushed by digest whose `subject` is `subject` (a signature, or with the
/// deployment artifact type a deployment record); returns its digest.
async fn push_referrer(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    subject: &str,
    subject_manifest: &[u8],
    artifact_type: &str,
) -> String {
    let empty = b"{}";
    push_blob(c, base, repo, empty).await;
    let body = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(empty), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": digest_of(empty), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_manifest.len()},
    }))
    .expect("serialize referrer");
    let digest = digest_of(&body);
    push_manifest(c, base, repo, &digest, OCI_MANIFEST, &body).await
}

/// What the test pushed, by name: manifest digests.
struct Pushed {
    old1: String,
    old2: String,
    loose: String,
    signature: String,
    deployed: String,
}

/// Everything old enough to judge: build tags, a protected, an immutable, a deployed and a
/// `latest` tag, an untagged manifest, a signature of the protected image.
async fn push_old(c: &reqwest::Client, base: &str) -> Pushed {
    let (old1, _, _) = push_tiny_image(c, base, "ci/app", "old1").await;
    let (old2, _, _) = push_tiny_image(c, base, "ci/app", "old2").await;
    push_tiny_image(c, base, "ci/app", "pulled").await;
    push_tiny_image(c, base, "ci/app", "latest").await;
    push_tiny_image(c, base, "ci/app", "rel-1").await;
    let (v1, _, _) = push_tiny_image(c, base, "ci/app", "v1").await;
    let (deployed, _, _) = push_tiny_image(c, base, "ci/app", "running").await;
    let (_, _, v1_manifest) = tiny_image("ci/app:v1");
    let signature = push_referrer(
        c,
        base,
        "ci/app",
        &v1,
        &v1_manifest,
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    )
    .await;
    let (_, _, running_manifest) = tiny_image("ci/app:running");
    push_referrer(
        c,
        base,
        "ci/app",
        &deployed,
        &running_manifest,
        "application/vnd.berth.deployment.v1+json",
    )
    .await;
    // An image whose tag was deleted long ago: untagged.
    let (loose, _, _) = push_tiny_image(c, base, "ci/app", "loose").await;
    let resp = c
        .delete(format!("{base}/v2/ci/app/manifests/loose"))
        .send()
        .await
        .expect("DELETE tag");
    assert_eq!(resp.status().as_u16(), 202, "tag delete");
    Pushed {
        old1,
        old2,
        loose,
        signature,
        deployed,
    }
}

/// Waits out the window, then pushes `new` and pulls `pulled` with skopeo (a real client's GET).
async fn age_then_touch(c: &reqwest::Client, server: &Server) {
    tokio::time::sleep(Duration::from_secs(WINDOW_SECS + 1)).await;
    push_tiny_image(c, &server.url(), "ci/app", "new").await;
    run_ok(
        Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--raw",
            &format!("docker://{}/ci/app:pulled", server.host()),
        ]),
        Duration::from_secs(60),
    );
}

/// `berth retention ARGS --json` on a storage, with S3 credentials when given.
fn retention_json(
    storage_args: &[String],
    config: &Path,
    dry_run: bool,
    s3: bool,
) -> serde_json::Value {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command
        .arg("retention")
        .args(storage_args)
        .arg("--config")
        .arg(config)
        .args(["--json"]);
    if dry_run {
        command.arg("--dry-run");
    }
    if s3 {
        command
            .env(
                "AWS_ACCESS_KEY_ID",
                berth_storage::s3_test_server::ACCESS_KEY,
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                berth_storage::s3_test_server::SECRET_KEY,
            );
    }
    let out = run_ok(&mut command, Duration::from_secs(120));
    parse_json(&out, "berth retention --json")
}

fn entry<'a>(list: &'a serde_json::Value, what: &str) -> Option<&'a serde_json::Value> {
    list.as_array()?
        .iter()
        .find(|e| e["tag"].as_str() == Some(what) || e["digest"].as_str() == Some(what))
}

fn reason(list: &serde_json::Value, what: &str) -> String {
    entry(list, what)
        .and_then(|e| e["reason"].as_str())
        .unwrap_or_else(|| panic!("{what} not listed in {list}"))
        .to_string()
}

/// The dry run: exactly the old build tags and the untagged manifests, with reasons.
fn check_dry_run(report: &serde_json::Value, p: &Pushed) {
    let removed = &report["removed"];
    let mut names: Vec<String> = removed
        .as_array()
        .expect("removed")
        .iter()
        .map(|e| {
            e["tag"].as_str().map_or_else(
                || e["digest"].as_str().unwrap_or("?").to_string(),
                str::to_string,
            )
        })
        .collect();
    names.sort();
    let mut expected = vec![
        "old1".to_string(),
        "old2".to_string(),
        p.loose.clone(),
        p.old1.clone(),
        p.old2.clone(),
    ];
    expected.sort();
    assert_eq!(names, expected, "{report}");
    assert_eq!(report["dry_run"], true);
    assert!(
        reason(removed, "old1").contains("not among the newest 1"),
        "{report}"
    );
    assert!(reason(removed, "old1").contains("never pulled"), "{report}");
    assert!(
        reason(removed, &p.loose).starts_with("untagged"),
        "{report}"
    );
    let kept = &report["kept"];
    assert!(reason(kept, "v1").starts_with("protected"), "{report}");
    assert!(
        reason(kept, "rel-1").contains("immutable (rule \"releases\")"),
        "{report}"
    );
    assert!(reason(kept, "running").starts_with("deployed"), "{report}");
    assert!(reason(kept, "pulled").starts_with("pulled "), "{report}");
    assert!(reason(kept, "new").contains("newest 1"), "{report}");
    assert!(
        entry(kept, "latest").is_none(),
        "latest is not judged: {report}"
    );
}

async fn status_of(c: &reqwest::Client, url: String) -> u16 {
    c.get(url)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET")
        .status()
        .as_u16()
}

/// After the real run: what the dry run listed is gone, everything else answers.
async fn check_applied(c: &reqwest::Client, base: &str, p: &Pushed) {
    let manifest = |r: &str| format!("{base}/v2/ci/app/manifests/{r}");
    for gone in ["old1", "old2", &p.old1, &p.old2, &p.loose] {
        assert_eq!(
            status_of(c, manifest(gone)).await,
            404,
            "{gone} was removed"
        );
    }
    for kept in [
        "pulled",
        "latest",
        "rel-1",
        "v1",
        "running",
        "new",
        &p.signature,
        &p.deployed,
    ] {
        assert_eq!(status_of(c, manifest(kept)).await, 200, "{kept} stays");
    }
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_on_disk_dry_run_then_the_servers_schedule() {
    if !require_tool("skopeo") || !require_tool("promtool") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_berth_with_config(dir.path(), &config(""), false);
    let c = client();
    let pushed = push_old(&c, &server.url()).await;
    age_then_touch(&c, &server).await;
    // A clean stop writes the pulls noted since the last flush.
    server.stop();
    let config_path = dir.path().join("berth.toml");
    let storage = vec![
        "--storage".to_string(),
        server.storage().display().to_string(),
    ];
    let report = retention_json(&storage, &config_path, true, false);
    check_dry_run(&report, &pushed);

    // The server's own schedule does the real run, counted in /metrics.
    fs::write(&config_path, config("retention_interval = \"500ms\"")).expect("rewrite config");
    server.start_again();
    let base = server.url();
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = c
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default();
        if sample(&text, "berth_retention_manifests_removed_total") >= 3.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled retention run:\n{text}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    promtool_check(&text);
    assert_eq!(
        sample(&text, "berth_retention_tags_removed_total"),
        2.0,
        "{text}"
    );
    assert!(
        sample(&text, r#"berth_retention_runs_total{result="ok"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "berth_retention_duration_seconds_count") >= 1.0,
        "{text}"
    );
    // Storage calls by backend, operation and result: the retention's removals among them.
    let ops = |operation: &str, result: &str| {
        sample(
            &text,
            &format!(
                r#"berth_storage_operations_total{{backend="fs",operation="{operation}",result="{result}"}}"#
            ),
        )
    };
    assert!(ops("tag_delete", "ok") >= 2.0, "{text}");
    assert!(ops("manifest_delete", "ok") >= 3.0, "{text}");
    assert!(ops("tag_records", "ok") >= 1.0, "{text}");
    check_applied(&c, &base, &pushed).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_on_s3_dry_run_then_the_cli() {
    if !require_tool("skopeo") || !require_tool("promtool") {
        return;
    }
    let Some(s3) = s3_server("retention") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("berth.toml");
    fs::write(&config_path, config("")).expect("write config");
    let path = config_path.display().to_string();
    // The CLI below is another replica of the bucket: with the default link cache this
    // server would serve what it deleted for up to a minute (docs/storage-s3.md; the
    // s3_reads test checks that bound), so this one asks S3 every time.
    let mut server = Server::start_s3(&s3, "reg", &["--config", &path, "--s3-link-cache", "0s"]);
    let c = client();
    let pushed = push_old(&c, &server.url()).await;
    age_then_touch(&c, &server).await;
    // The periodic flush (every 200 ms) writes the pull: wait until the dry run sees it.
    let storage = vec![
        "--storage".to_string(),
        format!("s3://{}/reg", s3.bucket),
        "--s3-endpoint".to_string(),
        s3.endpoint(),
        "--s3-region".to_string(),
        berth_storage::s3_test_server::REGION.to_string(),
        "--s3-allow-http".to_string(),
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let report = retention_json(&storage, &config_path, true, true);
        if entry(&report["kept"], "pulled").is_some() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    check_dry_run(&report, &pushed);
    let applied = retention_json(&storage, &config_path, false, true);
    assert_eq!(applied["tags_removed"], 2, "{applied}");
    assert_eq!(applied["manifests_removed"], 3, "{applied}");
    check_applied(&c, &server.url(), &pushed).await;

    // S3 requests and storage calls are exported, by method and by operation.
    let text = c
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap_or_default();
    promtool_check(&text);
    assert!(
        sample(&text, r#"berth_s3_requests_total{method="GET"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, r#"berth_s3_requests_total{method="PUT"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"berth_storage_operations_total{backend="s3",operation="manifest_put",result="ok"}"#
        ) >= 9.0,
        "{text}"
    );
    assert!(
        sample(
            &text,
            r#"berth_storage_operations_total{backend="s3",operation="record_pulls",result="ok"}"#
        ) >= 1.0,
        "{text}"
    );
    server.stop();
}

#[test]
fn bad_retention_config_fails_at_start_naming_the_key() {
    let e = serve_refuses("[[retention]]\nrepositories = [\"Ci/**\"]\nkeep_newest = 3\n");
    assert!(e.contains("retention[0].repositories"), "{e}");
    let e =
        serve_refuses("[[retention]]\nrepositories = [\"ci/**\"]\nkeep_within = \"a fortnight\"\n");
    assert!(e.contains("retention[0].keep_within"), "{e}");
    let e = serve_refuses(
        "[[retention]]\nrepositories = [\"ci/**\"]\nprotect = [\"v/1\"]\nkeep_newest = 1\n",
    );
    assert!(e.contains("retention[0].protect"), "{e}");
    let e = serve_refuses("[[retention]]\nrepositories = [\"ci/**\"]\nkeep_last = 3\n");
    assert!(e.contains("unknown field `keep_last`"), "{e}");
    let e = serve_refuses("[[retention]]\nrepositories = [\"ci/**\"]\n");
    assert!(e.contains("retention[0] removes nothing"), "{e}");
    let e = serve_refuses("retention_interval = \"1h\"\n");
    assert!(e.contains("retention_interval"), "{e}");
}

fn hangup(server: &Server) {
    let pid = server.pid().expect("berth serve runs");
    run_ok(
        Command::new("kill").args(["-HUP", &pid.to_string()]),
        Duration::from_secs(10),
    );
}

/// Polls `check` until it holds, failing with the server's log after 20 s.
async fn until<F, Fut>(server: &Server, what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn put_status(c: &reqwest::Client, base: &str, repo: &str, tag: &str, seed: &str) -> u16 {
    let (config, layer, manifest) = tiny_image(seed);
    push_blob(c, base, repo, &layer).await;
    push_blob(c, base, repo, &config).await;
    c.put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await
        .expect("PUT manifest")
        .status()
        .as_u16()
}

/// SIGHUP puts new `[[immutable]]`, `[[quota]]` and `[[retention]]` rules in force while
/// serving; a file whose rules do not compile changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_immutable_quota_and_retention_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = "retention_interval = \"300ms\"\ngc_grace = \"0s\"\n\
                 [[retention]]\nrepositories = [\"nothing/**\"]\nkeep_newest = 1\n";
    let server = Server::start_berth_with_config(dir.path(), start, false);
    let config = dir.path().join("berth.toml");
    let (c, base) = (client(), server.url());
    assert_eq!(put_status(&c, &base, "hup/app", "v1", "first").await, 201);
    assert_eq!(
        put_status(&c, &base, "hup/app", "v1", "second").await,
        201,
        "no rule yet"
    );
    push_tiny_image(&c, &base, "hupr/app", "a").await;
    // Push times apart by more than any file system's timestamp granularity: b is newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    push_tiny_image(&c, &base, "hupr/app", "b").await;

    let rules = format!(
        "{start}\n[[immutable]]\nrepositories = [\"hup/**\"]\ntags = [\"v*\"]\n\
         [[quota]]\nrepositories = [\"hup/**\"]\nmax_tags = 2\n\
         [[retention]]\nrepositories = [\"hupr/**\"]\nkeep_newest = 1\n"
    );
    fs::write(&config, &rules).expect("write config");
    hangup(&server);
    // Each attempt is another manifest: one that landed before the reload must not make the
    // next attempt an identical (and so allowed) re-push.
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    until(&server, "the immutable rule came into force", || async {
        let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        put_status(&c, &base, "hup/app", "v1", &format!("third {n}")).await == 409
    })
    .await;
    assert_eq!(put_status(&c, &base, "hup/app", "v2", "fourth").await, 201);
    assert_eq!(
        put_status(&c, &base, "hup/app", "v3", "fifth").await,
        403,
        "max_tags = 2"
    );
    // The scheduled retention now applies the new policy to hupr/app: the older tag goes.
    until(
        &server,
        "the reloaded retention policy removed hupr/app:a",
        || async { status_of(&c, format!("{base}/v2/hupr/app/manifests/a")).await == 404 },
    )
    .await;
    assert_eq!(
        status_of(&c, format!("{base}/v2/hupr/app/manifests/b")).await,
        200
    );

    // A policy that does not compile: nothing changes, and the log says why.
    fs::write(
        &config,
        format!("{start}\n[[retention]]\nrepositories = [\"hup/**\"]\nkeep_within = \"soonish\"\n"),
    )
    .expect("write config");
    hangup(&server);
    until(&server, "the failed reload was logged", || async {
        server.log().contains("config not reloaded")
    })
    .await;
    assert!(
        server.log().contains("retention[1].keep_within"),
        "{}",
        server.log()
    );
    assert_eq!(
        put_status(&c, &base, "hup/app", "v1", "sixth").await,
        409,
        "rules stay"
    );
}
