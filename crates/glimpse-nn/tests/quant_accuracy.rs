//! What 8- and 4-bit weights cost OPT and LLaMA, measured against the same model in
//! f32 on the tiny checkpoints of `tools/fixtures/{opt,llama}` and their recorded
//! greedy continuations (the reference's, which the f32 model reproduces exactly).
//!
//! Per fixture and precision the test prints, over every prompt + continuation fed
//! whole (teacher forcing):
//! * the largest |logit difference| against f32, absolute and relative to the f32
//!   logit range (max - min over the same positions);
//! * greedy-token agreement: the fraction of continuation positions where the
//!   quantised model's top token is the recorded one;
//! * free-running greedy decoding: how many sequences come out identical and the
//!   common prefix length.
//!
//! These random fixtures are a harsh case: weights drawn at std 0.12 with a scaled
//! output projection (so quantisation error is large against the signal), and greedy
//! margins as small as 1e-3 (the fixture script only requires that), where a trained
//! model's usually are whole logits. The bounds below are loose floors, not targets.
//!
//! The fixtures are small: OPT's layers are 32 and 64 wide (multiples of 32, so `Q8_0`
//! and `Q4_0`), LLaMA's attention and gate/up projections take 48-wide inputs, which
//! fit no block and stay f32 (only `down_proj`, 96 wide, is quantised there). A
//! block-aligned random LLaMA (256/512 wide: `Q4K`) covers every layer.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use glimpse_nn::llama::{DecoderCache, LlamaConfig, LlamaForCausalLM};
use glimpse_nn::opt::{OptConfig, OptForCausalLM};
use glimpse_nn::quant::{Quant, QuantReport};

fn fixture_dir(name: &str) -> PathBuf {
    let root = std::env::var("GLIMPSE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures"));
    root.join(name)
}

/// The calls the measurement needs from a causal language model.
trait CausalLm: Clone {
    fn logits(&self, ids: &Tensor, cache: &mut DecoderCache) -> Tensor;
    fn cache(&self) -> DecoderCache;
    fn quantize_layers(&mut self, quant: Quant) -> QuantReport;
    fn quantize_head(&mut self, report: &mut QuantReport);
}

impl CausalLm for OptForCausalLM {
    fn logits(&self, ids: &Tensor, cache: &mut DecoderCache) -> Tensor {
        self.forward(ids, None, cache, false).unwrap()
    }
    fn cache(&self) -> DecoderCache {
        self.new_cache()
    }
    fn quantize_layers(&mut self, quant: Quant) -> QuantReport {
        self.quantize(quant).unwrap()
    }
    fn quantize_head(&mut self, report: &mut QuantReport) {
        report
            .quantize("lm_head".into(), &mut self.lm_head)
            .unwrap();
    }
}

impl CausalLm for LlamaForCausalLM {
    fn logits(&self, ids: &Tensor, cache: &mut DecoderCache) -> Tensor {
        self.forward(ids, None, cache, false).unwrap()
    }
    fn cache(&self) -> DecoderCache {
        self.new_cache()
    }
    fn quantize_layers(&mut self, quant: Quant) -> QuantReport {
        self.quantize(quant).unwrap()
    }
    fn quantize_head(&mut self, report: &mut QuantReport) {
        report
            .quantize("lm_head".into(), &mut self.lm_head)
            .unwrap();
    }
}

/// One prompt and its recorded greedy continuation.
struct Case {
    prompt: Vec<u32>,
    continuation: Vec<u32>,
}

fn cases(json: &serde_json::Value) -> Vec<Case> {
    let rows = |k: &str| -> Vec<Vec<u32>> { serde_json::from_value(json[k].clone()).unwrap() };
    rows("prompt_token_ids")
        .into_iter()
        .zip(rows("greedy_generated"))
        .map(|(prompt, continuation)| Case {
            prompt,
            continuation,
        })
        .collect()
}

fn row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// `[t, V]` logits of `ids` in one forward.
fn full_logits<M: CausalLm>(m: &M, ids: &[u32]) -> Tensor {
    m.logits(&row(ids), &mut m.cache()).squeeze(0).unwrap()
}

fn argmax_rows(logits: &Tensor) -> Vec<u32> {
    logits.argmax(D::Minus1).unwrap().to_vec1().unwrap()
}

/// Greedy decoding through the cache, stopping after `eos` or `n` tokens.
fn greedy<M: CausalLm>(m: &M, prompt: &[u32], n: usize, eos: u32) -> Vec<u32> {
    let mut cache = m.cache();
    let mut input = row(prompt);
    let mut out = Vec::new();
    for _ in 0..n {
        let logits = m.logits(&input, &mut cache); // [1, t, V]
        let last = logits
            .get(0)
            .unwrap()
            .get(logits.dim(1).unwrap() - 1)
            .unwrap();
        let next = last.argmax(0).unwrap().to_scalar::<u32>().unwrap();
        out.push(next);
        if next == eos {
            break;
        }
        input = row(&[next]);
    }
    out
}

/// The figures for one model at one precision.
#[derive(Debug, Default)]
struct Cost {
    max_abs_diff: f32,
    logit_range: f32,
    positions: usize,
    agree: usize,
    sequences: usize,
    identical: usize,
    prefix: usize,
    tokens: usize,
}

impl Cost {
    fn rel_diff(&self) -> f32 {
        self.max_abs_diff / self.logit_range
    }
    fn agreement(&self) -> f64 {
        self.agree as f64 / self.positions as f64
    }
    fn line(&self, what: &str) -> String {
        format!(
            "{what:<28} max|dlogit| {:.4} ({:.2}% of range {:.2}); greedy agreement {}/{} = {:.3}; \
             free-running {}/{} identical, common prefix {}/{} tokens",
            self.max_abs_diff,
            100.0 * self.rel_diff(),
            self.logit_range,
            self.agree,
            self.positions,
            self.agreement(),
            self.identical,
            self.sequences,
            self.prefix,
            self.tokens,
        )
    }
}

/// Measures `quantized` against `float` on `cases`; checks on the way that the float
/// model's top tokens are the recorded ones (so agreement is against f32 greedy).
fn measure<M: CausalLm>(float: &M, quantized: &M, cases: &[Case], eos: u32) -> Cost {
    let mut cost = Cost::default();
    for case in cases {
        let ids: Vec<u32> = case
            .prompt
            .iter()
            .chain(&case.continuation)
            .copied()
            .collect();
        let (f, q) = (full_logits(float, &ids), full_logits(quantized, &ids)); // [t, V]
        let diff = (&f - &q).unwrap().abs().unwrap().max_all().unwrap();
        cost.max_abs_diff = cost.max_abs_diff.max(diff.to_scalar::<f32>().unwrap());
        let range = (f.max_all().unwrap() - f.min_all().unwrap()).unwrap();
        cost.logit_range = cost.logit_range.max(range.to_scalar::<f32>().unwrap());
        // Position p predicts ids[p + 1]; the continuation starts at len(prompt).
        let (start, n) = (case.prompt.len() - 1, case.continuation.len());
        let top_f = argmax_rows(&f.narrow(0, start, n).unwrap());
        let top_q = argmax_rows(&q.narrow(0, start, n).unwrap());
        assert_eq!(top_f, case.continuation, "the f32 model's greedy tokens");
        cost.positions += n;
        cost.agree += top_q.iter().zip(&top_f).filter(|(a, b)| a == b).count();

        let free = greedy(quantized, &case.prompt, n, eos);
        cost.sequences += 1;
        cost.identical += usize::from(free == case.continuation);
        cost.prefix += free
            .iter()
            .zip(&case.continuation)
            .take_while(|(a, b)| a == b)
            .count();
        cost.tokens += n;
    }
    cost
}

/// Quantises a copy of `model` per precision (decoder layers, then also the head) and
/// prints and returns the costs: `[q8, q8 + head, q4, q4 + head]`.
fn measure_all<M: CausalLm>(name: &str, model: &M, cases: &[Case], eos: u32) -> Vec<Cost> {
    let mut out = Vec::new();
    for quant in [Quant::Q8, Quant::Q4] {
        let mut q = model.clone();
        let mut report = q.quantize_layers(quant);
        println!("{name} {report}");
        let cost = measure(model, &q, cases, eos);
        println!("{}", cost.line(&format!("{name} {quant}")));
        out.push(cost);
        q.quantize_head(&mut report);
        let cost = measure(model, &q, cases, eos);
        println!("{}", cost.line(&format!("{name} {quant} + lm_head")));
        out.push(cost);
    }
    out
}

fn load_fixture<C: serde::de::DeserializeOwned, M>(
    name: &str,
    build: impl Fn(&C, VarBuilder) -> candle_core::Result<M>,
) -> (M, Vec<Case>, u32) {
    let dir = fixture_dir(name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let cfg: C = serde_json::from_str(&read("config.json")).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let model = build(&cfg, vb).unwrap();
    let json: serde_json::Value = serde_json::from_str(&read("reference.json")).unwrap();
    let eos = json["generation"]["eos_token_id"].as_u64().unwrap() as u32;
    (model, cases(&json), eos)
}

/// Loose floors for the fixtures (see the module docs): 8-bit keeps at least 90% of
/// the greedy tokens and moves logits by under 5% of their range; 4-bit keeps at least
/// 60% and under 20%.
fn check_bounds(name: &str, costs: &[Cost]) {
    let (q8, q4) = (&costs[0], &costs[2]);
    assert!(
        q8.agreement() >= 0.9,
        "{name} q8 agreement {}",
        q8.agreement()
    );
    assert!(
        q8.rel_diff() < 0.05,
        "{name} q8 relative diff {}",
        q8.rel_diff()
    );
    assert!(
        q4.agreement() >= 0.6,
        "{name} q4 agreement {}",
        q4.agreement()
    );
    assert!(
        q4.rel_diff() < 0.20,
        "{name} q4 relative diff {}",
        q4.rel_diff()
    );
}

#[test]
fn opt_fixture_q8_and_q4_against_f32() {
    let (model, cases, eos) = load_fixture::<OptConfig, _>("opt", OptForCausalLM::new);
    let mut q = model.clone();
    let report = q.quantize(Quant::Q8).unwrap();
    assert_eq!(report.quantized.len(), 12, "{report}"); // 2 layers x 6, all 32/64 wide
    assert!(report.kept.is_empty());
    let costs = measure_all("opt", &model, &cases, eos);
    check_bounds("opt", &costs);
}

#[test]
fn llama_fixture_q8_and_q4_against_f32() {
    let (model, cases, eos) = load_fixture::<LlamaConfig, _>("llama", LlamaForCausalLM::new);
    let mut q = model.clone();
    let report = q.quantize(Quant::Q4).unwrap();
    // 48-wide inputs fit no block: only down_proj (96 wide) is quantised.
    assert_eq!(report.quantized.len(), 2, "{report}");
    assert_eq!(report.kept.len(), 12, "{report}");
    assert!(report
        .to_string()
        .contains("layers.0.self_attn.q_proj (width 48)"));
    let costs = measure_all("llama", &model, &cases, eos);
    check_bounds("llama", &costs);
}

/// A LLaMA whose every layer is quantisable (`Q4K` for 4-bit), on fixed pseudo-random
/// weights; the continuations are its own f32 greedy ones.
#[test]
fn block_aligned_llama_q8_and_q4_against_f32() {
    let cfg: LlamaConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 300, "hidden_size": 256, "intermediate_size": 512,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "tie_word_embeddings": false
    }))
    .unwrap();
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = LlamaForCausalLM::new(&cfg, vb).unwrap();
    fill_deterministic(&varmap);

    let eos = 2;
    let prompts: [&[u32]; 3] = [&[1, 17, 230, 5, 99], &[1, 250, 3, 3, 48, 71, 160], &[1, 8]];
    let cases: Vec<Case> = prompts
        .iter()
        .map(|p| Case {
            prompt: p.to_vec(),
            continuation: greedy(&model, p, 12, eos),
        })
        .collect();
    let mut q = model.clone();
    let report = q.quantize(Quant::Q4).unwrap();
    assert_eq!(
        report.counts(),
        vec![(candle_core::quantized::GgmlDType::Q4K, 14)],
        "{report}"
    );
    let costs = measure_all("llama-256", &model, &cases, eos);
    check_bounds("llama-256", &costs);
}

/// Seeded uniform weights with the spread of a trained model's: unit-variance
/// embeddings, norms at 1, layers keeping the residual stream at unit scale, and a head
/// whose logits spread over ~20 (std 4) as a trained model's do; with near-flat logits
/// any perturbation reorders the top tokens and the measurement says nothing.
fn fill_deterministic(varmap: &VarMap) {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut state = 0x5EED_u64;
    for name in names {
        let var = &data[name];
        let std = if name.contains("norm") {
            0.0
        } else if name.contains("embed_tokens") {
            1.0
        } else if name.contains("lm_head") {
            0.25
        } else {
            0.06
        };
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                // SplitMix64 -> uniform [-1, 1) -> std `std`.
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                let u = ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                if std == 0.0 {
                    1.0
                } else {
                    u * std * 3f32.sqrt()
                }
            })
            .collect();
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
}

#[test]
fn quantised_models_refuse_to_train() {
    let (mut model, cases, _) = load_fixture::<OptConfig, _>("opt", OptForCausalLM::new);
    model.quantize(Quant::Q8).unwrap();
    let ids = row(&cases[0].prompt);
    let err = model
        .forward(&ids, None, &mut model.new_cache(), true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantised"), "{err}");
    assert!(model.quantize(Quant::Q4).is_err(), "quantising twice");
}
