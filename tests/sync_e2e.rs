//! `berth sync` and `[[sync]]` jobs between real registries on loopback: two `berth serve`
//! (and Debian's `docker-registry` as a source), images pushed over the API and with skopeo.
//! Checked: digests identical on both sides (an index keeps its digest), a re-run copies
//! nothing, tag globs, --dry-run, one refused image does not stop the others (non-zero exit),
//! a sync killed mid-run then re-run completes, and a serve config's `[[sync]]` replicates.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);
/// How long a `[[sync]]` job with a 1 s interval may take to show a change.
const REPLICATION_DEADLINE: Duration = Duration::from_secs(60);

/// Two single-platform images and an OCI index naming them; returns the index digest.
async fn push_index(c: &reqwest::Client, base: &str, repo: &str, tag: &str) -> String {
    let mut entries = Vec::new();
    for arch in ["amd64", "arm64"] {
        let (config, layer, manifest) = tiny_image(&format!("{repo}-{arch}"));
        push_blob(c, base, repo, &layer).await;
        push_blob(c, base, repo, &config).await;
        let digest = digest_of(&manifest);
        push_manifest(c, base, repo, &digest, OCI_MANIFEST, &manifest).await;
        entries.push(serde_json::json!({
            "mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(),
            "platform": {"os": "linux", "architecture": arch}
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries
    }))
    .expect("index json");
    push_manifest(c, base, repo, tag, OCI_INDEX, &index).await
}

/// An image whose one layer is `mib` MiB of bytes unique to `seed`.
async fn push_big_image(c: &reqwest::Client, base: &str, repo: &str, tag: &str, mib: usize) {
    let mut layer = Vec::with_capacity(mib << 20);
    let mut x: u64 = seed_of(tag);
    while layer.len() < mib << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        layer.extend_from_slice(&x.to_le_bytes());
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]}
    }))
    .expect("config");
    push_blob(c, base, repo, &layer).await;
    push_blob(c, base, repo, &config).await;
    let manifest = manifest_json(&config, &[&layer], None);
    push_manifest(c, base, repo, tag, OCI_MANIFEST, &manifest).await;
}

fn seed_of(text: &str) -> u64 {
    text.bytes().fold(0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    }) | 1
}

/// An artifact manifest (a "signature") whose subject is `subject`; returns its digest.
async fn push_referrer(c: &reqwest::Client, base: &str, repo: &str, subject: &str) -> String {
    let empty = push_blob(c, base, repo, b"{}").await;
    let payload = push_blob(c, base, repo, b"signed, honestly").await;
    let subject_size = c
        .get(format!("{base}/v2/{repo}/manifests/{subject}"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET subject")
        .bytes()
        .await
        .expect("subject bytes")
        .len();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": payload, "size": 16}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_size}
    }))
    .expect("referrer json");
    let digest = digest_of(&manifest);
    push_manifest(c, base, repo, &digest, OCI_MANIFEST, &manifest).await
}

async fn digest_exists(c: &reqwest::Client, base: &str, repo: &str, digest: &str) -> bool {
    digest_at(c, base, repo, digest).await.is_some()
}

/// The digest `repo:tag` has on the registry at `base` (None if absent).
async fn digest_at(c: &reqwest::Client, base: &str, repo: &str, tag: &str) -> Option<String> {
    let resp = c
        .head(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}"))
        .send()
        .await
        .expect("HEAD manifest");
    if resp.status().as_u16() == 404 {
        return None;
    }
    assert_eq!(resp.status().as_u16(), 200, "HEAD {repo}:{tag}");
    header(&resp, "docker-content-digest")
}

/// `berth sync --json ARGS`: (exit success, per-image objects, summary).
fn sync_json(cli: &BerthCli, args: &[&str]) -> (bool, Vec<Value>, Value) {
    let mut command = cli.cmd(["sync", "--json"]);
    command.args(args);
    let out = run(command, TIMEOUT);
    let mut items = Vec::new();
    let mut summary = Value::Null;
    for line in out.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON: {line}: {e}\n{}", out.describe()));
        match value.get("summary") {
            Some(s) => summary = s.clone(),
            None => items.push(value),
        }
    }
    assert!(summary.is_object(), "no summary line\n{}", out.describe());
    (out.status.success(), items, summary)
}

fn actions(items: &[Value]) -> Vec<(String, String)> {
    let mut list: Vec<(String, String)> = items
        .iter()
        .map(|i| {
            (
                format!(
                    "{}:{}",
                    i["destination"].as_str().unwrap_or(""),
                    i["tag"].as_str().unwrap_or("")
                ),
                i["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    list.sort();
    list
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_copies_a_prefix_then_skips_and_filters_tags() {
    if !require_tool("skopeo") {
        return;
    }
    let (src, dst) = (
        Server::start_kind(ServerKind::Berth),
        Server::start_kind(ServerKind::Berth),
    );
    let (c, cli) = (client(), BerthCli::new());
    let base = src.url();
    let mut expected = Vec::new();
    for (repo, tag) in [
        ("team/app", "1"),
        ("team/app", "v1.0"),
        ("team/tools/lint", "latest"),
    ] {
        expected.push((repo, tag, push_tiny_image(&c, &base, repo, tag).await.0));
    }
    push_tiny_image(&c, &base, "other/app", "1").await;
    let index = push_index(&c, &base, "team/multi", "latest").await;
    expected.push(("team/multi", "latest", index.clone()));
    // One more pushed by skopeo (its own upload code), as an index with every platform.
    run_ok(
        cmd(
            "skopeo",
            [
                "copy",
                "--all",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &format!("docker://{}/team/multi:latest", src.host()),
                &format!("docker://{}/team/skopeo:pushed", src.host()),
            ],
        ),
        TIMEOUT,
    );
    // skopeo compresses the uncompressed layers on the way: a new index digest.
    let pushed = digest_at(&c, &base, "team/skopeo", "pushed")
        .await
        .expect("skopeo pushed");
    expected.push(("team/skopeo", "pushed", pushed));

    let from = format!("{}/team", src.host());
    let to = format!("{}/backup/team", dst.host());
    let (ok, items, summary) = sync_json(&cli, &[&from, &to]);
    assert!(ok, "{items:?}");
    assert_eq!(summary["copied"], 5, "{summary}");
    assert_eq!(
        summary["repositories"], 4,
        "other/app is outside the prefix: {summary}"
    );
    for (repo, tag, digest) in &expected {
        let dest_repo = repo.replacen("team", "backup/team", 1);
        assert_eq!(
            digest_at(&c, &dst.url(), &dest_repo, tag).await.as_deref(),
            Some(digest.as_str()),
            "{repo}:{tag} has the same digest at the destination"
        );
    }
    assert_eq!(
        digest_at(&c, &dst.url(), "backup/other/app", "1").await,
        None
    );
    // skopeo reads the copied index and both its platforms back.
    let raw = run_ok(
        cmd(
            "skopeo",
            [
                "inspect",
                "--raw",
                "--tls-verify=false",
                &format!("docker://{}/backup/team/multi:latest", dst.host()),
            ],
        ),
        TIMEOUT,
    );
    assert_eq!(
        digest_of(raw.as_bytes()),
        index,
        "the index's bytes are unchanged"
    );

    // A re-run copies nothing: every image is skipped by digest.
    let (ok, items, summary) = sync_json(&cli, &[&from, &to]);
    assert!(ok);
    assert_eq!(
        (summary["copied"].as_u64(), summary["skipped"].as_u64()),
        (Some(0), Some(5)),
        "{items:?}"
    );
    assert!(items.iter().all(|i| i["bytes_copied"] == 0));

    // A signature pushed later (untagged, with app:1 as its subject) comes with --referrers,
    // while the images themselves are still skipped.
    let signature = push_referrer(&c, &base, "team/app", &expected[0].2).await;
    assert!(!digest_exists(&c, &dst.url(), "backup/team/app", &signature).await);
    let (ok, items, summary) = sync_json(&cli, &["--referrers", &from, &to]);
    assert!(ok, "{items:?}");
    assert_eq!(summary["skipped"], 5, "{summary}");
    let with_referrer: Vec<&Value> = items
        .iter()
        .filter(|i| i["referrers_copied"] == 1)
        .collect();
    assert_eq!(with_referrer.len(), 1, "{items:?}");
    assert_eq!(with_referrer[0]["tag"], "1");
    assert!(digest_exists(&c, &dst.url(), "backup/team/app", &signature).await);

    // A tag glob, and a dry run that writes nothing.
    let filtered = format!("{}/filtered", dst.host());
    let (_, items, _) = sync_json(&cli, &["--tags", "v1.*", "--dry-run", &from, &filtered]);
    assert_eq!(
        actions(&items),
        vec![("filtered/app:v1.0".to_string(), "would-copy".to_string())]
    );
    assert_eq!(
        digest_at(&c, &dst.url(), "filtered/app", "v1.0").await,
        None,
        "dry run"
    );
    let (ok, items, _) = sync_json(&cli, &["--tags", "v1.*", &from, &filtered]);
    assert!(ok);
    assert_eq!(
        actions(&items),
        vec![("filtered/app:v1.0".to_string(), "copied".to_string())]
    );
    assert_eq!(digest_at(&c, &dst.url(), "filtered/app", "1").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_refused_image_does_not_stop_the_others() {
    let src = Server::start_kind(ServerKind::Berth);
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = Server::start_berth_with_config(
        dir.path(),
        "[[immutable]]\nrepositories = [\"copy/**\"]\ntags = [\"fixed\"]\n",
        false,
    );
    let (c, cli) = (client(), BerthCli::new());
    for tag in ["a", "b", "fixed"] {
        push_tiny_image(&c, &src.url(), "app", tag).await;
    }
    // The destination's immutable tag already names another image: that one must fail.
    push_tiny_image(&c, &dst.url(), "copy/app", "fixed").await;
    let (ok, items, summary) = sync_json(
        &cli,
        &[
            "-j",
            "1",
            &format!("{}/app", src.host()),
            &format!("{}/copy/app", dst.host()),
        ],
    );
    assert!(!ok, "a failed image makes the exit code non-zero");
    assert_eq!(
        (summary["copied"].as_u64(), summary["failed"].as_u64()),
        (Some(2), Some(1)),
        "{items:?}"
    );
    let failed = items
        .iter()
        .find(|i| i["action"] == "failed")
        .expect("a failed item");
    assert_eq!(failed["tag"], "fixed");
    assert!(
        failed["error"].as_str().unwrap_or("").contains("immutable"),
        "{failed}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_killed_mid_run_completes_when_run_again() {
    let (src, dst) = (
        Server::start_kind(ServerKind::Berth),
        Server::start_kind(ServerKind::Berth),
    );
    let (c, cli) = (client(), BerthCli::new());
    let tags: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    for tag in &tags {
        push_big_image(&c, &src.url(), "big", tag, 24).await;
    }
    let (from, to) = (format!("{}/big", src.host()), format!("{}/big", dst.host()));
    let mut child = cli
        .cmd(["sync", "--json", "-j", "1", &from, &to])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start berth sync");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a first line").expect("read a line");
    assert!(first.contains("\"copied\""), "{first}");
    child.kill().expect("kill berth sync by its PID");
    let _ = child.wait();
    let started = Instant::now();
    let (ok, items, summary) = sync_json(&cli, &[&from, &to]);
    assert!(ok, "{items:?}");
    assert_eq!(summary["failed"], 0);
    assert!(
        summary["skipped"].as_u64() >= Some(1),
        "the image copied before the kill is skipped: {summary}"
    );
    assert_eq!(
        summary["copied"].as_u64().unwrap_or(0) + summary["skipped"].as_u64().unwrap_or(0),
        6
    );
    eprintln!(
        "re-run after the kill: {summary} in {:?}",
        started.elapsed()
    );
    for tag in &tags {
        assert_eq!(
            digest_at(&c, &dst.url(), "big", tag).await,
            digest_at(&c, &src.url(), "big", tag).await,
            "{tag}"
        );
    }
    let (_, _, summary) = sync_json(&cli, &[&from, &to]);
    assert_eq!(summary["skipped"], 6, "{summary}");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_registry_as_the_source() {
    if !require_tool("docker-registry") {
        return;
    }
    let (src, dst) = (
        Server::start_kind(ServerKind::Distribution),
        Server::start_kind(ServerKind::Berth),
    );
    let (c, cli) = (client(), BerthCli::new());
    let one = push_tiny_image(&c, &src.url(), "lib/app", "1").await.0;
    let index = push_index(&c, &src.url(), "lib/multi", "2").await;
    let (from, to) = (src.host(), format!("{}/from-distribution", dst.host()));
    let (ok, items, summary) = sync_json(&cli, &[&from, &to]);
    assert!(ok, "{items:?}");
    assert_eq!(summary["copied"], 2, "{summary}");
    assert_eq!(
        digest_at(&c, &dst.url(), "from-distribution/lib/app", "1").await,
        Some(one)
    );
    assert_eq!(
        digest_at(&c, &dst.url(), "from-distribution/lib/multi", "2").await,
        Some(index)
    );
    let (_, _, summary) = sync_json(&cli, &[&from, &to]);
    assert_eq!(
        (summary["copied"].as_u64(), summary["skipped"].as_u64()),
        (Some(0), Some(2))
    );
}

/// Polls until `repo:tag` at `base` has `digest`, up to [`REPLICATION_DEADLINE`].
async fn wait_for(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    digest: &str,
    log: &dyn Fn() -> String,
) {
    let deadline = Instant::now() + REPLICATION_DEADLINE;
    while digest_at(c, base, repo, tag).await.as_deref() != Some(digest) {
        assert!(
            Instant::now() < deadline,
            "{repo}:{tag} was not replicated\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sync_job_in_the_serve_config_replicates() {
    let src = Server::start_kind(ServerKind::Berth);
    let c = client();
    let first = push_tiny_image(&c, &src.url(), "team/app", "1").await.0;
    push_tiny_image(&c, &src.url(), "team/app", "dev").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = Server::start_berth_with_config(
        dir.path(),
        &format!(
            "[[sync]]\nsource = \"http://{}/team\"\nprefix = \"replica\"\ntags = \"1*\"\ninterval = \"1s\"\n",
            src.host()
        ),
        false,
    );
    let log = || dst.log();
    wait_for(&c, &dst.url(), "replica/app", "1", &first, &log).await;
    assert_eq!(
        digest_at(&c, &dst.url(), "replica/app", "dev").await,
        None,
        "tags = \"1*\""
    );
    // A tag pushed later arrives with a later run.
    let later = push_tiny_image(&c, &src.url(), "team/app", "10").await.0;
    wait_for(&c, &dst.url(), "replica/app", "10", &later, &log).await;
    assert!(
        dst.log().contains("sync run"),
        "a log line per run\n{}",
        dst.log()
    );
    // The metric counts both copies once the run that copied "10" has ended.
    let deadline = Instant::now() + REPLICATION_DEADLINE;
    loop {
        let metrics = c
            .get(format!("{}/metrics", dst.url()))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        if metrics.contains(r#"berth_sync_images_total{result="copied"} 2"#) {
            assert!(metrics.contains(r#"berth_sync_runs_total{result="ok"}"#));
            break;
        }
        assert!(Instant::now() < deadline, "no sync metrics\n{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The replica serves what it copied with the upstream gone.
    drop(src);
    let resp = c
        .get(format!("{}/v2/replica/app/manifests/1", dst.url()))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET");
    assert_eq!(resp.status().as_u16(), 200);
}

#[test]
fn bad_sync_tables_fail_at_start_naming_the_key() {
    for (toml, key) in [
        (
            "[[sync]]\nsource = \"registry.example.com/team\"\n",
            "sync[0].source",
        ),
        (
            "[[sync]]\nsource = \"https://h\"\ninterval = \"soon\"\n",
            "sync[0].interval",
        ),
        (
            "[[sync]]\nsource = \"https://h\"\nschedule = \"1h\"\n",
            "schedule",
        ),
    ] {
        let message = serve_refuses(toml);
        assert!(message.contains(key), "{toml}: {message}");
    }
}

/// A source registry that lists hostile names: repositories that climb out of a storage
/// folder or break the grammar, and such tags. Answers over raw HTTP on loopback until the
/// test ends (the thread dies with the test process).
fn hostile_source() -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let body = if path.starts_with("/v2/_catalog") {
                r#"{"repositories":["../../../escape-sync","Team/Upper","ok/app"]}"#
            } else if path.contains("/tags/list") {
                r#"{"tags":["../../escape-tag",".hidden"]}"#
            } else {
                "{}"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_from_a_source_never_reach_the_destination() {
    let port = hostile_source();
    let dst = Server::start_kind(ServerKind::Berth);
    let cli = BerthCli::new();
    let (ok, items, summary) = sync_json(
        &cli,
        &[
            &format!("127.0.0.1:{port}"),
            &format!("{}/copy", dst.host()),
        ],
    );
    assert!(!ok, "bad names count as failures: {items:?}");
    assert_eq!(summary["failed"], 2, "{summary}");
    assert_eq!(summary["copied"], 0, "{summary}");
    for item in items.iter().filter(|i| i["action"] == "failed") {
        assert!(
            item["error"]
                .as_str()
                .unwrap_or("")
                .contains("not a valid repository name"),
            "{item}"
        );
    }
    // ok/app had only invalid tags: nothing to copy, nothing written anywhere.
    let text = client()
        .get(format!("{}/v2/_catalog", dst.url()))
        .send()
        .await
        .expect("catalog")
        .text()
        .await
        .expect("catalog text");
    let catalog: Value = serde_json::from_str(&text).expect("catalog json");
    assert_eq!(catalog["repositories"], serde_json::json!([]), "{catalog}");
    let root = dst
        .storage()
        .parent()
        .expect("storage parent")
        .to_path_buf();
    let found = walk(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("escape"))
        .collect::<Vec<_>>();
    assert!(found.is_empty(), "{found:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}
