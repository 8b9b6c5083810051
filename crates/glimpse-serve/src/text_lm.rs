//! Text-only causal language models (`OPTForCausalLM`, `LlamaForCausalLM`, e.g. an
//! exported `lm` training run) behind `/v1/chat/completions`, so that any OpenAI
//! client, the planning agent's `--planner` among them, can talk to them.
//!
//! The messages become one plain transcript (`System: ...`, `User: ...`,
//! `Assistant: ...`, ending with `Assistant:`) since these checkpoints carry no chat
//! template. A prompt longer than the model's context keeps its last tokens, as
//! llama.cpp's server does, and the response says so in the
//! `x-glimpse-prompt-truncated` header (the number of tokens dropped).
//!
//! Each model has a worker thread behind a bounded count of waiting requests (429
//! beyond it). Greedy and sampled requests with the same settings (each keeping its
//! own `seed` and `max_tokens`) decode in one batch that later arrivals join between
//! two steps and that finished rows leave; each gets the ids it gets alone. Beam
//! search, or `--no-join`, runs a request on its own.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use glimpse_generate::GenerationConfig;
use glimpse_models::causal_lm::{CausalLm, PromptRows};
use glimpse_models::checkpoint::ModelFiles;

use crate::config::{ModelSpec, ServeConfig};
use crate::error::{ApiError, ApiResult, ServeError};
use crate::metrics;
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
    /// The worker's queue (a `Mutex` only to make the sender `Sync`).
    jobs: Mutex<Sender<Job>>,
    /// Requests queued or decoding.
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

/// A request for the worker: a prompt that fits the context, its settings, and where
/// the generated ids go.
struct Job {
    ids: Vec<u32>,
    gen: GenerationConfig,
    reply: tokio::sync::oneshot::Sender<Result<Vec<u32>, String>>,
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
    let lm = Arc::new(lm);
    let waiting = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let worker = Worker {
        id: id.clone(),
        lm: lm.clone(),
        max_batch: cfg.max_batch.max(1),
        join: cfg.join_batches,
        waiting: waiting.clone(),
    };
    std::thread::Builder::new()
        .name(format!("lm-{id}"))
        .spawn(move || worker.run(rx))
        .map_err(|e| ServeError::Config(format!("cannot start the worker of `{id}`: {e}")))?;
    Ok(TextModel {
        id,
        source: spec.source.clone(),
        class,
        family,
        created: crate::unix_now(),
        lm,
        context,
        jobs: Mutex::new(tx),
        waiting,
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
    /// when longer), in a batch with other requests where it can.
    pub async fn complete(&self, prompt: String, gen: GenerationConfig) -> ApiResult<Completion> {
        let (ids, gen, prompt_tokens, truncated) = fit(&self.lm, self.context, &prompt, gen)
            .map_err(|e| ApiError::from_model(&self.id, &e))?;
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= self.capacity {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::queue_full(&self.id, self.capacity));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = self
            .jobs
            .lock()
            .map_err(|_| ApiError::unavailable("the model has stopped"))?
            .send(Job { ids, gen, reply });
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::unavailable("the model has stopped"));
        }
        let out = answer
            .await
            .map_err(|_| ApiError::internal(format!("model `{}` stopped answering", self.id)))?
            .map_err(|e| ApiError::internal(format!("model `{}` failed: {e}", self.id)))?;
        completion(&self.lm, out, prompt_tokens, truncated)
            .map_err(|e| ApiError::from_model(&self.id, &e))
    }
}

/// The prompt's ids, cut to fit the context with the reply; the settings with the
/// reply's limit cut to half the context; the prompt's length and the tokens dropped.
fn fit(
    lm: &CausalLm,
    context: Option<usize>,
    prompt: &str,
    mut gen: GenerationConfig,
) -> glimpse_models::Result<(Vec<u32>, GenerationConfig, usize, usize)> {
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
    Ok((ids, gen, prompt_tokens, truncated))
}

/// The answer from the generated ids.
fn completion(
    lm: &CausalLm,
    out: Vec<u32>,
    prompt_tokens: usize,
    truncated: usize,
) -> glimpse_models::Result<Completion> {
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

/// The thread that decodes one model's requests.
struct Worker {
    id: String,
    lm: Arc<CausalLm>,
    max_batch: usize,
    join: bool,
    waiting: Arc<AtomicUsize>,
}

impl Worker {
    fn run(self, rx: Receiver<Job>) {
        let mut carry: Option<Job> = None;
        loop {
            let job = match carry.take() {
                Some(job) => job,
                None => match rx.recv() {
                    Ok(job) => job,
                    Err(_) => return, // the server dropped the model
                },
            };
            match crate::worker::join_key(&job.gen).filter(|_| self.join) {
                Some(key) => self.batch(job, &key, &rx, &mut carry),
                None => self.alone(job),
            }
        }
    }

    fn answer(&self, job: Job, out: Result<Vec<u32>, String>) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let _ = job.reply.send(out); // a client that left is no error
    }

    fn alone(&self, job: Job) {
        metrics::batch(&self.id, "text", 1);
        let out = catch_unwind(AssertUnwindSafe(|| self.lm.generate(&job.ids, &job.gen)));
        let out = match out {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(p) => Err(crate::error::panic_message(p.as_ref()).to_string()),
        };
        self.answer(job, out);
    }

    /// Decodes `first` with every queued request of the same `key` that arrives
    /// while it runs; a request of another kind waits in `carry` for the next round.
    fn batch(&self, first: Job, key: &str, rx: &Receiver<Job>, carry: &mut Option<Job>) {
        // Each row keeps its own limit; the batch's is only their bound.
        let gen = GenerationConfig {
            max_new_tokens: u32::MAX as usize,
            ..first.gen.clone()
        };
        let started = Instant::now();
        let ids = first.ids.clone();
        let mut live = Live {
            worker: self,
            key,
            rx,
            carry,
            jobs: HashMap::from([(0, first)]),
            next_tag: 1,
            joined: 0,
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            self.lm.generate_joining((0, ids), &gen, &mut live)
        }));
        metrics::batch(&self.id, "text", live.joined + 1);
        metrics::batch_seconds(&self.id, "text", started.elapsed());
        let failure = match outcome {
            Ok(Ok(failed)) => {
                for (tag, e) in failed {
                    if let Some(job) = live.jobs.remove(&tag) {
                        self.answer(job, Err(e));
                    }
                }
                None
            }
            Ok(Err(e)) => Some(e.to_string()),
            Err(p) => Some(crate::error::panic_message(p.as_ref()).to_string()),
        };
        // Rows the batch did not finish (it failed, or a row was left): each is told.
        let why = failure.unwrap_or_else(|| "the batch ended before this request".into());
        for (_, job) in live.jobs.drain() {
            self.answer(job, Err(why.clone()));
        }
    }
}

/// The running batch's view of the queue.
struct Live<'a> {
    worker: &'a Worker,
    key: &'a str,
    rx: &'a Receiver<Job>,
    carry: &'a mut Option<Job>,
    jobs: HashMap<u64, Job>,
    next_tag: u64,
    joined: usize,
}

impl PromptRows for Live<'_> {
    fn admit(&mut self, running: usize) -> Option<(u64, Vec<u32>)> {
        if self.carry.is_some() || running >= self.worker.max_batch {
            return None;
        }
        let job = match self.rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => return None,
        };
        if job.reply.is_closed() {
            self.worker.answer(job, Err("the client left".into()));
            return self.admit(running);
        }
        if crate::worker::join_key(&job.gen).as_deref() != Some(self.key) {
            *self.carry = Some(job);
            return None;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        self.joined += 1;
        metrics::joined(&self.worker.id, 1);
        let ids = job.ids.clone();
        self.jobs.insert(tag, job);
        Some((tag, ids))
    }

    fn seed(&self, tag: u64) -> Option<u64> {
        self.jobs.get(&tag).map(|j| j.gen.seed)
    }

    fn max_new_tokens(&self, tag: u64) -> Option<usize> {
        self.jobs.get(&tag).map(|j| j.gen.max_new_tokens)
    }

    fn token(&mut self, tag: u64, _token: u32) -> bool {
        self.jobs.get(&tag).is_some_and(|j| !j.reply.is_closed())
    }

    fn finished(&mut self, tag: u64, ids: Vec<u32>) {
        if let Some(job) = self.jobs.remove(&tag) {
            self.worker.answer(job, Ok(ids));
        }
    }
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
        let (ids, gen, prompt_tokens, truncated) = fit(&lm, Some(64), &long, gen).unwrap();
        let out = lm.generate(&ids, &gen).unwrap();
        let c = completion(&lm, out, prompt_tokens, truncated).unwrap();
        assert!(c.truncated > 0);
        assert!(c.prompt_tokens <= 32, "{}", c.prompt_tokens);
        assert!(c.token_ids.len() <= 32);
    }
}
