//! T5 against the reference (`T5ForConditionalGeneration`, transformers 5.24) on the tiny
//! v1.1 checkpoint in `tools/fixtures/t5/` (encoder output, teacher-forced logits, greedy
//! and beam ids), and the properties of the encoder-decoder path on seeded random weights:
//! cached step-by-step decoding equals teacher forcing, a padded batch equals its rows
//! one at a time, the training path agrees with inference and reaches every weight.
//!
//! `GLIMPSE_FIXTURES=<root>` runs the reference tests on `<root>/t5` instead (e.g. another
//! variant written by the fixture script). `GLIMPSE_TEST_DEVICE=cuda` runs the reference
//! tests on a GPU (bounds 10x looser); the random-weight properties stay on the CPU.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use glimpse_generate::{generate, Decoder, GenerationConfig};
use glimpse_nn::t5::{T5Cache, T5Config, T5ForConditionalGeneration};

mod common;

use common::{test_device, tol};

fn fixture_dir() -> PathBuf {
    let root = std::env::var("GLIMPSE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures"));
    root.join("t5")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap()
}

/// The test's adapter to the generation crate: the decoder prompt is the start token,
/// the encoder's work is already in the cache.
struct Seq2Seq<'a>(&'a T5ForConditionalGeneration);

impl Decoder for Seq2Seq<'_> {
    type Cache = T5Cache;

    fn step(&self, input_ids: &Tensor, cache: &mut T5Cache) -> Result<Tensor> {
        let logits = self.0.decode(input_ids, cache, false)?; // [b, t, V]
        logits.i((.., logits.dim(1)? - 1))?.to_dtype(DType::F32) // [b, V]
    }

    fn select_rows(&self, cache: &mut T5Cache, rows: &Tensor) -> Result<()> {
        cache.select_rows(rows)
    }
}

struct Fixture {
    model: T5ForConditionalGeneration,
    cfg: T5Config,
    tensors: HashMap<String, Tensor>,
    json: serde_json::Value,
}

fn load_fixture() -> Fixture {
    let dir = fixture_dir();
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run tools/fixtures/make_fixtures_llm.py)",
                dir.join(name).display()
            )
        })
    };
    let cfg: T5Config = serde_json::from_str(&read("config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&read("reference.json")).unwrap();
    let dev = test_device();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)
            .unwrap()
    };
    let model = T5ForConditionalGeneration::new(&cfg, vb).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &dev).unwrap();
    Fixture {
        model,
        cfg,
        tensors,
        json,
    }
}

/// `[1, n]` ids on the test device, for the fixture's model.
fn ids_tensor(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &test_device())
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Encodes one prompt and generates from `decoder_start_token_id`, as the reference's
/// `generate(input_ids=...)` does; returns the generated ids (start token excluded).
fn run_generate(f: &Fixture, prompt: &[u32], gen: &GenerationConfig) -> Vec<u32> {
    let m = &f.model;
    let embeds = m.embed_tokens(&ids_tensor(prompt)).unwrap();
    let enc = m.encode(&embeds, None, false).unwrap();
    let mut cache = m.new_cache(&enc, None).unwrap();
    let start = ids_tensor(&[f.cfg.decoder_start_token_id()]);
    let mut out = generate(&Seq2Seq(m), &mut cache, &start, gen).unwrap();
    out.remove(0)
}

fn generation_config(f: &Fixture, num_beams: usize) -> GenerationConfig {
    let g = &f.json["generation"];
    let mut gen = GenerationConfig::greedy(
        g["max_new_tokens"].as_u64().unwrap() as usize,
        vec![g["eos_token_id"].as_u64().unwrap() as u32],
    );
    gen.pad_token_id = g["pad_token_id"].as_u64().unwrap() as u32;
    gen.num_beams = num_beams;
    if let Some(lp) = g["length_penalty"].as_f64() {
        gen.length_penalty = lp as f32;
    }
    gen
}

fn prompts(f: &Fixture) -> Vec<Vec<u32>> {
    serde_json::from_value(f.json["prompt_token_ids"].clone()).unwrap()
}

#[test]
fn encoder_output_and_logits_match_reference() {
    let f = load_fixture();
    let ids = f.tensors["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &f.tensors["attention_mask"];
    let dec = f.tensors["decoder_input_ids"].to_dtype(DType::U32).unwrap();

    let embeds = f.model.embed_tokens(&ids).unwrap();
    let enc = f.model.encode(&embeds, Some(mask), false).unwrap();
    // Padded positions hold values no one reads; compare the attended ones.
    let keep = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
    let want = f.tensors["encoder_last_hidden_state"]
        .broadcast_mul(&keep)
        .unwrap();
    let d = max_abs(&enc.broadcast_mul(&keep).unwrap(), &want);
    eprintln!("encoder output: max abs diff {d}");
    assert!(d <= tol(1e-4), "encoder output differs by {d}");

    let logits = f.model.forward(&embeds, Some(mask), &dec, false).unwrap();
    let d = max_abs(&logits, &f.tensors["logits"]);
    eprintln!("logits: max abs diff {d}");
    assert!(d <= tol(1e-4), "logits differ by {d}");
}

#[test]
fn greedy_ids_match_reference() {
    let f = load_fixture();
    let gen = generation_config(&f, 1);
    let want: Vec<Vec<u32>> = serde_json::from_value(f.json["greedy_generated"].clone()).unwrap();
    for (i, prompt) in prompts(&f).iter().enumerate() {
        assert_eq!(
            run_generate(&f, prompt, &gen),
            want[i],
            "greedy, prompt {i}"
        );
    }
}

#[test]
fn beam_ids_match_reference() {
    let f = load_fixture();
    let beams = f.json["generation"]["num_beams_for_beam"].as_u64().unwrap() as usize;
    let gen = generation_config(&f, beams);
    let want: Vec<Vec<u32>> = serde_json::from_value(f.json["beam_generated"].clone()).unwrap();
    for (i, prompt) in prompts(&f).iter().enumerate() {
        assert_eq!(
            run_generate(&f, prompt, &gen),
            want[i],
            "beam {beams}, prompt {i}"
        );
    }
}

// --- properties on seeded random weights ------------------------------------------------

fn random_config(tied: bool, ff: &str) -> T5Config {
    serde_json::from_value(serde_json::json!({
        "vocab_size": 40, "d_model": 24, "d_kv": 6, "d_ff": 40, "num_layers": 2,
        "num_decoder_layers": 3, "num_heads": 4, "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 16, "dropout_rate": 0.0,
        "feed_forward_proj": ff, "tie_word_embeddings": tied,
    }))
    .unwrap()
}

/// Deterministic pseudo-random values in `[-0.5, 0.5)` (candle cannot seed its CPU RNG).
fn lcg_values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

fn random_model(cfg: &T5Config, seed: u64) -> (T5ForConditionalGeneration, VarMap) {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = T5ForConditionalGeneration::new(cfg, vb).unwrap();
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (i, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let shape = var.as_tensor().shape().clone();
        let noise = Tensor::from_vec(
            lcg_values(shape.elem_count(), seed * 1000 + i as u64),
            shape,
            &dev,
        )
        .unwrap();
        // Layer norms near 1 but distinct (a mix-up of norms must show); other weights
        // about as large as a trained T5's.
        let value = if name.ends_with("layer_norm.weight") {
            noise.affine(0.4, 1.0).unwrap()
        } else if name.starts_with("shared") {
            (noise * 4.0).unwrap()
        } else {
            (noise * 0.5).unwrap()
        };
        var.set(&value).unwrap();
    }
    drop(data);
    (model, varmap)
}

fn embeds_for(model: &T5ForConditionalGeneration, rows: &[&[u32]]) -> (Tensor, Tensor) {
    let width = rows.iter().map(|r| r.len()).max().unwrap();
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for r in rows {
        ids.extend(
            r.iter()
                .copied()
                .chain(std::iter::repeat_n(0, width - r.len())),
        );
        mask.extend((0..width).map(|j| (j < r.len()) as u32));
    }
    let ids = Tensor::from_vec(ids, (rows.len(), width), &Device::Cpu).unwrap();
    let mask = Tensor::from_vec(mask, (rows.len(), width), &Device::Cpu).unwrap();
    (model.embed_tokens(&ids).unwrap(), mask)
}

const ENC_ROWS: [&[u32]; 2] = [&[5, 9, 3, 17, 22, 8, 30, 11, 2, 1], &[7, 4, 19, 1]];
const DEC_IDS: [[u32; 7]; 2] = [[0, 12, 5, 33, 8, 8, 21], [0, 3, 39, 14, 2, 26, 6]];

#[test]
fn cached_decoding_equals_teacher_forcing() {
    for (tied, ff) in [(false, "gated-gelu"), (true, "relu")] {
        let cfg = random_config(tied, ff);
        let (model, _) = random_model(&cfg, 1);
        let (embeds, mask) = embeds_for(&model, &ENC_ROWS);
        let dec = Tensor::new(&DEC_IDS, &Device::Cpu).unwrap();
        let full = model.forward(&embeds, Some(&mask), &dec, false).unwrap(); // [2, 7, V]

        let enc = model.encode(&embeds, Some(&mask), false).unwrap();
        let mut cache = model.new_cache(&enc, Some(&mask)).unwrap();
        // Prefill 3 positions, then one at a time.
        let mut parts = vec![model
            .decode(&dec.narrow(1, 0, 3).unwrap(), &mut cache, false)
            .unwrap()];
        for t in 3..7 {
            parts.push(
                model
                    .decode(&dec.narrow(1, t, 1).unwrap(), &mut cache, false)
                    .unwrap(),
            );
        }
        assert_eq!(cache.position(), 7);
        let stepped = Tensor::cat(&parts, 1).unwrap();
        let d = max_abs(&full, &stepped);
        assert!(d <= 1e-5, "tied={tied}: cached decoding differs by {d}");
    }
}

#[test]
fn padded_batch_equals_rows_one_at_a_time() {
    let cfg = random_config(false, "gated-gelu");
    let (model, _) = random_model(&cfg, 2);
    let (embeds, mask) = embeds_for(&model, &ENC_ROWS);
    let dec = Tensor::new(&DEC_IDS, &Device::Cpu).unwrap();
    let enc = model.encode(&embeds, Some(&mask), false).unwrap();
    let logits = model.forward(&embeds, Some(&mask), &dec, false).unwrap();
    for (i, row) in ENC_ROWS.iter().enumerate() {
        let (e, _) = embeds_for(&model, &[row]);
        let d_row = dec.narrow(0, i, 1).unwrap();
        let enc_row = model.encode(&e, None, false).unwrap();
        let d = max_abs(&enc.i((i..i + 1, ..row.len())).unwrap(), &enc_row);
        assert!(d <= 1e-5, "row {i}: encoder output differs by {d}");
        let l = model.forward(&e, None, &d_row, false).unwrap();
        let d = max_abs(&logits.i(i..i + 1).unwrap(), &l);
        assert!(d <= 1e-5, "row {i}: logits differ by {d}");
    }
}

#[test]
fn beam_rows_follow_select_rows() {
    // Expanding a cache to beams and reordering it equals decoding the reordered rows.
    let cfg = random_config(true, "gated-silu");
    let (model, _) = random_model(&cfg, 3);
    let (embeds, mask) = embeds_for(&model, &ENC_ROWS);
    let enc = model.encode(&embeds, Some(&mask), false).unwrap();
    let dec = Tensor::new(&DEC_IDS, &Device::Cpu).unwrap();
    let mut cache = model.new_cache(&enc, Some(&mask)).unwrap();
    model
        .decode(&dec.narrow(1, 0, 2).unwrap(), &mut cache, false)
        .unwrap();
    let rows = Tensor::new(&[1u32, 0, 1], &Device::Cpu).unwrap();
    cache.select_rows(&rows).unwrap();
    let next = dec
        .i((.., 2..3))
        .unwrap()
        .contiguous()
        .unwrap()
        .index_select(&rows, 0)
        .unwrap();
    let got = model.decode(&next, &mut cache, false).unwrap(); // [3, 1, V]

    let full = model
        .forward(&embeds, Some(&mask), &dec.narrow(1, 0, 3).unwrap(), false)
        .unwrap();
    let want = full
        .i((.., 2..3))
        .unwrap()
        .contiguous()
        .unwrap()
        .index_select(&rows, 0)
        .unwrap();
    let d = max_abs(&got, &want);
    assert!(d <= 1e-5, "reordered cache differs by {d}");
}

#[test]
fn training_path_agrees_and_reaches_every_weight() {
    let cfg = random_config(false, "gated-gelu");
    let (model, varmap) = random_model(&cfg, 4);
    let (embeds, mask) = embeds_for(&model, &ENC_ROWS);
    let dec = Tensor::new(&DEC_IDS, &Device::Cpu).unwrap();
    let infer = model.forward(&embeds, Some(&mask), &dec, false).unwrap();
    let train = model.forward(&embeds, Some(&mask), &dec, true).unwrap();
    let d = max_abs(&infer, &train);
    assert!(d <= 1e-4, "train and inference paths differ by {d}");

    let w = train.ones_like().unwrap().cumsum(2).unwrap().sin().unwrap();
    let loss = (train * w).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient reaches {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn half_precision_stays_close_to_f32() {
    // bf16 runs as the reference does in bf16; f16 keeps `wo` in f32 as the reference does.
    let f = load_fixture();
    let want = &f.tensors["logits"];
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    for dtype in [DType::BF16, DType::F16] {
        let file = fixture_dir().join("model.safetensors");
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&[file], dtype, &test_device()).unwrap() };
        let model = T5ForConditionalGeneration::new(&f.cfg, vb).unwrap();
        let ids = f.tensors["input_ids"].to_dtype(DType::U32).unwrap();
        let mask = &f.tensors["attention_mask"];
        let dec = f.tensors["decoder_input_ids"].to_dtype(DType::U32).unwrap();
        let embeds = model.embed_tokens(&ids).unwrap();
        let logits = model.forward(&embeds, Some(mask), &dec, false).unwrap();
        assert_eq!(logits.dtype(), dtype);
        let d = max_abs(&logits, want);
        eprintln!("{dtype:?}: logits differ from f32 by {d} (max |logit| {scale})");
        // The reference's own bf16 run differs from its f32 one by 5% of the largest logit.
        assert!(
            d <= 0.08 * scale,
            "{dtype:?} logits differ by {d} (max |logit| {scale})"
        );
    }
}
