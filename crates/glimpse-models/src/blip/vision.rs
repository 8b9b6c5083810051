//! BLIP's image encoder (`vision_model`): the shared ViT in its BLIP layout (fused `qkv`,
//! raw `position_embedding`, `post_layernorm` on every token).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use glimpse_nn::vit::{VisionTransformer, VitOutput};

use super::config::BlipVisionConfig;

/// `BlipVisionModel`.
#[derive(Debug, Clone)]
pub struct BlipVisionModel {
    pub vit: VisionTransformer,
}

impl BlipVisionModel {
    /// `vb` points at the tower (`vision_model`).
    pub fn new(cfg: &BlipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let vit_cfg = cfg.vit().map_err(candle_core::Error::Msg)?;
        Ok(Self {
            vit: VisionTransformer::new(&vit_cfg, vb)?,
        })
    }

    /// The reference's `last_hidden_state`: every token after `post_layernorm`, which is
    /// what BLIP's text side cross-attends to.
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
}
