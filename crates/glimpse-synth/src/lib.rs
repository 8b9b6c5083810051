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
//! - [`vocab`]: the world's word lists (shapes, colours, sizes, positions, ...).
//! - [`SplitMix64`]: the world's RNG, the workspace's one generator
//!   (`glimpse_data::rng`); every draw takes the `below_from_high_bits` form.
//!
//! Bit-stable: the same arguments give the same bytes, in every version of the
//! generator that carries the same [`GENERATOR_VERSION`].

mod render;
mod shards;
mod text;
pub mod vocab;
mod world;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, RgbImage};
use serde::{Deserialize, Serialize};

pub use glimpse_data::rng::SplitMix64;
pub use glimpse_data::{Error, Result};
pub use shards::{
    generate, plan, read_shard, GenerateReport, Manifest, ShardReader, SplitManifest,
};
pub use text::QaPair;
pub use vocab::{
    BACKGROUND_STYLES, COLORS, CORRUPTIONS, NUMBER_WORDS, POSITIONS, RELATIONS, SHAPES, SIZES,
};
use world::Stream;
pub use world::{RelationRecord, GENERATOR_VERSION};

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
        let u = Stream::Split.rng(self.seed, index).unit();
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
        let mut rng = Stream::Noise.rng(self.seed, index);
        let u = rng.unit();
        let kind = rng.below_from_high_bits(CORRUPTIONS.len());
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
    let mut rng = Stream::Scene.rng(cfg.seed, index);
    let scene = world::sample_scene(&mut rng);
    let (image, boxes) = render::render(&scene, cfg.image_size, cfg.jitter as f32);
    let mut trng = Stream::Text.rng(cfg.seed, index);
    let desc = text::Desc::new(&scene, &mut trng);
    let (captions, template_id) = text::captions(&desc, &mut trng);
    let qa = text::questions(&scene, &desc, &mut trng);
    let clean = captions[0].clone();
    let corruption = cfg.corruption_of(index);
    let caption = match corruption {
        Some(kind) => {
            // Continue the noise stream after the decision draws.
            let mut nrng = Stream::Noise.rng(cfg.seed, index);
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

#[cfg(test)]
mod tests;
