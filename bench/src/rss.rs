//! The server's memory during a workload, from `/proc/PID/status` and
//! `/proc/PID/smaps_rollup`, and the load generator's own open-file limit.
//!
//! Three numbers, because a server that sends blobs from memory-mapped files
//! shows the page cache in VmRSS: VmRSS counts a file page once per mapping
//! (256 connections mapping windows of one layer count its pages up to 256
//! times), Pss counts each page once, and RssAnon is the memory the server
//! owns (heap, buffers, stacks) — file pages are the page cache, shared with
//! every reader and reclaimable.

use std::time::Duration;

/// How often the server's resident set is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Peaks seen while a workload ran.
pub struct RssPeaks {
    /// Highest VmRSS sampled (anonymous + mapped file pages), MiB.
    pub peak_rss_mib: f64,
    /// Highest RssAnon sampled (heap, buffers), MiB.
    pub peak_anon_mib: f64,
    /// Highest Pss sampled (every resident page once), MiB.
    pub peak_pss_mib: f64,
    /// VmHWM at the end: the kernel's own peak since the server started
    /// (not reset here: `scripts/bench.sh` reports it for the whole run).
    pub hwm_mib: Option<f64>,
}

pub struct RssSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<[f64; 3]>,
    pid: u32,
}

/// A `kB` field of `/proc/PID/status`, in MiB.
fn status_field(pid: u32, field: &str) -> Option<f64> {
    proc_field(pid, "status", field)
}

/// A `kB` field of `/proc/PID/FILE`, in MiB.
fn proc_field(pid: u32, file: &str, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let (mut rss, mut anon, mut pss) = (0f64, 0f64, 0f64);
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                rss = rss.max(status_field(pid, "VmRSS:").unwrap_or(0.0));
                anon = anon.max(status_field(pid, "RssAnon:").unwrap_or(0.0));
                pss = pss.max(proc_field(pid, "smaps_rollup", "Pss:").unwrap_or(0.0));
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = &mut stopped => return [rss, anon, pss],
                }
            }
        });
        RssSampler { stop, task, pid }
    }

    pub async fn stop(self) -> RssPeaks {
        let _ = self.stop.send(());
        let [peak_rss_mib, peak_anon_mib, peak_pss_mib] = self.task.await.unwrap_or([0.0; 3]);
        RssPeaks {
            peak_rss_mib,
            peak_anon_mib,
            peak_pss_mib,
            hwm_mib: status_field(self.pid, "VmHWM:"),
        }
    }
}

/// Raise this process's soft open-file limit to the hard one: 1024 clients
/// need more sockets than the usual soft limit of 1024. Returns (before, after).
pub fn raise_fd_limit() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we lend it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit only reads the struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((before, limit.rlim_cur))
}
