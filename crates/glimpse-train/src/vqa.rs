//! BLIP VQA fine-tuning (`BlipForQuestionAnswering`): the question encoder reads the
//! question with cross-attention to the image; the answer decoder generates the answer
//! with cross-attention to the question states; LM loss with label smoothing on the
//! answer. Starts from a BLIP pretraining checkpoint: vision and text encoder are
//! copied, the answer decoder is the pretraining decoder (with the weights it shared
//! with the encoder copied in, so the two are separate from here on, as in the
//! reference's VQA model).

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use glimpse_models::blip::{BlipConfig, BlipForQuestionAnswering};

use crate::blip::{decoder_rename, replace_first_column};
use crate::losses::lm_loss;
use crate::params::{sorted_vars, Recorder, SharedVars};
use crate::{Error, Result};

fn identity(name: &str) -> String {
    name.to_string()
}

/// `BlipForQuestionAnswering` on trainable variables (reference names).
pub struct BlipVqaTrain {
    pub vars: SharedVars,
    pub model: BlipForQuestionAnswering,
    pub cfg: BlipConfig,
    pub label_smoothing: f64,
}

impl BlipVqaTrain {
    pub fn new(cfg: &BlipConfig, label_smoothing: f64, device: &Device) -> Result<Self> {
        let vars = SharedVars::new(VarMap::new(), identity);
        let model = BlipForQuestionAnswering::new(cfg, vars.var_builder(device))?;
        Ok(Self {
            vars,
            model,
            cfg: cfg.clone(),
            label_smoothing,
        })
    }

    /// Copies a BLIP pretraining checkpoint's weights in (see the module docs); every
    /// variable must find its tensor.
    pub fn init_from_pretraining(&self, pre: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        for (name, var) in sorted_vars(&self.vars.map) {
            let src = decoder_rename(&name);
            let t = pre.get(&src).ok_or_else(|| {
                Error::Train(format!(
                    "{origin}: the pretraining checkpoint has no {src} (for {name})"
                ))
            })?;
            if t.shape() != var.shape() {
                return Err(Error::Train(format!(
                    "{origin}: {src} is {:?}, {name} needs {:?}",
                    t.shape(),
                    var.shape()
                )));
            }
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// The answer loss of a batch.
    ///
    /// # Shapes
    /// * `pixel_values`: `[B, 3, S, S]`; question ids/mask `[B, Tq]`; answer ids/mask
    ///   `[B, Ta]` (`[CLS] answer [SEP]`; the first token becomes `bos`)
    pub fn loss(
        &self,
        pixel_values: &Tensor,
        question_ids: &Tensor,
        question_mask: &Tensor,
        answer_ids: &Tensor,
        answer_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let image = self.model.vision_model.forward(pixel_values, train)?; // [B, n, dv]
        let q = self
            .model
            .encode_question(&image, question_ids, Some(question_mask), train)?; // [B, Tq, d]
        let ans = replace_first_column(answer_ids, self.cfg.text_config.bos_token_id)?;
        let logits =
            self.model
                .answer_logits(&q, Some(question_mask), &ans, Some(answer_mask), train)?; // [B, Ta, V]
        let eps = if train { self.label_smoothing } else { 0.0 };
        lm_loss(&logits, &ans, answer_mask, eps)
    }

    /// The exported model's tensors (reference names).
    pub fn export_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let rec = Recorder::new(self.vars.clone());
        BlipForQuestionAnswering::new(&self.cfg, rec.var_builder(&Device::Cpu))?;
        Ok(rec.take())
    }
}
