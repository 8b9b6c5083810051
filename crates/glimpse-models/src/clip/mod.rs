//! CLIP (<https://arxiv.org/abs/2103.00020>) as `CLIPModel` in
//! `transformers/models/clip/modeling_clip.py` (transformers 5.24).
//!
//! The model returns projected, unnormalised features, as the reference's
//! `get_image_features` / `get_text_features`; [`ClipModel::logits_per_image`]
//! normalises them and applies the learned temperature. Losses live with the trainer.
//! The vision tower is [`glimpse_nn::vit::VisionTransformer`] in the CLIP layout; the
//! text tower ([`ClipTextTransformer`]) shares its encoder layers. As a pipeline model
//! it embeds, classifies zero-shot and scores image-text pairs by cosine.

mod config;
mod text;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use text::{ClipTextEmbeddings, ClipTextTransformer};

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use glimpse_nn::layers::linear_no_bias;
use glimpse_nn::layers::Linear;
use glimpse_nn::vit::{VisionTransformer, VitConfig};

use crate::capability::{cosine, Capability, Classify, Embed, Match, MatchScores, Model};
use crate::checkpoint::{ModelFiles, Weights};
use crate::error::{Error, Result};
use crate::registry::{Architecture, Registration};

/// `CLIPModel`: both towers, their projections and the temperature.
#[derive(Debug, Clone)]
pub struct ClipModel {
    pub text_model: ClipTextTransformer,
    pub vision_model: VisionTransformer,
    pub visual_projection: Linear,
    pub text_projection: Linear,
    /// The stored (log) temperature, a scalar.
    pub logit_scale: Tensor,
    config: ClipConfig,
}

impl ClipModel {
    /// Builds the model from a config and a builder rooted at the checkpoint's top level.
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let cfg = cfg.resolved().map_err(|e| Error::Model {
            model: "CLIPModel".into(),
            msg: format!("legacy text/vision_config_dict: {e}"),
        })?;
        let (t, v, p) = (
            cfg.text_config.hidden_size,
            cfg.vision_config.hidden_size,
            cfg.projection_dim,
        );
        let vit: VitConfig = (&cfg.vision_config).into();
        let logit_scale = vb.get_with_hints(
            (),
            "logit_scale",
            candle_nn::Init::Const(cfg.logit_scale_init_value),
        )?;
        Ok(Self {
            text_model: ClipTextTransformer::new(&cfg.text_config, vb.pp("text_model"))?,
            vision_model: VisionTransformer::new(&vit, vb.pp("vision_model"))?,
            visual_projection: linear_no_bias(v, p, vb.pp("visual_projection"))?,
            text_projection: linear_no_bias(t, p, vb.pp("text_projection"))?,
            logit_scale,
            config: cfg,
        })
    }

    /// Loads `files` in f32, strictly: every tensor must be present, of the shape the
    /// config implies, and used.
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with_dtype(files, DType::F32, device)
    }

    /// As [`ClipModel::load`], computing in `dtype` (stored tensors are converted).
    pub fn load_with_dtype(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: ClipConfig = files.read_config()?;
        let weights = Weights::open(files)?;
        let model = Self::new(&cfg, weights.var_builder(dtype, device))?;
        weights.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// # Shapes
    /// * `pixel_values`: `[batch, 3, image_size, image_size]` -> `[batch, projection_dim]`
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.image_features(pixel_values, false)
    }

    /// [`ClipModel::get_image_features`] with the `train` switch (differentiable ops).
    pub fn image_features(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        let pooled = if train {
            self.vision_model
                .forward(pixel_values, false, true)?
                .pooler_output
        } else {
            self.vision_model.pooled(pixel_values)? // the class token alone, [b, d]
        };
        Ok(pooled.apply(&self.visual_projection)?) // [b, p]
    }

    /// # Shapes
    /// * `input_ids`: `[batch, seq]` (u32 or i64), `attention_mask`: `[batch, seq]` 0/1
    /// * returns `[batch, projection_dim]`
    pub fn get_text_features(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        self.text_features(input_ids, Some(attention_mask), false)
    }

    /// [`ClipModel::get_text_features`] with an optional mask and the `train` switch.
    pub fn text_features(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let pooled = if train {
            self.text_model.forward(input_ids, attention_mask, true)?.1
        } else {
            self.text_model.pooled(input_ids, attention_mask)? // the end tokens alone
        }; // [b, t]
        Ok(pooled.apply(&self.text_projection)?) // [b, p]
    }

    /// The stored temperature parameter, a log value: logits are scaled by its `exp`.
    pub fn logit_scale(&self) -> Result<f32> {
        Ok(self.logit_scale.to_dtype(DType::F32)?.to_scalar::<f32>()?)
    }

    /// `exp(logit_scale)`, the factor that multiplies cosine similarities.
    pub fn logit_scale_exp(&self) -> Result<f32> {
        Ok(self.logit_scale()?.exp())
    }

    /// Scaled cosine similarities, as the reference's `logits_per_image` (the
    /// transpose is `logits_per_text`).
    ///
    /// # Shapes
    /// * `image_embeds`: `[n_images, p]`, `text_embeds`: `[n_texts, p]`
    /// * returns `[n_images, n_texts]`
    pub fn logits_per_image(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let img = l2_normalize(image_embeds)?; // [i, p]
        let txt = l2_normalize(text_embeds)?; // [n, p]
        let scale = self.logit_scale.exp()?.to_dtype(img.dtype())?; // []
        Ok(img.matmul(&txt.t()?)?.broadcast_mul(&scale)?) // [i, n]
    }
}

/// Each row divided by its Euclidean norm.
///
/// # Shapes
/// * `x`: `[n, d]` -> `[n, d]`
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?; // [n, 1]
    Ok(x.broadcast_div(&norm)?)
}

pub(crate) const REGISTRATION: Registration = Registration {
    architecture: Architecture::Clip,
    capabilities: &[Capability::Embed, Capability::Classify, Capability::Match],
    load: |files, device| Ok(Box::new(ClipModel::load(files, device)?)),
};

impl Model for ClipModel {
    fn as_linears(&mut self) -> Option<&mut dyn glimpse_nn::linears::Linears> {
        Some(self)
    }

    fn architecture(&self) -> Architecture {
        Architecture::Clip
    }

    fn max_text_len(&self) -> Option<usize> {
        Some(self.config.text_config.max_position_embeddings)
    }

    fn as_embed(&self) -> Option<&dyn Embed> {
        Some(self)
    }

    fn as_classify(&self) -> Option<&dyn Classify> {
        Some(self)
    }

    fn as_match(&self) -> Option<&dyn Match> {
        Some(self)
    }
}

impl Embed for ClipModel {
    fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.get_image_features(pixel_values)
    }

    fn text_embeds(&self, texts: &glimpse_data::TextBatch) -> Result<Tensor> {
        self.get_text_features(&texts.input_ids, &texts.attention_mask)
    }
}

impl Classify for ClipModel {
    fn logit_scale_exp(&self) -> Result<f32> {
        ClipModel::logit_scale_exp(self)
    }
}

impl Match for ClipModel {
    /// ITC only: CLIP has no matching head.
    fn match_scores(
        &self,
        pixel_values: &Tensor,
        texts: &glimpse_data::TextBatch,
    ) -> Result<MatchScores> {
        let itc = cosine(&self.image_embeds(pixel_values)?, &self.text_embeds(texts)?)?; // [1, n]
        Ok(MatchScores {
            itc: itc.squeeze(0)?.to_vec1()?,
            itm: None,
        })
    }
}
