//! The order in which one host's plan runs: stages one after the other, each made of lanes
//! that run at the same time, each lane's actions one after the other.
//!
//! 1. Pulls (one lane per image: the plan pulls each image once per host) alongside one
//!    lane of volume and network changes, in plan order.
//! 2. Container changes in waves by `depends_on`: a service's containers start once every
//!    service it depends on (on this host) is ready; independent ones start together, each
//!    container its own lane. Within a wave, containers with a fixed address go first:
//!    Docker hands out addresses at start, and one started alongside could take theirs.
//! 3. Removals, in plan order (only after the whole rollout succeeded).

use std::collections::BTreeMap;

use crate::desired::{DesiredContainer, DesiredHost};
use crate::plan::Action;

/// Indices into the plan's actions: stages → lanes → actions.
pub type Stages = Vec<Vec<Vec<usize>>>;

pub fn stages(actions: &[Action], desired: &DesiredHost) -> Stages {
    let mut pulls = Vec::new();
    let mut setup = Vec::new();
    let mut waves: BTreeMap<(usize, bool), Vec<Vec<usize>>> = BTreeMap::new();
    let mut removals = Vec::new();
    let depth = depths(desired);
    for (index, action) in actions.iter().enumerate() {
        match action {
            Action::PullImage { .. } => pulls.push(vec![index]),
            Action::CreateVolume { .. }
            | Action::CreateNetwork { .. }
            | Action::RecreateNetwork { .. } => setup.push(index),
            Action::CreateContainer { container, .. }
            | Action::ReplaceContainer { container, .. } => {
                let depth = depth.get(&container.service).copied().unwrap_or(0);
                let dynamic = !has_fixed_address(container);
                waves.entry((depth, dynamic)).or_default().push(vec![index]);
            }
            Action::StartContainer { name, .. } => {
                let container = desired.containers.iter().find(|c| &c.name == name);
                let wave = container
                    .and_then(|c| depth.get(&c.service).copied())
                    .unwrap_or(0);
                let dynamic = !container.is_some_and(has_fixed_address);
                waves.entry((wave, dynamic)).or_default().push(vec![index]);
            }
            Action::RemoveContainer { .. }
            | Action::RemoveNetwork { .. }
            | Action::RemoveVolume { .. } => removals.push(index),
        }
    }
    let mut first = pulls;
    if !setup.is_empty() {
        first.push(setup);
    }
    let mut out: Stages = Vec::new();
    if !first.is_empty() {
        out.push(first);
    }
    out.extend(waves.into_values());
    if !removals.is_empty() {
        out.push(vec![removals]);
    }
    out
}

fn has_fixed_address(container: &DesiredContainer) -> bool {
    container
        .spec
        .networks
        .values()
        .any(|network| network.ipv4_address.is_some())
}

/// Per service on this host: how many `depends_on` steps lie below it (0: depends on no
/// service here). The app refuses cycles before a plan exists; a cycle still ends here.
fn depths(desired: &DesiredHost) -> BTreeMap<String, usize> {
    let mut depends: BTreeMap<&str, &[String]> = BTreeMap::new();
    for container in &desired.containers {
        depends.insert(&container.service, &container.depends_on);
    }
    fn depth_of<'a>(
        service: &'a str,
        depends: &BTreeMap<&'a str, &'a [String]>,
        seen: &mut Vec<&'a str>,
        known: &mut BTreeMap<String, usize>,
    ) -> usize {
        if let Some(depth) = known.get(service) {
            return *depth;
        }
        if seen.contains(&service) {
            return 0;
        }
        seen.push(service);
        let mut depth = 0;
        for dependency in depends.get(service).copied().unwrap_or_default() {
            if let Some((key, _)) = depends.get_key_value(dependency.as_str()) {
                depth = depth.max(1 + depth_of(key, depends, seen, known));
            }
        }
        seen.pop();
        known.insert(service.to_string(), depth);
        depth
    }
    let mut known = BTreeMap::new();
    for service in depends.keys() {
        depth_of(service, &depends, &mut Vec::new(), &mut known);
    }
    known
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::actual::ActualHost;
    use crate::app::AppSource;
    use crate::desired::desired_state;
    use crate::inventory::Inventory;
    use crate::plan::{action_text, plan_host};

    const APP: &str = r#"
name: shop
networks:
  back: { subnet: 10.9.0.0/24 }
services:
  db:
    image: reg/db
    networks: [back]
  web:
    image: reg/web
    depends_on: [db]
    networks: [back]
  worker:
    image: reg/web
    replicas: 2
    networks: [back]
  cache:
    image: reg/db
    networks: { back: { ipv4_address: 10.9.0.5 } }
  report:
    image: reg/web
    depends_on: [web, worker]
"#;

    #[test]
    fn independent_services_start_together_dependents_after() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("hosts.yml"), "all:\n  hosts:\n    h1:\n")
            .expect("write hosts");
        let inventory = Inventory::load(dir.path()).expect("inventory");
        let source = AppSource::parse(Path::new("app.yml"), APP).expect("app");
        let desired = desired_state(&source, &inventory, None)
            .expect("desired")
            .remove(0);
        let plan = plan_host(&desired, &ActualHost::default());
        let named: Vec<Vec<Vec<String>>> = stages(&plan.actions, &desired)
            .into_iter()
            .map(|stage| {
                stage
                    .into_iter()
                    .map(|lane| {
                        lane.into_iter()
                            .map(|index| action_text(&plan.actions[index]))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let text = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            named,
            [
                // One pull per image, next to the network.
                vec![
                    text(&["pull image reg/db"]),
                    text(&["pull image reg/web"]),
                    text(&["create network shop_back (bridge 10.9.0.0/24)"]),
                ],
                // Fixed addresses first: nothing started alongside takes them.
                vec![text(&["create container shop_cache_1"])],
                vec![
                    text(&["create container shop_db_1"]),
                    text(&["create container shop_worker_1"]),
                    text(&["create container shop_worker_2"]),
                ],
                vec![text(&["create container shop_web_1"])],
                vec![text(&["create container shop_report_1"])],
            ]
        );
    }
}
