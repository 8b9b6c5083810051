//! 8-bit integer products for the encoders ([`Int8Weight`]): weights rounded to `i8`
//! per output row once, at load time, activations rounded to 8 bits per row on every
//! call, and the products summed exactly in 32-bit integers; one multiply per output
//! then brings the sum back to f32.
//!
//! Layout: panels of [`NR8`] output rows (weight rows); each panel is `k`-major in
//! groups of 4 steps, a group holding the panel's 16 rows' 4 values side by side (row
//! `c`'s values at bytes `4c..4c + 4`), so that one 64-byte load gives VNNI's
//! `vpdpbusd` 16 lanes of 4 products each. `k` is padded to a multiple of 4 with zeros,
//! the last panel with zero rows.
//!
//! Two kernels read it, chosen at run time:
//! * AVX-512 VNNI: `vpdpbusd` multiplies unsigned by signed bytes, so each activation
//!   row is rounded asymmetrically (`x ~ scale * (u - zero)`, `u` in 0..=255, which
//!   also gives one-sided rows such as GELU's outputs all 256 levels), and each output
//!   takes `zero * sum(w[j])` (kept per weight row) off its sum. Tiles of up to 12 rows
//!   by 32 columns; on CPUs with AMX-INT8, `tdpbusd` on 32 x 32 blocks instead.
//! * AVX2: `maddubs` on `|x|` and `w` carrying `x`'s sign (`psignb`), so its pairs of
//!   products stay below `2 * 127 * 127` and never saturate; `pmaddwd` widens them to
//!   32 bits. Tiles of up to 4 rows by 16 columns.

use std::arch::x86_64::*;

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::dispatch::{eligible, has_amx, has_avx2_fma, has_vnni};
use super::outer::Onto;
use super::{f32_data, SharedMut};

/// Output rows of the weight per panel.
pub(super) const NR8: usize = 16;
/// Steps along `k` per 32-bit lane.
const GROUP: usize = 4;
/// Bytes of one group of a panel.
const GROUP_BYTES: usize = NR8 * GROUP;
/// `k` is padded to a multiple of this (an AMX tile row: 64 steps), with zeros.
const K_ALIGN: usize = 64;
/// Products with fewer rows than this take the VNNI tiles on an AMX machine.
const AMX_MIN_M: usize = 8;
/// Rows of activations are padded to a multiple of this (two AMX tiles of 16 rows).
const M_ALIGN: usize = 32;

/// Which integer kernel runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Path {
    /// AMX tiles (`tdpbusd`), with the VNNI path's rounding and epilogue.
    Amx,
    Vnni,
    Avx2,
}

impl Path {
    /// Whether the activations are stored unsigned with a zero point per row, as
    /// `vpdpbusd` and `tdpbusd` read them.
    fn shifted(self) -> bool {
        matches!(self, Self::Amx | Self::Vnni)
    }

    /// The best path this CPU runs, or `None` without AVX2.
    pub(super) fn best() -> Option<Self> {
        if has_vnni() && has_amx() {
            Some(Self::Amx)
        } else if has_vnni() {
            Some(Self::Vnni)
        } else if has_avx2_fma() {
            Some(Self::Avx2)
        } else {
            None
        }
    }
}

/// A linear layer's weight `[n, k]` rounded to `i8` with one f32 scale per output row
/// (symmetric, `max |w[j, :]| / 127`), laid out in panels for the integer kernels. It
/// takes a quarter of the f32 weight's memory, plus 8 bytes per output.
pub struct Int8Weight {
    buf: Vec<u8>,
    start: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    /// `k` rounded up to a multiple of [`GROUP`].
    kp: usize,
    /// Per output row: the scale, and `sum_k q[j, k]` (to undo the activations' zero
    /// points on the VNNI and AMX paths).
    scales: Vec<f32>,
    row_sums: Vec<i32>,
}

impl std::fmt::Debug for Int8Weight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Int8Weight([{}, {}])", self.n, self.k)
    }
}

/// Symmetric 8-bit rounding of `row`: the scale and the values (`round(v / scale)`).
fn round_row(row: &[f32], out: &mut [i8]) -> f32 {
    let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        out.iter_mut().for_each(|q| *q = 0);
        // A non-finite row gives a non-finite scale, so the output shows it.
        return if amax == 0.0 { 1.0 } else { amax };
    }
    let inv = 127.0 / amax;
    for (q, v) in out.iter_mut().zip(row) {
        *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
    }
    amax / 127.0
}

/// Asymmetric 8-bit rounding of `row` for the VNNI and AMX paths, 16 values at a time:
/// `x ~ scale * (u - zero)` with `u` in 0..=255 (what `vpdpbusd` and `tdpbusd` read as
/// unsigned) over the row's range with 0 in it, so a one-sided row (after GELU or
/// ReLU) keeps all 256 levels. Returns `(scale, zero)`.
///
/// # Safety
/// AVX-512F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn round_row_affine_avx512(row: &[f32], out: &mut [u8]) -> (f32, i32) {
    let k = row.len();
    debug_assert!(out.len() >= k);
    let mask = |t: usize| -> __mmask16 {
        if t >= 16 {
            0xFFFF
        } else {
            (1u16 << t) - 1
        }
    };
    let (mut vmin, mut vmax) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for c in (0..k).step_by(16) {
        let v = _mm512_maskz_loadu_ps(mask(k - c), row.as_ptr().add(c));
        vmin = _mm512_min_ps(vmin, v);
        vmax = _mm512_max_ps(vmax, v);
    }
    let (lo, hi) = (_mm512_reduce_min_ps(vmin), _mm512_reduce_max_ps(vmax));
    let range = hi - lo;
    if range == 0.0 || !range.is_finite() {
        out[..k].fill(0);
        // A non-finite row gives a non-finite scale, so the output shows it.
        return (if range == 0.0 { 1.0 } else { range }, 0);
    }
    let scale = range / 255.0;
    let zero = (-lo / scale).round().clamp(0.0, 255.0) as i32;
    let inv = _mm512_set1_ps(1.0 / scale);
    let z = _mm512_set1_epi32(zero);
    let (floor, top) = (_mm512_setzero_si512(), _mm512_set1_epi32(255));
    for c in (0..k).step_by(16) {
        let m = mask(k - c);
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, row.as_ptr().add(c)), inv);
        let u = _mm512_add_epi32(_mm512_cvtps_epi32(v), z);
        let u = _mm512_min_epi32(_mm512_max_epi32(u, floor), top);
        _mm_mask_storeu_epi8(out.as_mut_ptr().add(c).cast(), m, _mm512_cvtepi32_epi8(u));
    }
    (scale, zero)
}

impl Int8Weight {
    /// `weight` (`[out, in]`, f32 on the CPU, recording no gradient) rounded and laid
    /// out, or `None` where no integer kernel runs (a CPU without AVX2, the kernels
    /// turned off, another dtype or device, a training variable).
    pub fn new(weight: &Tensor) -> Result<Option<Self>> {
        if Path::best().is_none()
            || !eligible(&[weight])
            || weight.is_variable()
            || weight.rank() != 2
        {
            return Ok(None);
        }
        let weight = weight.contiguous()?;
        let (n, k) = weight.dims2()?;
        if n == 0 || k == 0 {
            return Ok(None);
        }
        let kp = k.div_ceil(K_ALIGN) * K_ALIGN;
        // An even count: the tile kernels read panels in pairs.
        let panels = n.div_ceil(2 * NR8) * 2;
        let panel = kp * NR8;
        let mut buf = vec![0u8; panels * panel + 64];
        let start = buf.as_ptr().align_offset(64).min(64);
        let mut scales = vec![0f32; panels * NR8];
        let mut row_sums = vec![0i32; panels * NR8];
        let (g, l) = weight.storage_and_layout();
        let w = f32_data(&g, l)?;
        buf[start..start + panels * panel]
            .par_chunks_mut(panel)
            .zip(scales.par_chunks_mut(NR8))
            .zip(row_sums.par_chunks_mut(NR8))
            .enumerate()
            .for_each(|(p, ((dst, sc), sums))| {
                let mut q = vec![0i8; k];
                for c in 0..NR8.min(n.saturating_sub(p * NR8)) {
                    let j = p * NR8 + c;
                    sc[c] = round_row(&w[j * k..(j + 1) * k], &mut q);
                    sums[c] = q.iter().map(|&v| v as i32).sum::<i32>();
                    for (kk, &v) in q.iter().enumerate() {
                        dst[kk / GROUP * GROUP_BYTES + c * GROUP + kk % GROUP] = v as u8;
                    }
                }
            });
        drop(g);
        Ok(Some(Self {
            buf,
            start,
            n,
            k,
            kp,
            scales,
            row_sums,
        }))
    }

    /// `(out, in)`, as the stored weight's shape.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held: the values, their padding and the per-row scales and sums.
    pub fn size_in_bytes(&self) -> usize {
        self.buf.len() + 4 * (self.scales.len() + self.row_sums.len())
    }

    fn panel_bytes(&self) -> usize {
        self.kp * NR8
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.n.div_ceil(2 * NR8) * 2 * self.panel_bytes()]
    }

    /// The rounded weight as f32, `[out, in]`: `q * scale`, what the products compute
    /// with (for the plain ops and the tests).
    pub fn dequantize(&self, device: &candle_core::Device) -> Result<Tensor> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        for (j, row) in w.chunks_exact_mut(k).enumerate() {
            let panel = &self.data()[j / NR8 * self.panel_bytes()..];
            let c = j % NR8;
            for (kk, v) in row.iter_mut().enumerate() {
                let q = panel[kk / GROUP * GROUP_BYTES + c * GROUP + kk % GROUP] as i8;
                *v = q as f32 * self.scales[j];
            }
        }
        Tensor::from_vec(w, (n, k), device)
    }

    /// `out[i, j] = (x[i, :] . w[j0 + j, :]) (+ bias + residual from onto)` for `j < nn`:
    /// a column block of [`linear_int8`](super::linear_int8), starting at a panel.
    ///
    /// # Safety
    /// `x` was rounded by [`QuantRows::new`] with this weight's `k` and a path the CPU
    /// runs; `j0` is a multiple of [`NR8`] and `j0 + nn <= n`; `out` valid for `x.m`
    /// rows of `nn` values `ldo` apart; `onto`'s pointers for the block, as [`Onto`].
    pub(super) unsafe fn multiply(
        &self,
        x: &QuantRows,
        j0: usize,
        nn: usize,
        out: *mut f32,
        ldo: usize,
        onto: Onto,
    ) {
        debug_assert!(j0.is_multiple_of(NR8) && j0 + nn <= self.n && x.kp == self.kp);
        let panels = self.data().as_ptr().add(j0 / NR8 * self.panel_bytes());
        let epilogue = Epilogue {
            x,
            w_scales: self.scales[j0..].as_ptr(),
            row_sums: self.row_sums[j0..].as_ptr(),
            out,
            ldo,
            onto,
        };
        match x.path {
            // A few rows (decoding) would fill AMX's 16-row tiles with padding: the
            // VNNI tiles read the same operands without it.
            Path::Amx if x.m >= AMX_MIN_M => {
                amx_block(x, panels, self.panel_bytes(), nn, &epilogue)
            }
            Path::Amx => vnni_block(x, panels, self.panel_bytes(), nn, &epilogue),
            Path::Vnni => vnni_block(x, panels, self.panel_bytes(), nn, &epilogue),
            Path::Avx2 => avx2_block(x, panels, self.panel_bytes(), nn, &epilogue),
        }
    }
}

/// Rows of activations rounded to 8 bits, each with its own scale, `kp` bytes apart:
/// symmetric (`max |x[i, :]| / 127`) for the AVX2 path, asymmetric with a zero point
/// per row for the VNNI and AMX paths (the padding multiplies zero weights).
pub(super) struct QuantRows {
    data: Vec<u8>,
    scales: Vec<f32>,
    zeros: Vec<i32>,
    pub(super) m: usize,
    kp: usize,
    path: Path,
}

impl QuantRows {
    /// `x` (`m` rows of `k`) rounded for `path`.
    pub(super) fn new(x: &[f32], m: usize, k: usize, path: Path) -> Self {
        let kp = k.div_ceil(K_ALIGN) * K_ALIGN;
        // Whole AMX tiles of rows; the padding rows' sums are computed and dropped.
        let mut data = vec![0u8; m.div_ceil(M_ALIGN) * M_ALIGN * kp];
        let mut scales = vec![(0f32, 0i32); m];
        let round = |(i, (row, s)): (usize, (&mut [u8], &mut (f32, i32)))| {
            let xr = &x[i * k..(i + 1) * k];
            if path.shifted() {
                // SAFETY: the VNNI and AMX paths run only where the CPU has AVX-512 (BW).
                *s = unsafe { round_row_affine_avx512(xr, &mut row[..k]) };
            } else {
                // SAFETY: i8 and u8 have the same layout.
                let q: &mut [i8] = unsafe { &mut *(&mut row[..k] as *mut [u8] as *mut [i8]) };
                *s = (round_row(xr, q), 0);
            }
        };
        if m * k >= 1 << 16 {
            data.par_chunks_mut(kp)
                .zip(scales.par_iter_mut())
                .enumerate()
                .for_each(round);
        } else {
            data.chunks_mut(kp)
                .zip(scales.iter_mut())
                .enumerate()
                .for_each(round);
        }
        let (scales, zeros) = scales.into_iter().unzip();
        Self {
            data,
            scales,
            zeros,
            m,
            kp,
            path,
        }
    }
}

/// What a tile's integer sums become: `(sum - zero * w_sum) * x_scale * w_scale`, plus the
/// bias and residual of `onto`, written to `out`.
struct Epilogue<'a> {
    x: &'a QuantRows,
    w_scales: *const f32,
    row_sums: *const i32,
    out: *mut f32,
    ldo: usize,
    onto: Onto,
}

impl Epilogue<'_> {
    /// Writes rows `i0..i0 + rows`, columns `j..j + cols` of the block from `acc` (row
    /// `r`'s sums at `acc[r * stride..]`); scalar for the AVX2 path's symmetric sums.
    ///
    /// # Safety
    /// Inside the block the pointers were made for.
    unsafe fn write(
        &self,
        acc: &[i32],
        stride: usize,
        i0: usize,
        rows: usize,
        j: usize,
        cols: usize,
    ) {
        if self.x.path.shifted() {
            return self.write_avx512(acc, stride, i0, rows, j, cols);
        }
        for r in 0..rows {
            let i = i0 + r;
            let sx = self.x.scales[i];
            let o = self.out.add(i * self.ldo + j);
            for c in 0..cols {
                let s = acc[r * stride + c];
                let mut v = s as f32 * (sx * *self.w_scales.add(j + c));
                if !self.onto.bias.is_null() {
                    v += *self.onto.bias.add(j + c);
                }
                if !self.onto.res.is_null() {
                    v += *self.onto.res.add(i * self.onto.ldr + j + c);
                }
                o.add(c).write(v);
            }
        }
    }
}

impl Epilogue<'_> {
    /// [`Epilogue::write`] for the VNNI and AMX paths, 16 columns at a time: each row's
    /// zero point times the weight row's sum taken off first.
    ///
    /// # Safety
    /// As [`Epilogue::write`]; AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn write_avx512(
        &self,
        acc: &[i32],
        stride: usize,
        i0: usize,
        rows: usize,
        j: usize,
        cols: usize,
    ) {
        for c0 in (0..cols).step_by(16) {
            let left = cols - c0;
            let m: __mmask16 = if left >= 16 {
                0xFFFF
            } else {
                (1u16 << left) - 1
            };
            let jc = j + c0;
            let ws = _mm512_maskz_loadu_ps(m, self.w_scales.add(jc));
            let sums = _mm512_maskz_loadu_epi32(m, self.row_sums.add(jc));
            let bias = if self.onto.bias.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(m, self.onto.bias.add(jc))
            };
            for r in 0..rows {
                let i = i0 + r;
                let s = _mm512_loadu_epi32(acc.as_ptr().add(r * stride + c0));
                let zero = _mm512_mullo_epi32(sums, _mm512_set1_epi32(self.x.zeros[i]));
                let v = _mm512_cvtepi32_ps(_mm512_sub_epi32(s, zero));
                let scale = _mm512_mul_ps(ws, _mm512_set1_ps(self.x.scales[i]));
                let mut v = _mm512_fmadd_ps(v, scale, bias);
                if !self.onto.res.is_null() {
                    let res = self.onto.res.add(i * self.onto.ldr + jc);
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res));
                }
                _mm512_mask_storeu_ps(self.out.add(i * self.ldo + jc), m, v);
            }
        }
    }
}

/// The AMX tile configuration: palette 1, all eight tiles 16 rows of 64 bytes (C in
/// `tmm0-3`, A in `tmm4-5`, B in `tmm6-7`).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        Self(c)
    }
}

/// Every tile of a column block on the AMX path: blocks of 32 rows by 32 columns (a
/// pair of panels), four `tdpbusd` per 64 steps along `k` into `tmm0-3`, then the
/// VNNI path's epilogue.
///
/// A's tiles are 16 rows of activations, 64 bytes (steps) each, `kp` apart; B's are 16
/// groups of a panel, 64 bytes each (16 outputs by 4 steps): the panel layout is the
/// layout `tdpbusd` reads, so both load in place.
///
/// # Safety
/// AMX-INT8 permitted for this process ([`has_amx`]), AVX-512F; `x` padded to whole
/// blocks of [`M_ALIGN`] rows and `kp` a multiple of [`K_ALIGN`]; `panels` holds the
/// block's panels and, after an odd last one, a zero panel.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn amx_block(x: &QuantRows, panels: *const u8, pbytes: usize, nn: usize, e: &Epilogue) {
    use std::arch::asm;
    let cfg = TileConfig::new();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let mut acc = [0i32; M_ALIGN * 2 * NR8];
    let out = acc.as_mut_ptr();
    let row_bytes = 2 * NR8 * 4;
    for j in (0..nn).step_by(2 * NR8) {
        let cols = (2 * NR8).min(nn - j);
        let p0 = panels.add(j / NR8 * pbytes);
        let p1 = p0.add(pbytes);
        for i0 in (0..x.m).step_by(M_ALIGN) {
            let rows = M_ALIGN.min(x.m - i0);
            let a0 = x.data.as_ptr().add(i0 * x.kp);
            let a1 = a0.add(16 * x.kp);
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
            for kk in (0..x.kp).step_by(K_ALIGN) {
                let b = kk / GROUP * GROUP_BYTES;
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tdpbusd tmm0, tmm4, tmm6",
                    "tdpbusd tmm1, tmm4, tmm7",
                    "tdpbusd tmm2, tmm5, tmm6",
                    "tdpbusd tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(kk),
                    a1 = in(reg) a1.add(kk),
                    b0 = in(reg) p0.add(b),
                    b1 = in(reg) p1.add(b),
                    lda = in(reg) x.kp,
                    ldb = in(reg) GROUP_BYTES,
                    options(nostack, readonly)
                );
            }
            asm!(
                "tilestored [{c} + {ldc}*1], tmm0",
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c2} + {ldc}*1], tmm2",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c = in(reg) out,
                c1 = in(reg) out.add(NR8),
                c2 = in(reg) out.add(16 * 2 * NR8),
                c3 = in(reg) out.add(16 * 2 * NR8 + NR8),
                ldc = in(reg) row_bytes,
                options(nostack)
            );
            e.write(&acc, 2 * NR8, i0, rows, j, cols);
        }
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// Rows per VNNI tile.
const VNNI_MR: usize = 12;

/// Every tile of a column block on the VNNI path: pairs of panels (32 columns, one
/// panel for a last odd one), then row tiles of up to [`VNNI_MR`] over each.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn vnni_block(x: &QuantRows, panels: *const u8, pbytes: usize, nn: usize, e: &Epilogue) {
    let mut acc = [0i32; VNNI_MR * 2 * NR8];
    let mut j = 0;
    while j < nn {
        let two = nn - j > NR8;
        let cols = (2 * NR8).min(nn - j);
        let p = panels.add(j / NR8 * pbytes);
        for i0 in (0..x.m).step_by(VNNI_MR) {
            let rows = VNNI_MR.min(x.m - i0);
            let xr = x.data.as_ptr().add(i0 * x.kp);
            macro_rules! tile {
                ($($r:literal)*) => {
                    match (rows, two) {
                        $(($r, true) => vnni_tile::<$r, 2>(xr, x.kp, p, pbytes, &mut acc),
                          ($r, false) => vnni_tile::<$r, 1>(xr, x.kp, p, pbytes, &mut acc),)*
                        _ => unreachable!("row tiles hold 1 to {VNNI_MR} rows"),
                    }
                };
            }
            tile!(1 2 3 4 5 6 7 8 9 10 11 12);
            e.write(&acc, 2 * NR8, i0, rows, j, cols);
        }
        j += 2 * NR8;
    }
}

/// The sums of `MR` rows by `NP` panels over all of `k`, into `acc` (row `r`, column
/// `c` at `r * 32 + c`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn vnni_tile<const MR: usize, const NP: usize>(
    x: *const u8,
    kp: usize,
    panel: *const u8,
    pbytes: usize,
    acc: &mut [i32],
) {
    let mut c = [[_mm512_setzero_si512(); NP]; MR];
    for g in 0..kp / GROUP {
        let mut w = [_mm512_setzero_si512(); NP];
        for (p, wp) in w.iter_mut().enumerate() {
            *wp = _mm512_load_si512(panel.add(p * pbytes + g * GROUP_BYTES).cast());
        }
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm512_set1_epi32(x.add(i * kp + g * GROUP).cast::<i32>().read_unaligned());
            for p in 0..NP {
                ci[p] = _mm512_dpbusd_epi32(ci[p], a, w[p]);
            }
        }
    }
    for (i, ci) in c.iter().enumerate() {
        for (p, v) in ci.iter().enumerate() {
            _mm512_storeu_si512(acc.as_mut_ptr().add(i * 2 * NR8 + p * NR8).cast(), *v);
        }
    }
}

/// Rows per AVX2 tile.
const AVX2_MR: usize = 4;

/// Every tile of a column block on the AVX2 path: one panel at a time, row tiles of up
/// to [`AVX2_MR`] over it.
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_block(x: &QuantRows, panels: *const u8, pbytes: usize, nn: usize, e: &Epilogue) {
    let mut acc = [0i32; AVX2_MR * NR8];
    for j in (0..nn).step_by(NR8) {
        let cols = NR8.min(nn - j);
        let p = panels.add(j / NR8 * pbytes);
        for i0 in (0..x.m).step_by(AVX2_MR) {
            let rows = AVX2_MR.min(x.m - i0);
            let xr = x.data.as_ptr().add(i0 * x.kp);
            match rows {
                1 => avx2_tile::<1>(xr, x.kp, p, &mut acc),
                2 => avx2_tile::<2>(xr, x.kp, p, &mut acc),
                3 => avx2_tile::<3>(xr, x.kp, p, &mut acc),
                4 => avx2_tile::<4>(xr, x.kp, p, &mut acc),
                _ => unreachable!("row tiles hold 1 to {AVX2_MR} rows"),
            }
            e.write(&acc, NR8, i0, rows, j, cols);
        }
    }
}

/// The sums of `MR` rows by one panel over all of `k`, into `acc` (row `r`, column `c`
/// at `r * 16 + c`).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn avx2_tile<const MR: usize>(x: *const u8, kp: usize, panel: *const u8, acc: &mut [i32]) {
    let ones = _mm256_set1_epi16(1);
    let mut c = [[_mm256_setzero_si256(); 2]; MR];
    for g in 0..kp / GROUP {
        let w0 = _mm256_load_si256(panel.add(g * GROUP_BYTES).cast());
        let w1 = _mm256_load_si256(panel.add(g * GROUP_BYTES + 32).cast());
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm256_set1_epi32(x.add(i * kp + g * GROUP).cast::<i32>().read_unaligned());
            let ax = _mm256_abs_epi8(a);
            let p0 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w0, a));
            let p1 = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(w1, a));
            ci[0] = _mm256_add_epi32(ci[0], _mm256_madd_epi16(p0, ones));
            ci[1] = _mm256_add_epi32(ci[1], _mm256_madd_epi16(p1, ones));
        }
    }
    for (i, ci) in c.iter().enumerate() {
        _mm256_storeu_si256(acc.as_mut_ptr().add(i * NR8).cast(), ci[0]);
        _mm256_storeu_si256(acc.as_mut_ptr().add(i * NR8 + 8).cast(), ci[1]);
    }
}

/// `out = x W^T (+ bias + residual)` over column blocks, for [`linear_int8`](super::linear_int8).
///
/// # Safety
/// `out` valid for `m` rows of `n`; blocks start at multiples of [`NR8`] and cover
/// disjoint columns; `bias` holds `n` values and `residual` `m` rows of `n`, where given.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_blocks(
    w: &Int8Weight,
    x: &QuantRows,
    blocks: &[(usize, usize)],
    out: SharedMut,
    n: usize,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    after: &(dyn Fn(usize, usize) + Sync),
) {
    blocks.par_iter().for_each(|&(j0, nn)| {
        let onto = Onto {
            bias: bias.map_or(std::ptr::null(), |b| b[j0..].as_ptr()),
            res: residual.map_or(std::ptr::null(), |r| r[j0..].as_ptr()),
            ldr: n,
        };
        w.multiply(x, j0, nn, out.at(j0), n, onto);
        after(j0, nn);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, plain_linear, rand};
    use candle_core::Device;

    /// The integer product against f32 on the same rounded operands: the sums are
    /// exact, so only the final f32 multiply-adds differ.
    #[test]
    fn integer_products_equal_the_rounded_operands_f32_product() {
        let paths: Vec<Path> = [Path::Amx, Path::Vnni, Path::Avx2]
            .into_iter()
            .filter(|p| match p {
                Path::Amx => has_vnni() && has_amx(),
                Path::Vnni => has_vnni(),
                Path::Avx2 => has_avx2_fma(),
            })
            .collect();
        if paths.is_empty() {
            return;
        }
        // Part panels (19, 203, 50), a k that is not a multiple of 4 (97), rows across
        // the tile sizes and their remainders.
        for (n, k) in [(203, 96), (19, 97), (64, 768), (50, 8)] {
            let w = rand(&[n, k], 7);
            let iw = Int8Weight::new(&w).unwrap().expect("laid out on this CPU");
            let deq = iw.dequantize(&Device::Cpu).unwrap();
            assert!(
                max_diff(&deq, &w) <= 1.0 / 254.0 + 1e-6,
                "rounding within half a step"
            );
            for m in [1, 3, 4, 5, 12, 13, 30] {
                let x = rand(&[m, k], 100 + m as u64);
                let b = rand(&[n], 9);
                let r = rand(&[m, n], 10);
                let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for &path in &paths {
                    let q = QuantRows::new(&xs, m, k, path);
                    // x rounded as the kernel rounds it, in f32.
                    let xq: Vec<f32> = (0..m * k)
                        .map(|t| {
                            let (i, kk) = (t / k, t % k);
                            let v = q.data[i * q.kp + kk];
                            let v = if path.shifted() {
                                v as i32 - q.zeros[i]
                            } else {
                                v as i8 as i32
                            };
                            v as f32 * q.scales[i]
                        })
                        .collect();
                    let xq = Tensor::from_vec(xq, (m, k), &Device::Cpu).unwrap();
                    let want = (plain_linear(&xq, &deq, Some(&b)) + &r).unwrap();
                    let mut out = vec![0f32; m * n];
                    let rs = r.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let bs = b.to_vec1::<f32>().unwrap();
                    let blocks = [(0, n.min(32)), (32, n.saturating_sub(32))];
                    let blocks: Vec<_> = blocks.into_iter().filter(|b| b.1 > 0).collect();
                    unsafe {
                        run_blocks(
                            &iw,
                            &q,
                            &blocks,
                            SharedMut(out.as_mut_ptr()),
                            n,
                            Some(&bs),
                            Some(&rs),
                            &|_, _| {},
                        )
                    };
                    let got = Tensor::from_vec(out, (m, n), &Device::Cpu).unwrap();
                    let d = max_diff(&want, &got);
                    assert!(d < 1e-4, "{path:?} {m}x{k}x{n}: {d}");
                }
            }
        }
    }
}
