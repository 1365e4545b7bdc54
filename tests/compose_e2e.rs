//! Compose files as app files, against a real Docker daemon (`DOCKER_HOST`; scripts/test.sh
//! starts a private one) pulling from a real `berth serve`, cross-checked with Debian's
//! `docker-compose` (1.29).
//!
//! One compose file within docker-compose 1.29's subset of the spec (no top-level `name`, no
//! long-syntax `host_ip`) is deployed twice on the same daemon: by `berth deploy` as one
//! project and by `docker-compose up` as another. Each gets its own subnets and host ports
//! through interpolation (Berth: inventory variables; docker-compose: the environment), and
//! both end with the same networks, addresses, aliases, ports, env, labels and limits.
//! `docker-compose ps` lists Berth's containers. Then `-e TAG=v2` updates Berth's project and
//! `berth rollback` returns it. Everything is removed by a guard, also when the test fails.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(300);

// Subnets picked to be unlikely on any real network; one pair per project.
const BERTH_FRONT: &str = "172.31.230";
const BERTH_BACK: &str = "172.31.231";
const REF_FRONT: &str = "172.31.232";
const REF_BACK: &str = "172.31.233";

/// The compose file both tools deploy. Shells that exit on SIGTERM, so replacements are quick.
const COMPOSE: &str = r#"
x-loop: &loop [/bin/sh, -c, "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done"]
services:
  web:
    image: "${REGISTRY}/${REPO}:${TAG:-v1}"
    command: [/bin/sh, -c, "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8000 -h /etc & wait"]
    environment:
      MODE: "${MODE:-one}"
      SERVICE: web
    env_file: web.env
    ports:
      - "127.0.0.1:${WEB_PORT}:8000"
      - target: 8001
        published: ${ALT_PORT}
        protocol: udp
    networks:
      front:
        ipv4_address: "${FRONT}.10"
        aliases: [www]
    healthcheck:
      test: [CMD, /bin/busybox, wget, -q, -O, /dev/null, "http://127.0.0.1:8000/passwd"]
      interval: 1s
      timeout: 2s
      retries: 2
      start_period: 1s
    restart: unless-stopped
    stop_grace_period: 2s
    labels: [team=front]
    depends_on:
      nodes: { condition: service_started }
    cpus: 0.5
    mem_limit: 64m
    volumes: ["data:/data"]
    secrets: [token]
  nodes:
    image: "${REGISTRY}/${REPO}:${TAG:-v1}"
    command: *loop
    environment: [ROLE=nodes, FROM_ENV]
    networks:
      front: { ipv4_address: "${FRONT}.2" }
      back: { ipv4_address: "${BACK}.2" }
    stop_signal: SIGTERM
    x-berth: { hosts: all }
    user: "65534"
    working_dir: /tmp
    hostname: nodes-host
    extra_hosts: ["db.internal:10.0.0.5"]
    cap_drop: [NET_RAW]
    cap_add: [SYS_TIME]
    init: true
    read_only: true
    tmpfs: ["/run:size=1m"]
    ulimits: { nofile: { soft: 1024, hard: 2048 } }
    logging: { driver: json-file, options: { max-size: 1m } }
    privileged: true
    dns: [10.0.0.53]
    dns_search: example.internal
    security_opt: ["no-new-privileges:true"]
    sysctls: { net.core.somaxconn: 1024 }
    shm_size: 32m
    pids_limit: 100
    tty: true
    stdin_open: true
  cron:
    image: "${REGISTRY}/${REPO}:${TAG:-v1}"
    command: *loop
    container_name: "${CRON_NAME}"
  worker:
    image: "${REGISTRY}/${REPO}:${TAG:-v1}"
    command: *loop
    scale: 2
    restart: on-failure:3
volumes:
  data: {}
secrets:
  token: { file: ./token.txt }
networks:
  front:
    ipam:
      config:
        - subnet: "${FRONT}.0/24"
          gateway: "${FRONT}.100"
  back:
    driver: bridge
    ipam:
      config: [{ subnet: "${BACK}.0/24" }]
"#;

/// Containers of a compose project by `service-N`, from the labels both tools write.
fn project_containers(project: &str) -> BTreeMap<String, Value> {
    let label = format!("label=com.docker.compose.project={project}");
    let ids = run_ok(cmd("docker", ["ps", "-q", "--filter", &label]), TIMEOUT);
    ids.split_whitespace()
        .map(inspect)
        .map(|c| {
            let labels = &c["Config"]["Labels"];
            let key = format!(
                "{}-{}",
                labels["com.docker.compose.service"].as_str().unwrap_or("?"),
                labels["com.docker.compose.container-number"]
                    .as_str()
                    .unwrap_or("?")
            );
            (key, c)
        })
        .collect()
}

/// What must match between the two deployments of one container, with the project's own
/// subnet prefixes and host ports written as placeholders.
fn comparable(container: &Value, project: &str, replace: &[(&str, &str)]) -> Value {
    let normalise = |text: &str| {
        let mut text = text.to_string();
        for (from, to) in replace {
            text = text.replace(from, to);
        }
        text
    };
    let mut networks = BTreeMap::new();
    if let Some(map) = container["NetworkSettings"]["Networks"].as_object() {
        for (name, endpoint) in map {
            let key = name
                .strip_prefix(&format!("{project}_"))
                .unwrap_or(name)
                .to_string();
            let mut aliases: BTreeSet<String> = endpoint["Aliases"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            // docker-compose 1.29 also adds the short container ID, Docker the container
            // name: keep the names the file asked for (the service's and `aliases:`).
            aliases.retain(|a| ["web", "www", "nodes", "worker"].contains(&a.as_str()));
            // The default network's subnet and the addresses on it are Docker's choice.
            let (address, gateway) = if key == "default" {
                ("dynamic".to_string(), "dynamic".to_string())
            } else {
                (
                    normalise(endpoint["IPAddress"].as_str().unwrap_or_default()),
                    normalise(endpoint["Gateway"].as_str().unwrap_or_default()),
                )
            };
            networks.insert(
                key,
                serde_json::json!({ "address": address, "gateway": gateway, "aliases": aliases }),
            );
        }
    }
    let env: BTreeSet<String> = container["Config"]["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    let labels: BTreeMap<String, String> = container["Config"]["Labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !k.starts_with("com.docker.compose.") && !k.starts_with("berth."))
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let host = &container["HostConfig"];
    let mut ports = Vec::new();
    if let Some(map) = host["PortBindings"].as_object() {
        for (port, bindings) in map {
            for binding in bindings.as_array().into_iter().flatten() {
                ports.push(format!(
                    "{}:{}->{port}",
                    binding["HostIp"].as_str().unwrap_or_default(),
                    normalise(binding["HostPort"].as_str().unwrap_or_default())
                ));
            }
        }
    }
    ports.sort();
    // Mounts by destination: type, and the volume's name without the project.
    let mut mounts: Vec<String> = container["Mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let name = m["Name"].as_str().unwrap_or_default();
            format!(
                "{} {} {}",
                m["Destination"].as_str().unwrap_or_default(),
                m["Type"].as_str().unwrap_or_default(),
                name.strip_prefix(&format!("{project}_")).unwrap_or(name)
            )
        })
        .collect();
    mounts.sort();
    serde_json::json!({
        "mounts": mounts,
        "networks": networks,
        "env": env,
        "labels": labels,
        "ports": ports,
        "cmd": container["Config"]["Cmd"],
        "healthcheck": container["Config"]["Healthcheck"],
        "stop_signal": container["Config"]["StopSignal"],
        "stop_timeout": container["Config"]["StopTimeout"],
        "restart": host["RestartPolicy"],
        "nano_cpus": host["NanoCpus"],
        "memory": host["Memory"],
        "running": container["State"]["Running"],
        "user": container["Config"]["User"],
        "working_dir": container["Config"]["WorkingDir"],
        // Docker's default hostname is the container's short ID.
        "hostname": container["Config"]["Hostname"].as_str().filter(|h| {
            !container["Id"].as_str().unwrap_or_default().starts_with(h)
        }),
        "extra_hosts": host["ExtraHosts"],
        "cap_add": host["CapAdd"],
        "cap_drop": host["CapDrop"],
        "init": host["Init"],
        "read_only": host["ReadonlyRootfs"],
        "tmpfs": host["Tmpfs"],
        "ulimits": host["Ulimits"],
        "log_config": host["LogConfig"],
        "privileged": host["Privileged"],
        "dns": host["Dns"],
        "dns_search": host["DnsSearch"],
        "security_opt": host["SecurityOpt"],
        "sysctls": host["Sysctls"],
        "shm_size": host["ShmSize"],
        "pids_limit": host["PidsLimit"],
        "tty": container["Config"]["Tty"],
        "stdin_open": container["Config"]["OpenStdin"],
    })
}

fn network_ipam(name: &str, replace: &[(&str, &str)]) -> String {
    let out = run_ok(
        cmd(
            "docker",
            [
                "network",
                "inspect",
                "--format",
                "{{json .IPAM.Config}}",
                name,
            ],
        ),
        TIMEOUT,
    );
    let mut text = out.trim().to_string();
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    text
}

fn berth(
    cli: &BerthCli,
    args: &[&str],
    file: &Path,
    inventory: &Path,
    extra: &[&str],
) -> CmdOutput {
    let mut c = cli.cmd(args);
    c.arg(file).arg("-i").arg(inventory).args(extra);
    run(c, TIMEOUT)
}

fn docker_compose(dir: &Path, project: &str, env: &[(&str, String)], args: &[&str]) -> Command {
    let mut c = cmd("docker-compose", ["-p", project, "-f"]);
    c.arg(dir.join("compose.yaml")).args(args).current_dir(dir);
    for (name, value) in env {
        c.env(name, value);
    }
    c
}

fn image_of(container: &str) -> String {
    inspect(container)["Config"]["Image"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn compose_file_deploys_like_docker_compose_up() {
    if !require_tool("docker") || !require_tool("docker-compose") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let id = unique("ce2e").replace(['-', '_'], "");
    // The folder's name is Berth's project (there is no `name:` in 1.29's subset).
    let project = format!("{id}b");
    let reference = format!("{id}r");
    let repository = format!("compose-e2e/{id}");
    let registry = server.host();
    let _cleanup = DockerCleanup {
        labels: [&project, &reference]
            .iter()
            .map(|p| format!("label=com.docker.compose.project={p}"))
            .collect(),
        images: vec![format!("{registry}/{repository}")],
        dirs: Vec::new(),
    };
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let v1 = import_image(&cli, &rootfs, &format!("{registry}/{repository}:v1"), "1");
    let v2 = import_image(&cli, &rootfs, &format!("{registry}/{repository}:v2"), "2");

    let dir = cli.path(&project);
    fs::create_dir_all(&dir).expect("mkdir project");
    fs::write(dir.join("compose.yaml"), COMPOSE).expect("write compose.yaml");
    fs::write(
        dir.join(".env"),
        format!("REGISTRY={registry}\nREPO={repository}\n"),
    )
    .expect("write .env");
    fs::write(
        dir.join("web.env"),
        "# from env_file\nMODE=from-file\nFILE_ONLY='x y'\n",
    )
    .expect("write web.env");
    fs::write(dir.join("token.txt"), "s3cr3t-token").expect("write token.txt");

    // Berth's variables come from the inventory; docker-compose's from its environment.
    let (web_port, alt_port) = (free_port(), free_port());
    let (ref_web_port, ref_alt_port) = (free_port(), free_port());
    let inventory = cli.path("inventory");
    fs::create_dir_all(&inventory).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  hosts:\n    local:\n      docker_host: \"{}\"\n      FRONT: \"{BERTH_FRONT}\"\n      BACK: \"{BERTH_BACK}\"\n      WEB_PORT: {web_port}\n      ALT_PORT: {alt_port}\n      FROM_ENV: shared\n      CRON_NAME: {project}-cron\n",
            docker_host()
        ),
    )
    .expect("write hosts.yml");
    let compose_env = vec![
        ("FRONT", REF_FRONT.to_string()),
        ("BACK", REF_BACK.to_string()),
        ("WEB_PORT", ref_web_port.to_string()),
        ("ALT_PORT", ref_alt_port.to_string()),
        ("FROM_ENV", "shared".to_string()),
        ("CRON_NAME", format!("{reference}-cron")),
    ];
    let compose_file = dir.join("compose.yaml");

    // --- 1. docker-compose 1.29 accepts the file -----------------------------------------------
    run_ok(
        docker_compose(&dir, &reference, &compose_env, &["config", "-q"]),
        TIMEOUT,
    );

    // --- 2. the same file, by Berth and by docker-compose ---------------------------------------
    let out = ok(berth(&cli, &["deploy"], &compose_file, &inventory, &[]));
    // One pull, one volume, three networks (front, back, default), five containers.
    assert!(out.contains("local : ok=0 changed=10"), "{out}");
    run_ok(
        docker_compose(&dir, &reference, &compose_env, &["up", "-d"]),
        TIMEOUT,
    );

    let ours = project_containers(&project);
    let theirs = project_containers(&reference);
    let keys: Vec<&String> = ours.keys().collect();
    assert_eq!(keys, ["cron-1", "nodes-1", "web-1", "worker-1", "worker-2"]);
    assert_eq!(keys, theirs.keys().collect::<Vec<_>>());
    assert_eq!(
        ours["web-1"]["Name"],
        format!("/{project}-web-1"),
        "compose v2 names"
    );
    assert_eq!(ours["cron-1"]["Name"], format!("/{project}-cron"));
    let berth_subst = [
        (BERTH_FRONT, "FRONT"),
        (BERTH_BACK, "BACK"),
        (&*web_port.to_string(), "WEB_PORT"),
        (&*alt_port.to_string(), "ALT_PORT"),
    ];
    let (rw, ra) = (ref_web_port.to_string(), ref_alt_port.to_string());
    let ref_subst = [
        (REF_FRONT, "FRONT"),
        (REF_BACK, "BACK"),
        (rw.as_str(), "WEB_PORT"),
        (ra.as_str(), "ALT_PORT"),
    ];
    for key in ours.keys() {
        let mine = comparable(&ours[key], &project, &berth_subst);
        let reference_view = comparable(&theirs[key], &reference, &ref_subst);
        assert_eq!(
            mine, reference_view,
            "{key}: Berth (left) and docker-compose (right) differ"
        );
    }
    // Spot checks that the comparison saw what the file says.
    let web = comparable(&ours["web-1"], &project, &berth_subst);
    assert_eq!(web["networks"]["front"]["address"], "FRONT.10");
    assert_eq!(web["networks"]["front"]["gateway"], "FRONT.100");
    let env = web["env"].to_string();
    assert!(
        env.contains("MODE=one") && env.contains("FILE_ONLY=x y"),
        "{env}"
    );
    assert_eq!(
        web["ports"],
        serde_json::json!(["127.0.0.1:WEB_PORT->8000/tcp", ":ALT_PORT->8001/udp"])
    );
    let nodes = comparable(&ours["nodes-1"], &project, &berth_subst);
    assert_eq!(nodes["networks"]["back"]["address"], "BACK.2");
    assert!(nodes["env"].to_string().contains("FROM_ENV=shared"));
    assert_eq!(nodes["user"], "65534");
    assert_eq!(nodes["hostname"], "nodes-host");
    assert_eq!(nodes["read_only"], true);
    assert_eq!(nodes["tmpfs"]["/run"], "size=1m");
    assert_eq!(nodes["ulimits"][0]["Hard"], 2048);
    assert_eq!(nodes["log_config"]["Config"]["max-size"], "1m");
    assert_eq!(nodes["privileged"], true);
    assert_eq!(nodes["sysctls"]["net.core.somaxconn"], "1024");
    assert_eq!(nodes["shm_size"], 32 << 20);
    assert_eq!(nodes["tty"], true);
    // worker has no `networks:`: both put it on the project's default network.
    let worker = comparable(&ours["worker-2"], &project, &berth_subst);
    assert!(worker["networks"]["default"].is_object(), "{worker}");
    for (network, ours_name, theirs_name) in [
        (
            "front",
            format!("{project}_front"),
            format!("{reference}_front"),
        ),
        (
            "back",
            format!("{project}_back"),
            format!("{reference}_back"),
        ),
    ] {
        assert_eq!(
            network_ipam(&ours_name, &berth_subst),
            network_ipam(&theirs_name, &ref_subst),
            "network {network}"
        );
    }
    assert_eq!(
        web["mounts"],
        serde_json::json!(["/data volume data", "/run/secrets/token bind "]),
        "{web}"
    );
    for container in [format!("{project}-web-1"), format!("{reference}_web_1")] {
        let token = run_ok(
            cmd(
                "docker",
                [
                    "exec",
                    &container,
                    "/bin/busybox",
                    "cat",
                    "/run/secrets/token",
                ],
            ),
            TIMEOUT,
        );
        assert_eq!(token, "s3cr3t-token", "{container}");
    }
    let volume_label = run_ok(
        cmd(
            "docker",
            [
                "volume",
                "inspect",
                "--format",
                "{{index .Labels \"com.docker.compose.volume\"}}",
                &format!("{project}_data"),
            ],
        ),
        TIMEOUT,
    );
    assert_eq!(volume_label.trim(), "data");
    // The published port answers.
    let page = run_ok(
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
    assert!(page.contains("root:"), "{page}");

    // --- 3. docker-compose sees Berth's project --------------------------------------------------
    let ps = run_ok(
        docker_compose(&dir, &project, &compose_env, &["ps", "-q"]),
        TIMEOUT,
    );
    let listed: BTreeSet<&str> = ps.split_whitespace().collect();
    let ours_ids: BTreeSet<&str> = ours.values().filter_map(|c| c["Id"].as_str()).collect();
    assert_eq!(listed, ours_ids, "docker-compose ps -q of Berth's project");

    // --- 4. unchanged re-run; `-e` over .env updates the tag; rollback ------------------------
    let out = ok(berth(&cli, &["deploy"], &compose_file, &inventory, &[]));
    assert!(
        out.contains("local : ok=") && out.contains("changed=0"),
        "{out}"
    );
    assert!(image_of(&format!("{project}-web-1")).ends_with(&v1));
    let out = ok(berth(
        &cli,
        &["deploy"],
        &compose_file,
        &inventory,
        &["-e", "TAG=v2"],
    ));
    assert!(out.contains("changed="), "{out}");
    for name in ["web-1", "nodes-1", "worker-1", "worker-2"] {
        let image = image_of(&format!("{project}-{name}"));
        assert!(image.ends_with(&v2), "{name} runs {image}");
    }
    ok(berth(&cli, &["rollback"], &compose_file, &inventory, &[]));
    for name in ["web-1", "nodes-1", "worker-1", "worker-2"] {
        let image = image_of(&format!("{project}-{name}"));
        assert!(image.ends_with(&v1), "{name} runs {image} after rollback");
    }

    // --- 5. `berth down` removes Berth's project and keeps its volume; the other stays ----
    ok(berth(&cli, &["down"], &compose_file, &inventory, &[]));
    assert!(project_containers(&project).is_empty());
    let label = format!("label=com.docker.compose.project={project}");
    let left = run_ok(
        cmd("docker", ["network", "ls", "-q", "--filter", &label]),
        TIMEOUT,
    );
    assert!(left.trim().is_empty(), "networks left: {left}");
    run_ok(
        cmd("docker", ["volume", "inspect", &format!("{project}_data")]),
        TIMEOUT,
    );
    assert_eq!(project_containers(&reference).len(), 5);

    // --- 6. a key Berth cannot express yet is refused before anything happens -----------------
    let bad = cli.path("bad");
    fs::create_dir_all(&bad).expect("mkdir bad");
    fs::write(
        bad.join("compose.yaml"),
        "services:\n  web:\n    image: x\n    devices: [/dev/fuse]\n    enviroment: { A: 1 }\n",
    )
    .expect("write bad compose");
    let out = berth(
        &cli,
        &["deploy"],
        &bad.join("compose.yaml"),
        &inventory,
        &[],
    );
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("compose.yaml")
            && out
                .stderr
                .contains("services.web.devices (line 4): `devices` is not supported yet")
            && out
                .stderr
                .contains("services.web.enviroment (line 5): unknown key `enviroment`"),
        "{}",
        out.describe()
    );
}

/// `examples/origin/compose.yaml` plans cleanly against a real daemon, as deploy_e2e checks
/// for the example's app.yml: its testing inventory is pointed at the daemon under test.
#[test]
fn origin_compose_example_plans_against_a_real_daemon() {
    if !require_tool("docker") {
        return;
    }
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/origin");
    let cli = BerthCli::new();
    let inventory = cli.path("testing");
    fs::create_dir_all(inventory.join("group_vars")).expect("mkdir");
    fs::copy(
        examples.join("testing/hosts.yml"),
        inventory.join("hosts.yml"),
    )
    .expect("copy hosts");
    let mut vars =
        fs::read_to_string(examples.join("testing/group_vars/all.yml")).expect("read vars");
    vars.push_str(&format!("docker_host: \"{}\"\n", docker_host()));
    fs::write(inventory.join("group_vars/all.yml"), vars).expect("write vars");

    let mut c = cli.cmd(["deploy"]);
    c.arg(examples.join("compose.yaml"))
        .arg("-i")
        .arg(&inventory)
        .args(["--check", "--json", "--no-pin"]);
    let out = run(c, TIMEOUT);
    assert!(out.status.success(), "{}", out.describe());
    let report = parse_json(&out.stdout, "deploy --check --json");
    let hosts = report["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3);
    for host in hosts {
        let actions = host["plan"]["actions"].as_array().expect("actions");
        let created: Vec<&str> = actions
            .iter()
            .filter(|a| a["action"] == "create_container")
            .filter_map(|a| a["container"]["name"].as_str())
            .collect();
        assert_eq!(
            created,
            ["app_example-nodes-1", "app_example-web-1"],
            "{host}"
        );
        assert!(
            actions.iter().any(|a| a["action"] == "create_network"),
            "{host}"
        );
        assert_eq!(host["failed"], 0, "{host}");
    }
}
