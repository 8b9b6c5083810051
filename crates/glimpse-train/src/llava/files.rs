//! The `OUT/model/` directory of a LLaVA run and the checks of its recipe.
//!
//! Stage 1 composes a `LlavaForConditionalGeneration` directory from its parts: the
//! CLIP `vision_config` of `model.vision_from`, the LLaMA config of `model.lm_from`,
//! the top-level LLaVA fields of `model.config`, the language model's tokenizer with
//! `<image>` appended (id = the old vocabulary size; the embedding and head grow by one
//! row), the built-in LLaVA-1.5 chat template of `glimpse-models` (the one inference
//! uses when a checkpoint has none) and a `processor_config.json` holding the CLIP
//! tower's image processor. Stage 2 copies the directory of the run or export it
//! starts from. `glimpse export` adds the weights, so the run directory already is what
//! `transformers` and Glimpse load.

use std::path::Path;

use glimpse_models::llava::ChatTemplate;
use serde_json::{json, Value};

use crate::recipe::{ModelKind, Projector, Recipe};
use crate::trainer::{read_json_file, write_json_file};
use crate::{Error, Result};

/// The placeholder the processor expands into image positions.
pub const IMAGE_TOKEN: &str = "<image>";

/// Files of a LLaVA model directory besides the weights and `config.json`.
pub const MODEL_FILES: [&str; 5] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "chat_template.jinja",
];

/// The recipe rules of the two LLaVA kinds (and that their fields stay theirs).
pub fn validate_recipe(r: &Recipe) -> std::result::Result<(), String> {
    let m = &r.model;
    let llava = matches!(m.kind, ModelKind::LlavaStage1 | ModelKind::LlavaStage2);
    if !llava {
        if m.lm_from.is_some() || m.projector.is_some() {
            return Err("model.lm_from and model.projector apply to llava_stage1 and llava_stage2 recipes only".into());
        }
        return Ok(());
    }
    if r.loss.hard_negative_captions {
        return Err("loss.hard_negative_captions does not apply to LLaVA recipes".into());
    }
    if r.data.caption_prompt.is_some() {
        return Err("data.caption_prompt does not apply to LLaVA recipes".into());
    }
    match m.kind {
        ModelKind::LlavaStage1 => {
            if m.vision_from.is_none() {
                return Err("llava_stage1 needs model.vision_from (a CLIP model directory whose vision tower is frozen, e.g. models/clip-synth)".into());
            }
            if m.lm_from.is_none() {
                return Err("llava_stage1 needs model.lm_from (a LlamaForCausalLM directory, frozen, e.g. models/llama-lm-synth)".into());
            }
            if m.init.is_some() {
                return Err("model.init does not apply to llava_stage1 (its parts come from model.vision_from and model.lm_from)".into());
            }
        }
        _ => {
            if m.init.is_none() {
                return Err(
                    "llava_stage2 needs model.init (a llava_stage1 run or its export)".into(),
                );
            }
            if m.lm_from.is_some() {
                return Err("model.lm_from applies to llava_stage1; llava_stage2 takes every weight from model.init".into());
            }
        }
    }
    Ok(())
}

/// Writes `OUT/model/` of a LLaVA run.
pub fn prepare_dir(recipe: &Recipe, dir: &Path) -> Result<()> {
    match recipe.model.kind {
        ModelKind::LlavaStage1 => prepare_stage1(recipe, dir),
        _ => {
            let init = recipe.model.init.as_deref().expect("validated");
            let src = if crate::trainer::is_exported_model(init) {
                init.to_path_buf()
            } else {
                crate::trainer::resolve_checkpoint(init)?.0.join("model")
            };
            for f in MODEL_FILES.iter().chain(&["config.json"]) {
                let p = src.join(f);
                if !p.is_file() {
                    return Err(Error::io_ctx(
                        &p,
                        "is missing: model.init must name a llava_stage1 run or a LLaVA export",
                    ));
                }
                std::fs::copy(&p, dir.join(f)).map_err(|e| Error::io_ctx(&p, e))?;
            }
            // RoPE positions hold no weights: longer conversations than stage 1's
            // captions only need the config to say so.
            let path = dir.join("config.json");
            let mut config: Value = read_json_file(&path)?;
            let image = config["image_seq_length"].as_u64().unwrap_or(0) as usize;
            let need = (image + recipe.data.max_text_len).next_power_of_two();
            let text = &mut config["text_config"];
            if text["max_position_embeddings"].as_u64().unwrap_or(0) < need as u64 {
                text["max_position_embeddings"] = need.into();
                write_json_file(&path, &config)?;
            }
            check_config_text_len(recipe, &config, &src)
        }
    }
}

fn prepare_stage1(recipe: &Recipe, dir: &Path) -> Result<()> {
    let m = &recipe.model;
    let (vision_dir, lm_dir) = (
        m.vision_from.as_deref().expect("validated"),
        m.lm_from.as_deref().expect("validated"),
    );
    let vcfg: Value = read_json_file(&vision_dir.join("config.json"))?;
    let mut vision = vcfg
        .get("vision_config")
        .cloned()
        .filter(Value::is_object)
        .ok_or_else(|| {
            Error::io_ctx(
                &vision_dir.join("config.json"),
                "has no vision_config: model.vision_from must be a CLIP model directory",
            )
        })?;
    vision["model_type"] = "clip_vision_model".into();
    let text: Value = read_json_file(&lm_dir.join("config.json"))?;
    if text.get("model_type").and_then(Value::as_str) != Some("llama") {
        return Err(Error::io_ctx(
            &lm_dir.join("config.json"),
            "is not a LLaMA config (model_type \"llama\"): LLaVA's language model must be a LlamaForCausalLM",
        ));
    }
    let template: Value = read_json_file(&m.config)?;
    for (part, got) in [("vision_config", &vision), ("text_config", &text)] {
        let want = template[part]["hidden_size"].as_u64();
        let have = got["hidden_size"].as_u64();
        if let (Some(w), Some(h)) = (want, have) {
            if w != h {
                let from = if part == "vision_config" {
                    vision_dir
                } else {
                    lm_dir
                };
                return Err(Error::Recipe {
                    path: m.config.clone(),
                    message: format!(
                        "{part}.hidden_size = {w} but the model in {} has width {h}; \
                         the projector maps the tower's width to the language model's, \
                         so leave the width out or make it match",
                        from.display()
                    ),
                });
            }
        }
    }

    // The tokenizer, with `<image>` appended and bos-only post-processing (the
    // language model's sequences are `bos ... eos`; the prompt must not end in eos).
    let tok_path = lm_dir.join("tokenizer.json");
    let mut tok: Value = read_json_file(&tok_path)?;
    let vocab = text["vocab_size"]
        .as_u64()
        .ok_or_else(|| Error::io_ctx(&lm_dir.join("config.json"), "has no vocab_size"))?;
    let added = tok["added_tokens"]
        .as_array_mut()
        .ok_or_else(|| Error::io_ctx(&tok_path, "has no added_tokens list"))?;
    if added.iter().any(|t| t["content"] == IMAGE_TOKEN) {
        return Err(Error::io_ctx(&tok_path, "already holds <image>"));
    }
    added.push(json!({
        "id": vocab, "content": IMAGE_TOKEN, "single_word": false, "lstrip": false,
        "rstrip": false, "normalized": false, "special": true,
    }));
    let tok_cfg_path = lm_dir.join("tokenizer_config.json");
    let mut tok_cfg: Value = read_json_file(&tok_cfg_path)?;
    let bos = tok_cfg["bos_token"]
        .as_str()
        .ok_or_else(|| Error::io_ctx(&tok_cfg_path, "names no bos_token"))?
        .to_string();
    let bos_id = text["bos_token_id"]
        .as_u64()
        .ok_or_else(|| Error::io_ctx(&lm_dir.join("config.json"), "has no bos_token_id"))?;
    tok["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos.clone(): {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    });
    write_json_file(&dir.join("tokenizer.json"), &tok)?;

    let image_tokens = {
        let (size, patch) = (
            vision["image_size"].as_u64().unwrap_or(224),
            vision["patch_size"].as_u64().unwrap_or(32).max(1),
        );
        (size / patch).pow(2)
    };
    let max_pos = (image_tokens as usize + recipe.data.max_text_len).next_power_of_two();
    tok_cfg["tokenizer_class"] = "PreTrainedTokenizerFast".into();
    tok_cfg["processor_class"] = "LlavaProcessor".into();
    tok_cfg["model_max_length"] = max_pos.into();
    tok_cfg["image_token"] = IMAGE_TOKEN.into();
    let extra = tok_cfg["extra_special_tokens"].take();
    let mut extra: Vec<Value> = extra.as_array().cloned().unwrap_or_default();
    extra.push(IMAGE_TOKEN.into());
    tok_cfg["extra_special_tokens"] = Value::Array(extra);
    write_json_file(&dir.join("tokenizer_config.json"), &tok_cfg)?;
    let mut special: Value =
        read_json_file(&lm_dir.join("special_tokens_map.json")).unwrap_or_else(|_| json!({}));
    special["image_token"] = IMAGE_TOKEN.into();
    write_json_file(&dir.join("special_tokens_map.json"), &special)?;

    let template_path = dir.join("chat_template.jinja");
    std::fs::write(&template_path, ChatTemplate::llava_default().source)
        .map_err(|e| Error::io_ctx(&template_path, e))?;

    let pre: Value = read_json_file(&vision_dir.join("preprocessor_config.json"))?;
    let patch = vision["patch_size"].clone();
    let mut text_cfg = text.clone();
    if let Some(o) = text_cfg.as_object_mut() {
        o.remove("architectures");
        o.remove("transformers_version");
        o.remove("dtype");
    }
    text_cfg["vocab_size"] = (vocab + 1).into();
    let mpe = text_cfg["max_position_embeddings"].as_u64().unwrap_or(0) as usize;
    text_cfg["max_position_embeddings"] = mpe.max(max_pos).into();

    let mut config = json!({
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": vocab,
        "image_seq_length": image_tokens,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": "default",
        "vision_feature_layer": -2,
        "multimodal_projector_bias": true,
        "tie_word_embeddings": false,
        "pad_token_id": text["pad_token_id"],
    });
    if let Some(o) = template.as_object() {
        for (k, v) in o {
            if k != "vision_config" && k != "text_config" {
                config[k] = v.clone();
            }
        }
    }
    if config["vision_feature_select_strategy"] == "full" {
        config["image_seq_length"] = (image_tokens + 1).into();
    }
    config["vision_config"] = vision;
    config["text_config"] = text_cfg;
    let strategy = config["vision_feature_select_strategy"].clone();
    write_json_file(
        &dir.join("processor_config.json"),
        &json!({
            "image_processor": pre,
            "image_token": IMAGE_TOKEN,
            "num_additional_image_tokens": 1,
            "patch_size": patch,
            "processor_class": "LlavaProcessor",
            "vision_feature_select_strategy": strategy,
        }),
    )?;
    if m.projector == Some(Projector::Linear) {
        // Not a reference field: marks a run that `glimpse export` must refuse.
        config["glimpse_projector"] = "linear".into();
    }
    check_config_text_len(recipe, &config, &m.config)?;
    write_json_file(&dir.join("config.json"), &config)
}

/// The language model must hold the image tokens plus `data.max_text_len`.
fn check_config_text_len(recipe: &Recipe, config: &Value, origin: &Path) -> Result<()> {
    let mpe = config["text_config"]["max_position_embeddings"]
        .as_u64()
        .unwrap_or(0) as usize;
    let image = config["image_seq_length"].as_u64().unwrap_or(0) as usize;
    let need = image + recipe.data.max_text_len;
    if mpe < need {
        return Err(Error::Recipe {
            path: origin.to_path_buf(),
            message: format!(
                "text_config.max_position_embeddings = {mpe} is below the {image} image \
                 tokens plus data.max_text_len = {}",
                recipe.data.max_text_len
            ),
        });
    }
    Ok(())
}
