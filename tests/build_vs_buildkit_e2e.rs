//! `berth build` against BuildKit itself: one Dockerfile written the way people write them
//! today (a tools stage, `RUN --mount` of every type Docker 20.10's BuildKit knows: cache,
//! secret at its default path and at a target with a mode, bind from a stage and from the
//! context with `rw`, tmpfs), built by `berth build` and by `DOCKER_BUILDKIT=1 docker build`
//! (Debian's docker 20.10 CLI, `/usr/bin/docker`, against the daemon `DOCKER_HOST` names).
//! Both images must have the same file tree (unpacked by umoci from OCI layouts that skopeo
//! wrote or berth wrote, never read through berth) and the same run-time config (skopeo), and
//! print the same under `docker run` and `podman run`. The secret's value must appear in
//! neither image's bytes.
//!
//! Needs root, runc, `/usr/bin/docker` with a daemon in `DOCKER_HOST`, skopeo, umoci, podman;
//! a missing one skips outside CI and fails with `CI=true`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

const T: std::time::Duration = BUILD_T;
const DOCKER_2010: &str = "/usr/bin/docker";
const SECRET: &str = "s3cr3t-value-7f1c0e9a";

const DOCKERFILE: &str = r#"ARG BASE
FROM ${BASE} AS tools
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /out && echo "built in tools" > /out/tool.txt

FROM ${BASE}
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd && echo "app:x:1000:" >> /etc/group
WORKDIR /srv/app
COPY --chown=app:app files/ ./files/
RUN --mount=type=cache,target=/var/cache/app,id=appcache \
    echo cached >> /var/cache/app/log && wc -l < /var/cache/app/log | tr -d ' ' > /srv/app/cache-runs
RUN --mount=type=secret,id=token,required=true sha256sum /run/secrets/token | cut -d' ' -f1 > /srv/app/token.sha
RUN --mount=type=secret,id=token,target=/etc/token.txt,mode=0400 stat -c %a /etc/token.txt > /srv/app/token.mode
RUN --mount=type=bind,from=tools,source=/out,target=/mnt/tools cp /mnt/tools/tool.txt /srv/app/
RUN --mount=type=bind,source=files,target=/mnt/ctx,rw echo scratch > /mnt/ctx/new.txt && ls /mnt/ctx | sort | tr '\n' ' ' > /srv/app/ctx-listing
RUN --mount=type=tmpfs,target=/scratch echo tmp > /scratch/x && ls /scratch > /srv/app/tmpfs-listing && grep -q ' /scratch tmpfs ' /proc/mounts && echo yes > /srv/app/tmpfs-mounted
USER app
ENV GREETING=hi
EXPOSE 8080
LABEL org.example.name="compare-buildkit"
CMD ["sh", "-c", "cat /srv/app/tool.txt /srv/app/token.sha /srv/app/token.mode /srv/app/cache-runs /srv/app/ctx-listing /srv/app/tmpfs-listing /srv/app/tmpfs-mounted; ls /srv/app/files; id -u"]
"#;

/// Every byte of every blob of an OCI layout, gzip layers also decompressed.
fn layout_contains(layout: &Path, needle: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(layout.join("blobs/sha256")).ok()?.flatten() {
        let bytes = fs::read(entry.path()).unwrap_or_default();
        let mut plain = Vec::new();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let _ = std::io::Read::read_to_end(
                &mut flate2::read::GzDecoder::new(&bytes[..]),
                &mut plain,
            );
        }
        let hit = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle.as_bytes());
        if hit(&bytes) || hit(&plain) {
            return Some(entry.path());
        }
    }
    None
}

#[test]
fn same_tree_config_and_output_as_buildkit() {
    if !can_build()
        || !require_tool("skopeo")
        || !require_tool("umoci")
        || !require_tool("podman")
        || !require(
            (!Path::new(DOCKER_2010).exists())
                .then(|| format!("{DOCKER_2010} (Debian's docker.io 20.10 CLI) not found")),
        )
        || !require(
            std::env::var_os("DOCKER_HOST")
                .is_none()
                .then(|| "DOCKER_HOST is not set (scripts/test.sh starts a dockerd)".to_string()),
        )
    {
        return;
    }
    let s = setup();
    let ctx = s.cli.path("ctx");
    write(&ctx.join("Dockerfile"), DOCKERFILE, 0o644);
    write(&ctx.join("files/a.txt"), "a\n", 0o644);
    write(&ctx.join("files/b.sh"), "#!/bin/sh\n", 0o755);
    let secret = s.cli.path("token");
    write(&secret, SECRET, 0o600);
    let base_arg = format!("BASE={}", s.base);
    let secret_arg = format!("id=token,src={}", secret.display());

    // berth
    let ours = s.cli.path("ours");
    let ours_ref = format!("{}/cmp/berth:1", s.server.host());
    let out = run(
        build_cmd(
            &s.cli,
            &ctx,
            &[
                "--build-arg",
                &base_arg,
                "--secret",
                &secret_arg,
                "-t",
                &ours_ref,
                "--push",
                "--output",
                &format!("oci:{}:img", ours.display()),
                "--progress",
                "plain",
            ],
        ),
        T,
    );
    assert!(out.status.success(), "berth build: {}", out.describe());
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "the secret is in berth build's output"
    );

    // BuildKit (docker 20.10's, in the daemon)
    let docker = |args: &[&str]| {
        let mut c = Command::new(DOCKER_2010);
        c.arg("--config").arg(s.cli.docker_config()).args(args);
        c
    };
    let theirs_ref = format!("{}/cmp/buildkit:1", s.server.host());
    let mut c = docker(&[
        "build",
        "--network",
        "host",
        "--build-arg",
        &base_arg,
        "--secret",
        &secret_arg,
        "-t",
        &theirs_ref,
    ]);
    c.arg(&ctx).env("DOCKER_BUILDKIT", "1");
    let out = run(c, T);
    assert!(out.status.success(), "docker build: {}", out.describe());
    run_ok(docker(&["push", &theirs_ref]), T);
    let theirs = s.cli.path("theirs");
    let archive = s.cli.path("theirs.tar");
    run_ok(docker(&["save", "-o"]).arg(&archive).arg(&theirs_ref), T);
    run_ok(
        cmd("skopeo", ["copy", "--quiet"])
            .arg(format!("docker-archive:{}", archive.display()))
            .arg(format!("oci:{}:img", theirs.display())),
        T,
    );

    // The secret is in neither image.
    for layout in [&ours, &theirs] {
        assert_eq!(
            layout_contains(layout, SECRET),
            None,
            "secret found in {layout:?}"
        );
    }

    // File trees, unpacked by umoci.
    let unpack = |layout: &Path, name: &str| -> PathBuf {
        let bundle = s.cli.path(name);
        run_ok(
            cmd("umoci", ["unpack", "--image"])
                .arg(format!("{}:img", layout.display()))
                .arg(&bundle),
            T,
        );
        bundle.join("rootfs")
    };
    let a = tree_listing(&unpack(&ours, "ours-bundle"));
    let b = tree_listing(&unpack(&theirs, "theirs-bundle"));
    // Accepted: BuildKit 0.8 (in docker 20.10) leaves in its layers the mount points it
    // created for RUN (runc's /dev, /proc, /sys, and the RUN --mount targets with their new
    // parents: empty files and directories); berth removes them, as newer BuildKit does. Only
    // these exact paths are excepted, files only when empty, directories only when nothing
    // but other such stubs is below them.
    const STUBS: [&str; 13] = [
        "dev",
        "proc",
        "sys",
        "run",
        "run/secrets",
        "run/secrets/token",
        "etc/token.txt",
        "mnt",
        "mnt/tools",
        "mnt/ctx",
        "scratch",
        "var",
        "var/cache/app",
    ];
    let path_of = |l: &String| l.split(' ').next().unwrap_or_default().to_string();
    let stub = |l: &String| {
        let path = path_of(l);
        let fields: Vec<&str> = l.split(' ').collect();
        if !STUBS.contains(&path.as_str()) && path != "var/cache" {
            return false;
        }
        match fields.get(1) {
            Some(&"d") => b.iter().all(|other| {
                let o = path_of(other);
                !o.starts_with(&format!("{path}/"))
                    || STUBS.contains(&o.as_str())
                    || o == "var/cache"
            }),
            Some(&"f") => fields.get(4) == Some(&"0"),
            _ => false,
        }
    };
    let only_ours: Vec<&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_theirs: Vec<&String> = b.iter().filter(|l| !a.contains(l) && !stub(l)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "file trees differ\nonly berth:    {only_ours:#?}\nonly BuildKit: {only_theirs:#?}"
    );

    // Run-time configs, read by skopeo from the layouts.
    let config = |layout: &Path| -> Value {
        let out = run_ok(
            cmd("skopeo", ["inspect", "--raw", "--config"])
                .arg(format!("oci:{}:img", layout.display())),
            T,
        );
        parse_json(&out, "skopeo inspect --raw --config")["config"].clone()
    };
    let (ours_c, theirs_c) = (config(&ours), config(&theirs));
    assert_eq!(ours_c["User"], "app", "{ours_c}");
    assert_eq!(ours_c["Labels"]["org.example.name"], "compare-buildkit");
    for field in [
        "Env",
        "Cmd",
        "Entrypoint",
        "User",
        "WorkingDir",
        "ExposedPorts",
        "Labels",
    ] {
        assert_eq!(ours_c[field], theirs_c[field], "config field {field}");
    }

    // Both images print the same under docker run and podman run.
    let want = format!(
        "built in tools\n{}\n400\n1\na.txt b.sh new.txt x\nyes\na.txt\nb.sh\n1000\n",
        sha256_hex(SECRET.as_bytes())
    );
    for image in [&ours_ref, &theirs_ref] {
        run_ok(docker(&["pull", image.as_str()]), T);
        let printed = run_ok(
            docker(&["run", "--rm", "--network", "none", image.as_str()]),
            T,
        );
        assert_eq!(printed, want, "docker run {image}");
        let podman = |args: &[&str]| {
            let mut c = Command::new("podman");
            c.arg("--root")
                .arg(s.cli.path("podman-root"))
                .arg("--runroot")
                .arg(s.cli.path("podman-run"))
                .args(["--runtime", "runc", "--storage-driver", "vfs"])
                .args(args);
            c
        };
        run_ok(
            podman(&["pull", "-q", "--tls-verify=false", image.as_str()]),
            T,
        );
        let printed = run_ok(
            podman(&[
                "run",
                "--rm",
                "--network",
                "none",
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=32768:32768",
                image.as_str(),
            ]),
            T,
        );
        assert_eq!(printed, want, "podman run {image}");
    }
    let _ = run(docker(&["rmi", "-f", &ours_ref, &theirs_ref]), T);
    let _ = fs::remove_dir_all(s.cli.path("podman-root"));
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
