//! `berth build --progress`: the same two-RUN Dockerfile (the second RUN fails) built with
//! `rawjson` (every event a JSON object: start, log, done, in order per step), `quiet` (nothing
//! on stderr but the error), `plain` (the `#N` lines) and `tty` under a real pseudo-terminal
//! (`script`): the live view redraws (cursor movement), collapses the finished step to
//! `DONE`, and on failure prints the failed step's last output, which the live view hid.
//!
//! Needs root and runc (a failure with `CI=true`), and `script` (util-linux).

mod common;

use common::*;
use serde_json::Value;

const DOCKERFILE: &str =
    "FROM BASE\nRUN echo first-line && echo second-line\nRUN echo about-to-fail && exit 3\n";

#[test]
fn progress_modes_show_the_steps() {
    if !can_build() || !require_tool("script") {
        return;
    }
    let s = setup();
    let ctx = s.cli.path("ctx");
    write(
        &ctx.join("Dockerfile"),
        &DOCKERFILE.replace("BASE", &s.base),
        0o644,
    );

    // rawjson: one object per line, the first RUN's events in order.
    let out = run_fail(build_cmd(&s.cli, &ctx, &["--progress", "rawjson"]), BUILD_T);
    let events: Vec<Value> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let first: Vec<&Value> = events.iter().filter(|e| e["step"] == 1).collect();
    let kinds: Vec<&str> = first.iter().filter_map(|e| e["event"].as_str()).collect();
    assert_eq!(kinds, ["start", "log", "log", "done"], "{}", out.stderr);
    assert_eq!(first[1]["text"], "first-line");
    assert!(first[0]["name"]
        .as_str()
        .unwrap_or_default()
        .contains("RUN echo first-line"));
    assert!(
        events
            .iter()
            .any(|e| e["step"] == 2 && e["text"] == "about-to-fail"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Dockerfile:3: RUN"), "{}", out.stderr);

    // quiet: only the error.
    let out = run_fail(build_cmd(&s.cli, &ctx, &["--progress", "quiet"]), BUILD_T);
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains("exit code: 3"), "{}", out.stderr);

    // plain: the `#N` lines (the first RUN is cached now).
    let out = run_fail(build_cmd(&s.cli, &ctx, &["--progress", "plain"]), BUILD_T);
    assert!(out.stderr.contains("#1 CACHED"), "{}", out.stderr);
    assert!(out.stderr.contains("#2 | about-to-fail"), "{}", out.stderr);

    // tty under a pseudo-terminal: a live view, then the failed step's output.
    let build = build_cmd(&s.cli, &ctx, &["--no-cache"]);
    let mut line = format!("{:?}", build.get_program());
    for a in build.get_args() {
        line.push(' ');
        line.push_str(&format!("{a:?}"));
    }
    let typescript = s.cli.path("typescript");
    let mut c = cmd("script", ["-qec", &line]);
    c.arg(&typescript);
    for (k, v) in build.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let out = run(c, BUILD_T);
    assert!(!out.status.success(), "{}", out.describe());
    let screen = std::fs::read_to_string(&typescript).unwrap_or_default();
    assert!(
        screen.contains("\x1b["),
        "no terminal control sequences:\n{screen}"
    );
    assert!(screen.contains("DONE"), "{screen}");
    assert!(screen.contains("ERROR"), "{screen}");
    assert!(screen.contains("(last output):"), "{screen}");
    assert!(screen.contains("about-to-fail"), "{screen}");
    assert!(
        !screen.contains("#1 | "),
        "plain lines in the tty view:\n{screen}"
    );
}

/// `berth build --network none` (docker build's flag) gives every RUN without its own
/// `RUN --network` only a loopback interface; a step's own `--network=host` still wins; a
/// wrong value is refused before anything runs.
#[test]
fn build_network_flag_sets_the_default_for_run() {
    if !can_build() {
        return;
    }
    let s = setup();
    let ctx = s.cli.path("net");
    write(
        &ctx.join("Dockerfile"),
        &format!(
            "FROM {}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN grep -c : /proc/net/dev > /default\nRUN --network=host grep -c : /proc/net/dev > /own\n",
            s.base
        ),
        0o644,
    );
    let dest = s.cli.path("net-out");
    let out_arg = format!("type=local,dest={}", dest.display());
    let out = run(
        build_cmd(&s.cli, &ctx, &["--network", "none", "--output", &out_arg]),
        BUILD_T,
    );
    assert!(out.status.success(), "{}", out.describe());
    let read = |name: &str| std::fs::read_to_string(dest.join(name)).unwrap_or_default();
    assert_eq!(read("default").trim(), "1", "only lo with --network none");
    assert_ne!(
        read("own").trim(),
        "1",
        "RUN --network=host keeps the host's interfaces"
    );
    assert_ne!(read("own").trim(), "", "the step wrote its count");
    let out = run_fail(build_cmd(&s.cli, &ctx, &["--network", "bridge"]), BUILD_T);
    assert!(
        out.stderr.contains("--network bridge"),
        "{}",
        out.describe()
    );
}
