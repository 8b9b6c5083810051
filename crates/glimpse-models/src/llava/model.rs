//! `LlavaForConditionalGeneration`: CLIP vision tower, two-layer projector, LLaMA.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Module, VarBuilder};
use glimpse_generate::{Decoder, GenerationConfig};
use glimpse_nn::layers::Linear;
use glimpse_nn::layers::{linear_b, Activation};
use glimpse_nn::llama::{DecoderCache, LlamaForCausalLM};
use glimpse_nn::quant::{Quant, QuantReport};
use glimpse_nn::vit::VisionTransformer;

use super::config::{FeatureSelect, LlavaConfig};
use super::layout::LlavaLayout;
use crate::checkpoint::{ModelFiles, Weights};
use crate::{Error, Result};

/// `multi_modal_projector`: `linear_2(act(linear_1(x)))`.
#[derive(Debug, Clone)]
pub struct LlavaMultiModalProjector {
    pub linear_1: Linear,
    pub act: Activation,
    pub linear_2: Linear,
}

impl LlavaMultiModalProjector {
    pub fn new(cfg: &LlavaConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let layers = cfg.vision_feature_layer.indices().len();
        let d_in = cfg.vision_config.hidden_size * layers;
        let d = cfg.text_config.hidden_size;
        let bias = cfg.multimodal_projector_bias;
        Ok(Self {
            linear_1: linear_b(d_in, d, bias, vb.pp("linear_1"))?,
            act: cfg.projector_hidden_act,
            linear_2: linear_b(d, d, bias, vb.pp("linear_2"))?,
        })
    }

    /// # Shapes
    /// * `x`: `[b, n, layers * vision_hidden]` -> `[b, n, text_hidden]`
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.linear_1.forward(x)?; // [b, n, d]
        let h = self.act.apply(&h)?; // [b, n, d]
        self.linear_2.forward(&h) // [b, n, d]
    }
}

/// The decoding state: the language model's cache plus image features that wait for
/// the `<image>` positions of the next step (the prompt's first step).
#[derive(Debug, Clone)]
pub struct LlavaCache {
    pub decoder: DecoderCache,
    /// `[b, n, text_hidden]`; consumed by the step whose ids hold the image tokens.
    pub pending_images: Option<Tensor>,
}

impl LlavaCache {
    /// Number of positions whose keys/values are cached.
    pub fn len(&self) -> usize {
        self.decoder.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decoder.is_empty()
    }
}

/// `LlavaForConditionalGeneration` (reference: `models/llava/modeling_llava.py`).
#[derive(Debug, Clone)]
pub struct LlavaForConditionalGeneration {
    pub vision_tower: VisionTransformer,
    pub multi_modal_projector: LlavaMultiModalProjector,
    pub language_model: LlamaForCausalLM,
    /// `vision_feature_layer` resolved to hidden-state indices.
    feature_layers: Vec<usize>,
    config: LlavaConfig,
}

impl LlavaForConditionalGeneration {
    /// `vb` at the checkpoint root, in the hub layout (see [`LlavaLayout`]).
    pub fn new(cfg: &LlavaConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_with_layout(cfg, vb, &LlavaLayout::hub())
    }

    /// `vb` at the checkpoint root; `layout` says where each part is stored.
    pub fn new_with_layout(
        cfg: &LlavaConfig,
        vb: VarBuilder,
        layout: &LlavaLayout,
    ) -> Result<Self> {
        let vision = cfg.vision();
        let feature_layers = cfg
            .vision_feature_layer
            .resolve(vision.num_hidden_layers)
            .map_err(|msg| Error::Model {
                model: "llava".into(),
                msg,
            })?;
        let text = cfg.text();
        Ok(Self {
            vision_tower: VisionTransformer::new(&vision, vb.pp(&layout.vision_tower))?,
            multi_modal_projector: LlavaMultiModalProjector::new(cfg, vb.pp(&layout.projector))?,
            language_model: LlamaForCausalLM::new_with_head(
                &text,
                vb.pp(&layout.language_model),
                vb.pp(&layout.lm_head),
            )?,
            feature_layers,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint directory in the compute dtype that
    /// [`crate::checkpoint::memory`] picks (CPU: f32, or the stored half dtype when only
    /// that fits; elsewhere the stored dtype), refusing, before reading any tensor, a
    /// checkpoint that does not fit the available memory (see [`Self::load_with_dtype`]).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        let (_, plan) = Weights::open_checked(files, device)?;
        Self::load_with_dtype(files, plan.compute_dtype, device)
    }

    /// Loads strictly from any of the layouts [`LlavaLayout::detect`] knows.
    pub fn load_with_dtype(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let cfg = super::layout::read_config(files)?;
        let weights = Weights::open(files)?;
        let layout = LlavaLayout::detect(&weights, &files.dir)?;
        let vb = weights.var_builder(dtype, device);
        let model = Self::new_with_layout(&cfg, vb.clone(), &layout)?;
        if cfg.text().tie_word_embeddings {
            // Tied: the head is the embedding matrix; a stored copy is read and ignored.
            let head = format!("{}.weight", layout.lm_head);
            if weights.contains(&head) {
                let t = &cfg.text_config;
                vb.get((t.vocab_size, t.hidden_size), &head)?;
            }
        }
        weights.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &LlavaConfig {
        &self.config
    }

    /// Quantises the language model's decoder layers for inference (see
    /// [`LlamaForCausalLM::quantize`]); vision tower, projector, embeddings and head
    /// stay as loaded.
    pub fn quantize_language_model(&mut self, quant: Quant) -> Result<QuantReport> {
        Ok(self.language_model.quantize(quant)?)
    }

    /// The reference's `get_image_features`: the selected vision hidden states (CLS
    /// dropped with `"default"`), concatenated on features, through the projector.
    ///
    /// # Shapes
    /// * `pixel_values`: `[b, 3, size, size]` -> `[b, n, text_hidden]`, `n` =
    ///   [`LlavaConfig::image_tokens_per_image`]
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.image_features_t(pixel_values, false)
    }

    /// [`Self::image_features`] with the `train` switch.
    pub fn image_features_t(&self, pixel_values: &Tensor, train: bool) -> Result<Tensor> {
        let states = match self.feature_layers.as_slice() {
            [one] => vec![self
                .vision_tower
                .hidden_state(pixel_values, *one as i64, train)?], // [b, N+1, dv]
            many => {
                let out = self.vision_tower.forward(pixel_values, true, train)?;
                let all = out.hidden_states.unwrap_or_default();
                many.iter().map(|&i| all[i].clone()).collect()
            }
        };
        let states = states
            .iter()
            .map(|h| match self.config.vision_feature_select_strategy {
                FeatureSelect::Default => h.narrow(1, 1, h.dim(1)? - 1), // [b, N, dv]
                FeatureSelect::Full => Ok(h.clone()),                    // [b, N+1, dv]
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let selected = Tensor::cat(&states, 2)?; // [b, n, layers * dv]
        Ok(self.multi_modal_projector.forward(&selected)?) // [b, n, d]
    }

    /// Token embeddings with the `<image>` positions replaced by `image_features`, in
    /// reading order over the batch (the reference's `masked_scatter`). The number of
    /// image tokens must equal the number of feature rows.
    ///
    /// # Shapes
    /// * `input_ids`: `[b, t]` u32; `image_features`: `[k, n, text_hidden]`
    /// * returns `[b, t, text_hidden]`
    pub fn embed(&self, input_ids: &Tensor, image_features: Option<&Tensor>) -> Result<Tensor> {
        embed_with_images(
            &self.language_model,
            self.config.image_token_index,
            input_ids,
            image_features,
        )
    }

    /// The reference's `forward(...).logits` (no cache).
    ///
    /// # Shapes
    /// * `pixel_values`: `[k, 3, size, size]` (one image per `<image>` in the ids);
    ///   `input_ids`: `[b, t]` u32 with the placeholders already expanded;
    ///   `attention_mask`: `[b, t]` 0/1
    /// * returns `[b, t, vocab]`
    pub fn logits(
        &self,
        pixel_values: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward(pixel_values, input_ids, attention_mask, false)
    }

    /// [`Self::logits`] with the `train` switch (one path for training and inference).
    pub fn forward(
        &self,
        pixel_values: Option<&Tensor>,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let features = match pixel_values {
            Some(px) => Some(self.image_features_t(px, train)?), // [k, n, d]
            None => None,
        };
        let embeds = self.embed(input_ids, features.as_ref())?; // [b, t, d]
        let mut cache = self.language_model.new_cache();
        Ok(self
            .language_model
            .forward_embeds(&embeds, attention_mask, &mut cache, train)?) // [b, t, V]
    }

    /// A decoding cache whose first step will splice `image_features` (`[b, n, d]`,
    /// from [`Self::image_features`]) into its `<image>` positions.
    pub fn new_cache(&self, image_features: Option<&Tensor>) -> LlavaCache {
        LlavaCache {
            decoder: self.language_model.new_cache(),
            pending_images: image_features.cloned(),
        }
    }

    /// `gen` with this model's end and padding ids.
    pub fn generation_config(&self, gen: &GenerationConfig) -> GenerationConfig {
        GenerationConfig {
            eos_token_ids: self.config.eos_token_ids(),
            pad_token_id: self.config.generation_pad_id(),
            ..gen.clone()
        }
    }

    /// Continues `input_ids` (`[b, t]`, placeholders expanded) about `pixel_values`
    /// with `gen` as given; returns the generated ids of each row (eos included).
    pub fn generate(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        gen: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        let features = self.image_features(pixel_values)?; // [b, n, d]
        let mut cache = self.new_cache(Some(&features));
        run_generate(self, &mut cache, input_ids, gen, None)
    }
}

/// Token embeddings of `language_model` with the `image_id` positions replaced by
/// `image_features`, in reading order over the batch (the reference's `masked_scatter`);
/// [`LlavaForConditionalGeneration::embed`], and the training recipes' projectors.
///
/// # Shapes
/// * `input_ids`: `[b, t]` u32; `image_features`: `[k, n, text_hidden]`
/// * returns `[b, t, text_hidden]`
pub fn embed_with_images(
    language_model: &LlamaForCausalLM,
    image_id: u32,
    input_ids: &Tensor,
    image_features: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, t) = input_ids.dims2()?;
    let rows = input_ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    let n_image = rows.iter().flatten().filter(|&&i| i == image_id).count();
    let n_features = match image_features {
        Some(f) => f.dims3()?.0 * f.dims3()?.1,
        None => 0,
    };
    if n_image != n_features {
        return Err(Error::Model {
            model: "llava".into(),
            msg: format!(
                "the input ids hold {n_image} image token(s) (id {image_id}) but \
                 {n_features} image feature row(s) are given"
            ),
        });
    }
    // The placeholder id may lie outside the vocabulary; its row is overwritten anyway.
    let safe: Vec<u32> = rows
        .iter()
        .flatten()
        .map(|&i| if i == image_id { 0 } else { i })
        .collect();
    let safe = Tensor::from_vec(safe, (b, t), input_ids.device())?;
    let embeds = language_model.embed_tokens(&safe)?; // [b, t, d]
    let Some(features) = image_features.filter(|_| n_image > 0) else {
        return Ok(embeds);
    };
    let d = embeds.dim(2)?;
    let flat_text = embeds.reshape((b * t, d))?; // [b*t, d]
    let flat_img = features.to_dtype(embeds.dtype())?.reshape((n_image, d))?; // [k*n, d]
    let mut next_image = 0u32;
    let index: Vec<u32> = rows
        .iter()
        .flatten()
        .enumerate()
        .map(|(pos, &id)| {
            if id == image_id {
                next_image += 1;
                (b * t) as u32 + next_image - 1
            } else {
                pos as u32
            }
        })
        .collect();
    let index = Tensor::from_vec(index, b * t, input_ids.device())?;
    let both = Tensor::cat(&[&flat_text, &flat_img], 0)?; // [b*t + k*n, d]
    Ok(both.index_select(&index, 0)?.reshape((b, t, d))?) // [b, t, d]
}

/// A streaming callback: sees each step's new tokens, returns whether to go on.
pub(crate) type OnStep<'a> = &'a mut dyn FnMut(&[Option<u32>]) -> bool;

/// Runs the shared decoding loop (streaming when `on_step` is given); its errors
/// become model errors.
pub(crate) fn run_generate(
    model: &LlavaForConditionalGeneration,
    cache: &mut LlavaCache,
    prompt: &Tensor,
    gen: &GenerationConfig,
    on_step: Option<OnStep<'_>>,
) -> Result<Vec<Vec<u32>>> {
    let out = match on_step {
        Some(f) => glimpse_generate::generate_stream(model, cache, prompt, gen, f),
        None => glimpse_generate::generate(model, cache, prompt, gen),
    };
    out.map_err(|e| match e {
        glimpse_generate::GenerateError::Candle(e) => Error::Candle(e),
        other => Error::Model {
            model: "generate".into(),
            msg: other.to_string(),
        },
    })
}

impl Decoder for LlavaForConditionalGeneration {
    type Cache = LlavaCache;

    fn step(&self, input_ids: &Tensor, cache: &mut LlavaCache) -> candle_core::Result<Tensor> {
        let image_id = self.config.image_token_index;
        let has_image = input_ids
            .to_dtype(DType::U32)?
            .flatten_all()?
            .to_vec1::<u32>()?
            .contains(&image_id);
        let images = if has_image {
            cache.pending_images.take()
        } else {
            None
        };
        let embeds = if images.is_none() && !cache.is_empty() {
            // A generated token: even the image token's id is embedded as a token, as
            // the reference does once the pixel values are spent (in a joined batch,
            // one row's odd token must not fail the others' step).
            self.language_model.embed_tokens(input_ids)?
        } else {
            self.embed(input_ids, images.as_ref())
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?
        }; // [b, t, d]
        let t = embeds.dim(1)?;
        let lm = &self.language_model;
        let hidden = lm.forward_hidden(&embeds, None, &mut cache.decoder, false)?; // [b, t, d]
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?; // [b, d]
        lm.logits(&last)?.to_dtype(DType::F32) // [b, V]
    }

    fn select_rows(&self, cache: &mut LlavaCache, rows: &Tensor) -> candle_core::Result<()> {
        if let Some(p) = &cache.pending_images {
            cache.pending_images = Some(p.index_select(rows, 0)?);
        }
        cache.decoder.select_rows(rows)
    }

    /// Rows join once their prompt's step has taken their image features.
    fn join(&self, cache: &mut LlavaCache, other: LlavaCache) -> candle_core::Result<()> {
        if cache.pending_images.is_some() || other.pending_images.is_some() {
            candle_core::bail!("rows join after their prompt's step (image features still pending)")
        }
        cache.decoder.join(other.decoder)
    }
}
