//! BLIP VQA fine-tuning (`BlipForQuestionAnswering`): the question encoder reads the
//! question with cross-attention to the image; the answer decoder generates the answer
//! with cross-attention to the question states; LM loss with label smoothing on the
//! answer. Starts from a BLIP pretraining checkpoint: vision and text encoder are
//! copied, the answer decoder is the pretraining decoder (with the weights it shared
//! with the encoder copied in, so the two are separate from here on, as in the
//! reference's VQA model). [`VqaObjective`] trains it in the loop of [`crate::trainer`].

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use glimpse_data::dataset::Example;
use glimpse_models::blip::{BlipConfig, BlipForQuestionAnswering};
use serde_json::Value;

use crate::blip::{decoder_rename, replace_first_column};
use crate::losses::lm_loss;
use crate::objective::{scalar, Losses, Objective, Split, Step};
use crate::params::{init_weights, sorted_vars, Recorder, SharedVars};
use crate::recipe::Recipe;
use crate::samples::{pick_qa_preferring, Inputs, QaSample};
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

/// Images with a question and its answer each.
pub struct VqaBatch {
    /// `[B, 3, S, S]`
    pub pixel_values: Tensor,
    /// `[B, Tq]` u32
    pub question_ids: Tensor,
    pub question_mask: Tensor,
    /// `[B, Ta]` u32
    pub answer_ids: Tensor,
    pub answer_mask: Tensor,
}

/// VQA fine-tuning as a training [`Objective`]; `model.init` names the BLIP
/// pretraining run it starts from.
pub struct VqaObjective {
    pub train: BlipVqaTrain,
    inputs: Inputs,
    /// `data.qa_prefer` and `data.qa_prefer_share`.
    prefer: Option<(String, f64)>,
}

impl VqaObjective {
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let cfg: BlipConfig = serde_json::from_value(inputs.files.config.clone())
            .map_err(|e| Error::Train(format!("model/config.json: {e}")))?;
        let train = BlipVqaTrain::new(&cfg, recipe.loss.label_smoothing, &inputs.device)?;
        let m = &recipe.model;
        init_weights(
            &train.vars.map,
            m.seed,
            m.init_std,
            m.position_init_scale as f32,
        )?;
        let prefer = recipe
            .data
            .qa_prefer
            .clone()
            .map(|p| (p, recipe.data.qa_prefer_share));
        Ok(Self {
            train,
            inputs,
            prefer,
        })
    }

    fn loss(&self, b: &VqaBatch, train: bool) -> Result<Tensor> {
        self.train.loss(
            &b.pixel_values,
            &b.question_ids,
            &b.question_mask,
            &b.answer_ids,
            &b.answer_mask,
            train,
        )
    }
}

impl Objective for VqaObjective {
    type Sample = QaSample;
    type Batch = VqaBatch;

    fn sample(&self, example: Example, split: Split) -> std::result::Result<QaSample, String> {
        match (&self.prefer, split) {
            (Some((prefer, share)), Split::Train { epoch }) => {
                let seed = self.inputs.seed;
                match pick_qa_preferring(&example.meta, &example.key, seed, epoch, prefer, *share) {
                    Some((question, answer)) => Ok(QaSample {
                        example,
                        question,
                        answer,
                    }),
                    None => Err(format!("sample {}: no question/answer", example.key)),
                }
            }
            _ => self.inputs.question(example, split),
        }
    }

    fn batch(&self, samples: &[QaSample], _split: Split) -> Result<VqaBatch> {
        let pixel_values = self.inputs.pixels(samples.iter().map(|s| &s.example))?;
        let questions: Vec<String> = samples.iter().map(|s| s.question.clone()).collect();
        let (question_ids, question_mask) = self.inputs.encode(&questions)?;
        let answers: Vec<String> = samples.iter().map(|s| s.answer.clone()).collect();
        let (answer_ids, answer_mask) = self.inputs.encode(&answers)?;
        Ok(VqaBatch {
            pixel_values,
            question_ids,
            question_mask,
            answer_ids,
            answer_mask,
        })
    }

    fn losses(&mut self, b: &VqaBatch, _at: Step) -> Result<Losses> {
        Ok(Losses::total(self.loss(b, true)?))
    }

    /// The mean answer loss (no label smoothing).
    fn validate(&self, batches: &[VqaBatch]) -> Result<Value> {
        let mut loss = 0.0;
        for b in batches {
            loss += scalar(&self.loss(b, false)?)? / batches.len() as f64;
        }
        Ok(serde_json::json!({"answer_loss": loss}))
    }

    fn vars(&self) -> &VarMap {
        &self.train.vars.map
    }

    /// Copies the pretraining checkpoint in (see the module docs).
    fn init_from(&mut self, weights: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        self.train.init_from_pretraining(weights, origin)
    }

    /// An exported `BlipForQuestionAnswering`: every variable takes the tensor of its
    /// own (reference) name, to fine-tune a finished VQA model further.
    fn init_from_export(&mut self, weights: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        for (name, var) in sorted_vars(&self.train.vars.map) {
            let t = weights.get(&name).ok_or_else(|| {
                Error::Train(format!("{origin}: the exported VQA model has no {name}"))
            })?;
            if t.shape() != var.shape() {
                return Err(Error::Train(format!(
                    "{origin}: {name} is {:?}, the model needs {:?}",
                    t.shape(),
                    var.shape()
                )));
            }
            var.set(&t.to_device(var.device())?)?;
        }
        Ok(())
    }
}
