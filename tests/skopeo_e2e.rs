//! skopeo and umoci against `berth serve`: an image built without Docker (umoci), copied as a
//! docker-archive and as an OCI layout into the registry, back out to an OCI layout and a
//! docker-archive, and between two repositories; every copy is checked digest by digest.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);

fn skopeo<const N: usize>(args: [&str; N]) -> Command {
    cmd("skopeo", args)
}

fn json(text: &str, what: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{what} is not JSON ({e}):\n{text}"))
}

fn read_json(path: &Path) -> Value {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> std::path::PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("not a sha256 digest: {digest}"));
    layout.join("blobs").join("sha256").join(hex)
}

/// The manifest digest an OCI layout's index.json gives for `tag`.
fn layout_manifest_digest(layout: &Path, tag: &str) -> String {
    let index = read_json(&layout.join("index.json"));
    index["manifests"]
        .as_array()
        .and_then(|ms| {
            ms.iter()
                .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        })
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("tag {tag} not in {}/index.json: {index}", layout.display()))
        .to_string()
}

/// sha256 of the gunzipped content of a file (a layer's diff_id).
fn gunzip_digest(path: &Path) -> String {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("run gzip -dc");
    assert!(
        out.status.success(),
        "gzip -dc {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    digest_of(&out.stdout)
}

fn string_list(v: &Value, what: &str) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not an array: {v}"))
        .iter()
        .map(|x| {
            x.as_str()
                .unwrap_or_else(|| panic!("{what} has a non-string item: {v}"))
                .to_string()
        })
        .collect()
}

/// Checks an OCI layout written by skopeo: every blob the manifest names is present, has the
/// right size and hashes to its name, the config lists `diff_ids` and the layers decompress to
/// them. `config_digest`, when given, must be the manifest's config. Returns the manifest.
fn verify_layout(
    layout: &Path,
    tag: &str,
    config_digest: Option<&str>,
    diff_ids: &[String],
) -> Value {
    let manifest_digest = layout_manifest_digest(layout, tag);
    let manifest_bytes = fs::read(blob_path(layout, &manifest_digest)).expect("manifest blob");
    assert_eq!(
        digest_of(&manifest_bytes),
        manifest_digest,
        "manifest blob hash"
    );
    let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("manifest JSON");
    if let Some(config_digest) = config_digest {
        assert_eq!(
            manifest["config"]["digest"], config_digest,
            "config digest in {manifest}"
        );
    }
    let layers = manifest["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), diff_ids.len(), "layer count in {manifest}");
    let descriptors = std::iter::once(&manifest["config"]).chain(layers.iter());
    for d in descriptors {
        let digest = d["digest"].as_str().expect("descriptor digest");
        let bytes = fs::read(blob_path(layout, digest)).expect("blob in layout");
        assert_eq!(
            digest_of(&bytes),
            digest,
            "blob content does not match its digest"
        );
        assert_eq!(
            Some(bytes.len() as u64),
            d["size"].as_u64(),
            "size of {digest}"
        );
    }
    let config = read_json(&blob_path(
        layout,
        manifest["config"]["digest"]
            .as_str()
            .expect("config digest"),
    ));
    assert_eq!(
        string_list(&config["rootfs"]["diff_ids"], "rootfs.diff_ids"),
        diff_ids,
        "diff_ids in the config of {}:{tag}",
        layout.display()
    );
    for (layer, diff_id) in layers.iter().zip(diff_ids) {
        let digest = layer["digest"].as_str().expect("layer digest");
        assert_eq!(
            &gunzip_digest(&blob_path(layout, digest)),
            diff_id,
            "layer {digest} does not decompress to its diff_id"
        );
    }
    manifest
}

#[tokio::test]
async fn skopeo_copies_through_the_registry() {
    if !(require_tool("skopeo") && require_tool("umoci") && require_tool("gzip")) {
        return;
    }
    let mut server = Server::start();
    let host = server.host();
    let base = server.url();
    let http = client();
    let work = tempfile::tempdir().expect("tempdir");
    let w = |name: &str| work.path().join(name).to_string_lossy().into_owned();
    let token = format!("greetings from {}\n", unique("skopeo"));

    // --- an image made without Docker: umoci, two layers -------------------------------------
    let busybox = which("busybox")
        .or_else(|| Some("/bin/busybox".into()).filter(|p: &std::path::PathBuf| p.exists()))
        .expect("busybox (Debian package busybox-static) is required");
    let layer1 = work.path().join("layer1");
    fs::create_dir_all(layer1.join("bin")).expect("mkdir layer1/bin");
    fs::copy(&busybox, layer1.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "cat"] {
        std::os::unix::fs::symlink("busybox", layer1.join("bin").join(applet)).expect("symlink");
    }
    let layer2 = work.path().join("layer2");
    fs::create_dir_all(&layer2).expect("mkdir layer2");
    fs::write(layer2.join("greeting.txt"), &token).expect("write greeting");

    let src = w("src-layout");
    let src_ref = format!("{src}:v1");
    run_ok(cmd("umoci", ["init", "--layout", &src]), TIMEOUT);
    run_ok(cmd("umoci", ["new", "--image", &src_ref]), TIMEOUT);
    run_ok(
        cmd("umoci", ["insert", "--image", &src_ref, &w("layer1"), "/"]),
        TIMEOUT,
    );
    run_ok(
        cmd("umoci", ["insert", "--image", &src_ref, &w("layer2"), "/"]),
        TIMEOUT,
    );
    run_ok(
        cmd(
            "umoci",
            [
                "config",
                "--image",
                &src_ref,
                "--config.cmd",
                "/bin/cat",
                "--config.cmd",
                "/greeting.txt",
            ],
        ),
        TIMEOUT,
    );
    let src_layout = work.path().join("src-layout");
    let src_manifest_digest = layout_manifest_digest(&src_layout, "v1");
    let src_manifest = read_json(&blob_path(&src_layout, &src_manifest_digest));
    let config_digest = src_manifest["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string();
    let src_config = read_json(&blob_path(&src_layout, &config_digest));
    let diff_ids = string_list(&src_config["rootfs"]["diff_ids"], "rootfs.diff_ids");
    assert_eq!(
        diff_ids.len(),
        2,
        "umoci should have made two layers: {src_config}"
    );

    // ... and the same image as a docker-archive, still without Docker.
    let src_archive = w("src.tar");
    run_ok(
        skopeo([
            "copy",
            &format!("oci:{src_ref}"),
            &format!("docker-archive:{src_archive}:sko/src:v1"),
        ]),
        TIMEOUT,
    );

    // --- into the registry ---------------------------------------------------------------------
    let app = format!("docker://{host}/sko/app:v1");
    run_ok(
        skopeo([
            "copy",
            "--dest-tls-verify=false",
            &format!("docker-archive:{src_archive}"),
            &app,
        ]),
        TIMEOUT,
    );
    // OCI layout as is: the manifest digest must survive byte for byte.
    let oci_repo = format!("docker://{host}/sko/oci:v1");
    run_ok(
        skopeo([
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{src_ref}"),
            &oci_repo,
        ]),
        TIMEOUT,
    );
    let resp = http
        .head(format!("{base}/v2/sko/oci/manifests/v1"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("HEAD sko/oci manifest");
    assert_eq!(resp.status().as_u16(), 200, "HEAD /v2/sko/oci/manifests/v1");
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(src_manifest_digest.as_str()),
        "OCI manifest digest changed on its way through the registry"
    );

    // --- what the registry now serves for sko/app:v1 ----------------------------------------------
    let inspect = json(
        &run_ok(skopeo(["inspect", "--tls-verify=false", &app]), TIMEOUT),
        "inspect",
    );
    let raw = run_ok(
        skopeo(["inspect", "--raw", "--tls-verify=false", &app]),
        TIMEOUT,
    );
    let app_digest = inspect["Digest"].as_str().expect("Digest").to_string();
    assert_eq!(
        digest_of(raw.as_bytes()),
        app_digest,
        "raw manifest does not hash to Digest"
    );
    let app_manifest = json(&raw, "raw manifest");
    assert_eq!(
        app_manifest["config"]["digest"],
        config_digest.as_str(),
        "config digest"
    );
    let raw_config = run_ok(
        skopeo(["inspect", "--raw", "--config", "--tls-verify=false", &app]),
        TIMEOUT,
    );
    assert_eq!(
        digest_of(raw_config.as_bytes()),
        config_digest,
        "config blob served by registry"
    );
    let layer_digests = string_list(&inspect["Layers"], "Layers");
    assert_eq!(layer_digests.len(), 2, "layers of sko/app:v1: {inspect}");
    for (digest, diff_id) in layer_digests.iter().zip(&diff_ids) {
        let resp = http
            .get(format!("{base}/v2/sko/app/blobs/{digest}"))
            .send()
            .await
            .expect("GET layer");
        assert_eq!(resp.status().as_u16(), 200, "GET blob {digest}");
        let bytes = resp.bytes().await.expect("layer body");
        assert_eq!(
            &digest_of(&bytes),
            digest,
            "layer bytes served by the registry"
        );
        let file = work.path().join("layer.gz");
        fs::write(&file, &bytes).expect("write layer");
        assert_eq!(&gunzip_digest(&file), diff_id, "layer {digest} diff_id");
    }

    // --- restart, then copy out -----------------------------------------------------------------
    server.restart();

    // The OCI image comes back byte for byte.
    let out_layout = work.path().join("out-layout");
    run_ok(
        skopeo([
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            &oci_repo,
            &format!("oci:{}:v1", w("out-layout")),
        ]),
        TIMEOUT,
    );
    assert_eq!(
        layout_manifest_digest(&out_layout, "v1"),
        src_manifest_digest,
        "OCI manifest digest after registry -> oci layout"
    );
    verify_layout(&out_layout, "v1", Some(&config_digest), &diff_ids);
    // umoci reads it back and unpacks a root filesystem with our files.
    let bundle = work.path().join("bundle");
    run_ok(
        cmd(
            "umoci",
            [
                "unpack",
                "--image",
                &format!("{}:v1", w("out-layout")),
                &w("bundle"),
            ],
        ),
        TIMEOUT,
    );
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/greeting.txt")).expect("greeting.txt in bundle"),
        token
    );
    assert_eq!(
        sha256_hex(&fs::read(bundle.join("rootfs/bin/busybox")).expect("busybox in bundle")),
        sha256_hex(&fs::read(&busybox).expect("read busybox")),
        "busybox binary changed on the way"
    );
    // The Docker-format image converted to OCI on the way out: same filesystem layers.
    run_ok(
        skopeo([
            "copy",
            "--src-tls-verify=false",
            &app,
            &format!("oci:{}:app", w("out-layout")),
        ]),
        TIMEOUT,
    );
    verify_layout(&out_layout, "app", None, &diff_ids);

    let out_archive = w("out.tar");
    run_ok(
        skopeo([
            "copy",
            "--src-tls-verify=false",
            &app,
            &format!("docker-archive:{out_archive}:sko/app:v1"),
        ]),
        TIMEOUT,
    );
    let archive = format!("docker-archive:{out_archive}");
    let inspect_archive = json(
        &run_ok(skopeo(["inspect", &archive]), TIMEOUT),
        "inspect archive",
    );
    assert_eq!(
        string_list(&inspect_archive["Layers"], "archive Layers"),
        diff_ids,
        "docker-archive layers (uncompressed) are not the original diff_ids"
    );
    let archive_config = run_ok(skopeo(["inspect", "--raw", "--config", &archive]), TIMEOUT);
    assert_eq!(
        digest_of(archive_config.as_bytes()),
        config_digest,
        "config in docker-archive"
    );

    // --- registry to registry, another repository --------------------------------------------------
    let copy = format!("docker://{host}/sko/copy:v2");
    run_ok(
        skopeo([
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            &app,
            &copy,
        ]),
        TIMEOUT,
    );
    let inspect_copy = json(
        &run_ok(skopeo(["inspect", "--tls-verify=false", &copy]), TIMEOUT),
        "inspect copy",
    );
    assert_eq!(
        inspect_copy["Digest"],
        app_digest.as_str(),
        "digest after repo-to-repo copy"
    );
    let tags = json(
        &run_ok(
            skopeo([
                "list-tags",
                "--tls-verify=false",
                &format!("docker://{host}/sko/copy"),
            ]),
            TIMEOUT,
        ),
        "list-tags",
    );
    assert_eq!(
        string_list(&tags["Tags"], "Tags"),
        vec!["v2".to_string()],
        "tags of sko/copy"
    );
    let (status, catalog) = get_json(&http, &format!("{base}/v2/_catalog")).await;
    assert_eq!(status, 200, "GET /v2/_catalog");
    let repos = string_list(&catalog["repositories"], "repositories");
    for repo in ["sko/app", "sko/copy", "sko/oci"] {
        assert!(
            repos.iter().any(|r| r == repo),
            "{repo} missing from catalog {catalog}"
        );
    }

    // --- delete the copy; the original keeps working --------------------------------------------
    run_ok(skopeo(["delete", "--tls-verify=false", &copy]), TIMEOUT);
    let gone = run_fail(skopeo(["inspect", "--tls-verify=false", &copy]), TIMEOUT);
    assert!(
        gone.stderr.contains("manifest unknown") || gone.stderr.contains("not found"),
        "unexpected error inspecting a deleted image: {}",
        gone.stderr
    );
    let again = json(
        &run_ok(skopeo(["inspect", "--tls-verify=false", &app]), TIMEOUT),
        "inspect app",
    );
    assert_eq!(
        again["Digest"],
        app_digest.as_str(),
        "sko/app:v1 after deleting the copy"
    );
    run_ok(
        skopeo([
            "copy",
            "--src-tls-verify=false",
            &app,
            &format!("oci:{}:again", w("out-layout")),
        ]),
        TIMEOUT,
    );
    verify_layout(&out_layout, "again", None, &diff_ids);
}
