//! Checks of our OCI layouts and docker archives with the real tools:
//! umoci and skopeo (and docker, when DOCKER_HOST names a daemon).
//!
//! A missing tool skips its test on a developer's machine, but with
//! CI=true it fails: CI must never pass by checking nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_client::archive::{DockerArchiveDest, DockerArchiveSource};
use berth_client::image::{ManifestKind, NoProgress};
use berth_client::import::{import_rootfs, ImportOptions};
use berth_client::layout::{OciLayoutDest, OciLayoutSource};
use berth_client::{ImageDest, ImageSource, Manifest, Platform};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

#[path = "../../tests/common/ci.rs"]
mod ci;
use ci::in_ci;

/// Whether `name` can run; panics in CI when it cannot.
fn have(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if in_ci() {
            panic!("{name} is not installed, and CI=true: install it (apt-get install {name})");
        }
        eprintln!("skipping: {name} is not installed");
    }
    ok
}

/// Whether DOCKER_HOST names a daemon that answers; panics in CI when not.
fn docker_daemon() -> bool {
    let problem = match std::env::var_os("DOCKER_HOST") {
        None => "DOCKER_HOST is not set".to_string(),
        Some(host) => {
            let out = Command::new("docker")
                .args(["version", "--format", "{{.Server.Version}}"])
                .output();
            match out {
                Ok(o) if o.status.success() => return true,
                Ok(o) => format!(
                    "the daemon at DOCKER_HOST={host:?} does not answer: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => format!("docker did not start: {e}"),
            }
        }
    };
    if in_ci() {
        panic!("{problem}, and CI=true: run the tests through scripts/test.sh, which starts a private dockerd");
    }
    eprintln!("skipping: {problem}");
    false
}

/// Run a command, fail the test with its output if it fails, return stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} did not start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&run(cmd)).expect("JSON output")
}

const BUSYBOX: &str = "/bin/busybox";

/// A root filesystem tarball: a static busybox and a few applet links.
/// Returns its path and its bytes' sha256 (the layer's diff_id).
fn busybox_rootfs(dir: &Path) -> Option<(PathBuf, String)> {
    if !Path::new(BUSYBOX).exists() {
        if in_ci() {
            panic!("{BUSYBOX} is missing, and CI=true: install busybox-static");
        }
        eprintln!("skipping: {BUSYBOX} is missing");
        return None;
    }
    let path = dir.join("rootfs.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for d in ["bin/", "etc/", "tmp/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    let data = std::fs::read(BUSYBOX).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, "bin/busybox", &data[..]).unwrap();
    for applet in ["sh", "ls", "echo", "cat"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    b.append_data(&mut h, "etc/passwd", &passwd[..]).unwrap();
    b.finish().unwrap();
    drop(b);
    let digest = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(std::fs::read(&path).unwrap()))
    );
    Some((path, digest))
}

/// What the CLI's copy does, one blob at a time (the engine is tested elsewhere).
async fn copy(src: &dyn ImageSource, dst: &dyn ImageDest) -> Manifest {
    let m = src.manifest().await.unwrap();
    let ManifestKind::Image { config, layers } = m.parse().unwrap() else {
        panic!("expected an image manifest");
    };
    dst.put_blob(&config, src, &NoProgress).await.unwrap();
    for l in &layers {
        dst.put_blob(l, src, &NoProgress).await.unwrap();
    }
    dst.put_manifest(&m, None).await.unwrap();
    dst.commit().await.unwrap();
    m
}

fn options() -> ImportOptions {
    ImportOptions {
        changes: vec![
            r#"CMD ["/bin/sh", "-c", "echo hello"]"#.into(),
            "ENV PATH=/bin".into(),
            "WORKDIR /tmp".into(),
            "LABEL org.example=berth".into(),
        ],
        message: Some("made by the formats test".into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn imported_layout_is_read_by_umoci_and_skopeo() {
    if !have("umoci") || !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((rootfs, diff_id)) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let layout = tmp.path().join("layout");
    let imported = import_rootfs(&rootfs, &layout, Some("v1"), &options())
        .await
        .unwrap();
    assert_eq!(imported.diff_id.to_string(), diff_id);
    // A second name with '/' and ':' in it, as the local store writes.
    let src = OciLayoutSource::open(&layout, Some("v1")).await.unwrap();
    let store_name = "localhost:5000/app:1";
    copy(
        &src,
        &OciLayoutDest::create(&layout, Some(store_name))
            .await
            .unwrap(),
    )
    .await;

    // umoci: check the layout, then unpack it into a runtime bundle.
    run(Command::new("umoci")
        .args(["stat", "--image"])
        .arg(format!("{}:v1", layout.display())));
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    let rootfs_dir = bundle.join("rootfs");
    assert_eq!(
        std::fs::read(rootfs_dir.join("bin/busybox")).unwrap(),
        std::fs::read(BUSYBOX).unwrap()
    );
    assert_eq!(
        std::fs::read_link(rootfs_dir.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let runtime: Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(runtime["process"]["args"][2], "echo hello");
    assert_eq!(runtime["process"]["cwd"], "/tmp");

    // skopeo: both names, manifest and config.
    for name in ["v1", store_name] {
        let info = json(
            Command::new("skopeo")
                .arg("inspect")
                .arg(format!("oci:{}:{name}", layout.display())),
        );
        assert_eq!(
            info["Digest"],
            imported.manifest.digest.to_string(),
            "{name}"
        );
        assert_eq!(info["Layers"][0], imported.layer.digest.to_string());
        assert_eq!(info["Architecture"], Platform::current().architecture);
        assert_eq!(info["Labels"]["org.example"], "berth");
    }
    let config = json(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:v1", layout.display())),
    );
    assert_eq!(config["rootfs"]["diff_ids"][0], diff_id);
    assert_eq!(config["history"][0]["comment"], "made by the formats test");
}

#[tokio::test]
async fn our_docker_archive_is_read_by_skopeo() {
    if !have("skopeo") || !have("umoci") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((rootfs, diff_id)) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let layout = tmp.path().join("layout");
    let imported = import_rootfs(&rootfs, &layout, Some("v1"), &options())
        .await
        .unwrap();
    let src = OciLayoutSource::open(&layout, Some("v1")).await.unwrap();
    let archive = tmp.path().join("app.tar");
    let dst = DockerArchiveDest::create(&archive, vec!["berth-test/app:1".into()])
        .await
        .unwrap();
    copy(&src, &dst).await;

    let info = json(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("docker-archive:{}", archive.display())),
    );
    // skopeo's archive reader names layers by their diff_ids (it decompresses).
    assert_eq!(info["Layers"][0], diff_id, "{info}");
    let config = json(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("docker-archive:{}", archive.display())),
    );
    assert_eq!(config["rootfs"]["diff_ids"][0], diff_id);

    // A full copy out of it verifies every blob; the result unpacks.
    let out = tmp.path().join("out");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", archive.display()))
        .arg(format!("oci:{}:back", out.display())));
    let bundle = tmp.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:back", out.display()))
        .arg(&bundle));
    assert!(bundle.join("rootfs/bin/busybox").exists());

    // The archive is an OCI layout too: skopeo reads it extracted.
    let extracted = tmp.path().join("extracted");
    tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .unpack(&extracted)
        .unwrap();
    let info = json(
        Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:1", extracted.display())),
    );
    assert_eq!(info["Digest"], imported.manifest.digest.to_string());
}

#[tokio::test]
async fn we_read_the_docker_archive_skopeo_writes() {
    if !have("skopeo") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((rootfs, diff_id)) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let layout = tmp.path().join("layout");
    let imported = import_rootfs(&rootfs, &layout, Some("v1"), &options())
        .await
        .unwrap();
    let archive = tmp.path().join("skopeo.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(format!(
            "docker-archive:{}:berth-test/app:1",
            archive.display()
        )));

    let src = DockerArchiveSource::open(&archive, Some("berth-test/app:1"))
        .await
        .unwrap();
    // skopeo writes the full name; the short one given to open() matched it.
    assert_eq!(src.repo_tags(), vec!["docker.io/berth-test/app:1"]);
    let out = tmp.path().join("out");
    let m = copy(
        &src,
        &OciLayoutDest::create(&out, Some("got")).await.unwrap(),
    )
    .await;
    let ManifestKind::Image { config, layers } = m.parse().unwrap() else {
        panic!()
    };
    // skopeo keeps the config as is and stores the layer uncompressed.
    assert_eq!(config.digest, imported.config.digest);
    assert_eq!(layers[0].digest.to_string(), diff_id);
    // The layout now holds a Docker schema 2 manifest (kept as is, so the
    // digest does not change), which skopeo 1.9 does not look for in an OCI
    // layout; check the copy by writing it out as an archive again and
    // having skopeo copy that, which verifies every digest.
    let back = OciLayoutSource::open(&out, Some("got")).await.unwrap();
    assert_eq!(back.manifest().await.unwrap().digest, m.digest);
    let again = tmp.path().join("again.tar");
    copy(
        &back,
        &DockerArchiveDest::create(&again, vec!["berth-test/app:2".into()])
            .await
            .unwrap(),
    )
    .await;
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}", again.display()))
        .arg(format!("oci:{}:again", tmp.path().join("again").display())));
    let config_again = json(
        Command::new("skopeo")
            .args(["inspect", "--config"])
            .arg(format!("oci:{}:again", tmp.path().join("again").display())),
    );
    assert_eq!(config_again["rootfs"]["diff_ids"][0], diff_id);
}

/// `docker load` of our archive, then `docker run`; and reading `docker save`.
/// Needs a daemon that DOCKER_HOST names (never the system one by default): skips
/// without one, fails with CI=true (scripts/test.sh starts a private dockerd).
#[tokio::test]
async fn docker_loads_and_saves() {
    if !have("docker") || !docker_daemon() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some((rootfs, _)) = busybox_rootfs(tmp.path()) else {
        return;
    };
    let layout = tmp.path().join("layout");
    let imported = import_rootfs(&rootfs, &layout, Some("v1"), &options())
        .await
        .unwrap();
    let src = OciLayoutSource::open(&layout, Some("v1")).await.unwrap();
    let archive = tmp.path().join("app.tar");
    let tag = "berth-formats-test/app:1";
    copy(
        &src,
        &DockerArchiveDest::create(&archive, vec![tag.into()])
            .await
            .unwrap(),
    )
    .await;

    run(Command::new("docker").args(["load", "-i"]).arg(&archive));
    let out = run(Command::new("docker").args(["run", "--rm", tag]));
    assert_eq!(out.trim(), "hello");

    let saved = tmp.path().join("saved.tar");
    run(Command::new("docker")
        .args(["save", "-o"])
        .arg(&saved)
        .arg(tag));
    let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
    let back = DockerArchiveSource::open(&saved, Some(tag)).await.unwrap();
    let m = copy(
        &back,
        &OciLayoutDest::create(tmp.path().join("back"), Some("x"))
            .await
            .unwrap(),
    )
    .await;
    let ManifestKind::Image { config, .. } = m.parse().unwrap() else {
        panic!()
    };
    // Docker keeps the config bytes, so the image id is unchanged.
    assert_eq!(config.digest, imported.config.digest);
}
