//! `[[quota]]` rules on a real `berth serve`: pushes under `max_bytes` work, the blob (or the
//! manifest) that would pass it gets 403 DENIED with the numbers and is not linked, other
//! repositories are unaffected, `max_tags` refuses a new tag but takes an existing one again,
//! `berth usage --json` counts what was pushed, bad rules fail at start naming the key, and the
//! real `docker push` over a quota prints the refusal.

mod common;

use std::fs;
use std::process::Command;
use std::time::Duration;

use common::*;

const QUOTA_RULES: &str = r#"
[[quota]]
name = "few tags"
repositories = ["team/tags"]
max_tags = 2

[[quota]]
name = "team"
repositories = ["team/**"]
max_bytes = 5000
"#;

async fn send(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// An image with one layer per size (content differs by seed): (config, layers, manifest).
fn sized_image(seed: &str, sizes: &[usize]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    let layers: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut layer = format!("{seed} layer {i}\n").into_bytes();
            layer.resize(size, b'x');
            layer
        })
        .collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| digest_of(l)).collect::<Vec<_>>()},
        "history": [{"created_by": seed}]
    }))
    .expect("serialize config");
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let manifest = manifest_json(&config, &refs, None);
    (config, layers, manifest)
}

/// Pushes the image's blobs and manifest; returns the bytes its blobs hold.
async fn push_sized(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
    sizes: &[usize],
) -> u64 {
    let (config, layers, manifest) = sized_image(&format!("{repo}:{tag}"), sizes);
    for layer in &layers {
        push_blob(c, base, repo, layer).await;
    }
    push_blob(c, base, repo, &config).await;
    push_manifest(c, base, repo, tag, OCI_MANIFEST, &manifest).await;
    (config.len() + layers.iter().map(Vec::len).sum::<usize>()) as u64
}

/// A chunked upload (POST, then PUT with the body): (status, body).
async fn upload(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> (u16, String) {
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST upload");
    assert_eq!(resp.status().as_u16(), 202);
    let location = header(&resp, "location").expect("Location");
    let url = format!(
        "{}{}digest={}",
        absolute(base, &location),
        if location.contains('?') { "&" } else { "?" },
        digest_of(data)
    );
    send(c.put(url).body(data.to_vec())).await
}

fn assert_denied(status: u16, body: &str, needles: &[&str]) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        error_codes(body.as_bytes()).unwrap_or_default(),
        ["DENIED"],
        "{body}"
    );
    for needle in needles {
        assert!(body.contains(needle), "the refusal says {needle:?}: {body}");
    }
}

fn usage_json(storage: &std::path::Path, config: &std::path::Path) -> serde_json::Value {
    let out = run_ok(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["usage", "--json", "--storage"])
            .arg(storage)
            .arg("--config")
            .arg(config),
        Duration::from_secs(60),
    );
    parse_json(&out, "berth usage --json")
}

fn repository<'a>(usage: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    usage["repositories"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["repository"] == name))
        .unwrap_or_else(|| panic!("{name} in {usage}"))
}

#[tokio::test]
async fn quotas_refuse_pushes_past_the_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_berth_with_config(dir.path(), QUOTA_RULES, false);
    let (base, c) = (server.url(), client());

    // Two images under max_bytes = 5000.
    let first = push_sized(&c, &base, "team/app", "a", &[2000]).await;
    let second = push_sized(&c, &base, "team/app", "b", &[2000]).await;
    let used = first + second;
    assert!(used < 5000 && used + 2000 > 5000, "test sizes: {used}");

    // A third 2000-byte layer would pass it: refused at completion, with the numbers, not linked.
    let (_, layers, _) = sized_image("team/app:c", &[2000]);
    let (status, body) = upload(&c, &base, "team/app", &layers[0]).await;
    assert_denied(
        status,
        &body,
        &["max_bytes is 5000", &format!("{used} bytes used"), "team"],
    );
    let (status, _) = send(c.head(format!(
        "{base}/v2/team/app/blobs/{}",
        digest_of(&layers[0])
    )))
    .await;
    assert_eq!(status, 404, "the refused blob is not linked into team/app");

    // A monolithic upload declaring its size is refused before its body is stored.
    let (status, body) = send(
        c.post(format!(
            "{base}/v2/team/app/blobs/uploads/?digest={}",
            digest_of(&layers[0])
        ))
        .body(layers[0].clone()),
    )
    .await;
    assert_denied(
        status,
        &body,
        &["max_bytes is 5000", "this blob of 2000 bytes"],
    );

    // Another repository is unaffected by team's quota.
    push_sized(&c, &base, "other/app", "c", &[2000, 2000, 2000]).await;

    // Layers that fit one by one but not together: the manifest PUT is refused.
    let (config, layers, manifest) = sized_image("team/multi:v1", &[3000, 3000]);
    for layer in &layers {
        push_blob(&c, &base, "team/multi", layer).await;
    }
    push_blob(&c, &base, "team/multi", &config).await;
    let (status, body) = send(
        c.put(format!("{base}/v2/team/multi/manifests/v1"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest),
    )
    .await;
    assert_denied(status, &body, &["max_bytes is 5000", "tag v1 would make"]);

    // max_tags = 2: a third tag is refused, an existing tag can be pushed again.
    push_tiny_image(&c, &base, "team/tags", "v1").await;
    push_tiny_image(&c, &base, "team/tags", "v2").await;
    let (_, _, v3) = tiny_image("team/tags:v1");
    let (status, body) = send(
        c.put(format!("{base}/v2/team/tags/manifests/v3"))
            .header("content-type", OCI_MANIFEST)
            .body(v3.clone()),
    )
    .await;
    assert_denied(status, &body, &["max_tags is 2", "2 tags are in use", "v3"]);
    push_manifest(&c, &base, "team/tags", "v1", OCI_MANIFEST, &v3).await;
    let (_, _, v2_again) = tiny_image("team/tags:v2");
    push_manifest(&c, &base, "team/tags", "v2", OCI_MANIFEST, &v2_again).await;

    // berth usage --json reads the same storage and counts what was pushed.
    let usage = usage_json(server.storage(), &dir.path().join("berth.toml"));
    let app = repository(&usage, "team/app");
    assert_eq!(app["bytes"], used, "{usage}");
    assert_eq!(app["tags"], 2, "{usage}");
    assert_eq!(app["max_bytes"], 5000, "{usage}");
    let tags = repository(&usage, "team/tags");
    assert_eq!(
        (tags["tags"].clone(), tags["max_tags"].clone()),
        (2.into(), 2.into()),
        "{usage}"
    );
    let multi = repository(&usage, "team/multi");
    assert_eq!(
        multi["tags"], 0,
        "the refused manifest left no tag: {usage}"
    );
    assert_eq!(multi["bytes"], 0, "{usage}");
    let other = repository(&usage, "other/app");
    assert!(other["max_bytes"].is_null(), "{usage}");
    assert!(other["bytes"].as_u64().unwrap_or(0) > 6000, "{usage}");
}

#[test]
fn bad_quota_config_fails_at_start_naming_the_key() {
    let e = serve_refuses("[[quota]]\nrepositories = [\"Team/**\"]\nmax_tags = 3\n");
    assert!(e.contains("quota[0].repositories"), "{e}");
    let e = serve_refuses("[[quota]]\nrepositories = [\"team/**\"]\nmax_bytes = 0\n");
    assert!(e.contains("quota[0].max_bytes"), "{e}");
    let e = serve_refuses("[[quota]]\nrepositories = [\"team/**\"]\nmax_tags = -1\n");
    assert!(e.contains("quota[0].max_tags"), "{e}");
    let e = serve_refuses("[[quota]]\nrepositories = [\"team/**\"]\nmax_byte = 10\n");
    assert!(e.contains("unknown field `max_byte`"), "{e}");
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

/// A one-layer image `name` made by `docker import`, holding `size` bytes that do not
/// compress (so the pushed layer is about that big).
fn import_image(work: &std::path::Path, name: &str, size: usize) {
    let root = work.join(unique("root"));
    fs::create_dir_all(&root).expect("mkdir image root");
    let mut state = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15 ^ size as u64;
    let noise: Vec<u8> = (0..size)
        .map(|_| {
            // xorshift64: incompressible enough for gzip.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    fs::write(root.join("noise.bin"), noise).expect("write noise");
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
fn docker_push_over_the_quota_shows_the_message() {
    if !require_tool("docker") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = "[[quota]]\nname = \"docker\"\nrepositories = [\"dq/**\"]\nmax_bytes = 100000\n";
    let server = Server::start_berth_with_config(dir.path(), rules, false);
    let small = format!("{}/dq/app:small", server.host());
    let big = format!("{}/dq/app:big", server.host());
    let _cleanup = RemoveImages(vec![small.clone(), big.clone()]);
    let timeout = Duration::from_secs(300);

    import_image(dir.path(), &small, 20_000);
    run_ok(cmd("docker", ["push", &small]), timeout);
    import_image(dir.path(), &big, 200_000);
    let refused = run_fail(cmd("docker", ["push", &big]), timeout);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    eprintln!("docker push refused: {said}");
    assert!(
        said.contains("quota of dq/app exceeded") && said.contains("max_bytes is 100000"),
        "docker shows the quota's message: {}",
        refused.describe()
    );
}
