//! The CLIP and BLIP model families, loaded from Hugging Face checkpoint directories.
//!
//! * [`allocator`]: allocator settings for tensor work (called once by the CLI).
//! * [`checkpoint`]: resolving a `--model` (local directory or hub id), strict weight
//!   loading (missing, unexpected and mis-shaped tensors are errors that name them),
//!   sharded files, tied weights, f32/f16/bf16.
//! * [`clip`]: the CLIP family, `CLIPModel`.
//! * [`blip`]: `BlipForConditionalGeneration`, `BlipForImageTextRetrieval`,
//!   `BlipForQuestionAnswering`.
//! * [`blip2`]: `Blip2ForConditionalGeneration` (OPT, T5), `Blip2ForImageTextRetrieval`.
//! * [`llava`]: the LLaVA family, `LlavaForConditionalGeneration`.
//! * [`capability`]: what a loaded model can do, as traits (embed, classify, match,
//!   caption, answer, chat, quantize) that each family implements.
//! * [`registry`]: the classes Glimpse loads, one registration each.
//! * [`finite`]: the check that a model's outputs hold no NaN or infinity.
//! * [`pipeline`]: one entry point (load any supported directory, then embed, match,
//!   classify, caption, ask, chat) used by the CLI.

pub mod allocator;
pub mod blip;
pub mod blip2;
pub mod capability;
pub mod causal_lm;
pub mod checkpoint;
pub mod clip;
mod error;
pub mod fingerprint;
pub mod finite;
mod int8;
pub mod llava;
pub mod pipeline;
mod positions;
pub mod registry;
mod replies;

pub use error::{Error, Result};
