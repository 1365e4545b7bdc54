//! `berth down`: removes what deploys of an app made on each host. It is a deploy of an
//! app with nothing in it: the planner already removes whatever the app owns and no longer
//! wants (its containers, kept previous releases, and networks nobody else uses), so down
//! shares the deploy's plan, output and recap. Volumes go only when asked (`--volumes`):
//! they hold the app's data, and no deploy ever removes one.

use crate::actual::ActualHost;
use crate::desired::DesiredHost;
use crate::error::{Problem, Result};
use crate::inventory::Inventory;
use crate::labels;
use crate::plan::{Action, HostPlan};
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

/// Down's reasons instead of the deploy's ("no longer in the app"), and the app's volumes
/// removed last when asked, or named as kept.
pub(crate) fn adjust_plan(plan: &mut HostPlan, actual: &ActualHost, app: &str, volumes: bool) {
    for action in &mut plan.actions {
        if let Action::RemoveContainer { reason, .. } | Action::RemoveNetwork { reason, .. } =
            action
        {
            *reason = format!("berth down ({reason})");
        }
    }
    let owned = actual
        .volumes
        .iter()
        .filter(|volume| volume.labels.get(labels::APP).map(String::as_str) == Some(app));
    for volume in owned {
        if volumes {
            plan.actions.push(Action::RemoveVolume {
                name: volume.name.clone(),
                reason: "berth down --volumes".to_string(),
            });
        } else {
            plan.warnings.push(format!(
                "volume {} is kept (its data stays; --volumes removes it)",
                volume.name
            ));
        }
    }
}
