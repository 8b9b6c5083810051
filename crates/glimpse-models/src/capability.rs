//! What a loaded model can do, as small traits: [`Embed`], [`Classify`], [`Match`],
//! [`Caption`], [`Answer`], [`Chat`] and [`QuantizeLanguageModel`].
//!
//! Each family module implements the ones its classes support and says so through
//! [`Model`]'s `as_*` accessors; the [`crate::pipeline::Pipeline`] (and later the
//! server and the agent) asks for a capability instead of matching on the class, so a
//! new family adds a module and one line in [`crate::registry`].
//!
//! The traits take model inputs (pixel values, token batches) and leave image decoding
//! and batching to the caller. Generating capabilities get the checkpoint's tokenizer
//! for prompts and decoding.

use candle_core::{DType, Tensor, D};
use glimpse_data::{TextBatch, TextTokenizer};
use glimpse_generate::GenerationConfig;
use glimpse_nn::linears::Linears;
use glimpse_nn::quant::{Quant, QuantReport};

use crate::registry::Architecture;
use crate::Result;

/// Similarities of one image against several texts.
#[derive(Debug, Clone)]
pub struct MatchScores {
    /// Cosine similarity of the projected, normalised embeddings, one per text.
    pub itc: Vec<f32>,
    /// Match probability from the ITM head, where the model has one.
    pub itm: Option<Vec<f32>>,
}

/// Generated text and the ids it was decoded from (no prompt, no start token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    pub text: String,
    pub token_ids: Vec<u32>,
}

/// What one chat turn did.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatTurn {
    pub user: String,
    /// The template's output for the whole conversation so far.
    pub prompt: String,
    /// Its ids, image placeholders expanded.
    pub input_ids: Vec<u32>,
    /// How many of `input_ids` came from the cache instead of being run again.
    pub reused: usize,
    /// Generated ids (the eos that ended the reply included).
    pub token_ids: Vec<u32>,
    /// The reply's text (eos dropped, special tokens skipped).
    pub answer: String,
}

/// A loaded model: its class, its text limits and defaults, and its capabilities.
pub trait Model: Send + Sync {
    fn architecture(&self) -> Architecture;

    /// Longest text (in tokens, special tokens included) the text side takes; `None`
    /// for language models, which check their own limits against the cache.
    fn max_text_len(&self) -> Option<usize> {
        None
    }

    /// This model's decoding defaults (end and pad ids) on top of `gen`.
    fn generation_config(&self, gen: GenerationConfig) -> GenerationConfig {
        gen
    }

    fn as_embed(&self) -> Option<&dyn Embed> {
        None
    }
    fn as_classify(&self) -> Option<&dyn Classify> {
        None
    }
    fn as_match(&self) -> Option<&dyn Match> {
        None
    }
    fn as_caption(&self) -> Option<&dyn Caption> {
        None
    }
    fn as_answer(&self) -> Option<&dyn Answer> {
        None
    }
    fn as_chat(&self) -> Option<&dyn Chat> {
        None
    }
    fn as_quantize(&mut self) -> Option<&mut dyn QuantizeLanguageModel> {
        None
    }
    /// The encoders' linear layers (towers, Q-Former, BLIP's text decoder; not a
    /// language model), for 8-bit rounding.
    fn as_linears(&mut self) -> Option<&mut dyn Linears> {
        None
    }
}

/// The capabilities by name, for registrations and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    Embed,
    Classify,
    Match,
    Caption,
    Answer,
    Chat,
    Quantize,
}

/// Image and text embeddings in one projected space.
pub trait Embed {
    /// Projected (not normalised) image embeddings: `[n, 3, H, W]` -> `[n, dim]`.
    fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor>;
    /// Projected (not normalised) text embeddings: `[n, t]` ids and mask -> `[n, dim]`.
    fn text_embeds(&self, texts: &TextBatch) -> Result<Tensor>;
}

/// Zero-shot classification over [`Embed`]'s embeddings, with a learned temperature.
pub trait Classify: Embed {
    /// The factor that multiplies cosine similarities before the softmax.
    fn logit_scale_exp(&self) -> Result<f32>;
}

/// Image-text matching scores.
pub trait Match {
    /// ITC (and ITM, where the model has the head) of one image `[1, 3, H, W]` against
    /// each text of `texts`.
    fn match_scores(&self, pixel_values: &Tensor, texts: &TextBatch) -> Result<MatchScores>;
}

/// A streaming callback: sees each decoding step's new token per row (`None` for rows
/// that already ended) and returns whether to go on.
pub type OnStep<'a> = &'a mut dyn FnMut(&[Option<u32>]) -> bool;

/// Captions, optionally started by a prompt.
pub trait Caption {
    /// One caption per image of `pixel_values` (`[n, 3, H, W]`); `prompt`, when given,
    /// is not blank. `gen` already holds the model's defaults.
    fn caption(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        prompt: Option<&str>,
        gen: &GenerationConfig,
    ) -> Result<Vec<Generated>>;

    /// [`Self::caption`] calling `on_step` after every decoding step (greedy search or
    /// sampling); `None` when this family does not stream.
    fn caption_stream(
        &self,
        _tokenizer: &TextTokenizer,
        _pixel_values: &Tensor,
        _prompt: Option<&str>,
        _gen: &GenerationConfig,
        _on_step: OnStep<'_>,
    ) -> Option<Result<Vec<Generated>>> {
        None
    }

    /// Greedy or sampled captions of a batch that images join while it decodes:
    /// `rows.admit` is asked for the first images and then between steps. `None` when
    /// this family cannot add rows to a running batch (then `rows` is never called).
    fn caption_joining(
        &self,
        _tokenizer: &TextTokenizer,
        _prompt: Option<&str>,
        _gen: &GenerationConfig,
        _rows: &mut dyn CaptionRows,
    ) -> Option<Result<()>> {
        None
    }
}

/// Images that join a running caption batch, and where their captions go.
pub trait CaptionRows {
    /// With the number of rows decoding now: pixel values `[n, 3, H, W]` of images that
    /// join, one tag each; `None` when none.
    fn admit(&mut self, running: usize) -> Option<(Tensor, Vec<u64>)>;

    /// Image `tag`'s caption chose `token`; `false` ends that caption now.
    fn token(&mut self, tag: u64, token: u32) -> bool;

    /// Image `tag`'s caption is done (or could not be made).
    fn finished(&mut self, tag: u64, caption: Result<Generated>);
}

/// Visual question answering.
pub trait Answer {
    /// The answer to `question` (not blank) about one image `[1, 3, H, W]`.
    fn answer(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        question: &str,
        gen: &GenerationConfig,
    ) -> Result<Generated>;

    /// [`Self::answer`] calling `on_step` after every decoding step; `None` when this
    /// family does not stream.
    fn answer_stream(
        &self,
        _tokenizer: &TextTokenizer,
        _pixel_values: &Tensor,
        _question: &str,
        _gen: &GenerationConfig,
        _on_step: OnStep<'_>,
    ) -> Option<Result<Generated>> {
        None
    }

    /// Greedy or sampled answers of a batch that questions join while it decodes: each
    /// request's `user` is the question (system and history are not used). `None` when
    /// this family cannot add rows to a running batch (then `rows` is never called).
    fn answer_joining(
        &self,
        _tokenizer: &TextTokenizer,
        _gen: &GenerationConfig,
        _rows: &mut dyn ChatRows,
    ) -> Option<Result<()>> {
        None
    }
}

/// One conversation of a batch that others join and leave while it decodes (see
/// [`Chat::chat_joining`]): what comes before the reply, and the request's own limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    pub system: Option<String>,
    /// Earlier (user, assistant) exchanges, replayed as context.
    pub history: Vec<(String, String)>,
    /// The message to reply to.
    pub user: String,
    /// This request's sampling seed; `None`: the batch's `gen.seed`. The reply then
    /// equals the one `gen` with this seed gives the conversation alone.
    pub seed: Option<u64>,
    /// This request's limit on new tokens, at most the batch's `gen.max_new_tokens`.
    pub max_new_tokens: Option<usize>,
}

/// Conversations that join a running reply batch, and where their replies go.
pub trait ChatRows {
    /// With the number of replies decoding now: pixel values `[n, 3, H, W]` of
    /// conversations that join, one request (about its image) and tag each; `None`
    /// when none.
    fn admit(&mut self, running: usize) -> Option<(Tensor, Vec<(u64, ChatRequest)>)>;

    /// Reply `tag` chose `token`; `false` ends that reply now.
    fn token(&mut self, tag: u64, token: u32) -> bool;

    /// Reply `tag` is done (or could not be made); `reused` is 0.
    fn finished(&mut self, tag: u64, reply: Result<ChatTurn>);
}

/// Multi-turn chat about one image.
pub trait Chat {
    /// A conversation about `pixel_values` (`[1, 3, H, W]`), opened by `system` when
    /// given. The session keeps the model's cache between turns.
    fn start_chat<'m>(
        &'m self,
        pixel_values: &Tensor,
        system: Option<&str>,
    ) -> Result<Box<dyn Conversation + 'm>>;

    /// Greedy or sampled replies of a batch that conversations join while it decodes:
    /// `rows.admit` is asked for the first ones and then between steps; each reply goes
    /// to `rows.finished` as soon as it ends and equals the reply the conversation gets
    /// alone (a fresh [`Self::start_chat`], its history pushed, then `send`). `None`
    /// when this family cannot add rows to a running batch.
    fn chat_joining(
        &self,
        _gen: &GenerationConfig,
        _rows: &mut dyn ChatRows,
    ) -> Option<Result<()>> {
        None
    }
}

/// A running conversation (see [`Chat`]).
pub trait Conversation {
    /// One turn: the reply to `text`, generated with `gen`.
    fn send(&mut self, text: &str, gen: &GenerationConfig) -> Result<ChatTurn>;

    /// [`Self::send`] calling `on_token` with each new id as it is chosen; returning
    /// `false` stops the reply there. Needs greedy search or sampling (no beams).
    fn send_stream(
        &mut self,
        text: &str,
        gen: &GenerationConfig,
        on_token: &mut dyn FnMut(u32) -> bool,
    ) -> Result<ChatTurn>;

    /// Number of positions held in the cache.
    fn cached_len(&self) -> usize;

    /// Adds an earlier exchange without generating: `user` and the reply `assistant`
    /// gave then (a client that replays its conversation). The next turn sees them as
    /// context. The default refuses: a family says so when it cannot.
    fn push_turn(&mut self, _user: &str, _assistant: &str) -> Result<()> {
        Err(crate::Error::Model {
            model: "chat".into(),
            msg: "this model cannot take earlier turns".into(),
        })
    }
}

/// Quantising a language model's weights for decoding.
pub trait QuantizeLanguageModel {
    fn quantize_language_model(&mut self, quant: Quant) -> Result<QuantReport>;
}

/// Cosine similarity of every row of `a` `[n, d]` with every row of `b` `[m, d]` -> `[n, m]`.
pub fn cosine(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let a = l2_normalize(&a.to_dtype(DType::F32)?)?;
    let b = l2_normalize(&b.to_dtype(DType::F32)?)?;
    Ok(a.matmul(&b.t()?)?)
}

fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

/// Generated ids decoded with special tokens skipped.
pub(crate) fn decode_all(tokenizer: &TextTokenizer, ids: Vec<Vec<u32>>) -> Result<Vec<Generated>> {
    ids.into_iter()
        .map(|token_ids| {
            let text = tokenizer.decode(&token_ids, true)?;
            Ok(Generated { text, token_ids })
        })
        .collect()
}
