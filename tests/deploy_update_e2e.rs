//! Start-first updates against the daemon `DOCKER_HOST` names, pulling from a real
//! `berth serve`.
//!
//! - Two independent services without published ports or fixed addresses update
//!   start-first and at the same time: both successors (`NAME-next`) run next to the old
//!   containers, which keep running until their successor is ready. The test holds the
//!   successors "not ready" (their healthcheck looks for a file the test creates), so it
//!   sees the old and new containers side by side without any timing assumption.
//! - A successor that never becomes ready is removed and the old container keeps running;
//!   the other service, whose successor was ready, is put back too (the host is all or
//!   nothing), and the kept previous releases survive.
//!
//! Everything the test creates is removed by a guard, also when it fails.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(300);

/// Two services alike: ready when `/tmp/ready` exists, made at start only when the
/// `gate` variable is `open`; the check's file comes from a per-service variable. dockerd
/// checks every second but needs many failures for `unhealthy`, so only Berth's own early
/// probes and the deploy's `--health-timeout` decide.
fn app_file(app: &str, image: &str) -> String {
    let service = |name: &str| {
        format!(
            r#"  {name}:
    image: "{image}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; if [ {{{{ gate }}}} = open ]; then /bin/busybox touch /tmp/ready; fi; while true; do /bin/busybox sleep 1; done"]
    env: {{ MODE: "{{{{ mode }}}}" }}
    networks: [net]
    stop_grace_period: 1s
    healthcheck:
      test: [CMD, /bin/busybox, test, -f, "{{{{ {name}_ready_file }}}}"]
      interval: 1s
      timeout: 2s
      retries: 1000
"#
        )
    };
    format!(
        "name: {app}\nvariables:\n  gate: open\n  mode: one\n  a_ready_file: /tmp/ready\n  b_ready_file: /tmp/ready\nnetworks:\n  net: {{}}\nservices:\n{}{}",
        service("a"),
        service("b")
    )
}

fn deploy(cli: &BerthCli, app: &Path, inventory: &Path, extra: &[&str]) -> CmdOutput {
    let mut c = cli.cmd(["deploy"]);
    c.arg(app).arg("-i").arg(inventory).args(extra);
    run(c, TIMEOUT)
}

/// The container's id and whether it runs, or None when there is no such container.
fn state(name: &str) -> Option<(String, bool)> {
    let out = run(
        cmd(
            "docker",
            ["inspect", "-f", "{{.Id}} {{.State.Running}}", name],
        ),
        TIMEOUT,
    );
    if !out.status.success() {
        return None;
    }
    let (id, running) = out.stdout.trim().split_once(' ')?;
    Some((id.to_string(), running == "true"))
}

fn running_id(name: &str) -> String {
    match state(name) {
        Some((id, true)) => id,
        other => panic!("{name} is not running: {other:?}"),
    }
}

#[test]
fn start_first_updates_run_side_by_side_and_keep_the_old_one_on_failure() {
    if !require_tool("docker") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("bupd").replace('-', "_");
    let repository = format!("update-e2e/{}", app.replace('_', "-"));
    let image = format!("{}/{repository}:v1", server.host());
    let _cleanup = DockerCleanup::app(&app, vec![format!("{}/{repository}", server.host())]);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    import_image(&cli, &rootfs, &image, "1");

    let app_path = cli.path("app.yml");
    fs::write(&app_path, app_file(&app, &image)).expect("write app");
    let inventory = cli.path("inventory");
    fs::create_dir_all(inventory.join("group_vars")).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  hosts:\n    local:\n      docker_host: \"{}\"\n",
            docker_host()
        ),
    )
    .expect("write hosts.yml");
    let vars =
        |text: &str| fs::write(inventory.join("group_vars/all.yml"), text).expect("write vars");
    let (a, b) = (format!("{app}_a_1"), format!("{app}_b_1"));
    let next = |name: &str| format!("{name}-next");
    let prev = |name: &str| format!("{name}-prev");

    // --- 1. first deploy ----------------------------------------------------------------------
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(out.contains("local : ok=0 changed=4"), "{out}");
    let v1 = (running_id(&a), running_id(&b));

    // --- 2. an update whose successors wait for the test: both run next to the old ones -------
    vars("gate: closed\nmode: two\n");
    let deploying = {
        let mut c = cli.cmd(["deploy"]);
        c.arg(&app_path)
            .arg("-i")
            .arg(&inventory)
            .args(["--health-timeout", "120s"]);
        std::thread::spawn(move || run(c, TIMEOUT))
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let successors = loop {
        if let (Some((na, true)), Some((nb, true))) = (state(&next(&a)), state(&next(&b))) {
            break (na, nb);
        }
        assert!(
            !deploying.is_finished(),
            "the deploy ended before both successors ran"
        );
        assert!(
            Instant::now() < deadline,
            "the successors did not both start"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Both updates are under way at once, and neither old container was stopped.
    assert_eq!(
        (running_id(&a), running_id(&b)),
        v1,
        "the old containers must run until their successors are ready"
    );
    for name in [&a, &b] {
        let touch = ["exec", &next(name), "/bin/busybox", "touch", "/tmp/ready"];
        run_ok(cmd("docker", touch), TIMEOUT);
    }
    let out = deploying.join().expect("deploy thread");
    let out = ok(out);
    for name in [&a, &b] {
        assert!(
            out.contains(&format!("replace  container {name} (start-first)")),
            "{out}"
        );
        assert!(state(&next(name)).is_none(), "{} left over", next(name));
    }
    // The successors took the names; the old ones are kept, stopped, as rollback targets.
    assert_eq!((running_id(&a), running_id(&b)), successors);
    assert_eq!(state(&prev(&a)), Some((v1.0.clone(), false)));
    assert_eq!(state(&prev(&b)), Some((v1.1.clone(), false)));
    assert!(env_of(&inspect(&a)).contains(&"MODE=two".to_string()));

    // --- 3. a successor that never gets ready: removed, the old one keeps running -------------
    // b's successor is ready at once, a's never: a fails at the timeout, and b's finished
    // replacement is undone with it.
    vars("gate: open\nmode: three\na_ready_file: /tmp/never\n");
    let out = deploy(&cli, &app_path, &inventory, &["--health-timeout", "5s"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!("{a} kept running")),
        "{}",
        out.describe()
    );
    assert_eq!(
        (running_id(&a), running_id(&b)),
        successors,
        "the host runs what it ran before"
    );
    for name in [&a, &b] {
        assert!(state(&next(name)).is_none(), "{} left over", next(name));
        assert!(env_of(&inspect(name)).contains(&"MODE=two".to_string()));
    }
    assert_eq!(state(&prev(&a)), Some((v1.0.clone(), false)));
    assert_eq!(state(&prev(&b)), Some((v1.1, false)));
}
