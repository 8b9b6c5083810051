//! Runs that must fail with an error naming their cause (issue 26), each named after
//! the defect it pins: data with no usable sample, a run directory another run holds,
//! a checkpoint whose tensors are NaN.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use glimpse_data::tar::TarWriter;
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::trainer::{train, TrainOptions, TrainReport};

const CLIP_CONFIG: &str = r#"{
  "projection_dim": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
}"#;

/// A CLIP recipe over `train` writing to `root/out`.
fn recipe(root: &Path, train: &Path, max_steps: u64) -> PathBuf {
    let cfg = root.join("clip.json");
    std::fs::write(&cfg, CLIP_CONFIG).unwrap();
    let text = format!(
        "[model]\nkind = \"clip\"\nconfig = \"{}\"\nseed = 1\n\
         [data]\ntrain = \"{}\"\nshuffle_buffer = 4\nworkers = 1\n\
         [optim]\nbatch_size = 2\nmax_steps = {max_steps}\nlr = 1e-3\n\
         [run]\nout = \"{}\"\nlog_every = 1\ncheckpoint_every = 2\n",
        cfg.display(),
        train.display(),
        root.join("out").display()
    );
    let p = root.join("recipe.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn synth_data(root: &Path) -> PathBuf {
    let cfg = SynthConfig {
        count: 24,
        image_size: 32,
        shard_size: 12,
        seed: 2,
        val_fraction: 0.0,
        ..SynthConfig::default()
    };
    let out = root.join("data");
    synth::generate(&cfg, &out, |_, _| {}).unwrap();
    out.join("train")
}

/// Trains on another thread; a run still going after a minute counts as a hang.
fn train_within_a_minute(opts: TrainOptions) -> Result<TrainReport, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(train(&opts).map_err(|e| e.to_string()));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("training hung: still running after 60 s")
}

#[test]
fn training_on_undecodable_samples_fails_instead_of_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // A JSONL whose images do not exist.
    let lines: Vec<String> = (0..4)
        .map(|i| format!(r#"{{"image": "img/missing_{i}.png", "caption": "a red circle"}}"#))
        .collect();
    let jsonl = d.join("missing.jsonl");
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let e = train_within_a_minute(TrainOptions {
        recipe: Some(recipe(d, &jsonl, 4)),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("no update") && e.contains("missing.jsonl"),
        "{e}"
    );
    assert!(e.contains("img/missing_"), "{e}");

    // A shard whose PNG entries are noise behind a PNG signature.
    let shard_dir = d.join("garbage");
    std::fs::create_dir_all(&shard_dir).unwrap();
    let mut w = TarWriter::new(Vec::new());
    for i in 0..4 {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        png.extend((0..200u32).map(|j| (j * 31 + i * 7) as u8));
        w.append(&format!("s{i}.png"), &png).unwrap();
        w.append(&format!("s{i}.json"), br#"{"caption": "a red circle"}"#)
            .unwrap();
    }
    std::fs::write(shard_dir.join("shard-000000.tar"), w.finish().unwrap()).unwrap();
    let sub = d.join("shard-run");
    std::fs::create_dir_all(&sub).unwrap();
    let e = train_within_a_minute(TrainOptions {
        recipe: Some(recipe(&sub, &shard_dir, 4)),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        e.contains("no update") && e.contains("shard-000000.tar"),
        "{e}"
    );
    assert!(e.contains("sample s"), "{e}");
}

#[test]
fn second_run_into_a_locked_run_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth_data(d);
    let recipe = recipe(d, &data, 4);
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // Another process's run, as far as the lock can tell.
    let other = std::fs::File::create(out.join("lock")).unwrap();
    other.try_lock().unwrap();
    let e = train(&TrainOptions {
        recipe: Some(recipe.clone()),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("another run") && e.contains(out.to_str().unwrap()),
        "{e}"
    );
    assert!(!out.join("log.jsonl").exists());

    // Once that run is gone, the directory is free: a run, then its resume.
    drop(other);
    let r = train(&TrainOptions {
        recipe: Some(recipe),
        stop_after: Some(2),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.steps, 2);
    let r = train(&TrainOptions {
        resume: Some(out.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.steps, 4);
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    // Four updates and the resume point at update 2.
    assert_eq!(log.lines().count(), 5, "{log}");
    assert!(
        log.lines().nth(2).unwrap().contains(r#""resumed""#),
        "{log}"
    );
}

/// Replaces every float tensor of `file` with NaNs.
fn poison(file: &Path) {
    let mut tensors = candle_core::safetensors::load(file, &Device::Cpu).unwrap();
    for t in tensors.values_mut() {
        if t.dtype().is_float() {
            *t = Tensor::full(f32::NAN, t.shape(), &Device::Cpu)
                .unwrap()
                .to_dtype(t.dtype())
                .unwrap();
        }
    }
    candle_core::safetensors::save(&tensors, file).unwrap();
}

#[test]
fn nan_checkpoint_on_resume_is_called_corrupt_not_blamed_on_lr() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let data = synth_data(d);
    let out = d.join("out");
    let r = train(&TrainOptions {
        recipe: Some(recipe(d, &data, 4)),
        stop_after: Some(2),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.steps, 2);
    let ckpt = out.join("checkpoints/step-00000002");
    for file in ["model.safetensors", "optimizer.safetensors"] {
        let p = ckpt.join(file);
        let good = std::fs::read(&p).unwrap();
        poison(&p);
        let e = train(&TrainOptions {
            resume: Some(out.clone()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("corrupt") && e.contains(p.to_str().unwrap()),
            "{e}"
        );
        assert!(!e.contains("optim.lr"), "{e}");
        std::fs::write(&p, good).unwrap();
    }
    // The same checkpoint as `model.init` of a new run.
    let init_run = d.join("init");
    std::fs::create_dir_all(&init_run).unwrap();
    poison(&ckpt.join("model.safetensors"));
    let r = recipe(&init_run, &data, 2);
    let text = std::fs::read_to_string(&r).unwrap().replace(
        "seed = 1\n",
        &format!("seed = 1\ninit = \"{}\"\n", out.display()),
    );
    std::fs::write(&r, text).unwrap();
    let e = train(&TrainOptions {
        recipe: Some(r),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("corrupt") && !e.contains("optim.lr"), "{e}");
}
