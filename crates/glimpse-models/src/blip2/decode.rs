//! Generation for [`Blip2ForConditionalGeneration`]: the processor's prompt ids, the
//! decoding cache, and the [`Decoder`] impl that lets `glimpse_generate` run greedy,
//! beam and sampled decoding.
//!
//! The visual prompt is not a token, so the cache carries what the first step needs:
//!
//! * OPT: the input embeddings (queries scattered into the prompt) wait in the cache;
//!   the first `step` receives the prompt ids and consumes those embeddings instead,
//!   later steps embed their token ids as usual. This mirrors the reference, which
//!   passes both `inputs_embeds` and `input_ids` to OPT's `generate` (so the prompt
//!   ids, placeholders included, are what repetition penalties see).
//! * T5: the encoder runs once when the cache is built; decoding starts from
//!   `decoder_start_token_id` and returns decoder ids.

use candle_core::{DType, Tensor};
use glimpse_data::TextTokenizer;
use glimpse_generate::{Decoder, GenerationConfig};
use glimpse_nn::opt::DecoderCache;
use glimpse_nn::t5::T5Cache;

use super::config::Blip2TextConfig;
use super::generation::{input_error, Blip2ForConditionalGeneration, LanguageModel};
use crate::Result;

/// The reference's zero-shot VQA prompt for a question.
pub fn vqa_prompt(question: &str) -> String {
    format!("Question: {question} Answer:")
}

/// Decoding state of one generation.
#[derive(Debug, Clone)]
pub enum Blip2Cache {
    Opt {
        lm: DecoderCache,
        /// Input embeddings `[batch, t, d]` (and their mask) for the first step.
        pending: Option<Pending>,
    },
    T5(T5Cache),
}

/// The OPT prompt's embeddings until the first step runs them.
#[derive(Debug, Clone)]
pub struct Pending {
    /// `[batch, t, d]`
    pub embeds: Tensor,
    /// `[batch, t]` 0/1
    pub mask: Option<Tensor>,
    /// Length of the prompt ids the first step must receive.
    pub ids_len: usize,
}

impl Blip2ForConditionalGeneration {
    /// The processor's ids for tokenized prompt text (the tokenizer's ids with its
    /// special tokens): `num_query_tokens` placeholders, then the text. Ids that already
    /// start with the placeholders, and configs without `image_token_index`, are
    /// returned unchanged.
    pub fn processor_ids(&self, text_ids: &[u32]) -> Vec<u32> {
        let q = self.config.num_query_tokens;
        match self.config.image_token_index {
            Some(img) if !(text_ids.len() >= q && text_ids[..q].iter().all(|&i| i == img)) => {
                let mut ids = vec![img; q];
                ids.extend_from_slice(text_ids);
                ids
            }
            _ => text_ids.to_vec(),
        }
    }

    /// What the reference's `generate` starts from without a prompt: the placeholders
    /// and `text_config.bos_token_id`.
    pub fn start_ids(&self) -> Result<Vec<u32>> {
        let bos = self.config.text_config.bos_token_id().ok_or_else(|| {
            input_error("text_config.bos_token_id is not set: a prompt is required".into())
        })?;
        Ok(self.processor_ids(&[bos]))
    }

    /// Processor ids for a prompt (`None`: captioning without one), tokenized with the
    /// checkpoint's tokenizer (OPT's puts bos first, T5's appends eos).
    pub fn prompt_ids(&self, tokenizer: &TextTokenizer, prompt: Option<&str>) -> Result<Vec<u32>> {
        match prompt {
            Some(text) => Ok(self.processor_ids(&tokenizer.encode(text, true)?)),
            None => self.start_ids(),
        }
    }

    /// `gen` with the language model's end and padding tokens.
    pub fn generation_config(&self, gen: &GenerationConfig) -> GenerationConfig {
        let text = &self.config.text_config;
        GenerationConfig {
            eos_token_ids: text.eos_token_ids(),
            pad_token_id: text.pad_token_id().unwrap_or(gen.pad_token_id),
            ..gen.clone()
        }
    }

    /// A cache for generating from these images and prompt ids (processor ids, one row
    /// per image): the visual prompt is computed here; T5 also encodes here.
    ///
    /// # Shapes
    /// * `pixel_values`: `[batch, 3, size, size]`; `input_ids`, `attention_mask`: `[batch, t]`
    pub fn new_cache(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Blip2Cache> {
        let prompt = self.image_prompt(pixel_values)?; // [b, Q, d]
        self.cache_for_prompt(&prompt, input_ids, attention_mask)
    }

    /// [`Self::new_cache`] from the visual prompts `[batch, Q, d]` of
    /// [`Self::image_prompt`].
    pub fn cache_for_prompt(
        &self,
        prompt: &Tensor,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Blip2Cache> {
        let (embeds, mask) = self.inputs_embeds(prompt, input_ids, attention_mask)?;
        Ok(match &self.language_model {
            LanguageModel::Opt(lm) => Blip2Cache::Opt {
                lm: lm.new_cache(),
                pending: Some(Pending {
                    embeds,
                    mask,
                    ids_len: input_ids.dim(1)?,
                }),
            },
            LanguageModel::T5(lm) => {
                let enc = lm.encode(&embeds, mask.as_ref(), false)?; // [b, s, d]
                Blip2Cache::T5(lm.new_cache(&enc, mask.as_ref())?)
            }
        })
    }

    /// The ids `glimpse_generate::generate` starts from: the processor ids for OPT,
    /// `decoder_start_token_id` for T5.
    fn decoder_prompt(&self, processor_ids: &Tensor) -> Result<Tensor> {
        match &self.config.text_config {
            Blip2TextConfig::Opt(_) => Ok(processor_ids.clone()),
            Blip2TextConfig::T5(c) => {
                let b = processor_ids.dim(0)?;
                let start = Tensor::new(&[c.decoder_start_token_id()], processor_ids.device())?;
                Ok(start.unsqueeze(0)?.repeat((b, 1))?) // [b, 1]
            }
        }
    }

    /// Generates for a batch of images, each with the same prompt. `prompt_ids` are
    /// the tokenizer's ids of the prompt (or processor ids, see [`Self::processor_ids`]);
    /// `None` captions without a prompt. Returns the new ids only (for T5 without the
    /// decoder start token). `gen`'s end and pad tokens are used as given (see
    /// [`Self::generation_config`]).
    pub fn generate(
        &self,
        pixel_values: &Tensor,
        prompt_ids: Option<&[u32]>,
        gen: &GenerationConfig,
    ) -> Result<Vec<Vec<u32>>> {
        self.generate_with(pixel_values, prompt_ids, gen, None)
    }

    /// [`Self::generate`], streaming each step to `on_step` when given.
    pub fn generate_with(
        &self,
        pixel_values: &Tensor,
        prompt_ids: Option<&[u32]>,
        gen: &GenerationConfig,
        on_step: Option<crate::capability::OnStep<'_>>,
    ) -> Result<Vec<Vec<u32>>> {
        let ids = match prompt_ids {
            Some(p) => self.processor_ids(p),
            None => self.start_ids()?,
        };
        let gen = self.fit_positions(ids.len(), gen)?;
        let gen = &gen;
        let b = pixel_values.dim(0)?;
        let ids = Tensor::new(ids, pixel_values.device())?
            .unsqueeze(0)?
            .repeat((b, 1))?; // [b, t]
        let mut cache = self.new_cache(pixel_values, &ids, None)?;
        let prompt = self.decoder_prompt(&ids)?;
        super::run_generate(self, &mut cache, &prompt, gen, on_step)
    }
}

impl Blip2ForConditionalGeneration {
    /// `gen` within OPT's learned positions (see [`crate::positions`]); the prompt's
    /// positions are the processor ids, plus the queries where they are prepended.
    /// T5's relative positions have no limit.
    pub(super) fn fit_positions(
        &self,
        processor_ids: usize,
        gen: &GenerationConfig,
    ) -> Result<GenerationConfig> {
        let Blip2TextConfig::Opt(c) = &self.config.text_config else {
            return Ok(gen.clone());
        };
        let prompt = match self.config.image_token_index {
            Some(_) => processor_ids,
            None => processor_ids + self.config.num_query_tokens,
        };
        crate::positions::fit_positions("blip-2", gen, prompt, c.max_position_embeddings)
    }
}

/// `[batch, t, vocab]` -> the last position's logits `[batch, vocab]` in f32.
fn last_logits(logits: &Tensor) -> candle_core::Result<Tensor> {
    let t = logits.dim(1)?;
    logits.narrow(1, t - 1, 1)?.squeeze(1)?.to_dtype(DType::F32)
}

impl Decoder for Blip2ForConditionalGeneration {
    type Cache = Blip2Cache;

    fn step(&self, input_ids: &Tensor, cache: &mut Blip2Cache) -> candle_core::Result<Tensor> {
        match (&self.language_model, cache) {
            (LanguageModel::Opt(lm), Blip2Cache::Opt { lm: c, pending }) => {
                // Only the last position's logits are used, so the vocabulary head runs
                // on that position alone (on the benchmark's 40-position prompt, the head
                // on every position is about 6% of the prefill's FLOPs).
                let hidden = match pending.take() {
                    Some(p) => {
                        let (b, t) = input_ids.dims2()?;
                        if (b, t) != (p.embeds.dim(0)?, p.ids_len) {
                            candle_core::bail!(
                                "the first step must receive the prompt ids the cache was built \
                                 with ([{}, {}]), got [{b}, {t}]",
                                p.embeds.dim(0)?,
                                p.ids_len
                            );
                        }
                        lm.forward_hidden(&p.embeds, p.mask.as_ref(), c, false)?
                        // [b, t, w]
                    }
                    None => lm.forward_hidden(&lm.embed_tokens(input_ids)?, None, c, false)?,
                };
                let t = hidden.dim(1)?;
                last_logits(&lm.logits(&hidden.narrow(1, t - 1, 1)?)?) // [b, V]
            }
            (LanguageModel::T5(lm), Blip2Cache::T5(c)) => {
                last_logits(&lm.decode(input_ids, c, false)?) // [b, V]
            }
            _ => candle_core::bail!("this cache was built for another language model"),
        }
    }

    fn select_rows(&self, cache: &mut Blip2Cache, rows: &Tensor) -> candle_core::Result<()> {
        match cache {
            Blip2Cache::Opt { lm, pending } => {
                lm.select_rows(rows)?;
                if let Some(p) = pending {
                    p.embeds = p.embeds.index_select(rows, 0)?;
                    if let Some(m) = &p.mask {
                        p.mask = Some(m.index_select(rows, 0)?);
                    }
                }
                Ok(())
            }
            Blip2Cache::T5(c) => c.select_rows(rows),
        }
    }

    /// OPT rows join once their prompt's step has run; T5 rows do not join.
    fn join(&self, cache: &mut Blip2Cache, other: Blip2Cache) -> candle_core::Result<()> {
        match (cache, other) {
            (
                Blip2Cache::Opt {
                    lm: mine,
                    pending: None,
                },
                Blip2Cache::Opt {
                    lm: theirs,
                    pending: None,
                },
            ) => mine.join(theirs),
            (Blip2Cache::Opt { .. }, Blip2Cache::Opt { .. }) => {
                candle_core::bail!(
                    "rows join after their prompt's step (prompt embeddings still pending)"
                )
            }
            _ => candle_core::bail!("only BLIP-2 with OPT adds rows to a running batch"),
        }
    }
}
