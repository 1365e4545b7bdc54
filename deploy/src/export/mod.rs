//! `berth export`: the app, rendered as a deploy would render it, written for the engines a
//! team moves to when it outgrows a handful of hosts: Kubernetes manifests with a
//! kustomization ([`kubernetes`]) and a `docker stack deploy` compose file ([`stack`]).
//!
//! Pure like the planner: files are read (secrets), never written; the caller writes the
//! [`OutputFile`]s. Everything the target engine cannot express as the app file says (fixed
//! addresses, subnets, host IPs, macvlan, start order, ...) becomes a [`Note`]: printed by
//! the command and written as comments into the output, never dropped silently. Output is
//! deterministic (sorted maps, no timestamps), so it can be committed and diffed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

mod kube_pod;
pub mod kubernetes;
mod render;
pub mod stack;

pub use render::{render, Rendered, RenderedService};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Load(#[from] crate::Error),
    #[error("{0}")]
    Invalid(String),
    #[error("cannot write YAML: {0}")]
    Yaml(String),
}

/// One thing the target engine does differently from the app file, at a dotted key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    pub key: String,
    pub message: String,
}

impl Note {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Note {
        Note {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Whether the note is about this service (its key starts `services.KEY`).
    pub(crate) fn is_about_service(&self, service: &str) -> bool {
        let prefix = format!("services.{service}");
        self.key == prefix || self.key.starts_with(&format!("{prefix}."))
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A file of the export, relative to the output folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputFile {
    pub path: PathBuf,
    pub contents: Vec<u8>,
    /// Holds a secret's value: written readable by its owner only.
    pub secret: bool,
}

impl OutputFile {
    pub(crate) fn text(path: impl Into<PathBuf>, contents: String) -> OutputFile {
        OutputFile {
            path: path.into(),
            contents: contents.into_bytes(),
            secret: false,
        }
    }
}

/// What an export produced: files (sorted by path) and the notes, also written into them.
#[derive(Debug, Clone, Default)]
pub struct Export {
    pub files: Vec<OutputFile>,
    pub notes: Vec<Note>,
}

/// Choices shared by both exports.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Image reference as written → its registry digest (`--no-pin` leaves this empty).
    pub pins: BTreeMap<String, String>,
    /// Registries (`host[:port]`) Berth holds a login for: pods need an imagePullSecret.
    pub logins: BTreeSet<String>,
    /// Kubernetes namespace for every object (`--namespace`).
    pub namespace: Option<String>,
    /// All objects in one multi-document file instead of one file per object.
    pub single_file: bool,
    /// Secret values inside the manifests instead of files a generator reads.
    pub inline_secrets: bool,
}

/// The image a service runs: `repo:tag@sha256:…` when pinned.
pub(crate) fn image_reference(image: &str, options: &ExportOptions) -> String {
    crate::desired::pinned_reference(image, options.pins.get(image).map(String::as_str))
}

/// A name Kubernetes accepts for an object (DNS-1123 label): lower case, `-` for anything
/// else, no leading or trailing `-`, at most 63 characters.
pub fn dns_label(name: &str) -> String {
    let mapped: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_matches('-');
    let mut label: String = trimmed.chars().take(63).collect();
    while label.ends_with('-') {
        label.pop();
    }
    if label.is_empty() {
        "x".to_string()
    } else {
        label
    }
}

/// Where a secret's value goes in the output folder (read by kustomize or `docker stack`).
pub(crate) fn secret_file_path(key: &str) -> PathBuf {
    PathBuf::from("secrets").join(key)
}

/// Reads the value of every secret some exported service uses.
pub(crate) fn secret_values(rendered: &Rendered) -> Result<BTreeMap<String, Vec<u8>>, ExportError> {
    let mut values = BTreeMap::new();
    for (key, folded) in &rendered.services {
        for secret in &folded.service.secrets {
            if values.contains_key(&secret.source) {
                continue;
            }
            let value =
                crate::storage::read_secret(&rendered.app, &rendered.app_dir, &secret.source)
                    .map_err(|message| {
                        ExportError::Invalid(format!("services.{key}.secrets: {message}"))
                    })?;
            values.insert(secret.source.clone(), value);
        }
    }
    Ok(values)
}

/// `# ` before every line of a note block, for the top of a YAML file.
pub(crate) fn comment_block(title: &str, notes: &[&Note]) -> String {
    if notes.is_empty() {
        return String::new();
    }
    let mut out = format!("# {title}\n");
    for note in notes {
        out.push_str(&format!("#   - {note}\n"));
    }
    out
}

pub(crate) fn to_yaml<T: serde::Serialize>(value: &T) -> Result<String, ExportError> {
    serde_saphyr::to_string(value).map_err(|e| ExportError::Yaml(e.to_string()))
}

#[cfg(test)]
mod tests;
