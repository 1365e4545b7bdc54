//! Group commit of the fsyncs that end uploads.
//!
//! Each finished upload used to fsync its own data file twice, one after the
//! other, on its own thread; with many small concurrent pushes the disk's
//! flush latency, not the bytes, set the rate. Here the uploads that are
//! ready to be made durable at the same moment are served by one "leader"
//! thread: it starts writeback of every member's file first (so their blocks
//! are allocated in the same journal transaction), then `fdatasync`s each
//! file and `fsync`s each directory named (deduplicated across the batch).
//! On ext4/xfs the first call commits the journal for all of them and the
//! others find their inode already committed, so a batch costs about one
//! flush instead of one per upload.
//!
//! Why this is as safe as a per-upload fsync: every member's own files are
//! still passed to `fdatasync`/`fsync` on its own open file, after its last
//! write, and the member is released only when those calls returned, with
//! their error (if any) given to that member alone. Nobody waits for a
//! timer: the batch is whoever queued while the previous leader was syncing,
//! so one lone upload pays no extra latency.
//!
//! Why not `syncfs(2)`: it also flushes every unrelated dirty page of the
//! filesystem (a big upload in progress, other programs on a shared root),
//! which made one small push wait for gigabytes.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io;
use std::path::PathBuf;
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
#[derive(Default)]
pub(super) struct GroupSync {
    state: Mutex<State>,
    finished: Condvar,
}

impl GroupSync {
    /// Makes `req` durable, sharing the work with the uploads that ask at the
    /// same time; blocks (call from a blocking thread) until it is.
    pub(super) fn sync(&self, req: SyncRequest) -> io::Result<()> {
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
            let results = run_batch(batch);
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

type MemberResult = (u64, Result<(), (io::ErrorKind, String)>);

/// Syncs every member's files and directories; each member gets the first
/// error among its own items.
fn run_batch(batch: Vec<(u64, SyncRequest)>) -> Vec<MemberResult> {
    for (_, req) in &batch {
        for f in &req.files {
            start_writeback(f);
        }
    }
    let mut errors: HashMap<u64, (io::ErrorKind, String)> = HashMap::new();
    for (ticket, req) in &batch {
        for f in &req.files {
            if let Err(e) = f.sync_data() {
                errors
                    .entry(*ticket)
                    .or_insert((e.kind(), format!("fdatasync: {e}")));
            }
        }
    }
    let dirs: BTreeSet<&PathBuf> = batch.iter().flat_map(|(_, r)| &r.dirs).collect();
    let mut dir_errors: HashMap<&PathBuf, (io::ErrorKind, String)> = HashMap::new();
    for dir in dirs {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            let msg = format!("fsync of directory {}: {e}", dir.display());
            dir_errors.insert(dir, (e.kind(), msg));
        }
    }
    batch
        .iter()
        .map(|(ticket, req)| {
            let err = errors
                .remove(ticket)
                .or_else(|| req.dirs.iter().find_map(|d| dir_errors.get(d).cloned()));
            (*ticket, err.map_or(Ok(()), Err))
        })
        .collect()
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
        let sync = Arc::new(GroupSync::default());
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let (sync, root) = (sync.clone(), dir.path().to_path_buf());
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
        let sync = GroupSync::default();
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
