//! Writing the world as WebDataset shards and reading them back.
//!
//! - [`plan`]: the manifest of a dataset, computed without rendering.
//! - [`generate`]: writes `OUT/{train,val,test}/shard-NNNNNN.tar` (entries
//!   `NNNNNN.png` + `NNNNNN.json`) and `OUT/manifest.json`; resumable.
//! - [`read_shard`]: reads a shard back as `(key, RgbImage, SampleJson)`.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read};
use std::path::{Path, PathBuf};

use glimpse_data::tar::{TarReader, TarWriter};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use crate::world::GENERATOR_VERSION;
use crate::{encode_sample, key_of, sample, vocab, Error, Result, SampleJson, Split, SynthConfig};

/// Per-split contents in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitManifest {
    pub samples: u64,
    pub corrupted: u64,
    /// Shard paths relative to the output directory.
    pub shards: Vec<String>,
}

/// `OUT/manifest.json`. Written with `complete: false` before any shard and rewritten
/// with `complete: true` once all shards exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub generator: String,
    pub version: u32,
    #[serde(flatten)]
    pub config: SynthConfig,
    pub complete: bool,
    pub train: SplitManifest,
    pub val: SplitManifest,
    pub test: SplitManifest,
    pub vocab: serde_json::Value,
}

impl Manifest {
    pub fn split(&self, s: Split) -> &SplitManifest {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

fn shard_name(split: Split, n: usize) -> String {
    format!("{}/shard-{n:06}.tar", split.as_str())
}

/// The sample indices of each split, in order.
fn split_indices(cfg: &SynthConfig) -> [Vec<u64>; 3] {
    let mut out = [Vec::new(), Vec::new(), Vec::new()];
    for i in 0..cfg.count {
        out[cfg.split_of(i) as usize].push(i);
    }
    out
}

/// The manifest `generate` writes for `cfg` (computed without rendering).
pub fn plan(cfg: &SynthConfig) -> Manifest {
    let idx = split_indices(cfg);
    let part = |s: Split| {
        let v = &idx[s as usize];
        SplitManifest {
            samples: v.len() as u64,
            corrupted: v
                .iter()
                .filter(|&&i| cfg.corruption_of(i).is_some())
                .count() as u64,
            shards: (0..v.len().div_ceil(cfg.shard_size as usize))
                .map(|n| shard_name(s, n))
                .collect(),
        }
    };
    Manifest {
        generator: "glimpse synth".into(),
        version: GENERATOR_VERSION,
        config: cfg.clone(),
        complete: false,
        train: part(Split::Train),
        val: part(Split::Val),
        test: part(Split::Test),
        vocab: vocab::to_json(),
    }
}

fn config_error(origin: impl Into<String>, message: impl Into<String>) -> Error {
    Error::Config {
        origin: origin.into(),
        message: message.into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    glimpse_data::atomic::write(path, bytes).map_err(|(p, e)| io_err(&p)(e))
}

/// What [`generate`] did.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub manifest: Manifest,
    /// Shards written by this run, `shards_rewritten` included.
    pub shards_written: usize,
    /// Complete shards found in place and kept.
    pub shards_skipped: usize,
    /// Shards found in place but incomplete or corrupt, written again.
    pub shards_rewritten: usize,
}

/// Whether the shard at `path` holds exactly the entries `generate` writes for the
/// samples `indices` (`KEY.png`, `KEY.json` each, in order) and ends with the full
/// end-of-archive marker. Reads the file through without decoding anything, so a
/// shard cut anywhere (a killed copy, a full disk) is caught.
fn shard_is_complete(path: &Path, indices: &[u64]) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    let mut tar = TarReader::new(BufReader::new(file));
    for &i in indices {
        let key = key_of(i);
        for ext in ["png", "json"] {
            match tar.next_entry() {
                Ok(Some((name, _))) if name == format!("{key}.{ext}") => {}
                _ => return false,
            }
        }
    }
    if !matches!(tar.next_entry(), Ok(None)) {
        return false;
    }
    // The reader stops at the first of the two zero blocks; the second must follow,
    // and nothing after it.
    let mut rest = Vec::new();
    tar.into_inner()
        .take(1025)
        .read_to_end(&mut rest)
        .is_ok_and(|_| rest.len() == 512 && rest.iter().all(|&b| b == 0))
}

/// Writes the dataset under `out`. Each shard is written to `NAME.tmp` and renamed
/// when complete; shards that already exist are read through and kept when complete
/// (written again otherwise), so rerunning a killed job with the same arguments
/// resumes it. A directory holding a manifest from other
/// arguments is refused. `progress(done, total)` is called after each sample (and
/// once per skipped shard).
pub fn generate(
    cfg: &SynthConfig,
    out: &Path,
    mut progress: impl FnMut(u64, u64),
) -> Result<GenerateReport> {
    cfg.validate()?;
    let mut manifest = plan(cfg);
    let manifest_path = out.join("manifest.json");
    if manifest_path.exists() {
        let text = fs::read(&manifest_path).map_err(io_err(&manifest_path))?;
        let old: Manifest = serde_json::from_slice(&text).map_err(|source| Error::Json {
            path: manifest_path.clone(),
            source,
        })?;
        if old.version != manifest.version || old.config != manifest.config {
            let (a, b) = (
                serde_json::to_value(&old.config).unwrap_or_default(),
                serde_json::to_value(&manifest.config).unwrap_or_default(),
            );
            let mut diff: Vec<String> = Vec::new();
            if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
                for (k, v) in a {
                    if b.get(k) != Some(v) {
                        diff.push(format!(
                            "{k} {v} (now {})",
                            b.get(k).unwrap_or(&serde_json::Value::Null)
                        ));
                    }
                }
            }
            if old.version != manifest.version {
                diff.push(format!(
                    "generator version {} (now {})",
                    old.version, manifest.version
                ));
            }
            return Err(config_error(
                out.display().to_string(),
                format!(
                    "holds a dataset generated with other arguments: {}; \
                     choose another --out or remove it",
                    diff.join(", ")
                ),
            ));
        }
    }
    for s in Split::ALL {
        let dir = out.join(s.as_str());
        fs::create_dir_all(&dir).map_err(|source| Error::CreateDir {
            path: dir.clone(),
            source,
        })?;
    }
    let json = |m: &Manifest| serde_json::to_vec_pretty(m).map_err(|e| Error::Msg(e.to_string()));
    write_atomic(&manifest_path, &json(&manifest)?)?;

    let idx = split_indices(cfg);
    let total = cfg.count;
    let mut done = 0u64;
    let (mut written, mut skipped, mut rewritten) = (0, 0, 0);
    for s in Split::ALL {
        for (n, chunk) in idx[s as usize].chunks(cfg.shard_size as usize).enumerate() {
            let path = out.join(shard_name(s, n));
            if path.exists() {
                if shard_is_complete(&path, chunk) {
                    skipped += 1;
                    done += chunk.len() as u64;
                    progress(done, total);
                    continue;
                }
                rewritten += 1;
            }
            let tmp = path.with_extension("tar.tmp");
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut tar = TarWriter::new(BufWriter::new(file));
            for &i in chunk {
                let smp = sample(cfg, i);
                let (png, json) = encode_sample(&smp)?;
                let key = &smp.record.key;
                tar.append(&format!("{key}.png"), &png)
                    .map_err(io_err(&tmp))?;
                tar.append(&format!("{key}.json"), &json)
                    .map_err(io_err(&tmp))?;
                done += 1;
                progress(done, total);
            }
            let w = tar.finish().map_err(io_err(&tmp))?;
            w.into_inner()
                .map_err(|e| io_err(&tmp)(e.into_error()))?
                .sync_all()
                .map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            written += 1;
        }
    }
    manifest.complete = true;
    write_atomic(&manifest_path, &json(&manifest)?)?;
    Ok(GenerateReport {
        manifest,
        shards_written: written,
        shards_skipped: skipped,
        shards_rewritten: rewritten,
    })
}

/// Reads a WebDataset shard written by [`generate`]: yields `(key, image, record)`
/// per sample. Entries are grouped by key (the file name up to its first dot).
pub fn read_shard(path: impl AsRef<Path>) -> Result<ShardReader> {
    let path = path.as_ref().to_path_buf();
    let file = File::open(&path).map_err(io_err(&path))?;
    Ok(ShardReader {
        tar: TarReader::new(BufReader::new(file)),
        pending: None,
        path,
        failed: false,
    })
}

/// Iterator over the samples of one shard; see [`read_shard`].
pub struct ShardReader {
    tar: TarReader<BufReader<File>>,
    pending: Option<(String, String, Vec<u8>)>,
    path: PathBuf,
    failed: bool,
}

fn split_name(name: &str) -> (String, String) {
    let base_at = name.rfind('/').map_or(0, |i| i + 1);
    match name[base_at..].find('.') {
        Some(d) => (
            name[..base_at + d].to_string(),
            name[base_at + d + 1..].to_string(),
        ),
        None => (name.to_string(), String::new()),
    }
}

impl ShardReader {
    fn entry(&mut self) -> Result<Option<(String, String, Vec<u8>)>> {
        if let Some(p) = self.pending.take() {
            return Ok(Some(p));
        }
        let e = self.tar.next_entry().map_err(|source| Error::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(e.map(|(name, data)| {
            let (key, ext) = split_name(&name);
            (key, ext, data)
        }))
    }

    fn next_sample(&mut self) -> Result<Option<(String, RgbImage, SampleJson)>> {
        let Some((key, ext, data)) = self.entry()? else {
            return Ok(None);
        };
        let mut parts = vec![(ext, data)];
        while let Some((k, e, d)) = self.entry()? {
            if k != key {
                self.pending = Some((k, e, d));
                break;
            }
            parts.push((e, d));
        }
        let origin = format!("{}: sample {key}", self.path.display());
        let get = |ext: &str| {
            parts
                .iter()
                .find(|(e, _)| e == ext)
                .map(|(_, d)| d.as_slice())
                .ok_or_else(|| config_error(origin.clone(), format!("no .{ext} entry")))
        };
        let image = glimpse_data::decode_image(get("png")?, &format!("{origin}.png"))?;
        let record: SampleJson = serde_json::from_slice(get("json")?)
            .map_err(|e| config_error(origin.clone(), format!("bad .json entry: {e}")))?;
        Ok(Some((key, image, record)))
    }
}

impl Iterator for ShardReader {
    type Item = Result<(String, RgbImage, SampleJson)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let r = self.next_sample().transpose();
        if matches!(r, Some(Err(_))) {
            self.failed = true;
        }
        r
    }
}
