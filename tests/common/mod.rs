//! Shared helpers for Berth's end-to-end tests.
//!
//! * [`Server`] starts `berth serve` on a free 127.0.0.1 port with a private temporary storage
//!   directory and stops it by PID when dropped (also when the test panics). It can be
//!   restarted gracefully ([`Server::restart`]) or killed hard ([`Server::kill9`]) and started
//!   again on the same port and storage ([`Server::start_again`]).
//! * [`require_tool`] decides whether a test that needs an external tool (docker, skopeo, ...)
//!   runs: outside CI a missing tool skips the test, with `CI=true` it fails loudly.
//! * [`run`] / [`run_ok`] / [`run_fail`] run commands with captured output and a timeout.
//! * Small registry helpers (push a blob or manifest over HTTP, parse the spec's JSON errors)
//!   and a storage-tree snapshot used to prove that rejected requests changed nothing.
//!
//! Debug knob: `BERTH_TEST_SERVER=distribution` runs the same tests against Debian's
//! `docker-registry` (distribution 2.8) instead of Berth, to tell client problems from server
//! problems.

#![allow(dead_code)]

use std::borrow::BorrowMut;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long a freshly started server may take to answer `GET /v2/` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

mod build;
mod ci;
mod deploy;
#[allow(unused_imports)]
pub use build::*;
/// True when running in CI (`CI=true` or `CI=1`): missing tools are then hard failures.
/// Defined in `ci.rs`, which the client's and builder's tests share.
pub use ci::in_ci;
#[allow(unused_imports)]
pub use deploy::*;

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

/// An s3s-fs server with one empty bucket, or None (skip) when s3s-fs is not installed
/// outside CI; with `CI=true` a missing s3s-fs fails the test.
pub fn s3_server(bucket: &str) -> Option<berth_storage::s3_test_server::S3TestServer> {
    match berth_storage::s3_test_server::S3TestServer::start(bucket) {
        Ok(Some(server)) => Some(server),
        Ok(None) => {
            require_tool("s3s-fs");
            None
        }
        Err(e) => panic!("cannot start s3s-fs: {e}"),
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

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Captured result of a finished command.
#[derive(Debug)]
pub struct CmdOutput {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOutput {
    pub fn describe(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--------------",
            self.command,
            self.status,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs a command with stdin closed and stdout/stderr captured. Panics when it does not finish
/// within `timeout` (after killing it by PID) or cannot be started at all.
pub fn run(cmd: impl BorrowMut<Command>, timeout: Duration) -> CmdOutput {
    run_with_input(cmd, None, timeout)
}

/// Like [`run`], with `input` written to the command's stdin (then closed) when given.
pub fn run_with_input(
    mut cmd: impl BorrowMut<Command>,
    input: Option<&[u8]>,
    timeout: Duration,
) -> CmdOutput {
    let cmd = cmd.borrow_mut();
    let command = format!("{cmd:?}");
    eprintln!("+ {command}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        let input = input.to_vec();
        // A writer thread, so a command that does not read its stdin cannot block us.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
    }
    let mut out_pipe = child.stdout.take().expect("stdout was piped");
    let mut err_pipe = child.stderr.take().expect("stderr was piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out_pipe.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err_pipe.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "timed out after {timeout:?}, killed pid {}: {command}",
                    child.id()
                );
            }
            Err(e) => panic!("waiting for {command}: {e}"),
        }
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    CmdOutput {
        command,
        status,
        stdout,
        stderr,
    }
}

/// Runs a command that must succeed; returns its stdout. Panics with all output otherwise.
pub fn run_ok(cmd: impl BorrowMut<Command>, timeout: Duration) -> String {
    let out = run(cmd, timeout);
    if !out.status.success() {
        panic!(
            "command failed but was expected to succeed\n{}",
            out.describe()
        );
    }
    out.stdout
}

/// Runs a command that must fail; returns its output. Panics if it succeeds.
pub fn run_fail(cmd: impl BorrowMut<Command>, timeout: Duration) -> CmdOutput {
    let out = run(cmd, timeout);
    if out.status.success() {
        panic!(
            "command succeeded but was expected to fail\n{}",
            out.describe()
        );
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The berth registry client (push, pull, copy, ...)
// ---------------------------------------------------------------------------------------------

/// A private environment for `berth` client commands: its own local image store
/// (`BERTH_STORE`), credentials folder (`DOCKER_CONFIG`) and `HOME`, all inside a temporary
/// directory, so the tests never read or write the real user's files. Scratch files of a test
/// go in [`BerthCli::path`].
pub struct BerthCli {
    dir: tempfile::TempDir,
}

impl BerthCli {
    pub fn new() -> BerthCli {
        let dir = tempfile::Builder::new()
            .prefix("berth-cli-")
            .tempdir()
            .expect("create temporary directory for the client");
        for sub in ["store", "docker-config", "home", "work"] {
            fs::create_dir_all(dir.path().join(sub)).expect("create client directory");
        }
        BerthCli { dir }
    }

    /// The local image store (`BERTH_STORE`).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The credentials folder (`DOCKER_CONFIG`, shared with the docker CLI).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config")
    }

    /// `DOCKER_CONFIG/config.json`
    pub fn config_json(&self) -> PathBuf {
        self.docker_config().join("config.json")
    }

    /// A scratch path for this test (nothing is created).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("work").join(name)
    }

    /// `berth ARGS` with this environment. Proxy variables are removed: all traffic is to
    /// 127.0.0.1.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
        c.args(args);
        self.apply_env(&mut c);
        c
    }

    /// `docker --config DOCKER_CONFIG ARGS`: the docker CLI sharing this credentials folder.
    pub fn docker<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new("docker");
        c.arg("--config").arg(self.docker_config()).args(args);
        self.apply_env(&mut c);
        c
    }

    fn apply_env(&self, c: &mut Command) {
        c.env("BERTH_STORE", self.store())
            .env("DOCKER_CONFIG", self.docker_config())
            .env("HOME", self.dir.path().join("home"))
            .env("NO_PROXY", "127.0.0.1,localhost")
            .env("no_proxy", "127.0.0.1,localhost");
        for var in [
            "BERTH_CREDS",
            "BERTH_INSECURE_REGISTRIES",
            "XDG_DATA_HOME",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            c.env_remove(var);
        }
    }
}

/// Removes docker images a test pulled or loaded (through `cli`'s docker), also when it panics.
pub struct DockerImages<'a> {
    pub cli: &'a BerthCli,
    pub images: Vec<String>,
}

impl Drop for DockerImages<'_> {
    fn drop(&mut self) {
        for image in self.images.iter().rev() {
            let _ = run(
                self.cli.docker(["rmi", "-f", image]),
                Duration::from_secs(300),
            );
        }
    }
}

impl Default for BerthCli {
    fn default() -> Self {
        BerthCli::new()
    }
}

/// The static busybox of Debian's `busybox-static`.
pub fn busybox_path() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .or_else(|| which("busybox"))
        .expect("busybox (Debian package busybox-static) is required")
}

/// Writes a root filesystem tarball made with the `tar` crate: `bin/busybox` (the static
/// busybox, 0755), `bin/sh` -> `busybox` (symlink), `bin/echo` (hard link to `bin/busybox`),
/// `etc/passwd` (root only) and `tmp/` (1777). Gzip-compressed when `gzip`.
pub fn write_busybox_rootfs(path: &Path, gzip: bool) {
    let file = fs::File::create(path).expect("create rootfs tarball");
    let writer: Box<dyn Write> = if gzip {
        Box::new(flate2::write::GzEncoder::new(
            file,
            flate2::Compression::fast(),
        ))
    } else {
        Box::new(file)
    };
    let mut tar = tar::Builder::new(writer);
    let dir = |tar: &mut tar::Builder<Box<dyn Write>>, name: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        tar.append_data(&mut h, name, std::io::empty())
            .expect("append directory");
    };
    dir(&mut tar, "bin/", 0o755);
    dir(&mut tar, "etc/", 0o755);
    dir(&mut tar, "tmp/", 0o1777);
    let busybox = fs::read(busybox_path()).expect("read busybox");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    h.set_mtime(1_700_000_000);
    tar.append_data(&mut h, "bin/busybox", &busybox[..])
        .expect("append busybox");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    tar.append_link(&mut h, "bin/sh", "busybox")
        .expect("append bin/sh symlink");
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(1_700_000_000);
    tar.append_link(&mut h, "bin/echo", "bin/busybox")
        .expect("append bin/echo hard link");
    let passwd = b"root:x:0:0:root:/root:/bin/sh\n";
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(passwd.len() as u64);
    h.set_mtime(1_700_000_000);
    tar.append_data(&mut h, "etc/passwd", &passwd[..])
        .expect("append etc/passwd");
    let mut writer = tar.into_inner().expect("finish rootfs tarball");
    writer.flush().expect("flush rootfs tarball");
    // Dropping the GzEncoder writes the gzip trailer.
    drop(writer);
}

/// Parses a command's stdout as exactly one JSON document (surrounding whitespace allowed).
pub fn parse_json(stdout: &str, what: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON document ({e}):\n{stdout}"))
}

/// `sha256:<hex>` of a file, read in 1 MiB pieces.
pub fn file_digest(path: &Path) -> String {
    let mut file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(hasher.finalize()))
}

/// Shorthand: a `Command` for `program` with `args`.
pub fn cmd<I, S>(program: &str, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new(program);
    c.args(args);
    c
}

// ---------------------------------------------------------------------------------------------
// Server under test
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    /// `berth serve` (the default).
    Berth,
    /// Debian's `docker-registry` (distribution 2.8), selected by
    /// `BERTH_TEST_SERVER=distribution`: a reference to debug the tests themselves.
    Distribution,
}

impl ServerKind {
    pub fn from_env() -> ServerKind {
        match std::env::var("BERTH_TEST_SERVER").as_deref() {
            Ok("distribution") | Ok("docker-registry") => ServerKind::Distribution,
            _ => ServerKind::Berth,
        }
    }
}

/// A running registry on 127.0.0.1 with its own temporary storage. Dropping it kills the
/// process by PID (SIGKILL) and removes the storage; if the test is panicking the tail of the
/// server log is printed first.
pub struct Server {
    pub kind: ServerKind,
    /// The address it listens on: 127.0.0.1 unless started with [`Server::start_berth_on`].
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
    child: Option<Child>,
    /// Holds everything: `root/` (sandbox around the storage) and `logs/`.
    tmp: tempfile::TempDir,
    storage: PathBuf,
    log_path: PathBuf,
    starts: u32,
    /// Distribution only: an htpasswd file (bcrypt) that turns on Basic auth.
    htpasswd: Option<PathBuf>,
    /// Distribution only: certificate and key (PEM) that turn on HTTPS.
    tls: Option<(PathBuf, PathBuf)>,
    /// `--storage s3://...` and the flags that go with it, instead of the folder.
    s3_args: Option<Vec<String>>,
    /// Extra environment for the server process.
    envs: Vec<(String, String)>,
    /// Berth only: extra `berth serve` flags (auth, TLS, limits).
    extra_args: Vec<String>,
    /// The server answers `GET /v2/` with 401 (auth on): that means it is up.
    expects_auth: bool,
    /// Berth only: the server speaks HTTPS, so a TCP connect means it is up.
    berth_tls: bool,
    /// Soft and hard RLIMIT_NOFILE of the server process, when set.
    fd_limit: Option<u64>,
}

impl Server {
    /// Starts the server kind chosen by `BERTH_TEST_SERVER` (Berth by default).
    pub fn start() -> Server {
        Server::start_kind(ServerKind::from_env())
    }

    /// Starts `berth serve --storage s3://BUCKET/PREFIX` on the given s3s-fs, with
    /// `extra` flags (e.g. `--redirect-blobs`).
    pub fn start_s3(
        s3: &berth_storage::s3_test_server::S3TestServer,
        prefix: &str,
        extra: &[&str],
    ) -> Server {
        let mut server = Server::prepare(ServerKind::Berth);
        let mut args = vec![
            "--storage".to_string(),
            format!("s3://{}/{prefix}", s3.bucket),
            "--s3-endpoint".to_string(),
            s3.endpoint(),
            "--s3-region".to_string(),
            berth_storage::s3_test_server::REGION.to_string(),
            "--s3-allow-http".to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        server.s3_args = Some(args);
        server.envs = vec![
            (
                "AWS_ACCESS_KEY_ID".to_string(),
                berth_storage::s3_test_server::ACCESS_KEY.to_string(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                berth_storage::s3_test_server::SECRET_KEY.to_string(),
            ),
        ];
        server.start_again();
        server
    }

    /// `berth serve` with extra flags. `auth`: it answers `GET /v2/` with 401;
    /// `tls`: it speaks HTTPS.
    pub fn start_berth_with(extra: &[String], auth: bool, tls: bool) -> Server {
        let mut server = Server::prepare(ServerKind::Berth);
        server.extra_args = extra.to_vec();
        server.expects_auth = auth;
        server.berth_tls = tls;
        server.start_again();
        server
    }

    /// `berth serve` with extra flags, started with an open-file limit of `fd_limit` (soft and
    /// hard, so the server cannot raise it).
    pub fn start_berth_with_fd_limit(extra: &[String], fd_limit: u64) -> Server {
        let mut server = Server::prepare(ServerKind::Berth);
        server.extra_args = extra.to_vec();
        server.fd_limit = Some(fd_limit);
        server.start_again();
        server
    }

    /// `berth serve` listening on `ip` (an address of this machine other than 127.0.0.1, e.g.
    /// the bridge that test hosts in network namespaces reach it on), with extra flags.
    pub fn start_berth_on(ip: std::net::Ipv4Addr, extra: &[String]) -> Server {
        let mut server = Server::prepare(ServerKind::Berth);
        server.ip = ip;
        server.extra_args = extra.to_vec();
        server.start_again();
        server
    }

    /// A folder for this server's test files (configs, keys), removed with it.
    pub fn files_dir(&self) -> PathBuf {
        self.tmp.path().join("logs")
    }

    pub fn start_kind(kind: ServerKind) -> Server {
        let mut server = Server::prepare(kind);
        server.start_again();
        server
    }

    /// `berth serve --config DIR/berth.toml` with `toml` written there (paths inside it are
    /// the caller's); `auth`: logins are on, so `GET /v2/` answers 401.
    pub fn start_berth_with_config(dir: &Path, toml: &str, auth: bool) -> Server {
        let config = dir.join("berth.toml");
        fs::write(&config, toml).expect("write berth.toml");
        Server::start_berth_with(
            &["--config".to_string(), config.display().to_string()],
            auth,
            false,
        )
    }

    /// Debian's `docker-registry` with Basic auth: an htpasswd file (bcrypt, as `htpasswd -B`
    /// writes it) with these `(user, password)` pairs. `GET /v2/` answers 401 without
    /// credentials, which the readiness check accepts.
    pub fn start_distribution_htpasswd(users: &[(&str, &str)]) -> Server {
        let mut server = Server::prepare(ServerKind::Distribution);
        let path = server.tmp.path().join("logs").join("htpasswd");
        // Cost 4 (the minimum) keeps each request's check fast; the format is the same.
        write_htpasswd(&path, users, 4);
        server.htpasswd = Some(path);
        server.start_again();
        server
    }

    /// Debian's `docker-registry` serving HTTPS only, with this certificate and key (PEM).
    pub fn start_distribution_tls(certificate: &Path, key: &Path) -> Server {
        let mut server = Server::prepare(ServerKind::Distribution);
        server.tls = Some((certificate.to_path_buf(), key.to_path_buf()));
        server.start_again();
        server
    }

    /// A server that is set up (port, storage, log) but not started yet.
    fn prepare(kind: ServerKind) -> Server {
        let tmp = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .expect("create temporary directory for the server");
        // The storage sits two levels below `root/` so that a path traversal of a few `..`
        // still lands inside `root/`, which the bad-input tests snapshot as a whole.
        let storage = tmp.path().join("root").join("data").join("storage");
        fs::create_dir_all(&storage).expect("create storage directory");
        let logs = tmp.path().join("logs");
        fs::create_dir_all(&logs).expect("create log directory");
        Server {
            kind,
            ip: std::net::Ipv4Addr::LOCALHOST,
            port: free_port(),
            child: None,
            tmp,
            storage,
            log_path: logs.join("server.log"),
            starts: 0,
            htpasswd: None,
            tls: None,
            s3_args: None,
            envs: Vec::new(),
            extra_args: Vec::new(),
            expects_auth: false,
            berth_tls: false,
            fd_limit: None,
        }
    }

    /// `IP:PORT` (127.0.0.1 unless started with [`Server::start_berth_on`]), as docker and
    /// skopeo want it.
    pub fn host(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `http://IP:PORT`
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    /// The storage directory given to the server.
    pub fn storage(&self) -> &Path {
        &self.storage
    }

    /// A directory that contains the storage two levels down, and nothing else the server
    /// should write to: anything new in here outside the storage is a stray file.
    pub fn sandbox(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Everything the server printed so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Starts the server (again) on the same port and storage and waits until it is ready.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "server is already running (pid {:?})",
            self.pid()
        );
        self.starts += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server log");
        let mut log_for_header = log.try_clone().expect("clone log handle");
        let _ = writeln!(
            log_for_header,
            "===== test harness: start #{} of {:?} on {} =====",
            self.starts,
            self.kind,
            self.host()
        );
        let mut command = match self.kind {
            ServerKind::Berth => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_berth"));
                c.arg("serve").arg("--addr").arg(self.host());
                match &self.s3_args {
                    Some(args) => c.args(args),
                    None => c.arg("--storage").arg(&self.storage),
                };
                c.args(&self.extra_args);
                c.envs(self.envs.iter().map(|(k, v)| (k, v)));
                c
            }
            ServerKind::Distribution => {
                let config = self.tmp.path().join("logs").join("distribution.yml");
                let auth = match &self.htpasswd {
                    Some(path) => format!(
                        "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                        path.display()
                    ),
                    None => String::new(),
                };
                let tls = match &self.tls {
                    Some((cert, key)) => format!(
                        "  tls:\n    certificate: {}\n    key: {}\n",
                        cert.display(),
                        key.display()
                    ),
                    None => String::new(),
                };
                fs::write(
                    &config,
                    format!(
                        "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    \
                         rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n  \
                         secret: berth-test-secret\n{tls}{auth}",
                        self.storage.display(),
                        self.host()
                    ),
                )
                .expect("write docker-registry config");
                let mut c = Command::new("docker-registry");
                c.arg("serve").arg(config).env_remove("AWS_CA_BUNDLE");
                c
            }
        };
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let fd_limit = self.fd_limit;
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGKILL the server
        // if the thread that started it dies (e.g. the test binary is killed), so no server
        // outlives the tests even when Drop cannot run. setrlimit is async-signal-safe too.
        unsafe {
            command.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                if let Some(n) = fd_limit {
                    let limit = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?} server: {e}", self.kind));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "{:?} server exited during startup with {status}\n--- server log ---\n{}",
                        self.kind,
                        tail(&self.log(), 80)
                    );
                }
            }
            if self.berth_tls
                && TcpStream::connect((self.ip, self.port)).is_ok()
                && self.child.is_some()
            {
                return;
            }
            match raw_status_at(self.ip, self.port, "GET", "/v2/") {
                Some(200) => return,
                // With auth on, an anonymous `GET /v2/` is refused: the server is up.
                Some(401) if self.htpasswd.is_some() || self.expects_auth => return,
                // Plain HTTP to an HTTPS-only Go server: "400 Client sent an HTTP
                // request to an HTTPS server" — it is up.
                Some(400) if self.tls.is_some() => return,
                _ => {}
            }
            if Instant::now() > deadline {
                let pid = self.pid();
                self.kill9();
                panic!(
                    "{:?} server (pid {pid:?}) did not answer GET /v2/ with 200 (or 401) within \
                     {READY_TIMEOUT:?}\n--- server log ---\n{}",
                    self.kind,
                    tail(&self.log(), 80)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server gracefully: SIGTERM to its PID, then waits. A Berth server that does
    /// not exit within the timeout, or dies from the signal instead of handling it, fails the
    /// test.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // SAFETY: plain kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "server pid {pid} did not exit within {STOP_TIMEOUT:?} after SIGTERM\n\
                         --- server log ---\n{}",
                        tail(&self.log(), 80)
                    );
                }
            }
        };
        if self.kind == ServerKind::Berth {
            assert!(
                status.code().is_some(),
                "berth serve (pid {pid}) was terminated by the signal instead of shutting down \
                 gracefully on SIGTERM: {status}\n--- server log ---\n{}",
                tail(&self.log(), 80)
            );
        }
    }

    /// Graceful stop, then start again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// SIGKILL by PID and reap. The server is down afterwards; call [`Server::start_again`].
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            // A process stuck in the kernel (state D) cannot be reaped; say so instead of
            // hanging the test run.
            let deadline = Instant::now() + Duration::from_secs(60);
            while !matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                if Instant::now() > deadline {
                    let status = fs::read_to_string(format!("/proc/{}/status", child.id()))
                        .unwrap_or_default();
                    let state = status.lines().find(|l| l.starts_with("State:"));
                    panic!(
                        "server pid {} did not die within 60 s of SIGKILL ({state:?})",
                        child.id()
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let pid = self.pid();
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- log of {:?} server (pid {pid:?}, port {}, storage {}) ---\n{}\n--- end of \
                 server log ---",
                self.kind,
                self.port,
                self.storage.display(),
                tail(&self.log(), 120)
            );
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free port outside the kernel's ephemeral range (see the function for why).
pub use berth_storage::s3_test_server::free_port;

/// One HTTP/1.1 request over a raw socket; returns the status code or None if the server does
/// not answer. Used for readiness checks (sync, no runtime needed).
pub fn raw_status(port: u16, method: &str, path: &str) -> Option<u16> {
    raw_status_at(std::net::Ipv4Addr::LOCALHOST, port, method, path)
}

/// [`raw_status`] to `ip:port`.
pub fn raw_status_at(ip: std::net::Ipv4Addr, port: u16, method: &str, path: &str) -> Option<u16> {
    let response = raw_request_at(
        std::net::SocketAddr::from((ip, port)),
        format!("{method} {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
        Duration::from_secs(2),
    )?;
    response.status
}

/// A parsed raw HTTP response.
#[derive(Debug, Default)]
pub struct RawResponse {
    pub status: Option<u16>,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends `request` as is (the caller writes `Connection: close`) and reads until the server
/// closes or `timeout` passes. None if the connection failed or nothing came back.
pub fn raw_request(port: u16, request: &[u8], timeout: Duration) -> Option<RawResponse> {
    raw_request_at(
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        request,
        timeout,
    )
}

/// [`raw_request`] to any address (a test's own namespace hosts, or its bridge).
pub fn raw_request_at(
    addr: std::net::SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> Option<RawResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(request).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    parse_raw_response(&buf)
}

pub fn parse_raw_response(buf: &[u8]) -> Option<RawResponse> {
    if buf.is_empty() {
        return None;
    }
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let body = buf.get(split + 4..).unwrap_or_default().to_vec();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let mut response = RawResponse { status, head, body };
    if response
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        response.body = dechunk(&response.body);
    }
    Some(response)
}

/// Decodes a `Transfer-Encoding: chunked` body (best effort: stops at the first malformed or
/// truncated chunk).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            break;
        };
        raw = &raw[eol + 2..];
        if size == 0 || raw.len() < size {
            out.extend_from_slice(&raw[..size.min(raw.len())]);
            break;
        }
        out.extend_from_slice(&raw[..size]);
        raw = raw.get(size + 2..).unwrap_or_default();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Registry helpers (HTTP)
// ---------------------------------------------------------------------------------------------

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// An HTTP client that never uses a proxy (all traffic goes to 127.0.0.1) and keeps no idle
/// connections, so it survives server restarts between requests.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        // No request in these tests takes long; one that hangs must fail the test, not CI.
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("build reqwest client")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// `sha256:<hex>` of `data`.
pub fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Turns a Location header (absolute or relative) into an absolute URL.
pub fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if location.starts_with('/') {
        format!("{}{location}", base.trim_end_matches('/'))
    } else {
        panic!("unexpected relative Location without leading slash: {location:?}")
    }
}

/// Appends a query parameter to an upload URL that may already carry a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

pub fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Uploads `data` as a blob of `repo` with POST + PUT (two-step monolithic upload) and
/// returns its digest. Panics unless the registry answers 202 and then 201.
pub async fn push_blob(c: &reqwest::Client, base: &str, repo: &str, data: &[u8]) -> String {
    let digest = digest_of(data);
    let resp = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .expect("POST blob upload");
    assert_eq!(
        resp.status().as_u16(),
        202,
        "POST /v2/{repo}/blobs/uploads/"
    );
    let location = header(&resp, "location").expect("upload Location header");
    let resp = c
        .put(with_query(&absolute(base, &location), "digest", &digest))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("PUT blob upload");
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "PUT upload of {digest} to {repo}: {body}");
    digest
}

/// PUTs a manifest and returns its digest (sha256 of the exact bytes). Panics unless 201.
pub async fn push_manifest(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let resp = c
        .put(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("content-type", media_type)
        .body(body.to_vec())
        .send()
        .await
        .expect("PUT manifest");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "PUT /v2/{repo}/manifests/{reference}: {text}");
    digest_of(body)
}

/// A tiny but complete OCI image: (config bytes, layer bytes, manifest bytes).
pub fn tiny_image(seed: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let layer = format!("layer content for {seed}\n").into_bytes();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(&layer)]},
        "history": [{"created_by": seed}]
    }))
    .expect("serialize config");
    let manifest = manifest_json(&config, &[&layer], None);
    (config, layer, manifest)
}

/// An OCI image manifest for `config` and `layers`, with optional annotations.
pub fn manifest_json(
    config: &[u8],
    layers: &[&[u8]],
    annotations: Option<serde_json::Value>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": OCI_LAYER, "digest": digest_of(l), "size": l.len()
        })).collect::<Vec<_>>(),
    });
    if let Some(a) = annotations {
        m["annotations"] = a;
    }
    serde_json::to_vec(&m).expect("serialize manifest")
}

/// Pushes [`tiny_image`] to `repo:tag`; returns (manifest digest, layer digest, config digest).
pub async fn push_tiny_image(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    tag: &str,
) -> (String, String, String) {
    let (config, layer, manifest) = tiny_image(&format!("{repo}:{tag}"));
    let layer_digest = push_blob(c, base, repo, &layer).await;
    let config_digest = push_blob(c, base, repo, &config).await;
    let manifest_digest = push_manifest(c, base, repo, tag, OCI_MANIFEST, &manifest).await;
    (manifest_digest, layer_digest, config_digest)
}

/// The `code`s of a spec error body `{"errors":[{"code":..}]}`, or None if the body is not
/// such a document.
pub fn error_codes(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let errors = v.get("errors")?.as_array()?;
    errors
        .iter()
        .map(|e| e.get("code").and_then(|c| c.as_str()).map(str::to_string))
        .collect()
}

/// GET a JSON document; returns (status, parsed body or Null).
/// After clients raced to push `latest`: the tag serves exactly one of the `pushed`
/// manifests, with bytes matching its digest. Returns that digest.
pub async fn assert_latest_is_one_of(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    pushed: &[String],
) -> String {
    let resp = c
        .get(format!("{base}/v2/{repo}/manifests/latest"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .expect("GET latest");
    assert_eq!(resp.status().as_u16(), 200);
    let digest = header(&resp, "docker-content-digest").expect("digest header");
    let body = resp.bytes().await.expect("body");
    assert_eq!(
        digest_of(&body),
        digest,
        "tag serves bytes that do not match its digest"
    );
    assert!(
        pushed.contains(&digest),
        "tag points at {digest}, which nobody pushed"
    );
    digest
}

/// An htpasswd file as `htpasswd -B -C COST` writes it, with these `(user, password)` pairs.
pub fn write_htpasswd(path: &Path, accounts: &[(&str, &str)], cost: u32) {
    let mut text = String::new();
    for (user, password) in accounts {
        let hash = bcrypt::hash_with_result(password, cost)
            .expect("bcrypt hash")
            .format_for_version(bcrypt::Version::TwoY);
        text.push_str(&format!("{user}:{hash}\n"));
    }
    fs::write(path, text).expect("write htpasswd");
}

/// GETs a blob of `repo` and checks that it is served (200) with bytes that hash to `digest`;
/// `why` says what the test expected, for the failure message.
pub async fn assert_blob_served(
    c: &reqwest::Client,
    base: &str,
    repo: &str,
    digest: &str,
    why: &str,
) {
    let resp = c
        .get(format!("{base}/v2/{repo}/blobs/{digest}"))
        .send()
        .await
        .expect("GET blob");
    assert_eq!(resp.status().as_u16(), 200, "{repo} {digest}: {why}");
    let body = resp.bytes().await.expect("blob body");
    assert_eq!(
        digest_of(&body),
        digest,
        "{repo} {digest} serves other bytes: {why}"
    );
}

pub async fn get_json(c: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let resp = c
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

// ---------------------------------------------------------------------------------------------
// Storage snapshots
// ---------------------------------------------------------------------------------------------

/// Path -> description ("dir", "link -> target", "file <size> <sha256>") of a directory tree.
pub type Snapshot = BTreeMap<String, String>;

/// True for paths inside a server's scratch area, which may legitimately change when a request
/// is rejected: Berth's `uploads/` and `tmp/` at the top of its storage directory, and
/// distribution's per-repository `_uploads/`. `rel` is relative to the snapshot root, which
/// may be the storage directory or a directory above it.
pub fn is_scratch(rel: &str) -> bool {
    let components: Vec<&str> = rel.split('/').collect();
    if components.contains(&"_uploads") {
        return true;
    }
    // The storage directory is `.../storage` (see `Server`); look below it, or at the top if
    // the snapshot root is the storage directory itself.
    let below_storage = match components.iter().position(|c| *c == "storage") {
        Some(i) => &components[i + 1..],
        None => &components[..],
    };
    matches!(below_storage.first(), Some(&"uploads") | Some(&"tmp"))
}

/// Records every entry below `root` except scratch paths.
pub fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("walked path is below root")
                .to_string_lossy()
                .into_owned();
            if is_scratch(&rel) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap_or_default();
                out.insert(rel, format!("link -> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".to_string());
                walk(root, &path, out);
            } else {
                let content = fs::read(&path).unwrap_or_default();
                out.insert(rel, format!("file {} {}", meta.len(), sha256_hex(&content)));
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// Panics with a readable diff if the two snapshots differ.
pub fn assert_same_tree(before: &Snapshot, after: &Snapshot, context: &str) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push_str(&format!("  removed: {k} ({v})\n")),
            Some(w) if w != v => diff.push_str(&format!("  changed: {k}: {v} -> {w}\n")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diff.push_str(&format!("  added:   {k} ({v})\n"));
        }
    }
    panic!("{context}: the storage tree changed outside the upload/temporary area:\n{diff}");
}

// ---------------------------------------------------------------------------------------------
// Test certificates (openssl)

/// A test CA in `dir`: returns (certificate, key), PEM.
pub fn make_test_ca(dir: &Path) -> (PathBuf, PathBuf) {
    let (ca, key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let p = |p: &Path| p.display().to_string();
    run_ok(
        cmd(
            "openssl",
            [
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=berth test CA",
            ]
            .map(String::from)
            .into_iter()
            .chain(["-keyout".into(), p(&key), "-out".into(), p(&ca)]),
        ),
        Duration::from_secs(120),
    );
    (ca, key)
}

/// A certificate named `name` signed by the CA: for the server 127.0.0.1
/// (`client == false`) or for a TLS client. Returns (certificate, key), PEM.
pub fn make_test_cert(
    dir: &Path,
    (ca, ca_key): (&Path, &Path),
    name: &str,
    client: bool,
) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let cert = dir.join(format!("{name}.pem"));
    let ext = dir.join(format!("{name}.ext"));
    let usage = if client {
        "extendedKeyUsage = clientAuth\n"
    } else {
        "subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\n"
    };
    fs::write(
        &ext,
        format!(
            "basicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\n{usage}"
        ),
    )
    .expect("write ext file");
    let p = |p: &Path| p.display().to_string();
    let subject = if client {
        format!("/CN={name}")
    } else {
        "/CN=127.0.0.1".to_string()
    };
    run_ok(
        cmd(
            "openssl",
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj"]
                .map(String::from)
                .into_iter()
                .chain([subject, "-keyout".into(), p(&key), "-out".into(), p(&csr)]),
        ),
        Duration::from_secs(120),
    );
    run_ok(
        cmd(
            "openssl",
            [
                "x509".to_string(),
                "-req".into(),
                "-in".into(),
                p(&csr),
                "-CA".into(),
                p(ca),
                "-CAkey".into(),
                p(ca_key),
                "-set_serial".into(),
                format!(
                    "{}",
                    std::process::id() as u64 * 1000
                        + COUNTER_CERTS.fetch_add(1, Ordering::Relaxed) as u64
                ),
                "-days".into(),
                "2".into(),
                "-extfile".into(),
                p(&ext),
                "-out".into(),
                p(&cert),
            ],
        ),
        Duration::from_secs(120),
    );
    (cert, key)
}

static COUNTER_CERTS: AtomicU32 = AtomicU32::new(1);

// ---------------------------------------------------------------------------------------------
// Real Docker hosts in network namespaces (scripts/docker-hosts.sh)
// ---------------------------------------------------------------------------------------------

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
