//! LLaVA training (<https://arxiv.org/abs/2304.08485>, LLaVA-1.5
//! <https://arxiv.org/abs/2310.03744>, `scripts/v1_5/pretrain.sh` and `finetune.sh`):
//!
//! * `llava_stage1`, feature alignment: the CLIP-layout tower and the LLaMA language
//!   model are frozen; only the projector (`mlp2x_gelu` or LLaVA-1's `linear`) trains,
//!   on captions in the "plain" template ([`data::plain_ids`]).
//! * `llava_stage2`, visual instruction tuning: from a stage-1 run or export, the
//!   projector and the whole language model train (a full fine-tune, as LLaVA-1.5's
//!   `finetune.sh`; its LoRA variant is not built), the tower stays frozen, on
//!   conversations in the chat template with the loss on the assistant's tokens only
//!   ([`data::conversation_ids`]).
//!
//! The model ([`LlavaTrain`]) is the inference modules of `glimpse-models` on one
//! [`VarMap`] named as the hub's `LlavaForConditionalGeneration` checkpoint
//! (`vision_tower.vision_model.*`, `multi_modal_projector.*`,
//! `language_model.model.*`, `language_model.lm_head.*`), with the image features
//! spliced in by [`embed_with_images`], the function inference uses. The tower runs
//! without gradient (its output is detached). The run directory ([`files`]) is a
//! complete model directory but for the weights, which `glimpse export` adds.

pub mod data;
pub mod files;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarMap;
use glimpse_data::dataset::Example;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::llava::{
    embed_with_images, FeatureSelect, LlavaConfig, LlavaForConditionalGeneration,
    LlavaMultiModalProjector, LlavaProcessor,
};
use glimpse_nn::layers::{linear_b, Linear, Module};
use glimpse_nn::llama::LlamaForCausalLM;
use glimpse_nn::vit::VisionTransformer;
use serde_json::Value;

pub use data::{LlavaSample, MAX_TURNS};
pub use files::validate_recipe;

use crate::losses::lm_loss;
use crate::objective::{Losses, Objective, Split, Step};
use crate::params::{init_weights, load_into, sorted_vars, Recorder, SharedVars};
use crate::recipe::{ModelKind, Projector, Recipe};
use crate::samples::{pick_text, Inputs};
use crate::trainer::load_tensors;
use crate::{Error, Result};

/// Checkpoint prefixes (hub layout).
pub const VISION_PREFIX: &str = "vision_tower.vision_model";
pub const PROJECTOR_PREFIX: &str = "multi_modal_projector";
pub const LM_PREFIX: &str = "language_model.model";
pub const HEAD_PREFIX: &str = "language_model.lm_head";

/// The projector as built.
#[derive(Debug, Clone)]
pub enum ProjectorNet {
    Mlp(LlavaMultiModalProjector),
    Linear(Linear),
}

impl ProjectorNet {
    /// # Shapes
    /// * `[b, n, vision_hidden]` -> `[b, n, text_hidden]`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            ProjectorNet::Mlp(m) => m.forward(x)?,
            ProjectorNet::Linear(l) => l.forward(x)?,
        })
    }
}

/// LLaVA on trainable variables.
pub struct LlavaTrain {
    pub vars: SharedVars,
    pub vision_tower: VisionTransformer,
    pub projector: ProjectorNet,
    pub language_model: LlamaForCausalLM,
    pub config: LlavaConfig,
    pub projector_kind: Projector,
    feature_layer: i64,
}

fn identity(name: &str) -> String {
    name.to_string()
}

impl LlavaTrain {
    /// Fresh variables (initialise or load them afterwards).
    pub fn new(config: &LlavaConfig, projector_kind: Projector, device: &Device) -> Result<Self> {
        Self::with_dtype(config, projector_kind, DType::F32, device)
    }

    /// As [`Self::new`] with variables of `dtype` (f32 trains; f64 is for the
    /// gradient-parity test against a float64 reference).
    pub fn with_dtype(
        config: &LlavaConfig,
        projector_kind: Projector,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let layers = config.vision_feature_layer.indices();
        let [feature_layer] = layers.as_slice() else {
            return Err(Error::Train(format!(
                "vision_feature_layer {layers:?}: training reads one layer (LLaVA-1.5: -2)"
            )));
        };
        let vars = SharedVars::new(VarMap::new(), identity);
        let vb = vars.var_builder_dtype(dtype, device);
        let vision_tower = VisionTransformer::new(&config.vision(), vb.pp(VISION_PREFIX))?;
        let pvb = vb.pp(PROJECTOR_PREFIX);
        let projector = match projector_kind {
            Projector::Mlp2xGelu => ProjectorNet::Mlp(LlavaMultiModalProjector::new(config, pvb)?),
            Projector::Linear => ProjectorNet::Linear(linear_b(
                config.vision_config.hidden_size,
                config.text_config.hidden_size,
                config.multimodal_projector_bias,
                pvb.pp("linear_1"),
            )?),
        };
        let language_model =
            LlamaForCausalLM::new_with_head(&config.text(), vb.pp(LM_PREFIX), vb.pp(HEAD_PREFIX))?;
        Ok(Self {
            vars,
            vision_tower,
            projector,
            language_model,
            config: config.clone(),
            projector_kind,
            feature_layer: *feature_layer,
        })
    }

    /// The frozen tower's selected hidden states (detached) through the projector.
    ///
    /// # Shapes
    /// * `pixel_values`: `[b, 3, S, S]` -> `[b, n, text_hidden]`
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let h = self
            .vision_tower
            .hidden_state(pixel_values, self.feature_layer, false)?
            .detach(); // [b, N+1, dv]
        let h = match self.config.vision_feature_select_strategy {
            FeatureSelect::Default => h.narrow(1, 1, h.dim(1)? - 1)?, // [b, N, dv]
            FeatureSelect::Full => h,
        };
        self.projector.forward(&h) // [b, n, d]
    }

    /// # Shapes
    /// * `pixel_values`: `[b, 3, S, S]`; `input_ids`, `attention_mask`: `[b, t]` u32
    /// * returns `[b, t, vocab]`
    pub fn logits(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let features = self.image_features(pixel_values)?; // [b, n, d]
        let embeds = embed_with_images(
            &self.language_model,
            self.config.image_token_index,
            input_ids,
            Some(&features),
        )?; // [b, t, d]
        let mut cache = self.language_model.new_cache();
        Ok(self
            .language_model
            .forward_embeds(&embeds, Some(attention_mask), &mut cache, train)?) // [b, t, V]
    }

    /// The mean loss over the target tokens of `b`.
    pub fn loss(&self, b: &LlavaBatch, train: bool) -> Result<Tensor> {
        let logits = self.logits(&b.pixel_values, &b.input_ids, &b.attention_mask, train)?;
        lm_loss(&logits, &b.input_ids, &b.targets, 0.0)
    }

    /// The `LlavaForConditionalGeneration` tensors (hub layout), exactly those the
    /// inference model loads. Only the two-layer projector has a reference class.
    pub fn export_tensors(&self) -> Result<BTreeMap<String, Tensor>> {
        if self.projector_kind == Projector::Linear {
            return Err(Error::Train(
                "a run with projector = \"linear\" has no LlavaForConditionalGeneration \
                 layout (its projector is always two layers): train with mlp2x_gelu to export"
                    .into(),
            ));
        }
        let rec = Recorder::new(self.vars.clone());
        LlavaForConditionalGeneration::new(&self.config, rec.var_builder(&Device::Cpu))
            .map_err(|e| Error::Train(format!("export: {e}")))?;
        Ok(rec.take())
    }

    /// Copies the frozen tower (`vision_model.*` of a CLIP directory) and language
    /// model (`model.*`, `lm_head.weight` of a `LlamaForCausalLM` directory) in. The
    /// embedding and head gain the `<image>` row as the mean of the others (the row
    /// `resize_token_embeddings` adds): its logit is the mean logit, never the greedy
    /// choice.
    pub fn load_parts(&self, vision_dir: &Path, lm_dir: &Path) -> Result<()> {
        let vision = load_tensors(&vision_dir.join("model.safetensors"), &Device::Cpu)?;
        let lm = load_tensors(&lm_dir.join("model.safetensors"), &Device::Cpu)?;
        for (name, var) in sorted_vars(&self.vars.map) {
            let (src, from, dir) = if let Some(rest) = name.strip_prefix("vision_tower.") {
                (rest.to_string(), &vision, vision_dir)
            } else if let Some(rest) = name.strip_prefix("language_model.") {
                (rest.to_string(), &lm, lm_dir)
            } else {
                continue;
            };
            let t =
                from.get(&src).ok_or_else(|| {
                    Error::Train(format!(
                    "{}: no {src} for the frozen {} (a CLIP tower and a LLaMA model are needed)",
                    dir.display(),
                    if dir == vision_dir { "vision tower" } else { "language model" }
                ))
                })?;
            let t = match (t.dims(), var.dims()) {
                ([v, d], [v1, d1]) if *v1 == v + 1 && d == d1 => {
                    let mean = t.mean_keepdim(0)?; // [1, d]
                    Tensor::cat(&[t, &mean], 0)?
                }
                _ => t.clone(),
            };
            if t.shape() != var.shape() {
                return Err(Error::Train(format!(
                    "{}: {src} is {:?}, the LLaVA model's {name} is {:?} (a width mismatch \
                     between the model directory and the run's config)",
                    dir.display(),
                    t.shape(),
                    var.shape()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }
}

/// Right-padded sequences with their images.
pub struct LlavaBatch {
    /// `[B, 3, S, S]`
    pub pixel_values: Tensor,
    /// `[B, T]` u32
    pub input_ids: Tensor,
    /// `[B, T]` u32
    pub attention_mask: Tensor,
    /// `[B, T]` u32: 1 where the token is a target.
    pub targets: Tensor,
}

/// Both LLaVA stages as a training [`Objective`].
pub struct LlavaObjective {
    pub model: LlavaTrain,
    pub processor: LlavaProcessor,
    stage: ModelKind,
    inputs: Inputs,
    bos: u32,
    eos: u32,
}

/// The run's model directory as [`ModelFiles`] (it has no weights yet).
fn run_files(dir: &Path) -> ModelFiles {
    ModelFiles {
        dir: dir.to_path_buf(),
        config: dir.join("config.json"),
        weights: Vec::new(),
        tokenizer: Some(dir.join("tokenizer.json")),
        preprocessor: None,
    }
}

impl LlavaObjective {
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let files = run_files(&inputs.files.dir);
        let bad = |e: glimpse_models::Error| Error::Train(e.to_string());
        let config = glimpse_models::llava::read_config(&files).map_err(bad)?;
        let processor = LlavaProcessor::load(&files, &config).map_err(bad)?;
        let kind = recipe.model.projector.unwrap_or_default();
        let marked_linear = inputs.files.config["glimpse_projector"] == "linear";
        if marked_linear != (kind == Projector::Linear) {
            return Err(Error::Recipe {
                path: "recipe".into(),
                message: format!(
                    "model.projector = {kind:?} but the model in {} was trained with the {} projector",
                    inputs.files.dir.display(),
                    if marked_linear { "linear" } else { "mlp2x_gelu" }
                ),
            });
        }
        let model = LlavaTrain::new(&config, kind, &inputs.device)?;
        let m = &recipe.model;
        init_weights(&model.vars.map, m.seed, m.init_std, 1.0)?;
        if recipe.model.kind == ModelKind::LlavaStage1 {
            let (v, l) = (m.vision_from.as_deref(), m.lm_from.as_deref());
            model.load_parts(v.expect("validated"), l.expect("validated"))?;
        }
        let t = &config.text_config;
        let id = |v: Option<u32>, key: &str| {
            v.ok_or_else(|| Error::Train(format!("model/config.json: no text_config.{key}")))
        };
        let bos = id(t.bos_token_id, "bos_token_id")?;
        let eos = id(config.eos_token_ids().first().copied(), "eos_token_id")?;
        Ok(Self {
            model,
            processor,
            stage: recipe.model.kind,
            inputs,
            bos,
            eos,
        })
    }

    /// Loss per target token and next-token accuracy over `batches`.
    fn metrics(&self, batches: &[LlavaBatch]) -> Result<Value> {
        let (mut nll, mut right, mut n) = (0.0, 0.0, 0.0);
        for b in batches {
            let logits =
                self.model
                    .logits(&b.pixel_values, &b.input_ids, &b.attention_mask, false)?; // [b, t, v]
            let t = logits.dim(1)?;
            let logp = candle_nn::ops::log_softmax(&logits.narrow(1, 0, t - 1)?, D::Minus1)?; // [b, t-1, v]
            let target = b.input_ids.narrow(1, 1, t - 1)?.contiguous()?; // [b, t-1]
            let mask = b.targets.narrow(1, 1, t - 1)?.to_dtype(DType::F32)?; // [b, t-1]
            let picked = logp
                .contiguous()?
                .gather(&target.unsqueeze(2)?, 2)?
                .squeeze(2)?; // [b, t-1]
            let hit = logp.argmax(D::Minus1)?.eq(&target)?.to_dtype(DType::F32)?;
            nll -= (picked * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
            right += (hit * &mask)?.sum_all()?.to_scalar::<f32>()? as f64;
            n += mask.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(serde_json::json!({
            "loss": nll / n.max(1.0),
            "accuracy": right / n.max(1.0),
            "tokens": n as u64,
        }))
    }
}

impl Objective for LlavaObjective {
    type Sample = LlavaSample;
    type Batch = LlavaBatch;

    fn sample(&self, example: Example, split: Split) -> std::result::Result<LlavaSample, String> {
        let epoch = match split {
            Split::Train { epoch } => Some(epoch),
            Split::Validation => None,
        };
        let seed = self.inputs.seed;
        let max = self.inputs.max_text_len;
        if self.stage == ModelKind::LlavaStage2 {
            return data::conversation_sample(&self.processor, example, seed, epoch, max);
        }
        let choice = match epoch {
            Some(_) => self.inputs.text,
            None => crate::recipe::TextChoice::Caption,
        };
        let text = pick_text(
            &example.meta,
            &example.key,
            choice,
            seed,
            epoch.unwrap_or(0),
        )
        .ok_or_else(|| format!("sample {}: no caption", example.key))?;
        let (ids, targets) = data::plain_ids(&self.processor, self.bos, self.eos, &text, max)
            .map_err(|e| format!("sample {}: {e}", example.key))?;
        Ok(LlavaSample {
            example,
            ids,
            targets,
        })
    }

    fn batch(&self, samples: &[LlavaSample], _split: Split) -> Result<LlavaBatch> {
        let images: Vec<image::RgbImage> =
            samples.iter().map(|s| s.example.image.clone()).collect();
        let dev = &self.inputs.device;
        let pixel_values = self
            .processor
            .image_processor
            .preprocess_batch(&images, dev)?;
        let t = samples.iter().map(|s| s.ids.len()).max().unwrap_or(1);
        let n = samples.len();
        let pad = self.model.config.generation_pad_id();
        let (mut ids, mut mask, mut targets) = (
            Vec::with_capacity(n * t),
            Vec::with_capacity(n * t),
            Vec::with_capacity(n * t),
        );
        for s in samples {
            for i in 0..t {
                ids.push(s.ids.get(i).copied().unwrap_or(pad));
                mask.push(u32::from(i < s.ids.len()));
                targets.push(s.targets.get(i).copied().unwrap_or(0));
            }
        }
        Ok(LlavaBatch {
            pixel_values,
            input_ids: Tensor::from_vec(ids, (n, t), dev)?,
            attention_mask: Tensor::from_vec(mask, (n, t), dev)?,
            targets: Tensor::from_vec(targets, (n, t), dev)?,
        })
    }

    fn losses(&mut self, b: &LlavaBatch, _at: Step) -> Result<Losses> {
        Ok(Losses::total(self.model.loss(b, true)?))
    }

    fn validate(&self, batches: &[LlavaBatch]) -> Result<Value> {
        self.metrics(batches)
    }

    fn vars(&self) -> &VarMap {
        &self.model.vars.map
    }

    /// Stage 1: the projector; stage 2: the projector and the language model.
    fn trainable(&self) -> Vec<(String, Var)> {
        let stage1 = self.stage == ModelKind::LlavaStage1;
        sorted_vars(self.vars())
            .into_iter()
            .filter(|(n, _)| {
                n.starts_with(PROJECTOR_PREFIX) || (!stage1 && n.starts_with("language_model."))
            })
            .collect()
    }

    /// A LLaVA export holds every variable under the same names.
    fn init_from_export(&mut self, weights: &HashMap<String, Tensor>, origin: &str) -> Result<()> {
        load_into(self.vars(), weights, origin)
    }
}

/// `glimpse export` of a LLaVA run: `LlavaForConditionalGeneration` with its processor
/// files and a generation config that ends at the language model's eos.
pub(crate) fn export_run(
    recipe: &Recipe,
    model_dir: &Path,
    config: &Value,
    weights: &HashMap<String, Tensor>,
    origin: &str,
    out: &Path,
) -> Result<crate::export::Exported> {
    let files = run_files(model_dir);
    let cfg =
        glimpse_models::llava::read_config(&files).map_err(|e| Error::Train(e.to_string()))?;
    let kind = match config["glimpse_projector"] == "linear" {
        true => Projector::Linear,
        false => recipe.model.projector.unwrap_or_default(),
    };
    let m = LlavaTrain::new(&cfg, kind, &Device::Cpu)?;
    load_into(&m.vars.map, weights, origin)?;
    let t = &cfg.text_config;
    let gen = serde_json::json!({
        "bos_token_id": t.bos_token_id,
        "eos_token_id": cfg.eos_token_ids().first(),
        "pad_token_id": cfg.generation_pad_id(),
        "max_new_tokens": recipe.data.max_text_len,
    });
    crate::export::write_model(
        out,
        model_dir,
        config,
        "LlavaForConditionalGeneration",
        m.export_tensors()?,
        &[("generation_config.json", gen)],
    )
}
