//! The language-model head of BLIP's text decoder (`cls.predictions`) and the decoder
//! model that carries it (`bert` + `cls`, `BlipTextLMHeadModel` in the reference).

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::{BertCache, BertConfig, BertModel, EncoderStates, SelfMask};
use crate::layers::{linear, Activation, LayerNorm, Linear, Module};

/// `transform.{dense, LayerNorm}`, then the vocabulary projection `decoder` whose bias
/// is the head's `bias` parameter (the reference ties `decoder.bias` to it).
#[derive(Debug, Clone)]
pub struct BertLMPredictionHead {
    /// `transform.dense`
    pub transform_dense: Linear,
    /// `transform.LayerNorm`
    pub transform_layer_norm: LayerNorm,
    /// `decoder.weight` (or the tied word embeddings) with `bias`.
    pub decoder: Linear,
    act: Activation,
}

impl BertLMPredictionHead {
    /// `tied_weight`: the word embeddings `[vocab, hidden]` when the config ties them;
    /// a stored `decoder.weight` is then read (so strict loading accepts it) and ignored,
    /// as the reference does.
    pub fn new(cfg: &BertConfig, tied_weight: Option<Tensor>, vb: VarBuilder) -> Result<Self> {
        let (d, v) = (cfg.hidden_size, cfg.vocab_size);
        let tied = tied_weight.is_some();
        let weight = match tied_weight {
            Some(w) => {
                if vb.contains_tensor("decoder.weight") {
                    vb.get((v, d), "decoder.weight")?;
                }
                w
            }
            None => vb.get((v, d), "decoder.weight")?,
        };
        let bias = vb.get_with_hints(v, "bias", candle_nn::Init::Const(0.0))?;
        // Published checkpoints also store the tied copy of the bias.
        if vb.contains_tensor("decoder.bias") {
            vb.get(v, "decoder.bias")?;
        }
        let t = vb.pp("transform");
        Ok(Self {
            transform_dense: linear(d, d, t.pp("dense"))?,
            transform_layer_norm: LayerNorm::new(d, cfg.layer_norm_eps, t.pp("LayerNorm"))?,
            decoder: if tied {
                Linear::shared(weight, Some(bias))
            } else {
                Linear::new(weight, Some(bias))
            },
            act: cfg.hidden_act,
        })
    }

    /// # Shapes
    /// * `hidden`: `[batch, t, hidden]` -> `[batch, t, vocab]`
    pub fn forward(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        let xs = self.transform_dense.forward_act(hidden, self.act)?; // [b, t, d]
        let xs = self.transform_layer_norm.forward(&xs, train)?; // [b, t, d]
        self.decoder.forward(&xs) // [b, t, V]
    }
}

/// BLIP's text decoder: [`BertModel`] (`bert`) and the LM head (`cls.predictions`).
#[derive(Debug, Clone)]
pub struct BertLMHeadModel {
    pub bert: BertModel,
    /// `cls.predictions`
    pub cls: BertLMPredictionHead,
}

impl BertLMHeadModel {
    pub fn new(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let bert = BertModel::new(cfg, vb.pp("bert"))?;
        let tied = cfg
            .tie_word_embeddings
            .then(|| bert.embeddings.word_embeddings.embeddings().clone());
        let cls = BertLMPredictionHead::new(cfg, tied, vb.pp("cls").pp("predictions"))?;
        Ok(Self { bert, cls })
    }

    /// Causal forward over whole texts: the logits of every position.
    ///
    /// # Shapes
    /// * `input_ids`: `[batch, t]` u32; `attention_mask`: `[batch, t]` 0/1 or `None`
    /// * returns `[batch, t, vocab]`
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        encoder: Option<EncoderStates>,
        train: bool,
    ) -> Result<Tensor> {
        let hidden =
            self.bert
                .forward(input_ids, attention_mask, encoder, SelfMask::Causal, train)?; // [b, t, d]
        self.cls.forward(&hidden, train) // [b, t, V]
    }

    /// A cache whose cross-attention holds `encoder`'s keys/values (computed here, once).
    pub fn new_cache(&self, encoder: Option<EncoderStates>) -> Result<BertCache> {
        self.bert.new_cache(encoder)
    }

    /// Runs new tokens on top of the cache and returns the logits of the last one.
    ///
    /// # Shapes
    /// * `input_ids`: `[batch, t]` u32 -> `[batch, vocab]` f32
    pub fn step(&self, input_ids: &Tensor, cache: &mut BertCache) -> Result<Tensor> {
        let hidden = self.bert.forward_cached(input_ids, cache)?; // [b, t, d]
        let t = hidden.dim(1)?;
        if t == 0 {
            candle_core::bail!("step needs at least one new token");
        }
        let last = hidden.narrow(1, t - 1, 1)?; // [b, 1, d]
        let logits = self.cls.forward(&last, false)?; // [b, 1, V]
        logits.squeeze(1)?.to_dtype(candle_core::DType::F32) // [b, V]
    }
}
