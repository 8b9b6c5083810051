//! The BLIP-2 stage-2 model and its loss (paper <https://arxiv.org/abs/2301.12597>
//! §3.2, LAVIS `blip2_opt.py`), on [`Blip2ForConditionalGeneration`] built over
//! trainable variables, so training runs the very forward that `glimpse caption` and
//! the exported checkpoint run:
//!
//! * the frozen image encoder (`vision_model.*`) runs without gradient;
//! * the Q-Former's learned queries cross-attend to it (`query_tokens`, `qformer.*`,
//!   trained);
//! * `language_projection` (a fully connected layer, trained) maps each query output
//!   to the language model's width;
//! * the projected queries replace the `<image>` placeholders the processor puts
//!   before the text, a soft visual prompt for the frozen OPT (`language_model.*`);
//! * the loss is OPT's next-token cross-entropy on the caption (or answer) tokens and
//!   the closing eos only: the query positions, the bos and any text prompt are not
//!   targets (LAVIS labels them -100).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_models::blip2::{Blip2Config, Blip2ForConditionalGeneration, LanguageModel};

use crate::losses::lm_loss;
use crate::params::{Recorder, SharedVars};
use crate::{Error, Result};

/// Prefixes of the frozen variables: the image encoder and the language model.
pub const STAGE2_FROZEN: [&str; 2] = ["vision_model.", "language_model."];

/// Whether the stage-2 variable `name` is frozen.
pub fn is_frozen(name: &str) -> bool {
    STAGE2_FROZEN.iter().any(|p| name.starts_with(p))
}

/// Placeholders, prompt and text of a batch, right-padded.
pub struct Stage2Batch {
    /// `[B, 3, S, S]`
    pub pixel_values: Tensor,
    /// `[B, Q + T]` u32: `Q` image placeholders, bos, prompt, text, eos, padding.
    pub input_ids: Tensor,
    /// `[B, Q + T]` u32
    pub attention_mask: Tensor,
    /// `[B, Q + T]` u32: 1 where the token is a target (text and eos).
    pub targets: Tensor,
}

/// One row of a batch as ids: `[image] * q`, `prefix` (bos and prompt, not scored),
/// `text` and `eos` (scored). Returns the ids and the target flags.
pub fn stage2_row(
    image_token: u32,
    queries: usize,
    prefix: &[u32],
    text: &[u32],
    eos: u32,
) -> (Vec<u32>, Vec<u32>) {
    let mut ids = vec![image_token; queries];
    ids.extend_from_slice(prefix);
    ids.extend_from_slice(text);
    ids.push(eos);
    let scored = text.len() + 1;
    let mut targets = vec![0u32; ids.len() - scored];
    targets.extend(std::iter::repeat_n(1u32, scored));
    (ids, targets)
}

/// The stage-2 model: `Blip2ForConditionalGeneration` on one [`crate::params::SharedVars`]
/// whose names are the reference's checkpoint names.
pub struct Blip2Stage2 {
    pub vars: SharedVars,
    pub model: Blip2ForConditionalGeneration,
    pub cfg: Blip2Config,
}

fn identity(name: &str) -> String {
    name.to_string()
}

impl Blip2Stage2 {
    /// Fresh variables (initialise them, then load the frozen parts and the Q-Former).
    /// Stage 2 trains the OPT path: a T5 language model or a config without
    /// `image_token_index` is refused.
    pub fn new(cfg: &Blip2Config, device: &Device) -> Result<Self> {
        Self::with_dtype(cfg, DType::F32, device)
    }

    /// As [`Self::new`] with variables of `dtype` (f32 trains; f64 is for the
    /// gradient-parity test against a float64 reference).
    pub fn with_dtype(cfg: &Blip2Config, dtype: DType, device: &Device) -> Result<Self> {
        if !cfg.use_decoder_only_language_model() {
            return Err(Error::Train(
                "blip2_stage2 trains the OPT (decoder-only) path; this config's language model is T5"
                    .into(),
            ));
        }
        if cfg.image_token_index.is_none() {
            return Err(Error::Train(
                "blip2_stage2 needs image_token_index in the config (the processor's <image> placeholder)"
                    .into(),
            ));
        }
        let vars = SharedVars::new(candle_nn::VarMap::new(), identity);
        let vb: VarBuilder = vars.var_builder_dtype(dtype, device);
        let model = Blip2ForConditionalGeneration::new(cfg, vb)?;
        Ok(Self {
            vars,
            model,
            cfg: cfg.clone(),
        })
    }

    /// Logits over every position of the language model's input.
    ///
    /// # Shapes
    /// * `pixel_values`: `[B, 3, S, S]`; `input_ids`, `attention_mask`: `[B, Q + T]`
    /// * returns `[B, Q + T, vocab]`
    pub fn logits(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let m = &self.model;
        // The frozen tower needs no graph: inference kernels, output detached.
        let image = m.vision(pixel_values, false)?.detach(); // [B, n, dv]
        let queries = m.query_outputs(&image, train)?; // [B, Q, dq]
        let prompt = m.project(&queries)?; // [B, Q, d]
        let (embeds, mask) = m.inputs_embeds(&prompt, input_ids, Some(attention_mask))?; // [B, Q + T, d]
        let LanguageModel::Opt(lm) = &m.language_model else {
            return Err(Error::Train("blip2_stage2 trains the OPT path only".into()));
        };
        Ok(lm.forward_embeds(&embeds, mask.as_ref(), &mut lm.new_cache(), train)?)
        // [B, Q + T, V]
    }

    /// The mean next-token loss over the target tokens of `b`.
    pub fn loss(&self, b: &Stage2Batch, train: bool) -> Result<Tensor> {
        let logits = self.logits(&b.pixel_values, &b.input_ids, &b.attention_mask, train)?;
        lm_loss(&logits, &b.input_ids, &b.targets, 0.0)
    }

    /// The exported `Blip2ForConditionalGeneration`'s tensors: exactly what the
    /// inference model loads (OPT's tied head is not stored, as `save_pretrained` does).
    pub fn export_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        let rec = Recorder::new(self.vars.clone());
        Blip2ForConditionalGeneration::new(&self.cfg, rec.var_builder(&Device::Cpu))?;
        Ok(rec.take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_and_eos_are_targets() {
        let (ids, targets) = stage2_row(9, 3, &[2, 40, 41], &[50, 51], 3);
        assert_eq!(ids, vec![9, 9, 9, 2, 40, 41, 50, 51, 3]);
        assert_eq!(targets, vec![0, 0, 0, 0, 0, 0, 1, 1, 1]);
    }

    #[test]
    fn frozen_parts_are_the_tower_and_the_language_model() {
        assert!(is_frozen("vision_model.embeddings.patch_embedding.weight"));
        assert!(is_frozen(
            "language_model.model.decoder.embed_tokens.weight"
        ));
        assert!(!is_frozen("qformer.layernorm.weight"));
        assert!(!is_frozen("query_tokens"));
        assert!(!is_frozen("language_projection.weight"));
    }
}
