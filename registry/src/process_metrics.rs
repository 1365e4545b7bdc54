//! The standard `process_*` metrics (as Prometheus' own client libraries export them), read
//! from `/proc/self` on each scrape: CPU seconds, resident memory, open and maximum file
//! descriptors, and the start time. Hand-written because it is four small files to read;
//! the crates that do it pull a second metrics stack in.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// What one scrape reads; `None` where `/proc` did not answer (not Linux, a sandbox).
#[derive(Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<f64>,
    pub open_fds: Option<f64>,
    pub max_fds: Option<f64>,
}

/// `utime + stime` from the text of `/proc/self/stat`, in clock ticks. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` from the text of `/proc/self/status`, in bytes.
pub fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft `Max open files` from the text of `/proc/self/limits`.
pub fn max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn sample() -> ProcessSample {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    ProcessSample {
        cpu_seconds: read("/proc/self/stat")
            .as_deref()
            .and_then(cpu_ticks)
            .filter(|_| ticks_per_second > 0)
            .map(|t| t as f64 / ticks_per_second as f64),
        resident_bytes: read("/proc/self/status")
            .as_deref()
            .and_then(resident_bytes)
            .map(|b| b as f64),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64),
        max_fds: read("/proc/self/limits")
            .as_deref()
            .and_then(max_fds)
            .map(|n| n as f64),
    }
}

/// Registered on the unprefixed root registry, so the names are the standard ones.
#[derive(Debug)]
pub struct ProcessCollector {
    /// When the metrics were set up: the server's start, give or take its configuration.
    started: f64,
}

impl Default for ProcessCollector {
    fn default() -> ProcessCollector {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        ProcessCollector { started }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = sample();
        if let Some(v) = s.cpu_seconds {
            let m = ConstCounter::new(v);
            m.encode(encoder.encode_descriptor(
                "process_cpu",
                "User and system CPU time spent",
                Some(&Unit::Seconds),
                m.metric_type(),
            )?)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                s.resident_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                s.open_fds,
            ),
            (
                "process_max_fds",
                "The soft limit of open file descriptors",
                None,
                s.max_fds,
            ),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                Some(self.started),
            ),
        ];
        for (name, help, unit, value) in gauges {
            if let Some(v) = value {
                let m = ConstGauge::new(v);
                m.encode(encoder.encode_descriptor(name, help, unit.as_ref(), m.metric_type())?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse() {
        let stat = "4242 (berth (serve) x) S 1 4242 4242 0 -1 4194560 900 0 0 0 123 45 0 0 20 0 9 0 777 123456 789";
        assert_eq!(cpu_ticks(stat), Some(168));
        assert_eq!(cpu_ticks("garbage"), None);
        let status = "Name:\tberth\nVmPeak:\t  9000 kB\nVmRSS:\t   2048 kB\n";
        assert_eq!(resident_bytes(status), Some(2048 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax open files            20000                524288               files     \n";
        assert_eq!(max_fds(limits), Some(20000));
        assert_eq!(max_fds("nothing"), None);
    }

    #[test]
    fn this_process_is_sampled() {
        let s = sample();
        assert!(s.resident_bytes.is_some_and(|b| b > 0.0), "{s:?}");
        assert!(s.open_fds.is_some_and(|n| n >= 3.0), "{s:?}");
        assert!(s.cpu_seconds.is_some(), "{s:?}");
        assert!(
            s.max_fds.is_some_and(|n| n >= s.open_fds.unwrap_or(0.0)),
            "{s:?}"
        );
    }
}
