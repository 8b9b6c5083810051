//! BLIP pretraining (<https://arxiv.org/abs/2201.12086>, `blip_pretrain.py` of the
//! original code) on the reference's modules:
//!
//! * ITC: image and text CLS features projected and normalised, compared with the
//!   features of a momentum encoder and a feature queue; the targets are distilled:
//!   `alpha * softmax(momentum similarities) + (1 - alpha) * one-hot`.
//! * ITM: the image-grounded text encoder classifies matched pairs against hard
//!   negatives drawn in the batch with probability `softmax(ITC similarity)`.
//! * LM: the image-grounded decoder predicts the caption with label smoothing.
//!
//! The text decoder shares every weight with the text encoder except self-attention:
//! the decoder is built through [`SharedVars`] with [`decoder_rename`], so its
//! embeddings, cross-attention and feed-forward *are* the encoder's variables.
//! Parameter names are those of the reference's `BlipForImageTextRetrieval`
//! (`vision_model.*`, `text_encoder.*`, `vision_proj`, `text_proj`, `itm_head`) plus
//! `text_decoder.bert.encoder.layer.N.attention.*`, `text_decoder.cls.predictions.*`
//! and `temp`. As in the reference's retrieval model, ITM reads the ids unchanged
//! (`[CLS]` first; the original code's `[ENC]` swap is not applied), so exported
//! models score exactly as they were trained.
//!
//! [`BlipObjective`] trains [`BlipPretrain`] in the loop of [`crate::trainer`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{VarBuilder, VarMap};
use glimpse_data::dataset::Example;
use glimpse_models::blip::{BlipConfig, BlipForConditionalGeneration, BlipForImageTextRetrieval};
use glimpse_nn::bert::{BertLMHeadModel, EncoderStates, SelfMask};
use glimpse_nn::layers::Module;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attributes::Tower;
use crate::losses::{cross_entropy, l2_normalize, lm_loss, soft_cross_entropy};
use crate::objective::{retrieval_report, scalar, Losses, Objective, Split, Step};
use crate::params::{init_weights, sorted_vars, Recorder, SharedVars};
use crate::recipe::Recipe;
use crate::samples::{CaptionBatch, CaptionSample, Inputs};
use crate::trainer::load_tensors;
use crate::{Error, Result};
use glimpse_data::rng::SplitMix64 as Rng;

/// Loss settings of a recipe's `[loss]` section: BLIP pretraining hyper-parameters
/// (the original code's defaults), and the CLIP hard-negative switch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlipLossConfig {
    pub momentum: f64,
    /// Final weight of the momentum-distilled targets.
    pub alpha: f64,
    /// Updates over which alpha rises linearly from 0 (0: constant alpha).
    pub alpha_warmup_steps: u64,
    /// Feature-queue length; a multiple of the batch size.
    pub queue_size: usize,
    pub label_smoothing: f64,
    pub temp: f64,
    /// Whether `temp` is trained. BLIP trains it with a learning rate of 3e-4 or less;
    /// at the higher rates small models want, the raw temperature races to its floor
    /// within a hundred updates and ITC stops learning, so it can be held fixed.
    pub learn_temp: bool,
    /// Weights of the three losses in the total.
    pub itc_weight: f64,
    pub itm_weight: f64,
    pub lm_weight: f64,
    /// Hard negative captions (NegCLIP): per image one caption with its shape word
    /// swapped and one with any attribute word swapped (see [`crate::negatives`]). CLIP
    /// adds both to the image→text softmax. BLIP adds both to ITC's image→text softmax
    /// (target 0) and scores the shape-swapped one as one more ITM negative per image.
    pub hard_negative_captions: bool,
}

impl Default for BlipLossConfig {
    fn default() -> Self {
        Self {
            momentum: 0.995,
            alpha: 0.4,
            alpha_warmup_steps: 0,
            queue_size: 57600,
            label_smoothing: 0.1,
            temp: 0.07,
            learn_temp: true,
            itc_weight: 1.0,
            itm_weight: 1.0,
            lm_weight: 1.0,
            hard_negative_captions: false,
        }
    }
}

/// Which in-batch negatives ITM uses.
pub enum Negatives<'a> {
    /// Drawn from the ITC similarities (training).
    Sample(&'a mut Rng),
    /// Given: for each text the index of its negative image, for each image the index
    /// of its negative text (replaying a reference run).
    Given {
        image: &'a [usize],
        text: &'a [usize],
    },
}

/// Rewritten captions that must not match their image (NegCLIP-style): `k` rounds of
/// one caption per image, round-major (row `r * B + i` belongs to image `i`). Round 0
/// is the shape-swapped caption, which ITM also scores.
pub struct CaptionNegatives<'a> {
    /// `[k B, T]` u32
    pub ids: &'a Tensor,
    /// `[k B, T]` u32
    pub mask: &'a Tensor,
    /// Whether row `j` holds a real rewrite (a caption without a swappable word has
    /// none), length `k B`.
    pub valid: &'a [f32],
}

/// The LM's texts when they differ from ITC/ITM's: each caption after a prompt.
pub struct LmTexts {
    /// `[B, T]` u32, `[CLS] prompt caption [SEP]` (the first becomes `[DEC]`)
    pub ids: Tensor,
    /// `[B, T]` u32 attention mask
    pub mask: Tensor,
    /// `[B, T]` u32: the mask with the prompt's positions zeroed (not predicted)
    pub targets: Tensor,
}

/// The losses of one forward pass, and what a test or log may want to see.
pub struct BlipLosses {
    pub total: Tensor,
    pub itc: Tensor,
    pub itm: Tensor,
    pub lm: Tensor,
    /// `[B, B + Q]` image-to-text similarities divided by temp.
    pub sim_i2t: Tensor,
    /// `[3B + N, 2]` (N: valid shape-swapped caption negatives, if any)
    pub itm_logits: Tensor,
    pub neg_image: Vec<usize>,
    pub neg_text: Vec<usize>,
}

/// Decoder names -> the shared variable's name. Everything under
/// `text_decoder.bert.` except self-attention (`...layer.N.attention.*`) lives under
/// `text_encoder.`.
pub fn decoder_rename(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("text_decoder.bert.") {
        let own = rest
            .strip_prefix("encoder.layer.")
            .and_then(|r| r.split_once('.'))
            .is_some_and(|(_, tail)| tail.starts_with("attention."));
        if !own {
            return format!("text_encoder.{rest}");
        }
    }
    name.to_string()
}

const MOMENTUM_PREFIXES: [&str; 5] = [
    "vision_model.",
    "text_encoder.",
    "vision_proj.",
    "text_proj.",
    "itm_head.",
];

/// The pretraining model with its momentum copy and queues.
pub struct BlipPretrain {
    pub vars: SharedVars,
    pub model: BlipForImageTextRetrieval,
    pub decoder: BertLMHeadModel,
    pub temp: candle_core::Var,
    momentum: HashMap<String, Tensor>,
    pub image_queue: Tensor,
    pub text_queue: Tensor,
    pub queue_ptr: usize,
    pub cfg: BlipConfig,
    pub loss_cfg: BlipLossConfig,
    device: Device,
}

impl BlipPretrain {
    /// Builds the model with fresh variables (initialise them with
    /// [`crate::params::init_weights`] or load them), the momentum copy equal to them
    /// and normalised random queues drawn from `seed`.
    pub fn new(
        cfg: &BlipConfig,
        loss_cfg: BlipLossConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let vars = SharedVars::new(VarMap::new(), decoder_rename);
        let vb = vars.var_builder(device);
        let model = BlipForImageTextRetrieval::new(cfg, vb.clone())?;
        let decoder = BertLMHeadModel::new(&cfg.text(), vb.pp("text_decoder"))?;
        vb.get_with_hints((), "temp", candle_nn::Init::Const(loss_cfg.temp))?;
        let temp = vars.map.data().lock().unwrap()["temp"].clone();
        let e = cfg.image_text_hidden_size;
        let q = loss_cfg.queue_size;
        let mut rng = Rng::derive(seed, 0, 0x71);
        let mut queue = || -> Result<Tensor> {
            let data: Vec<f32> = (0..e * q).map(|_| rng.normal() as f32).collect();
            let t = Tensor::from_vec(data, (e, q), device)?;
            // columns are features: normalise over dim 0
            Ok(l2_normalize(&t.t()?)?.t()?.contiguous()?)
        };
        let image_queue = queue()?;
        let text_queue = queue()?;
        let mut me = Self {
            vars,
            model,
            decoder,
            temp,
            momentum: HashMap::new(),
            image_queue,
            text_queue,
            queue_ptr: 0,
            cfg: cfg.clone(),
            loss_cfg,
            device: device.clone(),
        };
        me.reset_momentum();
        Ok(me)
    }

    /// Sets the momentum copy equal to the current weights.
    pub fn reset_momentum(&mut self) {
        let data = self.vars.map.data().lock().unwrap();
        self.momentum = data
            .iter()
            .filter(|(k, _)| MOMENTUM_PREFIXES.iter().any(|p| k.starts_with(p)))
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
    }

    /// Momentum weights and queues, for checkpoints (`momentum.*`, `image_queue`,
    /// `text_queue`, `queue_ptr`).
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = self
            .momentum
            .iter()
            .map(|(k, v)| (format!("momentum.{k}"), v.clone()))
            .collect();
        out.insert("image_queue".into(), self.image_queue.clone());
        out.insert("text_queue".into(), self.text_queue.clone());
        out.insert(
            "queue_ptr".into(),
            Tensor::new(&[self.queue_ptr as i64], &Device::Cpu)?,
        );
        Ok(out)
    }

    /// Restores what [`Self::state_tensors`] wrote; names and shapes must match.
    pub fn load_state_tensors(&mut self, t: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        let missing = |k: &str| Error::Train(format!("{origin}: no {k}"));
        for (k, v) in self.momentum.iter_mut() {
            let key = format!("momentum.{k}");
            let s = t.get(&key).ok_or_else(|| missing(&key))?;
            if s.shape() != v.shape() {
                return Err(Error::Train(format!("{origin}: {key} has the wrong shape")));
            }
            *v = s.to_device(&self.device)?;
        }
        for (k, q) in [
            ("image_queue", &mut self.image_queue),
            ("text_queue", &mut self.text_queue),
        ] {
            let s = t.get(k).ok_or_else(|| missing(k))?;
            if s.shape() != q.shape() {
                return Err(Error::Train(format!(
                    "{origin}: {k} is {:?}, the recipe's queue is {:?}",
                    s.shape(),
                    q.shape()
                )));
            }
            *q = s.to_device(&self.device)?;
        }
        let p = t.get("queue_ptr").ok_or_else(|| missing("queue_ptr"))?;
        self.queue_ptr = p.to_vec1::<i64>()?[0] as usize;
        Ok(())
    }

    fn momentum_update(&mut self) -> Result<()> {
        let m = self.loss_cfg.momentum;
        let data = self.vars.map.data().lock().unwrap();
        for (k, v) in self.momentum.iter_mut() {
            let p = data[k].as_tensor().detach();
            *v = ((&*v * m)? + (p * (1.0 - m))?)?;
        }
        Ok(())
    }

    fn momentum_model(&self) -> Result<BlipForImageTextRetrieval> {
        let vb = VarBuilder::from_tensors(self.momentum.clone(), DType::F32, &self.device);
        // Built every step and used once: laying its weights out would cost more than
        // the products save.
        Ok(glimpse_nn::kernels::unpacked(|| {
            BlipForImageTextRetrieval::new(&self.cfg, vb)
        })?)
    }

    /// The weight of the distilled targets at update `step`.
    pub fn alpha_at(&self, step: u64) -> f64 {
        let c = &self.loss_cfg;
        if c.alpha_warmup_steps == 0 {
            c.alpha
        } else {
            c.alpha * (step as f64 / c.alpha_warmup_steps as f64).min(1.0)
        }
    }

    /// One training forward: ITC + ITM + LM. Advances the momentum encoder and the
    /// queues, as the original code does inside `forward`.
    ///
    /// # Shapes
    /// * `pixel_values`: `[B, 3, S, S]`; `input_ids`, `attention_mask`: `[B, T]` u32
    pub fn losses(
        &mut self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        alpha: f64,
        negatives: Negatives,
    ) -> Result<BlipLosses> {
        self.losses_with_captions(
            pixel_values,
            input_ids,
            attention_mask,
            alpha,
            negatives,
            None,
        )
    }

    /// [`Self::losses`] with hard negative captions added to ITC and ITM.
    pub fn losses_with_captions(
        &mut self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        alpha: f64,
        negatives: Negatives,
        captions: Option<CaptionNegatives>,
    ) -> Result<BlipLosses> {
        self.losses_with_texts(
            pixel_values,
            input_ids,
            attention_mask,
            alpha,
            negatives,
            captions,
            None,
        )
    }

    /// [`Self::losses_with_captions`] with the LM reading `lm` (the captions after a
    /// prompt) instead of the ITC/ITM texts. A loss whose weight is 0 is not computed
    /// (reported as 0): with `itc_weight` and `itm_weight` both 0 (a captioner's
    /// fine-tuning) neither the momentum encoder nor the queues move, and `sim_i2t`
    /// and `itm_logits` are empty.
    #[allow(clippy::too_many_arguments)]
    pub fn losses_with_texts(
        &mut self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        alpha: f64,
        negatives: Negatives,
        captions: Option<CaptionNegatives>,
        lm: Option<&LmTexts>,
    ) -> Result<BlipLosses> {
        let c = self.loss_cfg;
        if c.itc_weight == 0.0 && c.itm_weight == 0.0 {
            let b = pixel_values.dim(0)?;
            let image_embeds = self.model.vision_model.forward(pixel_values, true)?;
            let lm = self.lm_loss(&image_embeds, input_ids, attention_mask, lm)?;
            let zero = Tensor::zeros((), DType::F32, &self.device)?;
            return Ok(BlipLosses {
                total: (&lm * c.lm_weight)?,
                itc: zero.clone(),
                itm: zero,
                lm,
                sim_i2t: Tensor::zeros((b, 0), DType::F32, &self.device)?,
                itm_logits: Tensor::zeros((0, 2), DType::F32, &self.device)?,
                neg_image: Vec::new(),
                neg_text: Vec::new(),
            });
        }
        let b = pixel_values.dim(0)?;
        let q = self.loss_cfg.queue_size;
        if !q.is_multiple_of(b) {
            return Err(Error::Train(format!(
                "queue_size {q} is not a multiple of the batch size {b}"
            )));
        }
        // temp.clamp_(0.001, 0.5)
        let t = self.temp.as_tensor().detach().clamp(0.001, 0.5)?;
        self.temp.set(&t)?;
        let temp = self.temp.as_tensor().clone();
        let temp_m = temp.detach();
        let m = self.model.clone();

        let image_embeds = m.vision_model.forward(pixel_values, true)?; // [B, n, dv]
        let image_cls = image_embeds.narrow(1, 0, 1)?.squeeze(1)?; // [B, dv]
        let image_feat = l2_normalize(&m.vision_proj.forward(&image_cls)?)?; // [B, E]
        let text_feat = l2_normalize(&text_projection(&m, input_ids, attention_mask, true)?)?; // [B, E]

        // Momentum features and distilled targets (no gradient).
        self.momentum_update()?;
        let mm = self.momentum_model()?;
        let img_m = mm.vision_model.forward(pixel_values, false)?; // [B, n, dv]
        let image_feat_m = l2_normalize(
            &mm.vision_proj
                .forward(&img_m.narrow(1, 0, 1)?.squeeze(1)?)?,
        )?; // [B, E]
        let text_feat_m = l2_normalize(&text_projection(&mm, input_ids, attention_mask, false)?)?; // [B, E]
        let image_feat_all = Tensor::cat(&[&image_feat_m.t()?, &self.image_queue], 1)?; // [E, B+Q]
        let text_feat_all = Tensor::cat(&[&text_feat_m.t()?, &self.text_queue], 1)?; // [E, B+Q]
        let eye = eye_padded(b, b + q, &self.device)?; // [B, B+Q]
        let targets = |sim_m: Tensor| -> Result<Tensor> {
            let soft = candle_nn::ops::softmax(&sim_m, D::Minus1)?;
            Ok(((soft * alpha)? + (&eye * (1.0 - alpha))?)?)
        };
        let sim_i2t_m = image_feat_m
            .matmul(&text_feat_all)?
            .broadcast_div(&temp_m)?;
        let sim_t2i_m = text_feat_m
            .matmul(&image_feat_all)?
            .broadcast_div(&temp_m)?;
        let t_i2t = targets(sim_i2t_m)?.detach();
        let t_t2i = targets(sim_t2i_m)?.detach();

        let sim_i2t = image_feat.matmul(&text_feat_all)?.broadcast_div(&temp)?; // [B, B+Q]
        let sim_t2i = text_feat.matmul(&image_feat_all)?.broadcast_div(&temp)?; // [B, B+Q]
        let itc_i2t = match &captions {
            None => soft_cross_entropy(&sim_i2t, &t_i2t)?,
            Some(c) => {
                let kb = c.valid.len();
                if kb == 0 || kb % b != 0 || c.ids.dim(0)? != kb {
                    return Err(Error::Train(format!(
                        "{kb} caption negatives for a batch of {b}"
                    )));
                }
                let neg_feat = l2_normalize(&text_projection(&m, c.ids, c.mask, true)?)?; // [kB, E]
                                                                                          // A missing rewrite gets -1e4: no weight after the softmax.
                let penalty = Tensor::from_vec(
                    c.valid
                        .iter()
                        .map(|v| (v - 1.0) * 1e4)
                        .collect::<Vec<f32>>(),
                    (1, kb),
                    &self.device,
                )?;
                let sim_neg = image_feat
                    .matmul(&neg_feat.t()?)?
                    .broadcast_div(&temp)?
                    .broadcast_add(&penalty)?; // [B, kB]
                let zeros = Tensor::zeros((b, kb), DType::F32, &self.device)?;
                soft_cross_entropy(
                    &Tensor::cat(&[&sim_i2t, &sim_neg], 1)?,
                    &Tensor::cat(&[&t_i2t, &zeros], 1)?,
                )?
            }
        };
        let itc = ((itc_i2t + soft_cross_entropy(&sim_t2i, &t_t2i)?)? * 0.5)?;

        // Enqueue the momentum features.
        let ptr = self.queue_ptr;
        self.image_queue = self
            .image_queue
            .slice_assign(&[0..image_feat_m.dim(1)?, ptr..ptr + b], &image_feat_m.t()?)?;
        self.text_queue = self
            .text_queue
            .slice_assign(&[0..text_feat_m.dim(1)?, ptr..ptr + b], &text_feat_m.t()?)?;
        self.queue_ptr = (ptr + b) % q;

        // ITM with hard negatives.
        let encoder = EncoderStates {
            hidden_states: &image_embeds,
            attention_mask: None,
        };
        let pos = m.text_encoder.forward(
            input_ids,
            Some(attention_mask),
            Some(encoder),
            SelfMask::Bidirectional,
            true,
        )?; // [B, T, dt]
        let pos = pos.narrow(1, 0, 1)?.squeeze(1)?; // [B, dt]
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
                let w_t2i = negative_weights(&sim_t2i.narrow(1, 0, b)?)?;
                let w_i2t = negative_weights(&sim_i2t.narrow(1, 0, b)?)?;
                let image: Vec<usize> = w_t2i.iter().map(|w| rng.weighted(w)).collect();
                let text: Vec<usize> = w_i2t.iter().map(|w| rng.weighted(w)).collect();
                (image, text)
            }
        };
        let idx = |v: &[usize]| -> Result<Tensor> {
            let v: Vec<u32> = v.iter().map(|&i| i as u32).collect();
            Ok(Tensor::new(v.as_slice(), &self.device)?)
        };
        let (ni, nt) = (idx(&neg_image)?, idx(&neg_text)?);
        let ids_all = Tensor::cat(&[input_ids, &input_ids.index_select(&nt, 0)?], 0)?; // [2B, T]
        let mask_all = Tensor::cat(&[attention_mask, &attention_mask.index_select(&nt, 0)?], 0)?; // [2B, T]
        let img_all = Tensor::cat(&[&image_embeds.index_select(&ni, 0)?, &image_embeds], 0)?; // [2B, n, dv]
        let neg = m.text_encoder.forward(
            &ids_all,
            Some(&mask_all),
            Some(EncoderStates {
                hidden_states: &img_all,
                attention_mask: None,
            }),
            SelfMask::Bidirectional,
            true,
        )?;
        let neg = neg.narrow(1, 0, 1)?.squeeze(1)?; // [2B, dt]
        let mut itm_rows = vec![pos, neg];
        let mut n_neg = 2 * b;
        if let Some(c) = &captions {
            // Each image with its shape-swapped caption (round 0), where one exists.
            let keep: Vec<u32> = (0..b as u32)
                .filter(|&i| c.valid[i as usize] > 0.5)
                .collect();
            if !keep.is_empty() {
                let keep_t = Tensor::new(keep.as_slice(), &self.device)?;
                let swapped = m.text_encoder.forward(
                    &c.ids.index_select(&keep_t, 0)?,
                    Some(&c.mask.index_select(&keep_t, 0)?),
                    Some(EncoderStates {
                        hidden_states: &image_embeds.index_select(&keep_t, 0)?,
                        attention_mask: None,
                    }),
                    SelfMask::Bidirectional,
                    true,
                )?;
                itm_rows.push(swapped.narrow(1, 0, 1)?.squeeze(1)?);
                n_neg += keep.len();
            }
        }
        let itm_logits = m.itm_head.forward(&Tensor::cat(&itm_rows, 0)?)?; // [B + n_neg, 2]
        let mut labels = vec![1u32; b];
        labels.extend(std::iter::repeat_n(0u32, n_neg));
        let labels = Tensor::new(labels.as_slice(), &self.device)?;
        let itm = cross_entropy(&itm_logits, &labels)?;

        let lm = if c.lm_weight == 0.0 {
            Tensor::zeros((), DType::F32, &self.device)?
        } else {
            self.lm_loss(&image_embeds, input_ids, attention_mask, lm)?
        };

        let total = (((&itc * c.itc_weight)? + (&itm * c.itm_weight)?)? + (&lm * c.lm_weight)?)?;
        Ok(BlipLosses {
            total,
            itc,
            itm,
            lm,
            sim_i2t,
            itm_logits,
            neg_image,
            neg_text,
        })
    }

    /// LM: the caption after `[DEC]` (after `[DEC]` and the prompt with `lm`), label
    /// smoothing; the prompt's tokens are not predicted, as in BLIP's fine-tuning.
    fn lm_loss(
        &self,
        image_embeds: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        lm: Option<&LmTexts>,
    ) -> Result<Tensor> {
        let (ids, mask, targets) = match lm {
            Some(t) => (&t.ids, &t.mask, &t.targets),
            None => (input_ids, attention_mask, attention_mask),
        };
        let encoder = EncoderStates {
            hidden_states: image_embeds,
            attention_mask: None,
        };
        let bos = self.cfg.text_config.bos_token_id;
        let dec_ids = replace_first_column(ids, bos)?;
        let logits = self
            .decoder
            .forward(&dec_ids, Some(mask), Some(encoder), true)?; // [B, T, V]
        lm_loss(&logits, &dec_ids, targets, self.loss_cfg.label_smoothing)
    }

    /// Validation: normalised-to-be ITC features and the LM loss of a batch, computed
    /// with the online model without touching the momentum encoder or the queues.
    ///
    /// # Shapes
    /// * returns (`[B, E]` image features, `[B, E]` text features, scalar LM loss)
    pub fn eval_batch(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let m = &self.model;
        let image_embeds = m.vision_model.forward(pixel_values, false)?.detach();
        let image_cls = image_embeds.narrow(1, 0, 1)?.squeeze(1)?;
        let image_feat = m.vision_proj.forward(&image_cls)?.detach();
        let text_feat = text_projection(m, input_ids, attention_mask, false)?.detach();
        let dec_ids = replace_first_column(input_ids, self.cfg.text_config.bos_token_id)?;
        let encoder = EncoderStates {
            hidden_states: &image_embeds,
            attention_mask: None,
        };
        let logits = self
            .decoder
            .forward(&dec_ids, Some(attention_mask), Some(encoder), false)?;
        let lm = lm_loss(&logits, &dec_ids, attention_mask, 0.0)?.detach();
        Ok((image_feat, text_feat, lm))
    }

    /// The exported captioning model's tensors (reference names).
    pub fn caption_tensors(&self) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let rec = Recorder::new(self.vars.clone());
        BlipForConditionalGeneration::new(&self.cfg, rec.var_builder(&Device::Cpu))?;
        Ok(rec.take())
    }

    /// The exported retrieval model's tensors (reference names).
    pub fn retrieval_tensors(&self) -> Result<std::collections::BTreeMap<String, Tensor>> {
        let rec = Recorder::new(self.vars.clone());
        BlipForImageTextRetrieval::new(&self.cfg, rec.var_builder(&Device::Cpu))?;
        Ok(rec.take())
    }

    /// Inference views on the current weights (validation during training).
    pub fn caption_model(&self) -> Result<BlipForConditionalGeneration> {
        let vb = self.vars.var_builder(&self.device);
        Ok(BlipForConditionalGeneration::new(&self.cfg, vb)?)
    }
}

/// BLIP pretraining as a training [`Objective`]: ITC + ITM + LM, with the momentum
/// encoder and the feature queues checkpointed in `state.safetensors`.
pub struct BlipObjective {
    pub pretrain: BlipPretrain,
    inputs: Inputs,
}

impl BlipObjective {
    /// The model of the run's `config.json`, initialised from the recipe's seed, with
    /// the temperature at `loss.temp`.
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let cfg: BlipConfig = serde_json::from_value(inputs.files.config.clone())
            .map_err(|e| Error::Train(format!("model/config.json: {e}")))?;
        let device = &inputs.device;
        let pretrain = BlipPretrain::new(&cfg, recipe.loss, recipe.model.seed, device)?;
        let m = &recipe.model;
        init_weights(
            &pretrain.vars.map,
            m.seed,
            m.init_std,
            m.position_init_scale as f32,
        )?;
        pretrain
            .temp
            .set(&Tensor::new(recipe.loss.temp as f32, device)?)?;
        Ok(Self { pretrain, inputs })
    }
}

impl Objective for BlipObjective {
    type Sample = CaptionSample;
    type Batch = CaptionBatch;

    fn sample(&self, example: Example, split: Split) -> std::result::Result<CaptionSample, String> {
        self.inputs.caption(example, split)
    }

    fn batch(&self, samples: &[CaptionSample], split: Split) -> Result<CaptionBatch> {
        let hard = self.pretrain.loss_cfg.hard_negative_captions;
        self.inputs.caption_batch(samples, split, hard)
    }

    fn losses(&mut self, b: &CaptionBatch, at: Step) -> Result<Losses> {
        let m = &mut self.pretrain;
        let mut rng = Rng::derive(self.inputs.seed, at.step, 0x17e + at.micro);
        let alpha = m.alpha_at(at.step);
        let valid: Vec<f32> = match &b.negatives {
            Some(n) => n.valid.to_vec1()?,
            None => Vec::new(),
        };
        let captions = b.negatives.as_ref().map(|n| CaptionNegatives {
            ids: &n.ids,
            mask: &n.mask,
            valid: &valid,
        });
        let l = m.losses_with_texts(
            &b.pixel_values,
            &b.input_ids,
            &b.attention_mask,
            alpha,
            Negatives::Sample(&mut rng),
            captions,
            b.lm.as_ref(),
        )?;
        let parts = vec![
            ("itc".to_string(), scalar(&l.itc)?),
            ("itm".to_string(), scalar(&l.itm)?),
            ("lm".to_string(), scalar(&l.lm)?),
        ];
        Ok(Losses {
            total: l.total,
            parts,
        })
    }

    fn validate(&self, batches: &[CaptionBatch]) -> Result<Value> {
        retrieval_report(batches, "lm_loss", |b| {
            self.pretrain
                .eval_batch(&b.pixel_values, &b.input_ids, &b.attention_mask)
        })
    }

    fn vars(&self) -> &VarMap {
        &self.pretrain.vars.map
    }

    /// Every variable, but `temp` when the recipe holds it fixed and those only a loss
    /// of weight 0 reads: the decoder's own self-attention and head without LM, the
    /// encoder's own self-attention, the projections, the ITM head and `temp` without
    /// ITC and ITM.
    fn trainable(&self) -> Vec<(String, Var)> {
        let c = &self.pretrain.loss_cfg;
        let frozen_temp = !c.learn_temp;
        let no_lm = c.lm_weight == 0.0;
        let lm_only = c.itc_weight == 0.0 && c.itm_weight == 0.0;
        sorted_vars(self.vars())
            .into_iter()
            .filter(|(n, _)| !(frozen_temp && n == "temp"))
            .filter(|(n, _)| !(no_lm && n.starts_with("text_decoder.")))
            .filter(|(n, _)| !lm_only || read_by_lm(n))
            .collect()
    }

    fn vision_tower(&self) -> Option<Tower> {
        Some(Tower::Blip)
    }

    /// An exported `BlipForImageTextRetrieval` or `BlipForConditionalGeneration`: its
    /// tensors by their training names (the decoder's shared ones are the encoder's).
    fn init_from_export(&mut self, weights: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        let renamed: HashMap<String, Tensor> = weights
            .iter()
            .map(|(k, v)| (decoder_rename(k), v.clone()))
            .collect();
        crate::params::load_some(self.vars(), &renamed, origin)?;
        Ok(())
    }

    /// The momentum encoder starts equal to the starting weights.
    fn weights_ready(&mut self) -> Result<()> {
        self.pretrain.reset_momentum();
        Ok(())
    }

    fn save_state(&self, dir: &Path) -> Result<()> {
        let p = dir.join("state.safetensors");
        candle_core::safetensors::save(&self.pretrain.state_tensors()?, &p)
            .map_err(|e| Error::io_ctx(&p, e))
    }

    fn load_state(&mut self, dir: &Path) -> Result<()> {
        let state = load_tensors(&dir.join("state.safetensors"), &self.inputs.device)?;
        self.pretrain
            .load_state_tensors(&state, &dir.display().to_string())
    }
}

/// The unimodal text encoder's [CLS] state through `text_proj`: ITC's text feature before
/// normalisation, `[N, E]` for ids and mask `[N, T]`.
fn text_projection(
    m: &BlipForImageTextRetrieval,
    ids: &Tensor,
    mask: &Tensor,
    train: bool,
) -> Result<Tensor> {
    let h = m
        .text_encoder
        .forward(ids, Some(mask), None, SelfMask::Bidirectional, train)?; // [N, T, dt]
    Ok(m.text_proj.forward(&h.narrow(1, 0, 1)?.squeeze(1)?)?)
}

/// Whether the LM reads variable `name`: the vision tower, the decoder's own
/// variables and the encoder's that the decoder shares (all but self-attention).
fn read_by_lm(name: &str) -> bool {
    if name.starts_with("vision_model.") || name.starts_with("text_decoder.") {
        return true;
    }
    let Some(rest) = name.strip_prefix("text_encoder.") else {
        return false;
    };
    decoder_rename(&format!("text_decoder.bert.{rest}")) == name
}

/// `softmax(sim) + 1e-4` with the diagonal zeroed, row by row (BLIP's weights for
/// drawing hard negatives).
pub(crate) fn negative_weights(sim: &Tensor) -> Result<Vec<Vec<f32>>> {
    let w = candle_nn::ops::softmax(&sim.detach(), D::Minus1)?;
    let mut rows = (w + 1e-4)?.to_vec2::<f32>()?;
    for (i, r) in rows.iter_mut().enumerate() {
        r[i] = 0.0;
    }
    Ok(rows)
}

/// `[rows, cols]` with ones on the leading diagonal.
fn eye_padded(rows: usize, cols: usize, device: &Device) -> Result<Tensor> {
    let mut v = vec![0f32; rows * cols];
    for i in 0..rows {
        v[i * cols + i] = 1.0;
    }
    Ok(Tensor::from_vec(v, (rows, cols), device)?)
}

/// `ids` with every row's first token replaced by `token`.
pub fn replace_first_column(ids: &Tensor, token: u32) -> Result<Tensor> {
    let (b, t) = ids.dims2()?;
    let first = Tensor::full(token, (b, 1), ids.device())?.to_dtype(ids.dtype())?;
    if t == 1 {
        return Ok(first);
    }
    Ok(Tensor::cat(&[&first, &ids.narrow(1, 1, t - 1)?], 1)?)
}

#[cfg(test)]
mod tests {
    use super::decoder_rename;

    #[test]
    fn the_lm_reads_the_tower_the_decoder_and_the_shared_encoder_variables() {
        use super::read_by_lm;
        for (name, read) in [
            ("vision_model.embeddings.patch_embedding.weight", true),
            ("text_decoder.cls.predictions.bias", true),
            ("text_encoder.embeddings.word_embeddings.weight", true),
            (
                "text_encoder.encoder.layer.1.crossattention.self.query.weight",
                true,
            ),
            (
                "text_encoder.encoder.layer.0.attention.self.query.weight",
                false,
            ),
            ("vision_proj.weight", false),
            ("itm_head.weight", false),
            ("temp", false),
        ] {
            assert_eq!(read_by_lm(name), read, "{name}");
        }
    }

    #[test]
    fn decoder_shares_everything_but_self_attention() {
        assert_eq!(
            decoder_rename("text_decoder.bert.embeddings.word_embeddings.weight"),
            "text_encoder.embeddings.word_embeddings.weight"
        );
        assert_eq!(
            decoder_rename("text_decoder.bert.encoder.layer.1.crossattention.self.query.weight"),
            "text_encoder.encoder.layer.1.crossattention.self.query.weight"
        );
        assert_eq!(
            decoder_rename("text_decoder.bert.encoder.layer.1.output.dense.bias"),
            "text_encoder.encoder.layer.1.output.dense.bias"
        );
        assert_eq!(
            decoder_rename("text_decoder.bert.encoder.layer.0.attention.output.dense.bias"),
            "text_decoder.bert.encoder.layer.0.attention.output.dense.bias"
        );
        assert_eq!(
            decoder_rename("text_decoder.cls.predictions.bias"),
            "text_decoder.cls.predictions.bias"
        );
    }
}
