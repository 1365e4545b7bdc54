//! `berth build` for several platforms and its outputs, end to end with real parts: a
//! busybox base made with `berth import` on `berth serve` (127.0.0.1), images read back
//! with skopeo (`inspect --raw`, `--config`), podman, docker and `berth pull --platform`.
//!
//! - `--platform linux/amd64,linux/arm64` on the cross-compile pattern (RUN only in
//!   `FROM --platform=$BUILDPLATFORM` stages, a `FROM scratch` final stage): an OCI index
//!   with both platforms is pushed; the automatic platform ARGs reach FROM and RUN; a stage
//!   that does not use $TARGET* runs once for both (with --no-cache, so only sharing can
//!   make the two copies equal); `--output type=local` writes one tree per platform;
//!   `--iidfile`, `--metadata-file`, `--label`, `--annotation` (index and per-platform
//!   manifest) land where skopeo sees them.
//! - A RUN for linux/arm64 on this machine without a registered emulator fails naming
//!   linux/arm64 and qemu-user-static; unsupported platforms and `--provenance=true` are
//!   refused.
//! - `--compression zstd`: our layers are `tar+zstd` (base layers kept unless
//!   `--force-compression`), the config's diff_ids are the same as a gzip build's; a gzip
//!   build over the zstd build's cache recompresses; podman pulls and runs the zstd image
//!   (Debian's docker 20.10 predates zstd support, Docker 23); `type=local` applies
//!   whiteouts.
//!
//! Needs root and runc (skips outside CI without them), skopeo, podman.

mod common;

use std::fs;
use std::process::Command;

use common::*;
use serde_json::Value;

const T: std::time::Duration = BUILD_T;

fn skopeo_raw(reference: &str, config: bool) -> Value {
    let mut c = cmd("skopeo", ["inspect", "--raw", "--tls-verify=false"]);
    if config {
        c.arg("--config");
    }
    c.arg(format!("docker://{reference}"));
    parse_json(&run_ok(c, T), "skopeo inspect --raw")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

const CROSS: &str = r#"ARG BASE
FROM --platform=$BUILDPLATFORM ${BASE} AS build
ARG TARGETARCH
ARG TARGETPLATFORM
ARG BUILDARCH
ARG BUILDPLATFORM
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /out && echo "target=$TARGETARCH $TARGETPLATFORM build=$BUILDARCH $BUILDPLATFORM" > /out/arch

FROM --platform=$BUILDPLATFORM ${BASE} AS shared
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox cat /proc/uptime /proc/sys/kernel/random/uuid > /stamp"]

FROM scratch
ARG TARGETOS
ARG TARGETVARIANT
COPY --from=build /out/arch /arch
COPY --from=shared /stamp /shared-stamp
ENV BUILT_FOR=$TARGETOS
"#;

#[test]
fn multi_platform_index_from_a_native_build_stage() {
    if !can_build() || !require_tool("skopeo") {
        return;
    }
    let s = setup();
    let context = s.cli.path("cross");
    write(&context.join("Dockerfile"), CROSS, 0o644);
    let image = format!("{}/plat/cross:1", s.server.host());
    let local = s.cli.path("local-out");
    let iid = s.cli.path("iid");
    let meta = s.cli.path("meta.json");
    let base_arg = format!("BASE={}", s.base);
    let local_arg = format!("type=local,dest={}", local.display());
    let out = run(
        build_cmd(
            &s.cli,
            &context,
            &[
                "--platform",
                "linux/amd64,linux/arm64",
                "--build-arg",
                &base_arg,
                "--no-cache",
                "-t",
                &image,
                "--push",
                "--output",
                &local_arg,
                "--iidfile",
                iid.to_str().unwrap(),
                "--metadata-file",
                meta.to_str().unwrap(),
                "--label",
                "org.example.label=lab",
                "--annotation",
                "index:org.example.index=yes",
                "--annotation",
                "manifest[linux/arm64]:org.example.arch=arm64-only",
                "--provenance=false",
                "--sbom=false",
            ],
        ),
        T,
    );
    assert!(out.status.success(), "{}", out.describe());
    let stderr = &out.stderr;

    // The registry holds an OCI index naming one manifest per platform.
    let index = skopeo_raw(&image, false);
    assert_eq!(
        index["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{index}"
    );
    assert_eq!(index["annotations"]["org.example.index"], "yes", "{index}");
    let manifests = index["manifests"].as_array().unwrap();
    let platforms: Vec<String> = manifests
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap(),
                m["platform"]["architecture"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"], "{index}");
    let raw = run_ok(
        cmd("skopeo", ["inspect", "--raw", "--tls-verify=false"]).arg(format!("docker://{image}")),
        T,
    );
    let digest = format!("sha256:{}", sha256_hex(raw.as_bytes()));
    assert_eq!(out.stdout.trim(), digest, "{stderr}");
    assert_eq!(fs::read_to_string(&iid).unwrap(), digest, "--iidfile");
    let metadata: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        metadata["containerimage.digest"],
        digest.as_str(),
        "{metadata}"
    );
    assert_eq!(
        metadata["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(metadata["image.name"], image.as_str());

    for (m, arch) in manifests.iter().zip(["amd64", "arm64"]) {
        let child = format!(
            "{}/plat/cross@{}",
            s.server.host(),
            m["digest"].as_str().unwrap()
        );
        let config = skopeo_raw(&child, true);
        assert_eq!(config["architecture"], arch, "{config}");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["config"]["Labels"]["org.example.label"], "lab");
        assert_eq!(
            config["config"]["Env"],
            serde_json::json!(["BUILT_FOR=linux"]),
            "TARGETOS reaches the final stage"
        );
        let manifest = skopeo_raw(&child, false);
        let only_arm = &manifest["annotations"]["org.example.arch"];
        match arch {
            "arm64" => assert_eq!(only_arm, "arm64-only", "{manifest}"),
            _ => assert!(only_arm.is_null(), "{manifest}"),
        }
        // berth pull --platform finds each platform's image in the index.
        let pulled = s.cli.path(&format!("pulled-{arch}"));
        let out = run_ok(
            s.cli
                .cmd(["pull", "--json", "--platform"])
                .arg(format!("linux/{arch}"))
                .arg(&image)
                .arg(format!("oci:{}:x", pulled.display())),
            T,
        );
        let pulled_json = parse_json(&out, "berth pull --json");
        assert_eq!(pulled_json["digest"], m["digest"], "{pulled_json}");
    }

    // The automatic ARGs, per platform, from a stage that ran natively on amd64.
    let read = |p: &str, f: &str| fs::read_to_string(local.join(p).join(f)).unwrap();
    assert_eq!(
        read("linux_amd64", "arch"),
        "target=amd64 linux/amd64 build=amd64 linux/amd64\n"
    );
    assert_eq!(
        read("linux_arm64", "arch"),
        "target=arm64 linux/arm64 build=amd64 linux/amd64\n"
    );
    // Built once (even with --no-cache): the same uptime and random uuid in both.
    assert_eq!(
        read("linux_amd64", "shared-stamp"),
        read("linux_arm64", "shared-stamp")
    );
    assert!(
        stderr.contains("stage 1 (shared): the same stage as in the linux/"),
        "{stderr}"
    );
    let shared_runs = stderr
        .lines()
        .filter(|l| l.starts_with('#') && l.contains("(shared)") && l.contains("] RUN"))
        .count();
    assert_eq!(shared_runs, 1, "the shared RUN ran once:\n{stderr}");

    // docker (Debian's 20.10 daemon in CI) takes each platform's image from the index.
    if require_tool("docker") {
        let _cleanup = DockerImages {
            cli: &s.cli,
            images: vec![image.clone()],
        };
        for arch in ["arm64", "amd64"] {
            let platform = format!("linux/{arch}");
            run_ok(
                s.cli
                    .docker(["pull", "-q", "--platform", &platform, &image]),
                T,
            );
            let got = run_ok(
                s.cli
                    .docker(["image", "inspect", "--format", "{{.Architecture}}", &image]),
                T,
            );
            assert_eq!(got.trim(), arch, "docker pull --platform {platform}");
        }
    }
}

#[test]
fn foreign_run_without_an_emulator_and_bad_platforms_are_refused() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("foreign");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nCOPY Dockerfile /\nRUN [\"/bin/busybox\", \"true\"]\n",
            s.base
        ),
        0o644,
    );
    let registered = fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64")
        .is_ok_and(|t| t.lines().next() == Some("enabled"));
    if registered {
        eprintln!("SKIP (part): a qemu-aarch64 emulator is registered here, so arm64 RUN works");
    } else {
        let out = run(
            build_cmd(&s.cli, &context, &["--platform", "linux/arm64"]),
            T,
        );
        assert!(!out.status.success(), "{}", out.describe());
        assert!(
            out.stderr
                .contains("Dockerfile:3: RUN: cannot run a linux/arm64 program")
                && out
                    .stderr
                    .contains("apt-get install qemu-user-static binfmt-support"),
            "{}",
            out.describe()
        );
    }
    let refused = |args: &[&str], needle: &str| {
        let out = run(build_cmd(&s.cli, &context, args), T);
        assert!(
            !out.status.success() && out.stderr.contains(needle),
            "{args:?} should fail with {needle:?}: {}",
            out.describe()
        );
    };
    refused(
        &["--platform", "linux/amd64,linux/sparc"],
        "unknown architecture \"sparc\"",
    );
    refused(&["--platform", "windows/amd64"], "Linux images only");
    refused(&["--provenance=true"], "not supported yet");
    refused(&["--sbom"], "not supported yet");
    refused(&["--compression", "lz4"], "gzip, zstd or uncompressed");
    refused(&["--annotation", "index:k=v"], "multi-platform");
    refused(
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            "type=docker,dest=image.tar",
        ],
        "a docker archive holds one image",
    );
    write(
        &context.join("Dockerfile"),
        &format!("FROM --platform=linux/bogus {}\n", s.base),
        0o644,
    );
    refused(
        &[],
        "Dockerfile:1: FROM: unsupported platform \"linux/bogus\"",
    );
}

#[test]
fn zstd_layers_run_under_podman_and_recompress_from_the_cache() {
    if !can_build() || !require_tool("skopeo") {
        return;
    }
    let s = setup();
    let context = s.cli.path("zstd");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN echo zstd-ok > /hello && echo x > /etc/gone\nRUN rm /etc/gone\nCMD [\"/bin/cat\", \"/hello\"]\n",
            s.base
        ),
        0o644,
    );
    let zstd_image = format!("{}/plat/zstd:1", s.server.host());
    let meta = s.cli.path("meta.json");
    let local = s.cli.path("rootfs");
    let local_arg = format!("type=local,dest={}", local.display());
    let fs_tar = s.cli.path("fs.tar");
    let oci_tar = s.cli.path("oci.tar");
    let tar_arg = format!("type=tar,dest={}", fs_tar.display());
    let oci_arg = format!("type=oci,dest={},name=zstd", oci_tar.display());
    build_json(
        &s.cli,
        &context,
        &[
            "-o",
            &tar_arg,
            "--output",
            &oci_arg,
            "--compression",
            "zstd",
            "-t",
            &zstd_image,
            "--push",
            "--metadata-file",
            meta.to_str().unwrap(),
            "-o",
            &local_arg,
        ],
    );
    let manifest = skopeo_raw(&zstd_image, false);
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    let zstd = "application/vnd.oci.image.layer.v1.tar+zstd";
    let gzip = "application/vnd.oci.image.layer.v1.tar+gzip";
    assert_eq!(
        types,
        [gzip, zstd, zstd, zstd],
        "the base layer is kept as pulled"
    );
    let metadata: Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    assert_eq!(
        metadata["containerimage.config.digest"], manifest["config"]["digest"],
        "{metadata}"
    );
    let diff_ids = |reference: &str| skopeo_raw(reference, true)["rootfs"]["diff_ids"].clone();
    let zstd_diff_ids = diff_ids(&zstd_image);

    // type=local: the final tree with whiteouts applied.
    assert_eq!(
        fs::read_to_string(local.join("hello")).unwrap(),
        "zstd-ok\n"
    );
    assert!(local.join("bin/busybox").is_file());
    assert!(!local.join("etc/gone").exists());
    let listing = run_ok(cmd("find", [local.to_str().unwrap()]), T);
    assert!(!listing.contains(".wh."), "{listing}");
    // type=tar: the same tree in a tar; type=oci: an OCI layout tar skopeo reads.
    let names = run_ok(cmd("tar", ["-tf", fs_tar.to_str().unwrap()]), T);
    assert!(
        names.lines().any(|l| l == "hello") && !names.contains("etc/gone"),
        "{names}"
    );
    let in_archive = parse_json(
        &run_ok(
            cmd("skopeo", ["inspect", "--raw"]).arg(format!("oci-archive:{}", oci_tar.display())),
            T,
        ),
        "skopeo inspect oci-archive",
    );
    assert_eq!(
        in_archive["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );

    // The same build as gzip: every step from the cache, layers recompressed, same diff_ids.
    let gzip_image = format!("{}/plat/gzip:1", s.server.host());
    let (result, _) = build_json(&s.cli, &context, &["-t", &gzip_image, "--push"]);
    assert_eq!(result["cached"], result["steps"], "{result}");
    let manifest = skopeo_raw(&gzip_image, false);
    assert!(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == gzip),
        "{manifest}"
    );
    assert_eq!(diff_ids(&gzip_image), zstd_diff_ids);

    // --force-compression recompresses the base layer too.
    let forced = format!("{}/plat/forced:1", s.server.host());
    build_json(
        &s.cli,
        &context,
        &[
            "--compression",
            "zstd",
            "--force-compression",
            "-t",
            &forced,
            "--push",
        ],
    );
    let manifest = skopeo_raw(&forced, false);
    assert!(
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["mediaType"] == zstd),
        "{manifest}"
    );
    assert_eq!(diff_ids(&forced), zstd_diff_ids);

    // uncompressed: each layer blob is its tar, so its digest is its diff_id.
    let plain = format!("{}/plat/plain:1", s.server.host());
    build_json(
        &s.cli,
        &context,
        &[
            "--compression",
            "uncompressed",
            "--force-compression",
            "-t",
            &plain,
            "--push",
        ],
    );
    let manifest = skopeo_raw(&plain, false);
    let digests: Vec<Value> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            assert_eq!(
                l["mediaType"], "application/vnd.oci.image.layer.v1.tar",
                "{l}"
            );
            l["digest"].clone()
        })
        .collect();
    assert_eq!(Value::from(digests), zstd_diff_ids);

    // A zstd image as a base: its layers unpack for the next build's RUN.
    let on_zstd = s.cli.path("on-zstd");
    write(
        &on_zstd.join("Dockerfile"),
        &format!("FROM {forced}\nRUN cat /hello > /again\n"),
        0o644,
    );
    let again = s.cli.path("again");
    let again_arg = format!("type=local,dest={}", again.display());
    // A fresh cache, so the zstd blobs are pulled and unpacked, not found unpacked.
    let fresh = s.cli.path("fresh-cache");
    build_json(
        &s.cli,
        &on_zstd,
        &["-o", &again_arg, "--cache-dir", fresh.to_str().unwrap()],
    );
    assert_eq!(
        fs::read_to_string(again.join("again")).unwrap(),
        "zstd-ok\n"
    );

    // A reader other than berth: podman pulls the zstd image and runs it.
    if require_tool("podman") {
        let root = s.cli.path("podman-root");
        let runroot = s.cli.path("podman-run");
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(&root)
                .arg("--runroot")
                .arg(&runroot)
                .args(["--runtime", "runc", "--storage-driver", "vfs"])
                .args(args);
            c
        };
        for image in [&zstd_image, &forced] {
            run_ok(podman(&["pull", "-q", "--tls-verify=false", image]), T);
            let out = run_ok(
                podman(&[
                    "run",
                    "--rm",
                    "--network",
                    "none",
                    "--ulimit",
                    "nofile=20000:20000",
                    "--ulimit",
                    "nproc=32768:32768",
                    image,
                ]),
                T,
            );
            assert_eq!(out, "zstd-ok\n", "podman run {image}");
        }
        let _ = run(podman(&["rmi", "-af"]), T);
        let _ = fs::remove_dir_all(&root);
    }
}
