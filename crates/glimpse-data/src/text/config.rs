//! The parts of `tokenizer_config.json` / `special_tokens_map.json` that change what
//! `tokenizer.json` alone would do: which strings are the pad/bos/eos tokens, which
//! tokens count as special when decoding, the model's maximum length and whether
//! decoding cleans up spaces before punctuation.
//!
//! Token entries come either as plain strings or as serialised `AddedToken` objects
//! (`{"content": "[PAD]", ...}`); both are accepted.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Above this, `model_max_length` is the reference's "unknown" sentinel (1e30), not a limit.
const SANE_MAX_LENGTH: f64 = 1e7;

/// Special-token settings merged from the files beside `tokenizer.json`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TokenizerSettings {
    pub tokenizer_class: Option<String>,
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
    pub sep: Option<String>,
    pub pad: Option<String>,
    pub cls: Option<String>,
    pub mask: Option<String>,
    /// Further tokens marked special (`additional_special_tokens`, `extra_special_tokens`,
    /// `added_tokens_decoder` entries with `"special": true`).
    pub extra_special: Vec<String>,
    pub model_max_length: Option<usize>,
    pub clean_up_tokenization_spaces: bool,
}

#[derive(Debug, Default, Deserialize)]
struct RawSettings {
    tokenizer_class: Option<String>,
    bos_token: Option<Value>,
    eos_token: Option<Value>,
    unk_token: Option<Value>,
    sep_token: Option<Value>,
    pad_token: Option<Value>,
    cls_token: Option<Value>,
    mask_token: Option<Value>,
    additional_special_tokens: Option<Value>,
    extra_special_tokens: Option<Value>,
    added_tokens_decoder: Option<serde_json::Map<String, Value>>,
    model_max_length: Option<Value>,
    clean_up_tokenization_spaces: Option<bool>,
}

fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(m) => m.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

fn token_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().filter_map(token_text).collect(),
        // transformers 5 also writes `extra_special_tokens` as a name -> token map.
        Value::Object(m) if !m.contains_key("content") => {
            m.values().filter_map(token_text).collect()
        }
        other => token_text(other).into_iter().collect(),
    }
}

fn read_raw(path: &Path) -> Result<Option<RawSettings>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
}

impl TokenizerSettings {
    /// Reads `tokenizer_config.json` and `special_tokens_map.json` in `dir` when present;
    /// the former wins where both name a token.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg = read_raw(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let map = read_raw(&dir.join("special_tokens_map.json"))?.unwrap_or_default();
        let pick = |a: &Option<Value>, b: &Option<Value>| {
            a.as_ref()
                .and_then(token_text)
                .or_else(|| b.as_ref().and_then(token_text))
        };
        let mut extra_special = Vec::new();
        for raw in [&cfg, &map] {
            for list in [&raw.additional_special_tokens, &raw.extra_special_tokens] {
                extra_special.extend(list.iter().flat_map(token_list));
            }
        }
        for entry in cfg.added_tokens_decoder.iter().flat_map(|m| m.values()) {
            if entry.get("special").and_then(Value::as_bool) == Some(true) {
                extra_special.extend(token_text(entry));
            }
        }
        let model_max_length = cfg
            .model_max_length
            .as_ref()
            .and_then(Value::as_f64)
            .filter(|n| (1.0..=SANE_MAX_LENGTH).contains(n))
            .map(|n| n as usize);
        Ok(TokenizerSettings {
            tokenizer_class: cfg.tokenizer_class.clone(),
            bos: pick(&cfg.bos_token, &map.bos_token),
            eos: pick(&cfg.eos_token, &map.eos_token),
            unk: pick(&cfg.unk_token, &map.unk_token),
            sep: pick(&cfg.sep_token, &map.sep_token),
            pad: pick(&cfg.pad_token, &map.pad_token),
            cls: pick(&cfg.cls_token, &map.cls_token),
            mask: pick(&cfg.mask_token, &map.mask_token),
            extra_special,
            model_max_length,
            // transformers 5 defaults this to false; older files often set it to true.
            clean_up_tokenization_spaces: cfg.clean_up_tokenization_spaces.unwrap_or(false),
        })
    }

    /// Fills tokens the files leave out with the class defaults of the reference
    /// (`CLIPTokenizer`, `BertTokenizer`); `clip_like` / `bert_like` describe the
    /// tokenizer.json model when the class is not named.
    pub fn apply_class_defaults(&mut self, clip_like: bool, bert_like: bool) {
        let class = self.tokenizer_class.as_deref().unwrap_or("");
        let fill = |slot: &mut Option<String>, v: &str| {
            if slot.is_none() {
                *slot = Some(v.to_string());
            }
        };
        if class.starts_with("CLIPTokenizer") || (class.is_empty() && clip_like) {
            fill(&mut self.bos, "<|startoftext|>");
            fill(&mut self.eos, "<|endoftext|>");
            fill(&mut self.pad, "<|endoftext|>");
            fill(&mut self.unk, "<|endoftext|>");
        } else if class.starts_with("BertTokenizer") || (class.is_empty() && bert_like) {
            fill(&mut self.pad, "[PAD]");
            fill(&mut self.unk, "[UNK]");
            fill(&mut self.sep, "[SEP]");
            fill(&mut self.cls, "[CLS]");
            fill(&mut self.mask, "[MASK]");
        }
    }

    /// Every token string the reference treats as special.
    pub fn all_special(&self) -> Vec<String> {
        let named = [
            &self.bos, &self.eos, &self.unk, &self.sep, &self.pad, &self.cls, &self.mask,
        ];
        let mut all: Vec<String> = named.into_iter().flatten().cloned().collect();
        all.extend(self.extra_special.iter().cloned());
        all.sort();
        all.dedup();
        all
    }
}
