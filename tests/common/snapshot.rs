//! Storage snapshots, to prove that a rejected request changed nothing on disk.
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::sha256_hex;

/// Path -> description ("dir", "link -> target", "file <size> <sha256>") of a directory tree.
pub type Snapshot = BTreeMap<String, String>;

/// True for paths inside a server's scratch area, which may legitimately change when a request
/// is rejected: Berth's `uploads/` and `tmp/` at the top of its storage directory, and
/// distribution's per-repository `_uploads/`, and Berth's `_summary*` records (derived). `rel` is relative to the snapshot root, which
/// may be the storage directory or a directory above it.
pub fn is_scratch(rel: &str) -> bool {
    let components: Vec<&str> = rel.split('/').collect();
    if components.contains(&"_uploads") {
        return true;
    }
    // The web UI's summary records: derived, rewritten in the background after a push.
    if components.last().is_some_and(|c| c.starts_with("_summary")) {
        return true;
    }
    // The storage directory is `.../storage` (see `Server`); look below it, or at the top if
    // the snapshot root is the storage directory itself.
    let below_storage = match components.iter().position(|c| *c == "storage") {
        Some(i) => &components[i + 1..],
        None => &components[..],
    };
    matches!(below_storage.first(), Some(&"uploads") | Some(&"tmp"))
}

/// Records every entry below `root` except scratch paths.
pub fn snapshot(root: &Path) -> Snapshot {
    fn walk(root: &Path, dir: &Path, out: &mut Snapshot) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .expect("walked path is below root")
                .to_string_lossy()
                .into_owned();
            if is_scratch(&rel) {
                continue;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap_or_default();
                out.insert(rel, format!("link -> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, "dir".to_string());
                walk(root, &path, out);
            } else {
                let content = fs::read(&path).unwrap_or_default();
                out.insert(rel, format!("file {} {}", meta.len(), sha256_hex(&content)));
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// Panics with a readable diff if the two snapshots differ.
pub fn assert_same_tree(before: &Snapshot, after: &Snapshot, context: &str) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff.push_str(&format!("  removed: {k} ({v})\n")),
            Some(w) if w != v => diff.push_str(&format!("  changed: {k}: {v} -> {w}\n")),
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diff.push_str(&format!("  added:   {k} ({v})\n"));
        }
    }
    panic!("{context}: the storage tree changed outside the upload/temporary area:\n{diff}");
}
