//! BLIP-2 (<https://arxiv.org/abs/2301.12597>) as in `transformers/models/blip_2/`
//! (`modeling_blip_2.py`, `processing_blip_2.py`, transformers 5.24):
//!
//! * [`Blip2ForConditionalGeneration`]: captioning, prompted generation and zero-shot
//!   VQA; a frozen ViT, the Q-Former's learned queries cross-attending to it, and a
//!   projection that turns the queries into a soft prompt for OPT or Flan-T5;
//! * [`Blip2ForImageTextRetrieval`]: the Q-Former's ITC embeddings and ITM head.
//!
//! The vision tower is [`glimpse_nn::vit`] (BLIP layout, either bias layout of the
//! fused `qkv`); the Q-Former reuses [`glimpse_nn::bert`]'s attention blocks; the
//! language models are [`glimpse_nn::opt`] and [`glimpse_nn::t5`]. Generation goes
//! through [`glimpse_generate`] with a [`Blip2Cache`] that carries the visual prompt
//! into the first step.
//!
//! Precision: the reference keeps the Q-Former and the queries in f32 whatever the
//! model's dtype; `load_with_dtype` does the same. `Blip2ForConditionalGeneration::load`
//! computes in f32 on the CPU and in the stored dtype elsewhere.

mod config;
mod decode;
mod generation;
mod qformer;
mod retrieval;
mod vision;

pub use config::{Blip2Config, Blip2QFormerConfig, Blip2TextConfig, Blip2VisionConfig, ImageSize};
pub use decode::{vqa_prompt, Blip2Cache, Pending};
pub use generation::{Blip2ForConditionalGeneration, LanguageModel};
pub use qformer::{Blip2QFormerLayer, Blip2QFormerModel, Blip2TextEmbeddings};
pub use retrieval::{itc_scores, Blip2ForImageTextRetrieval};
pub use vision::Blip2VisionModel;

/// Runs the shared decoding loop; its errors become model errors.
fn run_generate<M: glimpse_generate::Decoder>(
    model: &M,
    cache: &mut M::Cache,
    prompt: &candle_core::Tensor,
    gen: &glimpse_generate::GenerationConfig,
) -> crate::Result<Vec<Vec<u32>>> {
    glimpse_generate::generate(model, cache, prompt, gen).map_err(|e| match e {
        glimpse_generate::GenerateError::Candle(e) => crate::Error::Candle(e),
        other => crate::Error::Model {
            model: "blip-2 generate".into(),
            msg: other.to_string(),
        },
    })
}
