//! The output directory: bootstrapped shards, one completion marker per shard, the
//! settings every shard was made with, and the manifest.
//!
//! ```text
//! OUT/settings.json              captioner, filter, options, input shards
//! OUT/shard-NNNNNN.tar           shard N of the input, bootstrapped
//! OUT/done/shard-NNNNNN.json     its marker (counts, skipped samples): written last,
//!                                so a shard is complete exactly when it exists
//! OUT/manifest.json              totals over the completed shards (a run over all
//!                                shards writes it)
//! ```
//!
//! A shard is written under a temporary name (`.shard-NNNNNN.tar.tmpPID`) and renamed
//! once complete, then its marker is written the same way. A killed job leaves at most
//! a temporary file, which the next attempt at that shard removes; a shard with a
//! marker is never written again. Workers never share a shard, so any number of them
//! can fill one directory on a shared file system without locks.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::options::CapfiltOptions;

pub const FORMAT: &str = "glimpse-capfilt/1";

/// What every shard of a directory is made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub format: String,
    /// Captioner and filter ids (name and weight fingerprint).
    pub captioner: String,
    pub filter: String,
    pub options: CapfiltOptions,
    /// The input shards, in order (shard N is `inputs[N]`).
    pub inputs: Vec<String>,
}

/// Texts kept and removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub kept: u64,
    pub removed: u64,
}

impl Counts {
    pub fn add(&mut self, kept: bool) {
        match kept {
            true => self.kept += 1,
            false => self.removed += 1,
        }
    }

    fn merge(&mut self, other: Counts) {
        self.kept += other.kept;
        self.removed += other.removed;
    }
}

/// A sample that was not written, and why. `key` is absent when the reason concerns
/// the rest of a shard (a truncated tar) rather than one sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub shard: usize,
    pub key: Option<String>,
    pub reason: String,
}

/// A shard's completion marker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardReport {
    pub shard: usize,
    /// The input it was read from.
    pub source: String,
    /// The output shard's file name.
    pub output: String,
    /// Samples written.
    pub samples: u64,
    pub web: Counts,
    /// Written samples that had no web text.
    pub web_missing: u64,
    pub synthetic: Counts,
    pub skipped: Vec<Skipped>,
    pub seconds: f64,
}

/// Totals over the completed shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub captioner: String,
    pub filter: String,
    pub options: CapfiltOptions,
    /// Input shards, and those without a marker yet.
    pub shards: usize,
    pub pending: Vec<usize>,
    pub complete: bool,
    pub samples: u64,
    pub web: Counts,
    pub web_missing: u64,
    pub synthetic: Counts,
    pub skipped: Vec<Skipped>,
}

/// An output directory.
#[derive(Debug, Clone)]
pub struct OutputDir {
    pub root: PathBuf,
    pub settings: Settings,
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("plain structs serialise");
    glimpse_data::atomic::write(path, (text + "\n").as_bytes()).map_err(|(p, e)| Error::io(p)(e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(Error::io(path))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
}

pub(crate) use glimpse_data::atomic::tmp_name;

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What differs between two settings, for the mismatch error.
fn settings_diff(old: &Settings, new: &Settings) -> String {
    let mut diff = Vec::new();
    if old.format != new.format {
        diff.push(format!("format {:?}, now {:?}", old.format, new.format));
    }
    if old.captioner != new.captioner {
        diff.push(format!(
            "captioner {}, now {}",
            old.captioner, new.captioner
        ));
    }
    if old.filter != new.filter {
        diff.push(format!("filter {}, now {}", old.filter, new.filter));
    }
    if old.options != new.options {
        // Through text, so that f32 fields read as written (0.7, not 0.699999988).
        let value = |o: &CapfiltOptions| -> serde_json::Value {
            serde_json::to_string(o)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default()
        };
        let (a, b) = (value(&old.options), value(&new.options));
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, v) in a {
                if b.get(k) != Some(v) {
                    let now = b.get(k).cloned().unwrap_or_default();
                    diff.push(format!("{k} {v}, now {now}"));
                }
            }
        }
    }
    if old.inputs != new.inputs {
        diff.push(format!(
            "{} input shard(s) starting {:?}, now {} starting {:?}",
            old.inputs.len(),
            old.inputs.first(),
            new.inputs.len(),
            new.inputs.first()
        ));
    }
    diff.join("; ")
}

impl OutputDir {
    /// Opens `root`, or creates it for `settings`; a directory started with other
    /// models, options or inputs is refused, naming what differs.
    pub fn create_or_open(root: &Path, settings: Settings) -> Result<Self> {
        let path = root.join("settings.json");
        if path.is_file() {
            let old: Settings = read_json(&path)?;
            if old != settings {
                return Err(Error::SettingsMismatch {
                    path,
                    diff: settings_diff(&old, &settings),
                });
            }
        } else {
            if root.exists() && !root.is_dir() {
                return Err(Error::format(root, "exists and is not a directory"));
            }
            fs::create_dir_all(root.join("done")).map_err(Error::io(root))?;
            write_json(&path, &settings)?;
        }
        Ok(OutputDir {
            root: root.to_path_buf(),
            settings,
        })
    }

    pub fn shard_path(&self, shard: usize) -> PathBuf {
        self.root.join(format!("shard-{shard:06}.tar"))
    }

    pub fn marker_path(&self, shard: usize) -> PathBuf {
        self.root.join(format!("done/shard-{shard:06}.json"))
    }

    pub fn manifest_path(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    /// The marker of `shard`, if it is complete.
    pub fn marker(&self, shard: usize) -> Result<Option<ShardReport>> {
        let p = self.marker_path(shard);
        if !p.is_file() {
            return Ok(None);
        }
        read_json(&p).map(Some)
    }

    /// Temporary files of `shard` left by killed attempts.
    pub fn stale_temporaries(&self, shard: usize) -> Result<Vec<PathBuf>> {
        let prefix = format!(".{}.tmp", file_name(&self.shard_path(shard)));
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(Error::io(&self.root))? {
            let entry = entry.map_err(Error::io(&self.root))?;
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                out.push(entry.path());
            }
        }
        out.sort();
        Ok(out)
    }

    /// The temporary name this process writes `shard` under.
    pub(crate) fn shard_tmp_path(&self, shard: usize) -> PathBuf {
        tmp_name(&self.shard_path(shard))
    }

    /// Moves a fully written shard into place, then writes its marker.
    pub(crate) fn commit_shard(&self, tmp: &Path, report: &ShardReport) -> Result<()> {
        let dest = self.shard_path(report.shard);
        fs::rename(tmp, &dest).map_err(Error::io(&dest))?;
        let done = self.root.join("done");
        fs::create_dir_all(&done).map_err(Error::io(&done))?;
        write_json(&self.marker_path(report.shard), report)
    }

    /// Totals over the completed shards of `shards` input shards.
    pub fn manifest(&self, shards: usize) -> Result<Manifest> {
        let s = &self.settings;
        let mut m = Manifest {
            format: FORMAT.into(),
            captioner: s.captioner.clone(),
            filter: s.filter.clone(),
            options: s.options.clone(),
            shards,
            pending: Vec::new(),
            complete: false,
            samples: 0,
            web: Counts::default(),
            web_missing: 0,
            synthetic: Counts::default(),
            skipped: Vec::new(),
        };
        for shard in 0..shards {
            match self.marker(shard)? {
                Some(r) => {
                    m.samples += r.samples;
                    m.web.merge(r.web);
                    m.web_missing += r.web_missing;
                    m.synthetic.merge(r.synthetic);
                    m.skipped.extend(r.skipped);
                }
                None => m.pending.push(shard),
            }
        }
        m.complete = m.pending.is_empty();
        Ok(m)
    }

    /// Writes [`Self::manifest`] to `manifest.json` and returns it.
    pub fn write_manifest(&self, shards: usize) -> Result<Manifest> {
        let m = self.manifest(shards)?;
        write_json(&self.manifest_path(), &m)?;
        Ok(m)
    }
}
