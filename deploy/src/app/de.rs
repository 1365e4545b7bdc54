//! Deserialisers for the forms users write: a value may be text or a list, a number or a
//! string, `512m` or bytes; each says what it expected when it finds something else.

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::{Build, RestartPolicy, ServiceNetwork};
use crate::{units, yaml};

pub(super) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(super) fn string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::Object(map) => map
            .into_iter()
            .map(|(k, v)| match scalar_text(&v) {
                Some(text) => Ok((k, text)),
                None => Err(D::Error::custom(format!(
                    "value of `{k}` must be text, a number or a boolean"
                ))),
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "expected a mapping, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

pub(super) fn env_map<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, String>, D::Error> {
    let value = Value::deserialize(d)?;
    match value {
        Value::Array(items) => {
            let mut map = BTreeMap::new();
            for (index, item) in items.iter().enumerate() {
                let text = scalar_text(item)
                    .ok_or_else(|| D::Error::custom("env list items must be NAME=value"))?;
                // Not quoted: without its `=` the whole item may be the (secret) value.
                let (name, value) = text.split_once('=').ok_or_else(|| {
                    D::Error::custom(format!(
                        "env item {index} has no `=`; it must be NAME=value (the item is not \
                         shown: env values may be secrets)"
                    ))
                })?;
                if map.insert(name.to_string(), value.to_string()).is_some() {
                    return Err(D::Error::custom(format!("env {name} is set twice")));
                }
            }
            Ok(map)
        }
        other => string_map(other).map_err(D::Error::custom),
    }
}

pub(super) fn optional_words<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<String>>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(text) => units::split_words(&text)
            .map(Some)
            .map_err(D::Error::custom),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                scalar_text(item).ok_or_else(|| D::Error::custom("list items must be text"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Some),
        other => Err(D::Error::custom(format!(
            "expected text or a list, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

pub(super) fn service_networks<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, ServiceNetwork>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(BTreeMap::new()),
        Value::Array(items) => {
            let mut out = BTreeMap::new();
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| D::Error::custom("network list items are network names"))?;
                if out
                    .insert(name.to_string(), ServiceNetwork::default())
                    .is_some()
                {
                    return Err(D::Error::custom(format!(
                        "network `{name}` is listed twice"
                    )));
                }
            }
            Ok(out)
        }
        Value::Object(map) => map
            .into_iter()
            .map(|(name, body)| {
                let body = if body.is_null() {
                    Value::Object(Default::default())
                } else {
                    body
                };
                serde_json::from_value(body)
                    .map(|attachment| (name.clone(), attachment))
                    .map_err(|e| D::Error::custom(format!("{name}: {e}")))
            })
            .collect(),
        other => Err(D::Error::custom(format!(
            "expected a list or mapping of networks, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

/// Placement preferences: `node.labels.zone` or Compose's `{ spread: node.labels.zone }`.
pub(super) fn spread_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    let items =
        yaml::list_items(Value::deserialize(d)?, "spread preferences").map_err(D::Error::custom)?;
    items
        .into_iter()
        .map(|item| match item {
            Value::String(text) => Ok(text),
            Value::Object(map) if map.len() == 1 => match map.get("spread") {
                Some(Value::String(text)) => Ok(text.clone()),
                _ => Err(D::Error::custom(
                    "a preference is `{ spread: node.labels.NAME }`",
                )),
            },
            _ => Err(D::Error::custom(
                "a preference is `node.labels.NAME` or `{ spread: node.labels.NAME }`",
            )),
        })
        .collect()
}

pub(super) fn restart_policy<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<RestartPolicy, D::Error> {
    let value = Value::deserialize(d)?;
    // YAML 1.1 readers turn a bare `no` into false; accept it as the policy users meant.
    let text = match value {
        Value::Bool(false) | Value::Null => {
            return Ok(RestartPolicy {
                name: "no".into(),
                max_retries: None,
            })
        }
        Value::String(text) => text,
        other => {
            return Err(D::Error::custom(format!(
                "expected a restart policy, found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    match text.split_once(':') {
        None if ["no", "always", "unless-stopped", "on-failure"].contains(&text.as_str()) => {
            Ok(RestartPolicy {
                name: text,
                max_retries: None,
            })
        }
        Some(("on-failure", retries)) => {
            let retries = retries
                .parse::<u32>()
                .map_err(|_| D::Error::custom(format!("invalid retry count in {text:?}")))?;
            Ok(RestartPolicy {
                name: "on-failure".into(),
                max_retries: Some(retries),
            })
        }
        _ => Err(D::Error::custom(format!(
            "unknown restart policy {text:?} (no, always, unless-stopped, on-failure[:N])"
        ))),
    }
}

pub(super) fn optional_cpus<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| D::Error::custom("invalid number")),
        Value::String(text) => text
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("invalid number of CPUs {text:?}"))),
        other => Err(D::Error::custom(format!(
            "expected a number of CPUs, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

pub(super) fn optional_bytes<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("invalid size {n}"))),
        Value::String(text) => units::parse_bytes(&text)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a size like 512m, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

pub(super) fn optional_signal<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let text = match Value::deserialize(d)? {
        Value::Null => return Ok(None),
        Value::String(text) => text,
        Value::Number(n) => n.to_string(),
        other => {
            return Err(D::Error::custom(format!(
                "expected a signal like SIGTERM, found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    // Names (SIGTERM, TERM, SIGRTMIN+3) or numbers; Docker checks the name itself.
    let ok = !text.is_empty()
        && text.len() <= 16
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
    if ok {
        Ok(Some(text))
    } else {
        Err(D::Error::custom(format!(
            "expected a signal like SIGTERM, found {text:?}"
        )))
    }
}

pub(super) fn optional_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(text) => units::parse_duration_ns(&text)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a duration like 30s, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

pub(super) fn health_test<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(text) if text.trim().is_empty() => {
            Err(D::Error::custom("empty healthcheck test"))
        }
        Value::String(text) => Ok(vec!["CMD-SHELL".into(), text]),
        Value::Array(items) => {
            let words: Vec<String> = items
                .iter()
                .map(|i| scalar_text(i).ok_or_else(|| D::Error::custom("test items must be text")))
                .collect::<std::result::Result<_, _>>()?;
            match words.first().map(String::as_str) {
                None => Err(D::Error::custom("empty healthcheck test")),
                Some("CMD" | "CMD-SHELL" | "NONE") => Ok(words),
                Some(_) => Ok(std::iter::once("CMD".to_string()).chain(words).collect()),
            }
        }
        other => Err(D::Error::custom(format!(
            "expected a command (text or list), found {}",
            yaml::kind_of(&other)
        ))),
    }
}

pub(super) fn optional_build<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Build>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(context) => Ok(Some(Build {
            context,
            dockerfile: None,
            args: BTreeMap::new(),
            target: None,
        })),
        map @ Value::Object(_) => serde_json::from_value(map)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "expected a context path or a mapping, found {}",
            yaml::kind_of(&other)
        ))),
    }
}
