//! Multi-head attention over q/k/v read in place (split or still merged heads, any row
//! stride), with the causal and additive masks applied per row of scores: on our own
//! tiles (`attend`) where they fit, on `gemm` per block of queries elsewhere.

use candle_core::{DType, Layout, Result, Tensor};
use rayon::prelude::*;

use super::attend;
use super::dispatch::{eligible, tiled};
use super::softmax::softmax_row;
use super::{f32_data, reserve, threads, written, SharedMut};

/// Where heads sit in a q/k/v tensor: element offset and strides per batch, head and
/// position (the feature stride is 1).
#[derive(Debug, Clone, Copy)]
struct Heads {
    batch: usize,
    len: usize,
    dim: usize,
    sb: usize,
    sh: usize,
    st: usize,
}

impl Heads {
    /// `[batch, heads, len, dim]` with any strides but a unit feature stride, or
    /// `[batch, len, heads * dim]` (heads not split yet) with a unit feature stride.
    fn of(layout: &Layout, heads: usize) -> Option<Self> {
        let (d, s) = (layout.dims(), layout.stride());
        match (d, s) {
            (&[b, h, t, hd], &[sb, sh, st, 1]) if h == heads => Some(Self {
                batch: b,
                len: t,
                dim: hd,
                sb,
                sh,
                st,
            }),
            (&[b, t, w], &[sb, st, 1]) if heads > 0 && w % heads == 0 => Some(Self {
                batch: b,
                len: t,
                dim: w / heads,
                sb,
                sh: w / heads,
                st,
            }),
            _ => None,
        }
    }
}

/// A row of scores into attention weights: `row[j] += mask[j * stride]` where a mask
/// is given, then softmax over the first `visible` keys, and zero for the rest (keys a
/// causal query does not see).
///
/// # Safety
/// The mask pointer, where given, is valid for `visible` values `stride` apart.
pub(super) unsafe fn weigh_row(row: &mut [f32], visible: usize, mask: Option<(*const f32, usize)>) {
    if let Some((m, stride)) = mask {
        for (j, s) in row[..visible].iter_mut().enumerate() {
            *s += *m.add(j * stride);
        }
    }
    softmax_row(&mut row[..visible]);
    row[visible..].fill(0.0);
}

/// Queries per task: scores for this many rows are held at once.
const QUERY_BLOCK: usize = 64;

/// Multi-head attention, `softmax(scale * q k^T + mask) v`, with heads merged in the
/// output.
///
/// `q` has `heads` heads and `k`, `v` have `kv_heads` (grouped-query attention when
/// fewer), each either split `[batch, heads, len, head_dim]` (any strides) or still
/// merged `[batch, len, heads * head_dim]` (any row stride, e.g. a slice of a fused qkv
/// projection). `causal` hides keys after each query's position, the queries being the
/// last `q_len` of `k_len` positions; `additive` must broadcast to
/// `[batch, heads, q_len, k_len]`.
///
/// Returns `[batch, q_len, heads * head_dim]`, contiguous.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    causal: bool,
    additive: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !eligible(&[q, k, v]) || heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Ok(None);
    }
    let (Some(qh), Some(kh), Some(vh)) = (
        Heads::of(q.layout(), heads),
        Heads::of(k.layout(), kv_heads),
        Heads::of(v.layout(), kv_heads),
    ) else {
        return Ok(None);
    };
    let (b, tq, tk, d) = (qh.batch, qh.len, kh.len, qh.dim);
    if kh.batch != b || vh.batch != b || kh.dim != d || vh.dim != d || vh.len != tk {
        return Ok(None);
    }
    if tk == 0 || d == 0 || tq == 0 || (causal && tk < tq) {
        return Ok(None);
    }
    // The mask as f32 with broadcast strides: element (b, h, i, j) at the dot product.
    let mask = match additive {
        Some(m) => {
            let m = m.to_dtype(DType::F32)?.broadcast_as((b, heads, tq, tk))?;
            if !m.device().is_cpu() {
                return Ok(None);
            }
            Some(m)
        }
        None => None,
    };
    let group = heads / kv_heads;
    let width = heads * d;
    let mut out = reserve(b * tq * width);
    let dst = SharedMut(out.as_mut_ptr());
    let q_blocks = tq.div_ceil(QUERY_BLOCK);
    let offset = tk - tq.min(tk);
    let scale = scale as f32;

    // Our own kernels for long runs of queries (encoders, prefill), as tasks of one head
    // and a run of its queries, at least two tasks per thread.
    let chunks = (2 * threads())
        .div_ceil(b * heads)
        .min(tq / attend::MIN_QUERIES)
        .max(1);
    let per = tq.div_ceil(chunks);
    let own = cfg!(target_arch = "x86_64") && tiled() && attend::fits(per, d);
    // Fewer queries (decoding): one task per head, dot products, no layout.
    let few = !own && cfg!(target_arch = "x86_64") && tiled() && attend::fits_few(tq, d);
    // (Then `tq < MIN_QUERIES`, so `chunks` is 1 and `per` is `tq`.)

    let run = |qs: &[f32], ks: &[f32], vs: &[f32], ms: Option<(&[f32], &[usize])>| {
        #[cfg(target_arch = "x86_64")]
        if own || few {
            (0..b * heads * chunks).into_par_iter().for_each(|task| {
                let (bh, c) = (task / chunks, task % chunks);
                let (bi, hi) = (bh / heads, bh % heads);
                let kvh = hi / group;
                let i0 = c * per;
                if i0 >= tq {
                    return;
                }
                let task = attend::Head {
                    // SAFETY (the offsets): inside the tensors, as the layouts give them.
                    q: unsafe { qs.as_ptr().add(bi * qh.sb + hi * qh.sh + i0 * qh.st) },
                    qst: qh.st,
                    k: unsafe { ks.as_ptr().add(bi * kh.sb + kvh * kh.sh) },
                    kst: kh.st,
                    v: unsafe { vs.as_ptr().add(bi * vh.sb + kvh * vh.sh) },
                    vst: vh.st,
                    keys: tk,
                    dim: d,
                    rows: per.min(tq - i0),
                    first: i0,
                    causal,
                    offset,
                    scale,
                    mask: ms.map(|(m, s)| {
                        let at = bi * s[0] + hi * s[1] + i0 * s[2];
                        (unsafe { m.as_ptr().add(at) }, s[2], s[3])
                    }),
                    out: dst.at(bi * tq * width + i0 * width + hi * d),
                    ldo: width,
                };
                // SAFETY: AVX2 and FMA present and `d` a multiple of 16 (`fits`,
                // `fits_few`); the task writes rows i0..i0+rows of head hi of batch bi only.
                unsafe { attend::run(&task, own) };
            });
            return;
        }
        (0..b * heads * q_blocks).into_par_iter().for_each(|task| {
            let (bh, qb) = (task / q_blocks, task % q_blocks);
            let (bi, hi) = (bh / heads, bh % heads);
            let kvh = hi / group;
            let i0 = qb * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(tq - i0);
            let mut scores = reserve(rows * tk);
            let q0 = bi * qh.sb + hi * qh.sh + i0 * qh.st;
            let k0 = bi * kh.sb + kvh * kh.sh;
            let v0 = bi * vh.sb + kvh * vh.sh;
            // SAFETY: the reads stay inside the tensors (their layouts give the strides),
            // and the write covers rows i0..i0+rows of head hi of batch bi only.
            unsafe {
                gemm::gemm(
                    rows,
                    tk,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    tk as isize,
                    false,
                    qs.as_ptr().add(q0),
                    1,
                    qh.st as isize,
                    ks.as_ptr().add(k0),
                    kh.st as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            // SAFETY: the product (no `read_dst`) wrote all rows x tk scores.
            let mut scores = unsafe { written(scores, rows * tk) };
            for r in 0..rows {
                let i = i0 + r;
                let row = &mut scores[r * tk..(r + 1) * tk];
                let visible = if causal { (offset + i + 1).min(tk) } else { tk };
                let mask = ms.map(|(m, ms)| {
                    let base = bi * ms[0] + hi * ms[1] + i * ms[2];
                    (m[base..].as_ptr(), ms[3])
                });
                // SAFETY: the mask's layout gives key j of this row at base + j * ms[3].
                unsafe { weigh_row(row, visible, mask) };
            }
            // SAFETY: as above; the output rows are `width` apart, this head's columns
            // are hi*d..(hi+1)*d.
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    tk,
                    dst.at(bi * tq * width + i0 * width + hi * d),
                    1,
                    width as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    tk as isize,
                    vs.as_ptr().add(v0),
                    1,
                    vh.st as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    };
    let (qg, ql) = q.storage_and_layout();
    let (kg, kl) = k.storage_and_layout();
    let (vg, vl) = v.storage_and_layout();
    let mg = mask.as_ref().map(|m| m.storage_and_layout());
    let (qs, ks, vs) = (f32_data(&qg, ql)?, f32_data(&kg, kl)?, f32_data(&vg, vl)?);
    let ms = match &mg {
        Some((g, l)) => Some((f32_data(g, l)?, l.stride())),
        None => None,
    };
    run(qs, ks, vs, ms);
    // SAFETY: the tasks cover every (batch, head, query block), each writing its rows'
    // head_dim columns of that head.
    let out = unsafe { written(out, b * tq * width) };
    Ok(Some(Tensor::from_vec(out, (b, tq, width), q.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{merge_heads, sdpa, split_heads, AttnMask};
    use crate::test_util::{max_diff, rand};
    use candle_core::Device;

    /// The plain path: split heads, `sdpa` at scale 0.3 (every test here uses it), merge.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        kv_heads: usize,
        mask: &AttnMask,
    ) -> Tensor {
        let split = |x: &Tensor, h| {
            if x.rank() == 3 {
                split_heads(x, h).unwrap()
            } else {
                x.contiguous().unwrap()
            }
        };
        let (q, k, v) = (split(q, heads), split(k, kv_heads), split(v, kv_heads));
        merge_heads(&sdpa(&q, &k, &v, mask, 0.3, false).unwrap()).unwrap()
    }

    #[test]
    fn attention_matches_sdpa_on_every_layout_and_mask() {
        let (b, t, h, d) = (2, 70, 4, 16); // 70 queries: two query blocks
                                           // A fused qkv projection, sliced without copying.
        let qkv = rand(&[b, t, 3 * h * d], 10);
        let q = qkv.narrow(2, 0, h * d).unwrap();
        let k = qkv.narrow(2, h * d, h * d).unwrap();
        let v = qkv.narrow(2, 2 * h * d, h * d).unwrap();
        let none = attention(&q, &k, &v, h, h, false, None, 0.3)
            .unwrap()
            .unwrap();
        assert!(max_diff(&reference(&q, &k, &v, h, h, &AttnMask::none()), &none) < 1e-5);
        let causal = attention(&q, &k, &v, h, h, true, None, 0.3)
            .unwrap()
            .unwrap();
        assert!(max_diff(&reference(&q, &k, &v, h, h, &AttnMask::causal()), &causal) < 1e-5);

        // Key padding, the reference's way: the most negative f32 where masked.
        let keep = Tensor::from_vec(
            (0..b * t)
                .map(|i| u32::from(i % t < t - 9 * (i / t)))
                .collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )
        .unwrap();
        let pad = crate::attention::padding_mask(&keep, DType::F32).unwrap();
        let padded = attention(&q, &k, &v, h, h, true, Some(&pad), 0.3)
            .unwrap()
            .unwrap();
        let mask = AttnMask::causal().with_additive(pad.clone()).unwrap();
        assert!(max_diff(&reference(&q, &k, &v, h, h, &mask), &padded) < 1e-5);

        // Split heads with a cache-like key length and grouped-query attention: the
        // last 3 of 70 positions query 2 key/value heads.
        let q4 = rand(&[b, h, 3, d], 11);
        let k4 = rand(&[b, 2, t, d], 12);
        // A transposed view has no unit feature stride: declined, then taken contiguous.
        let v4 = rand(&[b, 2, d, t], 13).transpose(2, 3).unwrap();
        assert!(attention(&q4, &k4, &v4, h, 2, true, None, 0.3)
            .unwrap()
            .is_none());
        let v4 = v4.contiguous().unwrap();
        let gqa = attention(&q4, &k4, &v4, h, 2, true, None, 0.3)
            .unwrap()
            .unwrap();
        assert!(max_diff(&reference(&q4, &k4, &v4, h, 2, &AttnMask::causal()), &gqa) < 1e-5);

        // A full [b, h, q, k] additive mask (T5's position bias is one).
        let bias = rand(&[1, h, 3, t], 14);
        let biased = attention(&q4, &k4, &v4, h, 2, false, Some(&bias), 0.3)
            .unwrap()
            .unwrap();
        let mask = AttnMask::additive(bias);
        assert!(max_diff(&reference(&q4, &k4, &v4, h, 2, &mask), &biased) < 1e-5);
    }

    #[test]
    fn attention_matches_sdpa_on_long_sequences_and_odd_head_widths() {
        // 300 keys: the values' product runs in two slices along them (256 + 44), and
        // 300 queries fill 4 blocks with a part one; heads 40 wide (a panel and a part
        // one) and 8 wide (a part panel only). Fewer queries than keys (a cache) too.
        for (t, d) in [(300, 40), (300, 8)] {
            let h = 2;
            let q = rand(&[1, t, h * d], 20);
            let k = rand(&[1, t, h * d], 21);
            let v = rand(&[1, t, h * d], 22);
            for (causal, mask) in [(false, AttnMask::none()), (true, AttnMask::causal())] {
                let got = attention(&q, &k, &v, h, h, causal, None, 0.3)
                    .unwrap()
                    .unwrap();
                let want = reference(&q, &k, &v, h, h, &mask);
                assert!(
                    max_diff(&want, &got) < 1e-5,
                    "t {t}, d {d}, causal {causal}"
                );
            }
            let q = q.narrow(1, t - 5, 5).unwrap();
            let got = attention(&q, &k, &v, h, h, true, None, 0.3)
                .unwrap()
                .unwrap();
            let want = reference(&q, &k, &v, h, h, &AttnMask::causal());
            assert!(max_diff(&want, &got) < 1e-5, "t {t}, d {d}, 5 queries");
        }
    }

    #[test]
    fn attention_on_its_own_tiles_matches_sdpa() {
        // Heads 64 and 128 wide (one and two column passes of the output tiles), 16 and
        // 48 wide (one and three vectors); 83 queries (query tiles of 8 and 6, or 6 and
        // 6 on AVX2, with part ones, a second block of 64); keys 83 and a 200-key cache
        // (panels of 32, or 16, and a part one); grouped-query heads; causal, a padding
        // mask, both; and runs of queries split between tasks (one sequence, two heads).
        // 1, 3 and 31 queries take the dot-product path. The tiles are those of the
        // widest instruction set this CPU has.
        let (b, h, kvh) = (2, 4, 2);
        for (i, d) in [64usize, 128, 16, 48].into_iter().enumerate() {
            let seed = 100 + 10 * i as u64;
            let kv = 200;
            let k = rand(&[b, kvh, kv, d], seed);
            let v = rand(&[b, kvh, kv, d], seed + 1);
            let keep = Tensor::from_vec(
                (0..b * kv)
                    .map(|j| u32::from(j % kv < kv - 13 * (j / kv + 1)))
                    .collect::<Vec<_>>(),
                (b, kv),
                &Device::Cpu,
            )
            .unwrap();
            let pad = crate::attention::padding_mask(&keep, DType::F32).unwrap();
            for tq in [83, 31, 3, 1] {
                let q = rand(&[b, h, tq, d], seed + 2 + tq as u64);
                for causal in [false, true] {
                    for masked in [false, true] {
                        let additive = masked.then_some(&pad);
                        let got = attention(&q, &k, &v, h, kvh, causal, additive, 0.3)
                            .unwrap()
                            .unwrap();
                        let mut mask = if causal {
                            AttnMask::causal()
                        } else {
                            AttnMask::none()
                        };
                        if masked {
                            mask = mask.with_additive(pad.clone()).unwrap();
                        }
                        let want = reference(&q, &k, &v, h, kvh, &mask);
                        let diff = max_diff(&want, &got);
                        assert!(
                            diff < 1e-5,
                            "d {d}, {tq} queries, causal {causal}, mask {masked}: {diff}"
                        );
                    }
                }
            }
            // As many queries as keys, one sequence and two heads: the queries are split
            // between tasks, and a causal task's last key is its own last query.
            let q = rand(&[1, 2, 83, d], seed + 7);
            let (k1, v1) = (
                rand(&[1, 2, 83, d], seed + 8),
                rand(&[1, 2, 83, d], seed + 9),
            );
            for (causal, mask) in [(false, AttnMask::none()), (true, AttnMask::causal())] {
                let got = attention(&q, &k1, &v1, 2, 2, causal, None, 0.3)
                    .unwrap()
                    .unwrap();
                let want = reference(&q, &k1, &v1, 2, 2, &mask);
                assert!(
                    max_diff(&want, &got) < 1e-5,
                    "d {d}, split, causal {causal}"
                );
            }
        }
    }
}
