//! Training for Glimpse: losses, the AdamW optimizer and its schedule, CLIP and BLIP
//! pretraining, checkpoints that resume bitwise, export to Hugging Face directories,
//! and the evaluation metrics.

pub mod attributes;
pub mod blip;
pub mod clip;
mod error;
pub mod eval;
pub mod export;
pub mod losses;
pub mod metrics;
pub mod negatives;
pub mod objective;
pub mod optim;
pub mod params;
pub mod recipe;
pub mod rng;
pub mod samples;
pub mod trainer;
pub mod vocab;
pub mod vqa;

pub use error::{Error, Result};
