//! `berth down`'s changes to a host's plan, kept with the planner so that the run (which
//! applies plans) and `down` (which starts a run) do not import each other.

use crate::actual::ActualHost;
use crate::labels;
use crate::plan::{Action, HostPlan};

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
