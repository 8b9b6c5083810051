//! T5 blocks, the encoder and decoder stacks, the LM head and the decoding cache.

use crate::layers::Linear;
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

use super::layers::{dropout, residual, T5Attention, T5DenseActDense, T5LayerNorm};
use super::T5Config;
use crate::attention::{padding_mask, AttnMask, KvCache};

/// `layer.0`: pre-norm self-attention with a residual.
#[allow(non_snake_case)]
#[derive(Debug, Clone)]
struct T5LayerSelfAttention {
    SelfAttention: T5Attention,
    layer_norm: T5LayerNorm,
}

/// `layer.1` of a decoder block: pre-norm cross-attention over the encoder output.
#[allow(non_snake_case)]
#[derive(Debug, Clone)]
struct T5LayerCrossAttention {
    EncDecAttention: T5Attention,
    layer_norm: T5LayerNorm,
}

/// The last layer of a block: pre-norm feed-forward with a residual.
#[allow(non_snake_case)]
#[derive(Debug, Clone)]
struct T5LayerFF {
    DenseReluDense: T5DenseActDense,
    layer_norm: T5LayerNorm,
}

/// One block (`block.N`): `layer.0` self-attention, in the decoder `layer.1`
/// cross-attention, then the feed-forward (`layer.1` or `layer.2`).
#[derive(Debug, Clone)]
struct T5Block {
    self_attention: T5LayerSelfAttention,
    cross_attention: Option<T5LayerCrossAttention>,
    ff: T5LayerFF,
    dropout: f64,
}

impl T5Block {
    fn new(cfg: &T5Config, is_decoder: bool, index: usize, vb: VarBuilder) -> Result<Self> {
        let eps = cfg.layer_norm_epsilon;
        let vb = vb.pp("layer");
        let self_attention = T5LayerSelfAttention {
            SelfAttention: T5Attention::new(cfg, index == 0, vb.pp(0).pp("SelfAttention"))?,
            layer_norm: T5LayerNorm::new(cfg.d_model, eps, vb.pp(0).pp("layer_norm"))?,
        };
        let cross_attention = if is_decoder {
            Some(T5LayerCrossAttention {
                EncDecAttention: T5Attention::new(cfg, false, vb.pp(1).pp("EncDecAttention"))?,
                layer_norm: T5LayerNorm::new(cfg.d_model, eps, vb.pp(1).pp("layer_norm"))?,
            })
        } else {
            None
        };
        let ff_vb = vb.pp(if is_decoder { 2 } else { 1 });
        let ff = T5LayerFF {
            DenseReluDense: T5DenseActDense::new(cfg, ff_vb.pp("DenseReluDense"))?,
            layer_norm: T5LayerNorm::new(cfg.d_model, eps, ff_vb.pp("layer_norm"))?,
        };
        Ok(Self {
            self_attention,
            cross_attention,
            ff,
            dropout: cfg.dropout_rate,
        })
    }

    /// # Shapes
    /// * `xs`: `[b, t, d]`; `self_mask` carries the relative position bias
    /// * `self_kv`: where the keys/values of `xs` go (`None` in the encoder)
    /// * `cross`: the cached encoder keys/values and their mask (decoder only)
    /// * returns `[b, t, d]`
    fn forward(
        &self,
        xs: &Tensor,
        self_mask: &AttnMask,
        self_kv: Option<&mut KvCache>,
        cross: Option<(&KvCache, &AttnMask)>,
        train: bool,
    ) -> Result<Tensor> {
        let sa = &self.self_attention;
        let h = sa.layer_norm.forward(xs, train)?; // [b, t, d]
        let (k, v) = sa.SelfAttention.key_values(&h)?; // [b, h, t, d_kv]
        let (k, v) = match self_kv {
            Some(cache) => cache.append(&k, &v)?, // [b, h, past + t, d_kv]
            None => (k, v),
        };
        let a = sa.SelfAttention.attend(&h, &k, &v, self_mask, train)?; // [b, t, d]
        let mut xs = residual(xs, &dropout(&a, self.dropout, train)?)?;

        if let (Some(ca), Some((kv, mask))) = (&self.cross_attention, cross) {
            let (k, v) = kv.get().ok_or_else(|| {
                candle_core::Error::Msg("T5 cross-attention cache is empty".into())
            })?;
            let h = ca.layer_norm.forward(&xs, train)?; // [b, t, d]
            let a = ca.EncDecAttention.attend(&h, k, v, mask, train)?; // [b, t, d]
            xs = residual(&xs, &dropout(&a, self.dropout, train)?)?;
        }

        let h = self.ff.layer_norm.forward(&xs, train)?; // [b, t, d]
        let f = self.ff.DenseReluDense.forward(&h, train)?; // [b, t, d]
        residual(&xs, &dropout(&f, self.dropout, train)?)
    }
}

/// A stack (`encoder` or `decoder`): blocks and `final_layer_norm`.
#[derive(Debug, Clone)]
struct T5Stack {
    block: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    dropout: f64,
}

impl T5Stack {
    fn new(cfg: &T5Config, is_decoder: bool, vb: VarBuilder) -> Result<Self> {
        let n = if is_decoder {
            cfg.num_decoder_layers()
        } else {
            cfg.num_layers
        };
        let block = (0..n)
            .map(|i| T5Block::new(cfg, is_decoder, i, vb.pp("block").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::new(
            cfg.d_model,
            cfg.layer_norm_epsilon,
            vb.pp("final_layer_norm"),
        )?;
        Ok(Self {
            block,
            final_layer_norm,
            dropout: cfg.dropout_rate,
        })
    }

    fn relative_bias(
        &self,
        q_len: usize,
        k_len: usize,
        past: usize,
        bidi: bool,
        xs: &Tensor,
    ) -> Result<Tensor> {
        self.block[0].self_attention.SelfAttention.compute_bias(
            q_len,
            k_len,
            past,
            bidi,
            xs.device(),
        )
    }
}

/// Decoding state for one batch: per decoder block the self-attention keys/values so
/// far and the cross-attention keys/values of the encoder output (computed once by
/// [`T5ForConditionalGeneration::new_cache`]), the encoder's additive padding mask and
/// the number of decoder positions already run.
#[derive(Debug, Clone)]
pub struct T5Cache {
    self_kv: Vec<KvCache>,
    cross_kv: Vec<KvCache>,
    /// `[b, 1, 1, s]` additive mask over encoder positions.
    encoder_mask: Option<Tensor>,
    position: usize,
}

impl T5Cache {
    /// Decoder positions already in the cache.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Keeps batch rows `rows` (u32 indices, repeats allowed) in that order, in every
    /// cache and in the encoder mask; beam search uses it to expand and follow beams.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for kv in self.self_kv.iter_mut().chain(self.cross_kv.iter_mut()) {
            kv.select_rows(rows)?;
        }
        if let Some(m) = &self.encoder_mask {
            self.encoder_mask = Some(m.index_select(rows, 0)?);
        }
        Ok(())
    }

    /// Forgets the decoded positions, keeping the encoder's keys/values.
    pub fn reset_decoder(&mut self) {
        self.self_kv.iter_mut().for_each(KvCache::clear);
        self.position = 0;
    }
}

/// T5 with its LM head (`T5ForConditionalGeneration`).
#[derive(Debug, Clone)]
pub struct T5ForConditionalGeneration {
    shared: Embedding,
    encoder: T5Stack,
    decoder: T5Stack,
    lm_head: Linear,
    scale: Option<f64>,
    dtype: DType,
}

impl T5ForConditionalGeneration {
    /// Reads `shared`, `encoder.*`, `decoder.*` and `lm_head` under `vb` (the model's
    /// root). Without `lm_head.weight` in a checkpoint whose config ties embeddings, the
    /// head reuses `shared.weight`.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let shared = candle_nn::embedding(cfg.vocab_size, cfg.d_model, vb.pp("shared"))?;
        let encoder = T5Stack::new(cfg, false, vb.pp("encoder"))?;
        let decoder = T5Stack::new(cfg, true, vb.pp("decoder"))?;
        let lm_head = if vb.contains_tensor("lm_head.weight") || !cfg.tie_word_embeddings {
            crate::layers::linear_no_bias(cfg.d_model, cfg.vocab_size, vb.pp("lm_head"))?
        } else {
            Linear::shared(shared.embeddings().clone(), None)
        };
        let scale = cfg
            .scale_decoder_outputs()
            .then(|| (cfg.d_model as f64).powf(-0.5));
        Ok(Self {
            shared,
            encoder,
            decoder,
            lm_head,
            scale,
            dtype: vb.dtype(),
        })
    }

    /// The dtype of the weights (inputs embeddings should match it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// # Shapes
    /// * `ids`: `[b, t]` (u32) -> `[b, t, d_model]`
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.shared.forward(ids)
    }

    /// Runs the encoder on input embeddings.
    ///
    /// # Shapes
    /// * `embeds`: `[b, s, d_model]`; `attention_mask`: `[b, s]`, 1 for real positions
    /// * returns `[b, s, d_model]`
    pub fn encode(
        &self,
        embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (_, s, _) = embeds.dims3()?;
        let bias = self.encoder.relative_bias(s, s, 0, true, embeds)?; // [1, h, s, s]
        let mask = match attention_mask {
            Some(m) => bias.broadcast_add(&padding_mask(m, self.dtype)?)?, // [b, h, s, s]
            None => bias,
        };
        let mask = AttnMask::additive(mask);
        let mut xs = dropout(embeds, self.encoder.dropout, train)?; // [b, s, d]
        for block in &self.encoder.block {
            xs = block.forward(&xs, &mask, None, None, train)?; // [b, s, d]
        }
        let xs = self.encoder.final_layer_norm.forward(&xs, train)?; // [b, s, d]
        dropout(&xs, self.encoder.dropout, train)
    }

    /// Starts decoding over an encoder output: projects every decoder block's
    /// cross-attention keys/values once.
    ///
    /// # Shapes
    /// * `encoder_hidden`: `[b, s, d_model]`; `encoder_mask`: `[b, s]` (1 = real)
    pub fn new_cache(
        &self,
        encoder_hidden: &Tensor,
        encoder_mask: Option<&Tensor>,
    ) -> Result<T5Cache> {
        let cross_kv = self
            .decoder
            .block
            .iter()
            .map(|block| {
                let ca = block.cross_attention.as_ref().ok_or_else(|| {
                    candle_core::Error::Msg("T5 decoder block without EncDecAttention".into())
                })?;
                let (k, v) = ca.EncDecAttention.key_values(encoder_hidden)?; // [b, h, s, d_kv]
                let mut kv = KvCache::new();
                kv.set(k, v);
                Ok(kv)
            })
            .collect::<Result<Vec<_>>>()?;
        let encoder_mask = encoder_mask
            .map(|m| padding_mask(m, self.dtype))
            .transpose()?; // [b, 1, 1, s]
        Ok(T5Cache {
            self_kv: vec![KvCache::new(); self.decoder.block.len()],
            cross_kv,
            encoder_mask,
            position: 0,
        })
    }

    /// Runs new decoder tokens on top of `cache` and returns their logits; the tokens'
    /// self-attention keys/values are appended to the cache.
    ///
    /// # Shapes
    /// * `decoder_input_ids`: `[b, t_new]` (u32) -> logits `[b, t_new, vocab]`
    pub fn decode(
        &self,
        decoder_input_ids: &Tensor,
        cache: &mut T5Cache,
        train: bool,
    ) -> Result<Tensor> {
        let (_, t) = decoder_input_ids.dims2()?;
        let past = cache.position;
        let embeds = self.embed_tokens(decoder_input_ids)?; // [b, t, d]
        let bias = self
            .decoder
            .relative_bias(t, past + t, past, false, &embeds)?; // [1, h, t, past + t]
        let self_mask = AttnMask::causal().with_additive(bias)?;
        let cross_mask = match &cache.encoder_mask {
            Some(m) => AttnMask::additive(m.clone()),
            None => AttnMask::none(),
        };
        let mut xs = dropout(&embeds, self.decoder.dropout, train)?; // [b, t, d]
        for (i, block) in self.decoder.block.iter().enumerate() {
            let cross = Some((&cache.cross_kv[i], &cross_mask));
            xs = block.forward(&xs, &self_mask, Some(&mut cache.self_kv[i]), cross, train)?;
            // [b, t, d]
        }
        cache.position += t;
        let xs = self.decoder.final_layer_norm.forward(&xs, train)?; // [b, t, d]
        let xs = dropout(&xs, self.decoder.dropout, train)?;
        let xs = match self.scale {
            Some(s) => (xs * s)?,
            None => xs,
        };
        self.lm_head.forward(&xs) // [b, t, vocab]
    }

    /// Teacher-forced logits: encode, then decode all `decoder_input_ids` at once.
    ///
    /// # Shapes
    /// * `input_embeds`: `[b, s, d_model]`; `attention_mask`: `[b, s]`
    /// * `decoder_input_ids`: `[b, t]` -> logits `[b, t, vocab]`
    pub fn forward(
        &self,
        input_embeds: &Tensor,
        attention_mask: Option<&Tensor>,
        decoder_input_ids: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let enc = self.encode(input_embeds, attention_mask, train)?; // [b, s, d]
        let mut cache = self.new_cache(&enc, attention_mask)?;
        self.decode(decoder_input_ids, &mut cache, train)
    }
}
