//! The CLIP and BLIP model families, loaded from Hugging Face checkpoint directories.
//!
//! * [`checkpoint`]: resolving a `--model` (local directory or hub id), strict weight
//!   loading (missing, unexpected and mis-shaped tensors are errors that name them),
//!   sharded files, tied weights, f32/f16/bf16.
//! * [`clip`]: `CLIPModel`.
//! * [`blip`]: `BlipForConditionalGeneration`, `BlipForImageTextRetrieval`,
//!   `BlipForQuestionAnswering`.

pub mod blip;
pub mod checkpoint;
pub mod clip;
mod error;

pub use error::{Error, Result};
