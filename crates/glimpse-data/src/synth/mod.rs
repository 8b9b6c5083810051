//! The synthetic world: a deterministic generator of images of simple objects (shapes,
//! colours, sizes, grid positions, counts, relations, shaded backgrounds) with
//! paraphrased captions, the attribute record, question/answer pairs and optional
//! web-style caption corruption, written as WebDataset tar shards.
//!
//! - [`sample`]: one sample, a pure function of `(seed, index)` (and the image size,
//!   noise level and split fractions) — never of the shard size or of the order.
//! - [`generate`]: writes `OUT/{train,val,test}/shard-NNNNNN.tar` (entries
//!   `NNNNNN.png` + `NNNNNN.json`) and `OUT/manifest.json`; resumable.
//! - [`read_shard`]: reads a shard back as `(key, RgbImage, SampleJson)`.

mod render;
pub mod tar;
mod text;
mod world;

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};
pub use text::QaPair;
pub use world::{
    RelationRecord, BACKGROUND_STYLES, COLORS, CORRUPTIONS, GENERATOR_VERSION, NUMBER_WORDS,
    POSITIONS, RELATIONS, SHAPES, SIZES,
};
use world::{Rng, Stream};

/// One object in the record. `bbox` is `[x0, y0, x1, y1]` in pixels, `x1`/`y1`
/// exclusive, over the pixels the shape covers at least half.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub shape: String,
    pub color: String,
    pub size: String,
    pub position: String,
    pub bbox: [u32; 4],
}

/// The background: one named colour in a style (`solid`, `gradient`, `checker`,
/// `noise`), all shades of that colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackgroundRecord {
    pub style: String,
    pub color: String,
}

/// The JSON record stored next to each image.
///
/// `captions` are five clean paraphrases; `caption` is the training caption: the first
/// of them, or its corrupted version when `corrupted` (then `corruption` names the
/// kind and `clean_caption` keeps the original).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleJson {
    pub key: String,
    pub index: u64,
    pub split: String,
    pub image_size: u32,
    pub objects: Vec<ObjectRecord>,
    pub background: BackgroundRecord,
    pub count: usize,
    pub relations: Vec<RelationRecord>,
    pub captions: Vec<String>,
    pub caption: String,
    pub corrupted: bool,
    pub corruption: Option<String>,
    pub clean_caption: String,
    pub qa: Vec<QaPair>,
}

/// Dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// Arguments of the generator (the flags of `glimpse data synth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    pub seed: u64,
    pub count: u64,
    /// Share of samples whose training caption is corrupted, in [0, 1].
    pub noise: f64,
    pub image_size: u32,
    /// How far an object may move from the centre of its grid cell, as a share of the
    /// room it has there, in [0, 1]. At 0 (the default) every object sits at its cell's
    /// centre; at the default 72 px each cell is 24 px, so for a ViT with 8 px patches
    /// an object is always centred on a patch and a shape looks the same wherever it is.
    #[serde(default)]
    pub jitter: f64,
    pub shard_size: u64,
    /// Expected shares of the validation and test splits (by a hash of the index).
    pub val_fraction: f64,
    pub test_fraction: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 0,
            count: 1000,
            noise: 0.0,
            image_size: 72,
            jitter: 0.0,
            shard_size: 1000,
            val_fraction: 0.05,
            test_fraction: 0.05,
        }
    }
}

fn flag_error(flag: &str, message: impl Into<String>) -> Error {
    Error::Config {
        origin: flag.to_string(),
        message: message.into(),
    }
}

impl SynthConfig {
    /// Rejects bad arguments; the error names the flag.
    pub fn validate(&self) -> Result<()> {
        if self.count == 0 {
            return Err(flag_error("--count", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.noise) {
            return Err(flag_error(
                "--noise",
                format!("{} is outside [0, 1]", self.noise),
            ));
        }
        if self.image_size < 16 {
            return Err(flag_error(
                "--image-size",
                format!("{} px is too small (at least 16)", self.image_size),
            ));
        }
        if self.image_size > 4096 {
            return Err(flag_error(
                "--image-size",
                format!("{} px is too large (at most 4096)", self.image_size),
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(flag_error(
                "--jitter",
                format!("{} is outside [0, 1]", self.jitter),
            ));
        }
        if self.shard_size == 0 {
            return Err(flag_error("--shard-size", "must be at least 1"));
        }
        for (flag, v) in [
            ("--val-fraction", self.val_fraction),
            ("--test-fraction", self.test_fraction),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(flag_error(flag, format!("{v} is outside [0, 1]")));
            }
        }
        if self.val_fraction + self.test_fraction > 1.0 {
            return Err(flag_error(
                "--val-fraction",
                "--val-fraction plus --test-fraction exceeds 1",
            ));
        }
        Ok(())
    }

    /// The split of sample `index` (independent of `count`).
    pub fn split_of(&self, index: u64) -> Split {
        let u = Rng::for_sample(self.seed, index, Stream::Split).unit();
        if u < self.test_fraction {
            Split::Test
        } else if u < self.test_fraction + self.val_fraction {
            Split::Val
        } else {
            Split::Train
        }
    }

    /// Whether sample `index` gets a corrupted caption, and which kind.
    pub fn corruption_of(&self, index: u64) -> Option<usize> {
        let mut rng = Rng::for_sample(self.seed, index, Stream::Noise);
        let u = rng.unit();
        let kind = rng.below(CORRUPTIONS.len());
        (u < self.noise).then_some(kind)
    }
}

/// The key (tar basename) of sample `index`.
pub fn key_of(index: u64) -> String {
    format!("{index:06}")
}

/// One generated sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: RgbImage,
    pub record: SampleJson,
}

/// Generates sample `index` of the dataset described by `cfg`.
pub fn sample(cfg: &SynthConfig, index: u64) -> Sample {
    let mut rng = Rng::for_sample(cfg.seed, index, Stream::Scene);
    let scene = world::sample_scene(&mut rng);
    let (image, boxes) = render::render(&scene, cfg.image_size, cfg.jitter as f32);
    let mut trng = Rng::for_sample(cfg.seed, index, Stream::Text);
    let desc = text::Desc::new(&scene, &mut trng);
    let (captions, template_id) = text::captions(&desc, &mut trng);
    let qa = text::questions(&scene, &desc, &mut trng);
    let clean = captions[0].clone();
    let corruption = cfg.corruption_of(index);
    let caption = match corruption {
        Some(kind) => {
            // Continue the noise stream after the decision draws.
            let mut nrng = Rng::for_sample(cfg.seed, index, Stream::Noise);
            nrng.next_u64();
            nrng.next_u64();
            text::corrupt(kind, &desc, template_id, &clean, &mut nrng)
        }
        None => clean.clone(),
    };
    let objects = scene
        .objects
        .iter()
        .zip(&boxes)
        .map(|(o, b)| ObjectRecord {
            shape: SHAPES[o.kind.shape].0.into(),
            color: COLORS[o.kind.color].0.into(),
            size: SIZES[o.kind.size].0.into(),
            position: POSITIONS[o.cell].into(),
            bbox: *b,
        })
        .collect();
    let mut relations = Vec::new();
    for i in 0..scene.objects.len() {
        for j in i + 1..scene.objects.len() {
            for rel in world::relations_between(&scene.objects[i], &scene.objects[j]) {
                relations.push(RelationRecord {
                    subject: i,
                    relation: rel.into(),
                    object: j,
                });
            }
        }
    }
    let record = SampleJson {
        key: key_of(index),
        index,
        split: cfg.split_of(index).as_str().into(),
        image_size: cfg.image_size,
        objects,
        background: BackgroundRecord {
            style: BACKGROUND_STYLES[scene.bg_style].into(),
            color: COLORS[scene.bg_color].0.into(),
        },
        count: scene.count(),
        relations,
        captions,
        caption,
        corrupted: corruption.is_some(),
        corruption: corruption.map(|k| CORRUPTIONS[k].to_string()),
        clean_caption: clean,
        qa,
    };
    Sample { image, record }
}

/// PNG with fixed encoder settings (fast deflate, adaptive filter) and the JSON
/// record, as stored in a shard.
pub fn encode_sample(s: &Sample) -> Result<(Vec<u8>, Vec<u8>)> {
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            s.image.as_raw(),
            s.image.width(),
            s.image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::Decode {
            name: format!("{}.png", s.record.key),
            source: e,
        })?;
    let json = serde_json::to_vec(&s.record)
        .map_err(|e| Error::Msg(format!("{}.json: {e}", s.record.key)))?;
    Ok((png, json))
}

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

fn vocab() -> serde_json::Value {
    serde_json::json!({
        "shapes": SHAPES.iter().map(|s| s.0).collect::<Vec<_>>(),
        "colors": COLORS.iter().map(|c| serde_json::json!({"name": c.0, "rgb": c.1})).collect::<Vec<_>>(),
        "sizes": SIZES.iter().map(|s| s.0).collect::<Vec<_>>(),
        "positions": POSITIONS,
        "relations": RELATIONS,
        "background_styles": BACKGROUND_STYLES,
        "corruptions": CORRUPTIONS,
        "counts": [1, 2, 3, 4],
    })
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
        vocab: vocab(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// What [`generate`] did.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    pub manifest: Manifest,
    pub shards_written: usize,
    pub shards_skipped: usize,
}

/// Writes the dataset under `out`. Each shard is written to `NAME.tmp` and renamed
/// when complete; shards that already exist are skipped, so rerunning a killed job
/// with the same arguments resumes it. A directory holding a manifest from other
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
            return Err(Error::config(
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
    let (mut written, mut skipped) = (0, 0);
    for s in Split::ALL {
        for (n, chunk) in idx[s as usize].chunks(cfg.shard_size as usize).enumerate() {
            let path = out.join(shard_name(s, n));
            if path.exists() {
                skipped += 1;
                done += chunk.len() as u64;
                progress(done, total);
                continue;
            }
            let tmp = path.with_extension("tar.tmp");
            let file = File::create(&tmp).map_err(io_err(&tmp))?;
            let mut tar = tar::TarWriter::new(BufWriter::new(file));
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
    })
}

/// Reads a WebDataset shard written by [`generate`]: yields `(key, image, record)`
/// per sample. Entries are grouped by key (the file name up to its first dot).
pub fn read_shard(path: impl AsRef<Path>) -> Result<ShardReader> {
    let path = path.as_ref().to_path_buf();
    let file = File::open(&path).map_err(io_err(&path))?;
    Ok(ShardReader {
        tar: tar::TarReader::new(BufReader::new(file)),
        pending: None,
        path,
        failed: false,
    })
}

/// Iterator over the samples of one shard; see [`read_shard`].
pub struct ShardReader {
    tar: tar::TarReader<BufReader<File>>,
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
                .ok_or_else(|| Error::config(origin.clone(), format!("no .{ext} entry")))
        };
        let image = crate::decode_image(get("png")?, &format!("{origin}.png"))?;
        let record: SampleJson = serde_json::from_slice(get("json")?)
            .map_err(|e| Error::config(origin.clone(), format!("bad .json entry: {e}")))?;
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

#[cfg(test)]
mod tests;
