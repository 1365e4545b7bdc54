//! How fast `berth deploy` gets a host ready, against the daemon `DOCKER_HOST` names,
//! pulling from a real `berth serve`.
//!
//! - Readiness without dockerd's interval: a service whose healthcheck has `interval: 30s`
//!   is ready (Berth runs the check itself through `exec`) long before dockerd's first check;
//!   a check that never passes is still rolled back (at `--health-timeout`); a service
//!   without a check that exits within its `settle:` time fails the deploy, the old one kept.
//! - `--timings`: the per-host line in the recap, and in `--json` every phase, summing to
//!   the host's wall time, with the number of Engine API calls.
//!
//! Everything the test creates is removed by a guard, also when it fails.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(300);

fn container_id(name: &str) -> String {
    inspect(name)["Id"].as_str().unwrap_or_default().to_string()
}

/// web: busybox httpd with a healthcheck dockerd runs only every 30 s; the check's path
/// comes from a variable. worker: no healthcheck, exits after `worker_life` seconds when
/// that is not `forever`, and must keep running for 2 s (`settle:`).
fn app_file(app: &str, image: &str) -> String {
    format!(
        r#"name: {app}
variables:
  health_path: /passwd
  worker_life: forever
  mode: one
networks:
  net: {{}}
services:
  web:
    image: "{image}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; /bin/busybox sleep 0.3; /bin/busybox httpd -f -p 8000 -h /etc & wait"]
    env: {{ MODE: "{{{{ mode }}}}" }}
    networks: [net]
    healthcheck:
      test: [CMD, /bin/busybox, wget, -q, -O, /dev/null, "http://127.0.0.1:8000{{{{ health_path }}}}"]
      interval: 30s
      timeout: 2s
      retries: 2
  worker:
    image: "{image}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; if [ {{{{ worker_life }}}} != forever ]; then /bin/busybox sleep {{{{ worker_life }}}}; exit 3; fi; while true; do /bin/busybox sleep 1; done"]
    env: {{ MODE: "{{{{ mode }}}}" }}
    networks: [net]
    settle: 2s
"#
    )
}

fn deploy(cli: &BerthCli, app: &Path, inventory: &Path, extra: &[&str]) -> (CmdOutput, Duration) {
    let mut c = cli.cmd(["deploy"]);
    c.arg(app).arg("-i").arg(inventory).args(extra);
    let started = Instant::now();
    let out = run(c, TIMEOUT);
    (out, started.elapsed())
}

#[test]
fn readiness_checks_early_and_still_rolls_back() {
    if !require_tool("docker") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("bspeed").replace('-', "_");
    let repository = format!("timings-e2e/{}", app.replace('_', "-"));
    let image = format!("{}/{repository}:v1", server.host());
    let _cleanup = DockerCleanup::app(&app, vec![format!("{}/{repository}", server.host())]);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let mut import = cli.cmd(["import"]);
    import
        .arg(&rootfs)
        .arg(&image)
        .args(["-c", "CMD [\"/bin/sh\"]"]);
    run_ok(import, TIMEOUT);

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
    let vars = |text: &str| {
        fs::write(inventory.join("group_vars/all.yml"), text).expect("write group_vars")
    };
    let web = format!("{app}_web_1");
    let worker = format!("{app}_worker_1");

    // --- 1. ready by Berth's own check, long before dockerd's first one (30 s) -----------------
    let (out, took) = deploy(&cli, &app_path, &inventory, &["--timings"]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains("local : ok=0 changed=4 unreachable=0 failed=0"),
        "{}",
        out.describe()
    );
    // dockerd has not run its check yet: the deploy did not wait for it.
    let w = inspect(&web);
    assert_eq!(w["State"]["Health"]["Status"], "starting", "{w}");
    assert_eq!(w["State"]["Running"], true);
    assert_eq!(inspect(&worker)["State"]["Running"], true);
    // The worker's `settle: 2s` was waited for; dockerd's 30 s interval was not.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(25),
        "first deploy took {took:?}"
    );
    // `--timings` adds one line per host to the recap.
    let line = out
        .stdout
        .lines()
        .find(|line| line.starts_with("TIMINGS local: total "))
        .unwrap_or_else(|| panic!("no TIMINGS line\n{}", out.describe()));
    for field in [
        "connect",
        "read",
        "resolve",
        "pull",
        "create",
        "start",
        "ready",
        "remove",
        "API calls",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let ids = (container_id(&web), container_id(&worker));

    // --- 2. a check that never passes is rolled back (dockerd would say so after 60 s) ---------
    vars("health_path: /no-such-file\nmode: two\n");
    let (out, took) = deploy(&cli, &app_path, &inventory, &["--health-timeout", "4s"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("was not healthy within 4s"),
        "{}",
        out.describe()
    );
    assert!(
        took < Duration::from_secs(30),
        "failed deploy took {took:?}"
    );
    assert_eq!(
        (container_id(&web), container_id(&worker)),
        ids,
        "the host runs what it ran before"
    );
    assert_eq!(inspect(&web)["State"]["Running"], true);

    // --- 3. no healthcheck: exiting within the settle time fails, the old worker kept ----------
    vars("worker_life: 1\nmode: three\n");
    let (out, _) = deploy(&cli, &app_path, &inventory, &[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("stopped after start (exit code 3)"),
        "{}",
        out.describe()
    );
    assert_eq!(container_id(&worker), ids.1);
    assert_eq!(inspect(&worker)["State"]["Running"], true);

    // --- 4. an update with --timings --json: every phase, summing to the host's wall time ------
    vars("mode: four\n");
    let (out, took) = deploy(&cli, &app_path, &inventory, &["--timings", "--json"]);
    assert!(out.status.success(), "{}", out.describe());
    let report = parse_json(&out.stdout, "deploy --timings --json");
    let timings = &report["hosts"][0]["timings"];
    let seconds = |field: &str| {
        timings[field]
            .as_f64()
            .unwrap_or_else(|| panic!("timings.{field} missing: {report}"))
    };
    let phases: f64 = [
        "connect", "read", "resolve", "pull", "create", "start", "ready", "remove",
    ]
    .iter()
    .map(|field| seconds(field))
    .sum();
    let total = seconds("total");
    assert!(
        total <= took.as_secs_f64(),
        "host total {total} > command {took:?}"
    );
    // The rest of the host's time is planning and bookkeeping: well under 10 %.
    assert!(
        phases <= total + 0.001 && phases >= total * 0.9,
        "phases {phases} vs total {total}: {timings}"
    );
    // Both replaced start-first (the worker waits its 2 s settle), nothing pulled.
    assert!(seconds("ready") >= 1.5, "{timings}");
    assert_eq!(seconds("pull"), 0.0, "{timings}");
    let calls = timings["api_calls"].as_u64().unwrap_or_default();
    assert!((10..500).contains(&calls), "{calls} API calls: {timings}");
}
