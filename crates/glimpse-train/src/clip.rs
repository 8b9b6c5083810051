//! CLIP contrastive training: the reference's `CLIPModel` on trainable variables whose
//! names are the checkpoint names, the symmetric loss with the learned temperature;
//! and [`ClipObjective`], which trains it in the loop (with NegCLIP's hard negative
//! captions where the recipe asks for them).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use glimpse_data::dataset::Example;
use glimpse_models::clip::{ClipConfig, ClipModel};
use serde_json::Value;

use crate::attributes::Tower;
use crate::losses::{clip_loss, clip_loss_with_negatives};
use crate::objective::{retrieval_report, Losses, Objective, Split, Step};
use crate::params::{init_weights, Recorder, SharedVars};
use crate::recipe::Recipe;
use crate::samples::{CaptionBatch, CaptionSample, Inputs};
use crate::{Error, Result};

/// `CLIPModel` on a [`VarMap`].
pub struct ClipTrain {
    pub vars: SharedVars,
    pub model: ClipModel,
    pub cfg: ClipConfig,
}

/// The loss of one batch and the scaled similarities.
pub struct ClipLosses {
    pub total: Tensor,
    /// `[B, B]`
    pub logits_per_image: Tensor,
}

fn identity(name: &str) -> String {
    name.to_string()
}

impl ClipTrain {
    /// Fresh variables (initialise or load them afterwards).
    pub fn new(cfg: &ClipConfig, device: &Device) -> Result<Self> {
        let vars = SharedVars::new(VarMap::new(), identity);
        let model = ClipModel::new(cfg, vars.var_builder(device))?;
        Ok(Self {
            vars,
            model,
            cfg: cfg.clone(),
        })
    }

    /// # Shapes
    /// * `pixel_values`: `[B, 3, S, S]`; `input_ids`, `attention_mask`: `[B, T]` u32
    pub fn losses(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<ClipLosses> {
        let img = self.model.image_features(pixel_values, true)?; // [B, p]
        let txt = self
            .model
            .text_features(input_ids, Some(attention_mask), true)?; // [B, p]
        let (total, logits_per_image) = clip_loss(&img, &txt, &self.model.logit_scale)?;
        Ok(ClipLosses {
            total,
            logits_per_image,
        })
    }

    /// [`Self::losses`] with one hard negative caption per image (NegCLIP).
    ///
    /// # Shapes
    /// * negatives: ids/mask `[k B, Tn]` u32, `valid` `[k B]` f32 0/1
    pub fn losses_with_negatives(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        negative_ids: &Tensor,
        negative_mask: &Tensor,
        valid: &Tensor,
    ) -> Result<ClipLosses> {
        let img = self.model.image_features(pixel_values, true)?; // [B, p]
        let txt = self
            .model
            .text_features(input_ids, Some(attention_mask), true)?; // [B, p]
        let neg = self
            .model
            .text_features(negative_ids, Some(negative_mask), true)?; // [k B, p]
        let (total, logits_per_image) =
            clip_loss_with_negatives(&img, &txt, &neg, valid, &self.model.logit_scale)?;
        Ok(ClipLosses {
            total,
            logits_per_image,
        })
    }

    /// The exported `CLIPModel` tensors (reference names).
    pub fn export_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let rec = Recorder::new(self.vars.clone());
        ClipModel::new(&self.cfg, rec.var_builder(&Device::Cpu))?;
        Ok(rec.take())
    }
}

/// CLIP contrastive pretraining as a training [`Objective`].
pub struct ClipObjective {
    pub train: ClipTrain,
    inputs: Inputs,
    hard_negatives: bool,
}

impl ClipObjective {
    /// The model of the run's `config.json`, initialised from the recipe's seed.
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let cfg: ClipConfig = serde_json::from_value(inputs.files.config.clone())
            .map_err(|e| Error::Train(format!("model/config.json: {e}")))?;
        let train = ClipTrain::new(&cfg, &inputs.device)?;
        let m = &recipe.model;
        init_weights(
            &train.vars.map,
            m.seed,
            m.init_std,
            m.position_init_scale as f32,
        )?;
        Ok(Self {
            train,
            inputs,
            hard_negatives: recipe.loss.hard_negative_captions,
        })
    }
}

impl Objective for ClipObjective {
    type Sample = CaptionSample;
    type Batch = CaptionBatch;

    fn sample(&self, example: Example, split: Split) -> std::result::Result<CaptionSample, String> {
        self.inputs.caption(example, split)
    }

    fn batch(&self, samples: &[CaptionSample], split: Split) -> Result<CaptionBatch> {
        self.inputs
            .caption_batch(samples, split, self.hard_negatives)
    }

    fn losses(&mut self, b: &CaptionBatch, _at: Step) -> Result<Losses> {
        let m = &self.train;
        let l = match &b.negatives {
            Some(n) => m.losses_with_negatives(
                &b.pixel_values,
                &b.input_ids,
                &b.attention_mask,
                &n.ids,
                &n.mask,
                &n.valid,
            )?,
            None => m.losses(&b.pixel_values, &b.input_ids, &b.attention_mask)?,
        };
        Ok(Losses::total(l.total))
    }

    fn validate(&self, batches: &[CaptionBatch]) -> Result<Value> {
        let m = &self.train.model;
        retrieval_report(batches, "loss", |b| {
            let i = m.image_features(&b.pixel_values, false)?;
            let t = m.text_features(&b.input_ids, Some(&b.attention_mask), false)?;
            let (l, _) = clip_loss(&i, &t, &m.logit_scale)?;
            Ok((i, t, l))
        })
    }

    fn vars(&self) -> &VarMap {
        &self.train.vars.map
    }

    fn vision_tower(&self) -> Option<Tower> {
        Some(Tower::Clip)
    }
}
