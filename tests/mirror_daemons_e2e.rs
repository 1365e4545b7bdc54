//! Container engines through the pull-through cache, each a private daemon of the test's
//! own: `docker pull` of a Docker Hub-style name through dockerd's `--registry-mirror`, and
//! `ctr images pull` through a containerd `hosts.toml` mirror (the `?ns=` form).

mod common;
mod mirror_support;

use std::time::Duration;

use common::*;
use mirror_support::*;

/// A dockerd of this test's own (never the suite's or the system's), started with
/// `--registry-mirror`, stopped by PID when dropped.
struct MirroredDockerd {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl MirroredDockerd {
    fn start(mirror: &str) -> MirroredDockerd {
        let dir = std::path::PathBuf::from(format!(
            "/var/tmp/berth-mirror-docker-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("dockerd dir");
        let log = std::fs::File::create(dir.join("log")).expect("dockerd log");
        let mut command = std::process::Command::new("dockerd");
        command
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args([
                "--storage-driver",
                "overlay2",
                "--bridge",
                "none",
                "--iptables=false",
                "--tls=false",
            ])
            .args(["--registry-mirror", mirror])
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start dockerd");
        let daemon = MirroredDockerd { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !daemon
            .docker(["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "dockerd did not come up:\n{}",
                std::fs::read_to_string(daemon.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }

    fn docker<const N: usize>(&self, args: [&str; N]) -> std::process::Command {
        let mut c = cmd("docker", args);
        c.env(
            "DOCKER_HOST",
            format!("unix://{}", self.dir.join("docker.sock").display()),
        );
        c.env("DOCKER_CONFIG", self.dir.join("cli"));
        c
    }
}

impl Drop for MirroredDockerd {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_pull_through_registry_mirrors() {
    if !(require_root() && require_program("dockerd") && require_program("docker")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(5);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/mirrored:push,pull",
    )
    .await;
    push_image(
        &c,
        &upstream.url(),
        "library/mirrored",
        "1",
        &img,
        Some(&push),
    )
    .await;
    let mirror = mirror_server(dir.path(), &hub_mirror_table(&upstream, "1h"));
    let daemon = MirroredDockerd::start(&mirror.url());
    let expected: Vec<String> = serde_json::from_slice::<serde_json::Value>(&img.config)
        .expect("config")["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|d| d.as_str().unwrap_or_default().to_string())
        .collect();
    let layers_of = |daemon: &MirroredDockerd| {
        let out = run_ok(
            daemon.docker([
                "image",
                "inspect",
                "--format",
                "{{json .RootFS.Layers}}",
                "mirrored:1",
            ]),
            TIMEOUT,
        );
        serde_json::from_str::<Vec<String>>(out.trim()).expect("layers json")
    };
    // A Docker Hub name: dockerd asks the mirror for library/mirrored, without a prefix.
    run_ok(daemon.docker(["pull", "mirrored:1"]), TIMEOUT);
    assert_eq!(layers_of(&daemon), expected, "every layer unpacked");
    assert!(
        requests(&mirror, "path=/v2/library/mirrored/manifests/1") >= 1,
        "dockerd used the mirror"
    );
    // Upstream gone: the same pull still works from the cache.
    run_ok(daemon.docker(["rmi", "mirrored:1"]), TIMEOUT);
    upstream.stop();
    run_ok(daemon.docker(["pull", "mirrored:1"]), TIMEOUT);
    assert_eq!(layers_of(&daemon), expected);
}

/// A containerd of this test's own (own root, state and sockets), stopped by PID when dropped.
struct PrivateContainerd {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl PrivateContainerd {
    fn start() -> PrivateContainerd {
        let dir = std::path::PathBuf::from(format!(
            "/var/tmp/berth-mirror-containerd-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("containerd dir");
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n[ttrpc]\n  address = \"{d}/ttrpc.sock\"\n"
        );
        std::fs::write(dir.join("config.toml"), config).expect("containerd config");
        let log = std::fs::File::create(dir.join("log")).expect("containerd log");
        let mut command = std::process::Command::new("containerd");
        command
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command.spawn().expect("start containerd");
        let daemon = PrivateContainerd { child, dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !daemon
            .ctr(&["version"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "containerd did not come up:\n{}",
                std::fs::read_to_string(daemon.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        daemon
    }

    fn ctr(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(args);
        c
    }
}

impl Drop for PrivateContainerd {
    fn drop(&mut self) {
        terminate_child(&mut self.child, Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr_pull_through_a_hosts_toml_mirror() {
    if !(require_root() && require_program("containerd") && require_program("ctr")) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut upstream = token_upstream(dir.path());
    let c = client();
    let img = image(6);
    let push = token(
        &c,
        &upstream.url(),
        "pusher",
        "push-pw",
        "repository:library/viactr:push,pull",
    )
    .await;
    push_image(
        &c,
        &upstream.url(),
        "library/viactr",
        "1",
        &img,
        Some(&push),
    )
    .await;
    // No default mirror: the unprefixed name works only through ?ns=docker.io.
    let table = format!(
        "[[mirror]]\nupstream = \"{}\"\nprefix = \"hub\"\nnamespace = \"docker.io\"\n\
         username = \"puller\"\npassword = \"pull-pw\"\n",
        upstream.url()
    );
    let mirror = mirror_server(dir.path(), &table);
    let hosts = dir.path().join("hosts").join("docker.io");
    std::fs::create_dir_all(&hosts).expect("hosts dir");
    // The fallback server is a closed loopback port: nothing leaves the machine.
    std::fs::write(
        hosts.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:9\"\n[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            mirror.url()
        ),
    )
    .expect("hosts.toml");
    let daemon = PrivateContainerd::start();
    let hosts_dir = dir.path().join("hosts").display().to_string();
    let pull = |daemon: &PrivateContainerd| {
        run_ok(
            daemon.ctr(&[
                "images",
                "pull",
                "--hosts-dir",
                &hosts_dir,
                "--snapshotter",
                "native",
                "docker.io/library/viactr:1",
            ]),
            TIMEOUT,
        )
    };
    pull(&daemon);
    let listed = run_ok(daemon.ctr(&["images", "ls", "-q"]), TIMEOUT);
    assert!(listed.contains("docker.io/library/viactr:1"), "{listed}");
    assert!(
        requests(&mirror, "repository=hub/library/viactr") >= 5,
        "served as hub/library/viactr"
    );
    upstream.stop();
    run_ok(
        daemon.ctr(&["images", "rm", "docker.io/library/viactr:1"]),
        TIMEOUT,
    );
    pull(&daemon);
}
