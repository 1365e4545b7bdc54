//! "Env values are never printed" (docs/deploy.md), checked on everything the
//! `berth` binary writes, stdout and stderr, on runs that fail: a rollout whose healthcheck
//! fails, a host the planner refuses, an unreachable host, and config errors. With and
//! without `--json`, `--check`.
//!
//! No Docker daemon is needed: a fake Engine API on a unix socket answers with the JSON
//! captured from a real dockerd (deploy/tests/fixtures/engine-capture/, the app deployed
//! there) and reports the replacement container unhealthy. It records what it was sent, so
//! the test also proves the secret did reach the engine (in the create request), i.e. that
//! the runs carried it through every output path they took.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const TIMEOUT: Duration = Duration::from_secs(120);
/// The new value of the app's `API_TOKEN` env (a group_vars variable).
const SECRET: &str = "Sekr1t-9f3Q-new";
/// The value the captured containers run with: in their `berth.config` label and in the
/// `Config.Env` of the inspect answers the fake engine serves.
const OLD_SECRET: &str = "tok-0001";

fn capture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tests/fixtures/engine-capture")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(capture_dir().join(name)).expect("fixture")
}

/// One request the fake engine received.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    body: String,
}

/// A Docker Engine API (as dockerd 20.10 answers, API 1.41) on a unix socket: reads come
/// from the captured JSON, changes succeed, and any container started is unhealthy.
struct FakeEngine {
    socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl FakeEngine {
    fn start(dir: &Path) -> FakeEngine {
        let socket = dir.join("docker.sock");
        let listener = UnixListener::bind(&socket).expect("bind fake engine socket");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || serve_connection(stream, &log));
            }
        });
        FakeEngine { socket, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn serve_connection(stream: UnixStream, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut length = 0;
        let mut chunked = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).is_err() {
                    return;
                }
                body.extend_from_slice(&chunk[..size]);
                if size == 0 {
                    break;
                }
            }
        } else {
            body.resize(length, 0);
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let request = Request {
            method,
            path,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let (status, answer) = answer(&request);
        log.lock().unwrap_or_else(|e| e.into_inner()).push(request);
        let reason = match status {
            200 => "OK",
            201 => "Created",
            204 => "No Content",
            _ => "Not Found",
        };
        let head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nApi-Version: 1.41\r\nContent-Length: {}\r\n\r\n",
            answer.len()
        );
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(answer.as_bytes()).is_err()
        {
            return;
        }
    }
}

fn answer(request: &Request) -> (u16, String) {
    // `/v1.41/containers/json?all=true` → `containers/json`
    let path = request.path.split('?').next().unwrap_or_default();
    let path = path.trim_start_matches('/');
    let path = match path.split_once('/') {
        Some((version, rest)) if version.starts_with('v') && version.contains('.') => rest,
        _ => path,
    };
    match (request.method.as_str(), path) {
        ("GET", "version") => (200, fixture("version.json")),
        ("GET", "containers/json") => (200, fixture("containers.json")),
        ("GET", "networks") => (200, fixture("networks.json")),
        ("GET", "images/json") => (200, fixture("images.json")),
        ("GET", "volumes") => (200, r#"{"Volumes":[],"Warnings":[]}"#.to_string()),
        ("GET", inspect) if inspect.starts_with("containers/") => {
            let name = inspect
                .trim_start_matches("containers/")
                .trim_end_matches("/json");
            let all: Vec<serde_json::Value> =
                serde_json::from_str(&fixture("inspect/containers.json")).expect("inspect");
            let Some(mut found) = all
                .into_iter()
                .find(|c| c["Name"].as_str() == Some(&format!("/{name}")))
            else {
                return (404, format!(r#"{{"message":"No such container: {name}"}}"#));
            };
            // Whatever was started is running and failing its healthcheck.
            found["State"]["Running"] = true.into();
            found["State"]["Status"] = "running".into();
            found["State"]["Health"] = serde_json::json!({
                "Status": "unhealthy",
                "FailingStreak": 2,
                "Log": [{ "ExitCode": 1, "Output": "wget: server returned error: HTTP/1.1 503" }],
            });
            (200, found.to_string())
        }
        ("POST", "images/create") => (200, r#"{"status":"Downloaded"}"#.to_string() + "\n"),
        ("POST", "containers/create") => (
            201,
            r#"{"Id":"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","Warnings":[]}"#
                .to_string(),
        ),
        ("POST", update) if update.ends_with("/update") => (200, r#"{"Warnings":[]}"#.to_string()),
        ("POST", "networks/create") => (201, r#"{"Id":"fake-network","Warning":""}"#.to_string()),
        ("POST", _) | ("DELETE", _) => (204, String::new()),
        _ => (404, r#"{"message":"not faked"}"#.to_string()),
    }
}

/// The captured app and an inventory whose only host is `docker_host`, with `vars` as
/// group_vars/all.yml; returns (app file, inventory dir).
fn app_and_inventory(
    dir: &Path,
    docker_host: &str,
    vars: &str,
    app_extra: &str,
) -> (PathBuf, PathBuf) {
    let app = dir.join("app.yml");
    std::fs::write(&app, fixture("app.yml") + app_extra).expect("write app");
    let inventory = dir.join("inventory");
    std::fs::create_dir_all(inventory.join("group_vars")).expect("mkdir");
    std::fs::write(
        inventory.join("hosts.yml"),
        format!("all:\n  hosts:\n    local:\n      docker_host: {docker_host}\n"),
    )
    .expect("write hosts");
    std::fs::write(inventory.join("group_vars/all.yml"), vars).expect("write vars");
    (app, inventory)
}

fn berth_deploy(cli: &BerthCli, app: &Path, inventory: &Path, extra: &[&str]) -> CmdOutput {
    let mut c = cli.cmd(["deploy"]);
    c.arg(app)
        .arg("-i")
        .arg(inventory)
        .args([
            "--no-pin",
            "--health-timeout",
            "10s",
            "--connect-timeout",
            "5s",
        ])
        .args(extra)
        // Any log line a future change adds goes to stderr too: let it all through.
        .env("BERTH_LOG", "trace")
        .env("RUST_LOG", "trace");
    run(c, TIMEOUT)
}

/// The run failed (as meant), and neither the new nor the old value is in stdout or stderr.
fn assert_failed_without_secrets(out: &CmdOutput) {
    assert!(
        !out.status.success(),
        "expected a failure\n{}",
        out.describe()
    );
    for value in [SECRET, OLD_SECRET] {
        assert!(
            !out.stdout.contains(value) && !out.stderr.contains(value),
            "an env value ({value}) was printed\n{}",
            out.describe()
        );
    }
}

#[test]
fn env_values_are_never_printed_on_failing_runs() {
    let cli = BerthCli::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = FakeEngine::start(dir.path());
    let docker_host = format!("unix://{}", engine.socket.display());
    let vars = format!("mode: two\napi_token: {SECRET}\n");
    let (app, inventory) = app_and_inventory(dir.path(), &docker_host, &vars, "");

    // A rollout that fails its healthcheck, in words and as JSON.
    let out = berth_deploy(&cli, &app, &inventory, &[]);
    assert_failed_without_secrets(&out);
    assert!(
        out.stdout.contains("env API_TOKEN changed"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout
            .contains("cap_web_1 is unhealthy (last check: wget: server returned error"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr
            .contains("deploy failed on 1 of 1 host(s): local"),
        "{}",
        out.describe()
    );
    // The value did travel: to the engine, and only there.
    let created: Vec<Request> = engine
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("containers/create"))
        .collect();
    assert!(
        created
            .iter()
            .any(|r| r.body.contains(&format!("API_TOKEN={SECRET}"))),
        "the secret never reached the engine: {created:?}"
    );

    let out = berth_deploy(&cli, &app, &inventory, &["--json"]);
    assert_failed_without_secrets(&out);
    let report = parse_json(&out.stdout, "deploy --json");
    assert_eq!(report["hosts"][0]["failed"], 1, "{report}");
    assert!(
        out.stdout.contains(r#""API_TOKEN": "***""#),
        "{}",
        out.stdout
    );

    // --check exits 0 (nothing failed), but prints the same plan.
    for extra in [&["--check"][..], &["--check", "--json"][..]] {
        let out = berth_deploy(&cli, &app, &inventory, extra);
        assert!(out.status.success(), "{}", out.describe());
        for value in [SECRET, OLD_SECRET] {
            assert!(
                !out.stdout.contains(value) && !out.stderr.contains(value),
                "{extra:?} printed {value}\n{}",
                out.describe()
            );
        }
    }

    // A host the planner refuses (the new service's container name is taken by the
    // hand-started cap_debug_1): the plan and its error are printed, and reported.
    let clash = "  debug:\n    image: \"{{ registry }}/capture/app:{{ tag }}\"\n    env: { API_TOKEN: \"{{ api_token }}\" }\n";
    let (app, inventory) = app_and_inventory(dir.path(), &docker_host, &vars, clash);
    for extra in [&[][..], &["--json"][..]] {
        let out = berth_deploy(&cli, &app, &inventory, extra);
        assert_failed_without_secrets(&out);
        assert!(
            (out.stdout + &out.stderr).contains("a container named cap_debug_1 already exists"),
            "{extra:?}"
        );
    }

    // An unreachable host.
    let (app, inventory) = app_and_inventory(
        dir.path(),
        &format!("unix://{}", dir.path().join("absent.sock").display()),
        &vars,
        "",
    );
    for extra in [&[][..], &["--json"][..]] {
        let out = berth_deploy(&cli, &app, &inventory, extra);
        assert_failed_without_secrets(&out);
        assert!(
            (out.stdout + &out.stderr).contains("absent.sock"),
            "{extra:?}"
        );
    }
}

/// Config errors stop the run before any host is reached; their messages are on stderr.
#[test]
fn env_values_are_never_printed_in_config_errors() {
    let cli = BerthCli::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let host = "unix:///nonexistent/docker.sock";
    let broken = [
        // A value that is not a valid template (a password with `{{` in it).
        (
            format!("api_token: \"{SECRET}{{{{x\"\n"),
            "",
            "the value of variable `api_token`",
        ),
        (
            format!("api_token: \"{SECRET}{{{{ x | y }}}}\"\n"),
            "",
            "the value of variable `api_token`",
        ),
        // A list-form env item that lost its `=`.
        (
            format!("api_token: {SECRET}\n"),
            "  other:\n    image: busybox\n    env: [\"TOKEN {{ api_token }}\"]\n",
            "env item 0 has no `=`",
        ),
    ];
    for (vars, app_extra, expected) in broken {
        let (app, inventory) = app_and_inventory(dir.path(), host, &vars, app_extra);
        for extra in [&[][..], &["--json"][..], &["--check"][..]] {
            let out = berth_deploy(&cli, &app, &inventory, extra);
            assert_failed_without_secrets(&out);
            assert!(out.stderr.contains(expected), "{}", out.describe());
        }
    }
}
