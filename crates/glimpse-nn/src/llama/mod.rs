//! LLaMA (<https://arxiv.org/abs/2302.13971>), the language model behind LLaVA, ported
//! from `transformers` `models/llama/modeling_llama.py` (v5.24): pre-norm RMSNorm
//! blocks, rotary positions, grouped-query attention, a SwiGLU feed-forward.
//!
//! The core entry point takes input *embeddings* so a caller can splice projected image
//! features in place of image tokens ([`LlamaForCausalLM::forward_embeds`]). The cache is
//! an argument ([`DecoderCache`], from [`crate::decoder`], shared with [`crate::opt`]).
//!
//! Positions come from the attention mask (`cumsum(mask) - 1`, 0 at padding), which is
//! what the reference's `generate` passes; the reference's plain forward uses `0..len`
//! instead, which agrees whenever there is no padding.
//!
//! For decoding, [`LlamaForCausalLM::quantize`] turns the attention projections and
//! the MLP of every layer into 8- or 4-bit weights (see [`crate::quant`]).

pub mod rope;

pub use crate::decoder::{DecoderCache, Positions, StepInputs, TokenIds};
pub use rope::{RopeParameters, RopeScaling, RotaryEmbedding};

use candle_core::{DType, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use serde::Deserialize;

use crate::attention::{attend, split_heads, AttnMask, KvCache};
use crate::decoder::{self, linear};
use crate::layers::Activation;
use crate::quant::{Quant, QuantLinear, QuantReport};

/// `LlamaConfig` in the reference's schema and defaults (Llama-2-7B).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; `None` means one key/value head per query head.
    pub num_key_value_heads: Option<usize>,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// transformers 5 keeps theta and the scaling together here.
    pub rope_parameters: Option<RopeParameters>,
    /// Earlier files: `rope_theta` and `rope_scaling` at the top level.
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeParameters>,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// `None` means `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
}

impl Default for LlamaConfig {
    fn default() -> Self {
        Self {
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: None,
            hidden_act: Activation::Silu,
            max_position_embeddings: 2048,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            rope_parameters: None,
            rope_theta: None,
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            head_dim: None,
            pad_token_id: None,
            bos_token_id: Some(1),
            eos_token_id: Some(TokenIds::One(2)),
        }
    }
}

impl LlamaConfig {
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// `rope_theta` (default 10000) and the scaling variant, from either schema;
    /// an unsupported rope type is an error naming it.
    pub fn rope(&self) -> Result<(f64, RopeScaling)> {
        let params = self
            .rope_parameters
            .clone()
            .or_else(|| self.rope_scaling.clone())
            .unwrap_or_default();
        let theta = params.rope_theta.or(self.rope_theta).unwrap_or(10_000.0);
        Ok((theta, params.scaling(self.max_position_embeddings)?))
    }
}

/// Root-mean-square norm with a weight, statistics in f32 as the reference.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    /// # Shapes
    /// * `xs`: `[..., size]` -> `[..., size]`
    ///
    /// `train` selects plain tensor ops (the fused kernel records no backward pass).
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        // candle's fused kernel has no f64 (f64 models are reference checks).
        if !train && xs.dtype() != DType::F64 {
            return candle_nn::ops::rms_norm(&xs.contiguous()?, &self.weight, self.eps as f32);
        }
        let dtype = xs.dtype();
        // Half precision is normalised in f32; f32 and f64 in their own precision.
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = xs.to_dtype(internal)?;
        let var = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?; // [..., 1]
        let normed = x.broadcast_div(&(var + self.eps)?.sqrt()?)?; // [..., size]
        normed.to_dtype(dtype)?.broadcast_mul(&self.weight)
    }
}

/// `self_attn`: grouped-query attention with rotary positions.
#[derive(Debug, Clone)]
pub struct LlamaAttention {
    pub q_proj: QuantLinear,
    pub k_proj: QuantLinear,
    pub v_proj: QuantLinear,
    pub o_proj: QuantLinear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl LlamaAttention {
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (h, kv) = (cfg.num_attention_heads, cfg.num_key_value_heads());
        let b = cfg.attention_bias;
        Ok(Self {
            q_proj: linear(d, h * hd, b, vb.pp("q_proj"))?,
            k_proj: linear(d, kv * hd, b, vb.pp("k_proj"))?,
            v_proj: linear(d, kv * hd, b, vb.pp("v_proj"))?,
            o_proj: linear(h * hd, d, b, vb.pp("o_proj"))?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
        })
    }

    /// # Shapes
    /// * `x`: `[b, t, hidden]`; `cos`, `sin`: `[t, hd/2]` or `[b, t, hd/2]`
    /// * returns `[b, t, hidden]`; `cache` grows by `t`
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        cache: &mut KvCache,
        train: bool,
    ) -> Result<Tensor> {
        let q = split_heads(&self.q_proj.forward(x)?, self.num_heads)?; // [b, h, t, hd]
        let k = split_heads(&self.k_proj.forward(x)?, self.num_kv_heads)?; // [b, kv, t, hd]
        let v = split_heads(&self.v_proj.forward(x)?, self.num_kv_heads)?; // [b, kv, t, hd]
        let q = rope::apply_rope(&q, cos, sin, train)?; // [b, h, t, hd]
        let k = rope::apply_rope(&k, cos, sin, train)?; // [b, kv, t, hd]
        let (k, v) = cache.append(&k, &v)?; // [b, kv, past + t, hd]
        let scale = (self.head_dim as f64).powf(-0.5);
        let (h, kvh) = (self.num_heads, self.num_kv_heads);
        let out = attend(&q, &k, &v, h, kvh, mask, scale, train)?; // [b, t, hidden]
        self.o_proj.forward(&out) // [b, t, hidden]
    }
}

/// `mlp`: `down_proj(act(gate_proj(x)) * up_proj(x))`.
#[derive(Debug, Clone)]
pub struct LlamaMlp {
    pub gate_proj: QuantLinear,
    pub up_proj: QuantLinear,
    pub down_proj: QuantLinear,
    act: Activation,
}

impl LlamaMlp {
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (d, i, b) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(Self {
            gate_proj: linear(d, i, b, vb.pp("gate_proj"))?,
            up_proj: linear(d, i, b, vb.pp("up_proj"))?,
            down_proj: linear(i, d, b, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }

    /// `[b, t, hidden]` -> `[b, t, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.act.apply(&self.gate_proj.forward(x)?)?; // [b, t, i]
        let up = self.up_proj.forward(x)?; // [b, t, i]
        self.down_proj.forward(&(gate * up)?) // [b, t, hidden]
    }
}

/// `layers.{i}`.
#[derive(Debug, Clone)]
pub struct LlamaDecoderLayer {
    pub self_attn: LlamaAttention,
    pub mlp: LlamaMlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl LlamaDecoderLayer {
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Self {
            self_attn: LlamaAttention::new(cfg, vb.pp("self_attn"))?,
            mlp: LlamaMlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: RmsNorm::new(d, eps, vb.pp("input_layernorm"))?,
            post_attention_layernorm: RmsNorm::new(d, eps, vb.pp("post_attention_layernorm"))?,
        })
    }

    /// The layer's weight matrices, named as in the checkpoint under `layers.{i}`.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut QuantLinear); 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut a.q_proj),
            ("self_attn.k_proj", &mut a.k_proj),
            ("self_attn.v_proj", &mut a.v_proj),
            ("self_attn.o_proj", &mut a.o_proj),
            ("mlp.gate_proj", &mut m.gate_proj),
            ("mlp.up_proj", &mut m.up_proj),
            ("mlp.down_proj", &mut m.down_proj),
        ]
    }

    fn is_quantized(&self) -> bool {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
        .iter()
        .any(|l| l.is_quantized())
    }

    /// `[b, t, hidden]` -> `[b, t, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttnMask,
        cache: &mut KvCache,
        train: bool,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x, train)?; // [b, t, d]
        let x = (x + self.self_attn.forward(&h, cos, sin, mask, cache, train)?)?; // [b, t, d]
        let h = self.post_attention_layernorm.forward(&x, train)?; // [b, t, d]
        x + self.mlp.forward(&h)? // [b, t, d]
    }
}

/// `LlamaForCausalLM`: `model.{embed_tokens, layers, norm}` and `lm_head` (tied to
/// `embed_tokens` when `tie_word_embeddings`).
#[derive(Debug, Clone)]
pub struct LlamaForCausalLM {
    pub embed_tokens: Embedding,
    pub layers: Vec<LlamaDecoderLayer>,
    pub norm: RmsNorm,
    /// Float unless quantised on purpose: [`Self::quantize`] leaves it alone.
    pub lm_head: QuantLinear,
    pub rotary_emb: RotaryEmbedding,
}

impl LlamaForCausalLM {
    /// `vb` at the causal-LM root (`model.*`, `lm_head.weight`).
    pub fn new(cfg: &LlamaConfig, vb: VarBuilder) -> Result<Self> {
        Self::new_with_head(cfg, vb.pp("model"), vb.pp("lm_head"))
    }

    /// `vb_model` at the base model (`embed_tokens`, `layers`, `norm`), `vb_head` at the
    /// output projection (`weight`); for containers that place them apart (LLaVA's
    /// `model.language_model.*` + `lm_head`).
    pub fn new_with_head(
        cfg: &LlamaConfig,
        vb_model: VarBuilder,
        vb_head: VarBuilder,
    ) -> Result<Self> {
        let (theta, scaling) = cfg.rope()?;
        let embed_tokens =
            candle_nn::embedding(cfg.vocab_size, cfg.hidden_size, vb_model.pp("embed_tokens"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| LlamaDecoderLayer::new(cfg, vb_model.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb_model.pp("norm"))?;
        let lm_head = decoder::lm_head(
            &embed_tokens,
            cfg.tie_word_embeddings,
            cfg.hidden_size,
            cfg.vocab_size,
            vb_head,
        )?;
        let rotary_emb = RotaryEmbedding::new(
            scaling,
            theta,
            cfg.head_dim(),
            cfg.max_position_embeddings,
            vb_model.dtype(),
            vb_model.device(),
        )?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary_emb,
        })
    }

    /// `[b, t]` token ids -> `[b, t, hidden]`.
    pub fn embed_tokens(&self, input_ids: &Tensor) -> Result<Tensor> {
        self.embed_tokens.forward(input_ids)
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> DecoderCache {
        DecoderCache::new(self.layers.len())
    }

    /// Quantises the attention projections and MLP weights of every layer for inference
    /// (embeddings, norms and the head stay float); the float weights are dropped. The
    /// report names any layer whose width fits no block (kept float). Afterwards a
    /// `train = true` forward is an error.
    pub fn quantize(&mut self, quant: Quant) -> Result<QuantReport> {
        decoder::quantize_layers(quant, self.layers.iter_mut().map(|l| l.linears_mut()))
    }

    /// Whether any weight is quantised (the model is then inference-only).
    pub fn is_quantized(&self) -> bool {
        self.lm_head.is_quantized() || self.layers.iter().any(|l| l.is_quantized())
    }

    /// Final hidden states (after `norm`), before the LM head.
    ///
    /// # Shapes
    /// * `embeds`: `[b, t, hidden]`
    /// * `attention_mask`: `[b, past + t]` 0/1 over cached and new positions, or `None`
    ///   (no padding, or continue the mask already in `cache` with ones)
    /// * returns `[b, t, hidden]`; `cache` grows by `t`
    pub fn forward_hidden(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut DecoderCache,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_hidden_at(embeds, attention_mask, None, cache, train)
    }

    /// [`Self::forward_hidden`] with explicit `position_ids` (`[b, t]` or `[1, t]`,
    /// integers) instead of positions from the mask. The reference's plain forward
    /// uses `past..past + t` even for left-padded rows; pass that to reproduce it.
    pub fn forward_hidden_at(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        position_ids: Option<&Tensor>,
        cache: &mut DecoderCache,
        train: bool,
    ) -> Result<Tensor> {
        decoder::check_trainable("LLaMA", train, || self.is_quantized())?;
        let (b, t, _) = embeds.dims3()?;
        let step = cache.begin_step(attention_mask, b, t, embeds.dtype(), embeds.device())?;
        let positions = match position_ids {
            None => step.positions,
            Some(p) => {
                let ids = p.to_dtype(DType::F32)?.broadcast_as((b, t))?.contiguous()?; // [b, t]
                let max = ids.max_all()?.to_scalar::<f32>()?;
                if ids.min_all()?.to_scalar::<f32>()? < 0.0 {
                    candle_core::bail!("position_ids must not be negative");
                }
                Positions::PerRow {
                    keep: ids.ones_like()?,
                    ids,
                    max_bound: max as usize,
                }
            }
        };
        let (cos, sin) = self.rotary_emb.cos_sin(&positions)?; // [(b,) t, hd/2]
        let mut x = embeds.clone();
        for (layer, kv) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(&x, &cos, &sin, &step.mask, kv, train)?; // [b, t, d]
        }
        cache.advance(t);
        self.norm.forward(&x, train) // [b, t, d]
    }

    /// `[b, t, hidden]` -> `[b, t, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// Logits for input embeddings; see [`Self::forward_hidden`] for the arguments.
    ///
    /// # Shapes
    /// * `embeds`: `[b, t, hidden]` -> `[b, t, vocab]`
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: &mut DecoderCache,
        train: bool,
    ) -> Result<Tensor> {
        let hidden = self.forward_hidden(embeds, attention_mask, cache, train)?; // [b, t, d]
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
        let embeds = self.embed_tokens(input_ids)?; // [b, t, d]
        self.forward_embeds(&embeds, attention_mask, cache, train)
    }
}
