//! `BlipConfig` in the schema of `transformers/models/blip/configuration_blip.py`
//! (transformers 5.24), with the reference's defaults for every missing field.

use glimpse_nn::layers::Activation;
use glimpse_nn::vit::{VitConfig, VitLayout};
use serde::Deserialize;

/// The text configuration (`BlipTextConfig`); the BERT module reads it directly.
pub use glimpse_nn::bert::{BertConfig as BlipTextConfig, TokenIds};

/// An image size stored as one number or as `[height, width]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ImageSize {
    Square(usize),
    HeightWidth([usize; 2]),
}

/// `BlipVisionConfig`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BlipVisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub projection_dim: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: ImageSize,
    pub patch_size: usize,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub attention_dropout: f64,
    pub initializer_range: f64,
}

impl Default for BlipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: 512,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: ImageSize::Square(384),
            patch_size: 16,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
            attention_dropout: 0.0,
            initializer_range: 1e-10,
        }
    }
}

impl ImageSize {
    /// The side of a square image; BLIP and BLIP-2 towers only take square inputs.
    pub fn square(&self) -> Result<usize, String> {
        match *self {
            ImageSize::Square(s) => Ok(s),
            ImageSize::HeightWidth([h, w]) if h == w => Ok(h),
            ImageSize::HeightWidth([h, w]) => {
                Err(format!("vision_config.image_size {h}x{w} is not square"))
            }
        }
    }
}

impl BlipVisionConfig {
    /// The vision transformer's shape; BLIP towers are square RGB with a biased `qkv`.
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
            qkv_bias: true,
        })
    }
}

/// `BlipConfig`: both towers and the heads' sizes.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BlipConfig {
    pub text_config: BlipTextConfig,
    pub vision_config: BlipVisionConfig,
    pub projection_dim: usize,
    pub logit_scale_init_value: f64,
    /// Width of the ITC projections `vision_proj` / `text_proj`.
    pub image_text_hidden_size: usize,
    pub label_smoothing: f64,
    pub tie_word_embeddings: bool,
    pub initializer_factor: f64,
    pub initializer_range: f64,
    pub architectures: Option<Vec<String>>,
}

impl Default for BlipConfig {
    fn default() -> Self {
        Self {
            text_config: BlipTextConfig::default(),
            vision_config: BlipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
            image_text_hidden_size: 256,
            label_smoothing: 0.0,
            tie_word_embeddings: true,
            initializer_factor: 1.0,
            initializer_range: 0.02,
            architectures: None,
        }
    }
}

impl BlipConfig {
    /// The text configuration as the reference uses it: its cross-attention always reads
    /// vision-width states (`BlipConfig.__post_init__` overwrites `encoder_hidden_size`).
    pub fn text(&self) -> BlipTextConfig {
        let mut text = self.text_config.clone();
        text.encoder_hidden_size = self.vision_config.hidden_size;
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_has_reference_defaults() {
        let cfg: BlipConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg.image_text_hidden_size, 256);
        assert_eq!(cfg.text_config.vocab_size, 30524);
        assert_eq!(cfg.text_config.bos_token_id, 30522);
        assert_eq!(cfg.text_config.sep_token_id, 102);
        assert_eq!(cfg.text_config.num_attention_heads, 8);
        assert_eq!(cfg.vision_config.image_size, ImageSize::Square(384));
        assert_eq!(cfg.vision_config.vit().unwrap().num_positions(), 577);
    }

    #[test]
    fn text_cross_attention_reads_vision_width() {
        let json = r#"{"vision_config": {"hidden_size": 24, "image_size": [16, 16]},
                       "text_config": {"encoder_hidden_size": 768, "eos_token_id": [2, 3]}}"#;
        let cfg: BlipConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg.text().encoder_hidden_size, 24);
        assert_eq!(
            cfg.text_config.eos_token_id,
            Some(TokenIds::Many(vec![2, 3]))
        );
        assert_eq!(cfg.vision_config.vit().unwrap().image_size, 16);
    }
}
