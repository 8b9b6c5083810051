//! Times the fused attention kernel on BLIP's shapes (decoding against 577 image
//! positions or 20 text positions, a batch of 3 beams, and the 384 px ViT's 577 x 577).
//!
//! `cargo run --release -p glimpse-nn --example attn_speed`
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(tq, tk) in &[(1usize, 577usize), (1, 20), (3, 577), (577, 577)] {
        let q = Tensor::randn(0f32, 1.0, (1, tq, 768), &dev)?;
        let k = Tensor::randn(0f32, 1.0, (1, 12, tk, 64), &dev)?;
        let v = Tensor::randn(0f32, 1.0, (1, 12, tk, 64), &dev)?;
        let mut best = f64::MAX;
        for _ in 0..20 {
            let t = Instant::now();
            for _ in 0..10 {
                glimpse_nn::kernels::attention(&q, &k, &v, 12, 12, false, None, 0.125)?.unwrap();
            }
            best = best.min(t.elapsed().as_secs_f64() / 10.0);
        }
        println!("attention tq={tq} tk={tk}: {:.1} us", best * 1e6);
    }
    Ok(())
}
