//! `BlipForImageTextRetrieval`: image-text contrastive embeddings (ITC) and the
//! image-text matching head (ITM).
//!
//! As in the reference (and unlike the original BLIP code, which puts an `[ENC]` token
//! first for ITM), the text encoder reads the processor's ids unchanged in both heads.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use glimpse_nn::bert::{BertModel, EncoderStates, SelfMask};
use glimpse_nn::layers::{linear, Linear, Module};

use super::{config::BlipConfig, vision::BlipVisionModel};
use crate::checkpoint::ModelFiles;
use crate::Result;

/// `vision_model`, `text_encoder` (BERT with cross-attention, no pooler), `vision_proj`,
/// `text_proj`, `itm_head`.
#[derive(Debug, Clone)]
pub struct BlipForImageTextRetrieval {
    pub vision_model: BlipVisionModel,
    pub text_encoder: BertModel,
    pub vision_proj: Linear,
    pub text_proj: Linear,
    pub itm_head: Linear,
    config: BlipConfig,
}

impl BlipForImageTextRetrieval {
    pub fn new(cfg: &BlipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let (dv, dt, e) = (
            cfg.vision_config.hidden_size,
            cfg.text_config.hidden_size,
            cfg.image_text_hidden_size,
        );
        Ok(Self {
            vision_model: BlipVisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?,
            text_encoder: BertModel::new(&cfg.text(), vb.pp("text_encoder"))?,
            vision_proj: linear(dv, e, vb.pp("vision_proj"))?,
            text_proj: linear(dt, e, vb.pp("text_proj"))?,
            itm_head: linear(dt, 2, vb.pp("itm_head"))?,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint directory in f32 (see [`Self::load_with_dtype`]).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with_dtype(files, DType::F32, device)
    }

    /// Loads strictly: a missing, mis-shaped or unused tensor is an error naming it.
    pub fn load_with_dtype(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg, weights, vb) = super::open(files, dtype, device)?;
        let model = Self::new(&cfg, vb)?;
        weights.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &BlipConfig {
        &self.config
    }

    /// Every image token after the vision tower (what ITM cross-attends to).
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, 1 + patches, vision_hidden]`
    pub fn vision(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.vision_model.forward(pixel_values, false)?)
    }

    /// ITC image embeddings: `vision_proj` of the class token, not normalised.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, image_text_hidden_size]`
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let image = self.vision(pixel_values)?; // [b, n, dv]
        self.project_image(&image)
    }

    /// `vision_proj` of the class token of `vision` output.
    ///
    /// # Shapes
    /// * `image_states`: `[batch, n, vision_hidden]` -> `[batch, image_text_hidden_size]`
    pub fn project_image(&self, image_states: &Tensor) -> Result<Tensor> {
        let cls = image_states.narrow(1, 0, 1)?.squeeze(1)?; // [b, dv]
        Ok(self.vision_proj.forward(&cls)?) // [b, E]
    }

    /// ITC text embeddings: `text_proj` of the first token of the text-only encoder
    /// (bidirectional, no cross-attention), not normalised.
    ///
    /// # Shapes
    /// * `input_ids`, `attention_mask`: `[batch, t]` -> `[batch, image_text_hidden_size]`
    pub fn text_embeds(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let hidden = self.text_encoder.forward(
            input_ids,
            Some(attention_mask),
            None,
            SelfMask::Bidirectional,
            false,
        )?; // [b, t, dt]
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?; // [b, dt]
        Ok(self.text_proj.forward(&cls)?) // [b, E]
    }

    /// The reference's `use_itm_head=False` score: cosine of every image with every text.
    ///
    /// # Shapes
    /// * `pixel_values`: `[n_images, 3, size, size]`; ids, mask: `[n_texts, t]`
    /// * returns `[n_images, n_texts]`
    pub fn itc(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let image = l2_normalize(&self.image_embeds(pixel_values)?)?; // [ni, E]
        let text = l2_normalize(&self.text_embeds(input_ids, attention_mask)?)?; // [nt, E]
        Ok(image.matmul(&text.t()?)?) // [ni, nt]
    }

    /// ITM logits (`itm_head` of the first token of the image-grounded text encoder).
    ///
    /// # Shapes
    /// * `image_states`: `[batch, n, vision_hidden]`, or `[1, n, vision_hidden]` to
    ///   score one image against every text; ids, mask: `[batch, t]`
    /// * returns `[batch, 2]` (no-match, match)
    pub fn itm_logits(
        &self,
        image_states: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (b, _) = input_ids.dims2()?;
        let image = super::states_per_text(image_states, b)?; // [b, n, dv]
        let encoder = EncoderStates {
            hidden_states: &image,
            attention_mask: None, // the reference's image mask is all ones
        };
        let hidden = self.text_encoder.forward(
            input_ids,
            Some(attention_mask),
            Some(encoder),
            SelfMask::Bidirectional,
            train,
        )?; // [b, t, dt]
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?; // [b, dt]
        Ok(self.itm_head.forward(&cls)?) // [b, 2]
    }

    /// Probability that each text matches its image (softmax of the ITM logits, class 1).
    ///
    /// # Shapes
    /// * `image_states` as in [`Self::itm_logits`]; returns `[batch]` f32
    pub fn itm_probs_from_states(
        &self,
        image_states: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let logits = self.itm_logits(image_states, input_ids, attention_mask, false)?; // [b, 2]
        let probs = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?; // [b, 2]
        Ok(probs.narrow(1, 1, 1)?.squeeze(1)?) // [b]
    }

    /// [`Self::itm_probs_from_states`] from pixels: one image for every text, or one
    /// image per text.
    ///
    /// # Shapes
    /// * `pixel_values`: `[1 or batch, 3, size, size]`; ids, mask: `[batch, t]` -> `[batch]`
    pub fn itm_probs(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<Tensor> {
        let image = self.vision(pixel_values)?; // [bi, n, dv]
        self.itm_probs_from_states(&image, input_ids, attention_mask)
    }
}

/// Rows scaled to unit L2 norm, in f32 (the reference's `normalize(dim=-1)`, eps 1e-12).
fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?; // [n, 1]
    x.broadcast_div(&norm)
}
