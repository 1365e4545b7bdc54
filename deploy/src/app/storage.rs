//! Volumes, mounts and secrets of the app file, named and shaped as the compose-spec names
//! them, so a compose file maps onto these types key for key.
//!
//! ```yaml
//! volumes:                              # top level: named volumes the app owns
//!   db_data:
//!     driver: local                     # default local
//!     driver_opts: { type: tmpfs, device: tmpfs, o: size=64m }
//!     labels: { backup: nightly }
//!     name: shop_db                     # optional Docker name; default APP_KEY
//!   shared: { external: true }          # exists already; never created or removed by Berth
//! secrets:                              # top level: where each secret's value comes from
//!   db_password: { file: ./secrets/db_password }   # relative to the app file's folder
//!   api_token: { environment: API_TOKEN }          # berth's own process environment
//! services:
//!   db:
//!     volumes:
//!       - db_data:/var/lib/postgresql/data          # named volume (a key of `volumes`)
//!       - /srv/config:/etc/db:ro                    # bind mount; the host path must exist
//!       - type: bind
//!         source: /srv/uploads
//!         target: /uploads
//!         bind: { create_host_path: true }          # ... unless it may be created
//!       - type: tmpfs
//!         target: /scratch
//!         tmpfs: { size: 64m, mode: "1777" }
//!       - { type: volume, source: shared, target: /shared, read_only: true }
//!     secrets:
//!       - db_password                               # /run/secrets/db_password, mode 0400
//!       - { source: api_token, target: token, mode: "0440", uid: "999", gid: "999" }
//! ```

use std::collections::BTreeMap;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{check_docker_name, scalar_text, string_map, App};
use crate::error::Problem;
use crate::units;
use crate::yaml;

/// Where secrets land in a container when their `target` is a plain name.
pub const SECRETS_DIR: &str = "/run/secrets";
/// A secret file's mode when the app does not give one: readable by its owner only.
pub const DEFAULT_SECRET_MODE: u32 = 0o400;

/// A top-level named volume.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The volume's name on the Docker host; default `APP_KEY`.
    #[serde(default)]
    pub name: Option<String>,
    /// Volume driver; `None` = Docker's default (`local`).
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default, deserialize_with = "string_map")]
    pub driver_opts: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "string_map")]
    pub labels: BTreeMap<String, String>,
    /// Made outside the app: Berth checks it exists and never creates or removes it.
    #[serde(default)]
    pub external: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A named volume (a key of the top-level `volumes`), or an anonymous one without source.
    Volume,
    /// A path of the host.
    Bind,
    /// A fresh in-memory file system per container.
    Tmpfs,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Volume => "volume",
            MountType::Bind => "bind",
            MountType::Tmpfs => "tmpfs",
        }
    }
}

/// One entry of a service's `volumes:`, in the compose-spec's long form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    #[serde(rename = "type")]
    pub kind: MountType,
    /// Volume key (type volume; none = anonymous volume) or absolute host path (type bind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Absolute path in the container.
    pub target: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<BindOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeOptions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmpfs: Option<TmpfsOptions>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindOptions {
    /// Create the host path (as a folder) when missing, instead of refusing the deploy.
    #[serde(default, skip_serializing_if = "is_false")]
    pub create_host_path: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeOptions {
    /// Do not copy the image's files at the target into a new, empty volume.
    #[serde(default, skip_serializing_if = "is_false")]
    pub nocopy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsOptions {
    /// Size limit in bytes (written `64m`, `1g` or a number of bytes); none = Docker's default.
    #[serde(
        default,
        deserialize_with = "optional_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub size: Option<u64>,
    /// Permission bits of the mount's root (octal text `"1777"`, or a number).
    #[serde(
        default,
        deserialize_with = "optional_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<u32>,
}

/// A top-level secret: where its value is read (on the machine running berth) at deploy time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secret {
    /// A file whose bytes are the secret; relative paths are from the app file's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An environment variable of the berth process whose value is the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// A service's use of a secret (`secrets:` item), the compose-spec's long form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Key of the top-level `secrets`.
    pub source: String,
    /// File name under `/run/secrets/`, or an absolute path; default the source's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Owner of the file in the container; default 0 (root).
    #[serde(
        default,
        deserialize_with = "optional_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub uid: Option<u32>,
    #[serde(
        default,
        deserialize_with = "optional_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub gid: Option<u32>,
    /// Permission bits (octal text `"0440"`, or a number); default 0400.
    #[serde(
        default,
        deserialize_with = "optional_mode",
        skip_serializing_if = "Option::is_none"
    )]
    pub mode: Option<u32>,
}

impl SecretRef {
    /// The absolute path of the secret's file in the container.
    pub fn target_path(&self) -> String {
        let target = self.target.as_deref().unwrap_or(&self.source);
        if target.starts_with('/') {
            target.to_string()
        } else {
            format!("{SECRETS_DIR}/{target}")
        }
    }

    pub fn mode_or_default(&self) -> u32 {
        self.mode.unwrap_or(DEFAULT_SECRET_MODE)
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl App {
    /// The Docker name of a volume key: its `name`, else the key itself for an external
    /// volume (made outside the app, as Compose reads it), else `APP_KEY`.
    pub fn volume_docker_name(&self, key: &str) -> String {
        match self.volumes.get(key) {
            Some(Volume {
                name: Some(name), ..
            }) => name.clone(),
            Some(Volume { external: true, .. }) => key.to_string(),
            _ => format!("{}_{key}", self.name),
        }
    }

    /// Checks of volumes, mounts and secrets (called from [`App::validate`]).
    pub(super) fn validate_storage(&self, problems: &mut Vec<Problem>) {
        let mut docker_names: BTreeMap<String, &str> = BTreeMap::new();
        for key in self.volumes.keys() {
            let at = format!("volumes.{key}");
            if let Err(message) = check_docker_name(key) {
                problems.push(Problem::new(at.clone(), message));
            }
            let docker_name = self.volume_docker_name(key);
            if let Err(message) = check_docker_name(&docker_name) {
                problems.push(Problem::new(format!("{at}.name"), message));
            }
            if let Some(other) = docker_names.insert(docker_name.clone(), key) {
                problems.push(Problem::new(
                    at,
                    format!("Docker name `{docker_name}` is also used by volume `{other}`"),
                ));
            }
        }
        for (key, secret) in &self.secrets {
            let at = format!("secrets.{key}");
            if let Err(message) = check_docker_name(key) {
                problems.push(Problem::new(at.clone(), message));
            }
            match (&secret.file, &secret.environment) {
                (Some(_), Some(_)) => problems.push(Problem::new(
                    at,
                    "give either `file` or `environment`, not both",
                )),
                (None, None) => problems.push(Problem::new(
                    at,
                    "needs `file: PATH` or `environment: VARIABLE` (where its value is read)",
                )),
                (Some(file), None) if file.trim().is_empty() => {
                    problems.push(Problem::new(format!("{at}.file"), "must not be empty"))
                }
                (None, Some(variable)) if variable.is_empty() || variable.contains('=') => problems
                    .push(Problem::new(
                        format!("{at}.environment"),
                        format!("{variable:?} is not an environment variable name"),
                    )),
                _ => {}
            }
        }
        for (service_key, service) in &self.services {
            let mut targets: BTreeMap<String, String> = BTreeMap::new();
            for (index, mount) in service.volumes.iter().enumerate() {
                let at = format!("services.{service_key}.volumes[{index}]");
                self.validate_mount(mount, &at, problems);
                if let Some(other) = targets.insert(mount.target.clone(), at.clone()) {
                    problems.push(Problem::new(
                        at,
                        format!("{} is also mounted by {other}", mount.target),
                    ));
                }
            }
            for (index, secret) in service.secrets.iter().enumerate() {
                let at = format!("services.{service_key}.secrets[{index}]");
                if !self.secrets.contains_key(&secret.source) {
                    problems.push(Problem::new(
                        at.clone(),
                        format!(
                            "unknown secret `{}` (defined: {})",
                            secret.source,
                            known(self.secrets.keys())
                        ),
                    ));
                }
                let target = secret.target_path();
                if let Some(name) = secret.target.as_deref() {
                    if !name.starts_with('/') && (name.contains('/') || name == "..") {
                        problems.push(Problem::new(
                            format!("{at}.target"),
                            format!("{name:?}: a plain file name (under {SECRETS_DIR}) or an absolute path"),
                        ));
                    }
                }
                if secret.mode_or_default() > 0o7777 {
                    problems.push(Problem::new(
                        format!("{at}.mode"),
                        format!("{:o} is not a file mode", secret.mode_or_default()),
                    ));
                }
                if let Some(other) = targets.insert(target.clone(), at.clone()) {
                    problems.push(Problem::new(
                        at,
                        format!("{target} is also mounted by {other}"),
                    ));
                }
            }
        }
    }

    fn validate_mount(&self, mount: &Mount, at: &str, problems: &mut Vec<Problem>) {
        if !mount.target.starts_with('/') {
            problems.push(Problem::new(
                at,
                format!(
                    "target {:?} must be an absolute path in the container",
                    mount.target
                ),
            ));
        }
        let misplaced = |options: &str| {
            Problem::new(
                at,
                format!(
                    "`{options}` options do not apply to a {} mount",
                    mount.kind.as_str()
                ),
            )
        };
        match mount.kind {
            MountType::Volume => match &mount.source {
                Some(source) if !self.volumes.contains_key(source) => problems.push(Problem::new(
                    at,
                    format!(
                        "unknown volume `{source}` (defined: {}); a host path must start with /",
                        known(self.volumes.keys())
                    ),
                )),
                _ => {}
            },
            MountType::Bind => match mount.source.as_deref() {
                Some(path) if path.starts_with('/') => {}
                Some(path) => problems.push(Problem::new(
                    at,
                    format!("bind source {path:?} must be an absolute path on the host"),
                )),
                None => problems.push(Problem::new(at, "a bind mount needs a `source` host path")),
            },
            MountType::Tmpfs => {
                if mount.source.is_some() {
                    problems.push(Problem::new(at, "a tmpfs mount has no `source`"));
                }
            }
        }
        if mount.bind.is_some() && mount.kind != MountType::Bind {
            problems.push(misplaced("bind"));
        }
        if mount.volume.is_some() && mount.kind != MountType::Volume {
            problems.push(misplaced("volume"));
        }
        if mount.tmpfs.is_some() && mount.kind != MountType::Tmpfs {
            problems.push(misplaced("tmpfs"));
        }
    }
}

fn known<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let keys: Vec<&str> = keys.map(String::as_str).collect();
    if keys.is_empty() {
        "none".to_string()
    } else {
        keys.join(", ")
    }
}

// ---- deserialisers for the forms users write ------------------------------------------------

/// A service's `volumes:`: short `SOURCE:TARGET[:ro|rw]` / `TARGET` items or long mappings.
pub(super) fn mount_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Mount>, D::Error> {
    let items = yaml::list_items(Value::deserialize(d)?, "mounts").map_err(D::Error::custom)?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            parse_mount(item).map_err(|message| D::Error::custom(format!("[{index}]: {message}")))
        })
        .collect()
}

fn parse_mount(item: Value) -> Result<Mount, String> {
    match item {
        Value::String(text) => parse_short_mount(&text),
        map @ Value::Object(_) => serde_json::from_value(map).map_err(|e| e.to_string()),
        other => Err(format!(
            "expected \"SOURCE:TARGET[:ro]\" or a mapping, found {}",
            yaml::kind_of(&other)
        )),
    }
}

/// `SOURCE:TARGET[:MODE]` or `TARGET`. A source starting with `/` is a host path (bind),
/// anything else a named volume. MODE is `ro` or `rw`.
pub fn parse_short_mount(text: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [target] => (None, *target, None),
        [source, target] => (Some(*source), *target, None),
        [source, target, mode] => (Some(*source), *target, Some(*mode)),
        _ => return Err(format!("{text:?}: expected SOURCE:TARGET[:ro|rw]")),
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "{text:?}: unknown mode {other:?} (ro or rw; use the long form for more)"
            ))
        }
    };
    if source == Some("") || target.is_empty() {
        return Err(format!("{text:?}: expected SOURCE:TARGET[:ro|rw]"));
    }
    let kind = match source {
        Some(path) if path.starts_with('/') || path.starts_with('.') || path.starts_with('~') => {
            MountType::Bind
        }
        _ => MountType::Volume,
    };
    Ok(Mount {
        kind,
        source: source.map(str::to_string),
        target: target.to_string(),
        read_only,
        bind: None,
        volume: None,
        tmpfs: None,
    })
}

/// A service's `secrets:`: names, or mappings with source/target/uid/gid/mode.
pub(super) fn secret_refs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SecretRef>, D::Error> {
    let items = yaml::list_items(Value::deserialize(d)?, "secrets").map_err(D::Error::custom)?;
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| match item {
            Value::String(source) => Ok(SecretRef {
                source,
                target: None,
                uid: None,
                gid: None,
                mode: None,
            }),
            map @ Value::Object(_) => {
                serde_json::from_value(map).map_err(|e| D::Error::custom(format!("[{index}]: {e}")))
            }
            other => Err(D::Error::custom(format!(
                "[{index}]: expected a secret name or a mapping, found {}",
                yaml::kind_of(&other)
            ))),
        })
        .collect()
}

fn optional_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
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
            "expected a size like 64m, found {}",
            yaml::kind_of(&other)
        ))),
    }
}

/// File modes: text is octal (`"0440"`, `"0o440"`, `"440"`), and so is an unquoted `0440`;
/// a plain number without leading zero (`256`) is taken as written (decimal).
pub fn optional_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let mode = match Value::deserialize(d)? {
        Value::Null => return Ok(None),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => {
                u32::try_from(n).map_err(|_| D::Error::custom(format!("invalid file mode {n}")))?
            }
            // The YAML reader gives a leading-zero integer (`0440`) as a float, having no
            // octal in YAML 1.2; compose users mean octal there, as Go's YAML reads it.
            (None, Some(f)) if f.fract() == 0.0 && (0.0..=7777.0).contains(&f) => {
                u32::from_str_radix(&(f as u32).to_string(), 8)
                    .map_err(|_| D::Error::custom(format!("invalid octal file mode 0{f}")))?
            }
            _ => return Err(D::Error::custom(format!("invalid file mode {n}"))),
        },
        Value::String(text) => {
            let digits = text.trim().trim_start_matches("0o");
            u32::from_str_radix(digits, 8)
                .map_err(|_| D::Error::custom(format!("invalid octal file mode {text:?}")))?
        }
        other => {
            return Err(D::Error::custom(format!(
                "expected an octal file mode like \"0440\", found {}",
                yaml::kind_of(&other)
            )))
        }
    };
    if mode > 0o7777 {
        return Err(D::Error::custom(format!("{mode:o} is not a file mode")));
    }
    Ok(Some(mode))
}

/// User and group ids: numbers or numeric text (the compose-spec writes `uid: "103"`).
fn optional_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let value = Value::deserialize(d)?;
    if value.is_null() {
        return Ok(None);
    }
    scalar_text(&value)
        .and_then(|text| text.trim().parse::<u32>().ok())
        .map(Some)
        .ok_or_else(|| D::Error::custom("expected a numeric user or group id"))
}

#[cfg(test)]
mod tests {
    use super::super::AppSource;
    use super::*;
    use crate::template::Vars;
    use std::path::Path;

    const APP: &str = r#"
name: shop
volumes:
  db_data: { driver: local, driver_opts: { type: tmpfs, device: tmpfs, o: size=8m } }
  shared: { external: true, name: team_shared }
secrets:
  db_password: { file: ./db_password }
  token: { environment: API_TOKEN }
services:
  db:
    image: postgres
    volumes:
      - db_data:/var/lib/postgresql/data
      - /srv/config:/etc/db:ro
      - /cache
      - { type: bind, source: /srv/up, target: /up, bind: { create_host_path: true } }
      - { type: tmpfs, target: /scratch, tmpfs: { size: 64m, mode: "1777" } }
      - { type: volume, source: shared, target: /shared, read_only: true, volume: { nocopy: true } }
    secrets:
      - db_password
      - { source: token, target: api, mode: 0440, uid: "999", gid: 999 }
"#;

    fn render(text: &str) -> crate::error::Result<App> {
        AppSource::parse(Path::new("app.yml"), text)?.render(&Vars::new())
    }

    fn problems(text: &str) -> Vec<String> {
        match render(text) {
            Err(crate::Error::InvalidApp { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn reads_volumes_mounts_and_secrets_in_short_and_long_forms() {
        let app = render(APP).expect("valid");
        assert_eq!(app.volume_docker_name("db_data"), "shop_db_data");
        assert_eq!(app.volume_docker_name("shared"), "team_shared");
        assert!(app.volumes["shared"].external);
        assert_eq!(app.volumes["db_data"].driver.as_deref(), Some("local"));
        assert_eq!(app.volumes["db_data"].driver_opts["o"], "size=8m");
        let mounts = &app.services["db"].volumes;
        assert_eq!(mounts[0].kind, MountType::Volume);
        assert_eq!(mounts[0].source.as_deref(), Some("db_data"));
        assert_eq!(
            (mounts[1].kind, mounts[1].read_only),
            (MountType::Bind, true)
        );
        assert_eq!(
            (mounts[2].kind, &mounts[2].source),
            (MountType::Volume, &None)
        );
        assert!(mounts[3].bind.as_ref().unwrap().create_host_path);
        let tmpfs = mounts[4].tmpfs.as_ref().unwrap();
        assert_eq!((tmpfs.size, tmpfs.mode), (Some(64 << 20), Some(0o1777)));
        assert!(mounts[5].read_only && mounts[5].volume.as_ref().unwrap().nocopy);
        let secrets = &app.services["db"].secrets;
        assert_eq!(secrets[0].target_path(), "/run/secrets/db_password");
        assert_eq!(secrets[0].mode_or_default(), 0o400);
        assert_eq!(secrets[1].target_path(), "/run/secrets/api");
        // Unquoted 0440 is octal, as compose users write it.
        assert_eq!(secrets[1].mode, Some(0o440));
        assert_eq!((secrets[1].uid, secrets[1].gid), (Some(999), Some(999)));
        assert_eq!(
            app.secrets["token"].environment.as_deref(),
            Some("API_TOKEN")
        );
    }

    #[test]
    fn bad_mounts_and_secrets_are_named() {
        let found = problems(
            r#"
name: shop
volumes: { data: {} }
secrets: { both: { file: a, environment: B }, neither: {} }
services:
  web:
    image: nginx
    volumes:
      - nodata:/data
      - relative/path:/x
      - { type: bind, source: srv, target: /y }
      - { type: tmpfs, source: x, target: /z }
      - data:relative
      - data:/same
      - /host:/same
      - { type: volume, source: data, target: /t, tmpfs: { size: 1m } }
    secrets: [missing, { source: both, target: a/b }]
"#,
        );
        let joined = found.join("\n");
        for needle in [
            "volumes[0]: unknown volume `nodata` (defined: data)",
            "volumes[1]: unknown volume `relative/path`",
            "volumes[2]: bind source \"srv\" must be an absolute path",
            "volumes[3]: a tmpfs mount has no `source`",
            "volumes[4]: target \"relative\" must be an absolute path",
            "volumes[6]: /same is also mounted by services.web.volumes[5]",
            "volumes[7]: `tmpfs` options do not apply to a volume mount",
            "secrets.both: give either `file` or `environment`",
            "secrets.neither: needs `file: PATH` or `environment: VARIABLE`",
            "secrets[0]: unknown secret `missing`",
            "secrets[1].target: \"a/b\": a plain file name",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
        let typed = problems(
            "name: a\nservices: { web: { image: x, volumes: [\"a:b:c:d\"] }, api: { image: x, secrets: [{ source: s, mode: \"99\" }] } }",
        );
        assert!(
            typed
                .iter()
                .any(|p| p
                    .contains("services.web.volumes: [0]: \"a:b:c:d\": expected SOURCE:TARGET")),
            "{typed:?}"
        );
        assert!(
            typed
                .iter()
                .any(|p| p.contains("services.api.secrets: [0]: invalid octal file mode \"99\"")),
            "{typed:?}"
        );
        let unknown = problems("name: a\nvolumes: { v: { drvier: local } }\nservices: {}");
        assert!(
            unknown[0].contains("volumes.v") && unknown[0].contains("drvier"),
            "{unknown:?}"
        );
    }
}
