//! BLIP-2 (<https://arxiv.org/abs/2301.12597>) as in `transformers/models/blip_2/`
//! (`modeling_blip_2.py`, `processing_blip_2.py`, transformers 5.24):
//!
//! * [`Blip2ForConditionalGeneration`]: captioning, prompted generation and zero-shot
//!   VQA; a frozen ViT, the Q-Former's learned queries cross-attending to it, and a
//!   projection that turns the queries into a soft prompt for OPT or Flan-T5;
//! * [`Blip2ForImageTextRetrieval`]: the Q-Former's ITC embeddings and ITM head.
//!
//! The vision tower is [`glimpse_nn::vit`] (BLIP layout, either bias layout of the
//! fused `qkv`); the Q-Former reuses [`glimpse_nn::bert`]'s attention blocks; the
//! language models are [`glimpse_nn::opt`] and [`glimpse_nn::t5`]. Generation goes
//! through [`glimpse_generate`] with a [`Blip2Cache`] that carries the visual prompt
//! into the first step.
//!
//! Precision: the reference keeps the Q-Former and the queries in f32 whatever the
//! model's dtype; `load_with_dtype` does the same. `Blip2ForConditionalGeneration::load`
//! computes in f32 on the CPU and in the stored dtype elsewhere.
//!
//! In the pipeline the generation model captions, answers and quantises its language
//! model; the retrieval model scores image-text pairs (ITC and ITM).

mod config;
mod decode;
mod generation;
mod qformer;
mod retrieval;
mod vision;

pub use config::{Blip2Config, Blip2QFormerConfig, Blip2TextConfig, Blip2VisionConfig, ImageSize};
pub use decode::{vqa_prompt, Blip2Cache, Pending};
pub use generation::{Blip2ForConditionalGeneration, LanguageModel};
pub use qformer::{Blip2QFormerLayer, Blip2QFormerModel, Blip2TextEmbeddings};
pub use retrieval::{itc_scores, Blip2ForImageTextRetrieval};
pub use vision::Blip2VisionModel;

use candle_core::{DType, Tensor};
use glimpse_data::{TextBatch, TextTokenizer};
use glimpse_generate::GenerationConfig;
use glimpse_nn::quant::{Quant, QuantReport};

use crate::capability::{
    decode_all, Answer, Capability, Caption, Generated, Match, MatchScores, Model,
    QuantizeLanguageModel,
};
use crate::registry::{Architecture, Registration};
use crate::Result;

/// Runs the shared decoding loop (streaming when `on_step` is given); its errors
/// become model errors.
fn run_generate<M: glimpse_generate::Decoder>(
    model: &M,
    cache: &mut M::Cache,
    prompt: &candle_core::Tensor,
    gen: &glimpse_generate::GenerationConfig,
    on_step: Option<crate::capability::OnStep<'_>>,
) -> crate::Result<Vec<Vec<u32>>> {
    let out = match on_step {
        Some(f) => glimpse_generate::generate_stream(model, cache, prompt, gen, f),
        None => glimpse_generate::generate(model, cache, prompt, gen),
    };
    out.map_err(|e| match e {
        glimpse_generate::GenerateError::Candle(e) => crate::Error::Candle(e),
        other => crate::Error::Model {
            model: "blip-2 generate".into(),
            msg: other.to_string(),
        },
    })
}

pub(crate) const GENERATION_REGISTRATION: Registration = Registration {
    architecture: Architecture::Blip2Generation,
    capabilities: &[
        Capability::Caption,
        Capability::Answer,
        Capability::Quantize,
    ],
    load: |files, device| {
        Ok(Box::new(Blip2ForConditionalGeneration::load(
            files, device,
        )?))
    },
};

pub(crate) const RETRIEVAL_REGISTRATION: Registration = Registration {
    architecture: Architecture::Blip2Retrieval,
    capabilities: &[Capability::Match],
    load: |files, device| Ok(Box::new(Blip2ForImageTextRetrieval::load(files, device)?)),
};

impl Model for Blip2ForConditionalGeneration {
    fn as_linears(&mut self) -> Option<&mut dyn glimpse_nn::linears::Linears> {
        Some(self)
    }

    fn architecture(&self) -> Architecture {
        Architecture::Blip2Generation
    }

    fn generation_config(&self, gen: GenerationConfig) -> GenerationConfig {
        Blip2ForConditionalGeneration::generation_config(self, &gen)
    }

    fn as_caption(&self) -> Option<&dyn Caption> {
        Some(self)
    }

    fn as_answer(&self) -> Option<&dyn Answer> {
        Some(self)
    }

    fn as_quantize(&mut self) -> Option<&mut dyn QuantizeLanguageModel> {
        Some(self)
    }
}

impl Caption for Blip2ForConditionalGeneration {
    /// The prompt, when given, starts the text (the model continues it).
    fn caption(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        prompt: Option<&str>,
        gen: &GenerationConfig,
    ) -> Result<Vec<Generated>> {
        let prompt_ids = prompt.map(|p| tokenizer.encode(p, true)).transpose()?;
        let ids = self.generate(pixel_values, prompt_ids.as_deref(), gen)?;
        let prefix = prompt
            .map(|p| format!("{} ", p.trim_end()))
            .unwrap_or_default();
        Ok(decode_all(tokenizer, ids)?
            .into_iter()
            .map(|g| Generated {
                text: format!("{prefix}{}", g.text.trim_start()),
                ..g
            })
            .collect())
    }
}

impl Blip2ForConditionalGeneration {
    fn answer_with(
        &self,
        tokenizer: &TextTokenizer,
        pixel_values: &Tensor,
        question: &str,
        gen: &GenerationConfig,
        on_step: Option<crate::capability::OnStep<'_>>,
    ) -> Result<Generated> {
        let prompt = tokenizer.encode(&vqa_prompt(question.trim()), true)?;
        let ids = self.generate_with(pixel_values, Some(&prompt), gen, on_step)?;
        let mut answer = decode_all(tokenizer, ids)?.remove(0);
        answer.text = answer.text.trim().to_string();
        Ok(answer)
    }
}

impl Answer for Blip2ForConditionalGeneration {
    /// The zero-shot VQA prompt "Question: {} Answer:".
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

    /// With OPT only (T5's encoder-decoder cache does not join rows).
    fn answer_joining(
        &self,
        tokenizer: &TextTokenizer,
        gen: &GenerationConfig,
        rows: &mut dyn crate::capability::ChatRows,
    ) -> Option<Result<()>> {
        if !matches!(self.language_model, LanguageModel::Opt(_)) {
            return None;
        }
        let answers = Answers {
            model: self,
            tokenizer,
        };
        Some(crate::replies::reply_joining(&answers, gen, rows))
    }
}

/// BLIP-2's answers in a joining batch, made as [`Answer::answer`] makes them alone.
struct Answers<'a> {
    model: &'a Blip2ForConditionalGeneration,
    tokenizer: &'a TextTokenizer,
}

impl crate::replies::Replies for Answers<'_> {
    type Decoder = Blip2ForConditionalGeneration;

    fn decoder(&self) -> &Blip2ForConditionalGeneration {
        self.model
    }

    fn name(&self) -> &'static str {
        "blip-2 answer"
    }

    fn prompt(&self, request: &crate::capability::ChatRequest) -> Result<(String, Vec<u32>)> {
        let question = request.user.trim();
        if question.is_empty() {
            return Err(generation::input_error("empty question".into()));
        }
        let prompt = vqa_prompt(question);
        let ids = self
            .model
            .processor_ids(&self.tokenizer.encode(&prompt, true)?);
        Ok((prompt, ids))
    }

    fn images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.model.image_prompt(pixel_values) // [n, Q, d]
    }

    fn cache(&self, images: &Tensor, ids: &Tensor) -> Result<Blip2Cache> {
        self.model.cache_for_prompt(images, ids, None)
    }

    fn limit(&self, len: usize, gen: &GenerationConfig) -> Result<usize> {
        Ok(self.model.fit_positions(len, gen)?.max_new_tokens)
    }

    fn text(&self, ids: &[u32], _gen: &GenerationConfig) -> Result<String> {
        Ok(self.tokenizer.decode(ids, true)?.trim().to_string())
    }
}

impl QuantizeLanguageModel for Blip2ForConditionalGeneration {
    fn quantize_language_model(&mut self, quant: Quant) -> Result<QuantReport> {
        Blip2ForConditionalGeneration::quantize_language_model(self, quant)
    }
}

impl Model for Blip2ForImageTextRetrieval {
    fn as_linears(&mut self) -> Option<&mut dyn glimpse_nn::linears::Linears> {
        Some(self)
    }

    fn architecture(&self) -> Architecture {
        Architecture::Blip2Retrieval
    }

    fn max_text_len(&self) -> Option<usize> {
        Some(self.config().qformer_config.max_position_embeddings)
    }

    fn as_match(&self) -> Option<&dyn Match> {
        Some(self)
    }
}

impl Match for Blip2ForImageTextRetrieval {
    /// ITC is the best of the query embeddings, as the reference scores it.
    fn match_scores(&self, pixel_values: &Tensor, texts: &TextBatch) -> Result<MatchScores> {
        let mask = Some(&texts.attention_mask);
        let itc = self.itc(pixel_values, &texts.input_ids, mask)?.squeeze(0)?; // [n]
        let itm = self.itm_probs(pixel_values, &texts.input_ids, mask)?; // [n]
        Ok(MatchScores {
            itc: itc.to_dtype(DType::F32)?.to_vec1()?,
            itm: Some(itm.to_vec1()?),
        })
    }
}
