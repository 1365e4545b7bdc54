//! `berth deploy --swarm` and `berth rollback --swarm` against a real single-node Swarm: a
//! private dockerd of this test's own (`docker swarm init` on 127.0.0.1), pulling from a
//! real `berth serve` on loopback.
//!
//! One app of two services on an overlay network with a fixed subnet, taken through its
//! life: first deploy (replicas, CPU limit and reservation, a placement constraint on a node
//! label, host-mode ports, checked with `docker service inspect` and over HTTP), unchanged
//! re-run, an env change, a new image, a broken image whose healthcheck fails (non-zero exit,
//! Swarm rolls back, the old tasks keep serving), and `rollback --swarm`.
//!
//! Host-mode ports: the routing mesh (ingress) needs iptables and IPVS, which this private
//! daemon runs without so that it cannot disturb the machine's other daemons.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(180);

// Subnets picked to be unlikely on any real network and apart from the 172.31.x ones the
// other deploy tests use; the daemon and its swarm exist only for the test.
const FRONT_PREFIX: &str = "172.29.251";

/// `berth import` of the busybox rootfs with extra image config (`LABEL`, `ENV`); returns
/// the digest.
fn import_image(cli: &BerthCli, rootfs: &Path, reference: &str, changes: &[&str]) -> String {
    let mut c = cli.cmd(["import"]);
    c.arg(rootfs)
        .arg(reference)
        .args(["-c", "CMD [\"/bin/sh\"]"]);
    for change in changes {
        c.args(["-c", change]);
    }
    let out = run_ok(c, TIMEOUT);
    out.lines()
        .map(str::trim)
        .find(|line| line.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in berth import output:\n{out}"))
        .to_string()
}

fn app_file(app: &str, registry: &str, repository: &str, port: u16) -> String {
    // The healthcheck fails in an image whose config sets BROKEN: a "broken release".
    // Shells exit on SIGTERM so that replaced tasks stop at once.
    format!(
        r#"name: {app}
variables:
  registry: {registry}
  tag: v1
  mode: one
  web_replicas: 2
networks:
  front:
    subnet: {FRONT_PREFIX}.0/24
    gateway: {FRONT_PREFIX}.1
services:
  web:
    image: "{{{{ registry }}}}/{repository}:{{{{ tag }}}}"
    replicas: "{{{{ web_replicas }}}}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8000 -h /etc & wait"]
    env: {{ MODE: "{{{{ mode }}}}" }}
    labels: {{ team: front }}
    cpus: 0.5
    memory: 64m
    reservations: {{ cpus: 0.1, memory: 16m }}
    placement: {{ constraints: [node.labels.berth_zone==a] }}
    ports: [{{ target: 8000, mode: host }}]
    networks: {{ front: {{ aliases: [www] }} }}
    restart: on-failure:3
    healthcheck:
      test: [CMD-SHELL, 'test -z "$BROKEN" && /bin/busybox wget -q -O /dev/null http://127.0.0.1:8000/passwd']
      interval: 1s
      timeout: 2s
      retries: 2
  nodes:
    image: "{{{{ registry }}}}/{repository}:v1"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8000 -h /etc & wait"]
    ports: [{{ target: 8000, published: {port}, mode: host }}]
    networks: [front]
"#
    )
}

fn deploy(cli: &BerthCli, app: &Path, inventory: &Path, extra: &[&str]) -> CmdOutput {
    let mut c = cli.cmd(["deploy", "--swarm"]);
    c.arg(app).arg("-i").arg(inventory).args(extra);
    run(c, TIMEOUT)
}

fn ok(out: CmdOutput) -> String {
    assert!(out.status.success(), "expected success\n{}", out.describe());
    out.stdout
}

/// GET PATH on 127.0.0.1:PORT: the body, or "" when nothing answers.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes());
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

/// The service's running tasks: (image, host-mode published ports).
fn running_tasks(daemon: &SwarmDockerd, service: &str) -> Vec<(String, Vec<u16>)> {
    let ids = run_ok(
        daemon.docker([
            "service",
            "ps",
            "-q",
            "--filter",
            "desired-state=running",
            service,
        ]),
        TIMEOUT,
    );
    let mut tasks = Vec::new();
    for id in ids.split_whitespace() {
        let task = daemon.json(["inspect", id]);
        if task[0]["Status"]["State"] != "running" {
            continue;
        }
        let image = task[0]["Spec"]["ContainerSpec"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Docker lists a host-mode port once per address family: usually the same port twice.
        let mut ports: Vec<u16> = task[0]["Status"]["PortStatus"]["Ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .filter_map(|p| p["PublishedPort"].as_u64())
                    .filter_map(|p| u16::try_from(p).ok())
                    .collect()
            })
            .unwrap_or_default();
        ports.sort_unstable();
        ports.dedup();
        tasks.push((image, ports));
    }
    tasks
}

#[test]
fn swarm_deploy_rerun_update_failed_health_and_rollback() {
    // The docker CLI is only needed against this test's own daemon, so it is looked up on
    // PATH, not checked against DOCKER_HOST as require_tool("docker") would.
    if !require_tool("dockerd") || !require_tool("ip") {
        return;
    }
    if which("docker").is_none() {
        assert!(!in_ci(), "CI=true but the docker CLI is missing");
        eprintln!("SKIP: the docker CLI is missing");
        return;
    }
    let daemon = SwarmDockerd::start("172.29.250.0/24", "172.29.252.0/22");
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("bsw").replace('-', "_");
    let repository = format!("swarm-e2e/{}", app.replace('_', "-"));
    let registry = server.host();

    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let image = format!("{registry}/{repository}");
    let v1 = import_image(&cli, &rootfs, &format!("{image}:v1"), &["LABEL version=1"]);
    let v2 = import_image(&cli, &rootfs, &format!("{image}:v2"), &["LABEL version=2"]);
    let broken = import_image(
        &cli,
        &rootfs,
        &format!("{image}:broken"),
        &["LABEL version=broken", "ENV BROKEN=1"],
    );
    assert_ne!(v1, v2);

    // The placement constraint names a node label the test sets.
    let node = run_ok(daemon.docker(["node", "ls", "-q"]), TIMEOUT);
    run_ok(
        daemon.docker(["node", "update", "--label-add", "berth_zone=a", node.trim()]),
        TIMEOUT,
    );

    let port = free_port();
    let app_path = cli.path("app.yml");
    fs::write(&app_path, app_file(&app, &registry, &repository, port)).expect("write app");
    let inventory = cli.path("inventory");
    fs::create_dir_all(inventory.join("group_vars")).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  children:\n    managers:\n      hosts:\n        m1:\n          docker_host: \"{}\"\n",
            daemon.socket()
        ),
    )
    .expect("write hosts.yml");
    let set_vars = |vars: &str| {
        fs::write(inventory.join("group_vars/all.yml"), vars).expect("write group_vars")
    };
    set_vars("mode: one\n");
    let web = format!("{app}_web");
    let nodes = format!("{app}_nodes");
    let front = format!("{app}_front");

    // --- 1. first deploy: network and both services, converged ------------------------------
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(
        out.contains("m1 : ok=0 changed=3 unreachable=0 failed=0"),
        "{out}"
    );
    let service = daemon.json(["service", "inspect", &web]);
    let spec = &service[0]["Spec"];
    assert_eq!(spec["Mode"]["Replicated"]["Replicas"], 2, "{spec}");
    let task = &spec["TaskTemplate"];
    assert_eq!(task["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
    assert_eq!(task["Resources"]["Limits"]["MemoryBytes"], 64 << 20);
    assert_eq!(task["Resources"]["Reservations"]["NanoCPUs"], 100_000_000);
    assert_eq!(task["Resources"]["Reservations"]["MemoryBytes"], 16 << 20);
    assert_eq!(
        task["Placement"]["Constraints"][0],
        "node.labels.berth_zone==a"
    );
    assert_eq!(task["RestartPolicy"]["Condition"], "on-failure");
    assert_eq!(task["RestartPolicy"]["MaxAttempts"], 3);
    assert!(
        task["ContainerSpec"]["Env"]
            .as_array()
            .is_some_and(|env| env.iter().any(|e| e == "MODE=one")),
        "{task}"
    );
    assert_eq!(spec["Labels"]["berth.app"], app.as_str());
    assert_eq!(spec["Labels"]["team"], "front");
    // A deployment record names the Swarm services; the UI's image page shows them.
    assert!(out.contains("recorded the deployment of"), "{out}");
    if server.kind == ServerKind::Berth {
        let url = format!("{}/ui/r/{repository}/_/v1", server.url());
        let page = run_ok(cmd("busybox", ["wget", "-q", "-O", "-", &url]), TIMEOUT);
        assert!(page.contains("Running on"), "{page}");
        assert!(page.contains(&format!("service {web}")), "{page}");
    }
    assert_eq!(spec["UpdateConfig"]["Order"], "start-first");
    assert_eq!(spec["UpdateConfig"]["FailureAction"], "rollback");
    assert_eq!(spec["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
    let network = daemon.json(["network", "inspect", &front]);
    assert_eq!(network[0]["Driver"], "overlay");
    assert_eq!(network[0]["Attachable"], true);
    assert_eq!(
        network[0]["IPAM"]["Config"][0]["Subnet"],
        format!("{FRONT_PREFIX}.0/24")
    );
    assert_eq!(
        task["Networks"][0]["Target"], network[0]["Id"],
        "web is on the overlay network"
    );
    // Two tasks, pinned to v1, each serving on its own host-mode port.
    let tasks = running_tasks(&daemon, &web);
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    for (image, ports) in &tasks {
        assert!(image.ends_with(&format!(":v1@{v1}")), "not pinned: {image}");
        // One port per address family; dockerd 20.10 sometimes gives IPv4 and IPv6
        // different ones (seen in CI: [32769, 32770]). One of them answers on 127.0.0.1.
        assert!((1..=2).contains(&ports.len()), "{tasks:?}");
        assert!(
            ports
                .iter()
                .any(|p| http_get(*p, "/passwd").contains("root:")),
            "{tasks:?}"
        );
    }
    // nodes: the fixed host-mode port answers; updates of it are stop-first.
    assert!(http_get(port, "/passwd").contains("root:"));
    let nodes_spec = daemon.json(["service", "inspect", &nodes]);
    assert_eq!(nodes_spec[0]["Spec"]["UpdateConfig"]["Order"], "stop-first");

    // --- 2. unchanged re-run: nothing touched ------------------------------------------------
    let version = service[0]["Version"]["Index"].clone();
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(
        out.contains("m1 : ok=3 changed=0 unreachable=0 failed=0"),
        "{out}"
    );
    assert!(!out.contains("changed:"), "{out}");
    assert_eq!(
        daemon.json(["service", "inspect", &web])[0]["Version"]["Index"],
        version
    );
    let check = ok(deploy(&cli, &app_path, &inventory, &["--check", "--json"]));
    let report = parse_json(&check, "deploy --swarm --check --json");
    assert_eq!(report["mode"], "check");
    assert_eq!(report["hosts"][0]["changed"], 0, "{report}");
    assert_eq!(report["images"][format!("{image}:v1")], v1.as_str());
    assert_eq!(
        report["swarm_plan"]["unchanged"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );

    // --- 3. env change: web updated in place, nodes untouched ---------------------------------
    set_vars("mode: zebra\n");
    // The --json plan names the change but carries no env value.
    let check = ok(deploy(&cli, &app_path, &inventory, &["--check", "--json"]));
    assert!(!check.contains("zebra"), "{check}");
    let report = parse_json(&check, "deploy --swarm --check --json");
    let action = &report["swarm_plan"]["actions"][0];
    assert_eq!(action["action"], "update_service", "{report}");
    assert_eq!(action["service"]["spec"]["env"]["MODE"], "***", "{report}");
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(
        out.contains(&format!("update service {web} (start-first)")),
        "{out}"
    );
    assert!(out.contains("env MODE changed"), "{out}");
    assert!(
        !out.contains("zebra"),
        "env values are never printed: {out}"
    );
    assert!(
        out.contains("m1 : ok=2 changed=1 unreachable=0 failed=0"),
        "{out}"
    );
    let env = daemon.json(["service", "inspect", &web])[0]["Spec"]["TaskTemplate"]["ContainerSpec"]
        ["Env"]
        .clone();
    assert_eq!(env, serde_json::json!(["MODE=zebra"]));

    // --- 4. a new image ----------------------------------------------------------------------
    set_vars("mode: zebra\ntag: v2\n");
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(out.contains(&format!("image_digest {v1} → {v2}")), "{out}");
    let tasks = running_tasks(&daemon, &web);
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(tasks.iter().all(|(i, _)| i.ends_with(&format!(":v2@{v2}"))));
    // v1's page no longer names web (the run recorded it replaced there); nodes still runs v1.
    if server.kind == ServerKind::Berth {
        let page = |tag: &str| {
            let url = format!("{}/ui/r/{repository}/_/{tag}", server.url());
            run_ok(cmd("busybox", ["wget", "-q", "-O", "-", &url]), TIMEOUT)
        };
        let (v1_page, v2_page) = (page("v1"), page("v2"));
        assert!(!v1_page.contains(&format!("service {web}")), "{v1_page}");
        assert!(v1_page.contains(&format!("service {nodes}")), "{v1_page}");
        assert!(v2_page.contains(&format!("service {web}")), "{v2_page}");
    }

    // --- 5. a broken image: health fails, non-zero exit, v2 keeps serving ---------------------
    set_vars("mode: zebra\ntag: broken\n");
    let out = deploy(&cli, &app_path, &inventory, &["--health-timeout", "60s"]);
    assert!(!out.status.success(), "{}", out.describe());
    eprintln!("broken release:\n{}", out.stdout);
    eprintln!(
        "{}",
        run(
            daemon.docker(["service", "ps", "--no-trunc", &web]),
            TIMEOUT
        )
        .stdout
    );
    assert!(
        out.stdout
            .contains("m1 : ok=2 changed=0 unreachable=0 failed=1"),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("rolled back"), "{}", out.describe());
    let tasks = running_tasks(&daemon, &web);
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    for (image, ports) in &tasks {
        assert!(image.ends_with(&format!(":v2@{v2}")), "{image}");
        assert!(!image.contains(&broken));
        assert!(
            ports
                .iter()
                .any(|p| http_get(*p, "/passwd").contains("root:")),
            "{tasks:?}"
        );
    }

    // --- 6. rollback --swarm: back to the release before v2 (v1, MODE=zebra) ------------------
    let mut c = cli.cmd(["rollback", "--swarm"]);
    c.arg(&app_path).arg("-i").arg(&inventory);
    let out = ok(run(c, TIMEOUT));
    assert!(out.contains(&format!("update service {web}")), "{out}");
    assert!(
        out.contains(&format!("{nodes}: no previous release kept")),
        "{out}"
    );
    let tasks = running_tasks(&daemon, &web);
    assert_eq!(tasks.len(), 2, "{tasks:?}");
    assert!(
        tasks.iter().all(|(i, _)| i.ends_with(&format!(":v1@{v1}"))),
        "{tasks:?}"
    );
    // A deploy now sees the difference from the app file again (v2 → image moves back).
    let out = ok(deploy(&cli, &app_path, &inventory, &["--check"]));
    assert!(
        out.contains(&format!("  update   service {web} (start-first)")),
        "{out}"
    );

    // --- 6b. scale web to 3 (its tasks are kept, one added) and drop nodes (removed) --------
    let task_ids = |service: &str| -> Vec<String> {
        let out = run_ok(
            daemon.docker([
                "service",
                "ps",
                "-q",
                "--filter",
                "desired-state=running",
                service,
            ]),
            TIMEOUT,
        );
        out.split_whitespace().map(str::to_string).collect()
    };
    let before = task_ids(&web);
    set_vars("mode: zebra\ntag: v1\nweb_replicas: 3\n");
    let text = fs::read_to_string(&app_path).expect("read app");
    let without_nodes = &text[..text.find("  nodes:").expect("nodes in the app file")];
    fs::write(&app_path, without_nodes).expect("write app");
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(out.contains("replicas 2 → 3"), "{out}");
    assert!(out.contains(&format!("remove service {nodes}")), "{out}");
    assert!(
        out.contains("m1 : ok=1 changed=2 unreachable=0 failed=0"),
        "{out}"
    );
    let after = task_ids(&web);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(
        before.iter().all(|id| after.contains(id)),
        "scaling restarted tasks: {before:?} → {after:?}"
    );
    assert!(!run(daemon.docker(["service", "inspect", &nodes]), TIMEOUT)
        .status
        .success());

    // --- 7. ship --swarm: a second app built from a context, pushed, deployed by digest ------
    // (On a network: this daemon has no default bridge, which tasks without one would use.)
    let site_app = format!("{app}_site");
    let context = cli.path("site");
    fs::create_dir_all(&context).expect("mkdir context");
    fs::write(context.join("index.html"), "shipped to the swarm\n").expect("write page");
    fs::write(
        context.join("Dockerfile"),
        format!("FROM {image}:v1\nCOPY index.html /www/index.html\n"),
    )
    .expect("write Dockerfile");
    let site_port = free_port();
    let site_path = cli.path("site.yml");
    fs::write(
        &site_path,
        format!(
            r#"name: {site_app}
networks:
  net: {{ subnet: 172.29.249.0/24 }}
services:
  site:
    image: "{image}-site:v1"
    build: ./site
    command: [/bin/sh, -c, "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8000 -h /www & wait"]
    ports: [{{ target: 8000, published: {site_port}, mode: host }}]
    networks: [net]
    healthcheck: {{ test: [CMD, /bin/busybox, wget, -q, -O, /dev/null, "http://127.0.0.1:8000/index.html"], interval: 1s, retries: 30 }}
"#
        ),
    )
    .expect("write site app");
    let mut c = cli.cmd(["ship", "--swarm"]);
    c.arg(&site_path)
        .arg("-i")
        .arg(&inventory)
        .args(["--json", "--health-timeout", "60s"]);
    let out = run(c, TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let report = parse_json(&out.stdout, "ship --swarm --json");
    let digest = report["builds"][0]["digest"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{report}");
    assert_eq!(report["hosts"][0]["changed"], 2, "{report}");
    let tasks = running_tasks(&daemon, &format!("{site_app}_site"));
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert!(tasks[0].0.ends_with(&format!(":v1@{digest}")), "{tasks:?}");
    let page = http_get(site_port, "/index.html");
    assert!(
        page.contains("shipped to the swarm"),
        "{site_port}: {page:?} {tasks:?}"
    );

    // --- 7b. a tag the registry lacks: pinned, refused before the swarm is touched; with
    // --no-pin, the node's pulls are rejected, the deploy fails and the new service goes ---
    let ghost_app = format!("{app}_ghost");
    let ghost_path = cli.path("ghost.yml");
    fs::write(
        &ghost_path,
        format!("name: {ghost_app}\nservices:\n  ghost: {{ image: \"{image}:missing\" }}\n"),
    )
    .expect("write ghost app");
    let out = deploy(&cli, &ghost_path, &inventory, &[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains(&format!("cannot resolve image {image}:missing")),
        "{}",
        out.describe()
    );
    let out = deploy(&cli, &ghost_path, &inventory, &["--no-pin"]);
    assert!(!out.status.success(), "{}", out.describe());
    eprintln!("missing tag, --no-pin:\n{}", out.stdout);
    assert!(out.stdout.contains("rejected"), "{}", out.describe());
    assert!(out.stdout.contains("removed it"), "{}", out.describe());
    assert!(
        !run(
            daemon.docker(["service", "inspect", &format!("{ghost_app}_ghost")]),
            TIMEOUT
        )
        .status
        .success(),
        "the service that never ran was left behind"
    );

    // --- 8. a daemon that is no swarm manager is refused with a reason -----------------------
    run_ok(daemon.docker(["swarm", "leave", "--force"]), TIMEOUT);
    let out = deploy(&cli, &app_path, &inventory, &[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("is not part of an active swarm"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("unreachable=0 failed=1"),
        "{}",
        out.describe()
    );
    drop(server);
    drop(daemon);
}
