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

/// A container's mount and secret changes in words (secrets by name, never by value).
pub(crate) fn mount_differences(
    old: &crate::desired::ContainerSpec,
    new: &crate::desired::ContainerSpec,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for mount in &new.mounts {
        match old.mounts.iter().find(|m| m.target == mount.target) {
            None => reasons.push(format!("mount {} added", mount.target)),
            Some(before) if before != mount => {
                reasons.push(format!("mount {} changed", mount.target))
            }
            Some(_) => {}
        }
    }
    for mount in &old.mounts {
        if !new.mounts.iter().any(|m| m.target == mount.target) {
            reasons.push(format!("mount {} removed", mount.target));
        }
    }
    for secret in &new.secrets {
        match old.secrets.iter().find(|s| s.target == secret.target) {
            None => reasons.push(format!("secret {} added", secret.source)),
            Some(before) if before.digest != secret.digest => {
                reasons.push(format!("secret {} changed", secret.source))
            }
            Some(before) if before != secret => {
                reasons.push(format!("secret {} owner or mode changed", secret.source))
            }
            Some(_) => {}
        }
    }
    for secret in &old.secrets {
        if !new.secrets.iter().any(|s| s.target == secret.target) {
            reasons.push(format!("secret {} removed", secret.source));
        }
    }
    reasons
}
