use super::*;
use crate::app::{AppSource, Protocol, RestartPolicy};
use crate::inventory::Inventory;
use crate::{desired_state, labels};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};

/// A project folder with `compose.yaml` and optional extra files.
fn project(compose: &str, files: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("compose.yaml");
    std::fs::write(&path, compose).expect("write");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    (dir, path)
}

fn vars(value: Value) -> Vars {
    serde_json::from_value(value).expect("mapping")
}

fn render(compose: &str, host_vars: Value) -> Result<App> {
    let (_dir, path) = project(compose, &[]);
    AppSource::load(&path)?.render(&vars(host_vars))
}

fn error_of(compose: &str) -> String {
    render(compose, json!({})).unwrap_err().to_string()
}

const FULL: &str = r#"
name: shop
x-common: &common
  restart: unless-stopped
x-berth: { hosts: web }
services:
  web:
    <<: *common
    image: "reg/web:${TAG:-v1}"
    command: httpd -f -p 8000
    environment:
      - MODE=prod
      - FROM_HOST
    env_file: web.env
    ports:
      - "8080:8000"
      - target: 9000
        published: "9001"
        host_ip: 127.0.0.1
        protocol: udp
    expose: ["8000", "9100-9101/tcp"]
    networks:
      front:
        ipv4_address: 10.1.4.10
        aliases: [www]
      back:
    healthcheck:
      test: ["CMD", "wget", "-q", "http://127.0.0.1:8000/"]
      interval: 1m30s
      timeout: 2s
      retries: 3
      start_period: 5s
    stop_signal: SIGQUIT
    stop_grace_period: 2s
    labels: [team=web]
    user: 1000
    working_dir: /app
    hostname: web1
    extra_hosts: ["db.internal:10.0.0.5", "cache=10.0.0.6"]
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    init: true
    read_only: true
    tmpfs: [/run, "/tmp:size=64m"]
    ulimits: { nproc: 512, nofile: { soft: 1024, hard: 2048 } }
    logging: { driver: json-file, options: { max-size: 1m } }
    depends_on:
      db: { condition: service_healthy }
    deploy:
      replicas: 1
      resources:
        limits: { cpus: "0.5", memory: 50M }
        reservations: { cpus: "0.25", memory: 20M }
      placement:
        constraints: [node.labels.zone==a]
    build:
      context: ./web
      args: [BASE=busybox]
  db:
    image: reg/db
    x-berth: { hosts: db }
    environment: { PASSWORD: "${DB_PASSWORD:?set DB_PASSWORD}", EMPTY: }
    networks: [back]
    volumes:
      - db_data:/var/lib/db
      - { type: tmpfs, target: /scratch, tmpfs: { size: 64m } }
    secrets: [db_password]
    deploy:
      restart_policy: { condition: on-failure, max_attempts: 3 }
  worker:
    image: reg/worker
    scale: 2
  debug:
    image: reg/debug
    profiles: [debug]
networks:
  front:
    ipam:
      config:
        - subnet: 10.1.4.0/24
          gateway: 10.1.4.100
          ip_range: 10.1.4.128/25
  back:
    name: shop-back
    driver: bridge
    driver_opts: { com.docker.network.bridge.name: br-shop }
    labels: { tier: back }
volumes:
  db_data:
    driver_opts: { type: tmpfs, device: tmpfs }
  shared: { external: true }
secrets:
  db_password: { file: ./db_password }
"#;

#[test]
fn converts_every_supported_key() {
    let (_dir, path) = project(
        FULL,
        &[("web.env", "# comment\nMODE=dev\nFROM_FILE='quoted value'\n")],
    );
    let source = AppSource::load(&path).expect("loads");
    assert!(source.is_compose());
    assert_eq!(source.name, "shop");
    let app = source
        .render(&vars(
            json!({ "FROM_HOST": "host value", "DB_PASSWORD": "pw" }),
        ))
        .expect("renders");
    assert_eq!(app.naming, Naming::Compose);
    let web = &app.services["web"];
    assert_eq!(web.image, "reg/web:v1");
    assert_eq!(web.hosts, "web");
    assert_eq!(web.restart.name, "unless-stopped");
    assert_eq!(
        web.command.as_deref().unwrap(),
        ["httpd", "-f", "-p", "8000"]
    );
    // `environment` wins over `env_file`; a bare name takes the host's variable.
    assert_eq!(web.env["MODE"], "prod");
    assert_eq!(web.env["FROM_FILE"], "quoted value");
    assert_eq!(web.env["FROM_HOST"], "host value");
    let ports: Vec<String> = web.ports.iter().map(ToString::to_string).collect();
    assert_eq!(ports, ["8080->8000/tcp", "127.0.0.1:9001->9000/udp"]);
    assert_eq!(web.ports[1].protocol, Protocol::Udp);
    assert_eq!(web.ports[1].host_ip, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(
        web.networks["front"].ipv4_address,
        Some(Ipv4Addr::new(10, 1, 4, 10))
    );
    assert_eq!(web.networks["front"].aliases, ["web", "www"]);
    assert_eq!(web.networks["back"].aliases, ["web"]);
    let check = web.healthcheck.as_ref().unwrap();
    assert_eq!(check.test, ["CMD", "wget", "-q", "http://127.0.0.1:8000/"]);
    assert_eq!(check.interval, Some(90_000_000_000));
    assert_eq!(check.start_period, Some(5_000_000_000));
    assert_eq!(web.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(web.stop_grace_period, Some(2_000_000_000));
    assert_eq!(web.labels["team"], "web");
    let runtime = crate::app::RuntimeOptions::of(web);
    assert_eq!(runtime.user.as_deref(), Some("1000"));
    assert_eq!(runtime.working_dir.as_deref(), Some("/app"));
    assert_eq!(runtime.hostname.as_deref(), Some("web1"));
    assert_eq!(
        runtime.extra_hosts,
        ["db.internal:10.0.0.5", "cache:10.0.0.6"]
    );
    assert_eq!((runtime.cap_add.len(), runtime.cap_drop.len()), (1, 1));
    assert_eq!((runtime.init, runtime.read_only), (Some(true), true));
    assert_eq!(runtime.tmpfs["/tmp"], "size=64m");
    assert_eq!(runtime.tmpfs["/run"], "");
    assert_eq!(runtime.ulimits["nproc"].hard, 512);
    assert_eq!(runtime.ulimits["nofile"].soft, 1024);
    assert_eq!(runtime.logging.as_ref().unwrap().options["max-size"], "1m");
    assert_eq!(web.cpus, Some(0.5));
    assert_eq!(web.memory, Some(50 * 1024 * 1024));
    assert_eq!(web.reservations.as_ref().unwrap().cpus, Some(0.25));
    assert_eq!(
        web.placement.as_ref().unwrap().constraints,
        ["node.labels.zone==a"]
    );
    let build = web.build.as_ref().unwrap();
    assert_eq!(build.context, "./web");
    assert_eq!(build.args["BASE"], "busybox");

    let db = &app.services["db"];
    assert_eq!(db.hosts, "db");
    assert_eq!(db.env["PASSWORD"], "pw");
    assert!(
        !db.env.contains_key("EMPTY"),
        "an unset bare name is left out"
    );
    assert_eq!(
        db.restart,
        RestartPolicy {
            name: "on-failure".into(),
            max_retries: Some(3)
        }
    );
    assert_eq!(db.volumes.len(), 2);
    assert_eq!(db.volumes[0].source.as_deref(), Some("db_data"));
    assert_eq!(db.volumes[0].target, "/var/lib/db");
    assert_eq!(
        db.volumes[1].tmpfs.as_ref().unwrap().size,
        Some(64 * 1024 * 1024)
    );
    assert_eq!(db.secrets[0].target_path(), "/run/secrets/db_password");
    assert_eq!(
        app.secrets["db_password"].file.as_deref(),
        Some("./db_password")
    );
    let data = &app.volumes["db_data"];
    assert_eq!(data.driver_opts["type"], "tmpfs");
    assert_eq!(data.labels["com.docker.compose.volume"], "db_data");
    assert!(app.volumes["shared"].external);
    assert!(app.volumes["shared"].labels.is_empty());
    assert_eq!(app.services["worker"].replicas, 2);
    assert_eq!(
        app.services["worker"].networks["default"].aliases,
        ["worker"]
    );
    assert!(!app.services.contains_key("debug"), "inactive profile");

    let front = &app.networks["front"];
    assert_eq!(front.subnet.unwrap().to_string(), "10.1.4.0/24");
    assert_eq!(front.gateway, Some(Ipv4Addr::new(10, 1, 4, 100)));
    assert_eq!(front.ip_range.unwrap().to_string(), "10.1.4.128/25");
    assert_eq!(front.labels["com.docker.compose.network"], "front");
    assert_eq!(front.labels["com.docker.compose.project"], "shop");
    assert_eq!(app.network_docker_name("front"), "shop_front");
    assert_eq!(app.network_docker_name("back"), "shop-back");
    assert_eq!(
        app.networks["back"].options["com.docker.network.bridge.name"],
        "br-shop"
    );
    assert_eq!(app.networks["back"].labels["tier"], "back");
    assert_eq!(app.network_docker_name("default"), "shop_default");
}

#[test]
fn profiles_come_from_compose_profiles() {
    let (_dir, path) = project(FULL, &[("web.env", "")]);
    let app = AppSource::load(&path)
        .unwrap()
        .render(&vars(
            json!({ "DB_PASSWORD": "pw", "COMPOSE_PROFILES": "other,debug" }),
        ))
        .unwrap();
    assert!(app.services.contains_key("debug"));
}

#[test]
fn interpolation_precedence_host_then_process_then_dotenv() {
    let compose = "services:\n  web:\n    image: \"r/${BERTH_T_A}:${BERTH_T_B}-${BERTH_T_C}\"\n";
    let (_dir, path) = project(
        compose,
        &[(
            ".env",
            "BERTH_T_A=dotenv\nBERTH_T_B=dotenv\nBERTH_T_C=dotenv\n",
        )],
    );
    // Unique names: the process environment is shared by every test in this binary.
    std::env::set_var("BERTH_T_B", "process");
    std::env::set_var("BERTH_T_A", "process");
    let source = AppSource::load(&path).unwrap();
    let app = source
        .render(&vars(json!({ "BERTH_T_A": "host" })))
        .unwrap();
    assert_eq!(app.services["web"].image, "r/host:process-dotenv");
    // The project is the folder's name when there is no `name:`.
    let folder = path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_lowercase();
    let expected: String = folder
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    assert_eq!(source.name, expected.trim_start_matches(['_', '-']));
}

#[test]
fn a_required_variable_names_file_and_key() {
    let err = error_of(
        "name: p\nservices:\n  db:\n    image: x\n    environment:\n      PW: ${PW:?set PW}\n",
    );
    assert!(err.contains("compose.yaml: services.db.environment.PW (line 6): required variable PW is missing a value: set PW"), "{err}");
}

#[test]
fn unknown_keys_name_file_line_and_key() {
    let err = error_of("name: p\nservices:\n  web:\n    image: x\n    enviroment: { A: 1 }\n");
    assert!(err.contains("compose.yaml: invalid app file"), "{err}");
    assert!(
        err.contains("services.web.enviroment (line 5): unknown key `enviroment`"),
        "{err}"
    );
    let err =
        error_of("name: p\nservices:\n  web: { image: x, ports: [{ target: 80, nodeport: 1 }] }\n");
    assert!(err.contains("unknown key `nodeport`"), "{err}");
    let err = error_of("name: p\nservices:\n  web:\n    image: x\nnetworks:\n  n:\n    ipam:\n      config:\n        - subnet: 10.0.0.0/24\n          gatway: 10.0.0.1\n");
    assert!(
        err.contains("networks.n.ipam.config[0].gatway (line 10): unknown key"),
        "{err}"
    );
    // `x-*` extensions pass everywhere the spec allows them.
    render(
        "name: p\nx-a: 1\nservices:\n  web: { image: x, x-b: 2 }\nnetworks:\n  n: { x-c: 3 }\n",
        json!({}),
    )
    .unwrap();
}

#[test]
fn keys_berth_cannot_express_yet_are_named() {
    for (key, compose) in [
        ("services.web.devices (line 5)", "name: p\nservices:\n  web:\n    image: x\n    devices: [/dev/fuse]\n"),
        ("services.web.healthcheck.start_interval", "name: p\nservices:\n  web: { image: x, healthcheck: { test: [CMD, x], start_interval: 1s } }\n"),
        ("services.web.deploy.update_config", "name: p\nservices:\n  web: { image: x, deploy: { update_config: { parallelism: 1 } } }\n"),
        ("networks.n.external", "name: p\nservices:\n  web: { image: x }\nnetworks:\n  n: { external: true }\n"),
        ("configs", "name: p\nservices:\n  web: { image: x }\nconfigs:\n  c: { file: ./c }\n"),
        ("secrets.s.external (line 5)", "name: p\nservices:\n  web: { image: x }\nsecrets:\n  s: { external: true }\n"),
        ("services.web.depends_on.db.condition", "name: p\nservices:\n  db: { image: x }\n  web: { image: x, depends_on: { db: { condition: service_completed_successfully } } }\n"),
    ] {
        let err = error_of(compose);
        assert!(err.contains(key) && err.contains("not supported yet"), "{key}: {err}");
    }
}

#[test]
fn berth_validation_still_applies() {
    let err = error_of("name: p\nservices:\n  web:\n    image: x\n    networks: [nope]\n");
    assert!(err.contains("services.web.networks.nope"), "{err}");
    assert!(err.contains("unknown network `nope`"), "{err}");
    let err = error_of("name: p\nservices:\n  web: { build: . }\n");
    assert!(err.contains("services.web.image: missing"), "{err}");
    let err = error_of("name: p\nservices:\n  web: { image: x, depends_on: [db] }\n");
    assert!(err.contains("unknown service `db`"), "{err}");
    let err = error_of("name: My App\nservices:\n  web: { image: x }\n");
    assert!(err.contains("not a valid project name"), "{err}");
}

#[test]
fn detection_keeps_berth_app_files() {
    let berth = |text: &str| {
        let path = Path::new("app.yml");
        !is_compose(path, &crate::yaml::parse_str(path, text).unwrap())
    };
    assert!(berth("name: a\nservices:\n  web: { image: x }\n"));
    assert!(berth(
        "name: a\nvariables: {}\nservices:\n  web: { image: x, deploy: {} }\n"
    ));
    assert!(berth(
        "name: a\nservices:\n  web: { image: x, hosts: web }\n"
    ));
    assert!(berth("name: a\nservice: {}\n"));
    assert!(!berth("services:\n  web: { image: x }\n"));
    assert!(!berth(
        "name: a\nversion: '3.8'\nservices:\n  web: { image: x }\n"
    ));
    assert!(!berth(
        "name: a\nservices:\n  web: { image: x, expose: [80] }\n"
    ));
    assert!(!berth(
        "name: a\nservices:\n  web: { image: x }\nnetworks:\n  n: { ipam: {} }\n"
    ));
    let text = "name: a\nservices:\n  web: { image: x }\n";
    let document = crate::yaml::parse_str(Path::new("a"), text).unwrap();
    for name in [
        "compose.yaml",
        "docker-compose.yml",
        "deploy-compose.yml",
        "dir/compose.yml",
    ] {
        assert!(is_compose(Path::new(name), &document), "{name}");
    }
}

#[test]
fn containers_are_named_and_labelled_as_compose_does() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts.yml"),
        "all:\n  hosts: { h1: { tag: v2 }, h2: }\n",
    )
    .unwrap();
    let inventory = Inventory::load(dir.path()).unwrap();
    let (_project, path) = project(
        "name: shop\nservices:\n  web: { image: 'r/web:${tag:-v1}', deploy: { replicas: 2 } }\n",
        &[],
    );
    let source = AppSource::load(&path).unwrap();
    let desired = desired_state(&source, &inventory, None).unwrap();
    let h1 = &desired[0];
    let names: Vec<&str> = h1.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["shop-web-1", "shop-web-2"]);
    assert_eq!(h1.containers[0].spec.image, "r/web:v2");
    assert_eq!(desired[1].containers[0].spec.image, "r/web:v1");
    assert_eq!(h1.networks[0].name, "shop_default");
    let container = &h1.containers[1];
    let all = container.labels("shop");
    assert_eq!(all["com.docker.compose.project"], "shop");
    assert_eq!(all["com.docker.compose.service"], "web");
    assert_eq!(all["com.docker.compose.container-number"], "2");
    assert_eq!(all["com.docker.compose.oneoff"], "False");
    assert_eq!(all["com.docker.compose.config-hash"], container.config_hash);
    assert_eq!(all[labels::APP], "shop");
}

#[test]
fn line_of_follows_block_and_flow_style() {
    let text = "services:\n  web:\n    image: x\n    ports:\n      - target: 1\n  db: { image: y, bad: 1 }\n";
    assert_eq!(line_of(text, "services.web.image"), Some(3));
    assert_eq!(line_of(text, "services.web.ports[0].target"), Some(5));
    assert_eq!(line_of(text, "services.db.bad"), Some(6));
    assert_eq!(line_of(text, "services.web.bad"), None);
}

/// `examples/origin/compose.yaml` is `examples/origin/app.yml` as a compose file: for every
/// host of both inventories, the same containers (by service and replica), networks,
/// addresses, ports, env and limits; only names and labels follow Compose.
#[test]
fn origin_example_compose_file_matches_its_app_file() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/origin");
    let app = AppSource::load(&examples.join("app.yml")).expect("app.yml");
    let compose = AppSource::load(&examples.join("compose.yaml")).expect("compose.yaml");
    assert!(compose.is_compose());
    assert_eq!(compose.name, app.name);
    for environment in ["testing", "production"] {
        let inventory = Inventory::load(&examples.join(environment)).expect("inventory");
        let from_app = desired_state(&app, &inventory, None).expect("app desired");
        let from_compose = desired_state(&compose, &inventory, None).expect("compose desired");
        assert_eq!(from_app.len(), from_compose.len());
        // `berth ship` builds the same images from the same contexts and args.
        assert_eq!(
            crate::ship::image_builds(&from_app),
            crate::ship::image_builds(&from_compose)
        );
        assert!(!crate::ship::image_builds(&from_compose).unwrap().is_empty());
        for (a, c) in from_app.iter().zip(&from_compose) {
            assert_eq!(a.host, c.host);
            assert_eq!(a.networks.len(), c.networks.len(), "{}", a.host);
            for (an, cn) in a.networks.iter().zip(&c.networks) {
                assert_eq!(
                    (&an.name, an.driver, an.subnet, an.gateway),
                    (&cn.name, cn.driver, cn.subnet, cn.gateway),
                    "{}",
                    a.host
                );
            }
            assert_eq!(a.containers.len(), c.containers.len(), "{}", a.host);
            for (ac, cc) in a.containers.iter().zip(&c.containers) {
                assert_eq!(
                    cc.name,
                    format!("app_example-{}-{}", ac.service, ac.replica)
                );
                let (mut aspec, mut cspec) = (ac.spec.clone(), cc.spec.clone());
                // Compose adds the service name as an alias on each network.
                for attachment in cspec.networks.values_mut() {
                    attachment.aliases.retain(|alias| *alias != ac.service);
                }
                aspec.labels.clear();
                cspec.labels.clear();
                assert_eq!(aspec, cspec, "{} {}", a.host, ac.name);
                assert_eq!(ac.build.is_some(), cc.build.is_some());
            }
        }
    }
}

#[test]
fn depends_on_orders_a_hosts_containers_and_cycles_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.yml"), "all:\n  hosts: { h1: }\n").unwrap();
    let inventory = Inventory::load(dir.path()).unwrap();
    let (_project, path) = project(
        "name: p\nservices:\n  api: { image: x, depends_on: { db: { condition: service_healthy } } }\n  db: { image: x, depends_on: [cache] }\n  cache: { image: x }\n",
        &[],
    );
    let desired = desired_state(&AppSource::load(&path).unwrap(), &inventory, None).unwrap();
    let names: Vec<&str> = desired[0]
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["p-cache-1", "p-db-1", "p-api-1"]);
    let err = error_of("name: p\nservices:\n  a: { image: x, depends_on: [b] }\n  b: { image: x, depends_on: [a] }\n");
    assert!(err.contains("dependency cycle: a -> b -> a"), "{err}");
}

/// `--swarm` with a compose file is `docker stack deploy`: services named `PROJECT_SERVICE`,
/// with the `deploy:` keys as their replicas, resources, restart policy and placement.
#[test]
fn swarm_mode_applies_the_deploy_keys() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts.yml"),
        "all:\n  children:\n    managers: { hosts: { m1: } }\n",
    )
    .unwrap();
    let inventory = Inventory::load(dir.path()).unwrap();
    let (_project, path) = project(
        r#"
name: stack
services:
  web:
    image: reg/web:1
    ports: [{ target: 8000, published: 80, mode: host }]
    deploy:
      replicas: 3
      resources:
        limits: { cpus: "0.5", memory: 128M }
        reservations: { cpus: "0.25", memory: 64M }
      restart_policy: { condition: on-failure, max_attempts: 2 }
      placement:
        constraints: [node.labels.zone==a]
        preferences: [{ spread: node.labels.rack }]
        max_replicas_per_node: 1
networks:
  default:
    driver: overlay
    ipam: { config: [{ subnet: 10.9.0.0/24 }] }
"#,
        &[],
    );
    let source = AppSource::load(&path).unwrap();
    let desired = crate::swarm::desired_swarm(&source, &inventory, None).expect("swarm desired");
    let web = &desired.services[0];
    assert_eq!(web.name, "stack_web");
    assert_eq!(web.spec.replicas, 3);
    assert_eq!(web.spec.limit_nano_cpus, Some(500_000_000));
    assert_eq!(web.spec.limit_memory, Some(128 << 20));
    assert_eq!(web.spec.reserve_nano_cpus, Some(250_000_000));
    assert_eq!(web.spec.reserve_memory, Some(64 << 20));
    assert_eq!(web.spec.restart.max_retries, Some(2));
    assert_eq!(web.spec.constraints, ["node.labels.zone==a"]);
    assert_eq!(web.spec.spread, ["node.labels.rack"]);
    assert_eq!(web.spec.max_replicas_per_node, Some(1));
    assert_eq!(web.spec.networks["stack_default"], ["web"]);
    assert_eq!(desired.networks[0].name, "stack_default");
}

/// The write-up's own layout (INI inventory, extensionless `group_vars/all`, a `host_vars`
/// file with a symlinked sibling) with a compose file: the host_vars override shows only on
/// its hosts, and `-e image_tag=v2` moves every host.
#[test]
fn writeup_layout_with_a_compose_file() {
    let production =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ansible/writeup/production");
    let (_project, path) = project(
        r#"
name: app_example
services:
  web:
    image: "${registry_host}/${image_name}:${image_tag}"
    environment:
      APP_ENV: ${app_env}
      LOG_LEVEL: ${log_level:-info}
      NODE: ${inventory_hostname}
"#,
        &[],
    );
    let source = AppSource::load(&path).unwrap();
    let env_of = |extra: Vars| {
        let inventory = Inventory::load_with_extra_vars(&production, &extra).unwrap();
        desired_state(&source, &inventory, None)
            .unwrap()
            .into_iter()
            .map(|host| {
                let web = &host.containers[0].spec;
                (
                    host.host.clone(),
                    web.image.clone(),
                    web.env["APP_ENV"].clone(),
                    web.env["LOG_LEVEL"].clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    let image = |tag: &str| format!("registry.example.internal:5000/app_example_image:{tag}");
    let row = |host: &str, tag: &str, env: &str, level: &str| {
        (
            host.to_string(),
            image(tag),
            env.to_string(),
            level.to_string(),
        )
    };
    assert_eq!(
        env_of(Vars::new()),
        [
            row("web-back1.prod", "v3", "production", "info"),
            row("web-back2.prod", "v3", "production-special", "debug"),
            row("web-back3.prod", "v3", "production-special", "debug"),
        ]
    );
    let extra = vars(json!({ "image_tag": "v2" }));
    assert!(env_of(extra).iter().all(|(_, i, _, _)| *i == image("v2")));
    // Ansible's magic variables interpolate too.
    let inventory = Inventory::load(&production).unwrap();
    let desired = desired_state(&source, &inventory, None).unwrap();
    assert_eq!(desired[1].containers[0].spec.env["NODE"], "web-back2.prod");
}
