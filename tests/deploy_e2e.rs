//! `berth deploy` and `berth rollback` against a real Docker daemon (the one `DOCKER_HOST`
//! names; scripts/test.sh starts a private one), pulling from a real `berth serve`.
//!
//! One app of two services on two bridge networks with fixed subnets (one with a custom
//! gateway), as in the write-up Berth grew from, taken through its life: first deploy,
//! unchanged re-run, an env change, a rollout whose healthcheck fails, a new image, a
//! rollback, and a plan with a host that cannot be reached. Everything the test creates
//! (containers, networks, images) is removed by a guard, also when it fails.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(300);

// Subnets picked to be unlikely on any real network; the test owns them while it runs.
const FRONT_PREFIX: &str = "172.31.240";
const BACK_PREFIX: &str = "172.31.241";

fn app_file(app: &str, registry: &str, repository: &str, web_port: u16) -> String {
    // Shells that exit on SIGTERM, so stop-first replacements do not wait 10 s for a kill.
    format!(
        r#"name: {app}
variables:
  registry: {registry}
  tag: v1
  mode: one
  health_path: /passwd
networks:
  front:
    subnet: {FRONT_PREFIX}.0/24
    gateway: {FRONT_PREFIX}.100
  back:
    subnet: {BACK_PREFIX}.0/24
services:
  web:
    image: "{{{{ registry }}}}/{repository}:{{{{ tag }}}}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8000 -h /etc & wait"]
    env: {{ MODE: "{{{{ mode }}}}", SERVICE: web }}
    labels: {{ team: front }}
    ports: ["127.0.0.1:{web_port}:8000"]
    networks:
      front: {{ ipv4_address: {FRONT_PREFIX}.10 }}
    restart: unless-stopped
    cpus: 0.5
    memory: 64m
    healthcheck:
      test: [CMD, /bin/busybox, wget, -q, -O, /dev/null, "http://127.0.0.1:8000{{{{ health_path }}}}"]
      interval: 1s
      timeout: 2s
      retries: 2
  nodes:
    image: "{{{{ registry }}}}/{repository}:{{{{ tag }}}}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done"]
    env: {{ ROLE: nodes }}
    networks:
      front: {{ ipv4_address: {FRONT_PREFIX}.2 }}
      back: {{ ipv4_address: {BACK_PREFIX}.2 }}
    restart: unless-stopped
  worker:
    image: "{{{{ registry }}}}/{repository}:{{{{ tag }}}}"
    replicas: 2
    command: [/bin/sh, -c, "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done"]
    env: {{ MODE: "{{{{ mode }}}}" }}
    networks: [back]
"#
    )
}

/// Writes the inventory's `group_vars/all.yml` (the knobs each step turns).
fn set_vars(inventory: &Path, vars: &str) {
    fs::write(inventory.join("group_vars/all.yml"), vars).expect("write group_vars/all.yml");
}

/// `inspect` once dockerd's own healthcheck has a verdict: Berth's early check makes a
/// deploy return before dockerd ran its first one (up to an `interval` later).
fn inspect_checked(name: &str) -> serde_json::Value {
    for _ in 0..150 {
        let container = inspect(name);
        if container["State"]["Health"]["Status"] != "starting" {
            return container;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    inspect(name)
}

fn container_id(name: &str) -> Option<String> {
    let out = run(
        cmd("docker", ["inspect", "--format", "{{.Id}}", name]),
        TIMEOUT,
    );
    out.status.success().then(|| out.stdout.trim().to_string())
}

fn address(container: &serde_json::Value, network: &str) -> String {
    container["NetworkSettings"]["Networks"][network]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn deploy(cli: &BerthCli, app_file: &Path, inventory: &Path, extra: &[&str]) -> CmdOutput {
    let mut c = cli.cmd(["deploy"]);
    c.arg(app_file).arg("-i").arg(inventory).args(extra);
    run(c, TIMEOUT)
}

fn rollback(cli: &BerthCli, app_file: &Path, inventory: &Path) -> CmdOutput {
    let mut c = cli.cmd(["rollback"]);
    c.arg(app_file).arg("-i").arg(inventory);
    run(c, TIMEOUT)
}

/// GET over plain HTTP with busybox's wget (the test needs busybox already).
fn fetch(url: &str) -> String {
    run_ok(cmd("busybox", ["wget", "-q", "-O", "-", url]), TIMEOUT)
}

/// The deployment records (referrers API) of `repository@digest`.
fn deployment_records(server: &Server, repository: &str, digest: &str) -> Vec<serde_json::Value> {
    let url = format!(
        "{}/v2/{repository}/referrers/{digest}?artifactType=application/vnd.berth.deployment.v1%2Bjson",
        server.url()
    );
    let index = parse_json(&fetch(&url), "referrers");
    index["manifests"].as_array().cloned().unwrap_or_default()
}

/// The "Running on" section of the UI's image page, or "" when it has none.
fn running_on(server: &Server, repository: &str, reference: &str) -> String {
    let page = fetch(&format!("{}/ui/r/{repository}/_/{reference}", server.url()));
    let Some(start) = page.find("Running on") else {
        return String::new();
    };
    let end = page[start..]
        .find("</section>")
        .map_or(page.len(), |e| start + e);
    page[start..end].to_string()
}

#[test]
fn deploy_rerun_change_failed_health_and_rollback() {
    if !require_tool("docker") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("be2e").replace('-', "_");
    let repository = format!("deploy-e2e/{}", app.replace('_', "-"));
    let registry = server.host();
    let _cleanup = DockerCleanup::app(&app, vec![format!("{registry}/{repository}")]);

    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let v1 = import_image(&cli, &rootfs, &format!("{registry}/{repository}:v1"), "1");
    let v2 = import_image(&cli, &rootfs, &format!("{registry}/{repository}:v2"), "2");
    assert_ne!(v1, v2);

    let web_port = free_port();
    let app_path = cli.path("app.yml");
    fs::write(&app_path, app_file(&app, &registry, &repository, web_port)).expect("write app");
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
    set_vars(&inventory, "mode: one\n");
    let web = format!("{app}_web_1");
    let nodes = format!("{app}_nodes_1");
    let worker1 = format!("{app}_worker_1");
    let worker2 = format!("{app}_worker_2");
    let front = format!("{app}_front");
    let back = format!("{app}_back");

    // --- 1. first deploy: everything created, as specified ----------------------------------
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(
        out.contains("local : ok=0 changed=7 unreachable=0 failed=0"),
        "{out}"
    );
    let w = inspect_checked(&web);
    let n = inspect(&nodes);
    assert_eq!(w["State"]["Health"]["Status"], "healthy", "{w}");
    assert_eq!(address(&w, &front), format!("{FRONT_PREFIX}.10"));
    assert_eq!(address(&n, &front), format!("{FRONT_PREFIX}.2"));
    assert_eq!(address(&n, &back), format!("{BACK_PREFIX}.2"));
    assert!(env_of(&w).contains(&"MODE=one".to_string()), "{w}");
    assert!(env_of(&n).contains(&"ROLE=nodes".to_string()), "{n}");
    assert_eq!(w["Config"]["Labels"]["berth.app"], app.as_str());
    assert_eq!(w["Config"]["Labels"]["berth.service"], "web");
    assert_eq!(w["Config"]["Labels"]["team"], "front");
    // Pinned: both run the digest the tag had at deploy time.
    for c in [&w, &n] {
        let image = c["Config"]["Image"].as_str().unwrap_or_default();
        assert!(
            image.ends_with(&format!("@{v1}")),
            "not pinned to {v1}: {image}"
        );
    }
    assert_eq!(w["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(w["HostConfig"]["Memory"], 64 << 20);
    assert_eq!(w["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(
        w["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostIp"],
        "127.0.0.1"
    );
    let network = parse_json(
        &run_ok(cmd("docker", ["network", "inspect", &front]), TIMEOUT),
        "network inspect",
    );
    assert_eq!(
        network[0]["IPAM"]["Config"][0]["Gateway"],
        format!("{FRONT_PREFIX}.100")
    );
    assert_eq!(
        network[0]["IPAM"]["Config"][0]["Subnet"],
        format!("{FRONT_PREFIX}.0/24")
    );
    // The published port answers (docker-proxy on 127.0.0.1).
    let body = run_ok(
        cmd(
            "busybox",
            [
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://127.0.0.1:{web_port}/passwd"),
            ],
        ),
        TIMEOUT,
    );
    assert!(body.starts_with("root:"), "{body}");
    // A deployment record refers to v1, and the UI's image page says where it runs.
    let records = deployment_records(&server, &repository, &v1);
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(out.contains("recorded the deployment of"), "{out}");
    if server.kind == ServerKind::Berth {
        let running = running_on(&server, &repository, "v1");
        assert!(running.contains("<strong>local</strong>"), "{running}");
        assert!(
            running.contains(&format!("({app}, inventory, deployed ")),
            "{running}"
        );
    }

    // --- 2. unchanged re-run: all ok, nothing touched, nothing recorded with --no-record -----
    let ids = (container_id(&web), container_id(&nodes));
    let out = ok(deploy(&cli, &app_path, &inventory, &["--no-record"]));
    assert_eq!(deployment_records(&server, &repository, &v1).len(), 1);
    assert!(
        out.contains("local : ok=6 changed=0 unreachable=0 failed=0"),
        "{out}"
    );
    assert!(!out.contains("changed:"), "{out}");
    assert_eq!((container_id(&web), container_id(&nodes)), ids);
    let check = ok(deploy(&cli, &app_path, &inventory, &["--check", "--json"]));
    let report = parse_json(&check, "deploy --check --json");
    assert_eq!(report["mode"], "check");
    assert_eq!(report["hosts"][0]["changed"], 0, "{report}");
    assert_eq!(
        report["images"][format!("{registry}/{repository}:v1")],
        v1.as_str()
    );

    // --- 3. an env change replaces exactly that service ---------------------------------------
    set_vars(&inventory, "mode: zebra42\n");
    let check = ok(deploy(&cli, &app_path, &inventory, &["--check", "--json"]));
    assert!(check.contains("\"MODE\": \"***\""), "{check}");
    assert!(
        !check.contains("zebra42"),
        "env values must not be in --json: {check}"
    );
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(out.contains(&format!("replace  container {web}")), "{out}");
    assert!(out.contains("env MODE changed"), "{out}");
    assert!(
        !out.contains("zebra42"),
        "env values must not be printed: {out}"
    );
    assert!(
        out.contains("local : ok=3 changed=3 unreachable=0 failed=0"),
        "{out}"
    );
    assert_ne!(container_id(&web), ids.0);
    assert_eq!(container_id(&nodes), ids.1);
    // Replicas without published ports or fixed addresses go start-first: the new one runs
    // next to the old one under a temporary name, then takes over the name.
    for replica in [&worker1, &worker2] {
        assert!(
            out.contains(&format!("replace  container {replica} (start-first)")),
            "{out}"
        );
        assert!(env_of(&inspect(replica)).contains(&"MODE=zebra42".to_string()));
        assert_eq!(inspect(replica)["State"]["Running"], true);
        assert!(container_id(&format!("{replica}-prev")).is_some());
        assert!(container_id(&format!("{replica}-next")).is_none());
    }
    assert!(env_of(&inspect(&web)).contains(&"MODE=zebra42".to_string()));
    // The replaced one is kept, stopped, never restarted by the daemon.
    let kept = inspect(&format!("{web}-prev"));
    assert_eq!(kept["Id"].as_str(), ids.0.as_deref());
    assert_eq!(kept["State"]["Running"], false);
    assert_eq!(kept["HostConfig"]["RestartPolicy"]["Name"], "no");

    // --- 4. a rollout whose healthcheck fails is rolled back, exit non-zero -------------------
    let healthy_web = container_id(&web);
    set_vars(&inventory, "mode: zebra42\nhealth_path: /missing\n");
    let out = deploy(&cli, &app_path, &inventory, &[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("unhealthy"), "{}", out.describe());
    assert!(out.stdout.contains("failed=1"), "{}", out.describe());
    assert!(
        out.stderr
            .contains("deploy failed on 1 of 1 host(s): local"),
        "{}",
        out.describe()
    );
    assert_eq!(
        container_id(&web),
        healthy_web,
        "the previous container must be back"
    );
    let back_again = inspect(&web);
    assert_eq!(back_again["State"]["Running"], true);
    assert_eq!(
        back_again["HostConfig"]["RestartPolicy"]["Name"],
        "unless-stopped"
    );
    assert_eq!(
        container_id(&format!("{web}-prev")),
        ids.0,
        "the older rollback target must survive a failed rollout"
    );
    // The failed rollout was rolled back: v1 still runs on local, and the page says so.
    if server.kind == ServerKind::Berth {
        let running = running_on(&server, &repository, "v1");
        assert!(running.contains("<strong>local</strong>"), "{running}");
    }

    // --- 5. a new image replaces both; rollback returns to the previous one -------------------
    set_vars(&inventory, "mode: zebra42\ntag: v2\n");
    let before = [&web, &nodes, &worker1, &worker2].map(|name| container_id(name));
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(out.contains("local : ok=2 changed=5"), "{out}");
    for name in [&web, &nodes, &worker1, &worker2] {
        let image = inspect(name)["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(image.ends_with(&format!("@{v2}")), "{name} runs {image}");
    }
    // v2 runs on local now; v1's newest record says it was replaced there.
    assert_eq!(deployment_records(&server, &repository, &v2).len(), 1);
    if server.kind == ServerKind::Berth {
        assert!(running_on(&server, &repository, "v2").contains("<strong>local</strong>"));
        let v1_page = running_on(&server, &repository, &v1);
        assert!(v1_page.is_empty(), "v1 was replaced: {v1_page}");
    }
    let records_before = [&v1, &v2].map(|d| deployment_records(&server, &repository, d).len());
    let out = ok(rollback(&cli, &app_path, &inventory));
    assert!(out.contains(&format!("rollback container {web}")), "{out}");
    assert_eq!(
        [&web, &nodes, &worker1, &worker2].map(|name| container_id(name)),
        before
    );
    for name in [&web, &nodes, &worker1, &worker2] {
        let c = inspect(name);
        let image = c["Config"]["Image"].as_str().unwrap_or_default();
        assert!(
            image.ends_with(&format!("@{v1}")),
            "{name} runs {image} after rollback"
        );
        assert_eq!(c["State"]["Running"], true);
    }
    assert_eq!(
        inspect_checked(&web)["State"]["Health"]["Status"],
        "healthy"
    );
    // The rollback is recorded too: v1 runs on local again, v2 was replaced there.
    assert!(out.contains("recorded the deployment of"), "{out}");
    assert_eq!(
        [&v1, &v2].map(|d| deployment_records(&server, &repository, d).len()),
        records_before.map(|n| n + 1),
        "one record more on each"
    );
    if server.kind == ServerKind::Berth {
        assert!(running_on(&server, &repository, &v1).contains("<strong>local</strong>"));
        let v2_page = running_on(&server, &repository, "v2");
        assert!(v2_page.is_empty(), "v2 was rolled back: {v2_page}");
    }
    // The app file still says v2: the next deploy plans to go forward again.
    let check = ok(deploy(&cli, &app_path, &inventory, &["--check"]));
    assert!(check.contains("local : ok=2 changed=4"), "{check}");

    // --- 6. an unreachable host is named; the reachable one is still planned ------------------
    let ghost = cli.path("ghost.sock");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  hosts:\n    local:\n      docker_host: \"{}\"\n    ghost:\n      docker_host: \"unix://{}\"\n",
            docker_host(),
            ghost.display()
        ),
    )
    .expect("write hosts.yml");
    let out = deploy(&cli, &app_path, &inventory, &["--check"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("UNREACHABLE ghost"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("ghost : ok=0 changed=0 unreachable=1"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("local : ok=2 changed=4"),
        "{}",
        out.describe()
    );
}

/// The origin example in `examples/` plans cleanly against a real daemon: its testing
/// inventory is pointed at the daemon under test and the plan is checked (nothing applied).
#[test]
fn origin_example_plans_against_a_real_daemon() {
    if !require_tool("docker") {
        return;
    }
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/origin");
    let cli = BerthCli::new();
    // A copy of the testing inventory whose hosts all talk to the daemon under test.
    let inventory = cli.path("testing");
    copy_dir(&examples.join("testing"), &inventory);
    let mut vars = fs::read_to_string(inventory.join("group_vars/all.yml")).expect("read vars");
    vars.push_str(&format!("docker_host: \"{}\"\n", docker_host()));
    fs::write(inventory.join("group_vars/all.yml"), vars).expect("write vars");

    let mut c = cli.cmd(["deploy"]);
    c.arg(examples.join("app.yml"))
        .arg("-i")
        .arg(&inventory)
        .args(["--check", "--json", "--no-pin"]);
    let out = run(c, TIMEOUT);
    let report = parse_json(&out.stdout, "deploy --check --json");
    assert!(out.status.success(), "{}", out.describe());
    let hosts = report["hosts"].as_array().expect("hosts");
    assert!(!hosts.is_empty());
    for host in hosts {
        let actions: Vec<String> = host["plan"]["actions"]
            .as_array()
            .expect("actions")
            .iter()
            .map(|a| a["action"].as_str().unwrap_or_default().to_string())
            .collect();
        assert!(actions.iter().any(|a| a == "create_network"), "{host}");
        assert!(actions.iter().any(|a| a == "create_container"), "{host}");
        assert_eq!(host["failed"], 0, "{host}");
    }
}

/// A private dockerd of this test's own, listening on a unix socket and on
/// `tcp://127.0.0.1:PORT` with TLS client-certificate verification. Stopped by PID and its
/// directories removed when dropped.
struct TlsDockerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
    port: u16,
}

impl TlsDockerd {
    fn start() -> TlsDockerd {
        let dir = tempfile::Builder::new()
            .prefix("bdtls")
            .tempdir()
            .expect("temp dir");
        let certs = dir.path().join("certs");
        fs::create_dir_all(&certs).expect("mkdir certs");
        make_certificates(&certs);
        let port = free_port();
        let log = fs::File::create(dir.path().join("dockerd.log")).expect("dockerd log");
        let err = log.try_clone().expect("dockerd log");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let child = std::process::Command::new("dockerd")
            .args(["--data-root", &path("data")])
            .args(["--exec-root", &path("exec")])
            .args(["--pidfile", &path("dockerd.pid")])
            .args(["-H", &format!("unix://{}", path("docker.sock"))])
            .args(["-H", &format!("tcp://127.0.0.1:{port}")])
            .args(["--tlsverify", "--tlscacert", &path("certs/ca.pem")])
            .args(["--tlscert", &path("certs/server-cert.pem")])
            .args(["--tlskey", &path("certs/server-key.pem")])
            .args([
                "--storage-driver",
                "overlay2",
                "--bridge",
                "none",
                "--iptables=false",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start dockerd");
        let socket = format!("unix://{}", path("docker.sock"));
        let daemon = TlsDockerd { dir, child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let out = run(
                cmd(
                    "docker",
                    ["-H", &socket, "version", "--format", "{{.Server.Version}}"],
                ),
                TIMEOUT,
            );
            if out.status.success() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd with TLS did not start:\n{}",
                fs::read_to_string(daemon.dir.path().join("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// `docker -H unix://… ARGS` against this daemon.
    fn docker<const N: usize>(&self, args: [&str; N]) -> std::process::Command {
        let socket = format!("unix://{}", self.dir.path().join("docker.sock").display());
        let mut c = cmd("docker", ["-H", socket.as_str()]);
        c.args(args);
        c
    }
}

impl Drop for TlsDockerd {
    fn drop(&mut self) {
        // Containers and networks first: a stopped dockerd leaves its bridges behind.
        let ids = run(self.docker(["ps", "-aq"]), TIMEOUT);
        for id in ids.stdout.split_whitespace() {
            let _ = run(self.docker(["rm", "-f", id]), TIMEOUT);
        }
        let _ = run(self.docker(["network", "prune", "-f"]), TIMEOUT);
        terminate_child(&mut self.child, Duration::from_secs(30));
        // Anything dockerd left mounted below its directories goes before they are removed.
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = fs::read_to_string("/proc/mounts") {
            let mut below: Vec<&str> = mounts
                .lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .filter(|point| point.starts_with(&root))
                .collect();
            below.sort_by(|a, b| b.cmp(a));
            for point in below {
                let _ = run(cmd("umount", ["-l", point]), TIMEOUT);
            }
        }
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate (`ca.pem`, `cert.pem`,
/// `key.pem`: Docker's `DOCKER_CERT_PATH` layout), plus a client certificate from another CA
/// (`other/`), with the openssl CLI.
fn make_certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let mut c = cmd("openssl", args);
        c.current_dir(dir);
        run_ok(c, TIMEOUT);
    };
    fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write client.ext");
    fs::create_dir_all(dir.join("other")).expect("mkdir other");
    for (ca, out) in [("ca", ""), ("other/ca", "other/")] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{ca}-key.pem"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            "/CN=berth-test-ca",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{out}key.pem"),
            "-out",
            &format!("{out}client.csr"),
            "-subj",
            "/CN=berth-deploy",
        ]);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{out}client.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}-key.pem"),
            "-CAcreateserial",
            "-out",
            &format!("{out}cert.pem"),
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ]);
    }
    fs::copy(dir.join("ca.pem"), dir.join("other/ca.pem")).expect("copy ca");
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server-key.pem",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        "server-cert.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
}

/// `tcp://` with TLS client certificates: the host with the right certificates is read and
/// planned; one without TLS and one whose client certificate another CA signed are
/// unreachable, each with the daemon's or the TLS layer's reason.
#[test]
fn tcp_with_tls_client_certificates() {
    if !require_tool("docker") || !require_tool("dockerd") || !require_tool("openssl") {
        return;
    }
    let daemon = TlsDockerd::start();
    let cli = BerthCli::new();
    let certs = daemon.certs();
    let port = daemon.port;
    let inventory = cli.path("inventory");
    fs::create_dir_all(&inventory).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  vars:\n    docker_host: tcp://127.0.0.1:{port}\n  hosts:\n    \
             good:\n      docker_cert_path: {certs}\n    \
             plain:\n    \
             stranger:\n      docker_cert_path: {certs}/other\n",
            certs = certs.display()
        ),
    )
    .expect("write hosts.yml");
    let app = cli.path("app.yml");
    fs::write(
        &app,
        "name: tlsapp\nnetworks:\n  net: { subnet: 172.31.244.0/24 }\nservices:\n  \
         one: { image: '127.0.0.1:9/none:v1', networks: { net: { ipv4_address: 172.31.244.5 } } }\n",
    )
    .expect("write app");
    let mut c = cli.cmd(["deploy"]);
    c.arg(&app)
        .arg("-i")
        .arg(&inventory)
        .args(["--check", "--no-pin"]);
    let out = run(c, TIMEOUT);
    assert!(!out.status.success(), "{}", out.describe());
    let text = &out.stdout;
    assert!(
        text.contains("good     : ok=0 changed=3 unreachable=0 failed=0"),
        "{}",
        out.describe()
    );
    assert!(
        text.contains("create   network tlsapp_net"),
        "{}",
        out.describe()
    );
    assert!(
        text.contains("plain    : ok=0 changed=0 unreachable=1"),
        "{}",
        out.describe()
    );
    assert!(
        text.contains("HTTP request to an HTTPS server"),
        "{}",
        out.describe()
    );
    assert!(
        text.contains("stranger : ok=0 changed=0 unreachable=1"),
        "{}",
        out.describe()
    );
    assert!(text.contains("UNREACHABLE stranger"), "{}", out.describe());
}

/// Two hosts deployed in parallel: the daemon under test over its unix socket and a daemon
/// of the test's own over TLS, each with its own subnet from `host_vars`. Changing one
/// host's variable changes only that host.
#[test]
fn two_hosts_in_parallel_with_per_host_variables() {
    if !require_tool("docker") || !require_tool("dockerd") || !require_tool("openssl") {
        return;
    }
    let daemon = TlsDockerd::start();
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("b2h").replace('-', "_");
    let repository = format!("deploy-e2e/{}", app.replace('_', "-"));
    let registry = server.host();
    let _cleanup = DockerCleanup::app(&app, vec![format!("{registry}/{repository}")]);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let v1 = import_image(&cli, &rootfs, &format!("{registry}/{repository}:v1"), "1");

    let inventory = cli.path("inventory");
    fs::create_dir_all(inventory.join("host_vars")).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  vars:\n    mode: one\n  children:\n    back:\n      hosts:\n        \
             alpha:\n          docker_host: \"{}\"\n        \
             beta:\n          docker_host: tcp://127.0.0.1:{}\n          docker_cert_path: {}\n",
            docker_host(),
            daemon.port,
            daemon.certs().display()
        ),
    )
    .expect("write hosts.yml");
    fs::write(
        inventory.join("host_vars/alpha.yml"),
        "prefix: \"172.31.245\"\n",
    )
    .expect("vars");
    fs::write(
        inventory.join("host_vars/beta.yml"),
        "prefix: \"172.31.246\"\n",
    )
    .expect("vars");
    let app_path = cli.path("app.yml");
    fs::write(
        &app_path,
        format!(
            r#"name: {app}
variables:
  gateway: 254
networks:
  net:
    subnet: "{{{{ prefix }}}}.0/24"
    gateway: "{{{{ prefix }}}}.{{{{ gateway }}}}"
services:
  svc:
    image: "{registry}/{repository}:v1"
    hosts: back
    command: [/bin/sh, -c, "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done"]
    env: {{ MODE: "{{{{ mode }}}}", HOST: "{{{{ inventory_hostname }}}}" }}
    networks:
      net: {{ ipv4_address: "{{{{ prefix }}}}.7" }}
"#
        ),
    )
    .expect("write app");
    let container = format!("{app}_svc_1");
    let network = format!("{app}_net");

    let out = ok(deploy(&cli, &app_path, &inventory, &["--parallel", "2"]));
    assert!(out.contains("alpha : ok=0 changed=3"), "{out}");
    assert!(out.contains("beta  : ok=0 changed=3"), "{out}");
    let on_alpha = inspect(&container);
    let on_beta = parse_json(
        &run_ok(daemon.docker(["inspect", &container]), TIMEOUT),
        "inspect on beta",
    )[0]
    .clone();
    assert_eq!(address(&on_alpha, &network), "172.31.245.7");
    assert_eq!(address(&on_beta, &network), "172.31.246.7");
    assert_eq!(
        on_alpha["NetworkSettings"]["Networks"][&network]["Gateway"],
        "172.31.245.254"
    );
    assert_eq!(
        on_beta["NetworkSettings"]["Networks"][&network]["Gateway"],
        "172.31.246.254"
    );
    assert!(env_of(&on_alpha).contains(&"HOST=alpha".to_string()));
    assert!(env_of(&on_beta).contains(&"HOST=beta".to_string()));
    for c in [&on_alpha, &on_beta] {
        let image = c["Config"]["Image"].as_str().unwrap_or_default();
        assert!(image.ends_with(&format!("@{v1}")), "{image}");
    }

    // One host's variable changes: only that host changes.
    fs::write(
        inventory.join("host_vars/beta.yml"),
        "prefix: \"172.31.246\"\nmode: two\n",
    )
    .expect("vars");
    let alpha_id = on_alpha["Id"].clone();
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    assert!(out.contains("alpha : ok=2 changed=0"), "{out}");
    assert!(out.contains("beta  : ok=1 changed=1"), "{out}");
    assert_eq!(inspect(&container)["Id"], alpha_id);

    // A new gateway on beta recreates its network (the container leaves it, stop-first);
    // rolling beta back brings the old container back onto the recreated network.
    fs::write(
        inventory.join("host_vars/beta.yml"),
        "prefix: \"172.31.246\"\nmode: two\ngateway: 253\n",
    )
    .expect("vars");
    let before = parse_json(
        &run_ok(daemon.docker(["inspect", &container]), TIMEOUT),
        "inspect on beta",
    )[0]["Id"]
        .clone();
    let out = ok(deploy(&cli, &app_path, &inventory, &["--limit", "beta"]));
    assert!(
        out.contains(&format!("recreate network {network}")),
        "{out}"
    );
    assert!(out.contains("beta : ok=0 changed=2"), "{out}");
    assert!(!out.contains("alpha"), "--limit beta touched alpha: {out}");
    let mut c = cli.cmd(["rollback"]);
    c.arg(&app_path)
        .arg("-i")
        .arg(&inventory)
        .args(["--limit", "beta"]);
    ok(run(c, TIMEOUT));
    let on_beta = parse_json(
        &run_ok(daemon.docker(["inspect", &container]), TIMEOUT),
        "inspect on beta",
    )[0]
    .clone();
    assert_eq!(on_beta["Id"], before);
    assert_eq!(on_beta["State"]["Running"], true);
    assert_eq!(address(&on_beta, &network), "172.31.246.7");
    assert_eq!(
        on_beta["NetworkSettings"]["Networks"][&network]["Gateway"],
        "172.31.246.253"
    );
    assert_eq!(inspect(&container)["Id"], alpha_id);
}

/// A real `sshd` on loopback with its own host key and one authorized client key; the
/// sessions it opens talk to the daemon under test (`SetEnv DOCKER_HOST`). Stopped by PID.
struct Sshd {
    dir: tempfile::TempDir,
    child: std::process::Child,
    port: u16,
}

impl Sshd {
    /// `forwarding: false` sets `AllowStreamLocalForwarding no`, as hardened servers do.
    fn start(forwarding: bool) -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("bdssh")
            .tempdir()
            .expect("temp dir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        for key in ["host_key", "client_key"] {
            run_ok(
                cmd(
                    "ssh-keygen",
                    ["-q", "-t", "ed25519", "-N", "", "-f", &path(key)],
                ),
                TIMEOUT,
            );
        }
        fs::copy(path("client_key.pub"), path("authorized_keys")).expect("authorized_keys");
        let port = free_port();
        let host_key = fs::read_to_string(path("host_key.pub")).expect("host key");
        let host_key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        fs::write(
            path("known_hosts"),
            format!("[127.0.0.1]:{port} {}\n", host_key.join(" ")),
        )
        .expect("known_hosts");
        fs::write(
            path("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                 AuthorizedKeysFile {}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n\
                 SetEnv DOCKER_HOST={}\nAllowStreamLocalForwarding {}\n",
                path("host_key"),
                path("sshd.pid"),
                path("authorized_keys"),
                docker_host(),
                if forwarding { "yes" } else { "no" }
            ),
        )
        .expect("sshd_config");
        // sshd's privilege separation directory; Debian creates it only when the service
        // starts.
        fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        let sshd = which("sshd").expect("sshd");
        let log = fs::File::create(path("sshd.log")).expect("sshd log");
        let child = std::process::Command::new(sshd)
            .args(["-D", "-e", "-f", &path("sshd_config")])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start sshd");
        let sshd = Sshd { dir, child, port };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "sshd did not start:\n{}",
                fs::read_to_string(sshd.dir.path().join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        sshd
    }

    /// The inventory variables that reach this sshd as root with the test's key, the way
    /// an Ansible inventory says it.
    fn host_vars(&self, key: &str) -> String {
        let path = |name: &str| self.dir.path().join(name).display().to_string();
        format!(
            "{{ docker_host: \"ssh://root@127.0.0.1:{}\", ansible_ssh_private_key_file: \"{}\", \
             ansible_ssh_common_args: \"-F /dev/null -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes\" }}",
            self.port,
            path(key),
            path("known_hosts"),
        )
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ssh://` endpoints: the Engine API over one SSH connection (an OpenSSH master that
/// forwards the daemon's socket, or `docker system dial-stdio` sessions where the server
/// forbids forwarding), to a real sshd. Deploy, unchanged re-run, the dial-stdio fallback,
/// and a key the host does not accept (the host is named unreachable with ssh's reason).
#[test]
fn ssh_endpoint_through_a_real_sshd() {
    if !require_tool("docker")
        || !require_tool("ssh")
        || !require_tool("sshd")
        || !require_tool("ssh-keygen")
    {
        return;
    }
    let sshd = Sshd::start(true);
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("bssh").replace('-', "_");
    let repository = format!("deploy-e2e/{}", app.replace('_', "-"));
    let registry = server.host();
    let _cleanup = DockerCleanup::app(&app, vec![format!("{registry}/{repository}")]);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let v1 = import_image(&cli, &rootfs, &format!("{registry}/{repository}:v1"), "1");

    let inventory = cli.path("inventory");
    fs::create_dir_all(&inventory).expect("mkdir inventory");
    let write_hosts = |key: &str| {
        fs::write(
            inventory.join("hosts.yml"),
            format!("all:\n  hosts:\n    remote: {}\n", sshd.host_vars(key)),
        )
        .expect("write hosts.yml");
    };
    write_hosts("client_key");
    let app_path = cli.path("app.yml");
    fs::write(
        &app_path,
        format!(
            r#"name: {app}
services:
  svc:
    image: "{registry}/{repository}:v1"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done"]
    env: {{ OVER: ssh }}
"#
        ),
    )
    .expect("write app");
    let container = format!("{app}_svc_1");

    let out = deploy(&cli, &app_path, &inventory, &[]);
    assert!(
        out.status.success(),
        "{}\nsshd log:\n{}",
        out.describe(),
        sshd.log()
    );
    assert!(
        out.stdout.contains("remote : ok=0 changed=2"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("ssh://root@127.0.0.1"),
        "{}",
        out.describe()
    );
    let created = inspect(&container);
    assert_eq!(created["State"]["Running"], true);
    assert!(env_of(&created).contains(&"OVER=ssh".to_string()));
    let image = created["Config"]["Image"].as_str().unwrap_or_default();
    assert!(image.ends_with(&format!("@{v1}")), "{image}");
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "no SSH login seen:\n{}",
        sshd.log()
    );

    // Unchanged: nothing touched, still over SSH.
    let started = std::time::Instant::now();
    let out = ok(deploy(&cli, &app_path, &inventory, &[]));
    eprintln!("unchanged re-run over ssh: {:?}", started.elapsed());
    assert!(out.contains("remote : ok=1 changed=0"), "{out}");
    assert_eq!(inspect(&container)["Id"], created["Id"]);
    assert_no_ssh_master_left(sshd.port);

    // A server that forbids socket forwarding: the same re-run through dial-stdio sessions.
    let hardened = Sshd::start(false);
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  hosts:\n    remote: {}\n",
            hardened.host_vars("client_key")
        ),
    )
    .expect("write hosts.yml");
    let started = std::time::Instant::now();
    let out = deploy(&cli, &app_path, &inventory, &[]);
    eprintln!(
        "unchanged re-run over ssh with dial-stdio: {:?}",
        started.elapsed()
    );
    assert!(
        out.status.success(),
        "{}\nsshd log:\n{}",
        out.describe(),
        hardened.log()
    );
    assert!(
        out.stdout.contains("remote : ok=1 changed=0"),
        "{}",
        out.describe()
    );
    assert!(
        hardened.log().contains("refused streamlocal port forward"),
        "the hardened server was not asked to forward:\n{}",
        hardened.log()
    );
    assert_no_ssh_master_left(hardened.port);
    drop(hardened);

    // A key the host does not know: unreachable, with ssh's reason, and nothing left
    // running (no ssh master, no socket folder of this run).
    run_ok(
        cmd(
            "ssh-keygen",
            [
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-f",
                &sshd.dir.path().join("stranger_key").display().to_string(),
            ],
        ),
        TIMEOUT,
    );
    write_hosts("stranger_key");
    let out = run_fail(
        {
            let mut c = cli.cmd(["deploy"]);
            c.arg(&app_path).arg("-i").arg(&inventory);
            c
        },
        TIMEOUT,
    );
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(text.contains("UNREACHABLE remote"), "{}", out.describe());
    assert!(text.contains("Permission denied"), "{}", out.describe());
    assert_no_ssh_master_left(sshd.port);
}

/// No `ssh` master connection to `port` outlives the `berth` run that opened it.
fn assert_no_ssh_master_left(port: u16) {
    let masters = run(cmd("pgrep", ["-f", "ControlMaster=yes"]), TIMEOUT);
    let mine: Vec<&str> = masters
        .stdout
        .lines()
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split('\0').any(|arg| arg == port.to_string()))
                .unwrap_or(false)
        })
        .collect();
    assert!(mine.is_empty(), "ssh masters left running: {mine:?}");
}

/// `berth ship` on the origin example: the `web` service's build context (examples/origin/app,
/// FROM the registry's busybox) is built under runc, pushed, and exactly that digest is
/// deployed with its healthcheck; a second ship changes nothing; a broken Dockerfile fails
/// the ship before anything is deployed.
#[test]
fn ship_builds_pushes_and_deploys_the_origin_example() {
    if !require_tool("docker") || !require_tool("runc") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let registry = server.host();
    // The example's app name, made unique so parallel runs and leftovers cannot collide.
    let app = unique("bship").replace('-', "_");
    let image = format!("{registry}/app_example_image");
    let _cleanup = DockerCleanup::app(&app, vec![image.clone(), format!("{registry}/busybox")]);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    import_image(&cli, &rootfs, &format!("{registry}/busybox:stable"), "base");

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/origin");
    let copy = cli.path("origin");
    copy_dir(&examples, &copy);
    let app_text = fs::read_to_string(copy.join("app.yml"))
        .expect("read app.yml")
        .replacen("name: app_example", &format!("name: {app}"), 1)
        // Network names are global on a host: give this run its own.
        .replace("name: test_nw2", &format!("name: {app}_nw2"))
        .replace("name: test_nw\n", &format!("name: {app}_nw\n"));
    fs::write(copy.join("app.yml"), app_text).expect("write app.yml");
    let web_port = free_port();
    let nodes_port = free_port();
    fs::write(
        copy.join("testing/group_vars/all.yml"),
        format!(
            "app_env: testing\nregistry: \"{registry}\"\ndocker_host: \"{}\"\n\
             web_port: {web_port}\nnodes_port: {nodes_port}\n\
             front_prefix: \"172.31.247\"\nback_prefix: \"172.31.248\"\n",
            docker_host()
        ),
    )
    .expect("write vars");
    let ship = |extra: &[&str]| {
        let mut c = cli.cmd(["ship"]);
        c.arg(copy.join("app.yml"))
            .arg("-i")
            .arg(copy.join("testing"))
            .args(["--limit", "web-back1.testing", "--health-timeout", "60s"])
            .args(extra);
        run(c, TIMEOUT)
    };

    let out = ship(&["--json"]);
    assert!(out.status.success(), "{}", out.describe());
    let report = parse_json(&out.stdout, "ship --json");
    let builds = report["builds"].as_array().expect("builds");
    assert_eq!(builds.len(), 1, "{report}");
    assert_eq!(builds[0]["image"], format!("{image}:v3"));
    let digest = builds[0]["digest"].as_str().expect("digest").to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert!(
        out.stderr.contains("ship: [1/1] building"),
        "{}",
        out.describe()
    );
    assert_eq!(report["hosts"][0]["failed"], 0, "{report}");
    // Both services run the pushed digest (nodes shares web's image), healthy.
    for service in ["web", "nodes"] {
        let container = inspect(&format!("{app}_{service}_1"));
        let running = container["Config"]["Image"].as_str().unwrap_or_default();
        assert_eq!(running, format!("{image}:v3@{digest}"));
        assert_eq!(container["State"]["Running"], true);
    }
    let web = inspect_checked(&format!("{app}_web_1"));
    assert_eq!(web["State"]["Health"]["Status"], "healthy", "{web}");
    assert_eq!(address(&web, &format!("{app}_nw")), "172.31.247.10");
    let page = http_get(web_port);
    assert!(
        page.contains("Hello from the origin example"),
        "web answered: {page}"
    );
    // The registry holds what was deployed.
    let manifest = run_ok(
        cli.cmd(["inspect", &format!("{image}:v3"), "--raw"]),
        TIMEOUT,
    );
    assert_eq!(
        digest_of(manifest.trim_end().as_bytes()),
        digest,
        "{manifest}"
    );
    // ...and a deployment record of it: the app, inventory, host and services it runs as.
    let records = deployment_records(&server, "app_example_image", &digest);
    assert_eq!(records.len(), 1, "{records:?}");
    let artifact = records[0]["digest"].as_str().expect("record digest");
    let base = format!("{}/v2/app_example_image", server.url());
    let manifest = parse_json(
        &fetch(&format!("{base}/manifests/{artifact}")),
        "record manifest",
    );
    assert_eq!(manifest["subject"]["digest"], digest.as_str(), "{manifest}");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.oci.empty.v1+json"
    );
    let layer = manifest["layers"][0]["digest"].as_str().expect("layer");
    let record = parse_json(&fetch(&format!("{base}/blobs/{layer}")), "record");
    assert_eq!(record["app"], app.as_str(), "{record}");
    assert_eq!(record["inventory"], "testing", "{record}");
    assert_eq!(record["digest"], digest.as_str(), "{record}");
    assert_eq!(record["result"], "ok", "{record}");
    assert!(
        !record["who"].as_str().unwrap_or_default().is_empty(),
        "{record}"
    );
    assert_eq!(record["hosts"][0]["host"], "web-back1.testing", "{record}");
    assert_eq!(record["hosts"][0]["result"], "ok", "{record}");
    let mut services: Vec<&str> = record["hosts"][0]["services"]
        .as_array()
        .map(|list| list.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    services.sort_unstable();
    assert_eq!(services, ["nodes", "web"], "{record}");

    // Shipping again: the build is cached (same digest), nothing changes on the host.
    let out = ship(&[]);
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains(&format!("pushed {image}:v3@{digest}")),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("web-back1.testing : ok=4 changed=0"),
        "{}",
        out.describe()
    );
    assert_eq!(inspect(&format!("{app}_web_1"))["Id"], web["Id"]);

    // A broken Dockerfile: the ship fails with the builder's words; the host keeps running.
    fs::write(
        copy.join("app/Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nRUN [\"/bin/sh\", \"-c\", \"exit 7\"]\n",
    )
    .expect("break Dockerfile");
    let out = ship(&[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("nothing was deployed"),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("exit"), "{}", out.describe());
    let after = inspect(&format!("{app}_web_1"));
    assert_eq!(after["Id"], web["Id"]);
    assert_eq!(after["State"]["Running"], true);
}

/// GET / on 127.0.0.1:PORT, the body as text (empty when nothing answers).
fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n");
    let mut body = String::new();
    let _ = stream.read_to_string(&mut body);
    body
}

/// Per-host failures say what failed: a published port another process holds, a tag the
/// registry does not have (pinned: found before any host is touched; `--no-pin`: the
/// host's own pull fails). Nothing half-made is left behind.
#[test]
fn taken_ports_and_missing_images_are_named() {
    if !require_tool("docker") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("bfail").replace('-', "_");
    let repository = format!("deploy-e2e/{}", app.replace('_', "-"));
    let registry = server.host();
    let _cleanup = DockerCleanup::app(&app, vec![format!("{registry}/{repository}")]);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    import_image(&cli, &rootfs, &format!("{registry}/{repository}:v1"), "1");
    let inventory = cli.path("inventory");
    fs::create_dir_all(&inventory).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  hosts:\n    solo:\n      docker_host: \"{}\"\n",
            docker_host()
        ),
    )
    .expect("write hosts.yml");
    // A port this test holds open, as another program on the host would.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = holder.local_addr().expect("addr").port();
    let app_path = cli.path("app.yml");
    let write_app = |tag: &str, port: u16| {
        fs::write(
            &app_path,
            format!(
                r#"name: {app}
networks:
  net: {{ subnet: 172.31.249.0/24 }}
services:
  web:
    image: "{registry}/{repository}:{tag}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8000 -h /etc & wait"]
    ports: ["127.0.0.1:{port}:8000"]
    networks: [net]
"#
            ),
        )
        .expect("write app");
    };
    let web = format!("{app}_web_1");

    write_app("v1", taken);
    let out = deploy(&cli, &app_path, &inventory, &[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("failed=1"), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!("127.0.0.1:{taken}")),
        "the taken port is not named:\n{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("address already in use")
            || out.stdout.contains("port is already allocated"),
        "{}",
        out.describe()
    );
    assert!(
        container_id(&web).is_none(),
        "a container that could not start was left behind"
    );
    drop(holder);

    // A tag the registry does not have: named, before anything on the host changes.
    write_app("v9", free_port());
    let out = deploy(&cli, &app_path, &inventory, &[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains(&format!("cannot resolve image {registry}/{repository}:v9")),
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("solo"), "{}", out.describe());
    assert!(container_id(&web).is_none());

    // Unpinned, the host's own pull fails, and says so.
    let out = deploy(&cli, &app_path, &inventory, &["--no-pin"]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains("FAILED: [solo] pull image"),
        "{}",
        out.describe()
    );
    assert!(container_id(&web).is_none());
}

/// `--rolling 1`: hosts change one at a time in inventory order; the first host is
/// unreachable, so the batch fails and the second host is left as it was and reported as not
/// deployed. Without `--rolling` the same inventory deploys the second host anyway.
#[test]
fn rolling_stops_after_a_failed_batch() {
    if !require_tool("docker") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("broll").replace('-', "_");
    let repository = format!("deploy-e2e/{}", app.replace('_', "-"));
    let registry = server.host();
    let _cleanup = DockerCleanup::app(&app, vec![format!("{registry}/{repository}")]);
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    import_image(&cli, &rootfs, &format!("{registry}/{repository}:v1"), "1");
    // Nothing listens on a port this test just closed: the first host refuses at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let inventory = cli.path("inventory");
    fs::create_dir_all(&inventory).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  hosts:\n    a-gone:\n      docker_host: tcp://127.0.0.1:{closed}\n    \
             b-here:\n      docker_host: \"{}\"\n",
            docker_host()
        ),
    )
    .expect("write hosts.yml");
    let app_path = cli.path("app.yml");
    fs::write(
        &app_path,
        format!(
            r#"name: {app}
services:
  web:
    image: "{registry}/{repository}:v1"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; sleep 1000 & wait"]
"#
        ),
    )
    .expect("write app");
    let web = format!("{app}_web_1");

    let out = deploy(
        &cli,
        &app_path,
        &inventory,
        &["--rolling", "1", "--connect-timeout", "3s"],
    );
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stdout
            .contains("not deployed: --rolling stopped after batch 1"),
        "{}",
        out.describe()
    );
    assert!(
        container_id(&web).is_none(),
        "the host after the failed batch was changed:\n{}",
        out.describe()
    );

    let out = deploy(&cli, &app_path, &inventory, &["--connect-timeout", "3s"]);
    assert!(!out.status.success(), "a-gone is still unreachable");
    assert!(
        container_id(&web).is_some(),
        "without --rolling the reachable host is deployed:\n{}",
        out.describe()
    );

    let out = deploy(&cli, &app_path, &inventory, &["--rolling", "0"]);
    assert!(!out.status.success());
    assert!(out.stderr.contains("--rolling"), "{}", out.describe());
}
