//! `berth export` end to end, with the real tools the output is for:
//! - `berth export kubernetes` of examples/origin (two inventories: overlays) and the two
//!   test apps (a volume and secrets; replicas and a healthcheck), each overlay built with
//!   `kubectl kustomize` and the result checked by `kubernetes-validate --strict` (PyPI)
//!   against the oldest and the newest Kubernetes schema it knows of ours;
//! - images pinned to the digests a real `berth serve` on loopback holds, and a clear
//!   error naming --no-pin when no registry answers;
//! - `berth export stack` of the two test apps deployed with `docker stack deploy` on a
//!   single-node swarm (a private dockerd of this test's own), every replica running.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(180);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn test_app(name: &str) -> PathBuf {
    repo().join("deploy/tests/export/apps").join(name)
}

fn export(cli: &BerthCli, args: &[&str]) -> CmdOutput {
    let mut c = cli.cmd(["export"]);
    c.args(args);
    run(c, TIMEOUT)
}

fn export_ok(cli: &BerthCli, args: &[&str]) -> String {
    let out = export(cli, args);
    assert!(out.status.success(), "export failed\n{}", out.describe());
    out.stderr
}

/// `kubectl kustomize DIR`, then `kubernetes-validate --strict` of its output for the
/// oldest Kubernetes version the export targets and the validator's newest.
fn kustomize_and_validate(dir: &Path, scratch: &Path) -> String {
    let built = run_ok(
        cmd("kubectl", ["kustomize", &dir.display().to_string()]),
        TIMEOUT,
    );
    let file = scratch.join(format!(
        "built-{}.yaml",
        dir.display().to_string().replace('/', "_")
    ));
    fs::write(&file, &built).expect("write kustomize output");
    for version in [Some("1.33.0"), None] {
        let mut c = cmd("kubernetes-validate", ["--strict"]);
        if let Some(version) = version {
            c.args(["-k", version]);
        }
        c.arg(&file);
        let out = run(c, TIMEOUT);
        assert!(
            out.status.success() && !out.stdout.contains("ERROR"),
            "kubernetes-validate rejects the export of {} ({version:?}):\n{}\n{built}",
            dir.display(),
            out.describe()
        );
    }
    built
}

fn require_validators() -> bool {
    require_program("kubectl") && require_program("kubernetes-validate")
}

#[test]
fn kubernetes_exports_pass_kustomize_and_the_schema() {
    if !require_validators() {
        return;
    }
    let cli = BerthCli::new();
    let out = cli.path("origin");
    let origin = repo().join("examples/origin");
    let stderr = export_ok(
        &cli,
        &[
            "kubernetes",
            &origin.join("app.yml").display().to_string(),
            "-i",
            &origin.join("testing").display().to_string(),
            "-i",
            &origin.join("production").display().to_string(),
            "--no-pin",
            "--namespace",
            "origin",
            "--output",
            &out.display().to_string(),
        ],
    );
    // What Kubernetes cannot keep is said, not dropped.
    assert!(
        stderr.contains("fixed address 10.1.4.10 not kept") && stderr.contains("gateway"),
        "{stderr}"
    );
    for overlay in ["testing", "production"] {
        let built = kustomize_and_validate(&out.join("overlays").join(overlay), &cli.path(""));
        assert!(built.contains("kind: Deployment") && built.contains("namespace: origin"));
    }

    for (app, extra) in [
        ("volume-secret", vec![]),
        ("volume-secret", vec!["--single-file"]),
        ("replicas-health", vec![]),
    ] {
        let dir = test_app(app);
        let out = cli.path(&format!("{app}{}", extra.len()));
        let mut args = vec![
            "kubernetes".to_string(),
            dir.join("app.yml").display().to_string(),
            "-i".to_string(),
            dir.join("inventory.yml").display().to_string(),
            "--no-pin".to_string(),
            "-o".to_string(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        export_ok(&cli, &args);
        let built = kustomize_and_validate(&out, &cli.path(""));
        if app == "volume-secret" {
            // kustomize made the Secret from the file; the manifests never held the value.
            assert!(built.contains("kind: Secret") && built.contains("PersistentVolumeClaim"));
            let mode = fs::metadata(out.join("secrets/db_password"))
                .expect("secret file")
                .permissions();
            assert_eq!(
                std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
                0o600
            );
        }
    }
}

#[test]
fn images_are_pinned_to_the_registry_digest_or_the_export_fails_clearly() {
    if !require_validators() {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let registry = server.host();
    let digest = import_image(&cli, &rootfs, &format!("{registry}/busybox:stable"), "1");
    let dir = test_app("replicas-health");
    let app = dir.join("app.yml").display().to_string();
    let inventory = dir.join("inventory.yml").display().to_string();
    let registry_var = format!("registry={registry}");
    let out = cli.path("pinned");
    export_ok(
        &cli,
        &[
            "kubernetes",
            &app,
            "-i",
            &inventory,
            "-e",
            &registry_var,
            "-o",
            &out.display().to_string(),
        ],
    );
    let built = kustomize_and_validate(&out, &cli.path(""));
    assert!(
        built.contains(&format!("image: {registry}/busybox:stable@{digest}")),
        "{built}"
    );

    // Nothing listens on port 1: no digest, so no export (unless --no-pin).
    let unreachable = export(
        &cli,
        &[
            "kubernetes",
            &app,
            "-i",
            &inventory,
            "-e",
            "registry=127.0.0.1:1",
        ],
    );
    assert!(!unreachable.status.success(), "{}", unreachable.describe());
    assert!(
        unreachable
            .stderr
            .contains("cannot resolve image 127.0.0.1:1/busybox:stable")
            && unreachable.stderr.contains("--no-pin"),
        "{}",
        unreachable.describe()
    );
    assert!(unreachable.stdout.is_empty());
}

#[test]
fn secrets_are_never_printed_to_stdout() {
    let cli = BerthCli::new();
    let dir = test_app("volume-secret");
    let out = export(
        &cli,
        &[
            "kubernetes",
            &dir.join("app.yml").display().to_string(),
            "-i",
            &dir.join("inventory.yml").display().to_string(),
            "--no-pin",
        ],
    );
    assert!(!out.status.success());
    assert!(out.stderr.contains("--output DIR"), "{}", out.describe());
    assert!(!out.stdout.contains("not-a-real"), "{}", out.describe());
}

/// Waits until every service of the stack runs all its replicas; panics with the tasks'
/// errors at the deadline.
fn wait_for_replicas(daemon: &SwarmDockerd, stack: &str, expected: &[(&str, u32)]) {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let listing = run_ok(
            daemon.docker([
                "stack",
                "services",
                stack,
                "--format",
                "{{.Name}} {{.Replicas}}",
            ]),
            TIMEOUT,
        );
        let done = expected.iter().all(|(service, replicas)| {
            listing
                .lines()
                // Replicas reads `3/3`, or `3/3 (max 5 per node)`.
                .any(|l| l.starts_with(&format!("{stack}_{service} {replicas}/{replicas}")))
        });
        if done {
            return;
        }
        if Instant::now() > deadline {
            let tasks = run(daemon.docker(["stack", "ps", stack, "--no-trunc"]), TIMEOUT);
            panic!(
                "stack {stack} did not converge:\n{listing}\n{}",
                tasks.describe()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn stack_files_deploy_on_a_swarm_and_run() {
    if !require_tool("dockerd") || !require_tool("ip") {
        return;
    }
    if which("docker").is_none() {
        assert!(!in_ci(), "CI=true but the docker CLI is missing");
        eprintln!("SKIP: the docker CLI is missing");
        return;
    }
    let daemon = SwarmDockerd::start("172.29.240.0/24", "172.29.244.0/22");
    let server = Server::start();
    let cli = BerthCli::new();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let registry = server.host();
    import_image(&cli, &rootfs, &format!("{registry}/busybox:stable"), "1");
    let registry_var = format!("registry={registry}");

    for (app, stack, expected) in [
        (
            "replicas-health",
            "exp_pool",
            vec![("worker", 3), ("cache", 2)],
        ),
        ("volume-secret", "exp_shop", vec![("db", 1)]),
    ] {
        let dir = test_app(app);
        let out = cli.path(app);
        export_ok(
            &cli,
            &[
                "stack",
                &dir.join("app.yml").display().to_string(),
                "-i",
                &dir.join("inventory.yml").display().to_string(),
                "-e",
                &registry_var,
                "-o",
                &out.display().to_string(),
            ],
        );
        let file = out.join("stack.yml").display().to_string();
        let deployed = run(
            daemon.docker(["stack", "deploy", "-c", &file, stack]),
            TIMEOUT,
        );
        assert!(
            deployed.status.success(),
            "docker stack deploy refused the export\n{}\n{}",
            deployed.describe(),
            fs::read_to_string(&file).unwrap_or_default()
        );
        wait_for_replicas(&daemon, stack, &expected);
    }
    // The deploy: keys arrived as the swarm mode sets them.
    let worker = daemon.json(["service", "inspect", "exp_pool_worker"]);
    let task = &worker[0]["Spec"]["TaskTemplate"];
    assert_eq!(
        task["Resources"]["Limits"]["NanoCPUs"], 500_000_000,
        "{task}"
    );
    assert_eq!(task["Resources"]["Reservations"]["MemoryBytes"], 16 << 20);
    assert_eq!(task["RestartPolicy"]["Condition"], "on-failure");
    assert_eq!(task["RestartPolicy"]["MaxAttempts"], 3);
    assert!(
        task["ContainerSpec"]["Image"]
            .as_str()
            .is_some_and(|image| image.contains("@sha256:")),
        "pinned by digest: {task}"
    );
}

#[test]
fn bad_input_fails_naming_the_problem() {
    let cli = BerthCli::new();
    let dir = test_app("replicas-health");
    let app = dir.join("app.yml").display().to_string();
    let inventory = dir.join("inventory.yml").display().to_string();
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec![
                "stack", &app, "-i", &inventory, "-i", &inventory, "--no-pin",
            ],
            "one -i",
        ),
        (
            vec![
                "kubernetes",
                &app,
                "-i",
                &inventory,
                "-i",
                &inventory,
                "--no-pin",
                "-o",
                "x",
            ],
            "both named `inventory`",
        ),
        (
            vec![
                "kubernetes",
                &app,
                "-i",
                &inventory,
                "--limit",
                "nosuchhost",
                "--no-pin",
            ],
            "nosuchhost",
        ),
    ];
    for (args, expected) in cases {
        let out = export(&cli, &args);
        assert!(!out.status.success(), "{}", out.describe());
        assert!(out.stderr.contains(expected), "{}", out.describe());
    }

    // Service keys that only `_` and `-` tell apart would be one Kubernetes object.
    let clash = cli.path("clash.yml");
    fs::write(
        &clash,
        "name: clash\nservices:\n  web_1: { image: busybox }\n  web-1: { image: busybox }\n",
    )
    .expect("write app");
    let clash = clash.display().to_string();
    let out = export(&cli, &["kubernetes", &clash, "-i", &inventory, "--no-pin"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("deployment-web-1.yaml"),
        "{}",
        out.describe()
    );
}
