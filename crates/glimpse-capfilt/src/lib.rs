//! CapFilt (BLIP, Li et al. 2022, section 3.3): bootstrap a cleaner image-text dataset
//! from noisy web pairs. A captioner writes synthetic captions for every image
//! (nucleus sampling, for diversity); a filter (an ITM head) scores the web text and
//! every synthetic caption against the image and removes those below a threshold.
//!
//! - [`options`]: the settings, with BLIP's defaults and where they come from.
//! - [`models`]: the [`Captioner`] and [`Filter`] traits and their adapters over
//!   glimpse-models' pipeline (a missing capability or ITM head is refused up front).
//! - [`record`]: the `capfilt` field each output record gains.
//! - [`layout`]: the output directory, per-shard completion markers and the manifest.
//! - [`job`]: the per-shard worker: batches through the captioner, every text through
//!   the filter, a bootstrapped WebDataset shard written under a temporary name and
//!   renamed, then its marker. Resumable after a kill; any scheduler (the Spark
//!   driver under `tools/spark`) can run shards on their own.
//! - [`quality`]: how well a finished run filtered data whose noise is known (the
//!   synthetic world's `--noise` marks): removed and kept per corruption kind, a
//!   threshold sweep, and examples for a report page (`glimpse eval --task capfilt`).

mod error;
pub mod job;
pub mod layout;
pub mod models;
pub mod options;
pub mod quality;
pub mod record;

#[cfg(test)]
mod tests;

pub use error::{Error, Result, Role};
pub use job::{resolve_inputs, run_shard, settings, InputShard, ShardOutcome};
pub use layout::{Counts, Manifest, OutputDir, Settings, ShardReport, Skipped};
pub use models::{Captioner, Filter, PipelineCaptioner, PipelineFilter};
pub use options::{CapfiltOptions, Decoding};
pub use quality::{measure as measure_quality, Quality};
pub use record::{CapfiltRecord, Scored};
