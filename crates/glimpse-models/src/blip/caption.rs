//! `BlipForConditionalGeneration`: image captioning, optionally continuing a prompt.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_generate::{Decoder, GenerationConfig};
use glimpse_nn::bert::{BertCache, BertLMHeadModel, EncoderStates};

use super::{config::BlipConfig, vision::BlipVisionModel};
use crate::capability::{CaptionRows, Generated};
use crate::checkpoint::ModelFiles;
use crate::Result;
use glimpse_data::TextTokenizer;

/// The vision tower (`vision_model`) and the text decoder (`text_decoder`) whose
/// cross-attention reads every image token.
#[derive(Debug, Clone)]
pub struct BlipForConditionalGeneration {
    pub vision_model: BlipVisionModel,
    pub text_decoder: BertLMHeadModel,
    config: BlipConfig,
}

impl BlipForConditionalGeneration {
    /// `vb` points at the checkpoint root. The LM head's weight is the decoder's word
    /// embeddings when `text_config.tie_word_embeddings` (checkpoints saved by the
    /// reference leave it out).
    pub fn new(cfg: &BlipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            vision_model: BlipVisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?,
            text_decoder: BertLMHeadModel::new(&cfg.text(), vb.pp("text_decoder"))?,
            config: cfg.clone(),
        })
    }

    /// Loads a checkpoint directory in f32 (see [`Self::load_with_dtype`]).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with_dtype(files, DType::F32, device)
    }

    /// Loads strictly: a missing, mis-shaped or unused tensor is an error naming it.
    pub fn load_with_dtype(files: &ModelFiles, dtype: DType, device: &Device) -> Result<Self> {
        let (cfg, weights, vb) = super::open(files, dtype, device)?;
        let model = Self::new(&cfg, vb)?;
        weights.finish()?;
        Ok(model)
    }

    pub fn config(&self) -> &BlipConfig {
        &self.config
    }

    /// Image features the decoder attends to.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, 1 + patches, vision_hidden]`
    pub fn vision(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.vision_model.forward(pixel_values, false)?)
    }

    /// The reference's `forward` logits: the decoder over `input_ids` exactly as given
    /// (no bos replacement there), causal plus `attention_mask` padding, every image
    /// token visible.
    ///
    /// # Shapes
    /// * `image_embeds`: `[batch, n, vision_hidden]`; `input_ids`: `[batch, t]` u32;
    ///   `attention_mask`: `[batch, t]` 0/1
    /// * returns `[batch, t, vocab]`
    pub fn decoder_logits(
        &self,
        image_embeds: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_embeds(image_embeds, input_ids, attention_mask, false)
    }

    /// [`Self::decoder_logits`] with the `train` switch (differentiable kernels,
    /// dropout where the config has any).
    pub fn forward_embeds(
        &self,
        image_embeds: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let image = image_encoder(image_embeds);
        Ok(self
            .text_decoder
            .forward(input_ids, attention_mask, Some(image), train)?) // [b, t, V]
    }

    /// Pixels to logits in one pass (training).
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]`, `input_ids`: `[batch, t]` -> `[batch, t, vocab]`
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let image = self.vision_model.forward(pixel_values, train)?; // [b, n, dv]
        self.forward_embeds(&image, input_ids, attention_mask, train)
    }

    /// A decoding cache for these images: every layer's cross-attention keys/values are
    /// computed here, once. Beam search may expand it with [`Decoder::select_rows`].
    ///
    /// # Shapes
    /// * `image_embeds`: `[batch, n, vision_hidden]`
    pub fn new_cache(&self, image_embeds: &Tensor) -> Result<BertCache> {
        Ok(self
            .text_decoder
            .new_cache(Some(image_encoder(image_embeds)))?)
    }

    /// The ids the reference's `generate` starts from: `[bos]` without a prompt; with
    /// one, the processor's ids (`[CLS] ... [SEP]`) with the first replaced by bos and
    /// the last (the `[SEP]`) dropped.
    pub fn caption_prompt(&self, processor_ids: Option<&[u32]>) -> Vec<u32> {
        let bos = self.config.text_config.bos_token_id;
        match processor_ids {
            Some(ids) if ids.len() >= 2 => {
                let mut p = ids[..ids.len() - 1].to_vec();
                p[0] = bos;
                p
            }
            _ => vec![bos],
        }
    }

    /// `gen` with the reference's end and padding: eos = `sep_token_id`, pad = `pad_token_id`.
    pub fn generation_config(&self, gen: &GenerationConfig) -> GenerationConfig {
        let text = &self.config.text_config;
        GenerationConfig {
            eos_token_ids: vec![text.sep_token_id],
            pad_token_id: text.pad_token_id,
            ..gen.clone()
        }
    }

    /// Captions for a batch of images, each continuing the same `processor_ids` prompt
    /// (see [`Self::caption_prompt`]); returns the generated ids after the prompt.
    /// `gen`'s end and pad tokens are used as given (see [`Self::generation_config`]).
    pub fn generate(
        &self,
        pixel_values: &Tensor,
        processor_ids: Option<&[u32]>,
        gen: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_with(pixel_values, processor_ids, gen, None)
    }

    /// [`Self::generate`], streaming each step to `on_step` when given.
    pub fn generate_with(
        &self,
        pixel_values: &Tensor,
        processor_ids: Option<&[u32]>,
        gen: &GenerationConfig,
        on_step: Option<crate::capability::OnStep<'_>>,
    ) -> Result<Vec<Vec<u32>>> {
        let image = self.vision(pixel_values)?; // [b, n, dv]
        let b = image.dim(0)?;
        let prompt = self.caption_prompt(processor_ids);
        let max = self.config.text_config.max_position_embeddings;
        let gen = &crate::positions::fit_positions("blip", gen, prompt.len(), max)?;
        let prompt = Tensor::new(prompt, image.device())?
            .unsqueeze(0)?
            .repeat((b, 1))?; // [b, t]
        let mut cache = self.new_cache(&image)?;
        super::run_generate(self, &mut cache, &prompt, gen, on_step)
    }
}

fn image_encoder(image_embeds: &Tensor) -> EncoderStates<'_> {
    // The reference's image mask is all ones: every image token is attended.
    EncoderStates {
        hidden_states: image_embeds,
        attention_mask: None,
    }
}

impl Decoder for BlipForConditionalGeneration {
    type Cache = BertCache;

    fn step(&self, input_ids: &Tensor, cache: &mut BertCache) -> candle_core::Result<Tensor> {
        self.text_decoder.step(input_ids, cache)
    }

    fn select_rows(&self, cache: &mut BertCache, rows: &Tensor) -> candle_core::Result<()> {
        cache.select_rows(rows)
    }

    fn join(&self, cache: &mut BertCache, other: BertCache) -> candle_core::Result<()> {
        cache.join(other)
    }
}

/// Captions of images that join a running batch (see
/// [`crate::capability::Caption::caption_joining`]); each caption equals the one the
/// image gets alone.
pub(super) fn caption_joining(
    model: &BlipForConditionalGeneration,
    tokenizer: &TextTokenizer,
    prompt: Option<&str>,
    gen: &GenerationConfig,
    rows: &mut dyn CaptionRows,
) -> Result<()> {
    let prompt_ids = prompt.map(|p| tokenizer.encode(p, true)).transpose()?;
    let start = model.caption_prompt(prompt_ids.as_deref());
    let max = model.config.text_config.max_position_embeddings;
    let gen = crate::positions::fit_positions("blip", gen, start.len(), max)?;
    let mut joining = Joiner {
        model,
        tokenizer,
        start: &start,
        rows,
    };
    let Some(first) = glimpse_generate::Rows::admit(&mut joining, 0) else {
        return Ok(());
    };
    glimpse_generate::generate_joining(model, first, &gen, &mut joining)?;
    Ok(())
}

/// Adapts the caller's rows to `glimpse_generate`'s: images become caches, ids become
/// captions.
struct Joiner<'a> {
    model: &'a BlipForConditionalGeneration,
    tokenizer: &'a TextTokenizer,
    start: &'a [u32],
    rows: &'a mut dyn CaptionRows,
}

impl Joiner<'_> {
    fn prepare(&self, pixels: &Tensor) -> Result<(BertCache, Tensor)> {
        let image = self.model.vision(pixels)?; // [n, patches, dv]
        let n = image.dim(0)?;
        let cache = self.model.new_cache(&image)?;
        let prompt = Tensor::new(self.start, image.device())?
            .unsqueeze(0)?
            .repeat((n, 1))?; // [n, t]
        Ok((cache, prompt))
    }
}

impl glimpse_generate::Rows<BertCache> for Joiner<'_> {
    fn admit(&mut self, running: usize) -> Option<glimpse_generate::Joining<BertCache>> {
        let (pixels, tags) = self.rows.admit(running)?;
        match self.prepare(&pixels) {
            Ok((cache, prompt_ids)) => Some(glimpse_generate::Joining {
                cache,
                prompt_ids,
                tags,
            }),
            Err(e) => {
                // These images fail alone; the running rows go on.
                let msg = e.to_string();
                for tag in tags {
                    self.rows.finished(
                        tag,
                        Err(crate::Error::Model {
                            model: "blip caption".into(),
                            msg: msg.clone(),
                        }),
                    );
                }
                None
            }
        }
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        self.rows.token(tag, token)
    }

    fn finished(&mut self, tag: u64, token_ids: Vec<u32>) {
        let full: Vec<u32> = self.start.iter().chain(&token_ids).copied().collect();
        let caption = self
            .tokenizer
            .decode(&full, true)
            .map(|text| Generated { text, token_ids })
            .map_err(Into::into);
        self.rows.finished(tag, caption);
    }
}
