//! CLIPModel against the reference (transformers on PyTorch) on the tiny checkpoints in
//! `tools/fixtures/{clip,clip_legacy,clip_f16}` written by `tools/fixtures/make_fixtures.py`.
//!
//! Inputs are the reference's own pixel values and token ids, so these tests isolate the
//! model from image preprocessing and tokenization. `GLIMPSE_FIXTURES` overrides the
//! fixture directory (e.g. a freshly regenerated set); `GLIMPSE_TEST_DEVICE=cuda` runs
//! the tests on a GPU, with bounds 10x looser (`common::tol`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, IndexOp, Tensor};
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::clip::ClipModel;

mod common;

use common::{test_device, tol};

const TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    match std::env::var_os("GLIMPSE_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures"),
    }
}

struct Case {
    model: ClipModel,
    reference: HashMap<String, Tensor>,
    record: serde_json::Value,
}

fn load(case: &str) -> Case {
    let dir = fixtures().join(case);
    let files = ModelFiles::resolve(dir.to_str().unwrap())
        .unwrap_or_else(|e| panic!("fixture {case} (run tools/fixtures/make_fixtures.py): {e}"));
    let dev = test_device();
    let model = ClipModel::load(&files, &dev).unwrap_or_else(|e| panic!("{case}: {e}"));
    let reference =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &dev).unwrap();
    let record = serde_json::from_str(
        &std::fs::read_to_string(dir.join("reference.json")).expect("reference.json"),
    )
    .unwrap();
    Case {
        model,
        reference,
        record,
    }
}

impl Case {
    fn get(&self, key: &str) -> &Tensor {
        self.reference
            .get(key)
            .unwrap_or_else(|| panic!("reference.safetensors has no `{key}`"))
    }

    fn photos(&self) -> Tensor {
        let photos: Vec<Tensor> = self.record["photos"]
            .as_array()
            .expect("reference.json: photos")
            .iter()
            .map(|s| {
                self.get(&format!("pixel_values.{}", s.as_str().unwrap()))
                    .clone()
            })
            .collect();
        Tensor::cat(&photos, 0).unwrap() // [n, 3, h, w]
    }

    fn text(&self) -> (Tensor, Tensor) {
        let ids = self.get("input_ids").to_dtype(DType::U32).unwrap();
        let mask = self.get("attention_mask").to_dtype(DType::U32).unwrap();
        (ids, mask)
    }
}

/// Fails with the position and both values of the largest difference; `cpu_tol` is the
/// bound on the CPU (`common::tol` loosens it on a GPU).
fn assert_close(what: &str, got: &Tensor, want: &Tensor, cpu_tol: f32) {
    let tol = tol(cpu_tol);
    assert_eq!(got.dims(), want.dims(), "{what}: shapes differ");
    let g = got.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let w = want.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    let (g, w) = (g.to_vec1::<f32>().unwrap(), w.to_vec1::<f32>().unwrap());
    let (i, diff) = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |best, (i, d)| {
            if d > best.1 || d.is_nan() {
                (i, d)
            } else {
                best
            }
        });
    assert!(
        diff <= tol,
        "{what}: max |diff| {diff:.3e} > {tol:.0e} at flat index {i} of {:?}: got {}, reference {}",
        want.dims(),
        g[i],
        w[i]
    );
    eprintln!("{what}: max |diff| {diff:.2e}");
}

fn check_against_reference(case: &str) {
    let c = load(case);
    let images = c.model.get_image_features(&c.photos()).unwrap();
    assert_close(
        &format!("{case} image_embeds"),
        &images,
        c.get("image_embeds"),
        TOLERANCE,
    );
    let (ids, mask) = c.text();
    let texts = c.model.get_text_features(&ids, &mask).unwrap();
    assert_close(
        &format!("{case} text_embeds"),
        &texts,
        c.get("text_embeds"),
        TOLERANCE,
    );
    let logits = c.model.logits_per_image(&images, &texts).unwrap();
    assert_close(
        &format!("{case} logits_per_image"),
        &logits,
        c.get("logits_per_image"),
        TOLERANCE,
    );
    let scale = c.record["logit_scale"]
        .as_f64()
        .expect("reference.json: logit_scale") as f32;
    assert!((c.model.logit_scale().unwrap() - scale).abs() < 1e-6);
}

#[test]
fn clip_matches_reference() {
    check_against_reference("clip");
}

#[test]
fn clip_with_legacy_eos_and_quick_gelu_matches_reference() {
    let c = load("clip_legacy");
    assert_eq!(c.model.config().text_config.eos_token_id, 2);
    drop(c);
    check_against_reference("clip_legacy");
}

#[test]
fn clip_stored_in_f16_matches_reference() {
    check_against_reference("clip_f16");
}

#[test]
fn batches_equal_items_one_at_a_time() {
    let c = load("clip");
    let photos = c.photos();
    let batch = c.model.get_image_features(&photos).unwrap();
    for i in 0..photos.dim(0).unwrap() {
        let one = c
            .model
            .get_image_features(&photos.narrow(0, i, 1).unwrap())
            .unwrap();
        assert_close(
            &format!("image {i}"),
            &one,
            &batch.narrow(0, i, 1).unwrap(),
            1e-5,
        );
    }
    // Each text alone and unpadded must equal its row of the padded batch.
    let (ids, mask) = c.text();
    let batch = c.model.get_text_features(&ids, &mask).unwrap();
    for i in 0..ids.dim(0).unwrap() {
        let len = mask
            .i(i)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<u32>()
            .unwrap() as usize;
        let row_ids = ids.i((i..i + 1, ..len)).unwrap();
        let row_mask = mask.i((i..i + 1, ..len)).unwrap();
        let one = c.model.get_text_features(&row_ids, &row_mask).unwrap();
        assert_close(
            &format!("text {i}"),
            &one,
            &batch.narrow(0, i, 1).unwrap(),
            1e-5,
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let c = load("clip");
    let dev = test_device();
    let wrong_size = Tensor::zeros((1, 3, 40, 40), DType::F32, &dev).unwrap();
    assert!(c.model.get_image_features(&wrong_size).is_err());
    let vocab = c.model.config().text_config.vocab_size as u32;
    let ids = Tensor::new(&[[1u32, vocab]], &dev).unwrap();
    let mask = Tensor::new(&[[1u32, 1]], &dev).unwrap();
    let err = c
        .model
        .get_text_features(&ids, &mask)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&vocab.to_string()), "{err}");
    let short_mask = Tensor::new(&[[1u32]], &dev).unwrap();
    assert!(c
        .model
        .get_text_features(&ids.i((.., ..1)).unwrap(), &mask)
        .is_err());
    assert!(c.model.get_text_features(&ids, &short_mask).is_err());
}

/// Inference runs the last layer at the pooled rows alone (the class token, each text's
/// end token); the differentiable full pass pools after running every position. The two
/// must agree, also for an end token in mid-sequence followed by more tokens, a padded
/// key before the end token, a row without an end token and the legacy (largest id)
/// pooling.
#[test]
fn pooled_last_layer_equals_the_full_pass() {
    for case in ["clip", "clip_legacy"] {
        let c = load(case);
        let photos = c.photos();
        let fast = c.model.image_features(&photos, false).unwrap();
        let full = c.model.image_features(&photos, true).unwrap();
        assert_close(&format!("{case} pooled image"), &fast, &full, 1e-5);

        let (ids, mask) = c.text();
        let fast = c.model.text_features(&ids, Some(&mask), false).unwrap();
        let full = c.model.text_features(&ids, Some(&mask), true).unwrap();
        assert_close(&format!("{case} pooled text"), &fast, &full, 1e-5);

        let cfg = &c.model.config().text_config;
        let (bos, eos) = (cfg.bos_token_id.unwrap_or(0), cfg.eos_token_id);
        let dev = test_device();
        let ids = Tensor::new(
            &[
                [bos, 5, eos, 7, 8, 9, 3],    // end token mid-sequence, tokens after it
                [bos, 5, 6, 7, 8, 9, 10],     // no end token
                [bos, 11, 12, 13, eos, 0, 0], // padded tail
                [bos, 4, 4, 4, 4, 4, eos],    // a padded key before the end
            ],
            &dev,
        )
        .unwrap();
        let mask = Tensor::new(
            &[
                [1u32, 1, 1, 1, 1, 1, 1],
                [1, 1, 1, 1, 1, 1, 1],
                [1, 1, 1, 1, 1, 0, 0],
                [1, 1, 0, 1, 1, 1, 1],
            ],
            &dev,
        )
        .unwrap();
        for m in [None, Some(&mask)] {
            let fast = c.model.text_features(&ids, m, false).unwrap();
            let full = c.model.text_features(&ids, m, true).unwrap();
            let what = format!("{case} pooled text, mask {}", m.is_some());
            assert_close(&what, &fast, &full, 1e-5);
        }
    }
}
