//! A separable resampler with the arithmetic of Pillow's `Image.resize` for 8-bit
//! images, so that the reference's pixel values are reproduced exactly rather than
//! within a grey level: kernel weights computed in f64 and normalised per output
//! pixel, stored as 22-bit fixed point, horizontal pass first, each pass rounded and
//! clamped to u8. (`fast_image_resize` uses 15-bit weights and runs the vertical pass
//! first for u8 pixels; it differed by up to 2 levels after fixing the order.)

use image::RgbImage;

use super::Resample;

/// Fixed-point fraction bits of the weights (32 bits minus 8 for the pixel, minus 2).
const PRECISION_BITS: u32 = 22;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = x * std::f64::consts::PI;
        px.sin() / px
    }
}

/// The filter function and its support (radius at scale 1).
fn filter(resample: Resample) -> (fn(f64) -> f64, f64) {
    match resample {
        Resample::Box => (|x| if x > -0.5 && x <= 0.5 { 1.0 } else { 0.0 }, 0.5),
        Resample::Bilinear => (|x: f64| (1.0 - x.abs()).max(0.0), 1.0),
        Resample::Hamming => (
            |x: f64| {
                let x = x.abs();
                if x == 0.0 {
                    1.0
                } else if x >= 1.0 {
                    0.0
                } else {
                    let px = x * std::f64::consts::PI;
                    px.sin() / px * (0.54 + 0.46 * px.cos())
                }
            },
            1.0,
        ),
        // Keys' cubic with a = -0.5 (Catmull-Rom).
        Resample::Bicubic | Resample::Nearest => (
            |x: f64| {
                let (a, x) = (-0.5, x.abs());
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            },
            2.0,
        ),
        Resample::Lanczos => (
            |x: f64| {
                if x.abs() < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            },
            3.0,
        ),
    }
}

/// Per output position: first source index and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize, resample: Resample) -> Vec<(usize, Vec<i32>)> {
    let (f, support) = filter(resample);
    let scale = in_size as f64 / out_size as f64;
    // Downscaling widens the kernel so every source pixel contributes.
    let filter_scale = scale.max(1.0);
    let support = support * filter_scale;
    let inv = 1.0 / filter_scale;
    (0..out_size)
        .map(|i| {
            let center = (i as f64 + 0.5) * scale;
            // Truncation toward zero, as the C casts do, then clamped to the image.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64)
                .min(in_size as i64)
                .max(lo as i64) as usize;
            let w: Vec<f64> = (lo..hi)
                .map(|x| f((x as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let fixed = w
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    // Round half away from zero.
                    if k < 0.0 {
                        (k * one - 0.5) as i32
                    } else {
                        (k * one + 0.5) as i32
                    }
                })
                .collect();
            (lo, fixed)
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes one axis at a time, horizontal first, each pass rounded to u8.
pub(crate) fn resize_like_pil(
    img: &RgbImage,
    nh: usize,
    nw: usize,
    resample: Resample,
) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut src = img.as_raw().clone();
    let mut cur_w = w;
    if nw != w {
        let coeffs = coefficients(w, nw, resample);
        let mut out = vec![0u8; h * nw * 3];
        for y in 0..h {
            let row = &src[y * w * 3..(y + 1) * w * 3];
            for (x, (lo, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(half, |acc, (j, &kj)| {
                        acc + i64::from(row[(lo + j) * 3 + c]) * i64::from(kj)
                    });
                    out[(y * nw + x) * 3 + c] = clip8(acc);
                }
            }
        }
        src = out;
        cur_w = nw;
    }
    if nh != h {
        let coeffs = coefficients(h, nh, resample);
        let stride = cur_w * 3;
        let mut out = vec![0u8; nh * stride];
        for (y, (lo, k)) in coeffs.iter().enumerate() {
            for i in 0..stride {
                let acc = k.iter().enumerate().fold(half, |acc, (j, &kj)| {
                    acc + i64::from(src[(lo + j) * stride + i]) * i64::from(kj)
                });
                out[y * stride + i] = clip8(acc);
            }
        }
        src = out;
    }
    RgbImage::from_raw(nw as u32, nh as u32, src).expect("buffer sized from the dimensions")
}
