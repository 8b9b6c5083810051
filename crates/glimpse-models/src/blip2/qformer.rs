//! The Querying Transformer (Q-Former) of BLIP-2 (`qformer.*`), after
//! `Blip2QFormerModel` in `transformers/models/blip_2/modeling_blip_2.py` (5.24).
//!
//! It is BERT-shaped, so its attention blocks are [`glimpse_nn::bert`]'s, but three
//! things differ and are handled here:
//!
//! * the sequence is `[queries; text]`: the first `query_length` positions are the
//!   learned queries, which use their own feed-forward (`intermediate_query`,
//!   `output_query`) and are the only positions that cross-attend to the image;
//! * only layers with `i % cross_attention_frequency == 0` have `crossattention`;
//! * projections are `attention.attention.*` (transformers 5) or `attention.self.*`
//!   (older files), see [`attention_block`];
//! * the text feed-forward (`intermediate`, `output`) exists only when the config says
//!   `use_qformer_text_input` (retrieval checkpoints); generation checkpoints lack it.
//!
//! The input goes through `layernorm` (queries and text alike); there is no final norm.
//! The reference keeps the Q-Former and the queries in f32 whatever the model's dtype;
//! inputs are cast to this module's dtype and outputs come back in it.

use candle_core::{bail, DType, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use glimpse_nn::attention::{padding_mask, AttnMask};
use glimpse_nn::bert::{BertAttention, BertConfig, BertOutput, BertSelfAttention};
use glimpse_nn::layers::{linear, Activation, LayerNorm, Linear, Module};

use super::config::Blip2QFormerConfig;

fn dropout(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(xs, p as f32)
    } else {
        Ok(xs.clone())
    }
}

/// An attention block (`attention` or `crossattention`). transformers 5 names the
/// projections `attention.{query,key,value}`; published checkpoints written before it
/// use BERT's `self.{query,key,value}`. Both load; new models use the former.
fn attention_block(cfg: &BertConfig, cross: bool, vb: VarBuilder) -> Result<BertAttention> {
    let projections = if vb.contains_tensor("self.query.weight") {
        "self"
    } else {
        "attention"
    };
    Ok(BertAttention {
        self_: BertSelfAttention::new(cfg, cross, vb.pp(projections))?,
        output: BertOutput::new(cfg, cfg.hidden_size, vb.pp("output"))?,
    })
}

/// One Q-Former layer.
#[derive(Debug, Clone)]
pub struct Blip2QFormerLayer {
    pub attention: BertAttention,
    pub crossattention: Option<BertAttention>,
    /// Text feed-forward: `intermediate.dense` (absent in generation checkpoints).
    pub intermediate: Option<Linear>,
    pub output: Option<BertOutput>,
    /// Query feed-forward: `intermediate_query.dense`.
    pub intermediate_query: Linear,
    pub output_query: BertOutput,
    act: Activation,
}

impl Blip2QFormerLayer {
    /// `cfg` must already carry the vision width as `encoder_hidden_size`
    /// ([`super::Blip2Config::qformer`]).
    pub fn new(cfg: &Blip2QFormerConfig, index: usize, vb: VarBuilder) -> Result<Self> {
        let bert = cfg.bert();
        let (d, ffn) = (cfg.hidden_size, cfg.intermediate_size);
        let crossattention = if cfg.has_cross_attention(index) {
            Some(attention_block(&bert, true, vb.pp("crossattention"))?)
        } else {
            None
        };
        // A checkpoint that stores the text feed-forward although its config predates
        // `use_qformer_text_input` still loads it.
        let text_ffn =
            cfg.use_qformer_text_input || vb.contains_tensor("intermediate.dense.weight");
        let (intermediate, output) = if text_ffn {
            (
                Some(linear(d, ffn, vb.pp("intermediate").pp("dense"))?),
                Some(BertOutput::new(&bert, ffn, vb.pp("output"))?),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            attention: attention_block(&bert, false, vb.pp("attention"))?,
            crossattention,
            intermediate,
            output,
            intermediate_query: linear(d, ffn, vb.pp("intermediate_query").pp("dense"))?,
            output_query: BertOutput::new(&bert, ffn, vb.pp("output_query"))?,
            act: cfg.hidden_act,
        })
    }

    /// # Shapes
    /// * `xs`: `[batch, query_length + t, hidden]`, queries first
    /// * `self_mask`: broadcastable to `[batch, heads, n, n]`
    /// * `image`: `[batch, m, encoder_hidden_size]`, needed when this layer cross-attends
    ///   and `query_length > 0`
    /// * returns `[batch, query_length + t, hidden]`
    pub fn forward(
        &self,
        xs: &Tensor,
        self_mask: &AttnMask,
        image: Option<&Tensor>,
        query_length: usize,
        train: bool,
    ) -> Result<Tensor> {
        let n = xs.dim(1)?;
        let (k, v) = self.attention.self_.key_value(xs)?; // [b, h, n, dh]
        let attended = self.attention.forward(xs, &k, &v, self_mask, train)?; // [b, n, d]
        if query_length == 0 {
            return self.text_ffn(&attended, train);
        }
        let mut queries = attended.narrow(1, 0, query_length)?; // [b, q, d]
        if let Some(ca) = &self.crossattention {
            let Some(image) = image else {
                bail!("a Q-Former layer with cross-attention needs image states");
            };
            let (ik, iv) = ca.self_.key_value(image)?; // [b, h, m, dh]
                                                       // The image mask is all ones in every BLIP-2 head.
            queries = ca.forward(&queries, &ik, &iv, &AttnMask::none(), train)?;
            // [b, q, d]
        }
        let h = self
            .act
            .apply(&self.intermediate_query.forward(&queries)?)?; // [b, q, ffn]
        let queries = self.output_query.forward(&h, &queries, train)?; // [b, q, d]
        if n == query_length {
            return Ok(queries);
        }
        let text = attended.narrow(1, query_length, n - query_length)?; // [b, t, d]
        let text = self.text_ffn(&text, train)?; // [b, t, d]
        Tensor::cat(&[&queries, &text], 1) // [b, q + t, d]
    }

    fn text_ffn(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let (Some(intermediate), Some(output)) = (&self.intermediate, &self.output) else {
            bail!(
                "this Q-Former has no text feed-forward (use_qformer_text_input is false): \
                 it can only run queries"
            );
        };
        let h = intermediate.forward_act(xs, self.act)?; // [b, t, ffn]
        output.forward(&h, xs, train) // [b, t, d]
    }
}

/// `Blip2QFormerModel`: `layernorm` and `encoder.layer.{i}`.
#[derive(Debug, Clone)]
pub struct Blip2QFormerModel {
    pub layernorm: LayerNorm,
    /// `encoder.layer`
    pub layer: Vec<Blip2QFormerLayer>,
    dropout: f64,
}

impl Blip2QFormerModel {
    pub fn new(cfg: &Blip2QFormerConfig, vb: VarBuilder) -> Result<Self> {
        let vb_l = vb.pp("encoder").pp("layer");
        let layer = (0..cfg.num_hidden_layers)
            .map(|i| Blip2QFormerLayer::new(cfg, i, vb_l.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layernorm: LayerNorm::new(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?,
            layer,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// The dtype the Q-Former computes in (f32 in the reference).
    pub fn dtype(&self) -> DType {
        self.layernorm.weight.dtype()
    }

    /// Bidirectional pass over `[queries; text]` embeddings.
    ///
    /// # Shapes
    /// * `embeds`: `[batch, n, hidden]`, the first `query_length` positions queries
    /// * `attention_mask`: `[batch, n]` 0/1 over the same positions, or `None`
    /// * `image`: `[batch, m, vision_hidden]` for the queries' cross-attention
    /// * returns `last_hidden_state` `[batch, n, hidden]` in the Q-Former's dtype
    pub fn forward(
        &self,
        embeds: &Tensor,
        query_length: usize,
        attention_mask: Option<&Tensor>,
        image: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let (b, n, _) = embeds.dims3()?;
        let mask = match attention_mask {
            Some(m) => {
                if m.dims() != [b, n] {
                    bail!("attention_mask is {:?}, expected [{b}, {n}]", m.dims());
                }
                AttnMask::additive(padding_mask(m, self.dtype())?) // [b, 1, 1, n]
            }
            None => AttnMask::none(),
        };
        self.forward_masked(embeds, query_length, &mask, image, train)
    }

    /// [`Self::forward`] with any self-attention mask, e.g. stage-1 training's
    /// multimodal causal mask (queries see queries, text sees the queries and earlier
    /// text), which a 0/1 padding mask cannot express.
    ///
    /// # Shapes
    /// * `embeds`: `[batch, n, hidden]`; `mask` broadcastable to `[batch, heads, n, n]`
    /// * returns `[batch, n, hidden]`
    pub fn forward_masked(
        &self,
        embeds: &Tensor,
        query_length: usize,
        mask: &AttnMask,
        image: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor> {
        let n = embeds.dim(1)?;
        if query_length > n {
            bail!("query_length {query_length} exceeds the sequence length {n}");
        }
        let dtype = self.dtype();
        let xs = self.layernorm.forward(&embeds.to_dtype(dtype)?, train)?; // [b, n, d]
        let mut xs = dropout(&xs, self.dropout, train)?;
        let image = image.map(|i| i.to_dtype(dtype)).transpose()?; // [b, m, dv]
        for layer in &self.layer {
            xs = layer.forward(&xs, mask, image.as_ref(), query_length, train)?;
            // [b, n, d]
        }
        Ok(xs)
    }

    /// The learned queries after cross-attending to each image: the reference's
    /// `qformer(query_tokens, encoder_hidden_states=image).last_hidden_state`.
    ///
    /// # Shapes
    /// * `query_tokens`: `[1, q, hidden]`; `image`: `[batch, m, vision_hidden]`
    /// * returns `[batch, q, hidden]`
    pub fn query_outputs(
        &self,
        query_tokens: &Tensor,
        image: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let (_, q, d) = query_tokens.dims3()?;
        let b = image.dim(0)?;
        let queries = query_tokens.expand((b, q, d))?; // [b, q, d]
        self.forward(&queries, q, None, Some(image), train)
    }
}

/// `Blip2TextEmbeddings` (`embeddings.*` of the retrieval model): word plus absolute
/// position embeddings; no norm here (the Q-Former's `layernorm` follows).
#[derive(Debug, Clone)]
pub struct Blip2TextEmbeddings {
    pub word_embeddings: Embedding,
    pub position_embeddings: Embedding,
    max_positions: usize,
}

impl Blip2TextEmbeddings {
    pub fn new(cfg: &Blip2QFormerConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            word_embeddings: candle_nn::embedding(cfg.vocab_size, d, vb.pp("word_embeddings"))?,
            position_embeddings: candle_nn::embedding(
                cfg.max_position_embeddings,
                d,
                vb.pp("position_embeddings"),
            )?,
            max_positions: cfg.max_position_embeddings,
        })
    }

    /// Text embeddings at positions `0..t`, with `query_embeds` (if any) put first.
    ///
    /// # Shapes
    /// * `input_ids`: `[batch, t]` u32; `query_embeds`: `[batch, q, hidden]`
    /// * returns `[batch, q + t, hidden]`
    pub fn forward(&self, input_ids: &Tensor, query_embeds: Option<&Tensor>) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        if t > self.max_positions {
            bail!(
                "text of {t} tokens exceeds max_position_embeddings = {}",
                self.max_positions
            );
        }
        let positions = Tensor::arange(0u32, t as u32, input_ids.device())?; // [t]
        let words = self.word_embeddings.forward(input_ids)?; // [b, t, d]
        let text = words.broadcast_add(&self.position_embeddings.forward(&positions)?)?; // [b, t, d]
        match query_embeds {
            Some(q) => Tensor::cat(&[&q.to_dtype(text.dtype())?, &text], 1), // [b, q + t, d]
            None => Ok(text),
        }
    }
}
