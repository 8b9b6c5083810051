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

mod chat;
mod config;
mod layout;
mod model;
mod processor;
mod template;

pub use chat::{ChatSession, ChatTurn};
pub use config::{FeatureSelect, LlavaConfig, VisionFeatureLayer};
pub use layout::{read_config, LlavaLayout};
pub use model::{LlavaCache, LlavaForConditionalGeneration, LlavaMultiModalProjector};
pub use processor::LlavaProcessor;
pub use template::{ChatMessage, ChatTemplate, Content, Role};
