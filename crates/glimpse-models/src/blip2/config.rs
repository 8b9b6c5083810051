//! `Blip2Config` in the schema of `transformers/models/blip_2/configuration_blip_2.py`
//! (transformers 5.24), with the reference's defaults for every missing field.

use glimpse_nn::bert::BertConfig;
use glimpse_nn::layers::Activation;
use glimpse_nn::opt::OptConfig;
use glimpse_nn::t5::T5Config;
use glimpse_nn::vit::{VitConfig, VitLayout};
use serde::{Deserialize, Deserializer};

pub use crate::blip::ImageSize;

/// `Blip2VisionConfig` (EVA-CLIP ViT-g sizes by default).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Blip2VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: ImageSize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
    pub initializer_range: f64,
    pub qkv_bias: bool,
}

impl Default for Blip2VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 1408,
            intermediate_size: 6144,
            num_hidden_layers: 39,
            num_attention_heads: 16,
            image_size: ImageSize::Square(224),
            patch_size: 14,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-6,
            attention_dropout: 0.0,
            initializer_range: 1e-10,
            qkv_bias: true,
        }
    }
}

impl Blip2VisionConfig {
    /// The shared ViT in its BLIP layout; the fused bias loads from `qkv.bias` or from
    /// the older `q_bias`/`v_bias` pair.
    pub fn vit(&self) -> Result<VitConfig, String> {
        let image_size = self.image_size.square()?;
        Ok(VitConfig {
            layout: VitLayout::Blip,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_channels: 3,
            image_size,
            patch_size: self.patch_size,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            qkv_bias: self.qkv_bias,
        })
    }
}

/// `Blip2QFormerConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Blip2QFormerConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: Activation,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: Option<u32>,
    /// Layer `i` cross-attends to the image when `i % cross_attention_frequency == 0`.
    pub cross_attention_frequency: usize,
    /// Width of the image states; [`Blip2Config::qformer`] overwrites it with the vision
    /// hidden size, as the reference's `__post_init__` does.
    pub encoder_hidden_size: usize,
    /// Whether layers have the text feed-forward (`intermediate`, `output`) used by the
    /// retrieval model's text passes.
    pub use_qformer_text_input: bool,
}

impl Default for Blip2QFormerConfig {
    fn default() -> Self {
        Self {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: Some(0),
            cross_attention_frequency: 2,
            encoder_hidden_size: 1408,
            use_qformer_text_input: false,
        }
    }
}

impl Blip2QFormerConfig {
    /// Whether layer `i` has `crossattention` weights.
    pub fn has_cross_attention(&self, i: usize) -> bool {
        self.cross_attention_frequency != 0 && i.is_multiple_of(self.cross_attention_frequency)
    }

    /// The same sizes as a BERT config, so the Q-Former reuses BERT's attention blocks.
    pub fn bert(&self) -> BertConfig {
        BertConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            encoder_hidden_size: self.encoder_hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            max_position_embeddings: self.max_position_embeddings,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            hidden_dropout_prob: self.hidden_dropout_prob,
            attention_probs_dropout_prob: self.attention_probs_dropout_prob,
            pad_token_id: self.pad_token_id.unwrap_or(0),
            is_decoder: false,
            ..BertConfig::default()
        }
    }
}

/// The language model's configuration, chosen by its `model_type`.
#[derive(Debug, Clone)]
pub enum Blip2TextConfig {
    /// `"opt"`: decoder-only (the reference's default).
    Opt(OptConfig),
    /// `"t5"`: encoder-decoder (Flan-T5).
    T5(T5Config),
}

impl Default for Blip2TextConfig {
    fn default() -> Self {
        Self::Opt(OptConfig::default())
    }
}

impl<'de> Deserialize<'de> for Blip2TextConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        let model_type = value
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("opt")
            .to_string();
        match model_type.as_str() {
            "opt" => OptConfig::deserialize(value)
                .map(Self::Opt)
                .map_err(D::Error::custom),
            "t5" => T5Config::deserialize(value)
                .map(Self::T5)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "model_type {other:?} is not supported as a BLIP-2 language model \
                 (expected \"opt\" or \"t5\")"
            ))),
        }
    }
}

impl Blip2TextConfig {
    /// The reference's `text_config.hidden_size`: what `language_projection` outputs.
    pub fn hidden_size(&self) -> usize {
        match self {
            Self::Opt(c) => c.hidden_size,
            Self::T5(c) => c.d_model,
        }
    }

    /// The reference's `text_config.bos_token_id`.
    pub fn bos_token_id(&self) -> Option<u32> {
        match self {
            Self::Opt(c) => c.bos_token_id,
            Self::T5(c) => c.bos_token_id,
        }
    }

    pub fn eos_token_ids(&self) -> Vec<u32> {
        match self {
            Self::Opt(c) => c
                .eos_token_id
                .as_ref()
                .map(|e| e.to_vec())
                .unwrap_or_default(),
            Self::T5(c) => c.eos_token_id.clone(),
        }
    }

    pub fn pad_token_id(&self) -> Option<u32> {
        match self {
            Self::Opt(c) => c.pad_token_id,
            Self::T5(c) => c.pad_token_id,
        }
    }
}

/// `Blip2Config`: the three towers, the number of queries and the image placeholder.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Blip2Config {
    pub vision_config: Blip2VisionConfig,
    pub qformer_config: Blip2QFormerConfig,
    pub text_config: Blip2TextConfig,
    pub num_query_tokens: usize,
    /// Width of the retrieval projections (`vision_projection`, `text_projection`).
    pub image_text_hidden_size: usize,
    /// The placeholder id whose embeddings the projected queries replace; `None` in
    /// configs written before the processor inserted placeholders (queries are then
    /// prepended to the prompt).
    #[serde(alias = "image_token_id")]
    pub image_token_index: Option<u32>,
    pub initializer_factor: f64,
    pub initializer_range: f64,
    pub architectures: Option<Vec<String>>,
}

impl Default for Blip2Config {
    fn default() -> Self {
        Self {
            vision_config: Blip2VisionConfig::default(),
            qformer_config: Blip2QFormerConfig::default(),
            text_config: Blip2TextConfig::default(),
            num_query_tokens: 32,
            image_text_hidden_size: 256,
            image_token_index: None,
            initializer_factor: 1.0,
            initializer_range: 0.02,
            architectures: None,
        }
    }
}

impl Blip2Config {
    /// The Q-Former configuration as the reference uses it: cross-attention reads
    /// vision-width states whatever the stored `encoder_hidden_size` says.
    pub fn qformer(&self) -> Blip2QFormerConfig {
        let mut q = self.qformer_config.clone();
        q.encoder_hidden_size = self.vision_config.hidden_size;
        q
    }

    /// Derived from the language model's type, as the reference does (the stored field
    /// of the same name is ignored).
    pub fn use_decoder_only_language_model(&self) -> bool {
        matches!(self.text_config, Blip2TextConfig::Opt(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_reference_defaults() {
        let cfg: Blip2Config = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.num_query_tokens, 32);
        assert_eq!(cfg.image_token_index, None);
        assert!(cfg.use_decoder_only_language_model());
        assert_eq!(cfg.vision_config.vit().unwrap().num_positions(), 257);
        assert_eq!(cfg.qformer().encoder_hidden_size, 1408);
        assert!(cfg.qformer_config.has_cross_attention(0));
        assert!(!cfg.qformer_config.has_cross_attention(1));
        assert_eq!(cfg.text_config.hidden_size(), 768);
    }

    #[test]
    fn text_config_picks_the_language_model_by_model_type() {
        let json = r#"{"vision_config": {"hidden_size": 24},
                       "qformer_config": {"encoder_hidden_size": 1408},
                       "image_token_index": 7,
                       "text_config": {"model_type": "t5", "d_model": 16, "eos_token_id": 1}}"#;
        let cfg: Blip2Config = serde_json::from_str(json).unwrap();
        assert!(!cfg.use_decoder_only_language_model());
        assert_eq!(cfg.qformer().encoder_hidden_size, 24);
        assert_eq!(cfg.image_token_index, Some(7));
        assert_eq!(cfg.text_config.hidden_size(), 16);
        assert_eq!(cfg.text_config.eos_token_ids(), vec![1]);
    }

    #[test]
    fn unknown_language_model_is_an_error_naming_it() {
        let json = r#"{"text_config": {"model_type": "gpt2"}}"#;
        let err = serde_json::from_str::<Blip2Config>(json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpt2"), "{err}");
    }
}
