//! A run killed after a checkpoint and resumed reaches the same weights, optimizer
//! state and momentum state as an uninterrupted run, bit for bit (CPU); and an
//! exported checkpoint loads strictly into the inference models.

use std::path::{Path, PathBuf};

use candle_core::Device;
use glimpse_models::blip::{BlipForConditionalGeneration, BlipForImageTextRetrieval};
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::clip::ClipModel;
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::trainer::{train, TrainOptions};

const BLIP_CONFIG: &str = r#"{
  "image_text_hidden_size": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
}"#;

const CLIP_CONFIG: &str = r#"{
  "projection_dim": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
}"#;

fn dataset(root: &Path) -> PathBuf {
    let cfg = SynthConfig {
        count: 100,
        image_size: 32,
        jitter: 0.0,
        shard_size: 30,
        seed: 5,
        val_fraction: 0.15,
        ..SynthConfig::default()
    };
    let out = root.join("data");
    synth::generate(&cfg, &out, |_, _| {}).unwrap();
    out
}

fn recipe(root: &Path, data: &Path, kind: &str, config: &str, out: &str) -> PathBuf {
    let cfg_path = root.join(format!("{kind}.json"));
    std::fs::write(&cfg_path, config).unwrap();
    let text = format!(
        r#"
[model]
kind = "{kind}"
config = "{cfg}"
seed = 3
[data]
train = "{train}"
val = "{val}"
shuffle_buffer = 16
workers = 2
[optim]
batch_size = 8
max_steps = 14
lr = 1e-3
warmup_steps = 3
[loss]
queue_size = 16
alpha_warmup_steps = 4
hard_negative_captions = true
[run]
out = "{out}"
log_every = 1
val_every = 5
val_samples = 16
checkpoint_every = 4
"#,
        cfg = cfg_path.display(),
        train = data.join("train").display(),
        val = data.join("val").display(),
        out = root.join(out).display(),
    );
    let p = root.join(format!("{kind}-{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Returns the full run's directory and the guard that deletes it when dropped.
fn check_resume(kind: &str, config: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_path_buf();
    let data = dataset(&tmp);
    let full = recipe(&tmp, &data, kind, config, "full");
    let report = train(&TrainOptions {
        recipe: Some(full),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.steps, 14);
    // ~80 training samples: 10 updates per epoch, so the run crosses an epoch.
    assert!(report.epochs_completed >= 1, "{report:?}");
    assert!(report.last_loss.is_finite());

    // Killed after 6 updates (last checkpoint at 4), resumed, killed after 5 more
    // (checkpoint at 8), resumed to the end.
    let cut = recipe(&tmp, &data, kind, config, "cut");
    let r = train(&TrainOptions {
        recipe: Some(cut.clone()),
        stop_after: Some(6),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.steps, 6);
    // A second start without --resume refuses to overwrite the run.
    let again = train(&TrainOptions {
        recipe: Some(cut),
        ..Default::default()
    });
    assert!(again.unwrap_err().to_string().contains("--resume"));
    let run = tmp.join("cut");
    let r = train(&TrainOptions {
        resume: Some(run.clone()),
        stop_after: Some(5),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.steps, 9);
    let r = train(&TrainOptions {
        resume: Some(run.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.steps, 14);

    let a = tmp.join("full/checkpoints/step-00000014");
    let b = tmp.join("cut/checkpoints/step-00000014");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            bytes(a.join(f)) == bytes(b.join(f)),
            "{kind}: {f} differs after resume"
        );
    }
    if kind == "blip" {
        assert!(bytes(a.join("state.safetensors")) == bytes(b.join("state.safetensors")));
    }
    // The log holds each update once.
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=14).collect::<Vec<_>>());
    (dir, tmp.join("full"))
}

#[test]
fn clip_resume_is_bitwise_and_export_loads() {
    let (_dir, run) = check_resume("clip", CLIP_CONFIG);
    let out = run.join("export");
    glimpse_train::export::export(&run, &out, false).unwrap();
    let files = ModelFiles::from_dir(&out, "clip").unwrap();
    ClipModel::load(&files, &Device::Cpu).unwrap();
}

#[test]
fn blip_resume_is_bitwise_and_export_loads() {
    let (_dir, run) = check_resume("blip", BLIP_CONFIG);
    let out = run.join("export");
    let done = glimpse_train::export::export(&run, &out, false).unwrap();
    assert_eq!(done.len(), 2);
    let cap = ModelFiles::from_dir(&out.join("caption"), "caption").unwrap();
    BlipForConditionalGeneration::load(&cap, &Device::Cpu).unwrap();
    let ret = ModelFiles::from_dir(&out.join("retrieval"), "retrieval").unwrap();
    BlipForImageTextRetrieval::load(&ret, &Device::Cpu).unwrap();
}
