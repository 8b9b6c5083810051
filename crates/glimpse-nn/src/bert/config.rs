//! `BlipTextConfig`: the text configuration of BLIP, in the reference's schema.

use serde::Deserialize;

use crate::layers::Activation;

/// A token id field that the reference allows to be one id or a list of ids.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// The text configuration of BLIP (`BlipTextConfig`), with the reference's defaults.
///
/// The reference allows `null` for `bos_token_id`, `pad_token_id` and `sep_token_id`, but
/// BLIP's generation cannot run without them, so here they are plain ids (a `null`
/// fails to deserialise, naming the field).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the states cross-attention reads (the vision hidden size in BLIP).
    pub encoder_hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub bos_token_id: u32,
    pub eos_token_id: Option<TokenIds>,
    pub pad_token_id: u32,
    pub sep_token_id: u32,
    /// In the reference this decides whether layers have `crossattention` weights.
    pub is_decoder: bool,
    pub use_cache: bool,
    pub tie_word_embeddings: bool,
    pub label_smoothing: f64,
}

impl Default for BertConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            encoder_hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 768,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            bos_token_id: 30522,
            eos_token_id: Some(TokenIds::One(2)),
            pad_token_id: 0,
            sep_token_id: 102,
            is_decoder: true,
            use_cache: true,
            tie_word_embeddings: true,
            label_smoothing: 0.0,
        }
    }
}
