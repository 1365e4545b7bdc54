//! `berth build --dry-run`: the plan printed from a real context folder,
//! errors with file and line, also when building for real.

use std::path::Path;
use std::process::{Command, Output};

fn berth(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_berth"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run berth")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn dry_run_prints_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "ARG BASE=alpine:3.20\nFROM $BASE AS build\nARG VERSION=dev\nRUN echo $VERSION > /v\n\nFROM scratch AS final\nCOPY --from=build /v /v\nCMD [\"/v\"]\n\nFROM busybox AS unused\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "target\n!target/keep\n").unwrap();

    let out = berth(
        dir.path(),
        &[
            "build",
            "--dry-run",
            "--target",
            "final",
            "--build-arg",
            "VERSION=1.2",
            "--build-arg",
            "NOPE=1",
            ".",
        ],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("target: stage 1 (final)"), "{stdout}");
    assert!(stdout.contains("2 rules from ./.dockerignore"), "{stdout}");
    assert!(
        stdout.contains("stage 0 (build) FROM alpine:3.20 (line 2)"),
        "{stdout}"
    );
    assert!(stdout.contains("[skipped"), "{stdout}");
    assert!(
        stdout.contains("build argument NOPE was not consumed"),
        "{stdout}"
    );

    let out = berth(
        dir.path(),
        &[
            "build",
            "--dry-run",
            "--json",
            "--build-arg",
            "VERSION=1.2",
            ".",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["target"], 2);
    let run = &plan["stages"][0]["steps"][1]["action"];
    assert_eq!(run["kind"], "run");
    assert_eq!(run["env"][0], "VERSION=1.2");
    assert_eq!(plan["dockerignore"]["rules"][1]["exception"], true);
}

#[test]
fn errors_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("app.Dockerfile"),
        "FROM alpine\nCOPY only-one\n",
    )
    .unwrap();
    let out = berth(
        dir.path(),
        &["build", "--dry-run", "-f", "app.Dockerfile", "."],
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("app.Dockerfile:2: COPY: requires at least two arguments"),
        "{stderr}"
    );

    // A real build checks the Dockerfile before it pulls or runs anything.
    let out = berth(dir.path(), &["build", "-f", "app.Dockerfile", "."]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("app.Dockerfile:2: COPY: requires at least two arguments"),
        "{stderr}"
    );

    std::fs::write(dir.path().join("Dockerfile"), "FROM alpine\nRUN true\n").unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "ok\nbad[\n").unwrap();
    let out = berth(dir.path(), &["build", "--dry-run", "."]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(".dockerignore:2: bad pattern"),
        "{}",
        text(&out.stderr)
    );

    let out = berth(dir.path(), &["build", "--dry-run", "missing-dir"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );
}
