//! Times the fused attention kernel on BLIP's and CLIP's shapes (decoding against 577
//! image positions or 20 text positions, a batch of 3 beams, the 384 px ViT's 577 x 577,
//! CLIP's 50 x 50 at batch 8, a causal 77 x 77 text at batch 32), our own tiles against
//! `gemm` (`set_tiled(false)`), the two taking turns.
//!
//! `cargo run --release -p glimpse-nn --example attn_speed`
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(b, tq, tk, causal) in &[
        (1usize, 1usize, 577usize, false),
        (1, 1, 20, false),
        (3, 1, 577, false),
        (1, 577, 577, false),
        (8, 50, 50, false),
        (32, 77, 77, true),
    ] {
        let q = Tensor::randn(0f32, 1.0, (b, tq, 768), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (b, 12, tk, 64), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (b, 12, tk, 64), &dev)?;
        // [ours, gemm]
        let mut best = [f64::MAX; 2];
        for rep in 0..40 {
            let side = rep % 2;
            glimpse_nn::kernels::set_tiled(side == 0);
            let t = Instant::now();
            for _ in 0..10 {
                glimpse_nn::kernels::attention(&q, &k, &v, 12, 12, causal, None, 0.125)?.unwrap();
            }
            best[side] = best[side].min(t.elapsed().as_secs_f64() / 10.0);
        }
        glimpse_nn::kernels::set_tiled(true);
        // Two products of b x 12 heads x tq x tk x 64 multiply-adds (causal: all counted).
        let gflop = (4 * b * 12 * tq * tk * 64) as f64 / 1e9;
        println!(
            "attention b={b} tq={tq} tk={tk} causal={causal}: {:.1} us ({:.1} GFLOP/s), gemm {:.1} us ({:.1} GFLOP/s)",
            best[0] * 1e6,
            gflop / best[0],
            best[1] * 1e6,
            gflop / best[1]
        );
    }
    Ok(())
}
