//! A service's container options beyond image, command and resources, named as the
//! compose-spec and `docker run` name them:
//!
//! ```yaml
//! services:
//!   web:
//!     user: "1000:1000"                  # or a name; a number is read as text
//!     working_dir: /app
//!     hostname: web1
//!     extra_hosts: ["db.internal:10.0.0.5"]   # or { db.internal: 10.0.0.5 }
//!     cap_add: [NET_ADMIN]
//!     cap_drop: [ALL]
//!     init: true                         # docker-init as PID 1 (reaps zombies, forwards signals)
//!     read_only: true                    # read-only root file system
//!     tmpfs: [/run, "/tmp:size=64m"]     # or one path
//!     ulimits: { nproc: 65535, nofile: { soft: 1024, hard: 2048 } }
//!     logging: { driver: json-file, options: { max-size: 10m } }
//!     privileged: false
//!     dns: [10.0.0.53]                   # or one address; also dns_search
//!     security_opt: [no-new-privileges:true]
//!     sysctls: { net.core.somaxconn: 1024 }   # or [net.core.somaxconn=1024]
//!     shm_size: 64m
//!     pids_limit: 100
//!     tty: false                         # also stdin_open
//! ```
//!
//! They travel together as [`RuntimeOptions`] in the container spec, left out of the stored
//! spec (and so of the config hash) when all unset, so containers deployed before these
//! options existed are not seen as changed.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{scalar_text, string_map, Service};
use crate::yaml;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ulimit {
    pub soft: i64,
    pub hard: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// Docker's logging driver (`json-file`, `local`, `syslog`, `none`, ...); none = the
    /// daemon's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(
        default,
        deserialize_with = "string_map",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub options: BTreeMap<String, String>,
}

/// Every option above, as one part of a container's spec. Fields are skipped when unset so
/// that the stored spec of a container using none of them stays as it was.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RuntimeOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `HOST:IP` entries for the container's /etc/hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<bool>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    /// Mount path → mount options (`size=64m,mode=1777`, or empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tmpfs: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ulimits: BTreeMap<String, Ulimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logging: Option<Logging>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub privileged: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_opt: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Bytes of /dev/shm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tty: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin_open: bool,
}

fn is_false(value: &bool) -> bool {
    !value
}

impl RuntimeOptions {
    pub fn of(service: &Service) -> RuntimeOptions {
        RuntimeOptions {
            user: service.user.clone(),
            working_dir: service.working_dir.clone(),
            hostname: service.hostname.clone(),
            extra_hosts: service.extra_hosts.clone(),
            cap_add: service.cap_add.clone(),
            cap_drop: service.cap_drop.clone(),
            init: service.init,
            read_only: service.read_only,
            tmpfs: service.tmpfs.clone(),
            ulimits: service.ulimits.clone(),
            logging: service.logging.clone(),
            privileged: service.privileged,
            dns: service.dns.clone(),
            dns_search: service.dns_search.clone(),
            security_opt: service.security_opt.clone(),
            sysctls: service.sysctls.clone(),
            shm_size: service.shm_size,
            pids_limit: service.pids_limit,
            tty: service.tty,
            stdin_open: service.stdin_open,
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == RuntimeOptions::default()
    }

    /// The names of the options that differ, for a plan's reasons.
    pub fn differences(&self, other: &RuntimeOptions) -> Vec<&'static str> {
        let mut names = Vec::new();
        let mut check = |name: &'static str, differs: bool| {
            if differs {
                names.push(name);
            }
        };
        check("user", self.user != other.user);
        check("working_dir", self.working_dir != other.working_dir);
        check("hostname", self.hostname != other.hostname);
        check("extra_hosts", self.extra_hosts != other.extra_hosts);
        check("cap_add", self.cap_add != other.cap_add);
        check("cap_drop", self.cap_drop != other.cap_drop);
        check("init", self.init != other.init);
        check("read_only", self.read_only != other.read_only);
        check("tmpfs", self.tmpfs != other.tmpfs);
        check("ulimits", self.ulimits != other.ulimits);
        check("logging", self.logging != other.logging);
        check("privileged", self.privileged != other.privileged);
        check("dns", self.dns != other.dns);
        check("dns_search", self.dns_search != other.dns_search);
        check("security_opt", self.security_opt != other.security_opt);
        check("sysctls", self.sysctls != other.sysctls);
        check("shm_size", self.shm_size != other.shm_size);
        check("pids_limit", self.pids_limit != other.pids_limit);
        check("tty", self.tty != other.tty);
        check("stdin_open", self.stdin_open != other.stdin_open);
        names
    }
}

/// Text, or a number read as text (`user: 1000`).
pub(super) fn optional_text<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        value => scalar_text(&value).map(Some).ok_or_else(|| {
            D::Error::custom(format!("expected text, found {}", yaml::kind_of(&value)))
        }),
    }
}

/// `["HOST:IP", "HOST=IP"]` or `{ HOST: IP }` → `HOST:IP` entries.
pub(super) fn extra_hosts<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    let pairs: Vec<(String, String)> = match Value::deserialize(d)? {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let text = item
                    .as_str()
                    .ok_or_else(|| D::Error::custom("extra_hosts items are HOST:IP"))?;
                let (host, ip) = text
                    .split_once('=')
                    .or_else(|| text.split_once(':'))
                    .ok_or_else(|| D::Error::custom(format!("{text:?}: expected HOST:IP")))?;
                Ok((host.to_string(), ip.to_string()))
            })
            .collect::<std::result::Result<_, D::Error>>()?,
        Value::Object(map) => map
            .into_iter()
            .map(|(host, ip)| match scalar_text(&ip) {
                Some(ip) => Ok((host, ip)),
                None => Err(D::Error::custom(format!("{host}: expected an IP address"))),
            })
            .collect::<std::result::Result<_, D::Error>>()?,
        other => {
            return Err(D::Error::custom(format!(
                "expected a list of HOST:IP or a mapping, found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    pairs
        .into_iter()
        .map(|(host, ip)| {
            // An IPv6 address may come in brackets, as Compose allows.
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| D::Error::custom(format!("{host}: invalid IP address {ip:?}")))?;
            Ok(format!("{host}:{ip}"))
        })
        .collect()
}

/// One value or a list of them (`dns: 10.0.0.53`).
pub(super) fn one_or_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                scalar_text(item).ok_or_else(|| D::Error::custom("list items must be text"))
            })
            .collect(),
        value => scalar_text(&value).map(|v| vec![v]).ok_or_else(|| {
            D::Error::custom(format!(
                "expected text or a list, found {}",
                yaml::kind_of(&value)
            ))
        }),
    }
}

/// `{ NAME: VALUE }` or `[NAME=VALUE]`.
pub(super) fn sysctls<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let text = item
                    .as_str()
                    .ok_or_else(|| D::Error::custom("sysctls items are NAME=VALUE"))?;
                let (name, value) = text
                    .split_once('=')
                    .ok_or_else(|| D::Error::custom(format!("{text:?}: expected NAME=VALUE")))?;
                Ok((name.to_string(), value.to_string()))
            })
            .collect(),
        value => string_map(value).map_err(D::Error::custom),
    }
}

/// One path or a list of `PATH[:OPTIONS]`.
pub(super) fn tmpfs<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let items = match Value::deserialize(d)? {
        Value::Null => return Ok(BTreeMap::new()),
        Value::String(path) => vec![Value::String(path)],
        Value::Array(items) => items,
        other => {
            return Err(D::Error::custom(format!(
                "expected a path or a list of paths, found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    let mut out = BTreeMap::new();
    for item in items {
        let text = item
            .as_str()
            .ok_or_else(|| D::Error::custom("tmpfs items are PATH[:OPTIONS]"))?;
        let (path, options) = text.split_once(':').unwrap_or((text, ""));
        if !path.starts_with('/') {
            return Err(D::Error::custom(format!(
                "tmpfs path {path:?} must be absolute"
            )));
        }
        out.insert(path.to_string(), options.to_string());
    }
    Ok(out)
}

/// `{ NAME: N }` (soft = hard) or `{ NAME: { soft, hard } }`.
pub(super) fn ulimits<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, Ulimit>, D::Error> {
    let map = match Value::deserialize(d)? {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Object(map) => map,
        other => {
            return Err(D::Error::custom(format!(
                "expected a mapping of limits, found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    map.into_iter()
        .map(|(name, value)| {
            let limit = match &value {
                Value::Number(n) => n.as_i64().map(|n| Ulimit { soft: n, hard: n }),
                Value::Object(_) => serde_json::from_value::<Ulimit>(value.clone()).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "{name}: expected a number or {{ soft: N, hard: N }}"
                ))
            })?;
            if limit.soft > limit.hard {
                return Err(D::Error::custom(format!(
                    "{name}: soft limit {} is above hard limit {}",
                    limit.soft, limit.hard
                )));
            }
            Ok((name, limit))
        })
        .collect()
}
