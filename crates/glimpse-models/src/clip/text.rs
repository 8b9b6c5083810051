//! CLIP's text tower (`CLIPTextTransformer`): token and position embeddings, the causal
//! pre-norm encoder shared with the ViT, a final layer norm, pooling at the end token.

use candle_core::{bail, DType, IndexOp, Result, Tensor};
use candle_nn::{Embedding, Module, VarBuilder};
use glimpse_nn::attention::{min_value, padding_mask, AttnMask};
use glimpse_nn::layers::{layer_norm, LayerNorm};
use glimpse_nn::vit::Encoder;

use super::config::ClipTextConfig;

/// `embeddings.{token_embedding, position_embedding}`.
#[derive(Debug, Clone)]
pub struct ClipTextEmbeddings {
    pub token_embedding: Embedding,
    pub position_embedding: Embedding,
}

impl ClipTextEmbeddings {
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            token_embedding: candle_nn::embedding(cfg.vocab_size, d, vb.pp("token_embedding"))?,
            position_embedding: candle_nn::embedding(
                cfg.max_position_embeddings,
                d,
                vb.pp("position_embedding"),
            )?,
        })
    }

    /// # Shapes
    /// * `input_ids`: `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let t = input_ids.dim(1)?;
        let max = self.position_embedding.embeddings().dim(0)?;
        if t > max {
            bail!("{t} tokens exceed the model's max_position_embeddings {max}")
        }
        let tokens = self.token_embedding.forward(input_ids)?; // [b, t, d]
        let positions = self.position_embedding.embeddings().narrow(0, 0, t)?; // [t, d]
        tokens.broadcast_add(&positions)
    }
}

/// `text_model` of a `CLIPModel` checkpoint.
#[derive(Debug, Clone)]
pub struct ClipTextTransformer {
    pub embeddings: ClipTextEmbeddings,
    pub encoder: Encoder,
    pub final_layer_norm: LayerNorm,
    eos_token_id: u32,
    vocab_size: usize,
}

impl ClipTextTransformer {
    pub fn new(cfg: &ClipTextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            embeddings: ClipTextEmbeddings::new(cfg, vb.pp("embeddings"))?,
            encoder: Encoder::new(&cfg.encoder(), vb.pp("encoder"))?,
            final_layer_norm: layer_norm(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("final_layer_norm"),
            )?,
            eos_token_id: cfg.eos_token_id,
            vocab_size: cfg.vocab_size,
        })
    }

    /// Returns `(last_hidden_state [batch, seq, hidden], pooled [batch, hidden])`.
    ///
    /// # Shapes
    /// * `input_ids`: `[batch, seq]` (u32 or i64)
    /// * `attention_mask`: `[batch, seq]` of 0/1, or `None` for no padding
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        train: bool,
    ) -> Result<(Tensor, Tensor)> {
        let (ids, x, mask) = self.prepare(input_ids, attention_mask)?;
        let x = self.encoder.forward(&x, &mask, None, None, train)?; // [b, t, d]
        let x = self.final_layer_norm.forward(&x, train)?; // [b, t, d]
        let pooled = self.pool(&x, &ids)?; // [b, d]
        Ok((x, pooled))
    }

    /// The pooled output of [`ClipTextTransformer::forward`] alone, for inference: the
    /// last layer runs only at each row's end token ([`Encoder::forward_pooled`]), whose
    /// query sees the keys up to its own position that are not padding, as in the
    /// full causal pass.
    ///
    /// # Shapes
    /// * as [`ClipTextTransformer::forward`]; returns `[batch, hidden]`
    pub fn pooled(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let (ids, x, mask) = self.prepare(input_ids, attention_mask)?;
        let (b, t, _) = x.dims3()?;
        let positions: Vec<usize> = ids
            .iter()
            .map(|row| end_position(row, self.eos_token_id))
            .collect();
        // The one query's mask: keys after its position are out (as the causal mask
        // has them: excluded outright, hence -inf), padded keys get the reference's
        // most negative value, as `padding_mask` gives them.
        let keep: Option<Vec<Vec<f32>>> = attention_mask
            .map(|am| am.to_dtype(DType::F32)?.to_vec2::<f32>())
            .transpose()?;
        let blocked = min_value(x.dtype()) as f32;
        let mut row_mask = Vec::with_capacity(b * t);
        for (i, &p) in positions.iter().enumerate() {
            for j in 0..t {
                row_mask.push(if j > p {
                    f32::NEG_INFINITY
                } else if keep.as_ref().is_some_and(|k| k[i][j] == 0.0) {
                    blocked
                } else {
                    0.0
                });
            }
        }
        let row_mask = Tensor::from_vec(row_mask, (b, 1, 1, t), x.device())?.to_dtype(x.dtype())?;
        let pooled =
            self.encoder
                .forward_pooled(&x, &mask, &positions, &AttnMask::additive(row_mask))?; // [b, d]
        self.final_layer_norm.forward(&pooled, false)
    }

    /// The checked ids as rows, the embeddings and the encoder's mask.
    fn prepare(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<(Vec<Vec<u32>>, Tensor, AttnMask)> {
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let ids = input_ids.to_vec2::<u32>()?;
        if let Some(bad) = ids
            .iter()
            .flatten()
            .find(|&&i| i as usize >= self.vocab_size)
        {
            bail!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab_size
            )
        }
        let x = self.embeddings.forward(&input_ids)?; // [b, t, d]
        let mut mask = AttnMask::causal();
        if let Some(am) = attention_mask {
            if am.dims() != input_ids.dims() {
                bail!(
                    "attention_mask {:?} does not match input_ids {:?}",
                    am.dims(),
                    input_ids.dims()
                )
            }
            mask = mask.with_additive(padding_mask(am, x.dtype())?)?; // [b, 1, 1, t]
        }
        Ok((ids, x, mask))
    }

    /// The hidden state at each row's end token.
    fn pool(&self, x: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor> {
        let rows = ids
            .iter()
            .enumerate()
            .map(|(b, row)| x.i((b, end_position(row, self.eos_token_id)))) // [d]
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0) // [b, d]
    }
}

/// Where the reference pools a row. Legacy configs (`eos_token_id == 2`) take the
/// largest id (the end token had the largest id in the original vocabulary); others
/// the first end token, or position 0 when there is none, as `argmax` of all-false does.
pub(crate) fn end_position(row: &[u32], eos_token_id: u32) -> usize {
    if eos_token_id == 2 {
        // First maximum, as torch.argmax.
        let mut best = 0;
        for (i, &id) in row.iter().enumerate() {
            if id > row[best] {
                best = i;
            }
        }
        best
    } else {
        row.iter().position(|&id| id == eos_token_id).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::end_position;

    #[test]
    fn pooling_position_follows_the_reference() {
        assert_eq!(end_position(&[49406, 320, 49407, 49407, 49407], 49407), 2);
        assert_eq!(end_position(&[49406, 320, 49407, 0, 0], 2), 2);
        assert_eq!(end_position(&[5, 9, 9, 1], 2), 1);
        assert_eq!(end_position(&[5, 9, 1], 49407), 0);
    }
}
