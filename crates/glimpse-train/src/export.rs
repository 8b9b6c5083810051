//! `glimpse export`: a training checkpoint becomes Hugging Face model directories
//! that Glimpse and `transformers` load: a CLIP run → one `CLIPModel` directory; a
//! BLIP pretraining run → `caption/` (`BlipForConditionalGeneration`) and
//! `retrieval/` (`BlipForImageTextRetrieval`). Each holds `model.safetensors`,
//! `config.json`, the tokenizer files and `preprocessor_config.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_models::blip::BlipConfig;
use glimpse_models::clip::ClipConfig;
use serde_json::Value;

use crate::blip::BlipPretrain;
use crate::clip::ClipTrain;
use crate::params::load_into;
use crate::recipe::{ModelKind, Recipe};
use crate::trainer::resolve_checkpoint;
use crate::vqa::BlipVqaTrain;
use crate::{Error, Result};

const SIDE_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "preprocessor_config.json",
];

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exported {
    pub architecture: String,
    pub dir: PathBuf,
    pub tensors: usize,
}

fn write_model(
    out: &Path,
    model_dir: &Path,
    config: &Value,
    architecture: &str,
    tensors: BTreeMap<String, Tensor>,
    extra: &[(&str, Value)],
) -> Result<Exported> {
    std::fs::create_dir_all(out).map_err(|e| Error::io_ctx(out, e))?;
    let mut cfg = config.clone();
    cfg["architectures"] = serde_json::json!([architecture]);
    let n = tensors.len();
    let tmp = out.join("model.safetensors.tmp");
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    candle_core::safetensors::save(&map, &tmp).map_err(|e| Error::io_ctx(&tmp, e))?;
    std::fs::rename(&tmp, out.join("model.safetensors")).map_err(|e| Error::io_ctx(out, e))?;
    let cfg_path = out.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_string_pretty(&cfg).unwrap() + "\n",
    )
    .map_err(|e| Error::io_ctx(&cfg_path, e))?;
    for f in SIDE_FILES {
        let src = model_dir.join(f);
        if src.is_file() {
            std::fs::copy(&src, out.join(f)).map_err(|e| Error::io_ctx(&src, e))?;
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
/// one checkpoint directory) into `out`.
pub fn export(run: &Path, out: &Path) -> Result<Vec<Exported>> {
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
