//! What one kind of training supplies to the loop in [`crate::trainer`]: how a sample
//! becomes a batch, the named losses of a batch, the trainable variables, state that
//! lives beside the weights (BLIP's momentum encoder and queues) and a validation
//! report. The loop owns everything else: data order, accumulation, clipping, AdamW,
//! the schedule, checkpoints and progress, so an objective is one module.
//!
//! Objectives: [`crate::clip::ClipObjective`], [`crate::blip::BlipObjective`],
//! [`crate::vqa::VqaObjective`], [`crate::attributes::AttributesObjective`],
//! [`crate::lm::LmObjective`].

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use glimpse_data::dataset::Example;
use serde_json::Value;

use crate::attributes::Tower;
use crate::losses::l2_normalize;
use crate::params::{load_into, sorted_vars};
use crate::Result;

/// Which part of the data a sample or batch comes from: training samples draw their
/// text per epoch and may carry augmentations; validation samples are fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train { epoch: u64 },
    Validation,
}

/// Where a micro-batch sits in the run: its random draws depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Updates done before this one.
    pub step: u64,
    /// The micro-batch within the update (gradient accumulation).
    pub micro: u64,
}

/// The loss of one micro-batch: the total that is differentiated, and named parts
/// for the log (as plain numbers).
pub struct Losses {
    pub total: Tensor,
    pub parts: Vec<(String, f64)>,
}

impl Losses {
    /// A total without parts.
    pub fn total(total: Tensor) -> Self {
        Self {
            total,
            parts: Vec::new(),
        }
    }
}

/// One kind of training, driven by the loop in [`crate::trainer`].
pub trait Objective {
    /// What a decoded example contributes to a batch.
    type Sample;
    /// A batch on the device.
    type Batch;

    /// The sample `example` trains, or why it cannot (the loop skips and counts it).
    fn sample(&self, example: Example, split: Split) -> std::result::Result<Self::Sample, String>;

    /// Builds a batch of `samples`.
    fn batch(&self, samples: &[Self::Sample], split: Split) -> Result<Self::Batch>;

    /// The training losses of one micro-batch; may advance state kept beside the
    /// weights (a momentum encoder, queues).
    fn losses(&mut self, batch: &Self::Batch, at: Step) -> Result<Losses>;

    /// Metrics over the validation batches, without changing any state.
    fn validate(&self, batches: &[Self::Batch]) -> Result<Value>;

    /// Every variable (checkpointed as `model.safetensors`).
    fn vars(&self) -> &VarMap;

    /// The variables AdamW updates, in a fixed order.
    fn trainable(&self) -> Vec<(String, Var)> {
        sorted_vars(self.vars())
    }

    /// Starts from another run's weights (`model.init`).
    fn init_from(&mut self, weights: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        load_into(self.vars(), weights, origin)
    }

    /// Copies in the weights of an exported model directory (`model.init` naming one):
    /// the model's variables it names, the others left as initialised. Only objectives
    /// that know an exported layout accept one.
    fn init_from_export(&mut self, _weights: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        Err(crate::Error::Train(format!(
            "{origin}: this recipe kind cannot start from an exported model directory; name a training run"
        )))
    }

    /// The layout of a vision tower `model.init_vision` may copy in, if any.
    fn vision_tower(&self) -> Option<Tower> {
        None
    }

    /// Called once the starting weights are in place, before a resume loads its state.
    fn weights_ready(&mut self) -> Result<()> {
        Ok(())
    }

    /// Writes state besides the weights into the checkpoint directory `dir`.
    fn save_state(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Reads what [`Self::save_state`] wrote.
    fn load_state(&mut self, _dir: &Path) -> Result<()> {
        Ok(())
    }
}

/// Scalar `t` as f64.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?)
}

/// Retrieval recall@1 in both directions over the validation batches and their mean
/// loss, reported under `loss_name`. `features` gives a batch's image features, text
/// features and loss.
pub(crate) fn retrieval_report<B>(
    batches: &[B],
    loss_name: &str,
    features: impl Fn(&B) -> Result<(Tensor, Tensor, Tensor)>,
) -> Result<Value> {
    let mut img = Vec::new();
    let mut txt = Vec::new();
    let mut loss = 0.0;
    for b in batches {
        let (i, t, l) = features(b)?;
        img.push(l2_normalize(&i.detach())?);
        txt.push(l2_normalize(&t.detach())?);
        loss += scalar(&l)? / batches.len() as f64;
    }
    let img = Tensor::cat(&img, 0)?;
    let txt = Tensor::cat(&txt, 0)?;
    let sim = img.matmul(&txt.t()?)?; // [n, n]
    let n = sim.dim(0)?;
    let i2t = sim.argmax(1)?.to_vec1::<u32>()?;
    let t2i = sim.t()?.argmax(1)?.to_vec1::<u32>()?;
    let r1 = |v: &[u32]| {
        v.iter()
            .enumerate()
            .filter(|(i, &j)| *i as u32 == j)
            .count() as f64
            / n.max(1) as f64
    };
    Ok(serde_json::json!({"samples": n, "i2t_r1": r1(&i2t), "t2i_r1": r1(&t2i), loss_name: loss}))
}
