//! `RUN --mount` in `berth build`, end to end with the real binary, runc and overlayfs, on a
//! busybox base pushed to `berth serve`:
//! - cache mounts keep what a step left for the next build whose step re-runs (a changed
//!   bound context file re-runs it), also under `--no-cache`, until `berth build prune`;
//!   bind mounts from a stage and from the context (.dockerignore respected, `rw` writes
//!   discarded), tmpfs, and no mount point left in the layer;
//! - secrets from a file and from the environment (`env=` too): the step proves it saw them
//!   (their sha256 in the layer), and no byte of the image, the registry's storage, the
//!   build cache folder or the output (text and --json) holds a secret; a missing required
//!   secret is a `Dockerfile:LINE: RUN:` error before anything runs;
//! - an SSH agent socket (a socket the test listens on) forwarded with the mount's owner and
//!   mode, and `SSH_AUTH_SOCK` set; `--security=insecure` refused without `--allow
//!   security.insecure`, and with it the step has every capability; bad mounts are named.
//!
//! Needs root (overlay mounts) and runc; with `CI=true` their absence fails the test.

mod common;

use std::fs;
use std::io::Read;
use std::path::Path;

use common::*;
use serde_json::Value;

const T: std::time::Duration = BUILD_T;

/// Every blob of an OCI layout (gzip layers decompressed too), keyed by digest.
fn layout_blobs(layout: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in walk_files(layout) {
        let bytes = fs::read(&entry).unwrap();
        if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(&bytes[..])
                .read_to_end(&mut plain)
                .is_ok()
            {
                out.push((format!("{} (gunzipped)", entry.display()), plain));
            }
        }
        out.push((entry.display().to_string(), bytes));
    }
    out
}

fn walk_files(root: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(e.path());
            } else if ft.is_file() {
                files.push(e.path());
            }
        }
    }
    files
}

/// Each layer of the image in an OCI layout: (path, content) of its entries.
fn layers(layout: &Path) -> Vec<Vec<(String, Vec<u8>)>> {
    let blob = |digest: &str| -> Vec<u8> {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        fs::read(layout.join("blobs/sha256").join(hex)).expect("read blob")
    };
    let index: Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).expect("index.json");
    let manifest: Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap()))
            .expect("manifest");
    manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|layer| {
            let bytes = blob(layer["digest"].as_str().expect("layer digest"));
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
            tar.entries()
                .expect("layer tar")
                .map(|e| {
                    let mut e = e.expect("layer tar entry");
                    let p = e.path().unwrap().display().to_string();
                    let mut content = Vec::new();
                    e.read_to_end(&mut content).unwrap();
                    (p.trim_start_matches("./").to_string(), content)
                })
                .collect()
        })
        .collect()
}

/// The content of `name` in the image's last layer holding it.
fn file(layers: &[Vec<(String, Vec<u8>)>], name: &str) -> String {
    layers
        .iter()
        .rev()
        .find_map(|l| l.iter().find(|(p, _)| p == name))
        .map(|(_, c)| String::from_utf8_lossy(c).trim().to_string())
        .unwrap_or_else(|| panic!("{name} is in no layer"))
}

fn build_to(s: &Setup, context: &Path, cache: &Path, layout: &Path, extra: &[&str]) -> Value {
    build_in(s, context, cache, layout, extra, "auto")
}

/// `berth build` with `BERTH_BUILD_ISOLATION=isolation` (runc, chroot or auto).
fn build_in(
    s: &Setup,
    context: &Path,
    cache: &Path,
    layout: &Path,
    extra: &[&str],
    isolation: &str,
) -> Value {
    let _ = fs::remove_dir_all(layout);
    let out_arg = format!("oci:{}:img", layout.display());
    let cache_arg = cache.display().to_string();
    let base_arg = format!("BASE={}", s.base);
    let mut args = vec![
        "--cache-dir",
        &cache_arg,
        "--build-arg",
        &base_arg,
        "--output",
        &out_arg,
    ];
    args.extend_from_slice(extra);
    args.insert(0, "--json");
    let out = run(
        build_cmd(&s.cli, context, &args).env("BERTH_BUILD_ISOLATION", isolation),
        T,
    );
    assert!(
        out.status.success(),
        "berth build failed:\n{}",
        out.describe()
    );
    parse_json(&out.stdout, "berth build --json")
}

const CACHE_DOCKERFILE: &str = r#"ARG BASE
FROM ${BASE} AS tools
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox mkdir -p /data && echo from-stage > /data/stage.txt"]

FROM ${BASE}
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG ROUND=1
ARG BASE
RUN --mount=type=cache,id=runs,target=/cache \
    --mount=type=bind,from=${BASE},source=etc,target=/base-etc \
    --mount=type=cache,id=seeded,target=/seeded,from=tools,source=/data \
    --mount=type=bind,from=tools,source=/data,target=/stage \
    --mount=type=bind,target=/ctx,rw \
    --mount=type=tmpfs,target=/var/scratch,size=1m \
    --mount=type=cache,target=/opt/tool/cache,sharing=locked,mode=0700,uid=1,gid=2 \
    --mount=type=cache,id=runs,target=/same-cache,sharing=locked \
    --mount=type=tmpfs,target=/tmp \
    set -e; \
    echo "$ROUND" >> /cache/runs; \
    test -s /same-cache/runs; \
    wc -l < /cache/runs > /runs-seen; \
    cat /stage/stage.txt > /from-stage; \
    cat /base-etc/passwd > /base-passwd; \
    cat /seeded/stage.txt > /from-seed; \
    cat /ctx/input.txt > /from-context; \
    echo scribbled > /ctx/input.txt; \
    test ! -e /ctx/ignored.txt; \
    echo tmp > /var/scratch/t; \
    echo gone > /tmp/gone; \
    if cat /bin/busybox /bin/busybox > /var/scratch/too-big; then exit 9; fi; \
    stat -c %a:%u:%g /opt/tool/cache > /tool-owner
"#;

#[test]
fn cache_bind_and_tmpfs_mounts() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("cache");
    let cache = s.cli.path("build-cache");
    let layout = s.cli.path("out");
    write(&context.join("Dockerfile"), CACHE_DOCKERFILE, 0o644);
    write(&context.join("input.txt"), "one\n", 0o644);
    write(&context.join("ignored.txt"), "not for RUN\n", 0o644);
    write(&context.join(".dockerignore"), "ignored.txt\n", 0o644);
    let runs_seen = |layout: &Path| file(&layers(layout), "runs-seen");

    let first = build_to(&s, &context, &cache, &layout, &[]);
    let l = layers(&layout);
    assert_eq!(runs_seen(&layout), "1");
    assert_eq!(file(&l, "from-stage"), "from-stage");
    assert_eq!(file(&l, "from-context"), "one");
    assert_eq!(file(&l, "tool-owner"), "700:1:2");
    assert_eq!(file(&l, "base-passwd"), "root:x:0:0:root:/root:/bin/sh");
    assert_eq!(file(&l, "from-seed"), "from-stage");
    // The mount RUN's layer holds what it wrote, and none of its mount points.
    let mut mount_layer: Vec<String> = l.last().unwrap().iter().map(|(p, _)| p.clone()).collect();
    mount_layer.sort();
    assert_eq!(
        mount_layer,
        [
            "base-passwd",
            "from-context",
            "from-seed",
            "from-stage",
            "runs-seen",
            "tool-owner"
        ],
        "the mount step's layer"
    );
    // rw writes were discarded: the context is as it was.
    assert_eq!(
        fs::read_to_string(context.join("input.txt")).unwrap(),
        "one\n"
    );

    // Unchanged: fully cached, the cache mount untouched.
    let again = build_to(&s, &context, &cache, &layout, &[]);
    assert_eq!(again["digest"], first["digest"]);
    assert_eq!(runs_seen(&layout), "1");

    // A changed bound context file re-runs the step, which sees the first run's file.
    write(&context.join("input.txt"), "two\n", 0o644);
    build_to(&s, &context, &cache, &layout, &[]);
    assert_eq!(runs_seen(&layout), "2");
    assert_eq!(file(&layers(&layout), "from-context"), "two");

    // --no-cache re-runs every step; the cache mount keeps its content.
    build_to(&s, &context, &cache, &layout, &["--no-cache"]);
    assert_eq!(runs_seen(&layout), "3");

    // prune empties the cache mounts and says what it freed.
    let cache_arg = cache.display().to_string();
    let pruned = parse_json(
        &run_ok(
            s.cli
                .cmd(["build", "prune", "--json", "--cache-dir", &cache_arg]),
            T,
        ),
        "berth build prune --json",
    );
    let mut ids: Vec<&str> = pruned["cache_mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["/opt/tool/cache", "runs", "seeded"], "{pruned}");
    assert!(pruned["bytes"].as_u64().unwrap() >= 6, "{pruned}");
    let text = run_ok(s.cli.cmd(["build", "prune", "--cache-dir", &cache_arg]), T);
    assert!(text.starts_with("removed 0 cache mounts"), "{text}");
    build_to(&s, &context, &cache, &layout, &["--no-cache"]);
    assert_eq!(
        runs_seen(&layout),
        "1",
        "after prune the cache starts empty"
    );

    // The chroot fallback mounts the same way, and leaves the same layer.
    let built = build_in(&s, &context, &cache, &layout, &["--no-cache"], "chroot");
    assert_eq!(built["isolation"], "chroot");
    let l = layers(&layout);
    assert_eq!(runs_seen(&layout), "2");
    assert_eq!(file(&l, "from-stage"), "from-stage");
    assert_eq!(file(&l, "from-context"), "two");
    assert_eq!(file(&l, "tool-owner"), "700:1:2");
    let mut chroot_layer: Vec<String> = l.last().unwrap().iter().map(|(p, _)| p.clone()).collect();
    chroot_layer.sort();
    assert_eq!(chroot_layer, mount_layer, "the chroot mount step's layer");
    assert_eq!(
        fs::read_to_string(context.join("input.txt")).unwrap(),
        "two\n"
    );
}

const SECRET_DOCKERFILE: &str = r#"ARG BASE
FROM ${BASE}
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN --mount=type=secret,id=filetok,required \
    --mount=type=secret,id=ENVTOK,env=TOKEN_VAR \
    --mount=type=secret,id=both,target=/etc/both.txt,env=BOTH,mode=0440,gid=5 \
    --mount=type=secret,id=not-given \
    set -e; \
    sha256sum /run/secrets/filetok | cut -d' ' -f1 > /file.sha; \
    printf %s "$TOKEN_VAR" | sha256sum | cut -d' ' -f1 > /env.sha; \
    printf %s "$BOTH" | sha256sum | cut -d' ' -f1 > /both-env.sha; \
    sha256sum /etc/both.txt | cut -d' ' -f1 > /both-file.sha; \
    stat -c %a:%u:%g /run/secrets/filetok /etc/both.txt > /modes; \
    test ! -e /run/secrets/not-given; \
    test ! -e /run/secrets/ENVTOK
"#;

#[test]
fn secrets_never_leave_the_step() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("secret");
    let cache = s.cli.path("build-cache");
    let layout = s.cli.path("out");
    write(&context.join("Dockerfile"), SECRET_DOCKERFILE, 0o644);
    let secrets = [
        unique("file-secret-value"),
        unique("env-secret-value"),
        unique("both-secret-value"),
    ];
    let secret_files = s.cli.path("secrets");
    write(&secret_files.join("file"), &secrets[0], 0o600);
    write(&secret_files.join("both"), &secrets[2], 0o600);
    let file_arg = format!("id=filetok,src={}", secret_files.join("file").display());
    let both_arg = format!("id=both,src={}", secret_files.join("both").display());
    let cache_arg = cache.display().to_string();
    let base_arg = format!("BASE={}", s.base);
    let tag = format!("{}/app/secret:1", s.server.host());
    let out_arg = format!("oci:{}:img", layout.display());
    let args = |json: bool| {
        let mut a = vec![
            "--cache-dir",
            &cache_arg,
            "--build-arg",
            &base_arg,
            "--secret",
            &file_arg,
            "--secret",
            "id=ENVTOK",
            "--secret",
            &both_arg,
            "-t",
            &tag,
            "--push",
            "--output",
            &out_arg,
        ];
        if json {
            a.insert(0, "--json");
        }
        a
    };
    let mut logs = String::new();
    for (json, extra) in [(false, None), (true, Some("--no-cache"))] {
        let mut a = args(json);
        a.extend(extra);
        let out = run(
            build_cmd(&s.cli, &context, &a).env("ENVTOK", &secrets[1]),
            T,
        );
        assert!(
            out.status.success(),
            "berth build failed:\n{}",
            out.describe()
        );
        logs.push_str(&out.stdout);
        logs.push_str(&out.stderr);
    }
    assert!(
        logs.contains("\"digest\""),
        "the --json build printed its result"
    );

    // The step saw every secret.
    let l = layers(&layout);
    assert_eq!(file(&l, "file.sha"), sha256_hex(secrets[0].as_bytes()));
    assert_eq!(file(&l, "env.sha"), sha256_hex(secrets[1].as_bytes()));
    assert_eq!(file(&l, "both-env.sha"), sha256_hex(secrets[2].as_bytes()));
    assert_eq!(file(&l, "both-file.sha"), sha256_hex(secrets[2].as_bytes()));
    assert_eq!(file(&l, "modes"), "400:0:0\n440:0:5");
    let paths: Vec<&str> = l.last().unwrap().iter().map(|(p, _)| p.as_str()).collect();
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with("run") || p.starts_with("etc")),
        "secret mount points in the layer: {paths:?}"
    );

    // No byte of the output, the registry, the cache or the logs holds a secret.
    let mut places = layout_blobs(&layout);
    places.extend(layout_blobs(&cache));
    places.extend(layout_blobs(s.server.storage()));
    places.extend(layout_blobs(&s.cli.store()));
    places.push(("the build output".into(), logs.into_bytes()));
    assert!(places.len() > 20, "searched {} files", places.len());
    for secret in &secrets {
        for (name, bytes) in &places {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "a secret is in {name}"
            );
        }
    }

    // A required secret missing: the RUN's line, before anything runs.
    let out = run_fail(
        build_cmd(
            &s.cli,
            &context,
            &["--cache-dir", &cache_arg, "--build-arg", &base_arg],
        ),
        T,
    );
    assert!(
        out.stderr
            .contains("Dockerfile:4: RUN: secret \"filetok\" is required"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("resolving"), "{}", out.describe());
}

const SSH_DOCKERFILE: &str = r#"ARG BASE
FROM ${BASE}
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN --mount=type=ssh,uid=1,gid=2,mode=0660 \
    test -S "$SSH_AUTH_SOCK" && echo "$SSH_AUTH_SOCK" > /ssh-path && stat -c %a:%u:%g "$SSH_AUTH_SOCK" > /ssh-stat
RUN --network=none --mount=type=ssh,id=work,target=/agent.sock test -S /agent.sock
RUN --network=host --security=sandbox grep CapEff /proc/self/status > /caps-sandbox
RUN --security=insecure grep CapEff /proc/self/status > /caps-insecure
"#;

#[test]
fn ssh_agent_entitlements_and_bad_mounts() {
    if !can_build() {
        return;
    }
    let s = setup();
    let context = s.cli.path("ssh");
    let cache = s.cli.path("build-cache");
    let layout = s.cli.path("out");
    write(&context.join("Dockerfile"), SSH_DOCKERFILE, 0o644);
    let agent_dir = tempfile::tempdir().unwrap();
    let agent = agent_dir.path().join("agent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
    let ssh_default = format!("default={}", agent.display());
    let ssh_work = format!("work={}", agent.display());
    let cache_arg = cache.display().to_string();
    let base_arg = format!("BASE={}", s.base);

    // Without the entitlement: refused at the RUN's line, before anything runs.
    let out = run_fail(
        build_cmd(
            &s.cli,
            &context,
            &[
                "--cache-dir",
                &cache_arg,
                "--build-arg",
                &base_arg,
                "--ssh",
                &ssh_default,
                "--ssh",
                &ssh_work,
            ],
        ),
        T,
    );
    assert!(
        out.stderr
            .contains("Dockerfile:8: RUN: --security=insecure")
            && out.stderr.contains("--allow security.insecure"),
        "{}",
        out.describe()
    );

    build_to(
        &s,
        &context,
        &cache,
        &layout,
        &[
            "--ssh",
            &ssh_default,
            "--ssh",
            &ssh_work,
            "--allow",
            "security.insecure",
        ],
    );
    let l = layers(&layout);
    assert_eq!(file(&l, "ssh-path"), "/run/buildkit/ssh_agent.0");
    assert_eq!(file(&l, "ssh-stat"), "660:1:2");
    let caps = |name: &str| {
        let line = file(&l, name);
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    const CAP_SYS_ADMIN: u64 = 1 << 21;
    assert_eq!(caps("caps-sandbox") & CAP_SYS_ADMIN, 0);
    assert_ne!(caps("caps-insecure") & CAP_SYS_ADMIN, 0);
    for layer in &l[1..] {
        for (p, _) in layer {
            assert!(
                !p.starts_with("run") && !p.starts_with("agent.sock"),
                "mount point {p} in a layer"
            );
        }
    }

    // Bad mounts and options: named with the file, line and instruction (plan time).
    for (run, wanted) in [
        (
            "RUN --mount=type=volume,target=/x true",
            "unknown mount type \"volume\"",
        ),
        (
            "RUN --mount=type=cache,target=/x,colour=red true",
            "unknown option \"colour\"",
        ),
        (
            "RUN --mount=type=cache,target=/x,id=../up true",
            "path separators",
        ),
        (
            "RUN --mount=type=bind,source=../outside,target=/x true",
            "climbs above",
        ),
        ("RUN --mount=type=ssh,id=nope,required true", "--ssh nope="),
        (
            "RUN --network=bridge true",
            "--network=bridge: use default, none or host",
        ),
    ] {
        write(
            &context.join("Dockerfile"),
            &format!("ARG BASE\nFROM ${{BASE}}\n{run}\n"),
            0o644,
        );
        let out = run_fail(
            build_cmd(&s.cli, &context, &["--dry-run", "--build-arg", &base_arg]),
            T,
        );
        assert!(
            out.stderr.contains("Dockerfile:3: RUN: ") && out.stderr.contains(wanted),
            "{run}: {}",
            out.describe()
        );
    }
}
