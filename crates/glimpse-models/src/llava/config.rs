//! `LlavaConfig` in the reference's schema (`models/llava/configuration_llava.py`,
//! transformers 5.24), with its defaults (llava-1.5-7b: CLIP ViT-L/14 at 336 px,
//! Llama-2-7B).

use serde::Deserialize;

use glimpse_nn::layers::Activation;
use glimpse_nn::llama::LlamaConfig;
use glimpse_nn::vit::VitConfig;

use crate::clip::ClipVisionConfig;

/// Which vision hidden states feed the projector: `hidden_states[i]` as the reference
/// indexes its tuple (0 = the encoder input, -1 = the last layer's output, before any
/// post-norm). A list concatenates the states along the feature axis.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum VisionFeatureLayer {
    One(i64),
    Many(Vec<i64>),
}

impl Default for VisionFeatureLayer {
    fn default() -> Self {
        Self::One(-2)
    }
}

impl VisionFeatureLayer {
    /// The indices, in concatenation order.
    pub fn indices(&self) -> Vec<i64> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }

    /// Resolves the indices against a tower of `num_layers` layers (`num_layers + 1`
    /// hidden states); an index out of range is an error naming it.
    pub fn resolve(&self, num_layers: usize) -> Result<Vec<usize>, String> {
        let n = num_layers as i64 + 1;
        let idx = self.indices();
        if idx.is_empty() {
            return Err("vision_feature_layer is an empty list".into());
        }
        idx.iter()
            .map(|&i| {
                let j = if i < 0 { n + i } else { i };
                if (0..n).contains(&j) {
                    Ok(j as usize)
                } else {
                    Err(format!(
                        "vision_feature_layer {i} is out of range for a vision tower with \
                         {num_layers} layers ({n} hidden states)"
                    ))
                }
            })
            .collect()
    }
}

/// `vision_feature_select_strategy`: which positions of the selected hidden states
/// become image tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum FeatureSelect {
    /// `"default"`: the patch positions only (the CLS position is dropped).
    #[default]
    #[serde(rename = "default")]
    Default,
    /// `"full"`: every position, CLS first.
    #[serde(rename = "full")]
    Full,
}

/// `LlavaConfig`. `vision_config` must describe a CLIP vision tower and `text_config`
/// a LLaMA model (checked by the loader against their `model_type`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LlavaConfig {
    pub vision_config: ClipVisionConfig,
    pub text_config: LlamaConfig,
    /// Id of the `<image>` placeholder (`image_token_id` in newer files).
    #[serde(alias = "image_token_id")]
    pub image_token_index: u32,
    /// What the processor expands one `<image>` into (informational here: the count
    /// that must match is the number of features the vision tower produces).
    pub image_seq_length: usize,
    pub projector_hidden_act: Activation,
    pub vision_feature_select_strategy: FeatureSelect,
    pub vision_feature_layer: VisionFeatureLayer,
    pub multimodal_projector_bias: bool,
    pub tie_word_embeddings: bool,
    pub pad_token_id: Option<u32>,
}

impl Default for LlavaConfig {
    fn default() -> Self {
        Self {
            vision_config: llava_vision_default(),
            text_config: LlamaConfig::default(),
            image_token_index: 32000,
            image_seq_length: 576,
            projector_hidden_act: Activation::Gelu,
            vision_feature_select_strategy: FeatureSelect::Default,
            vision_feature_layer: VisionFeatureLayer::default(),
            multimodal_projector_bias: true,
            tie_word_embeddings: false,
            pad_token_id: None,
        }
    }
}

/// The vision tower the reference builds when `vision_config` is absent (CLIP ViT-L/14,
/// 336 px). A `vision_config` that is present fills its gaps with `CLIPVisionConfig`'s
/// own defaults instead.
fn llava_vision_default() -> ClipVisionConfig {
    ClipVisionConfig {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_hidden_layers: 24,
        num_attention_heads: 16,
        image_size: 336,
        patch_size: 14,
        ..ClipVisionConfig::default()
    }
}

impl LlavaConfig {
    /// The language model's config with the composite's tying rule applied (the
    /// reference ties `lm_head` when either level asks for it).
    pub fn text(&self) -> LlamaConfig {
        let mut t = self.text_config.clone();
        t.tie_word_embeddings |= self.tie_word_embeddings;
        t
    }

    pub fn vision(&self) -> VitConfig {
        (&self.vision_config).into()
    }

    /// Image tokens per image: patches, plus the CLS position with `"full"`.
    pub fn image_tokens_per_image(&self) -> usize {
        let v = &self.vision_config;
        let patches = (v.image_size / v.patch_size.max(1)).pow(2);
        match self.vision_feature_select_strategy {
            FeatureSelect::Default => patches,
            FeatureSelect::Full => patches + 1,
        }
    }

    /// Ids that end a reply: `text_config.eos_token_id` (one or several).
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.text_config
            .eos_token_id
            .as_ref()
            .map(|e| e.to_vec())
            .unwrap_or_default()
    }

    /// Padding id for generation: the top-level `pad_token_id`, else the text model's,
    /// else the first eos.
    pub fn generation_pad_id(&self) -> u32 {
        self.pad_token_id
            .or(self.text_config.pad_token_id)
            .or_else(|| self.eos_token_ids().first().copied())
            .unwrap_or(0)
    }
}
