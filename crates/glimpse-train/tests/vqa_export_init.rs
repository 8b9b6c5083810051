//! A `blip_vqa` run can start from an exported `BlipForQuestionAnswering` (the bundled
//! `models/blip-synth/vqa`), as `recipes/blip-vqa-count-synth.toml` does: it takes the
//! export's tokenizer and every weight, so its first loss is the trained model's, not a
//! fresh decoder's.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::trainer::{train, TrainOptions};

fn tensors(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

#[test]
fn blip_vqa_runs_start_from_an_exported_vqa_model() {
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/blip-synth/vqa");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = SynthConfig {
        count: 16,
        shard_size: 16,
        seed: 5,
        val_fraction: 0.0,
        test_fraction: 0.0,
        ..SynthConfig::default()
    };
    synth::generate(&cfg, &root.join("data"), |_, _| {}).unwrap();
    let recipe = root.join("vqa.toml");
    std::fs::write(
        &recipe,
        format!(
            r#"
[model]
kind = "blip_vqa"
config = "unused.json"
init = "{init}"
seed = 1
[data]
train = "{train}"
shuffle_buffer = 16
workers = 1
qa_prefer = "how many"
qa_prefer_share = 0.5
[optim]
batch_size = 8
max_steps = 1
lr = 1e-9
warmup_steps = 0
weight_decay = 0.0
[loss]
label_smoothing = 0.0
[run]
out = "{out}"
log_every = 1
checkpoint_every = 1
"#,
            init = bundled.display(),
            train = root.join("data/train").display(),
            out = root.join("run").display(),
        ),
    )
    .unwrap();
    train(&TrainOptions {
        recipe: Some(recipe),
        ..Default::default()
    })
    .unwrap();
    let run = root.join("run");
    assert_eq!(
        std::fs::read(run.join("model/tokenizer.json")).unwrap(),
        std::fs::read(bundled.join("tokenizer.json")).unwrap(),
        "the run takes the export's tokenizer"
    );
    let theirs = tensors(&bundled.join("model.safetensors"));
    let ours = tensors(&run.join("checkpoints/step-00000001/model.safetensors"));
    assert_eq!(theirs.len(), ours.len());
    for (name, t) in &theirs {
        let d = (t - &ours[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{name} moved {d} in one update at lr 1e-9");
    }
    let first_loss = std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .expect("a logged loss");
    // A fresh answer decoder over 464 tokens starts near ln(464) = 6.1.
    assert!(first_loss < 3.0, "first loss {first_loss}");
}
