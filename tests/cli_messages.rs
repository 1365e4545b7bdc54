//! The command line's conversations and mistakes, with the real binary: `berth login` asking
//! for user name and password on a pseudo-terminal (`script`, util-linux; the password never
//! echoed, a refused login worded as such, docker's warning naming config.json), and each
//! user mistake of issue 16 answered with a message that says what to do next.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const T: Duration = Duration::from_secs(60);

/// Runs `command` under a pseudo-terminal (`script -qec`), answering each prompt of `dialogue`
/// with its line once the prompt has appeared (so nothing is typed while echo is still on).
/// Returns everything the terminal showed and whether the command succeeded.
fn converse(command: &Command, dialogue: &[(&str, &str)]) -> (String, bool) {
    let mut line = format!("{:?}", command.get_program());
    for a in command.get_args() {
        line.push_str(&format!(" {a:?}"));
    }
    let mut c = Command::new("script");
    c.args(["-qec", &line, "/dev/null"]);
    for (k, v) in command.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let deadline = Instant::now() + T;
    let mut wait_for = |screen: &mut String, what: &str| {
        while !screen.contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => screen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => {
                    let _ = child.kill();
                    panic!("no {what:?} on the terminal:\n{screen}");
                }
            }
        }
    };
    for (prompt, answer) in dialogue {
        wait_for(&mut screen, prompt);
        stdin
            .write_all(format!("{answer}\n").as_bytes())
            .expect("type into the terminal");
    }
    while let Ok(chunk) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        screen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let status = child.wait().expect("wait for script");
    drop(stdin);
    (screen, status.success())
}

#[test]
fn login_prompts_on_a_terminal() {
    if !require_tool("script") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, &[("alice", "s3cret-pw")], 4);
    let toml = format!(
        "[auth]\nhtpasswd = \"{}\"\ntoken_key = \"{}\"\n",
        htpasswd.display(),
        dir.path().join("token-key.pem").display()
    );
    let server = Server::start_berth_with_config(dir.path(), &toml, true);
    let cli = BerthCli::new();
    let host = server.host();

    // A wrong password: refused in plain words, nothing stored.
    let (screen, ok) = converse(
        &cli.cmd(["login", &host]),
        &[("Username: ", "alice"), ("Password: ", "wrong-pw")],
    );
    assert!(!ok, "{screen}");
    assert!(!screen.contains("wrong-pw"), "password echoed:\n{screen}");
    assert!(
        screen.contains("refused the user name or password")
            && screen.contains("nothing was saved"),
        "{screen}"
    );
    assert!(!screen.contains("stored credentials"), "{screen}");
    assert!(
        !cli.config_json().exists()
            || !std::fs::read_to_string(cli.config_json())
                .unwrap_or_default()
                .contains(&host)
    );

    // The right one: no echo, docker's warning naming the file, the login stored.
    let (screen, ok) = converse(
        &cli.cmd(["login", &host]),
        &[("Username: ", "alice"), ("Password: ", "s3cret-pw")],
    );
    eprintln!("the terminal showed:\n{screen}");
    assert!(ok, "{screen}");
    assert!(!screen.contains("s3cret-pw"), "password echoed:\n{screen}");
    assert!(
        screen.contains("alice"),
        "the user name is echoed:\n{screen}"
    );
    assert!(screen.contains("Login Succeeded"), "{screen}");
    assert!(
        screen.contains("stored unencrypted")
            && screen.contains(&cli.config_json().display().to_string()),
        "{screen}"
    );
    let config = std::fs::read_to_string(cli.config_json()).expect("config.json written");
    assert!(config.contains(&host), "{config}");
    // The stored login works: a catalog-free check, the registry's tag list of a missing repo
    // is 404 NAME_UNKNOWN rather than 401.
    let out = run(cli.cmd(["ls", &format!("{host}/nothing-here")]), T);
    assert!(
        !out.stderr.contains("authentication required"),
        "{}",
        out.describe()
    );

    // No terminal: the message says how to log in from a script.
    let out = run_fail(cli.cmd(["login", &host]), T);
    assert!(out.stderr.contains("--password-stdin"), "{}", out.stderr);
}

#[test]
fn catalog_follows_every_page() {
    let server = Server::start();
    let cli = BerthCli::new();
    let host = server.host();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    let names = ["alpha", "beta", "gamma/one", "gamma/two", "zeta"];
    for name in names {
        run_ok(
            cli.cmd(["import", "-q"])
                .arg(&rootfs)
                .arg(format!("{host}/{name}:1")),
            T,
        );
    }
    // Two per page: three pages joined by `Link`.
    let listed = parse_json(
        &run_ok(cli.cmd(["catalog", &host, "--page-size", "2", "--json"]), T),
        "catalog --json",
    );
    assert_eq!(listed, serde_json::json!(names));
    // `berth ls HOST`: the same, one per line.
    let text = run_ok(cli.cmd(["ls", &host]), T);
    assert_eq!(text.lines().collect::<Vec<_>>(), names);
}

#[test]
fn serve_logs_every_request_and_warns_when_open() {
    let server = Server::start();
    let cli = BerthCli::new();
    let host = server.host();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    run_ok(
        cli.cmd(["import", "-q"])
            .arg(&rootfs)
            .arg(format!("{host}/logged/app:1")),
        T,
    );
    run_ok(cli.cmd(["pull", &format!("{host}/logged/app:1"), "-q"]), T);
    run_fail(
        cli.cmd(["inspect", &format!("{host}/logged/app:missing")]),
        T,
    );
    let log = server.log();
    let request_lines: Vec<&str> = log.lines().filter(|l| l.contains(" request ")).collect();
    // Reads and 404s are logged at the default level, with who and how much.
    let blob_read = request_lines
        .iter()
        .find(|l| l.contains("method=GET") && l.contains("route=blob") && l.contains("status=200"))
        .unwrap_or_else(|| panic!("no blob GET logged:\n{log}"));
    assert!(blob_read.contains("repository=logged/app"), "{blob_read}");
    assert!(blob_read.contains("client=127.0.0.1"), "{blob_read}");
    assert!(!blob_read.contains("bytes=0 "), "{blob_read}");
    assert!(
        request_lines
            .iter()
            .any(|l| l.contains("route=manifest") && l.contains("status=404")),
        "no 404 logged:\n{log}"
    );
    // The banner names the storage by its absolute path and the URL to push to.
    let banner = log
        .lines()
        .find(|l| l.contains("berth registry listening"))
        .unwrap_or_else(|| panic!("no banner:\n{log}"));
    assert!(banner.contains("storage=/"), "{banner}");
    assert!(banner.contains(&format!("http://{host}/v2/")), "{banner}");
    assert!(banner.contains("auth=off"), "{banner}");

    // `--addr :PORT` (docker's registry form) listens on every address, with a warning
    // when nobody has to log in.
    let storage = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["serve", "--addr", ":0", "--storage"])
        .arg(storage.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start berth serve");
    let mut stderr = child.stderr.take().expect("piped");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
            if text.contains("no logins") {
                break;
            }
        }
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(T).unwrap_or_default();
    let _ = child.kill(); // by its own handle, i.e. its PID
    let _ = child.wait();
    assert!(text.contains("addr=0.0.0.0:"), "{text}");
    assert!(
        text.contains("WARN") && text.contains("no logins") && text.contains("--htpasswd"),
        "{text}"
    );
}

/// Runs a command that must fail and checks its error names each of `hints`.
fn fails_saying(c: Command, hints: &[&str]) -> String {
    let out = run_fail(c, T);
    for hint in hints {
        assert!(
            out.stderr.contains(hint),
            "the error lacks {hint:?}:\n{}",
            out.describe()
        );
    }
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
    out.stderr
}

#[test]
fn mistakes_say_what_to_do() {
    let server = Server::start();
    let cli = BerthCli::new();
    let host = server.host();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    for tag in ["1", "2"] {
        run_ok(
            cli.cmd(["import", "-q", "--platform", "linux/amd64"])
                .arg(&rootfs)
                .arg(format!("{host}/app:{tag}")),
            T,
        );
    }

    // A missing tag: the tags the repository has.
    fails_saying(
        cli.cmd(["pull", &format!("{host}/app:3")]),
        &["has no tag \"3\"", "its tags: 1, 2"],
    );
    fails_saying(
        cli.cmd(["inspect", &format!("{host}/app:3")]),
        &["its tags: 1, 2"],
    );

    // `--platform` that a single-platform image was not made for: the one it has.
    fails_saying(
        cli.cmd([
            "pull",
            &format!("{host}/app:1"),
            "--platform",
            "linux/arm64",
        ]),
        &["not linux/arm64", "platforms available: linux/amd64"],
    );

    // A file or folder where an image is expected: the transport to write.
    let archive = rootfs.display().to_string();
    fails_saying(
        cli.cmd(["push", &archive, &format!("{host}/app:4")]),
        &[&format!("did you mean docker-archive:{archive}")],
    );
    let folder = cli.path("").display().to_string();
    let folder = folder.trim_end_matches('/').to_string();
    fails_saying(
        cli.cmd(["inspect", &folder]),
        &[&format!("did you mean oci:{folder}")],
    );

    // A local name nobody made: `berth images` is named.
    fails_saying(cli.cmd(["rmi", "never-built:1"]), &["berth images"]);

    // S3 with an explicit endpoint and no credentials: said at once, no metadata service.
    let mut serve = cli.cmd([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--storage",
        "s3://bucket/prefix",
        "--s3-endpoint",
        "http://127.0.0.1:9",
        "--s3-allow-http",
    ]);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_SKIP_SIGNATURE",
    ] {
        serve.env_remove(var);
    }
    let stderr = fails_saying(serve, &["no AWS credentials found", "AWS_ACCESS_KEY_ID"]);
    assert!(!stderr.contains("169.254.169.254"), "{stderr}");
    assert_eq!(
        stderr.matches("no AWS credentials found").count(),
        1,
        "{stderr}"
    );

    // `login` from a script without --password-stdin, `--password-stdin` without a user.
    fails_saying(cli.cmd(["login", &host]), &["--password-stdin"]);
    fails_saying(
        cli.cmd(["login", &host, "--password-stdin"]),
        &["--username"],
    );

    // An app file that is not there: the OS error once. A YAML error names the file, not
    // the parser's `<input>`.
    let inventory = cli.path("inventory.ini");
    std::fs::write(&inventory, "web1 ansible_host=127.0.0.1\n").unwrap();
    let missing = cli.path("missing.yml");
    let mut deploy = cli.cmd(["deploy", "-i"]);
    deploy.arg(&inventory).arg(&missing);
    let stderr = fails_saying(deploy, &["missing.yml: No such file or directory"]);
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
    let bad = cli.path("bad.yml");
    std::fs::write(&bad, "name: x\nservices:\n  web: [\n").unwrap();
    let mut deploy = cli.cmd(["deploy", "-i"]);
    deploy.arg(&inventory).arg(&bad);
    let stderr = fails_saying(deploy, &["bad.yml:3:8", "line 3 column 8"]);
    assert!(!stderr.contains("<input>"), "{stderr}");
}

#[test]
fn docker_and_skopeo_flags_work() {
    let server = Server::start();
    let cli = BerthCli::new();
    let host = server.host();
    let rootfs = cli.path("rootfs.tar");
    write_busybox_rootfs(&rootfs, false);
    for tag in ["1", "2"] {
        run_ok(
            cli.cmd(["import", "-q"])
                .arg(&rootfs)
                .arg(format!("{host}/app:{tag}")),
            T,
        );
    }
    // `pull -a`: every tag into the local store.
    run_ok(cli.cmd(["pull", "-a", &format!("{host}/app"), "-q"]), T);
    let listed = parse_json(&run_ok(cli.cmd(["images", "--json"]), T), "images");
    let names: Vec<&str> = listed
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&format!("{host}/app:1").as_str()),
        "{listed}"
    );
    assert!(
        names.contains(&format!("{host}/app:2").as_str()),
        "{listed}"
    );

    // `push --all-tags`: every local tag of a repository (retagged locally first).
    for tag in ["1", "2"] {
        run_ok(
            cli.cmd([
                "tag",
                &format!("local:{host}/app:{tag}"),
                &format!("{host}/copy:{tag}"),
                "-q",
            ]),
            T,
        );
    }
    run_ok(
        cli.cmd(["push", "--all-tags", &format!("{host}/copy"), "-q"]),
        T,
    );
    let tags = parse_json(
        &run_ok(cli.cmd(["ls", &format!("{host}/copy"), "--json"]), T),
        "ls",
    );
    assert_eq!(tags, serde_json::json!(["1", "2"]));

    // skopeo's per-side credentials are accepted (the registry has no logins: ignored).
    run_ok(
        cli.cmd([
            "copy",
            &format!("{host}/app:1"),
            &format!("{host}/creds:1"),
            "--src-creds",
            "a:b",
            "--dest-creds",
            "c:d",
            "-q",
        ]),
        T,
    );
}

#[test]
fn help_and_flags_say_what_they_do() {
    let cli = BerthCli::new();
    // login's help: only the flags login uses, -u described, an example.
    let help = run_ok(cli.cmd(["login", "--help"]), T);
    for dead in ["--creds", "--store", "--json", "--quiet"] {
        assert!(!help.contains(dead), "login --help lists {dead}:\n{help}");
    }
    assert!(
        help.contains("-u, --username <USERNAME>  User name"),
        "{help}"
    );
    assert!(help.contains("Examples:"), "{help}");
    // Every image subcommand shows examples.
    for sub in ["push", "pull", "tag", "images", "catalog", "build", "serve"] {
        let help = run_ok(cli.cmd([sub, "--help"]), T);
        assert!(
            help.contains("Examples:\n  berth "),
            "{sub} --help:\n{help}"
        );
    }
    // docker's flag names exist (clap used to suggest --all, which means all platforms).
    assert!(run_ok(cli.cmd(["pull", "--help"]), T).contains("-a, --all-tags"));
    assert!(run_ok(cli.cmd(["push", "--help"]), T).contains("--all-tags"));
    // `--connect-timeout 5` is seconds, as its help says: parsing passes, the missing
    // inventory is what fails.
    let out = run_fail(
        cli.cmd([
            "deploy",
            "-i",
            "/nonexistent/inventory.ini",
            "/nonexistent/app.yml",
            "--connect-timeout",
            "5",
        ]),
        T,
    );
    assert!(!out.stderr.contains("invalid value"), "{}", out.describe());
    // Completions for the three shells name the subcommands.
    for shell in ["bash", "zsh", "fish"] {
        let script = run_ok(cli.cmd(["completion", shell]), T);
        assert!(
            script.contains("images") && script.contains("catalog"),
            "{shell}"
        );
    }
}
