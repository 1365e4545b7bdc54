//! `berth down`: removes what deploys of an app made on each host. It is a deploy of an
//! app with nothing in it: the planner already removes whatever the app owns and no longer
//! wants (its containers, kept previous releases, and networks nobody else uses), so down
//! shares the deploy's plan, output and recap. Volumes go only when asked (`--volumes`):
//! they hold the app's data, and no deploy ever removes one.

use crate::desired::DesiredHost;
use crate::error::{Problem, Result};
use crate::inventory::Inventory;
use crate::run::{self, Event, Mode, RunOptions, RunReport};

/// What down wants on each selected host: nothing of `app`.
pub fn empty_hosts(
    app: &str,
    inventory: &Inventory,
    limit: Option<&str>,
) -> Result<Vec<DesiredHost>> {
    crate::app::check_docker_name(app).map_err(|message| crate::error::Error::InvalidApp {
        file: app.into(),
        problems: vec![Problem::new("name", message)],
    })?;
    Ok(inventory
        .select(limit)?
        .into_iter()
        .map(|host| DesiredHost {
            host: host.name.clone(),
            endpoint: host.endpoint.clone(),
            app: app.to_string(),
            networks: Vec::new(),
            volumes: Vec::new(),
            containers: Vec::new(),
        })
        .collect())
}

/// Runs down on `hosts` (from [`empty_hosts`]); `volumes` removes the app's volumes too.
pub async fn down(
    app: &str,
    hosts: Vec<DesiredHost>,
    volumes: bool,
    options: &RunOptions,
    on_event: &(dyn Fn(Event<'_>) + Send + Sync),
) -> RunReport {
    let mut options = options.clone();
    options.pin = false;
    options.down = Some(volumes);
    let mut report = run::deploy(app, hosts, &options, on_event).await;
    if !options.check {
        report.mode = Mode::Down;
    }
    report
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::actual::ActualHost;
    use crate::actual::{ActualContainer, ActualVolume, ContainerState};
    use crate::apply::created_by_latest_deploy;
    use crate::inventory::DockerEndpoint;
    use crate::labels;
    use crate::plan::down::adjust_plan;
    use crate::plan::{action_text, plan_host};

    fn container(name: &str, app: &str, deploy: Option<&str>) -> ActualContainer {
        let mut labels = BTreeMap::from([(labels::APP.to_string(), app.to_string())]);
        if let Some(id) = deploy {
            labels.insert(labels::DEPLOY.to_string(), id.to_string());
        }
        ActualContainer {
            id: format!("id-{name}"),
            name: name.to_string(),
            labels,
            image: "img".into(),
            image_id: "sha256:1".into(),
            image_digests: Vec::new(),
            state: ContainerState::Running,
            health: None,
        }
    }

    fn volume(name: &str, app: &str) -> ActualVolume {
        ActualVolume {
            name: name.into(),
            driver: "local".into(),
            options: BTreeMap::new(),
            labels: BTreeMap::from([(labels::APP.to_string(), app.to_string())]),
        }
    }

    fn empty(app: &str) -> DesiredHost {
        DesiredHost {
            host: "h1".into(),
            endpoint: DockerEndpoint::Unix {
                path: "/run/docker.sock".into(),
            },
            app: app.into(),
            networks: Vec::new(),
            volumes: Vec::new(),
            containers: Vec::new(),
        }
    }

    #[test]
    fn down_removes_the_apps_containers_and_volumes_only_when_asked() {
        let actual = ActualHost {
            containers: vec![
                container("shop_web_1", "shop", None),
                container("blog_web_1", "blog", None),
            ],
            previous: vec![container("shop_web_1-prev", "shop", None)],
            volumes: vec![volume("shop_data", "shop"), volume("blog_data", "blog")],
            ..ActualHost::default()
        };
        let mut plan = plan_host(&empty("shop"), &actual);
        adjust_plan(&mut plan, &actual, "shop", false);
        let verbs: Vec<String> = plan.actions.iter().map(action_text).collect();
        assert_eq!(
            verbs,
            [
                "remove container shop_web_1",
                "remove container shop_web_1-prev"
            ]
        );
        assert!(plan.warnings[0].contains("volume shop_data is kept"));
        let mut plan = plan_host(&empty("shop"), &actual);
        adjust_plan(&mut plan, &actual, "shop", true);
        let verbs: Vec<String> = plan.actions.iter().map(action_text).collect();
        assert_eq!(
            verbs.last().map(String::as_str),
            Some("remove volume shop_data")
        );
        assert!(!verbs.iter().any(|v| v.contains("blog")), "{verbs:?}");
    }

    #[test]
    fn rollback_removes_what_the_latest_deploy_created() {
        let names = |found: Vec<&ActualContainer>| -> Vec<String> {
            found.iter().map(|c| c.name.clone()).collect()
        };
        // web came with deploy 1, was replaced by deploy 2 (kept as -prev); cache is new in 2.
        let actual = ActualHost {
            containers: vec![
                container("shop_web_1", "shop", Some("2")),
                container("shop_cache_1", "shop", Some("2")),
                container("blog_x_1", "blog", Some("9")),
            ],
            previous: vec![container("shop_web_1-prev", "shop", Some("1"))],
            ..ActualHost::default()
        };
        assert_eq!(
            names(created_by_latest_deploy(&actual, "shop")),
            ["shop_cache_1"]
        );
        // A host's first deploy is not undone (that is `berth down`).
        let first = ActualHost {
            containers: vec![container("shop_web_1", "shop", Some("1"))],
            ..ActualHost::default()
        };
        assert!(created_by_latest_deploy(&first, "shop").is_empty());
        // After rolling back deploy 2, the kept release is the newest: nothing more goes.
        let rolled_back = ActualHost {
            containers: vec![container("shop_web_1", "shop", Some("1"))],
            previous: vec![container("shop_web_1-prev", "shop", Some("2"))],
            ..ActualHost::default()
        };
        assert!(created_by_latest_deploy(&rolled_back, "shop").is_empty());
    }
}
