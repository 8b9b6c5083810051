//! The pieces of a T5 block: RMS layer norm, feed-forward, attention projections and
//! the relative position bias.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};

use super::{FeedForwardProj, T5Config};
use crate::attention::{attend, split_heads, AttnMask};
use crate::layers::{linear_no_bias, Activation, Linear};

/// Dropout when training with a positive rate, identity otherwise.
pub(crate) fn dropout(xs: &Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 {
        candle_nn::ops::dropout(xs, p as f32)
    } else {
        Ok(xs.clone())
    }
}

/// `x + y` with torch's promotion: a half-precision stream meeting an f32 one (the
/// output of an f32 `wo`) continues in f32.
pub(crate) fn residual(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    if x.dtype() == y.dtype() {
        x + y
    } else {
        x.to_dtype(DType::F32)? + y.to_dtype(DType::F32)?
    }
}

/// T5's layer norm: divide by the root mean square (no mean subtraction, no bias),
/// statistics in f32, result in the weight's dtype.
#[derive(Debug, Clone)]
pub struct T5LayerNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl T5LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        Ok(Self { weight, eps })
    }

    /// # Shapes
    /// * `xs`: `[..., size]` (any float dtype) -> `[..., size]` in the weight's dtype
    ///
    /// `train` selects ordinary tensor ops (candle's fused RMS norm has no backward).
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let x = xs.to_dtype(DType::F32)?;
        if train {
            let ms = x.sqr()?.mean_keepdim(D::Minus1)?; // [..., 1]
            let normed = x.broadcast_div(&(ms + self.eps)?.sqrt()?)?; // [..., size]
            return normed
                .to_dtype(self.weight.dtype())?
                .broadcast_mul(&self.weight);
        }
        let w = self.weight.to_dtype(DType::F32)?;
        candle_nn::ops::rms_norm(&x.contiguous()?, &w, self.eps as f32)?
            .to_dtype(self.weight.dtype())
    }
}

/// The feed-forward (`DenseReluDense`): `wi` or the gated pair `wi_0`/`wi_1`, then `wo`.
///
/// `wo` is held in f32 when the model is in f16, as the reference keeps it
/// (`_keep_in_fp32_modules`, applied to f16 only); in bf16 it stays bf16.
#[derive(Debug, Clone)]
pub struct T5DenseActDense {
    wi: Option<Linear>,
    wi_0: Option<Linear>,
    wi_1: Option<Linear>,
    wo: Linear,
    act: Activation,
    dropout: f64,
}

impl T5DenseActDense {
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let (wi, wi_0, wi_1) = match cfg.feed_forward_proj {
            FeedForwardProj::Dense(_) => (Some(linear_no_bias(d, f, vb.pp("wi"))?), None, None),
            FeedForwardProj::Gated(_) => (
                None,
                Some(linear_no_bias(d, f, vb.pp("wi_0"))?),
                Some(linear_no_bias(d, f, vb.pp("wi_1"))?),
            ),
        };
        let wo_vb = match vb.dtype() {
            DType::F16 => vb.pp("wo").to_dtype(DType::F32),
            _ => vb.pp("wo"),
        };
        let wo = linear_no_bias(f, d, wo_vb)?;
        Ok(Self {
            wi,
            wi_0,
            wi_1,
            wo,
            act: cfg.dense_act_fn(),
            dropout: cfg.dropout_rate,
        })
    }

    /// # Shapes
    /// * `xs`: `[b, t, d_model]` -> `[b, t, d_model]` (f32 when `wo` is kept in f32)
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let h = match (&self.wi, &self.wi_0, &self.wi_1) {
            (Some(wi), _, _) => self.act.apply(&wi.forward(xs)?)?, // [b, t, d_ff]
            (None, Some(wi_0), Some(wi_1)) => {
                (self.act.apply(&wi_0.forward(xs)?)? * wi_1.forward(xs)?)? // [b, t, d_ff]
            }
            _ => unreachable!("constructed with wi or wi_0/wi_1"),
        };
        let h = dropout(&h, self.dropout, train)?;
        self.wo.forward(&h.to_dtype(self.wo.dtype())?) // [b, t, d_model]
    }
}

/// The attention projections `q`, `k`, `v`, `o` (no biases) and, in block 0 of a stack,
/// the `relative_attention_bias` table `[num_buckets, num_heads]`.
#[derive(Debug, Clone)]
pub struct T5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    relative_attention_bias: Option<Embedding>,
    n_heads: usize,
    num_buckets: usize,
    max_distance: usize,
}

impl T5Attention {
    pub fn new(cfg: &T5Config, has_relative_bias: bool, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let relative_attention_bias = if has_relative_bias {
            Some(candle_nn::embedding(
                cfg.relative_attention_num_buckets,
                cfg.num_heads,
                vb.pp("relative_attention_bias"),
            )?)
        } else {
            None
        };
        Ok(Self {
            q: linear_no_bias(cfg.d_model, inner, vb.pp("q"))?,
            k: linear_no_bias(cfg.d_model, inner, vb.pp("k"))?,
            v: linear_no_bias(cfg.d_model, inner, vb.pp("v"))?,
            o: linear_no_bias(inner, cfg.d_model, vb.pp("o"))?,
            relative_attention_bias,
            n_heads: cfg.num_heads,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
        })
    }

    /// Keys and values of `xs`, split into heads.
    ///
    /// # Shapes
    /// * `xs`: `[b, s, d_model]` -> two `[b, heads, s, d_kv]`
    pub fn key_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let k = split_heads(&self.k.forward(xs)?, self.n_heads)?;
        let v = split_heads(&self.v.forward(xs)?, self.n_heads)?;
        Ok((k, v))
    }

    /// Attends from `xs` to the given keys/values; scores are not scaled (T5 folds the
    /// scale into its initialisation).
    ///
    /// # Shapes
    /// * `xs`: `[b, t, d_model]`; `k`, `v`: `[b, heads, s, d_kv]`
    /// * `mask`: additive part broadcastable to `[b, heads, t, s]`
    /// * returns `[b, t, d_model]`
    pub fn attend(
        &self,
        xs: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: &AttnMask,
        train: bool,
    ) -> Result<Tensor> {
        let q = self.q.forward(xs)?; // [b, t, h * d_kv]
        let h = self.n_heads;
        let out = attend(&q, k, v, h, h, mask, 1.0, train)?; // [b, t, h * d_kv]
        self.o.forward(&out) // [b, t, d_model]
    }

    /// The relative position bias for `q_len` queries at positions `past..past + q_len`
    /// and `k_len` keys at `0..k_len`; `bidirectional` for the encoder.
    ///
    /// # Shapes
    /// * returns `[1, heads, q_len, k_len]`
    pub fn compute_bias(
        &self,
        q_len: usize,
        k_len: usize,
        past: usize,
        bidirectional: bool,
        device: &Device,
    ) -> Result<Tensor> {
        let table = self
            .relative_attention_bias
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("no relative_attention_bias here".into()))?;
        let buckets: Vec<u32> = (0..q_len)
            .flat_map(|i| {
                (0..k_len).map(move |j| {
                    let rel = j as i64 - (past + i) as i64;
                    relative_position_bucket(
                        rel,
                        bidirectional,
                        self.num_buckets,
                        self.max_distance,
                    )
                })
            })
            .collect();
        let buckets = Tensor::from_vec(buckets, (q_len, k_len), device)?;
        table
            .forward(&buckets)? // [q, k, h]
            .permute((2, 0, 1))?
            .unsqueeze(0) // [1, h, q, k]
    }
}

/// The bucket of a relative position `key - query`, as Mesh TensorFlow and the reference
/// compute it: exact buckets for small distances, logarithmic ones up to
/// `max_distance`, and (when `bidirectional`) separate halves for keys after the query.
/// Unidirectional buckets count only keys before the query (later ones share bucket 0).
///
/// The logarithm is taken in f32 as the reference does, so bucket edges agree.
pub fn relative_position_bucket(
    rel: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        num_buckets /= 2;
        if rel > 0 {
            bucket += num_buckets;
        }
        rel.abs()
    } else {
        -rel.min(0)
    };
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as u32;
    }
    let log_ratio = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large =
        (distance as f32 / max_exact as f32).ln() / log_ratio * (num_buckets - max_exact) as f32;
    let large = (max_exact + large as i64).min(num_buckets - 1);
    (bucket + large) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_reference() {
        // `_relative_position_bucket` of the reference (transformers 5.24) at these
        // positions, including the edges of the logarithmic buckets.
        let rel = [
            -300i64, -128, -127, -64, -45, -32, -16, -9, -8, -7, -1, 0, 1, 7, 8, 9,
        ];
        let bi: Vec<u32> = rel
            .iter()
            .map(|&r| relative_position_bucket(r, true, 32, 128))
            .collect();
        let uni: Vec<u32> = rel
            .iter()
            .map(|&r| relative_position_bucket(r, false, 32, 128))
            .collect();
        assert_eq!(
            bi,
            [15, 15, 15, 14, 12, 12, 10, 8, 8, 7, 1, 0, 17, 23, 24, 24]
        );
        assert_eq!(uni, [31, 31, 31, 26, 23, 21, 16, 9, 8, 7, 1, 0, 0, 0, 0, 0]);
        assert_eq!(relative_position_bucket(128, true, 32, 128), 31);
        assert_eq!(relative_position_bucket(45, true, 32, 128), 28);
        assert_eq!(relative_position_bucket(16, true, 32, 128), 26);
        assert_eq!(relative_position_bucket(-20, true, 8, 20), 3);
        assert_eq!(relative_position_bucket(20, true, 8, 20), 7);
    }

    #[test]
    fn layer_norm_train_and_fused_agree() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 24., &dev)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap();
        let ln = T5LayerNorm {
            weight: Tensor::new(&[1.0f32, 0.5, 2.0, -1.0], &dev).unwrap(),
            eps: 1e-6,
        };
        let a = ln.forward(&x, false).unwrap();
        let b = ln.forward(&x, true).unwrap();
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
    }
}
