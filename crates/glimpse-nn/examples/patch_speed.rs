//! Times a ViT's patch projection two ways, taking turns in one run: candle's `conv2d`
//! (stride = patch) and the patches laid out as rows and multiplied on the fused linear
//! kernel, which is what `VitEmbeddings` does for f32 inference. It also prints the
//! largest difference between the two.
//! Shapes: CLIP B/32 at batch 1 and 8, BLIP's 384 px B/16, LLaVA's 336 px L/14.
//!
//! `cargo run --release -p glimpse-nn --example patch_speed`
use candle_core::{Device, Module, Tensor};
use std::time::Instant;
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(b, img, p, d) in &[
        (1usize, 224usize, 32usize, 768usize),
        (8, 224, 32, 768),
        (1, 384, 16, 768),
        (1, 336, 14, 1024),
    ] {
        let x = Tensor::randn(0f32, 1.0, (b, 3, img, img), &dev)?;
        let w = Tensor::randn(0f32, 1.0, (d, 3, p, p), &dev)?;
        let conv = candle_nn::Conv2d::new(
            w.clone(),
            None,
            candle_nn::Conv2dConfig {
                stride: p,
                ..Default::default()
            },
        );
        let g = img / p;
        let mut best = [f64::MAX; 2];
        let mut outs = vec![];
        for rep in 0..20 {
            let t = Instant::now();
            let y = if rep % 2 == 0 {
                conv.forward(&x)?
                    .flatten_from(2)?
                    .transpose(1, 2)?
                    .contiguous()?
            } else {
                let rows = x
                    .reshape((b, 3, g, p, g, p))?
                    .permute((0, 2, 4, 1, 3, 5))?
                    .contiguous()?
                    .reshape((b, g * g, 3 * p * p))?;
                glimpse_nn::kernels::linear(&rows, &w.reshape((d, 3 * p * p))?, None, None, None)?
                    .unwrap()
            };
            best[rep % 2] = best[rep % 2].min(t.elapsed().as_secs_f64());
            if rep < 2 {
                outs.push(y);
            }
        }
        let diff = (&outs[0] - &outs[1])?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        println!(
            "b{b} {img}px p{p}: conv {:.2} ms, rows+linear {:.2} ms, max diff {diff:.2e}",
            best[0] * 1e3,
            best[1] * 1e3
        );
    }
    Ok(())
}
