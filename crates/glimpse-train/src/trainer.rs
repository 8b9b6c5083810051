//! The training loop: recipe → data → model → AdamW updates with warmup + cosine,
//! clipping and accumulation; progress, periodic validation, checkpoints that hold
//! weights, optimizer state, momentum state and the data position; and `--resume`,
//! which continues a killed run to the same weights, bit for bit on CPU.
//!
//! Why the resume is exact: every random draw (initial weights, caption choice, ITM
//! negatives) is a pure function of (seed, step or epoch, sample key); the data order
//! of an epoch is a pure function of (seed, epoch) and the loader skips to the saved
//! position without decoding; all state (weights, moments, momentum encoder, queues)
//! is saved as f32 tensors and reloaded unchanged; candle's CPU kernels are
//! deterministic for a fixed thread count.
//!
//! Run directory:
//! `OUT/recipe.toml`, `OUT/model/` (config.json, preprocessor and tokenizer files),
//! `OUT/checkpoints/step-NNNNNNNN/` (`model.safetensors`, `optimizer.safetensors`,
//! `state.safetensors`, `trainer.json`), `OUT/checkpoints/latest`, `OUT/log.jsonl`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use glimpse_data::dataset::{resolve_sources, Example, Loader, LoaderConfig};
use glimpse_data::{ImageProcessor, TextTokenizer};
use glimpse_models::blip::BlipConfig;
use glimpse_models::clip::ClipConfig;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attributes::{AttributeCounts, AttributeSpace, Tower, VisionAttributesTrain};
use crate::blip::{BlipPretrain, CaptionNegatives, Negatives};
use crate::clip::ClipTrain;
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use crate::params::{init_weights, load_into, snapshot, sorted_vars};
use crate::recipe::{ModelKind, Precision, Recipe, TextChoice};
use crate::vocab;
use crate::vqa::BlipVqaTrain;
use crate::{Error, Result};
use glimpse_data::rng::SplitMix64 as Rng;

/// How to run `train`.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// The recipe; with `resume` and no recipe, the run's own copy is used.
    pub recipe: Option<PathBuf>,
    /// A run directory (its latest checkpoint) or one checkpoint directory.
    pub resume: Option<PathBuf>,
    /// Overrides `run.out`.
    pub out: Option<PathBuf>,
    /// Stop after this many updates in this process (tests simulate a kill with it).
    pub stop_after: Option<u64>,
    /// Show a progress bar (stderr).
    pub progress: bool,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs_completed: u64,
    pub last_loss: f64,
    pub samples_per_second: f64,
    pub skipped_samples: u64,
    pub skipped_reasons: Vec<String>,
    pub validation: Option<Value>,
    pub checkpoint: Option<PathBuf>,
}

/// `trainer.json` in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Updates done.
    pub step: u64,
    pub epoch: u64,
    /// Raw samples of `epoch` consumed (the loader's position).
    pub position: u64,
    pub total_steps: u64,
    pub samples_seen: u64,
}

enum Model {
    Clip(ClipTrain),
    Blip(Box<BlipPretrain>),
    Vqa(BlipVqaTrain),
    Vision(VisionAttributesTrain),
}

impl Model {
    fn vars(&self) -> &candle_nn::VarMap {
        match self {
            Model::Clip(m) => &m.vars.map,
            Model::Blip(m) => &m.vars.map,
            Model::Vqa(m) => &m.vars.map,
            Model::Vision(m) => &m.vars.map,
        }
    }
}

/// A batch ready for the model.
struct Batch {
    pixel_values: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    /// VQA: answer ids and mask.
    answer: Option<(Tensor, Tensor)>,
    /// CLIP with hard negatives: ids, mask, and which negatives exist (`[B]` f32).
    negatives: Option<(Tensor, Tensor, Tensor)>,
    /// Vision-attribute pretraining: every group's class per image, `[B, groups]` u32.
    attributes: Option<Tensor>,
}

/// One training sample: the decoded example, its text (caption or question) and,
/// for VQA, the answer.
type Item = (Example, String, Option<String>);

/// A question/answer pair of `meta` (`qa: [{question, answer}]`, or top-level
/// `question` + `answer`), drawn per sample and epoch.
pub fn pick_qa(meta: &Value, key: &str, seed: u64, epoch: u64) -> Option<(String, String)> {
    let pair = |v: &Value| -> Option<(String, String)> {
        let q = v.get("question")?.as_str()?.trim();
        let a = v.get("answer")?.as_str()?.trim();
        (!q.is_empty() && !a.is_empty()).then(|| (q.to_string(), a.to_string()))
    };
    let list: Vec<(String, String)> = meta
        .get("qa")
        .and_then(|q| q.as_array())
        .map(|a| a.iter().filter_map(pair).collect())
        .unwrap_or_default();
    if list.is_empty() {
        return pair(meta);
    }
    let mut rng = Rng::derive(seed ^ 0x9a, epoch, key_hash(key, 0x8422_2325));
    Some(list[rng.below_from_unit(list.len())].clone())
}

/// The training item of `ex`, or the sample's key and why it cannot train.
fn item_of(
    ex: Example,
    kind: ModelKind,
    choice: TextChoice,
    seed: u64,
    epoch: u64,
) -> std::result::Result<Item, String> {
    match kind {
        ModelKind::BlipVqa => match pick_qa(&ex.meta, &ex.key, seed, epoch) {
            Some((q, a)) => Ok((ex, q, Some(a))),
            None => Err(format!("sample {}: no question/answer", ex.key)),
        },
        ModelKind::VisionAttributes => match AttributeSpace::synth().targets(&ex.meta) {
            Ok(_) => Ok((ex, String::new(), None)),
            Err(why) => Err(format!("sample {}: {why}", ex.key)),
        },
        _ => match pick_text(&ex.meta, &ex.key, choice, seed, epoch) {
            Some(t) => Ok((ex, t, None)),
            None => Err(format!("sample {}: no caption", ex.key)),
        },
    }
}

fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::io_ctx(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io_ctx(path, e))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io_ctx(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::io_ctx(path, e))
}

/// FNV-1a style hash of a sample key from `basis`: with the seed and the epoch it
/// picks a sample's random draws (caption, question, negatives) independently of the
/// order samples arrive in. Each purpose keeps its own basis, so draws stay fixed.
fn key_hash(key: &str, basis: u64) -> u64 {
    key.bytes()
        .fold(basis, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The text that trains on `meta`, or `None` when the sample has none.
pub fn pick_text(
    meta: &Value,
    key: &str,
    choice: TextChoice,
    seed: u64,
    epoch: u64,
) -> Option<String> {
    let list: Vec<&str> = meta
        .get("captions")
        .and_then(|c| c.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .filter(|s| !s.trim().is_empty())
                .collect()
        })
        .unwrap_or_default();
    let single = meta
        .get("caption")
        .and_then(|c| c.as_str())
        .filter(|s| !s.trim().is_empty());
    match choice {
        TextChoice::Caption => single.or(list.first().copied()).map(String::from),
        TextChoice::RandomCaption => {
            if list.is_empty() {
                return single.map(String::from);
            }
            let mut rng = Rng::derive(seed, epoch, key_hash(key, 0xcbf2_9ce4_8422_2325));
            Some(list[rng.below_from_unit(list.len())].to_string())
        }
    }
}

/// Tokenizes `texts` with `[CLS] ... [SEP]`, truncated to `max_len` (the last token
/// stays `[SEP]`), right-padded with `pad`.
///
/// # Shapes
/// * returns ids `[n, T]` u32 and mask `[n, T]` u32
pub fn encode_texts(
    tok: &TextTokenizer,
    texts: &[String],
    max_len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut rows = Vec::with_capacity(texts.len());
    for t in texts {
        let mut ids = tok.encode(t, true)?;
        if ids.len() > max_len {
            let last = *ids.last().unwrap();
            ids.truncate(max_len - 1);
            ids.push(last);
        }
        rows.push(ids);
    }
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let pad = tok.pad_id();
    let mut ids = Vec::with_capacity(rows.len() * t);
    let mut mask = Vec::with_capacity(rows.len() * t);
    for r in &rows {
        for i in 0..t {
            ids.push(r.get(i).copied().unwrap_or(pad));
            mask.push(u32::from(i < r.len()));
        }
    }
    Ok((
        Tensor::from_vec(ids, (rows.len(), t), device)?,
        Tensor::from_vec(mask, (rows.len(), t), device)?,
    ))
}

/// Everything a run needs besides the weights: processor, tokenizer, resolved config.
pub struct RunFiles {
    pub dir: PathBuf,
    pub processor: ImageProcessor,
    pub tokenizer: TextTokenizer,
    pub config: Value,
}

/// The image side of a model config: (image_size, family).
fn image_size_of(kind: ModelKind, config: &Value) -> Result<usize> {
    let size = &config["vision_config"]["image_size"];
    let s = size
        .as_u64()
        .or_else(|| {
            size.as_array()
                .and_then(|a| a.first())
                .and_then(|v| v.as_u64())
        })
        .unwrap_or(match kind {
            ModelKind::Clip => 224,
            _ => 384,
        });
    Ok(s as usize)
}

/// Writes `OUT/model/` for a new run: tokenizer (built or copied), the config with the
/// tokenizer's vocabulary size and special ids, and the preprocessor config.
fn prepare_model_dir(recipe: &Recipe, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io_ctx(dir, e))?;
    if let (ModelKind::BlipVqa, Some(init)) = (recipe.model.kind, &recipe.model.init) {
        let (run, _) = resolve_checkpoint(init)?;
        let src = run.join("model");
        for f in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "vocab.txt",
            "preprocessor_config.json",
            "config.json",
        ] {
            let p = src.join(f);
            if p.is_file() {
                std::fs::copy(&p, dir.join(f)).map_err(|e| Error::io_ctx(&p, e))?;
            }
        }
        let mut config: Value = read_json(&dir.join("config.json"))?;
        config["architectures"] = serde_json::json!(["BlipForQuestionAnswering"]);
        return write_json(&dir.join("config.json"), &config);
    }
    let max_len = recipe.data.max_text_len;
    let vocab_size = match &recipe.data.tokenizer {
        Some(path) => {
            let src_dir = path.parent().unwrap_or(Path::new("."));
            for f in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "vocab.txt",
            ] {
                let src = src_dir.join(f);
                if src.is_file() {
                    std::fs::copy(&src, dir.join(f)).map_err(|e| Error::io_ctx(&src, e))?;
                }
            }
            let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
            let n = tok.vocab_size();
            n
        }
        None => {
            let texts = vocab::synth_texts(5000);
            let v = vocab::vocabulary(texts.iter().map(|s| s.as_str()));
            let bos = if recipe.model.kind == ModelKind::Clip {
                "[CLS]"
            } else {
                "[DEC]"
            };
            vocab::write_tokenizer(dir, &v, max_len, bos)?;
            v.len()
        }
    };
    let cfg_path = &recipe.model.config;
    let mut config: Value = read_json(cfg_path)?;
    let text = config
        .get_mut("text_config")
        .and_then(|t| t.as_object_mut())
        .ok_or_else(|| Error::io_ctx(cfg_path, "no text_config object"))?;
    text.insert("vocab_size".into(), vocab_size.into());
    text.insert("pad_token_id".into(), vocab::PAD_ID.into());
    let arch = match recipe.model.kind {
        ModelKind::Clip => {
            text.insert("bos_token_id".into(), vocab::CLS_ID.into());
            text.insert("eos_token_id".into(), vocab::SEP_ID.into());
            "CLIPModel"
        }
        ModelKind::Blip | ModelKind::BlipVqa => {
            text.insert("bos_token_id".into(), vocab::DEC_ID.into());
            text.insert("sep_token_id".into(), vocab::SEP_ID.into());
            text.insert("eos_token_id".into(), vocab::SEP_ID.into());
            if recipe.model.kind == ModelKind::Blip {
                "BlipForImageTextRetrieval"
            } else {
                "BlipForQuestionAnswering"
            }
        }
        // Not a Hugging Face architecture: the run's tower is taken into a BLIP or
        // CLIP run with `model.init_vision`, not exported on its own.
        ModelKind::VisionAttributes => "GlimpseVisionAttributes",
    };
    let mpe = text
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(512) as usize;
    if mpe < max_len {
        return Err(Error::Recipe {
            path: cfg_path.clone(),
            message: format!(
                "text_config.max_position_embeddings = {mpe} is below data.max_text_len = {max_len}"
            ),
        });
    }
    config["architectures"] = serde_json::json!([arch]);
    write_json(&dir.join("config.json"), &config)?;
    let size = image_size_of(recipe.model.kind, &config)?;
    let family = match (recipe.model.kind, recipe.model.tower) {
        (ModelKind::VisionAttributes, Some(Tower::Clip)) => ModelKind::Clip,
        (k, _) => k,
    };
    let pre = preprocessor_json(family, size);
    write_json(&dir.join("preprocessor_config.json"), &pre)?;
    Ok(())
}

/// The reference's preprocessor config for a model of this kind and image size.
pub fn preprocessor_json(kind: ModelKind, size: usize) -> Value {
    let mean = [0.48145466, 0.4578275, 0.40821073];
    let std = [0.26862954, 0.26130258, 0.27577711];
    match kind {
        ModelKind::Clip => serde_json::json!({
            "image_processor_type": "CLIPImageProcessor",
            "do_resize": true, "size": {"shortest_edge": size}, "resample": 3,
            "do_center_crop": true, "crop_size": {"height": size, "width": size},
            "do_rescale": true, "rescale_factor": 1.0 / 255.0,
            "do_normalize": true, "image_mean": mean, "image_std": std,
            "do_convert_rgb": true,
        }),
        ModelKind::Blip | ModelKind::BlipVqa | ModelKind::VisionAttributes => serde_json::json!({
            "image_processor_type": "BlipImageProcessor",
            "do_resize": true, "size": {"height": size, "width": size}, "resample": 3,
            "do_rescale": true, "rescale_factor": 1.0 / 255.0,
            "do_normalize": true, "image_mean": mean, "image_std": std,
            "do_convert_rgb": true,
        }),
    }
}

impl RunFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            processor: ImageProcessor::from_file(&dir.join("preprocessor_config.json"))?,
            tokenizer: TextTokenizer::from_file(&dir.join("tokenizer.json"))?,
            config: read_json(&dir.join("config.json"))?,
        })
    }
}

fn build_model(kind: ModelKind, recipe: &Recipe, config: &Value, device: &Device) -> Result<Model> {
    let origin = "model/config.json";
    Ok(match kind {
        ModelKind::Clip => {
            let cfg: ClipConfig = serde_json::from_value(config.clone())
                .map_err(|e| Error::Train(format!("{origin}: {e}")))?;
            Model::Clip(ClipTrain::new(&cfg, device)?)
        }
        ModelKind::Blip => {
            let cfg: BlipConfig = serde_json::from_value(config.clone())
                .map_err(|e| Error::Train(format!("{origin}: {e}")))?;
            Model::Blip(Box::new(BlipPretrain::new(
                &cfg,
                recipe.loss,
                recipe.model.seed,
                device,
            )?))
        }
        ModelKind::BlipVqa => {
            let cfg: BlipConfig = serde_json::from_value(config.clone())
                .map_err(|e| Error::Train(format!("{origin}: {e}")))?;
            Model::Vqa(BlipVqaTrain::new(
                &cfg,
                recipe.loss.label_smoothing,
                device,
            )?)
        }
        ModelKind::VisionAttributes => Model::Vision(VisionAttributesTrain::new(
            recipe.model.tower.unwrap_or_default(),
            config,
            device,
        )?),
    })
}

/// The checkpoint directory a `--resume` path names.
pub fn resolve_checkpoint(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.join("trainer.json").is_file() {
        let run = path
            .parent()
            .and_then(|p| p.parent())
            .ok_or_else(|| Error::io_ctx(path, "a checkpoint outside a run directory"))?;
        return Ok((run.to_path_buf(), path.to_path_buf()));
    }
    let latest = path.join("checkpoints").join("latest");
    let name = std::fs::read_to_string(&latest).map_err(|_| {
        Error::io_ctx(
            path,
            "not a run directory with a checkpoint (no checkpoints/latest) nor a checkpoint",
        )
    })?;
    let ckpt = path.join("checkpoints").join(name.trim());
    if !ckpt.join("trainer.json").is_file() {
        return Err(Error::io_ctx(
            &ckpt,
            "checkpoints/latest names a missing or incomplete checkpoint",
        ));
    }
    Ok((path.to_path_buf(), ckpt))
}

fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|e| Error::io_ctx(path, e))
}

/// Copies the vision tower (`vision_model.*`) of the `vision_attributes` run that
/// `init` names into `model`, checking that the run trained a tower of this model's
/// layout and that every tensor is there with its shape. Returns the checkpoint.
fn init_vision(model: &Model, kind: ModelKind, init: &Path, device: &Device) -> Result<PathBuf> {
    let (run, ckpt) = resolve_checkpoint(init)?;
    let theirs = Recipe::from_file(&run.join("recipe.toml"))?;
    let want = if kind == ModelKind::Clip {
        Tower::Clip
    } else {
        Tower::Blip
    };
    let has = theirs.model.tower.unwrap_or_default();
    if theirs.model.kind != ModelKind::VisionAttributes || has != want {
        return Err(Error::io_ctx(
            init,
            format!(
                "model.init_vision needs a vision_attributes run with tower = \"{}\"; this is a {:?} run{}",
                if want == Tower::Clip { "clip" } else { "blip" },
                theirs.model.kind,
                if theirs.model.kind == ModelKind::VisionAttributes {
                    format!(" of the {has:?} tower")
                } else {
                    String::new()
                }
            ),
        ));
    }
    let p = ckpt.join("model.safetensors");
    let tensors = load_tensors(&p, device)?;
    let mut copied = 0;
    for (name, var) in sorted_vars(model.vars()) {
        if !name.starts_with("vision_model.") {
            continue;
        }
        let t = tensors
            .get(&name)
            .ok_or_else(|| Error::io_ctx(&p, format!("missing tensor {name}")))?;
        if t.shape() != var.shape() {
            return Err(Error::io_ctx(
                &p,
                format!(
                    "{name} is {:?}, this model's vision tower expects {:?} (the runs' vision_config differ)",
                    t.shape(),
                    var.shape()
                ),
            ));
        }
        var.set(t)?;
        copied += 1;
    }
    if copied == 0 {
        return Err(Error::Train(
            "this model has no vision_model variables".into(),
        ));
    }
    Ok(ckpt)
}

/// Runs (or resumes) a recipe.
pub fn train(opts: &TrainOptions) -> Result<TrainReport> {
    let device = Device::Cpu;
    let resume = match &opts.resume {
        Some(p) => Some(resolve_checkpoint(p)?),
        None => None,
    };
    let (recipe_path, mut recipe) = match (&opts.recipe, &resume) {
        (Some(r), _) => (r.clone(), Recipe::from_file(r)?),
        (None, Some((run, _))) => {
            let p = run.join("recipe.toml");
            (p.clone(), Recipe::from_file(&p)?)
        }
        (None, None) => return Err(Error::Train("give --recipe FILE or --resume RUN".into())),
    };
    if let Some(out) = &opts.out {
        recipe.run.out = out.clone();
    }
    if let Some((run, _)) = &resume {
        recipe.run.out = run.clone();
    }
    if recipe.optim.precision == Precision::Bf16 {
        return Err(Error::Recipe {
            path: recipe_path,
            message: "optim.precision = \"bf16\" needs a CUDA device; this build trains on the CPU in f32".into(),
        });
    }
    let out = recipe.run.out.clone();
    let model_dir = out.join("model");
    let ckpt_root = out.join("checkpoints");
    if resume.is_none() {
        if ckpt_root.join("latest").exists() {
            return Err(Error::io_ctx(
                &out,
                "already holds a run with checkpoints; resume it with --resume, or choose another --out",
            ));
        }
        std::fs::create_dir_all(&ckpt_root).map_err(|e| Error::io_ctx(&ckpt_root, e))?;
        // A run killed before its first checkpoint starts over: drop its log lines.
        truncate_log(&out.join("log.jsonl"), 0)?;
        let text = toml::to_string(&recipe).map_err(|e| Error::io_ctx(&recipe_path, e))?;
        std::fs::write(out.join("recipe.toml"), text).map_err(|e| Error::io_ctx(&out, e))?;
        prepare_model_dir(&recipe, &model_dir)?;
    }
    let files = RunFiles::open(&model_dir)?;
    let kind = recipe.model.kind;
    let mut model = build_model(kind, &recipe, &files.config, &device)?;
    init_weights(
        model.vars(),
        recipe.model.seed,
        recipe.model.init_std,
        recipe.model.position_init_scale as f32,
    )?;
    if let Model::Blip(b) = &model {
        b.temp
            .set(&Tensor::new(recipe.loss.temp as f32, &device)?)?;
    }
    if let (Some(init), None) = (&recipe.model.init, &resume) {
        let (_, ckpt) = resolve_checkpoint(init)?;
        let p = ckpt.join("model.safetensors");
        let pre = load_tensors(&p, &device)?;
        match &model {
            Model::Vqa(m) => m.init_from_pretraining(&pre, &p.display().to_string())?,
            _ => load_into(model.vars(), &pre, &p.display().to_string())?,
        }
        eprintln!("initialised from {}", ckpt.display());
    }
    if let (Some(init), None) = (&recipe.model.init_vision, &resume) {
        let ckpt = init_vision(&model, kind, init, &device)?;
        eprintln!("vision tower initialised from {}", ckpt.display());
    }
    if let Model::Blip(b) = &mut model {
        b.reset_momentum();
    }

    // Data.
    let seed = recipe.model.seed;
    let loader_cfg = LoaderConfig {
        shuffle_buffer: recipe.data.shuffle_buffer,
        workers: recipe.data.workers,
        seed,
        shuffle_sources: true,
        prefetch: 256,
    };
    let train_loader = Loader::new(resolve_sources(&recipe.data.train)?, loader_cfg.clone());
    let n_train = train_loader.count()?;
    let per_update = (recipe.optim.batch_size * recipe.optim.accumulate) as u64;
    let updates_per_epoch = n_train / per_update;
    if updates_per_epoch == 0 {
        return Err(Error::Recipe {
            path: recipe_path,
            message: format!(
                "{} training samples in {} do not fill one update of {per_update}",
                n_train, recipe.data.train
            ),
        });
    }
    let total_steps = match (recipe.optim.max_steps, recipe.optim.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * updates_per_epoch,
        (None, None) => unreachable!("validated"),
    };
    let val = match &recipe.data.val {
        Some(spec) => Some(load_val(spec, &recipe, &files, seed, &device)?),
        None => None,
    };

    // Optimizer and schedule.
    let o = &recipe.optim;
    let frozen_temp = kind == ModelKind::Blip && !recipe.loss.learn_temp;
    let trainable: Vec<_> = sorted_vars(model.vars())
        .into_iter()
        .filter(|(n, _)| !(frozen_temp && n == "temp"))
        .collect();
    let mut opt = AdamW::new(
        trainable,
        AdamWConfig {
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
        },
    )?;
    if o.vision_lr_scale != 1.0 {
        opt.scale_lr("vision_model.", o.vision_lr_scale);
    }
    let schedule = Schedule {
        peak: o.lr,
        warmup: o.warmup_steps,
        total: total_steps,
        min_ratio: o.min_lr_ratio,
    };

    let mut state = TrainerState {
        step: 0,
        epoch: 0,
        position: 0,
        total_steps,
        samples_seen: 0,
    };
    if let Some((_, ckpt)) = &resume {
        let origin = ckpt.display().to_string();
        load_into(
            model.vars(),
            &load_tensors(&ckpt.join("model.safetensors"), &device)?,
            &origin,
        )?;
        opt.load_state(&ckpt.join("optimizer.safetensors"))?;
        if let Model::Blip(b) = &mut model {
            b.load_state_tensors(
                &load_tensors(&ckpt.join("state.safetensors"), &device)?,
                &origin,
            )?;
        }
        state = read_json(&ckpt.join("trainer.json"))?;
        state.total_steps = total_steps;
        truncate_log(&out.join("log.jsonl"), state.step)?;
        eprintln!(
            "resuming {} at update {} (epoch {}, sample {})",
            out.display(),
            state.step,
            state.epoch,
            state.position
        );
    }

    let pb = if opts.progress {
        let pb = ProgressBar::new(total_steps);
        pb.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} updates {elapsed_precise} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        pb.set_position(state.step);
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("log.jsonl"))
        .map_err(|e| Error::io_ctx(&out.join("log.jsonl"), e))?;

    let started = Instant::now();
    let mut samples_this_run = 0u64;
    let mut updates_this_run = 0u64;
    let mut last_loss = f64::NAN;
    let mut skipped = 0u64;
    let mut reasons: Vec<String> = Vec::new();
    let mut last_ckpt = None;
    let mut validation = None;
    let b = recipe.optim.batch_size;
    let accum = recipe.optim.accumulate;

    'epochs: while state.step < total_steps {
        let mut it = train_loader.epoch(state.epoch, state.position);
        loop {
            if state.step >= total_steps {
                break 'epochs;
            }
            if opts.stop_after.is_some_and(|n| updates_this_run >= n) {
                break 'epochs;
            }
            // One update: `accum` micro-batches.
            let mut grads: Option<Vec<Tensor>> = None;
            let mut loss_sum = 0.0;
            let mut parts: Vec<(String, f64)> = Vec::new();
            for micro in 0..accum {
                let mut examples: Vec<Item> = Vec::with_capacity(b);
                while examples.len() < b {
                    match it.next() {
                        None => break,
                        Some(Err(e)) => return Err(e.into()),
                        Some(Ok(ex)) => {
                            match item_of(ex, kind, recipe.data.text, seed, state.epoch) {
                                Ok(item) => examples.push(item),
                                Err(why) => {
                                    skipped += 1;
                                    if reasons.len() < 20 {
                                        reasons.push(why);
                                    }
                                }
                            }
                        }
                    }
                }
                if examples.len() < b {
                    // End of the epoch: a partial update is dropped.
                    let st = it.stats();
                    skipped += st.skipped_corrupt;
                    reasons.extend(
                        st.skipped_reasons
                            .into_iter()
                            .take(20usize.saturating_sub(reasons.len())),
                    );
                    state.epoch += 1;
                    state.position = 0;
                    continue 'epochs;
                }
                let mut batch =
                    make_batch(&examples, &files, kind, recipe.data.max_text_len, &device)?;
                if matches!(kind, ModelKind::Clip | ModelKind::Blip)
                    && recipe.loss.hard_negative_captions
                {
                    let (mut texts, mut valid) = negative_texts(&examples, seed, state.epoch, 0);
                    let (t1, v1) = negative_texts(&examples, seed, state.epoch, 1);
                    texts.extend(t1);
                    valid.extend(v1);
                    let (ids, mask) =
                        encode_texts(&files.tokenizer, &texts, recipe.data.max_text_len, &device)?;
                    let n = valid.len();
                    batch.negatives = Some((ids, mask, Tensor::from_vec(valid, n, &device)?));
                }
                let (loss, named) =
                    forward_loss(&mut model, &batch, seed, state.step, micro as u64)?;
                let loss = if accum > 1 {
                    (loss / accum as f64)?
                } else {
                    loss
                };
                let g = opt.gradients(&loss.backward()?)?;
                grads = Some(match grads {
                    None => g,
                    Some(prev) => prev
                        .iter()
                        .zip(&g)
                        .map(|(a, b)| a.add(b))
                        .collect::<candle_core::Result<_>>()?,
                });
                loss_sum += loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
                for (k, v) in named {
                    match parts.iter_mut().find(|(n, _)| *n == k) {
                        Some(p) => p.1 += v / accum as f64,
                        None => parts.push((k, v / accum as f64)),
                    }
                }
            }
            let mut grads = grads.expect("accumulate >= 1");
            let norm = clip_grad_norm(&mut grads, recipe.optim.max_grad_norm)?;
            if !loss_sum.is_finite() {
                return Err(Error::Train(format!(
                    "loss is {loss_sum} at update {}: training diverged (lower optim.lr)",
                    state.step
                )));
            }
            let lr = schedule.lr(state.step);
            opt.step(&grads, lr)?;
            state.step += 1;
            state.position = it.position();
            state.samples_seen += per_update;
            samples_this_run += per_update;
            updates_this_run += 1;
            last_loss = loss_sum;
            pb.set_position(state.step);
            let rate = samples_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!("loss {loss_sum:.4} | {rate:.1} samples/s"));
            let mut line = serde_json::json!({
                "step": state.step, "epoch": state.epoch, "loss": loss_sum, "lr": lr,
                "grad_norm": norm, "samples_per_s": rate,
            });
            for (k, v) in &parts {
                line[k] = (*v).into();
            }
            if state.step % recipe.run.log_every.max(1) == 0 || state.step == total_steps {
                writeln!(log, "{line}").map_err(|e| Error::io_ctx(&out.join("log.jsonl"), e))?;
                if pb.is_hidden() {
                    eprintln!(
                        "update {}/{} epoch {} loss {loss_sum:.4} lr {lr:.2e} {rate:.1} samples/s",
                        state.step, total_steps, state.epoch
                    );
                }
            }
            let want_val = recipe.run.val_every > 0 && state.step % recipe.run.val_every == 0;
            if let (true, Some(v)) = (want_val || state.step == total_steps, &val) {
                let report = validate(&model, v, &files)?;
                let msg = format!("validation at update {}: {report}", state.step);
                if pb.is_hidden() {
                    eprintln!("{msg}")
                } else {
                    pb.println(msg)
                }
                writeln!(
                    log,
                    "{}",
                    serde_json::json!({"step": state.step, "validation": report})
                )
                .map_err(|e| Error::io_ctx(&out.join("log.jsonl"), e))?;
                validation = Some(report);
            }
            if state.step % recipe.run.checkpoint_every == 0 || state.step == total_steps {
                last_ckpt = Some(save_checkpoint(
                    &model,
                    &opt,
                    &state,
                    &ckpt_root,
                    recipe.run.keep_checkpoints,
                )?);
            }
        }
    }
    pb.finish_and_clear();
    Ok(TrainReport {
        out,
        steps: state.step,
        total_steps,
        epochs_completed: state.epoch,
        last_loss,
        samples_per_second: samples_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9),
        skipped_samples: skipped,
        skipped_reasons: reasons,
        validation,
        checkpoint: last_ckpt,
    })
}

/// Hard negative captions for a batch, drawn per sample and epoch: `round` 0 swaps
/// the shape word where there is one, other rounds any attribute word.
fn negative_texts(examples: &[Item], seed: u64, epoch: u64, round: u64) -> (Vec<String>, Vec<f32>) {
    examples
        .iter()
        .map(|(ex, text, _)| {
            let h = key_hash(&ex.key, 0x1f3d);
            let mut rng = Rng::derive(seed ^ 0x4e47 ^ (round << 32), epoch, h);
            let prefer = (round == 0).then_some(crate::negatives::SHAPE);
            match crate::negatives::swap_attribute_of_kind(&text.to_lowercase(), prefer, &mut rng) {
                Some(n) => (n, 1.0),
                None => (text.clone(), 0.0),
            }
        })
        .unzip()
}

fn make_batch(
    examples: &[Item],
    files: &RunFiles,
    kind: ModelKind,
    max_len: usize,
    device: &Device,
) -> Result<Batch> {
    let attributes = if kind == ModelKind::VisionAttributes {
        let space = AttributeSpace::synth();
        let mut rows = Vec::with_capacity(examples.len() * space.targets_per_image());
        for (ex, _, _) in examples {
            let t = space
                .targets(&ex.meta)
                .map_err(|why| Error::Train(format!("sample {}: {why}", ex.key)))?;
            rows.extend(t);
        }
        let n = examples.len();
        Some(Tensor::from_vec(
            rows,
            (n, space.targets_per_image()),
            device,
        )?)
    } else {
        None
    };
    let imgs: Vec<image::RgbImage> = examples.iter().map(|(e, _, _)| e.image.clone()).collect();
    let pixel_values = files.processor.preprocess_batch(&imgs, device)?;
    let texts: Vec<String> = examples.iter().map(|(_, t, _)| t.clone()).collect();
    let (input_ids, attention_mask) = encode_texts(&files.tokenizer, &texts, max_len, device)?;
    let answers: Option<Vec<String>> = examples.iter().map(|(_, _, a)| a.clone()).collect();
    let answer = match answers {
        Some(a) => Some(encode_texts(&files.tokenizer, &a, max_len, device)?),
        None => None,
    };
    Ok(Batch {
        pixel_values,
        input_ids,
        attention_mask,
        answer,
        negatives: None,
        attributes,
    })
}

/// The loss of one micro-batch and its named parts.
fn forward_loss(
    model: &mut Model,
    b: &Batch,
    seed: u64,
    step: u64,
    micro: u64,
) -> Result<(Tensor, Vec<(String, f64)>)> {
    let scalar = |t: &Tensor| -> Result<f64> { Ok(t.to_dtype(DType::F64)?.to_scalar::<f64>()?) };
    match model {
        Model::Clip(m) => {
            let l = match &b.negatives {
                Some((ids, mask, valid)) => m.losses_with_negatives(
                    &b.pixel_values,
                    &b.input_ids,
                    &b.attention_mask,
                    ids,
                    mask,
                    valid,
                )?,
                None => m.losses(&b.pixel_values, &b.input_ids, &b.attention_mask)?,
            };
            Ok((l.total, vec![]))
        }
        Model::Blip(m) => {
            let mut rng = Rng::derive(seed, step, 0x17e + micro);
            let alpha = m.alpha_at(step);
            let valid: Vec<f32> = match &b.negatives {
                Some((_, _, v)) => v.to_vec1()?,
                None => Vec::new(),
            };
            let captions = b.negatives.as_ref().map(|(ids, mask, _)| CaptionNegatives {
                ids,
                mask,
                valid: &valid,
            });
            let l = m.losses_with_captions(
                &b.pixel_values,
                &b.input_ids,
                &b.attention_mask,
                alpha,
                Negatives::Sample(&mut rng),
                captions,
            )?;
            let parts = vec![
                ("itc".to_string(), scalar(&l.itc)?),
                ("itm".to_string(), scalar(&l.itm)?),
                ("lm".to_string(), scalar(&l.lm)?),
            ];
            Ok((l.total, parts))
        }
        Model::Vqa(m) => {
            let (a, am) = b
                .answer
                .as_ref()
                .ok_or_else(|| Error::Train("VQA batch without answers".into()))?;
            let l = m.loss(
                &b.pixel_values,
                &b.input_ids,
                &b.attention_mask,
                a,
                am,
                true,
            )?;
            Ok((l, vec![]))
        }
        Model::Vision(m) => {
            let t = b
                .attributes
                .as_ref()
                .ok_or_else(|| Error::Train("vision batch without attribute targets".into()))?;
            let (l, _) = m.loss(&b.pixel_values, t, true)?;
            Ok((l, vec![]))
        }
    }
}

/// Validation data held in memory: batches and every sample's record.
struct ValData {
    batches: Vec<Batch>,
}

fn load_val(
    spec: &str,
    recipe: &Recipe,
    files: &RunFiles,
    seed: u64,
    device: &Device,
) -> Result<ValData> {
    let loader = Loader::new(
        resolve_sources(spec)?,
        LoaderConfig {
            shuffle_buffer: 0,
            workers: recipe.data.workers,
            seed,
            shuffle_sources: false,
            prefetch: 64,
        },
    );
    let mut examples = Vec::new();
    for ex in loader.epoch(0, 0) {
        if let Ok(item) = item_of(ex?, recipe.model.kind, TextChoice::Caption, seed, 0) {
            examples.push(item);
        }
        if examples.len() >= recipe.run.val_samples {
            break;
        }
    }
    let b = recipe.optim.batch_size;
    let batches = examples
        .chunks(b)
        .map(|c| {
            make_batch(
                c,
                files,
                recipe.model.kind,
                recipe.data.max_text_len,
                device,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ValData { batches })
}

/// Retrieval recall@1 (both directions) over the validation samples, and the mean
/// validation loss (CLIP) or LM loss (BLIP), without changing any state.
fn validate(model: &Model, val: &ValData, _files: &RunFiles) -> Result<Value> {
    if let Model::Vqa(m) = model {
        let mut loss = 0.0;
        for b in &val.batches {
            let (a, am) = b
                .answer
                .as_ref()
                .ok_or_else(|| Error::Train("VQA batch without answers".into()))?;
            let l = m.loss(
                &b.pixel_values,
                &b.input_ids,
                &b.attention_mask,
                a,
                am,
                false,
            )?;
            loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()? / val.batches.len() as f64;
        }
        return Ok(serde_json::json!({"answer_loss": loss}));
    }
    if let Model::Vision(m) = model {
        let mut loss = 0.0;
        let mut counts = AttributeCounts::default();
        for b in &val.batches {
            let t = b
                .attributes
                .as_ref()
                .ok_or_else(|| Error::Train("vision batch without attribute targets".into()))?;
            let (l, logits) = m.loss(&b.pixel_values, t, false)?;
            loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()? / val.batches.len() as f64;
            counts.add(&m.counts(&logits, t)?);
        }
        let mut report = counts.report();
        report["loss"] = loss.into();
        return Ok(report);
    }
    let mut img = Vec::new();
    let mut txt = Vec::new();
    let mut loss = 0.0;
    for b in &val.batches {
        let (i, t, l) = match model {
            Model::Clip(m) => {
                let i = m.model.image_features(&b.pixel_values, false)?;
                let t = m
                    .model
                    .text_features(&b.input_ids, Some(&b.attention_mask), false)?;
                let (l, _) = crate::losses::clip_loss(&i, &t, &m.model.logit_scale)?;
                (i, t, l)
            }
            Model::Blip(m) => m.eval_batch(&b.pixel_values, &b.input_ids, &b.attention_mask)?,
            Model::Vqa(_) | Model::Vision(_) => unreachable!("handled above"),
        };
        img.push(crate::losses::l2_normalize(&i.detach())?);
        txt.push(crate::losses::l2_normalize(&t.detach())?);
        loss += l.to_dtype(DType::F64)?.to_scalar::<f64>()? / val.batches.len() as f64;
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
    let name = match model {
        Model::Clip(_) => "loss",
        _ => "lm_loss",
    };
    Ok(serde_json::json!({"samples": n, "i2t_r1": r1(&i2t), "t2i_r1": r1(&t2i), name: loss}))
}

fn save_checkpoint(
    model: &Model,
    opt: &AdamW,
    state: &TrainerState,
    root: &Path,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!("{name}.tmp"));
    let dst = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io_ctx(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io_ctx(&tmp, e))?;
    let weights = snapshot(model.vars());
    let p = tmp.join("model.safetensors");
    candle_core::safetensors::save(&weights, &p).map_err(|e| Error::io_ctx(&p, e))?;
    opt.save_state(&tmp.join("optimizer.safetensors"))?;
    if let Model::Blip(b) = model {
        let p = tmp.join("state.safetensors");
        candle_core::safetensors::save(&b.state_tensors()?, &p)
            .map_err(|e| Error::io_ctx(&p, e))?;
    }
    write_json(&tmp.join("trainer.json"), state)?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| Error::io_ctx(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io_ctx(&dst, e))?;
    let latest_tmp = root.join("latest.tmp");
    std::fs::write(&latest_tmp, format!("{name}\n")).map_err(|e| Error::io_ctx(&latest_tmp, e))?;
    std::fs::rename(&latest_tmp, root.join("latest")).map_err(|e| Error::io_ctx(root, e))?;
    // Keep the newest `keep` checkpoints.
    let mut all: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io_ctx(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect();
    all.sort();
    let keep = keep.max(1);
    if all.len() > keep {
        for old in &all[..all.len() - keep] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dst)
}

/// Drops log lines of updates after `step` (they are redone after a resume).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).map_err(|e| Error::io_ctx(path, e))
}
