//! `--timings`: where a host's deploy time went, and how many Engine API calls it took.
//!
//! Phases are wall-clock time, so a host's phases add up to its wall time: connect, read
//! (the host's state), then per stage of the apply (`stages.rs`) the stage's wall time,
//! divided among pull / create / start / ready / remove in proportion to the time its
//! lanes spent in each (lanes run at the same time, so their own times overlap).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pull,
    /// Networks, volumes, secret files, containers (and attaching their networks).
    Create,
    Start,
    /// Waiting for new containers to be ready (healthcheck or settle time).
    Ready,
    /// Setting old containers aside, removals, undoing.
    Remove,
}

const PHASES: usize = 5;

fn slot(phase: Phase) -> usize {
    match phase {
        Phase::Pull => 0,
        Phase::Create => 1,
        Phase::Start => 2,
        Phase::Ready => 3,
        Phase::Remove => 4,
    }
}

/// One host's timings, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostTimings {
    pub connect: f64,
    pub read: f64,
    /// Waiting for the image tags' digests after the host was read (0 unless the registry
    /// answered later than the host).
    pub resolve: f64,
    pub pull: f64,
    pub create: f64,
    pub start: f64,
    pub ready: f64,
    pub remove: f64,
    /// The host's wall time, from connecting to its last action.
    pub total: f64,
    pub api_calls: u64,
}

impl HostTimings {
    /// The phases' sum (the rest of `total` is planning and bookkeeping).
    pub fn phases_sum(&self) -> f64 {
        self.connect
            + self.read
            + self.resolve
            + self.pull
            + self.create
            + self.start
            + self.ready
            + self.remove
    }

    /// One line for the text output.
    pub fn line(&self, host: &str) -> String {
        format!(
            "TIMINGS {host}: total {:.2}s = connect {:.2}s read {:.2}s resolve {:.2}s pull {:.2}s create {:.2}s start {:.2}s ready {:.2}s remove {:.2}s; {} API calls",
            self.total,
            self.connect,
            self.read,
            self.resolve,
            self.pull,
            self.create,
            self.start,
            self.ready,
            self.remove,
            self.api_calls
        )
    }
}

/// Collects the apply's phase times, stage by stage.
#[derive(Debug, Default)]
pub struct PhaseClock {
    /// The current stage's lanes' own times per phase.
    stage: Mutex<[Duration; PHASES]>,
    /// Wall time attributed so far per phase.
    total: Mutex<[Duration; PHASES]>,
}

impl PhaseClock {
    /// Adds `spent` in `phase` to the current stage.
    pub fn add(&self, phase: Phase, spent: Duration) {
        let mut stage = self.stage.lock().unwrap_or_else(|p| p.into_inner());
        stage[slot(phase)] += spent;
    }

    /// Times `work` as `phase`.
    pub async fn time<T>(&self, phase: Phase, work: impl std::future::Future<Output = T>) -> T {
        let started = Instant::now();
        let out = work.await;
        self.add(phase, started.elapsed());
        out
    }

    /// A stage took `wall`: divides it among its phases by their share of its lanes' times.
    pub fn end_stage(&self, wall: Duration) {
        let spent = std::mem::take(&mut *self.stage.lock().unwrap_or_else(|p| p.into_inner()));
        let sum: f64 = spent.iter().map(Duration::as_secs_f64).sum();
        let mut total = self.total.lock().unwrap_or_else(|p| p.into_inner());
        if sum <= 0.0 {
            // Nothing timed (e.g. only skipped actions): count it as bookkeeping.
            return;
        }
        for (index, part) in spent.iter().enumerate() {
            total[index] += wall.mul_f64(part.as_secs_f64() / sum);
        }
    }

    /// Writes the attributed times into `timings`.
    pub fn fill(&self, timings: &mut HostTimings) {
        let total = self.total.lock().unwrap_or_else(|p| p.into_inner());
        timings.pull = total[0].as_secs_f64();
        timings.create = total[1].as_secs_f64();
        timings.start = total[2].as_secs_f64();
        timings.ready = total[3].as_secs_f64();
        timings.remove = total[4].as_secs_f64();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_wall_time_is_shared_by_its_phases() {
        let clock = PhaseClock::default();
        // Two lanes at once: 1 s of create + 3 s of ready in a stage of 2 s wall time.
        clock.add(Phase::Create, Duration::from_secs(1));
        clock.add(Phase::Ready, Duration::from_secs(3));
        clock.end_stage(Duration::from_secs(2));
        clock.add(Phase::Remove, Duration::from_millis(100));
        clock.end_stage(Duration::from_millis(100));
        let mut timings = HostTimings::default();
        clock.fill(&mut timings);
        assert_eq!(timings.create, 0.5);
        assert_eq!(timings.ready, 1.5);
        assert_eq!(timings.remove, 0.1);
        assert_eq!(timings.pull + timings.start, 0.0);
    }
}
