//! BLIP (<https://arxiv.org/abs/2201.12086>) as in `transformers/models/blip/`
//! (`modeling_blip.py`, `modeling_blip_text.py`, transformers 5.24):
//!
//! * [`BlipForConditionalGeneration`]: captioning (ViT + image-grounded text decoder);
//! * [`BlipForImageTextRetrieval`]: ITC embeddings and cosine, ITM match probability;
//! * [`BlipForQuestionAnswering`]: ViT, question encoder with cross-attention to the
//!   image, answer decoder with cross-attention to the question.
//!
//! The text side is [`glimpse_nn::bert`]; the decoders implement
//! [`glimpse_generate::Decoder`] with a [`BertCache`] whose cross-attention keys/values
//! are computed once per image (or question) when the cache is built.
//!
//! Where the reference's `forward` and `generate` differ we follow each where it is
//! used: `decoder_logits` is `forward` (ids as given, no bos replacement), the prompt
//! helpers and `generate` follow `generate`.

mod caption;
mod config;
mod retrieval;
mod vision;
mod vqa;

pub use caption::BlipForConditionalGeneration;
pub use config::{BlipConfig, BlipTextConfig, BlipVisionConfig, ImageSize, TokenIds};
pub use glimpse_nn::bert::BertCache;
pub use retrieval::BlipForImageTextRetrieval;
pub use vision::BlipVisionModel;
pub use vqa::BlipForQuestionAnswering;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use crate::checkpoint::{ModelFiles, Weights};
use crate::Result;

/// Reads the config and opens the weights for a strict load in `dtype`.
fn open(
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
) -> Result<(BlipConfig, Weights, VarBuilder<'static>)> {
    let cfg: BlipConfig = files.read_config()?;
    let weights = Weights::open(files)?;
    let vb = weights.var_builder(dtype, device);
    Ok((cfg, weights, vb))
}

/// Runs the shared decoding loop; its errors become model errors.
fn run_generate<M: glimpse_generate::Decoder>(
    model: &M,
    cache: &mut M::Cache,
    prompt: &candle_core::Tensor,
    gen: &glimpse_generate::GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    Ok(glimpse_generate::generate(model, cache, prompt, gen)?)
}

/// `[1 or batch, n, d]` image states for `batch` texts: one image is shared by every
/// text, otherwise there must be one per text.
fn states_per_text(
    states: &candle_core::Tensor,
    b: usize,
) -> candle_core::Result<candle_core::Tensor> {
    let (bi, n, d) = states.dims3()?;
    match bi {
        _ if bi == b => Ok(states.clone()),
        1 => states.expand((b, n, d))?.contiguous(), // [b, n, d]
        _ => candle_core::bail!("{bi} images for {b} texts: give one image, or one per text"),
    }
}
