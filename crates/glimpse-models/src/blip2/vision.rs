//! BLIP-2's image encoder (`vision_model`, EVA-CLIP ViT-g in the published models): the
//! shared ViT in its BLIP layout. `post_layernorm` runs on every token; the Q-Former's
//! queries cross-attend to all of them.
//!
//! Published checkpoints store the fused attention bias either as `qkv.bias`
//! (`cat(q_bias, 0, v_bias)`) or as separate `q_bias`/`v_bias`; the ViT accepts both.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use glimpse_nn::vit::{VisionTransformer, VitOutput};

use super::config::Blip2VisionConfig;

/// `Blip2VisionModel`.
#[derive(Debug, Clone)]
pub struct Blip2VisionModel {
    pub vit: VisionTransformer,
}

impl Blip2VisionModel {
    /// `vb` points at the tower (`vision_model`).
    pub fn new(cfg: &Blip2VisionConfig, vb: VarBuilder) -> Result<Self> {
        let vit_cfg = cfg.vit().map_err(candle_core::Error::Msg)?;
        Ok(Self {
            vit: VisionTransformer::new(&vit_cfg, vb)?,
        })
    }

    /// The reference's `last_hidden_state` (after `post_layernorm`).
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, image_size, image_size]` -> `[batch, 1 + patches, hidden]`
    pub fn forward(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self
            .vit
            .forward(pixel_values, false, train)?
            .last_hidden_state)
    }

    /// Every output of the tower (pooled class token, optional hidden states).
    pub fn forward_all(
        &self,
        pixel_values: &Tensor,
        output_hidden_states: bool,
        train: bool,
    ) -> Result<VitOutput> {
        self.vit.forward(pixel_values, output_hidden_states, train)
    }

    /// The dtype the tower computes in.
    pub fn dtype(&self) -> candle_core::DType {
        self.vit.embeddings.position_embedding.dtype()
    }
}
