//! Spill files: what a collection learns about millions of keys goes to
//! local files, split into buckets, and is read back one bucket at a time,
//! so memory holds one bucket's worth and never a set of every key.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A private folder of spill files, removed when dropped.
pub(crate) struct SpillDir {
    path: PathBuf,
}

impl SpillDir {
    /// A new folder below `parent` (the system's temporary folder in use).
    pub(crate) fn new(parent: &Path) -> io::Result<SpillDir> {
        let path = parent.join(format!("berth-gc-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&path)?;
        Ok(SpillDir { path })
    }

    /// `buckets` files named `name-<n>`, created as lines arrive.
    pub(crate) fn buckets(&self, name: &str, buckets: usize) -> Spill {
        Spill {
            dir: self.path.clone(),
            name: name.to_string(),
            files: (0..buckets).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl Drop for SpillDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// One kind of record, split into buckets of lines. Lines must not hold
/// `\n` (keys and digests never do).
pub(crate) struct Spill {
    dir: PathBuf,
    name: String,
    files: Vec<Mutex<Option<BufWriter<File>>>>,
}

impl Spill {
    fn path(&self, bucket: usize) -> PathBuf {
        self.dir.join(format!("{}-{bucket}", self.name))
    }

    /// Append one line to a bucket.
    pub(crate) fn push(&self, bucket: usize, line: &str) -> io::Result<()> {
        let mut slot = self.files[bucket].lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            let file = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.path(bucket))?;
            *slot = Some(BufWriter::with_capacity(16 << 10, file));
        }
        let writer = slot
            .as_mut()
            .ok_or_else(|| io::Error::other("spill closed"))?;
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\n")
    }

    /// Every line of a bucket so far (the bucket stays open for more).
    pub(crate) fn read(&self, bucket: usize) -> io::Result<Vec<String>> {
        let mut slot = self.files[bucket].lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_mut() {
            Some(writer) => writer.flush()?,
            None => return Ok(Vec::new()),
        }
        BufReader::new(File::open(self.path(bucket))?)
            .lines()
            .collect()
    }

    /// Drop a bucket's lines once read for the last time (frees disk early).
    pub(crate) fn discard(&self, bucket: usize) {
        let mut slot = self.files[bucket].lock().unwrap_or_else(|e| e.into_inner());
        if slot.take().is_some() {
            let _ = fs::remove_file(self.path(bucket));
        }
    }
}

/// A stable bucket for a string (FNV-1a): the same repository or key lands
/// in the same bucket in every phase of a collection.
pub(crate) fn bucket_of(text: &str, buckets: usize) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % buckets as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_come_back_by_bucket_and_the_folder_goes() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = SpillDir::new(parent.path()).expect("spill dir");
        let spill = dir.buckets("t", 4);
        for i in 0..1000 {
            spill.push(i % 4, &format!("line {i}")).expect("push");
        }
        let two = spill.read(2).expect("read");
        assert_eq!(two.len(), 250);
        assert_eq!(two[0], "line 2");
        assert_eq!(two[249], "line 998");
        spill.push(2, "later").expect("push after read");
        assert_eq!(spill.read(2).expect("read").len(), 251);
        spill.discard(2);
        assert!(spill.read(2).expect("read").is_empty());
        assert!(spill.read(3).expect("read").len() == 250);
        let inside = parent.path().read_dir().expect("ls").count();
        assert_eq!(inside, 1);
        drop(dir);
        assert_eq!(parent.path().read_dir().expect("ls").count(), 0);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket_of("library/app", 64), bucket_of("library/app", 64));
        let mut seen = [0usize; 16];
        for i in 0..1600 {
            seen[bucket_of(&format!("repo{i}"), 16)] += 1;
        }
        assert!(seen.iter().all(|n| *n > 50), "{seen:?}");
    }
}
