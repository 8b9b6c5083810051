//! The switches that turn the kernels on and off, and the CPU features found at run
//! time: every entry point asks here, so one binary runs the AVX-512 kernels, the AVX2
//! ones or the plain candle ops, whichever the machine allows.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// Whether the fused kernels are on (they are unless `GLIMPSE_PLAIN_KERNELS` is set to
/// something other than `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("GLIMPSE_PLAIN_KERNELS")
            .map(|v| v.is_empty() || v == "0")
            .unwrap_or(true)
    })
}

/// Whether the fused kernels take `t` (an f32 CPU tensor recording no backward pass,
/// kernels on); callers use it to keep views such as a broadcast batch that only the
/// kernels read without a copy.
pub fn applies(t: &Tensor) -> bool {
    eligible(&[t])
}

/// f32 tensors on the CPU that record no backward pass.
pub(super) fn eligible(ts: &[&Tensor]) -> bool {
    enabled()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

/// Whether the CPU has AVX2 and FMA, which every kernel of our own needs.
pub(super) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether [`tiled_avx2`](super::dot::tiled_avx2) and
/// [`packed_avx512`](super::outer::packed_avx512) take the products they fit: AVX2 and
/// FMA present, and neither `GLIMPSE_GEMM_ONLY` (set, not `0`) nor [`set_tiled`] put
/// them back on `gemm`. (The packed kernel also needs AVX-512F.)
pub(super) fn tiled() -> bool {
    use std::sync::atomic::Ordering;
    match TILED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = has_avx2_fma()
                && std::env::var("GLIMPSE_GEMM_ONLY")
                    .map(|v| v.is_empty() || v == "0")
                    .unwrap_or(true);
            TILED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// 0: not decided yet, 1: [`tiled_avx2`](super::dot::tiled_avx2) and
/// [`packed_avx512`](super::outer::packed_avx512) on, 2: off.
static TILED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns our kernels for more than a few rows (the in-place tiled one, and the packed
/// one where the CPU has AVX-512) on or off for the products they fit (`gemm` takes
/// them when off), so that a benchmark can compare them in one run. On needs AVX2 and
/// FMA.
pub fn set_tiled(on: bool) {
    let on = on && has_avx2_fma();
    TILED.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// Whether the CPU has AVX-512F (with AVX2 and FMA), for the widest kernels.
pub(super) fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU runs the quantised kernels: AVX2, FMA and F16C.
pub(super) fn has_quant_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512 VNNI (with AVX-512BW, AVX2 and FMA), for the 8-bit
/// integer products of [`Int8Weight`](super::Int8Weight).
pub(super) fn has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            has_avx512f()
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::env::var("GLIMPSE_INT8_AVX2")
                    .map(|v| v.is_empty() || v == "0")
                    .unwrap_or(true)
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AMX with 8-bit products (AMX-TILE and AMX-INT8) and Linux lets
/// this process use its tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA)`, asked
/// once), for [`Int8Weight`](super::Int8Weight)'s widest kernel. `GLIMPSE_INT8_NO_AMX`
/// (set, not `0`) keeps the VNNI kernel, for comparisons.
pub(super) fn has_amx() -> bool {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            let off = std::env::var("GLIMPSE_INT8_NO_AMX").is_ok_and(|v| !v.is_empty() && v != "0");
            let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
            let (tile, int8) = (edx & (1 << 24) != 0, edx & (1 << 25) != 0);
            if off || !tile || !int8 {
                return false;
            }
            // arch_prctl(ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18): 0 when the
            // kernel grants this process the tile state.
            let ret: i64;
            // SAFETY: a plain system call; it reads no memory of ours.
            unsafe {
                std::arch::asm!(
                    "syscall",
                    inlateout("rax") 158i64 => ret,
                    in("rdi") 0x1023i64,
                    in("rsi") 18i64,
                    out("rcx") _,
                    out("r11") _,
                    options(nostack)
                );
            }
            ret == 0
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        false
    }
}
