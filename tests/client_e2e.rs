//! The `berth` registry client end to end, against `berth serve` AND Debian's `docker-registry`
//! (each test runs once per server kind): import a busybox rootfs, inspect, list, pull to an OCI
//! layout (checked by skopeo and umoci), pull to a docker-archive that `docker load` takes and
//! `docker run` runs, the local store, server-side tag, rm, `docker save` back in, copy between
//! the two registries, errors, multi-platform indexes and the progress output.
//!
//! Every `berth` runs with its own `BERTH_STORE` and `DOCKER_CONFIG` (see `common::BerthCli`).
//! Outside CI a missing skopeo/umoci/docker skips only the steps that need it.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(300);
const CMD: &str = r#"CMD ["/bin/sh","-c","echo hello from berth"]"#;

/// Which external tools this run has (outside CI a missing one skips its steps).
struct Tools {
    skopeo: bool,
    umoci: bool,
    docker: bool,
}

impl Tools {
    fn probe() -> Tools {
        Tools {
            skopeo: require_tool("skopeo"),
            umoci: require_tool("umoci"),
            docker: require_tool("docker"),
        }
    }
}

fn other(kind: ServerKind) -> ServerKind {
    match kind {
        ServerKind::Berth => ServerKind::Distribution,
        ServerKind::Distribution => ServerKind::Berth,
    }
}

/// Runs `berth ARGS` (which must succeed) and parses its `--json` stdout.
fn berth_json<const N: usize>(cli: &BerthCli, args: [&str; N]) -> Value {
    let out = run(cli.cmd(args), T);
    assert!(out.status.success(), "berth failed:\n{}", out.describe());
    parse_json(&out.stdout, &out.command)
}

/// `berth inspect REF --json`
fn inspect(cli: &BerthCli, reference: &str) -> Value {
    berth_json(cli, ["inspect", reference, "--json"])
}

fn digest_field(v: &Value, field: &str) -> String {
    let d = v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field:?} in {v}"));
    assert!(
        d.starts_with("sha256:") && d.len() == 71,
        "{field} is not a sha256 digest: {v}"
    );
    d.to_string()
}

/// `berth ls REPO --json` → tags.
fn tags(cli: &BerthCli, repository: &str) -> Vec<String> {
    let v = berth_json(cli, ["ls", repository, "--json"]);
    v.as_array()
        .unwrap_or_else(|| panic!("ls --json is not an array: {v}"))
        .iter()
        .map(|t| t.as_str().expect("tag is a string").to_string())
        .collect()
}

/// Unpacks `layout:tag` with umoci and checks the busybox rootfs in it.
fn umoci_check(cli: &BerthCli, layout: &Path, tag: &str, bundle_name: &str, hard_link: bool) {
    let bundle = cli.path(bundle_name);
    run_ok(
        cmd("umoci", ["unpack", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle),
        T,
    );
    let rootfs = bundle.join("rootfs");
    let busybox = rootfs.join("bin/busybox");
    let meta = fs::metadata(&busybox)
        .unwrap_or_else(|e| panic!("{} after umoci unpack: {e}", busybox.display()));
    assert!(
        meta.is_file() && meta.permissions().mode() & 0o111 != 0,
        "bin/busybox is not an executable file: mode {:o}",
        meta.permissions().mode()
    );
    assert!(
        fs::read(&busybox).expect("read unpacked busybox")
            == fs::read(busybox_path()).expect("read /bin/busybox"),
        "unpacked bin/busybox differs from the original"
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).expect("bin/sh is a symlink"),
        Path::new("busybox")
    );
    let echo = fs::metadata(rootfs.join("bin/echo")).expect("bin/echo exists");
    if hard_link {
        assert_eq!(
            echo.ino(),
            meta.ino(),
            "bin/echo should be a hard link to bin/busybox"
        );
    }
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/passwd")).expect("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n"
    );
    let out = run_ok(
        cmd(busybox.to_str().unwrap(), ["echo", "unpacked works"]),
        T,
    );
    assert_eq!(out.trim(), "unpacked works");
}

/// The whole round trip against one registry kind.
fn round_trip(kind: ServerKind) {
    let started = Instant::now();
    let server = Server::start_kind(kind);
    let reg = server.host();
    let cli = BerthCli::new();
    let tools = Tools::probe();
    let mut docker_images = DockerImages {
        cli: &cli,
        images: Vec::new(),
    };

    // --- import a rootfs tarball (gzip) ---------------------------------------------------
    let rootfs = cli.path("rootfs.tar.gz");
    write_busybox_rootfs(&rootfs, true);
    let base1 = format!("{reg}/base:1");
    let imported = berth_json(
        &cli,
        [
            "import",
            rootfs.to_str().unwrap(),
            &base1,
            "--change",
            CMD,
            "--change",
            "ENV GREETING=hi",
            "--json",
        ],
    );
    let digest = digest_field(&imported, "digest");
    assert_eq!(
        imported["blobs"].as_array().map(Vec::len),
        Some(2),
        "an imported image has a config and one layer: {imported}"
    );

    // --- inspect and ls -------------------------------------------------------------------
    let info = inspect(&cli, &base1);
    assert_eq!(digest_field(&info, "digest"), digest, "inspect digest");
    let config = &info["config"]["config"];
    assert_eq!(
        config["Cmd"],
        json!(["/bin/sh", "-c", "echo hello from berth"]),
        "Cmd in {info}"
    );
    assert!(
        config["Env"]
            .as_array()
            .is_some_and(|env| env.iter().any(|e| e == "GREETING=hi")),
        "GREETING=hi missing from Env in {info}"
    );
    let layer_count = info["manifest"]["layers"].as_array().map(Vec::len);
    assert_eq!(layer_count, Some(1), "layers in {info}");
    let config_digest = info["manifest"]["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_string();
    assert_eq!(tags(&cli, &format!("{reg}/base")), vec!["1".to_string()]);

    // --- pull to an OCI layout: skopeo and umoci read it ----------------------------------
    let layout = cli.path("layout");
    let pulled = berth_json(
        &cli,
        [
            "pull",
            &base1,
            &format!("oci:{}:v1", layout.display()),
            "--json",
        ],
    );
    assert_eq!(digest_field(&pulled, "digest"), digest, "pull to oci:");
    if tools.skopeo {
        let v: Value = parse_json(
            &run_ok(
                cmd("skopeo", ["inspect"]).arg(format!("oci:{}:v1", layout.display())),
                T,
            ),
            "skopeo inspect",
        );
        assert_eq!(v["Digest"], digest.as_str(), "skopeo inspect: {v}");
        assert_eq!(v["Os"], "linux", "skopeo inspect: {v}");
        let c: Value = parse_json(
            &run_ok(
                cmd("skopeo", ["inspect", "--config"]).arg(format!("oci:{}:v1", layout.display())),
                T,
            ),
            "skopeo inspect --config",
        );
        assert_eq!(
            c["config"]["Cmd"],
            json!(["/bin/sh", "-c", "echo hello from berth"])
        );
    }
    if tools.umoci {
        umoci_check(&cli, &layout, "v1", "bundle", true);
    }

    // --- pull to a docker-archive: docker load + docker run -------------------------------
    if tools.docker {
        let archive = cli.path("base.tar");
        let pulled = berth_json(
            &cli,
            [
                "pull",
                &base1,
                &format!("docker-archive:{}:{base1}", archive.display()),
                "--json",
            ],
        );
        assert_eq!(digest_field(&pulled, "digest"), digest, "pull to archive");
        docker_images.images.push(base1.clone());
        let loaded = run_ok(cli.docker(["load", "-i"]).arg(&archive), T);
        assert!(
            loaded.contains(&base1),
            "docker load did not name {base1}: {loaded}"
        );
        let out = run_ok(cli.docker(["run", "--rm", "--network", "none", &base1]), T);
        assert_eq!(out.trim(), "hello from berth", "docker run output");
        let out = run_ok(
            cli.docker([
                "run",
                "--rm",
                "--network",
                "none",
                &base1,
                "/bin/sh",
                "-c",
                "echo $GREETING; /bin/echo via-hard-link",
            ]),
            T,
        );
        assert_eq!(out.trim(), "hi\nvia-hard-link", "docker run env/hard link");
        let image_id = run_ok(
            cli.docker(["image", "inspect", "--format", "{{.Id}}", &base1]),
            T,
        );
        assert_eq!(
            image_id.trim(),
            config_digest,
            "docker's image ID is the config digest"
        );

        // docker save → berth copy docker-archive: → registry → oci: → umoci.
        let saved = cli.path("saved.tar");
        run_ok(cli.docker(["save", "-o"]).arg(&saved).arg(&base1), T);
        let fromsave = format!("{reg}/fromsave:1");
        let copied = berth_json(
            &cli,
            [
                "copy",
                &format!("docker-archive:{}", saved.display()),
                &fromsave,
                "--json",
            ],
        );
        let fromsave_digest = digest_field(&copied, "digest");
        let info = inspect(&cli, &fromsave);
        assert_eq!(digest_field(&info, "digest"), fromsave_digest);
        assert_eq!(
            info["manifest"]["config"]["digest"], config_digest,
            "docker save keeps the config bytes, so the config digest must survive: {info}"
        );
        let layout2 = cli.path("layout-fromsave");
        run_ok(
            cli.cmd(["pull", &fromsave, "--quiet"])
                .arg(format!("oci:{}:v1", layout2.display())),
            T,
        );
        if tools.umoci {
            umoci_check(&cli, &layout2, "v1", "bundle-fromsave", true);
        }
    }

    // --- local store: pull, then push it under another tag --------------------------------
    run_ok(cli.cmd(["pull", &base1, "--quiet"]), T);
    let local = tags(&cli, "local:");
    assert!(
        local.iter().any(|t| t == &base1),
        "local store should list {base1}: {local:?}"
    );
    let base2 = format!("{reg}/base:2");
    let pushed = berth_json(&cli, ["push", &base1, &base2, "--json"]);
    assert_eq!(digest_field(&pushed, "digest"), digest, "push from local");
    assert_eq!(digest_field(&inspect(&cli, &base2), "digest"), digest);
    let mut t = tags(&cli, &format!("{reg}/base"));
    t.sort();
    assert_eq!(t, vec!["1".to_string(), "2".to_string()]);

    // --- tag: server-side, no bytes move --------------------------------------------------
    let other_ref = format!("{reg}/other:latest");
    let tagged = berth_json(&cli, ["tag", &base1, &other_ref, "--json"]);
    assert_eq!(digest_field(&tagged, "digest"), digest, "tag");
    assert_eq!(
        tagged["bytes_copied"], 0,
        "tag must not transfer blobs: {tagged}"
    );
    assert_eq!(digest_field(&inspect(&cli, &other_ref), "digest"), digest);

    // --- rm of a tag ----------------------------------------------------------------------
    match kind {
        ServerKind::Berth => {
            run_ok(cli.cmd(["rm", &base2]), T);
            assert_eq!(
                tags(&cli, &format!("{reg}/base")),
                vec!["1".to_string()],
                "base:2 removed, base:1 kept"
            );
            assert_eq!(digest_field(&inspect(&cli, &base1), "digest"), digest);
        }
        ServerKind::Distribution => {
            let out = run_fail(cli.cmd(["rm", &base2]), T);
            assert!(
                out.stderr.contains("@DIGEST"),
                "distribution cannot delete a tag: the error should point to NAME@DIGEST:\n{}",
                out.describe()
            );
        }
    }

    // --- copy to the other kind of registry and back: the digest stays --------------------
    let peer = Server::start_kind(other(kind));
    let there = format!("{}/copied:1", peer.host());
    let copied = berth_json(&cli, ["copy", &base1, &there, "--json"]);
    assert_eq!(digest_field(&copied, "digest"), digest, "copy to peer");
    assert_eq!(digest_field(&inspect(&cli, &there), "digest"), digest);
    let back = format!("{reg}/back:1");
    let copied = berth_json(&cli, ["copy", &there, &back, "--json"]);
    assert_eq!(digest_field(&copied, "digest"), digest, "copy back");
    assert_eq!(digest_field(&inspect(&cli, &back), "digest"), digest);

    eprintln!(
        "round trip against {kind:?} done in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn round_trip_berth() {
    round_trip(ServerKind::Berth);
}

#[test]
fn round_trip_distribution() {
    round_trip(ServerKind::Distribution);
}

/// The error part of a failed `berth` run: exactly one line, `berth: error: ...`.
fn one_line_error(out: &CmdOutput) -> String {
    let text = out.stderr.trim();
    assert!(
        text.lines().count() == 1 && text.starts_with("berth: error:"),
        "expected a one-line error on stderr:\n{}",
        out.describe()
    );
    text.to_string()
}

fn errors(kind: ServerKind) {
    let server = Server::start_kind(kind);
    let reg = server.host();
    let cli = BerthCli::new();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    run_ok(
        cli.cmd([
            "import",
            rootfs.to_str().unwrap(),
            &format!("{reg}/e:1"),
            "-q",
        ]),
        T,
    );
    let dest = format!("oci:{}:x", cli.path("out").display());

    // Unknown tag of a known repository, and an unknown repository.
    for reference in [format!("{reg}/e:nope"), format!("{reg}/nothing/here:1")] {
        let out = run_fail(cli.cmd(["pull", &reference, &dest]), T);
        let err = one_line_error(&out);
        assert!(err.contains("not found"), "pull {reference}: {err}");
        let out = run_fail(cli.cmd(["inspect", &reference]), T);
        let err = one_line_error(&out);
        assert!(err.contains("not found"), "inspect {reference}: {err}");
    }
    assert!(
        !cli.path("out").join("index.json").exists()
            || !fs::read_to_string(cli.path("out").join("index.json"))
                .unwrap_or_default()
                .contains("\"x\""),
        "a failed pull must not leave a tag in the layout"
    );

    // A registry on a closed port.
    let closed = free_port();
    let started = Instant::now();
    let out = run_fail(
        cli.cmd(["pull", &format!("127.0.0.1:{closed}/x:1"), &dest]),
        Duration::from_secs(120),
    );
    let err = one_line_error(&out);
    assert!(err.contains("cannot connect"), "closed port: {err}");
    eprintln!(
        "closed port reported after {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn errors_berth() {
    errors(ServerKind::Berth);
}

#[test]
fn errors_distribution() {
    errors(ServerKind::Distribution);
}

/// A config, a layer and a manifest for one platform; returns the manifest (bytes, digest).
async fn push_platform_image(
    http: &reqwest::Client,
    base: &str,
    repo: &str,
    arch: &str,
) -> (Vec<u8>, String) {
    let layer = format!("layer for {arch}\n").into_bytes();
    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": [format!("/bin/{arch}")]},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]},
    }))
    .unwrap();
    push_blob(http, base, repo, &layer).await;
    push_blob(http, base, repo, &config).await;
    let manifest = manifest_json(&config, &[&layer], None);
    let digest = push_manifest(
        http,
        base,
        repo,
        &digest_of(&manifest),
        OCI_MANIFEST,
        &manifest,
    )
    .await;
    (manifest, digest)
}

fn multi_platform(kind: ServerKind) {
    let server = Server::start_kind(kind);
    let reg = server.host();
    let cli = BerthCli::new();
    let skopeo = require_tool("skopeo");

    // An index with two children, made through the HTTP API.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (amd64, arm64, index, index_digest) = rt.block_on(async {
        let http = client();
        let base = server.url();
        let (amd_bytes, amd64) = push_platform_image(&http, &base, "multi", "amd64").await;
        let (arm_bytes, arm64) = push_platform_image(&http, &base, "multi", "arm64").await;
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": amd64, "size": amd_bytes.len(),
                 "platform": {"os": "linux", "architecture": "amd64"}},
                {"mediaType": OCI_MANIFEST, "digest": arm64, "size": arm_bytes.len(),
                 "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            ]
        }))
        .unwrap();
        let index_digest = push_manifest(&http, &base, "multi", "v1", OCI_INDEX, &index).await;
        (amd64, arm64, index, index_digest)
    });
    let src = format!("{reg}/multi:v1");

    // --platform linux/arm64 picks the arm64 child.
    let arm_layout = cli.path("arm");
    let v = berth_json(
        &cli,
        [
            "pull",
            &src,
            &format!("oci:{}:arm", arm_layout.display()),
            "--platform",
            "linux/arm64",
            "--json",
        ],
    );
    assert_eq!(
        digest_field(&v, "digest"),
        arm64,
        "--platform linux/arm64: {v}"
    );
    let layout_index: Value = serde_json::from_slice(
        &fs::read(arm_layout.join("index.json")).expect("index.json of the layout"),
    )
    .expect("index.json is JSON");
    assert!(
        layout_index["manifests"]
            .as_array()
            .is_some_and(|m| m.iter().any(|e| e["digest"] == arm64.as_str())),
        "the layout should name the arm64 manifest: {layout_index}"
    );
    let info = berth_json(
        &cli,
        ["inspect", &src, "--platform", "linux/arm64", "--json"],
    );
    assert_eq!(digest_field(&info, "imageDigest"), arm64);
    assert_eq!(digest_field(&info, "digest"), index_digest);

    // Default: this machine's platform.
    if std::env::consts::ARCH == "x86_64" {
        let v = berth_json(
            &cli,
            [
                "pull",
                &src,
                &format!("oci:{}:amd", cli.path("amd").display()),
                "--json",
            ],
        );
        assert_eq!(digest_field(&v, "digest"), amd64, "default platform: {v}");
    }

    // A platform the index lacks: a one-line error naming what it has.
    let out = run_fail(
        cli.cmd(["pull", &src, "--platform", "linux/s390x"])
            .arg(format!("oci:{}:s", cli.path("s390x").display())),
        T,
    );
    let err = one_line_error(&out);
    assert!(
        err.contains("linux/amd64") && err.contains("linux/arm64"),
        "the error should list the platforms available: {err}"
    );

    // --all keeps the index (same digest) and both children.
    let all_layout = cli.path("all");
    let v = berth_json(
        &cli,
        [
            "pull",
            &src,
            &format!("oci:{}:all", all_layout.display()),
            "--all",
            "--json",
        ],
    );
    assert_eq!(digest_field(&v, "digest"), index_digest, "--all: {v}");
    for d in [&index_digest, &amd64, &arm64] {
        let path = all_layout
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert_eq!(
            file_digest(&path),
            *d,
            "blob {d} missing or corrupt in the --all layout"
        );
    }
    if skopeo {
        let raw = run_ok(
            cmd("skopeo", ["inspect", "--raw"]).arg(format!("oci:{}:all", all_layout.display())),
            T,
        );
        assert_eq!(
            raw.as_bytes(),
            &index[..],
            "skopeo reads the index back byte for byte"
        );
    }

    // And registry to registry with --all.
    let v = berth_json(
        &cli,
        ["copy", &src, &format!("{reg}/multi2:v1"), "--all", "--json"],
    );
    assert_eq!(digest_field(&v, "digest"), index_digest);
    assert_eq!(
        digest_field(&inspect(&cli, &format!("{reg}/multi2:v1")), "digest"),
        index_digest
    );
}

#[test]
fn multi_platform_berth() {
    multi_platform(ServerKind::Berth);
}

#[test]
fn multi_platform_distribution() {
    multi_platform(ServerKind::Distribution);
}

/// Progress output when stderr is not a terminal: plain lines, one per blob; `--quiet` prints
/// nothing on stderr; `--json` prints exactly one JSON object on stdout.
#[test]
fn progress_output() {
    let server = Server::start_kind(ServerKind::Berth);
    let reg = server.host();
    let cli = BerthCli::new();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let layout = cli.path("layout");
    let src = format!("oci:{}:v1", layout.display());
    run_ok(cli.cmd(["import", rootfs.to_str().unwrap(), &src, "-q"]), T);
    let manifest = berth_json(&cli, ["inspect", &src, "--json"]);
    let blobs: Vec<String> = std::iter::once(&manifest["manifest"]["config"])
        .chain(
            manifest["manifest"]["layers"]
                .as_array()
                .expect("layers")
                .iter(),
        )
        .map(|b| b["digest"].as_str().expect("digest").to_string())
        .collect();

    // Plain lines, one per blob, no escape codes.
    let out = run(cli.cmd(["push", &src, &format!("{reg}/p:1")]), T);
    assert!(out.status.success(), "push:\n{}", out.describe());
    assert!(
        !out.stderr.contains('\x1b') && !out.stderr.contains('\r'),
        "escape codes or carriage returns on a non-terminal stderr:\n{}",
        out.stderr
    );
    let blob_lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| {
            l.len() > 13
                && l.as_bytes()[12] == b':'
                && l[..12].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .collect();
    assert_eq!(
        blob_lines.len(),
        blobs.len(),
        "one line per blob expected:\n{}",
        out.stderr
    );
    for b in &blobs {
        let short = &b["sha256:".len().."sha256:".len() + 12];
        assert!(
            blob_lines
                .iter()
                .any(|l| l.starts_with(short) && l.contains("copied")),
            "no 'copied' line for {b}:\n{}",
            out.stderr
        );
    }
    assert_eq!(
        out.stdout.trim(),
        manifest["digest"].as_str().unwrap(),
        "stdout of a plain push is the digest"
    );

    // --quiet: nothing on stderr.
    let out = run(cli.cmd(["push", &src, &format!("{reg}/p:2"), "--quiet"]), T);
    assert!(out.status.success(), "push --quiet:\n{}", out.describe());
    assert_eq!(out.stderr, "", "--quiet must print nothing on stderr");

    // --json: one JSON object on stdout, nothing on stderr.
    let out = run(cli.cmd(["push", &src, &format!("{reg}/p3:1"), "--json"]), T);
    assert!(out.status.success(), "push --json:\n{}", out.describe());
    assert_eq!(out.stderr, "", "--json must print nothing on stderr");
    assert_eq!(
        out.stdout.trim().lines().count(),
        1,
        "--json prints one line: {}",
        out.stdout
    );
    let v = parse_json(&out.stdout, "push --json");
    assert!(v.is_object(), "--json output is an object: {v}");
    assert_eq!(v["digest"], manifest["digest"]);
    assert_eq!(v["blobs"].as_array().map(Vec::len), Some(blobs.len()));
}
