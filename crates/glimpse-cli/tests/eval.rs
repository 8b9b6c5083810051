//! `glimpse eval` end to end on the tiny fixture models and a small synthetic
//! dataset: the JSON contract, the human output, and errors that name the problem.
//! These are contract tests: the tiny random-weight models give no meaningful scores,
//! so metrics are checked for their fields, counts and ranges only. The metric values
//! themselves are checked against reference implementations in glimpse-eval's tests
//! (`crates/glimpse-eval/src/metrics/`, fixtures from `tools/metrics_reference.py`).

mod common;

use std::path::Path;
use std::sync::OnceLock;

use common::{fails, fixture, glimpse, json};
use glimpse_data::tar::TarWriter;
use glimpse_synth::{self as synth, SynthConfig};
use serde_json::Value;

/// 20 synthetic samples and a shard with one corrupt image; kept for the whole run.
fn data() -> &'static str {
    static DIR: OnceLock<(tempfile::TempDir, String)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = SynthConfig {
            seed: 5,
            count: 20,
            image_size: 32,
            jitter: 0.0,
            val_fraction: 0.0,
            test_fraction: 0.0,
            ..SynthConfig::default()
        };
        synth::generate(&cfg, dir.path(), |_, _| {}).unwrap();
        let bad = dir.path().join("zz-corrupt.tar");
        let mut tar = TarWriter::new(std::fs::File::create(&bad).unwrap());
        tar.append("broken.png", b"not a png").unwrap();
        tar.append("broken.json", br#"{"caption": "a red circle"}"#)
            .unwrap();
        tar.finish().unwrap();
        let path = dir.path().display().to_string();
        (dir, path)
    })
    .1
}

fn model(name: &str) -> String {
    fixture(name).display().to_string()
}

fn eval_json(name: &str, task: &str, extra: &[&str]) -> Value {
    let m = model(name);
    let mut args = vec![
        "eval",
        "--model",
        &m,
        "--data",
        data(),
        "--task",
        task,
        "--json",
    ];
    args.extend(extra);
    json(&args)
}

/// Contract: a rate is a number in [0, 1].
fn contract_rate(v: &Value, what: &str) {
    let x = v
        .as_f64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!((0.0..=1.0).contains(&x), "{what} = {x}");
}

#[test]
fn retrieval_json_follows_the_contract() {
    let out = eval_json("clip", "retrieval", &["--batch-size", "6"]);
    assert_eq!(out["task"], "retrieval");
    assert_eq!(out["model"], model("clip"));
    assert_eq!(out["data"], data());
    assert_eq!(out["samples"], 20);
    assert_eq!(out["skipped"], 1);
    let m = &out["metrics"];
    for dir in ["i2t", "t2i"] {
        for k in ["r1", "r5", "r10"] {
            contract_rate(&m[dir][k], &format!("{dir} {k}"));
        }
    }
    assert_eq!(
        (m["n_images"].as_u64(), m["n_texts"].as_u64()),
        (Some(20), Some(20))
    );
    assert!(m["rerank"].is_null());
}

#[test]
fn rerank_on_blip_retrieval() {
    let out = eval_json("blip_itm", "retrieval", &["--rerank", "4", "--limit", "10"]);
    assert_eq!(out["samples"], 10);
    assert_eq!(out["metrics"]["rerank"], 4);
    contract_rate(&out["metrics"]["r_mean"], "r_mean");
}

#[test]
fn caption_and_vqa_json_follow_the_contract() {
    let out = eval_json(
        "blip_caption",
        "caption",
        &["--limit", "8", "--max-new-tokens", "5"],
    );
    assert_eq!(out["samples"], 8);
    let m = &out["metrics"];
    contract_rate(&m["bleu4"], "BLEU-4");
    assert!(m["cider"].as_f64().unwrap() >= 0.0);
    let examples = m["examples"].as_array().unwrap();
    assert_eq!(examples.len(), 8);
    assert_eq!(examples[0]["key"], "000000");
    contract_rate(&m["attributes"]["all_correct"], "attribute accuracy");

    let out = eval_json(
        "blip_vqa",
        "vqa",
        &["--limit", "2", "--max-new-tokens", "3"],
    );
    assert_eq!(out["task"], "vqa");
    assert_eq!(out["samples"], 2);
    contract_rate(&out["metrics"]["accuracy"], "VQA accuracy");
    assert!(out["metrics"]["n_questions"].as_u64().unwrap() >= 2);
}

#[test]
fn zero_shot_prints_for_people() {
    let m = model("clip");
    let out = glimpse(&[
        "eval",
        "--model",
        &m,
        "--data",
        data(),
        "--task",
        "zeroshot",
        "--template",
        "a picture of a {}",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("zeroshot of"), "{stdout}");
    assert!(stdout.contains("top-1 accuracy"), "{stdout}");
    assert!(stdout.contains("70 labels"), "{stdout}");
    // The corrupt sample and the multi-object records are listed as skipped.
    assert!(stdout.contains("broken"), "{stdout}");
}

#[test]
fn errors_name_the_problem() {
    let clip = model("clip");
    let e = fails(&[
        "eval",
        "--model",
        &clip,
        "--data",
        data(),
        "--task",
        "caption",
    ]);
    assert!(
        e.contains("CLIPModel") && e.contains("--task caption"),
        "{e}"
    );

    let e = fails(&[
        "eval",
        "--model",
        &clip,
        "--data",
        "/no/such/data",
        "--task",
        "retrieval",
    ]);
    assert!(e.contains("/no/such/data"), "{e}");

    let e = fails(&[
        "eval",
        "--model",
        &clip,
        "--data",
        data(),
        "--task",
        "detect",
    ]);
    assert!(e.contains("detect") && e.contains("retrieval"), "{e}");

    let e = fails(&[
        "eval",
        "--model",
        &clip,
        "--data",
        data(),
        "--task",
        "retrieval",
        "--rerank",
        "3",
    ]);
    assert!(e.contains("ITM"), "{e}");

    let e = fails(&[
        "eval",
        "--model",
        &clip,
        "--data",
        data(),
        "--task",
        "zeroshot",
        "--template",
        "no slot",
    ]);
    assert!(e.contains("--template"), "{e}");

    let e = fails(&[
        "eval",
        "--model",
        &clip,
        "--data",
        data(),
        "--task",
        "retrieval",
        "--batch-size",
        "0",
    ]);
    assert!(e.contains("--batch-size"), "{e}");

    let missing = Path::new("/no/such/model").display().to_string();
    let e = fails(&[
        "eval",
        "--model",
        &missing,
        "--data",
        data(),
        "--task",
        "retrieval",
    ]);
    assert!(e.contains("/no/such/model"), "{e}");
}
