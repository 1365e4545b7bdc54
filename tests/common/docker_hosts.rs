//! Real Docker hosts: dockerds in network namespaces (scripts/docker-hosts.sh), stopping a
//! daemon child, and reading `docker inspect` output.
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::server::tail;
use super::{cmd, run};

/// One dockerd in its own network namespace, as `scripts/docker-hosts.sh up` reports it.
#[derive(Debug, Clone)]
pub struct DockerHost {
    /// The namespace's name (`bdh-X-I`).
    pub name: String,
    /// Its address on the bridge (`10.250.X.(10+I)`).
    pub addr: std::net::Ipv4Addr,
    /// The daemon's unix socket (on this machine's filesystem).
    pub sock: PathBuf,
    /// `tcp://ADDR:2375`
    pub tcp: String,
    pub pid: u32,
    pub log: PathBuf,
}

/// N real Docker hosts made by `scripts/docker-hosts.sh up`, torn down (daemons stopped by
/// PID, containers, namespaces, bridge, iptables rules) by `down` when dropped, also when the
/// test fails. On a failing test the tail of every daemon's log is printed first.
pub struct DockerHosts {
    dir: tempfile::TempDir,
    /// The bridge's host-side address: a registry the hosts pull from listens here.
    pub bridge_addr: std::net::Ipv4Addr,
    pub hosts: Vec<DockerHost>,
}

impl DockerHosts {
    pub fn script() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-hosts.sh")
    }

    /// Brings up `n` hosts; panics with the script's output if that fails (the script has
    /// cleaned up after itself then).
    pub fn up(n: usize) -> DockerHosts {
        let dir = tempfile::Builder::new()
            .prefix("bdh-")
            .tempdir()
            .expect("create temporary directory for the docker hosts");
        let out = run(
            cmd(
                "bash",
                [
                    Self::script().as_os_str(),
                    "up".as_ref(),
                    dir.path().as_os_str(),
                    n.to_string().as_ref(),
                ],
            ),
            Duration::from_secs(180),
        );
        assert!(
            out.status.success(),
            "docker-hosts.sh up failed\n{}",
            out.describe()
        );
        let env: BTreeMap<String, String> = out
            .stdout
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // From here on the guard owns the hosts: a failed parse below still tears them down.
        let mut hosts = DockerHosts {
            dir,
            bridge_addr: std::net::Ipv4Addr::UNSPECIFIED,
            hosts: Vec::new(),
        };
        let get = |key: &str| -> String {
            env.get(key)
                .cloned()
                .unwrap_or_else(|| panic!("docker-hosts.sh printed no {key}:\n{}", out.stdout))
        };
        hosts.bridge_addr = get("BRIDGE_ADDR")
            .parse()
            .unwrap_or_else(|e| panic!("BRIDGE_ADDR: {e}"));
        for i in 1..=n {
            let key = |what: &str| get(&format!("H{i}_{what}"));
            hosts.hosts.push(DockerHost {
                name: key("NAME"),
                addr: key("ADDR")
                    .parse()
                    .unwrap_or_else(|e| panic!("H{i}_ADDR: {e}")),
                sock: PathBuf::from(key("SOCK")),
                tcp: key("TCP"),
                pid: key("PID")
                    .parse()
                    .unwrap_or_else(|e| panic!("H{i}_PID: {e}")),
                log: PathBuf::from(key("LOG")),
            });
        }
        hosts
    }

    /// `docker -H unix://SOCK ARGS` for host `i` (0-based).
    pub fn docker<I, S>(&self, i: usize, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.hosts[i].sock.display()))
            .args(args)
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY");
        c
    }

    /// Kills host `i`'s dockerd (SIGKILL by PID): the host is down, its containers keep
    /// running until `down`.
    pub fn kill_daemon(&self, i: usize) {
        let pid = self.hosts[i].pid;
        // SAFETY: kill(2) on the PID docker-hosts.sh reported for a daemon it started.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        assert_eq!(rc, 0, "cannot kill dockerd pid {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            // Not our child: init reaps it once it is gone.
            let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.contains(") Z ") {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for DockerHosts {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for host in &self.hosts {
                eprintln!(
                    "--- tail of {} dockerd log ({}) ---\n{}",
                    host.name,
                    host.log.display(),
                    tail(&fs::read_to_string(&host.log).unwrap_or_default(), 30)
                );
            }
        }
        let out = run(
            cmd(
                "bash",
                [
                    Self::script().as_os_str(),
                    "down".as_ref(),
                    self.dir.path().as_os_str(),
                ],
            ),
            Duration::from_secs(180),
        );
        if !out.status.success() {
            eprintln!("docker-hosts.sh down failed\n{}", out.describe());
        }
    }
}

/// Stops a child process this test started and still owns: SIGTERM, up to `grace` to exit,
/// then SIGKILL; always reaped. For daemons (dockerd) whose Drop guard must not leave them.
pub fn terminate_child(child: &mut Child, grace: Duration) {
    // SAFETY: kill(2) on the PID of a child we spawned and have not reaped yet.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `Config.Env` of a `docker inspect` container object, as `NAME=value` strings.
pub fn env_of(container: &serde_json::Value) -> Vec<String> {
    container["Config"]["Env"]
        .as_array()
        .map(|env| {
            env.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}
