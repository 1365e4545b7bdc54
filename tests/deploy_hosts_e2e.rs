//! The deployer end to end against three real Docker hosts: each a dockerd in its own network
//! namespace (scripts/docker-hosts.sh), reached over `tcp://ADDR:2375` on a bridge, pulling
//! from a `berth serve` that listens on the bridge's host address.
//!
//! The origin example (examples/origin) is taken through its life on all three: `berth ship`
//! builds, pushes and deploys it; `docker inspect` on every host checks networks, fixed
//! addresses, the custom gateway and the default route, ports and env; one host's variable
//! changes (only that host changes); an unchanged re-run changes nothing; a deploy that
//! fails half-way on every host (the second service cannot start after the first was
//! replaced) leaves every host as it was; a broken image (its healthcheck fails) is rolled
//! back with a non-zero exit while the old containers keep serving; and with one host's
//! daemon killed the other two still deploy and the summary names the one that is down.
//!
//! Needs root (namespaces, bridge, iptables), dockerd, docker, ip, iptables, nsenter, curl
//! and runc (for the build). Everything is torn down by guards, also when the test fails.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(300);
const HOSTS: [&str; 3] = [
    "web-back1.testing",
    "web-back2.testing",
    "web-back3.testing",
];
const WEB: &str = "app_example_web_1";
const NODES: &str = "app_example_nodes_1";
/// The example's defaults (app.yml): networks, the custom gateway, fixed addresses.
const FRONT: &str = "10.1.4";
const BACK: &str = "10.2.3";

/// The per-host counts of a deploy's summary (`NAME : ok=.. changed=.. unreachable=..
/// failed=.. skipped=..`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    ok: u32,
    changed: u32,
    unreachable: u32,
    failed: u32,
}

fn summary(stdout: &str) -> BTreeMap<String, Counts> {
    let mut hosts = BTreeMap::new();
    for line in stdout.lines() {
        let Some((name, rest)) = line.split_once(" : ok=") else {
            continue;
        };
        let mut numbers = BTreeMap::new();
        for field in format!("ok={rest}").split_whitespace() {
            if let Some((key, value)) = field.split_once('=') {
                numbers.insert(key.to_string(), value.parse::<u32>().unwrap_or(u32::MAX));
            }
        }
        let n = |key: &str| numbers.get(key).copied().unwrap_or(u32::MAX);
        hosts.insert(
            name.trim().to_string(),
            Counts {
                ok: n("ok"),
                changed: n("changed"),
                unreachable: n("unreachable"),
                failed: n("failed"),
            },
        );
    }
    hosts
}

/// The test's view of the three hosts and the berth commands it runs against them.
struct Fixture {
    hosts: DockerHosts,
    cli: BerthCli,
    registry: String,
    app: PathBuf,
    inventory: PathBuf,
}

impl Fixture {
    fn berth(&self, verb: &str, extra: &[&str]) -> CmdOutput {
        let mut c = self.cli.cmd([verb]);
        c.arg(&self.app)
            .arg("-i")
            .arg(&self.inventory)
            .args(["--insecure", &self.registry])
            .args(["--health-timeout", "60s", "--connect-timeout", "5s"])
            .args(extra)
            // The registry is on the bridge, not loopback: plain HTTP must be allowed for
            // the build's pulls and pushes too.
            .env("BERTH_INSECURE_REGISTRIES", &self.registry);
        let started = Instant::now();
        let out = run(c, TIMEOUT);
        eprintln!(
            "berth {verb} {extra:?}: exit {:?} in {:.1}s\n{}{}",
            out.status.code(),
            started.elapsed().as_secs_f64(),
            out.stdout,
            out.stderr
        );
        out
    }

    fn deploy(&self, extra: &[&str]) -> CmdOutput {
        self.berth("deploy", extra)
    }

    fn inspect(&self, host: usize, name: &str) -> serde_json::Value {
        let out = run_ok(self.hosts.docker(host, ["inspect", name]), TIMEOUT);
        parse_json(&out, "docker inspect")[0].clone()
    }

    /// `inspect` once dockerd's own healthcheck has a verdict: Berth's early check makes a
    /// deploy return before dockerd ran its first one (up to an `interval` later).
    fn inspect_checked(&self, host: usize, name: &str) -> serde_json::Value {
        for _ in 0..150 {
            let container = self.inspect(host, name);
            if container["State"]["Health"]["Status"] != "starting" {
                return container;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        self.inspect(host, name)
    }

    fn id(&self, host: usize, name: &str) -> Option<String> {
        let out = run(
            self.hosts
                .docker(host, ["inspect", "--format", "{{.Id}}", name]),
            TIMEOUT,
        );
        out.status.success().then(|| out.stdout.trim().to_string())
    }

    /// (web, nodes) container ids on every host.
    fn ids(&self) -> Vec<(Option<String>, Option<String>)> {
        (0..HOSTS.len())
            .map(|h| (self.id(h, WEB), self.id(h, NODES)))
            .collect()
    }

    fn exec(&self, host: usize, container: &str, args: &[&str]) -> String {
        let mut all = vec!["exec", container];
        all.extend_from_slice(args);
        run_ok(self.hosts.docker(host, all), TIMEOUT)
    }

    /// GET / on host `host`'s published web port (80), from this machine over the bridge.
    fn http_get(&self, host: usize) -> String {
        let addr = std::net::SocketAddr::from((self.hosts.hosts[host].addr, 80));
        raw_request_at(
            addr,
            b"GET / HTTP/1.0\r\nHost: web\r\nConnection: close\r\n\r\n",
            Duration::from_secs(10),
        )
        .map(|r| r.body_text())
        .unwrap_or_default()
    }

    fn write_group_vars(&self, app_env: &str, extra: &str) {
        fs::write(
            self.inventory.join("group_vars/all.yml"),
            format!(
                "app_env: {app_env}\nregistry: \"{}\"\n{extra}",
                self.registry
            ),
        )
        .expect("write group_vars/all.yml");
    }
}

fn has_env(container: &serde_json::Value, pair: &str) -> bool {
    env_of(container).iter().any(|e| e == pair)
}

fn assert_all(counts: &BTreeMap<String, Counts>, expect: [Counts; 3], out: &CmdOutput) {
    for (host, want) in HOSTS.iter().zip(expect) {
        assert_eq!(
            counts.get(*host),
            Some(&want),
            "summary of {host}\n{}",
            out.describe()
        );
    }
}

#[test]
fn origin_example_on_three_namespaced_hosts() {
    if !require_root() {
        return;
    }
    for program in [
        "dockerd", "docker", "ip", "iptables", "nsenter", "curl", "runc", "setsid",
    ] {
        if !require_program(program) {
            return;
        }
    }
    let started = Instant::now();
    let hosts = DockerHosts::up(HOSTS.len());
    eprintln!(
        "hosts up in {:.1}s: bridge {}, {:?}",
        started.elapsed().as_secs_f64(),
        hosts.bridge_addr,
        hosts.hosts.iter().map(|h| &h.tcp).collect::<Vec<_>>()
    );
    let server = Server::start_berth_on(hosts.bridge_addr, &[]);
    let registry = server.host();
    let cli = BerthCli::new();

    // The base image the example's Dockerfile builds FROM.
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let mut import = cli.cmd(["import"]);
    import
        .arg(&rootfs)
        .arg(format!("{registry}/busybox:stable"))
        .args(["-c", "CMD [\"/bin/sh\"]", "--insecure", &registry]);
    run_ok(import, TIMEOUT);

    // A copy of the example: app.yml as it is, an inventory of the three hosts.
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/origin");
    let copy = cli.path("origin");
    copy_dir(&examples, &copy);
    let inventory = copy.join("hosts3");
    fs::create_dir_all(inventory.join("group_vars")).expect("mkdir group_vars");
    fs::create_dir_all(inventory.join("host_vars")).expect("mkdir host_vars");
    let mut hosts_yml = String::from("all:\n  children:\n    back:\n      hosts:\n");
    for (name, host) in HOSTS.iter().zip(&hosts.hosts) {
        hosts_yml.push_str(&format!(
            "        {name}: {{ docker_host: \"{}\" }}\n",
            host.tcp
        ));
    }
    fs::write(inventory.join("hosts.yml"), hosts_yml).expect("write hosts.yml");
    let f = Fixture {
        hosts,
        cli,
        registry,
        app: copy.join("app.yml"),
        inventory,
    };
    f.write_group_vars("testing", "");
    let ok = Counts {
        ok: 4,
        changed: 0,
        unreachable: 0,
        failed: 0,
    };

    // --- 1. ship: build, push, deploy to all three --------------------------------------------
    let out = f.berth("ship", &[]);
    assert!(out.status.success(), "{}", out.describe());
    let first = Counts {
        ok: 0,
        changed: 5,
        unreachable: 0,
        failed: 0,
    };
    assert_all(&summary(&out.stdout), [first; 3], &out);
    for (h, host) in HOSTS.iter().enumerate() {
        let web = f.inspect_checked(h, WEB);
        let nodes = f.inspect(h, NODES);
        for c in [&web, &nodes] {
            assert_eq!(c["State"]["Running"], true, "{c}");
            assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
            assert!(has_env(c, "APP_ENV=testing"), "{c}");
            let image = c["Config"]["Image"].as_str().unwrap_or_default();
            assert!(
                image.starts_with(&format!("{}/app_example_image:v3@sha256:", f.registry)),
                "{image}"
            );
        }
        assert_eq!(web["State"]["Health"]["Status"], "healthy", "{web}");
        // The example's stop_grace_period (busybox httpd ignores SIGTERM).
        assert_eq!(web["Config"]["StopTimeout"], 2, "{web}");
        assert_eq!(nodes["Config"]["StopTimeout"], 2, "{nodes}");
        assert!(has_env(&web, "LOG_LEVEL=info"), "{web}");
        assert!(has_env(&nodes, "ROLE=nodes"), "{nodes}");
        // Networks and fixed addresses; web is on test_nw only, nodes on both.
        let nets = |c: &serde_json::Value| -> Vec<String> {
            c["NetworkSettings"]["Networks"]
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(nets(&web), ["test_nw"], "{web}");
        assert_eq!(nets(&nodes), ["test_nw", "test_nw2"], "{nodes}");
        let net = |c: &serde_json::Value, n: &str, key: &str| {
            c["NetworkSettings"]["Networks"][n][key]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(net(&web, "test_nw", "IPAddress"), format!("{FRONT}.10"));
        assert_eq!(net(&nodes, "test_nw", "IPAddress"), format!("{FRONT}.2"));
        assert_eq!(net(&nodes, "test_nw2", "IPAddress"), format!("{BACK}.2"));
        // The custom gateway the write-up had to patch in by hand: on the network, on the
        // containers' endpoints, and as their default route.
        assert_eq!(net(&web, "test_nw", "Gateway"), format!("{FRONT}.100"));
        assert_eq!(net(&nodes, "test_nw", "Gateway"), format!("{FRONT}.100"));
        let network = parse_json(
            &run_ok(
                f.hosts.docker(h, ["network", "inspect", "test_nw"]),
                TIMEOUT,
            ),
            "network inspect",
        );
        assert_eq!(
            network[0]["IPAM"]["Config"][0]["Gateway"],
            format!("{FRONT}.100")
        );
        assert_eq!(
            network[0]["IPAM"]["Config"][0]["Subnet"],
            format!("{FRONT}.0/24")
        );
        for name in [WEB, NODES] {
            let routes = f.exec(h, name, &["ip", "route"]);
            assert!(
                routes
                    .lines()
                    .any(|l| l.starts_with(&format!("default via {FRONT}.100 "))),
                "{name} on {}: default route is not the custom gateway:\n{routes}",
                host
            );
        }
        // Ports: web on all addresses, nodes on the host's loopback only.
        let binding = |c: &serde_json::Value, key: &str| {
            c["HostConfig"]["PortBindings"]["8000/tcp"][0][key]
                .as_str()
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(binding(&web, "HostIp"), "0.0.0.0");
        assert_eq!(binding(&web, "HostPort"), "80");
        assert_eq!(binding(&nodes, "HostIp"), "127.0.0.1");
        assert_eq!(binding(&nodes, "HostPort"), "8000");
        // The published port answers from outside the host (over the bridge).
        let page = f.http_get(h);
        assert!(
            page.contains("Hello from the origin example"),
            "{}: {page}",
            host
        );
        // nodes answers on the host's own loopback.
        let page = f.exec(
            h,
            WEB,
            &["wget", "-q", "-O", "-", &format!("http://{FRONT}.2:8000/")],
        );
        assert!(page.contains("Hello from the origin example"), "{page}");
    }
    let deployed = f.ids();

    // --- 2. one host's variable changes: only that host changes -------------------------------
    fs::write(
        f.inventory.join("host_vars/web-back2.testing.yml"),
        "log_level: debug\n",
    )
    .expect("write host_vars");
    let out = f.deploy(&[]);
    assert!(out.status.success(), "{}", out.describe());
    let one = Counts {
        ok: 3,
        changed: 1,
        unreachable: 0,
        failed: 0,
    };
    assert_all(&summary(&out.stdout), [ok, one, ok], &out);
    let after = f.ids();
    assert_eq!(after[0], deployed[0]);
    assert_eq!(after[2], deployed[2]);
    assert_ne!(after[1].0, deployed[1].0, "web on host 2 must be replaced");
    assert_eq!(after[1].1, deployed[1].1, "nodes on host 2 must be kept");
    assert!(has_env(&f.inspect(1, WEB), "LOG_LEVEL=debug"));
    assert!(has_env(&f.inspect(0, WEB), "LOG_LEVEL=info"));

    // --- 3. unchanged re-run: nothing changes anywhere ----------------------------------------
    let out = f.deploy(&[]);
    assert!(out.status.success(), "{}", out.describe());
    assert_all(&summary(&out.stdout), [ok; 3], &out);
    assert_eq!(
        f.ids(),
        after,
        "an unchanged re-run must not touch any container"
    );

    // --- 4a. a rollout that fails half-way is undone: every host is left as it was ------------
    // app_env changes both services; nodes' port is bound to an address no host has, so web
    // is replaced (and healthy) first, then nodes cannot start.
    let rollback_targets: Vec<Option<String>> = (0..HOSTS.len())
        .map(|h| f.id(h, &format!("{WEB}-prev")))
        .collect();
    let nowhere = format!(
        "{}.250",
        f.hosts
            .bridge_addr
            .to_string()
            .rsplit_once('.')
            .map(|(net, _)| net)
            .unwrap_or("")
    );
    f.write_group_vars("halfway", &format!("nodes_publish_ip: \"{nowhere}\"\n"));
    let out = f.deploy(&[]);
    assert!(!out.status.success(), "{}", out.describe());
    let counts = summary(&out.stdout);
    for host in HOSTS {
        let c = counts.get(host).copied();
        assert!(
            c.is_some_and(|c| c.failed == 1 && c.unreachable == 0),
            "{host}: {c:?}\n{}",
            out.describe()
        );
    }
    assert!(out.stdout.contains(&nowhere), "{}", out.describe());
    assert_eq!(
        f.ids(),
        after,
        "a failed rollout must leave every host as it was"
    );
    for (h, host) in HOSTS.iter().enumerate() {
        for name in [WEB, NODES] {
            let c = f.inspect(h, name);
            assert_eq!(c["State"]["Running"], true, "{}: {name}", host);
            assert!(has_env(&c, "APP_ENV=testing"), "{}: {name}", host);
            assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
        }
        assert_eq!(
            f.id(h, &format!("{WEB}-prev")),
            rollback_targets[h],
            "{}: the rollback target must survive a failed rollout",
            host
        );
        assert!(f.http_get(h).contains("Hello from the origin example"));
    }

    // --- 4b. a broken image: health fails, rolled back, non-zero exit, old ones serving -------
    // It builds and runs, but serves no page, so web's healthcheck (wget /) fails. nodes
    // (no healthcheck) is replaced first and comes up: the failure is half-way through the
    // host, and nodes must be put back too.
    let kept: Vec<Vec<Option<String>>> = (0..HOSTS.len())
        .map(|h| {
            [WEB, NODES]
                .iter()
                .map(|name| f.id(h, &format!("{name}-prev")))
                .collect()
        })
        .collect();
    fs::write(
        copy.join("app/Dockerfile"),
        "ARG BASE\nFROM ${BASE}\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/www\"]\n\
         CMD [\"httpd\", \"-f\", \"-p\", \"8000\", \"-h\", \"/www\"]\n",
    )
    .expect("write broken Dockerfile");
    f.write_group_vars("testing", "image_tag: broken\n");
    let out = f.berth("ship", &[]);
    assert!(!out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("unhealthy"), "{}", out.describe());
    let counts = summary(&out.stdout);
    for host in HOSTS {
        assert!(
            counts.get(host).is_some_and(|c| c.failed == 1),
            "{host}\n{}",
            out.describe()
        );
    }
    assert!(out.stdout.contains("undid"), "{}", out.describe());
    assert_eq!(f.ids(), after, "the old containers must be back");
    for (h, host) in HOSTS.iter().enumerate() {
        for (name, kept) in [WEB, NODES].iter().zip(&kept[h]) {
            assert_eq!(
                &f.id(h, &format!("{name}-prev")),
                kept,
                "{}: the rollback target of {name} must survive",
                host
            );
            assert!(f.id(h, &format!("{name}-prev-old")).is_none());
            let c = f.inspect(h, name);
            assert_eq!(c["State"]["Running"], true, "{}: {name}", host);
            assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
        }
        let web = f.inspect(h, WEB);
        assert_eq!(web["State"]["Running"], true);
        assert!(web["Config"]["Image"]
            .as_str()
            .unwrap_or_default()
            .contains("app_example_image:v3@"));
        assert!(
            f.http_get(h).contains("Hello from the origin example"),
            "{}: the old web must still serve",
            host
        );
    }

    // --- 5. one host down: the others deploy, the summary names it ----------------------------
    f.hosts.kill_daemon(2);
    fs::remove_file(f.inventory.join("host_vars/web-back2.testing.yml")).expect("rm host_vars");
    f.write_group_vars("testing", "log_level: warn\n");
    let out = f.deploy(&[]);
    assert!(!out.status.success(), "{}", out.describe());
    let counts = summary(&out.stdout);
    let changed_web = Counts {
        ok: 3,
        changed: 1,
        unreachable: 0,
        failed: 0,
    };
    assert_eq!(
        counts.get(HOSTS[0]),
        Some(&changed_web),
        "{}",
        out.describe()
    );
    assert_eq!(
        counts.get(HOSTS[1]),
        Some(&changed_web),
        "{}",
        out.describe()
    );
    assert!(
        counts.get(HOSTS[2]).is_some_and(|c| c.unreachable == 1),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains(&format!("UNREACHABLE {}", HOSTS[2])),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains(HOSTS[2]), "{}", out.describe());
    for h in 0..2 {
        assert!(has_env(&f.inspect(h, WEB), "LOG_LEVEL=warn"));
        assert!(f.http_get(h).contains("Hello from the origin example"));
    }
    eprintln!("test body done in {:.1}s", started.elapsed().as_secs_f64());
    drop(server);
}
