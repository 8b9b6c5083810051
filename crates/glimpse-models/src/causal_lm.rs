//! Text-only causal language models: an `OPTForCausalLM` or `LlamaForCausalLM`
//! directory (chosen by `config.json`'s `model_type`, else its `architectures`),
//! loaded strictly onto `glimpse-nn`'s decoders with its tokenizer and generation
//! config. It scores ids ([`CausalLm::logits`]) and continues them with any
//! strategy of `glimpse-generate` ([`CausalLm::generate`]); the models that
//! `glimpse-train`'s `lm` recipe exports load here.
//!
//! Files: `config.json`, `model.safetensors` (or shards), `tokenizer.json`,
//! optionally `generation_config.json`.

use candle_core::{DType, Device, Tensor};
use glimpse_data::TextTokenizer;
use glimpse_generate::{Decoder, GenerationConfig};
use glimpse_nn::decoder::{DecoderCache, TokenIds};
use glimpse_nn::llama::{LlamaConfig, LlamaForCausalLM};
use glimpse_nn::opt::{OptConfig, OptForCausalLM};
use serde::Deserialize;

use crate::checkpoint::{ModelFiles, Weights};
use crate::{Error, Result};

/// The decoder of a causal-LM directory.
#[derive(Debug, Clone)]
pub enum CausalDecoder {
    Opt(OptForCausalLM),
    Llama(LlamaForCausalLM),
}

impl CausalDecoder {
    fn new_cache(&self) -> DecoderCache {
        match self {
            Self::Opt(m) => m.new_cache(),
            Self::Llama(m) => m.new_cache(),
        }
    }

    /// `[b, t]` ids over `cache` -> `[b, t, vocab]`.
    fn forward(&self, ids: &Tensor, cache: &mut DecoderCache) -> candle_core::Result<Tensor> {
        match self {
            Self::Opt(m) => m.forward(ids, None, cache, false),
            Self::Llama(m) => m.forward(ids, None, cache, false),
        }
    }
}

impl Decoder for CausalDecoder {
    type Cache = DecoderCache;

    fn step(&self, input_ids: &Tensor, cache: &mut DecoderCache) -> candle_core::Result<Tensor> {
        let logits = self.forward(input_ids, cache)?; // [b, t, vocab]
        let t = logits.dim(1)?;
        logits.narrow(1, t - 1, 1)?.squeeze(1)?.to_dtype(DType::F32) // [b, vocab]
    }

    fn select_rows(&self, cache: &mut DecoderCache, rows: &Tensor) -> candle_core::Result<()> {
        cache.select_rows(rows)
    }

    /// Rows of prompts prefilled on their own join left-padded and masked, keeping
    /// their positions ([`DecoderCache::join`]).
    fn join(&self, cache: &mut DecoderCache, other: DecoderCache) -> candle_core::Result<()> {
        cache.join(other)
    }
}

/// Prompts that join a running batch of [`CausalLm::generate_joining`], and where
/// their tokens go. Each prompt is named by a tag.
pub trait PromptRows {
    /// With the number of rows decoding now: a prompt (`bos` and its tokens) that
    /// joins, or `None`. Asked again after every prompt it returns.
    fn admit(&mut self, running: usize) -> Option<(u64, Vec<u32>)>;
    /// Row `tag`'s own seed, if any (its draws are then those it has alone).
    fn seed(&self, tag: u64) -> Option<u64>;
    /// Row `tag`'s own limit on new tokens, if any.
    fn max_new_tokens(&self, tag: u64) -> Option<usize>;
    /// Row `tag` chose `token`; `false` ends it now.
    fn token(&mut self, tag: u64, token: u32) -> bool;
    /// Row `tag` ended with these ids (the end token included when produced).
    fn finished(&mut self, tag: u64, ids: Vec<u32>);
}

/// Adapts [`PromptRows`] to the decoder's rows: each prompt gets a fresh cache.
struct Joiner<'a> {
    lm: &'a CausalLm,
    rows: &'a mut dyn PromptRows,
    /// A prompt that could not become a tensor: its row is told and skipped.
    failed: Vec<(u64, String)>,
}

impl Joiner<'_> {
    fn joining(
        &self,
        tag: u64,
        ids: &[u32],
    ) -> candle_core::Result<glimpse_generate::Joining<DecoderCache>> {
        if ids.is_empty() {
            candle_core::bail!("an empty prompt");
        }
        Ok(glimpse_generate::Joining {
            cache: self.lm.decoder.new_cache(),
            prompt_ids: Tensor::new(ids, &self.lm.device)?.unsqueeze(0)?,
            tags: vec![tag],
        })
    }
}

impl glimpse_generate::Rows<DecoderCache> for Joiner<'_> {
    fn admit(&mut self, running: usize) -> Option<glimpse_generate::Joining<DecoderCache>> {
        loop {
            let (tag, ids) = self.rows.admit(running)?;
            match self.joining(tag, &ids) {
                Ok(j) => return Some(j),
                Err(e) => self.failed.push((tag, e.to_string())),
            }
        }
    }
    fn seed(&self, tag: u64) -> Option<u64> {
        self.rows.seed(tag)
    }
    fn max_new_tokens(&self, tag: u64) -> Option<usize> {
        self.rows.max_new_tokens(tag)
    }
    fn token(&mut self, tag: u64, token: u32) -> bool {
        self.rows.token(tag, token)
    }
    fn finished(&mut self, tag: u64, ids: Vec<u32>) {
        self.rows.finished(tag, ids)
    }
}

/// The fields of `config.json` / `generation_config.json` that decoding needs.
#[derive(Debug, Default, Deserialize)]
struct Ids {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<u32>,
    max_length: Option<usize>,
}

/// A causal language model with its tokenizer.
pub struct CausalLm {
    pub decoder: CausalDecoder,
    pub tokenizer: TextTokenizer,
    /// `OPTForCausalLM` or `LlamaForCausalLM`.
    pub class: &'static str,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    /// `generation_config.json`'s `max_length` (prompt included), if any.
    pub max_length: Option<usize>,
    device: Device,
}

impl CausalLm {
    /// Loads `files` in f32, strictly: a missing or unused tensor is an error naming it.
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        let ids: Ids = files.read_config()?;
        let kind = match (ids.model_type.as_deref(), ids.architectures.as_deref()) {
            (Some(m), _) => m.to_string(),
            (None, Some([a, ..])) if a == "OPTForCausalLM" => "opt".into(),
            (None, Some([a, ..])) if a == "LlamaForCausalLM" => "llama".into(),
            _ => String::new(),
        };
        let weights = Weights::open(files)?;
        let vb = weights.var_builder(DType::F32, device);
        let (decoder, class) = match kind.as_str() {
            "opt" => {
                let cfg: OptConfig = files.read_config()?;
                let m = OptForCausalLM::new(&cfg, vb.clone())?;
                if cfg.tie_word_embeddings && weights.contains("lm_head.weight") {
                    // A stored copy of a tied head is read and ignored.
                    vb.get(
                        (cfg.vocab_size, cfg.word_embed_proj_dim()),
                        "lm_head.weight",
                    )?;
                }
                (CausalDecoder::Opt(m), "OPTForCausalLM")
            }
            "llama" => {
                let cfg: LlamaConfig = files.read_config()?;
                let m = LlamaForCausalLM::new(&cfg, vb.clone())?;
                if cfg.tie_word_embeddings && weights.contains("lm_head.weight") {
                    vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?;
                }
                (CausalDecoder::Llama(m), "LlamaForCausalLM")
            }
            other => {
                return Err(Error::Config {
                    path: files.config.clone(),
                    msg: format!(
                        "not a causal language model Glimpse runs (model_type {other:?}; \
                         expected opt or llama)"
                    ),
                })
            }
        };
        weights.finish()?;
        let tok_path = files.tokenizer.clone().ok_or_else(|| Error::Model {
            model: files.dir.display().to_string(),
            msg: "no tokenizer.json".into(),
        })?;
        let tokenizer = TextTokenizer::from_file(&tok_path)?;
        let gen_path = files.dir.join("generation_config.json");
        let gen: Ids = match std::fs::read_to_string(&gen_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Config {
                path: gen_path.clone(),
                msg: e.to_string(),
            })?,
            Err(_) => Ids::default(),
        };
        let eos = gen.eos_token_id.or(ids.eos_token_id);
        Ok(Self {
            decoder,
            tokenizer,
            class,
            bos_token_id: gen.bos_token_id.or(ids.bos_token_id),
            eos_token_ids: eos.map(|e| e.to_vec()).unwrap_or_default(),
            pad_token_id: gen.pad_token_id.or(ids.pad_token_id).unwrap_or(0),
            max_length: gen.max_length,
            device: device.clone(),
        })
    }

    /// `bos` then the text's tokens (no end token): a prompt to continue.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos_token_id.into_iter().collect();
        ids.extend(self.tokenizer.encode(text, false)?);
        Ok(ids)
    }

    /// Logits of every position of `ids`.
    ///
    /// # Shapes
    /// * returns `[ids.len(), vocab]` f32
    pub fn logits(&self, ids: &[u32]) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::Model {
                model: self.class.into(),
                msg: "no token to score".into(),
            });
        }
        let t = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // [1, t]
        let logits = self.decoder.forward(&t, &mut self.decoder.new_cache())?; // [1, t, v]
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// A fresh key/value cache for [`CausalLm::step`].
    pub fn new_cache(&self) -> DecoderCache {
        self.decoder.new_cache()
    }

    /// Feeds `ids` after what `cache` holds; the logits of the last position. For
    /// decoders that choose each token themselves (under a grammar, say).
    ///
    /// # Shapes
    /// * returns `[vocab]` f32
    pub fn step(&self, ids: &[u32], cache: &mut DecoderCache) -> Result<Tensor> {
        if ids.is_empty() {
            return Err(Error::Model {
                model: self.class.into(),
                msg: "no token to feed".into(),
            });
        }
        let t = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // [1, t]
        let logits = Decoder::step(&self.decoder, &t, cache)?; // [1, vocab]
        Ok(logits.squeeze(0)?)
    }

    /// Continues `first` and every prompt `rows` admits while the batch decodes, in
    /// one batch that rows join and leave (greedy search or sampling; each row gets
    /// the ids it gets alone from [`CausalLm::generate`] with its own seed and limit).
    /// A prompt that cannot run is an error for that row alone (returned with its
    /// tag); an error of the batch is returned as `Err`.
    pub fn generate_joining(
        &self,
        first: (u64, Vec<u32>),
        cfg: &GenerationConfig,
        rows: &mut dyn PromptRows,
    ) -> Result<Vec<(u64, String)>> {
        let mut cfg = cfg.clone();
        if cfg.eos_token_ids.is_empty() {
            cfg.eos_token_ids = self.eos_token_ids.clone();
        }
        cfg.pad_token_id = self.pad_token_id;
        let mut joiner = Joiner {
            lm: self,
            rows,
            failed: Vec::new(),
        };
        let start = joiner.joining(first.0, &first.1)?;
        glimpse_generate::generate_joining(&self.decoder, start, &cfg, &mut joiner)
            .map_err(Error::from)?;
        Ok(joiner.failed)
    }

    /// The continuation of `ids` (without the prompt, ending with eos when produced).
    /// `cfg`'s `eos_token_ids` and `pad_token_id` are the model's where left empty.
    pub fn generate(&self, ids: &[u32], cfg: &GenerationConfig) -> Result<Vec<u32>> {
        let mut cfg = cfg.clone();
        if cfg.eos_token_ids.is_empty() {
            cfg.eos_token_ids = self.eos_token_ids.clone();
        }
        cfg.pad_token_id = self.pad_token_id;
        let prompt = Tensor::new(ids, &self.device)?.unsqueeze(0)?; // [1, t]
        let mut cache = self.decoder.new_cache();
        let mut out = glimpse_generate::generate(&self.decoder, &mut cache, &prompt, &cfg)
            .map_err(Error::Generate)?;
        Ok(out.swap_remove(0))
    }
}
