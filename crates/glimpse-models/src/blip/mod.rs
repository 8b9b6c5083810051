//! BLIP (<https://arxiv.org/abs/2201.12086>) as in `transformers/models/blip/`
//! (`modeling_blip.py`, `modeling_blip_text.py`, transformers 5.24):
//!
//! * [`BlipForConditionalGeneration`]: captioning (ViT + image-grounded text decoder);
//! * [`BlipForImageTextRetrieval`]: ITC embeddings and cosine, ITM match probability;
//! * [`BlipForQuestionAnswering`]: ViT, question encoder with cross-attention to the
//!   image, answer decoder with cross-attention to the question.
//!
//! The text side is [`glimpse_nn::bert`]; the decoders implement
//! [`glimpse_generate::Decoder`] with a [`BertCache`] whose cross-attention keys/values
//! are computed once per image (or question) when the cache is built.
//!
//! In the pipeline the three heads caption, embed and match, and answer.
//!
//! Where the reference's `forward` and `generate` differ we follow each where it is
//! used: `decoder_logits` is `forward` (ids as given, no bos replacement), the prompt
//! helpers and `generate` follow `generate`.

mod caption;
mod config;
mod retrieval;
mod vision;
mod vqa;

pub use caption::BlipForConditionalGeneration;
pub use config::{BlipConfig, BlipTextConfig, BlipVisionConfig, ImageSize, TokenIds};
pub use glimpse_nn::bert::BertCache;
pub use retrieval::BlipForImageTextRetrieval;
pub use vision::BlipVisionModel;
pub use vqa::BlipForQuestionAnswering;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_data::{TextBatch, TextTokenizer};
use glimpse_generate::GenerationConfig;

use crate::capability::{
    cosine, decode_all, Answer, Capability, Caption, Embed, Generated, Match, MatchScores, Model,
};
use crate::checkpoint::{ModelFiles, Weights};
use crate::registry::{Architecture, Registration};
use crate::Result;

/// Reads the config and opens the weights for a strict load in `dtype`.
fn open(
    files: &ModelFiles,
    dtype: DType,
    device: &Device,
) -> Result<(BlipConfig, Weights, VarBuilder<'static>)> {
    let cfg: BlipConfig = files.read_config()?;
    let weights = Weights::open(files)?;
    let vb = weights.var_builder(dtype, device);
    Ok((cfg, weights, vb))
}

/// Runs the shared decoding loop (streaming when `on_step` is given); its errors
/// become model errors.
fn run_generate<M: glimpse_generate::Decoder>(
    model: &M,
    cache: &mut M::Cache,
    prompt: &candle_core::Tensor,
    gen: &glimpse_generate::GenerationConfig,
    on_step: Option<crate::capability::OnStep<'_>>,
) -> Result<Vec<Vec<u32>>> {
    Ok(match on_step {
        Some(f) => glimpse_generate::generate_stream(model, cache, prompt, gen, f)?,
        None => glimpse_generate::generate(model, cache, prompt, gen)?,
    })
}

/// `[1 or batch, n, d]` image states for `batch` texts: one image is shared by every
/// text, otherwise there must be one per text.
fn states_per_text(
    states: &candle_core::Tensor,
    b: usize,
) -> candle_core::Result<candle_core::Tensor> {
    let (bi, n, d) = states.dims3()?;
    match bi {
        _ if bi == b => Ok(states.clone()),
        1 => states.expand((b, n, d))?.contiguous(), // [b, n, d]
        _ => candle_core::bail!("{bi} images for {b} texts: give one image, or one per text"),
    }
}

pub(crate) const CAPTION_REGISTRATION: Registration = Registration {
    architecture: Architecture::BlipCaption,
    capabilities: &[Capability::Caption],
    load: |files, device| Ok(Box::new(BlipForConditionalGeneration::load(files, device)?)),
};

pub(crate) const RETRIEVAL_REGISTRATION: Registration = Registration {
    architecture: Architecture::BlipRetrieval,
    capabilities: &[Capability::Embed, Capability::Match],
    load: |files, device| Ok(Box::new(BlipForImageTextRetrieval::load(files, device)?)),
};

pub(crate) const VQA_REGISTRATION: Registration = Registration {
    architecture: Architecture::BlipVqa,
    capabilities: &[Capability::Answer],
    load: |files, device| Ok(Box::new(BlipForQuestionAnswering::load(files, device)?)),
};

impl Model for BlipForConditionalGeneration {
    fn as_linears(&mut self) -> Option<&mut dyn glimpse_nn::linears::Linears> {
        Some(self)
    }

    fn architecture(&self) -> Architecture {
        Architecture::BlipCaption
    }

    fn max_text_len(&self) -> Option<usize> {
        Some(self.config().text_config.max_position_embeddings)
    }

    fn generation_config(&self, gen: GenerationConfig) -> GenerationConfig {
        BlipForConditionalGeneration::generation_config(self, &gen)
    }

    fn as_caption(&self) -> Option<&dyn Caption> {
        Some(self)
    }
}

impl BlipForConditionalGeneration {
    fn caption_with(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        prompt: Option<&str>,
        gen: &GenerationConfig,
        on_step: Option<crate::capability::OnStep<'_>>,
    ) -> Result<Vec<Generated>> {
        let prompt_ids = prompt.map(|p| tokenizer.encode(p, true)).transpose()?;
        let ids = self.generate_with(pixel_values, prompt_ids.as_deref(), gen, on_step)?;
        // A prompted caption reads as one sentence: decode the prompt with the
        // continuation (as the reference decodes the whole sequence), but report only
        // the generated ids.
        let start = self.caption_prompt(prompt_ids.as_deref());
        ids.into_iter()
            .map(|token_ids| {
                let full: Vec<u32> = start.iter().chain(&token_ids).copied().collect();
                let text = tokenizer.decode(&full, true)?;
                Ok(Generated { text, token_ids })
            })
            .collect()
    }
}

impl Caption for BlipForConditionalGeneration {
    fn caption(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        prompt: Option<&str>,
        gen: &GenerationConfig,
    ) -> Result<Vec<Generated>> {
        self.caption_with(tokenizer, pixel_values, prompt, gen, None)
    }

    fn caption_stream(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        prompt: Option<&str>,
        gen: &GenerationConfig,
        on_step: crate::capability::OnStep<'_>,
    ) -> Option<Result<Vec<Generated>>> {
        Some(self.caption_with(tokenizer, pixel_values, prompt, gen, Some(on_step)))
    }

    fn caption_joining(
        &self,
        tokenizer: &TextTokenizer,
        prompt: Option<&str>,
        gen: &GenerationConfig,
        rows: &mut dyn crate::capability::CaptionRows,
    ) -> Option<Result<()>> {
        Some(caption::caption_joining(self, tokenizer, prompt, gen, rows))
    }
}

impl Model for BlipForImageTextRetrieval {
    fn as_linears(&mut self) -> Option<&mut dyn glimpse_nn::linears::Linears> {
        Some(self)
    }

    fn architecture(&self) -> Architecture {
        Architecture::BlipRetrieval
    }

    fn max_text_len(&self) -> Option<usize> {
        Some(self.config().text_config.max_position_embeddings)
    }

    fn as_embed(&self) -> Option<&dyn Embed> {
        Some(self)
    }

    fn as_match(&self) -> Option<&dyn Match> {
        Some(self)
    }
}

impl Embed for BlipForImageTextRetrieval {
    fn image_embeds(&self, pixel_values: &Tensor) -> Result<Tensor> {
        BlipForImageTextRetrieval::image_embeds(self, pixel_values)
    }

    fn text_embeds(&self, texts: &TextBatch) -> Result<Tensor> {
        BlipForImageTextRetrieval::text_embeds(self, &texts.input_ids, &texts.attention_mask)
    }
}

impl Match for BlipForImageTextRetrieval {
    fn match_scores(&self, pixel_values: &Tensor, texts: &TextBatch) -> Result<MatchScores> {
        let (ids, mask) = (&texts.input_ids, &texts.attention_mask);
        let image_embeds = BlipForImageTextRetrieval::image_embeds(self, pixel_values)?; // [1, E]
        let text_embeds = BlipForImageTextRetrieval::text_embeds(self, ids, mask)?; // [n, E]
        let itc = cosine(&image_embeds, &text_embeds)?.squeeze(0)?.to_vec1()?;
        let itm = self.itm_probs(pixel_values, ids, mask)?;
        Ok(MatchScores {
            itc,
            itm: Some(itm.to_vec1()?),
        })
    }
}

impl Model for BlipForQuestionAnswering {
    fn as_linears(&mut self) -> Option<&mut dyn glimpse_nn::linears::Linears> {
        Some(self)
    }

    fn architecture(&self) -> Architecture {
        Architecture::BlipVqa
    }

    fn max_text_len(&self) -> Option<usize> {
        Some(self.config().text_config.max_position_embeddings)
    }

    fn generation_config(&self, gen: GenerationConfig) -> GenerationConfig {
        BlipForQuestionAnswering::generation_config(self, &gen)
    }

    fn as_answer(&self) -> Option<&dyn Answer> {
        Some(self)
    }
}

impl BlipForQuestionAnswering {
    fn answer_with(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        question: &str,
        gen: &GenerationConfig,
        on_step: Option<crate::capability::OnStep<'_>>,
    ) -> Result<Generated> {
        let max_len = Some(self.config().text_config.max_position_embeddings);
        let batch = tokenizer.encode_batch(&[question], true, max_len, pixel_values.device())?;
        let ids = self.generate_with(
            pixel_values,
            &batch.input_ids,
            &batch.attention_mask,
            gen,
            on_step,
        )?;
        let mut answer = decode_all(tokenizer, ids)?.remove(0);
        answer.text = answer.text.trim().to_string();
        Ok(answer)
    }
}

impl Answer for BlipForQuestionAnswering {
    fn answer(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        question: &str,
        gen: &GenerationConfig,
    ) -> Result<Generated> {
        self.answer_with(tokenizer, pixel_values, question, gen, None)
    }

    fn answer_stream(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        question: &str,
        gen: &GenerationConfig,
        on_step: crate::capability::OnStep<'_>,
    ) -> Option<Result<Generated>> {
        Some(self.answer_with(tokenizer, pixel_values, question, gen, Some(on_step)))
    }
}
