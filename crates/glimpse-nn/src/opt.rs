//! OPT (<https://arxiv.org/abs/2205.01068>), the decoder-only language model of BLIP-2,
//! ported from `transformers` `models/opt/modeling_opt.py` (v5.24).
//!
//! Differences from LLaMA worth knowing: learned positions with an offset of 2 (ids
//! 0 and 1 were reserved for padding in fairseq), computed from the attention mask so
//! left padding does not shift them; word embeddings may be narrower than the model
//! (`word_embed_proj_dim`, opt-350m) and are projected in and out; opt-350m also puts
//! the layer norms after each block (`do_layer_norm_before: false`).
//!
//! The core entry point takes input *embeddings* ([`OptForCausalLM::forward_embeds`]) so
//! BLIP-2 can prepend projected Q-Former outputs. The cache is an argument
//! ([`DecoderCache`], from [`crate::decoder`], shared with [`crate::llama`]).
//!
//! For decoding, [`OptForCausalLM::quantize`] turns the attention projections and
//! feed-forward of every layer into 8- or 4-bit weights (see [`crate::quant`]).

use crate::layers::Linear;
use candle_core::{DType, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use serde::Deserialize;

use crate::attention::{attend, split_heads, AttnMask, KvCache};
use crate::decoder::{self, linear, TokenIds};
pub use crate::decoder::{DecoderCache, Positions};
use crate::layers::{Activation, LayerNorm};
use crate::quant::{Quant, QuantLinear, QuantReport};

/// Fairseq reserved position ids 0 and 1; the table has `max_position_embeddings + 2` rows.
const POSITION_OFFSET: f64 = 2.0;

/// `OPTConfig` in the reference's schema and defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct OptConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub ffn_dim: usize,
    pub max_position_embeddings: usize,
    pub do_layer_norm_before: bool,
    #[serde(rename = "_remove_final_layer_norm")]
    pub remove_final_layer_norm: bool,
    /// `None` means `hidden_size` (no projection in/out).
    pub word_embed_proj_dim: Option<usize>,
    /// Residual dropout, applied when training.
    pub dropout: f64,
    pub attention_dropout: f64,
    pub num_attention_heads: usize,
    pub activation_function: Activation,
    pub enable_bias: bool,
    pub layer_norm_elementwise_affine: bool,
    pub tie_word_embeddings: bool,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
}

impl Default for OptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 50272,
            hidden_size: 768,
            num_hidden_layers: 12,
            ffn_dim: 3072,
            max_position_embeddings: 2048,
            do_layer_norm_before: true,
            remove_final_layer_norm: false,
            word_embed_proj_dim: None,
            dropout: 0.1,
            attention_dropout: 0.0,
            num_attention_heads: 12,
            activation_function: Activation::Relu,
            enable_bias: true,
            layer_norm_elementwise_affine: true,
            tie_word_embeddings: true,
            pad_token_id: Some(1),
            bos_token_id: Some(2),
            eos_token_id: Some(TokenIds::One(2)),
        }
    }
}

impl OptConfig {
    pub fn word_embed_proj_dim(&self) -> usize {
        self.word_embed_proj_dim.unwrap_or(self.hidden_size)
    }
}

/// A layer norm that has no parameters when `layer_norm_elementwise_affine` is false.
fn opt_layer_norm(cfg: &OptConfig, vb: VarBuilder) -> Result<LayerNorm> {
    let d = cfg.hidden_size;
    if cfg.layer_norm_elementwise_affine {
        return LayerNorm::new(d, 1e-5, vb);
    }
    Ok(LayerNorm {
        weight: Tensor::ones(d, vb.dtype(), vb.device())?,
        bias: Tensor::zeros(d, vb.dtype(), vb.device())?,
        eps: 1e-5,
    })
}

fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(x, p as f32)
    } else {
        Ok(x.clone())
    }
}

/// `self_attn`: multi-head attention, queries scaled before the product as the reference.
#[derive(Debug, Clone)]
pub struct OptAttention {
    pub q_proj: QuantLinear,
    pub k_proj: QuantLinear,
    pub v_proj: QuantLinear,
    pub out_proj: QuantLinear,
    num_heads: usize,
    scaling: f64,
}

impl OptAttention {
    pub fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        let (d, b) = (cfg.hidden_size, cfg.enable_bias);
        if d % cfg.num_attention_heads != 0 {
            candle_core::bail!(
                "hidden_size {d} is not a multiple of num_attention_heads {}",
                cfg.num_attention_heads
            );
        }
        Ok(Self {
            q_proj: linear(d, d, b, vb.pp("q_proj"))?,
            k_proj: linear(d, d, b, vb.pp("k_proj"))?,
            v_proj: linear(d, d, b, vb.pp("v_proj"))?,
            out_proj: linear(d, d, b, vb.pp("out_proj"))?,
            num_heads: cfg.num_attention_heads,
            scaling: ((d / cfg.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// # Shapes
    /// * `x`: `[b, t, d]` -> `[b, t, d]`; `cache` grows by `t`
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        cache: &mut KvCache,
        train: bool,
    ) -> Result<Tensor> {
        let q = (self.q_proj.forward(x)? * self.scaling)?; // [b, t, d]
        let q = split_heads(&q, self.num_heads)?; // [b, h, t, hd]
        let k = split_heads(&self.k_proj.forward(x)?, self.num_heads)?; // [b, h, t, hd]
        let v = split_heads(&self.v_proj.forward(x)?, self.num_heads)?; // [b, h, t, hd]
        let (k, v) = cache.append(&k, &v)?; // [b, h, past + t, hd]
        let h = self.num_heads;
        let out = attend(&q, &k, &v, h, h, mask, 1.0, train)?; // [b, t, d]
        self.out_proj.forward(&out) // [b, t, d]
    }
}

/// `layers.{i}`.
#[derive(Debug, Clone)]
pub struct OptDecoderLayer {
    pub self_attn: OptAttention,
    pub self_attn_layer_norm: LayerNorm,
    pub fc1: QuantLinear,
    pub fc2: QuantLinear,
    pub final_layer_norm: LayerNorm,
    activation_fn: Activation,
    do_layer_norm_before: bool,
    dropout: f64,
}

impl OptDecoderLayer {
    pub fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        let (d, f, b) = (cfg.hidden_size, cfg.ffn_dim, cfg.enable_bias);
        Ok(Self {
            self_attn: OptAttention::new(cfg, vb.pp("self_attn"))?,
            self_attn_layer_norm: opt_layer_norm(cfg, vb.pp("self_attn_layer_norm"))?,
            fc1: linear(d, f, b, vb.pp("fc1"))?,
            fc2: linear(f, d, b, vb.pp("fc2"))?,
            final_layer_norm: opt_layer_norm(cfg, vb.pp("final_layer_norm"))?,
            activation_fn: cfg.activation_function,
            do_layer_norm_before: cfg.do_layer_norm_before,
            dropout: cfg.dropout,
        })
    }

    /// The layer's weight matrices, named as in the checkpoint under `layers.{i}`.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut QuantLinear); 6] {
        let a = &mut self.self_attn;
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.out_proj", &mut a.out_proj),
            ("fc1", &mut self.fc1),
            ("fc2", &mut self.fc2),
        ]
    }

    fn is_quantized(&self) -> bool {
        let a = &self.self_attn;
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.out_proj,
            &self.fc1,
            &self.fc2,
        ]
        .iter()
        .any(|l| l.is_quantized())
    }

    /// `[b, t, d]` -> `[b, t, d]`.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &AttnMask,
        cache: &mut KvCache,
        train: bool,
    ) -> Result<Tensor> {
        let pre = self.do_layer_norm_before;
        let h = if pre {
            self.self_attn_layer_norm.forward(x, train)?
        } else {
            x.clone()
        }; // [b, t, d]
        let h = self.self_attn.forward(&h, mask, cache, train)?; // [b, t, d]
        let mut x = (x + dropout(&h, self.dropout, train)?)?; // [b, t, d]
        if !pre {
            x = self.self_attn_layer_norm.forward(&x, train)?;
        }
        let h = if pre {
            self.final_layer_norm.forward(&x, train)?
        } else {
            x.clone()
        }; // [b, t, d]
        let h = self.activation_fn.apply(&self.fc1.forward(&h)?)?; // [b, t, ffn]
        let h = self.fc2.forward(&h)?; // [b, t, d]
        let mut x = (x + dropout(&h, self.dropout, train)?)?; // [b, t, d]
        if !pre {
            x = self.final_layer_norm.forward(&x, train)?;
        }
        Ok(x)
    }
}

/// `OPTForCausalLM`: `model.decoder.*` and `lm_head` (tied to `embed_tokens` unless the
/// config unties it and the checkpoint has its own).
#[derive(Debug, Clone)]
pub struct OptForCausalLM {
    pub embed_tokens: Embedding,
    pub embed_positions: Embedding,
    pub project_in: Option<Linear>,
    pub project_out: Option<Linear>,
    pub layers: Vec<OptDecoderLayer>,
    pub final_layer_norm: Option<LayerNorm>,
    /// Float unless quantised on purpose: [`Self::quantize`] leaves it alone.
    pub lm_head: QuantLinear,
}

impl OptForCausalLM {
    /// `vb` at the causal-LM root (`model.decoder.*`, `lm_head.weight`); inside BLIP-2
    /// that is `language_model`.
    pub fn new(cfg: &OptConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_with_head(cfg, vb.pp("model").pp("decoder"), vb.pp("lm_head"))
    }

    /// `vb_decoder` at the decoder (`embed_tokens`, `layers`, ...), `vb_head` at the
    /// output projection (`weight`). The head reuses `embed_tokens` when the config ties
    /// them or when `vb_head` has no `weight` (`save_pretrained` drops tied copies).
    pub fn new_with_head(
        cfg: &OptConfig,
        vb_decoder: VarBuilder,
        vb_head: VarBuilder,
    ) -> Result<Self> {
        let (d, w) = (cfg.hidden_size, cfg.word_embed_proj_dim());
        let embed_tokens = candle_nn::embedding(cfg.vocab_size, w, vb_decoder.pp("embed_tokens"))?;
        let embed_positions = candle_nn::embedding(
            cfg.max_position_embeddings + POSITION_OFFSET as usize,
            d,
            vb_decoder.pp("embed_positions"),
        )?;
        let (project_in, project_out) = if w != d {
            (
                Some(crate::layers::linear_no_bias(
                    w,
                    d,
                    vb_decoder.pp("project_in"),
                )?),
                Some(crate::layers::linear_no_bias(
                    d,
                    w,
                    vb_decoder.pp("project_out"),
                )?),
            )
        } else {
            (None, None)
        };
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| OptDecoderLayer::new(cfg, vb_decoder.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = if cfg.do_layer_norm_before && !cfg.remove_final_layer_norm {
            Some(opt_layer_norm(cfg, vb_decoder.pp("final_layer_norm"))?)
        } else {
            None
        };
        let tied = cfg.tie_word_embeddings || !vb_head.contains_tensor("weight");
        let lm_head = decoder::lm_head(&embed_tokens, tied, w, cfg.vocab_size, vb_head)?;
        Ok(Self {
            embed_tokens,
            embed_positions,
            project_in,
            project_out,
            layers,
            final_layer_norm,
            lm_head,
        })
    }

    /// `[b, t]` token ids -> `[b, t, word_embed_proj_dim]`.
    pub fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(input_ids)
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> DecoderCache {
        DecoderCache::new(self.layers.len())
    }

    /// Quantises the attention projections and feed-forward weights of every layer for
    /// inference (embeddings, norms, `project_in`/`project_out` and the head stay float);
    /// the float weights are dropped. The report names any layer whose width fits no
    /// block (kept float). Afterwards a `train = true` forward is an error.
    pub fn quantize(&mut self, quant: Quant) -> Result<QuantReport> {
        decoder::quantize_layers(quant, self.layers.iter_mut().map(|l| l.linears_mut()))
    }

    /// Whether any weight is quantised (the model is then inference-only).
    pub fn is_quantized(&self) -> bool {
        self.lm_head.is_quantized() || self.layers.iter().any(|l| l.is_quantized())
    }

    /// Learned position embeddings for the new positions: `[1, t, d]` or `[b, t, d]`.
    fn positions(&self, positions: &Positions) -> Result<Tensor> {
        let table = self.embed_positions.embeddings();
        match positions {
            Positions::Range { start, len } => {
                let max = table.dim(0)? - POSITION_OFFSET as usize;
                if start + len > max {
                    candle_core::bail!(
                        "position {} is past the model's max_position_embeddings = {max}",
                        start + len - 1
                    );
                }
                table
                    .narrow(0, start + POSITION_OFFSET as usize, *len)?
                    .unsqueeze(0)
            }
            Positions::PerRow { ids, keep, .. } => {
                // The reference's ids: cumsum * mask - 1 (so -1 at padding), plus the offset.
                let (b, t) = ids.dims2()?;
                let ids = ((ids + keep)? + (POSITION_OFFSET - 1.0))?.to_dtype(DType::U32)?; // [b, t]
                table
                    .index_select(&ids.flatten_all()?, 0)?
                    .reshape((b, t, ()))
            }
        }
    }

    /// Final hidden states (after `final_layer_norm` and `project_out`), before the head.
    ///
    /// # Shapes
    /// * `embeds`: `[b, t, word_embed_proj_dim]`
    /// * `attention_mask`: `[b, past + t]` 0/1 over cached and new positions, or `None`
    ///   (no padding, or continue the mask already in `cache` with ones)
    /// * returns `[b, t, word_embed_proj_dim]`; `cache` grows by `t`
    pub fn forward_hidden(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut DecoderCache,
        train: bool,
    ) -> Result<Tensor> {
        decoder::check_trainable("OPT", train, || self.is_quantized())?;
        let (b, t, _) = embeds.dims3()?;
        let step = cache.begin_step(attention_mask, b, t, embeds.dtype(), embeds.device())?;
        let pos = self.positions(&step.positions)?; // [1 or b, t, d]
        let x = match &self.project_in {
            Some(p) => p.forward(embeds)?, // [b, t, d]
            None => embeds.clone(),
        };
        let mut x = x.broadcast_add(&pos)?; // [b, t, d]
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &step.mask, kv, train)?; // [b, t, d]
        }
        cache.advance(t);
        if let Some(ln) = &self.final_layer_norm {
            x = ln.forward(&x, train)?;
        }
        match &self.project_out {
            Some(p) => p.forward(&x), // [b, t, w]
            None => Ok(x),
        }
    }

    /// `[b, t, word_embed_proj_dim]` -> `[b, t, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Logits for input embeddings; see [`Self::forward_hidden`] for the arguments.
    ///
    /// # Shapes
    /// * `embeds`: `[b, t, word_embed_proj_dim]` -> `[b, t, vocab]`
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut DecoderCache,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(embeds, attention_mask, cache, train)?; // [b, t, w]
        self.logits(&hidden) // [b, t, vocab]
    }

    /// [`Self::forward_embeds`] on token ids: `[b, t]` -> `[b, t, vocab]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut DecoderCache,
        train: bool,
    ) -> Result<Tensor> {
        let embeds = self.embed_tokens(input_ids)?; // [b, t, w]
        self.forward_embeds(&embeds, attention_mask, cache, train)
    }
}
