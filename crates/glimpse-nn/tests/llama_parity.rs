//! LLaMA against the reference (`LlamaForCausalLM`, transformers 5.24) on the tiny
//! checkpoint in `tools/fixtures/llama/` (grouped-query attention, rope_theta 50000,
//! linear rope scaling), and the properties every cached decoder must have, on fixed
//! pseudo-random weights: cached step-by-step decoding equals the full forward, a
//! left-padded batch equals its rows one at a time, the training path has gradients.
//! `GLIMPSE_TEST_DEVICE=cuda` runs the reference comparisons on a GPU (bounds 10x
//! looser); the random-weight properties stay on the CPU.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use glimpse_generate::{generate, Decoder, GenerationConfig};
use glimpse_nn::llama::{DecoderCache, LlamaConfig, LlamaForCausalLM, RopeScaling};

mod common;

use common::{test_device, tol};

fn fixture_dir() -> PathBuf {
    let root = std::env::var("GLIMPSE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures"));
    root.join("llama")
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.max_all())
        .and_then(|d| d.to_scalar::<f32>())
        .unwrap()
}

/// Largest difference over the positions where `mask` (`[b, t]`) is 1.
fn attended_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let keep = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap(); // [b, t, 1]
    max_abs(
        &a.broadcast_mul(&keep).unwrap(),
        &b.broadcast_mul(&keep).unwrap(),
    )
}

/// The test's adapter to the generation crate: the prompt's mask rides in the cache
/// until the first step uses it.
struct Lm<'a>(&'a LlamaForCausalLM);

struct Cache {
    inner: DecoderCache,
    prompt_mask: Option<Tensor>,
}

impl Decoder for Lm<'_> {
    type Cache = Cache;

    fn step(&self, input_ids: &Tensor, cache: &mut Cache) -> Result<Tensor> {
        let mask = cache.prompt_mask.take();
        let embeds = self.0.embed_tokens(input_ids)?;
        let hidden = self
            .0
            .forward_hidden(&embeds, mask.as_ref(), &mut cache.inner, false)?;
        let last = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
        self.0.logits(&last)?.squeeze(1)
    }

    fn select_rows(&self, cache: &mut Cache, rows: &Tensor) -> Result<()> {
        if let Some(m) = &cache.prompt_mask {
            cache.prompt_mask = Some(m.index_select(rows, 0)?);
        }
        cache.inner.select_rows(rows)
    }
}

fn run_generate(
    model: &LlamaForCausalLM,
    ids: &Tensor,
    mask: Option<&Tensor>,
    cfg: &GenerationConfig,
) -> Vec<Vec<u32>> {
    let mut cache = Cache {
        inner: model.new_cache(),
        prompt_mask: mask.cloned(),
    };
    generate(&Lm(model), &mut cache, ids, cfg).unwrap()
}

fn rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

struct Fixture {
    cfg: LlamaConfig,
    model: LlamaForCausalLM,
    tensors: HashMap<String, Tensor>,
    json: serde_json::Value,
}

fn load_fixture() -> Fixture {
    let dir = fixture_dir();
    let dev = test_device();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let cfg: LlamaConfig = serde_json::from_str(&read("config.json")).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &dev)
            .unwrap()
    };
    let model = LlamaForCausalLM::new(&cfg, vb).unwrap();
    let tensors = candle_core::safetensors::load(dir.join("reference.safetensors"), &dev).unwrap();
    let json = serde_json::from_str(&read("reference.json")).unwrap();
    Fixture {
        cfg,
        model,
        tensors,
        json,
    }
}

#[test]
fn fixture_exercises_gqa_and_scaled_rope() {
    let f = load_fixture();
    assert!(f.cfg.num_key_value_heads() < f.cfg.num_attention_heads);
    let (theta, scaling) = f.cfg.rope().unwrap();
    assert_ne!(theta, 10_000.0);
    assert_ne!(scaling, RopeScaling::Default);
}

#[test]
fn logits_match_reference() {
    let f = load_fixture();
    let ids = f.tensors["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = &f.tensors["attention_mask"];
    let (b, t) = ids.dims2().unwrap();
    let embeds = f.model.embed_tokens(&ids).unwrap();

    // The reference's plain forward numbers positions 0..t even in left-padded rows.
    let arange = Tensor::arange(0u32, t as u32, &test_device())
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut cache = f.model.new_cache();
    let hidden = f
        .model
        .forward_hidden_at(&embeds, Some(mask), Some(&arange), &mut cache, false)
        .unwrap();
    let logits = f.model.logits(&hidden).unwrap();
    let diff = attended_diff(&logits, &f.tensors["logits"], mask);
    assert!(diff <= tol(1e-4), "max abs logits difference {diff}");

    // Rows without padding agree with the default (mask-derived) positions too.
    let default = f
        .model
        .forward(&ids, Some(mask), &mut f.model.new_cache(), false)
        .unwrap();
    for row in 0..b {
        let padded = mask
            .i(row)
            .unwrap()
            .min(0)
            .unwrap()
            .to_scalar::<i64>()
            .unwrap()
            == 0;
        if !padded {
            let d = max_abs(
                &default.i(row).unwrap(),
                &f.tensors["logits"].i(row).unwrap(),
            );
            assert!(d <= tol(1e-4), "row {row}: {d}");
        }
    }
}

/// Greedy and 3-beam ids, one prompt per call as the fixture script ran them.
#[test]
fn greedy_and_beam_ids_match_reference() {
    let f = load_fixture();
    let gen = &f.json["generation"];
    let eos = vec![gen["eos_token_id"].as_u64().unwrap() as u32];
    let greedy = GenerationConfig::greedy(gen["max_new_tokens"].as_u64().unwrap() as usize, eos);
    let beam = GenerationConfig {
        num_beams: gen["num_beams_for_beam"].as_u64().unwrap() as usize,
        ..greedy.clone()
    };
    let prompts = rows(&f.json["prompt_token_ids"]);
    let (want_greedy, want_beam) = (
        rows(&f.json["greedy_generated"]),
        rows(&f.json["beam_generated"]),
    );
    for (i, p) in prompts.iter().enumerate() {
        let ids = Tensor::new(p.as_slice(), &test_device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let got = run_generate(&f.model, &ids, None, &greedy);
        assert_eq!(got[0], want_greedy[i], "greedy, prompt {i}");
        let got = run_generate(&f.model, &ids, None, &beam);
        assert_eq!(got[0], want_beam[i], "beam, prompt {i}");
    }
}

/// Fixed pseudo-random weights, grouped-query attention (4 query heads, 2 key/value
/// heads), llama3 rope scaling, biases on.
fn random_model(max_position_embeddings: usize) -> (LlamaForCausalLM, VarMap) {
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 60, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": max_position_embeddings,
        "attention_bias": true, "mlp_bias": true,
        "rope_parameters": {"rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8}
    }))
    .unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = LlamaForCausalLM::new(&cfg, vb).unwrap();
    fill_deterministic(&varmap);
    (model, varmap)
}

/// Overwrites every variable with fixed pseudo-random values (the CPU RNG of candle
/// cannot be seeded), so failures reproduce.
fn fill_deterministic(varmap: &VarMap) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let n = var.elem_count() as f32;
        let values = (Tensor::arange(0f32, n, &Device::Cpu).unwrap() * (1.7 + 0.13 * k as f64))
            .and_then(|t| t.sin())
            .and_then(|t| t * 0.5)
            .and_then(|t| t.reshape(var.shape()))
            .unwrap();
        var.set(&values).unwrap();
    }
}

fn prompt() -> (Tensor, Tensor) {
    let dev = Device::Cpu;
    let ids = Tensor::new(
        &[[5u32, 9, 13, 21, 8, 30, 4], [0, 0, 17, 3, 40, 11, 6]],
        &dev,
    )
    .unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]], &dev).unwrap();
    (ids, mask)
}

#[test]
fn cached_step_by_step_decoding_equals_full_forward() {
    // A table of 6 positions: the later steps compute their rotations on the fly.
    for max_pos in [64, 6] {
        let (model, _) = random_model(max_pos);
        let (ids, mask) = prompt();
        let full = model
            .forward(&ids, Some(&mask), &mut model.new_cache(), false)
            .unwrap(); // [2, 7, V]
        let mut cache = model.new_cache();
        let first = model
            .forward(
                &ids.narrow(1, 0, 3).unwrap(),
                Some(&mask.narrow(1, 0, 3).unwrap()),
                &mut cache,
                false,
            )
            .unwrap();
        // Padded positions have no keys to look at, so they are left out.
        let d = attended_diff(
            &first,
            &full.narrow(1, 0, 3).unwrap(),
            &mask.narrow(1, 0, 3).unwrap(),
        );
        assert!(d < 1e-5, "prefill: {d}");
        for i in 3..7 {
            let step = model
                .forward(&ids.narrow(1, i, 1).unwrap(), None, &mut cache, false)
                .unwrap();
            let d = max_abs(&step, &full.narrow(1, i, 1).unwrap());
            assert!(d < 1e-5, "table {max_pos}, step {i}: {d}");
        }
        assert_eq!(cache.len(), 7);
    }
}

#[test]
fn padded_batch_equals_rows_one_at_a_time() {
    let (model, _) = random_model(64);
    let (ids, mask) = prompt();
    let batch = model
        .forward(&ids, Some(&mask), &mut model.new_cache(), false)
        .unwrap();
    let row0 = model
        .forward(&ids.i(0..1).unwrap(), None, &mut model.new_cache(), false)
        .unwrap();
    let row1 = model
        .forward(
            &ids.i((1..2, 2..)).unwrap(),
            None,
            &mut model.new_cache(),
            false,
        )
        .unwrap();
    assert!(max_abs(&batch.i(0..1).unwrap(), &row0) < 1e-5);
    assert!(max_abs(&batch.i((1..2, 2..)).unwrap(), &row1) < 1e-5);

    let cfg = GenerationConfig::greedy(6, vec![]);
    let together = run_generate(&model, &ids, Some(&mask), &cfg);
    let alone0 = run_generate(&model, &ids.i(0..1).unwrap(), None, &cfg);
    let alone1 = run_generate(&model, &ids.i((1..2, 2..)).unwrap(), None, &cfg);
    assert_eq!(together, vec![alone0[0].clone(), alone1[0].clone()]);
    let beams = GenerationConfig {
        num_beams: 3,
        ..cfg
    };
    let together = run_generate(&model, &ids, Some(&mask), &beams);
    let alone1 = run_generate(&model, &ids.i((1..2, 2..)).unwrap(), None, &beams);
    assert_eq!(together[1], alone1[0]);
}

#[test]
fn training_path_matches_inference_and_reaches_every_weight() {
    let (model, varmap) = random_model(64);
    let (ids, mask) = prompt();
    let infer = model
        .forward(&ids, Some(&mask), &mut model.new_cache(), false)
        .unwrap();
    let train = model
        .forward(&ids, Some(&mask), &mut model.new_cache(), true)
        .unwrap();
    assert!(max_abs(&infer, &train) < 1e-5);
    let weights = Tensor::arange(0f32, train.elem_count() as f32, &Device::Cpu)
        .unwrap()
        .sin()
        .unwrap()
        .reshape(train.shape())
        .unwrap();
    let loss = (train * weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
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
fn unsupported_rope_type_is_an_error_naming_it() {
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 60, "hidden_size": 32, "intermediate_size": 40, "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "rope_scaling": {"type": "longrope", "factor": 2.0}
    }))
    .unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let err = LlamaForCausalLM::new(&cfg, vb).unwrap_err().to_string();
    assert!(err.contains("longrope"), "{err}");
}
