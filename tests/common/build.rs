//! Helpers for the `berth build` end-to-end tests (build_e2e.rs and the build_*_e2e.rs files):
//! a registry with a busybox base image, `berth build` commands, and files with modes.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::*;

/// How long one `berth build` (or base import) may take.
pub const BUILD_T: Duration = Duration::from_secs(300);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// runc and root, or a skip (a failure in CI).
pub fn can_build() -> bool {
    if !require_tool("runc") {
        return false;
    }
    if !is_root() {
        if in_ci() {
            panic!("CI=true but the tests do not run as root: berth build needs root for overlay mounts");
        }
        eprintln!("SKIP: berth build needs root (overlay mounts)");
        return false;
    }
    true
}

/// A registry with the busybox base image at `base`.
pub struct Setup {
    pub server: Server,
    pub cli: BerthCli,
    pub base: String,
}

pub fn setup() -> Setup {
    let server = Server::start();
    let cli = BerthCli::new();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let base = format!("{}/base/busybox:1", server.host());
    run_ok(
        cli.cmd([
            "import",
            "--change",
            "ENV PATH=/bin",
            "--change",
            "CMD [\"/bin/sh\"]",
        ])
        .arg(&rootfs)
        .arg(&base),
        BUILD_T,
    );
    Setup { server, cli, base }
}

pub fn build_cmd(cli: &BerthCli, context: &Path, args: &[&str]) -> Command {
    let mut c = cli.cmd(["build"]);
    c.args(args).arg(context).env_remove("SOURCE_DATE_EPOCH");
    c
}

/// `berth build --json ...`: the result.
pub fn build_json(cli: &BerthCli, context: &Path, args: &[&str]) -> (Value, String) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = run(build_cmd(cli, context, &all), BUILD_T);
    assert!(
        out.status.success(),
        "berth build failed:\n{}",
        out.describe()
    );
    (parse_json(&out.stdout, "berth build --json"), out.stderr)
}

pub fn write(path: &Path, content: &str, mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, content).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry below `root` as `PATH TYPE MODE UID:GID SIZE LINK` (`find -printf`), sorted;
/// directories without a size (it depends on the filesystem, not the image).
pub fn tree_listing(root: &Path) -> Vec<String> {
    let out = run_ok(
        cmd("find", [root.as_os_str()]).args([
            "-mindepth",
            "1",
            "-printf",
            "%P %y %m %U:%G %s %l\\n",
        ]),
        BUILD_T,
    );
    let mut lines: Vec<String> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            if f.get(1) == Some(&"d") {
                format!("{} d {} {}", f[0], f[2], f[3])
            } else {
                l.to_string()
            }
        })
        .collect();
    lines.sort();
    lines
}
