//! What 8-bit encoders (`Pipeline::quantize_encoders`, `--quantize q8`) cost, on the
//! random-weight fixtures under `tools/fixtures` with the photographs of
//! `examples/images`: embedding cosine to f32 (CLIP, BLIP), ITC and ITM scores (BLIP,
//! BLIP-2), and that every family with encoders rounds all of their linear layers and
//! still captions, answers and chats.
//!
//! The fixtures are tiny (32-64 wide) with large random weights, where 8-bit rounding
//! costs more than on real checkpoints; the floors here are for them. Real-size
//! figures are `glimpse bench`'s (`docs/performance.md`).
//!
//! These stay on the CPU: the integer kernels are CPU kernels.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use glimpse_generate::GenerationConfig;
use glimpse_models::pipeline::Pipeline;
use image::RgbImage;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn photos() -> Vec<RgbImage> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/images");
    ["cat.png", "astronaut.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|f| image::open(dir.join(f)).unwrap().to_rgb8())
        .collect()
}

/// Whether this CPU runs the integer kernels (AVX2 and FMA, kernels on).
fn kernels() -> bool {
    let probe = Tensor::zeros((16, 16), candle_core::DType::F32, &Device::Cpu).unwrap();
    glimpse_nn::kernels::Int8Weight::new(&probe)
        .unwrap()
        .is_some()
}

/// Loads `name` twice: as stored, and with 8-bit encoders (every layer rounded, where
/// the CPU runs the kernels).
fn pair(name: &str) -> (Pipeline, Pipeline) {
    let f32 = Pipeline::load(&fixture(name), &Device::Cpu).unwrap();
    let mut q8 = Pipeline::load(&fixture(name), &Device::Cpu).unwrap();
    let report = q8.quantize_encoders().unwrap();
    if kernels() {
        assert!(report.quantized > 0 && report.kept == 0, "{name}: {report}");
        // A quarter at real widths; the fixtures' inputs (32-64 wide) are padded to 64.
        assert!(
            report.bytes_after * 3 < report.bytes_before * 2,
            "{name}: 8-bit weights take less: {report}"
        );
    } else {
        assert_eq!(report.quantized, 0, "{name}: {report}");
    }
    eprintln!("{name}: {report}");
    (f32, q8)
}

/// Cosine similarity of each row of `a` with the same row of `b`.
fn row_cosines(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let dot: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
            let nx = x.iter().map(|v| v * v).sum::<f32>().sqrt();
            let ny = y.iter().map(|v| v * v).sum::<f32>().sqrt();
            dot / (nx * ny)
        })
        .collect()
}

const TEXTS: [&str; 4] = [
    "a photo of a cat",
    "an astronaut on the moon",
    "a cup of coffee",
    "a rocket on the launch pad",
];

#[test]
fn clip_embeddings_stay_close_to_f32() {
    let (f32, q8) = pair("clip");
    let images = photos();
    for (what, a, b) in [
        ("image", f32.image_embeds(&images), q8.image_embeds(&images)),
        ("text", f32.text_embeds(&TEXTS), q8.text_embeds(&TEXTS)),
    ] {
        let cos = row_cosines(&a.unwrap(), &b.unwrap());
        eprintln!("clip {what} cosines to f32: {cos:?}");
        assert!(cos.iter().all(|&c| c > 0.99), "clip {what}: {cos:?}");
        if kernels() {
            assert!(
                cos.iter().any(|&c| c < 1.0 - 1e-7),
                "{what}: nothing was rounded"
            );
        }
    }
}

#[test]
fn blip_and_blip2_matching_scores_stay_close_to_f32() {
    for name in ["blip_itm", "blip2_itm"] {
        let (f32, q8) = pair(name);
        for image in photos() {
            let a = f32.match_scores(&image, &TEXTS).unwrap();
            let b = q8.match_scores(&image, &TEXTS).unwrap();
            let itc = a.itc.iter().zip(&b.itc).map(|(x, y)| (x - y).abs());
            let itc = itc.fold(0f32, f32::max);
            let itm = a.itm.as_ref().unwrap().iter().zip(b.itm.as_ref().unwrap());
            let itm = itm.map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            eprintln!("{name}: max |ITC diff| {itc:.4}, max |ITM diff| {itm:.4}");
            assert!(itc < 0.05 && itm < 0.05, "{name}: ITC {itc}, ITM {itm}");
        }
    }
}

#[test]
fn generating_families_run_with_8_bit_encoders() {
    let gen = GenerationConfig {
        max_new_tokens: 6,
        ..GenerationConfig::default()
    };
    let images = photos();
    for name in ["blip_caption", "blip2_opt", "llava"] {
        let (f32, q8) = pair(name);
        let g = f32.generation_config(gen.clone());
        let a = f32.caption(&images[..2], None, &g).unwrap();
        let b = q8.caption(&images[..2], None, &g).unwrap();
        let same = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.token_ids == y.token_ids)
            .count();
        eprintln!("{name}: {same} of {} captions identical to f32", a.len());
        assert!(b.iter().all(|g| !g.token_ids.is_empty()), "{name}: {b:?}");
    }
    let (f32, q8) = pair("blip_vqa");
    let g = f32.generation_config(gen);
    let a = f32.ask(&images[0], "what is it?", &g).unwrap();
    let b = q8.ask(&images[0], "what is it?", &g).unwrap();
    eprintln!("blip_vqa: f32 {:?}, q8 {:?}", a.text, b.text);
    assert!(!b.token_ids.is_empty());
}
