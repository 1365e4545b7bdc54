//! The real Docker client against `berth serve`: build a two-layer image from busybox-static,
//! push it, restart the registry, remove the image locally, pull it back and run it.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const DOCKER_TIMEOUT: Duration = Duration::from_secs(300);

/// Removes the images and containers a test made, also when it panics.
#[derive(Default)]
struct DockerCleanup {
    images: Vec<String>,
    containers: Vec<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run(cmd("docker", ["rm", "-f", c]), DOCKER_TIMEOUT);
        }
        for image in self.images.iter().rev() {
            let _ = run(cmd("docker", ["rmi", "-f", image]), DOCKER_TIMEOUT);
        }
    }
}

fn docker<const N: usize>(args: [&str; N]) -> Command {
    let mut c = cmd("docker", args);
    // The classic builder: works with the Debian daemon without a buildx plugin.
    c.env("DOCKER_BUILDKIT", "0");
    c
}

/// A root filesystem with the static busybox and a few applet symlinks.
fn make_rootfs(dir: &Path) {
    let busybox = which("busybox")
        .or_else(|| Some("/bin/busybox".into()).filter(|p: &std::path::PathBuf| p.exists()))
        .expect("busybox (Debian package busybox-static) is required");
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("mkdir rootfs/bin");
    fs::create_dir_all(dir.join("tmp")).expect("mkdir rootfs/tmp");
    fs::copy(&busybox, bin.join("busybox")).expect("copy busybox into rootfs");
    for applet in ["sh", "cat", "echo", "ls", "true", "test", "mkdir"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("symlink busybox applet");
    }
}

/// Extracts `sha256:...` from the `v1: digest: sha256:... size: N` line of `docker push`.
fn pushed_digest(push_output: &str) -> String {
    push_output
        .split_whitespace()
        .skip_while(|w| *w != "digest:")
        .nth(1)
        .filter(|d| d.starts_with("sha256:") && d.len() == 71)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{push_output}"))
        .to_string()
}

#[tokio::test]
async fn docker_build_push_restart_pull_run() {
    if !require_tool("docker") {
        return;
    }
    let mut server = Server::start();
    let http = client();
    let base_url = server.url();
    let mut cleanup = DockerCleanup::default();

    let id = unique("e2e");
    let token = format!("hello-from-berth-{id}");
    let added = format!("added by COPY for {id}\n");

    // --- base image from a busybox rootfs (layer 1) ---------------------------------------
    let work = tempfile::tempdir().expect("tempdir");
    let rootfs = work.path().join("rootfs");
    make_rootfs(&rootfs);
    let rootfs_tar = work.path().join("rootfs.tar");
    run_ok(
        cmd("tar", ["-C"])
            .arg(&rootfs)
            .arg("-cf")
            .arg(&rootfs_tar)
            .arg("."),
        DOCKER_TIMEOUT,
    );
    let base = format!("berth-e2e-base:{id}");
    cleanup.images.push(base.clone());
    run_ok(
        docker(["import"]).arg(&rootfs_tar).arg(&base),
        DOCKER_TIMEOUT,
    );

    // --- two more layers: RUN and COPY ----------------------------------------------------
    let ctx = work.path().join("ctx");
    fs::create_dir_all(&ctx).expect("mkdir build context");
    fs::write(ctx.join("added.txt"), &added).expect("write added.txt");
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {base}\nRUN echo '{token}' > /greeting.txt\nCOPY added.txt /added.txt\n\
             CMD [\"/bin/cat\", \"/greeting.txt\"]\n"
        ),
    )
    .expect("write Dockerfile");
    let image = format!("{}/e2e/app:v1", server.host());
    cleanup.images.push(image.clone());
    run_ok(
        docker(["build", "--network", "none", "--force-rm", "-t", &image]).arg(&ctx),
        DOCKER_TIMEOUT,
    );
    let local_layers: usize = run_ok(
        docker([
            "image",
            "inspect",
            "--format",
            "{{len .RootFS.Layers}}",
            &image,
        ]),
        DOCKER_TIMEOUT,
    )
    .trim()
    .parse()
    .expect("layer count from docker image inspect");
    assert!(
        local_layers >= 2,
        "expected >= 2 layers, image has {local_layers}"
    );

    // --- push -----------------------------------------------------------------------------
    let push = run_ok(docker(["push", &image]), DOCKER_TIMEOUT);
    let digest = pushed_digest(&push);
    eprintln!("pushed {image} as {digest} ({local_layers} layers)");

    let (status, tags) = get_json(&http, &format!("{base_url}/v2/e2e/app/tags/list")).await;
    assert_eq!(status, 200, "tags/list after push");
    assert_eq!(tags["name"], "e2e/app", "tags/list name: {tags}");
    assert!(
        tags["tags"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| x == "v1")),
        "tag v1 missing from tags/list: {tags}"
    );
    let resp = http
        .get(format!("{base_url}/v2/e2e/app/manifests/v1"))
        .header("accept", DOCKER_MANIFEST)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET manifest");
    assert_eq!(resp.status().as_u16(), 200, "GET manifest v1");
    assert_eq!(
        header(&resp, "docker-content-digest").as_deref(),
        Some(digest.as_str()),
        "Docker-Content-Digest of v1 differs from what docker push reported"
    );
    let manifest_bytes = resp.bytes().await.expect("manifest body");
    assert_eq!(
        digest_of(&manifest_bytes),
        digest,
        "manifest bytes do not hash to the digest"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&manifest_bytes).expect("manifest is JSON");
    let layers = manifest["layers"].as_array().expect("manifest has layers");
    assert_eq!(
        layers.len(),
        local_layers,
        "registry manifest layer count: {manifest}"
    );

    // --- a second repository: docker mounts the layers instead of uploading them ------------
    let other = format!("{}/e2e/other:v1", server.host());
    cleanup.images.push(other.clone());
    run_ok(docker(["tag", &image, &other]), DOCKER_TIMEOUT);
    let push_other = run_ok(docker(["push", &other]), DOCKER_TIMEOUT);
    assert_eq!(
        pushed_digest(&push_other),
        digest,
        "same image, same manifest digest"
    );
    assert!(
        push_other.contains("Mounted from e2e/app"),
        "expected docker to mount the layers from e2e/app (cross-repository mount):\n{push_other}"
    );

    // --- restart the registry, forget the image locally -----------------------------------
    server.restart();
    // Pushing again finds every layer in place after the restart.
    let again = run_ok(docker(["push", &image]), DOCKER_TIMEOUT);
    assert_eq!(pushed_digest(&again), digest, "digest of the second push");
    assert_eq!(
        again.matches("Layer already exists").count(),
        local_layers,
        "after the restart every layer should already exist:\n{again}"
    );
    for name in [&image, &other, &base] {
        run_ok(docker(["rmi", "-f", name]), DOCKER_TIMEOUT);
    }
    run_fail(docker(["image", "inspect", &image]), DOCKER_TIMEOUT);

    // --- pull and run ---------------------------------------------------------------------
    let pull = run_ok(docker(["pull", &image]), DOCKER_TIMEOUT);
    assert!(
        pull.contains(&digest),
        "docker pull did not report digest {digest}:\n{pull}"
    );
    let container = unique("berth-e2e-run");
    cleanup.containers.push(container.clone());
    let out = run_ok(
        docker([
            "run",
            "--rm",
            "--network",
            "none",
            "--name",
            &container,
            &image,
        ]),
        DOCKER_TIMEOUT,
    );
    assert_eq!(out.trim(), token, "output of the image's CMD");
    let out = run_ok(
        docker([
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "cat",
            "/added.txt",
        ]),
        DOCKER_TIMEOUT,
    );
    assert_eq!(out, added, "file added by COPY");

    // By digest, from the second repository.
    let by_digest = format!("{}/e2e/other@{digest}", server.host());
    cleanup.images.push(by_digest.clone());
    run_ok(docker(["pull", &by_digest]), DOCKER_TIMEOUT);
    let out = run_ok(
        docker(["run", "--rm", "--network", "none", &by_digest]),
        DOCKER_TIMEOUT,
    );
    assert_eq!(out.trim(), token, "output of the image pulled by digest");

    // An unknown tag is an error, not an empty image.
    let missing = run_fail(
        docker(["pull", &format!("{}/e2e/app:does-not-exist", server.host())]),
        DOCKER_TIMEOUT,
    );
    assert!(
        missing.stderr.contains("not found") || missing.stderr.contains("unknown"),
        "unexpected error for a missing tag: {}",
        missing.stderr
    );
}
