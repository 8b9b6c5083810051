//! The decoding state of the decoder-only language models ([`crate::opt`],
//! [`crate::llama`]): one [`KvCache`] per layer, how many positions are cached, and the
//! 0/1 attention mask of everything seen so far.
//!
//! Keeping the mask here lets a caller pass the mask once (with the prompt, which is
//! where left padding lives) and then feed one token at a time without it: the cache
//! extends the mask with ones. Positions come from the mask, as the reference does, so a
//! left-padded row gets the same positions (and the same logits) as the row alone.

use candle_core::{bail, DType, Device, Result, Tensor, D};

use crate::attention::{min_value, AttnMask, KvCache};

/// Per-layer keys/values plus the accumulated attention mask of one generation.
///
/// Create it with the model's `new_cache()`; pass it to every `forward_embeds` call of
/// the same generation; call [`DecoderCache::select_rows`] when beam search reorders or
/// expands rows.
#[derive(Debug, Clone)]
pub struct DecoderCache {
    pub layers: Vec<KvCache>,
    seen: usize,
    /// `[batch, seen]` f32 0/1; `None` while every position so far is attended.
    mask: Option<Tensor>,
}

/// Positions of the queries of one forward call.
#[derive(Debug, Clone)]
pub enum Positions {
    /// Every row has positions `start..start + len` (no padding anywhere).
    Range { start: usize, len: usize },
    /// Per-row positions from the attention mask.
    PerRow {
        /// `[batch, len]` f32: `cumsum(mask) - 1` at attended positions, 0 at padding.
        ids: Tensor,
        /// `[batch, len]` f32 0/1: the mask of the new positions.
        keep: Tensor,
        /// An upper bound on every id (`start + len - 1`).
        max_bound: usize,
    },
}

/// What a forward call needs besides its inputs: the attention mask for every layer and
/// the positions of the new queries.
#[derive(Debug, Clone)]
pub struct StepInputs {
    pub past: usize,
    pub mask: AttnMask,
    pub positions: Positions,
}

impl DecoderCache {
    /// An empty cache for a model with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![KvCache::new(); num_layers],
            seen: 0,
            mask: None,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.seen
    }

    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// The accumulated `[batch, len]` 0/1 mask (f32), `None` when nothing is padded.
    pub fn attention_mask(&self) -> Option<&Tensor> {
        self.mask.as_ref()
    }

    /// Keeps batch rows `rows` (u32/i64 indices, repeats allowed) in every layer and in
    /// the mask; used by beam search to follow beams or expand a batch into beams.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for layer in self.layers.iter_mut() {
            layer.select_rows(rows)?;
        }
        if let Some(mask) = &self.mask {
            let mask = mask.index_select(rows, 0)?;
            // Rows that left may leave positions nobody attends to any more.
            let drop = super::rows::leading_padding(&mask)?;
            for layer in self.layers.iter_mut() {
                layer.drop_front(drop)?;
            }
            self.seen -= drop;
            let mask = mask.narrow(1, drop, mask.dim(1)? - drop)?.contiguous()?;
            self.mask = (!super::rows::all_attended(&mask)?).then_some(mask);
        }
        Ok(())
    }

    /// Puts `other`'s rows after this cache's rows: rows that joined a running batch.
    /// The shorter side is left-padded and its padding masked, so every row keeps the
    /// positions and logits it has alone.
    pub fn join(&mut self, other: DecoderCache) -> Result<()> {
        if self.layers.len() != other.layers.len() {
            bail!(
                "cannot join a cache of {} layers to one of {}",
                other.layers.len(),
                self.layers.len()
            );
        }
        let rows = |c: &DecoderCache| -> Result<usize> {
            match c.layers.first().and_then(KvCache::get) {
                Some((k, _)) => k.dim(0),
                None => Ok(0),
            }
        };
        let (ra, rb) = (rows(self)?, rows(&other)?);
        if rb == 0 {
            return Ok(());
        }
        if ra == 0 {
            *self = other;
            return Ok(());
        }
        let device = self.layers[0].get().expect("rows exist").0.device().clone();
        self.mask = super::rows::stack_masks(
            self.mask.as_ref(),
            (ra, self.seen),
            other.mask.as_ref(),
            (rb, other.seen),
            &device,
        )?;
        for (mine, theirs) in self.layers.iter_mut().zip(&other.layers) {
            mine.stack(theirs)?;
        }
        self.seen = self.seen.max(other.seen);
        Ok(())
    }

    /// Forgets everything (same number of layers).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(KvCache::clear);
        self.seen = 0;
        self.mask = None;
    }

    /// Prepares a forward call over `len` new positions of `batch` rows and records the
    /// new mask. `attention_mask`, when given, is `[batch, past + len]` and covers the
    /// cached positions too; without it the cached mask is extended with ones.
    ///
    /// Call [`DecoderCache::advance`] once every layer has appended its keys/values.
    pub fn begin_step(
        &mut self,
        attention_mask: Option<&Tensor>,
        batch: usize,
        len: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<StepInputs> {
        let past = self.seen;
        let total = past + len;
        let mask = match attention_mask {
            Some(m) => {
                let (b, k) = m.dims2()?;
                if (b, k) != (batch, total) {
                    bail!(
                        "attention_mask is [{b}, {k}] but the step needs [{batch}, {total}] \
                         ({past} cached + {len} new positions)"
                    );
                }
                let m = m.to_dtype(DType::F32)?.to_device(device)?;
                // A mask of ones is the same as no mask; dropping it keeps the fast path.
                let all_ones = m.min_all()?.to_scalar::<f32>()? >= 1.0;
                (!all_ones).then_some(m)
            }
            None => match &self.mask {
                Some(prev) => {
                    if prev.dim(0)? != batch {
                        bail!(
                            "the cache holds {} rows but the step has {batch}",
                            prev.dim(0)?
                        );
                    }
                    let ones = Tensor::ones((batch, len), DType::F32, device)?;
                    Some(Tensor::cat(&[prev, &ones], 1)?)
                }
                None => None,
            },
        };
        let (attn, positions) = match &mask {
            None => (AttnMask::causal(), Positions::Range { start: past, len }),
            Some(m) => {
                let cum = m.cumsum(D::Minus1)?; // [b, total]
                let ids = ((cum - 1.0)? * m)?.narrow(1, past, len)?.contiguous()?; // [b, len]
                let keep = m.narrow(1, past, len)?.contiguous()?; // [b, len]
                let attn = AttnMask::additive(causal_padding_mask(m, len, dtype)?); // [b,1,len,total]
                let positions = Positions::PerRow {
                    ids,
                    keep,
                    max_bound: total - 1,
                };
                (attn, positions)
            }
        };
        self.mask = mask;
        Ok(StepInputs {
            past,
            mask: attn,
            positions,
        })
    }

    /// Records that `len` positions were appended to every layer.
    pub fn advance(&mut self, len: usize) {
        self.seen += len;
    }
}

/// The additive mask for `len` queries at the end of `m`'s `[batch, total]` positions:
/// 0 where a query may look (an earlier or equal, unpadded key), the dtype's most
/// negative value elsewhere: `[batch, 1, len, total]`.
///
/// Built in one piece rather than as causal plus padding so that a query with nothing to
/// look at (a padded position at the start of a left-padded row) sees the same uniform
/// softmax as in the reference, and its logits agree too.
pub(crate) fn causal_padding_mask(m: &Tensor, len: usize, dtype: DType) -> Result<Tensor> {
    let (b, total) = m.dims2()?;
    let past = total - len;
    let tri: Vec<f32> = (0..len)
        .flat_map(|i| (0..total).map(move |j| if j <= past + i { 1.0 } else { 0.0 }))
        .collect();
    let tri = Tensor::from_vec(tri, (1, 1, len, total), m.device())?;
    // [b, 1, len, total], scaled in f64: f64's most negative value in f32 is -inf, and
    // 0 * -inf is NaN.
    let allowed = tri.broadcast_mul(&m.reshape((b, 1, 1, total))?)?;
    let allowed = allowed.to_dtype(DType::F64)?;
    (allowed.affine(-1.0, 1.0)? * min_value(dtype))?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_mask_and_the_mask_grows() {
        let dev = Device::Cpu;
        let mut cache = DecoderCache::new(1);
        let m = Tensor::new(&[[1u32, 1, 1], [0, 1, 1]], &dev).unwrap();
        let step = cache.begin_step(Some(&m), 2, 3, DType::F32, &dev).unwrap();
        match step.positions {
            Positions::PerRow { ids, .. } => assert_eq!(
                ids.to_vec2::<f32>().unwrap(),
                vec![vec![0., 1., 2.], vec![0., 0., 1.]]
            ),
            _ => panic!("padding needs per-row positions"),
        }
        cache.advance(3);
        let step = cache.begin_step(None, 2, 1, DType::F32, &dev).unwrap();
        match step.positions {
            Positions::PerRow { ids, .. } => {
                assert_eq!(ids.to_vec2::<f32>().unwrap(), vec![vec![3.], vec![2.]])
            }
            _ => panic!("the cached mask keeps per-row positions"),
        }
        assert_eq!(cache.attention_mask().unwrap().dims(), &[2, 4]);
        let rows = Tensor::new(&[1u32, 1, 0], &dev).unwrap();
        cache.select_rows(&rows).unwrap();
        assert_eq!(cache.attention_mask().unwrap().dims(), &[3, 4]);
    }

    #[test]
    fn a_mask_of_ones_keeps_the_causal_fast_path() {
        let dev = Device::Cpu;
        let mut cache = DecoderCache::new(1);
        let m = Tensor::ones((2, 4), DType::U32, &dev).unwrap();
        let step = cache.begin_step(Some(&m), 2, 4, DType::F32, &dev).unwrap();
        assert!(step.mask.causal && step.mask.additive.is_none());
        assert!(matches!(
            step.positions,
            Positions::Range { start: 0, len: 4 }
        ));
        assert!(cache.begin_step(Some(&m), 2, 3, DType::F32, &dev).is_err());
    }

    #[test]
    fn joined_rows_keep_their_positions_and_leaving_rows_take_their_padding() {
        let dev = Device::Cpu;
        let kv = |rows: usize, len: usize| {
            let mut c = DecoderCache::new(1);
            let t = Tensor::ones((rows, 2, len, 4), DType::F32, &dev).unwrap();
            c.layers[0].append(&t, &t).unwrap();
            c.advance(len);
            c
        };
        let mut running = kv(1, 5);
        running.join(kv(2, 2)).unwrap();
        assert_eq!(running.len(), 5);
        assert_eq!(running.layers[0].get().unwrap().0.dims(), &[3, 2, 5, 4]);
        let step = running.begin_step(None, 3, 1, DType::F32, &dev).unwrap();
        let new = Tensor::ones((3, 2, 1, 4), DType::F32, &dev).unwrap();
        running.layers[0].append(&new, &new).unwrap();
        running.advance(1);
        match step.positions {
            Positions::PerRow { ids, .. } => assert_eq!(
                ids.to_vec2::<f32>().unwrap(),
                vec![vec![5.], vec![2.], vec![2.]]
            ),
            _ => panic!("joined rows need per-row positions"),
        }
        // The long row leaves: the three columns only it attended go too.
        running
            .select_rows(&Tensor::new(&[1u32, 2], &dev).unwrap())
            .unwrap();
        assert_eq!(running.len(), 3);
        assert!(running.attention_mask().is_none());
        assert_eq!(running.layers[0].get().unwrap().0.dims(), &[2, 2, 3, 4]);
    }
}
