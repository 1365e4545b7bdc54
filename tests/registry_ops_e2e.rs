//! Registry operations against a real `berth serve`: `/healthz` and `/readyz` (with the
//! storage gone), read-only mode (a read-only replica beside a writer on one S3 bucket, and
//! `[storage] read_only` on disk, switched by SIGHUP), immutable tags by the raw API on disk and S3 and by the real
//! `docker push`, and bad config refused at start naming the key.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

const IMMUTABLE_RULES: &str = r#"
[[immutable]]
name = "releases"
repositories = ["prod/**"]
tags = ["v*", "!*-rc*"]
"#;

async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

fn codes(body: &str) -> Vec<String> {
    error_codes(body.as_bytes()).unwrap_or_default()
}

async fn assert_healthy(c: &reqwest::Client, base: &str) {
    let (status, body) = send(c.get(format!("{base}/healthz"))).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"), "/healthz");
    let (status, body) = send(c.get(format!("{base}/readyz"))).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"), "/readyz");
}

/// Pushes another tiny image's blobs to `repo` and returns its manifest (not pushed).
async fn other_manifest(c: &reqwest::Client, base: &str, repo: &str, seed: &str) -> Vec<u8> {
    let (config, layer, manifest) = tiny_image(seed);
    push_blob(c, base, repo, &layer).await;
    push_blob(c, base, repo, &config).await;
    manifest
}

/// The `[[immutable]]` rule "releases" (prod/**, v* but not *-rc*) on the server at `base`.
async fn check_immutable_rules(c: &reqwest::Client, base: &str) {
    let repo = "prod/app";
    let (v1, _, _) = push_tiny_image(c, base, repo, "v1").await;
    let (_, _, same) = tiny_image(&format!("{repo}:v1"));
    // The identical manifest again is fine (idempotent CI).
    assert_eq!(
        push_manifest(c, base, repo, "v1", OCI_MANIFEST, &same).await,
        v1
    );
    let other = other_manifest(c, base, repo, "another build").await;
    let put_v1 = |body: Vec<u8>| {
        c.put(format!("{base}/v2/{repo}/manifests/v1"))
            .header("content-type", OCI_MANIFEST)
            .body(body)
    };
    let (status, body) = send(put_v1(other.clone())).await;
    assert_eq!(status, 409, "another manifest to v1: {body}");
    assert_eq!(codes(&body), ["DENIED"], "{body}");
    assert!(
        body.contains("\\\"releases\\\"") || body.contains("releases"),
        "the refusal names the rule: {body}"
    );
    // The tag did not move.
    let (status, _) = send(
        c.head(format!("{base}/v2/{repo}/manifests/{v1}"))
            .header("accept", OCI_MANIFEST),
    )
    .await;
    assert_eq!(status, 200);
    let resp = c
        .head(format!("{base}/v2/{repo}/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("HEAD v1");
    assert_eq!(header(&resp, "docker-content-digest"), Some(v1.clone()));

    // Release candidates, other tags and other repositories stay mutable.
    push_manifest(c, base, repo, "v2-rc1", OCI_MANIFEST, &same).await;
    let other_digest = push_manifest(c, base, repo, "v2-rc1", OCI_MANIFEST, &other).await;
    push_manifest(c, base, repo, "latest", OCI_MANIFEST, &same).await;
    push_manifest(c, base, repo, "latest", OCI_MANIFEST, &other).await;
    push_tiny_image(c, base, "dev/app", "v1").await;
    let dev_other = other_manifest(c, base, "dev/app", "dev build").await;
    push_manifest(c, base, "dev/app", "v1", OCI_MANIFEST, &dev_other).await;

    // Deleting the tag, or the manifest it points at, is refused too.
    let (status, body) = send(c.delete(format!("{base}/v2/{repo}/manifests/v1"))).await;
    assert_eq!(status, 409, "DELETE tag v1: {body}");
    assert!(
        body.contains("releases") && body.contains("cannot be deleted"),
        "{body}"
    );
    let (status, body) = send(c.delete(format!("{base}/v2/{repo}/manifests/{v1}"))).await;
    assert_eq!(status, 409, "DELETE the manifest v1 points at: {body}");
    assert!(body.contains("immutable tag v1"), "{body}");
    // A manifest only mutable tags point at can go.
    let (status, body) = send(c.delete(format!("{base}/v2/{repo}/manifests/{other_digest}"))).await;
    assert_eq!(status, 202, "DELETE a manifest of mutable tags: {body}");
    let (status, body) = send(c.delete(format!("{base}/v2/{repo}/manifests/v2-rc1"))).await;
    assert_eq!(status, 404, "its tag went with it: {body}");
}

/// Every kind of write refused with 405 UNSUPPORTED on a read-only server, pulls working.
async fn check_read_only(c: &reqwest::Client, base: &str, repo: &str, manifest_digest: &str) {
    let (status, _) = send(
        c.get(format!("{base}/v2/{repo}/manifests/v1"))
            .header("accept", OCI_MANIFEST),
    )
    .await;
    assert_eq!(status, 200, "pull by tag on a read-only server");
    let (status, _) = send(c.get(format!("{base}/v2/{repo}/tags/list"))).await;
    assert_eq!(status, 200);
    let (_, _, manifest) = tiny_image("refused");
    let writes = [
        c.post(format!("{base}/v2/{repo}/blobs/uploads/")),
        c.put(format!("{base}/v2/{repo}/manifests/v9"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest),
        c.delete(format!("{base}/v2/{repo}/manifests/{manifest_digest}")),
        c.delete(format!("{base}/v2/{repo}/manifests/v1")),
        c.patch(format!("{base}/v2/{repo}/blobs/uploads/some-id")),
    ];
    for write in writes {
        let (status, body) = send(write).await;
        assert_eq!(status, 405, "a write on a read-only server: {body}");
        assert_eq!(codes(&body), ["UNSUPPORTED"], "{body}");
        assert!(body.contains("read-only"), "the message says why: {body}");
    }
    assert_healthy(c, base).await;
}

#[tokio::test]
async fn health_read_only_and_immutable_tags_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let writer = Server::start_berth_with_config(dir.path(), IMMUTABLE_RULES, false);
    let c = client();
    assert_healthy(&c, &writer.url()).await;
    check_immutable_rules(&c, &writer.url()).await;
    let (digest, _, _) = push_tiny_image(&c, &writer.url(), "ro/app", "v1").await;

    // `[storage] read_only = true` over a copy of the writer's storage.
    let mut reader =
        Server::start_berth_with_config(dir.path(), "[storage]\nread_only = true\n", false);
    reader.stop();
    run_ok(
        cmd("cp", ["-a"])
            .arg(format!("{}/.", writer.storage().display()))
            .arg(reader.storage()),
        Duration::from_secs(60),
    );
    reader.start_again();
    check_read_only(&c, &reader.url(), "ro/app", &digest).await;
    assert!(
        reader.log().contains("read-only mode"),
        "the start-up log says so:\n{}",
        reader.log()
    );
}

/// Polls until a blob upload start answers `want` (the switch is applied when the signal
/// is handled, a moment after `kill` returns).
async fn until_upload_start_answers(c: &reqwest::Client, base: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = send(c.post(format!("{base}/v2/hup/app/blobs/uploads/"))).await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "upload start still answers {status} (want {want}): {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hangup(server: &Server) {
    let pid = server.pid().expect("berth serve runs");
    run_ok(
        cmd("kill", ["-HUP"]).arg(pid.to_string()),
        Duration::from_secs(10),
    );
}

/// SIGHUP re-reads `[storage] read_only`: on, writes get 405 and pulls still work; a config
/// that no longer parses changes nothing (and says so); off again, writes work.
#[tokio::test]
async fn sighup_toggles_read_only_from_the_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_berth_with_config(dir.path(), "", false);
    let base = server.url();
    let config = dir.path().join("berth.toml");
    let c = client();
    let (digest, _, _) = push_tiny_image(&c, &base, "hup/app", "v1").await;
    until_upload_start_answers(&c, &base, 202).await;

    fs::write(&config, "[storage]\nread_only = true\n").expect("write config");
    hangup(&server);
    until_upload_start_answers(&c, &base, 405).await;
    check_read_only(&c, &base, "hup/app", &digest).await;

    fs::write(&config, "[storage]\nread_only = \"no\"\n").expect("write config");
    hangup(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("config not reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_upload_start_answers(&c, &base, 405).await;

    fs::write(&config, "[storage]\nread_only = false\n").expect("write config");
    hangup(&server);
    until_upload_start_answers(&c, &base, 202).await;
    push_tiny_image(&c, &base, "hup/app", "v2").await;
    assert!(
        server
            .log()
            .contains("SIGHUP: reloaded [storage] read_only"),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_replica_immutable_tags_and_readiness_on_s3() {
    let Some(mut s3) = s3_server("ops") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules.toml");
    fs::write(&rules, IMMUTABLE_RULES).expect("write rules");
    let rules = rules.display().to_string();
    // Two writers with the same rules on one bucket: a tag pushed through one
    // is immutable through the other.
    let a = Server::start_s3(&s3, "shared", &["--config", &rules]);
    let b = Server::start_s3(&s3, "shared", &["--config", &rules]);
    let reader = Server::start_s3(&s3, "shared", &["--read-only"]);
    let c = client();
    assert_healthy(&c, &a.url()).await;
    check_immutable_rules(&c, &a.url()).await;
    let other = other_manifest(&c, &b.url(), "prod/app", "through b").await;
    let (status, body) = send(
        c.put(format!("{}/v2/prod/app/manifests/v1", b.url()))
            .header("content-type", OCI_MANIFEST)
            .body(other),
    )
    .await;
    assert_eq!(status, 409, "the other replica refuses too: {body}");
    let (digest, _, _) = push_tiny_image(&c, &a.url(), "ro/app", "v1").await;
    check_read_only(&c, &reader.url(), "ro/app", &digest).await;

    // The storage gone: ready no longer, healthy still, and the probe answers in bounded time.
    s3.stop();
    let started = Instant::now();
    let (status, body) = send(c.get(format!("{}/readyz", a.url()))).await;
    assert_eq!(status, 503, "/readyz without storage: {body}");
    assert!(body.starts_with("not ready: storage"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the probe is bounded"
    );
    let (status, _) = send(c.get(format!("{}/healthz", a.url()))).await;
    assert_eq!(status, 200, "/healthz does not depend on storage");
    s3.start_again().expect("restart s3s-fs");
    let mut ready = false;
    for _ in 0..100 {
        if send(c.get(format!("{}/readyz", a.url()))).await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "/readyz recovers once the storage is back");
}

#[test]
fn bad_ops_config_fails_at_start_naming_the_key() {
    let e = serve_refuses("[storage]\nread_onyl = true\n");
    assert!(e.contains("unknown key storage.read_onyl"), "{e}");
    let e = serve_refuses("[storage]\nread_only = \"yes\"\n");
    assert!(e.contains("storage.read_only"), "{e}");
    let e = serve_refuses("[[immutable]]\nrepositories = [\"Prod/**\"]\ntags = [\"v*\"]\n");
    assert!(e.contains("immutable[0].repositories"), "{e}");
    let e = serve_refuses("[[immutable]]\nrepositories = [\"prod/**\"]\ntags = [\"v/*\"]\n");
    assert!(e.contains("immutable[0].tags"), "{e}");
    let e = serve_refuses("[[immutable]]\nrepositories = [\"prod/**\"]\ntag = [\"v*\"]\n");
    assert!(e.contains("unknown field `tag`"), "{e}");
}

/// Removes the test's local images, also when it panics.
struct RemoveImages(Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        for image in &self.0 {
            let _ = run(cmd("docker", ["rmi", "-f", image]), Duration::from_secs(60));
        }
    }
}

/// A one-layer image `name` made by `docker import` of a tar holding `content`.
fn import_image(work: &std::path::Path, name: &str, content: &str) {
    let root = work.join(format!("root-{}", unique("img")));
    fs::create_dir_all(&root).expect("mkdir image root");
    fs::write(root.join("release.txt"), content).expect("write release.txt");
    let tar = root.with_extension("tar");
    run_ok(
        cmd("tar", ["-C"]).arg(&root).arg("-cf").arg(&tar).arg("."),
        Duration::from_secs(60),
    );
    run_ok(
        cmd("docker", ["import"]).arg(&tar).arg(name),
        Duration::from_secs(120),
    );
}

#[test]
fn docker_push_to_an_immutable_tag_is_refused_naming_the_rule() {
    if !require_tool("docker") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_berth_with_config(dir.path(), IMMUTABLE_RULES, false);
    let image = format!("{}/prod/web:v1", server.host());
    let rc = format!("{}/prod/web:v1-rc1", server.host());
    let _cleanup = RemoveImages(vec![image.clone(), rc.clone()]);
    let timeout = Duration::from_secs(300);

    import_image(dir.path(), &image, &unique("first build"));
    run_ok(cmd("docker", ["push", &image]), timeout);
    // The same image again: CI re-running a release job succeeds.
    run_ok(cmd("docker", ["push", &image]), timeout);

    import_image(dir.path(), &image, &unique("second build"));
    let refused = run_fail(cmd("docker", ["push", &image]), timeout);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    eprintln!("docker push refused: {said}");
    assert!(
        said.contains("immutable") && said.contains("releases"),
        "docker shows the rule's message: {}",
        refused.describe()
    );
    // A release candidate tag may be pushed over.
    run_ok(cmd("docker", ["tag", &image, &rc]), timeout);
    run_ok(cmd("docker", ["push", &rc]), timeout);
    import_image(dir.path(), &rc, &unique("third build"));
    run_ok(cmd("docker", ["push", &rc]), timeout);
}
