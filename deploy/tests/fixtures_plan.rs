//! The origin document's app, planned against its testing and production inventories
//! (the repository's examples/origin/), with no Docker host at all.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_deploy::app::AppSource;
use berth_deploy::{desired_state, plan, Action, ActualHost, DesiredHost, Inventory, Plan};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/origin")
}

fn desired(inventory_dir: &Path, limit: Option<&str>) -> Vec<DesiredHost> {
    let source = AppSource::load(&fixtures().join("app.yml")).expect("app.yml loads");
    let inventory = Inventory::load(inventory_dir).expect("inventory loads");
    desired_state(&source, &inventory, limit).expect("desired state")
}

fn plan_against(desired: &[DesiredHost], actual: impl Fn(&DesiredHost) -> ActualHost) -> Plan {
    let actuals: BTreeMap<String, Result<ActualHost, String>> = desired
        .iter()
        .map(|host| (host.host.clone(), Ok(actual(host))))
        .collect();
    plan("app_example", desired, &actuals)
}

/// Copies a fixture inventory into a temp dir so a test can change one file.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture dir") {
        let path = entry.expect("entry").path();
        let target = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).expect("copy");
        }
    }
}

#[test]
fn empty_hosts_get_everything() {
    let desired = desired(&fixtures().join("testing"), None);
    let plan = plan_against(&desired, |_| ActualHost::default());
    assert_eq!(plan.hosts.len(), 3);
    for host in &plan.hosts {
        let kinds: Vec<&str> = host
            .actions
            .iter()
            .map(|action| match action {
                Action::PullImage { .. } => "pull",
                Action::CreateNetwork { .. } => "network",
                Action::CreateContainer { .. } => "container",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        // One image (both services run it), two networks, two containers.
        assert_eq!(
            kinds,
            ["pull", "network", "network", "container", "container"],
            "{}",
            host.host
        );
        assert_eq!((host.ok(), host.changed(), host.failed()), (0, 5, 0));
    }
    let text = plan.render();
    assert!(
        text.contains("HOST web-back1.testing (unix:///run/berth-e2e/web-back1.sock)"),
        "{text}"
    );
    assert!(
        text.contains("create   network test_nw (bridge 10.1.4.0/24 gateway 10.1.4.100)"),
        "{text}"
    );
    assert!(
        text.contains("pull     image 127.0.0.1:5000/app_example_image:v3"),
        "{text}"
    );
}

#[test]
fn matching_hosts_are_all_ok() {
    for environment in ["testing", "production"] {
        let desired = desired(&fixtures().join(environment), None);
        let plan = plan_against(&desired, ActualHost::after_apply);
        assert!(plan.is_noop(), "{environment}:\n{}", plan.render());
        for host in &plan.hosts {
            assert_eq!(
                (host.ok(), host.changed(), host.failed()),
                (4, 0, 0),
                "{}",
                host.host
            );
        }
    }
}

#[test]
fn production_overrides_networks_images_and_one_hosts_env() {
    let desired = desired(&fixtures().join("production"), None);
    let by_host: BTreeMap<&str, &DesiredHost> =
        desired.iter().map(|h| (h.host.as_str(), h)).collect();

    let front = &by_host["web-back2.prod"]
        .networks
        .iter()
        .find(|n| n.name == "test_nw")
        .expect("test_nw")
        .clone();
    assert_eq!(
        front.subnet.map(|s| s.to_string()).as_deref(),
        Some("10.20.4.0/24")
    );
    assert_eq!(
        front.gateway.map(|g| g.to_string()).as_deref(),
        Some("10.20.4.1")
    );

    let web = |host: &str| {
        by_host[host]
            .containers
            .iter()
            .find(|c| c.service == "web")
            .expect("web")
            .clone()
    };
    // group_vars/canary.yml (a child of back) overrides group_vars/all.
    assert_eq!(
        web("web-back1.prod").spec.image,
        "registry.example.internal:5000/app_example_image:v4-rc1"
    );
    assert_eq!(
        web("web-back2.prod").spec.image,
        "registry.example.internal:5000/app_example_image:v3"
    );
    // host_vars/web-back2.prod.yml, and web-back3.prod.yml as a symlink to it.
    assert_eq!(web("web-back1.prod").spec.env["LOG_LEVEL"], "info");
    assert_eq!(web("web-back2.prod").spec.env["LOG_LEVEL"], "debug");
    assert_eq!(web("web-back3.prod").spec.env["LOG_LEVEL"], "debug");
    assert_eq!(web("web-back2.prod").spec.env["APP_ENV"], "production");
    assert_eq!(
        web("web-back2.prod").spec.networks["test_nw"]
            .ipv4_address
            .map(|a| a.to_string())
            .as_deref(),
        Some("10.20.4.10")
    );
    assert_eq!(
        by_host["web-back1.prod"].endpoint.to_string(),
        "ssh://deploy@192.0.2.11"
    );
}

#[test]
fn changing_one_host_var_changes_only_that_host() {
    let before = desired(&fixtures().join("testing"), None);
    let dir = tempfile::tempdir().expect("temp dir");
    copy_dir(&fixtures().join("testing"), dir.path());
    std::fs::create_dir_all(dir.path().join("host_vars")).expect("mkdir");
    std::fs::write(
        dir.path().join("host_vars/web-back2.testing.yml"),
        "log_level: debug\n",
    )
    .expect("write");
    let after = desired(dir.path(), None);

    let applied: BTreeMap<String, ActualHost> = before
        .iter()
        .map(|h| (h.host.clone(), ActualHost::after_apply(h)))
        .collect();
    let plan = plan_against(&after, |host| applied[&host.host].clone());
    let changed: Vec<(&str, usize)> = plan
        .hosts
        .iter()
        .map(|h| (h.host.as_str(), h.changed()))
        .collect();
    assert_eq!(
        changed,
        [
            ("web-back1.testing", 0),
            ("web-back2.testing", 1),
            ("web-back3.testing", 0)
        ]
    );
    let Action::ReplaceContainer {
        container, reasons, ..
    } = &plan.hosts[1].actions[0]
    else {
        panic!("expected a replacement")
    };
    assert_eq!(container.name, "app_example_web_1");
    assert_eq!(reasons, &["env LOG_LEVEL changed"]);
    // web publishes 0.0.0.0:80 and holds a fixed address: old and new cannot coexist.
    assert!(plan.render().contains(
        "replace  container app_example_web_1 (stop-first: host port 80/tcp is published by both)"
    ));
}

#[test]
fn moving_production_networks_recreates_them_on_every_host() {
    let testing = desired(&fixtures().join("testing"), None);
    let production = desired(&fixtures().join("production"), Some("web-back3.prod"));
    // A host that ran the testing config, now given the production one.
    let mut production_host = production[0].clone();
    production_host.host = testing[0].host.clone();
    let plan = plan_against(std::slice::from_ref(&production_host), |_| {
        ActualHost::after_apply(&testing[0])
    });
    let text = plan.render();
    assert!(
        text.contains("recreate network test_nw (bridge 10.20.4.0/24 gateway 10.20.4.1)"),
        "{text}"
    );
    assert!(text.contains("subnet 10.1.4.0/24 → 10.20.4.0/24; gateway 10.1.4.100 → 10.20.4.1; detaches app_example_nodes_1, app_example_web_1"), "{text}");
    // nodes sits on both networks: both are named, once each.
    assert!(text.contains("replace  container app_example_nodes_1 (stop-first: it must leave network test_nw, test_nw2 while it is recreated)"), "{text}");
    assert!(text.contains("network test_nw is recreated; network test_nw2 is recreated; image 127.0.0.1:5000/app_example_image:v3 → registry.example.internal:5000/app_example_image:v3"), "{text}");
}

#[test]
fn limit_selects_hosts_by_name_group_and_exclusion() {
    let names = |limit: &str| {
        desired(&fixtures().join("production"), Some(limit))
            .into_iter()
            .map(|h| h.host)
            .collect::<Vec<_>>()
    };
    assert_eq!(names("canary"), ["web-back1.prod"]);
    assert_eq!(names("back,!canary"), ["web-back2.prod", "web-back3.prod"]);
    assert_eq!(names("web-back3*"), ["web-back3.prod"]);
}

#[test]
fn json_plan_is_stable() {
    let desired = desired(&fixtures().join("testing"), None);
    let first =
        serde_json::to_string(&plan_against(&desired, |_| ActualHost::default())).expect("json");
    let second =
        serde_json::to_string(&plan_against(&desired, |_| ActualHost::default())).expect("json");
    assert_eq!(first, second);
}
