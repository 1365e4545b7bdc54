//! What the test machine offers: tools on PATH, root, and the rule that decides whether a
//! test without them skips (outside CI) or fails (`CI=true`); names unique to this process.
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::{in_ci, run};

/// Finds an executable on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// Returns true when `tool` can be used. For `docker` the daemon must answer too.
///
/// Outside CI a missing tool prints `SKIP: ...` and returns false so the caller can return
/// early. With `CI=true` a missing tool panics: CI must never silently skip e2e tests.
pub fn require_tool(tool: &str) -> bool {
    let problem = match which(tool) {
        None => Some(format!("`{tool}` is missing (not on PATH)")),
        Some(_) if tool == "docker" => {
            let out = run(
                Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]),
                Duration::from_secs(30),
            );
            if out.status.success() {
                None
            } else {
                Some(format!(
                    "`docker` CLI found but the daemon does not answer (DOCKER_HOST={:?}): {}",
                    std::env::var("DOCKER_HOST").ok(),
                    out.stderr.trim()
                ))
            }
        }
        Some(_) => None,
    };
    require(problem)
}

/// True when `problem` is None. Otherwise: with `CI=true` a loud panic, outside CI a printed
/// `SKIP: ...` and false, so the caller can return early.
pub fn require(problem: Option<String>) -> bool {
    match problem {
        None => true,
        Some(problem) if in_ci() => panic!(
            "\n\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
             !!! CI=true but a required tool is unavailable: {problem}\n\
             !!! scripts/test.sh installs it and starts a private dockerd; run the suite\n\
             !!! through that script.\n\
             !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
        ),
        Some(problem) => {
            eprintln!("SKIP: {problem} (set CI=true to make this a failure)");
            false
        }
    }
}

/// A name that is unique for this test process, for images, tags and containers.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// True when the test runs as root; otherwise skips (outside CI) or fails loudly (CI).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    require((euid != 0).then(|| {
        format!(
            "not running as root (euid {euid}): network namespaces, bridges and iptables need it"
        )
    }))
}

/// True when `program` is on PATH (no daemon check, unlike [`require_tool`] for `docker`).
pub fn require_program(program: &str) -> bool {
    require(
        which(program)
            .is_none()
            .then(|| format!("`{program}` is missing (not on PATH)")),
    )
}
