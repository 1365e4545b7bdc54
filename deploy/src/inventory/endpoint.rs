//! A host's Docker endpoint, from its inventory variables (see the module docs of
//! `inventory` for the variables and their defaults).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::error::Problem;
use crate::template::{Templater, Vars};
use crate::yaml;

pub(super) const DEFAULT_UNIX_SOCKET: &str = "/var/run/docker.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DockerEndpoint {
    Unix {
        path: PathBuf,
    },
    Tcp {
        host: String,
        port: u16,
        tls: Option<TlsFiles>,
    },
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
        /// `ansible_ssh_private_key_file`, relative to the inventory directory.
        #[serde(skip_serializing_if = "Option::is_none")]
        identity_file: Option<PathBuf>,
        /// `ansible_ssh_common_args` then `ansible_ssh_extra_args`, split like a shell would.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        options: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsFiles {
    pub ca_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Verify the daemon's certificate (against `ca_cert` or the system roots).
    pub verify: bool,
}

impl fmt::Display for DockerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DockerEndpoint::Unix { path } => write!(f, "unix://{}", path.display()),
            DockerEndpoint::Tcp { host, port, tls } => {
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                write!(
                    f,
                    "tcp://{host}:{port}{}",
                    if tls.is_some() { " (tls)" } else { "" }
                )
            }
            DockerEndpoint::Ssh {
                user, host, port, ..
            } => {
                write!(f, "ssh://")?;
                if let Some(user) = user {
                    write!(f, "{user}@")?;
                }
                write!(f, "{host}")?;
                if let Some(port) = port {
                    write!(f, ":{port}")?;
                }
                Ok(())
            }
        }
    }
}

/// The endpoint a host's variables name: `docker_host` (with its TLS settings), else the
/// local socket for `ansible_connection: local`, else SSH where Ansible would connect.
pub(super) fn endpoint_from_vars(
    host: &str,
    vars: &Vars,
    inventory_dir: &Path,
) -> Result<DockerEndpoint, Problem> {
    let vars = EndpointVars {
        host,
        vars,
        templater: Templater::new(vars),
        inventory_dir,
    };
    let Some(url) = vars.text("docker_host")? else {
        return ansible_endpoint(&vars);
    };
    let (tls_wanted, tls) = tls_settings(&vars)?;
    let parsed = parse_endpoint_url(&url)
        .map_err(|message| Problem::new(vars.key("docker_host"), message))?;
    match parsed {
        ParsedEndpoint::Tcp { host, port } => {
            let tls = tls_wanted.then_some(tls);
            let port = port.unwrap_or(if tls.is_some() { 2376 } else { 2375 });
            Ok(DockerEndpoint::Tcp { host, port, tls })
        }
        _ if tls_wanted => Err(Problem::new(
            vars.key("docker_host"),
            format!("TLS settings only apply to tcp:// endpoints, not {url}"),
        )),
        ParsedEndpoint::Unix(path) => Ok(DockerEndpoint::Unix { path }),
        ParsedEndpoint::Ssh { user, host, port } => Ok(DockerEndpoint::Ssh {
            user,
            host,
            port,
            identity_file: vars.ssh_identity()?,
            options: vars.ssh_options()?,
        }),
    }
}

/// Without `docker_host`: where Ansible itself would connect.
fn ansible_endpoint(vars: &EndpointVars) -> Result<DockerEndpoint, Problem> {
    if vars.text("ansible_connection")?.as_deref() == Some("local") {
        return Ok(DockerEndpoint::Unix {
            path: PathBuf::from(DEFAULT_UNIX_SOCKET),
        });
    }
    let port = match vars.text("ansible_port")? {
        None => None,
        Some(text) => Some(text.parse::<u16>().map_err(|_| {
            Problem::new(vars.key("ansible_port"), format!("invalid port {text:?}"))
        })?),
    };
    Ok(DockerEndpoint::Ssh {
        user: vars.text("ansible_user")?,
        host: vars
            .text("ansible_host")?
            .unwrap_or_else(|| vars.host.to_string()),
        port,
        identity_file: vars.ssh_identity()?,
        options: vars.ssh_options()?,
    })
}

/// The TLS files a `docker_host` uses, and whether any TLS setting asks for TLS at all.
fn tls_settings(vars: &EndpointVars) -> Result<(bool, TlsFiles), Problem> {
    let cert_dir = vars.path("docker_cert_path")?;
    let from_dir = |file: &str| cert_dir.as_ref().map(|dir| dir.join(file));
    let ca_cert = vars
        .path("docker_tls_ca_cert")?
        .or_else(|| from_dir("ca.pem"));
    let client_cert = vars
        .path("docker_tls_client_cert")?
        .or_else(|| from_dir("cert.pem"));
    let client_key = vars
        .path("docker_tls_client_key")?
        .or_else(|| from_dir("key.pem"));
    let tls_wanted = vars.flag("docker_tls")?.unwrap_or(false)
        || ca_cert.is_some()
        || client_cert.is_some()
        || client_key.is_some();
    let verify = vars.flag("docker_tls_verify")?.unwrap_or(true);
    if client_cert.is_some() != client_key.is_some() {
        return Err(Problem::new(
            vars.key("docker_tls_client_cert"),
            "a client certificate needs its key and the key its certificate",
        ));
    }
    let files = TlsFiles {
        ca_cert,
        client_cert,
        client_key,
        verify,
    };
    Ok((tls_wanted, files))
}

/// A host's variables as the endpoint reads them: templated text, flags, paths relative
/// to the inventory directory. Problems name the host and the variable.
struct EndpointVars<'a> {
    host: &'a str,
    vars: &'a Vars,
    templater: Templater<'a>,
    inventory_dir: &'a Path,
}

impl EndpointVars<'_> {
    fn key(&self, name: &str) -> String {
        format!("host {}: {name}", self.host)
    }

    fn text(&self, name: &str) -> Result<Option<String>, Problem> {
        match self.vars.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(text)) => self
                .templater
                .render_string(text, name)
                .map(Some)
                .map_err(|e| Problem::new(self.key(name), e.message)),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(Problem::new(
                self.key(name),
                format!("expected text, found {}", yaml::kind_of(other)),
            )),
        }
    }

    /// A YAML boolean, or text Ansible reads as one (`yes`, `off`, ...).
    fn flag(&self, name: &str) -> Result<Option<bool>, Problem> {
        if let Some(Value::Bool(b)) = self.vars.get(name) {
            return Ok(Some(*b));
        }
        match self.text(name)?.as_deref() {
            None => Ok(None),
            Some("true" | "yes" | "1" | "True" | "on") => Ok(Some(true)),
            Some("false" | "no" | "0" | "False" | "off") => Ok(Some(false)),
            Some(other) => Err(Problem::new(
                self.key(name),
                format!("expected true or false, found {other:?}"),
            )),
        }
    }

    fn path(&self, name: &str) -> Result<Option<PathBuf>, Problem> {
        Ok(self.text(name)?.map(|text| {
            let path = PathBuf::from(text);
            if path.is_absolute() {
                path
            } else {
                self.inventory_dir.join(path)
            }
        }))
    }

    fn ssh_identity(&self) -> Result<Option<PathBuf>, Problem> {
        self.path("ansible_ssh_private_key_file")
    }

    fn ssh_options(&self) -> Result<Vec<String>, Problem> {
        let mut options = Vec::new();
        for name in ["ansible_ssh_common_args", "ansible_ssh_extra_args"] {
            if let Some(text) = self.text(name)? {
                options.extend(
                    crate::units::split_words(&text)
                        .map_err(|e| Problem::new(self.key(name), e))?,
                );
            }
        }
        Ok(options)
    }
}

enum ParsedEndpoint {
    Unix(PathBuf),
    Tcp {
        host: String,
        port: Option<u16>,
    },
    Ssh {
        user: Option<String>,
        host: String,
        port: Option<u16>,
    },
}

fn parse_endpoint_url(url: &str) -> Result<ParsedEndpoint, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "{url:?} is not a URL; expected unix:///path, tcp://host:port or ssh://user@host"
        ));
    };
    match scheme {
        "unix" => {
            if !rest.starts_with('/') {
                return Err(format!(
                    "{url:?}: a unix socket path must be absolute (unix:///var/run/docker.sock)"
                ));
            }
            Ok(ParsedEndpoint::Unix(PathBuf::from(rest)))
        }
        "tcp" => {
            let (host, port) = split_host_port(rest.trim_end_matches('/'), url)?;
            Ok(ParsedEndpoint::Tcp { host, port })
        }
        "ssh" => {
            let (user, host_port) = match rest.trim_end_matches('/').rsplit_once('@') {
                Some((user, host_port)) if !user.is_empty() => (Some(user.to_string()), host_port),
                Some(_) => return Err(format!("{url:?}: empty user name")),
                None => (None, rest.trim_end_matches('/')),
            };
            let (host, port) = split_host_port(host_port, url)?;
            Ok(ParsedEndpoint::Ssh { user, host, port })
        }
        other => Err(format!(
            "{url:?}: unsupported scheme {other:?}; use unix://, tcp:// or ssh://"
        )),
    }
}

fn split_host_port(text: &str, url: &str) -> Result<(String, Option<u16>), String> {
    let (host, port) = if let Some(bracketed) = text.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed [ in IPv6 address"))?;
        (host, after.strip_prefix(':'))
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("{url:?}: missing or invalid host"));
    }
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| format!("{url:?}: invalid port {p:?}"))
        })
        .transpose()?;
    Ok((host.to_string(), port))
}
