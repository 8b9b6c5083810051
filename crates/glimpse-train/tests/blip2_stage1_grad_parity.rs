//! BLIP-2 stage 1 against the PyTorch reference (`transformers`' Blip2ForImageTextRetrieval
//! in float64, the LAVIS losses) recorded by
//! `tools/fixtures/make_blip2_stage1_fixtures.py`: ITC, ITM with the recorded negatives,
//! ITG, and the gradient of every trainable variable; the frozen tower gets none.
//!
//! Gradients are compared per tensor as `max|g - ref| / max|ref|`; attention key biases,
//! whose exact gradient is zero, in absolute terms against the largest gradient.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use glimpse_models::blip2::Blip2Config;
use glimpse_train::blip::{BlipLossConfig, Negatives};
use glimpse_train::blip2::{Blip2Stage1, FROZEN_PREFIX};
use glimpse_train::params::{load_into, sorted_vars};
use serde_json::Value;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/train/blip2_stage1")
}

fn tensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(name), &Device::Cpu).unwrap()
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

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn stage1_losses_and_gradients_match_the_reference() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap())
            .unwrap();
    let cfg: Blip2Config =
        serde_json::from_str(&std::fs::read_to_string(dir().join("config.json")).unwrap()).unwrap();
    let loss = BlipLossConfig {
        label_smoothing: expected["label_smoothing"].as_f64().unwrap(),
        learn_temp: true,
        ..BlipLossConfig::default()
    };
    let dec = expected["dec_token"].as_u64().unwrap() as u32;
    let model = Blip2Stage1::new(&cfg, loss, dec, &Device::Cpu).unwrap();
    load_into(&model.vars.map, &tensors("weights.safetensors"), "weights").unwrap();

    let batch = tensors("batch.safetensors");
    let ids = batch["input_ids"].to_dtype(DType::U32).unwrap();
    let mask = batch["attention_mask"].to_dtype(DType::U32).unwrap();
    let list = |k: &str| -> Vec<usize> {
        expected[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect()
    };
    let (ni, nt) = (list("neg_image"), list("neg_text"));
    let l = model
        .losses(
            &batch["pixel_values"],
            &ids,
            &mask,
            Negatives::Given {
                image: &ni,
                text: &nt,
            },
        )
        .unwrap();
    for (name, got) in [
        ("itc", &l.itc),
        ("itm", &l.itm),
        ("itg", &l.itg),
        ("total", &l.total),
    ] {
        let want = expected["losses"][name].as_f64().unwrap();
        let got = scalar(got);
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{name}: {got} vs reference {want}"
        );
    }

    let grads = l.total.backward().unwrap();
    let want = tensors("grads.safetensors");
    let zero: Vec<String> = expected["zero_gradients"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let top = want.values().map(max_abs).fold(0.0, f64::max);
    let mut worst = (0.0, String::new());
    let mut seen = 0;
    for (name, var) in sorted_vars(&model.vars.map) {
        let got = grads.get(var.as_tensor());
        if name.starts_with(FROZEN_PREFIX) {
            assert!(got.is_none(), "frozen {name} got a gradient");
            continue;
        }
        let got = got.unwrap_or_else(|| panic!("{name}: no gradient"));
        let reference = want
            .get(&name)
            .unwrap_or_else(|| panic!("{name}: not in the reference"));
        let diff = max_abs(&(got - reference).unwrap());
        let err = if zero.contains(&name) {
            diff / top
        } else {
            diff / max_abs(reference)
        };
        if err > worst.0 {
            worst = (err, name.clone());
        }
        seen += 1;
    }
    assert_eq!(seen, want.len(), "every reference gradient compared");
    assert!(
        worst.0 < 1e-4,
        "worst gradient error {:.2e} at {}",
        worst.0,
        worst.1
    );
    eprintln!(
        "{seen} gradients, worst relative error {:.2e} ({})",
        worst.0, worst.1
    );
}
