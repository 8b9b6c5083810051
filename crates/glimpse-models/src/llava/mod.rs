//! LLaVA (<https://arxiv.org/abs/2304.08485>, LLaVA-1.5: <https://arxiv.org/abs/2310.03744>)
//! as `LlavaForConditionalGeneration` in `transformers/models/llava/` (5.24).
//!
//! * [`LlavaForConditionalGeneration`]: the CLIP vision tower
//!   ([`glimpse_nn::vit::VisionTransformer`]), the projector, the LLaMA language model
//!   ([`glimpse_nn::llama::LlamaForCausalLM`]); image features replace the `<image>`
//!   positions of the token embeddings. It implements [`glimpse_generate::Decoder`]
//!   with a [`LlavaCache`] that carries the image features until the prompt's step
//!   that holds the image tokens.
//! * [`LlavaLayout`]: the checkpoint layouts that load (hub, `save_pretrained`,
//!   in-memory names), detected per part.
//! * [`LlavaProcessor`], [`ChatTemplate`]: the prompt as the reference's processor
//!   builds it (Jinja chat template, tokenizer, `<image>` expansion).
//! * [`ChatSession`]: multi-turn chat that reuses the cache across turns.
//! * [`Llava`]: the model with its processor, as the pipeline loads it: it captions,
//!   answers, chats and quantises its language model.

mod chat;
mod config;
mod layout;
mod model;
mod processor;
mod template;

pub use crate::capability::ChatTurn;
pub use chat::ChatSession;
pub use config::{FeatureSelect, LlavaConfig, VisionFeatureLayer};
pub use layout::{read_config, LlavaLayout};
pub use model::{
    embed_with_images, LlavaCache, LlavaForConditionalGeneration, LlavaMultiModalProjector,
};
pub use processor::LlavaProcessor;
pub use template::{ChatMessage, ChatTemplate, Content, Role};

use candle_core::Tensor;
use glimpse_data::TextTokenizer;
use glimpse_generate::GenerationConfig;
use glimpse_nn::quant::{Quant, QuantReport};

use crate::capability::{
    Answer, Capability, Caption, Chat, ChatRequest, ChatRows, Conversation, Generated, Model,
    QuantizeLanguageModel,
};
use crate::registry::{Architecture, Registration};
use crate::Result;

/// What `caption` asks when no prompt is given.
pub const CAPTION_INSTRUCTION: &str = "Describe the image in one sentence.";

pub(crate) const REGISTRATION: Registration = Registration {
    architecture: Architecture::Llava,
    capabilities: &[
        Capability::Caption,
        Capability::Answer,
        Capability::Chat,
        Capability::Quantize,
    ],
    load: |files, device| {
        let model = LlavaForConditionalGeneration::load(files, device)?;
        let processor = LlavaProcessor::load(files, model.config())?;
        Ok(Box::new(Llava { model, processor }))
    },
};

/// LLaVA with the processor that builds its prompts. Captions and answers are one
/// chat turn each, decoded as a reply; the tokenizer the pipeline passes is not used.
pub struct Llava {
    pub model: LlavaForConditionalGeneration,
    pub processor: LlavaProcessor,
}

impl Llava {
    /// Generates a reply to one user `message` for every image of `pixel_values`.
    fn reply(
        &self,
        pixel_values: &Tensor,
        message: &str,
        gen: &GenerationConfig,
    ) -> Result<Vec<Generated>> {
        let (_, ids) = self
            .processor
            .prompt(&[ChatMessage::user(message, true)], true)?;
        let n = pixel_values.dim(0)?;
        let rows = Tensor::new(ids, pixel_values.device())?
            .unsqueeze(0)?
            .repeat((n, 1))?; // [n, t]
        self.model
            .generate(pixel_values, &rows, gen)?
            .into_iter()
            .map(|token_ids| {
                Ok(Generated {
                    text: self
                        .processor
                        .decode_reply(&token_ids, &gen.eos_token_ids)?,
                    token_ids,
                })
            })
            .collect()
    }
}

impl Model for Llava {
    fn as_linears(&mut self) -> Option<&mut dyn glimpse_nn::linears::Linears> {
        Some(self)
    }

    fn architecture(&self) -> Architecture {
        Architecture::Llava
    }

    fn generation_config(&self, gen: GenerationConfig) -> GenerationConfig {
        self.model.generation_config(&gen)
    }

    fn as_caption(&self) -> Option<&dyn Caption> {
        Some(self)
    }

    fn as_answer(&self) -> Option<&dyn Answer> {
        Some(self)
    }

    fn as_chat(&self) -> Option<&dyn Chat> {
        Some(self)
    }

    fn as_quantize(&mut self) -> Option<&mut dyn QuantizeLanguageModel> {
        Some(self)
    }
}

impl Caption for Llava {
    /// The prompt is the instruction; without one, [`CAPTION_INSTRUCTION`].
    fn caption(
        &self,
        _tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        prompt: Option<&str>,
        gen: &GenerationConfig,
    ) -> Result<Vec<Generated>> {
        self.reply(pixel_values, prompt.unwrap_or(CAPTION_INSTRUCTION), gen)
    }
}

impl Answer for Llava {
    fn answer(
        &self,
        _tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        question: &str,
        gen: &GenerationConfig,
    ) -> Result<Generated> {
        Ok(self.reply(pixel_values, question, gen)?.remove(0))
    }

    /// Each request's `user` is the question, asked as [`Self::answer`] asks it.
    fn answer_joining(
        &self,
        _tokenizer: &TextTokenizer,
        gen: &GenerationConfig,
        rows: &mut dyn ChatRows,
    ) -> Option<Result<()>> {
        let replies = Replies {
            llava: self,
            conversation: false,
        };
        Some(crate::replies::reply_joining(&replies, gen, rows))
    }
}

impl Chat for Llava {
    fn start_chat<'m>(
        &'m self,
        pixel_values: &Tensor,
        system: Option<&str>,
    ) -> Result<Box<dyn Conversation + 'm>> {
        let mut session = ChatSession::new(&self.model, &self.processor, pixel_values)?;
        if let Some(system) = system {
            session = session.with_system(system);
        }
        Ok(Box::new(session))
    }

    fn chat_joining(&self, gen: &GenerationConfig, rows: &mut dyn ChatRows) -> Option<Result<()>> {
        // The session's own settings (see `ChatSession::send`).
        let gen = GenerationConfig {
            num_return_sequences: 1,
            ..self.model.generation_config(gen)
        };
        let replies = Replies {
            llava: self,
            conversation: true,
        };
        Some(crate::replies::reply_joining(&replies, &gen, rows))
    }
}

/// LLaVA's replies in a joining batch: chat turns of replayed conversations, or
/// answers (one user message, as [`Llava::reply`] builds it).
struct Replies<'a> {
    llava: &'a Llava,
    conversation: bool,
}

impl crate::replies::Replies for Replies<'_> {
    type Decoder = LlavaForConditionalGeneration;

    fn decoder(&self) -> &LlavaForConditionalGeneration {
        &self.llava.model
    }

    fn name(&self) -> &'static str {
        "llava chat"
    }

    fn prompt(&self, request: &ChatRequest) -> Result<(String, Vec<u32>)> {
        let messages = if self.conversation {
            chat::replayed(request.system.as_deref(), &request.history, &request.user)?
        } else {
            vec![ChatMessage::user(&request.user, true)]
        };
        self.llava.processor.prompt(&messages, true)
    }

    fn images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.llava.model.image_features(pixel_values) // [n, tokens, d]
    }

    fn cache(&self, images: &Tensor, _ids: &Tensor) -> Result<LlavaCache> {
        Ok(self.llava.model.new_cache(Some(images)))
    }

    fn text(&self, ids: &[u32], gen: &GenerationConfig) -> Result<String> {
        self.llava.processor.decode_reply(ids, &gen.eos_token_ids)
    }
}

impl QuantizeLanguageModel for Llava {
    fn quantize_language_model(&mut self, quant: Quant) -> Result<QuantReport> {
        self.model.quantize_language_model(quant)
    }
}
