//! A [`SwarmService`] as the Engine API's `ServiceSpec`: what `docker service create`
//! would send, with Berth's labels and rollout settings (see `run.rs` for the rules).

use std::time::Duration;

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, HealthConfig, Limit, NetworkAttachmentConfig, ResourceObject, ServiceSpec,
    ServiceSpecMode, ServiceSpecModeReplicated, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum,
    ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum,
};

use super::{SwarmService, SwarmSpec};
use crate::app::{Protocol, PublishMode};

/// The Engine API's service spec for `service`.
pub fn service_spec(
    app: &str,
    service: &SwarmService,
    previous_config: Option<&str>,
    monitor: Duration,
) -> ServiceSpec {
    let spec = &service.spec;
    let restart = match spec.restart.name.as_str() {
        "no" => TaskSpecRestartPolicyConditionEnum::NONE,
        "on-failure" => TaskSpecRestartPolicyConditionEnum::ON_FAILURE,
        // always, unless-stopped (Swarm has no "stopped by hand" state), or unset
        _ => TaskSpecRestartPolicyConditionEnum::ANY,
    };
    let networks = spec
        .networks
        .iter()
        .map(|(name, aliases)| NetworkAttachmentConfig {
            target: Some(name.clone()),
            aliases: Some(aliases.clone()),
            driver_opts: None,
        })
        .collect();
    let (update_config, rollback_config) = rollout(spec.needs_stop_first().is_some(), monitor);
    ServiceSpec {
        name: Some(service.name.clone()),
        labels: Some(service.labels(app, previous_config).into_iter().collect()),
        task_template: Some(TaskSpec {
            container_spec: Some(container_spec(app, service)),
            resources: Some(resources(spec)),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(restart),
                max_attempts: spec.restart.max_retries.map(i64::from),
                ..Default::default()
            }),
            placement: Some(placement(spec)),
            networks: Some(networks),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated {
                replicas: Some(i64::from(spec.replicas)),
            }),
            ..Default::default()
        }),
        update_config: Some(update_config),
        rollback_config: Some(rollback_config),
        endpoint_spec: Some(EndpointSpec {
            mode: None,
            ports: Some(ports(spec)),
        }),
        ..Default::default()
    }
}

/// Nanoseconds (and bytes) as the API's i64, saturating.
fn nanos(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The task's container: image pinned by digest, Berth's labels, command, env, healthcheck,
/// mounts.
fn container_spec(app: &str, service: &SwarmService) -> TaskSpecContainerSpec {
    let spec = &service.spec;
    TaskSpecContainerSpec {
        image: Some(spec.image_reference()),
        labels: Some(service.container_labels(app).into_iter().collect()),
        command: spec.entrypoint.clone(),
        args: spec.command.clone(),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        health_check: spec.healthcheck.as_ref().map(|h| HealthConfig {
            test: Some(h.test.clone()),
            interval: h.interval_ns.map(nanos),
            timeout: h.timeout_ns.map(nanos),
            retries: h.retries.map(i64::from),
            start_period: h.start_period_ns.map(nanos),
            start_interval: None,
        }),
        mounts: (!spec.mounts.is_empty()).then(|| super::secrets::engine_mounts(service)),
        ..Default::default()
    }
}

fn resources(spec: &SwarmSpec) -> TaskSpecResources {
    TaskSpecResources {
        limits: Some(Limit {
            nano_cpus: spec.limit_nano_cpus.map(nanos),
            memory_bytes: spec.limit_memory.map(nanos),
            pids: None,
        }),
        reservations: Some(ResourceObject {
            nano_cpus: spec.reserve_nano_cpus.map(nanos),
            memory_bytes: spec.reserve_memory.map(nanos),
            generic_resources: None,
        }),
        ..Default::default()
    }
}

fn placement(spec: &SwarmSpec) -> TaskSpecPlacement {
    TaskSpecPlacement {
        constraints: Some(spec.constraints.clone()),
        preferences: Some(
            spec.spread
                .iter()
                .map(|descriptor| TaskSpecPlacementPreferences {
                    spread: Some(TaskSpecPlacementSpread {
                        spread_descriptor: Some(descriptor.clone()),
                    }),
                })
                .collect(),
        ),
        max_replicas: spec.max_replicas_per_node.map(nanos),
        platforms: None,
    }
}

fn ports(spec: &SwarmSpec) -> Vec<EndpointPortConfig> {
    spec.ports
        .iter()
        .map(|port| EndpointPortConfig {
            name: None,
            protocol: Some(match port.protocol {
                Protocol::Tcp => EndpointPortConfigProtocolEnum::TCP,
                Protocol::Udp => EndpointPortConfigProtocolEnum::UDP,
                Protocol::Sctp => EndpointPortConfigProtocolEnum::SCTP,
            }),
            target_port: Some(i64::from(port.target)),
            published_port: port.published.map(i64::from),
            publish_mode: Some(match port.mode {
                PublishMode::Host => EndpointPortConfigPublishModeEnum::HOST,
                PublishMode::Ingress => EndpointPortConfigPublishModeEnum::INGRESS,
            }),
        })
        .collect()
}

/// Updates one task at a time and roll back on failure; a rollback pauses on failure.
/// Stop-first when two tasks could not run side by side (see `needs_stop_first`).
fn rollout(
    stop_first: bool,
    monitor: Duration,
) -> (ServiceSpecUpdateConfig, ServiceSpecRollbackConfig) {
    let monitor = i64::try_from(monitor.as_nanos()).unwrap_or(i64::MAX);
    let update = ServiceSpecUpdateConfig {
        parallelism: Some(1),
        delay: Some(0),
        failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
        monitor: Some(monitor),
        max_failure_ratio: Some(0.0),
        order: Some(if stop_first {
            ServiceSpecUpdateConfigOrderEnum::STOP_FIRST
        } else {
            ServiceSpecUpdateConfigOrderEnum::START_FIRST
        }),
    };
    let rollback = ServiceSpecRollbackConfig {
        parallelism: Some(1),
        delay: Some(0),
        failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
        monitor: Some(monitor),
        max_failure_ratio: Some(0.0),
        order: Some(if stop_first {
            ServiceSpecRollbackConfigOrderEnum::STOP_FIRST
        } else {
            ServiceSpecRollbackConfigOrderEnum::START_FIRST
        }),
    };
    (update, rollback)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::app::RestartPolicy;
    use crate::swarm::PREVIOUS_CONFIG;

    fn service(restart: &str, retries: Option<u32>) -> SwarmService {
        let spec = SwarmSpec {
            image: "reg/web:v1".into(),
            image_digest: Some("sha256:ab".into()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            command: Some(vec!["httpd -f".into()]),
            env: BTreeMap::from([("A".into(), "1".into())]),
            labels: BTreeMap::from([("team".into(), "web".into())]),
            replicas: 2,
            ports: vec![super::super::SwarmPort {
                published: None,
                target: 8000,
                protocol: Protocol::Udp,
                mode: PublishMode::Host,
            }],
            networks: BTreeMap::from([("app_front".into(), vec!["www".into()])]),
            restart: RestartPolicy {
                name: restart.into(),
                max_retries: retries,
            },
            limit_nano_cpus: Some(500_000_000),
            limit_memory: None,
            reserve_nano_cpus: Some(100_000_000),
            reserve_memory: Some(1 << 20),
            constraints: vec!["node.labels.zone==a".into()],
            spread: vec!["node.labels.rack".into()],
            max_replicas_per_node: Some(1),
            healthcheck: None,
            mounts: Vec::new(),
            volumes: Vec::new(),
            secrets: Vec::new(),
        };
        SwarmService::from_spec("app_web".into(), "web".into(), spec)
    }

    #[test]
    fn engine_spec_maps_every_field() {
        let spec = service_spec(
            "app",
            &service("on-failure", Some(3)),
            Some("{}"),
            Duration::from_secs(5),
        );
        let task = spec.task_template.as_ref().unwrap();
        let container = task.container_spec.as_ref().unwrap();
        assert_eq!(container.image.as_deref(), Some("reg/web:v1@sha256:ab"));
        // The app file's entrypoint is Swarm's Command, its command Swarm's Args.
        assert_eq!(container.command.as_deref().unwrap(), ["/bin/sh", "-c"]);
        assert_eq!(container.args.as_deref().unwrap(), ["httpd -f"]);
        assert_eq!(container.env.as_deref().unwrap(), ["A=1"]);
        let container_labels = container.labels.as_ref().unwrap();
        assert_eq!(container_labels["berth.app"], "app");
        assert!(!container_labels.contains_key("berth.config"));
        let restart = task.restart_policy.as_ref().unwrap();
        assert_eq!(
            restart.condition,
            Some(TaskSpecRestartPolicyConditionEnum::ON_FAILURE)
        );
        assert_eq!(restart.max_attempts, Some(3));
        let resources = task.resources.as_ref().unwrap();
        assert_eq!(
            resources.limits.as_ref().unwrap().nano_cpus,
            Some(500_000_000)
        );
        assert_eq!(
            resources.reservations.as_ref().unwrap().memory_bytes,
            Some(1 << 20)
        );
        let placement = task.placement.as_ref().unwrap();
        assert_eq!(placement.max_replicas, Some(1));
        assert_eq!(
            placement.constraints.as_deref().unwrap(),
            ["node.labels.zone==a"]
        );
        let networks = task.networks.as_ref().unwrap();
        assert_eq!(networks[0].target.as_deref(), Some("app_front"));
        let port = &spec.endpoint_spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
        assert_eq!(
            port.publish_mode,
            Some(EndpointPortConfigPublishModeEnum::HOST)
        );
        assert_eq!(port.protocol, Some(EndpointPortConfigProtocolEnum::UDP));
        assert_eq!(port.published_port, None);
        let update = spec.update_config.as_ref().unwrap();
        assert_eq!(
            update.order,
            Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST)
        );
        assert_eq!(
            update.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        let labels = spec.labels.as_ref().unwrap();
        assert_eq!(labels[PREVIOUS_CONFIG], "{}");
        assert_eq!(labels["team"], "web");
        assert_eq!(
            spec.mode
                .as_ref()
                .unwrap()
                .replicated
                .as_ref()
                .unwrap()
                .replicas,
            Some(2)
        );
    }

    #[test]
    fn restart_policies_map_to_swarm_conditions() {
        for (name, expected) in [
            ("no", TaskSpecRestartPolicyConditionEnum::NONE),
            ("always", TaskSpecRestartPolicyConditionEnum::ANY),
            ("unless-stopped", TaskSpecRestartPolicyConditionEnum::ANY),
            ("on-failure", TaskSpecRestartPolicyConditionEnum::ON_FAILURE),
        ] {
            let spec = service_spec("app", &service(name, None), None, Duration::from_secs(5));
            let task = spec.task_template.unwrap();
            assert_eq!(
                task.restart_policy.unwrap().condition,
                Some(expected),
                "{name}"
            );
            assert!(!spec.labels.unwrap().contains_key(PREVIOUS_CONFIG));
        }
    }
}
