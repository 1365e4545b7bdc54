//! A real S3 server for tests: `s3s-fs` (crates.io, checks SigV4, honours
//! conditional writes) on a free 127.0.0.1 port over a private folder,
//! stopped by PID when dropped — also when the test panics.
//!
//! Shared by this crate's tests and the end-to-end tests of `berth serve`,
//! which is why it is part of the library and not of a test module.
//! Install the server with
//! `cargo install s3s-fs --version 0.14.1 --features binary --locked`.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::s3::S3Options;

pub const ACCESS_KEY: &str = "berthtest";
pub const SECRET_KEY: &str = "berthtest-secret-key";
pub const REGION: &str = "us-east-1";

/// Where the `s3s-fs` binary is: `$S3S_FS`, then PATH, then `~/.cargo/bin`.
pub fn s3s_fs_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("S3S_FS") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("s3s-fs"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("HOME")?;
        let p = Path::new(&home).join(".cargo/bin/s3s-fs");
        p.is_file().then_some(p)
    })
}

/// Deterministic pseudo-random bytes (xorshift) for test blobs: they do not
/// compress or repeat per part, so no store can shortcut them.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = 0x9e37_79b9_u32 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

pub struct S3TestServer {
    pub port: u16,
    pub bucket: String,
    root: PathBuf,
    binary: PathBuf,
    child: Option<Child>,
}

impl S3TestServer {
    /// Start s3s-fs with one empty bucket. `Ok(None)` when s3s-fs is not installed.
    pub fn start(bucket: &str) -> io::Result<Option<S3TestServer>> {
        let Some(binary) = s3s_fs_binary() else {
            return Ok(None);
        };
        let root = std::env::temp_dir().join(format!(
            "berth-s3s-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(root.join(bucket))?;
        // Not port 0: the fault tests restart the server on this port, and an ephemeral
        // one can be taken meanwhile (see free_port).
        let port = free_port();
        let mut server = S3TestServer {
            port,
            bucket: bucket.to_string(),
            root,
            binary,
            child: None,
        };
        server.start_again()?;
        Ok(Some(server))
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Options for an [`crate::S3Storage`] on this server's bucket.
    pub fn options(&self, prefix: &str) -> S3Options {
        S3Options {
            bucket: self.bucket.clone(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint()),
            region: Some(REGION.to_string()),
            access_key_id: Some(ACCESS_KEY.to_string()),
            secret_access_key: Some(SECRET_KEY.to_string()),
            session_token: None,
            virtual_hosted: false,
            allow_http: true,
            redirect_blobs: false,
            read_ahead: None,
            link_cache: None,
            cache_bytes: None,
        }
    }

    /// The folder that holds the buckets (a bucket is a subfolder).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Start (again, after [`S3TestServer::stop`]) on the same port and folder.
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.with_extension("log"))?;
        let child = Command::new(&self.binary)
            .arg("--host")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--access-key")
            .arg(ACCESS_KEY)
            .arg("--secret-key")
            .arg(SECRET_KEY)
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(io::Error::other(format!(
                        "s3s-fs exited during start-up ({status}); log: {}",
                        self.log()
                    )));
                }
            }
            if Instant::now() > deadline {
                self.stop();
                return Err(io::Error::other("s3s-fs did not listen within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stop by PID (SIGKILL) and reap: the server is down until started again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- s3s-fs log (port {}) ---\n{}",
                self.port,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_file(self.root.with_extension("log"));
    }
}

/// The kernel's range of ephemeral ports (`ip_local_port_range`), 32768..=60999 by default.
fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut it = text.split_whitespace().map(|n| n.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// A port that is free right now, chosen outside the kernel's ephemeral range. Inside it, a
/// client connecting while the server is down (a restart test) can be given the server's own
/// port as its source port and connect to itself (TCP simultaneous open): the request then
/// waits forever for an answer only it could send, and the restarted server cannot bind.
pub fn free_port() -> u16 {
    let (low, high) = ephemeral_ports();
    let candidates: Vec<u16> = (20_000..32_000)
        .chain(1024..20_000)
        .chain(61_000..65_000)
        .filter(|p| *p < low || *p > high)
        .collect();
    assert!(
        !candidates.is_empty(),
        "no port outside the ephemeral range {low}-{high} to run test servers on; narrow \
         net.ipv4.ip_local_port_range"
    );
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(
            COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(104_729),
        )
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    for i in 0..2000u32 {
        let index = seed.wrapping_add(i.wrapping_mul(37)) as usize % candidates.len();
        let port = candidates[index];
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port found on 127.0.0.1 outside the ephemeral range {low}-{high}");
}
