//! The index directory: clip-retrieval's layout plus a manifest and one completion
//! marker per shard.
//!
//! ```text
//! IDX/manifest.json                     model id, model, dimension, format
//! IDX/img_emb/img_emb_NNNNN.npy         normalised image embeddings, one row per sample
//! IDX/text_emb/text_emb_NNNNN.npy       normalised caption embeddings, same rows
//!                                       (zero rows where a sample has no caption)
//! IDX/metadata/metadata_NNNNN.parquet   key, image_path, caption
//! IDX/done/shard_NNNNN.json             the marker: written last, so a shard is
//!                                       complete exactly when its marker exists
//! IDX/ann/                              the search index over all completed shards
//! ```
//!
//! Shard files are written under temporary names and renamed, and the manifest is only
//! ever created, never rewritten, so workers on several machines can fill one
//! directory (a shared file system) shard by shard without locks.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::meta::{read_metadata, write_metadata, Record};
use crate::npy::{read_npy, write_npy, Matrix};

pub const FORMAT: &str = "glimpse-index/1";

/// What every shard of an index was embedded with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The embedder's id (name and weight fingerprint): queries must come from it.
    pub model_id: String,
    /// The model as the user named it (directory or hub id), to load it again.
    pub model: String,
    pub dim: usize,
}

/// A shard's completion marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardMarker {
    pub shard: usize,
    /// The data the shard was read from (a tar shard, a JSONL file, a folder range).
    pub source: String,
    /// Embedded samples (rows of the `.npy` files and of the metadata).
    pub rows: usize,
    /// Rows that have a caption (and so a text embedding).
    pub captions: usize,
    /// Every sample that was skipped, `SOURCE: sample KEY: REASON`.
    pub skipped: Vec<String>,
    pub model_id: String,
    pub seconds: f64,
}

/// One shard's outputs in memory.
#[derive(Debug, Clone)]
pub struct ShardData {
    pub images: Matrix,
    pub texts: Matrix,
    pub records: Vec<Record>,
}

/// An index directory.
#[derive(Debug, Clone)]
pub struct IndexDir {
    pub root: PathBuf,
    pub manifest: Manifest,
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain structs serialise");
    glimpse_data::atomic::write(path, (text + "\n").as_bytes()).map_err(|(p, e)| Error::io(p)(e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
}

pub(crate) use glimpse_data::atomic::tmp_name;

impl IndexDir {
    /// Opens `root`, or creates it for `manifest`; an existing index made with another
    /// model or dimension is refused, naming both.
    pub fn create_or_open(root: &Path, manifest: Manifest) -> Result<Self> {
        let path = root.join("manifest.json");
        if path.is_file() {
            let dir = Self::open(root)?;
            dir.check_model(&manifest.model_id, manifest.dim, "the model given now")?;
            return Ok(dir);
        }
        for sub in ["img_emb", "text_emb", "metadata", "done"] {
            fs::create_dir_all(root.join(sub)).map_err(Error::io(root.join(sub)))?;
        }
        write_json(&path, &manifest)?;
        Ok(IndexDir {
            root: root.to_path_buf(),
            manifest,
        })
    }

    /// Opens an existing index directory.
    pub fn open(root: &Path) -> Result<Self> {
        let path = root.join("manifest.json");
        if !path.is_file() {
            return Err(Error::format(
                root,
                "not an index directory (no manifest.json); build one with `glimpse index build`",
            ));
        }
        let manifest: Manifest = read_json(&path)?;
        if manifest.format != FORMAT {
            return Err(Error::format(
                &path,
                format!("format {:?}, this build reads {FORMAT:?}", manifest.format),
            ));
        }
        Ok(IndexDir {
            root: root.to_path_buf(),
            manifest,
        })
    }

    /// Refuses vectors from `model_id` / `dim` (`what` says whose) unless they match.
    pub fn check_model(&self, model_id: &str, dim: usize, what: &str) -> Result<()> {
        if model_id != self.manifest.model_id || dim != self.manifest.dim {
            return Err(Error::ModelMismatch {
                index: self.root.clone(),
                index_model: self.manifest.model_id.clone(),
                index_dim: self.manifest.dim,
                what: what.to_string(),
                other_model: model_id.to_string(),
                other_dim: dim,
            });
        }
        Ok(())
    }

    pub fn image_path(&self, shard: usize) -> PathBuf {
        self.root.join(format!("img_emb/img_emb_{shard:05}.npy"))
    }
    pub fn text_path(&self, shard: usize) -> PathBuf {
        self.root.join(format!("text_emb/text_emb_{shard:05}.npy"))
    }
    pub fn metadata_path(&self, shard: usize) -> PathBuf {
        self.root
            .join(format!("metadata/metadata_{shard:05}.parquet"))
    }
    pub fn marker_path(&self, shard: usize) -> PathBuf {
        self.root.join(format!("done/shard_{shard:05}.json"))
    }
    pub fn ann_dir(&self) -> PathBuf {
        self.root.join("ann")
    }

    /// The marker of `shard`, if it is complete.
    pub fn marker(&self, shard: usize) -> Result<Option<ShardMarker>> {
        let p = self.marker_path(shard);
        if !p.is_file() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// Every completed shard, by number.
    pub fn completed(&self) -> Result<BTreeMap<usize, ShardMarker>> {
        let dir = self.root.join("done");
        let mut out = BTreeMap::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(Error::io(&dir))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let Some(n) = name
                .strip_prefix("shard_")
                .and_then(|s| s.strip_suffix(".json"))
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let marker: ShardMarker = read_json(&entry.path())?;
            out.insert(n, marker);
        }
        Ok(out)
    }

    /// Writes a shard's files, then its marker.
    pub fn write_shard(&self, marker: &ShardMarker, data: &ShardData) -> Result<()> {
        let n = marker.shard;
        let d = self.manifest.dim;
        if data.images.dim != d || data.texts.dim != d {
            return Err(Error::Invalid(format!(
                "shard {n}: vectors of dimension {} / {}, the index holds {d}",
                data.images.dim, data.texts.dim
            )));
        }
        let rows = data.records.len();
        if data.images.rows != rows || data.texts.rows != rows || marker.rows != rows {
            return Err(Error::Invalid(format!(
                "shard {n}: {} image rows, {} text rows, {rows} records, marker says {}",
                data.images.rows, data.texts.rows, marker.rows
            )));
        }
        let place = |path: PathBuf, write: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(Error::io(parent))?;
            }
            let tmp = tmp_name(&path);
            write(&tmp)?;
            fs::rename(&tmp, &path).map_err(Error::io(&path))
        };
        place(self.image_path(n), &|p| write_npy(p, &data.images))?;
        place(self.text_path(n), &|p| write_npy(p, &data.texts))?;
        place(self.metadata_path(n), &|p| write_metadata(p, &data.records))?;
        fs::create_dir_all(self.root.join("done")).map_err(Error::io(self.root.join("done")))?;
        write_json(&self.marker_path(n), marker)
    }

    /// Reads a completed shard's files back, checking them against the marker.
    pub fn read_shard(&self, marker: &ShardMarker) -> Result<ShardData> {
        let n = marker.shard;
        let images = read_npy(&self.image_path(n))?;
        let texts = read_npy(&self.text_path(n))?;
        let records = read_metadata(&self.metadata_path(n))?;
        for (path, rows, dim) in [
            (self.image_path(n), images.rows, images.dim),
            (self.text_path(n), texts.rows, texts.dim),
            (self.metadata_path(n), records.len(), self.manifest.dim),
        ] {
            if rows != marker.rows || dim != self.manifest.dim {
                return Err(Error::format(
                    path,
                    format!(
                        "{rows} rows of dimension {dim}, but the marker says {} rows and \
                         the manifest dimension {}",
                        marker.rows, self.manifest.dim
                    ),
                ));
            }
        }
        Ok(ShardData {
            images,
            texts,
            records,
        })
    }

    /// Appends the completed shards of the index at `other` (embedded by the same
    /// model) after this index's shards, renumbered; returns their new numbers. The
    /// search index picks them up incrementally at the next [`crate::build_search`].
    pub fn extend_from(&self, other: &Path) -> Result<Vec<usize>> {
        let src = IndexDir::open(other)?;
        self.check_model(
            &src.manifest.model_id,
            src.manifest.dim,
            &format!("the index {}", other.display()),
        )?;
        let first = self.completed()?.keys().next_back().map_or(0, |n| n + 1);
        let mut added = Vec::new();
        for (next, marker) in (first..).zip(src.completed()?.values()) {
            let data = src.read_shard(marker)?;
            let moved = ShardMarker {
                shard: next,
                ..marker.clone()
            };
            self.write_shard(&moved, &data)?;
            added.push(next);
        }
        Ok(added)
    }
}
