//! The registry under test: [`Server`] starts `berth serve` (or, for debugging the tests,
//! Debian's `docker-registry`) on a free port with private storage, restarts or kills it, and
//! stops it by PID when dropped.
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{raw_status_at, write_htpasswd};

/// How long a freshly started server may take to answer `GET /v2/` with 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

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

    /// A second `berth serve` on the storage folder of `other` (two replicas sharing one
    /// disk), with its own port and log; dropping it leaves `other`'s storage alone.
    pub fn start_berth_sharing(other: &Server) -> Server {
        let mut server = Server::prepare(ServerKind::Berth);
        server.s3_args = Some(vec![
            "--storage".to_string(),
            other.storage.display().to_string(),
        ]);
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

pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A free port outside the kernel's ephemeral range (see the function for why).
pub use berth_storage::s3_test_server::free_port;

/// `berth serve --config` with `toml` as the config file must refuse to start: its stderr.
pub fn serve_refuses(toml: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("berth.toml");
    fs::write(&config, toml).expect("write config");
    let out = super::run_fail(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--addr", "127.0.0.1:0", "--storage"])
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config),
        Duration::from_secs(30),
    );
    out.stderr
}

/// `promtool check metrics` on `text` (lint included): must pass.
pub fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("promtool stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
