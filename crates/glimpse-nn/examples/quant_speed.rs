//! Times quantised products (`Q8_0`, `Q4K`) on LLaMA-1B shapes: decoding's few rows (GB/s
//! of weight bytes read) and a 600-row prompt (GFLOP/s), on Glimpse's own kernels
//! (`QuantWeight`) and on candle's (`QMatMul`), with the f32 laid-out weight
//! (`PackedWeight`) for scale, turn about in the same run.
//!
//! `cargo run --release -p glimpse-nn --example quant_speed`
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use glimpse_nn::kernels::{linear_packed, linear_quant, PackedWeight, QuantWeight};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    println!(
        "{:>16} {:>8} {:>10} {:>10} {:>10}",
        "m x k x n", "format", "glimpse", "candle", "f32"
    );
    for &(m, k, n) in &[
        (1usize, 2048usize, 2048usize),
        (1, 2048, 5632),
        (1, 5632, 2048),
        (4, 2048, 5632),
        (600, 2048, 5632),
        (600, 5632, 2048),
    ] {
        // A set of weights larger than the caches (in f32), cycled, as a decoder's are.
        let copies = (256 << 20) / (k * n * 4) + 1;
        let ws: Vec<Tensor> = (0..copies)
            .map(|_| Tensor::randn(0f32, 1.0, (n, k), &dev))
            .collect::<candle_core::Result<_>>()?;
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        let packed: Vec<PackedWeight> = ws
            .iter()
            .map(PackedWeight::new)
            .collect::<candle_core::Result<Option<_>>>()?
            .unwrap_or_default();
        for format in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let qs: Vec<QTensor> = ws
                .iter()
                .map(|w| QTensor::quantize(w, format))
                .collect::<candle_core::Result<_>>()?;
            let own: Vec<QuantWeight> = qs
                .iter()
                .map(QuantWeight::new)
                .collect::<candle_core::Result<Option<_>>>()?
                .unwrap_or_default();
            let bytes = qs[0].storage_size_in_bytes();
            let candle: Vec<QMatMul> = qs
                .into_iter()
                .map(QMatMul::from_qtensor)
                .collect::<candle_core::Result<_>>()?;
            // [ours, candle's, f32 laid out], turn about.
            let mut best = [f64::MAX; 3];
            for rep in 0..15 {
                let side = rep % 3;
                let t = Instant::now();
                match side {
                    0 if !own.is_empty() => {
                        for w in &own {
                            linear_quant(&x, w, None, None, None)?.unwrap();
                        }
                    }
                    1 => {
                        for w in &candle {
                            w.forward(&x)?;
                        }
                    }
                    2 if !packed.is_empty() => {
                        for p in &packed {
                            linear_packed(&x, p, None, None, None)?.unwrap();
                        }
                    }
                    _ => continue,
                }
                best[side] = best[side].min(t.elapsed().as_secs_f64() / copies as f64);
            }
            let show = |s: f64, b: usize| {
                if s == f64::MAX {
                    "-".to_string()
                } else if m <= 4 {
                    format!("{:.1} GB/s", b as f64 / s / 1e9)
                } else {
                    format!("{:.0} GF/s", 2.0 * (m * k * n) as f64 / s / 1e9)
                }
            };
            println!(
                "{:>16} {:>8} {:>10} {:>10} {:>10}   ({:.2} / {:.2} / {:.2} ms)",
                format!("{m}x{k}x{n}"),
                format!("{format:?}"),
                show(best[0], bytes),
                show(best[1], bytes),
                show(best[2], k * n * 4),
                best[0] * 1e3,
                best[1] * 1e3,
                best[2] * 1e3,
            );
        }
    }
    Ok(())
}
