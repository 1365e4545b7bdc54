//! The local store as docker's image store, with the real binary: a base made with
//! `berth import` under a bare name (kept local), `berth build -t app:1` on `FROM base:1`,
//! `berth images` (text and `--json`), `berth inspect app:1` from the store, `FROM app:1` in a
//! second build (its RUN reads the first build's file), `berth tag app:1 HOST:PORT/app:1`,
//! `berth push HOST:PORT/app:1` to `berth serve`, the same digest pulled back by digest into
//! a fresh store, and `berth rmi`. Nothing goes to Docker Hub: a bare name the store lacks
//! would fail with a DNS error instead.
//!
//! Needs root and runc (a failure with `CI=true`).

mod common;

use common::*;

#[test]
fn built_images_are_used_by_name() {
    if !can_build() {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);

    // `berth import` with a bare name makes a local image, as `docker import`.
    let imported = run_ok(
        cli.cmd(["import", "--change", "ENV PATH=/bin", "-q"])
            .arg(&rootfs)
            .arg("base:1"),
        BUILD_T,
    );
    assert!(imported.trim().starts_with("sha256:"), "{imported}");

    let ctx = cli.path("app");
    write(
        &ctx.join("Dockerfile"),
        "FROM base:1\nRUN echo built-by-app > /made-here\n",
        0o644,
    );
    // Docker Hub is out of reach here: a build that succeeds took base:1 from the store.
    build_json(&cli, &ctx, &["-t", "app:1"]);

    // `berth images`: docker's columns and both images.
    let table = run_ok(cli.cmd(["images"]), T);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["REPOSITORY", "TAG", "DIGEST", "CREATED", "SIZE"],
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("app ") && l.contains(" 1 ")),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("base ")), "{table}");
    let listed = parse_json(&run_ok(cli.cmd(["images", "--json"]), T), "images --json");
    let app = listed
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == "docker.io/library/app:1"))
        .unwrap_or_else(|| panic!("app:1 missing: {listed}"))
        .clone();
    assert_eq!(app["repository"], "app");
    assert!(app["size"].as_u64().unwrap_or(0) > 100_000, "{app}");

    // `berth inspect app:1` reads the local store (the digest `images` lists).
    let inspected = parse_json(
        &run_ok(cli.cmd(["inspect", "app:1", "--json"]), T),
        "inspect --json",
    );
    let digest = inspected["digest"].as_str().unwrap_or_default().to_string();
    assert_eq!(app["digest"], digest.as_str());

    // `FROM app:1` in another build: its RUN sees the first build's file.
    let ctx2 = cli.path("child");
    write(
        &ctx2.join("Dockerfile"),
        "FROM app:1\nRUN grep built-by-app /made-here && echo child > /child\n",
        0o644,
    );
    build_json(&cli, &ctx2, &["-t", "child:1"]);

    // docker's tag-then-push: the new name lives in the local store, push sends it.
    let target = format!("{}/app:1", server.host());
    run_ok(cli.cmd(["tag", "app:1", &target, "-q"]), T);
    let table = run_ok(cli.cmd(["images"]), T);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("{}/app ", server.host()))),
        "{table}"
    );
    let pushed = run_ok(cli.cmd(["push", &target, "-q"]), BUILD_T);
    assert_eq!(pushed.trim(), digest, "push sends the very image built");

    // Pulled back by digest into a fresh store: the same manifest.
    let other = BerthCli::new();
    let by_digest = format!("{}/app@{digest}", server.host());
    let pulled = run_ok(other.cmd(["pull", &by_digest, "-q"]), BUILD_T);
    assert_eq!(pulled.trim(), digest);
    let config = run_ok(other.cmd(["inspect", &by_digest, "--config"]), T);
    assert!(config.contains("PATH=/bin"), "{config}");

    // `berth rmi`: gone from `images`; a second time names what to do.
    run_ok(cli.cmd(["rmi", "child:1"]), T);
    let table = run_ok(cli.cmd(["images"]), T);
    assert!(!table.lines().any(|l| l.starts_with("child ")), "{table}");
    let out = run_fail(cli.cmd(["rmi", "child:1"]), T);
    assert!(out.stderr.contains("berth images"), "{}", out.stderr);
}

const T: std::time::Duration = std::time::Duration::from_secs(60);
