//! Bounds on the system `git` that `ADD <git URL>` runs, so a silent or
//! crawling remote cannot hang the build: git's own low-speed abort for HTTP
//! (`GIT_HTTP_LOW_SPEED_LIMIT`/`_TIME`) and an overall deadline after which
//! the process is killed. Overridable by environment (tests use short ones).

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// The whole-process deadline of one git command (default 30 minutes).
pub fn deadline() -> Duration {
    Duration::from_secs(env_secs("BERTH_BUILD_ADD_GIT_TIMEOUT", 30 * 60))
}

/// git aborts an HTTP transfer slower than 1000 bytes/s for this long.
pub fn apply_low_speed(cmd: &mut Command) {
    let idle = env_secs("BERTH_BUILD_ADD_IDLE_TIMEOUT", 60);
    cmd.env("GIT_HTTP_LOW_SPEED_LIMIT", "1000")
        .env("GIT_HTTP_LOW_SPEED_TIME", idle.max(1).to_string());
}

/// `cmd.output()`, but killed after `limit`: Err(None) on timeout.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output, Option<std::io::Error>> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Some)?;
    // Readers drain the pipes so git never blocks on a full one.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Some)? {
            break status;
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}
