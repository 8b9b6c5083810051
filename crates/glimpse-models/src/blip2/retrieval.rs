//! `Blip2ForImageTextRetrieval`: the stage-1 Q-Former heads.
//!
//! * ITC: each image gives `Q` normalised query embeddings (`vision_projection`), a text
//!   one normalised embedding (`text_projection` of its `[CLS]` after a text-only
//!   Q-Former pass); the score is the best cosine over the queries.
//! * ITM: queries and text run through the Q-Former together (bidirectional, queries
//!   cross-attend to the image), `itm_head` scores each query output, the logits are
//!   averaged over queries, and the match probability is the softmax's class 1.
//!
//! Text ids here are the tokenizer's (`[CLS] ... [SEP]`). When the config has an
//! `image_token_index`, the reference's processor puts placeholders first and the
//! reference drops them again: pass the ids without them.

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use glimpse_nn::layers::{linear, Linear, Module};

use super::config::Blip2Config;
use super::generation::input_error;
use super::qformer::{Blip2QFormerModel, Blip2TextEmbeddings};
use super::vision::Blip2VisionModel;
use crate::checkpoint::{ModelFiles, Weights};
use crate::Result;

/// `vision_model`, `query_tokens`, `embeddings`, `qformer`, `vision_projection`,
/// `text_projection`, `itm_head`.
#[derive(Debug, Clone)]
pub struct Blip2ForImageTextRetrieval {
    pub vision_model: Blip2VisionModel,
    /// `[1, num_query_tokens, qformer hidden]`
    pub query_tokens: Tensor,
    pub embeddings: Blip2TextEmbeddings,
    pub qformer: Blip2QFormerModel,
    pub vision_projection: Linear,
    pub text_projection: Linear,
    pub itm_head: Linear,
    config: Blip2Config,
}

impl Blip2ForImageTextRetrieval {
    /// Every part in `vb`'s dtype; `vb` points at the checkpoint root.
    pub fn new(cfg: &Blip2Config, vb: VarBuilder) -> candle_core::Result<Self> {
        Self::new_split(cfg, vb.clone(), vb)
    }

    /// `vb_qformer` gives `query_tokens` and `qformer.*` their own dtype (f32 in the
    /// reference).
    pub fn new_split(
        cfg: &Blip2Config,
        vb: VarBuilder,
        vb_qformer: VarBuilder,
    ) -> candle_core::Result<Self> {
        let q = cfg.qformer();
        let (d, e) = (q.hidden_size, cfg.image_text_hidden_size);
        let init = candle_nn::Init::Randn {
            mean: 0.0,
            stdev: cfg.initializer_range,
        };
        Ok(Self {
            vision_model: Blip2VisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?,
            query_tokens: vb_qformer.get_with_hints(
                (1, cfg.num_query_tokens, d),
                "query_tokens",
                init,
            )?,
            embeddings: Blip2TextEmbeddings::new(&q, vb.pp("embeddings"))?,
            qformer: Blip2QFormerModel::new(&q, vb_qformer.pp("qformer"))?,
            vision_projection: linear(d, e, vb.pp("vision_projection"))?,
            text_projection: linear(d, e, vb.pp("text_projection"))?,
            itm_head: linear(d, 2, vb.pp("itm_head"))?,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint directory in f32 (see [`Self::load_with_dtype`]).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with_dtype(files, DType::F32, device)
    }

    /// Loads strictly, the Q-Former and queries in f32 and the rest in `dtype`.
    pub fn load_with_dtype(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let cfg: Blip2Config = files.read_config()?;
        let weights = Weights::open(files)?;
        let vb = weights.var_builder(dtype, device);
        let vb_qformer = weights.var_builder(DType::F32, device);
        let model = Self::new_split(&cfg, vb, vb_qformer)?;
        weights.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &Blip2Config {
        &self.config
    }

    /// Vision tower output.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, 1 + patches, vision_hidden]`
    pub fn vision(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.vision_model.forward(pixel_values, false)?)
    }

    /// ITC image embeddings: normalised `vision_projection` of every query output.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, Q, image_text_hidden_size]`
    pub fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let image = self.vision(pixel_values)?; // [b, n, dv]
        let queries = self
            .qformer
            .query_outputs(&self.query_tokens, &image, false)?; // [b, Q, d]
        let proj = project(&self.vision_projection, &queries)?; // [b, Q, E]
        Ok(normalize(&proj)?)
    }

    /// ITC text embeddings: normalised `text_projection` of the `[CLS]` output of a
    /// text-only Q-Former pass.
    ///
    /// # Shapes
    /// * `input_ids`: `[n, t]` u32; `attention_mask`: `[n, t]` 0/1
    /// * returns `[n, image_text_hidden_size]`
    pub fn text_embeds(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let embeds = self.embeddings.forward(input_ids, None)?; // [n, t, d]
        let hidden = self
            .qformer
            .forward(&embeds, 0, attention_mask, None, false)?; // [n, t, d]
        let cls = hidden.narrow(1, 0, 1)?.squeeze(1)?; // [n, d]
        let proj = project(&self.text_projection, &cls)?; // [n, E]
        Ok(normalize(&proj)?)
    }

    /// ITC scores of every image against every text: the best cosine over the queries
    /// (the reference's `logits_per_image` without the head).
    ///
    /// # Shapes
    /// * `pixel_values`: `[b, 3, size, size]`; `input_ids`, `attention_mask`: `[n, t]`
    /// * returns `[b, n]`
    pub fn itc(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let image = self.image_embeds(pixel_values)?; // [b, Q, E]
        let text = self.text_embeds(input_ids, attention_mask)?; // [n, E]
        Ok(itc_scores(&image, &text)?)
    }

    /// ITM logits `[n, 2]` of each (image, text) pair: one image shared by every text,
    /// or one image per text.
    ///
    /// # Shapes
    /// * `pixel_values`: `[1 or n, 3, size, size]`; `input_ids`, `attention_mask`: `[n, t]`
    pub fn itm_logits(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let n = input_ids.dim(0)?;
        let image = self.vision(pixel_values)?; // [bi, m, dv]
        let (bi, m, dv) = image.dims3()?;
        let image = match bi {
            _ if bi == n => image,
            1 => image.expand((n, m, dv))?.contiguous()?, // [n, m, dv]
            _ => {
                return Err(input_error(format!(
                    "{bi} images for {n} texts: give one image, or one per text"
                )))
            }
        };
        let (_, q, d) = self.query_tokens.dims3()?;
        let queries = self.query_tokens.expand((n, q, d))?; // [n, Q, d]
        let embeds = self.embeddings.forward(input_ids, Some(&queries))?; // [n, Q + t, d]
        let mask = match attention_mask {
            Some(mask) => {
                let ones = Tensor::ones((n, q), mask.dtype(), mask.device())?;
                Some(Tensor::cat(&[&ones, mask], 1)?) // [n, Q + t]
            }
            None => None,
        };
        let hidden = self
            .qformer
            .forward(&embeds, q, mask.as_ref(), Some(&image), false)?; // [n, Q + t, d]
        let per_query = project(&self.itm_head, &hidden.narrow(1, 0, q)?)?; // [n, Q, 2]
        Ok(per_query.mean(1)?) // [n, 2]
    }

    /// ITM match probability of each pair (softmax of [`Self::itm_logits`], class 1).
    ///
    /// # Shapes
    /// * as [`Self::itm_logits`]; returns `[n]`
    pub fn itm_probs(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let logits = self.itm_logits(pixel_values, input_ids, attention_mask)?; // [n, 2]
        let probs = candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
        Ok(probs.narrow(1, 1, 1)?.squeeze(1)?) // [n]
    }
}

/// A projection applied in its own dtype (the Q-Former's output may be f32).
fn project(layer: &Linear, xs: &Tensor) -> candle_core::Result<Tensor> {
    layer.forward(&xs.to_dtype(layer.dtype())?)
}

/// `x / max(||x||, 1e-12)` over the last dimension, as `F.normalize`.
fn normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    xs.broadcast_div(&norm)
}

/// # Shapes
/// * `image`: `[b, Q, E]` normalised; `text`: `[n, E]` normalised -> `[b, n]`
pub fn itc_scores(image: &Tensor, text: &Tensor) -> candle_core::Result<Tensor> {
    let (b, q, e) = image.dims3()?;
    let sims = image
        .reshape((b * q, e))?
        .matmul(&text.to_dtype(image.dtype())?.t()?)?; // [b*Q, n]
    let n = sims.dim(1)?;
    sims.reshape((b, q, n))?.max(1) // [b, n]
}
