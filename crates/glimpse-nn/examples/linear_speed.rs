//! Times the fused linear kernel on decoding shapes (a few rows: GB/s of weights) and on
//! encoder shapes (CLIP ViT-B/32 at batch 1 and 8, BLIP's 384 px ViT: GFLOP/s).
//! From 5 rows up each shape is timed twice, turn about in the same run: as `linear`
//! picks for a weight in its stored layout (the in-place tiled kernel up to its row
//! limit, then the packed AVX-512 kernel where the CPU has it, else `gemm`) and with
//! `gemm` only, so that both can be checked against `gemm` on this machine. Where the
//! CPU has AVX2 and FMA, every shape is also timed on weights laid out at load time
//! (`PackedWeight`, as a loaded model's linear layers are: AVX-512 or AVX2 panels), in
//! the same turns.
//!
//! Last, the cost of the fused activation on the encoders' up-projections (the same
//! product with and without it, weights hot, laid out where the CPU allows).
//!
//! `cargo run --release -p glimpse-nn --example linear_speed`
use candle_core::{Device, Tensor};
use glimpse_nn::kernels::PackedWeight;
use glimpse_nn::layers::Activation;
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(m, k, n) in &[
        (1usize, 768usize, 768usize),
        (1, 768, 3072),
        (1, 3072, 768),
        (1, 768, 30524),
        (3, 768, 768),
        (3, 768, 3072),
        (1, 2048, 8192),
        (16, 768, 768),
        (50, 768, 2304),
        (50, 768, 3072),
        (50, 3072, 768),
        (57, 2048, 2048),
        (57, 2048, 8192),
        (57, 8192, 2048),
        (96, 768, 3072),
        (128, 768, 3072),
        (200, 768, 3072),
        (400, 768, 3072),
        (400, 3072, 768),
        (577, 768, 2304),
        (577, 3072, 768),
    ] {
        // A set of weights larger than the caches, cycled, as a decoder's layers are.
        let copies = (256 << 20) / (k * n * 4) + 1;
        let ws: Vec<Tensor> = (0..copies)
            .map(|_| Tensor::randn(0f32, 1.0, (n, k), &dev))
            .collect::<candle_core::Result<_>>()?;
        let packed: Vec<PackedWeight> = ws
            .iter()
            .map(PackedWeight::new)
            .collect::<candle_core::Result<Option<_>>>()?
            .unwrap_or_default();
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        // [as picked, gemm only, laid out], timed turn about so that all see the same
        // machine.
        let mut sides = vec![0];
        if m > 4 {
            sides.push(1);
        }
        if !packed.is_empty() {
            sides.push(2);
        }
        let mut best = [f64::MAX; 3];
        for rep in 0..5 * sides.len() {
            let side = sides[rep % sides.len()];
            glimpse_nn::kernels::set_tiled(side != 1);
            let t = Instant::now();
            if side == 2 {
                for p in &packed {
                    glimpse_nn::kernels::linear_packed(&x, p, None, None, None)?.unwrap();
                }
            } else {
                for w in &ws {
                    glimpse_nn::kernels::linear(&x, w, None, None, None)?.unwrap();
                }
            }
            best[side] = best[side].min(t.elapsed().as_secs_f64() / copies as f64);
        }
        glimpse_nn::kernels::set_tiled(true);
        let gb = (k * n * 4) as f64 / 1e9;
        let gflop = (2 * m * k * n) as f64 / 1e9;
        let mut gemm = String::new();
        if sides.contains(&1) {
            gemm += &format!(" (gemm only: {:.1} GFLOP/s)", gflop / best[1]);
        }
        if sides.contains(&2) {
            gemm += &format!(
                " (laid out: {:.1} GFLOP/s, {:.1} GB/s)",
                gflop / best[2],
                gb / best[2]
            );
        }
        println!(
            "{m}x{k}x{n}: {:.1} us, {:.1} GB/s of weights, {:.1} GFLOP/s{gemm}",
            best[0] * 1e6,
            gb / best[0],
            gflop / best[0]
        );
    }
    for &(m, act) in &[
        (400usize, Activation::QuickGelu),
        (577, Activation::Gelu),
        (577, Activation::Silu),
    ] {
        let (k, n) = (768, 3072);
        let w = Tensor::randn(0f32, 1.0, (n, k), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        // Laid out where the CPU allows it, as a loaded model's layers are.
        let packed = PackedWeight::new(&w)?;
        let time = |act: Option<Activation>| -> candle_core::Result<f64> {
            let mut best = f64::MAX;
            for _ in 0..10 {
                let t = Instant::now();
                match &packed {
                    Some(p) => glimpse_nn::kernels::linear_packed(&x, p, None, act, None)?,
                    None => glimpse_nn::kernels::linear(&x, &w, None, act, None)?,
                }
                .unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let (plain, with) = (time(None)?, time(Some(act))?);
        println!(
            "{m}x{k}x{n} + {act:?}: {:.0} us, without {:.0} us ({:.0} us for the activation)",
            with * 1e6,
            plain * 1e6,
            (with - plain) * 1e6
        );
    }
    Ok(())
}
