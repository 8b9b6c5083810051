//! Rotary position embeddings (RoFormer, <https://arxiv.org/abs/2104.09864>) in the
//! "rotate half" layout that LLaMA checkpoints use, with the reference's frequency
//! scalings (`transformers` `modeling_rope_utils.py`): `default`, `linear`, `dynamic`
//! (NTK-aware, recomputed when positions pass `max_position_embeddings`) and `llama3`.
//!
//! The cos/sin tables for positions `0..max_position_embeddings` are computed once at
//! construction; positions beyond the table, and dynamic scaling past the trained
//! length, compute their rows on the fly from the inverse frequencies.

use candle_core::{DType, Device, Result, Tensor, D};
use serde::Deserialize;

use crate::decoder::Positions;

/// A RoPE variant and its parameters, resolved from a config's `rope_parameters`
/// (transformers 5) or `rope_theta` + `rope_scaling` (earlier files).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    Default,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// The base grows with the sequence once it passes `max_position_embeddings`.
    Dynamic {
        factor: f64,
    },
    /// Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp
    /// between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

/// The raw `rope_parameters` / `rope_scaling` object of a config.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    pub rope_type: Option<String>,
    /// The pre-2024 spelling of `rope_type`.
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub partial_rotary_factor: Option<f64>,
}

impl RopeParameters {
    /// Resolves the variant; unknown or unsupported types are an error naming them.
    pub fn scaling(&self, max_position_embeddings: usize) -> Result<RopeScaling> {
        let kind = self
            .rope_type
            .as_deref()
            .or(self.legacy_type.as_deref())
            .unwrap_or("default");
        let factor = || {
            self.factor.ok_or_else(|| {
                candle_core::Error::Msg(format!("rope type `{kind}` needs a `factor`"))
            })
        };
        if self.partial_rotary_factor.is_some_and(|f| f != 1.0) {
            candle_core::bail!("partial_rotary_factor other than 1.0 is not supported by LLaMA");
        }
        Ok(match kind {
            "default" => RopeScaling::Default,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "dynamic" => RopeScaling::Dynamic { factor: factor()? },
            "llama3" => RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: self.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: self.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: self
                    .original_max_position_embeddings
                    .unwrap_or(max_position_embeddings),
            },
            other => candle_core::bail!(
                "unsupported rope type `{other}` (supported: default, linear, dynamic, llama3)"
            ),
        })
    }
}

/// Precomputed cos/sin tables and the inverse frequencies behind them.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    scaling: RopeScaling,
    theta: f64,
    head_dim: usize,
    max_position_embeddings: usize,
    inv_freq: Vec<f32>,
    /// `[max_position_embeddings, head_dim / 2]` in the model dtype.
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
}

/// `1 / base^(2i / dim)` in f32, as the reference computes it.
fn base_inv_freq(base: f64, dim: usize) -> Vec<f32> {
    (0..dim / 2)
        .map(|i| 1.0 / (base as f32).powf((2 * i) as f32 / dim as f32))
        .collect()
}

impl RotaryEmbedding {
    pub fn new(
        scaling: RopeScaling,
        theta: f64,
        head_dim: usize,
        max_position_embeddings: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut inv_freq = base_inv_freq(theta, head_dim);
        match &scaling {
            RopeScaling::Default | RopeScaling::Dynamic { .. } => {}
            RopeScaling::Linear { factor } => {
                inv_freq.iter_mut().for_each(|f| *f /= *factor as f32);
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = *original_max_position_embeddings as f32;
                let (factor, lo, hi) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    if wavelen > low_wavelen {
                        *f /= factor;
                    } else if wavelen >= high_wavelen {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        *f = (1.0 - smooth) * *f / factor + smooth * *f;
                    }
                }
            }
        }
        let positions: Vec<f32> = (0..max_position_embeddings).map(|p| p as f32).collect();
        let (cos, sin) = cos_sin(&positions, &inv_freq, device)?;
        Ok(Self {
            scaling,
            theta,
            head_dim,
            max_position_embeddings,
            inv_freq,
            cos: cos.to_dtype(dtype)?,
            sin: sin.to_dtype(dtype)?,
            dtype,
        })
    }

    /// cos and sin for the queries at `positions`: `[len, head_dim / 2]` when every row
    /// shares them, `[batch, len, head_dim / 2]` otherwise.
    pub fn cos_sin(&self, positions: &Positions) -> Result<(Tensor, Tensor)> {
        let device = self.cos.device();
        match positions {
            Positions::Range { start, len } => {
                let end = start + len;
                match self.inv_freq_for(end)? {
                    None if end <= self.max_position_embeddings => Ok((
                        self.cos.narrow(0, *start, *len)?,
                        self.sin.narrow(0, *start, *len)?,
                    )),
                    inv => {
                        let inv = inv.unwrap_or_else(|| self.inv_freq.clone());
                        let pos: Vec<f32> = (*start..end).map(|p| p as f32).collect();
                        let (c, s) = cos_sin(&pos, &inv, device)?;
                        Ok((c.to_dtype(self.dtype)?, s.to_dtype(self.dtype)?))
                    }
                }
            }
            Positions::PerRow { ids, max_bound, .. } => {
                let (b, t) = ids.dims2()?;
                // Dynamic scaling depends on the exact largest position (one host read).
                let seq_len = match self.scaling {
                    RopeScaling::Dynamic { .. } if *max_bound >= self.max_position_embeddings => {
                        ids.max_all()?.to_scalar::<f32>()? as usize + 1
                    }
                    _ => max_bound + 1,
                };
                match self.inv_freq_for(seq_len)? {
                    None if seq_len <= self.max_position_embeddings => {
                        let flat = ids.to_dtype(DType::U32)?.flatten_all()?; // [b*t]
                        let half = self.head_dim / 2;
                        let c = self.cos.index_select(&flat, 0)?.reshape((b, t, half))?;
                        let s = self.sin.index_select(&flat, 0)?.reshape((b, t, half))?;
                        Ok((c, s))
                    }
                    inv => {
                        let inv = inv.unwrap_or_else(|| self.inv_freq.clone());
                        let pos = ids.flatten_all()?.to_vec1::<f32>()?;
                        let (c, s) = cos_sin(&pos, &inv, device)?;
                        let half = self.head_dim / 2;
                        Ok((
                            c.reshape((b, t, half))?.to_dtype(self.dtype)?,
                            s.reshape((b, t, half))?.to_dtype(self.dtype)?,
                        ))
                    }
                }
            }
        }
    }

    /// Inverse frequencies that differ from the table's: dynamic NTK scaling past the
    /// trained length (`None` otherwise).
    fn inv_freq_for(&self, seq_len: usize) -> Result<Option<Vec<f32>>> {
        match self.scaling {
            RopeScaling::Dynamic { factor } if seq_len > self.max_position_embeddings => {
                let dim = self.head_dim as f64;
                let ratio = factor * seq_len as f64 / self.max_position_embeddings as f64;
                let base = self.theta * (ratio - (factor - 1.0)).powf(dim / (dim - 2.0));
                Ok(Some(base_inv_freq(base, self.head_dim)))
            }
            _ => Ok(None),
        }
    }
}

/// `cos(p * f)`, `sin(p * f)` for every position `p` and frequency `f`, in f32:
/// `[positions, freqs]` each.
fn cos_sin(positions: &[f32], inv_freq: &[f32], device: &Device) -> Result<(Tensor, Tensor)> {
    let n = positions.len();
    let half = inv_freq.len();
    let mut c = Vec::with_capacity(n * half);
    let mut s = Vec::with_capacity(n * half);
    for p in positions {
        for f in inv_freq {
            let angle = p * f;
            c.push(angle.cos());
            s.push(angle.sin());
        }
    }
    Ok((
        Tensor::from_vec(c, (n, half), device)?,
        Tensor::from_vec(s, (n, half), device)?,
    ))
}

/// Rotates `x` (`[batch, heads, len, head_dim]`, contiguous) by cos/sin from
/// [`RotaryEmbedding::cos_sin`]. `train` selects plain tensor ops, which record a
/// backward pass (candle's fused `rope` does not).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor, train: bool) -> Result<Tensor> {
    if !train {
        return candle_nn::rotary_emb::rope(&x.contiguous()?, cos, sin);
    }
    // Broadcast cos/sin to [batch or 1, 1, len, head_dim].
    let expand = |t: &Tensor| -> Result<Tensor> {
        let full = Tensor::cat(&[t, t], D::Minus1)?;
        match full.rank() {
            2 => full.unsqueeze(0)?.unsqueeze(0),
            _ => full.unsqueeze(1),
        }
    };
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?; // [b, h, t, d]
    x.broadcast_mul(&expand(cos)?)? + rotated.broadcast_mul(&expand(sin)?)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_rope_types_are_named() {
        let p: RopeParameters =
            serde_json::from_str(r#"{"rope_type": "yarn", "factor": 2.0}"#).unwrap();
        let err = p.scaling(128).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
        let p: RopeParameters =
            serde_json::from_str(r#"{"type": "linear", "factor": 2.0}"#).unwrap();
        assert_eq!(p.scaling(128).unwrap(), RopeScaling::Linear { factor: 2.0 });
    }

    #[test]
    fn fused_and_differentiable_rope_agree_and_tables_match_on_the_fly_rows() {
        let dev = Device::Cpu;
        let rope =
            RotaryEmbedding::new(RopeScaling::Default, 500.0, 8, 16, DType::F32, &dev).unwrap();
        let x = Tensor::arange(0f32, 2. * 3. * 5. * 8., &dev)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((2, 3, 5, 8))
            .unwrap();
        let ids = Tensor::new(&[[0f32, 1., 2., 3., 4.], [0., 0., 1., 2., 3.]], &dev).unwrap();
        let keep = ids.ones_like().unwrap();
        // Within the table (gather) and past it (computed on the fly).
        for bound in [4usize, 20] {
            let pos = Positions::PerRow {
                ids: ids.clone(),
                keep: keep.clone(),
                max_bound: bound,
            };
            let (c, s) = rope.cos_sin(&pos).unwrap();
            let a = apply_rope(&x, &c, &s, false).unwrap();
            let b = apply_rope(&x, &c, &s, true).unwrap();
            let d = (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-6, "{d}");
        }
        let (c, _) = rope
            .cos_sin(&Positions::Range { start: 14, len: 4 })
            .unwrap();
        let (t, _) = rope
            .cos_sin(&Positions::Range { start: 14, len: 2 })
            .unwrap();
        let d = (c.narrow(0, 0, 2).unwrap() - t)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-6);
    }
}
