use std::collections::BTreeSet;
use std::path::Path;

use super::*;
use crate::app::AppSource;
use crate::inventory::Inventory;

const HOSTS: &str = "all:\n  children:\n    managers: { hosts: { m1: { docker_host: 'unix:///m1.sock', tag: v2 }, m2: } }\n    workers: { hosts: { w1: } }\n";
const APP: &str = r#"
name: shop
variables: { tag: v1 }
networks:
  front: { subnet: 10.1.4.0/24, gateway: 10.1.4.100, ip_range: 10.1.4.128/25, options: { com.docker.network.bridge.name: br-x } }
  back: { driver: overlay, subnet: 10.2.3.0/24 }
  unused: {}
services:
  web:
    image: "reg/web:{{ tag }}"
    hosts: web
    replicas: 2
    command: [httpd, -f]
    entrypoint: [/bin/sh, -c]
    env: { MODE: prod }
    cpus: 0.5
    memory: 64m
    reservations: { cpus: 0.25, memory: 32m }
    placement: { constraints: [node.labels.zone==a], preferences: [{ spread: node.labels.rack }], max_replicas_per_node: 1 }
    ports: [{ target: 8000, published: 8080, mode: host }, "9000:9000"]
    networks: { front: { aliases: [www] }, back: }
    restart: on-failure:3
    healthcheck: { test: "wget -q localhost:8000", interval: 1s, retries: 2 }
  worker:
    image: reg/worker
    networks: { back: { ipv4_address: 10.2.3.7 } }
"#;

fn setup(app: &str) -> (tempfile::TempDir, AppSource, Inventory) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("hosts.yml"), HOSTS).expect("write");
    let inventory = Inventory::load(dir.path()).expect("inventory");
    let source = AppSource::parse(Path::new("app.yml"), app).expect("app");
    (dir, source, inventory)
}

fn desired(app: &str) -> SwarmDesired {
    let (_dir, source, inventory) = setup(app);
    desired_swarm(&source, &inventory, None).expect("desired")
}

fn actual_from(desired: &SwarmDesired) -> SwarmActual {
    SwarmActual {
        services: desired
            .services
            .iter()
            .map(|s| ActualService {
                id: format!("id-{}", s.name),
                name: s.name.clone(),
                labels: s.labels(&desired.app, None),
            })
            .collect(),
        networks: desired
            .networks
            .iter()
            .map(|n| ActualSwarmNetwork {
                id: format!("id-{}", n.name),
                name: n.name.clone(),
                driver: "overlay".into(),
                subnet: n.subnet,
                gateway: n.gateway,
                ip_range: n.ip_range,
                internal: n.internal,
                attachable: true,
                labels: n.labels.clone(),
            })
            .collect(),
    }
}

#[test]
fn app_file_becomes_services_and_overlay_networks_on_the_manager() {
    let d = desired(APP);
    // The `managers` group picks the manager; its vars render the file.
    assert_eq!(d.manager, "m1");
    assert_eq!(d.endpoint.to_string(), "unix:///m1.sock");
    let web = &d.services[0];
    assert_eq!(web.name, "shop_web");
    assert_eq!(web.spec.image, "reg/web:v2");
    assert_eq!(web.spec.replicas, 2);
    assert_eq!(web.spec.entrypoint.as_deref().unwrap(), ["/bin/sh", "-c"]);
    assert_eq!(web.spec.limit_nano_cpus, Some(500_000_000));
    assert_eq!(web.spec.reserve_nano_cpus, Some(250_000_000));
    assert_eq!(web.spec.reserve_memory, Some(32 << 20));
    assert_eq!(web.spec.constraints, ["node.labels.zone==a"]);
    assert_eq!(web.spec.spread, ["node.labels.rack"]);
    assert_eq!(web.spec.max_replicas_per_node, Some(1));
    let ports: Vec<String> = web.spec.ports.iter().map(ToString::to_string).collect();
    assert_eq!(ports, ["8080->8000/tcp (host)", "9000->9000/tcp (ingress)"]);
    assert_eq!(web.spec.networks["shop_front"], ["www"]);
    assert!(web.spec.networks["shop_back"].is_empty());
    assert_eq!(
        web.spec.needs_stop_first().as_deref(),
        Some("host-mode port 8080->8000/tcp (host) is held by the old task")
    );
    let names: Vec<&str> = d.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        ["shop_back", "shop_front"],
        "unused networks are not created"
    );
    assert!(d.networks[1].options.is_empty());
    assert_eq!(d.networks[1].labels["berth.app"], "shop");
    assert_eq!(
            d.warnings,
            [
                "services.web.hosts (web) does not apply in swarm mode: Swarm places tasks; use placement.constraints",
                "services.worker.networks.back: fixed address 10.2.3.7 ignored: Swarm assigns task addresses itself",
                "networks.front: bridge options (com.docker.network.bridge.name) dropped: swarm mode creates an overlay network",
            ]
        );
}

#[test]
fn limit_picks_the_manager_and_deterministic_hashes() {
    let (_dir, source, inventory) = setup(APP);
    let d = desired_swarm(&source, &inventory, Some("m2")).unwrap();
    assert_eq!(d.manager, "m2");
    assert_eq!(d.services[0].spec.image, "reg/web:v1");
    let again = desired_swarm(&source, &inventory, Some("m2")).unwrap();
    assert_eq!(d.services[0].config_hash, again.services[0].config_hash);
    let err = desired_swarm(&source, &inventory, Some("nobody"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nobody"), "{err}");
}

#[test]
fn what_swarm_cannot_do_is_an_error() {
    let (_dir, source, inventory) = setup(
        r#"
name: a
networks:
  mac: { driver: macvlan }
services:
  one: { image: x, ports: ["127.0.0.1:80:80"], networks: [mac], labels: { berth.app: b } }
  two: { image: x, ports: ["80:8080"] }
"#,
    );
    let err = desired_swarm(&source, &inventory, None)
        .unwrap_err()
        .to_string();
    for expected in [
        "services.one.ports[0]: host IP 127.0.0.1: Swarm publishes on every address",
        "services.one.labels: labels starting with `berth.` are reserved",
        "services.two.ports[0]: 80/tcp is also published by service `one`",
        "networks.mac.driver: macvlan networks are not supported in swarm mode",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in\n{err}");
    }
}

#[test]
fn app_file_errors_for_swarm_fields() {
    let (_dir, _source, inventory) = setup("name: a\n");
    for (body, expected) in [
        (
            "reservations: { cpus: 2 }, cpus: 1",
            "reserves 2 CPUs, more than its limit",
        ),
        (
            "reservations: { memory: 2g }, memory: 1g",
            "more than its limit `memory`",
        ),
        ("reservations: { gpus: 1 }", "unknown field `gpus`"),
        ("placement: { constraints: [zone] }", "is not a constraint"),
        (
            "placement: { max_replicas_per_node: 0 }",
            "must be at least 1",
        ),
        (
            "placement: { preferences: [{ pack: x }] }",
            "a preference is",
        ),
    ] {
        let source = AppSource::parse(
            Path::new("app.yml"),
            &format!("name: a\nservices:\n  s: {{ image: x, {body} }}\n"),
        )
        .expect("parses");
        let err = desired_swarm(&source, &inventory, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{body}: {err}");
    }
}

#[test]
fn scaling_alone_keeps_the_task_hash() {
    let d = desired(APP);
    let mut scaled = d.services[0].clone();
    scaled.spec.replicas = 5;
    scaled.config_hash = scaled.spec.config_hash();
    assert_ne!(scaled.config_hash, d.services[0].config_hash);
    assert_eq!(scaled.task_hash(), d.services[0].task_hash());
    scaled.spec.env.insert("X".into(), "1".into());
    assert_ne!(scaled.task_hash(), d.services[0].task_hash());
}

#[test]
fn ship_builds_each_image_once() {
    let d = desired(
            "name: a\nservices:\n  one: { image: r/x:1, build: ./x }\n  two: { image: r/x:1, build: ./x }\n  three: { image: r/y }\n",
        );
    let builds = image_builds(&d).unwrap();
    assert_eq!(builds.len(), 1);
    assert_eq!(builds[0].image, "r/x:1");
    assert_eq!(builds[0].services.len(), 2);
    assert_eq!(builds[0].hosts, BTreeSet::from(["m1".to_string()]));
    let clash = desired(
            "name: a\nservices:\n  one: { image: r/x:1, build: ./x }\n  two: { image: r/x:1, build: ./y }\n",
        );
    assert!(image_builds(&clash)
        .unwrap_err()
        .contains("built differently by services one and two"));
}

#[test]
fn fresh_swarm_creates_networks_then_services() {
    let d = desired(APP);
    let plan = plan_swarm(&d, &SwarmActual::default());
    let texts: Vec<String> = plan.actions.iter().map(SwarmAction::text).collect();
    assert_eq!(
            texts,
            [
                "create network shop_back (overlay 10.2.3.0/24)",
                "create network shop_front (overlay 10.1.4.0/24 gateway 10.1.4.100 ip_range 10.1.4.128/25)",
                "create service shop_web (replicas 2)",
                "create service shop_worker (replicas 1)",
            ]
        );
    assert!(plan
        .render()
        .contains("  create   service shop_web (replicas 2)\n"));
}

#[test]
fn unchanged_rerun_plans_nothing() {
    let d = desired(APP);
    let plan = plan_swarm(&d, &actual_from(&d));
    assert!(plan.actions.is_empty(), "{plan:?}");
    assert_eq!(plan.unchanged.len(), 4);
    assert_eq!(plan.error, None);
}

#[test]
fn changes_are_explained_and_removals_come_last() {
    let d = desired(APP);
    let mut actual = actual_from(&d);
    actual.services.push(ActualService {
        id: "id-old".into(),
        name: "shop_old".into(),
        labels: BTreeMap::from([("berth.app".into(), "shop".into())]),
    });
    actual.services.push(ActualService {
        id: "id-foreign".into(),
        name: "other_svc".into(),
        labels: BTreeMap::new(),
    });
    let mut changed = d.clone();
    changed.services[0]
        .spec
        .env
        .insert("MODE".into(), "dev".into());
    changed.services[0].spec.replicas = 3;
    changed.services[0].spec.image_digest = Some("sha256:ab".into());
    changed.services[0].config_hash = changed.services[0].spec.config_hash();
    let plan = plan_swarm(&changed, &actual);
    let texts: Vec<String> = plan.actions.iter().map(SwarmAction::text).collect();
    assert_eq!(
            texts,
            [
                "update service shop_web (stop-first: host-mode port 8080->8000/tcp (host) is held by the old task)",
                "remove service shop_old",
            ]
        );
    let SwarmAction::UpdateService {
        reasons,
        previous_config,
        ..
    } = &plan.actions[0]
    else {
        panic!("not an update: {:?}", plan.actions[0]);
    };
    assert_eq!(
        reasons,
        &[
            "env MODE changed",
            "image_digest none → sha256:ab",
            "replicas 2 → 3"
        ]
    );
    assert_eq!(
        previous_config.as_deref(),
        actual.services[0]
            .labels
            .get(labels::CONFIG)
            .map(String::as_str)
    );
    let printed = plan.render();
    assert!(
        !printed.contains("dev") && !printed.contains("prod"),
        "{printed}"
    );
}

#[test]
fn foreign_or_different_networks_refuse_the_plan() {
    let d = desired(APP);
    let mut actual = actual_from(&d);
    actual.networks[0].labels.clear();
    actual.networks[1].driver = "bridge".into();
    actual.networks[1].subnet = Some("10.9.9.0/24".parse().unwrap());
    let plan = plan_swarm(&d, &actual);
    assert!(plan.actions.is_empty());
    let error = plan.error.unwrap();
    assert!(
        error.contains("network shop_back exists and does not belong to app shop"),
        "{error}"
    );
    assert!(
            error.contains("network shop_front differs (driver bridge (a container-mode network of the same name?), want overlay, subnet 10.9.9.0/24 → 10.1.4.0/24)"),
            "{error}"
        );
}

#[test]
fn updated_services_mark_their_old_image_replaced() {
    use crate::apply::{ActionResult, Outcome};
    use crate::record::{swarm_records, swarm_taken_off, RunFacts};
    use crate::run::{HostReport, Mode, RunReport};
    use berth_oci::deployment::Status;
    const OLD: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    const NEW: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    let mut d = desired(APP);
    for s in &mut d.services {
        s.spec.image_digest = Some(NEW.to_string());
    }
    let update = |service: &SwarmService, old_digest: &str| {
        let mut old = service.spec.clone();
        old.image_digest = Some(old_digest.to_string());
        SwarmAction::UpdateService {
            service: service.clone(),
            id: format!("id-{}", service.name),
            previous_config: Some(serde_json::to_string(&old).expect("json")),
            stop_first: None,
            reasons: vec![],
        }
    };
    let result = |outcome| ActionResult {
        action: "update".into(),
        outcome,
        message: None,
    };
    let (web, worker) = (&d.services[0], &d.services[1]);
    // web: a new digest, changed → replaced; worker: the same digest (a config change) →
    // nothing; worker from OLD but failed → nothing (Swarm rolled it back).
    let actions = [update(web, OLD), update(worker, NEW), update(worker, OLD)];
    let results = [
        result(Outcome::Changed),
        result(Outcome::Changed),
        result(Outcome::Failed),
    ];
    let mut host = HostReport::empty(&d.manager, &d.endpoint);
    host.taken_off = swarm_taken_off(&actions, &results);
    assert_eq!(host.taken_off.len(), 1, "{:?}", host.taken_off);
    assert_eq!(host.taken_off[0].image, format!("docker.io/reg/web@{OLD}"));
    let report = RunReport {
        app: d.app.clone(),
        mode: Mode::Deploy,
        images: Default::default(),
        hosts: vec![host],
    };
    let facts = RunFacts {
        app: "shop".into(),
        inventory: "prod".into(),
        time: "2026-01-01T10:00:00.000Z".into(),
        berth_version: "0.1.0".into(),
        local_user: "ci@builder".into(),
    };
    let records = swarm_records(&facts, &[], &report);
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0].record;
    assert_eq!(record.digest, OLD);
    assert_eq!(record.swarm_services.len(), 1);
    assert_eq!(record.swarm_services[0].service, web.name);
    assert_eq!(record.swarm_services[0].result, Status::Replaced);
}
