//! Published ports: `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]` or the long form
//! `{ target, published, host_ip, protocol, mode }`.

use std::net::IpAddr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::scalar_text;
use crate::yaml;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A published port. `published: None` asks Docker for an ephemeral host port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Port {
    pub host_ip: Option<IpAddr>,
    pub published: Option<u16>,
    pub target: u16,
    pub protocol: Protocol,
    /// Swarm's publish mode; `None` = Swarm's default (ingress). Skipped when unset so the
    /// config hashes of containers deployed before this field existed stay the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PublishMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On the node that runs the task only (no routing mesh).
    Host,
    /// Through Swarm's routing mesh, on every node.
    Ingress,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        if let Some(published) = self.published {
            write!(f, "{published}")?;
        }
        if self.host_ip.is_some() || self.published.is_some() {
            write!(f, "->")?;
        }
        write!(f, "{}/{}", self.target, self.protocol.as_str())
    }
}

pub(super) fn port_list<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<Port>, D::Error> {
    let items = yaml::list_items(Value::deserialize(d)?, "ports").map_err(D::Error::custom)?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_port(item)
                .map_err(|message| D::Error::custom(format!("ports[{index}]: {message}")))
        })
        .collect()
}

fn parse_port(item: &Value) -> std::result::Result<Port, String> {
    match item {
        Value::Number(n) => {
            let target = n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| format!("invalid port {n}"))?;
            Ok(Port {
                host_ip: None,
                published: None,
                target,
                protocol: Protocol::Tcp,
                mode: None,
            })
        }
        Value::String(text) => port_from_text(text),
        Value::Object(map) => port_from_mapping(map),
        other => Err(format!(
            "expected \"HOST:CONTAINER\" or a mapping, found {}",
            yaml::kind_of(other)
        )),
    }
}

/// `[HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]`; an IPv6 host IP is written in brackets.
fn port_from_text(text: &str) -> std::result::Result<Port, String> {
    let (spec, protocol) = match text.rsplit_once('/') {
        Some((spec, protocol)) => (spec, parse_protocol(protocol)?),
        None => (text, Protocol::Tcp),
    };
    let (host_ip, rest) = if let Some(bracketed) = spec.strip_prefix('[') {
        let (ip, rest) = bracketed
            .split_once("]:")
            .ok_or_else(|| format!("{text:?}: expected [IPv6]:PUBLISHED:TARGET"))?;
        (
            Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| format!("{text:?}: invalid IP {ip:?}"))?,
            ),
            rest,
        )
    } else {
        let parts: Vec<&str> = spec.split(':').collect();
        match parts.as_slice() {
            [ip, published, target] => {
                let ip = ip
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{text:?}: invalid host IP {ip:?}"))?;
                return Ok(Port {
                    host_ip: Some(ip),
                    published: optional_port(published, port_number)?,
                    target: port_number(target)?,
                    protocol,
                    mode: None,
                });
            }
            _ => (None, spec),
        }
    };
    let parts: Vec<&str> = rest.split(':').collect();
    match parts.as_slice() {
        [target] if host_ip.is_none() => Ok(Port {
            host_ip,
            published: None,
            target: port_number(target)?,
            protocol,
            mode: None,
        }),
        [published, target] => Ok(Port {
            host_ip,
            published: optional_port(published, port_number)?,
            target: port_number(target)?,
            protocol,
            mode: None,
        }),
        _ => Err(format!(
            "{text:?}: expected [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]"
        )),
    }
}

/// `{ target, published, host_ip, protocol, mode }`.
fn port_from_mapping(map: &serde_json::Map<String, Value>) -> std::result::Result<Port, String> {
    if let Some(unknown) = map
        .keys()
        .find(|k| !["target", "published", "host_ip", "protocol", "mode"].contains(&k.as_str()))
    {
        return Err(format!(
            "unknown key `{unknown}` (expected target, published, host_ip, protocol, mode)"
        ));
    }
    let text_of = |key: &str| {
        map.get(key)
            .filter(|v| !v.is_null())
            .map(|v| scalar_text(v).ok_or_else(|| format!("{key} must be a scalar")))
            .transpose()
    };
    let target = port_number(&text_of("target")?.ok_or("missing `target` (the container port)")?)?;
    let published = text_of("published")?.map(|p| port_number(&p)).transpose()?;
    let host_ip = text_of("host_ip")?
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| format!("invalid host_ip {ip:?}"))
        })
        .transpose()?;
    let protocol = text_of("protocol")?
        .map(|p| parse_protocol(&p))
        .transpose()?
        .unwrap_or(Protocol::Tcp);
    let mode = text_of("mode")?
        .map(|m| match m.as_str() {
            "host" => Ok(PublishMode::Host),
            "ingress" => Ok(PublishMode::Ingress),
            other => Err(format!("unknown port mode {other:?} (host or ingress)")),
        })
        .transpose()?;
    Ok(Port {
        host_ip,
        published,
        target,
        protocol,
        mode,
    })
}

/// A port number; ranges are refused by name (Compose allows them, Berth lists each port).
fn port_number(text: &str) -> std::result::Result<u16, String> {
    if text.contains('-') {
        return Err(format!(
            "port ranges ({text}) are not supported; list each port"
        ));
    }
    text.parse::<u16>()
        .map_err(|_| format!("invalid port {text:?}"))
}

fn optional_port(
    text: &str,
    parse: impl Fn(&str) -> std::result::Result<u16, String>,
) -> std::result::Result<Option<u16>, String> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}

fn parse_protocol(text: &str) -> std::result::Result<Protocol, String> {
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Ok(Protocol::Sctp),
        other => Err(format!("unknown protocol {other:?} (tcp, udp or sctp)")),
    }
}
