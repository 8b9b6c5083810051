//! CLIP contrastive training: the reference's `CLIPModel` on trainable variables whose
//! names are the checkpoint names, the symmetric loss with the learned temperature.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use glimpse_models::clip::{ClipConfig, ClipModel};

use crate::losses::{clip_loss, clip_loss_with_negatives};
use crate::params::{Recorder, SharedVars};
use crate::Result;

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
