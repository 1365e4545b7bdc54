//! Volumes, secrets, `berth down` and rollback's removal of created containers, against a
//! real Docker daemon (the one `DOCKER_HOST` names; scripts/test.sh starts a private one),
//! pulling from a real `berth serve`.
//!
//! One app whose service mounts a named volume, a read-only bind mount, a bind mount whose
//! host path Berth may create, and a tmpfs, and gets two secrets (one from a file, one from
//! an environment variable) and a secret-looking env value. Its life: deploy, unchanged
//! re-run, new image (the volume's data survives the replacement), a rotated secret, a
//! deploy that adds a service then a rollback (which removes that service's container),
//! `berth down` (volume kept), `berth down --volumes` (volume gone). Secret values never
//! appear in any output, label or `--json`. A guard removes everything, also on failure.

mod common;

use std::fs;
use std::path::Path;
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(120);
const ENV_SECRET: &str = "EnvS3cret-q81z";
const FILE_SECRET_1: &str = "FileS3cret-one-7c2";
const FILE_SECRET_2: &str = "FileS3cret-two-4d9";
const TOKEN_SECRET: &str = "TokS3cret-k0p5";

const LOOP: &str = "trap 'exit 0' TERM; while true; do /bin/busybox sleep 1; done";

fn app_file(app: &str, image: &str, host_dir: &Path, extra_service: bool) -> String {
    let mut text = format!(
        r#"name: {app}
variables: {{ tag: v1 }}
volumes:
  data: {{ labels: {{ purpose: e2e }} }}
secrets:
  db_password: {{ file: ./db_password }}
  token: {{ environment: BERTH_E2E_TOKEN }}
services:
  db:
    image: "{image}:{{{{ tag }}}}"
    command: [/bin/sh, -c, "{LOOP}"]
    env: {{ PASSWORD: "{ENV_SECRET}", PLAIN: "yes" }}
    stop_grace_period: 2s
    volumes:
      - data:/data
      - {ro}:/host:ro
      - {{ type: bind, source: {created}, target: /created, bind: {{ create_host_path: true }} }}
      - {{ type: tmpfs, target: /scratch, tmpfs: {{ size: 1m }} }}
    secrets:
      - db_password
      - {{ source: token, target: api_token, mode: "0440", uid: "1000", gid: "1001" }}
"#,
        ro = host_dir.join("ro").display(),
        created = host_dir.join("created/sub").display(),
    );
    if extra_service {
        text.push_str(&format!(
            "  cache:\n    image: \"{image}:{{{{ tag }}}}\"\n    command: [/bin/sh, -c, \"{LOOP}\"]\n    stop_grace_period: 2s\n"
        ));
    }
    text
}

fn berth(cli: &BerthCli, args: &[&str], app_file: &Path, inventory: &Path) -> CmdOutput {
    let mut c = cli.cmd([args[0]]);
    c.arg(app_file)
        .arg("-i")
        .arg(inventory)
        .args(&args[1..])
        .env("BERTH_E2E_TOKEN", TOKEN_SECRET);
    run(c, TIMEOUT)
}

fn ok(out: CmdOutput) -> String {
    assert!(out.status.success(), "expected success\n{}", out.describe());
    assert_no_secrets(&out.stdout);
    assert_no_secrets(&out.stderr);
    out.stdout
}

fn assert_no_secrets(text: &str) {
    for secret in [ENV_SECRET, FILE_SECRET_1, FILE_SECRET_2, TOKEN_SECRET] {
        assert!(!text.contains(secret), "secret {secret} printed:\n{text}");
    }
}

fn exec(container: &str, args: &[&str]) -> CmdOutput {
    let mut c = cmd("docker", ["exec", container, "/bin/busybox"]);
    c.args(args);
    run(c, TIMEOUT)
}

fn exec_ok(container: &str, args: &[&str]) -> String {
    let out = exec(container, args);
    assert!(
        out.status.success(),
        "docker exec {args:?}\n{}",
        out.describe()
    );
    out.stdout
}

fn inspect(what: &str) -> Option<serde_json::Value> {
    let out = run(cmd("docker", ["inspect", what]), TIMEOUT);
    out.status
        .success()
        .then(|| parse_json(&out.stdout, "docker inspect")[0].clone())
}

#[test]
fn volumes_secrets_down_and_rollback_of_created_containers() {
    if !require_tool("docker") {
        return;
    }
    let server = Server::start();
    let cli = BerthCli::new();
    let app = unique("bvol").replace('-', "_");
    let image = format!("{}/volumes-e2e/{}", server.host(), app.replace('_', "-"));
    let mut _cleanup = DockerCleanup::app(&app, vec![image.clone()]);
    _cleanup.dirs.push(std::path::PathBuf::from(format!(
        "/run/berth/secrets/{app}"
    )));
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    import_image(&cli, &rootfs, &format!("{image}:v1"), "1");
    import_image(&cli, &rootfs, &format!("{image}:v2"), "2");

    let host_dir = cli.path("host");
    fs::create_dir_all(host_dir.join("ro")).expect("mkdir ro");
    fs::write(host_dir.join("ro/marker"), "from the host\n").expect("write marker");
    let app_path = cli.path("app.yml");
    fs::write(&app_path, app_file(&app, &image, &host_dir, false)).expect("write app");
    fs::write(cli.path("db_password"), FILE_SECRET_1).expect("write secret");
    let inventory = cli.path("inventory");
    fs::create_dir_all(inventory.join("group_vars")).expect("mkdir inventory");
    fs::write(
        inventory.join("hosts.yml"),
        format!(
            "all:\n  hosts:\n    local:\n      docker_host: \"{}\"\n",
            docker_host()
        ),
    )
    .expect("write hosts.yml");
    let set_tag = |tag: &str| {
        fs::write(
            inventory.join("group_vars/all.yml"),
            format!("tag: {tag}\n"),
        )
        .expect("write group_vars");
    };
    set_tag("v1");
    let db = format!("{app}_db_1");
    let volume = format!("{app}_data");

    // --- 1. deploy: volume created and labelled, every kind of mount, secrets as files -----
    let out = ok(berth(&cli, &["deploy"], &app_path, &inventory));
    assert!(
        out.contains(&format!("create   volume {volume} (local)")),
        "{out}"
    );
    assert!(out.contains("local : ok=0 changed=3"), "{out}");
    let v = inspect(&volume).expect("volume exists");
    assert_eq!(v["Labels"]["berth.app"], app.as_str(), "{v}");
    assert_eq!(v["Labels"]["purpose"], "e2e", "{v}");
    exec_ok(
        &db,
        &["sh", "-c", "echo kept-across-replacement > /data/file"],
    );
    assert_eq!(exec_ok(&db, &["cat", "/host/marker"]), "from the host\n");
    let write_ro = exec(&db, &["touch", "/host/new"]);
    assert!(
        !write_ro.status.success(),
        "read-only bind mount was writable"
    );
    assert!(
        host_dir.join("created/sub").is_dir(),
        "create_host_path did not create it"
    );
    let mounts = exec_ok(&db, &["cat", "/proc/mounts"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs /scratch tmpfs") && l.contains("size=1024k")),
        "{mounts}"
    );
    assert_eq!(
        exec_ok(&db, &["cat", "/run/secrets/db_password"]),
        FILE_SECRET_1
    );
    assert_eq!(
        exec_ok(&db, &["cat", "/run/secrets/api_token"]),
        TOKEN_SECRET
    );
    assert_eq!(
        exec_ok(&db, &["stat", "-c", "%a %u %g", "/run/secrets/db_password"]).trim(),
        "400 0 0"
    );
    assert_eq!(
        exec_ok(&db, &["stat", "-c", "%a %u %g", "/run/secrets/api_token"]).trim(),
        "440 1000 1001"
    );
    let container = inspect(&db).expect("db runs");
    assert!(env_of(&container).contains(&format!("PASSWORD={ENV_SECRET}")));
    let labels = container["Config"]["Labels"].to_string();
    assert_no_secrets(&labels);
    assert!(labels.contains("salted-sha256:"), "{labels}");
    assert!(
        run(
            cmd(
                "docker",
                ["ps", "-aq", "--filter", &format!("name={db}-secrets")]
            ),
            TIMEOUT
        )
        .stdout
        .trim()
        .is_empty(),
        "the secrets helper container was left behind"
    );

    // --- 2. unchanged re-run changes nothing; --check --json names no value ------------------
    let id = inspect(&db).map(|c| c["Id"].clone());
    let out = ok(berth(&cli, &["deploy"], &app_path, &inventory));
    assert!(out.contains("local : ok=2 changed=0"), "{out}");
    assert_eq!(inspect(&db).map(|c| c["Id"].clone()), id);
    let json = ok(berth(
        &cli,
        &["deploy", "--check", "--json"],
        &app_path,
        &inventory,
    ));
    assert_eq!(
        parse_json(&json, "deploy --check --json")["hosts"][0]["changed"],
        0
    );

    // --- 3. a new image replaces the container; the volume's data stays ----------------------
    set_tag("v2");
    let out = ok(berth(&cli, &["deploy"], &app_path, &inventory));
    assert!(out.contains(&format!("replace  container {db}")), "{out}");
    assert_ne!(inspect(&db).map(|c| c["Id"].clone()), id);
    assert_eq!(inspect(&db).unwrap()["Config"]["Labels"]["version"], "2");
    assert_eq!(
        exec_ok(&db, &["cat", "/data/file"]),
        "kept-across-replacement\n"
    );

    // --- 4. a rotated secret replaces the container, named but not shown ---------------------
    fs::write(cli.path("db_password"), FILE_SECRET_2).expect("rotate secret");
    let out = ok(berth(
        &cli,
        &["deploy", "--check", "--json"],
        &app_path,
        &inventory,
    ));
    assert_eq!(parse_json(&out, "check")["hosts"][0]["changed"], 1, "{out}");
    let out = ok(berth(&cli, &["deploy"], &app_path, &inventory));
    assert!(out.contains(&format!("replace  container {db}")), "{out}");
    assert!(out.contains("secret db_password changed"), "{out}");
    assert_eq!(
        exec_ok(&db, &["cat", "/run/secrets/db_password"]),
        FILE_SECRET_2
    );

    // --- 4b. a "reboot" empties the secret folders: the container cannot start without
    // them, and the next deploy writes them again before starting it.
    run_ok(cmd("docker", ["stop", "-t", "1", &db]), TIMEOUT);
    fs::remove_dir_all(format!("/run/berth/secrets/{app}")).expect("remove secret folders");
    assert!(!run(cmd("docker", ["start", &db]), TIMEOUT).status.success());
    let out = ok(berth(&cli, &["deploy"], &app_path, &inventory));
    assert!(out.contains(&format!("start    container {db}")), "{out}");
    assert_eq!(
        exec_ok(&db, &["cat", "/run/secrets/db_password"]),
        FILE_SECRET_2
    );

    // --- 5. a deploy that adds a service, rolled back: its container goes --------------------
    let cache = format!("{app}_cache_1");
    let with_cache = cli.path("app-cache.yml");
    fs::write(&with_cache, app_file(&app, &image, &host_dir, true)).expect("write app");
    let out = ok(berth(&cli, &["deploy"], &with_cache, &inventory));
    assert!(
        out.contains(&format!("create   container {cache}")),
        "{out}"
    );
    let out = ok(berth(&cli, &["rollback"], &with_cache, &inventory));
    assert!(out.contains(&format!("remove container {cache}")), "{out}");
    assert!(inspect(&cache).is_none(), "rollback left {cache}");
    assert!(inspect(&db).is_some());

    // --- 6. down keeps the volume; down --volumes removes it ---------------------------------
    let ran = inspect(&db)
        .and_then(|c| c["Config"]["Image"].as_str().map(str::to_string))
        .unwrap_or_default();
    let (_, ran_digest) = ran.split_once('@').expect("deploys pin a digest");
    let repository = image.split_once('/').map(|(_, r)| r).unwrap_or_default();
    let page = |digest: &str| {
        let url = format!("{}/ui/r/{repository}/_/{digest}", server.url());
        run_ok(cmd("busybox", ["wget", "-q", "-O", "-", &url]), TIMEOUT)
    };
    let is_berth = server.kind == ServerKind::Berth;
    if is_berth {
        assert!(page(ran_digest).contains("Running on"), "before down");
    }
    let out = ok(berth(&cli, &["down"], &app_path, &inventory));
    // down records that the image no longer runs there.
    assert!(
        out.contains(&format!("recorded the deployment of {image}@{ran_digest}")),
        "{out}"
    );
    if is_berth {
        let after = page(ran_digest);
        assert!(!after.contains("Running on"), "{after}");
    }
    assert!(out.contains(&format!("remove   container {db}")), "{out}");
    assert!(out.contains(&format!("volume {volume} is kept")), "{out}");
    assert!(out.contains("RECAP"), "{out}");
    assert!(inspect(&db).is_none());
    assert!(inspect(&format!("{db}-prev")).is_none());
    assert!(inspect(&volume).is_some());
    // By name, as `berth down APP -i INV`.
    let mut c = cli.cmd(["down", app.as_str(), "--volumes", "-i"]);
    c.arg(&inventory);
    let out = ok(run(c, TIMEOUT));
    assert!(out.contains(&format!("remove   volume {volume}")), "{out}");
    assert!(inspect(&volume).is_none(), "down --volumes left {volume}");
}
