//! Push and pull times on a filesystem (see [`crate::records`]): a tag
//! file's and a manifest link's mtime, and the `_pulls` file.

use std::fs;
use std::path::Path;

use super::files::{list_dir, list_files, not_found_as_none, Paths};
use super::LAYOUT;
use crate::layout::LinkKind;
use crate::records::{
    encode_pulls, merge_pulls, parse_pulls, pulls_key, summary_key, tags_stamp_of,
};
use crate::{Digest, ManifestRecord, PullTimes, Result, StorageError, SummaryPart, TagRecord};

pub(super) fn tag_records(dir: &Path) -> Result<Vec<TagRecord>> {
    let mut out = Vec::new();
    for tag in list_dir(dir)? {
        let path = dir.join(&tag);
        let Some(meta) = not_found_as_none(fs::metadata(&path))? else {
            continue; // deleted while listing
        };
        let Some(raw) = not_found_as_none(fs::read_to_string(&path))? else {
            continue;
        };
        let digest = raw
            .trim()
            .parse()
            .map_err(|e| StorageError::Corrupt(format!("{}: {e}", path.display())))?;
        out.push(TagRecord {
            tag,
            digest,
            pushed: meta.modified()?,
        });
    }
    Ok(out)
}

pub(super) fn manifest_records(root: &Path, repository: &str) -> Result<Vec<ManifestRecord>> {
    let dir = format!("{}/", LAYOUT.links(repository, LinkKind::Manifest));
    let mut out: Vec<ManifestRecord> = list_files(root, &dir)?
        .into_iter()
        .filter_map(|item| {
            let link = LAYOUT.parse_link(&item.key)?;
            (link.repository == repository).then_some(ManifestRecord {
                digest: link.digest,
                pushed: item.modified,
            })
        })
        .collect();
    out.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(out)
}

pub(super) fn pulls(root: &Path, repository: &str) -> Result<PullTimes> {
    let key = pulls_key(repository);
    match not_found_as_none(fs::read(root.join(&key)))? {
        Some(raw) => parse_pulls(&key, &raw),
        None => Ok(PullTimes::new()),
    }
}

/// Read, edit, write back when `edit` changed something. The caller holds
/// the process's pull-record lock.
pub(super) fn edit_pulls(
    paths: &Paths,
    repository: &str,
    edit: impl FnOnce(&mut PullTimes) -> bool,
) -> Result<()> {
    if !paths.repo(repository).is_dir() {
        return Ok(()); // deleted meanwhile: do not bring it back
    }
    let mut stored = pulls(&paths.root, repository)?;
    if !edit(&mut stored) {
        return Ok(());
    }
    let bytes = encode_pulls(&stored)?;
    Ok(paths.write_atomic(&paths.at(&pulls_key(repository)), &bytes)?)
}

pub(super) fn record_pulls(paths: &Paths, repository: &str, new: &PullTimes) -> Result<()> {
    edit_pulls(paths, repository, |stored| {
        merge_pulls(stored, new);
        true
    })
}

pub(super) fn drop_pulls(paths: &Paths, repository: &str, digests: &[Digest]) -> Result<()> {
    edit_pulls(paths, repository, |stored| {
        let before = stored.len();
        stored.retain(|d, _| !digests.contains(d));
        stored.len() != before
    })
}

/// Names, inodes and change times of the tag files, without reading them.
/// A tag is written by renaming a new file over it, so a push (even of the
/// same digest, even within the clock's granularity) gives a new inode.
pub(super) fn tags_stamp(paths: &Paths, repository: &str) -> Result<Option<String>> {
    use std::os::unix::fs::MetadataExt;
    // The catalog's own test: its unchecked list is checked with this.
    if !super::catalog::repository_exists(&paths.root, repository) {
        return Ok(None);
    }
    let mut lines = Vec::new();
    if let Some(entries) = not_found_as_none(fs::read_dir(paths.tags_dir(repository)))? {
        for entry in entries {
            let entry = entry?;
            let Some(meta) = not_found_as_none(entry.metadata())? else {
                continue; // deleted while listing
            };
            lines.push(format!(
                "{} {} {}.{}",
                entry.file_name().to_string_lossy(),
                meta.ino(),
                meta.mtime(),
                meta.mtime_nsec()
            ));
        }
    }
    Ok(Some(tags_stamp_of(lines)))
}

pub(super) fn summary_get(
    root: &Path,
    repository: &str,
    part: SummaryPart,
) -> Result<Option<Vec<u8>>> {
    Ok(not_found_as_none(fs::read(
        root.join(summary_key(repository, part)),
    ))?)
}

/// Temp file and rename, so a reader sees the old or the new record whole;
/// no fsync: the record is derived, and one lost in a crash is recomputed.
pub(super) fn summary_put(
    paths: &Paths,
    repository: &str,
    part: SummaryPart,
    bytes: &[u8],
) -> Result<()> {
    if !super::catalog::repository_exists(&paths.root, repository) {
        return Ok(()); // gone (the test tags_stamp uses): do not bring it back
    }
    let path = paths.at(&summary_key(repository, part));
    let tmp = paths.tmp(&uuid::Uuid::new_v4().simple().to_string());
    let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, &path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(result?)
}
