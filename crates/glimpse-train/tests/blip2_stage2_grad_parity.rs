//! BLIP-2 stage 2 (OPT) against the PyTorch reference recorded by
//! `tools/fixtures/make_blip2_stage2_fixtures.py`: `transformers`'
//! `Blip2ForConditionalGeneration` in float64, its LM loss with the queries, bos and
//! prompt labelled -100, and the gradient of the queries, the Q-Former and
//! `language_projection`. The trainer's rows ([`stage2_row`]) give the recorded ids and
//! labels; the frozen tower gets no gradient, and neither it nor the frozen OPT moves in
//! an update.
//!
//! The reference's weights are float32 values, upcast. Glimpse's model built in f64
//! gives the reference's loss to float64 rounding and its gradients to 1e-6: candle's
//! backward of the exact GELU (candle-core 0.11 `backprop.rs`) takes 1/sqrt(2 pi) as
//! 0.398942, 7e-7 off, which the Q-Former's and the tower's GELUs carry into the
//! gradients (~2e-7). Built in f32, the dtype it trains in, it agrees to float32
//! rounding, and the update is checked there.

mod common;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use glimpse_models::blip2::Blip2Config;
use glimpse_train::blip2::stage2::{is_frozen, stage2_row};
use glimpse_train::blip2::{Blip2Stage2, Stage2Batch};
use glimpse_train::optim::{AdamW, AdamWConfig};
use glimpse_train::params::{load_into, sorted_vars};

use common::{compare_gradients, copies, json, max_abs, tensors, train_fixture};

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The loss and gradients of the model built in `dtype` against the reference; returns
/// the model and its gradients.
fn check(dtype: DType, loss_tol: f64, grad_tol: f64) -> (Blip2Stage2, GradStore) {
    let dir = train_fixture("blip2_stage2");
    let expected = json(&dir.join("expected.json"));
    let cfg: Blip2Config = serde_json::from_value(json(&dir.join("config.json"))).unwrap();
    let model = Blip2Stage2::with_dtype(&cfg, dtype, &Device::Cpu).unwrap();
    load_into(
        &model.vars.map,
        &tensors(&dir.join("weights.safetensors")),
        "weights",
    )
    .unwrap();

    // The trainer's layout of each row is the reference's ids and labels.
    let b = tensors(&dir.join("batch.safetensors"));
    let want_ids: Vec<Vec<i64>> = b["input_ids"].to_vec2().unwrap();
    let labels: Vec<Vec<i64>> = b["labels"].to_vec2().unwrap();
    let image = cfg.image_token_index.unwrap();
    let eos = *cfg.text_config.eos_token_ids().first().unwrap();
    let rows = expected["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want_ids.len());
    for (r, row) in rows.iter().enumerate() {
        let (got, targets) = stage2_row(
            image,
            cfg.num_query_tokens,
            &ids(&row["prefix"]),
            &ids(&row["text"]),
            eos,
        );
        let n = got.len();
        let want: Vec<u32> = want_ids[r][..n].iter().map(|&i| i as u32).collect();
        assert_eq!(got, want, "row {r}: ids");
        let scored: Vec<u32> = labels[r].iter().map(|&l| u32::from(l >= 0)).collect();
        assert_eq!(targets, scored[..n], "row {r}: scored positions");
        assert!(
            scored[n..].iter().all(|&s| s == 0),
            "row {r}: padding scored"
        );
    }
    let targets: Vec<u32> = labels
        .iter()
        .flatten()
        .map(|&l| u32::from(l >= 0))
        .collect();
    let u32s = |k: &str| b[k].to_dtype(DType::U32).unwrap();
    let batch = Stage2Batch {
        pixel_values: b["pixel_values"].to_dtype(dtype).unwrap(),
        input_ids: u32s("input_ids"),
        attention_mask: u32s("attention_mask"),
        targets: Tensor::from_vec(targets, b["labels"].shape(), &Device::Cpu).unwrap(),
    };

    let loss = model.loss(&batch, true).unwrap();
    let (got, want, rel) = common::check_loss(&loss, &expected, loss_tol, dtype);

    let grads = loss.backward().unwrap();
    let vars = sorted_vars(&model.vars.map);
    let reference = tensors(&dir.join("grads.safetensors"));
    let zero = common::zero_gradients(&expected);
    let report = compare_gradients(&grads, &vars, &reference, &zero, is_frozen);
    // The tower's output is detached: no gradient reaches it.
    for (name, var) in &vars {
        if name.starts_with("vision_model.") {
            assert!(
                grads.get(var.as_tensor()).is_none(),
                "{name} got a gradient"
            );
        }
    }
    report.assert_within(grad_tol, dtype);
    eprintln!(
        "{dtype:?}: loss {got} (reference {want}, relative {rel:.2e}); {} gradients, worst {:.2e} ({}), \
         zero ones {:.2e}",
        report.compared, report.worst, report.worst_name, report.worst_zero
    );

    (model, grads)
}

#[test]
fn stage2_loss_and_gradients_match_the_reference_in_f64() {
    check(DType::F64, 1e-12, 1e-6);
}

#[test]
fn stage2_matches_in_f32_and_an_update_leaves_the_frozen_parts() {
    let (model, grads) = check(DType::F32, 1e-6, 1e-5);
    // One update of the trainable variables (the objective's filter): they move, the
    // frozen tower and language model stay bit for bit.
    let vars = sorted_vars(&model.vars.map);
    let before = copies(&vars);
    let trainable: Vec<_> = vars
        .iter()
        .filter(|(n, _)| !is_frozen(n))
        .cloned()
        .collect();
    assert!(vars.iter().any(|(n, _)| n.starts_with("vision_model.")));
    assert!(vars.iter().any(|(n, _)| n.starts_with("language_model.")));
    let mut opt = AdamW::new(trainable, AdamWConfig::default()).unwrap();
    let g = opt.gradients(&grads).unwrap();
    opt.step(&g, 1e-3).unwrap();
    for (name, var) in &vars {
        let d = max_abs(&(var.as_tensor() - &before[name]).unwrap());
        match is_frozen(name) {
            true => assert_eq!(d, 0.0, "frozen {name} moved"),
            false => assert!(d > 0.0, "{name} did not move"),
        }
    }
}
