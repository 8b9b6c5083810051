//! BLIP-2 stage 1 against the PyTorch reference (`transformers`' Blip2ForImageTextRetrieval
//! in float64, the LAVIS losses) recorded by
//! `tools/fixtures/make_blip2_stage1_fixtures.py`: ITC, ITM with the recorded negatives,
//! ITG, and the gradient of every trainable variable; the frozen tower gets none.
//!
//! Gradients are compared per tensor as `max|g - ref| / max|ref|`; attention key biases,
//! whose exact gradient is zero, in absolute terms against the largest gradient.

mod common;

use candle_core::{DType, Device};
use glimpse_models::blip2::Blip2Config;
use glimpse_train::blip::{BlipLossConfig, Negatives};
use glimpse_train::blip2::{Blip2Stage1, FROZEN_PREFIX};
use glimpse_train::params::{load_into, sorted_vars};
use serde_json::Value;

use common::{compare_gradients, scalar, train_fixture, zero_gradients};

fn dir() -> std::path::PathBuf {
    train_fixture("blip2_stage1")
}

fn tensors(name: &str) -> std::collections::HashMap<String, candle_core::Tensor> {
    common::tensors(&dir().join(name))
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
    let zero = zero_gradients(&expected);
    let vars = sorted_vars(&model.vars.map);
    let frozen = |n: &str| n.starts_with(FROZEN_PREFIX);
    let report = compare_gradients(&grads, &vars, &want, &zero, frozen);
    // The tower's output is detached: no gradient reaches it.
    for (name, var) in &vars {
        if frozen(name) {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "frozen {name} got a gradient"
            );
        }
    }
    for (err, what) in [
        (report.worst, report.worst_name.as_str()),
        (report.worst_zero, "a zero gradient"),
    ] {
        assert!(err < 1e-4, "worst gradient error {err:.2e} at {what}");
    }
    eprintln!(
        "{} gradients, worst relative error {:.2e} ({}), zero ones {:.2e}",
        report.compared, report.worst, report.worst_name, report.worst_zero
    );
}
