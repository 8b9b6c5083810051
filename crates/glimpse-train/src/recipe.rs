//! Training recipes (TOML): the model config, the data, the schedule, the losses and
//! where the run lives. Paths are relative to the directory the command runs in.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::attributes::Tower;
use crate::blip::BlipLossConfig;
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    Clip,
    /// BLIP pretraining: ITC + ITM + LM.
    Blip,
    /// BLIP VQA fine-tuning (`BlipForQuestionAnswering`) on the samples' `qa` pairs.
    BlipVqa,
    /// Supervised pretraining of a vision tower on the samples' attribute records
    /// (see [`crate::attributes`]); a `blip` or `clip` recipe starts from it with
    /// `model.init_vision`.
    VisionAttributes,
    /// A text-only causal language model (OPT or LLaMA layout, from the config's
    /// `model_type`) on a JSONL corpus (see [`crate::lm`], [`crate::corpus`]).
    Lm,
    /// BLIP-2 stage 1: Q-Former representation learning (ITC + ITM + ITG) from a
    /// frozen image encoder (see [`crate::blip2`]); exported as
    /// `Blip2ForImageTextRetrieval`.
    Blip2Stage1,
    /// BLIP-2 stage 2: generative learning; the stage-1 Q-Former's queries, projected,
    /// are a soft prompt for a frozen OPT (see [`crate::blip2::stage2`]); exported as
    /// `Blip2ForConditionalGeneration`.
    Blip2Stage2,
    /// LLaVA stage 1, feature alignment: only the projector trains, between a frozen
    /// CLIP-layout tower (`model.vision_from`) and a frozen LLaMA (`model.lm_from`), on
    /// captions with the "plain" template (see [`crate::llava`]).
    LlavaStage1,
    /// LLaVA stage 2, visual instruction tuning from a stage-1 run or export
    /// (`model.init`): projector and language model train on conversations, the loss
    /// on the assistant's tokens only; exported as `LlavaForConditionalGeneration`.
    LlavaStage2,
}

/// LLaVA's projector from vision features to the language model's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projector {
    /// LLaVA-1.5: `linear_2(gelu(linear_1(x)))`; the only one
    /// `LlavaForConditionalGeneration` holds, so the only one that exports.
    #[default]
    Mlp2xGelu,
    /// LLaVA-1: one linear layer (trains and validates; not exportable).
    Linear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub kind: ModelKind,
    /// A Hugging Face `config.json` (`CLIPConfig` / `BlipConfig`). Its vocabulary size
    /// and special-token ids are set from the tokenizer.
    pub config: PathBuf,
    #[serde(default)]
    pub seed: u64,
    /// Start from this run (directory or checkpoint) instead of random weights:
    /// `blip_vqa` starts from a `blip` pretraining run and uses its tokenizer and
    /// config. A `blip` run may also start from an exported model directory
    /// (`retrieval/` or `caption/`): it takes that model's tokenizer and config and the
    /// tensors it holds, the others keeping their initial values.
    pub init: Option<PathBuf>,
    /// Start the vision tower (`vision_model.*`) from this `vision_attributes` run
    /// (directory or checkpoint); `clip` and `blip` only.
    pub init_vision: Option<PathBuf>,
    /// `vision_attributes` only: the layout of the tower it trains, the BLIP (default)
    /// or the CLIP one, read from the BLIP or CLIP `config`.
    pub tower: Option<Tower>,
    /// Standard deviation of the initial weights.
    #[serde(default = "default_init_std")]
    pub init_std: f64,
    /// Factor on the vision tower's initial 2-D sine-cosine position embeddings (each
    /// row has norm `sqrt(hidden / 2)` at 1). Below 1 the patch content carries more
    /// of a token at the start; CLIP's tower, whose `pre_layrnorm` normalises position
    /// plus content together, learned shapes with 0.25 (see the README).
    #[serde(default = "one_f64")]
    pub position_init_scale: f64,
    /// `blip2_stage1`: the frozen image encoder, the `vision_model.*` of this BLIP
    /// model directory (e.g. `models/blip-synth/retrieval`). `blip2_stage2`: optional,
    /// the tower otherwise comes with the Q-Former.
    pub vision_from: Option<PathBuf>,
    /// `blip2_stage1`: start the Q-Former from the BERT-layout text encoder of this
    /// `BlipForImageTextRetrieval` directory; without it the Q-Former starts random.
    /// `blip2_stage2` (required): the stage-1 run, checkpoint or export whose queries,
    /// Q-Former and frozen tower it starts from.
    pub qformer_from: Option<PathBuf>,
    /// `llava_stage1` (a `LlamaForCausalLM` directory, e.g. `models/llama-lm-synth`) and
    /// `blip2_stage2` (required; an `OPTForCausalLM` directory, e.g.
    /// `models/opt-lm-synth`): the frozen language model.
    pub lm_from: Option<PathBuf>,
    /// `llava_stage1` and `llava_stage2`: the projector (`mlp2x_gelu` by default).
    pub projector: Option<Projector>,
}

fn default_init_std() -> f64 {
    0.02
}

/// Which text of a sample trains the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TextChoice {
    /// The `caption` field (or the first of `captions`).
    Caption,
    /// One of `captions`, drawn per sample and epoch (paraphrase augmentation); the
    /// `caption` field where there is no list.
    RandomCaption,
    /// Data bootstrapped by `glimpse capfilt`: one of the texts its filter kept
    /// (`capfilt.texts`: the web caption and the synthetic ones), drawn per sample and
    /// epoch; a sample whose texts were all removed is skipped.
    Capfilt,
    /// BLIP's "filter only" ablation: the web caption where the filter kept it, no
    /// synthetic caption.
    CapfiltFilterOnly,
    /// BLIP's "captioner only" ablation: one of the web caption and every synthetic
    /// caption, unfiltered.
    CapfiltCaptionerOnly,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// WebDataset shards (a directory, a glob or a `.tar`), a JSONL or a COCO file.
    pub train: String,
    pub val: Option<String>,
    #[serde(default = "default_text")]
    pub text: TextChoice,
    #[serde(default = "default_max_text_len")]
    pub max_text_len: usize,
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// An existing `tokenizer.json`; without it a WordPiece vocabulary of the
    /// synthetic world is built.
    pub tokenizer: Option<PathBuf>,
    /// `blip` only: the LM reads each training caption after this prompt, whose
    /// tokens it is not taught to predict, as BLIP fine-tunes its captioner ("a
    /// picture of "). ITC and ITM read the caption alone.
    pub caption_prompt: Option<String>,
    /// `blip2_stage2` only: the share of training samples that read one of their
    /// question/answer pairs in BLIP-2's VQA prompt ("Question: {q} Answer:", not
    /// scored) instead of a caption.
    #[serde(default)]
    pub qa_share: f64,
    /// `blip_vqa` only: training samples that have a question containing this text
    /// (e.g. "how many") train on one of those with probability `qa_prefer_share`
    /// instead of a uniformly drawn question, to weight a question type up.
    pub qa_prefer: Option<String>,
    #[serde(default)]
    pub qa_prefer_share: f64,
}

fn default_text() -> TextChoice {
    TextChoice::RandomCaption
}
fn default_max_text_len() -> usize {
    32
}
fn default_shuffle_buffer() -> usize {
    2000
}
fn default_workers() -> usize {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    pub batch_size: usize,
    /// Micro-batches per update (gradient accumulation).
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Passes over the training data; or give `max_steps`.
    pub epochs: Option<u64>,
    pub max_steps: Option<u64>,
    pub lr: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    /// Global gradient-norm clip; 0 disables.
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// Multiplies the learning rate of the vision tower (`vision_model.*`), e.g. below
    /// 1 for a tower started from `model.init_vision`.
    #[serde(default = "one_f64")]
    pub vision_lr_scale: f64,
}

fn one_f64() -> f64 {
    1.0
}

fn one() -> usize {
    1
}
fn default_min_lr_ratio() -> f64 {
    0.05
}
fn default_wd() -> f64 {
    0.05
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_clip() -> f64 {
    1.0
}
fn default_precision() -> Precision {
    Precision::F32
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub out: PathBuf,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Validate every N updates (0: only at the end).
    #[serde(default)]
    pub val_every: u64,
    /// Validation samples (the first ones of the val split, in file order).
    #[serde(default = "default_val_samples")]
    pub val_samples: usize,
    #[serde(default = "default_ckpt_every")]
    pub checkpoint_every: u64,
    /// Checkpoints kept on disk (the newest).
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
}

fn default_log_every() -> u64 {
    10
}
fn default_val_samples() -> usize {
    256
}
fn default_ckpt_every() -> u64 {
    100
}
fn default_keep() -> usize {
    2
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub model: ModelSection,
    pub data: DataSection,
    pub optim: OptimSection,
    /// BLIP only.
    #[serde(default)]
    pub loss: BlipLossConfig,
    pub run: RunSection,
}

impl Recipe {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io_ctx(path, e))?;
        Self::from_toml(&text, path)
    }

    pub fn from_toml(text: &str, origin: &Path) -> Result<Self> {
        let r: Recipe = toml::from_str(text).map_err(|e| Error::Recipe {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        r.validate(origin)?;
        Ok(r)
    }

    pub fn validate(&self, origin: &Path) -> Result<()> {
        let bad = |m: String| {
            Err(Error::Recipe {
                path: origin.to_path_buf(),
                message: m,
            })
        };
        let o = &self.optim;
        if o.batch_size == 0 {
            return bad("optim.batch_size must be at least 1".into());
        }
        if o.accumulate == 0 {
            return bad("optim.accumulate must be at least 1".into());
        }
        if o.epochs.is_none() && o.max_steps.is_none() {
            return bad("give optim.epochs or optim.max_steps".into());
        }
        // A run of no update would "finish" reporting a NaN loss.
        if o.max_steps == Some(0) {
            return bad("optim.max_steps must be at least 1".into());
        }
        if o.epochs == Some(0) {
            return bad("optim.epochs must be at least 1".into());
        }
        for (key, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(format!("{key} = {v} is outside [0, 1)"));
            }
        }
        if !(o.eps > 0.0 && o.eps.is_finite()) {
            return bad(format!("optim.eps = {} must be positive", o.eps));
        }
        for (key, v) in [
            ("optim.weight_decay", o.weight_decay),
            ("optim.max_grad_norm", o.max_grad_norm),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return bad(format!("{key} = {v} must be 0 or more"));
            }
        }
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad(format!("optim.lr = {} must be positive", o.lr));
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return bad(format!(
                "optim.min_lr_ratio = {} is outside [0, 1]",
                o.min_lr_ratio
            ));
        }
        if !(o.vision_lr_scale >= 0.0 && o.vision_lr_scale.is_finite()) {
            return bad(format!(
                "optim.vision_lr_scale = {} must be 0 or more",
                o.vision_lr_scale
            ));
        }
        let ps = self.model.position_init_scale;
        if !(ps > 0.0 && ps.is_finite()) {
            return bad(format!("model.position_init_scale = {ps} must be positive"));
        }
        if self.data.max_text_len < 3 {
            return bad("data.max_text_len must be at least 3".into());
        }
        if self.model.kind == ModelKind::Blip {
            let q = self.loss.queue_size;
            if q == 0 || !q.is_multiple_of(o.batch_size) {
                return bad(format!(
                    "loss.queue_size = {q} must be a positive multiple of optim.batch_size = {}",
                    o.batch_size
                ));
            }
            if !(0.0..=1.0).contains(&self.loss.alpha) || !(0.0..1.0).contains(&self.loss.momentum)
            {
                return bad("loss.alpha must be in [0, 1] and loss.momentum in [0, 1)".into());
            }
        }
        let kind = self.model.kind;
        if self.model.tower.is_some() && kind != ModelKind::VisionAttributes {
            return bad("model.tower applies to vision_attributes recipes only".into());
        }
        if self.model.init_vision.is_some() && !matches!(kind, ModelKind::Clip | ModelKind::Blip) {
            return bad("model.init_vision applies to clip and blip recipes only".into());
        }
        if kind == ModelKind::VisionAttributes && self.model.init.is_some() {
            return bad("model.init does not apply to vision_attributes recipes".into());
        }
        if kind == ModelKind::VisionAttributes && self.loss.hard_negative_captions {
            return bad(
                "loss.hard_negative_captions applies to clip and blip pretraining, not vision_attributes"
                    .into(),
            );
        }
        if kind == ModelKind::Lm && self.loss.hard_negative_captions {
            return bad(
                "loss.hard_negative_captions applies to clip and blip pretraining, not lm".into(),
            );
        }
        if self.model.kind == ModelKind::BlipVqa && self.loss.hard_negative_captions {
            return bad(
                "loss.hard_negative_captions applies to clip and blip pretraining, not blip_vqa"
                    .into(),
            );
        }
        if let Some(p) = &self.data.caption_prompt {
            if !matches!(kind, ModelKind::Blip | ModelKind::Blip2Stage2) {
                return bad(
                    "data.caption_prompt applies to blip and blip2_stage2 recipes only".into(),
                );
            }
            if p.trim().is_empty() {
                return bad("data.caption_prompt is empty; leave it out for no prompt".into());
            }
        }
        if kind == ModelKind::Blip2Stage1 {
            if self.model.vision_from.is_none() {
                return bad(
                    "blip2_stage1 needs model.vision_from (a BLIP model directory whose vision tower is frozen)"
                        .into(),
                );
            }
            if self.model.init.is_some() || self.loss.hard_negative_captions {
                return bad(
                    "model.init and loss.hard_negative_captions do not apply to blip2_stage1"
                        .into(),
                );
            }
            if o.batch_size < 2 {
                return bad(
                    "blip2_stage1 needs optim.batch_size of at least 2 (in-batch negatives)".into(),
                );
            }
        } else if kind == ModelKind::Blip2Stage2 {
            if self.model.qformer_from.is_none() {
                return bad(
                    "blip2_stage2 needs model.qformer_from (the blip2_stage1 run or export whose Q-Former it trains on)"
                        .into(),
                );
            }
            if self.model.lm_from.is_none() {
                return bad(
                    "blip2_stage2 needs model.lm_from (the frozen language model, an OPTForCausalLM directory such as models/opt-lm-synth)"
                        .into(),
                );
            }
            if self.model.init.is_some() || self.loss.hard_negative_captions {
                return bad(
                    "model.init and loss.hard_negative_captions do not apply to blip2_stage2"
                        .into(),
                );
            }
        } else if self.model.qformer_from.is_some()
            || (self.model.vision_from.is_some() && kind != ModelKind::LlavaStage1)
        {
            return bad(
                "model.vision_from applies to blip2_stage1 and llava_stage1 recipes, \
                 model.qformer_from to blip2_stage1 and blip2_stage2"
                    .into(),
            );
        }
        if kind != ModelKind::Blip2Stage2 {
            crate::llava::validate_recipe(self).or_else(bad)?;
        } else if self.model.projector.is_some() {
            return bad(
                "model.projector applies to llava_stage1 and llava_stage2; blip2_stage2's \
                 projection is the fully connected language_projection"
                    .into(),
            );
        }
        let qa = self.data.qa_share;
        if !(0.0..=1.0).contains(&qa) {
            return bad(format!("data.qa_share = {qa} is outside [0, 1]"));
        }
        if qa > 0.0 && kind != ModelKind::Blip2Stage2 {
            return bad("data.qa_share applies to blip2_stage2 recipes only".into());
        }
        let run = &self.run;
        for (key, v) in [
            ("run.checkpoint_every", run.checkpoint_every),
            ("run.log_every", run.log_every),
            ("run.keep_checkpoints", run.keep_checkpoints as u64),
        ] {
            if v == 0 {
                return bad(format!("{key} must be at least 1"));
            }
        }
        if self.data.val.is_some() && run.val_samples == 0 {
            return bad("run.val_samples must be at least 1 when data.val is given".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = r#"
[model]
kind = "blip"
config = "c.json"
[data]
train = "d/train"
[optim]
batch_size = 8
epochs = 1
lr = 1e-3
[loss]
queue_size = 64
[run]
out = "runs/x"
"#;

    #[test]
    fn parses_with_defaults() {
        let r = Recipe::from_toml(MIN, Path::new("r.toml")).unwrap();
        assert_eq!(r.optim.accumulate, 1);
        assert_eq!(r.loss.queue_size, 64);
        assert_eq!(r.loss.momentum, 0.995);
        assert_eq!(r.data.text, TextChoice::RandomCaption);
        assert_eq!(r.model.position_init_scale, 1.0);
    }

    #[test]
    fn rejects_bad_values_naming_them() {
        let e = Recipe::from_toml(
            &MIN.replace("queue_size = 64", "queue_size = 60"),
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("queue_size") && e.contains("r.toml"), "{e}");
        let e = Recipe::from_toml(
            &MIN.replace("lr = 1e-3", "lr = 1e-3\nlrr = 2"),
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("lrr"), "{e}");
        let e = Recipe::from_toml(
            &MIN.replace("kind = \"blip\"", "kind = \"blip_vqa\"")
                .replace(
                    "queue_size = 64",
                    "queue_size = 64\nhard_negative_captions = true",
                ),
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("hard_negative_captions"), "{e}");
        let e = Recipe::from_toml(
            &MIN.replace(
                "config = \"c.json\"",
                "config = \"c.json\"\ntower = \"clip\"",
            ),
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("model.tower"), "{e}");
        let e = Recipe::from_toml(
            &MIN.replace(
                "kind = \"blip\"",
                "kind = \"vision_attributes\"\ninit_vision = \"runs/v\"",
            ),
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("init_vision"), "{e}");
        for bad in ["0.0", "-0.5", "nan"] {
            let e = Recipe::from_toml(
                &MIN.replace(
                    "config = \"c.json\"",
                    &format!("config = \"c.json\"\nposition_init_scale = {bad}"),
                ),
                Path::new("r.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("model.position_init_scale"), "{bad}: {e}");
        }
    }

    #[test]
    fn max_steps_zero_is_refused() {
        for (from, to, key) in [
            ("epochs = 1", "max_steps = 0", "optim.max_steps"),
            ("epochs = 1", "epochs = 0", "optim.epochs"),
            ("batch_size = 8", "batch_size = 0", "optim.batch_size"),
            (
                "epochs = 1",
                "epochs = 1\naccumulate = 0",
                "optim.accumulate",
            ),
            (
                "out = \"runs/x\"",
                "out = \"runs/x\"\ncheckpoint_every = 0",
                "run.checkpoint_every",
            ),
            (
                "out = \"runs/x\"",
                "out = \"runs/x\"\nlog_every = 0",
                "run.log_every",
            ),
            (
                "out = \"runs/x\"",
                "out = \"runs/x\"\nkeep_checkpoints = 0",
                "run.keep_checkpoints",
            ),
            (
                "train = \"d/train\"",
                "train = \"d/train\"\nval = \"d/val\"",
                "run.val_samples",
            ),
            ("epochs = 1", "epochs = 1\nbeta2 = 1.0", "optim.beta2"),
            ("epochs = 1", "epochs = 1\neps = 0.0", "optim.eps"),
            (
                "epochs = 1",
                "epochs = 1\nmax_grad_norm = -1.0",
                "optim.max_grad_norm",
            ),
        ] {
            let mut text = MIN.replace(from, to);
            if key == "run.val_samples" {
                text = text.replace("out = \"runs/x\"", "out = \"runs/x\"\nval_samples = 0");
            }
            let e = Recipe::from_toml(&text, Path::new("r.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("r.toml"), "{key}: {e}");
        }
    }

    #[test]
    fn caption_prompt_is_blip_only_and_not_empty() {
        let r = Recipe::from_toml(
            &MIN.replace(
                "train = \"d/train\"",
                "train = \"d/train\"\ncaption_prompt = \"a picture of \"",
            ),
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(r.data.caption_prompt.as_deref(), Some("a picture of "));
        assert_eq!(
            Recipe::from_toml(MIN, Path::new("r.toml"))
                .unwrap()
                .data
                .caption_prompt,
            None
        );
        for (kind, prompt) in [("blip", "  "), ("blip_vqa", "a picture of")] {
            let e = Recipe::from_toml(
                &MIN.replace("kind = \"blip\"", &format!("kind = \"{kind}\""))
                    .replace(
                        "train = \"d/train\"",
                        &format!("train = \"d/train\"\ncaption_prompt = \"{prompt}\""),
                    ),
                Path::new("r.toml"),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("data.caption_prompt"), "{kind}: {e}");
        }
    }

    #[test]
    fn blip2_stage1_needs_a_frozen_tower_and_owns_its_fields() {
        let stage1 = MIN.replace("kind = \"blip\"", "kind = \"blip2_stage1\"");
        let e = Recipe::from_toml(&stage1, Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.vision_from"), "{e}");
        let with_tower = stage1.replace(
            "config = \"c.json\"",
            "config = \"c.json\"\nvision_from = \"m/blip\"\nqformer_from = \"m/blip\"",
        );
        let r = Recipe::from_toml(&with_tower, Path::new("r.toml")).unwrap();
        assert_eq!(r.model.kind, ModelKind::Blip2Stage1);
        assert_eq!(r.model.qformer_from, Some(PathBuf::from("m/blip")));
        let e = Recipe::from_toml(
            &with_tower.replace("batch_size = 8", "batch_size = 1"),
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("optim.batch_size"), "{e}");
        let e = Recipe::from_toml(
            &MIN.replace(
                "config = \"c.json\"",
                "config = \"c.json\"\nqformer_from = \"m/blip\"",
            ),
            Path::new("r.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("qformer_from"), "{e}");
    }

    #[test]
    fn blip2_stage2_needs_its_sources_and_owns_its_fields() {
        let stage2 = MIN.replace("kind = \"blip\"", "kind = \"blip2_stage2\"");
        let with = |model: &str, data: &str| {
            stage2
                .replace(
                    "config = \"c.json\"",
                    &format!("config = \"c.json\"\n{model}"),
                )
                .replace(
                    "train = \"d/train\"",
                    &format!("train = \"d/train\"\n{data}"),
                )
        };
        let err = |text: String| {
            Recipe::from_toml(&text, Path::new("r.toml"))
                .unwrap_err()
                .to_string()
        };
        let both = "qformer_from = \"runs/s1\"\nlm_from = \"models/opt\"";
        let r = Recipe::from_toml(&with(both, "qa_share = 0.5"), Path::new("r.toml")).unwrap();
        assert_eq!(r.model.kind, ModelKind::Blip2Stage2);
        assert_eq!(r.data.qa_share, 0.5);
        let e = err(with("qformer_from = \"runs/s1\"", ""));
        assert!(e.contains("model.lm_from"), "{e}");
        let e = err(with("lm_from = \"models/opt\"", ""));
        assert!(e.contains("model.qformer_from"), "{e}");
        let e = err(with(both, "qa_share = 1.5"));
        assert!(e.contains("data.qa_share"), "{e}");
        let e = err(MIN.replace(
            "config = \"c.json\"",
            "config = \"c.json\"\nlm_from = \"m\"",
        ));
        assert!(e.contains("model.lm_from"), "{e}");
        let e = err(MIN.replace("train = \"d/train\"", "train = \"d/train\"\nqa_share = 0.5"));
        assert!(e.contains("data.qa_share"), "{e}");
    }

    #[test]
    fn vision_attributes_recipe_parses() {
        let r = Recipe::from_toml(
            &MIN.replace(
                "kind = \"blip\"",
                "kind = \"vision_attributes\"\ntower = \"clip\"",
            ),
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(r.model.kind, ModelKind::VisionAttributes);
        assert_eq!(r.model.tower, Some(Tower::Clip));
        let r = Recipe::from_toml(
            &MIN.replace(
                "config = \"c.json\"",
                "config = \"c.json\"\ninit_vision = \"runs/v\"",
            ),
            Path::new("r.toml"),
        )
        .unwrap();
        assert_eq!(r.model.init_vision, Some(PathBuf::from("runs/v")));
    }
}
