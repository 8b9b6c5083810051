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
use glimpse_train::blip::{BlipLossConfig, BlipPretrain, CaptionNegatives, Negatives};
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

/// Hard negative captions in BLIP (an extension beyond the reference): a missing rewrite
/// changes nothing; real rewrites join ITC's image→text softmax with target 0 (so ITC
/// grows) and the shape-swapped ones are scored by ITM with label 0, averaged with the
/// in-batch pairs.
#[test]
fn blip_caption_negatives_extend_itc_and_itm() {
    let d = dir("blip");
    let expected = json(d.join("expected.json"));
    let train = json(d.join("train.json"));
    let cfg: BlipConfig = serde_json::from_value(json(d.join("config.json"))).unwrap();
    let loss_cfg: BlipLossConfig = serde_json::from_value(train["blip_loss"].clone()).unwrap();
    let weights = tensors(d.join("weights.safetensors"));
    let state = tensors(d.join("state.safetensors"));
    let batch = tensors(d.join("batch.safetensors"));
    let px = &batch["pixel_values"];
    let ids = batch["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = batch["attention_mask"].to_dtype(DType::U32).unwrap();
    let b = ids.dim(0).unwrap();
    let n0 = &expected["negatives"][0];
    let ni: Vec<usize> = serde_json::from_value(n0["image"].clone()).unwrap();
    let nt: Vec<usize> = serde_json::from_value(n0["text"].clone()).unwrap();
    // Two rounds of "rewrites": the batch's captions rolled by one and by two.
    let roll = |t: &Tensor, k: usize| {
        Tensor::cat(
            &[&t.narrow(0, k, b - k).unwrap(), &t.narrow(0, 0, k).unwrap()],
            0,
        )
        .unwrap()
    };
    let neg_ids = Tensor::cat(&[&roll(&ids, 1), &roll(&ids, 2)], 0).unwrap();
    let neg_mask = Tensor::cat(&[&roll(&mask, 1), &roll(&mask, 2)], 0).unwrap();
    let run = |valid: Option<&[f32]>| {
        let mut model = BlipPretrain::new(&cfg, loss_cfg, 0, &Device::Cpu).unwrap();
        load_into(&model.vars.map, &weights, "weights").unwrap();
        model.reset_momentum();
        model.image_queue = state["image_queue"].clone();
        model.text_queue = state["text_queue"].clone();
        let captions = valid.map(|valid| CaptionNegatives {
            ids: &neg_ids,
            mask: &neg_mask,
            valid,
        });
        let negatives = Negatives::Given {
            image: &ni,
            text: &nt,
        };
        model
            .losses_with_captions(px, &ids, &mask, loss_cfg.alpha, negatives, captions)
            .unwrap()
    };
    let plain = run(None);
    let none_valid = vec![0f32; 2 * b];
    let empty = run(Some(&none_valid));
    assert!(rel(scalar(&empty.itc), scalar(&plain.itc)) < 1e-6);
    assert!(rel(scalar(&empty.itm), scalar(&plain.itm)) < 1e-6);
    assert!(rel(scalar(&empty.lm), scalar(&plain.lm)) < 1e-6);
    assert_eq!(empty.itm_logits.dim(0).unwrap(), 3 * b);

    // Round 0 valid for the first half of the images, round 1 for all.
    let mut valid = vec![0f32; 2 * b];
    let half = b.div_ceil(2);
    valid[..half].fill(1.0);
    valid[b..].fill(1.0);
    let with = run(Some(&valid));
    assert!(scalar(&with.itc) > scalar(&plain.itc) + 1e-4);
    assert_eq!(with.itm_logits.dim(0).unwrap(), 3 * b + half);
    assert!(rel(scalar(&with.lm), scalar(&plain.lm)) < 1e-6);
    // ITM: the mean cross-entropy over the 3B in-batch rows and the `half` new rows,
    // each new row's label being 0 ("no match").
    let logits = with
        .itm_logits
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    let ce = |row: &[f64], label: usize| {
        let m = row.iter().cloned().fold(f64::MIN, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        lse - row[label]
    };
    let new_rows: f64 = logits[3 * b..].iter().map(|r| ce(r, 0)).sum();
    let old_rows: f64 = logits[..3 * b]
        .iter()
        .enumerate()
        .map(|(i, r)| ce(r, usize::from(i < b)))
        .sum();
    let want = (old_rows + new_rows) / (3 * b + half) as f64;
    assert!(
        rel(scalar(&with.itm), want) < 1e-5,
        "{} vs {want}",
        scalar(&with.itm)
    );
}
