//! Vision-attribute pretraining (`kind = "vision_attributes"`) trains, validates and
//! resumes bit for bit; a BLIP or CLIP run with `model.init_vision` starts from exactly
//! that tower; runs of the wrong kind or tower are refused with a message that says so.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::trainer::{train, TrainOptions};

/// 24 px images in 8 px patches: a 3×3 patch grid, one patch per world cell.
const BLIP_CONFIG: &str = r#"{
  "image_text_hidden_size": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 24, "patch_size": 8}
}"#;

const CLIP_CONFIG: &str = r#"{
  "projection_dim": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 24, "patch_size": 8}
}"#;

fn dataset(root: &Path) -> PathBuf {
    let cfg = SynthConfig {
        count: 100,
        image_size: 24,
        jitter: 0.0,
        shard_size: 40,
        seed: 9,
        val_fraction: 0.15,
        ..SynthConfig::default()
    };
    let out = root.join("data");
    synth::generate(&cfg, &out, |_, _| {}).unwrap();
    out
}

/// A recipe named `name` writing to `root/name`; `model_extra` and `optim_extra` are
/// added to those sections. One positional argument per recipe field keeps the
/// call sites a readable table.
#[allow(clippy::too_many_arguments)]
fn recipe(
    root: &Path,
    data: &Path,
    name: &str,
    kind: &str,
    config: &str,
    model_extra: &str,
    optim_extra: &str,
    steps: u64,
) -> PathBuf {
    let cfg_path = root.join(format!("{name}.json"));
    std::fs::write(&cfg_path, config).unwrap();
    let text = format!(
        r#"
[model]
kind = "{kind}"
config = "{cfg}"
seed = 4
{model_extra}
[data]
train = "{train}"
val = "{val}"
shuffle_buffer = 16
workers = 2
[optim]
batch_size = 8
max_steps = {steps}
lr = 1e-3
warmup_steps = 2
{optim_extra}
[loss]
queue_size = 16
[run]
out = "{out}"
log_every = 1
val_every = 6
val_samples = 16
checkpoint_every = 3
"#,
        cfg = cfg_path.display(),
        train = data.join("train").display(),
        val = data.join("val").display(),
        out = root.join(name).display(),
    );
    let p = root.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn run(recipe: PathBuf) -> glimpse_train::Result<glimpse_train::trainer::TrainReport> {
    train(&TrainOptions {
        recipe: Some(recipe),
        ..Default::default()
    })
}

fn weights(run: &Path, step: u64) -> HashMap<String, Tensor> {
    let p = run.join(format!("checkpoints/step-{step:08}/model.safetensors"));
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape()
        && a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The first and last logged training losses.
fn first_last_loss(run: &Path) -> (f64, f64) {
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let losses: Vec<f64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(|l| l.as_f64()))
        .collect();
    (losses[0], *losses.last().unwrap())
}

/// Starts a `kind` run from the `vision` run with the tower frozen
/// (`vision_lr_scale = 0`): after its updates every `vision_model.*` tensor is the
/// vision run's, bit for bit, and the rest of the model has moved.
fn check_init(root: &Path, data: &Path, vision: &Path, kind: &str, config: &str) {
    let init = format!("init_vision = \"{}\"", vision.display());
    let r = recipe(
        root,
        data,
        &format!("{kind}-init"),
        kind,
        config,
        &init,
        "vision_lr_scale = 0.0",
        3,
    );
    run(r).unwrap();
    let theirs = weights(vision, 12);
    let ours = weights(&root.join(format!("{kind}-init")), 3);
    let mut tower = 0;
    for (name, t) in &ours {
        if name.starts_with("vision_model.") {
            assert!(
                same(t, &theirs[name]),
                "{kind}: {name} is not the vision run's"
            );
            tower += 1;
        }
    }
    assert!(tower > 10, "{kind}: only {tower} vision tensors");
    // A fresh run from the same seed without the init has a different tower.
    let fresh = recipe(
        root,
        data,
        &format!("{kind}-fresh"),
        kind,
        config,
        "",
        "vision_lr_scale = 0.0",
        3,
    );
    run(fresh).unwrap();
    let fresh = weights(&root.join(format!("{kind}-fresh")), 3);
    let name = "vision_model.encoder.layers.0.mlp.fc1.weight";
    assert!(
        !same(&fresh[name], &ours[name]),
        "{kind}: init_vision changed nothing"
    );
    let moved = ours
        .iter()
        .filter(|(n, _)| !n.starts_with("vision_model."))
        .any(|(n, t)| !same(t, &fresh[n]));
    assert!(moved, "{kind}: the rest of the model did not train");
}

#[test]
fn vision_pretraining_trains_resumes_and_seeds_blip() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_path_buf();
    let data = dataset(&tmp);
    let full = recipe(
        &tmp,
        &data,
        "vision",
        "vision_attributes",
        BLIP_CONFIG,
        "",
        "",
        12,
    );
    let report = run(full).unwrap();
    assert_eq!(report.steps, 12);
    let v = report.validation.expect("validation");
    for k in [
        "shape_acc",
        "color_acc",
        "size_acc",
        "background_acc",
        "loss",
    ] {
        assert!(v.get(k).and_then(|x| x.as_f64()).is_some(), "{k} in {v}");
    }
    let (first, last) = first_last_loss(&tmp.join("vision"));
    assert!(last < first, "loss did not fall: {first} -> {last}");

    // Killed after 5 updates and resumed: the same weights, bit for bit.
    let cut = recipe(
        &tmp,
        &data,
        "vision-cut",
        "vision_attributes",
        BLIP_CONFIG,
        "",
        "",
        12,
    );
    train(&TrainOptions {
        recipe: Some(cut),
        stop_after: Some(5),
        ..Default::default()
    })
    .unwrap();
    train(&TrainOptions {
        resume: Some(tmp.join("vision-cut")),
        ..Default::default()
    })
    .unwrap();
    let a = std::fs::read(tmp.join("vision/checkpoints/step-00000012/model.safetensors")).unwrap();
    let b =
        std::fs::read(tmp.join("vision-cut/checkpoints/step-00000012/model.safetensors")).unwrap();
    assert!(a == b, "resumed vision run differs");

    check_init(&tmp, &data, &tmp.join("vision"), "blip", BLIP_CONFIG);

    // The run has no Hugging Face architecture: export says what to do instead.
    let e = glimpse_train::export::export(&tmp.join("vision"), &tmp.join("x"), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("init_vision"), "{e}");
    // CLIP cannot start from a BLIP-layout tower.
    let init = format!("init_vision = \"{}\"", tmp.join("vision").display());
    let r = recipe(&tmp, &data, "clip-bad", "clip", CLIP_CONFIG, &init, "", 2);
    let e = run(r).unwrap_err().to_string();
    assert!(e.contains("tower = \"clip\"") && e.contains("Blip"), "{e}");
    // Nor can BLIP start from a run that is not vision pretraining.
    let init = format!("init_vision = \"{}\"", tmp.join("blip-fresh").display());
    let r = recipe(&tmp, &data, "blip-bad", "blip", BLIP_CONFIG, &init, "", 2);
    let e = run(r).unwrap_err().to_string();
    assert!(e.contains("vision_attributes"), "{e}");
}

#[test]
fn vision_pretraining_of_the_clip_tower_seeds_clip() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_path_buf();
    let data = dataset(&tmp);
    let r = recipe(
        &tmp,
        &data,
        "vision",
        "vision_attributes",
        CLIP_CONFIG,
        "tower = \"clip\"",
        "",
        12,
    );
    run(r).unwrap();
    // The run writes CLIP's preprocessor (resize and centre crop).
    let pre = std::fs::read_to_string(tmp.join("vision/model/preprocessor_config.json")).unwrap();
    assert!(pre.contains("CLIPImageProcessor"), "{pre}");
    check_init(&tmp, &data, &tmp.join("vision"), "clip", CLIP_CONFIG);
}
