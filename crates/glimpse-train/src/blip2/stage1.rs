//! The BLIP-2 stage-1 model and its three losses (`blip2_qformer.py` of LAVIS, paper
//! <https://arxiv.org/abs/2301.12597> §3.1), on the inference modules of
//! `glimpse_models::blip2` built over trainable variables:
//!
//! * ITC: `Q` normalised query embeddings per image against the text's `[CLS]`
//!   embedding; the similarity is the best query; in-batch negatives, learned
//!   temperature clamped to [0.001, 0.5].
//! * ITM: `3B` pairs (positives, each text with an image drawn from its ITC
//!   similarities, each image with a drawn text; positives masked), queries and text in
//!   one bidirectional pass, `itm_head` on every query output, logits averaged over the
//!   queries.
//! * ITG: the caption with its first token replaced by `[DEC]`, after the queries, under
//!   the multimodal causal mask of [`itg_mask`]; `cls.predictions` (tied to the word
//!   embeddings) predicts the next token.
//!
//! The image encoder runs without gradient: its output is detached, so none of its
//! variables receives a gradient and AdamW never sees them.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use glimpse_models::blip2::{Blip2Config, Blip2ForImageTextRetrieval};
use glimpse_nn::attention::{min_value, AttnMask};
use glimpse_nn::bert::BertLMPredictionHead;
use glimpse_nn::layers::Module;

use crate::blip::{negative_weights, replace_first_column, BlipLossConfig, Negatives};
use crate::losses::{cross_entropy, l2_normalize, lm_loss, smoothed_cross_entropy};
use crate::params::{Recorder, SharedVars};
use crate::{Error, Result};

/// Prefix of the frozen image encoder's variables.
pub const FROZEN_PREFIX: &str = "vision_model.";

/// The keep pattern (1 = may attend) of ITG's multimodal causal mask over
/// `[queries; text]`: queries see every query and no text, text sees every query and
/// itself and earlier text. Row `i` is the attending position, column `j` the key.
pub fn itg_pattern(queries: usize, text: usize) -> Vec<Vec<u8>> {
    let n = queries + text;
    (0..n)
        .map(|i| {
            (0..n)
                .map(|j| u8::from(j < queries || (i >= queries && j <= i)))
                .collect()
        })
        .collect()
}

/// The additive ITG mask: [`itg_pattern`] combined with the text's padding (padded
/// text keys are hidden from everyone).
///
/// # Shapes
/// * `text_mask`: `[B, T]` 0/1 -> `[B, 1, Q + T, Q + T]`
pub fn itg_mask(queries: usize, text_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = text_mask.dims2()?;
    let n = queries + t;
    let pattern: Vec<f32> = itg_pattern(queries, t)
        .into_iter()
        .flatten()
        .map(f32::from)
        .collect();
    let pattern = Tensor::from_vec(pattern, (1, 1, n, n), text_mask.device())?;
    let ones = Tensor::ones((b, queries), DType::F32, text_mask.device())?;
    let keys = Tensor::cat(&[&ones, &text_mask.to_dtype(DType::F32)?], 1)?.reshape((b, 1, 1, n))?;
    let keep = pattern.broadcast_mul(&keys)?; // [B, 1, n, n]
    Ok((keep.affine(-1.0, 1.0)? * min_value(dtype))?.to_dtype(dtype)?)
}

/// The losses of one batch and what a test or log may want to see.
pub struct Stage1Losses {
    pub total: Tensor,
    pub itc: Tensor,
    pub itm: Tensor,
    pub itg: Tensor,
    /// `[B, B]` image-to-text similarities divided by the temperature.
    pub sim_i2t: Tensor,
    /// `[3B, 2]`
    pub itm_logits: Tensor,
    pub neg_image: Vec<usize>,
    pub neg_text: Vec<usize>,
}

/// The stage-1 model: `Blip2ForImageTextRetrieval` (frozen `vision_model`), the ITG head
/// `cls.predictions` and the temperature `temp`, all on one [`VarMap`] named as the
/// reference's checkpoint.
pub struct Blip2Stage1 {
    pub vars: SharedVars,
    pub model: Blip2ForImageTextRetrieval,
    pub lm_head: BertLMPredictionHead,
    pub temp: Var,
    pub cfg: Blip2Config,
    pub loss_cfg: BlipLossConfig,
    /// The decoder token that starts ITG's text (`[DEC]`).
    pub dec_token: u32,
}

fn identity(name: &str) -> String {
    name.to_string()
}

impl Blip2Stage1 {
    /// Fresh variables (initialise them with [`crate::params::init_weights`] or load
    /// them). The Q-Former must run without dropout: candle draws dropout masks from an
    /// unseeded generator, which would break the bitwise resume.
    pub fn new(
        cfg: &Blip2Config,
        loss_cfg: BlipLossConfig,
        dec_token: u32,
        device: &Device,
    ) -> Result<Self> {
        let q = &cfg.qformer_config;
        if q.hidden_dropout_prob > 0.0 || q.attention_probs_dropout_prob > 0.0 {
            return Err(Error::Train(format!(
                "qformer_config: hidden_dropout_prob = {} and attention_probs_dropout_prob = {} \
                 must be 0 for training here",
                q.hidden_dropout_prob, q.attention_probs_dropout_prob
            )));
        }
        if !q.use_qformer_text_input {
            return Err(Error::Train(
                "qformer_config.use_qformer_text_input must be true: ITC and ITG run text \
                 through the Q-Former"
                    .into(),
            ));
        }
        let vars = SharedVars::new(VarMap::new(), identity);
        let vb = vars.var_builder(device);
        let model = Blip2ForImageTextRetrieval::new(cfg, vb.clone())?;
        let tied = model.embeddings.word_embeddings.embeddings().clone();
        let lm_head =
            BertLMPredictionHead::new(&cfg.qformer().bert(), Some(tied), vb.pp("cls.predictions"))?;
        vb.get_with_hints((), "temp", candle_nn::Init::Const(loss_cfg.temp))?;
        let temp = vars.map.data().lock().unwrap()["temp"].clone();
        Ok(Self {
            vars,
            model,
            lm_head,
            temp,
            cfg: cfg.clone(),
            loss_cfg,
            dec_token,
        })
    }

    /// The frozen encoder's output, detached.
    ///
    /// # Shapes
    /// * `[B, 3, S, S]` -> `[B, 1 + patches, vision hidden]`
    pub fn image_states(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self
            .model
            .vision_model
            .forward(pixel_values, false)?
            .detach())
    }

    /// Query outputs `[B, Q, d]` of `image` `[B, m, dv]`.
    fn query_outputs(&self, image: &Tensor, train: bool) -> Result<Tensor> {
        let m = &self.model;
        Ok(m.qformer.query_outputs(&m.query_tokens, image, train)?)
    }

    /// ITC features: normalised query embeddings `[B, Q, E]` and text `[CLS]` embeddings
    /// `[N, E]`.
    pub fn itc_features(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let m = &self.model;
        let queries = self.query_outputs(image, train)?; // [B, Q, d]
        let image_feat = l2_normalize(&m.vision_projection.forward(&queries)?)?; // [B, Q, E]
        let embeds = m.embeddings.forward(input_ids, None)?; // [N, T, d]
        let text = m
            .qformer
            .forward(&embeds, 0, Some(attention_mask), None, train)?; // [N, T, d]
        let cls = text.narrow(1, 0, 1)?.squeeze(1)?; // [N, d]
        let text_feat = l2_normalize(&m.text_projection.forward(&cls)?)?; // [N, E]
        Ok((image_feat, text_feat))
    }

    /// ITM logits of pairs: queries and text in one bidirectional pass, the head on
    /// each query output, averaged over the queries.
    ///
    /// # Shapes
    /// * `image`: `[N, m, dv]`; `input_ids`, `attention_mask`: `[N, T]` -> `[N, 2]`
    pub fn itm_logits(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let m = &self.model;
        let (_, q, d) = m.query_tokens.dims3()?;
        let n = input_ids.dim(0)?;
        let queries = m.query_tokens.expand((n, q, d))?; // [N, Q, d]
        let embeds = m.embeddings.forward(input_ids, Some(&queries))?; // [N, Q + T, d]
        let ones = Tensor::ones((n, q), attention_mask.dtype(), attention_mask.device())?;
        let mask = Tensor::cat(&[&ones, attention_mask], 1)?; // [N, Q + T]
        let hidden = m
            .qformer
            .forward(&embeds, q, Some(&mask), Some(image), train)?; // [N, Q + T, d]
        let per_query = m.itm_head.forward(&hidden.narrow(1, 0, q)?)?; // [N, Q, 2]
        Ok(per_query.mean(1)?) // [N, 2]
    }

    /// ITG logits over the text positions and the ids they are scored against (the
    /// caption with `[DEC]` first).
    ///
    /// # Shapes
    /// * `image`: `[B, m, dv]`; `input_ids`, `attention_mask`: `[B, T]`
    /// * returns (`[B, T, vocab]`, `[B, T]` u32)
    pub fn itg_logits(
        &self,
        image: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let m = &self.model;
        let (_, q, d) = m.query_tokens.dims3()?;
        let (b, t) = input_ids.dims2()?;
        let dec_ids = replace_first_column(input_ids, self.dec_token)?; // [B, T]
        let queries = m.query_tokens.expand((b, q, d))?; // [B, Q, d]
        let embeds = m.embeddings.forward(&dec_ids, Some(&queries))?; // [B, Q + T, d]
        let mask = AttnMask::additive(itg_mask(q, attention_mask, m.qformer.dtype())?);
        let hidden = m
            .qformer
            .forward_masked(&embeds, q, &mask, Some(image), train)?; // [B, Q + T, d]
        let logits = self.lm_head.forward(&hidden.narrow(1, q, t)?, train)?; // [B, T, V]
        Ok((logits, dec_ids))
    }

    /// The training losses of one batch: ITC + ITM + ITG, weighted by the recipe.
    ///
    /// # Shapes
    /// * `pixel_values`: `[B, 3, S, S]`; `input_ids`, `attention_mask`: `[B, T]` u32
    pub fn losses(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        negatives: Negatives,
    ) -> Result<Stage1Losses> {
        let b = pixel_values.dim(0)?;
        let device = pixel_values.device();
        if b < 2 {
            return Err(Error::Train(
                "BLIP-2 stage 1 needs at least 2 images per batch (in-batch negatives)".into(),
            ));
        }
        let t = self.temp.as_tensor().detach().clamp(0.001, 0.5)?;
        self.temp.set(&t)?;
        let temp = self.temp.as_tensor();
        let image = self.image_states(pixel_values)?; // [B, m, dv]

        // ITC: the best query against the text [CLS].
        let (image_feat, text_feat) = self.itc_features(&image, input_ids, attention_mask, true)?;
        let (_, q, e) = image_feat.dims3()?;
        let sim_q2t = image_feat
            .reshape((b * q, e))?
            .matmul(&text_feat.t()?)?
            .reshape((b, q, b))?; // [B(image), Q, B(text)]
        let sim_i2t = sim_q2t.max(1)?.broadcast_div(temp)?; // [B, B]
        let sim_t2i = sim_q2t.max(1)?.t()?.broadcast_div(temp)?; // [B(text), B(image)]
        let targets = Tensor::arange(0u32, b as u32, device)?;
        let ones = Tensor::ones(b, DType::F32, device)?;
        let ls = self.loss_cfg.label_smoothing;
        let itc = ((smoothed_cross_entropy(&sim_i2t, &targets, &ones, ls)?
            + smoothed_cross_entropy(&sim_t2i, &targets, &ones, ls)?)?
            * 0.5)?;

        // ITM: positives, then each text with a drawn image, each image with a drawn text.
        let (neg_image, neg_text) = match negatives {
            Negatives::Given { image, text } => {
                if image.len() != b || text.len() != b {
                    return Err(Error::Train(format!(
                        "{} / {} negatives for a batch of {b}",
                        image.len(),
                        text.len()
                    )));
                }
                (image.to_vec(), text.to_vec())
            }
            Negatives::Sample(rng) => {
                let w_t2i = negative_weights(&sim_t2i)?;
                let w_i2t = negative_weights(&sim_i2t)?;
                let image: Vec<usize> = w_t2i.iter().map(|w| rng.weighted(w)).collect();
                let text: Vec<usize> = w_i2t.iter().map(|w| rng.weighted(w)).collect();
                (image, text)
            }
        };
        let idx = |v: &[usize]| -> Result<Tensor> {
            let v: Vec<u32> = v.iter().map(|&i| i as u32).collect();
            Ok(Tensor::new(v.as_slice(), device)?)
        };
        let (ni, nt) = (idx(&neg_image)?, idx(&neg_text)?);
        let ids_all = Tensor::cat(&[input_ids, input_ids, &input_ids.index_select(&nt, 0)?], 0)?; // [3B, T]
        let mask_all = Tensor::cat(
            &[
                attention_mask,
                attention_mask,
                &attention_mask.index_select(&nt, 0)?,
            ],
            0,
        )?; // [3B, T]
        let image_all = Tensor::cat(&[&image, &image.index_select(&ni, 0)?, &image], 0)?; // [3B, m, dv]
        let itm_logits = self.itm_logits(&image_all, &ids_all, &mask_all, true)?; // [3B, 2]
        let mut labels = vec![1u32; b];
        labels.extend(std::iter::repeat_n(0u32, 2 * b));
        let itm = cross_entropy(&itm_logits, &Tensor::new(labels.as_slice(), device)?)?;

        // ITG: the caption after [DEC], seeing the queries.
        let (logits, dec_ids) = self.itg_logits(&image, input_ids, attention_mask, true)?;
        let itg = lm_loss(&logits, &dec_ids, attention_mask, ls)?;

        let c = &self.loss_cfg;
        let total = (((&itc * c.itc_weight)? + (&itm * c.itm_weight)?)? + (&itg * c.lm_weight)?)?;
        Ok(Stage1Losses {
            total,
            itc,
            itm,
            itg,
            sim_i2t,
            itm_logits,
            neg_image,
            neg_text,
        })
    }

    /// Validation features of a batch without gradient: query embeddings `[B, Q, E]`,
    /// text embeddings `[B, E]` and the ITG loss (no smoothing).
    pub fn eval_batch(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<(Tensor, Tensor, f64)> {
        let image = self.image_states(pixel_values)?;
        let (img, txt) = self.itc_features(&image, input_ids, attention_mask, false)?;
        let (logits, dec_ids) = self.itg_logits(&image, input_ids, attention_mask, false)?;
        let itg = lm_loss(&logits, &dec_ids, attention_mask, 0.0)?;
        Ok((img.detach(), txt.detach(), crate::objective::scalar(&itg)?))
    }

    /// The exported `Blip2ForImageTextRetrieval`'s tensors, under the reference's names
    /// (the ITG head and `temp` are training-only).
    pub fn retrieval_tensors(&self) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let rec = Recorder::new(self.vars.clone());
        let vb: VarBuilder = rec.var_builder(&Device::Cpu);
        Blip2ForImageTextRetrieval::new(&self.cfg, vb)?;
        Ok(rec.take())
    }
}

/// Best-query similarities `[B(image), N(text)]` of normalised features.
pub fn best_query_sims(image_feat: &Tensor, text_feat: &Tensor) -> Result<Tensor> {
    Ok(glimpse_models::blip2::itc_scores(image_feat, text_feat)?)
}

/// Recall at 1 and 5 of a square similarity matrix whose diagonal holds the matches,
/// for each row.
pub fn recall_at(sim: &Tensor) -> Result<(f64, f64)> {
    let rows = sim.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    let n = rows.len().max(1) as f64;
    let (mut r1, mut r5) = (0.0, 0.0);
    for (i, r) in rows.iter().enumerate() {
        let better = r.iter().filter(|&&v| v > r[i]).count();
        r1 += f64::from(u8::from(better < 1));
        r5 += f64::from(u8::from(better < 5));
    }
    Ok((r1 / n, r5 / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itg_pattern_queries_see_queries_text_sees_queries_and_earlier_text() {
        // Q = 2, T = 3: rows are attending positions q0 q1 t0 t1 t2.
        let want: Vec<Vec<u8>> = vec![
            vec![1, 1, 0, 0, 0],
            vec![1, 1, 0, 0, 0],
            vec![1, 1, 1, 0, 0],
            vec![1, 1, 1, 1, 0],
            vec![1, 1, 1, 1, 1],
        ];
        assert_eq!(itg_pattern(2, 3), want);
    }

    #[test]
    fn itg_mask_hides_padded_text_keys() {
        let text_mask = Tensor::new(&[[1u32, 1, 0], [1, 1, 1]], &Device::Cpu).unwrap();
        let m = itg_mask(2, &text_mask, DType::F32).unwrap();
        assert_eq!(m.dims(), &[2, 1, 5, 5]);
        let rows = m.squeeze(1).unwrap().to_vec3::<f32>().unwrap();
        let keep = |v: f32| u8::from(v == 0.0);
        // Sample 0: its last text token is padding, hidden as a key from every row.
        let pattern = itg_pattern(2, 3);
        for (i, (row, want)) in rows[0].iter().zip(&pattern).enumerate() {
            let got: Vec<u8> = row.iter().map(|&v| keep(v)).collect();
            let mut want = want.clone();
            want[4] = 0;
            assert_eq!(got, want, "row {i}");
        }
        for (i, (row, want)) in rows[1].iter().zip(&pattern).enumerate() {
            let got: Vec<u8> = row.iter().map(|&v| keep(v)).collect();
            assert_eq!(&got, want, "row {i}");
        }
        assert!(
            rows[0][0][2] <= -1e30,
            "blocked keys carry the dtype's minimum"
        );
    }

    #[test]
    fn recall_counts_strictly_better_rows() {
        let sim = Tensor::new(
            &[[0.9f32, 0.1, 0.2], [0.5, 0.4, 0.1], [0.0, 0.1, 0.3]],
            &Device::Cpu,
        )
        .unwrap();
        let (r1, r5) = recall_at(&sim).unwrap();
        assert!((r1 - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r5, 1.0);
    }
}
