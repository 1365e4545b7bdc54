//! The write-up's own layout on three real Docker hosts: an Ansible INI inventory
//! (`testing/inventory` with a `[back]` group and `host var=value` lines), an extensionless
//! `group_vars/all` and a `host_vars/web-back2.testing` that is a symlink to a file beside it,
//! and the origin app as a compose file (`examples/origin/compose.yaml`). `berth ship` builds
//! the image from the compose file's `build:` and deploys it to the three namespace hosts of
//! `scripts/docker-hosts.sh`; the host_vars override shows only on its host; `-e image_tag=v2`
//! moves all three to v2. Containers are Compose's (`app_example-web-1`, compose labels).
//!
//! Needs root, `dockerd`, `docker`, `ip`, `iptables`, `nsenter`, `runc`; about 60 s.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(300);
const HOSTS: [&str; 3] = [
    "web-back1.testing",
    "web-back2.testing",
    "web-back3.testing",
];
const WEB: &str = "app_example-web-1";
const NODES: &str = "app_example-nodes-1";

#[test]
fn compose_file_with_an_ini_inventory_on_three_hosts() {
    if !require_root() {
        return;
    }
    for program in [
        "dockerd", "docker", "ip", "iptables", "nsenter", "runc", "setsid",
    ] {
        if !require_program(program) {
            return;
        }
    }
    let hosts = DockerHosts::up(HOSTS.len());
    let server = Server::start_berth_on(hosts.bridge_addr, &[]);
    let registry = server.host();
    let cli = BerthCli::new();

    // The base image the example's Dockerfile builds FROM.
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let mut import = cli.cmd(["import"]);
    import
        .arg(&rootfs)
        .arg(format!("{registry}/busybox:stable"))
        .args(["-c", "CMD [\"/bin/sh\"]", "--insecure", &registry]);
    run_ok(import, T);

    // The example, and the write-up's inventory layout.
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/origin");
    let copy = cli.path("origin");
    copy_dir(&examples, &copy);
    let testing = copy.join("ini");
    fs::create_dir_all(testing.join("group_vars")).expect("mkdir");
    fs::create_dir_all(testing.join("host_vars")).expect("mkdir");
    let mut ini = String::from("# the write-up's testing inventory\n[back]\n");
    for (name, host) in HOSTS.iter().zip(&hosts.hosts) {
        ini.push_str(&format!("{name} docker_host={}\n", host.tcp));
    }
    fs::write(testing.join("inventory"), ini).expect("write inventory");
    fs::write(
        testing.join("group_vars/all"),
        format!("app_env: testing\nregistry: \"{registry}\"\n"),
    )
    .expect("write group_vars/all");
    fs::write(testing.join("web-back2.vars"), "log_level: debug\n").expect("write vars");
    std::os::unix::fs::symlink(
        "../web-back2.vars",
        testing.join("host_vars/web-back2.testing"),
    )
    .expect("symlink host_vars");

    let berth = |extra: &[&str]| {
        let mut c = cli.cmd(["ship"]);
        c.arg(copy.join("compose.yaml"))
            .arg("-i")
            .arg(testing.join("inventory"))
            .args(["--insecure", &registry])
            .args(["--health-timeout", "60s", "--connect-timeout", "5s"])
            .args(extra)
            .env("BERTH_INSECURE_REGISTRIES", &registry);
        let out = run(c, T);
        assert!(
            out.status.success(),
            "berth ship {extra:?}\n{}",
            out.describe()
        );
        out
    };
    let env = |h: usize, name: &str| -> Vec<String> {
        let out = run_ok(hosts.docker(h, ["inspect", name]), T);
        env_of(&parse_json(&out, "docker inspect")[0])
    };
    let image = |h: usize, name: &str| -> String {
        run_ok(
            hosts.docker(h, ["inspect", "--format", "{{.Config.Image}}", name]),
            T,
        )
        .trim()
        .to_string()
    };

    berth(&[]);
    for (h, host_name) in HOSTS.iter().enumerate() {
        for name in [WEB, NODES] {
            let e = env(h, name);
            assert!(
                e.iter().any(|v| v == "APP_ENV=testing"),
                "{name} on {h}: {e:?}"
            );
            assert!(
                image(h, name).starts_with(&format!("{registry}/app_example_image:v3@sha256:")),
                "{name} on {h}: {}",
                image(h, name)
            );
        }
        // The host_vars file (through its symlink) applies to web-back2 only.
        let want = if h == 1 {
            "LOG_LEVEL=debug"
        } else {
            "LOG_LEVEL=info"
        };
        let e = env(h, WEB);
        assert!(e.iter().any(|v| v == want), "web on {host_name}: {e:?}");
        // Compose's labels: `docker compose -p app_example ps` lists them.
        let project = run_ok(
            hosts.docker(
                h,
                [
                    "inspect",
                    "--format",
                    "{{index .Config.Labels \"com.docker.compose.project\"}} {{index .Config.Labels \"com.docker.compose.service\"}}",
                    WEB,
                ],
            ),
            T,
        );
        assert_eq!(project.trim(), "app_example web");
        // The fixed address from the compose file's networks.
        let address = run_ok(
            hosts.docker(
                h,
                [
                    "inspect",
                    "--format",
                    "{{.NetworkSettings.Networks.test_nw.IPAddress}}",
                    WEB,
                ],
            ),
            T,
        );
        assert_eq!(address.trim(), "10.1.4.10");
    }

    // `-e image_tag=v2` (highest precedence, as in Ansible): a v2 image everywhere.
    berth(&["-e", "image_tag=v2"]);
    for h in 0..HOSTS.len() {
        for name in [WEB, NODES] {
            assert!(
                image(h, name).starts_with(&format!("{registry}/app_example_image:v2@sha256:")),
                "{name} on {h}: {}",
                image(h, name)
            );
        }
    }
}
