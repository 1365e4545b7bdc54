//! The planner against a host state read from real Docker Engine API answers, not from
//! [`ActualHost::after_apply`] (the planner's own idea of "applied", which makes a no-op
//! plan circular). The JSON in `fixtures/engine-capture/` was captured from a private
//! dockerd after `berth deploy` of `fixtures/engine-capture/app.yml` (twice: the second run
//! changed `mode`, so `cap_web_1-prev` exists) and a container started by hand
//! (`docker run --name cap_debug_1 --network cap_back`); its README says how.
//!
//! Each fixture goes through [`berth_deploy::engine::actual_host`], the function
//! `Engine::read` hands the three list answers to, after the same serde parsing bollard
//! does on the HTTP body.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use berth_deploy::app::AppSource;
use berth_deploy::engine::actual_host;
use berth_deploy::{
    desired_state, labels, plan, Action, ActualHost, ContainerState, DesiredHost, Health, HostPlan,
    Inventory, ReplaceStrategy,
};

const REGISTRY: &str = "127.0.0.1:34915";
/// Manifest digests of the two images pushed to the capture's registry (`berth import`
/// output): v1 is what every captured container runs, v2 was pushed but never deployed.
const V1: &str = "sha256:19c8919002519aaf8038f12853f59d48a352fb91639bfafc092b14beb2e30cc3";
const V2: &str = "sha256:44d3a34c4c3505981dc1cc5d9d58b76798d3fee04c680813e9a513155d0c2a3b";
/// The group_vars the second (captured) deploy ran with.
const CAPTURED_VARS: &str = "mode: two\n";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/engine-capture")
}

fn read(name: &str) -> String {
    let path = fixtures().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json<T: serde::de::DeserializeOwned>(name: &str) -> T {
    serde_json::from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The captured host, as `Engine::read` turns the daemon's answers into planner input.
fn captured() -> ActualHost {
    actual_host(
        "cap",
        json("containers.json"),
        json("networks.json"),
        json("images.json"),
    )
}

/// The desired state of the captured app with `edit` applied to app.yml's text and
/// `vars` as group_vars/all.yml, pinned as `berth deploy` pins (tag → manifest digest).
fn desired_with(edit: impl Fn(String) -> String, vars: &str) -> DesiredHost {
    let text = edit(read("app.yml"));
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir_all(dir.path().join("group_vars")).expect("mkdir");
    std::fs::write(dir.path().join("hosts.yml"), read("inventory/hosts.yml")).expect("hosts");
    std::fs::write(dir.path().join("group_vars/all.yml"), vars).expect("vars");
    let source = AppSource::parse(&fixtures().join("app.yml"), &text).expect("app parses");
    let inventory = Inventory::load(dir.path()).expect("inventory");
    let mut hosts = desired_state(&source, &inventory, None).expect("desired state");
    assert_eq!(hosts.len(), 1);
    let mut host = hosts.remove(0);
    host.pin_images(&BTreeMap::from([
        (format!("{REGISTRY}/capture/app:v1"), V1.to_string()),
        (format!("{REGISTRY}/capture/app:v2"), V2.to_string()),
    ]));
    host
}

fn desired(vars: &str) -> DesiredHost {
    desired_with(|text| text, vars)
}

fn plan_host(desired: &DesiredHost) -> HostPlan {
    let actuals = BTreeMap::from([(desired.host.clone(), Ok(captured()))]);
    plan("cap", std::slice::from_ref(desired), &actuals)
        .hosts
        .remove(0)
}

fn verbs(plan: &HostPlan) -> Vec<String> {
    plan.actions
        .iter()
        .map(berth_deploy::plan::action_text)
        .collect()
}

fn reasons_of(plan: &HostPlan, name: &str) -> Vec<String> {
    plan.actions
        .iter()
        .find_map(|action| match action {
            Action::ReplaceContainer {
                container, reasons, ..
            } if container.name == name => Some(reasons.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no replacement of {name} in {:?}", verbs(plan)))
}

fn strategy_of(plan: &HostPlan, name: &str) -> ReplaceStrategy {
    plan.actions
        .iter()
        .find_map(|action| match action {
            Action::ReplaceContainer {
                container,
                strategy,
                ..
            } if container.name == name => Some(*strategy),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no replacement of {name} in {:?}", verbs(plan)))
}

#[test]
fn the_capture_reads_as_docker_reported_it() {
    let actual = captured();
    let names: Vec<&str> = actual.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        ["cap_debug_1", "cap_web_1", "cap_worker_1", "cap_worker_2"]
    );
    // The kept release is not a current container.
    let previous: Vec<(&str, ContainerState)> = actual
        .previous
        .iter()
        .map(|c| (c.name.as_str(), c.state))
        .collect();
    assert_eq!(previous, [("cap_web_1-prev", ContainerState::Exited)]);
    let web = actual.container("cap_web_1").expect("web");
    assert_eq!(web.state, ContainerState::Running);
    // API 1.41's list call has no health field: it comes from "Up 11 seconds (healthy)".
    assert_eq!(web.health, Some(Health::Healthy));
    assert_eq!(web.image, format!("{REGISTRY}/capture/app:v1@{V1}"));
    assert_eq!(web.image_digests, [V1]);
    // Docker merges the image's labels into the container's: `version` was never Berth's.
    assert_eq!(web.labels["version"], "v1");
    assert_eq!(web.labels["team"], "front");
    let debug = actual
        .container("cap_debug_1")
        .expect("hand-started container");
    assert_eq!(debug.app(), None);
    assert!(!debug.labels.contains_key(labels::CONFIG));

    // A pinned pull leaves the image without any tag (RepoTags is null), only its digest.
    assert_eq!(actual.images.len(), 1);
    assert!(actual.images[0].repo_tags.is_empty());
    assert_eq!(actual.images[0].digests, [V1]);

    let network = |name: &str| actual.network(name).expect(name).clone();
    let front = network("cap_front");
    assert_eq!(
        (front.subnet.map(|s| s.to_string()), front.gateway),
        (
            Some("172.31.250.0/24".into()),
            Some("172.31.250.100".parse().expect("ip"))
        )
    );
    let back = network("cap_back");
    assert_eq!(
        back.subnet.map(|s| s.to_string()).as_deref(),
        Some("172.31.251.0/24")
    );
    // Docker 20.10 records no gateway in the IPAM config when none was asked for; the one it
    // gave the containers (the subnet's first address) is read from their endpoints.
    assert_eq!(back.gateway, Some("172.31.251.1".parse().expect("ip")));
    let attached: Vec<(&str, Option<&str>)> = back
        .attached
        .iter()
        .map(|c| (c.name.as_str(), c.app.as_deref()))
        .collect();
    assert_eq!(
        attached,
        [
            ("cap_debug_1", None),
            ("cap_worker_1", Some("cap")),
            ("cap_worker_2", Some("cap"))
        ]
    );
    // No subnet in the app: Docker picked one from its default pools.
    let auto = network("cap_auto");
    assert!(auto.subnet.is_some() && auto.gateway.is_some(), "{auto:?}");
    assert_eq!(auto.labels[labels::APP], "cap");
    // Docker's own networks are read too (never touched: no berth.app label).
    assert!(actual.network("none").is_some() && actual.network("host").is_some());
}

/// The list calls the reader uses agree with `docker inspect` (GET /containers/{id}/json,
/// GET /networks/{id}) of the same objects, captured at the same moment: health and
/// attachments are not artefacts of the cheaper calls.
#[test]
fn the_list_answers_agree_with_docker_inspect() {
    let actual = captured();
    let inspected: Vec<serde_json::Value> = json("inspect/containers.json");
    assert_eq!(
        inspected.len(),
        actual.containers.len() + actual.previous.len()
    );
    for container in &inspected {
        let name = container["Name"]
            .as_str()
            .expect("name")
            .trim_start_matches('/');
        let read = actual
            .containers
            .iter()
            .chain(&actual.previous)
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} not read"));
        assert_eq!(container["Id"], read.id, "{name}");
        let health = match container["State"]["Health"]["Status"].as_str() {
            Some("healthy") => Some(Health::Healthy),
            Some("unhealthy") => Some(Health::Unhealthy),
            Some("starting") => Some(Health::Starting),
            _ => None,
        };
        if read.state == ContainerState::Running {
            assert_eq!(health, read.health, "{name}");
        } else {
            // Docker reports a stopped container's last health as "unhealthy" (with a
            // failing streak of 0); the status text of the list call has none. Nothing
            // reads the health of a stopped container.
            assert_eq!(read.health, None, "{name}");
        }
        assert_eq!(
            container["Config"]["Labels"],
            serde_json::json!(read.labels)
        );
        assert_eq!(container["Image"], read.image_id, "{name}");
    }
    let networks: Vec<serde_json::Value> = json("inspect/networks.json");
    assert_eq!(networks.len(), 3);
    for network in &networks {
        let name = network["Name"].as_str().expect("name");
        let read = actual.network(name).expect(name);
        let mut members: Vec<&str> = network["Containers"]
            .as_object()
            .expect("containers")
            .values()
            .map(|c| c["Name"].as_str().expect("name"))
            .collect();
        members.sort();
        // `docker network inspect` lists running endpoints only; the reader also counts a
        // stopped container that stays connected (the kept cap_web_1-prev on cap_front).
        let running: Vec<&str> = read
            .attached
            .iter()
            .map(|c| c.name.as_str())
            .filter(|c| {
                actual
                    .container(c)
                    .is_some_and(|c| c.state == ContainerState::Running)
            })
            .collect();
        assert_eq!(members, running, "{name}");
        assert_eq!(
            network["IPAM"]["Config"][0]["Subnet"].as_str(),
            read.subnet.map(|s| s.to_string()).as_deref(),
            "{name}"
        );
    }
}

#[test]
fn the_unchanged_app_plans_a_no_op() {
    assert_eq!(read("inventory/group_vars/all.yml"), CAPTURED_VARS);
    let plan = plan_host(&desired(CAPTURED_VARS));
    assert!(plan.actions.is_empty(), "{}", plan.render());
    assert!(
        plan.error.is_none() && plan.warnings.is_empty(),
        "{}",
        plan.render()
    );
    assert_eq!(plan.ok(), 6, "{}", plan.render());
}

/// The synthetic "applied" state the unit tests use, checked against the real one on every
/// field the planner reads: if `after_apply` drifts from what Docker reports, the no-op
/// tests built on it prove nothing, and this fails.
#[test]
fn after_apply_matches_the_captured_state_where_the_planner_looks() {
    let desired = desired(CAPTURED_VARS);
    let synthetic = ActualHost::after_apply(&desired);
    let real = captured();
    for want in &synthetic.networks {
        let have = real.network(&want.name).expect(&want.name);
        if want.subnet.is_some() {
            assert_eq!(
                (want.subnet, want.gateway, want.ip_range),
                (have.subnet, have.gateway, have.ip_range),
                "{}",
                want.name
            );
        }
        assert_eq!(
            (&want.driver, want.internal, &want.labels),
            (&have.driver, have.internal, &have.labels),
            "{}",
            want.name
        );
        for option in want.options.keys() {
            assert_eq!(want.options.get(option), have.options.get(option));
        }
        // The synthetic state has no kept releases; the real one has cap_web_1-prev, still
        // connected to cap_front while stopped.
        let names = |n: &berth_deploy::ActualNetwork| {
            n.attached
                .iter()
                .filter(|c| c.app.as_deref() == Some("cap"))
                .filter(|c| !c.name.ends_with(labels::PREVIOUS_SUFFIX))
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(want), names(have), "{}", want.name);
    }
    for want in &synthetic.containers {
        let have = real.container(&want.name).expect(&want.name);
        // The capture predates env digests in `berth.config` (it holds plain values, as
        // containers deployed then do): compared in the stored form, where a plain value
        // and its digest agree. The config hash itself must be equal as it is.
        let berth_labels = |labels: &BTreeMap<String, String>| {
            labels
                .iter()
                .filter(|(k, _)| k.starts_with("berth."))
                .map(|(k, v)| {
                    let v = match serde_json::from_str::<berth_deploy::ContainerSpec>(v) {
                        Ok(spec) if k == labels::CONFIG => serde_json::to_string(
                            &berth_deploy::desired::without_env_values("cap", &spec),
                        )
                        .unwrap_or_default(),
                        _ => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            berth_labels(&want.labels),
            berth_labels(&have.labels),
            "{}",
            want.name
        );
        assert_eq!(
            (&want.image, &want.image_digests, want.state, want.health),
            (&have.image, &have.image_digests, have.state, have.health),
            "{}",
            want.name
        );
    }
}

#[test]
fn a_changed_env_value_replaces_only_that_service_and_is_not_shown() {
    let plan = plan_host(&desired("mode: two\napi_token: tok-0002\n"));
    assert_eq!(
        verbs(&plan),
        ["replace container cap_web_1 (stop-first: host port 18080/tcp is published by both)"]
    );
    assert_eq!(reasons_of(&plan, "cap_web_1"), ["env API_TOKEN changed"]);
    let text = plan.render();
    assert!(
        !text.contains("tok-0001") && !text.contains("tok-0002"),
        "{text}"
    );

    // The workers change: web's kept release goes (web stays unchanged in this deploy, so
    // a rollback must not take it back), and they replace start-first.
    let plan = plan_host(&desired_with(
        |text| text.replace("ROLE: worker", "ROLE: batch"),
        CAPTURED_VARS,
    ));
    assert_eq!(
        verbs(&plan),
        [
            "replace container cap_worker_1 (start-first)",
            "replace container cap_worker_2 (start-first)",
            "remove container cap_web_1-prev",
        ]
    );
    assert_eq!(reasons_of(&plan, "cap_worker_2"), ["env ROLE changed"]);
}

#[test]
fn a_changed_image_pulls_it_and_replaces_every_container_running_it() {
    let plan = plan_host(&desired("mode: two\ntag: v2\n"));
    assert_eq!(
        verbs(&plan),
        [
            format!("pull image {REGISTRY}/capture/app:v2@{V2}").as_str(),
            "replace container cap_web_1 (stop-first: host port 18080/tcp is published by both)",
            "replace container cap_worker_1 (start-first)",
            "replace container cap_worker_2 (start-first)",
        ]
    );
    assert_eq!(
        reasons_of(&plan, "cap_worker_1"),
        [
            format!("image {REGISTRY}/capture/app:v1 → {REGISTRY}/capture/app:v2"),
            format!("image changed {V1} → {V2}"),
        ]
    );

    // The same tag deployed unpinned (`--no-pin`): Docker kept no tag for the pinned pull,
    // so the tag is pulled, and every container changes (its image is no longer fixed).
    let mut unpinned = desired(CAPTURED_VARS);
    for container in &mut unpinned.containers {
        container.spec.image_digest = None;
        container.config_hash = container.spec.config_hash();
    }
    let plan = plan_host(&unpinned);
    assert_eq!(
        verbs(&plan)[0],
        format!("pull image {REGISTRY}/capture/app:v1")
    );
    assert_eq!(
        reasons_of(&plan, "cap_web_1"),
        [format!("image changed {V1} → (unpinned)")]
    );
}

#[test]
fn a_changed_port_replaces_the_service_that_publishes_it() {
    let plan = plan_host(&desired_with(
        |text| text.replace("127.0.0.1:18080:8000", "127.0.0.1:18081:8000"),
        CAPTURED_VARS,
    ));
    assert_eq!(plan.actions.len(), 1, "{:?}", verbs(&plan));
    assert_eq!(
        reasons_of(&plan, "cap_web_1"),
        ["ports 127.0.0.1:18080->8000/tcp → 127.0.0.1:18081->8000/tcp"]
    );
    // Another host port could run side by side, but the fixed address cannot.
    assert_eq!(strategy_of(&plan, "cap_web_1"), ReplaceStrategy::StopFirst);
    assert!(
        plan.render()
            .contains("stop-first: both need address 172.31.250.10 on cap_front"),
        "{}",
        plan.render()
    );
}

#[test]
fn a_changed_subnet_recreates_the_network_and_replaces_its_containers() {
    let moved = |text: String| text.replace("172.31.250.", "172.31.252.");
    let plan = plan_host(&desired_with(moved, CAPTURED_VARS));
    assert_eq!(
        verbs(&plan),
        [
            "recreate network cap_front (bridge 172.31.252.0/24 gateway 172.31.252.100)",
            "replace container cap_web_1 (stop-first: it must leave network cap_front while it is recreated)",
        ]
    );
    let Action::RecreateNetwork {
        reasons, detach, ..
    } = &plan.actions[0]
    else {
        panic!("expected a recreate: {:?}", verbs(&plan))
    };
    assert_eq!(
        reasons,
        &[
            "subnet 172.31.250.0/24 → 172.31.252.0/24",
            "gateway 172.31.250.100 → 172.31.252.100"
        ]
    );
    // The kept release is still connected (stopped): it is detached too.
    assert_eq!(detach, &["cap_web_1", "cap_web_1-prev"]);
    assert_eq!(
        reasons_of(&plan, "cap_web_1"),
        [
            "network cap_front is recreated",
            "network cap_front address 172.31.250.10 → 172.31.252.10"
        ]
    );
}

#[test]
fn the_hand_started_container_is_never_touched() {
    // cap_back carries cap_debug_1 (no berth labels): its subnet cannot change under it.
    let plan = plan_host(&desired_with(
        |text| text.replace("172.31.251.0/24", "172.31.253.0/24"),
        CAPTURED_VARS,
    ));
    assert!(plan.actions.is_empty(), "{:?}", verbs(&plan));
    let error = plan.error.as_deref().expect("the host fails");
    assert_eq!(
        error,
        "network cap_back must be recreated (subnet 172.31.251.0/24 → 172.31.253.0/24) but containers outside app cap use it: cap_debug_1; remove or disconnect them, or keep the network's settings"
    );

    // Naming the gateway Docker already gives cap_back's containers is no change at all.
    let plan = plan_host(&desired_with(
        |text| {
            text.replace(
                "    subnet: 172.31.251.0/24\n",
                "    subnet: 172.31.251.0/24\n    gateway: 172.31.251.1\n",
            )
        },
        CAPTURED_VARS,
    ));
    assert!(
        plan.actions.is_empty() && plan.error.is_none(),
        "{}",
        plan.render()
    );

    // A service whose container name is taken by it is refused, not taken over.
    let plan = plan_host(&desired_with(
        |text| {
            format!("{text}  debug:\n    image: \"{{{{ registry }}}}/capture/app:{{{{ tag }}}}\"\n")
        },
        CAPTURED_VARS,
    ));
    assert!(plan.actions.is_empty(), "{:?}", verbs(&plan));
    assert_eq!(
        plan.error.as_deref(),
        Some("a container named cap_debug_1 already exists and does not belong to app cap (label berth.app=none); rename or remove it")
    );

    // Dropping the app's use of cap_back keeps the network for the container still on it.
    let plan = plan_host(&desired_with(
        |text| {
            text.replace("networks: [back, auto]", "networks: [auto]")
                .replace("  back:\n    subnet: 172.31.251.0/24\n", "")
        },
        CAPTURED_VARS,
    ));
    assert!(
        verbs(&plan)
            .iter()
            .all(|v| !v.contains("cap_debug_1") && !v.contains("remove network")),
        "{:?}",
        verbs(&plan)
    );
    assert_eq!(
        plan.warnings,
        ["network cap_back is no longer used by the app but is kept: cap_debug_1 still use it"]
    );
}
