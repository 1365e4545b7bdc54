//! The cache's unpacked layer directories (`layers/DIFF_ID`, overlay
//! format): a pulled blob is unpacked once, and a directory a step made is
//! committed as a layer blob and moved there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::error::{ExecError, IoContext, R};
use super::layer::{self, unpack_tar, write_tar};
use super::{outputs, Executor, Layer, LayerRecord};

impl Executor<'_> {
    /// The unpacked directory of a layer, unpacking its blob if needed.
    pub(super) fn ensure_layer_dir(&self, record: &LayerRecord) -> R<PathBuf> {
        let dir = self.layers_dir.join(record.diff_id.hex());
        if dir.is_dir() {
            return Ok(dir);
        }
        let blob = self.layout.blob_path(&record.blob.digest);
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempdir_in(&self.layers_dir)
            .with_context(|| {
                format!("cannot create a directory in {}", self.layers_dir.display())
            })?;
        let file =
            fs::File::open(&blob).with_context(|| format!("cannot open {}", blob.display()))?;
        let reader = layer::decompressing_reader(file, &record.blob.media_type)
            .with_context(|| format!("layer {}", record.blob.digest))?;
        let digest = unpack_tar(reader, tmp.path())
            .with_context(|| format!("cannot unpack layer {}", record.blob.digest))?;
        if digest != record.diff_id {
            return Err(ExecError::InvalidImage(format!(
                "layer {} unpacks to {digest}, but the image config says {}",
                record.blob.digest, record.diff_id
            )));
        }
        let tmp_path = tmp.keep();
        if fs::rename(&tmp_path, &dir).is_err() {
            // Another build unpacked it first.
            let _ = fs::remove_dir_all(&tmp_path);
        }
        Ok(dir)
    }

    /// Turn a directory (an overlay upper or a COPY staging directory) into
    /// a layer: tar it (sorted, whiteouts converted), gzip it into the
    /// cache layout, and move the directory to its layer directory. An
    /// empty directory is no layer.
    pub(super) fn commit_dir(&self, dir: &Path) -> R<Option<Layer>> {
        let empty = fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if empty {
            return Ok(None);
        }
        let (reader, writer) = io::pipe().with_context(|| "cannot create a pipe".to_string())?;
        let root = dir.to_path_buf();
        let clamp = self.options.source_date_epoch;
        let tar_thread = std::thread::spawn(move || write_tar(&root, writer, clamp).map(drop));
        let blobs = self.layout.dir().join("blobs");
        let written = outputs::write_blob(Box::new(reader), self.options.compression, &blobs);
        let tarred = tar_thread
            .join()
            .map_err(|_| ExecError::Internal("the layer writer panicked".into()))?;
        tarred.with_context(|| format!("cannot make a layer of {}", dir.display()))?;
        let out = written.with_context(|| format!("cannot write a layer of {}", dir.display()))?;
        let path = self.layout.blob_path(&out.blob.digest);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        out.tmp
            .persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let record = LayerRecord {
            diff_id: out.diff_id,
            blob: out.blob,
        };
        let final_dir = self.layers_dir.join(record.diff_id.hex());
        if final_dir.exists() {
            let _ = fs::remove_dir_all(dir);
        } else if let Err(e) = fs::rename(dir, &final_dir) {
            // Another build sharing the cache made the same layer first.
            if !final_dir.is_dir() {
                return Err(ExecError::Io {
                    what: format!("cannot move {} to {}", dir.display(), final_dir.display()),
                    source: e,
                });
            }
            let _ = fs::remove_dir_all(dir);
        }
        Ok(Some(Layer {
            record,
            dir: final_dir,
        }))
    }
}
