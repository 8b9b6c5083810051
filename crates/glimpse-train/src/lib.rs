//! Training for Glimpse: losses, the AdamW optimizer and its schedule, CLIP and BLIP
//! pretraining, BLIP-2 stage 1, text-only language models, checkpoints that resume bitwise, export to
//! Hugging Face directories.
//! Evaluation lives in `glimpse-eval`, the synthetic world in `glimpse-synth`.

pub mod attributes;
pub mod blip;
pub mod blip2;
pub mod clip;
pub mod corpus;
mod error;
pub mod export;
pub mod llava;
pub mod lm;
pub mod losses;
pub mod negatives;
pub mod objective;
pub mod optim;
pub mod params;
pub mod recipe;
pub mod samples;
pub mod trainer;
pub mod vocab;
pub mod vqa;

pub use error::{Error, Result};
