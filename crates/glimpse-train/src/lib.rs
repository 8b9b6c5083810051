//! Training for Glimpse: losses, the AdamW optimizer and its schedule, CLIP and BLIP
//! pretraining, checkpoints that resume bitwise, export to Hugging Face directories,
//! and the evaluation metrics.

pub mod blip;
pub mod clip;
pub mod eval;
pub mod export;
mod error;
pub mod losses;
pub mod metrics;
pub mod negatives;
pub mod optim;
pub mod params;
pub mod recipe;
pub mod rng;
pub mod trainer;
pub mod vqa;
pub mod vocab;

pub use error::{Error, Result};
