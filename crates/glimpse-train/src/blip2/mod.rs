//! BLIP-2 training. Stage 1 (`kind = "blip2_stage1"`): Q-Former representation
//! learning from a frozen image encoder, exported as `Blip2ForImageTextRetrieval`.
//! Stage 2 (`kind = "blip2_stage2"`): generative learning, the stage-1 Q-Former's
//! queries projected into a frozen OPT as a soft prompt, exported as
//! `Blip2ForConditionalGeneration`.
//!
//! * [`stage1`]: the model on trainable variables, the ITC / ITM / ITG losses and the
//!   multimodal causal mask.
//! * [`Blip2Stage1Objective`]: the [`Objective`] the loop drives; it takes the frozen
//!   tower (`model.vision_from`) and, when given, the Q-Former's start
//!   (`model.qformer_from`) from a `BlipForImageTextRetrieval` directory.
//! * [`stage2`]: the stage-2 model and its loss; [`stage2_setup`]: its config,
//!   tokenizer (with the processor's `<image>` placeholder) and starting weights;
//!   [`Blip2Stage2Objective`]: the [`Objective`] over them.
//!
//! The paper starts the Q-Former from BERT-base, whose self-attention and feed-forward
//! it copies into both the query and the text paths (cross-attention is new). The
//! synthetic world's BERT-layout encoder is the bundled BLIP retrieval model's text
//! encoder: it knows the world's vocabulary, and its cross-attention already reads the
//! same BLIP tower, so [`qformer_source_name`] copies it (and `text_proj`, `itm_head`).

pub mod stage1;
pub mod stage2;
mod stage2_objective;
pub mod stage2_setup;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use glimpse_data::dataset::Example;
use glimpse_models::blip2::Blip2Config;
use serde_json::Value;

use crate::blip::Negatives;
use crate::objective::{scalar, Losses, Objective, Split, Step};
use crate::params::{init_weights, sorted_vars};
use crate::recipe::Recipe;
use crate::samples::{CaptionBatch, CaptionSample, Inputs};
use crate::trainer::load_tensors;
use crate::{Error, Result};
use glimpse_data::rng::SplitMix64 as Rng;
pub use stage1::{itg_mask, itg_pattern, Blip2Stage1, Stage1Losses, FROZEN_PREFIX};
pub use stage2::{Blip2Stage2, Stage2Batch};
pub use stage2_objective::{Blip2Stage2Objective, Stage2Sample};

/// The name in a `BlipForImageTextRetrieval` checkpoint that starts the stage-1
/// variable `name`, or `None` for a variable that starts random (queries, vision
/// projection, ITG transform, temperature). Query and text feed-forwards both come from
/// BERT's one feed-forward, as in the paper.
pub fn qformer_source_name(name: &str) -> Option<String> {
    let direct = match name {
        "embeddings.word_embeddings.weight" | "embeddings.position_embeddings.weight" => {
            return Some(format!("text_encoder.{name}"))
        }
        "qformer.layernorm.weight" => "text_encoder.embeddings.LayerNorm.weight",
        "qformer.layernorm.bias" => "text_encoder.embeddings.LayerNorm.bias",
        "text_projection.weight" => "text_proj.weight",
        "text_projection.bias" => "text_proj.bias",
        "itm_head.weight" | "itm_head.bias" => name,
        _ => "",
    };
    if !direct.is_empty() {
        return Some(direct.to_string());
    }
    let rest = name.strip_prefix("qformer.encoder.layer.")?;
    let rest = rest
        .replace(".attention.attention.", ".attention.self.")
        .replace(".crossattention.attention.", ".crossattention.self.")
        .replace(".intermediate_query.", ".intermediate.")
        .replace(".output_query.", ".output.");
    Some(format!("text_encoder.encoder.layer.{rest}"))
}

/// The `model.safetensors` tensors of a model directory (or a file).
fn directory_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let file = if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    };
    load_tensors(&file, &candle_core::Device::Cpu)
}

/// Copies the frozen tower (every `vision_model.*` variable must be in `vision_from`)
/// and, when `qformer_from` is given, the Q-Former's start into `map`. Returns how many
/// Q-Former variables were copied.
pub fn load_start(map: &VarMap, vision_from: &Path, qformer_from: Option<&Path>) -> Result<usize> {
    let vision = directory_tensors(vision_from)?;
    let qformer = qformer_from.map(directory_tensors).transpose()?;
    let mut copied = 0;
    for (name, var) in sorted_vars(map) {
        let (src, source, origin) = if name.starts_with(FROZEN_PREFIX) {
            (Some(name.clone()), Some(&vision), vision_from)
        } else {
            match (&qformer, qformer_from) {
                (Some(q), Some(o)) => (qformer_source_name(&name), Some(q), o),
                _ => (None, None, vision_from),
            }
        };
        let (Some(src), Some(source)) = (src, source) else {
            continue;
        };
        let Some(t) = source.get(&src) else {
            if name.starts_with(FROZEN_PREFIX) {
                return Err(Error::Train(format!(
                    "{}: no {src} for the frozen image encoder (a BLIP vision tower is needed)",
                    origin.display()
                )));
            }
            continue; // a deeper Q-Former than the source: the rest starts random
        };
        if t.shape() != var.shape() {
            return Err(Error::Train(format!(
                "{}: {src} is {:?}, the stage-1 model's {name} is {:?}",
                origin.display(),
                t.shape(),
                var.shape()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        if !name.starts_with(FROZEN_PREFIX) {
            copied += 1;
        }
    }
    Ok(copied)
}

/// BLIP-2 stage 1 as a training [`Objective`]: ITC + ITM + ITG; the image encoder is
/// frozen, everything else (queries, Q-Former, projections, heads, `temp` unless the
/// recipe holds it) trains.
pub struct Blip2Stage1Objective {
    pub model: Blip2Stage1,
    inputs: Inputs,
}

impl Blip2Stage1Objective {
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let cfg: Blip2Config = serde_json::from_value(inputs.files.config.clone())
            .map_err(|e| Error::Train(format!("model/config.json: {e}")))?;
        let dec = inputs.files.tokenizer.token_id("[DEC]").ok_or_else(|| {
            Error::io_ctx(
                &inputs.files.dir.join("tokenizer.json"),
                "has no [DEC] token (ITG starts the caption with it)",
            )
        })?;
        let model = Blip2Stage1::new(&cfg, recipe.loss, dec, &inputs.device)?;
        let m = &recipe.model;
        init_weights(&model.vars.map, m.seed, m.init_std, 1.0)?;
        model
            .temp
            .set(&Tensor::new(recipe.loss.temp as f32, &inputs.device)?)?;
        let vision_from = m.vision_from.as_deref().ok_or_else(|| Error::Recipe {
            path: "recipe".into(),
            message: "blip2_stage1 needs model.vision_from (the frozen image encoder)".into(),
        })?;
        load_start(&model.vars.map, vision_from, m.qformer_from.as_deref())?;
        Ok(Self { model, inputs })
    }
}

impl Objective for Blip2Stage1Objective {
    type Sample = CaptionSample;
    type Batch = CaptionBatch;

    fn sample(&self, example: Example, split: Split) -> std::result::Result<CaptionSample, String> {
        self.inputs.caption(example, split)
    }

    fn batch(&self, samples: &[CaptionSample], split: Split) -> Result<CaptionBatch> {
        self.inputs.caption_batch(samples, split, false)
    }

    fn losses(&mut self, b: &CaptionBatch, at: Step) -> Result<Losses> {
        let mut rng = Rng::derive(self.inputs.seed, at.step, 0xb12 + at.micro);
        let l = self.model.losses(
            &b.pixel_values,
            &b.input_ids,
            &b.attention_mask,
            Negatives::Sample(&mut rng),
        )?;
        let parts = vec![
            ("itc".to_string(), scalar(&l.itc)?),
            ("itm".to_string(), scalar(&l.itm)?),
            ("itg".to_string(), scalar(&l.itg)?),
        ];
        Ok(Losses {
            total: l.total,
            parts,
        })
    }

    /// Retrieval recall@1 and @5 both ways with the best-query ITC similarity (one
    /// caption per image) and the mean ITG loss.
    fn validate(&self, batches: &[CaptionBatch]) -> Result<Value> {
        let (mut img, mut txt, mut itg) = (Vec::new(), Vec::new(), 0.0);
        for b in batches {
            let (i, t, l) =
                self.model
                    .eval_batch(&b.pixel_values, &b.input_ids, &b.attention_mask)?;
            img.push(i);
            txt.push(t);
            itg += l / batches.len() as f64;
        }
        let sim = stage1::best_query_sims(&Tensor::cat(&img, 0)?, &Tensor::cat(&txt, 0)?)?;
        let (i2t_r1, i2t_r5) = stage1::recall_at(&sim)?;
        let (t2i_r1, t2i_r5) = stage1::recall_at(&sim.t()?)?;
        Ok(serde_json::json!({
            "samples": sim.dim(0)?,
            "i2t_r1": i2t_r1, "i2t_r5": i2t_r5,
            "t2i_r1": t2i_r1, "t2i_r5": t2i_r5,
            "itg_loss": itg,
        }))
    }

    fn vars(&self) -> &VarMap {
        &self.model.vars.map
    }

    /// Every variable but the image encoder's (and `temp` when held fixed).
    fn trainable(&self) -> Vec<(String, Var)> {
        let frozen_temp = !self.model.loss_cfg.learn_temp;
        sorted_vars(self.vars())
            .into_iter()
            .filter(|(n, _)| !(n.starts_with(FROZEN_PREFIX) || frozen_temp && n == "temp"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::qformer_source_name;

    #[test]
    fn qformer_starts_from_the_bert_layout_text_encoder() {
        let s = |n: &str| qformer_source_name(n);
        assert_eq!(
            s("qformer.encoder.layer.0.attention.attention.query.weight").as_deref(),
            Some("text_encoder.encoder.layer.0.attention.self.query.weight")
        );
        assert_eq!(
            s("qformer.encoder.layer.0.crossattention.attention.value.bias").as_deref(),
            Some("text_encoder.encoder.layer.0.crossattention.self.value.bias")
        );
        assert_eq!(
            s("qformer.encoder.layer.1.crossattention.output.dense.weight").as_deref(),
            Some("text_encoder.encoder.layer.1.crossattention.output.dense.weight")
        );
        for (ours, theirs) in [
            (
                "intermediate_query.dense.weight",
                "intermediate.dense.weight",
            ),
            ("intermediate.dense.weight", "intermediate.dense.weight"),
            ("output_query.LayerNorm.bias", "output.LayerNorm.bias"),
            ("attention.output.dense.bias", "attention.output.dense.bias"),
        ] {
            assert_eq!(
                s(&format!("qformer.encoder.layer.1.{ours}")),
                Some(format!("text_encoder.encoder.layer.1.{theirs}"))
            );
        }
        assert_eq!(
            s("qformer.layernorm.weight").as_deref(),
            Some("text_encoder.embeddings.LayerNorm.weight")
        );
        assert_eq!(s("text_projection.bias").as_deref(), Some("text_proj.bias"));
        assert_eq!(s("query_tokens"), None);
        assert_eq!(s("vision_projection.weight"), None);
        assert_eq!(s("cls.predictions.transform.dense.weight"), None);
        assert_eq!(s("temp"), None);
    }
}
