//! T5 and Flan-T5, the encoder-decoder language model of BLIP-2's FlanT5 variants.
//!
//! Paper: Raffel et al., "Exploring the Limits of Transfer Learning with a Unified
//! Text-to-Text Transformer" (<https://arxiv.org/abs/1910.10683>); T5 v1.1 / Flan-T5 use
//! the gated feed-forward. Reference: `transformers` 5.24,
//! `src/transformers/models/t5/modeling_t5.py`.
//!
//! What differs from the BERT-style stacks, and how this port handles it:
//!
//! * No position embeddings: a learned bias per head and relative-distance bucket is
//!   added to the attention scores. Only block 0 of each stack owns the table; the bias
//!   is computed once per call and handed to every block as part of the additive mask
//!   of the shared [`crate::attention::sdpa`] (scores are NOT scaled by `1/sqrt(d_kv)`).
//! * The layer norm is RMS-only (no mean, no bias), computed in f32 as the reference.
//! * Half precision: in f16 the reference keeps every `wo` in f32 (`_keep_in_fp32_modules`),
//!   so the residual stream becomes f32 after the first feed-forward; we do the same. In
//!   bf16 everything stays bf16, as in the reference. (Flan-T5's real weights still
//!   overflow in f16: run it in f32 or bf16.)
//! * The encoder takes input embeddings (BLIP-2 feeds its visual soft prompt followed by
//!   the prompt's token embeddings); [`T5ForConditionalGeneration::embed_tokens`] gives
//!   the token part.
//! * Decoding state lives in a [`T5Cache`] the caller owns: cross-attention keys/values
//!   are projected once per encoder output, self-attention keys/values grow per step.
//! * Output head: `lm_head.weight` when the checkpoint has it, else the shared embedding
//!   (tied). The decoder output is rescaled by `d_model^-0.5` before the head when
//!   `scale_decoder_outputs` says so (written by transformers 5.x), otherwise when
//!   `tie_word_embeddings` is true (older configs), which is what the reference does.

mod layers;
mod model;

pub use layers::{relative_position_bucket, T5Attention, T5DenseActDense, T5LayerNorm};
pub use model::{T5Cache, T5ForConditionalGeneration};

use serde::{Deserialize, Deserializer};

use crate::layers::Activation;

/// The feed-forward variant, parsed from `feed_forward_proj` (`"relu"`, `"gelu"`,
/// `"gated-gelu"`, `"gated-silu"`, ...).
///
/// As in the reference, the activation is the part after `gated-`, except that
/// `"gated-gelu"` means the tanh approximation (`gelu_new`), as T5 v1.1 was trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedForwardProj {
    /// `wo(act(wi(x)))`.
    Dense(Activation),
    /// `wo(act(wi_0(x)) * wi_1(x))`.
    Gated(Activation),
}

impl FeedForwardProj {
    /// The activation (the reference's `dense_act_fn`).
    pub fn activation(&self) -> Activation {
        match self {
            Self::Dense(a) | Self::Gated(a) => *a,
        }
    }

    /// Whether the feed-forward is gated (the reference's `is_gated_act`).
    pub fn is_gated(&self) -> bool {
        matches!(self, Self::Gated(_))
    }

    /// Parses a `feed_forward_proj` string; the error names the bad value.
    pub fn parse(s: &str) -> Result<Self, String> {
        use serde::de::IntoDeserializer;
        let bad = || format!("feed_forward_proj must be `ACT` or `gated-ACT`, got {s:?}");
        let parts: Vec<&str> = s.split('-').collect();
        let (gated, act) = match parts.as_slice() {
            [act] => (false, *act),
            ["gated", act] => (true, *act),
            _ => return Err(bad()),
        };
        let act = if gated && act == "gelu" {
            "gelu_new"
        } else {
            act
        };
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            act.into_deserializer();
        let act = Activation::deserialize(de).map_err(|e| format!("{}: {e}", bad()))?;
        Ok(if gated {
            Self::Gated(act)
        } else {
            Self::Dense(act)
        })
    }
}

impl Default for FeedForwardProj {
    fn default() -> Self {
        Self::Dense(Activation::Relu)
    }
}

impl<'de> Deserialize<'de> for FeedForwardProj {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `T5Config` in the reference's schema and defaults (t5-small sizes).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Size of one attention head.
    pub d_kv: usize,
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Decoder blocks; `None` means as many as the encoder.
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    /// Applied only when `train` is set.
    pub dropout_rate: f64,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: FeedForwardProj,
    pub tie_word_embeddings: bool,
    /// Written by transformers 5.x; absent in older configs (then `tie_word_embeddings`).
    pub scale_decoder_outputs: Option<bool>,
    pub pad_token_id: Option<u32>,
    #[serde(deserialize_with = "one_or_many")]
    pub eos_token_id: Vec<u32>,
    pub bos_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 512,
            d_kv: 64,
            d_ff: 2048,
            num_layers: 6,
            num_decoder_layers: None,
            num_heads: 8,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: FeedForwardProj::default(),
            tie_word_embeddings: true,
            scale_decoder_outputs: None,
            pad_token_id: Some(0),
            eos_token_id: vec![1],
            bos_token_id: None,
            decoder_start_token_id: None,
        }
    }
}

impl T5Config {
    pub fn num_decoder_layers(&self) -> usize {
        self.num_decoder_layers.unwrap_or(self.num_layers)
    }

    /// Whether decoder outputs are multiplied by `d_model^-0.5` before the LM head.
    pub fn scale_decoder_outputs(&self) -> bool {
        self.scale_decoder_outputs
            .unwrap_or(self.tie_word_embeddings)
    }

    /// The first decoder token; T5 checkpoints use the pad token (0) when unset.
    pub fn decoder_start_token_id(&self) -> u32 {
        self.decoder_start_token_id
            .or(self.pad_token_id)
            .unwrap_or(0)
    }

    /// The reference's `dense_act_fn`.
    pub fn dense_act_fn(&self) -> Activation {
        self.feed_forward_proj.activation()
    }

    /// The reference's `is_gated_act`.
    pub fn is_gated_act(&self) -> bool {
        self.feed_forward_proj.is_gated()
    }
}

/// Accepts `null`, one id, or a list of ids.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<Raw>::deserialize(d)? {
        None => Vec::new(),
        Some(Raw::One(id)) => vec![id],
        Some(Raw::Many(ids)) => ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_forward_proj_follows_the_reference() {
        let p = |s: &str| FeedForwardProj::parse(s).unwrap();
        assert_eq!(p("relu"), FeedForwardProj::Dense(Activation::Relu));
        assert_eq!(p("gelu"), FeedForwardProj::Dense(Activation::Gelu));
        assert_eq!(
            p("gated-gelu"),
            FeedForwardProj::Gated(Activation::GeluTanh)
        );
        assert_eq!(p("gated-silu"), FeedForwardProj::Gated(Activation::Silu));
        assert_eq!(
            p("gated-gelu_new"),
            FeedForwardProj::Gated(Activation::GeluTanh)
        );
        assert!(FeedForwardProj::parse("gated-gelu-x").is_err());
        assert!(FeedForwardProj::parse("dense-relu").is_err());
        assert!(FeedForwardProj::parse("tanhh").is_err());
    }

    #[test]
    fn config_defaults_and_derived_fields() {
        let cfg: T5Config = serde_json::from_str(
            r#"{"d_model": 64, "num_layers": 3, "feed_forward_proj": "gated-gelu",
                "tie_word_embeddings": false, "eos_token_id": [1, 5]}"#,
        )
        .unwrap();
        assert_eq!(cfg.num_decoder_layers(), 3);
        assert_eq!(cfg.d_kv, 64);
        assert!(cfg.is_gated_act());
        assert_eq!(cfg.dense_act_fn(), Activation::GeluTanh);
        assert!(!cfg.scale_decoder_outputs());
        assert_eq!(cfg.decoder_start_token_id(), 0);
        assert_eq!(cfg.eos_token_id, vec![1, 5]);
        // transformers 5.x writes tie_word_embeddings=true with an explicit flag.
        let cfg: T5Config = serde_json::from_str(
            r#"{"tie_word_embeddings": true, "scale_decoder_outputs": false}"#,
        )
        .unwrap();
        assert!(!cfg.scale_decoder_outputs());
        assert!(T5Config::default().scale_decoder_outputs());
    }
}
