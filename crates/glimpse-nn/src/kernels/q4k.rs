//! `Q4K` weights laid out in panels of [`NR`] output rows for an AVX2 kernel on 8-bit
//! integers, for decoding's few rows and for prompts alike.
//!
//! candle's `Q4K` blocks hold 256 values of a weight row: an f16 scale `d` and minimum
//! scale `dmin`, eight 6-bit scales `sc` and minimums `m` (one per 32 values, packed
//! into 12 bytes) and the 4-bit values `q`; a value is `d * sc * q - dmin * m`. Here, per
//! panel, one group of [`GROUP`] bytes per block along `k`: the 16 rows' `d` and `dmin`
//! as f32, their `sc` and `m` unpacked to bytes (`[8][16]` each), then 64 quads of 4
//! steps, 32 bytes each: byte `b` holds value `b` in its low half and value `b + 32` in
//! its high half, value `v` being row `v / 4`, step `v % 4` of the quad. 4.75 bits per
//! weight, against candle's 4.5. The dequantised values are exactly candle's.
//!
//! The product rounds each row of `x` to 8 bits per 32 values (one f32 scale each, as
//! `Q8_0` does; candle's kernel rounds per 256), and sums `q * x` in integers: for a
//! quad, the 32 bytes of one half (8 rows by 4 steps) times the quad's 4 values of `x`
//! (`maddubs`: 16 sums of 2 in i16), eight quads (one sub-block) summed in i16 (at most
//! 8 x 2 x 15 x 127 = 30480), then widened in pairs to one i32 per row. Each sub-block's
//! sums are then scaled by `d * sc` and the scale of `x`, less `dmin * m` times the
//! sub-block's sum of `x` (in f32, not rounded).
//!
//! The tiles are 1 to 4 rows of `x` by a panel's 16 columns over all of `k`; with more
//! rows the tiles of a panel follow each other while the panel stays in L1/L2. Integer
//! sums because converting each 4-bit value to f32 bounds an f32 kernel at candle's rate.

use std::arch::x86_64::*;

use super::avx2::{lane_masks, start_sums, store_sums, NR};
use super::outer::Onto;

/// Steps along `k` per block (candle's super-block), and per sub-block.
pub(super) const BLOCK: usize = 256;
const SUB: usize = 32;
const SUBS: usize = BLOCK / SUB;
/// Bytes of a group before its values: `d`, `dmin` (16 f32 each), `sc`, `m` (8 x 16).
const HEADER: usize = NR * 4 * 2 + SUBS * NR * 2;
/// Bytes of a panel's group.
pub(super) const GROUP: usize = HEADER + BLOCK * NR / 2;
const _: () = assert!(HEADER.is_multiple_of(32) && GROUP.is_multiple_of(64));
/// Bytes of one candle `Q4K` block.
pub(super) const CANDLE_BLOCK: usize = 144;
/// Rows of `x` per tile.
const MR: usize = 4;

/// The 6-bit scale and minimum of sub-block `j` (0 to 7) from a block's 12 packed bytes
/// (GGML's `get_scale_min_k4`).
fn scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Where value `s` (step within the block) of panel row `c` is: `(byte, high half)`.
fn value_at(c: usize, s: usize) -> (usize, bool) {
    let v = c * 4 + s % 4;
    (HEADER + s / 4 * 32 + v % 32, v >= 32)
}

fn f32_at(g: &[u8], at: usize) -> f32 {
    f32::from_le_bytes([g[at], g[at + 1], g[at + 2], g[at + 3]])
}

/// Lays out one panel: `rows` (at most [`NR`]) weight rows of `src` (candle's blocks,
/// `k / 256` per row) into `dst` (`k / 256` groups), zeros for the missing rows.
pub(super) fn lay_out_panel(src: &[u8], rows: usize, k: usize, dst: &mut [u8]) {
    let blocks = k / BLOCK;
    debug_assert!(src.len() >= rows * blocks * CANDLE_BLOCK && dst.len() >= blocks * GROUP);
    dst[..blocks * GROUP].fill(0);
    let f16 = |b: &[u8]| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
    for c in 0..rows {
        for b in 0..blocks {
            let at = (c * blocks + b) * CANDLE_BLOCK;
            let blk = &src[at..at + CANDLE_BLOCK];
            let g = &mut dst[b * GROUP..(b + 1) * GROUP];
            g[4 * c..4 * c + 4].copy_from_slice(&f16(&blk[0..2]).to_le_bytes());
            g[4 * NR + 4 * c..4 * NR + 4 * c + 4].copy_from_slice(&f16(&blk[2..4]).to_le_bytes());
            let (scales, qs) = (&blk[4..16], &blk[16..]);
            for j in 0..SUBS {
                let (sc, m) = scale_min(j, scales);
                g[8 * NR + j * NR + c] = sc;
                g[8 * NR + SUBS * NR + j * NR + c] = m;
            }
            // candle's order: sub-block j's values are the low (even j) or high (odd j)
            // halves of bytes 32 (j / 2)..32 (j / 2) + 32.
            for s in 0..BLOCK {
                let (j, l) = (s / SUB, s % SUB);
                let byte = qs[32 * (j / 2) + l];
                let q = if j % 2 == 0 { byte & 0xF } else { byte >> 4 };
                let (at, high) = value_at(c, s);
                g[at] |= if high { q << 4 } else { q };
            }
        }
    }
}

/// Dequantises one panel's weight rows from its groups (scalar; the plain fallback and
/// the tests): `out[c][kk]` for the panel's first `out.len()` rows (at most [`NR`]),
/// `d * sc * q - dmin * m` as candle computes it.
pub(super) fn dequantize_panel(panel: &[u8], k: usize, out: &mut [Vec<f32>]) {
    for b in 0..k / BLOCK {
        let g = &panel[b * GROUP..(b + 1) * GROUP];
        for (c, row) in out.iter_mut().enumerate().take(NR) {
            let (d, dmin) = (f32_at(g, 4 * c), f32_at(g, 4 * NR + 4 * c));
            for s in 0..BLOCK {
                let j = s / SUB;
                let sc = d * g[8 * NR + j * NR + c] as f32;
                let m = dmin * g[8 * NR + SUBS * NR + j * NR + c] as f32;
                let (at, high) = value_at(c, s);
                let q = if high { g[at] >> 4 } else { g[at] & 0xF };
                row[b * BLOCK + s] = sc * q as f32 - m;
            }
        }
    }
}

/// Rows of `x` rounded to 8 bits per 32 values: `q` (`[m, k]`), and per 32 values the
/// scale `d` (`x ~ d q`, `d = max |x| / 127`) and the sum of `x` itself.
pub(super) struct Rounded {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sum: Vec<f32>,
}

/// `x` (`m` rows of `k`, a multiple of 32) rounded as [`Rounded`] says, to nearest.
///
/// # Safety
/// AVX2 and FMA; `x` holds `m * k` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn round_rows(x: &[f32], m: usize, k: usize) -> Rounded {
    let blocks = m * k / SUB;
    debug_assert!(x.len() >= m * k && k.is_multiple_of(SUB));
    let mut q = vec![0i8; m * k];
    let mut d = vec![0f32; blocks];
    let mut sum = vec![0f32; blocks];
    let sign = _mm256_set1_ps(-0.0);
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let hsum = |v: __m256| {
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps::<1>(h, h)))
    };
    for b in 0..blocks {
        let p = x.as_ptr().add(b * SUB);
        let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(p.add(o)));
        let abs = v.map(|v| _mm256_andnot_ps(sign, v));
        let a = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
        let a = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let a = _mm_max_ps(a, _mm_movehl_ps(a, a));
        let amax = _mm_cvtss_f32(_mm_max_ss(a, _mm_shuffle_ps::<1>(a, a)));
        sum[b] = hsum(_mm256_add_ps(
            _mm256_add_ps(v[0], v[1]),
            _mm256_add_ps(v[2], v[3]),
        ));
        d[b] = amax / 127.0;
        let inv = _mm256_set1_ps(if amax > 0.0 { 127.0 / amax } else { 0.0 });
        let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)));
        let packed = _mm256_packs_epi16(
            _mm256_packs_epi32(i[0], i[1]),
            _mm256_packs_epi32(i[2], i[3]),
        );
        let packed = _mm256_permutevar8x32_epi32(packed, order);
        _mm256_storeu_si256(q.as_mut_ptr().add(b * SUB).cast(), packed);
    }
    Rounded { q, d, sum }
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `m` rows of `x` over a `Q4K` weight's panels,
/// `x` rounded to 8 bits per 32 values first (decoding's few rows as well as prompts);
/// with `onto`, each tile starts from the bias and/or residual instead of zero.
///
/// # Safety
/// AVX2 and FMA; `x` holds `m` rows of `k` (a multiple of 256); `panels` holds
/// `nn.div_ceil(NR)` panels of `k / 256` groups, 32-byte aligned; `out` valid for `m`
/// rows of `nn` values `ldo` apart; `onto` as [`Onto`] says.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn multiply(
    x: &[f32],
    m: usize,
    k: usize,
    panels: *const u8,
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
    onto: Onto,
) {
    let xr = round_rows(x, m, k);
    let groups = k / BLOCK;
    for j in (0..nn).step_by(NR) {
        let nr = NR.min(nn - j);
        let masks = (nr < NR).then(|| lane_masks(nr));
        let panel = panels.add(j / NR * groups * GROUP);
        for i in (0..m).step_by(MR) {
            let o = out.add(i * ldo + j);
            let (src, lds, bias) = onto.tile_start(accumulate, o, ldo, i, j);
            let t = Tile {
                xq: xr.q.as_ptr().add(i * k),
                xd: xr.d.as_ptr().add(i * k / SUB),
                xsum: xr.sum.as_ptr().add(i * k / SUB),
                k,
                panel,
                out: o,
                ldo,
                src,
                lds,
                bias,
                masks,
            };
            match MR.min(m - i) {
                4 => tile::<4>(&t),
                3 => tile::<3>(&t),
                2 => tile::<2>(&t),
                _ => tile::<1>(&t),
            }
        }
    }
}

/// One tile: `R` rows of rounded `x` by one panel's columns, over all of `k`.
struct Tile {
    /// The rows' 8-bit values, `k` apart; their scales and sums, `k / 32` apart.
    xq: *const i8,
    xd: *const f32,
    xsum: *const f32,
    k: usize,
    panel: *const u8,
    out: *mut f32,
    ldo: usize,
    /// What the sums start from besides zero, each where not null: rows `lds` apart
    /// (the output itself or a residual) and a bias per column.
    src: *const f32,
    lds: usize,
    bias: *const f32,
    masks: Option<(__m256i, __m256i)>,
}

/// # Safety
/// As [`multiply`], for this tile's `R` rows and the columns the masks keep.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // r indexes the sums and the rows of x
unsafe fn tile<const R: usize>(t: &Tile) {
    let mut c = start_sums::<R>(t.src, t.lds, t.bias, t.masks);
    let (low, ones) = (_mm256_set1_epi8(0xF), _mm256_set1_epi16(1));
    let subs_per_row = t.k / SUB;
    for b in 0..t.k / BLOCK {
        let g = t.panel.add(b * GROUP);
        let d = [_mm256_load_ps(g.cast()), _mm256_load_ps(g.add(32).cast())];
        let dmin = [
            _mm256_load_ps(g.add(64).cast()),
            _mm256_load_ps(g.add(96).cast()),
        ];
        for sb in 0..SUBS {
            let bytes = |at: usize| {
                let v = _mm_load_si128(g.add(at).cast());
                [
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)),
                    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v))),
                ]
            };
            let (sc, mn) = (bytes(8 * NR + sb * NR), bytes(8 * NR + SUBS * NR + sb * NR));
            let scale = [_mm256_mul_ps(d[0], sc[0]), _mm256_mul_ps(d[1], sc[1])];
            let min = [_mm256_mul_ps(dmin[0], mn[0]), _mm256_mul_ps(dmin[1], mn[1])];
            let mut acc = [[_mm256_setzero_si256(); 2]; R];
            let step0 = b * BLOCK + sb * SUB;
            let values = g.add(HEADER + sb * SUB / 4 * 32);
            for quad in 0..SUB / 4 {
                let v = _mm256_load_si256(values.add(quad * 32).cast());
                let lo = _mm256_and_si256(v, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), low);
                for r in 0..R {
                    let xs = t.xq.add(r * t.k + step0 + quad * 4);
                    let xv = _mm256_set1_epi32(std::ptr::read_unaligned(xs.cast::<i32>()));
                    acc[r][0] = _mm256_add_epi16(acc[r][0], _mm256_maddubs_epi16(lo, xv));
                    acc[r][1] = _mm256_add_epi16(acc[r][1], _mm256_maddubs_epi16(hi, xv));
                }
            }
            let at = b * SUBS + sb;
            for r in 0..R {
                let dx = _mm256_set1_ps(*t.xd.add(r * subs_per_row + at));
                let sx = _mm256_set1_ps(*t.xsum.add(r * subs_per_row + at));
                for h in 0..2 {
                    let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc[r][h], ones));
                    c[r][h] = _mm256_fmadd_ps(dot, _mm256_mul_ps(scale[h], dx), c[r][h]);
                    c[r][h] = _mm256_fnmadd_ps(min[h], sx, c[r][h]);
                }
            }
        }
    }
    for (r, cr) in c.iter().enumerate() {
        store_sums(t.out.add(r * t.ldo), cr[0], cr[1], t.masks, false);
    }
}

#[cfg(test)]
mod tests {
    use crate::kernels::dispatch::has_quant_kernels;
    use crate::kernels::q4k;

    /// The rounding of `x` for the Q4K kernel: to nearest, 127 steps of the block's
    /// largest magnitude, the sum kept exact, and a block of zeros stays zero.
    #[test]
    fn q4k_rounds_x_per_32_values() {
        if !has_quant_kernels() {
            return;
        }
        let mut x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[32..64].fill(0.0);
        // SAFETY: AVX2 and FMA are there; x holds 1 row of 96.
        let r = unsafe { q4k::round_rows(&x, 1, 96) };
        for b in 0..3 {
            let xs = &x[32 * b..32 * b + 32];
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(r.d[b], amax / 127.0);
            assert!((r.sum[b] - xs.iter().sum::<f32>()).abs() < 1e-4);
            for (i, v) in xs.iter().enumerate() {
                let want = if amax > 0.0 {
                    (v * 127.0 / amax).round_ties_even()
                } else {
                    0.0
                };
                assert_eq!(r.q[32 * b + i] as f32, want, "block {b}, value {i}");
            }
        }
    }
}
