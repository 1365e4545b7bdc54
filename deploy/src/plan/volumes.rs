//! Named volumes in a host's plan: created when missing, never removed or recreated by a
//! deploy (they hold data; `berth down --volumes` is the one way Berth removes them).

use crate::actual::ActualHost;
use crate::desired::DesiredHost;
use crate::labels;
use crate::plan::{Action, HostPlan, Unchanged};

pub(crate) fn plan_volumes(
    desired: &DesiredHost,
    actual: &ActualHost,
    plan: &mut HostPlan,
) -> Result<Vec<Action>, String> {
    let mut actions = Vec::new();
    for volume in &desired.volumes {
        let existing = actual.volumes.iter().find(|v| v.name == volume.name);
        match existing {
            None if volume.external => {
                return Err(format!(
                    "external volume {} (volumes.{}) does not exist on this host; create it, or drop `external: true` to let Berth create it",
                    volume.name, volume.key
                ))
            }
            None => actions.push(Action::CreateVolume {
                volume: volume.clone(),
                reason: "not present".to_string(),
            }),
            Some(existing) => {
                plan.unchanged.push(Unchanged {
                    kind: "volume".to_string(),
                    name: volume.name.clone(),
                });
                if volume.external {
                    continue;
                }
                let driver = volume.driver.as_deref().unwrap_or("local");
                let mut differences = Vec::new();
                if existing.driver != driver {
                    differences.push(format!("driver {} → {driver}", existing.driver));
                }
                for (key, value) in &volume.driver_opts {
                    if existing.options.get(key) != Some(value) {
                        differences.push(format!("driver option {key} changed"));
                    }
                }
                if existing.labels.get(labels::APP) != Some(&desired.app) {
                    differences.push(format!("not made by app {}", desired.app));
                }
                if !differences.is_empty() {
                    plan.warnings.push(format!(
                        "volume {} is kept as it is ({}): a deploy never recreates a volume, its data would be lost; `berth down --volumes` removes it",
                        volume.name,
                        differences.join("; ")
                    ));
                }
            }
        }
    }
    Ok(actions)
}
