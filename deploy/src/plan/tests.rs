use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::actual::{ActualImage, AttachedContainer, Health};
use crate::app::AppSource;
use crate::desired::desired_state;
use crate::inventory::Inventory;

const HOSTS: &str = "all:\n  children:\n    web: { hosts: { w1: , w2: } }\n";

const APP: &str = r#"
name: shop
variables: { tag: v1, mode: prod }
networks:
  front: { subnet: 10.1.4.0/24, gateway: 10.1.4.100 }
  back: { subnet: 10.2.3.0/24 }
services:
  web:
    image: "reg/web:{{ tag }}"
    ports: ["80:8000"]
    env: { MODE: "{{ mode }}", SECRET: hunter2 }
    networks: { front: { ipv4_address: 10.1.4.2 } }
    healthcheck: { test: "true" }
  worker:
    image: reg/worker
    replicas: 2
    networks: [back]
"#;

fn desired_with(app: &str, host_vars: &str) -> Vec<DesiredHost> {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("hosts.yml"), HOSTS).expect("write hosts");
    std::fs::create_dir_all(dir.path().join("group_vars")).expect("mkdir");
    std::fs::write(dir.path().join("group_vars/web.yml"), host_vars).expect("write vars");
    let inventory = Inventory::load(dir.path()).expect("inventory");
    let source = AppSource::parse(Path::new("app.yml"), app).expect("app");
    desired_state(&source, &inventory, Some("w1")).expect("desired")
}

fn desired(host_vars: &str) -> DesiredHost {
    desired_with(APP, host_vars).remove(0)
}

fn verbs(plan: &HostPlan) -> Vec<String> {
    plan.actions
        .iter()
        .map(|action| {
            let (verb, what, _) = describe(action);
            format!("{verb} {what}")
        })
        .collect()
}

fn reasons_of(plan: &HostPlan, container: &str) -> Vec<String> {
    plan.actions
        .iter()
        .find_map(|action| match action {
            Action::ReplaceContainer {
                container: c,
                reasons,
                ..
            } if c.name == container => Some(reasons.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn strategy_of(plan: &HostPlan, container: &str) -> Option<ReplaceStrategy> {
    plan.actions.iter().find_map(|action| match action {
        Action::ReplaceContainer {
            container: c,
            strategy,
            ..
        } if c.name == container => Some(*strategy),
        _ => None,
    })
}

#[test]
fn empty_host_gets_everything_in_order() {
    let plan = plan_host(&desired(""), &ActualHost::default());
    assert_eq!(
        verbs(&plan),
        [
            "pull image reg/web:v1",
            "pull image reg/worker",
            "create network shop_back (bridge 10.2.3.0/24)",
            "create network shop_front (bridge 10.1.4.0/24 gateway 10.1.4.100)",
            "create container shop_web_1",
            "create container shop_worker_1",
            "create container shop_worker_2",
        ]
    );
    assert_eq!((plan.ok(), plan.changed(), plan.failed()), (0, 7, 0));
}

#[test]
fn applied_host_is_all_ok() {
    let desired = desired("");
    let plan = plan_host(&desired, &ActualHost::after_apply(&desired));
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.ok(), 5);
    assert!(plan.error.is_none() && plan.warnings.is_empty());
}

#[test]
fn env_change_names_the_variable_not_its_value() {
    let before = desired("");
    let actual = ActualHost::after_apply(&before);
    let plan = plan_host(&desired("mode: staging\n"), &actual);
    assert_eq!(
        verbs(&plan),
        ["replace container shop_web_1 (stop-first: host port 80/tcp is published by both)"]
    );
    assert_eq!(reasons_of(&plan, "shop_web_1"), ["env MODE changed"]);
    assert!(!plan.render().contains("staging"));
    assert_eq!(plan.ok(), 4);
}

#[test]
fn image_digest_change_pulls_and_replaces() {
    let mut before = desired("");
    before.pin_images(&BTreeMap::from([(
        "reg/worker".to_string(),
        "sha256:aaa".to_string(),
    )]));
    let actual = ActualHost::after_apply(&before);
    let mut after = desired("");
    after.pin_images(&BTreeMap::from([(
        "reg/worker".to_string(),
        "sha256:bbb".to_string(),
    )]));
    let plan = plan_host(&after, &actual);
    assert_eq!(
        verbs(&plan),
        [
            "pull image reg/worker@sha256:bbb",
            "replace container shop_worker_1 (start-first)",
            "replace container shop_worker_2 (start-first)"
        ]
    );
    assert_eq!(
        reasons_of(&plan, "shop_worker_1"),
        ["image changed sha256:aaa → sha256:bbb"]
    );
}

#[test]
fn tag_change_is_explained() {
    let actual = ActualHost::after_apply(&desired(""));
    let plan = plan_host(&desired("tag: v2\n"), &actual);
    assert_eq!(
        reasons_of(&plan, "shop_web_1"),
        ["image reg/web:v1 → reg/web:v2"]
    );
    assert_eq!(verbs(&plan)[0], "pull image reg/web:v2");
}

#[test]
fn start_first_when_ports_and_addresses_allow() {
    let app_v1 = APP
        .replace("ports: [\"80:8000\"]", "ports: [\"8000\"]")
        .replace("{ front: { ipv4_address: 10.1.4.2 } }", "[front]");
    let app_v2 = app_v1.replace("SECRET: hunter2", "SECRET: changed");
    let actual = ActualHost::after_apply(&desired_with(&app_v1, "").remove(0));
    let plan = plan_host(&desired_with(&app_v2, "").remove(0), &actual);
    assert_eq!(
        strategy_of(&plan, "shop_web_1"),
        Some(ReplaceStrategy::StartFirst)
    );

    // Moving to another published port lets old and new run side by side.
    let moved = app_v1.replace("ports: [\"8000\"]", "ports: [\"8080:8000\"]");
    let plan = plan_host(&desired_with(&moved, "").remove(0), &actual);
    assert_eq!(
        strategy_of(&plan, "shop_web_1"),
        Some(ReplaceStrategy::StartFirst)
    );
    assert_eq!(
        reasons_of(&plan, "shop_web_1"),
        ["ports 8000/tcp → 8080->8000/tcp"]
    );

    // A fixed address can only be held by one container at a time.
    let fixed = APP.replace("ports: [\"80:8000\"]", "ports: []");
    let actual = ActualHost::after_apply(&desired_with(&fixed, "").remove(0));
    let plan = plan_host(
        &desired_with(&fixed.replace("hunter2", "x"), "").remove(0),
        &actual,
    );
    assert_eq!(
        strategy_of(&plan, "shop_web_1"),
        Some(ReplaceStrategy::StopFirst)
    );
    assert!(plan
        .render()
        .contains("stop-first: both need address 10.1.4.2 on shop_front"));
}

#[test]
fn network_ipam_change_recreates_network_and_replaces_its_containers() {
    let actual = ActualHost::after_apply(&desired(""));
    let changed = APP.replace(
        "back: { subnet: 10.2.3.0/24 }",
        "back: { subnet: 10.2.9.0/24 }",
    );
    let plan = plan_host(&desired_with(&changed, "").remove(0), &actual);
    assert_eq!(
        verbs(&plan),
        [
            "recreate network shop_back (bridge 10.2.9.0/24)",
            "replace container shop_worker_1 (stop-first: it must leave network shop_back while it is recreated)",
            "replace container shop_worker_2 (stop-first: it must leave network shop_back while it is recreated)",
        ]
    );
    let Action::RecreateNetwork {
        reasons, detach, ..
    } = &plan.actions[0]
    else {
        panic!("expected recreate")
    };
    assert_eq!(reasons, &["subnet 10.2.3.0/24 → 10.2.9.0/24"]);
    assert_eq!(detach, &["shop_worker_1", "shop_worker_2"]);
    assert_eq!(
        reasons_of(&plan, "shop_worker_1"),
        ["network shop_back is recreated"]
    );
}

#[test]
fn network_with_foreign_container_is_an_error_for_that_host_only() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    for network in &mut actual.networks {
        if network.name == "shop_front" {
            network.attached.push(AttachedContainer {
                name: "monitoring".into(),
                app: None,
            });
        }
    }
    let changed = APP.replace("gateway: 10.1.4.100", "gateway: 10.1.4.1");
    let desired_changed = desired_with(&changed, "").remove(0);
    let mut other = desired_changed.clone();
    other.host = "w2".into();
    let actuals = BTreeMap::from([
        ("w1".to_string(), Ok(actual)),
        ("w2".to_string(), Ok(ActualHost::default())),
    ]);
    let plan = plan("shop", &[desired_changed, other], &actuals);
    let error = plan.hosts[0].error.as_deref().expect("w1 fails");
    assert!(
        error.contains("network shop_front must be recreated (gateway 10.1.4.100 → 10.1.4.1)"),
        "{error}"
    );
    assert!(error.contains("monitoring"), "{error}");
    assert!(plan.hosts[0].actions.is_empty());
    assert!(plan.hosts[1].error.is_none() && !plan.hosts[1].actions.is_empty());
}

#[test]
fn unset_gateway_and_extra_docker_options_are_not_changes() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    for network in &mut actual.networks {
        network
            .options
            .insert("com.docker.network.enable_ipv4".into(), "true".into());
    }
    let plan = plan_host(&desired_host, &actual);
    assert!(plan.actions.is_empty(), "{:?}", verbs(&plan));
}

#[test]
fn scale_down_removes_extra_replicas_last() {
    let actual = ActualHost::after_apply(&desired(""));
    let smaller = APP
        .replace("replicas: 2", "replicas: 1")
        .replace("SECRET: hunter2", "SECRET: new");
    let plan = plan_host(&desired_with(&smaller, "").remove(0), &actual);
    let listed = verbs(&plan);
    assert_eq!(
        listed.last().map(String::as_str),
        Some("remove container shop_worker_2")
    );
    assert!(plan
        .render()
        .contains("service worker replica 2 is no longer in the app for this host"));
}

#[test]
fn obsolete_networks_are_removed_unless_others_use_them() {
    let actual = ActualHost::after_apply(&desired(""));
    let without_worker = "name: shop\nnetworks:\n  front: { subnet: 10.1.4.0/24, gateway: 10.1.4.100 }\nservices:\n  web: { image: 'reg/web:v1', ports: ['80:8000'], env: { MODE: prod, SECRET: hunter2 }, networks: { front: { ipv4_address: 10.1.4.2 } }, healthcheck: { test: 'true' } }\n";
    let desired_host = desired_with(without_worker, "").remove(0);
    let plan = plan_host(&desired_host, &actual);
    assert_eq!(
        verbs(&plan),
        [
            "remove container shop_worker_1",
            "remove container shop_worker_2",
            "remove network shop_back"
        ]
    );

    let mut shared = actual.clone();
    for network in &mut shared.networks {
        if network.name == "shop_back" {
            network.attached.push(AttachedContainer {
                name: "debug-shell".into(),
                app: None,
            });
        }
    }
    let plan = plan_host(&desired_host, &shared);
    assert_eq!(
        verbs(&plan),
        [
            "remove container shop_worker_1",
            "remove container shop_worker_2"
        ]
    );
    assert_eq!(
        plan.warnings,
        ["network shop_back is no longer used by the app but is kept: debug-shell still use it"]
    );
}

#[test]
fn foreign_container_with_our_name_is_an_error() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    actual.containers[0].labels.clear();
    let plan = plan_host(&desired_host, &actual);
    let error = plan.error.expect("error");
    assert!(
        error.contains(
            "a container named shop_web_1 already exists and does not belong to app shop"
        ),
        "{error}"
    );
}

#[test]
fn foreign_containers_are_never_removed() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    let mut stranger = actual.containers[0].clone();
    stranger.name = "registry".into();
    stranger.labels = BTreeMap::from([(labels::APP.to_string(), "other".to_string())]);
    actual.containers.push(stranger);
    assert!(plan_host(&desired_host, &actual).actions.is_empty());
}

#[test]
fn stopped_container_is_started_dead_one_replaced() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    actual.containers[1].state = ContainerState::Exited;
    actual.containers[2].state = ContainerState::Dead;
    let plan = plan_host(&desired_host, &actual);
    assert_eq!(
        verbs(&plan),
        [
            "start container shop_worker_1",
            "replace container shop_worker_2 (start-first)"
        ]
    );
    assert_eq!(reasons_of(&plan, "shop_worker_2"), ["container is dead"]);
}

#[test]
fn unhealthy_is_not_a_config_change() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    actual.containers[0].health = Some(Health::Unhealthy);
    assert!(plan_host(&desired_host, &actual).actions.is_empty());
}

#[test]
fn container_without_berth_labels_is_replaced_conservatively() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    actual.containers[0]
        .labels
        .retain(|key, _| key == labels::APP);
    let plan = plan_host(&desired_host, &actual);
    assert_eq!(
        reasons_of(&plan, "shop_web_1"),
        ["created without Berth's berth.config label"]
    );
    assert_eq!(
        strategy_of(&plan, "shop_web_1"),
        Some(ReplaceStrategy::StopFirst)
    );
}

#[test]
fn image_presence_by_tag_and_digest() {
    let actual = ActualHost {
        images: vec![ActualImage {
            id: "sha256:1".into(),
            repo_tags: vec!["reg:5000/app:latest".into()],
            digests: vec!["sha256:d1".into(), "sha256:d3".into()],
            repo_digests: vec!["reg:5000/app@sha256:d1".into(), "busybox@sha256:d3".into()],
        }],
        ..ActualHost::default()
    };
    assert!(image_present(&actual, "reg:5000/app"));
    assert!(image_present(&actual, "reg:5000/app:latest"));
    assert!(!image_present(&actual, "reg:5000/app:v2"));
    assert!(image_present(&actual, "reg:5000/app@sha256:d1"));
    assert!(image_present(&actual, "reg:5000/app:v1@sha256:d1"));
    assert!(!image_present(&actual, "reg:5000/app@sha256:d2"));
    // The same manifest under another repository is not enough to create from.
    assert!(!image_present(&actual, "other:5000/app@sha256:d1"));
    assert!(!image_present(&actual, "reg:5000/app2:v1@sha256:d1"));
    assert!(image_present(
        &actual,
        "docker.io/library/busybox:1@sha256:d3"
    ));
    assert_eq!(
        repository_of("reg:5000/team/app:v1@sha256:x"),
        "reg:5000/team/app"
    );
    assert_eq!(repository_of("reg:5000/app"), "reg:5000/app");
    assert_eq!(repository_of("busybox:1"), "busybox");
}

#[test]
fn unreachable_host_fails_alone_and_render_has_recap() {
    let one = desired("");
    let mut two = one.clone();
    two.host = "w2".into();
    two.endpoint = crate::inventory::DockerEndpoint::Ssh {
        user: None,
        host: "w2".into(),
        port: None,
        identity_file: None,
        options: vec![],
    };
    let actuals = BTreeMap::from([
        ("w1".to_string(), Ok(ActualHost::after_apply(&one))),
        ("w2".to_string(), Err("connection refused".to_string())),
    ]);
    let plan = plan("shop", &[one, two], &actuals);
    assert!(!plan.is_noop());
    let text = plan.render();
    assert!(
        text.contains("HOST w2 (ssh://w2)\n  failed   connection refused\n"),
        "{text}"
    );
    assert!(
        text.contains("RECAP\nw1 : ok=5 changed=0 failed=0\nw2 : ok=0 changed=0 failed=1\n"),
        "{text}"
    );
}

#[test]
fn missing_actual_state_is_a_failure_not_a_panic() {
    let plan = plan("shop", &[desired("")], &BTreeMap::new());
    assert_eq!(
        plan.hosts[0].error.as_deref(),
        Some("actual state was not read")
    );
}

#[test]
fn json_form_tags_actions() {
    let plan = plan(
        "shop",
        &[desired("")],
        &BTreeMap::from([("w1".to_string(), Ok(ActualHost::default()))]),
    );
    let json = serde_json::to_value(&plan).expect("serialises");
    assert_eq!(json["hosts"][0]["actions"][0]["action"], "pull_image");
    assert_eq!(json["hosts"][0]["actions"][2]["action"], "create_network");
    assert_eq!(
        json["hosts"][0]["actions"][2]["network"]["subnet"],
        "10.2.3.0/24"
    );
    assert_eq!(
        json["hosts"][0]["actions"][4]["container"]["name"],
        "shop_web_1"
    );
}

#[test]
fn human_units_in_reasons() {
    assert_eq!(human_bytes(512 << 20), "512m");
    assert_eq!(human_bytes(3 << 30), "3g");
    assert_eq!(human_bytes(1000), "1000b");
    let base = desired("");
    let mut old = base.containers[0].spec.clone();
    old.memory = Some(256 << 20);
    old.nano_cpus = Some(500_000_000);
    let mut new = old.clone();
    new.memory = Some(1 << 30);
    new.nano_cpus = None;
    new.labels.insert("team".into(), "web".into());
    assert_eq!(
        spec_differences(&old, &new),
        [
            "label team added",
            "cpus 0.5 → (unlimited)",
            "memory 256m → 1g"
        ]
    );
}

/// A kept previous release of `name` as the reader reports it: stopped, renamed.
fn previous_of(actual: &ActualHost, name: &str) -> ActualContainer {
    let mut previous = actual.container(name).expect("container").clone();
    previous.name = format!("{name}{}", labels::PREVIOUS_SUFFIX);
    previous.id = format!("{}-prev", previous.id);
    previous.state = ContainerState::Exited;
    previous
}

#[test]
fn unchanged_rerun_keeps_previous_releases() {
    let desired_host = desired("");
    let mut actual = ActualHost::after_apply(&desired_host);
    actual.previous = vec![
        previous_of(&actual, "shop_web_1"),
        previous_of(&actual, "shop_worker_1"),
    ];
    let plan = plan_host(&desired_host, &actual);
    assert!(plan.actions.is_empty(), "{:?}", verbs(&plan));
}

#[test]
fn a_deploy_that_changes_containers_drops_predecessors_of_unchanged_ones() {
    let mut actual = ActualHost::after_apply(&desired(""));
    actual.previous = vec![
        previous_of(&actual, "shop_web_1"),
        previous_of(&actual, "shop_worker_1"),
    ];
    // Only web changes: its predecessor is replaced by the applier, worker's older one goes
    // (rolling back must not take worker back past a release it was not changed in).
    let plan = plan_host(&desired("mode: staging\n"), &actual);
    assert_eq!(
        verbs(&plan),
        [
            "replace container shop_web_1 (stop-first: host port 80/tcp is published by both)",
            "remove container shop_worker_1-prev",
        ]
    );
    assert!(plan.render().contains("leaves unchanged"));
}

#[test]
fn predecessor_of_a_removed_container_goes_with_it() {
    let mut actual = ActualHost::after_apply(&desired(""));
    actual.previous = vec![previous_of(&actual, "shop_worker_2")];
    let smaller = APP.replace("replicas: 2", "replicas: 1");
    let plan = plan_host(&desired_with(&smaller, "").remove(0), &actual);
    assert_eq!(
        verbs(&plan),
        [
            "remove container shop_worker_2",
            "remove container shop_worker_2-prev"
        ]
    );
}
