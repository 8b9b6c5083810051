//! Where the parts of a LLaVA checkpoint are stored, and reading its config.
//!
//! Published checkpoints and the reference's own `save_pretrained` disagree:
//!
//! | part | hub (llava-hf) | saved by transformers 5.24 | in-memory 5.x names |
//! |---|---|---|---|
//! | vision | `vision_tower.vision_model.*` | `vision_tower.*` | `model.vision_tower.vision_model.*` |
//! | projector | `multi_modal_projector.*` | `multi_modal_projector.*` | `model.multi_modal_projector.*` |
//! | LLaMA body | `language_model.model.*` | `language_model.model.*` | `model.language_model.*` |
//! | LM head | `language_model.lm_head` | `language_model.lm_head` | `lm_head` |
//!
//! Each part is located on its own by probing one tensor it must have, so mixtures
//! load too. The original LLaVA repository's layout (`model.mm_projector.*`, `mm_*`
//! config fields) is not read: convert it with the reference's conversion script.

use std::path::Path;

use super::config::LlavaConfig;
use crate::checkpoint::{ModelFiles, Weights};
use crate::{Error, Result};

/// Checkpoint prefixes of the four parts (no trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlavaLayout {
    pub vision_tower: String,
    pub projector: String,
    pub language_model: String,
    pub lm_head: String,
}

const VISION: [&str; 4] = [
    "vision_tower.vision_model",
    "vision_tower",
    "model.vision_tower.vision_model",
    "model.vision_tower",
];
const PROJECTOR: [&str; 2] = ["multi_modal_projector", "model.multi_modal_projector"];
const LANGUAGE: [&str; 2] = ["language_model.model", "model.language_model"];
const HEAD: [&str; 2] = ["language_model.lm_head", "lm_head"];

impl LlavaLayout {
    /// The layout of the llava-hf checkpoints on the hub.
    pub fn hub() -> Self {
        Self {
            vision_tower: VISION[0].into(),
            projector: PROJECTOR[0].into(),
            language_model: LANGUAGE[0].into(),
            lm_head: HEAD[0].into(),
        }
    }

    /// Finds each part by a tensor it must hold; an unknown layout is an error naming
    /// what was looked for. A missing head falls back to the layout of the body (a
    /// tied checkpoint may leave it out).
    pub fn detect(weights: &Weights, dir: &Path) -> Result<Self> {
        let find = |candidates: &[&str], probe: &str, what: &str| {
            candidates
                .iter()
                .find(|p| weights.contains(&format!("{p}.{probe}")))
                .map(|p| p.to_string())
                .ok_or_else(|| {
                    let tried: Vec<String> =
                        candidates.iter().map(|p| format!("{p}.{probe}")).collect();
                    let hint = if weights.contains("model.mm_projector.0.weight") {
                        " (this is the original LLaVA repository's layout; convert it to the \
                         transformers layout first)"
                    } else {
                        ""
                    };
                    Error::Checkpoint {
                        dir: dir.to_path_buf(),
                        msg: format!(
                            "no {what} weights found: looked for {}{hint}",
                            tried.join(", ")
                        ),
                    }
                })
        };
        let vision_tower = find(&VISION, "embeddings.patch_embedding.weight", "vision tower")?;
        let projector = find(&PROJECTOR, "linear_1.weight", "projector")?;
        let language_model = find(&LANGUAGE, "embed_tokens.weight", "language model")?;
        let lm_head = HEAD
            .iter()
            .find(|p| weights.contains(&format!("{p}.weight")))
            .map(|p| p.to_string())
            .unwrap_or_else(|| match language_model.as_str() {
                "language_model.model" => HEAD[0].into(),
                _ => HEAD[1].into(),
            });
        Ok(Self {
            vision_tower,
            projector,
            language_model,
            lm_head,
        })
    }
}

/// Reads `config.json` as a [`LlavaConfig`], checking that it describes LLaVA with a
/// CLIP vision tower and a LLaMA language model (other towers are not implemented).
pub fn read_config(files: &ModelFiles) -> Result<LlavaConfig> {
    let raw = files.config_json()?;
    let bad = |msg: String| Error::Config {
        path: files.config.clone(),
        msg,
    };
    let model_type = |v: &serde_json::Value| {
        v.get("model_type")
            .and_then(|m| m.as_str())
            .map(str::to_string)
    };
    if let Some(m) = model_type(&raw).filter(|m| m != "llava") {
        return Err(bad(format!(
            "model_type is {m:?}; this loader reads \"llava\" (LlavaForConditionalGeneration)"
        )));
    }
    let parts = [
        ("vision_config", "clip_vision_model"),
        ("text_config", "llama"),
    ];
    for (part, want) in parts {
        if let Some(m) = raw.get(part).and_then(model_type).filter(|m| m != want) {
            return Err(bad(format!(
                "{part}.model_type is {m:?}; only {want:?} is supported for LLaVA"
            )));
        }
    }
    files.read_config()
}
