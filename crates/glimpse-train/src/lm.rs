//! Text-only causal language models (`kind = "lm"`): an OPT-layout or a LLaMA-layout
//! decoder, chosen by the config's `model_type`, trained with next-token
//! cross-entropy on a JSONL corpus ([`crate::corpus`]). The forward pass is the
//! inference model of `glimpse-nn` ([`OptForCausalLM`], [`LlamaForCausalLM`]) built on
//! trainable variables named as the reference's checkpoint, so the exported
//! `OPTForCausalLM` / `LlamaForCausalLM` directory is those variables as they are.
//!
//! A sequence is `bos prompt text eos` (truncated to `data.max_text_len`); the loss
//! counts the tokens after the prompt. Validation reports the held-out loss per token,
//! its perplexity and next-token accuracy.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarMap;
use glimpse_data::dataset::Example;
use glimpse_nn::llama::{LlamaConfig, LlamaForCausalLM};
use glimpse_nn::opt::{OptConfig, OptForCausalLM};
use serde_json::Value;

use crate::losses::lm_loss;
use crate::objective::{Losses, Objective, Split, Step};
use crate::params::{init_weights, Recorder, SharedVars};
use crate::recipe::Recipe;
use crate::samples::Inputs;
use crate::{Error, Result};

/// The decoder layout of an `lm` run, read from its `config.json`.
#[derive(Debug, Clone)]
pub enum LmConfig {
    Opt(OptConfig),
    Llama(Box<LlamaConfig>),
}

impl LmConfig {
    /// From `model_type` (`opt` or `llama`), or else the first of `architectures`.
    pub fn from_json(v: &Value, origin: &str) -> Result<Self> {
        let arch = v
            .get("architectures")
            .and_then(|a| a.get(0))
            .and_then(|a| a.as_str());
        let kind = match (v.get("model_type").and_then(|m| m.as_str()), arch) {
            (Some(m), _) => m.to_string(),
            (None, Some("OPTForCausalLM")) => "opt".into(),
            (None, Some("LlamaForCausalLM")) => "llama".into(),
            _ => {
                return Err(Error::Train(format!(
                    "{origin}: no model_type (\"opt\" or \"llama\") or causal-LM architecture"
                )))
            }
        };
        let bad = |e: serde_json::Error| Error::Train(format!("{origin}: {e}"));
        let cfg = match kind.as_str() {
            "opt" => {
                let c: OptConfig = serde_json::from_value(v.clone()).map_err(bad)?;
                if c.dropout > 0.0 || c.attention_dropout > 0.0 {
                    // candle draws dropout masks from an unseeded generator: a run
                    // with it could not resume bit for bit.
                    return Err(Error::Train(format!(
                        "{origin}: dropout = {} and attention_dropout = {} must be 0 for training here",
                        c.dropout, c.attention_dropout
                    )));
                }
                LmConfig::Opt(c)
            }
            "llama" => LmConfig::Llama(Box::new(serde_json::from_value(v.clone()).map_err(bad)?)),
            other => {
                return Err(Error::Train(format!(
                    "{origin}: model_type {other:?} is not a causal LM Glimpse trains (opt, llama)"
                )))
            }
        };
        Ok(cfg)
    }

    /// The reference class the run exports.
    pub fn class_name(&self) -> &'static str {
        match self {
            LmConfig::Opt(_) => "OPTForCausalLM",
            LmConfig::Llama(_) => "LlamaForCausalLM",
        }
    }

    fn build(&self, vb: candle_nn::VarBuilder) -> Result<Decoder> {
        Ok(match self {
            LmConfig::Opt(c) => Decoder::Opt(OptForCausalLM::new(c, vb)?),
            LmConfig::Llama(c) => Decoder::Llama(LlamaForCausalLM::new(c, vb)?),
        })
    }
}

/// The inference decoders of `glimpse-nn`, one forward for training and inference.
#[derive(Debug, Clone)]
pub enum Decoder {
    Opt(OptForCausalLM),
    Llama(LlamaForCausalLM),
}

impl Decoder {
    /// # Shapes
    /// * `input_ids`, `attention_mask`: `[b, t]` u32 -> `[b, t, vocab]`
    pub fn logits(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        Ok(match self {
            Decoder::Opt(m) => {
                m.forward(input_ids, Some(attention_mask), &mut m.new_cache(), train)?
            }
            Decoder::Llama(m) => {
                m.forward(input_ids, Some(attention_mask), &mut m.new_cache(), train)?
            }
        })
    }
}

/// A causal LM on a [`VarMap`] whose names are the checkpoint names.
pub struct LmTrain {
    pub vars: SharedVars,
    pub model: Decoder,
    pub cfg: LmConfig,
}

fn identity(name: &str) -> String {
    name.to_string()
}

impl LmTrain {
    /// Fresh variables (initialise or load them afterwards).
    pub fn new(cfg: &LmConfig, device: &Device) -> Result<Self> {
        let vars = SharedVars::new(VarMap::new(), identity);
        let model = cfg.build(vars.var_builder(device))?;
        Ok(Self {
            vars,
            model,
            cfg: cfg.clone(),
        })
    }

    /// The mean next-token loss over the scored positions.
    pub fn loss(&self, b: &LmBatch, train: bool) -> Result<Tensor> {
        let logits = self.model.logits(&b.input_ids, &b.attention_mask, train)?; // [b, t, v]
        lm_loss(&logits, &b.input_ids, &b.loss_mask, 0.0)
    }

    /// The exported tensors: exactly what the inference model asks for (a tied head
    /// is not stored, as `save_pretrained` does).
    pub fn export_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let rec = Recorder::new(self.vars.clone());
        self.cfg.build(rec.var_builder(&Device::Cpu))?;
        Ok(rec.take())
    }
}

/// A document as token ids: `bos prompt text eos`, scored from `scored_from`.
pub struct LmSample {
    pub ids: Vec<u32>,
    /// The document's `kind`, if the corpus names one (validation reports per kind).
    pub kind: Option<String>,
    /// The first position whose token is a target (1 + the prompt's length).
    pub scored_from: usize,
}

/// Right-padded sequences.
pub struct LmBatch {
    /// `[B, T]` u32
    pub input_ids: Tensor,
    /// `[B, T]` u32
    pub attention_mask: Tensor,
    /// `[B, T]` u32: 1 where the token is a scored target.
    pub loss_mask: Tensor,
    /// Each row's document kind.
    pub kinds: Vec<Option<String>>,
}

/// Causal language modelling as a training [`Objective`].
pub struct LmObjective {
    pub train: LmTrain,
    inputs: Inputs,
    bos: u32,
    eos: u32,
    pad: u32,
}

/// `key` of `config`, a token id.
fn token_id(config: &Value, key: &str) -> Result<u32> {
    let v = &config[key];
    v.as_u64()
        .or_else(|| v.get(0).and_then(|x| x.as_u64()))
        .map(|x| x as u32)
        .ok_or_else(|| Error::Train(format!("model/config.json: no {key}")))
}

impl LmObjective {
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let config = &inputs.files.config;
        let cfg = LmConfig::from_json(config, "model/config.json")?;
        let (bos, eos, pad) = (
            token_id(config, "bos_token_id")?,
            token_id(config, "eos_token_id")?,
            token_id(config, "pad_token_id")?,
        );
        let train = LmTrain::new(&cfg, &inputs.device)?;
        let m = &recipe.model;
        init_weights(&train.vars.map, m.seed, m.init_std, 1.0)?;
        Ok(Self {
            train,
            inputs,
            bos,
            eos,
            pad,
        })
    }

    /// Mean loss per scored token, perplexity and next-token accuracy over `batches`,
    /// overall and per document `kind` (`by_kind`) where the corpus names kinds.
    fn metrics(&self, batches: &[LmBatch]) -> Result<Value> {
        // (kind, nll, right, tokens), the overall sums under "".
        let mut sums: Vec<(String, [f64; 3])> = vec![(String::new(), [0.0; 3])];
        for b in batches {
            let logits = self
                .train
                .model
                .logits(&b.input_ids, &b.attention_mask, false)?; // [b, t, v]
            let t = logits.dim(1)?;
            let logp = candle_nn::ops::log_softmax(&logits.narrow(1, 0, t - 1)?, D::Minus1)?; // [b, t-1, v]
            let target = b.input_ids.narrow(1, 1, t - 1)?.contiguous()?; // [b, t-1]
            let mask = b.loss_mask.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?; // [b, t-1]
            let picked = logp
                .contiguous()?
                .gather(&target.unsqueeze(2)?, 2)?
                .squeeze(2)?; // [b, t-1]
            let hit = logp.argmax(D::Minus1)?.eq(&target)?.to_dtype(DType::F32)?; // [b, t-1]
            let per_row = |x: Tensor| -> Result<Vec<f32>> { Ok((x * &mask)?.sum(1)?.to_vec1()?) }; // [b]
            let nll = per_row(picked.neg()?)?;
            let right = per_row(hit)?;
            let n = per_row(mask.ones_like()?)?;
            for (row, kind) in b.kinds.iter().enumerate() {
                let add = [nll[row] as f64, right[row] as f64, n[row] as f64];
                let mut bump = |k: &str| {
                    let i = match sums.iter().position(|(name, _)| name == k) {
                        Some(i) => i,
                        None => {
                            sums.push((k.to_string(), [0.0; 3]));
                            sums.len() - 1
                        }
                    };
                    for (s, a) in sums[i].1.iter_mut().zip(add) {
                        *s += a;
                    }
                };
                bump("");
                if let Some(k) = kind.as_deref().filter(|k| !k.is_empty()) {
                    bump(k);
                }
            }
        }
        let report = |[nll, right, n]: [f64; 3]| {
            let loss = nll / n.max(1.0);
            serde_json::json!({
                "loss": loss,
                "perplexity": loss.exp(),
                "accuracy": right / n.max(1.0),
                "tokens": n as u64,
            })
        };
        let mut out = report(sums[0].1);
        if sums.len() > 1 {
            let mut by_kind: Vec<_> = sums[1..].to_vec();
            by_kind.sort_by(|a, b| a.0.cmp(&b.0));
            let map: serde_json::Map<String, Value> =
                by_kind.into_iter().map(|(k, v)| (k, report(v))).collect();
            out["by_kind"] = Value::Object(map);
        }
        Ok(out)
    }
}

impl Objective for LmObjective {
    type Sample = LmSample;
    type Batch = LmBatch;

    fn sample(&self, example: Example, _split: Split) -> std::result::Result<LmSample, String> {
        let tok = &self.inputs.files.tokenizer;
        let field = |f: &str| example.meta.get(f).and_then(|v| v.as_str()).unwrap_or("");
        let enc = |s: &str| {
            tok.encode(s, false)
                .map_err(|e| format!("document {}: {e}", example.key))
        };
        let prompt = enc(field("prompt"))?;
        let text = enc(field("text"))?;
        let mut ids = Vec::with_capacity(prompt.len() + text.len() + 2);
        ids.push(self.bos);
        ids.extend(&prompt);
        ids.extend(&text);
        ids.push(self.eos);
        ids.truncate(self.inputs.max_text_len);
        let scored_from = 1 + prompt.len();
        if scored_from >= ids.len() {
            return Err(format!(
                "document {}: the prompt fills data.max_text_len = {}, no token is scored",
                example.key, self.inputs.max_text_len
            ));
        }
        let kind = example
            .meta
            .get("kind")
            .and_then(|k| k.as_str())
            .map(String::from);
        Ok(LmSample {
            ids,
            kind,
            scored_from,
        })
    }

    fn batch(&self, samples: &[LmSample], _split: Split) -> Result<LmBatch> {
        let t = samples.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let n = samples.len();
        let (mut ids, mut mask, mut scored) = (
            Vec::with_capacity(n * t),
            Vec::with_capacity(n * t),
            Vec::with_capacity(n * t),
        );
        for s in samples {
            for i in 0..t {
                ids.push(s.ids.get(i).copied().unwrap_or(self.pad));
                mask.push(u32::from(i < s.ids.len()));
                scored.push(u32::from(i >= s.scored_from && i < s.ids.len()));
            }
        }
        let dev = &self.inputs.device;
        Ok(LmBatch {
            input_ids: Tensor::from_vec(ids, (n, t), dev)?,
            attention_mask: Tensor::from_vec(mask, (n, t), dev)?,
            loss_mask: Tensor::from_vec(scored, (n, t), dev)?,
            kinds: samples.iter().map(|s| s.kind.clone()).collect(),
        })
    }

    fn losses(&mut self, b: &LmBatch, _at: Step) -> Result<Losses> {
        Ok(Losses::total(self.train.loss(b, true)?))
    }

    fn validate(&self, batches: &[LmBatch]) -> Result<Value> {
        self.metrics(batches)
    }

    fn vars(&self) -> &VarMap {
        &self.train.vars.map
    }
}
