//! The compose-spec's keys, and what Berth does with each: read it, or refuse it as "not
//! supported yet" (a key the Berth app model cannot express). A key in neither list is
//! unknown (a typo, most likely) and refused as such; `x-*` extension keys are allowed
//! wherever the spec allows them.
//!
//! Key names come from the compose-spec (`compose-spec.json`, `spec.md` of
//! github.com/compose-spec/compose-spec).

/// Top-level keys Berth reads. `version` is obsolete in the spec and ignored.
pub(crate) const TOP: &[&str] = &[
    "version", "name", "services", "networks", "volumes", "secrets",
];
/// Top-level keys of the spec that Berth does not handle yet.
pub(crate) const TOP_NOT_YET: &[&str] = &["configs", "include", "models"];

/// Service keys Berth reads (converted in `convert.rs`).
pub(crate) const SERVICE: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "ports",
    "expose",
    "networks",
    "healthcheck",
    "restart",
    "stop_signal",
    "stop_grace_period",
    "labels",
    "deploy",
    "build",
    "profiles",
    "depends_on",
    "volumes",
    "secrets",
    "scale",
    "cpus",
    "mem_limit",
    "mem_reservation",
    "user",
    "working_dir",
    "hostname",
    "extra_hosts",
    "cap_add",
    "cap_drop",
    "init",
    "read_only",
    "tmpfs",
    "ulimits",
    "logging",
    "privileged",
    "dns",
    "dns_search",
    "security_opt",
    "sysctls",
    "shm_size",
    "pids_limit",
    "tty",
    "stdin_open",
    "container_name",
];

/// Service keys of the spec that the Berth app model cannot express yet.
pub(crate) const SERVICE_NOT_YET: &[&str] = &[
    "annotations",
    "attach",
    "blkio_config",
    "cgroup",
    "cgroup_parent",
    "configs",
    "cpu_count",
    "cpu_percent",
    "cpu_period",
    "cpu_quota",
    "cpu_rt_period",
    "cpu_rt_runtime",
    "cpu_shares",
    "cpuset",
    "credential_spec",
    "develop",
    "device_cgroup_rules",
    "devices",
    "dns_opt",
    "domainname",
    "driver_opts",
    "extends",
    "external_links",
    "gpus",
    "group_add",
    "ipc",
    "isolation",
    "label_file",
    "links",
    "mac_address",
    "mem_swappiness",
    "memswap_limit",
    "models",
    "network_mode",
    "oom_kill_disable",
    "oom_score_adj",
    "pid",
    "platform",
    "post_start",
    "pre_stop",
    "provider",
    "pull_policy",
    "runtime",
    "storage_opt",
    "use_api_socket",
    "userns_mode",
    "uts",
    "volumes_from",
];

/// A service's attachment to one network.
pub(crate) const SERVICE_NETWORK: &[&str] = &["ipv4_address", "aliases"];
pub(crate) const SERVICE_NETWORK_NOT_YET: &[&str] = &[
    "ipv6_address",
    "link_local_ips",
    "mac_address",
    "priority",
    "gw_priority",
    "driver_opts",
    "interface_name",
];

pub(crate) const HEALTHCHECK: &[&str] = &[
    "test",
    "interval",
    "timeout",
    "retries",
    "start_period",
    "disable",
];
pub(crate) const HEALTHCHECK_NOT_YET: &[&str] = &["start_interval"];

pub(crate) const BUILD: &[&str] = &["context", "dockerfile", "args", "target"];
pub(crate) const BUILD_NOT_YET: &[&str] = &[
    "additional_contexts",
    "cache_from",
    "cache_to",
    "dockerfile_inline",
    "entitlements",
    "extra_hosts",
    "isolation",
    "labels",
    "network",
    "no_cache",
    "platforms",
    "privileged",
    "provenance",
    "pull",
    "sbom",
    "secrets",
    "shm_size",
    "ssh",
    "tags",
    "ulimits",
];

pub(crate) const DEPLOY: &[&str] = &[
    "replicas",
    "resources",
    "restart_policy",
    "placement",
    "mode",
];
pub(crate) const DEPLOY_NOT_YET: &[&str] = &[
    "update_config",
    "rollback_config",
    "endpoint_mode",
    "labels",
];
pub(crate) const RESOURCES: &[&str] = &["limits", "reservations"];
pub(crate) const RESOURCE_LIMITS: &[&str] = &["cpus", "memory"];
pub(crate) const RESOURCE_LIMITS_NOT_YET: &[&str] = &["pids"];
pub(crate) const RESOURCE_RESERVATIONS: &[&str] = &["cpus", "memory"];
pub(crate) const RESOURCE_RESERVATIONS_NOT_YET: &[&str] = &["devices", "generic_resources"];
pub(crate) const RESTART_POLICY: &[&str] = &["condition", "max_attempts"];
pub(crate) const RESTART_POLICY_NOT_YET: &[&str] = &["delay", "window"];
pub(crate) const PLACEMENT: &[&str] = &["constraints", "preferences", "max_replicas_per_node"];

/// `logging:` of a service.
pub(crate) const LOGGING: &[&str] = &["driver", "options"];

pub(crate) const DEPENDS_ON: &[&str] = &["condition", "restart", "required"];
pub(crate) const ENV_FILE: &[&str] = &["path", "required", "format"];

/// Top-level `networks.NAME`.
pub(crate) const NETWORK: &[&str] = &[
    "name",
    "driver",
    "driver_opts",
    "ipam",
    "labels",
    "internal",
];
pub(crate) const NETWORK_NOT_YET: &[&str] =
    &["external", "attachable", "enable_ipv6", "enable_ipv4"];
pub(crate) const IPAM: &[&str] = &["driver", "config"];
pub(crate) const IPAM_NOT_YET: &[&str] = &["options"];
pub(crate) const IPAM_CONFIG: &[&str] = &["subnet", "gateway", "ip_range"];
pub(crate) const IPAM_CONFIG_NOT_YET: &[&str] = &["aux_addresses"];

/// `x-berth:` on a service or at the top level (the default for every service).
pub(crate) const X_BERTH: &[&str] = &["hosts", "settle"];

/// Top-level `volumes.NAME` (the app model's `Volume` has the same keys).
pub(crate) const VOLUME: &[&str] = &["name", "driver", "driver_opts", "labels", "external"];
/// Top-level `secrets.NAME` (the app model's `Secret`).
pub(crate) const SECRET: &[&str] = &["file", "environment"];
pub(crate) const SECRET_NOT_YET: &[&str] = &[
    "external",
    "name",
    "driver",
    "driver_opts",
    "labels",
    "template_driver",
];
