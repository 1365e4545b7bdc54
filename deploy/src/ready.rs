//! When a newly started container counts as ready.
//!
//! - With a healthcheck, Berth does not wait for dockerd's first check (it comes only after
//!   a whole `interval`, 30 s by default): it runs the same test itself through the Engine
//!   API's `exec`, first ~75 ms after start and then backing off (doubling) up to the
//!   check's interval, each run bounded by the check's timeout. The first success is ready.
//!   Docker's own health status still counts when it comes first (healthy = ready).
//! - Failing is left to Docker: only dockerd's `unhealthy` (its `retries` consecutive
//!   failures after `start_period`) fails a start, so Berth's early probes, which run much
//!   more often than the interval, never fail a server that is merely slow to listen. A
//!   container that exits, restarts or reaches the timeout fails as before.
//! - Without a healthcheck: ready once it is running and has not exited within the settle
//!   time (default 0.3 s; `--settle`, per service `settle:` / compose `x-berth.settle`).

use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use futures::StreamExt;

use crate::actual::Health;
use crate::desired::HealthSpec;
use crate::engine::Engine;

/// Docker's defaults when a healthcheck leaves them out.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The first own probe after start, and how often the container's state is looked at.
const FIRST_PROBE: Duration = Duration::from_millis(75);
const STATUS_POLL: Duration = Duration::from_millis(100);

/// How a started container is judged ready.
#[derive(Debug, Clone, PartialEq)]
pub enum Readiness {
    /// Run (and watch) this healthcheck.
    Check(HealthSpec),
    /// Running and not exited for this long.
    Settle(Duration),
}

impl Readiness {
    /// The check when there is a usable one (`NONE` disables a check, as in Docker), else
    /// the settle time.
    pub fn of(check: Option<&HealthSpec>, settle: Duration) -> Readiness {
        match check {
            Some(check) if probe_command(&check.test).is_some() => Readiness::Check(check.clone()),
            _ => Readiness::Settle(settle),
        }
    }
}

/// The command `exec` runs for a healthcheck test (`CMD args...` or `CMD-SHELL text`), or
/// None for `NONE` and forms dockerd would not run either.
pub fn probe_command(test: &[String]) -> Option<Vec<String>> {
    let (kind, rest) = test.split_first()?;
    match kind.as_str() {
        "CMD" if !rest.is_empty() => Some(rest.to_vec()),
        "CMD-SHELL" if !rest.is_empty() => Some(vec![
            "/bin/sh".to_string(),
            "-c".to_string(),
            rest.join(" "),
        ]),
        _ => None,
    }
}

/// The waits between own probes: `FIRST_PROBE`, then doubling, never above `interval`.
pub fn probe_delays(interval: Duration) -> impl Iterator<Item = Duration> {
    let interval = interval.max(FIRST_PROBE);
    std::iter::successors(Some(FIRST_PROBE), move |delay| {
        Some((*delay * 2).min(interval))
    })
}

fn ns(value: Option<u64>, default: Duration) -> Duration {
    value
        .filter(|n| *n > 0)
        .map(Duration::from_nanos)
        .unwrap_or(default)
}

/// Waits until `name` is ready (see the module comment). Fails as soon as it exits,
/// restarts or turns unhealthy, or at `timeout`.
pub async fn wait_ready(
    engine: &Engine,
    name: &str,
    readiness: &Readiness,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let (probe, interval, check_timeout) = match readiness {
        Readiness::Check(check) => (
            probe_command(&check.test),
            ns(check.interval_ns, DEFAULT_INTERVAL),
            ns(check.timeout_ns, DEFAULT_TIMEOUT),
        ),
        Readiness::Settle(_) => (None, DEFAULT_INTERVAL, DEFAULT_TIMEOUT),
    };
    let mut delays = probe_delays(interval);
    let mut next_probe = started + delays.next().unwrap_or(FIRST_PROBE);
    loop {
        let Some(status) = engine.status(name).await? else {
            return Err(format!("{name} disappeared while starting"));
        };
        if !status.running || status.restarting {
            let mut message = format!(
                "{name} stopped after start (exit code {})",
                status.exit_code.unwrap_or_default()
            );
            if let Some(error) = status.error {
                message.push_str(&format!(": {error}"));
            }
            return Err(message);
        }
        match readiness {
            Readiness::Check(_) => match status.health {
                Some(Health::Healthy) => return Ok(()),
                Some(Health::Unhealthy) => {
                    let mut message = format!("{name} is unhealthy");
                    if let Some(output) = status.last_check {
                        message.push_str(&format!(" (last check: {})", shorten(&output)));
                    }
                    return Err(message);
                }
                _ => {}
            },
            Readiness::Settle(settle) => {
                if started.elapsed() >= *settle {
                    return Ok(());
                }
            }
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "{name} was not healthy within {}s",
                timeout.as_secs()
            ));
        }
        if let Some(command) = &probe {
            if Instant::now() >= next_probe {
                if run_probe(engine, name, command, check_timeout).await {
                    return Ok(());
                }
                next_probe = Instant::now() + delays.next().unwrap_or(interval);
            }
        }
        // Sleep until the next look: the state poll, the next probe, or the settle time.
        let now = Instant::now();
        let mut wake = now + STATUS_POLL;
        if probe.is_some() {
            wake = wake.min(next_probe);
        }
        if let Readiness::Settle(settle) = readiness {
            wake = wake.min(started + *settle);
        }
        tokio::time::sleep(wake.saturating_duration_since(now)).await;
    }
}

/// Runs the healthcheck command in `name` once; true when it exits 0 within `timeout`. Any
/// error (not running yet, exec refused, too slow) is "not ready yet": failing is Docker's.
async fn run_probe(engine: &Engine, name: &str, command: &[String], timeout: Duration) -> bool {
    let run = async {
        let exec = engine
            .docker()
            .create_exec(
                name,
                CreateExecOptions {
                    cmd: Some(command.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .ok()?;
        let started = engine
            .docker()
            .start_exec(&exec.id, None::<StartExecOptions>)
            .await
            .ok()?;
        if let StartExecResults::Attached { mut output, .. } = started {
            // Drained to the end: the stream closes when the command exits.
            while let Some(chunk) = output.next().await {
                chunk.ok()?;
            }
        }
        let inspect = engine.docker().inspect_exec(&exec.id).await.ok()?;
        Some(inspect.exit_code == Some(0))
    };
    matches!(tokio::time::timeout(timeout, run).await, Ok(Some(true)))
}

fn shorten(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 200 {
        let cut: String = one_line.chars().take(200).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn probe_commands_follow_dockers_test_forms() {
        assert_eq!(
            probe_command(&words(&["CMD", "wget", "-q", "localhost"])),
            Some(words(&["wget", "-q", "localhost"]))
        );
        assert_eq!(
            probe_command(&words(&["CMD-SHELL", "curl -f localhost || exit 1"])),
            Some(words(&["/bin/sh", "-c", "curl -f localhost || exit 1"]))
        );
        assert_eq!(probe_command(&words(&["NONE"])), None);
        assert_eq!(probe_command(&words(&["CMD"])), None);
        assert_eq!(probe_command(&[]), None);
    }

    #[test]
    fn probes_start_early_and_back_off_to_the_interval() {
        let delays: Vec<u128> = probe_delays(Duration::from_secs(1))
            .take(7)
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(delays, [75, 150, 300, 600, 1000, 1000, 1000]);
    }

    #[test]
    fn a_disabled_check_means_settling() {
        let none = HealthSpec {
            test: words(&["NONE"]),
            interval_ns: None,
            timeout_ns: None,
            retries: None,
            start_period_ns: None,
        };
        let settle = Duration::from_millis(300);
        assert_eq!(
            Readiness::of(Some(&none), settle),
            Readiness::Settle(settle)
        );
        assert_eq!(Readiness::of(None, settle), Readiness::Settle(settle));
    }
}
