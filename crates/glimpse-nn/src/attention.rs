//! Scaled dot-product attention shared by every model in Glimpse.
//!
//! Models differ in how they name and lay out their projections (CLIP's `q_proj`,
//! BERT's `self.query`, BLIP-ViT's fused `qkv`), but not in what happens after: split
//! heads, score, mask, softmax, weight the values, merge heads. That part lives here
//! once, and so do the caches:
//!
//! * [`KvCache`] grows by appending keys/values for self-attention while decoding;
//! * the same type, filled once with [`KvCache::set`], holds the keys/values of an
//!   encoder (an image) for cross-attention, so they are projected once per image and
//!   not once per generated token.
//!
//! Caches are arguments, never fields of a module, so one loaded model serves any
//! number of concurrent generations and the forward path is the same for training
//! and inference.

use candle_core::{DType, Device, Result, Tensor, D};

/// How queries may look at keys.
///
/// `causal` hides future keys; `additive`, when present, is added to the scores and
/// must broadcast to `[batch, heads, q_len, k_len]` (use [`padding_mask`] to make one
/// from a 0/1 attention mask). Both can be combined.
#[derive(Debug, Clone, Default)]
pub struct AttnMask {
    pub causal: bool,
    pub additive: Option<Tensor>,
}

impl AttnMask {
    /// Every query sees every key.
    pub fn none() -> Self {
        Self::default()
    }

    /// Each query sees itself and earlier keys (keys already in a cache count as earlier).
    pub fn causal() -> Self {
        Self {
            causal: true,
            additive: None,
        }
    }

    /// An additive mask, broadcastable to `[batch, heads, q_len, k_len]`.
    pub fn additive(mask: Tensor) -> Self {
        Self {
            causal: false,
            additive: Some(mask),
        }
    }

    /// This mask with an additive part added (e.g. causal plus key padding).
    pub fn with_additive(mut self, mask: Tensor) -> Result<Self> {
        self.additive = Some(match self.additive.take() {
            Some(existing) => existing.broadcast_add(&mask)?,
            None => mask,
        });
        Ok(self)
    }
}

/// Turns a `[batch, k_len]` 0/1 attention mask into an additive `[batch, 1, 1, k_len]`
/// mask: 0 where attending is allowed, the dtype's most negative finite value elsewhere
/// (as the reference does, so a fully masked row gives a uniform softmax, not NaN).
pub fn padding_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, k) = attention_mask.dims2()?;
    // Built in f64: f64's most negative value in f32 is -inf, and 0 * -inf is NaN.
    let keep = attention_mask.to_dtype(DType::F64)?; // [b, k]
    let blocked = (keep.affine(-1.0, 1.0)? * min_value(dtype))?; // [b, k]
    blocked.to_dtype(dtype)?.reshape((b, 1, 1, k))
}

/// The most negative finite value of a float dtype, as used by the reference for masks.
pub fn min_value(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.389_531_4e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

/// Additive causal mask `[q_len, k_len]` for queries that sit at the end of `k_len`
/// keys (the first `k_len - q_len` keys come from a cache).
pub fn causal_mask(q_len: usize, k_len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let offset = k_len - q_len;
    let neg = min_value(dtype);
    let values: Vec<f64> = (0..q_len)
        .flat_map(|i| (0..k_len).map(move |j| if j <= offset + i { 0.0 } else { neg }))
        .collect();
    Tensor::from_vec(values, (q_len, k_len), device)?.to_dtype(dtype)
}

/// `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]` (contiguous).
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = x.dims3()?;
    x.reshape((b, t, heads, hd / heads))?
        .transpose(1, 2)?
        .contiguous()
}

/// `[batch, heads, seq, head_dim]` -> `[batch, seq, heads * head_dim]`.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * d))
}

/// Scaled dot-product attention over split heads.
///
/// # Shapes
/// * `q`: `[batch, heads, q_len, head_dim]`
/// * `k`, `v`: `[batch, kv_heads, k_len, head_dim]`, `heads` a multiple of `kv_heads`
///   (grouped-query attention repeats each key/value head)
/// * returns `[batch, heads, q_len, head_dim]`
///
/// `train` selects a softmax that records a backward pass (candle's fused one does not).
pub fn sdpa(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &AttnMask,
    scale: f64,
    train: bool,
) -> Result<Tensor> {
    let (_, heads, q_len, _) = q.dims4()?;
    let (_, kv_heads, k_len, _) = k.dims4()?;
    let (k, v) = if kv_heads != heads {
        let rep = heads / kv_heads;
        (repeat_kv(k, rep)?, repeat_kv(v, rep)?)
    } else {
        (k.clone(), v.clone())
    };
    let q = (q * scale)?;
    let mut scores = q.matmul(&k.t()?)?; // [b, h, q, k]
    if mask.causal && q_len > 1 {
        let cm = causal_mask(q_len, k_len, scores.dtype(), scores.device())?;
        scores = scores.broadcast_add(&cm)?;
    }
    if let Some(add) = &mask.additive {
        scores = scores.broadcast_add(&add.to_dtype(scores.dtype())?)?;
    }
    let probs = if train {
        candle_nn::ops::softmax(&scores, D::Minus1)?
    } else {
        candle_nn::ops::softmax_last_dim(&scores)?
    };
    probs.matmul(&v.contiguous()?) // [b, h, q, d]
}

/// Multi-head attention with the heads merged in the output: [`sdpa`] between
/// [`split_heads`] and [`merge_heads`], or the fused CPU kernel
/// ([`kernels::attention`](crate::kernels::attention)) for inference in f32, which reads
/// the heads where they lie and applies the mask without building it.
///
/// # Shapes
/// * `q`: `[batch, q_len, heads * head_dim]` or `[batch, heads, q_len, head_dim]`
/// * `k`, `v`: the same with `kv_heads` heads and `k_len` positions
/// * returns `[batch, q_len, heads * head_dim]`
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    mask: &AttnMask,
    scale: f64,
    train: bool,
) -> Result<Tensor> {
    if !train {
        let fused = crate::kernels::attention(
            q,
            k,
            v,
            heads,
            kv_heads,
            mask.causal,
            mask.additive.as_ref(),
            scale,
        )?;
        if let Some(out) = fused {
            return Ok(out);
        }
    }
    // Split heads may be views only the fused kernel reads (a batch broadcast with stride
    // 0, e.g. one image's cross-attention keys for every beam): the plain path copies.
    let split = |x: &Tensor, h: usize| {
        if x.rank() == 3 {
            split_heads(x, h)
        } else if x.dim(0)? > 1 && x.stride()[0] == 0 {
            x.contiguous()
        } else {
            Ok(x.clone())
        }
    };
    let (q, k, v) = (split(q, heads)?, split(k, kv_heads)?, split(v, kv_heads)?);
    merge_heads(&sdpa(&q, &k, &v, mask, scale, train)?)
}

/// `[b, kv_heads, t, d]` -> `[b, kv_heads * rep, t, d]`, each head repeated `rep` times.
pub fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?
        .expand((b, h, rep, t, d))?
        .reshape((b, h * rep, t, d))
}

/// Keys and values of one attention layer, `[batch, kv_heads, len, head_dim]` each.
///
/// For self-attention it grows with [`KvCache::append`]; for cross-attention it is
/// filled once with [`KvCache::set`] and read with [`KvCache::get`].
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.k.as_ref().map(|k| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.k.is_none()
    }

    /// Appends new keys/values along the sequence and returns everything cached.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            _ => (k.clone(), v.clone()),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }

    /// Replaces the content (cross-attention keys/values computed once).
    pub fn set(&mut self, k: Tensor, v: Tensor) {
        self.k = Some(k);
        self.v = Some(v);
    }

    /// The cached keys and values, if any.
    pub fn get(&self) -> Option<(&Tensor, &Tensor)> {
        match (&self.k, &self.v) {
            (Some(k), Some(v)) => Some((k, v)),
            _ => None,
        }
    }

    /// Keeps batch rows `rows` (a u32/i64 index tensor), in that order; used by beam
    /// search to follow surviving beams and to expand a batch into beams.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            self.k = Some(k.index_select(rows, 0)?);
            self.v = Some(v.index_select(rows, 0)?);
        }
        Ok(())
    }

    pub fn clear(&mut self) {
        self.k = None;
        self.v = None;
    }

    /// Drops the first `n` cached positions of every row (positions that every row
    /// masks out, left behind by rows that left the batch).
    pub fn drop_front(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if let (Some(k), Some(v)) = (&self.k, &self.v) {
            let len = k.dim(2)?;
            self.k = Some(k.narrow(2, n, len - n)?.contiguous()?);
            self.v = Some(v.narrow(2, n, len - n)?.contiguous()?);
        }
        Ok(())
    }

    /// Puts `other`'s rows after this cache's rows, first left-padding the shorter of
    /// the two with zeros so that both hold `max(len)` positions (the caller masks the
    /// padding out). Rows joining a running batch arrive this way.
    pub fn stack(&mut self, other: &KvCache) -> Result<()> {
        let (Some((ok, ov)), Some((k, v))) =
            (other.get(), self.get().map(|(k, v)| (k.clone(), v.clone())))
        else {
            if self.is_empty() {
                self.k = other.k.clone();
                self.v = other.v.clone();
            }
            return Ok(());
        };
        let len = k.dim(2)?.max(ok.dim(2)?);
        let pad = |t: &Tensor| -> Result<Tensor> {
            let (b, h, n, d) = t.dims4()?;
            if n == len {
                return Ok(t.clone());
            }
            let zeros = Tensor::zeros((b, h, len - n, d), t.dtype(), t.device())?;
            Tensor::cat(&[&zeros, t], 2)
        };
        self.k = Some(Tensor::cat(&[&pad(&k)?, &pad(ok)?], 0)?);
        self.v = Some(Tensor::cat(&[&pad(&v)?, &pad(ov)?], 0)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};

    #[test]
    fn cached_causal_decoding_equals_full_causal_attention() {
        let (b, h, t, d) = (2, 4, 7, 8);
        let q = rand(&[b, h, t, d], 1);
        let k = rand(&[b, h, t, d], 2);
        let v = rand(&[b, h, t, d], 3);
        let full = sdpa(&q, &k, &v, &AttnMask::causal(), 0.35, false).unwrap();

        // Prefill 3 positions, then one position at a time.
        let mut cache = KvCache::new();
        let mut outs = Vec::new();
        let (k0, v0) = cache
            .append(&k.narrow(2, 0, 3).unwrap(), &v.narrow(2, 0, 3).unwrap())
            .unwrap();
        outs.push(
            sdpa(
                &q.narrow(2, 0, 3).unwrap(),
                &k0,
                &v0,
                &AttnMask::causal(),
                0.35,
                false,
            )
            .unwrap(),
        );
        for i in 3..t {
            let (ki, vi) = cache
                .append(&k.narrow(2, i, 1).unwrap(), &v.narrow(2, i, 1).unwrap())
                .unwrap();
            outs.push(
                sdpa(
                    &q.narrow(2, i, 1).unwrap(),
                    &ki,
                    &vi,
                    &AttnMask::causal(),
                    0.35,
                    false,
                )
                .unwrap(),
            );
        }
        let stepped = Tensor::cat(&outs, 2).unwrap();
        assert!(max_diff(&full, &stepped) < 1e-6);
        assert_eq!(cache.len(), t);
    }

    #[test]
    fn padding_mask_hides_padded_keys() {
        let (b, h, t, d) = (1, 2, 4, 8);
        let q = rand(&[b, h, 1, d], 4);
        let k = rand(&[b, h, t, d], 5);
        let v = rand(&[b, h, t, d], 6);
        let am = Tensor::new(&[[1u32, 1, 0, 0]], &Device::Cpu).unwrap();
        let masked = sdpa(
            &q,
            &k,
            &v,
            &AttnMask::additive(padding_mask(&am, DType::F32).unwrap()),
            0.5,
            false,
        )
        .unwrap();
        let truncated = sdpa(
            &q,
            &k.narrow(2, 0, 2).unwrap(),
            &v.narrow(2, 0, 2).unwrap(),
            &AttnMask::none(),
            0.5,
            false,
        )
        .unwrap();
        assert!(max_diff(&masked, &truncated) < 1e-6);
    }

    #[test]
    fn grouped_query_attention_repeats_heads() {
        let q = rand(&[1, 4, 3, 8], 7);
        let k = rand(&[1, 2, 3, 8], 8);
        let v = rand(&[1, 2, 3, 8], 9);
        let gqa = sdpa(&q, &k, &v, &AttnMask::causal(), 0.3, false).unwrap();
        let full = sdpa(
            &q,
            &repeat_kv(&k, 2).unwrap(),
            &repeat_kv(&v, 2).unwrap(),
            &AttnMask::causal(),
            0.3,
            false,
        )
        .unwrap();
        assert!(max_diff(&gqa, &full) < 1e-7);
    }

    #[test]
    fn train_softmax_matches_fused_softmax() {
        let q = rand(&[2, 2, 5, 4], 10);
        let k = rand(&[2, 2, 5, 4], 11);
        let v = rand(&[2, 2, 5, 4], 12);
        let a = sdpa(&q, &k, &v, &AttnMask::causal(), 0.5, false).unwrap();
        let b = sdpa(&q, &k, &v, &AttnMask::causal(), 0.5, true).unwrap();
        assert!(max_diff(&a, &b) < 1e-6);
    }
}
