//! `berth build` end to end with real parts: a busybox-static rootfs imported with
//! `berth import` and pushed to `berth serve` on 127.0.0.1 is the base image; Dockerfiles
//! exercising multi-stage builds, ARG, RUN (exec, shell, heredoc), COPY --from/--chown/--chmod,
//! ADD of a tar, COPY heredocs, ENV expansion, WORKDIR, USER and the config instructions are
//! built by `berth build` (runc + overlayfs), pushed, pulled by `docker pull` and run by
//! `docker run --network none`, checking output, `docker inspect` config, and file modes and
//! owners. Also: a rebuild is fully cached with the same digest, SOURCE_DATE_EPOCH makes
//! --no-cache rebuilds identical, a failing RUN names its line and exit code and leaves
//! no mount behind, a build killed mid-RUN leaves mounts and a runc container that the next
//! build removes, independent stages' RUNs overlap in time, and buildah builds the same tree
//! and config (read with umoci and skopeo).
//!
//! Needs root (overlay mounts) and runc; with `CI=true` their absence fails the test.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const T: Duration = BUILD_T;

const APP: &str = r#"# syntax=docker/dockerfile:1
ARG BASE
FROM ${BASE} AS build
ARG GREETING=hello
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /out && echo "$GREETING from build" > /out/greeting
RUN <<EOF
set -e
echo heredoc-line-1 > /out/heredoc
echo "greeting=$GREETING" >> /out/heredoc
EOF
RUN <<EOF
#!/bin/busybox sh
echo "shebang script as $0" > /out/shebang
EOF

FROM ${BASE}
ENV APP_HOME=/srv/app
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd && echo "app:x:1000:" >> /etc/group
WORKDIR $APP_HOME
COPY --from=build --chown=app:app --chmod=0750 /out/greeting ./greeting
COPY --from=build /out/heredoc /out/shebang /srv/
COPY files/ ./files/
COPY --chmod=u+x,go-w files/a.txt /srv/a-sym
ADD bundle.tar.gz /opt/
COPY <<EOF /etc/motd
motd for ${APP_HOME}
EOF
RUN ls /srv/app/files | tr '\n' ' ' > /srv/listing
USER app
EXPOSE 8080 53/udp
LABEL org.example.name="berth e2e" version=1
VOLUME /data
HEALTHCHECK --interval=30s --timeout=5s CMD ["/bin/true"]
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /srv/app/greeting /srv/heredoc /srv/shebang /etc/motd /srv/listing; echo; id -u; pwd; ls /opt/bundle"]
"#;

fn app_context(dir: &Path) {
    write(&dir.join("Dockerfile"), APP, 0o644);
    write(&dir.join("files/a.txt"), "a\n", 0o644);
    write(&dir.join("files/b.sh"), "#!/bin/sh\n", 0o755);
    write(&dir.join("files/secret.key"), "do not ship\n", 0o600);
    write(&dir.join(".dockerignore"), "files/*.key\n", 0o644);
    // bundle.tar.gz: bundle/x.txt, made with the tar crate.
    let file = fs::File::create(dir.join("bundle.tar.gz")).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o640);
    h.set_uid(33);
    h.set_gid(33);
    h.set_size(6);
    h.set_mtime(1_700_000_000);
    tar.append_data(&mut h, "bundle/x.txt", &b"in tar"[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap();
}

#[test]
fn build_push_pull_and_run_with_docker() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("app");
    app_context(&context);
    let image = format!("{}/e2e/app:1", s.server.host());
    let base_arg = format!("BASE={}", s.base);
    let (result, stderr) = build_json(
        &s.cli,
        &context,
        &["--build-arg", &base_arg, "-t", &image, "--push"],
    );
    let digest = result["digest"].as_str().unwrap().to_string();
    assert!(digest.starts_with("sha256:"), "{result}");
    assert_eq!(
        result["cached"], 0,
        "a first build caches nothing: {result}"
    );
    assert!(
        result["outputs"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| o["destination"] == image.as_str())),
        "{result}\n{stderr}"
    );

    // The image is in the local store too.
    let inspected = parse_json(
        &run_ok(
            s.cli.cmd(["inspect", "--json", &format!("local:{image}")]),
            T,
        ),
        "inspect",
    );
    assert_eq!(inspected["digest"], digest.as_str());

    // A second build with nothing changed: every step cached, the same image.
    let (again, stderr) = build_json(&s.cli, &context, &["--build-arg", &base_arg]);
    assert_eq!(again["digest"], digest.as_str(), "rebuild digest\n{stderr}");
    assert_eq!(
        again["cached"], again["steps"],
        "every step cached: {again}"
    );

    // A changed context file rebuilds from its COPY on, not before.
    write(&context.join("files/a.txt"), "changed\n", 0o644);
    let (changed, _) = build_json(&s.cli, &context, &["--build-arg", &base_arg]);
    assert_ne!(changed["digest"], digest.as_str());
    let cached = changed["cached"].as_u64().unwrap();
    assert!(
        cached >= 7 && cached < changed["steps"].as_u64().unwrap(),
        "{changed}"
    );
    write(&context.join("files/a.txt"), "a\n", 0o644);

    let expected = "hello from build\nheredoc-line-1\ngreeting=hello\nshebang script as /dev/.berth-heredoc\nmotd for /srv/app\na.txt b.sh \n1000\n/srv/app\nx.txt\n";

    // podman runs it too (scripts/test.sh installs it; in CI a missing podman fails).
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
        run_ok(podman(&["pull", "-q", "--tls-verify=false", &image]), T);
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
                &image,
            ]),
            T,
        );
        assert_eq!(out, expected, "podman run output");
        let _ = run(podman(&["rmi", "-af"]), T);
        let _ = fs::remove_dir_all(&root);
    }

    if !require_tool("docker") {
        return;
    }
    let _cleanup = DockerImages {
        cli: &s.cli,
        images: vec![image.clone()],
    };
    run_ok(s.cli.docker(["pull", &image]), T);
    let out = run_ok(
        s.cli.docker(["run", "--rm", "--network", "none", &image]),
        T,
    );
    assert_eq!(out, expected, "docker run output");

    let inspect = parse_json(
        &run_ok(s.cli.docker(["image", "inspect", &image]), T),
        "docker inspect",
    );
    let c = &inspect[0]["Config"];
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert!(
        c["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "APP_HOME=/srv/app"),
        "{c}"
    );
    assert!(
        c["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "PATH=/bin"),
        "base ENV kept: {c}"
    );
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(
        c["Cmd"][0].as_str().unwrap().split(';').next(),
        Some("cat /srv/app/greeting /srv/heredoc /srv/shebang /etc/motd /srv/listing")
    );
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "8080/tcp": {}})
    );
    assert_eq!(c["Labels"]["org.example.name"], "berth e2e");
    assert_eq!(c["Labels"]["version"], "1");
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(c["StopSignal"], "SIGQUIT");
    assert_eq!(
        c["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/bin/true"])
    );
    assert_eq!(c["Healthcheck"]["Interval"], 30_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Timeout"], 5_000_000_000u64);

    // Modes and owners, as stat sees them in the container.
    let out = run_ok(
        s.cli.docker([
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0",
            "--entrypoint",
            "/bin/stat",
            &image,
            "-c",
            "%a %u %g %n",
            "/srv/app/greeting",
            "/srv/app/files/a.txt",
            "/srv/app/files/b.sh",
            "/opt/bundle/x.txt",
            "/etc/motd",
            "/srv/app",
            "/srv/a-sym",
        ]),
        T,
    );
    assert_eq!(
        out,
        "750 1000 1000 /srv/app/greeting\n644 0 0 /srv/app/files/a.txt\n755 0 0 /srv/app/files/b.sh\n640 33 33 /opt/bundle/x.txt\n644 0 0 /etc/motd\n755 0 0 /srv/app\n744 0 0 /srv/a-sym\n",
        "modes and owners"
    );
    let out = run(
        s.cli.docker([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/ls",
            &image,
            "/srv/app/files/secret.key",
        ]),
        T,
    );
    assert!(
        !out.status.success(),
        ".dockerignore'd file is in the image: {}",
        out.describe()
    );
}

#[test]
fn source_date_epoch_makes_no_cache_builds_identical() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("repro");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN mkdir /made && echo made > /made/file && rm /etc/passwd\nCOPY f /f\nRUN echo more >> /f && chmod 600 /f\n",
            s.base
        ),
        0o644,
    );
    write(&context.join("f"), "f\n", 0o644);
    let digest = |extra: &[&str]| {
        let mut c = build_cmd(
            &s.cli,
            &context,
            &[&["--json", "--no-cache"], extra].concat(),
        );
        c.env("SOURCE_DATE_EPOCH", "1700000000");
        let out = run(c, T);
        assert!(out.status.success(), "{}", out.describe());
        parse_json(&out.stdout, "build")["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = digest(&[]);
    let second = digest(&[]);
    assert_eq!(
        first, second,
        "--no-cache builds with SOURCE_DATE_EPOCH differ"
    );
    // Written to an OCI layout, the image is the same.
    let layout = s.cli.path("layout");
    let out_arg = format!("oci:{}:repro", layout.display());
    assert_eq!(digest(&["--output", &out_arg]), first);
    assert!(layout.join("index.json").is_file());
    // The chroot fallback (copied tree, scan-based diff) finds the same
    // changes as the overlay upper directory: the same image.
    let out = {
        let mut c = build_cmd(&s.cli, &context, &["--json", "--no-cache"]);
        c.env("SOURCE_DATE_EPOCH", "1700000000")
            .env("BERTH_BUILD_ISOLATION", "chroot");
        run(c, T)
    };
    assert!(out.status.success(), "{}", out.describe());
    let result = parse_json(&out.stdout, "build");
    assert_eq!(result["isolation"], "chroot");
    assert_eq!(
        result["digest"],
        first.as_str(),
        "chroot fallback differs from runc"
    );
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let d = dir.display().to_string();
    mounts
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_failing_run_names_its_line_and_leaves_nothing_mounted() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("fail");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\nRUN echo about to fail && exit 3\nRUN echo never\n",
            s.base
        ),
        0o644,
    );
    let out = run(build_cmd(&s.cli, &context, &[]), T);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("Dockerfile:4: RUN:") && out.stderr.contains("exit code: 3"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("about to fail"),
        "the step's output is shown: {}",
        out.describe()
    );
    assert!(!out.stderr.contains("never"), "{}", out.describe());
    let cache: PathBuf = s.cli.store().parent().unwrap().join("build-cache");
    assert!(
        mounts_under(&cache).is_empty(),
        "mounts left: {:?}",
        mounts_under(&cache)
    );
    let leftovers: Vec<_> = fs::read_dir(cache.join("run")).unwrap().collect();
    assert!(leftovers.is_empty(), "run directories left: {leftovers:?}");

    // RUN for another platform is refused (no emulation), naming the line.
    let out = run(
        build_cmd(&s.cli, &context, &["--platform", "linux/arm64"]),
        T,
    );
    assert!(
        !out.status.success()
            && out.stderr.contains("Dockerfile:2: RUN:")
            && out.stderr.contains("no emulation"),
        "{}",
        out.describe()
    );

    // A missing COPY source names the line too.
    write(
        &context.join("Dockerfile"),
        &format!("FROM {}\nCOPY nope /x\n", s.base),
        0o644,
    );
    let out = run(build_cmd(&s.cli, &context, &[]), T);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("Dockerfile:2: COPY:") && out.stderr.contains("not found"),
        "{}",
        out.describe()
    );
}

#[test]
fn add_url_network_none_and_docker_archive_output() {
    if !can_build() {
        return;
    }
    let s = setup();
    // A blob of the base image, served by berth serve on 127.0.0.1, is the URL.
    let inspected = parse_json(
        &run_ok(s.cli.cmd(["inspect", "--json", &s.base]), T),
        "inspect",
    );
    let layer = inspected["manifest"]["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let url = format!("http://{}/v2/base/busybox/blobs/{layer}", s.server.host());
    let context = s.cli.path("url");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nADD --checksum={layer} {url} /blob.tgz\nRUN --network=none grep -c : /proc/net/dev > /netcount\nRUN grep -c : /proc/net/dev > /hostcount\nCMD [\"/bin/sh\", \"-c\", \"cat /netcount; sha256sum /blob.tgz | cut -c1-12\"]\n",
            s.base
        ),
        0o644,
    );
    let archive = s.cli.path("image.tar");
    let name = "berth-e2e/url:1";
    let out_arg = format!("docker-archive:{}:{name}", archive.display());
    let (result, stderr) = build_json(&s.cli, &context, &["--output", &out_arg]);
    assert!(result["digest"].as_str().is_some(), "{result}\n{stderr}");

    // A wrong checksum fails the build, naming the line.
    let wrong = format!("sha256:{}", "0".repeat(64));
    write(
        &context.join("Dockerfile"),
        &format!("FROM {}\nADD --checksum={wrong} {url} /blob.tgz\n", s.base),
        0o644,
    );
    let out = run(build_cmd(&s.cli, &context, &[]), T);
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("Dockerfile:2: ADD:") && out.stderr.contains("checksum mismatch"),
        "{}",
        out.describe()
    );

    if !require_tool("docker") {
        return;
    }
    let _cleanup = DockerImages {
        cli: &s.cli,
        images: vec![name.to_string()],
    };
    run_ok(s.cli.docker(["load", "-i"]).arg(&archive), T);
    let out = run_ok(s.cli.docker(["run", "--rm", "--network", "none", name]), T);
    let hex = layer.trim_start_matches("sha256:");
    assert_eq!(
        out,
        format!("1\n{}\n", &hex[..12]),
        "only lo without a network; the blob as fetched"
    );
    let host = run_ok(
        s.cli.docker([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/cat",
            name,
            "/hostcount",
        ]),
        T,
    );
    assert_ne!(
        host.trim(),
        "1",
        "a RUN without --network=none shares the host's network"
    );
}

#[test]
fn cache_to_a_registry_and_back_on_a_fresh_machine() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("shared");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY f /f\nRUN date +%s%N > /built-at\nLABEL x=y\n",
            s.base
        ),
        0o644,
    );
    write(&context.join("f"), "f\n", 0o644);
    let cache_ref = format!("{}/e2e/cache:main", s.server.host());
    let (first, stderr) = build_json(&s.cli, &context, &["--cache-to", &cache_ref]);
    assert!(stderr.is_empty() || !stderr.contains("warning"), "{stderr}");

    // Another machine: its own store and build cache, same context.
    let fresh = BerthCli::new();
    let fresh_context = fresh.path("shared");
    fs::create_dir_all(&fresh_context).unwrap();
    for f in ["Dockerfile", "f"] {
        fs::copy(context.join(f), fresh_context.join(f)).unwrap();
    }
    let out = run(
        build_cmd(&fresh, &fresh_context, &["--cache-from", &cache_ref]),
        T,
    );
    assert!(out.status.success(), "{}", out.describe());
    assert_eq!(
        out.stderr.matches("CACHED").count(),
        3,
        "every layer step comes from the pushed cache:\n{}",
        out.stderr
    );
    assert_eq!(
        out.stdout.trim(),
        first["digest"].as_str().unwrap(),
        "same image from the shared cache"
    );
    // A cache that is not there is a warning, not a failure.
    let missing = format!("{}/e2e/cache:none", s.server.host());
    let out = run(
        build_cmd(&fresh, &fresh_context, &["--cache-from", &missing]),
        T,
    );
    assert!(
        out.status.success() && out.stderr.contains("warning: no cache from"),
        "{}",
        out.describe()
    );
}

/// `find` listing of a tree: path, type, mode, owner, size (files), link target; no times.
const COMPARE: &str = r#"ARG BASE
FROM ${BASE}
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo "app:x:1000:1000::/home/app:/bin/sh" >> /etc/passwd && echo "app:x:1000:" >> /etc/group
ENV APP_HOME=/srv/app
WORKDIR $APP_HOME
COPY --chown=app:app files/ ./files/
COPY --chmod=0600 files/a.txt /etc/app.conf
ADD bundle.tar.gz /opt/
RUN mkdir -p /var/lib/app && echo state > /var/lib/app/state && rm /bin/wget && chmod 700 /var/lib/app
USER app
EXPOSE 8080
LABEL org.example.name="compare"
VOLUME /data
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["id"]
"#;

/// The same Dockerfile built by `buildah bud --isolation chroot` gives the same file tree and
/// run-time config, apart from the differences listed here and accepted. The trees are
/// unpacked by umoci and both configs read by skopeo, so no part of the comparison goes
/// through berth. buildah, umoci and skopeo are in scripts/test.sh's packages: a missing one
/// skips the test outside CI and fails it with `CI=true`.
#[test]
fn same_tree_and_config_as_buildah() {
    if !can_build() || !require_tool("buildah") || !require_tool("umoci") || !require_tool("skopeo")
    {
        return;
    }
    let s = setup();
    let context = s.cli.path("compare");
    app_context(&context);
    write(&context.join("Dockerfile"), COMPARE, 0o644);
    let base_arg = format!("BASE={}", s.base);
    let ours = s.cli.path("ours");
    let ours_arg = format!("oci:{}:img", ours.display());
    build_json(
        &s.cli,
        &context,
        &["--build-arg", &base_arg, "--output", &ours_arg],
    );

    let storage = s.cli.path("buildah");
    let buildah = |args: &[&str]| {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        c
    };
    run_ok(
        buildah(&[
            "bud",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "-q",
            "--build-arg",
            &base_arg,
            "-t",
            "compare",
        ])
        .arg(&context),
        T,
    );
    let theirs = s.cli.path("theirs");
    run_ok(
        buildah(&["push", "compare"]).arg(format!("oci:{}:img", theirs.display())),
        T,
    );
    let _ = run(buildah(&["rmi", "-a", "-f"]), T);

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
    // Accepted: buildah's chroot isolation leaves the mount points it made for RUN
    // (/dev, /proc, /sys, /etc/hosts, /etc/resolv.conf and friends) in its layers; berth
    // removes what runc created for a RUN that did not ask for it, as BuildKit does.
    let buildah_only = |l: &String| {
        [
            "dev ",
            "proc ",
            "sys ",
            "etc/hosts ",
            "etc/resolv.conf ",
            "etc/hostname ",
            "run ",
            "run/",
        ]
        .iter()
        .any(|p| l.starts_with(p))
    };
    let a: Vec<&String> = a.iter().filter(|l| !buildah_only(l)).collect();
    let b: Vec<&String> = b.iter().filter(|l| !buildah_only(l)).collect();
    let only_ours: Vec<&&String> = a.iter().filter(|l| !b.contains(l)).collect();
    let only_theirs: Vec<&&String> = b.iter().filter(|l| !a.contains(l)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "file trees differ\nonly berth:   {only_ours:#?}\nonly buildah: {only_theirs:#?}"
    );

    // The image configs as stored (skopeo --raw), not as `berth inspect` would show them.
    let config = |layout: &Path| -> Value {
        let out = run_ok(
            cmd("skopeo", ["inspect", "--raw", "--config"])
                .arg(format!("oci:{}:img", layout.display())),
            T,
        );
        parse_json(&out, "skopeo inspect --raw --config")["config"].clone()
    };
    let (ours_c, theirs_c) = (config(&ours), config(&theirs));
    // Fields both images must have, so that equal fields cannot mean "absent in both".
    for c in [&ours_c, &theirs_c] {
        assert_eq!(c["User"], "app", "{c}");
        assert_eq!(c["WorkingDir"], "/srv/app", "{c}");
        assert_eq!(c["Labels"]["org.example.name"], "compare", "{c}");
        assert!(c["ExposedPorts"].get("8080/tcp").is_some(), "{c}");
    }
    for field in [
        "Env",
        "Cmd",
        "Entrypoint",
        "User",
        "WorkingDir",
        "ExposedPorts",
        "Volumes",
        "StopSignal",
    ] {
        assert_eq!(ours_c[field], theirs_c[field], "config field {field}");
    }
    // Accepted: buildah adds its own io.buildah.version label.
    let mut their_labels = theirs_c["Labels"].clone();
    if let Some(m) = their_labels.as_object_mut() {
        m.remove("io.buildah.version");
    }
    assert_eq!(ours_c["Labels"], their_labels, "labels");
}

/// The files named `names` in the image an `--output oci:DIR:TAG` wrote (searched in every
/// layer, last layer wins), read straight from the layout's blobs.
fn files_in_oci_image(layout: &Path, names: &[&str]) -> std::collections::BTreeMap<String, String> {
    let blob = |digest: &str| -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob")
    };
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).expect("index.json");
    let manifest: Value = serde_json::from_slice(&blob(
        index["manifests"][0]["digest"]
            .as_str()
            .expect("index.json names a manifest"),
    ))
    .expect("manifest");
    let mut found = std::collections::BTreeMap::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let bytes = blob(layer["digest"].as_str().expect("layer digest"));
        let reader: Box<dyn std::io::Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(&bytes[..]))
        } else {
            Box::new(&bytes[..])
        };
        let mut tar = tar::Archive::new(reader);
        for entry in tar.entries().expect("layer tar") {
            let mut entry = entry.expect("layer tar entry");
            let path = entry.path().expect("entry path").display().to_string();
            let path = path.trim_start_matches("./").to_string();
            if names.contains(&path.as_str()) {
                let mut content = String::new();
                std::io::Read::read_to_string(&mut entry, &mut content).expect("read entry");
                found.insert(path, content);
            }
        }
    }
    found
}

/// Two stages that do not depend on each other run at the same time: each one's RUN records
/// the kernel's uptime (a clock both containers share, read from their own /proc) before and
/// after a 1 s sleep, and the two intervals must overlap. One after the other, the second
/// would start after the first ended, however fast or slow the machine is.
#[test]
fn independent_stages_run_at_the_same_time() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("parallel");
    // /times-a in stage a, /times-b in stage b: different commands, so the steps cannot share
    // one cache entry.
    let stage = |name: &str| {
        format!(
            "FROM $BASE AS {name}\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"B=/bin/busybox; $B cat /proc/uptime > /times-{name} && $B sleep 1 && $B cat /proc/uptime >> /times-{name}\"]\n\n"
        )
    };
    write(
        &context.join("Dockerfile"),
        &format!(
            "ARG BASE={}\n{}{}FROM $BASE\nCOPY --from=a /times-a /times-a\nCOPY --from=b /times-b /times-b\n",
            s.base,
            stage("a"),
            stage("b")
        ),
        0o644,
    );
    let layout = s.cli.path("parallel-layout");
    let out_arg = format!("oci:{}:parallel", layout.display());
    let (result, stderr) = build_json(&s.cli, &context, &["--output", &out_arg]);
    assert!(result["digest"].as_str().is_some(), "{stderr}");
    let files = files_in_oci_image(&layout, &["times-a", "times-b"]);
    // (start, end) in seconds of uptime.
    let interval = |name: &str| -> (f64, f64) {
        let text = files
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the image: {files:?}"));
        let t: Vec<f64> = text
            .lines()
            .map(|l| {
                l.split(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{name}: not /proc/uptime lines: {text:?}"))
            })
            .collect();
        assert_eq!(t.len(), 2, "{name}: {text:?}");
        // The sleep really happened between the readings: they are real clock readings.
        assert!(t[1] - t[0] >= 0.99, "{name}: {text:?}");
        (t[0], t[1])
    };
    let (a, b) = (interval("times-a"), interval("times-b"));
    eprintln!(
        "stage a ran {a:?}, stage b ran {b:?}: starts {:.2} s apart",
        (a.0 - b.0).abs()
    );
    assert!(
        a.0.max(b.0) < a.1.min(b.1),
        "stages a and b did not overlap: a ran {a:?}, b ran {b:?} (uptime seconds)"
    );
}

/// Mount points below `dir` (in this mount namespace, which `berth build` shares).
fn mount_points_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// `runc --root STATE list`: the containers runc keeps state for there.
fn runc_containers(state: &Path) -> Vec<Value> {
    let out = run_ok(
        cmd("runc", ["--root"])
            .arg(state)
            .args(["list", "--format", "json"]),
        T,
    );
    match parse_json(&out, "runc list") {
        Value::Array(list) => list,
        _ => Vec::new(),
    }
}

/// PIDs of the processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|pid| {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    String::from_utf8_lossy(&cmdline).contains(needle)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// True when `pid` has exited (gone, or a zombie nobody reaped yet).
fn exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// What the killed build of [`a_build_cleans_up_what_a_killed_build_left`] leaves if the test
/// fails before berth cleans it up: its berth process (SIGKILL), runc containers (deleted) and
/// mounts below the build cache (lazily unmounted), so nothing outlives the test.
struct KilledBuild {
    child: std::process::Child,
    cache: PathBuf,
}

impl Drop for KilledBuild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let state = self.cache.join("runc");
        for c in runc_containers(&state) {
            if let Some(id) = c["id"].as_str() {
                let _ = run(
                    cmd("runc", ["--root"])
                        .arg(&state)
                        .args(["delete", "--force", id]),
                    T,
                );
            }
        }
        let mut mounts = mount_points_under(&self.cache);
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m) {
                // SAFETY: a valid path; a lazy unmount of a mount this test's build made.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// docs/build.md's "a build first cleans up what a killed build left": a build is killed (SIGKILL)
/// while its RUN runs, which leaves the RUN's overlay mounted, its runc container running and
/// runc's state for it; the next build with the same cache removes all of it and succeeds.
#[test]
fn a_build_cleans_up_what_a_killed_build_left() {
    if !can_build() {
        return;
    }
    let s = setup();
    let cache = s.cli.path("killed-cache");
    let cache_arg = cache.display().to_string();
    let state = cache.join("runc");

    let context = s.cli.path("killed");
    write(
        &context.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"sleep\", \"30\"]\n",
            s.base
        ),
        0o644,
    );
    let log = s.cli.path("killed.log");
    let mut killed = build_cmd(&s.cli, &context, &["--cache-dir", &cache_arg]);
    killed
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(&log).unwrap());
    let mut killed = KilledBuild {
        child: killed.spawn().expect("start berth build"),
        cache: cache.clone(),
    };
    let pid = killed.child.id();
    let ours = format!("berth-build-{pid}-");

    // Wait for the event, not for a time: runc reports the RUN's container running.
    let deadline = std::time::Instant::now() + T;
    let container = loop {
        if let Some(status) = killed.child.try_wait().unwrap() {
            panic!(
                "the build ended ({status}) before its RUN was seen running:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if state.is_dir() {
            if let Some(c) = runc_containers(&state).into_iter().find(|c| {
                c["id"].as_str().is_some_and(|id| id.starts_with(&ours)) && c["status"] == "running"
            }) {
                break c;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the RUN never ran:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = container["id"].as_str().unwrap().to_string();
    let init = container["pid"].as_u64().expect("the container's pid") as u32;

    killed.child.kill().expect("SIGKILL berth build");
    killed.child.wait().unwrap();
    // What the killed build left: the test is only worth something if there is something.
    let left_mounts = mount_points_under(&cache);
    assert!(
        left_mounts
            .iter()
            .any(|m| m.contains(&format!("/run/{pid}-"))),
        "the killed build left no overlay mount: {left_mounts:?}"
    );
    assert!(state.join(&id).exists(), "no runc state for {id}");
    assert!(!exited(init), "the RUN's process ended with berth");
    eprintln!("the killed build left: mounts {left_mounts:?}, runc container {id} (pid {init})");

    // The next build, with the same cache, RUN included.
    let next = s.cli.path("next");
    write(
        &next.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"touch\", \"/after-the-kill\"]\n",
            s.base
        ),
        0o644,
    );
    let out = run(build_cmd(&s.cli, &next, &["--cache-dir", &cache_arg]), T);
    assert!(out.status.success(), "{}", out.describe());

    // Nothing of the killed build is left: no mount below the cache, no runc container or
    // state, no run directory; its RUN's process and its `runc run` have exited.
    assert!(
        mount_points_under(&cache).is_empty(),
        "mounts left: {:?}",
        mount_points_under(&cache)
    );
    let containers = runc_containers(&state);
    assert!(
        containers.is_empty(),
        "runc containers left: {containers:?}"
    );
    let states: Vec<_> = fs::read_dir(&state).unwrap().flatten().collect();
    assert!(states.is_empty(), "runc state left: {states:?}");
    let runs: Vec<_> = fs::read_dir(cache.join("run")).unwrap().flatten().collect();
    assert!(runs.is_empty(), "run directories left: {runs:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while (!exited(init) || !processes_mentioning(&id).is_empty())
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        exited(init),
        "the killed build's RUN (pid {init}) still runs"
    );
    let runcs = processes_mentioning(&id);
    assert!(runcs.is_empty(), "processes of {id} still run: {runcs:?}");
}

/// The paths in each layer of the image an `--output oci:DIR:TAG` wrote, base first.
fn layer_paths(layout: &Path) -> Vec<Vec<String>> {
    let blob = |digest: &str| -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob")
    };
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).expect("index.json");
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap()))
            .expect("manifest");
    let mut all = Vec::new();
    for layer in manifest["layers"].as_array().expect("layers") {
        let bytes = blob(layer["digest"].as_str().expect("layer digest"));
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
        let paths = tar
            .entries()
            .expect("layer tar")
            .map(|e| {
                let e = e.expect("layer tar entry");
                let p = e.path().expect("entry path").display().to_string();
                p.trim_start_matches("./").to_string()
            })
            .collect();
        all.push(paths);
    }
    all
}

/// A `dnsmasq` on 127.0.88.1:53 (loopback, no config files) answering
/// berth-test.internal with 127.0.88.2; stopped by its PID on drop.
struct Dnsmasq(std::process::Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Dnsmasq {
    fn start(dir: &Path) -> Dnsmasq {
        let program = which("dnsmasq").unwrap_or_else(|| PathBuf::from("/usr/sbin/dnsmasq"));
        let child = Command::new(program)
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--address=/berth-test.internal/127.0.88.2",
                "--listen-address=127.0.88.1",
                "--bind-interfaces",
                "--port=53",
                "--user=root",
            ])
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        let d = Dnsmasq(child);
        // Ready when it answers an A query for the name.
        let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in ["berth-test", "internal"] {
            query.push(label.len() as u8);
            query.extend_from_slice(label.as_bytes());
        }
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..50 {
            let _ = sock.send_to(&query, "127.0.88.1:53");
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                if n > 12 && buf[..2] == [0x12, 0x34] && buf[n - 4..n] == [127, 0, 88, 2] {
                    return d;
                }
            }
        }
        panic!("dnsmasq on 127.0.88.1:53 does not answer");
    }
}

/// An HTTP server on 127.0.88.2 answering every request with `body`; its port.
fn serve_loopback_http(body: &'static str) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.88.2:0").expect("bind 127.0.88.2");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(
                &mut conn,
                format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
    });
    port
}

/// RUN gets the host's resolver (here: a dnsmasq on a loopback address, named by
/// BERTH_BUILD_RESOLV_CONF), an /etc/hosts with localhost, the hostname and --add-host, and an
/// empty resolv.conf with --network=none; no layer holds these files, and a base's own ones
/// keep their content. With runc, and with the chroot fallback.
#[test]
fn run_resolves_names_with_the_hosts_resolver_and_add_host() {
    if !can_build() || !require_tool("dnsmasq") {
        return;
    }
    let s = setup();
    let _dns = Dnsmasq::start(&s.cli.path(""));
    let port = serve_loopback_http("hello-from-88");
    let resolv = s.cli.path("host-resolv.conf");
    write(&resolv, "nameserver 127.0.88.1\n", 0o644);
    let dockerfile = |own: bool| {
        format!(
            "FROM {}\n{}RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
             RUN wget -q -O /got http://berth-test.internal:{port}/ && wget -q -O /got2 http://other.internal:{port}/ && cat /etc/hosts > /seen-hosts\n\
             RUN --network=none sh -c 'test ! -s /etc/resolv.conf && ! wget -q -T 2 -O- http://berth-test.internal:{port}/'\n",
            s.base,
            if own { "COPY own/ /etc/\n" } else { "" }
        )
    };
    let names = ["got", "got2", "seen-hosts", "etc/resolv.conf", "etc/hosts"];
    for (i, (own, isolation)) in [(false, "runc"), (true, "runc"), (false, "chroot")]
        .into_iter()
        .enumerate()
    {
        let context = s.cli.path(&format!("net{i}"));
        write(&context.join("Dockerfile"), &dockerfile(own), 0o644);
        write(
            &context.join("own/resolv.conf"),
            "nameserver 192.0.2.1\n",
            0o644,
        );
        write(&context.join("own/hosts"), "192.0.2.2 own\n", 0o644);
        let layout = s.cli.path(&format!("net{i}-layout"));
        let out_arg = format!("oci:{}:net", layout.display());
        let mut cmd = build_cmd(
            &s.cli,
            &context,
            &[
                "--no-cache",
                "--add-host",
                "other.internal:127.0.88.2",
                "--add-host",
                "v6.internal=[fd00::1]",
                "--output",
                &out_arg,
            ],
        );
        cmd.env("BERTH_BUILD_RESOLV_CONF", &resolv)
            .env("BERTH_BUILD_ISOLATION", isolation);
        let out = run(cmd, T);
        assert!(
            out.status.success(),
            "{isolation}, own={own}:\n{}",
            out.describe()
        );
        let files = files_in_oci_image(&layout, &names);
        assert_eq!(files["got"], "hello-from-88", "{isolation}");
        assert_eq!(files["got2"], "hello-from-88", "{isolation}");
        let hosts = &files["seen-hosts"];
        assert!(
            hosts.contains("127.0.0.1\tlocalhost buildkitsandbox\n")
                && hosts.contains("127.0.88.2\tother.internal\n")
                && hosts.contains("fd00::1\tv6.internal\n"),
            "{isolation}: {hosts}"
        );
        if own {
            assert_eq!(files["etc/resolv.conf"], "nameserver 192.0.2.1\n");
            assert_eq!(files["etc/hosts"], "192.0.2.2 own\n");
        } else {
            assert!(
                !files.contains_key("etc/resolv.conf") && !files.contains_key("etc/hosts"),
                "{isolation}: a layer holds the network files: {files:?}"
            );
            // Not even /etc: the RUNs left it alone.
            for (n, layer) in layer_paths(&layout).iter().enumerate().skip(1) {
                let etc: Vec<&String> = layer.iter().filter(|p| p.starts_with("etc")).collect();
                assert!(etc.is_empty(), "{isolation}: layer {n} holds {etc:?}");
            }
        }
    }
    // A bad --add-host is refused, naming the argument.
    let out = run(
        build_cmd(&s.cli, &s.cli.path("net0"), &["--add-host", "nohost"]),
        T,
    );
    assert!(
        !out.status.success() && out.stderr.contains("--add-host \"nohost\""),
        "{}",
        out.describe()
    );
}
