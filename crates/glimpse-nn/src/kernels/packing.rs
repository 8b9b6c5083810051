//! Weights laid out once, at load time, in the outer-product kernels' panels
//! ([`PackedWeight`], for the instruction set this CPU runs), and the register
//! transposes that fill panels and tiles of `x` for every packed kernel.

use candle_core::{Result, Tensor};
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::dispatch::{eligible, enabled, has_avx2_fma, has_avx512f, tiled};
use super::linear::SMALL_M;
#[cfg(target_arch = "x86_64")]
use super::outer::{few_rows_ready, outer_avx512, Panels};
use super::outer::{Onto, PACK_NR};
use super::{f32_data, SharedMut};

/// Output columns per weight panel of the AVX2 kernels (`avx2::NR`).
pub(super) const AVX2_NR: usize = 16;

/// The instruction set a [`PackedWeight`] was laid out for: its panels' width and the
/// kernels that read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Isa {
    /// Panels of [`PACK_NR`] (32) columns, 12 x 32 tiles.
    Avx512,
    /// Panels of [`AVX2_NR`] (16) columns, 6 x 16 tiles (`avx2`).
    Avx2,
}

impl Isa {
    /// The widest this CPU runs, or `None` without AVX2 and FMA.
    fn best() -> Option<Self> {
        if has_avx512f() {
            Some(Self::Avx512)
        } else if has_avx2_fma() {
            Some(Self::Avx2)
        } else {
            None
        }
    }

    /// Output columns per panel.
    fn nr(self) -> usize {
        match self {
            Self::Avx512 => PACK_NR,
            Self::Avx2 => AVX2_NR,
        }
    }
}

/// Whether [`PackedWeight::new`] lays weights out on this thread now: kernels on,
/// [`tiled`] on, AVX2 and FMA (or AVX-512F) present, and not inside [`unpacked`].
fn packing() -> bool {
    enabled() && tiled() && Isa::best().is_some() && !NO_PACKING.with(|c| c.get())
}

thread_local! {
    static NO_PACKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`PackedWeight::new`] declining on this thread, for models that are
/// built often and used briefly (a training step's momentum copy), where laying the
/// weights out would cost more than it saves.
pub fn unpacked<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the thread's setting, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_PACKING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_PACKING.with(|c| c.replace(true)));
    f()
}

/// A linear layer's weight `[n, k]` laid out once, when the model is loaded, for the
/// outer-product kernels: panels of `nr` output rows (32 with AVX-512, 16 with AVX2
/// only), each `k`-major (value `kk` of rows `nr p..nr p + nr` at `(p * k + kk) * nr`),
/// the last panel padded with zero rows, 64-byte aligned. The products then skip the
/// per-call packing of the weight, a large share of their time at a few tens of rows.
///
/// It replaces the stored layout (the same size, plus less than one panel of padding),
/// so a loaded model holds no more memory (while it is built, each weight is held both
/// ways for a moment); [`PackedWeight::unpack`] gives the `[n, k]` tensor back for the
/// plain ops.
pub struct PackedWeight {
    buf: Vec<f32>,
    start: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    isa: Isa,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight([{}, {}], {:?})", self.n, self.k, self.isa)
    }
}

impl PackedWeight {
    /// The weight laid out for the packed kernels, or `None` where they do not take
    /// it: another device or dtype, a tensor with a gradient (training), a CPU without
    /// AVX2 and FMA, the kernels turned off, or inside [`unpacked`].
    ///
    /// # Shapes
    /// * `weight`: `[out, in]`
    pub fn new(weight: &Tensor) -> Result<Option<Self>> {
        match Isa::best() {
            Some(isa) if packing() => Self::for_isa(weight, isa),
            _ => Ok(None),
        }
    }

    /// [`PackedWeight::new`] for the kernels of `isa` (which the CPU must run).
    fn for_isa(weight: &Tensor, isa: Isa) -> Result<Option<Self>> {
        if !eligible(&[weight])
            || weight.is_variable()
            || weight.rank() != 2
            || !weight.is_contiguous()
        {
            return Ok(None);
        }
        let (n, k) = weight.dims2()?;
        if n == 0 || k == 0 {
            return Ok(None);
        }
        let nr = isa.nr();
        let panel = nr * k;
        let panels = n.div_ceil(nr);
        let mut buf = vec![0f32; panels * panel + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        let (g, l) = weight.storage_and_layout();
        let w = f32_data(&g, l)?;
        let dst = SharedMut(buf.as_mut_ptr().wrapping_add(start));
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (w, dst, panel); // Isa::best() is None off x86_64
        #[cfg(target_arch = "x86_64")]
        (0..panels).into_par_iter().for_each(|p| {
            let rows = nr.min(n - p * nr);
            // SAFETY: AVX2 is there (every Isa has it); panel p reads rows
            // nr p..nr p + rows of the weight and writes its own panel only.
            unsafe { transpose_into(w.as_ptr().add(p * panel), k, rows, k, dst.at(p * panel), nr) }
        });
        drop(g);
        Ok(Some(Self {
            buf,
            start,
            n,
            k,
            isa,
        }))
    }

    /// `(out, in)`, as the stored weight's shape.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Output columns per panel: a column block of a product starts at a multiple.
    pub(super) fn panel_width(&self) -> usize {
        self.isa.nr()
    }

    fn data(&self) -> &[f32] {
        let nr = self.isa.nr();
        &self.buf[self.start..self.start + self.n.div_ceil(nr) * nr * self.k]
    }

    /// The weight in its stored `[out, in]` layout again.
    pub fn unpack(&self, device: &candle_core::Device) -> Result<Tensor> {
        let (n, k, nr, data) = (self.n, self.k, self.isa.nr(), self.data());
        let mut w = vec![0f32; n * k];
        for (p, panel) in data.chunks_exact(nr * k).enumerate() {
            for (kk, values) in panel.chunks_exact(nr).enumerate() {
                for (c, v) in values.iter().enumerate().take(n - p * nr) {
                    w[(p * nr + c) * k + kk] = *v;
                }
            }
        }
        Tensor::from_vec(w, (n, k), device)
    }

    /// `out[i, j] (+)= x[i, :] . w[j0 + j, :]` for `j < nn`: a column block of
    /// [`linear_packed`](super::linear_packed), starting at a panel (`j0` a multiple of
    /// the panel width).
    ///
    /// With more than [`SMALL_M`] rows, the product can start from `onto` (a bias and/or
    /// a residual) instead of zero or the output; fewer rows take [`Onto::NONE`].
    ///
    /// # Safety
    /// `x` holds `m` rows of `k`; `out` is valid for `m` rows of `nn` values `ldo`
    /// apart; `j0 + nn <= n`; `onto`'s pointers as [`Onto`] says.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn multiply(
        &self,
        x: &[f32],
        m: usize,
        j0: usize,
        nn: usize,
        out: *mut f32,
        ldo: usize,
        accumulate: bool,
        onto: Onto,
    ) {
        debug_assert!(
            j0.is_multiple_of(self.panel_width()) && j0 + nn <= self.n && x.len() >= m * self.k
        );
        debug_assert!(
            m > SMALL_M || onto.is_none(),
            "few rows take no bias or residual here"
        );
        let panels = self.data()[j0 * self.k..].as_ptr();
        #[cfg(target_arch = "x86_64")]
        {
            // A PackedWeight exists only where its Isa's features were found.
            let (k, xp) = (self.k, x.as_ptr());
            match (self.isa, m) {
                (Isa::Avx512, 1) => few_rows_ready::<1>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, 2) => few_rows_ready::<2>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, 3) => few_rows_ready::<3>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, 4) => few_rows_ready::<4>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, _) => {
                    let ready = Panels::Ready(panels);
                    outer_avx512(x, m, k, ready, nn, out, ldo, accumulate, onto)
                }
                (Isa::Avx2, 1) => avx2::few_rows::<1>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, 2) => avx2::few_rows::<2>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, 3) => avx2::few_rows::<3>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, 4) => avx2::few_rows::<4>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, _) => {
                    let ready = avx2::Ready { panels, k };
                    avx2::outer(x, m, k, ready, nn, out, ldo, accumulate, onto)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (panels, out, ldo, accumulate);
            unreachable!("PackedWeight needs x86_64 with AVX2");
        }
    }
}

/// `dst[kk * width + r] = src[r * ld + kk]` for `r < rows`, `kk < kc`, and zero for the
/// rows `rows..width`: a weight panel or a tile of `x` for
/// [`packed_avx512`](super::outer::packed_avx512), `k`-major.
/// Groups of 8 rows by 8 values are transposed in registers, then groups of 4 by 4.
///
/// Not inlined, so that it stays an AVX2 function: inlined into the AVX-512 caller, its
/// scalar remainder loops were turned into scatters, which are slow on this CPU.
///
/// # Safety
/// AVX2 present; `src` valid for `rows` (at most `width`) rows of `kc` values `ld`
/// apart; `dst` for `kc * width` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
pub(super) unsafe fn transpose_into(
    src: *const f32,
    ld: usize,
    rows: usize,
    kc: usize,
    dst: *mut f32,
    width: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(rows <= width);
    let (k8, k4) = (kc / 8 * 8, kc / 4 * 4);
    let mut r0 = 0;
    while r0 + 8 <= rows {
        let mut kk = 0;
        while kk < k8 {
            let row = |r: usize| _mm256_loadu_ps(src.add((r0 + r) * ld + kk));
            let (t0, t1) = (
                _mm256_unpacklo_ps(row(0), row(1)),
                _mm256_unpackhi_ps(row(0), row(1)),
            );
            let (t2, t3) = (
                _mm256_unpacklo_ps(row(2), row(3)),
                _mm256_unpackhi_ps(row(2), row(3)),
            );
            let (t4, t5) = (
                _mm256_unpacklo_ps(row(4), row(5)),
                _mm256_unpackhi_ps(row(4), row(5)),
            );
            let (t6, t7) = (
                _mm256_unpacklo_ps(row(6), row(7)),
                _mm256_unpackhi_ps(row(6), row(7)),
            );
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (c, v) in cols.iter().enumerate() {
                _mm256_storeu_ps(dst.add((kk + c) * width + r0), *v);
            }
            kk += 8;
        }
        for kk in k8..kc {
            for r in r0..r0 + 8 {
                *dst.add(kk * width + r) = *src.add(r * ld + kk);
            }
        }
        r0 += 8;
    }
    while r0 + 4 <= rows {
        let mut kk = 0;
        while kk < k4 {
            let row = |r: usize| _mm_loadu_ps(src.add((r0 + r) * ld + kk));
            let (t0, t1) = (
                _mm_unpacklo_ps(row(0), row(1)),
                _mm_unpackhi_ps(row(0), row(1)),
            );
            let (t2, t3) = (
                _mm_unpacklo_ps(row(2), row(3)),
                _mm_unpackhi_ps(row(2), row(3)),
            );
            let cols = [
                _mm_movelh_ps(t0, t2),
                _mm_movehl_ps(t2, t0),
                _mm_movelh_ps(t1, t3),
                _mm_movehl_ps(t3, t1),
            ];
            for (c, v) in cols.iter().enumerate() {
                _mm_storeu_ps(dst.add((kk + c) * width + r0), *v);
            }
            kk += 4;
        }
        for kk in k4..kc {
            for r in r0..r0 + 4 {
                *dst.add(kk * width + r) = *src.add(r * ld + kk);
            }
        }
        r0 += 4;
    }
    for kk in 0..kc {
        for r in r0..width {
            *dst.add(kk * width + r) = if r < rows { *src.add(r * ld + kk) } else { 0.0 };
        }
    }
}

/// The slice `k0..k0 + kc` of `x`'s `m` rows (`[m, k]`) into tiles of `mr` rows, each
/// `k`-major (`kk * mr + r`) and `tile_len` apart from `xp` on, zeros for the rows past
/// `m`: what an outer-product kernel's tiles read, so that a step reads `mr` adjacent
/// values.
///
/// # Safety
/// AVX2 present; `xp` valid for `m.div_ceil(mr)` tiles of `tile_len >= kc * mr` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn pack_rows(
    x: &[f32],
    m: usize,
    k: usize,
    k0: usize,
    kc: usize,
    xp: *mut f32,
    tile_len: usize,
    mr: usize,
) {
    debug_assert!(x.len() >= m * k && k0 + kc <= k && kc * mr <= tile_len);
    for i in (0..m).step_by(mr) {
        let (rows, tile) = (x.as_ptr().add(i * k + k0), xp.add(i / mr * tile_len));
        transpose_into(rows, k, mr.min(m - i), kc, tile, mr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    #[cfg(target_arch = "x86_64")]
    use crate::kernels::linear::{linear, linear_packed, TILE_M};
    use crate::test_util::rand;
    #[cfg(target_arch = "x86_64")]
    use crate::test_util::{max_diff, plain_linear};
    #[cfg(target_arch = "x86_64")]
    use candle_core::Device;
    use candle_core::{DType, Var};

    /// The packed kernels this CPU runs, widest first.
    fn isas() -> Vec<Isa> {
        let mut all = Vec::new();
        if has_avx512f() {
            all.push(Isa::Avx512);
        }
        if has_avx2_fma() {
            all.push(Isa::Avx2);
        }
        all
    }

    #[test]
    fn laid_out_weights_match_matmul_and_unpack_exactly() {
        // Every row count the packed layout serves (1-4 through the few-rows kernel,
        // then 12-row or 6-row tiles with each remainder), outputs of a part panel (19),
        // whole panels (64) and two column blocks that end mid-panel (203), `k` odd and
        // past one slice (521 = 2*256 + 9); for each instruction set this CPU runs.
        #[cfg(target_arch = "x86_64")]
        for isa in isas() {
            for (n, k) in [(203, 521), (64, 256), (19, 7)] {
                let w = rand(&[n, k], 70);
                let b = rand(&[n], 71);
                let p = PackedWeight::for_isa(&w, isa)
                    .unwrap()
                    .expect("an f32 CPU weight packs");
                assert_eq!(p.dims(), (n, k));
                assert_eq!(max_diff(&p.unpack(&Device::Cpu).unwrap(), &w), 0.0);
                // 151 and 300: more than one block of rows in the AVX2 kernel (144).
                for m in (1..=14).chain([50, 97, 121, 151, 300]) {
                    let x = rand(&[m, k], 72 + m as u64);
                    let r = rand(&[m, n], 73 + m as u64);
                    let what = format!("{isa:?} {m}x{k}x{n}");
                    let plain = plain_linear(&x, &w, Some(&b));
                    let got = linear_packed(&x, &p, Some(&b), None, None)
                        .unwrap()
                        .unwrap();
                    assert!(max_diff(&plain, &got) < 1e-3, "{what}");
                    let got = linear_packed(&x, &p, None, None, Some(&r))
                        .unwrap()
                        .unwrap();
                    let want = (plain_linear(&x, &w, None) + &r).unwrap();
                    assert!(max_diff(&want, &got) < 1e-3, "{what}, residual");
                    let got = linear_packed(&x, &p, None, Some(Activation::Relu), None)
                        .unwrap()
                        .unwrap();
                    let want = plain_linear(&x, &w, None).relu().unwrap();
                    assert!(max_diff(&want, &got) < 1e-3, "{what}, relu");
                    for act in [Activation::Gelu, Activation::QuickGelu] {
                        let got = linear_packed(&x, &p, Some(&b), Some(act), None)
                            .unwrap()
                            .unwrap();
                        let want = act.apply(&plain).unwrap();
                        assert!(max_diff(&want, &got) < 1e-3, "{what}, {act:?}");
                    }
                    let got = linear_packed(&x, &p, Some(&b), None, Some(&r))
                        .unwrap()
                        .unwrap();
                    let want = (plain_linear(&x, &w, Some(&b)) + &r).unwrap();
                    assert!(max_diff(&want, &got) < 1e-3, "{what}, bias and residual");
                    if m > TILE_M && isa == Isa::Avx512 {
                        // The stored layout's kernel at these rows packs the same panels
                        // per call and reads a prefill of residual + bias: the tiles that
                        // start from them instead give the same bits. (With AVX2 alone
                        // that kernel is `gemm`, whose sums are in another order.)
                        for (bias, res) in
                            [(Some(&b), None), (None, Some(&r)), (Some(&b), Some(&r))]
                        {
                            let prefilled = linear(&x, &w, bias, None, res).unwrap().unwrap();
                            let onto = linear_packed(&x, &p, bias, None, res).unwrap().unwrap();
                            assert_eq!(max_diff(&prefilled, &onto), 0.0, "{what}");
                        }
                    }
                }
                // A view of `x` is copied, not refused.
                let x = rand(&[k, 5], 90).t().unwrap();
                let got = linear_packed(&x, &p, None, None, None).unwrap().unwrap();
                let want = plain_linear(&x.contiguous().unwrap(), &w, None);
                assert!(max_diff(&want, &got) < 1e-3, "{isa:?}, a transposed x");
            }
        }
        // Training variables and f64 stay in the stored layout, and so does anything
        // built inside `unpacked`.
        if packing() {
            let w = rand(&[8, 8], 80);
            let var = Var::from_tensor(&w).unwrap();
            assert!(PackedWeight::new(var.as_tensor()).unwrap().is_none());
            assert!(PackedWeight::new(&w.to_dtype(DType::F64).unwrap())
                .unwrap()
                .is_none());
            assert!(unpacked(|| PackedWeight::new(&w)).unwrap().is_none());
            let p = PackedWeight::new(&w).unwrap().expect("packs here");
            assert_eq!(Some(p.isa), Isa::best());
        }
    }
}
