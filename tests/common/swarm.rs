//! A private dockerd that is a single-node Swarm manager, for the tests that deploy to a
//! swarm (`berth deploy --swarm`, `docker stack deploy` of `berth export stack`).

use std::fs;
use std::time::Duration;

use super::{cmd, free_port, parse_json, run, run_ok, terminate_child};

const TIMEOUT: Duration = Duration::from_secs(180);

/// A private dockerd that is a single-node Swarm manager. Leaves the swarm, stops the daemon
/// by PID and removes its bridge and directories when dropped, also when the test fails.
pub struct SwarmDockerd {
    dir: tempfile::TempDir,
    child: std::process::Child,
    bridge: String,
}

impl SwarmDockerd {
    /// `gateway_subnet` is the docker_gwbridge's (a Linux bridge on the host: each test
    /// gives its own, so two swarm tests can run at once), `address_pool` the overlays'.
    pub fn start(gateway_subnet: &str, address_pool: &str) -> SwarmDockerd {
        // A short prefix: the socket path must stay under the 108-byte unix path limit.
        let dir = tempfile::Builder::new()
            .prefix("bsw")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let log = fs::File::create(dir.path().join("dockerd.log")).expect("dockerd log");
        let err = log.try_clone().expect("dockerd log");
        let path = |name: &str| dir.path().join(name).display().to_string();
        // No default bridge, no iptables rules: nothing this daemon does can clash with
        // another dockerd on the machine.
        let child = std::process::Command::new("dockerd")
            .args(["--data-root", &path("data")])
            .args(["--exec-root", &path("exec")])
            .args(["--pidfile", &path("dockerd.pid")])
            .args(["-H", &format!("unix://{}", path("docker.sock"))])
            .args(["--storage-driver", "overlay2", "--bridge", "none"])
            .args(["--iptables=false", "--tls=false"])
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start dockerd");
        let bridge = format!("bswg{}", std::process::id() % 100_000);
        let daemon = SwarmDockerd { dir, child, bridge };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !run(daemon.docker(["version"]), TIMEOUT).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not start:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // Swarm's docker_gwbridge is a Linux bridge on the host: made beforehand with a name
        // and subnet of this test's own (Docker's documented way to customise it).
        run_ok(
            daemon.docker([
                "network",
                "create",
                "--subnet",
                gateway_subnet,
                "-o",
                &format!("com.docker.network.bridge.name={}", daemon.bridge),
                "-o",
                "com.docker.network.bridge.enable_icc=false",
                "-o",
                "com.docker.network.bridge.enable_ip_masquerade=false",
                "docker_gwbridge",
            ]),
            TIMEOUT,
        );
        let listen = format!("127.0.0.1:{}", free_port());
        let data_port = free_udp_port().to_string();
        run_ok(
            daemon.docker([
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
                "--listen-addr",
                &listen,
                "--data-path-port",
                &data_port,
                "--default-addr-pool",
                address_pool,
            ]),
            TIMEOUT,
        );
        daemon
    }

    pub fn socket(&self) -> String {
        format!("unix://{}", self.dir.path().join("docker.sock").display())
    }

    pub fn docker<const N: usize>(&self, args: [&str; N]) -> std::process::Command {
        let mut c = cmd("docker", ["-H", self.socket().as_str()]);
        c.args(args);
        c
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    pub fn json<const N: usize>(&self, args: [&str; N]) -> serde_json::Value {
        parse_json(&run_ok(self.docker(args), TIMEOUT), "docker inspect")
    }
}

impl Drop for SwarmDockerd {
    fn drop(&mut self) {
        // Leaving the swarm removes services, their tasks and the overlay networks; then the
        // gateway bridge can go, which would otherwise outlive the daemon.
        let _ = run(self.docker(["swarm", "leave", "--force"]), TIMEOUT);
        let ids = run(self.docker(["ps", "-aq"]), TIMEOUT);
        for id in ids.stdout.split_whitespace() {
            let _ = run(self.docker(["rm", "-f", id]), TIMEOUT);
        }
        let _ = run(self.docker(["network", "rm", "docker_gwbridge"]), TIMEOUT);
        terminate_child(&mut self.child, Duration::from_secs(30));
        if fs::metadata(format!("/sys/class/net/{}", self.bridge)).is_ok() {
            let _ = run(cmd("ip", ["link", "delete", &self.bridge]), TIMEOUT);
        }
        let root = self.dir.path().display().to_string();
        if let Ok(mounts) = fs::read_to_string("/proc/mounts") {
            let mut below: Vec<&str> = mounts
                .lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .filter(|point| point.starts_with(&root))
                .collect();
            below.sort_by(|a, b| b.cmp(a));
            for point in below {
                let _ = run(cmd("umount", ["-l", point]), TIMEOUT);
            }
        }
    }
}

/// A UDP port Swarm accepts for VXLAN (1024-49151, below the ephemeral range) that nothing
/// is bound to, so this swarm's data path cannot collide with another on the machine.
fn free_udp_port() -> u16 {
    let start = 40_000 + (std::process::id() % 9_000) as u16;
    (start..49_151)
        .chain(20_000..start)
        .find(|port| std::net::UdpSocket::bind(("0.0.0.0", *port)).is_ok())
        .expect("a free UDP port")
}
