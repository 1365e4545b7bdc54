//! `berth serve` settings: flags and `BERTH_*` variables over a TOML file over defaults.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::{LogFormat, ServeArgs};

pub const DEFAULT_ADDR: &str = "0.0.0.0:5000";
pub const DEFAULT_STORAGE: &str = "./berth-data";

#[derive(Debug, PartialEq, Eq)]
pub struct Settings {
    pub addr: String,
    pub storage: String,
    pub log_format: LogFormat,
    pub gc_interval: Option<Duration>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    addr: Option<String>,
    storage: Option<String>,
    log_format: Option<LogFormat>,
    /// e.g. "24h"
    gc_interval: Option<String>,
}

fn load(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

pub fn resolve(args: ServeArgs) -> Result<Settings> {
    let file = match &args.config {
        Some(path) => load(path)?,
        None => FileConfig::default(),
    };
    let file_gc = file
        .gc_interval
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .context("invalid gc_interval in the config file (use e.g. \"24h\")")?;
    Ok(Settings {
        addr: args
            .addr
            .or(file.addr)
            .unwrap_or_else(|| DEFAULT_ADDR.to_string()),
        storage: args
            .storage
            .or(file.storage)
            .unwrap_or_else(|| DEFAULT_STORAGE.to_string()),
        log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        gc_interval: args.gc_interval.or(file_gc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = resolve(ServeArgs::default()).expect("defaults");
        assert_eq!(
            s,
            Settings {
                addr: "0.0.0.0:5000".into(),
                storage: "./berth-data".into(),
                log_format: LogFormat::Text,
                gc_interval: None,
            }
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:6000\"\nstorage = \"/srv/b\"\nlog_format = \"json\"\ngc_interval = \"12h\"\n",
        )
        .expect("write");
        let args = ServeArgs {
            addr: Some("127.0.0.1:7000".into()),
            config: Some(path.clone()),
            ..Default::default()
        };
        let s = resolve(args).expect("resolve");
        assert_eq!(s.addr, "127.0.0.1:7000");
        assert_eq!(s.storage, "/srv/b");
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.gc_interval, Some(Duration::from_secs(12 * 3600)));
    }

    #[test]
    fn bad_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("berth.toml");
        std::fs::write(&path, "adr = 1\n").expect("write");
        let err = resolve(ServeArgs {
            config: Some(path),
            ..Default::default()
        })
        .expect_err("unknown key");
        assert!(
            format!("{err:#}").contains("invalid config file"),
            "{err:#}"
        );
    }
}
