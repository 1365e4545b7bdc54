//! Helpers of the deploy tests: the daemon `DOCKER_HOST` names, images imported into a
//! registry, `docker inspect`, copies of the examples, and what a test leaves on the daemon,
//! removed on drop (also when the test panics).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{cmd, parse_json, run, run_ok, BerthCli, CmdOutput};

const T: Duration = Duration::from_secs(300);

/// The daemon the deploy tests talk to, as an inventory's `docker_host`.
pub fn docker_host() -> String {
    std::env::var("DOCKER_HOST")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
}

/// On drop: every container (with its anonymous volumes), then network, then volume carrying
/// one of `labels` (docker `--filter` values such as `label=berth.app=web`), the images named
/// in `images`, and the folders in `dirs`.
#[derive(Default)]
pub struct DockerCleanup {
    pub labels: Vec<String>,
    pub images: Vec<String>,
    pub dirs: Vec<PathBuf>,
}

impl DockerCleanup {
    /// Everything labelled `berth.app=APP`, and `images`.
    pub fn app(app: &str, images: Vec<String>) -> DockerCleanup {
        DockerCleanup {
            labels: vec![format!("label=berth.app={app}")],
            images,
            dirs: Vec::new(),
        }
    }
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let listed = |args: &[&str]| -> Vec<String> {
            let out = run(cmd("docker", args), T);
            out.stdout.split_whitespace().map(str::to_string).collect()
        };
        for label in &self.labels {
            for id in listed(&["ps", "-aq", "--filter", label]) {
                let _ = run(cmd("docker", ["rm", "-f", "-v", &id]), T);
            }
        }
        for kind in ["network", "volume"] {
            for label in &self.labels {
                for id in listed(&[kind, "ls", "-q", "--filter", label]) {
                    let _ = run(cmd("docker", [kind, "rm", &id]), T);
                }
            }
        }
        for image in &self.images {
            for id in listed(&["images", "-q", image]) {
                let _ = run(cmd("docker", ["rmi", "-f", &id]), T);
            }
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `berth import ROOTFS REFERENCE` with `CMD ["/bin/sh"]` and a `version` label (so each
/// version is a different image); the pushed manifest's digest.
pub fn import_image(cli: &BerthCli, rootfs: &Path, reference: &str, version: &str) -> String {
    let mut c = cli.cmd(["import"]);
    c.arg(rootfs)
        .arg(reference)
        .args(["-c", "CMD [\"/bin/sh\"]", "-c"])
        .arg(format!("LABEL version={version}"));
    let out = run_ok(c, T);
    out.lines()
        .map(str::trim)
        .find(|line| line.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in berth import output:\n{out}"))
        .to_string()
}

/// `docker inspect NAME` on the daemon `DOCKER_HOST` names.
pub fn inspect(name: &str) -> serde_json::Value {
    let out = run_ok(cmd("docker", ["inspect", name]), T);
    parse_json(&out, "docker inspect")[0].clone()
}

/// A berth command's stdout, after asserting it succeeded.
pub fn ok(out: CmdOutput) -> String {
    assert!(out.status.success(), "expected success\n{}", out.describe());
    out.stdout
}

/// `from` copied to `to` (created); symlinks stay symlinks.
pub fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_symlink() {
            let link = fs::read_link(entry.path()).expect("read link");
            std::os::unix::fs::symlink(link, &target).expect("symlink");
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}
