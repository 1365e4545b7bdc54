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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::actual::ActualHost;
    use crate::app::AppSource;
    use crate::desired::{desired_state, DesiredHost};
    use crate::inventory::Inventory;
    use crate::plan::{action_text, plan_host, Action};

    const APP: &str = r#"
name: shop
volumes:
  data: { driver_opts: { type: tmpfs, device: tmpfs, o: size=8m } }
  shared: { external: true }
secrets:
  pw: { environment: BERTH_PLAN_VOLUMES_TEST_PW }
services:
  db:
    image: reg/db
    env: { TOKEN: "{{ token }}" }
    volumes: [data:/data, "shared:/shared:ro", { type: tmpfs, target: /tmp }]
"#;

    fn desired(app: &str, token: &str) -> DesiredHost {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("hosts.yml"),
            format!("all:\n  hosts:\n    h1: {{ token: \"{token}\" }}\n"),
        )
        .expect("write hosts");
        let inventory = Inventory::load(dir.path()).expect("inventory");
        let source = AppSource::parse(Path::new("app.yml"), app).expect("app");
        desired_state(&source, &inventory, None)
            .expect("desired")
            .remove(0)
    }

    fn shared_exists(actual: &mut ActualHost) {
        actual.volumes.retain(|v| v.name != "shared");
        actual.volumes.push(crate::actual::ActualVolume {
            name: "shared".into(),
            driver: "local".into(),
            options: Default::default(),
            labels: Default::default(),
        });
    }

    #[test]
    fn volumes_are_created_once_and_never_removed() {
        let host = desired(APP, "t1");
        let names: Vec<&str> = host.volumes.iter().map(|v| v.name.as_str()).collect();
        // `shared` is external: used by its own name, only checked for.
        assert_eq!(names, ["shop_data", "shared"]);
        let mut empty = ActualHost::default();
        let plan = plan_host(&host, &empty);
        assert!(plan
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("external volume shared"));
        shared_exists(&mut empty);
        let plan = plan_host(&host, &empty);
        let verbs: Vec<String> = plan.actions.iter().map(action_text).collect();
        assert_eq!(
            verbs,
            [
                "pull image reg/db",
                "create volume shop_data (local)",
                "create container shop_db_1"
            ]
        );
        // After it: nothing to do, and a deploy of an app without volumes removes none.
        let mut after = ActualHost::after_apply(&host);
        shared_exists(&mut after);
        assert!(plan_host(&host, &after).actions.is_empty());
        let without = desired("name: shop\nservices: { db: { image: reg/db } }", "t1");
        let plan = plan_host(&without, &after);
        assert!(
            !plan
                .actions
                .iter()
                .any(|a| matches!(a, Action::RemoveVolume { .. })),
            "{plan:?}"
        );
    }

    #[test]
    fn changed_mounts_and_env_replace_with_names_only() {
        let host = desired(APP, "t1");
        let mut after = ActualHost::after_apply(&host);
        shared_exists(&mut after);
        // The stored config holds a digest, not the value.
        let label = &after.containers[0].labels[crate::labels::CONFIG];
        assert!(
            !label.contains("t1") && label.contains("salted-sha256:"),
            "{label}"
        );
        let changed = desired(&APP.replace("/tmp }", "/scratch }"), "t2");
        let plan = plan_host(&changed, &after);
        let Action::ReplaceContainer { reasons, .. } = &plan.actions[0] else {
            panic!("{plan:?}");
        };
        assert_eq!(
            reasons,
            &[
                "env TOKEN changed",
                "mount /scratch added",
                "mount /tmp removed"
            ]
        );
    }
}
