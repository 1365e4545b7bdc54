//! The `berth` client under test, in a private environment (store, credentials, `HOME`), and
//! the docker images a test leaves behind.
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::run;

/// A private environment for `berth` client commands: its own local image store
/// (`BERTH_STORE`), credentials folder (`DOCKER_CONFIG`) and `HOME`, all inside a temporary
/// directory, so the tests never read or write the real user's files. Scratch files of a test
/// go in [`BerthCli::path`].
pub struct BerthCli {
    dir: tempfile::TempDir,
}

impl BerthCli {
    pub fn new() -> BerthCli {
        let dir = tempfile::Builder::new()
            .prefix("berth-cli-")
            .tempdir()
            .expect("create temporary directory for the client");
        for sub in ["store", "docker-config", "home", "work"] {
            fs::create_dir_all(dir.path().join(sub)).expect("create client directory");
        }
        BerthCli { dir }
    }

    /// The local image store (`BERTH_STORE`).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The credentials folder (`DOCKER_CONFIG`, shared with the docker CLI).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config")
    }

    /// `DOCKER_CONFIG/config.json`
    pub fn config_json(&self) -> PathBuf {
        self.docker_config().join("config.json")
    }

    /// A scratch path for this test (nothing is created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("work").join(name)
    }

    /// `berth ARGS` with this environment. Proxy variables are removed: all traffic is to
    /// 127.0.0.1.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(args);
        self.apply_env(&mut c);
        c
    }

    /// `docker --config DOCKER_CONFIG ARGS`: the docker CLI sharing this credentials folder.
    pub fn docker<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("docker");
        c.arg("--config").arg(self.docker_config()).args(args);
        self.apply_env(&mut c);
        c
    }

    fn apply_env(&self, c: &mut Command) {
        c.env("BERTH_STORE", self.store())
            .env("DOCKER_CONFIG", self.docker_config())
            .env("HOME", self.dir.path().join("home"))
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        for var in [
            "BERTH_CREDS",
            "BERTH_INSECURE_REGISTRIES",
            "XDG_DATA_HOME",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            c.env_remove(var);
        }
    }
}

/// Removes docker images a test pulled or loaded (through `cli`'s docker), also when it panics.
pub struct DockerImages<'a> {
    pub cli: &'a BerthCli,
    pub images: Vec<String>,
}

impl Drop for DockerImages<'_> {
    fn drop(&mut self) {
        for image in self.images.iter().rev() {
            let _ = run(
                self.cli.docker(["rmi", "-f", image]),
                Duration::from_secs(300),
            );
        }
    }
}

impl Default for BerthCli {
    fn default() -> Self {
        BerthCli::new()
    }
}
