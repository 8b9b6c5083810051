//! BLIP-2 stage 2 as a training [`Objective`]: what each sample reads and the batches
//! of [`Blip2Stage2`].
//!
//! A training sample reads its caption (after `data.caption_prompt` when given), or,
//! with probability `data.qa_share`, one of its question/answer pairs in BLIP-2's
//! zero-shot VQA prompt ("Question: {q} Answer:", not scored) followed by the answer.
//! The choice is a pure function of (seed, epoch, sample key), so a resumed run draws
//! what an uninterrupted one would; validation samples draw as at epoch 0.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use glimpse_data::dataset::Example;
use glimpse_data::rng::SplitMix64 as Rng;
use glimpse_models::blip2::{vqa_prompt, Blip2Config};
use serde_json::Value;

use super::stage2::{is_frozen, stage2_row, Blip2Stage2, Stage2Batch};
use super::stage2_setup::load_stage2_start;
use crate::objective::{scalar, Losses, Objective, Split, Step};
use crate::params::{init_weights, sorted_vars};
use crate::recipe::Recipe;
use crate::samples::{key_hash, pick_qa, Inputs};
use crate::{Error, Result};

/// An example and the token ids it trains on.
pub struct Stage2Sample {
    pub example: Example,
    /// bos and the prompt (not scored).
    pub prefix: Vec<u32>,
    /// The caption or answer (scored, then eos).
    pub text: Vec<u32>,
}

/// BLIP-2 stage 2: only the queries, the Q-Former and `language_projection` train.
pub struct Blip2Stage2Objective {
    pub model: Blip2Stage2,
    inputs: Inputs,
    qa_share: f64,
    image_token: u32,
    queries: usize,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl Blip2Stage2Objective {
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let cfg: Blip2Config = serde_json::from_value(inputs.files.config.clone())
            .map_err(|e| Error::Train(format!("model/config.json: {e}")))?;
        let model = Blip2Stage2::new(&cfg, &inputs.device)?;
        let m = &recipe.model;
        init_weights(&model.vars.map, m.seed, m.init_std, 1.0)?;
        let t = &cfg.text_config;
        let missing =
            |what: &str| Error::Train(format!("model/config.json: text_config has no {what}"));
        let bos = t.bos_token_id().ok_or_else(|| missing("bos_token_id"))?;
        let eos = *t
            .eos_token_ids()
            .first()
            .ok_or_else(|| missing("eos_token_id"))?;
        let pad = t.pad_token_id().unwrap_or(eos);
        let image_token = cfg.image_token_index.expect("checked by Blip2Stage2::new");
        let (Some(qf), Some(lm)) = (m.qformer_from.as_deref(), m.lm_from.as_deref()) else {
            return Err(Error::Train(
                "blip2_stage2 needs model.qformer_from and model.lm_from".into(),
            ));
        };
        let vocab = image_token as usize + 1;
        load_stage2_start(
            &model.vars.map,
            qf,
            lm,
            m.vision_from.as_deref(),
            vocab,
            pad as usize,
        )?;
        Ok(Self {
            model,
            qa_share: recipe.data.qa_share,
            image_token,
            queries: cfg.num_query_tokens,
            bos,
            eos,
            pad,
            inputs,
        })
    }

    /// The prompt and text of `example`: a question/answer pair with probability
    /// `qa_share` (when it has one), else its caption.
    fn texts(
        &self,
        example: &Example,
        split: Split,
    ) -> std::result::Result<(Option<String>, String), String> {
        let epoch = match split {
            Split::Train { epoch } => epoch,
            Split::Validation => 0,
        };
        let seed = self.inputs.seed;
        if self.qa_share > 0.0 {
            let mut rng = Rng::derive(seed ^ 0xb2_0a, epoch, key_hash(&example.key, 0x51a9));
            if rng.unit() < self.qa_share {
                if let Some((q, a)) = pick_qa(&example.meta, &example.key, seed, epoch) {
                    return Ok((Some(vqa_prompt(&q)), a));
                }
            }
        }
        let choice = match split {
            Split::Train { .. } => self.inputs.text,
            Split::Validation => crate::recipe::TextChoice::Caption,
        };
        match crate::samples::pick_text(&example.meta, &example.key, choice, seed, epoch) {
            Some(text) => Ok((self.inputs.caption_prompt.clone(), text)),
            None => Err(format!("sample {}: no caption", example.key)),
        }
    }
}

impl Objective for Blip2Stage2Objective {
    type Sample = Stage2Sample;
    type Batch = Stage2Batch;

    fn sample(&self, example: Example, split: Split) -> std::result::Result<Stage2Sample, String> {
        let (prompt, text) = self.texts(&example, split)?;
        let tok = &self.inputs.files.tokenizer;
        let fail = |e: glimpse_data::Error| format!("sample {}: {e}", example.key);
        let prefix = match &prompt {
            Some(p) => tok.encode(p.trim_end(), true).map_err(fail)?,
            None => vec![self.bos],
        };
        let mut text = tok.encode(&text, false).map_err(fail)?;
        // bos, prompt, text and eos within data.max_text_len.
        let room = self.inputs.max_text_len.saturating_sub(prefix.len() + 1);
        if room == 0 || text.is_empty() {
            return Err(format!(
                "sample {}: the prompt leaves no room for text within data.max_text_len",
                example.key
            ));
        }
        text.truncate(room);
        Ok(Stage2Sample {
            example,
            prefix,
            text,
        })
    }

    fn batch(&self, samples: &[Stage2Sample], _split: Split) -> Result<Stage2Batch> {
        let pixel_values = self.inputs.pixels(samples.iter().map(|s| &s.example))?;
        let rows: Vec<(Vec<u32>, Vec<u32>)> = samples
            .iter()
            .map(|s| stage2_row(self.image_token, self.queries, &s.prefix, &s.text, self.eos))
            .collect();
        let t = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
        let (mut ids, mut mask, mut targets) = (Vec::new(), Vec::new(), Vec::new());
        for (r, g) in &rows {
            for i in 0..t {
                ids.push(r.get(i).copied().unwrap_or(self.pad));
                mask.push(u32::from(i < r.len()));
                targets.push(g.get(i).copied().unwrap_or(0));
            }
        }
        let dev = &self.inputs.device;
        let shape = (rows.len(), t);
        Ok(Stage2Batch {
            pixel_values,
            input_ids: Tensor::from_vec(ids, shape, dev)?,
            attention_mask: Tensor::from_vec(mask, shape, dev)?,
            targets: Tensor::from_vec(targets, shape, dev)?,
        })
    }

    fn losses(&mut self, b: &Stage2Batch, _at: Step) -> Result<Losses> {
        let loss = self.model.loss(b, true)?;
        let parts = vec![("lm".to_string(), scalar(&loss)?)];
        Ok(Losses { total: loss, parts })
    }

    /// The mean LM loss over the validation batches (captions, and question/answer
    /// pairs in the recipe's share).
    fn validate(&self, batches: &[Stage2Batch]) -> Result<Value> {
        let mut loss = 0.0;
        let mut n = 0;
        for b in batches {
            loss += scalar(&self.model.loss(b, false)?)? / batches.len() as f64;
            n += b.input_ids.dim(0)?;
        }
        Ok(serde_json::json!({"samples": n, "lm_loss": loss}))
    }

    fn vars(&self) -> &VarMap {
        &self.model.vars.map
    }

    /// The queries, the Q-Former and `language_projection`.
    fn trainable(&self) -> Vec<(String, Var)> {
        sorted_vars(self.vars())
            .into_iter()
            .filter(|(n, _)| !is_frozen(n))
            .collect()
    }
}
