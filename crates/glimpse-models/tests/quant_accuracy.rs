//! What 8- and 4-bit language-model weights cost BLIP-2 (OPT) and LLaVA (LLaMA),
//! measured against the same model in f32 on `tools/fixtures/{blip2_opt,llava}` and
//! their recorded greedy answers (the reference's, which the f32 model reproduces).
//!
//! Figures printed per fixture and precision, over every recorded case (image +
//! prompt + greedy continuation, fed whole):
//! * the largest |logit difference| against f32, absolute and relative to the f32
//!   logit range over the same positions;
//! * greedy-token agreement: the fraction of continuation positions where the
//!   quantised model's top token is the recorded one;
//! * free-running `generate`: sequences identical to the recorded ones, and the common
//!   prefix length.
//!
//! The random fixtures are harsh (large random weights, greedy margins down to 1e-3),
//! so the floors are loose; see `glimpse-nn/tests/quant_accuracy.rs` for the same
//! measurement on the bare language models and on a block-aligned LLaMA. BLIP-2's OPT
//! is 32/64 wide (every layer quantised: `Q8_0`, `Q4_0`); LLaVA's LLaMA takes 48-wide
//! inputs in all but `down_proj`, which is all that gets quantised there.
//!
//! These stay on the CPU whatever `GLIMPSE_TEST_DEVICE` says: the measured figures are
//! those of the CPU's quantised kernels.

use candle_core::{Device, Tensor, D};
use glimpse_generate::GenerationConfig;
use glimpse_models::blip2::Blip2ForConditionalGeneration;
use glimpse_models::llava::LlavaForConditionalGeneration;
use glimpse_models::pipeline::Pipeline;
use glimpse_nn::quant::Quant;
use serde_json::Value;

mod common;

use common::Fixture;

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn row(ids: &[u32]) -> Tensor {
    Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// One recorded case: the image, the ids given to the model, the recorded
/// continuation, and what the quantised model generates freely.
struct Case {
    pixels: Tensor,
    input_ids: Vec<u32>,
    continuation: Vec<u32>,
}

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

    /// Adds one case: `f`, `q` are `[t, V]` logits of input + continuation, `free` the
    /// quantised model's own greedy continuation.
    fn add(&mut self, case: &Case, f: &Tensor, q: &Tensor, free: &[u32]) {
        let diff = (f - q).unwrap().abs().unwrap().max_all().unwrap();
        self.max_abs_diff = self.max_abs_diff.max(diff.to_scalar::<f32>().unwrap());
        let range = (f.max_all().unwrap() - f.min_all().unwrap()).unwrap();
        self.logit_range = self.logit_range.max(range.to_scalar::<f32>().unwrap());
        // Position p predicts token p + 1; the continuation starts after the input.
        let (start, n) = (case.input_ids.len() - 1, case.continuation.len());
        let top = |l: &Tensor| -> Vec<u32> {
            l.narrow(0, start, n)
                .unwrap()
                .argmax(D::Minus1)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (top_f, top_q) = (top(f), top(q));
        assert_eq!(top_f, case.continuation, "the f32 model's greedy tokens");
        self.positions += n;
        self.agree += top_q.iter().zip(&top_f).filter(|(a, b)| a == b).count();
        self.sequences += 1;
        self.identical += usize::from(free == case.continuation.as_slice());
        self.prefix += free
            .iter()
            .zip(&case.continuation)
            .take_while(|(a, b)| a == b)
            .count();
        self.tokens += n;
    }

    fn print(&self, what: &str) {
        println!(
            "{what:<16} max|dlogit| {:.4} ({:.2}% of range {:.2}); greedy agreement {}/{} = {:.3}; \
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
        );
    }

    /// The floors of `glimpse-nn/tests/quant_accuracy.rs`: 8-bit keeps at least 90% of
    /// the greedy tokens and moves logits by under 5% of their range, 4-bit at least
    /// 60% and under 20%.
    fn check(&self, what: &str, quant: Quant) {
        let (agree, rel) = match quant {
            Quant::Q8 => (0.9, 0.05),
            Quant::Q4 => (0.6, 0.20),
        };
        assert!(
            self.agreement() >= agree,
            "{what}: agreement {}",
            self.agreement()
        );
        assert!(
            self.rel_diff() < rel,
            "{what}: relative diff {}",
            self.rel_diff()
        );
    }
}

fn greedy_config(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig::greedy(max_new_tokens, vec![])
}

#[test]
fn blip2_opt_q8_and_q4_against_f32() {
    let fx = Fixture::open_on("blip2_opt", &Device::Cpu);
    let model = Blip2ForConditionalGeneration::load(&fx.files, &Device::Cpu).unwrap();
    let tok = fx.tokenizer();
    let max_new = fx.json["generation"]["max_new_tokens"].as_u64().unwrap() as usize;
    let gen = model.generation_config(&greedy_config(max_new));
    // (case, prompt text given to `generate`) for every photo.
    let mut cases = Vec::new();
    for case in ["unprompted", "prompted", "vqa"] {
        let c = &fx.json[case];
        let prompt = c["prompt"].as_str();
        let generated: Vec<Vec<u32>> = serde_json::from_value(c["generated"].clone()).unwrap();
        for (photo, continuation) in fx.photos().iter().zip(generated) {
            cases.push((
                prompt.map(|p| tok.encode(p, true).unwrap()),
                Case {
                    pixels: fx.pixels(photo),
                    input_ids: ids(&c["input_ids"]),
                    continuation,
                },
            ));
        }
    }
    let logits = |m: &Blip2ForConditionalGeneration, case: &Case| {
        let full: Vec<u32> = case
            .input_ids
            .iter()
            .chain(&case.continuation)
            .copied()
            .collect();
        m.logits(&case.pixels, &row(&full), None, None)
            .unwrap()
            .squeeze(0)
            .unwrap() // [t, V]
    };
    for quant in [Quant::Q8, Quant::Q4] {
        let mut q = model.clone();
        let report = q.quantize_language_model(quant).unwrap();
        println!("blip2_opt {report}");
        assert_eq!(report.quantized.len(), 12, "{report}");
        let mut cost = Cost::default();
        for (text_ids, case) in &cases {
            let free = q
                .generate(&case.pixels, text_ids.as_deref(), &gen)
                .unwrap()
                .remove(0);
            cost.add(case, &logits(&model, case), &logits(&q, case), &free);
        }
        let what = format!("blip2_opt {quant}");
        cost.print(&what);
        cost.check(&what, quant);
    }
}

#[test]
fn llava_q8_and_q4_against_f32() {
    let fx = Fixture::open_on("llava", &Device::Cpu);
    let model = LlavaForConditionalGeneration::load(&fx.files, &Device::Cpu).unwrap();
    let single = &fx.json["single_turn"];
    let input_ids = ids(&single["input_ids"]);
    let generated: Vec<Vec<u32>> = serde_json::from_value(single["generated"].clone()).unwrap();
    let cases: Vec<Case> = fx
        .photos()
        .iter()
        .zip(generated)
        .map(|(photo, continuation)| Case {
            pixels: fx.pixels(photo),
            input_ids: input_ids.clone(),
            continuation,
        })
        .collect();
    let gen = model.generation_config(&greedy_config(10));
    let logits = |m: &LlavaForConditionalGeneration, case: &Case| {
        let full: Vec<u32> = case
            .input_ids
            .iter()
            .chain(&case.continuation)
            .copied()
            .collect();
        m.logits(Some(&case.pixels), &row(&full), None)
            .unwrap()
            .squeeze(0)
            .unwrap() // [t, V]
    };
    for quant in [Quant::Q8, Quant::Q4] {
        let mut q = model.clone();
        let report = q.quantize_language_model(quant).unwrap();
        println!("llava {report}");
        assert_eq!((report.quantized.len(), report.kept.len()), (2, 12));
        let mut cost = Cost::default();
        for case in &cases {
            let free = q
                .generate(&case.pixels, &row(&case.input_ids), &gen)
                .unwrap()
                .remove(0);
            cost.add(case, &logits(&model, case), &logits(&q, case), &free);
        }
        let what = format!("llava {quant}");
        cost.print(&what);
        cost.check(&what, quant);
    }
}

/// Only BLIP-2 with OPT and LLaVA quantise; other models say which would.
#[test]
fn other_models_refuse_to_quantise_with_a_clear_message() {
    let t5 = Fixture::open_on("blip2_t5", &Device::Cpu);
    let mut m = Blip2ForConditionalGeneration::load(&t5.files, &Device::Cpu).unwrap();
    let err = m
        .quantize_language_model(Quant::Q8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("OPT") && err.contains("T5"), "{err}");

    let blip = Fixture::open_on("blip_caption", &Device::Cpu);
    let mut p = Pipeline::load(blip.dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let err = p
        .quantize_language_model(Quant::Q4)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("BlipForConditionalGeneration")
            && err.contains("Blip2ForConditionalGeneration")
            && err.contains("LlavaForConditionalGeneration"),
        "{err}"
    );

    let opt = Fixture::open_on("blip2_opt", &Device::Cpu);
    let mut p = Pipeline::load(opt.dir.to_str().unwrap(), &Device::Cpu).unwrap();
    let report = p.quantize_language_model(Quant::Q8).unwrap();
    assert_eq!(report.quantized.len(), 12);
    let err = p
        .quantize_language_model(Quant::Q8)
        .unwrap_err()
        .to_string();
    assert!(err.contains("already quantised"), "{err}");
}
