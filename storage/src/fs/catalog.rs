//! Sorted indexes for catalog and tag pages on a filesystem, so a page of
//! 100 names does not cost a walk of 100,000 repository folders or a listing
//! of 100,000 tag files.
//!
//! - The catalog is a sorted set in memory, built by one walk of the tree the
//!   first time it is needed (so a registry written by an older version, or
//!   changed by hand, is read as it is, never trusted from an old index) and
//!   kept current from `index/repositories.log`: every process appends a
//!   repository's name there before creating it, and every reader reads what
//!   was appended since it last looked. Names are checked against their
//!   folders when a page is served, so a name logged by a push that then
//!   failed, or a folder removed by hand, is not listed.
//! - A big tag folder's sorted listing is kept while the folder's mtime stays
//!   the same (creating, renaming or removing a tag file changes it).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::files::{find_repositories, list_dir, not_found_as_none};
use crate::layout::{Layout, CATALOG_LOG, REPOSITORIES};
use crate::NamePage;

/// Tag folders with fewer files than this are listed on every request (fast
/// enough); bigger ones are kept sorted in memory.
const TAG_LIST_MIN: usize = 1000;
/// Big tag listings kept at most; one is dropped to make room.
const TAG_LISTS_MAX: usize = 64;
/// A folder's mtime is only trusted once it is this old: its clock ticks
/// coarsely, so a change within the same tick as the listing could keep it.
const MTIME_SETTLED: Duration = Duration::from_secs(1);

/// A tag folder's mtime when listed, and its sorted file names.
type TagList = (SystemTime, Arc<Vec<String>>);

#[derive(Default)]
pub(super) struct Indexes {
    catalog: Mutex<Catalog>,
    /// Repository -> (tag folder's mtime, its sorted file names).
    tags: Mutex<HashMap<String, TagList>>,
}

#[derive(Default)]
struct Catalog {
    /// Every repository walked or logged; `None` until the first walk.
    names: Option<BTreeSet<String>>,
    /// The log file read (device, inode) and how far.
    log_id: Option<(u64, u64)>,
    log_read: u64,
    /// Repositories this process knows are logged or were there before it.
    noted: HashSet<String>,
}

impl Indexes {
    /// Called before a repository is written to: a repository new to the
    /// storage gets its name logged first, so no other process misses it.
    pub(super) fn note(&self, root: &Path, repository: &str) -> io::Result<()> {
        if self.is_noted(repository) {
            return Ok(());
        }
        if !repository_exists(root, repository) {
            append_name(&root.join(CATALOG_LOG), repository)?;
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog.noted.insert(repository.to_string());
        if let Some(names) = catalog.names.as_mut() {
            names.insert(repository.to_string());
        }
        Ok(())
    }

    fn is_noted(&self, repository: &str) -> bool {
        let catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog.noted.contains(repository)
            || catalog
                .names
                .as_ref()
                .is_some_and(|n| n.contains(repository))
    }

    /// The repositories after `after`, at most `limit`, each checked on disk.
    pub(super) fn catalog_page(
        &self,
        root: &Path,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> io::Result<NamePage> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog.refresh(root)?;
        let names = catalog.names.get_or_insert_with(BTreeSet::new);
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let present = names
            .range::<str, _>((lower, Bound::Unbounded))
            .filter(|name| repository_exists(root, name))
            .cloned();
        Ok(NamePage::from_iter(present, limit))
    }

    /// Every name in the index, not checked on disk (two `stat`s per name
    /// add up to most of a cold catalog page at 10,000 repositories).
    pub(super) fn catalog_names_unchecked(&self, root: &Path) -> io::Result<Vec<String>> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog.refresh(root)?;
        Ok(catalog
            .names
            .as_ref()
            .map(|names| names.iter().cloned().collect())
            .unwrap_or_default())
    }

    /// A page of a repository's tags; `None` when the repository does not exist.
    pub(super) fn tags_page(
        &self,
        root: &Path,
        repository: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> io::Result<Option<NamePage>> {
        if !root.join(Layout::Fs.repository(repository)).is_dir() {
            return Ok(None);
        }
        let dir = root.join(Layout::Fs.tags(repository));
        let Some(modified) = not_found_as_none(fs::metadata(&dir))?
            .map(|m| m.modified())
            .transpose()?
        else {
            return Ok(Some(NamePage::default()));
        };
        let cached = {
            let lists = self.tags.lock().unwrap_or_else(|e| e.into_inner());
            lists
                .get(repository)
                .filter(|(at, _)| *at == modified)
                .map(|(_, list)| list.clone())
        };
        let list = match cached {
            Some(list) => list,
            None => {
                let settled = SystemTime::now()
                    .duration_since(modified)
                    .is_ok_and(|age| age >= MTIME_SETTLED);
                let list = Arc::new(list_dir(&dir)?);
                if settled && list.len() >= TAG_LIST_MIN {
                    self.keep_tag_list(repository, modified, list.clone());
                }
                list
            }
        };
        Ok(Some(NamePage::of(&list, after, limit)))
    }

    fn keep_tag_list(&self, repository: &str, modified: SystemTime, list: Arc<Vec<String>>) {
        let mut lists = self.tags.lock().unwrap_or_else(|e| e.into_inner());
        if lists.len() >= TAG_LISTS_MAX && !lists.contains_key(repository) {
            if let Some(victim) = lists.keys().next().cloned() {
                lists.remove(&victim);
            }
        }
        lists.insert(repository.to_string(), (modified, list));
    }
}

impl Catalog {
    /// Walk the tree the first time (or when the log was replaced), then
    /// take in whatever was logged since the last look.
    fn refresh(&mut self, root: &Path) -> io::Result<()> {
        let log_path = root.join(CATALOG_LOG);
        let log = not_found_as_none(fs::metadata(&log_path))?;
        let log_id = log.as_ref().map(|m| (m.dev(), m.ino()));
        let log_len = log.as_ref().map_or(0, |m| m.len());
        if self.names.is_none() || log_id != self.log_id || log_len < self.log_read {
            let mut walked = Vec::new();
            find_repositories(&root.join(REPOSITORIES), "", &mut walked)?;
            let mut names: BTreeSet<String> = walked.into_iter().collect();
            names.extend(self.noted.iter().cloned());
            self.names = Some(names);
            self.log_id = log_id;
            self.log_read = 0;
        }
        if log_len > self.log_read {
            let (logged, read) = read_names(&log_path, self.log_read)?;
            if let Some(names) = self.names.as_mut() {
                names.extend(logged);
            }
            self.log_read += read;
        }
        Ok(())
    }
}

/// Whether a repository holds anything (the same test as the walk's).
pub(super) fn repository_exists(root: &Path, repository: &str) -> bool {
    let repo = root.join(Layout::Fs.repository(repository));
    repo.join("_manifests").is_dir() || repo.join("_layers").is_dir()
}

/// Append one name as a line. One `write` with O_APPEND, so lines from
/// several processes never interleave. Not fsynced (the repository's own
/// folders are not either): a line lost in a crash only hides the repository
/// from processes that were already running, and any process started after
/// the crash finds it by its walk.
fn append_name(log: &Path, name: &str) -> io::Result<()> {
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = OpenOptions::new().create(true).append(true).open(log)?;
    file.write_all(format!("{name}\n").as_bytes())
}

/// The whole lines of the log from `offset`, and how many bytes they took (a
/// line still being written is left for the next look).
fn read_names(log: &Path, offset: u64) -> io::Result<(Vec<String>, u64)> {
    let Some(mut file) = not_found_as_none(fs::File::open(log))? else {
        return Ok((Vec::new(), 0));
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut raw = Vec::new();
    file.read_to_end(&mut raw)?;
    let whole = raw.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let names = String::from_utf8_lossy(&raw[..whole])
        .lines()
        .filter(|l| crate::names::is_valid_repository_name(l))
        .map(str::to_string)
        .collect();
    Ok((names, whole as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make_repository(root: &Path, name: &str) {
        fs::create_dir_all(root.join(Layout::Fs.repository(name)).join("_layers")).expect("mkdir");
    }

    #[test]
    fn the_log_carries_repositories_between_processes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        make_repository(root, "old/one"); // written by an older version: no log
        let (reader, writer) = (Indexes::default(), Indexes::default());
        let page = reader.catalog_page(root, None, None).expect("page");
        assert_eq!(page.names, vec!["old/one".to_string()]);
        // Another process creates two repositories; one push fails after logging.
        writer.note(root, "b/new").expect("note");
        make_repository(root, "b/new");
        writer.note(root, "a/failed").expect("note");
        // A half-written line is not read yet.
        let mut log = OpenOptions::new()
            .append(true)
            .open(root.join(CATALOG_LOG))
            .expect("log");
        log.write_all(b"c/half").expect("write");
        let page = reader.catalog_page(root, None, Some(10)).expect("page");
        assert_eq!(page.names, vec!["b/new".to_string(), "old/one".to_string()]);
        make_repository(root, "c/half");
        log.write_all(b"\n").expect("write");
        let page = reader
            .catalog_page(root, Some("b/new"), Some(1))
            .expect("page");
        assert_eq!(
            page,
            NamePage {
                names: vec!["c/half".to_string()],
                more: true
            }
        );
    }

    #[test]
    fn big_tag_lists_follow_the_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        make_repository(root, "r");
        let tags = root.join(Layout::Fs.tags("r"));
        fs::create_dir_all(&tags).expect("mkdir");
        for i in 0..TAG_LIST_MIN + 5 {
            fs::write(tags.join(format!("t{i:05}")), b"x").expect("tag");
        }
        let old = SystemTime::now() - Duration::from_secs(60);
        fs::File::open(&tags)
            .and_then(|f| f.set_modified(old))
            .expect("age the folder");
        let index = Indexes::default();
        let page = index.tags_page(root, "r", Some("t00001"), Some(2));
        let page = page.expect("page").expect("repository");
        assert_eq!(page.names, vec!["t00002".to_string(), "t00003".to_string()]);
        assert!(index.tags.lock().expect("lock").contains_key("r"));
        // A tag removed changes the folder's mtime: the list is read again.
        fs::remove_file(tags.join("t00002")).expect("rm");
        let page = index.tags_page(root, "r", Some("t00001"), Some(1));
        assert_eq!(page.expect("page").expect("repo").names, vec!["t00003"]);
        assert_eq!(index.tags_page(root, "nope", None, None).expect("ok"), None);
    }
}
