//! `glimpse export`: a training checkpoint becomes Hugging Face model directories
//! that Glimpse and `transformers` load: a CLIP run → one `CLIPModel` directory; a
//! BLIP pretraining run → `caption/` (`BlipForConditionalGeneration`) and
//! `retrieval/` (`BlipForImageTextRetrieval`); a language-model run → one
//! `OPTForCausalLM` or `LlamaForCausalLM` directory; a BLIP-2 stage-1 run → one
//! `Blip2ForImageTextRetrieval`, a stage-2 run → one `Blip2ForConditionalGeneration`. Each holds `model.safetensors`,
//! `config.json`, the tokenizer files and `preprocessor_config.json`.
//!
//! The export is written into a temporary sibling of the output directory and renamed
//! into place, so the directory never mixes files of two models (the loader prefers a
//! shard index left beside a new `model.safetensors`). A non-empty output directory
//! that is not a previous export is replaced only when forced.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_models::blip::BlipConfig;
use glimpse_models::clip::ClipConfig;
use serde_json::Value;

use crate::blip::BlipPretrain;
use crate::clip::ClipTrain;
use crate::lm::{LmConfig, LmTrain};
use crate::params::load_into;
use crate::recipe::{ModelKind, Recipe};
use crate::trainer::resolve_checkpoint;
use crate::vqa::BlipVqaTrain;
use crate::{Error, Result};

const SIDE_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",
    // LLaVA's processor and chat template.
    "processor_config.json",
    "chat_template.jinja",
];

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exported {
    pub architecture: String,
    pub dir: PathBuf,
    pub tensors: usize,
}

/// The files an export writes into a model directory.
const EXPORT_FILES: [&str; 3] = ["model.safetensors", "config.json", "generation_config.json"];

/// The model directories inside a BLIP export.
const EXPORT_DIRS: [&str; 2] = ["caption", "retrieval"];

pub(crate) fn write_model(
    out: &Path,
    model_dir: &Path,
    config: &Value,
    architecture: &str,
    tensors: BTreeMap<String, Tensor>,
    extra: &[(&str, Value)],
) -> Result<Exported> {
    std::fs::create_dir_all(out).map_err(|e| cannot_create(out, e))?;
    let mut cfg = config.clone();
    cfg["architectures"] = serde_json::json!([architecture]);
    let n = tensors.len();
    // Serialised here and written with `fs::write`, so the file gets the mode every
    // other file gets (0666 less the umask), not the 0600 of a temporary file.
    let weights = out.join("model.safetensors");
    let bytes = safetensors::serialize(&tensors, None).map_err(|e| Error::io_ctx(&weights, e))?;
    std::fs::write(&weights, bytes).map_err(|e| Error::io_ctx(&weights, e))?;
    let cfg_path = out.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&cfg).unwrap() + "\n",
    )
    .map_err(|e| Error::io_ctx(&cfg_path, e))?;
    for f in SIDE_FILES {
        let src = model_dir.join(f);
        if src.is_file() {
            // Read and written rather than copied, which would keep the source's mode.
            let bytes = std::fs::read(&src).map_err(|e| Error::io_ctx(&src, e))?;
            let dst = out.join(f);
            std::fs::write(&dst, bytes).map_err(|e| Error::io_ctx(&dst, e))?;
        }
    }
    for (name, v) in extra {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap() + "\n")
            .map_err(|e| Error::io_ctx(&p, e))?;
    }
    Ok(Exported {
        architecture: architecture.into(),
        dir: out.to_path_buf(),
        tensors: n,
    })
}

fn cannot_create(dir: &Path, e: std::io::Error) -> Error {
    Error::Train(format!("cannot create directory {}: {e}", dir.display()))
}

/// Whether `dir` holds only what an export writes (a model directory, or BLIP's
/// `caption/` and `retrieval/`), so that replacing it loses nothing else.
fn is_previous_export(dir: &Path, nested: bool) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|entry| {
        let Ok(entry) = entry else { return false };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Ok(kind) = entry.file_type() else {
            return false;
        };
        if kind.is_dir() {
            !nested
                && EXPORT_DIRS.contains(&name.as_ref())
                && is_previous_export(&entry.path(), true)
        } else {
            kind.is_file()
                && (EXPORT_FILES.contains(&name.as_ref()) || SIDE_FILES.contains(&name.as_ref()))
        }
    })
}

/// Refuses an output path that is a file, or a non-empty directory that is not a
/// previous export unless `force`.
fn check_target(out: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io_ctx(out, e)),
        Ok(meta) if !meta.is_dir() => Err(Error::io_ctx(
            out,
            "exists and is not a directory; choose another output directory",
        )),
        Ok(_) if force || is_previous_export(out, false) => Ok(()),
        Ok(_) => Err(Error::io_ctx(
            out,
            "is not empty and does not hold a previous export; choose another output \
             directory, or force replacing it and everything in it (--force)",
        )),
    }
}

/// A sibling of `out` for building the export; removed on drop unless committed.
struct Staging {
    dir: PathBuf,
    /// Where an existing `out` waits while the staged directory takes its place.
    old: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl Staging {
    fn new(out: &Path) -> Result<Self> {
        let name = out
            .file_name()
            .ok_or_else(|| Error::io_ctx(out, "the output path has no directory name"))?
            .to_string_lossy()
            .into_owned();
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| cannot_create(&parent, e))?;
        let pid = std::process::id();
        let dir = parent.join(format!(".{name}.export-{pid}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io_ctx(&dir, e))?;
        }
        std::fs::create_dir(&dir).map_err(|e| cannot_create(&dir, e))?;
        Ok(Staging {
            dir,
            old: parent.join(format!(".{name}.replaced-{pid}")),
            out: out.to_path_buf(),
            committed: false,
        })
    }

    /// Puts the staged directory at `out`. An existing `out` is first moved aside (a
    /// rename cannot replace a non-empty directory), then removed.
    fn commit(mut self) -> Result<()> {
        let old = self.old.clone();
        let had_old = self.out.exists();
        if had_old {
            std::fs::rename(&self.out, &old).map_err(|e| Error::io_ctx(&self.out, e))?;
        }
        if let Err(e) = std::fs::rename(&self.dir, &self.out) {
            if had_old {
                let _ = std::fs::rename(&old, &self.out);
            }
            return Err(Error::io_ctx(&self.out, e));
        }
        self.committed = true;
        if had_old {
            std::fs::remove_dir_all(&old).map_err(|e| Error::io_ctx(&old, e))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `generation_config.json` of a BLIP decoder: starts at bos, ends at `[SEP]`.
fn generation_json(cfg: &BlipConfig, max_length: usize) -> Value {
    let t = &cfg.text_config;
    serde_json::json!({
        "bos_token_id": t.bos_token_id,
        "eos_token_id": t.sep_token_id,
        "pad_token_id": t.pad_token_id,
        "max_length": max_length,
    })
}

/// Exports the checkpoint that `run` names (a run directory: its latest checkpoint; or
/// one checkpoint directory) into `out`, which must be absent, empty or a previous
/// export unless `force`; it is replaced as a whole.
pub fn export(run: &Path, out: &Path, force: bool) -> Result<Vec<Exported>> {
    check_target(out, force)?;
    let staging = Staging::new(out)?;
    let staged = staging.dir.clone();
    let mut done = export_into(run, &staged)?;
    staging.commit()?;
    for e in &mut done {
        e.dir = match e.dir.strip_prefix(&staged) {
            Ok(sub) if !sub.as_os_str().is_empty() => out.join(sub),
            _ => out.to_path_buf(),
        };
    }
    Ok(done)
}

fn export_into(run: &Path, out: &Path) -> Result<Vec<Exported>> {
    let (run_dir, ckpt) = resolve_checkpoint(run)?;
    let recipe = Recipe::from_file(&run_dir.join("recipe.toml"))?;
    let model_dir = run_dir.join("model");
    let cfg_path = model_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io_ctx(&cfg_path, e))?;
    let config: Value = serde_json::from_str(&text).map_err(|e| Error::io_ctx(&cfg_path, e))?;
    let weights_path = ckpt.join("model.safetensors");
    let weights = candle_core::safetensors::load(&weights_path, &Device::Cpu)
        .map_err(|e| Error::io_ctx(&weights_path, e))?;
    let origin = weights_path.display().to_string();
    let device = Device::Cpu;
    match recipe.model.kind {
        ModelKind::VisionAttributes => Err(Error::io_ctx(
            run,
            "a vision_attributes run has no Hugging Face architecture to export; start a blip or clip recipe from it with model.init_vision",
        )),
        ModelKind::Clip => {
            let cfg: ClipConfig =
                serde_json::from_value(config.clone()).map_err(|e| Error::io_ctx(&cfg_path, e))?;
            let m = ClipTrain::new(&cfg, &device)?;
            load_into(&m.vars.map, &weights, &origin)?;
            Ok(vec![write_model(
                out,
                &model_dir,
                &config,
                "CLIPModel",
                m.export_tensors()?,
                &[],
            )?])
        }
        ModelKind::BlipVqa => {
            let cfg: BlipConfig =
                serde_json::from_value(config.clone()).map_err(|e| Error::io_ctx(&cfg_path, e))?;
            let m = BlipVqaTrain::new(&cfg, 0.0, &device)?;
            load_into(&m.vars.map, &weights, &origin)?;
            let gen = generation_json(&cfg, 10);
            Ok(vec![write_model(
                out,
                &model_dir,
                &config,
                "BlipForQuestionAnswering",
                m.export_tensors()?,
                &[("generation_config.json", gen)],
            )?])
        }
        ModelKind::Lm => {
            let cfg = LmConfig::from_json(&config, &cfg_path.display().to_string())?;
            let m = LmTrain::new(&cfg, &device)?;
            load_into(&m.vars.map, &weights, &origin)?;
            let gen = serde_json::json!({
                "bos_token_id": config["bos_token_id"],
                "eos_token_id": config["eos_token_id"],
                "pad_token_id": config["pad_token_id"],
                "max_length": recipe.data.max_text_len,
            });
            Ok(vec![write_model(
                out,
                &model_dir,
                &config,
                cfg.class_name(),
                m.export_tensors()?,
                &[("generation_config.json", gen)],
            )?])
        }
        ModelKind::Blip2Stage1 => {
            let cfg: glimpse_models::blip2::Blip2Config =
                serde_json::from_value(config.clone()).map_err(|e| Error::io_ctx(&cfg_path, e))?;
            let m = crate::blip2::Blip2Stage1::new(&cfg, recipe.loss, 0, &device)?;
            load_into(&m.vars.map, &weights, &origin)?;
            Ok(vec![write_model(
                out,
                &model_dir,
                &config,
                "Blip2ForImageTextRetrieval",
                m.retrieval_tensors()?,
                &[],
            )?])
        }
        ModelKind::LlavaStage1 | ModelKind::LlavaStage2 => {
            Ok(vec![crate::llava::export_run(&recipe, &model_dir, &config, &weights, &origin, out)?])
        }
        ModelKind::Blip2Stage2 => {
            let cfg: glimpse_models::blip2::Blip2Config =
                serde_json::from_value(config.clone()).map_err(|e| Error::io_ctx(&cfg_path, e))?;
            let m = crate::blip2::Blip2Stage2::new(&cfg, &device)?;
            load_into(&m.vars.map, &weights, &origin)?;
            let t = &config["text_config"];
            let gen = serde_json::json!({
                "bos_token_id": t["bos_token_id"],
                "eos_token_id": t["eos_token_id"],
                "pad_token_id": t["pad_token_id"],
                // After the queries and bos, as many tokens as training saw.
                "max_new_tokens": recipe.data.max_text_len - 1,
            });
            Ok(vec![write_model(
                out,
                &model_dir,
                &config,
                "Blip2ForConditionalGeneration",
                m.export_tensors()?,
                &[("generation_config.json", gen)],
            )?])
        }
        ModelKind::Blip => {
            let cfg: BlipConfig =
                serde_json::from_value(config.clone()).map_err(|e| Error::io_ctx(&cfg_path, e))?;
            let m = BlipPretrain::new(&cfg, recipe.loss, 0, &device)?;
            load_into(&m.vars.map, &weights, &origin)?;
            let gen = generation_json(&cfg, recipe.data.max_text_len);
            Ok(vec![
                write_model(
                    &out.join("caption"),
                    &model_dir,
                    &config,
                    "BlipForConditionalGeneration",
                    m.caption_tensors()?,
                    &[("generation_config.json", gen)],
                )?,
                write_model(
                    &out.join("retrieval"),
                    &model_dir,
                    &config,
                    "BlipForImageTextRetrieval",
                    m.retrieval_tensors()?,
                    &[],
                )?,
            ])
        }
    }
}
