//! A run's `OUT/model/` directory: the tokenizer (built or copied), `config.json` with
//! the tokenizer's vocabulary and special ids, and `preprocessor_config.json`, written
//! once when a run starts; [`RunFiles`] reads them back for a run or its resume.

use std::path::{Path, PathBuf};

use glimpse_data::{ImageProcessor, TextTokenizer};
use serde_json::Value;

use super::checkpoint::{read_json, resolve_checkpoint, write_json};
use crate::attributes::Tower;
use crate::recipe::{ModelKind, Recipe};
use crate::vocab;
use crate::{Error, Result};

/// Everything a run needs besides the weights: processor (none for a text-only
/// model), tokenizer, resolved config.
pub struct RunFiles {
    pub dir: PathBuf,
    pub processor: Option<ImageProcessor>,
    pub tokenizer: TextTokenizer,
    pub config: Value,
}

impl RunFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            dir: dir.to_path_buf(),
            processor: {
                let p = dir.join("preprocessor_config.json");
                match p.is_file() {
                    true => Some(ImageProcessor::from_file(&p)?),
                    false => None,
                }
            },
            tokenizer: TextTokenizer::from_file(&dir.join("tokenizer.json"))?,
            config: read_json(&dir.join("config.json"))?,
        })
    }
}

/// The image size of a model config (the family's default where it names none).
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

/// Locks `OUT/lock` for as long as the returned file lives, or refuses when another
/// run holds it. The OS drops the lock when a process dies, so a killed run can be
/// resumed at once.
pub(super) fn lock_run_dir(out: &Path) -> Result<std::fs::File> {
    let p = out.join("lock");
    let file = std::fs::File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io_ctx(&p, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::io_ctx(
            out,
            "another run holds this run directory (its lock file is locked); wait for it to end or choose another --out",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io_ctx(&p, e)),
    }
}

/// Whether `path` is an exported model directory (`glimpse export`'s output, or any
/// Hugging Face directory with `config.json` and `model.safetensors`) rather than a
/// training run or checkpoint.
pub(crate) fn is_exported_model(path: &Path) -> bool {
    path.join("config.json").is_file()
        && path.join("model.safetensors").is_file()
        && !path.join("trainer.json").is_file()
        && !path.join("checkpoints").exists()
}

/// Writes `OUT/model/` for a new run: tokenizer (built or copied), the config with the
/// tokenizer's vocabulary size and special ids, and the preprocessor config. A run
/// that starts from another run (`blip_vqa`) or from an exported BLIP model (`blip`,
/// `blip_vqa`)
/// takes that model's tokenizer, preprocessor and config.
pub(super) fn prepare_model_dir(recipe: &Recipe, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io_ctx(dir, e))?;
    let kind = recipe.model.kind;
    let from = match (kind, &recipe.model.init) {
        (ModelKind::Blip | ModelKind::BlipVqa, Some(init)) if is_exported_model(init) => {
            Some(init.clone())
        }
        (ModelKind::BlipVqa, Some(init)) => Some(resolve_checkpoint(init)?.0.join("model")),
        _ => None,
    };
    if let Some(src) = from {
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
        let arch = if kind == ModelKind::Blip {
            "BlipForImageTextRetrieval"
        } else {
            "BlipForQuestionAnswering"
        };
        config["architectures"] = serde_json::json!([arch]);
        let mpe = config["text_config"]["max_position_embeddings"]
            .as_u64()
            .unwrap_or(512) as usize;
        let max_len = recipe.data.max_text_len;
        if mpe < max_len {
            return Err(Error::Recipe {
                path: src.join("config.json"),
                message: format!(
                    "text_config.max_position_embeddings = {mpe} is below data.max_text_len = {max_len}"
                ),
            });
        }
        return write_json(&dir.join("config.json"), &config);
    }
    if recipe.model.kind == ModelKind::Lm {
        return prepare_lm_dir(recipe, dir);
    }
    if recipe.model.kind == ModelKind::Blip2Stage1 {
        return prepare_blip2_dir(recipe, dir);
    }
    if matches!(kind, ModelKind::LlavaStage1 | ModelKind::LlavaStage2) {
        return crate::llava::files::prepare_dir(recipe, dir);
    }
    if recipe.model.kind == ModelKind::Blip2Stage2 {
        return crate::blip2::stage2_setup::prepare_stage2_dir(recipe, dir);
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
            tok.vocab_size()
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
        ModelKind::Lm => unreachable!("prepare_lm_dir"),
        ModelKind::Blip2Stage1 => unreachable!("prepare_blip2_dir"),
        ModelKind::LlavaStage1 | ModelKind::LlavaStage2 => unreachable!("llava::files"),
        ModelKind::Blip2Stage2 => unreachable!("prepare_stage2_dir"),
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

/// `OUT/model/` of a language-model run: the tokenizer (copied from `data.tokenizer`'s
/// directory or the `model.init` run, or built from the training corpus with `[CLS]` as
/// bos and `[SEP]` as eos), and the recipe's config
/// with the vocabulary size, the special ids and the causal-LM class; no image
/// processor.
fn prepare_lm_dir(recipe: &Recipe, dir: &Path) -> Result<()> {
    let max_len = recipe.data.max_text_len;
    match (&recipe.data.tokenizer, &recipe.model.init) {
        (Some(path), _) => copy_tokenizer(path.parent().unwrap_or(Path::new(".")), dir)?,
        // Continuing another run: its weights fit its vocabulary only.
        (None, Some(init)) => copy_tokenizer(&resolve_checkpoint(init)?.0.join("model"), dir)?,
        (None, None) => {
            let train = Path::new(&recipe.data.train);
            let corpus = crate::corpus::TextCorpus::open(train)?;
            let v = vocab::vocabulary(corpus.texts());
            vocab::write_tokenizer(dir, &v, max_len, "[CLS]")?;
            // A causal LM ends at [SEP]; the reference's tokenizer should say so too.
            let p = dir.join("tokenizer_config.json");
            let mut tc: Value = read_json(&p)?;
            tc["eos_token"] = "[SEP]".into();
            write_json(&p, &tc)?;
        }
    }
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let id = |t: &str| {
        tok.token_id(t)
            .ok_or_else(|| Error::io_ctx(&dir.join("tokenizer.json"), format!("has no {t} token")))
    };
    let cfg_path = &recipe.model.config;
    let mut config: Value = read_json(cfg_path)?;
    let lm = crate::lm::LmConfig::from_json(&config, &cfg_path.display().to_string())?;
    let obj = config
        .as_object_mut()
        .ok_or_else(|| Error::io_ctx(cfg_path, "not a JSON object"))?;
    obj.insert("vocab_size".into(), tok.vocab_size().into());
    obj.insert("pad_token_id".into(), id("[PAD]")?.into());
    obj.insert("bos_token_id".into(), id("[CLS]")?.into());
    obj.insert("eos_token_id".into(), id("[SEP]")?.into());
    let mpe = obj
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(2048) as usize;
    if mpe < max_len {
        return Err(Error::Recipe {
            path: cfg_path.clone(),
            message: format!(
                "max_position_embeddings = {mpe} is below data.max_text_len = {max_len}"
            ),
        });
    }
    config["architectures"] = serde_json::json!([lm.class_name()]);
    write_json(&dir.join("config.json"), &config)
}

/// `OUT/model/` of a BLIP-2 stage-1 run: the tokenizer of `data.tokenizer`, else of
/// `model.qformer_from` or `model.vision_from` (the Q-Former's word embeddings come
/// from there), the recipe's `Blip2Config` with the tokenizer's vocabulary size and
/// pad id, and the BLIP image processor.
fn prepare_blip2_dir(recipe: &Recipe, dir: &Path) -> Result<()> {
    let m = &recipe.model;
    let src = match (&recipe.data.tokenizer, &m.qformer_from, &m.vision_from) {
        (Some(t), _, _) => t.parent().unwrap_or(Path::new(".")).to_path_buf(),
        (None, Some(q), _) => q.clone(),
        (None, None, Some(v)) => v.clone(),
        (None, None, None) => unreachable!("validated: vision_from is required"),
    };
    copy_tokenizer(&src, dir)?;
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
    let cfg_path = &recipe.model.config;
    let mut config: Value = read_json(cfg_path)?;
    let q = config
        .get_mut("qformer_config")
        .and_then(|t| t.as_object_mut())
        .ok_or_else(|| Error::io_ctx(cfg_path, "no qformer_config object"))?;
    q.insert("vocab_size".into(), tok.vocab_size().into());
    q.insert("pad_token_id".into(), tok.pad_id().into());
    let mpe = q
        .get("max_position_embeddings")
        .and_then(|v| v.as_u64())
        .unwrap_or(512) as usize;
    if mpe < recipe.data.max_text_len {
        return Err(Error::Recipe {
            path: cfg_path.clone(),
            message: format!(
                "qformer_config.max_position_embeddings = {mpe} is below data.max_text_len = {}",
                recipe.data.max_text_len
            ),
        });
    }
    config["architectures"] = serde_json::json!(["Blip2ForImageTextRetrieval"]);
    write_json(&dir.join("config.json"), &config)?;
    let size = image_size_of(recipe.model.kind, &config)?;
    write_json(
        &dir.join("preprocessor_config.json"),
        &preprocessor_json(ModelKind::Blip2Stage1, size),
    )
}

/// Copies the tokenizer files of `src_dir` into `dir`.
fn copy_tokenizer(src_dir: &Path, dir: &Path) -> Result<()> {
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
        ModelKind::Blip
        | ModelKind::BlipVqa
        | ModelKind::VisionAttributes
        | ModelKind::Lm
        | ModelKind::Blip2Stage1
        | ModelKind::LlavaStage1
        | ModelKind::LlavaStage2
        | ModelKind::Blip2Stage2 => {
            serde_json::json!({
                "image_processor_type": "BlipImageProcessor",
                "do_resize": true, "size": {"height": size, "width": size}, "resample": 3,
                "do_rescale": true, "rescale_factor": 1.0 / 255.0,
                "do_normalize": true, "image_mean": mean, "image_std": std,
                "do_convert_rgb": true,
            })
        }
    }
}
