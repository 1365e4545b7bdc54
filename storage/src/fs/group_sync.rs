//! Group commit of the fsyncs that end uploads.
//!
//! Each finished upload used to fsync its own data file twice, one after the
//! other, on its own thread; with many small concurrent pushes the disk's
//! flush latency, not the bytes, set the rate. Here the uploads that are
//! ready to be made durable at the same moment are served together by one
//! "leader" thread, with one `syncfs(2)` of the storage's filesystem: it
//! writes back every dirty page and inode of that filesystem, commits the
//! journal and flushes the device cache once for the whole batch, directory
//! entries included. Nobody waits for a timer: a batch is whoever queued
//! while the previous leader was syncing, so a lone upload pays no extra
//! latency.
//!
//! Why this is as safe as a per-upload fsync:
//! - everything a member wrote before it queued is dirty in the page cache
//!   or already written, so the `syncfs` that starts after it queued covers
//!   it; the member is released only when that call returned;
//! - errors: `syncfs` reports a write-back error of the filesystem since the
//!   last call (Linux 5.8 and later; older kernels get per-file `fdatasync`
//!   instead, see [`GroupSync::new`]); and since a page whose write-back
//!   failed may have failed before that, each member's own data files are
//!   then checked with `sync_file_range(WAIT_AFTER)`, which returns the
//!   write-back errors recorded on that file since it was opened (no I/O:
//!   the pages are clean by then). A member fails on its own error or on the
//!   `syncfs` error, never because another member's file failed.
//!
//! The cost: `syncfs` also writes back unrelated dirty data of the same
//! filesystem (another program's files on a shared root): one took 1.2 s
//! with 185 MB dirty on a shared build machine. So a batch uses `syncfs`
//! only while the system's dirty page cache is small
//! ([`SYNCFS_MAX_DIRTY`]); otherwise (and for a batch of one) the members'
//! files and the batch's directories are fsynced concurrently, which still
//! lets the journal commit them together.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

/// What one upload needs durable before it may be acknowledged.
#[derive(Default)]
pub(super) struct SyncRequest {
    /// Data files to `fdatasync` (the upload's own open files).
    pub(super) files: Vec<File>,
    /// Directories whose entries must be durable (opened and `fsync`ed).
    pub(super) dirs: Vec<PathBuf>,
}

#[derive(Default)]
struct State {
    next_ticket: u64,
    queued: Vec<(u64, SyncRequest)>,
    leader_active: bool,
    /// Results of finished batches not yet picked up by their member.
    done: HashMap<u64, Result<(), (io::ErrorKind, String)>>,
    /// Batches run and members served, for tests and logs.
    batches: u64,
    members: u64,
}

/// The shared group-commit queue of one storage root.
pub(super) struct GroupSync {
    state: Mutex<State>,
    finished: Condvar,
    /// The storage root, open for `syncfs`; `None`: sync file by file.
    /// Opened once, so its `syncfs` reports every error since the last call.
    filesystem: Option<File>,
    /// Benchmark switch, see [`GROUP_COMMIT_ENV`].
    mode: Mode,
}

/// Environment variable that turns group commit off, so benchmarks can
/// measure what it gains against the same binary; not a config key.
/// `off`: every upload syncs its own files and folders alone (the same
/// promise without the sharing); `legacy`: every upload syncs only its data
/// file, twice (`fdatasync`, then `fsync`), and no folder, as uploads did
/// before group commit.
const GROUP_COMMIT_ENV: &str = "BERTH_GROUP_COMMIT";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Group,
    Off,
    Legacy,
}

impl GroupSync {
    /// Group commits with `syncfs` on the filesystem holding `root`, when
    /// the kernel reports write-back errors from it (5.8 and later);
    /// otherwise each member's files and folders are synced one by one.
    pub(super) fn new(root: &Path) -> GroupSync {
        let filesystem = if kernel_at_least(5, 8) {
            match File::open(root) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    tracing::warn!(root = %root.display(), error = %e,
                        "cannot open the storage root for syncfs; uploads are synced one by one");
                    None
                }
            }
        } else {
            tracing::info!("kernel older than 5.8: uploads are synced one by one (syncfs reports no errors there)");
            None
        };
        let mode = match std::env::var(GROUP_COMMIT_ENV).as_deref() {
            Ok("off") => Mode::Off,
            Ok("legacy") => Mode::Legacy,
            _ => Mode::Group,
        };
        if mode != Mode::Group {
            tracing::warn!(
                ?mode,
                "{GROUP_COMMIT_ENV}: group commit is off (for benchmarks)"
            );
        }
        GroupSync {
            state: Mutex::default(),
            finished: Condvar::new(),
            filesystem,
            mode,
        }
    }

    /// Syncs every member's files and folders one by one (no `syncfs`).
    #[cfg(test)]
    pub(super) fn file_by_file() -> GroupSync {
        GroupSync {
            state: Mutex::default(),
            finished: Condvar::new(),
            filesystem: None,
            mode: Mode::Group,
        }
    }

    /// Makes `req` durable, sharing the work with the uploads that ask at the
    /// same time; blocks (call from a blocking thread) until it is.
    pub(super) fn sync(&self, req: SyncRequest) -> io::Result<()> {
        match self.mode {
            Mode::Group => {}
            Mode::Off => {
                let result = run_batch(vec![(0, req)]).pop().map_or(Ok(()), |(_, r)| r);
                return result.map_err(|(kind, msg)| io::Error::new(kind, msg));
            }
            Mode::Legacy => {
                for file in &req.files {
                    file.sync_data()?;
                    file.sync_all()?;
                }
                return Ok(());
            }
        }
        let mut st = self.lock();
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queued.push((ticket, req));
        loop {
            if let Some(result) = st.done.remove(&ticket) {
                return result.map_err(|(kind, msg)| io::Error::new(kind, msg));
            }
            if st.leader_active {
                st = self
                    .finished
                    .wait(st)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                continue;
            }
            // Lead: take everything queued (ours included) and sync it unlocked,
            // while the next batch queues up behind us.
            st.leader_active = true;
            let batch = std::mem::take(&mut st.queued);
            drop(st);
            // syncfs only when it has little else to write: it would make
            // these uploads wait for every dirty page of the filesystem.
            let cheap_syncfs =
                batch.len() > 1 && dirty_bytes().is_some_and(|dirty| dirty <= SYNCFS_MAX_DIRTY);
            let results = match &self.filesystem {
                Some(fs) if cheap_syncfs => run_batch_syncfs(fs, batch),
                _ => run_batch(batch),
            };
            st = self.lock();
            st.batches += 1;
            st.members += results.len() as u64;
            st.done.extend(results);
            st.leader_active = false;
            self.finished.notify_all();
        }
    }

    /// (batches, members) served so far.
    #[cfg(test)]
    pub(super) fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.batches, st.members)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the counters half-updated in a way
        // that matters: keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A batch uses `syncfs` only while the system holds at most this much dirty
/// page cache (all of it might belong to this filesystem and be written).
const SYNCFS_MAX_DIRTY: u64 = 8 << 20;
/// Threads that fsync a batch's files (or directories) at once.
const PARALLEL_SYNCS: usize = 16;

type MemberResult = (u64, Result<(), (io::ErrorKind, String)>);

/// One `syncfs` for the whole batch, then each member's own data files are
/// checked for write-back errors recorded on them.
fn run_batch_syncfs(filesystem: &File, batch: Vec<(u64, SyncRequest)>) -> Vec<MemberResult> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs(2) takes an fd that `filesystem` keeps open.
    let shared = if unsafe { libc::syncfs(filesystem.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err((e.kind(), format!("syncfs: {e}")))
    };
    batch
        .iter()
        .map(|(ticket, req)| {
            let own = req.files.iter().find_map(|f| {
                wait_for_writeback(f)
                    .err()
                    .map(|e| (e.kind(), format!("write-back of upload data: {e}")))
            });
            (*ticket, own.map_or_else(|| shared.clone(), Err))
        })
        .collect()
}

/// Waits for any write-back of `file` in progress and returns the write-back
/// errors recorded on it since it was opened.
fn wait_for_writeback(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain integers and an fd that `file` keeps open for the call.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether the running kernel is at least `major.minor` (false when unknown).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (have_major, have_minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (have_major, have_minor) >= (major, minor)
}

/// Syncs every member's files, then the batch's directories (each once),
/// on up to [`PARALLEL_SYNCS`] threads at a time: concurrent fsyncs share
/// journal commits, sequential ones would each pay a device flush. Each
/// member gets the first error among its own items.
fn run_batch(batch: Vec<(u64, SyncRequest)>) -> Vec<MemberResult> {
    for (_, req) in &batch {
        for f in &req.files {
            start_writeback(f);
        }
    }
    let files: Vec<(usize, &File)> = batch
        .iter()
        .enumerate()
        .flat_map(|(m, (_, req))| req.files.iter().map(move |f| (m, f)))
        .collect();
    let file_errors = in_parallel(&files, |(_, f)| {
        f.sync_data()
            .map_err(|e| (e.kind(), format!("fdatasync: {e}")))
    });
    let dirs: Vec<&PathBuf> = batch
        .iter()
        .flat_map(|(_, r)| &r.dirs)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let dir_errors = in_parallel(&dirs, |dir| {
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| {
            (
                e.kind(),
                format!("fsync of directory {}: {e}", dir.display()),
            )
        })
    });
    let dir_error: HashMap<&PathBuf, _> = dirs.iter().copied().zip(dir_errors).collect();
    let mut member_errors: HashMap<usize, (io::ErrorKind, String)> = HashMap::new();
    for ((m, _), result) in files.iter().zip(file_errors) {
        if let Err(e) = result {
            member_errors.entry(*m).or_insert(e);
        }
    }
    batch
        .iter()
        .enumerate()
        .map(|(m, (ticket, req))| {
            let err = member_errors.remove(&m).or_else(|| {
                req.dirs
                    .iter()
                    .find_map(|d| dir_error.get(d).and_then(|r| r.clone().err()))
            });
            (*ticket, err.map_or(Ok(()), Err))
        })
        .collect()
}

type ItemResult = Result<(), (io::ErrorKind, String)>;

/// `op` on every item, on up to [`PARALLEL_SYNCS`] scoped threads; results in order.
fn in_parallel<T: Sync>(items: &[T], op: impl Fn(&T) -> ItemResult + Sync) -> Vec<ItemResult> {
    if items.len() <= 1 {
        return items.iter().map(&op).collect();
    }
    let per_thread = items.len().div_ceil(PARALLEL_SYNCS);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per_thread)
            .map(|chunk| scope.spawn(|| chunk.iter().map(&op).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err((
                        io::ErrorKind::Other,
                        "sync thread panicked".to_string(),
                    ))]
                })
            })
            .collect()
    })
}

/// Dirty page cache of the whole system, in bytes (`/proc/meminfo`).
fn dirty_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("Dirty:"))?;
    let kb: u64 = line["Dirty:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Start writing a whole file back without waiting (a hint; the
/// `fdatasync` after it reports real errors).
fn start_writeback(file: &File) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range(2) takes plain integers and an fd that `file`
    // keeps open for the call; length 0 means "to the end of the file".
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    #[test]
    fn concurrent_members_are_all_served_and_batched() {
        let dir = tempfile::tempdir().expect("tempdir");
        concurrent_members(dir.path(), GroupSync::new(dir.path()));
        concurrent_members(dir.path(), GroupSync::file_by_file());
    }

    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least(2, 6));
        assert!(!kernel_at_least(999, 0));
    }

    fn concurrent_members(root: &Path, sync: GroupSync) {
        let sync = Arc::new(sync);
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let (sync, root) = (sync.clone(), root.to_path_buf());
                std::thread::spawn(move || {
                    for j in 0..8 {
                        let path = root.join(format!("f{i}-{j}"));
                        let mut f = File::create(&path).expect("create");
                        f.write_all(&[i as u8; 4096]).expect("write");
                        let req = SyncRequest {
                            files: vec![f],
                            dirs: vec![root.clone()],
                        };
                        sync.sync(req).expect("sync");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("member thread");
        }
        let (batches, members) = sync.counts();
        assert_eq!(members, 32 * 8, "every request is served exactly once");
        assert!(batches >= 1 && batches <= members);
        assert!(sync.lock().done.is_empty(), "no result left behind");
        assert!(sync.lock().queued.is_empty());
    }

    #[test]
    fn an_error_goes_to_its_member_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sync = GroupSync::file_by_file();
        let missing = SyncRequest {
            files: Vec::new(),
            dirs: vec![dir.path().join("no-such-dir")],
        };
        let err = sync.sync(missing).expect_err("missing directory");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("no-such-dir"), "{err}");
        let fine = SyncRequest {
            files: vec![File::create(dir.path().join("a")).expect("create")],
            dirs: vec![dir.path().to_path_buf()],
        };
        sync.sync(fine)
            .expect("a healthy member is not failed by another's error");
    }
}
