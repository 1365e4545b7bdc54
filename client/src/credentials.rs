//! Credentials shared with Docker: `~/.docker/config.json` (`auths` with a
//! base64 `auth`, `identitytoken`), and Docker's credential helpers
//! (`credsStore`, `credHelpers`), so `docker login` and `berth login` see the
//! same accounts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Map, Value};

use crate::error::{Error, IoContext, Result};
use crate::reference::{DOCKER_HUB, DOCKER_HUB_AUTH_KEY};

/// An account on a registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token (what `docker login` stores for some registries).
    IdentityToken(String),
}

// Never print secrets, not even in debug logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(***)"),
        }
    }
}

/// `config.json` as Docker writes it. Unknown fields are kept when saving.
pub struct DockerConfig {
    path: PathBuf,
    json: Map<String, Value>,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_path() -> PathBuf {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return PathBuf::from(dir).join("config.json");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
        home.join(".docker").join("config.json")
    }

    /// Read the file; a missing file is an empty config.
    pub fn load(path: &Path) -> Result<DockerConfig> {
        let json = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(Error::malformed(
                        path.display().to_string(),
                        "not a JSON object",
                    ))
                }
                Err(e) => return Err(Error::malformed(path.display().to_string(), e)),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        Ok(DockerConfig {
            path: path.to_path_buf(),
            json,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The credentials stored for `registry` (as written in references,
    /// e.g. `docker.io`, `localhost:5000`), if any.
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>> {
        if let Some(helper) = self.helper_for(registry) {
            return helper_get(&helper, &server_url(registry));
        }
        let Some(auths) = self.json.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        let wanted = normalise_key(registry);
        for (key, entry) in auths {
            if normalise_key(key) != wanted {
                continue;
            }
            if let Some(token) = entry.get("identitytoken").and_then(Value::as_str) {
                if !token.is_empty() {
                    return Ok(Some(Credentials::IdentityToken(token.to_string())));
                }
            }
            if let Some(auth) = entry.get("auth").and_then(Value::as_str) {
                if auth.is_empty() {
                    continue;
                }
                let decoded = BASE64.decode(auth.trim()).map_err(|e| {
                    Error::malformed(format!("{}: auth for {key}", self.path.display()), e)
                })?;
                let text = String::from_utf8(decoded).map_err(|e| {
                    Error::malformed(format!("{}: auth for {key}", self.path.display()), e)
                })?;
                let (username, password) = text.split_once(':').ok_or_else(|| {
                    Error::malformed(
                        format!("{}: auth for {key}", self.path.display()),
                        "expected base64 of USER:PASSWORD",
                    )
                })?;
                return Ok(Some(Credentials::Basic {
                    username: username.to_string(),
                    password: password.to_string(),
                }));
            }
            if let (Some(u), Some(p)) = (
                entry.get("username").and_then(Value::as_str),
                entry.get("password").and_then(Value::as_str),
            ) {
                return Ok(Some(Credentials::Basic {
                    username: u.to_string(),
                    password: p.to_string(),
                }));
            }
        }
        Ok(None)
    }

    /// Save credentials for `registry` (through the credential helper when
    /// Docker is set up to use one) and write the file.
    pub fn store(&mut self, registry: &str, username: &str, password: &str) -> Result<()> {
        if let Some(helper) = self.helper_for(registry) {
            helper_store(&helper, &server_url(registry), username, password)?;
            // Docker records an empty entry so `docker` knows a login exists.
            self.set_auth_entry(registry, json!({}));
        } else {
            let auth = BASE64.encode(format!("{username}:{password}"));
            self.set_auth_entry(registry, json!({ "auth": auth }));
        }
        self.save()
    }

    /// Forget the credentials for `registry`. Returns whether any were stored.
    pub fn erase(&mut self, registry: &str) -> Result<bool> {
        let mut found = false;
        if let Some(helper) = self.helper_for(registry) {
            found |= helper_erase(&helper, &server_url(registry))?;
        }
        let wanted = normalise_key(registry);
        if let Some(auths) = self.json.get_mut("auths").and_then(Value::as_object_mut) {
            let before = auths.len();
            auths.retain(|key, _| normalise_key(key) != wanted);
            found |= auths.len() != before;
        }
        if found {
            self.save()?;
        }
        Ok(found)
    }

    fn set_auth_entry(&mut self, registry: &str, entry: Value) {
        let wanted = normalise_key(registry);
        let auths = self
            .json
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        if let Some(auths) = auths.as_object_mut() {
            auths.retain(|key, _| normalise_key(key) != wanted);
            auths.insert(auth_key(registry), entry);
        }
    }

    /// The credential helper `registry`'s login goes through, if any
    /// (`credHelpers`, else `credsStore`).
    pub fn credential_helper(&self, registry: &str) -> Option<String> {
        self.helper_for(registry)
    }

    fn helper_for(&self, registry: &str) -> Option<String> {
        let wanted = normalise_key(registry);
        if let Some(helpers) = self.json.get("credHelpers").and_then(Value::as_object) {
            for (key, helper) in helpers {
                if normalise_key(key) == wanted {
                    return helper.as_str().map(str::to_string);
                }
            }
        }
        self.json
            .get("credsStore")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// Write atomically with mode 0600: the file holds secrets.
    fn save(&self) -> Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).ctx(|| format!("creating {}", dir.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".config.json.")
            .tempfile_in(dir)
            .ctx(|| format!("writing {}", self.path.display()))?;
        let text = serde_json::to_vec_pretty(&self.json)
            .map_err(|e| Error::malformed("docker config", e))?;
        tmp.write_all(&text)
            .and_then(|_| tmp.write_all(b"\n"))
            .and_then(|_| tmp.as_file().sync_all())
            .ctx(|| format!("writing {}", self.path.display()))?;
        tmp.persist(&self.path)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e.error))?;
        Ok(())
    }
}

/// The `auths` key Docker uses for a registry.
fn auth_key(registry: &str) -> String {
    if registry == DOCKER_HUB {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

/// What credential helpers are asked about.
fn server_url(registry: &str) -> String {
    auth_key(registry)
}

/// `https://index.docker.io/v1/`, `index.docker.io`, `docker.io` all mean
/// Docker Hub; `https://host:5000/` and `host:5000` mean the same registry.
fn normalise_key(key: &str) -> String {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB.to_string(),
        other => other.to_string(),
    }
}

fn run_helper(helper: &str, action: &str, input: &str) -> Result<std::process::Output> {
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| format!("running the Docker credential helper {program} (set in config.json)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .ctx(|| format!("talking to {program}"))?;
    }
    child
        .wait_with_output()
        .ctx(|| format!("running {program}"))
}

fn helper_get(helper: &str, server: &str) -> Result<Option<Credentials>> {
    let out = run_helper(helper, "get", server)?;
    if !out.status.success() {
        // Helpers answer "credentials not found in native keychain" with exit 1.
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| Error::malformed(format!("docker-credential-{helper} output"), e))?;
    let username = v
        .get("Username")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let secret = v.get("Secret").and_then(Value::as_str).unwrap_or_default();
    if secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if username == "<token>" {
        Credentials::IdentityToken(secret.to_string())
    } else {
        Credentials::Basic {
            username: username.to_string(),
            password: secret.to_string(),
        }
    }))
}

fn helper_store(helper: &str, server: &str, username: &str, password: &str) -> Result<()> {
    let input =
        json!({ "ServerURL": server, "Username": username, "Secret": password }).to_string();
    let out = run_helper(helper, "store", &input)?;
    if !out.status.success() {
        return Err(Error::InvalidArgument(format!(
            "docker-credential-{helper} could not store the credentials: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn helper_erase(helper: &str, server: &str) -> Result<bool> {
    let out = run_helper(helper, "erase", server)?;
    Ok(out.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_docker_writes_and_writes_what_docker_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNzOndpdGg6Y29sb25z"},"localhost:5000":{"auth":"YTpi"}},"psFormat":"table"}"#,
        )
        .unwrap();
        let mut cfg = DockerConfig::load(&path).unwrap();
        assert_eq!(
            cfg.credentials_for("docker.io").unwrap(),
            Some(Credentials::Basic {
                username: "user".into(),
                password: "pass:with:colons".into()
            })
        );
        assert!(cfg.credentials_for("localhost:5000").unwrap().is_some());
        assert_eq!(cfg.credentials_for("localhost:5001").unwrap(), None);

        cfg.store("127.0.0.1:5000", "alice", "s3cret").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("psFormat"), "unknown fields are kept: {text}");
        assert!(
            !text.contains("s3cret"),
            "password is base64 encoded, as Docker does"
        );
        let again = DockerConfig::load(&path).unwrap();
        assert_eq!(
            again.credentials_for("127.0.0.1:5000").unwrap(),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            })
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let mut cfg = DockerConfig::load(&path).unwrap();
        assert!(cfg.erase("127.0.0.1:5000").unwrap());
        assert!(!cfg.erase("127.0.0.1:5000").unwrap());
        assert_eq!(
            DockerConfig::load(&path)
                .unwrap()
                .credentials_for("127.0.0.1:5000")
                .unwrap(),
            None
        );
    }

    #[test]
    fn broken_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, "{not json").unwrap();
        let err = DockerConfig::load(&path).err().unwrap().to_string();
        assert!(err.contains("config.json"), "{err}");
        std::fs::write(&path, r#"{"auths":{"h:1":{"auth":"!!"}}}"#).unwrap();
        let err = DockerConfig::load(&path)
            .unwrap()
            .credentials_for("h:1")
            .unwrap_err();
        assert!(err.to_string().contains("auth for h:1"), "{err}");
    }
}
