//! The per-shard embedding job: read a shard's samples, decode and preprocess them on
//! worker threads while the model embeds the previous batch, write the shard's `.npy`
//! and Parquet files, then its completion marker.
//!
//! A shard is the unit of work and of resumption: one whose marker exists is not
//! embedded again, and one cut short by a kill left no marker and is embedded anew
//! (its half-written files carry temporary names). Workers never share a shard, so
//! any number of them (threads, processes, Spark executors) can fill one index.

use std::sync::mpsc;
use std::time::Instant;

use image::RgbImage;
use indicatif::ProgressBar;
use rayon::prelude::*;

use crate::data::{read_shard, RawItem, Shard};
use crate::error::{Error, Result};
use crate::layout::{IndexDir, ShardData, ShardMarker};
use crate::meta::Record;
use crate::npy::Matrix;

/// Any error an [`Embedder`] reports.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A model that puts images and texts in one vector space (CLIP, BLIP's ITC heads).
/// The binary adapts glimpse-models' `Embed` capability to it; tests use small fakes.
pub trait Embedder: Send + Sync {
    /// Names the model and its weights; an index refuses vectors from any other id.
    fn model_id(&self) -> &str;
    /// The embedding dimension.
    fn dim(&self) -> usize;
    /// A decoded image to the model's input values (run on worker threads).
    fn preprocess(&self, image: &RgbImage) -> std::result::Result<Vec<f32>, BoxError>;
    /// One vector per preprocessed image (not necessarily normalised).
    fn embed_images(&self, pixels: &[Vec<f32>]) -> std::result::Result<Vec<Vec<f32>>, BoxError>;
    /// One vector per text (not necessarily normalised); texts are never blank.
    fn embed_texts(&self, texts: &[&str]) -> std::result::Result<Vec<Vec<f32>>, BoxError>;
}

/// How a job runs.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Images per model call.
    pub batch_size: usize,
    /// Threads that decode and preprocess.
    pub workers: usize,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            batch_size: 32,
            workers: 2,
        }
    }
}

/// A sample ready for the model, or the reason it was skipped.
enum Prepared {
    Ready(Record, Vec<f32>),
    Skip(String),
}

fn prepare(embedder: &dyn Embedder, item: std::result::Result<RawItem, String>) -> Prepared {
    let raw = match item {
        Ok(r) => r,
        Err(msg) => return Prepared::Skip(msg),
    };
    let skip = |e: &dyn std::fmt::Display| {
        Prepared::Skip(format!("{}: sample {}: {e}", raw.image_path, raw.key))
    };
    let image = match glimpse_data::decode_image(&raw.bytes, &raw.image_path) {
        Ok(i) => i,
        Err(e) => return skip(&e),
    };
    let pixels = match embedder.preprocess(&image) {
        Ok(p) => p,
        Err(e) => return skip(&e),
    };
    let caption = raw.caption.filter(|c| !c.trim().is_empty());
    Prepared::Ready(
        Record {
            key: raw.key,
            image_path: raw.image_path,
            caption,
        },
        pixels,
    )
}

/// `v / |v|`, refusing vectors that cannot be normalised.
pub fn normalise(model: &str, mut v: Vec<f32>) -> Result<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(Error::Embedder {
            model: model.to_string(),
            msg: format!("an embedding of norm {norm} cannot be normalised"),
        });
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Ok(v)
}

fn embedder_error(embedder: &dyn Embedder, e: BoxError) -> Error {
    Error::Embedder {
        model: embedder.model_id().to_string(),
        msg: e.to_string(),
    }
}

/// Embeds `shard` into `dir` unless its marker already exists; returns the marker.
/// `progress` advances by one per sample read.
pub fn embed_shard(
    embedder: &dyn Embedder,
    dir: &IndexDir,
    shard: &Shard,
    opts: &JobOptions,
    progress: &ProgressBar,
) -> Result<ShardMarker> {
    dir.check_model(embedder.model_id(), embedder.dim(), "the embedding model")?;
    if let Some(marker) = dir.marker(shard.index)? {
        if marker.source != shard.name() {
            return Err(Error::Invalid(format!(
                "{}: shard {} was embedded from {:?}, not {:?}; use another --out",
                dir.root.display(),
                shard.index,
                marker.source,
                shard.name()
            )));
        }
        return Ok(marker);
    }
    if opts.batch_size == 0 {
        return Err(Error::Invalid("batch size must be at least 1".into()));
    }
    let start = Instant::now();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.workers.max(1))
        .thread_name(|i| format!("index-decode-{i}"))
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start decode threads: {e}")))?;
    let items = read_shard(shard)?;
    let dim = dir.manifest.dim;
    let mut data = ShardData {
        images: Matrix::new(dim),
        texts: Matrix::new(dim),
        records: Vec::new(),
    };
    let mut skipped = Vec::new();
    let zero = vec![0.0f32; dim];

    // Two batches in flight ahead of the model.
    let (tx, rx) = mpsc::sync_channel::<Vec<Prepared>>(2);
    std::thread::scope(|scope| -> Result<()> {
        let batch_size = opts.batch_size;
        let pool = &pool;
        scope.spawn(move || {
            let mut items = items;
            loop {
                let batch: Vec<_> = items.by_ref().take(batch_size).collect();
                if batch.is_empty() {
                    break;
                }
                let ready: Vec<Prepared> = pool.install(|| {
                    batch
                        .into_par_iter()
                        .map(|i| prepare(embedder, i))
                        .collect()
                });
                if tx.send(ready).is_err() {
                    break; // the model side stopped on an error
                }
            }
        });
        for batch in rx {
            progress.inc(batch.len() as u64);
            let mut records = Vec::with_capacity(batch.len());
            let mut pixels = Vec::with_capacity(batch.len());
            for p in batch {
                match p {
                    Prepared::Ready(r, px) => {
                        records.push(r);
                        pixels.push(px);
                    }
                    Prepared::Skip(msg) => skipped.push(msg),
                }
            }
            if records.is_empty() {
                continue;
            }
            let vectors = embedder
                .embed_images(&pixels)
                .map_err(|e| embedder_error(embedder, e))?;
            let captions: Vec<&str> = records
                .iter()
                .filter_map(|r| r.caption.as_deref())
                .collect();
            let mut text_vectors = if captions.is_empty() {
                Vec::new()
            } else {
                embedder
                    .embed_texts(&captions)
                    .map_err(|e| embedder_error(embedder, e))?
            }
            .into_iter();
            if vectors.len() != records.len() || text_vectors.len() != captions.len() {
                return Err(Error::Embedder {
                    model: embedder.model_id().into(),
                    msg: format!(
                        "returned {} image and {} text vectors for {} images and {} texts",
                        vectors.len(),
                        text_vectors.len(),
                        records.len(),
                        captions.len()
                    ),
                });
            }
            for (record, v) in records.into_iter().zip(vectors) {
                check_dim(embedder, v.len(), dim)?;
                data.images.push(&normalise(embedder.model_id(), v)?);
                match &record.caption {
                    Some(_) => {
                        let t = text_vectors.next().expect("counted above");
                        check_dim(embedder, t.len(), dim)?;
                        data.texts.push(&normalise(embedder.model_id(), t)?);
                    }
                    None => data.texts.push(&zero),
                }
                data.records.push(record);
            }
        }
        Ok(())
    })?;

    let marker = ShardMarker {
        shard: shard.index,
        source: shard.name(),
        rows: data.records.len(),
        captions: data.records.iter().filter(|r| r.caption.is_some()).count(),
        skipped,
        model_id: embedder.model_id().to_string(),
        seconds: start.elapsed().as_secs_f64(),
    };
    dir.write_shard(&marker, &data)?;
    Ok(marker)
}

fn check_dim(embedder: &dyn Embedder, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Embedder {
            model: embedder.model_id().into(),
            msg: format!("returned a vector of dimension {got}, but it declared {want}"),
        });
    }
    Ok(())
}
