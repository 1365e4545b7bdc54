//! Large blobs through the `berth` client with bounded memory, and a resumed upload.
//!
//! * A ≥ 1 GiB incompressible layer (PRNG data, streamed to disk and hashed while written) in an
//!   OCI layout: `berth copy oci:SRC:v1 REG/big:v1`, then `berth pull REG/big:v1 oci:OUT:v1`.
//!   Each berth process's peak RSS (`wait4` rusage, `ru_maxrss`) must stay under 256 MiB, and
//!   the pulled blob must hash to the source's digest.
//! * A TCP proxy that cuts the connection once after ~100 MiB of upload (client → registry):
//!   the push still succeeds, resuming from the offset the registry reports.
//!
//! The big files live in temporary directories that are removed at the end (also on panic).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// Peak resident memory allowed for one berth client process.
const RSS_LIMIT_KIB: i64 = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// A big OCI layout
// ---------------------------------------------------------------------------------------------

/// Incompressible data that is cheap to make even in a debug build: one 1 MiB block of
/// xorshift64* output, emitted each MiB rotated by a different offset (so no two MiB are the
/// same and no compressor with a window below 1 MiB finds anything to squeeze).
struct Prng {
    block: Vec<u8>,
    /// Bytes emitted so far.
    pos: u64,
    remaining: u64,
}

impl Prng {
    fn new(seed: u64, size: u64) -> Prng {
        let mut state = seed | 1;
        let mut block = vec![0u8; MIB as usize];
        for chunk in block.chunks_mut(8) {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            chunk.copy_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
        }
        Prng {
            block,
            pos: 0,
            remaining: size,
        }
    }
}

impl Read for Prng {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let block_no = self.pos / MIB;
        let in_block = (self.pos % MIB) as usize;
        // A rotation that changes every MiB (odd multiplier: all offsets get used).
        let rotation = (block_no.wrapping_mul(0x9E37_79B1) % MIB) as usize;
        let start = (in_block + rotation) % MIB as usize;
        let n = buf
            .len()
            .min(MIB as usize - in_block)
            .min(MIB as usize - start)
            .min(self.remaining as usize);
        buf[..n].copy_from_slice(&self.block[start..start + n]);
        self.pos += n as u64;
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Hashes and counts what passes through to the file.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct BigImage {
    layer_digest: String,
    layer_size: u64,
    manifest_digest: String,
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// Writes an OCI layout whose image `tag` has one uncompressed tar layer holding `big.bin`,
/// `data_size` bytes of PRNG output. The layer is streamed to disk and hashed on the way.
fn write_big_layout(layout: &Path, tag: &str, data_size: u64, seed: u64) -> BigImage {
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).expect("create blobs dir");
    let started = Instant::now();
    let tmp = blobs.join("layer.partial");
    let file = fs::File::create(&tmp).expect("create layer file");
    let writer = HashingWriter {
        inner: std::io::BufWriter::with_capacity(4 * MIB as usize, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut tar = tar::Builder::new(writer);
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(data_size);
    header.set_mtime(1_700_000_000);
    let prng = Prng::new(seed, data_size);
    tar.append_data(
        &mut header,
        "big.bin",
        std::io::BufReader::with_capacity(MIB as usize, prng),
    )
    .expect("write the big layer");
    let mut writer = tar.into_inner().expect("finish the layer tar");
    writer.flush().expect("flush the layer");
    let layer_size = writer.bytes;
    let layer_digest = format!("sha256:{}", hex::encode(writer.hasher.finalize()));
    fs::rename(&tmp, blob_path(layout, &layer_digest)).expect("name the layer by its digest");
    eprintln!(
        "wrote a {:.2} GiB layer in {:.1}s: {layer_digest}",
        layer_size as f64 / GIB as f64,
        started.elapsed().as_secs_f64()
    );

    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .unwrap();
    let config_digest = digest_of(&config);
    fs::write(blob_path(layout, &config_digest), &config).expect("write config");
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size}],
    }))
    .unwrap();
    let manifest_digest = digest_of(&manifest);
    fs::write(blob_path(layout, &manifest_digest), &manifest).expect("write manifest");
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        }))
        .unwrap(),
    )
    .expect("write index.json");
    fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .expect("write oci-layout");
    BigImage {
        layer_digest,
        layer_size,
        manifest_digest,
    }
}

// ---------------------------------------------------------------------------------------------
// Running berth with its peak memory measured
// ---------------------------------------------------------------------------------------------

struct Measured {
    command: String,
    exit_code: Option<i32>,
    stdout: String,
    stderr: String,
    max_rss_kib: i64,
    secs: f64,
}

impl Measured {
    fn assert_ok(&self) {
        assert_eq!(
            self.exit_code,
            Some(0),
            "{} failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout,
            self.stderr
        );
    }
}

/// Spawns `c` and reaps it with `wait4`, which reports its peak RSS (`ru_maxrss`, KiB).
fn run_measured(mut c: Command, out_dir: &Path, timeout: Duration) -> Measured {
    let command = format!("{c:?}");
    eprintln!("+ {command}");
    let id = unique("run");
    let out_path = out_dir.join(format!("{id}.stdout"));
    let err_path = out_dir.join(format!("{id}.stderr"));
    let child = c
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
    let pid = child.id() as libc::pid_t;
    let started = Instant::now();
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value; wait4 fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: wait4 on our own child's PID (not reaped by anyone else: `child` is only
        // dropped, never waited on), with valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        if r < 0 {
            panic!("wait4({pid}) failed: {}", std::io::Error::last_os_error());
        }
        if started.elapsed() > timeout {
            // SAFETY: kill and reap our own child by PID.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::wait4(pid, &mut status, 0, &mut usage);
            }
            panic!("timed out after {timeout:?}, killed pid {pid}: {command}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(child);
    let exit_code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    let m = Measured {
        command,
        exit_code,
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
        max_rss_kib: usage.ru_maxrss,
        secs: started.elapsed().as_secs_f64(),
    };
    eprintln!(
        "  exit {:?} in {:.1}s, peak RSS {:.1} MiB",
        m.exit_code,
        m.secs,
        m.max_rss_kib as f64 / 1024.0
    );
    m
}

fn assert_rss(m: &Measured, what: &str) {
    assert!(m.max_rss_kib > 0, "{what}: no peak RSS reported by wait4");
    assert!(
        m.max_rss_kib < RSS_LIMIT_KIB,
        "{what}: peak RSS {:.1} MiB is over the {} MiB limit: the client holds too much of the \
         blob in memory",
        m.max_rss_kib as f64 / 1024.0,
        RSS_LIMIT_KIB / 1024
    );
}

fn json_digest(m: &Measured) -> String {
    let v: Value = parse_json(&m.stdout, &m.command);
    v["digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no digest in {v}"))
        .to_string()
}

#[test]
fn big_blob_push_and_pull_with_bounded_memory() {
    let server = Server::start_kind(ServerKind::Berth);
    let reg = server.host();
    let cli = BerthCli::new();
    let src = cli.path("src");
    // Not a multiple of the 64 MiB chunk size: the last chunk is a short one.
    let image = write_big_layout(&src, "v1", GIB + 12_345, 0x9E37_79B9_7F4A_7C15);
    assert!(image.layer_size >= GIB);
    let logs = cli.path("logs");
    fs::create_dir_all(&logs).unwrap();

    // Push: oci: → registry.
    let dest = format!("{reg}/big:v1");
    let push = run_measured(
        cli.cmd([
            "copy",
            &format!("oci:{}:v1", src.display()),
            &dest,
            "--json",
        ]),
        &logs,
        TIMEOUT,
    );
    push.assert_ok();
    assert_eq!(json_digest(&push), image.manifest_digest, "pushed digest");
    eprintln!(
        "push: {:.0} MiB/s",
        image.layer_size as f64 / MIB as f64 / push.secs
    );
    assert_rss(&push, "berth copy oci: → registry");
    let head = raw_request(
        server.port,
        format!(
            "HEAD /v2/big/blobs/{} HTTP/1.1\r\nHost: {reg}\r\nConnection: close\r\n\r\n",
            image.layer_digest
        )
        .as_bytes(),
        Duration::from_secs(10),
    )
    .expect("HEAD the big blob");
    assert_eq!(head.status, Some(200), "the registry has the big blob");
    assert_eq!(
        head.header("content-length"),
        Some(image.layer_size.to_string())
    );

    // Pull: registry → oci:.
    fs::remove_dir_all(&src).expect("remove the source layout");
    let out = cli.path("out");
    let pull = run_measured(
        cli.cmd([
            "pull",
            &dest,
            &format!("oci:{}:v1", out.display()),
            "--json",
        ]),
        &logs,
        TIMEOUT,
    );
    pull.assert_ok();
    assert_eq!(json_digest(&pull), image.manifest_digest, "pulled digest");
    eprintln!(
        "pull: {:.0} MiB/s",
        image.layer_size as f64 / MIB as f64 / pull.secs
    );
    assert_rss(&pull, "berth pull registry → oci:");
    let pulled = blob_path(&out, &image.layer_digest);
    assert_eq!(
        fs::metadata(&pulled).expect("pulled layer").len(),
        image.layer_size
    );
    assert_eq!(
        file_digest(&pulled),
        image.layer_digest,
        "the pulled layer's sha256 differs from the source's"
    );
    fs::remove_dir_all(&out).expect("remove the pulled layout");
}

// ---------------------------------------------------------------------------------------------
// A proxy that cuts one upload
// ---------------------------------------------------------------------------------------------

struct CutState {
    upstream: u16,
    cut_after: u64,
    uploaded: AtomicU64,
    cut: AtomicBool,
    connections: AtomicUsize,
    stop: AtomicBool,
}

/// Forwards 127.0.0.1:port → 127.0.0.1:upstream; once, when more than `cut_after` bytes have
/// gone from clients to the registry, it closes that connection in both directions.
struct CutProxy {
    port: u16,
    state: Arc<CutState>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl CutProxy {
    fn start(upstream: u16, cut_after: u64) -> CutProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(CutState {
            upstream,
            cut_after,
            uploaded: AtomicU64::new(0),
            cut: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", s.upstream)) else {
                    continue;
                };
                s.connections.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                let (c2, sv2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                // client → registry, counted, cut once.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (client, server);
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let total = s2.uploaded.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        if total > s2.cut_after && !s2.cut.swap(true, Ordering::SeqCst) {
                            eprintln!("cut proxy: closing a connection after {total} bytes");
                            let _ = from.shutdown(Shutdown::Both);
                            let _ = to.shutdown(Shutdown::Both);
                            return;
                        }
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                // registry → client.
                std::thread::spawn(move || {
                    let (mut from, mut to) = (sv2, c2);
                    let _ = std::io::copy(&mut from, &mut to);
                    let _ = to.shutdown(Shutdown::Write);
                });
            }
        });
        CutProxy {
            port,
            state,
            accept: Some(accept),
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn upload_resumes_after_the_connection_is_cut() {
    let server = Server::start_kind(ServerKind::Berth);
    let proxy = CutProxy::start(server.port, 100 * MIB);
    let cli = BerthCli::new();
    let src = cli.path("src");
    let image = write_big_layout(&src, "v1", 256 * MIB + 777, 0x0123_4567_89AB_CDEF);

    let dest = format!("127.0.0.1:{}/resume:v1", proxy.port);
    let out = run(
        cli.cmd(["copy", &format!("oci:{}:v1", src.display()), &dest]),
        TIMEOUT,
    );
    assert!(
        proxy.state.cut.load(Ordering::SeqCst),
        "the proxy never cut a connection ({} bytes went through)",
        proxy.state.uploaded.load(Ordering::SeqCst)
    );
    assert!(
        out.status.success(),
        "the push must survive one cut connection:\n{}",
        out.describe()
    );
    assert_eq!(out.stdout.trim(), image.manifest_digest);
    // The plain progress lines say where the upload resumed.
    let resumed: Vec<u64> = out
        .stderr
        .lines()
        .filter_map(|l| l.split("resuming at byte ").nth(1))
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    eprintln!(
        "resumed at {resumed:?}; {} connections, {} bytes uploaded through the proxy for a {} byte layer",
        proxy.state.connections.load(Ordering::SeqCst),
        proxy.state.uploaded.load(Ordering::SeqCst),
        image.layer_size
    );
    assert!(
        resumed.iter().any(|&o| o > 0 && o <= 101 * MIB),
        "expected a 'resuming at byte N' line with 0 < N <= ~100 MiB (resume, not restart):\n{}",
        out.stderr
    );
    // Resuming means the bytes before the offset were not sent again.
    let uploaded = proxy.state.uploaded.load(Ordering::SeqCst);
    assert!(
        uploaded < image.layer_size + 101 * MIB,
        "{uploaded} bytes uploaded for a {} byte layer",
        image.layer_size
    );

    // The registry (read directly) has the whole blob, intact.
    let pulled = cli.path("out");
    run_ok(
        cli.cmd([
            "pull",
            &format!("{}/resume:v1", server.host()),
            &format!("oci:{}:v1", pulled.display()),
            "-q",
        ]),
        TIMEOUT,
    );
    assert_eq!(
        file_digest(&blob_path(&pulled, &image.layer_digest)),
        image.layer_digest
    );
}
