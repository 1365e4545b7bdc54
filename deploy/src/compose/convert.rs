//! An interpolated compose document → the sections of a Berth app file (`networks`,
//! `services` in Berth's own shape), which `app` (`source.rs`, `validate.rs`) then types
//! and validates as it does for its own files. One small function per compose section,
//! each naming its keys in errors.
//!
//! What changes on the way, so Berth creates what `docker compose up` would:
//! - a service without `networks:` joins the project's `default` network (`PROJECT_default`);
//! - every service is reachable on its networks under its own name (an alias), as Compose
//!   does for service discovery;
//! - `deploy.replicas`/`scale` → `replicas`, `deploy.resources` / `cpus` / `mem_limit` →
//!   `cpus`, `memory`, `reservations`; `deploy.restart_policy` → `restart`;
//! - `environment` and `env_file` become one map; a name without a value takes it from the
//!   variables (inventory, `-e`, process environment, `.env`), or is left out when unset;
//! - `x-berth: { hosts: PATTERN }` → `hosts`.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Map, Value};

use super::interpolate::Resolve;
use super::model;
use crate::error::Problem;
use crate::yaml::kind_of;

/// Berth-shaped `networks` and `services` sections.
pub(crate) struct Converted {
    pub networks: Value,
    pub volumes: Value,
    pub secrets: Value,
    pub services: Value,
}

/// Label values Compose writes on networks, so `docker compose` recognises them.
pub(crate) const PROJECT_LABEL: &str = "com.docker.compose.project";
pub(crate) const NETWORK_LABEL: &str = "com.docker.compose.network";
pub(crate) const VERSION_LABEL: &str = "com.docker.compose.version";
pub(crate) const VOLUME_LABEL: &str = "com.docker.compose.volume";
/// The Compose version written in `com.docker.compose.version`: a v2 release number, so both
/// `docker compose` and the older `docker-compose` parse it.
pub(crate) const COMPOSE_VERSION: &str = "2.0.0";

pub(crate) struct Converter<'a> {
    pub dir: &'a Path,
    pub project: &'a str,
    pub vars: &'a dyn Resolve,
    pub problems: Vec<Problem>,
}

/// `services.web.ports` style paths.
fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl Converter<'_> {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(key, message));
    }

    /// Checks a mapping's keys: `x-*` extensions pass, a key of `not_yet` is "not supported
    /// yet", anything else outside `known` is unknown.
    fn check_keys(&mut self, at: &str, map: &Map<String, Value>, known: &[&str], not_yet: &[&str]) {
        for key in map.keys() {
            if key.starts_with("x-") || known.contains(&key.as_str()) {
                continue;
            }
            if not_yet.contains(&key.as_str()) {
                self.problem(
                    join(at, key),
                    format!("`{key}` is not supported yet by Berth's compose support"),
                );
            } else {
                self.problem(
                    join(at, key),
                    format!(
                        "unknown key `{key}` (expected one of: {})",
                        known.join(", ")
                    ),
                );
            }
        }
    }

    /// A mapping, or null as an empty one; anything else is a problem.
    fn mapping(&mut self, at: &str, value: Option<&Value>) -> Option<Map<String, Value>> {
        match value {
            None | Some(Value::Null) => Some(Map::new()),
            Some(Value::Object(map)) => Some(map.clone()),
            Some(other) => {
                self.problem(at, format!("expected a mapping, found {}", kind_of(other)));
                None
            }
        }
    }

    /// The whole document.
    pub fn document(&mut self, top: &Map<String, Value>) -> Converted {
        self.check_keys("", top, model::TOP, &[]);
        for key in model::TOP_NOT_YET {
            let used = match top.get(*key) {
                None | Some(Value::Null) => false,
                Some(Value::Object(map)) => !map.is_empty(),
                Some(_) => true,
            };
            if used {
                self.problem(
                    *key,
                    format!("top-level `{key}` is not supported yet by Berth's compose support"),
                );
            }
        }
        let default_hosts = self.x_berth_hosts("x-berth", top.get("x-berth"));
        let services = self
            .mapping("services", top.get("services"))
            .unwrap_or_default();
        let declared_networks = self
            .mapping("networks", top.get("networks"))
            .unwrap_or_default();
        let service_names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
        let active_profiles: BTreeSet<String> = self
            .vars
            .get("COMPOSE_PROFILES")
            .unwrap_or_default()
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect();

        let mut berth_services = Map::new();
        let mut uses_default_network = false;
        for (name, body) in &services {
            let at = format!("services.{name}");
            let Some(body) = self.mapping(&at, Some(body)) else {
                continue;
            };
            if !self.profile_active(&at, &body, &active_profiles) {
                continue;
            }
            let service = self.service(&at, name, &body, &default_hosts, &service_names);
            if !body.contains_key("networks") && !body.contains_key("network_mode") {
                uses_default_network = true;
            }
            berth_services.insert(name.clone(), Value::Object(service));
        }

        let mut berth_networks = Map::new();
        for (name, body) in &declared_networks {
            let at = format!("networks.{name}");
            if let Some(network) = self.network(&at, name, body) {
                berth_networks.insert(name.clone(), Value::Object(network));
            }
        }
        if uses_default_network && !berth_networks.contains_key("default") {
            let network = self.network("networks.default", "default", &Value::Null);
            berth_networks.insert(
                "default".to_string(),
                Value::Object(network.unwrap_or_default()),
            );
        }
        let mut berth_volumes = Map::new();
        let declared_volumes = self
            .mapping("volumes", top.get("volumes"))
            .unwrap_or_default();
        for (name, body) in &declared_volumes {
            let at = format!("volumes.{name}");
            if let Some(volume) = self.volume(&at, name, body) {
                berth_volumes.insert(name.clone(), Value::Object(volume));
            }
        }
        let mut berth_secrets = Map::new();
        let declared_secrets = self
            .mapping("secrets", top.get("secrets"))
            .unwrap_or_default();
        for (name, body) in &declared_secrets {
            let at = format!("secrets.{name}");
            if let Some(secret) = self.mapping(&at, Some(body)) {
                self.check_keys(&at, &secret, model::SECRET, model::SECRET_NOT_YET);
                let secret: Map<String, Value> = secret
                    .into_iter()
                    .filter(|(key, _)| !key.starts_with("x-"))
                    .collect();
                berth_secrets.insert(name.clone(), Value::Object(secret));
            }
        }
        Converted {
            networks: Value::Object(berth_networks),
            volumes: Value::Object(berth_volumes),
            secrets: Value::Object(berth_secrets),
            services: Value::Object(berth_services),
        }
    }

    fn x_berth_hosts(&mut self, at: &str, value: Option<&Value>) -> Option<String> {
        let map = self.mapping(at, value)?;
        self.check_keys(at, &map, model::X_BERTH, &[]);
        match map.get("hosts") {
            None | Some(Value::Null) => None,
            Some(Value::String(pattern)) => Some(pattern.clone()),
            Some(other) => {
                self.problem(
                    join(at, "hosts"),
                    format!(
                        "expected a host pattern (e.g. `web:&prod`), found {}",
                        kind_of(other)
                    ),
                );
                None
            }
        }
    }

    fn profile_active(
        &mut self,
        at: &str,
        body: &Map<String, Value>,
        active: &BTreeSet<String>,
    ) -> bool {
        match body.get("profiles") {
            None | Some(Value::Null) => true,
            Some(Value::Array(items)) => {
                let mut names = Vec::new();
                for item in items {
                    match item.as_str() {
                        Some(profile) => names.push(profile.to_string()),
                        None => self.problem(join(at, "profiles"), "profile names must be text"),
                    }
                }
                names.is_empty() || names.iter().any(|p| active.contains(p))
            }
            Some(other) => {
                self.problem(
                    join(at, "profiles"),
                    format!("expected a list of profile names, found {}", kind_of(other)),
                );
                true
            }
        }
    }

    fn service(
        &mut self,
        at: &str,
        name: &str,
        body: &Map<String, Value>,
        default_hosts: &Option<String>,
        service_names: &BTreeSet<&str>,
    ) -> Map<String, Value> {
        self.check_keys(at, body, model::SERVICE, model::SERVICE_NOT_YET);
        let mut out = Map::new();
        match body.get("image") {
            Some(Value::String(image)) => {
                out.insert("image".into(), Value::String(image.clone()));
            }
            Some(other) => self.problem(
                join(at, "image"),
                format!("expected an image reference, found {}", kind_of(other)),
            ),
            None => self.problem(
                join(at, "image"),
                "missing: Berth runs every service from a registry image (with `build:`, `berth ship` pushes the build under this name)",
            ),
        }
        let hosts = self
            .x_berth_hosts(&join(at, "x-berth"), body.get("x-berth"))
            .or_else(|| default_hosts.clone());
        if let Some(hosts) = hosts {
            out.insert("hosts".into(), Value::String(hosts));
        }
        // `x-berth: { settle: 2s }`: the app file's `settle:` (parsed, and checked, there).
        if let Some(Value::Object(x_berth)) = body.get("x-berth") {
            if let Some(settle) = x_berth.get("settle") {
                out.insert("settle".into(), settle.clone());
            }
        }
        // Mounts and secret uses have the same forms in both files (see `app/storage.rs`).
        for key in [
            "command",
            "entrypoint",
            "ports",
            "restart",
            "stop_signal",
            "stop_grace_period",
            "volumes",
            "secrets",
            // Container options, in the same forms (see `app/runtime.rs`).
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
        ] {
            if let Some(value) = body.get(key).filter(|v| !v.is_null()) {
                out.insert(key.into(), value.clone());
            }
        }
        if let Some(logging) = body.get("logging").filter(|v| !v.is_null()) {
            let at = join(at, "logging");
            if let Some(map) = self.mapping(&at, Some(logging)) {
                self.check_keys(&at, &map, model::LOGGING, &[]);
                out.insert("logging".into(), Value::Object(map));
            }
        }
        let env = self.environment(at, body);
        out.insert("env".into(), Value::Object(env));
        if let Some(labels) = self.labels(&join(at, "labels"), body.get("labels")) {
            out.insert("labels".into(), Value::Object(labels));
        }
        self.expose(&join(at, "expose"), body.get("expose"));
        out.insert("networks".into(), self.service_networks(at, name, body));
        if let Some(check) = self.healthcheck(&join(at, "healthcheck"), body.get("healthcheck")) {
            out.insert("healthcheck".into(), check);
        }
        if let Some(build) = self.build(&join(at, "build"), body.get("build")) {
            out.insert("build".into(), build);
        }
        let dependencies = self.depends_on(
            &join(at, "depends_on"),
            body.get("depends_on"),
            service_names,
        );
        if !dependencies.is_empty() {
            out.insert("depends_on".into(), serde_json::json!(dependencies));
        }
        // Service-level resource keys first; `deploy:` (the newer spelling) overrides them.
        if let Some(scale) = body.get("scale").filter(|v| !v.is_null()) {
            out.insert("replicas".into(), scale.clone());
        }
        if let Some(cpus) = body.get("cpus").filter(|v| !v.is_null()) {
            out.insert("cpus".into(), cpus.clone());
        }
        if let Some(memory) = body.get("mem_limit").filter(|v| !v.is_null()) {
            out.insert("memory".into(), memory.clone());
        }
        if let Some(memory) = body.get("mem_reservation").filter(|v| !v.is_null()) {
            out.insert(
                "reservations".into(),
                serde_json::json!({ "memory": memory }),
            );
        }
        if let Some(deploy) = body.get("deploy") {
            self.deploy(&join(at, "deploy"), deploy, &mut out);
        }
        out
    }

    /// `environment` (list or map) over `env_file`s; valueless names are looked up.
    fn environment(&mut self, at: &str, body: &Map<String, Value>) -> Map<String, Value> {
        let mut env = Map::new();
        for (path, required, key) in self.env_files(&join(at, "env_file"), body.get("env_file")) {
            let file = self.dir.join(&path);
            match std::fs::read_to_string(&file) {
                Ok(text) => match parse_env_file(&text) {
                    Ok(pairs) => {
                        for (name, value) in pairs {
                            env.insert(name, Value::String(value));
                        }
                    }
                    Err(message) => self.problem(key, format!("{}: {message}", file.display())),
                },
                Err(err) if !required && err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => self.problem(key, format!("cannot read {}: {err}", file.display())),
            }
        }
        let at = join(at, "environment");
        match body.get("environment") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    let Some(text) = scalar_text(item) else {
                        self.problem(format!("{at}[{index}]"), "expected NAME=value");
                        continue;
                    };
                    match text.split_once('=') {
                        Some((name, value)) => {
                            env.insert(name.to_string(), Value::String(value.to_string()));
                        }
                        None => {
                            if let Some(value) = self.vars.get(&text) {
                                env.insert(text, Value::String(value));
                            }
                        }
                    }
                }
            }
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    match value {
                        Value::Null => {
                            if let Some(value) = self.vars.get(name) {
                                env.insert(name.clone(), Value::String(value));
                            }
                        }
                        other => match scalar_text(other) {
                            Some(text) => {
                                env.insert(name.clone(), Value::String(text));
                            }
                            None => self.problem(
                                join(&at, name),
                                format!(
                                    "expected text, a number or a boolean, found {}",
                                    kind_of(other)
                                ),
                            ),
                        },
                    }
                }
            }
            Some(other) => self.problem(
                at,
                format!(
                    "expected a list of NAME=value or a mapping, found {}",
                    kind_of(other)
                ),
            ),
        }
        env
    }

    /// `env_file`: a path, a list of paths, or a list of `{ path, required }`.
    fn env_files(&mut self, at: &str, value: Option<&Value>) -> Vec<(String, bool, String)> {
        let items = match value {
            None | Some(Value::Null) => return Vec::new(),
            Some(Value::String(path)) => return vec![(path.clone(), true, at.to_string())],
            Some(Value::Array(items)) => items,
            Some(other) => {
                self.problem(
                    at,
                    format!("expected a path or a list, found {}", kind_of(other)),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let key = format!("{at}[{index}]");
            match item {
                Value::String(path) => out.push((path.clone(), true, key)),
                Value::Object(map) => {
                    self.check_keys(&key, map, model::ENV_FILE, &[]);
                    if let Some(format) = map.get("format").and_then(Value::as_str) {
                        if format != "raw" {
                            self.problem(
                                join(&key, "format"),
                                format!("unknown env file format {format:?} (raw)"),
                            );
                        }
                    }
                    let required = !matches!(map.get("required"), Some(Value::Bool(false)));
                    match map.get("path").and_then(Value::as_str) {
                        Some(path) => out.push((path.to_string(), required, key)),
                        None => self.problem(join(&key, "path"), "missing: the file's path"),
                    }
                }
                other => self.problem(key, format!("expected a path, found {}", kind_of(other))),
            }
        }
        out
    }

    /// Labels as a list of `NAME=value` or a mapping → a mapping.
    fn labels(&mut self, at: &str, value: Option<&Value>) -> Option<Map<String, Value>> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map.clone()),
            Some(Value::Array(items)) => {
                let mut map = Map::new();
                for (index, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(text) => {
                            let (name, value) = text.split_once('=').unwrap_or((text, ""));
                            map.insert(name.to_string(), Value::String(value.to_string()));
                        }
                        None => self.problem(format!("{at}[{index}]"), "expected NAME=value"),
                    }
                }
                Some(map)
            }
            Some(other) => {
                self.problem(
                    at,
                    format!("expected a list or a mapping, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// `expose` only documents ports (every port is reachable on a user-defined network);
    /// checked, then dropped.
    fn expose(&mut self, at: &str, value: Option<&Value>) {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return;
        };
        let Value::Array(items) = value else {
            self.problem(
                at,
                format!("expected a list of ports, found {}", kind_of(value)),
            );
            return;
        };
        for (index, item) in items.iter().enumerate() {
            let text = scalar_text(item).unwrap_or_default();
            let port = text.split('/').next().unwrap_or_default();
            let valid = !port.is_empty()
                && port
                    .split('-')
                    .all(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
            if !valid {
                self.problem(format!("{at}[{index}]"), format!("invalid port {text:?}"));
            }
        }
    }

    /// A service's networks (list or mapping) → Berth's mapping, with the service name as
    /// an alias on each; none at all → the project's `default` network.
    fn service_networks(&mut self, at: &str, name: &str, body: &Map<String, Value>) -> Value {
        let at = join(at, "networks");
        let mut out = Map::new();
        let with_alias = |aliases: Vec<Value>| {
            let mut aliases = aliases;
            if !aliases.iter().any(|a| a.as_str() == Some(name)) {
                aliases.insert(0, Value::String(name.to_string()));
            }
            aliases
        };
        match body.get("networks") {
            None | Some(Value::Null) => {
                out.insert(
                    "default".into(),
                    serde_json::json!({ "aliases": with_alias(Vec::new()) }),
                );
            }
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(network) => {
                            out.insert(
                                network.to_string(),
                                serde_json::json!({ "aliases": with_alias(Vec::new()) }),
                            );
                        }
                        None => self.problem(format!("{at}[{index}]"), "expected a network name"),
                    }
                }
            }
            Some(Value::Object(map)) => {
                for (network, attachment) in map {
                    let key = join(&at, network);
                    let Some(attachment) = self.mapping(&key, Some(attachment)) else {
                        continue;
                    };
                    self.check_keys(
                        &key,
                        &attachment,
                        model::SERVICE_NETWORK,
                        model::SERVICE_NETWORK_NOT_YET,
                    );
                    let mut berth = Map::new();
                    if let Some(address) = attachment.get("ipv4_address").filter(|v| !v.is_null()) {
                        berth.insert("ipv4_address".into(), address.clone());
                    }
                    let aliases = match attachment.get("aliases") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(Value::Array(items)) => items.clone(),
                        Some(other) => {
                            self.problem(
                                join(&key, "aliases"),
                                format!("expected a list of names, found {}", kind_of(other)),
                            );
                            Vec::new()
                        }
                    };
                    berth.insert("aliases".into(), Value::Array(with_alias(aliases)));
                    out.insert(network.clone(), Value::Object(berth));
                }
            }
            Some(other) => self.problem(
                at,
                format!(
                    "expected a list or a mapping of networks, found {}",
                    kind_of(other)
                ),
            ),
        }
        Value::Object(out)
    }

    fn healthcheck(&mut self, at: &str, value: Option<&Value>) -> Option<Value> {
        let map = self.mapping(at, value)?;
        if map.is_empty() {
            return None;
        }
        self.check_keys(at, &map, model::HEALTHCHECK, model::HEALTHCHECK_NOT_YET);
        if map.get("disable") == Some(&Value::Bool(true)) {
            return Some(serde_json::json!({ "test": ["NONE"] }));
        }
        let mut out = Map::new();
        for key in ["test", "interval", "timeout", "retries", "start_period"] {
            if let Some(value) = map.get(key).filter(|v| !v.is_null()) {
                out.insert(key.into(), value.clone());
            }
        }
        if !out.contains_key("test") {
            // Compose keeps the image's HEALTHCHECK command and overrides its timings; the
            // Berth model sets a whole healthcheck.
            self.problem(
                join(at, "test"),
                "a healthcheck without `test` (timings over the image's own check) is not supported yet",
            );
            return None;
        }
        Some(Value::Object(out))
    }

    fn build(&mut self, at: &str, value: Option<&Value>) -> Option<Value> {
        match value {
            None | Some(Value::Null) => None,
            Some(Value::String(context)) => Some(Value::String(context.clone())),
            Some(Value::Object(map)) => {
                self.check_keys(at, map, model::BUILD, model::BUILD_NOT_YET);
                let mut out = Map::new();
                out.insert(
                    "context".into(),
                    map.get("context")
                        .cloned()
                        .unwrap_or_else(|| Value::String(".".into())),
                );
                for key in ["dockerfile", "target"] {
                    if let Some(value) = map.get(key).filter(|v| !v.is_null()) {
                        out.insert(key.into(), value.clone());
                    }
                }
                if let Some(args) = self.labels(&join(at, "args"), map.get("args")) {
                    out.insert("args".into(), Value::Object(args));
                }
                Some(Value::Object(out))
            }
            Some(other) => {
                self.problem(
                    at,
                    format!(
                        "expected a context path or a mapping, found {}",
                        kind_of(other)
                    ),
                );
                None
            }
        }
    }

    /// The services a service depends on, which must exist, with conditions Berth meets: a
    /// host starts its containers one by one, dependencies first, and waits for each to be
    /// healthy (when it has a healthcheck) before the next.
    fn depends_on(
        &mut self,
        at: &str,
        value: Option<&Value>,
        services: &BTreeSet<&str>,
    ) -> Vec<String> {
        let mut names = Vec::new();
        let mut check_name = |this: &mut Self, key: String, name: &str| {
            if services.contains(name) {
                names.push(name.to_string());
            } else {
                this.problem(key, format!("unknown service `{name}`"));
            }
        };
        match value {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    match item.as_str() {
                        Some(name) => check_name(self, format!("{at}[{index}]"), name),
                        None => self.problem(format!("{at}[{index}]"), "expected a service name"),
                    }
                }
            }
            Some(Value::Object(map)) => {
                for (name, body) in map {
                    let key = join(at, name);
                    check_name(self, key.clone(), name);
                    let Some(body) = self.mapping(&key, Some(body)) else {
                        continue;
                    };
                    self.check_keys(&key, &body, model::DEPENDS_ON, &[]);
                    match body.get("condition").and_then(Value::as_str) {
                        None | Some("service_started" | "service_healthy") => {}
                        Some("service_completed_successfully") => self.problem(
                            join(&key, "condition"),
                            "`service_completed_successfully` is not supported yet by Berth's compose support",
                        ),
                        Some(other) => self.problem(
                            join(&key, "condition"),
                            format!("unknown condition {other:?} (service_started, service_healthy, service_completed_successfully)"),
                        ),
                    }
                }
            }
            Some(other) => self.problem(
                at,
                format!(
                    "expected a list or a mapping of services, found {}",
                    kind_of(other)
                ),
            ),
        }
        names
    }

    /// `deploy:` → replicas, resources, restart policy and placement.
    fn deploy(&mut self, at: &str, value: &Value, out: &mut Map<String, Value>) {
        let Some(deploy) = self.mapping(at, Some(value)) else {
            return;
        };
        self.check_keys(at, &deploy, model::DEPLOY, model::DEPLOY_NOT_YET);
        match deploy.get("mode").and_then(Value::as_str) {
            None | Some("replicated") => {}
            Some("global" | "replicated-job" | "global-job") => self.problem(
                join(at, "mode"),
                "only `replicated` is supported yet (Berth places services on hosts with `x-berth: { hosts }`)",
            ),
            Some(other) => self.problem(
                join(at, "mode"),
                format!("unknown mode {other:?} (replicated, global)"),
            ),
        }
        if let Some(replicas) = deploy.get("replicas").filter(|v| !v.is_null()) {
            out.insert("replicas".into(), replicas.clone());
        }
        if let Some(resources) = deploy.get("resources") {
            let at = join(at, "resources");
            if let Some(resources) = self.mapping(&at, Some(resources)) {
                self.check_keys(&at, &resources, model::RESOURCES, &[]);
                let limits_at = join(&at, "limits");
                if let Some(limits) = self.mapping(&limits_at, resources.get("limits")) {
                    self.check_keys(
                        &limits_at,
                        &limits,
                        model::RESOURCE_LIMITS,
                        model::RESOURCE_LIMITS_NOT_YET,
                    );
                    for (compose_key, berth_key) in [("cpus", "cpus"), ("memory", "memory")] {
                        if let Some(value) = limits.get(compose_key).filter(|v| !v.is_null()) {
                            out.insert(berth_key.into(), value.clone());
                        }
                    }
                }
                let reservations_at = join(&at, "reservations");
                if let Some(reservations) =
                    self.mapping(&reservations_at, resources.get("reservations"))
                {
                    self.check_keys(
                        &reservations_at,
                        &reservations,
                        model::RESOURCE_RESERVATIONS,
                        model::RESOURCE_RESERVATIONS_NOT_YET,
                    );
                    let mut berth = Map::new();
                    for key in ["cpus", "memory"] {
                        if let Some(value) = reservations.get(key).filter(|v| !v.is_null()) {
                            berth.insert(key.into(), value.clone());
                        }
                    }
                    if !berth.is_empty() {
                        out.insert("reservations".into(), Value::Object(berth));
                    }
                }
            }
        }
        if let Some(policy) = deploy.get("restart_policy") {
            let at = join(at, "restart_policy");
            if let Some(policy) = self.mapping(&at, Some(policy)) {
                self.check_keys(
                    &at,
                    &policy,
                    model::RESTART_POLICY,
                    model::RESTART_POLICY_NOT_YET,
                );
                let attempts = policy.get("max_attempts").and_then(scalar_text);
                let restart = match policy.get("condition").and_then(Value::as_str) {
                    Some("none") => Some("no".to_string()),
                    Some("on-failure") => Some(match attempts {
                        Some(n) => format!("on-failure:{n}"),
                        None => "on-failure".to_string(),
                    }),
                    // Swarm's default condition is `any`.
                    Some("any") | None => Some("always".to_string()),
                    Some(other) => {
                        self.problem(
                            join(&at, "condition"),
                            format!("unknown condition {other:?} (none, on-failure, any)"),
                        );
                        None
                    }
                };
                if let Some(restart) = restart {
                    out.insert("restart".into(), Value::String(restart));
                }
            }
        }
        if let Some(placement) = deploy.get("placement") {
            let at = join(at, "placement");
            if let Some(placement) = self.mapping(&at, Some(placement)) {
                self.check_keys(&at, &placement, model::PLACEMENT, &[]);
                out.insert("placement".into(), Value::Object(placement));
            }
        }
    }

    /// A top-level volume, with the labels Compose puts on the volumes it creates (not on
    /// external ones, which Berth never creates).
    fn volume(&mut self, at: &str, key: &str, body: &Value) -> Option<Map<String, Value>> {
        let body = self.mapping(at, Some(body))?;
        self.check_keys(at, &body, model::VOLUME, &[]);
        let mut out: Map<String, Value> = body
            .into_iter()
            .filter(|(key, value)| !key.starts_with("x-") && !value.is_null())
            .collect();
        if out.get("external") != Some(&Value::Bool(true)) {
            let mut labels = self
                .labels(&join(at, "labels"), out.get("labels"))
                .unwrap_or_default();
            labels.insert(
                PROJECT_LABEL.into(),
                Value::String(self.project.to_string()),
            );
            labels.insert(VOLUME_LABEL.into(), Value::String(key.to_string()));
            labels.insert(VERSION_LABEL.into(), Value::String(COMPOSE_VERSION.into()));
            out.insert("labels".into(), Value::Object(labels));
        }
        Some(out)
    }

    /// A top-level network → Berth's network (one IPv4 subnet at most), with the labels
    /// Compose puts on the networks it creates.
    fn network(&mut self, at: &str, key: &str, body: &Value) -> Option<Map<String, Value>> {
        let body = self.mapping(at, Some(body))?;
        self.check_keys(at, &body, model::NETWORK, model::NETWORK_NOT_YET);
        let mut out = Map::new();
        if let Some(name) = body.get("name").filter(|v| !v.is_null()) {
            out.insert("name".into(), name.clone());
        }
        match body.get("driver").and_then(Value::as_str) {
            None => {}
            Some(driver @ ("bridge" | "overlay" | "macvlan" | "ipvlan")) => {
                out.insert("driver".into(), Value::String(driver.to_string()));
            }
            Some(other) => self.problem(
                join(at, "driver"),
                format!("driver {other:?} is not supported yet (bridge, overlay, macvlan, ipvlan)"),
            ),
        }
        if let Some(options) = body.get("driver_opts").filter(|v| !v.is_null()) {
            out.insert("options".into(), options.clone());
        }
        if body.get("internal").is_some_and(|v| !v.is_null()) {
            out.insert("internal".into(), body["internal"].clone());
        }
        let mut labels = self
            .labels(&join(at, "labels"), body.get("labels"))
            .unwrap_or_default();
        labels.insert(
            PROJECT_LABEL.into(),
            Value::String(self.project.to_string()),
        );
        labels.insert(NETWORK_LABEL.into(), Value::String(key.to_string()));
        labels.insert(VERSION_LABEL.into(), Value::String(COMPOSE_VERSION.into()));
        out.insert("labels".into(), Value::Object(labels));
        if let Some(ipam) = body.get("ipam") {
            let at = join(at, "ipam");
            let ipam = self.mapping(&at, Some(ipam))?;
            self.check_keys(&at, &ipam, model::IPAM, model::IPAM_NOT_YET);
            if let Some(driver) = ipam.get("driver").and_then(Value::as_str) {
                if driver != "default" {
                    self.problem(
                        join(&at, "driver"),
                        format!("IPAM driver {driver:?} is not supported yet (default)"),
                    );
                }
            }
            match ipam.get("config") {
                None | Some(Value::Null) => {}
                Some(Value::Array(configs)) => {
                    if configs.len() > 1 {
                        self.problem(
                            join(&at, "config"),
                            "more than one subnet per network is not supported yet",
                        );
                    }
                    if let Some(config) = configs.first() {
                        let at = format!("{at}.config[0]");
                        let config = self.mapping(&at, Some(config))?;
                        self.check_keys(
                            &at,
                            &config,
                            model::IPAM_CONFIG,
                            model::IPAM_CONFIG_NOT_YET,
                        );
                        for key in ["subnet", "gateway", "ip_range"] {
                            if let Some(value) = config.get(key).filter(|v| !v.is_null()) {
                                out.insert(key.into(), value.clone());
                            }
                        }
                    }
                }
                Some(other) => self.problem(
                    join(&at, "config"),
                    format!("expected a list of subnets, found {}", kind_of(other)),
                ),
            }
        }
        Some(out)
    }
}

/// A `.env` or `env_file` file: `NAME=value` lines, `#` comments, blank lines, an optional
/// `export ` prefix, values optionally in single or double quotes (`NAME` alone is skipped:
/// it has no value here).
pub(crate) fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || name.contains(char::is_whitespace) {
            return Err(format!(
                "line {}: invalid variable name {name:?}",
                index + 1
            ));
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value[1..value.len() - 1].to_string()
        } else {
            // An unquoted value ends at ` #` (an inline comment).
            value
                .split_once(" #")
                .map(|(v, _)| v.trim_end())
                .unwrap_or(value)
                .to_string()
        };
        pairs.push((name.to_string(), value));
    }
    Ok(pairs)
}
