//! Chat turns and answers in one decoding batch that requests join and leave
//! (LLaVA, BLIP-2 with OPT): greedy or sampled requests with the same settings
//! (each keeps its own `seed` and `max_tokens`) decode together; while the batch
//! runs, compatible requests that arrive join between two steps, and each request's
//! tokens stream to its own client. A family that cannot join rows answers its
//! requests one at a time.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use glimpse_generate::GenerationConfig;
use glimpse_models::capability::ChatTurn;
use glimpse_models::pipeline::{ChatRequest, ConversationRows, Generated, Pipeline, Reply};
use image::RgbImage;

use super::{fail_left, model_panic, Job, Output, Queue, Task};
use crate::error::ApiError;
use crate::metrics;

/// Chat or ask requests that may share a batch: greedy search or sampling, the same
/// settings but for the seed and the token limit, which stay each request's own.
pub(super) fn reply_key(task: &Task) -> Option<String> {
    let (kind, gen) = match task {
        Task::Chat { gen, .. } => ("chat", gen),
        Task::Ask { gen, .. } => ("ask", gen),
        _ => return None,
    };
    Some(format!("{kind} {}", join_key(gen)?))
}

/// The settings a row of a joined batch shares with the others (all but its seed and
/// token limit); `None` for beam search and several sequences, which do not join.
pub(crate) fn join_key(gen: &GenerationConfig) -> Option<String> {
    if gen.num_beams != 1 || gen.num_return_sequences != 1 {
        return None;
    }
    let shared = GenerationConfig {
        seed: 0,
        max_new_tokens: 0,
        ..gen.clone()
    };
    Some(format!("{shared:?}"))
}

/// Runs `group` (requests of one [`reply_key`]) as a batch that later requests with
/// the same key join while it decodes, when `open`. `None` when done; `Some(group)`
/// back, untouched, when the model's family cannot join rows (the caller runs the
/// requests one at a time).
pub(super) fn reply_joining(
    model: &str,
    pipeline: &Pipeline,
    key: &str,
    group: Vec<Job>,
    max_batch: usize,
    queue: &mut Queue<'_>,
    open: bool,
) -> Option<Vec<Job>> {
    let (reply, gen) = match &group[0].task {
        Task::Chat { gen, .. } => (Reply::Chat, gen),
        Task::Ask { gen, .. } => (Reply::Answer, gen),
        _ => unreachable!("grouped as replies"),
    };
    // Each row keeps its own limit; the batch's is only their bound.
    let gen = GenerationConfig {
        max_new_tokens: u32::MAX as usize,
        ..gen.clone()
    };
    let kind = if reply == Reply::Chat { "chat" } else { "ask" };
    metrics::batch(model, kind, group.len());
    let started = Instant::now();
    let mut live = Live {
        model,
        pipeline,
        key,
        max_batch,
        waiting: group,
        admitted: BTreeMap::new(),
        next_tag: 0,
        queue,
        open,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        pipeline.reply_joining(reply, &gen, &mut live)
    }));
    metrics::batch_seconds(model, kind, started.elapsed());
    let failure = match outcome {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => return Some(std::mem::take(&mut live.waiting)),
        Ok(Err(e)) => Some(ApiError::from_model(model, &e)),
        Err(panic) => Some(model_panic(model, kind, panic.as_ref())),
    };
    let left: Vec<Job> = std::mem::take(&mut live.admitted)
        .into_values()
        .map(|(job, _)| job)
        .chain(std::mem::take(&mut live.waiting))
        .collect();
    fail_left(model, failure, left);
    None
}

/// The requests of a reply batch that others join while it decodes.
struct Live<'a, 'q> {
    model: &'a str,
    pipeline: &'a Pipeline,
    key: &'a str,
    max_batch: usize,
    /// The batch's first requests, not yet handed to the model.
    waiting: Vec<Job>,
    /// Requests decoding now, by tag, with their usage count of an ask's prompt.
    admitted: BTreeMap<u64, (Job, Option<usize>)>,
    next_tag: u64,
    queue: &'a mut Queue<'q>,
    /// Still taking requests from the queue: a request of another kind stops it, so
    /// that request waits only until the running batch ends.
    open: bool,
}

impl ConversationRows for Live<'_, '_> {
    fn admit(&mut self, running: usize) -> Option<Vec<(u64, RgbImage, ChatRequest)>> {
        let first = running == 0 && self.admitted.is_empty();
        let jobs = self.queue.admit(
            std::mem::take(&mut self.waiting),
            &mut self.open,
            running,
            self.max_batch,
            reply_key,
            self.key,
            self.model,
            first,
        );
        if jobs.is_empty() {
            return None;
        }
        let mut group = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            let (image, request, ask_tokens) = match &mut job.task {
                Task::Chat {
                    image,
                    system,
                    history,
                    user,
                    gen,
                } => (
                    std::mem::take(image),
                    ChatRequest {
                        system: system.take(),
                        history: std::mem::take(history),
                        user: std::mem::take(user),
                        seed: gen.do_sample.then_some(gen.seed),
                        max_new_tokens: Some(gen.max_new_tokens),
                    },
                    None,
                ),
                Task::Ask {
                    image,
                    question,
                    gen,
                } => {
                    // Usage counts the question's ids, as a request alone does.
                    let tokens = self
                        .pipeline
                        .tokenizer()
                        .encode(question, true)
                        .map_or(0, |ids| ids.len());
                    (
                        std::mem::take(image),
                        ChatRequest {
                            user: std::mem::take(question),
                            seed: gen.do_sample.then_some(gen.seed),
                            max_new_tokens: Some(gen.max_new_tokens),
                            ..ChatRequest::default()
                        },
                        Some(tokens),
                    )
                }
                _ => unreachable!("only chat and ask requests join"),
            };
            let tag = self.next_tag;
            self.next_tag += 1;
            self.admitted.insert(tag, (job, ask_tokens));
            group.push((tag, image, request));
        }
        Some(group)
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        let Some((job, _)) = self.admitted.get(&tag) else {
            return false;
        };
        match &job.tokens {
            Some(stream) => stream.send(token).is_ok(),
            // A client that went away stops costing anything.
            None => !job.reply.is_closed(),
        }
    }

    fn finished(&mut self, tag: u64, reply: glimpse_models::Result<ChatTurn>) {
        let Some((job, ask_tokens)) = self.admitted.remove(&tag) else {
            return;
        };
        let result = reply
            .map(|turn| {
                metrics::tokens(self.model, turn.token_ids.len());
                Output::Generated {
                    prompt_tokens: ask_tokens.unwrap_or(turn.input_ids.len()),
                    out: Generated {
                        text: turn.answer,
                        token_ids: turn.token_ids,
                    },
                }
            })
            .map_err(|e| ApiError::from_model(self.model, &e));
        let _ = job.reply.send(result);
    }
}
