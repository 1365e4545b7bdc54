//! `ssh://[USER@]HOST[:PORT]` Docker endpoints: the Engine API tunnelled over one SSH
//! connection, with nothing but Docker (and sshd) on the host.
//!
//! How: one OpenSSH master connection (`ControlMaster`) per host; a private unix socket in
//! a fresh temporary directory; every API connection bollard opens on that socket becomes a
//! `docker system dial-stdio` session multiplexed over the master, as the docker CLI does for
//! its own `ssh://` hosts. So authentication happens once, known_hosts, agents, jump hosts
//! and `~/.ssh/config` all work as the user's `ssh` does, and the remote side needs no open
//! TCP port and no socket-forwarding permission.
//!
//! The system `ssh` client is used instead of an SSH library on purpose: it is what operators
//! already configure and trust (keys, agents, certificates, ProxyJump), and it keeps a second
//! crypto stack out of the binary.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Where and how to reach a host over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    /// `-i FILE` (Ansible's `ansible_ssh_private_key_file`).
    pub identity_file: Option<PathBuf>,
    /// Extra `ssh` arguments (Ansible's `ansible_ssh_common_args` and `ansible_ssh_extra_args`).
    pub options: Vec<String>,
}

impl SshTarget {
    fn destination(&self) -> String {
        match &self.user {
            Some(user) => format!("{user}@{}", self.host),
            None => self.host.clone(),
        }
    }

    fn shown(&self) -> String {
        match self.port {
            Some(port) => format!("ssh://{}:{port}", self.destination()),
            None => format!("ssh://{}", self.destination()),
        }
    }

    /// `ssh` with the control socket, this target's options and `flags`, ending in the
    /// destination (a remote command, if any, goes after it).
    fn command(
        &self,
        control: &Path,
        master: bool,
        connect_timeout: Duration,
        flags: &[&str],
    ) -> Command {
        let mut command = Command::new(ssh_program());
        command
            .arg("-o")
            .arg(format!("ControlPath={}", control.display()))
            .arg("-o")
            .arg(if master {
                "ControlMaster=yes"
            } else {
                "ControlMaster=no"
            })
            // Never prompt: a deploy runs unattended, and a prompt would hang it.
            .args(["-o", "BatchMode=yes"])
            .arg("-o")
            .arg(format!(
                "ConnectTimeout={}",
                connect_timeout.as_secs().max(1)
            ))
            // A dead host is noticed within a minute instead of at the kernel's TCP timeout.
            .args([
                "-o",
                "ServerAliveInterval=15",
                "-o",
                "ServerAliveCountMax=3",
            ]);
        if let Some(port) = self.port {
            command.arg("-p").arg(port.to_string());
        }
        if let Some(identity) = &self.identity_file {
            command.arg("-i").arg(identity);
        }
        command.args(&self.options);
        command.args(flags);
        command.arg("--").arg(self.destination());
        command.kill_on_drop(true);
        command
    }
}

/// `BERTH_SSH` overrides the client (e.g. a wrapper that adds options); default `ssh`.
fn ssh_program() -> String {
    std::env::var("BERTH_SSH")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "ssh".to_string())
}

/// A live tunnel: the master connection and the local socket bollard connects to. Dropping
/// it closes the socket, ends the master (and with it every session) and removes the
/// directory.
pub struct SshTunnel {
    dir: PathBuf,
    socket: PathBuf,
    master: Child,
    /// Serves the local socket with dial-stdio sessions; `None` when the master forwards
    /// the daemon's socket itself.
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SshTunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshTunnel({})", self.socket.display())
    }
}

/// Waits until the master connection's control socket answers `-O check`. If the process
/// ends first, its stderr says why (refused, no route, publickey, host key changed); past
/// the deadline it is killed.
async fn wait_for_master(
    target: &SshTarget,
    control: &Path,
    master: &mut Child,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + timeout + Duration::from_secs(2);
    loop {
        if let Ok(Some(status)) = master.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = master.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr).await;
            }
            return Err(format!("ssh failed ({status}): {}", last_lines(&stderr)));
        }
        if control.exists() {
            let mut check = target.command(control, false, timeout, &["-O", "check"]);
            check.stdout(Stdio::null()).stderr(Stdio::null());
            if matches!(check.status().await, Ok(status) if status.success()) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = master.start_kill();
            return Err(format!("no SSH connection within {}s", timeout.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// One round trip that proves Docker is there and answers, with its own words if not
/// (`docker: command not found`, `permission denied ... docker.sock`), and says where the
/// daemon's socket is (`None`: not a unix socket).
async fn probe_docker(
    target: &SshTarget,
    control: &Path,
    timeout: Duration,
) -> Result<Option<String>, String> {
    let mut probe = target.command(control, false, timeout, &["-T"]);
    probe.arg(PROBE).stdin(Stdio::null());
    match tokio::time::timeout(timeout, probe.output()).await {
        Ok(Ok(output)) if output.status.success() => {
            Ok(remote_unix_socket(&String::from_utf8_lossy(&output.stdout)))
        }
        Ok(Ok(output)) => Err(format!(
            "`docker version` failed on the host: {}",
            last_lines(&String::from_utf8_lossy(&output.stderr))
        )),
        Ok(Err(e)) => Err(format!("cannot run ssh: {e}")),
        Err(_) => Err(format!(
            "`docker version` did not answer within {}s",
            timeout.as_secs()
        )),
    }
}

impl SshTunnel {
    /// Connects (once), checks that `docker` answers on the far side, and starts serving
    /// the local socket. Errors name the host and say what SSH or Docker said.
    pub async fn open(target: &SshTarget, timeout: Duration) -> Result<SshTunnel, String> {
        let shown = target.shown();
        let dir =
            private_dir().map_err(|e| format!("{shown}: cannot make a socket folder: {e}"))?;
        let control = dir.join("c");
        let socket = dir.join("docker.sock");
        let cleanup = |message: String| {
            let _ = std::fs::remove_dir_all(&dir);
            message
        };

        let mut master = target.command(&control, true, timeout, &["-N"]);
        master
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut master = master.spawn().map_err(|e| {
            cleanup(format!(
                "{shown}: cannot run {} ({e}); install the OpenSSH client",
                ssh_program()
            ))
        })?;

        wait_for_master(target, &control, &mut master, timeout)
            .await
            .map_err(|message| cleanup(format!("{shown}: {message}")))?;
        let remote_socket = match probe_docker(target, &control, timeout).await {
            Ok(remote_socket) => remote_socket,
            Err(message) => {
                let _ = master.start_kill();
                return Err(cleanup(format!("{shown}: {message}")));
            }
        };

        // Fast path: the daemon's unix socket forwarded over the master, so a new API
        // connection is a new SSH channel (milliseconds) instead of a new `docker` process on
        // the host (~0.2 s each, and bollard opens several). Servers that forbid socket
        // forwarding get the dial-stdio path below, which needs nothing but `docker`.
        if let Some(remote) = &remote_socket {
            if forward_socket(target, &control, &socket, remote, timeout).await {
                return Ok(SshTunnel {
                    dir,
                    socket,
                    master,
                    acceptor: None,
                });
            }
            tracing::debug!(host = %target.host, "socket forwarding refused; using dial-stdio");
            let _ = std::fs::remove_file(&socket);
        }

        let listener = match UnixListener::bind(&socket) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = master.start_kill();
                return Err(cleanup(format!(
                    "{shown}: cannot listen on {}: {e}",
                    socket.display()
                )));
            }
        };
        let session_target = target.clone();
        let session_control = control.clone();
        let acceptor = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let target = session_target.clone();
                let control = session_control.clone();
                tokio::spawn(async move {
                    if let Err(error) = dial_stdio(&target, &control, stream, timeout).await {
                        tracing::debug!(host = %target.host, "ssh session: {error}");
                    }
                });
            }
        }));
        Ok(SshTunnel {
            dir,
            socket,
            master,
            acceptor,
        })
    }

    /// The local socket that speaks the remote Engine API.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for SshTunnel {
    fn drop(&mut self) {
        if let Some(acceptor) = &self.acceptor {
            acceptor.abort();
        }
        let _ = self.master.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Run by the user's shell on the host: the API version (proof that Docker answers), then
/// where the CLI would connect (`DOCKER_HOST`, or the default socket).
const PROBE: &str = "docker version --format '{{.Server.APIVersion}}' && \
     echo \"berth-docker-host=${DOCKER_HOST:-unix:///var/run/docker.sock}\"";

/// The daemon's unix socket path from the probe's output; `None` for tcp/ssh daemons.
fn remote_unix_socket(probe_output: &str) -> Option<String> {
    probe_output
        .lines()
        .find_map(|line| line.trim().strip_prefix("berth-docker-host=unix://"))
        .filter(|path| path.starts_with('/'))
        .map(str::to_string)
}

/// Asks the master to forward `local` to the host's `remote` socket, then proves it with a
/// `/_ping`; false when the server refuses (sshd's `AllowStreamLocalForwarding no`).
async fn forward_socket(
    target: &SshTarget,
    control: &Path,
    local: &Path,
    remote: &str,
    timeout: Duration,
) -> bool {
    use tokio::io::AsyncWriteExt;
    let spec = format!("{}:{remote}", local.display());
    let mut forward = target.command(control, false, timeout, &["-O", "forward", "-L", &spec]);
    forward.stdout(Stdio::null()).stderr(Stdio::null());
    if !matches!(forward.status().await, Ok(status) if status.success()) {
        return false;
    }
    let ping = async {
        let mut stream = tokio::net::UnixStream::connect(local).await.ok()?;
        stream
            .write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(answer.starts_with(b"HTTP/1.") && answer.ends_with(b"OK"))
    };
    matches!(tokio::time::timeout(timeout, ping).await, Ok(Some(true)))
}

/// One API connection: `docker system dial-stdio` on the host, its stdin/stdout spliced to
/// the accepted local stream until either side closes.
async fn dial_stdio(
    target: &SshTarget,
    control: &Path,
    mut stream: tokio::net::UnixStream,
    timeout: Duration,
) -> Result<(), String> {
    let mut session = target.command(control, false, timeout, &["-T"]);
    session
        .args(["docker", "system", "dial-stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = session
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e}"))?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err("ssh started without pipes".to_string());
    };
    let mut remote = tokio::io::join(stdout, stdin);
    let copied = tokio::io::copy_bidirectional(&mut stream, &mut remote).await;
    drop(remote);
    // Closed stdin ends dial-stdio; give it a moment, then make sure it is gone.
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.start_kill();
    }
    copied.map(|_| ()).map_err(|e| e.to_string())
}

/// A new directory only this user can enter, for the control and API sockets. Short paths
/// matter: unix socket paths are limited to 108 bytes.
fn private_dir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let base = std::env::temp_dir();
    let pid = std::process::id();
    for attempt in 0u32..1000 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!("berth-ssh-{pid}-{:x}", nanos ^ attempt));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary name"))
}

/// The end of a tool's stderr, on one line: the cause is at the end, banners at the start.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "no message".to_string()
    } else {
        tail.join(" / ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_command_line_carries_port_key_options_and_destination() {
        let target = SshTarget {
            user: Some("deploy".into()),
            host: "web1".into(),
            port: Some(2222),
            identity_file: Some("/keys/id".into()),
            options: vec!["-o".into(), "StrictHostKeyChecking=accept-new".into()],
        };
        let command = target.command(Path::new("/tmp/x/c"), true, Duration::from_secs(7), &["-N"]);
        let args: Vec<String> = command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("ControlPath=/tmp/x/c"), "{joined}");
        assert!(joined.contains("ControlMaster=yes"), "{joined}");
        assert!(joined.contains("BatchMode=yes"), "{joined}");
        assert!(joined.contains("ConnectTimeout=7"), "{joined}");
        assert!(joined.contains("-p 2222"), "{joined}");
        assert!(joined.contains("-i /keys/id"), "{joined}");
        assert!(
            joined.ends_with("-o StrictHostKeyChecking=accept-new -N -- deploy@web1"),
            "{joined}"
        );
    }

    #[test]
    fn the_probe_finds_a_unix_socket_only() {
        assert_eq!(
            remote_unix_socket("1.41\nberth-docker-host=unix:///run/user/1000/docker.sock\n"),
            Some("/run/user/1000/docker.sock".to_string())
        );
        assert_eq!(
            remote_unix_socket("1.41\nberth-docker-host=tcp://10.0.0.2:2375\n"),
            None
        );
        assert_eq!(remote_unix_socket("1.41\n"), None);
    }

    #[test]
    fn last_lines_keeps_the_cause() {
        assert_eq!(
            last_lines("banner\n\nssh: connect to host x port 22: Connection refused\n"),
            "banner / ssh: connect to host x port 22: Connection refused"
        );
        assert_eq!(last_lines(""), "no message");
    }

    #[tokio::test]
    async fn an_unreachable_host_fails_with_ssh_s_words_and_leaves_nothing() {
        // Port 1 on loopback: refused at once, no traffic leaves the machine.
        let target = SshTarget {
            user: Some("nobody".into()),
            host: "127.0.0.1".into(),
            port: Some(1),
            identity_file: None,
            options: vec![],
        };
        if std::process::Command::new(ssh_program())
            .arg("-V")
            .output()
            .is_err()
        {
            // Without an ssh client the error must still be a sentence, not a panic.
            let error = SshTunnel::open(&target, Duration::from_secs(3))
                .await
                .expect_err("no ssh");
            assert!(error.contains("OpenSSH"), "{error}");
            return;
        }
        let error = SshTunnel::open(&target, Duration::from_secs(3))
            .await
            .expect_err("nothing listens on port 1");
        assert!(error.contains("ssh://nobody@127.0.0.1:1"), "{error}");
        assert!(
            error.contains("refused") || error.contains("ssh failed"),
            "{error}"
        );
    }
}
