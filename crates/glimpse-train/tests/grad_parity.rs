//! Losses, every parameter's gradient, and three AdamW steps of tiny CLIP and BLIP
//! pretraining models against the PyTorch reference (`transformers` modules, float64)
//! recorded by `tools/fixtures/make_train_fixtures.py`.
//!
//! Gradients are compared per tensor as `max|g - ref| / max|ref|` (single near-zero
//! elements carry float32 rounding); key biases, whose exact gradient is zero, are
//! compared in absolute terms against the largest gradient.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use glimpse_models::blip::BlipConfig;
use glimpse_models::clip::ClipConfig;
use glimpse_train::blip::{BlipLossConfig, BlipPretrain, Negatives};
use glimpse_train::clip::ClipTrain;
use glimpse_train::optim::{clip_grad_norm, AdamW, AdamWConfig};
use glimpse_train::params::{load_into, sorted_vars};
use serde_json::Value;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures/train")
        .join(name)
}

fn json(path: PathBuf) -> Value {
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn tensors(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Compares every gradient; returns the worst relative error seen.
fn check_grads(
    names: &[String],
    got: &[Tensor],
    want: &HashMap<String, Tensor>,
    zero: &[String],
) -> f64 {
    assert_eq!(
        names.len(),
        want.len(),
        "parameter count differs from the reference"
    );
    let global = want.values().map(max_abs).fold(0.0, f64::max);
    let mut worst = 0.0f64;
    for (name, g) in names.iter().zip(got) {
        let r = want
            .get(name)
            .unwrap_or_else(|| panic!("reference has no gradient for {name}"));
        assert_eq!(g.shape(), r.shape(), "{name}");
        let diff = max_abs(&(g - r).unwrap());
        if zero.contains(name) {
            assert!(
                diff <= 1e-6 * global,
                "{name}: {diff} (exact gradient is zero)"
            );
            continue;
        }
        let scale = max_abs(r);
        assert!(scale > 0.0, "{name}: reference gradient is zero");
        assert!(max_abs(g) > 0.0, "{name} received a zero gradient");
        let e = diff / scale;
        assert!(e <= 1e-4, "{name}: gradient relative error {e:.3e}");
        worst = worst.max(e);
    }
    worst
}

fn adamw(train: &Value) -> AdamWConfig {
    serde_json::from_value(train["adamw"].clone()).unwrap()
}

#[test]
fn clip_loss_gradients_and_adamw_steps_match_reference() {
    let d = dir("clip");
    let expected = json(d.join("expected.json"));
    let train = json(d.join("train.json"));
    let cfg: ClipConfig = serde_json::from_value(json(d.join("config.json"))).unwrap();
    let model = ClipTrain::new(&cfg, &Device::Cpu).unwrap();
    load_into(
        &model.vars.map,
        &tensors(d.join("weights.safetensors")),
        "weights",
    )
    .unwrap();
    let batch = tensors(d.join("batch.safetensors"));
    let px = &batch["pixel_values"];
    let ids = batch["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = batch["attention_mask"].to_dtype(DType::U32).unwrap();

    let vars = sorted_vars(&model.vars.map);
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    let mut opt = AdamW::new(vars, adamw(&train)).unwrap();
    let zero: Vec<String> = serde_json::from_value(
        expected["zero_gradients"]
            .get("tensors")
            .cloned()
            .unwrap_or(expected["zero_gradients"].clone()),
    )
    .unwrap_or_default();

    let l = model.losses(px, &ids, &mask).unwrap();
    assert!(rel(scalar(&l.total), expected["loss"].as_f64().unwrap()) < 1e-5);
    let logits = l.logits_per_image.to_vec2::<f32>().unwrap();
    for (i, row) in logits.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let w = expected["logits_per_image"][i][j].as_f64().unwrap();
            assert!(
                (v as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
                "logits[{i}][{j}] {v} vs {w}"
            );
        }
    }
    let grads = opt.gradients(&l.total.backward().unwrap()).unwrap();
    let worst = check_grads(&names, &grads, &tensors(d.join("grads.safetensors")), &zero);
    eprintln!("CLIP: worst gradient relative error {worst:.2e}");

    let lr = train["lr"].as_f64().unwrap();
    let max_norm = train["max_grad_norm"].as_f64().unwrap();
    let mut losses = Vec::new();
    for step in 0..3 {
        let l = model.losses(px, &ids, &mask).unwrap();
        losses.push(scalar(&l.total));
        let mut g = opt.gradients(&l.total.backward().unwrap()).unwrap();
        let norm = clip_grad_norm(&mut g, max_norm).unwrap();
        let want_norm = expected["grad_norms"][step].as_f64().unwrap();
        assert!(
            rel(norm, want_norm) < 1e-4,
            "step {step} norm {norm} vs {want_norm}"
        );
        opt.step(&g, lr).unwrap();
    }
    let final_loss = scalar(&model.losses(px, &ids, &mask).unwrap().total);
    for (i, (g, w)) in losses
        .iter()
        .zip(expected["step_losses"].as_array().unwrap())
        .enumerate()
    {
        assert!(rel(*g, w.as_f64().unwrap()) < 1e-4, "step {i}: {g} vs {w}");
    }
    let w = expected["final_loss"].as_f64().unwrap();
    assert!(rel(final_loss, w) < 1e-4, "final {final_loss} vs {w}");
}

#[test]
fn blip_pretraining_losses_gradients_and_adamw_steps_match_reference() {
    let d = dir("blip");
    let expected = json(d.join("expected.json"));
    let train = json(d.join("train.json"));
    let cfg: BlipConfig = serde_json::from_value(json(d.join("config.json"))).unwrap();
    let loss_cfg: BlipLossConfig = serde_json::from_value(train["blip_loss"].clone()).unwrap();
    let mut model = BlipPretrain::new(&cfg, loss_cfg, 0, &Device::Cpu).unwrap();
    load_into(
        &model.vars.map,
        &tensors(d.join("weights.safetensors")),
        "weights",
    )
    .unwrap();
    model.reset_momentum();
    let state = tensors(d.join("state.safetensors"));
    model.image_queue = state["image_queue"].clone();
    model.text_queue = state["text_queue"].clone();
    let batch = tensors(d.join("batch.safetensors"));
    let px = &batch["pixel_values"];
    let ids = batch["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = batch["attention_mask"].to_dtype(DType::U32).unwrap();
    let negatives: Vec<(Vec<usize>, Vec<usize>)> = expected["negatives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                serde_json::from_value(n["image"].clone()).unwrap(),
                serde_json::from_value(n["text"].clone()).unwrap(),
            )
        })
        .collect();
    let zero: Vec<String> =
        serde_json::from_value(expected["zero_gradients"]["tensors"].clone()).unwrap();

    let vars = sorted_vars(&model.vars.map);
    let names: Vec<String> = vars.iter().map(|(n, _)| n.clone()).collect();
    let mut opt = AdamW::new(vars, adamw(&train)).unwrap();
    let lr = train["lr"].as_f64().unwrap();
    let max_norm = train["max_grad_norm"].as_f64().unwrap();
    let alpha = loss_cfg.alpha;

    let mut seen = Vec::new();
    for (step, (ni, nt)) in negatives.iter().enumerate() {
        let l = model
            .losses(
                px,
                &ids,
                &mask,
                alpha,
                Negatives::Given {
                    image: ni,
                    text: nt,
                },
            )
            .unwrap();
        let parts = [
            scalar(&l.total),
            scalar(&l.itc),
            scalar(&l.itm),
            scalar(&l.lm),
        ];
        seen.push(parts);
        if step == 0 {
            for (k, v) in ["loss", "loss_itc", "loss_itm", "loss_lm"]
                .iter()
                .zip(parts)
            {
                let w = expected[*k].as_f64().unwrap();
                assert!(rel(v, w) < 1e-5, "{k}: {v} vs {w}");
            }
            let sim = l.sim_i2t.to_vec2::<f32>().unwrap();
            for (i, row) in sim.iter().enumerate() {
                for (j, &v) in row.iter().enumerate() {
                    let w = expected["sim_i2t"][i][j].as_f64().unwrap();
                    assert!(
                        (v as f64 - w).abs() < 1e-4 * w.abs().max(1.0),
                        "sim_i2t[{i}][{j}] {v} vs {w}"
                    );
                }
            }
            let grads = opt.gradients(&l.total.backward().unwrap()).unwrap();
            let worst = check_grads(&names, &grads, &tensors(d.join("grads.safetensors")), &zero);
            eprintln!("BLIP: worst gradient relative error {worst:.2e}");
        }
        if step == 3 {
            break; // the fourth forward is the final evaluation
        }
        let mut g = opt.gradients(&l.total.backward().unwrap()).unwrap();
        let norm = clip_grad_norm(&mut g, max_norm).unwrap();
        let want = expected["grad_norms"][step].as_f64().unwrap();
        assert!(rel(norm, want) < 1e-4, "step {step} norm {norm} vs {want}");
        opt.step(&g, lr).unwrap();
    }
    assert_eq!(seen.len(), 4, "three steps and the final forward");
    let keys = ["total", "itc", "itm", "lm"];
    for (i, parts) in seen.iter().enumerate() {
        let want = if i < 3 {
            &expected["step_losses"][i]
        } else {
            &expected["final"]
        };
        for (k, v) in keys.iter().zip(parts) {
            let w = want[*k].as_f64().unwrap();
            assert!(rel(*v, w) < 1e-4, "forward {i} {k}: {v} vs {w}");
        }
    }
}
