//! What a BLIP-2 stage-2 run starts from: its `OUT/model/` directory (the
//! `Blip2Config` assembled from the stage-1 Q-Former and the frozen OPT, the OPT's
//! tokenizer with the processor's `<image>` placeholder, the image processor and the
//! `Blip2Processor` config) and the starting weights.
//!
//! The placeholder: `Blip2Processor` (transformers 5.24) adds `<image>` to the
//! tokenizer when it has no `image_token`, at the next free id, and the model's
//! `image_token_index` must be that id. The run's tokenizer therefore holds `<image>`
//! at id `vocab` of the language model, whose embedding table (and tied head) grows
//! by one row, a copy of the pad token's: the placeholder's embedding is always
//! replaced by a query, and as an output it scores as the pad token does, which the
//! language model learned never to emit. The tokenizer's post-processor is OPT's (bos
//! first, no eos), so a prompt is continued rather than closed, in Glimpse and in the
//! reference alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde_json::{json, Value};

use super::stage2::is_frozen;
use crate::params::sorted_vars;
use crate::recipe::{ModelKind, Recipe};
use crate::trainer::{load_tensors, preprocessor_json, resolve_checkpoint};
use crate::{Error, Result};

/// The image placeholder the processor inserts.
pub const IMAGE_TOKEN: &str = "<image>";

/// The directory holding the config and tokenizer of a stage-1 source: an exported
/// model directory, or a training run's (or checkpoint's) `model/`.
pub fn qformer_dir(qformer_from: &Path) -> Result<PathBuf> {
    if crate::trainer::is_exported_model(qformer_from) {
        return Ok(qformer_from.to_path_buf());
    }
    Ok(resolve_checkpoint(qformer_from)?.0.join("model"))
}

/// The weights file of a stage-1 source (export or run).
fn qformer_weights(qformer_from: &Path) -> Result<PathBuf> {
    if crate::trainer::is_exported_model(qformer_from) {
        return Ok(qformer_from.join("model.safetensors"));
    }
    Ok(resolve_checkpoint(qformer_from)?
        .1
        .join("model.safetensors"))
}

fn read(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io_ctx(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::io_ctx(path, e))
}

fn write(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap() + "\n")
        .map_err(|e| Error::io_ctx(path, e))
}

/// Puts the keys of `over` into `base`, objects merged key by key.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn usize_at(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(|x| x.as_u64()).map(|x| x as usize)
}

/// The stage-2 `Blip2Config`: vision and Q-Former sizes and the number of queries from
/// the stage-1 source, the language model's config (its vocabulary grown by the
/// placeholder) as `text_config`, then the recipe's `model.config` on top. A width or
/// size that no longer fits the weights it must load is an error naming both.
pub fn stage2_config(recipe: &Recipe, origin: &Path) -> Result<Value> {
    let m = &recipe.model;
    let bad = |message: String| Error::Recipe {
        path: origin.to_path_buf(),
        message,
    };
    let (Some(qf), Some(lm_dir)) = (&m.qformer_from, &m.lm_from) else {
        return Err(bad(
            "blip2_stage2 needs model.qformer_from and model.lm_from".into(),
        ));
    };
    let q_path = qformer_dir(qf)?.join("config.json");
    let stage1 = read(&q_path)?;
    let lm_path = lm_dir.join("config.json");
    let lm = read(&lm_path)?;
    let lm_type = lm.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
    if lm_type != "opt" {
        return Err(bad(format!(
            "model.lm_from: {} has model_type {lm_type:?}; blip2_stage2 trains the OPT path (an OPTForCausalLM directory such as models/opt-lm-synth)",
            lm_path.display()
        )));
    }
    let lm_width = usize_at(&lm, "hidden_size").unwrap_or(768);
    let lm_vocab =
        usize_at(&lm, "vocab_size").ok_or_else(|| Error::io_ctx(&lm_path, "has no vocab_size"))?;
    let mut text = lm.clone();
    text["vocab_size"] = json!(lm_vocab + 1);
    text.as_object_mut().map(|o| o.remove("architectures"));
    let mut qformer = stage1["qformer_config"].clone();
    if !qformer.is_object() {
        return Err(Error::io_ctx(&q_path, "has no qformer_config object"));
    }
    // The generation model runs queries only: no text feed-forward.
    qformer["use_qformer_text_input"] = json!(false);
    let mut cfg = json!({
        "model_type": "blip-2",
        "architectures": ["Blip2ForConditionalGeneration"],
        "vision_config": stage1["vision_config"],
        "qformer_config": qformer,
        "text_config": text,
        "num_query_tokens": stage1.get("num_query_tokens").cloned().unwrap_or(json!(32)),
        "image_text_hidden_size": stage1.get("image_text_hidden_size").cloned().unwrap_or(json!(256)),
        "initializer_range": stage1.get("initializer_range").cloned().unwrap_or(json!(0.02)),
        "image_token_index": lm_vocab,
        "use_decoder_only_language_model": true,
    });
    merge(&mut cfg, &read(&recipe.model.config)?);
    let cfg_file = recipe.model.config.display().to_string();
    let t = &cfg["text_config"];
    let width = usize_at(t, "hidden_size").unwrap_or(lm_width);
    if width != lm_width {
        return Err(bad(format!(
            "text_config.hidden_size = {width} (from {cfg_file}) does not match the language model's width {lm_width} in {}: language_projection must output the frozen LM's width",
            lm_path.display()
        )));
    }
    for key in [
        "num_hidden_layers",
        "ffn_dim",
        "num_attention_heads",
        "word_embed_proj_dim",
    ] {
        if t.get(key) != lm.get(key) && lm.get(key).is_some() {
            return Err(bad(format!(
                "text_config.{key} = {} (from {cfg_file}) differs from {} in {}: the frozen language model is loaded as it is",
                t[key], lm[key], lm_path.display()
            )));
        }
    }
    for key in ["hidden_size", "num_hidden_layers", "num_attention_heads"] {
        let (ours, theirs) = (&cfg["qformer_config"][key], &stage1["qformer_config"][key]);
        if ours != theirs {
            return Err(bad(format!(
                "qformer_config.{key} = {ours} (from {cfg_file}) differs from {theirs} in {}: the Q-Former is loaded from there",
                q_path.display()
            )));
        }
    }
    if cfg["num_query_tokens"] != stage1["num_query_tokens"]
        && stage1.get("num_query_tokens").is_some()
    {
        return Err(bad(format!(
            "num_query_tokens = {} (from {cfg_file}) differs from {} in {}: the queries are loaded from there",
            cfg["num_query_tokens"], stage1["num_query_tokens"], q_path.display()
        )));
    }
    let queries = usize_at(&cfg, "num_query_tokens").unwrap_or(32);
    let positions = usize_at(t, "max_position_embeddings").unwrap_or(2048);
    // Queries, then bos, prompt, text and eos (at most data.max_text_len).
    let need = queries + recipe.data.max_text_len;
    if positions < need {
        return Err(bad(format!(
            "the language model in {} has max_position_embeddings = {positions}, fewer than num_query_tokens ({queries}) + data.max_text_len ({}); lower data.max_text_len",
            lm_path.display(),
            recipe.data.max_text_len
        )));
    }
    Ok(cfg)
}

/// Writes `OUT/model/` of a stage-2 run: config, tokenizer with `<image>`, image
/// processor and processor config.
pub fn prepare_stage2_dir(recipe: &Recipe, dir: &Path) -> Result<()> {
    let origin = recipe.model.config.clone();
    let cfg = stage2_config(recipe, &origin)?;
    let lm_dir = recipe.model.lm_from.as_ref().expect("validated");
    let image_token = usize_at(&cfg, "image_token_index").expect("set above");
    // Tokenizer: the LM's, OPT's post-processor, the placeholder added.
    let tok_path = lm_dir.join("tokenizer.json");
    let mut tok = read(&tok_path)?;
    let bos = tok["post_processor"]["special_tokens"]
        .as_object()
        .and_then(|s| {
            s.keys()
                .find(|k| k.contains("CLS") || k.contains("<s>") || k.contains("</s>"))
                .cloned()
        })
        .unwrap_or_else(|| "[CLS]".to_string());
    let bos_id = tok["post_processor"]["special_tokens"][&bos]["ids"].clone();
    tok["post_processor"] = json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos.clone(): {"id": bos, "ids": bos_id, "tokens": [bos]}},
    });
    let added = tok["added_tokens"]
        .as_array_mut()
        .ok_or_else(|| Error::io_ctx(&tok_path, "has no added_tokens list"))?;
    if added.iter().any(|t| t["content"] == IMAGE_TOKEN) {
        return Err(Error::io_ctx(
            &tok_path,
            "already holds <image>; name the text-only language model",
        ));
    }
    added.push(
        json!({"id": image_token, "content": IMAGE_TOKEN, "single_word": false,
        "lstrip": false, "rstrip": false, "normalized": false, "special": true}),
    );
    std::fs::create_dir_all(dir).map_err(|e| Error::io_ctx(dir, e))?;
    write(&dir.join("tokenizer.json"), &tok)?;
    let tc_path = lm_dir.join("tokenizer_config.json");
    let mut tc = if tc_path.is_file() {
        read(&tc_path)?
    } else {
        json!({})
    };
    // The fast tokenizer as stored (a BertTokenizer class would add [SEP] again).
    tc["tokenizer_class"] = json!("PreTrainedTokenizerFast");
    tc["processor_class"] = json!("Blip2Processor");
    write(&dir.join("tokenizer_config.json"), &tc)?;
    let stm = lm_dir.join("special_tokens_map.json");
    if stm.is_file() {
        std::fs::copy(&stm, dir.join("special_tokens_map.json"))
            .map_err(|e| Error::io_ctx(&stm, e))?;
    }
    write(&dir.join("config.json"), &cfg)?;
    let size = usize_at(&cfg["vision_config"], "image_size").unwrap_or(224);
    let pre = preprocessor_json(ModelKind::Blip2Stage2, size);
    write(&dir.join("preprocessor_config.json"), &pre)?;
    write(
        &dir.join("processor_config.json"),
        &json!({"processor_class": "Blip2Processor", "num_query_tokens": cfg["num_query_tokens"]}),
    )
}

/// The language model's tensors under the stage-2 names, its embedding table (and an
/// untied head) grown to `vocab` rows with copies of the pad row.
fn lm_tensors(lm_dir: &Path, vocab: usize, pad: usize) -> Result<HashMap<String, Tensor>> {
    let path = lm_dir.join("model.safetensors");
    let raw = load_tensors(&path, &Device::Cpu)?;
    let mut out = HashMap::new();
    for (name, t) in raw {
        let grow = name.ends_with("embed_tokens.weight") || name == "lm_head.weight";
        let t = match grow {
            true if t.dim(0)? < vocab => {
                let extra = vocab - t.dim(0)?;
                let row = t.narrow(0, pad.min(t.dim(0)? - 1), 1)?;
                let rows: Vec<&Tensor> = std::iter::repeat_n(&row, extra).collect();
                Tensor::cat(&[&t, &Tensor::cat(&rows, 0)?], 0)?
            }
            _ => t,
        };
        out.insert(format!("language_model.{name}"), t);
    }
    Ok(out)
}

/// Copies the starting weights into `map`: the frozen tower (from `vision_from`, else
/// the stage-1 source), the queries and Q-Former (stage-1 source) and the language
/// model (`lm_from`); `language_projection` keeps its initial values. Every other
/// variable must be found, with its shape.
pub fn load_stage2_start(
    map: &VarMap,
    qformer_from: &Path,
    lm_from: &Path,
    vision_from: Option<&Path>,
    vocab: usize,
    pad: usize,
) -> Result<()> {
    let q_path = qformer_weights(qformer_from)?;
    let stage1 = load_tensors(&q_path, &Device::Cpu)?;
    let vision = match vision_from {
        Some(v) => {
            let p = if v.is_dir() {
                v.join("model.safetensors")
            } else {
                v.to_path_buf()
            };
            Some((load_tensors(&p, &Device::Cpu)?, p))
        }
        None => None,
    };
    let lm = lm_tensors(lm_from, vocab, pad)?;
    let lm_path = lm_from.join("model.safetensors");
    for (name, var) in sorted_vars(map) {
        if name.starts_with("language_projection.") {
            continue;
        }
        let (source, origin) = if name.starts_with("language_model.") {
            (&lm, &lm_path)
        } else if let (true, Some((v, p))) = (name.starts_with("vision_model."), &vision) {
            (v, p)
        } else {
            (&stage1, &q_path)
        };
        let key = name.strip_prefix("language_model.").map(|k| k.to_string());
        let t = source.get(&name).ok_or_else(|| {
            Error::Train(format!(
                "{}: no {} for the stage-2 model's {name}{}",
                origin.display(),
                key.as_deref().unwrap_or(&name),
                if is_frozen(&name) {
                    " (frozen part)"
                } else {
                    ""
                }
            ))
        })?;
        if t.shape() != var.shape() {
            return Err(Error::Train(format!(
                "{}: {name} is {:?}, the stage-2 model's is {:?}",
                origin.display(),
                t.shape(),
                var.shape()
            )));
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}
