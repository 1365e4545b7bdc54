//! `berth swarm init` against three real Docker hosts, each a dockerd in its own network
//! namespace (scripts/docker-hosts.sh), reached over `tcp://ADDR:2375`.
//!
//! Host 3 first runs a swarm of its own: `berth swarm init` refuses it by name and changes
//! nothing anywhere. Once it left that swarm: host 1 (first of `managers`) inits, host 2
//! joins as a manager, host 3 as a worker, each node gets its `swarm_labels`; a re-run
//! changes nothing and says so. Then `berth deploy --swarm` runs a replicated service (one
//! task per node, port published on each node) on an overlay network: every host answers
//! over HTTP, and a task reaches another node's task through the overlay.
//!
//! Needs root, dockerd, docker, ip, iptables, nsenter, curl, setsid. Guards tear everything
//! down, also when the test fails.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

const TIMEOUT: Duration = Duration::from_secs(120);
const NAMES: [&str; 3] = ["m1", "m2", "w1"];
const ZONES: [&str; 3] = ["a", "b", "c"];

fn swarm_state(hosts: &DockerHosts, i: usize) -> String {
    run_ok(
        hosts.docker(i, ["info", "--format", "{{.Swarm.LocalNodeState}}"]),
        TIMEOUT,
    )
    .trim()
    .to_string()
}

fn http_get(addr: std::net::Ipv4Addr, port: u16, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
    raw_request_at(
        std::net::SocketAddr::from((addr, port)),
        request.as_bytes(),
        Duration::from_secs(3),
    )
    .filter(|r| r.status == Some(200))
    .map(|r| r.body_text())
}

#[test]
fn three_hosts_become_one_swarm_running_a_service_on_each() {
    if !require_root() {
        return;
    }
    for program in [
        "dockerd", "docker", "ip", "iptables", "nsenter", "curl", "setsid",
    ] {
        if !require_program(program) {
            return;
        }
    }
    let started = Instant::now();
    let hosts = DockerHosts::up(3);
    eprintln!("hosts up in {:.1}s", started.elapsed().as_secs_f64());
    let server = Server::start_berth_on(hosts.bridge_addr, &[]);
    let registry = server.host();
    let cli = BerthCli::new();

    let mut inventory = String::from("all:\n  children:\n    managers:\n      hosts:\n");
    for (i, host) in hosts.hosts.iter().enumerate() {
        if i == 2 {
            inventory.push_str("    workers:\n      hosts:\n");
        }
        inventory.push_str(&format!(
            "        {}: {{ ansible_host: \"{}\", docker_host: \"{}\", swarm_labels: {{ zone: {}, berth_test: \"yes\" }} }}\n",
            NAMES[i], host.addr, host.tcp, ZONES[i]
        ));
    }
    let inventory_path = cli.path("hosts.yml");
    fs::write(&inventory_path, inventory).expect("write inventory");
    let swarm_init = || {
        let mut c = cli.cmd(["swarm", "init", "-i"]);
        c.arg(&inventory_path);
        let out = run(c, TIMEOUT);
        eprintln!("berth swarm init:\n{}", out.describe());
        out
    };

    // --- 1. a host in another swarm is refused by name; nothing changes -----------------------
    run_ok(
        hosts.docker(
            2,
            [
                "swarm",
                "init",
                "--advertise-addr",
                &hosts.hosts[2].addr.to_string(),
            ],
        ),
        TIMEOUT,
    );
    let out = swarm_init();
    assert!(!out.status.success(), "{}", out.describe());
    assert!(
        out.stderr.contains("host w1 is already in another swarm"),
        "{}",
        out.describe()
    );
    assert_eq!(swarm_state(&hosts, 0), "inactive");
    assert_eq!(swarm_state(&hosts, 1), "inactive");
    run_ok(hosts.docker(2, ["swarm", "leave", "--force"]), TIMEOUT);

    // --- 2. init, joins with the right tokens, labels ------------------------------------------
    let out = swarm_init();
    assert!(out.status.success(), "{}", out.describe());
    assert!(
        out.stdout.contains(&format!(
            "swarm init (advertises {}:2377)",
            hosts.hosts[0].addr
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("as manager"), "{}", out.stdout);
    assert!(out.stdout.contains("as worker"), "{}", out.stdout);
    let nodes = run_ok(hosts.docker(0, ["node", "ls", "-q"]), TIMEOUT);
    assert_eq!(nodes.split_whitespace().count(), 3, "{nodes}");
    for (i, host) in hosts.hosts.iter().enumerate() {
        assert_eq!(swarm_state(&hosts, i), "active");
        let node_id = run_ok(
            hosts.docker(i, ["info", "--format", "{{.Swarm.NodeID}}"]),
            TIMEOUT,
        );
        let node = parse_json(
            &run_ok(
                hosts.docker(0, ["node", "inspect", node_id.trim()]),
                TIMEOUT,
            ),
            "node inspect",
        );
        assert_eq!(node[0]["Spec"]["Labels"]["zone"], ZONES[i], "{node}");
        let role = if i < 2 { "manager" } else { "worker" };
        assert_eq!(node[0]["Spec"]["Role"], role, "{node}");
        assert_eq!(
            node[0]["Status"]["Addr"].as_str(),
            Some(host.addr.to_string().as_str()),
            "{node}"
        );
    }

    // --- 3. a re-run changes nothing and says so -----------------------------------------------
    let out = swarm_init();
    assert!(out.status.success(), "{}", out.describe());
    assert!(out.stdout.contains("nothing changed"), "{}", out.stdout);
    assert!(!out.stdout.contains("changed  "), "{}", out.stdout);

    // --- 4. an overlay network over all three, one task per node, each host answers ----------
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let image = format!("{registry}/swarm-init/web:v1");
    let mut import = cli.cmd(["import"]);
    import
        .arg(&rootfs)
        .arg(&image)
        .args(["-c", "CMD [\"/bin/sh\"]", "--insecure", &registry]);
    run_ok(import, TIMEOUT);
    let app = cli.path("app.yml");
    fs::write(
        &app,
        format!(
            r#"name: sinit
networks:
  mesh: {{ driver: overlay, subnet: 10.253.7.0/24 }}
services:
  web:
    image: {image}
    command: [/bin/busybox, httpd, -f, -p, "8080", -h, /etc]
    replicas: 3
    networks: [mesh]
    ports: [{{ target: 8080, published: 8080, mode: host }}]
    placement: {{ max_replicas_per_node: 1, constraints: [node.labels.berth_test==yes] }}
"#
        ),
    )
    .expect("write app");
    let mut deploy = cli.cmd(["deploy", "--swarm"]);
    deploy.arg(&app).arg("-i").arg(&inventory_path).args([
        "--insecure",
        &registry,
        "--health-timeout",
        "60s",
    ]);
    let out = run(deploy, TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let deadline = Instant::now() + Duration::from_secs(60);
    for host in &hosts.hosts {
        loop {
            if let Some(body) = http_get(host.addr, 8080, "/passwd") {
                assert!(body.starts_with("root:"), "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} does not answer on 8080",
                host.addr
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // One task on each node, each on the overlay; node 1's task reaches node 2's over it.
    let mut overlay_addresses = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let ids = run_ok(
            hosts.docker(
                i,
                [
                    "ps",
                    "-q",
                    "--filter",
                    "label=com.docker.swarm.service.name=sinit_web",
                ],
            ),
            TIMEOUT,
        );
        let ids: Vec<&str> = ids.split_whitespace().collect();
        assert_eq!(ids.len(), 1, "host {i} runs {ids:?}");
        let task = parse_json(
            &run_ok(hosts.docker(i, ["inspect", ids[0]]), TIMEOUT),
            "inspect",
        );
        let address = task[0]["NetworkSettings"]["Networks"]["sinit_mesh"]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(address.starts_with("10.253.7."), "{address}");
        overlay_addresses.push(address);
        tasks.push(ids[0].to_string());
    }
    let fetched = run_ok(
        hosts.docker(
            0,
            [
                "exec",
                tasks[0].as_str(),
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{}:8080/passwd", overlay_addresses[1]),
            ],
        ),
        TIMEOUT,
    );
    assert!(fetched.starts_with("root:"), "{fetched}");
    eprintln!("whole test in {:.1}s", started.elapsed().as_secs_f64());
}
