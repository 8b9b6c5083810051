//! Image preprocessing and tokenization for Glimpse, driven by the same files the
//! reference uses (`preprocessor_config.json`, `tokenizer.json`,
//! `tokenizer_config.json`), with parity against transformers' PIL-backend processors
//! and its tokenizers as the goal.
//!
//! - [`load_image`] / [`decode_image`]: any supported format to upright RGB8, bounded
//!   in memory, converted the way PIL's `convert("RGB")` would.
//! - [`ImageProcessor`]: CLIP / BLIP resize, crop, rescale, normalise.
//! - [`TextTokenizer`]: encode, batch with right padding and truncation, decode.
//! - [`dataset`]: streaming datasets (WebDataset shards, JSONL, COCO) with a
//!   reproducible shuffle; [`tar`]: the shard reader and writer.
//! - [`rng`]: SplitMix64, the one seeded generator of the workspace.

pub mod atomic;
pub mod dataset;
mod error;
mod image_io;
mod processor;
pub mod rng;
pub mod tar;
pub mod text;

pub use error::{Error, Result};
pub use image_io::{
    decode_image, decode_image_with_limits, load_image, load_image_with_limits, ImageLimits,
};
pub use processor::{
    resize_dims, ImageProcessor, ProcessorConfig, ProcessorFamily, Resample, ResizeTarget,
    OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
};
pub use text::{TextBatch, TextTokenizer};
