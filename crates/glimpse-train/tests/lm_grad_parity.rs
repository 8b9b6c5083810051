//! The `lm` recipe's loss and every parameter's gradient for a tiny OPT and a tiny LLaMA
//! against the PyTorch reference (`transformers` modules, float64) recorded by
//! `tools/fixtures/make_lm_train_fixtures.py`, on a right-padded batch whose last row
//! has an unscored prompt.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use glimpse_train::lm::{LmBatch, LmConfig, LmTrain};
use glimpse_train::params::{load_into, sorted_vars};
use serde_json::Value;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures/train")
        .join(name)
}

fn tensors(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap()
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

fn check(name: &str) {
    let d = dir(name);
    let config: Value =
        serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
    let expected: Value =
        serde_json::from_slice(&std::fs::read(d.join("expected.json")).unwrap()).unwrap();
    let cfg = LmConfig::from_json(&config, name).unwrap();
    let m = LmTrain::new(&cfg, &Device::Cpu).unwrap();
    load_into(&m.vars.map, &tensors(d.join("weights.safetensors")), name).unwrap();
    let b = tensors(d.join("batch.safetensors"));
    let u32s = |k: &str| b[k].to_dtype(DType::U32).unwrap();
    let batch = LmBatch {
        input_ids: u32s("input_ids"),
        attention_mask: u32s("attention_mask"),
        loss_mask: u32s("loss_mask"),
        kinds: vec![None; 3],
    };
    let loss = m.loss(&batch, true).unwrap();
    let got = loss
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let want = expected["loss"].as_f64().unwrap();
    assert!(
        (got - want).abs() < 1e-5 * want.abs(),
        "{name}: loss {got} vs {want}"
    );

    let grads = loss.backward().unwrap();
    let reference = tensors(d.join("grads.safetensors"));
    let vars = sorted_vars(&m.vars.map);
    assert_eq!(vars.len(), reference.len(), "{name}: parameter count");
    let zero: Vec<&str> = expected["zero_gradient"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let global = reference.values().map(max_abs).fold(0.0, f64::max);
    let mut worst = 0.0f64;
    for (n, v) in &vars {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
        let r = reference
            .get(n)
            .unwrap_or_else(|| panic!("{name}: the reference has no gradient for {n}"));
        let diff = max_abs(&(g - r).unwrap());
        if zero.contains(&n.as_str()) {
            assert!(
                diff <= 1e-6 * global,
                "{name}: {n}: {diff} (exact gradient is zero)"
            );
            continue;
        }
        let e = diff / max_abs(r);
        worst = worst.max(e);
        assert!(e < 1e-4, "{name}: {n}: relative gradient error {e:.2e}");
    }
    eprintln!("{name}: loss {got} (reference {want}), worst gradient error {worst:.2e}");
}

#[test]
fn opt_lm_loss_and_gradients_match_reference() {
    check("opt_lm");
}

#[test]
fn llama_lm_loss_and_gradients_match_reference() {
    check("llama_lm");
}
