//! A small pool of threads of its own, with a bounded queue, for work that
//! is slow on purpose (bcrypt). Running it on tokio's shared blocking pool
//! let a flood of logins take up to 512 threads and starve file reads and
//! every other request; here at most `threads` checks run at once, at most
//! `queue` wait, and anything beyond is refused at once ([`Busy`]) so the
//! caller can answer 429 instead of queueing without bound.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The queue is full: try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

pub struct WorkerPool {
    sender: SyncSender<Job>,
    threads: usize,
    queue: usize,
}

impl std::fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("threads", &self.threads)
            .field("queue", &self.queue)
            .finish()
    }
}

impl WorkerPool {
    /// `threads` workers (at least one) named `name-N`, and room for `queue`
    /// jobs waiting. Threads end when the pool is dropped and the queue is
    /// empty.
    pub fn new(name: &str, threads: usize, queue: usize) -> std::io::Result<WorkerPool> {
        let threads = threads.max(1);
        let (sender, receiver) = sync_channel::<Job>(queue);
        let receiver = Arc::new(Mutex::new(receiver));
        for n in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{n}"))
                .spawn(move || work(&receiver))?;
        }
        Ok(WorkerPool {
            sender,
            threads,
            queue,
        })
    }

    /// Run `job` on a worker, or refuse it at once when `queue` jobs are
    /// already waiting.
    pub fn try_run(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Busy> {
        match self.sender.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            // Disconnected cannot happen while we hold the sender and the
            // workers live; refusing is the safe answer either way.
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }
}

fn work(receiver: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, not while
        // running it: one idle worker waits in recv, the others on the lock.
        let job = match receiver.lock() {
            Ok(receiver) => receiver.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else {
            return; // the pool was dropped
        };
        // A panicking job must not shrink the pool; its caller sees its
        // result channel closed.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::channel;
    use std::time::Duration;

    #[test]
    fn runs_jobs_and_refuses_past_the_queue() {
        let pool = WorkerPool::new("test-pool", 2, 3).expect("pool");
        // Block both workers until released.
        let (release, gate) = channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let (started, started_rx) = channel::<()>();
        for _ in 0..2 {
            let (gate, started) = (gate.clone(), started.clone());
            pool.try_run(move || {
                let _ = started.send(());
                let _ = gate.lock().map(|g| g.recv());
            })
            .expect("a worker takes it");
        }
        for _ in 0..2 {
            started_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("both workers busy");
        }
        // Three may wait; the fourth is refused at once.
        let done = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let done = done.clone();
            pool.try_run(move || {
                done.fetch_add(1, Ordering::SeqCst);
            })
            .expect("queued");
        }
        assert_eq!(pool.try_run(|| {}), Err(Busy));
        // Released, everything queued runs.
        let _ = release.send(());
        let _ = release.send(());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while done.load(Ordering::SeqCst) < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "queued jobs never ran"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(pool.try_run(|| {}).is_ok(), "room again");
    }

    #[test]
    fn never_runs_more_than_its_threads_at_once() {
        let pool = WorkerPool::new("test-pool", 2, 64).expect("pool");
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (done, done_rx) = channel::<()>();
        for _ in 0..40 {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            pool.try_run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(2));
                running.fetch_sub(1, Ordering::SeqCst);
                let _ = done.send(());
            })
            .expect("queued");
        }
        for _ in 0..40 {
            done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("job finished");
        }
        let peak = peak.load(Ordering::SeqCst);
        assert!((1..=2).contains(&peak), "{peak} jobs ran at once");
    }

    #[test]
    fn a_panicking_job_keeps_the_worker() {
        let pool = WorkerPool::new("test-pool", 1, 4).expect("pool");
        pool.try_run(|| panic!("job panics")).expect("queued");
        let (tx, rx) = channel();
        pool.try_run(move || {
            let _ = tx.send(42);
        })
        .expect("queued");
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(42));
    }
}
