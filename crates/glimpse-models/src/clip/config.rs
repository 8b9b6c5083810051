//! `CLIPConfig`, `CLIPTextConfig` and `CLIPVisionConfig` in the reference's schema
//! (`transformers/models/clip/configuration_clip.py`), with its defaults.

use glimpse_nn::layers::Activation;
use glimpse_nn::vit::{EncoderConfig, VitConfig, VitLayout};
use serde::Deserialize;

/// `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    /// Pooling position: the first occurrence of this id, or, when it is 2 (configs
    /// written before transformers PR #24773), the position of the largest id.
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
            pad_token_id: Some(1),
            bos_token_id: Some(49406),
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    pub fn encoder(&self) -> EncoderConfig {
        EncoderConfig {
            layout: VitLayout::Clip,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            hidden_act: self.hidden_act,
            layer_norm_eps: self.layer_norm_eps,
            qkv_bias: true,
        }
    }
}

/// `CLIPVisionConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_channels: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
        }
    }
}

impl From<&ClipVisionConfig> for VitConfig {
    fn from(c: &ClipVisionConfig) -> Self {
        VitConfig {
            layout: VitLayout::Clip,
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_hidden_layers: c.num_hidden_layers,
            num_attention_heads: c.num_attention_heads,
            num_channels: c.num_channels,
            image_size: c.image_size,
            patch_size: c.patch_size,
            hidden_act: c.hidden_act,
            layer_norm_eps: c.layer_norm_eps,
            qkv_bias: true,
        }
    }
}

/// `CLIPConfig`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
    /// Older configs (e.g. `openai/clip-vit-base-patch32`) repeat the sub-configs here;
    /// the reference lets these win, and so does [`ClipConfig::resolved`].
    pub text_config_dict: Option<serde_json::Value>,
    pub vision_config_dict: Option<serde_json::Value>,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            text_config: ClipTextConfig::default(),
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            text_config_dict: None,
            vision_config_dict: None,
        }
    }
}

impl ClipConfig {
    /// This config with any legacy `*_config_dict` folded into the sub-configs.
    pub fn resolved(&self) -> Result<Self, serde_json::Error> {
        let mut out = self.clone();
        if let Some(dict) = out.text_config_dict.take() {
            out.text_config = serde_json::from_value(dict)?;
        }
        if let Some(dict) = out.vision_config_dict.take() {
            out.vision_config = serde_json::from_value(dict)?;
        }
        Ok(out)
    }
}
