//! Streaming training data: WebDataset shards, JSONL and COCO captions, shuffled
//! reproducibly and decoded on worker threads.
//!
//! Design choices:
//!
//! - **One position axis.** Each epoch is a sequence of raw samples (after source and
//!   buffer shuffling) that depends only on `(seed, epoch, sources)`. Samples that turn
//!   out unusable keep their position and are counted as skipped, so
//!   [`EpochIter::position`] after any item is an exact resume point and
//!   `yielded + skipped_corrupt` equals [`Loader::count`] for a full epoch.
//! - **Bad data is counted, not fatal.** A corrupt image, a missing or malformed JSON,
//!   a truncated shard tail or an unreadable source costs its samples and leaves a
//!   message in [`LoaderStats`]; the only error an epoch yields is "no sources".
//!   [`Loader::count`], run before training, does fail on a source it cannot open.
//! - **Cheap resume.** `epoch(e, skip)` replays the shuffle but drops the first `skip`
//!   positions before any image is read from disk (JSONL/COCO) or decoded.
//! - **Order independent of threads.** Workers decode out of order; results are handed
//!   back in position order with bounded memory (see `pipeline.rs`).

mod pipeline;
mod read;
mod source;

#[cfg(test)]
mod tests;

use image::RgbImage;
use serde_json::Value;

pub use pipeline::EpochIter;
pub use source::{resolve_sources, Source};

use crate::rng::SplitMix64;
use crate::{Error, Result};

/// One raw sample before decoding.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub key: String,
    /// The shard, JSONL or COCO file it came from, for messages.
    pub source: String,
    /// The entry or file name of the image (also the format fallback by extension).
    pub image_name: String,
    pub image_bytes: Vec<u8>,
    /// The sample's metadata: the `.json` entry (with a `.txt` entry as `caption`),
    /// the JSONL record, or the COCO image record with `captions` and `caption`.
    pub meta: Value,
}

/// A decoded sample.
#[derive(Debug, Clone)]
pub struct Example {
    pub key: String,
    pub image: RgbImage,
    pub meta: Value,
}

/// How a [`Loader`] reads; missing fields take their [`Default`] values.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LoaderConfig {
    /// Size of the shuffle buffer; 0 or 1 keep the file order.
    pub shuffle_buffer: usize,
    /// Decode threads (0 is taken as 1).
    pub workers: usize,
    pub seed: u64,
    /// Shuffle the order of the sources each epoch.
    pub shuffle_sources: bool,
    /// Most decoded samples alive at once, waiting or being decoded (0 is taken as 1).
    pub prefetch: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            shuffle_buffer: 1000,
            workers: 4,
            seed: 0,
            shuffle_sources: true,
            prefetch: 64,
        }
    }
}

/// Counters of an epoch.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoaderStats {
    pub yielded: u64,
    pub skipped_corrupt: u64,
    /// The first 20 skip messages, each `SOURCE: sample KEY: REASON`.
    pub skipped_reasons: Vec<String>,
}

/// The shuffler's stream for `(seed, epoch, stream)`: fixed forever, so an order
/// recorded in a checkpoint stays reproducible across dependency upgrades.
fn epoch_rng(seed: u64, epoch: u64, stream: u64) -> SplitMix64 {
    SplitMix64::salted(0x5851_f42d_4c95_7f2d, seed, epoch, stream)
}

const SOURCE_STREAM: u64 = 1;
const BUFFER_STREAM: u64 = 2;

/// Reads the samples of a list of sources, one epoch at a time.
#[derive(Debug, Clone)]
pub struct Loader {
    sources: Vec<Source>,
    cfg: LoaderConfig,
}

impl Loader {
    pub fn new(sources: Vec<Source>, cfg: LoaderConfig) -> Self {
        Loader { sources, cfg }
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    /// The sources in the order epoch `epoch` reads them.
    pub fn epoch_sources(&self, epoch: u64) -> Vec<Source> {
        let mut sources = self.sources.clone();
        if self.cfg.shuffle_sources {
            epoch_rng(self.cfg.seed, epoch, SOURCE_STREAM).shuffle(&mut sources);
        }
        sources
    }

    /// All samples of epoch `epoch`, in an order that depends only on the seed, the
    /// epoch and the sources; the first `skip` positions are dropped undecoded.
    pub fn epoch(&self, epoch: u64, skip: u64) -> EpochIter {
        if self.sources.is_empty() {
            return EpochIter::failed(no_sources());
        }
        let plan = pipeline::Plan {
            sources: self.epoch_sources(epoch),
            shuffle_buffer: self.cfg.shuffle_buffer,
            buffer_rng: epoch_rng(self.cfg.seed, epoch, BUFFER_STREAM),
            skip,
        };
        EpochIter::start(plan, self.cfg.workers, self.cfg.prefetch)
    }

    /// The number of positions in an epoch (usable samples plus those that will be
    /// skipped for their metadata), without decoding; shards are read through once.
    /// Fails on a source that cannot be opened or parsed.
    pub fn count(&self) -> Result<u64> {
        if self.sources.is_empty() {
            return Err(no_sources());
        }
        let mut n = 0u64;
        for s in &self.sources {
            n += read::open(s)?.count() as u64;
        }
        Ok(n)
    }
}

/// Every sample of `source` in file order, undecoded: `Ok` for a usable sample (its
/// image bytes read), `Err` with a `SOURCE: sample KEY: REASON` message for one that
/// cannot be used or for an unreadable rest of the source. For jobs that must list every
/// skipped sample (an index build) rather than count them as [`Loader`] does.
/// Fails only when the source cannot be opened or parsed at all.
pub fn read_source(
    source: &Source,
) -> Result<impl Iterator<Item = std::result::Result<RawSample, String>> + Send> {
    Ok(read::open(source)?.map(|raw| match raw {
        read::Raw::Sample(pending) => pending.load(),
        read::Raw::Bad {
            source,
            key,
            reason,
        } => Err(read::skip_message(&source, &key, &reason)),
        read::Raw::Lost(message) => Err(message),
    }))
}

fn no_sources() -> Error {
    Error::config("data loader", "no sources to read")
}
