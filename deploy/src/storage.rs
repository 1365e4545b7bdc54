//! Volumes and secrets of one host in container mode: what the desired state holds for
//! them, and how secret values stay out of everything Berth prints or stores.
//!
//! Secrets never appear in labels, plans or reports; only salted SHA-256 digests do:
//! - env values: the `berth.config` label stores `salted-sha256:HEX` per key instead of the
//!   value. The `berth.config-hash` label is a SHA-256 over the whole config, values
//!   included, so a changed value still replaces the container and an unchanged re-run
//!   still changes nothing. The salt is the app name and the key: deterministic (a re-run
//!   must compute the same digest, and there is nowhere secret to keep a random salt), so
//!   it defeats precomputed tables but not guessing a low-entropy value from the label.
//! - `secrets:` files: their content digest is part of the container's config (a rotated
//!   secret replaces the container), their bytes travel only in [`SecretValues`], which
//!   neither serialises nor prints.
//!
//! How a secret file reaches a remote host. The deployer talks to dockerd over its API,
//! not a shell, so a file gets there through the API's archive upload
//! (`PUT /containers/{id}/archive`). Its bytes are uploaded into a host folder under
//! [`SECRETS_HOST_DIR`] (`/run` is a tmpfs on systemd hosts: secrets never touch a disk),
//! through a helper container that bind-mounts that folder and is created, never started,
//! and removed again: dockerd extracts an upload into a stopped container's bind mounts.
//! The service's container then bind-mounts each file read-only at its target. Chosen
//! over the alternatives because:
//! - an upload into a tmpfs mount of the app container itself is lost: Docker mounts the
//!   tmpfs only at start (over what was uploaded) and empties it on every restart;
//! - a `local` volume with `type=tmpfs` options is unmounted, and so emptied, whenever no
//!   running container uses it, so a helper cannot fill it ahead of time.
//!
//! The folder is named by a digest of the files it holds, so each deploy that changes a
//! secret gets a fresh folder (the kept previous release still has its own for rollback).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{App, SecretRef};

/// Where secret folders live on a host.
pub const SECRETS_HOST_DIR: &str = "/run/berth/secrets";
/// The prefix of a digest that stands for an env value in the `berth.config` label.
pub const ENV_DIGEST_PREFIX: &str = "salted-sha256:";

/// A named volume this host needs, as the plan creates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredVolume {
    /// Key in the app file.
    pub key: String,
    /// Name on the Docker host.
    pub name: String,
    pub driver: Option<String>,
    pub driver_opts: BTreeMap<String, String>,
    /// User labels plus `berth.app`.
    pub labels: BTreeMap<String, String>,
    /// Made outside the app: only checked for, never created or removed.
    pub external: bool,
}

/// A secret file of a container: everything about it but its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFile {
    /// Key of the app's top-level `secrets`.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    /// Salted SHA-256 of the bytes: a rotated secret is a changed config.
    pub digest: String,
}

impl SecretFile {
    /// The file's name in the host folder (targets are unique within a container).
    pub fn host_file_name(&self) -> String {
        self.target.trim_start_matches('/').replace('/', "_")
    }
}

/// Secret bytes by secret key. Never serialised, and printed as key names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(pub BTreeMap<String, Vec<u8>>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretValues({:?}: ***)",
            self.0.keys().collect::<Vec<_>>()
        )
    }
}

impl Serialize for SecretValues {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Names only, so a serialised desired state shows which secrets, never their bytes.
        serializer.collect_seq(self.0.keys())
    }
}

fn salted(kind: &str, app: &str, key: &str, value: &[u8]) -> String {
    let mut hasher = Sha256::new();
    for part in [kind.as_bytes(), app.as_bytes(), key.as_bytes()] {
        hasher.update(part);
        hasher.update([0]);
    }
    hasher.update(value);
    hex::encode(hasher.finalize())
}

/// What the `berth.config` label keeps of an env value.
pub fn env_digest(app: &str, key: &str, value: &str) -> String {
    format!(
        "{ENV_DIGEST_PREFIX}{}",
        salted("berth-env-v1", app, key, value.as_bytes())
    )
}

/// Reads a secret's bytes on the machine running berth: a file (relative to the app file's
/// folder) or an environment variable.
pub fn read_secret(app: &App, app_dir: &Path, key: &str) -> Result<Vec<u8>, String> {
    let Some(secret) = app.secrets.get(key) else {
        return Err(format!("secret `{key}` is not defined"));
    };
    if let Some(file) = &secret.file {
        let path = app_dir.join(file);
        return std::fs::read(&path)
            .map_err(|e| format!("secret `{key}`: cannot read {}: {e}", path.display()));
    }
    if let Some(variable) = &secret.environment {
        return match std::env::var_os(variable) {
            Some(value) => Ok(value.into_encoded_bytes()),
            None => Err(format!(
                "secret `{key}`: environment variable {variable} is not set"
            )),
        };
    }
    Err(format!("secret `{key}` has neither file nor environment"))
}

/// The secret files of a service, with their digests, and the bytes they need.
pub fn secret_files(
    app: &App,
    app_dir: &Path,
    refs: &[SecretRef],
    values: &mut SecretValues,
) -> Result<Vec<SecretFile>, String> {
    let mut files = Vec::new();
    for secret in refs {
        if !values.0.contains_key(&secret.source) {
            let bytes = read_secret(app, app_dir, &secret.source)?;
            values.0.insert(secret.source.clone(), bytes);
        }
        let bytes = &values.0[&secret.source];
        files.push(SecretFile {
            source: secret.source.clone(),
            target: secret.target_path(),
            uid: secret.uid.unwrap_or(0),
            gid: secret.gid.unwrap_or(0),
            mode: secret.mode_or_default(),
            digest: salted("berth-secret-v1", &app.name, &secret.source, bytes),
        });
    }
    Ok(files)
}

/// The host folder holding a container's secret files: named by what it holds.
pub fn secrets_host_dir(app: &str, files: &[SecretFile]) -> String {
    let listing = serde_json::to_vec(files).unwrap_or_default();
    let digest = hex::encode(Sha256::digest(&listing));
    format!("{SECRETS_HOST_DIR}/{app}/{}", &digest[..16])
}

/// A tar archive of the secret files (owner, group and mode set), for the archive upload.
pub fn secrets_tar(files: &[SecretFile], values: &SecretValues) -> Result<Vec<u8>, String> {
    let mut builder = tar::Builder::new(Vec::new());
    for file in files {
        let bytes = values
            .0
            .get(&file.source)
            .ok_or_else(|| format!("secret `{}` was not read", file.source))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(u64::from(file.uid));
        header.set_gid(u64::from(file.gid));
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder
            .append_data(&mut header, file.host_file_name(), bytes.as_slice())
            .map_err(|e| format!("packing secret `{}`: {e}", file.source))?;
    }
    builder
        .into_inner()
        .map_err(|e| format!("packing secrets: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_digests_hide_values_but_tell_changes() {
        let a = env_digest("shop", "TOKEN", "s3cret");
        assert!(a.starts_with(ENV_DIGEST_PREFIX) && !a.contains("s3cret"));
        assert_eq!(a, env_digest("shop", "TOKEN", "s3cret"));
        assert_ne!(a, env_digest("shop", "TOKEN", "s3cret2"));
        // Salted: the same value under another key or app gives another digest.
        assert_ne!(a, env_digest("shop", "OTHER", "s3cret"));
        assert_ne!(a, env_digest("blog", "TOKEN", "s3cret"));
    }

    #[test]
    fn secret_values_never_print_or_serialise() {
        let values = SecretValues(BTreeMap::from([("db".to_string(), b"hunter2".to_vec())]));
        assert!(!format!("{values:?}").contains("hunter2"));
        assert_eq!(serde_json::to_string(&values).unwrap(), "[\"db\"]");
    }

    #[test]
    fn secret_tar_carries_owner_and_mode() {
        let file = SecretFile {
            source: "db".into(),
            target: "/run/secrets/db".into(),
            uid: 999,
            gid: 998,
            mode: 0o440,
            digest: "d".into(),
        };
        let values = SecretValues(BTreeMap::from([("db".to_string(), b"pw".to_vec())]));
        let bytes = secrets_tar(std::slice::from_ref(&file), &values).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        let header = entry.header();
        assert_eq!(entry.path().unwrap().to_str(), Some("run_secrets_db"));
        assert_eq!((header.uid().unwrap(), header.gid().unwrap()), (999, 998));
        assert_eq!(header.mode().unwrap(), 0o440);
    }
}
