//! Transfer progress for the terminal: one bar per blob (bytes and speed) on
//! a TTY, one plain line per finished blob otherwise (CI logs), nothing with
//! `--quiet` or `--json`. Everything goes to stderr; stdout keeps results.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_client::image::{BlobInfo, BlobOutcome, BlobProgress, NoProgress, Progress};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Bars,
    Lines,
    Quiet,
}

impl Mode {
    pub fn choose(quiet: bool) -> Mode {
        if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            Mode::Bars
        } else {
            Mode::Lines
        }
    }
}

pub struct CliProgress {
    mode: Mode,
    multi: MultiProgress,
}

impl CliProgress {
    pub fn new(mode: Mode) -> CliProgress {
        let multi = MultiProgress::with_draw_target(if mode == Mode::Bars {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        CliProgress { mode, multi }
    }

    /// Print a line without breaking the bars.
    pub fn line(&self, text: &str) {
        match self.mode {
            Mode::Bars => {
                let _ = self.multi.println(text);
            }
            Mode::Lines => eprintln!("{text}"),
            Mode::Quiet => {}
        }
    }
}

pub fn short(digest: &impl std::fmt::Display) -> String {
    let s = digest.to_string();
    let hex = s.split_once(':').map_or(s.as_str(), |(_, h)| h);
    hex.chars().take(12).collect()
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl Progress for CliProgress {
    fn blob(&self, blob: &BlobInfo) -> Box<dyn BlobProgress> {
        match self.mode {
            Mode::Quiet => Box::new(NoProgress),
            Mode::Lines => Box::new(LineBlob {
                name: short(&blob.digest),
                size: blob.size,
                started: Instant::now(),
                bytes: AtomicU64::new(0),
            }),
            Mode::Bars => {
                let bar = self.multi.add(ProgressBar::new(blob.size));
                bar.set_style(
                    ProgressStyle::with_template(
                        "{prefix:.bold} {wide_bar} {bytes:>10}/{total_bytes:<10} {binary_bytes_per_sec:>12} {msg}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(short(&blob.digest));
                bar.enable_steady_tick(Duration::from_millis(200));
                Box::new(BarBlob { bar })
            }
        }
    }

    fn message(&self, message: &str) {
        self.line(message);
    }
}

struct BarBlob {
    bar: ProgressBar,
}

impl BlobProgress for BarBlob {
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn restart_at(&self, offset: u64) {
        self.bar.set_position(offset);
        self.bar.set_message("resumed");
    }
    fn finish(&self, outcome: BlobOutcome) {
        let word = match outcome {
            BlobOutcome::Copied => "done",
            BlobOutcome::Exists => "exists",
            BlobOutcome::Mounted => "mounted",
        };
        if outcome != BlobOutcome::Copied {
            self.bar.set_position(self.bar.length().unwrap_or(0));
        }
        self.bar.finish_with_message(word);
    }
}

struct LineBlob {
    name: String,
    size: u64,
    started: Instant,
    bytes: AtomicU64,
}

impl BlobProgress for LineBlob {
    fn advance(&self, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn restart_at(&self, offset: u64) {
        eprintln!("{}: resuming at byte {offset}", self.name);
    }
    fn finish(&self, outcome: BlobOutcome) {
        match outcome {
            BlobOutcome::Copied => {
                let secs = self.started.elapsed().as_secs_f64().max(1e-3);
                eprintln!(
                    "{}: copied {} in {:.1}s ({}/s)",
                    self.name,
                    human_bytes(self.size),
                    secs,
                    human_bytes((self.size as f64 / secs) as u64)
                );
            }
            BlobOutcome::Exists => {
                eprintln!("{}: already there ({})", self.name, human_bytes(self.size))
            }
            BlobOutcome::Mounted => {
                eprintln!("{}: mounted ({})", self.name, human_bytes(self.size))
            }
        }
    }
}
