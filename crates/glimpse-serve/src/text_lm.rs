//! Text-only causal language models (`OPTForCausalLM`, `LlamaForCausalLM`, e.g. an
//! exported `lm` training run) behind `/v1/chat/completions`, so that any OpenAI
//! client, the planning agent's `--planner` among them, can talk to them.
//!
//! The messages become one plain transcript (`System: ...`, `User: ...`,
//! `Assistant: ...`, ending with `Assistant:`) since these checkpoints carry no chat
//! template. A prompt longer than the model's context keeps its last tokens, as
//! llama.cpp's server does, and the response says so in the
//! `x-glimpse-prompt-truncated` header (the number of tokens dropped). Requests run
//! one at a time per model behind a bounded count of waiting ones (429 beyond it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use glimpse_generate::GenerationConfig;
use glimpse_models::causal_lm::CausalLm;
use glimpse_models::checkpoint::ModelFiles;

use crate::config::{ModelSpec, ServeConfig};
use crate::error::{ApiError, ApiResult, ServeError};
use crate::registry::Models;

/// A loaded text-only language model.
pub struct TextModel {
    pub id: String,
    pub source: String,
    /// `OPTForCausalLM` or `LlamaForCausalLM`.
    pub class: &'static str,
    /// `opt` or `llama`.
    pub family: &'static str,
    pub created: u64,
    lm: Arc<CausalLm>,
    /// Positions the model takes (prompt and reply together), when known.
    context: Option<usize>,
    gate: Arc<tokio::sync::Semaphore>,
    waiting: AtomicUsize,
    capacity: usize,
}

/// What a completion produced.
pub struct Completion {
    pub text: String,
    pub token_ids: Vec<u32>,
    pub prompt_tokens: usize,
    /// Prompt tokens dropped to fit the context.
    pub truncated: usize,
}

/// Whether `source` holds a text-only causal LM (its `config.json` says so).
pub fn is_text_lm(source: &str) -> bool {
    ModelFiles::resolve(source)
        .and_then(|f| f.config_json())
        .is_ok_and(|c| class_of(&c).is_some())
}

fn class_of(config: &serde_json::Value) -> Option<(&'static str, &'static str)> {
    let arch = config.pointer("/architectures/0").and_then(|a| a.as_str());
    match (arch, config.get("model_type").and_then(|m| m.as_str())) {
        (Some("OPTForCausalLM"), _) | (None, Some("opt")) => Some(("OPTForCausalLM", "opt")),
        (Some("LlamaForCausalLM"), _) | (None, Some("llama")) => {
            Some(("LlamaForCausalLM", "llama"))
        }
        _ => None,
    }
}

/// Loads the LM of `spec` under an id that `loaded` does not use yet.
pub fn load(spec: &ModelSpec, cfg: &ServeConfig, loaded: &Models) -> Result<TextModel, ServeError> {
    let fail = |source| ServeError::Load {
        model: spec.source.clone(),
        source: Box::new(source),
    };
    if cfg.quantize.is_some() {
        return Err(ServeError::Config(format!(
            "--quantize: `{}` is a text-only language model, which the server runs unquantised",
            spec.source
        )));
    }
    let files = ModelFiles::resolve(&spec.source).map_err(fail)?;
    let config = files.config_json().map_err(fail)?;
    let (class, family) = class_of(&config).ok_or_else(|| {
        ServeError::Config(format!("`{}` is not a causal language model", spec.source))
    })?;
    let lm = CausalLm::load(&files, &cfg.device).map_err(fail)?;
    let context = lm.max_length.or_else(|| {
        config
            .get("max_position_embeddings")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    });
    let id = spec
        .id
        .clone()
        .unwrap_or_else(|| crate::registry::model_id(family, &spec.source));
    if loaded.get(&id).is_some() || loaded.text.iter().any(|m| m.id == id) {
        return Err(ServeError::Config(format!(
            "two models would be served as `{id}`; name them apart with --model ID=DIR"
        )));
    }
    Ok(TextModel {
        id,
        source: spec.source.clone(),
        class,
        family,
        created: crate::unix_now(),
        lm: Arc::new(lm),
        context,
        gate: Arc::new(tokio::sync::Semaphore::new(1)),
        waiting: AtomicUsize::new(0),
        capacity: cfg.queue_capacity,
    })
}

/// The transcript a chat becomes: one line per message, then `Assistant:`.
pub fn transcript(messages: &[(String, String)]) -> String {
    let mut out = String::new();
    for (role, text) in messages {
        let who = match role.as_str() {
            "system" | "developer" => "System",
            "assistant" => "Assistant",
            _ => "User",
        };
        out.push_str(&format!("{who}: {}\n", text.trim()));
    }
    out.push_str("Assistant:");
    out
}

impl TextModel {
    /// Continues `prompt` with `gen` (its `max_new_tokens` cut to half the context
    /// when longer), one request at a time.
    pub async fn complete(&self, prompt: String, gen: GenerationConfig) -> ApiResult<Completion> {
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::queue_full(&self.id, self.capacity));
        }
        let permit = self.gate.clone().acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _permit = permit.map_err(|_| ApiError::unavailable("the model has stopped"))?;
        let lm = self.lm.clone();
        let context = self.context;
        let id = self.id.clone();
        tokio::task::spawn_blocking(move || run(&lm, context, &prompt, gen))
            .await
            .map_err(|e| ApiError::internal(format!("model `{id}` failed: {e}")))?
            .map_err(|e| ApiError::from_model(&self.id, &e))
    }
}

fn run(
    lm: &CausalLm,
    context: Option<usize>,
    prompt: &str,
    mut gen: GenerationConfig,
) -> glimpse_models::Result<Completion> {
    let mut ids = lm.encode_prompt(prompt)?;
    let mut truncated = 0;
    if let Some(ctx) = context {
        gen.max_new_tokens = gen.max_new_tokens.min((ctx / 2).max(1));
        let room = ctx.saturating_sub(gen.max_new_tokens).max(1);
        if ids.len() > room {
            truncated = ids.len() - room;
            // Keep the start token, drop the oldest text.
            let head = usize::from(lm.bos_token_id.is_some());
            ids.drain(head..head + truncated);
        }
    }
    let prompt_tokens = ids.len();
    let out = lm.generate(&ids, &gen)?;
    let kept: Vec<u32> = out
        .iter()
        .copied()
        .filter(|t| !lm.eos_token_ids.contains(t))
        .collect();
    let text = lm.tokenizer.decode(&kept, true)?;
    Ok(Completion {
        text: text.trim().to_string(),
        token_ids: out,
        prompt_tokens,
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_becomes_a_transcript_that_ends_with_the_assistant_turn() {
        let t = transcript(&[
            ("system".into(), "Plan tasks.".into()),
            ("user".into(), " caption this ".into()),
            ("assistant".into(), "{}".into()),
            ("user".into(), "again".into()),
        ]);
        assert_eq!(
            t,
            "System: Plan tasks.\nUser: caption this\nAssistant: {}\nUser: again\nAssistant:"
        );
    }

    #[test]
    fn a_long_prompt_keeps_its_end_within_the_context() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let files =
            ModelFiles::resolve(&root.join("models/llama-lm-synth").display().to_string()).unwrap();
        let lm = CausalLm::load(&files, &candle_core::Device::Cpu).unwrap();
        let long = "a red circle and a blue square . ".repeat(40);
        let gen = GenerationConfig {
            max_new_tokens: 500,
            ..GenerationConfig::default()
        };
        let c = run(&lm, Some(64), &long, gen).unwrap();
        assert!(c.truncated > 0);
        assert!(c.prompt_tokens <= 32, "{}", c.prompt_tokens);
        assert!(c.token_ids.len() <= 32);
    }
}
