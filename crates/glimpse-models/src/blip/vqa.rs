//! `BlipForQuestionAnswering`: the question is encoded with cross-attention to the
//! image, and the answer decoded with cross-attention to the encoded question.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_generate::{Decoder, GenerationConfig};
use glimpse_nn::bert::{BertCache, BertLMHeadModel, BertModel, EncoderStates, SelfMask};

use super::{config::BlipConfig, vision::BlipVisionModel};
use crate::checkpoint::ModelFiles;
use crate::Result;

/// `vision_model`, `text_encoder` (question, no pooler), `text_decoder` (answer).
///
/// The decoder's cross-attention reads text-width question states through projections
/// sized for `encoder_hidden_size` (= the vision width), so the reference only runs
/// with equal text and vision widths; other widths are an error here, not a panic.
#[derive(Debug, Clone)]
pub struct BlipForQuestionAnswering {
    pub vision_model: BlipVisionModel,
    pub text_encoder: BertModel,
    pub text_decoder: BertLMHeadModel,
    config: BlipConfig,
}

impl BlipForQuestionAnswering {
    pub fn new(cfg: &BlipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let text = cfg.text();
        Ok(Self {
            vision_model: BlipVisionModel::new(&cfg.vision_config, vb.pp("vision_model"))?,
            text_encoder: BertModel::new(&text, vb.pp("text_encoder"))?,
            text_decoder: BertLMHeadModel::new(&text, vb.pp("text_decoder"))?,
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

    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]` -> `[batch, 1 + patches, vision_hidden]`
    pub fn vision(&self, pixel_values: &Tensor) -> Result<Tensor> {
        Ok(self.vision_model.forward(pixel_values, false)?)
    }

    /// The question encoder: bidirectional over the question (with its padding mask),
    /// cross-attending to every image token.
    ///
    /// # Shapes
    /// * `image_states`: `[batch or 1, n, vision_hidden]`; ids, mask: `[batch, t]`
    /// * returns `[batch, t, text_hidden]`
    pub fn encode_question(
        &self,
        image_states: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, _) = input_ids.dims2()?;
        let image = super::states_per_text(image_states, b)?; // [b, n, dv]
        let encoder = EncoderStates {
            hidden_states: &image,
            attention_mask: None,
        };
        Ok(self.text_encoder.forward(
            input_ids,
            attention_mask,
            Some(encoder),
            SelfMask::Bidirectional,
            train,
        )?) // [b, t, dt]
    }

    /// The reference's `forward` answer logits: the decoder over `decoder_input_ids`
    /// (causal, `decoder_attention_mask` padding), cross-attending to the question
    /// states under `question_mask`.
    ///
    /// # Shapes
    /// * `question_states`: `[batch, tq, text_hidden]`, `question_mask`: `[batch, tq]`
    /// * `decoder_input_ids`, `decoder_attention_mask`: `[batch, t]`
    /// * returns `[batch, t, vocab]`
    pub fn answer_logits(
        &self,
        question_states: &Tensor,
        question_mask: Option<&Tensor>,
        decoder_input_ids: &Tensor,
        decoder_attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let encoder = EncoderStates {
            hidden_states: question_states,
            attention_mask: question_mask,
        };
        Ok(self.text_decoder.forward(
            decoder_input_ids,
            decoder_attention_mask,
            Some(encoder),
            train,
        )?) // [b, t, V]
    }

    /// A decoding cache over encoded questions (cross-attention keys/values computed
    /// here, once). The reference's `generate` attends to every question position,
    /// padding included: pass `None` for parity with it.
    pub fn new_cache(
        &self,
        question_states: &Tensor,
        question_mask: Option<&Tensor>,
    ) -> Result<BertCache> {
        Ok(self.text_decoder.new_cache(Some(EncoderStates {
            hidden_states: question_states,
            attention_mask: question_mask,
        }))?)
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

    /// Answers as the reference's `generate`: encode the question against the image,
    /// then decode from `[bos]`. Returns the generated ids after bos.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch or 1, 3, size, size]`; ids, mask: `[batch, t]`
    pub fn generate(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        gen: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_with(pixel_values, input_ids, attention_mask, gen, None)
    }

    /// [`Self::generate`], streaming each step to `on_step` when given.
    pub fn generate_with(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        gen: &GenerationConfig,
        on_step: Option<crate::capability::OnStep<'_>>,
    ) -> Result<Vec<Vec<u32>>> {
        let image = self.vision(pixel_values)?; // [bi, n, dv]
        let question = self.encode_question(&image, input_ids, Some(attention_mask), false)?; // [b, t, dt]
        let b = question.dim(0)?;
        let bos = self.config.text_config.bos_token_id;
        let max = self.config.text_config.max_position_embeddings;
        let gen = &crate::positions::fit_positions("blip", gen, 1, max)?;
        let prompt = Tensor::full(bos, (b, 1), question.device())?; // [b, 1]
        let mut cache = self.new_cache(&question, None)?;
        super::run_generate(self, &mut cache, &prompt, gen, on_step)
    }
}

impl Decoder for BlipForQuestionAnswering {
    type Cache = BertCache;

    fn step(&self, input_ids: &Tensor, cache: &mut BertCache) -> candle_core::Result<Tensor> {
        self.text_decoder.step(input_ids, cache)
    }

    fn select_rows(&self, cache: &mut BertCache, rows: &Tensor) -> candle_core::Result<()> {
        cache.select_rows(rows)
    }
}
