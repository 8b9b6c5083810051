//! Building blocks for Glimpse models on candle.
//!
//! * [`attention`]: the one scaled dot-product attention (self, cross, causal, custom
//!   masks, grouped-query) and the key/value cache that callers pass in.
//! * [`activation`]: the feed-forward activations, named as in Hugging Face configs.
//! * [`layers`]: linear/layer-norm helpers that pick fused kernels for inference and
//!   differentiable ones for training.
//! * [`kernels`]: fused CPU kernels for f32 inference (linear with its epilogue,
//!   attention over heads in place, layer norm), used by the layers when they apply.
//! * [`vit`]: the vision transformer used by CLIP, BLIP and BLIP-2 image encoders.
//! * [`bert`]: the BERT-style text encoder/decoder with optional cross-attention (BLIP).
//! * [`opt`], [`llama`]: decoder-only language models (BLIP-2 with OPT, LLaVA), and
//!   [`decoder`], what they share: the decoding cache, quantising, the tied head.
//! * [`t5`]: the T5 / Flan-T5 encoder-decoder (BLIP-2 with Flan-T5).
//! * [`quant`]: linear layers that can be quantised after loading (8-bit, 4-bit) for
//!   decoding with the OPT and LLaMA language models.
//!
//! Modules are built with `fn new(cfg, vb: VarBuilder)` where the `VarBuilder` prefix
//! equals the checkpoint key, so a port reads like the reference's parameter list.

pub mod activation;
pub mod attention;
pub mod bert;
pub mod decoder;
pub mod kernels;
pub mod layers;
pub mod linears;
pub mod llama;
pub mod opt;
pub mod quant;
pub mod t5;
#[cfg(test)]
mod test_util;
pub mod vit;

pub use attention::{padding_mask, sdpa, AttnMask, KvCache};
pub use decoder::DecoderCache;
