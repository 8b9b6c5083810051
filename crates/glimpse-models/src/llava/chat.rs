//! Multi-turn chat about one image that keeps the model's cache between turns.
//!
//! Each turn renders the chat template over the whole conversation (so the prompt is
//! exactly what the reference would build from scratch), tokenizes it, and checks that
//! the ids the cache already holds are a prefix of the new ids; only the rest is run.
//! When they are not a prefix (a template that rewrites earlier turns, or a reply that
//! re-tokenizes differently from the ids that were generated), the turn runs from
//! scratch. After beam search the cache follows the beams, not the chosen reply, so
//! the next turn also starts over.
//!
//! Generation sees only the new ids as its prompt, so a repetition penalty does not
//! cover the earlier turns (the reference's covers the whole prompt).

use candle_core::Tensor;
use glimpse_generate::GenerationConfig;

use super::model::{run_generate, LlavaCache, LlavaForConditionalGeneration, OnStep};
use super::processor::LlavaProcessor;
use super::template::{ChatMessage, Role};
use crate::capability::{ChatTurn, Conversation};
use crate::{Error, Result};

/// A conversation about one image plus the cache that holds it.
pub struct ChatSession<'m> {
    model: &'m LlavaForConditionalGeneration,
    processor: &'m LlavaProcessor,
    /// `[1, n, text_hidden]`.
    image_features: Tensor,
    messages: Vec<ChatMessage>,
    cache: LlavaCache,
    /// The ids whose keys/values `cache` holds, in order.
    cached_ids: Vec<u32>,
}

impl<'m> ChatSession<'m> {
    /// A session about the image `pixel_values` (`[1, 3, size, size]`); the image goes
    /// with the first user message.
    pub fn new(
        model: &'m LlavaForConditionalGeneration,
        processor: &'m LlavaProcessor,
        pixel_values: &Tensor,
    ) -> Result<Self> {
        let b = pixel_values.dim(0)?;
        if b != 1 {
            return Err(Error::Model {
                model: "llava chat".into(),
                msg: format!("a chat is about one image, got a batch of {b}"),
            });
        }
        let image_features = model.image_features(pixel_values)?; // [1, n, d]
        let cache = model.new_cache(Some(&image_features));
        Ok(Self {
            model,
            processor,
            image_features,
            messages: Vec::new(),
            cache,
            cached_ids: Vec::new(),
        })
    }

    /// Starts the conversation with a system message (before any turn).
    pub fn with_system(mut self, text: &str) -> Self {
        self.messages.push(ChatMessage::system(text));
        self
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Number of positions held in the cache.
    pub fn cached_len(&self) -> usize {
        self.cache.len()
    }

    /// One turn: the reply to `text`, generated with `gen` (this model's eos and pad
    /// ids are filled in).
    pub fn send(&mut self, text: &str, gen: &GenerationConfig) -> Result<ChatTurn> {
        self.turn(text, gen, None)
    }

    /// [`Self::send`] calling `on_token` with each new id as it is chosen; returning
    /// `false` stops the reply there. Needs greedy search or sampling (no beams).
    pub fn send_stream(
        &mut self,
        text: &str,
        gen: &GenerationConfig,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<ChatTurn> {
        let mut each = |row: &[Option<u32>]| match row.first().copied().flatten() {
            Some(id) => on_token(id),
            None => true,
        };
        self.turn(text, gen, Some(&mut each))
    }

    fn turn(
        &mut self,
        text: &str,
        gen: &GenerationConfig,
        on_step: Option<OnStep<'_>>,
    ) -> Result<ChatTurn> {
        let messages = with_user(&self.messages, text)?;
        let (prompt, input_ids) = self.processor.prompt(&messages, true)?;

        let reusable = !self.cached_ids.is_empty()
            && input_ids.len() > self.cached_ids.len()
            && input_ids.starts_with(&self.cached_ids);
        if !reusable {
            self.reset();
        }
        let reused = self.cached_ids.len();
        let new_ids = &input_ids[reused..];
        let feed = Tensor::new(new_ids, self.image_features.device())?.unsqueeze(0)?; // [1, s]
        let gen = GenerationConfig {
            num_return_sequences: 1,
            ..self.model.generation_config(gen)
        };
        let out = run_generate(self.model, &mut self.cache, &feed, &gen, on_step);
        let token_ids = match out {
            Ok(mut rows) => rows.pop().unwrap_or_default(),
            Err(e) => {
                // The cache may hold part of a failed step: start over next time.
                self.reset();
                return Err(e);
            }
        };

        if gen.num_beams > 1 {
            self.reset();
        } else {
            let mut held = std::mem::take(&mut self.cached_ids);
            held.extend_from_slice(new_ids);
            held.extend_from_slice(&token_ids);
            held.truncate(self.cache.len());
            self.cached_ids = held;
        }
        let answer = self
            .processor
            .decode_reply(&token_ids, &gen.eos_token_ids)?;
        let mut messages = messages;
        messages.push(ChatMessage::assistant(&answer));
        self.messages = messages;
        Ok(ChatTurn {
            user: text.to_string(),
            prompt,
            input_ids,
            reused,
            token_ids,
            answer,
        })
    }

    /// Adds an exchange that happened elsewhere (a replayed conversation): no
    /// generation; the next turn renders it and runs its ids as part of the prompt.
    pub fn push_turn(&mut self, user: &str, assistant: &str) -> Result<()> {
        push_exchange(&mut self.messages, user, assistant)
    }

    /// An empty cache that will splice the image into the next step's image tokens.
    fn reset(&mut self) {
        self.cache = self.model.new_cache(Some(&self.image_features));
        self.cached_ids.clear();
    }
}

/// The messages a fresh session renders for its reply to `user` after `system` and the
/// earlier `history` were given to it ([`ChatSession::with_system`],
/// [`ChatSession::push_turn`]): what a replayed conversation's reply is generated from.
pub(super) fn replayed(
    system: Option<&str>,
    history: &[(String, String)],
    user: &str,
) -> Result<Vec<ChatMessage>> {
    let mut messages: Vec<ChatMessage> = system.map(ChatMessage::system).into_iter().collect();
    for (u, a) in history {
        push_exchange(&mut messages, u, a)?;
    }
    with_user(&messages, user)
}

/// `messages` and the user's `text` (the image goes with the first user message).
fn with_user(messages: &[ChatMessage], text: &str) -> Result<Vec<ChatMessage>> {
    if text.trim().is_empty() {
        return Err(Error::Model {
            model: "llava chat".into(),
            msg: "empty message".into(),
        });
    }
    let first = !messages.iter().any(|m| m.role == Role::User);
    let mut messages = messages.to_vec();
    messages.push(ChatMessage::user(text, first));
    Ok(messages)
}

fn push_exchange(messages: &mut Vec<ChatMessage>, user: &str, assistant: &str) -> Result<()> {
    if user.trim().is_empty() {
        return Err(Error::Model {
            model: "llava chat".into(),
            msg: "empty message in an earlier turn".into(),
        });
    }
    let first = !messages.iter().any(|m| m.role == Role::User);
    messages.push(ChatMessage::user(user, first));
    messages.push(ChatMessage::assistant(assistant));
    Ok(())
}

impl Conversation for ChatSession<'_> {
    fn send(&mut self, text: &str, gen: &GenerationConfig) -> Result<ChatTurn> {
        ChatSession::send(self, text, gen)
    }

    fn send_stream(
        &mut self,
        text: &str,
        gen: &GenerationConfig,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<ChatTurn> {
        ChatSession::send_stream(self, text, gen, on_token)
    }

    fn cached_len(&self) -> usize {
        ChatSession::cached_len(self)
    }

    fn push_turn(&mut self, user: &str, assistant: &str) -> Result<()> {
        ChatSession::push_turn(self, user, assistant)
    }
}
