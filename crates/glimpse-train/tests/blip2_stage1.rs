//! BLIP-2 stage 1 on tiny models: every trainable variable gets a gradient and the
//! frozen image encoder none; a few updates on one batch lower every loss; a tiny run
//! states its parameter counts, keeps the tower bit for bit, and its export loads into
//! `Blip2ForImageTextRetrieval` and scores as the training model does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use glimpse_data::TextTokenizer;
use glimpse_models::blip::BlipConfig;
use glimpse_models::blip2::{Blip2Config, Blip2ForImageTextRetrieval};
use glimpse_models::checkpoint::ModelFiles;
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::blip::{BlipLossConfig, BlipPretrain, Negatives};
use glimpse_train::blip2::{load_start, stage1, Blip2Stage1, FROZEN_PREFIX};
use glimpse_train::optim::{AdamW, AdamWConfig};
use glimpse_train::params::{init_weights, sorted_vars};
use glimpse_train::trainer::{
    encode_texts, resolve_checkpoint, train, train_observed, Event, TrainOptions,
};
use glimpse_train::vocab;

const STAGE1_CONFIG: &str = r#"{
  "model_type": "blip-2",
  "num_query_tokens": 4,
  "image_text_hidden_size": 16,
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                    "layer_norm_eps": 1e-5},
  "qformer_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "intermediate_size": 64, "hidden_dropout_prob": 0.0,
                     "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 40,
                     "cross_attention_frequency": 2, "encoder_hidden_size": 32,
                     "use_qformer_text_input": true, "vocab_size": VOCAB}
}"#;

/// A tiny random BLIP retrieval model with the world's tokenizer in `dir`: the frozen
/// tower and the Q-Former's start.
fn tiny_blip(dir: &Path) -> usize {
    std::fs::create_dir_all(dir).unwrap();
    let texts = vocab::synth_texts(2000);
    let v = vocab::vocabulary(texts.iter().map(|s| s.as_str()));
    vocab::write_tokenizer(dir, &v, 32, "[DEC]").unwrap();
    let cfg: BlipConfig = serde_json::from_str(&format!(
        r#"{{"image_text_hidden_size": 16,
            "text_config": {{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "max_position_embeddings": 40,
                            "vocab_size": {}}},
            "vision_config": {{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                              "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                              "layer_norm_eps": 1e-5}}}}"#,
        v.len()
    ))
    .unwrap();
    let loss = BlipLossConfig {
        queue_size: 16,
        ..BlipLossConfig::default()
    };
    let m = BlipPretrain::new(&cfg, loss, 0, &Device::Cpu).unwrap();
    // A random tower whose output depends on the image: small position embeddings and a
    // patch projection ten times the usual scale (at BERT's 0.02 the positions drown the
    // content and every image looks alike).
    init_weights(&m.vars.map, 11, 0.02, 0.1).unwrap();
    for (name, var) in sorted_vars(&m.vars.map) {
        if name == "vision_model.embeddings.patch_embedding.weight" {
            var.set(&(var.as_tensor() * 10.0).unwrap()).unwrap();
        }
    }
    let tensors: HashMap<String, Tensor> = m.retrieval_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    v.len()
}

fn stage1_config(vocab_size: usize) -> String {
    STAGE1_CONFIG.replace("VOCAB", &vocab_size.to_string())
}

fn model(blip: &Path, vocab_size: usize) -> Blip2Stage1 {
    let cfg: Blip2Config = serde_json::from_str(&stage1_config(vocab_size)).unwrap();
    let tok = TextTokenizer::from_file(&blip.join("tokenizer.json")).unwrap();
    let dec = tok.token_id("[DEC]").unwrap();
    let loss = BlipLossConfig {
        learn_temp: true,
        ..BlipLossConfig::default()
    };
    let m = Blip2Stage1::new(&cfg, loss, dec, &Device::Cpu).unwrap();
    init_weights(&m.vars.map, 3, 0.02, 1.0).unwrap();
    let copied = load_start(&m.vars.map, blip, Some(blip)).unwrap();
    assert!(
        copied > 20,
        "the Q-Former starts from BLIP's text encoder ({copied})"
    );
    m
}

/// Four images and their captions.
fn batch(blip: &Path) -> (Tensor, Tensor, Tensor) {
    let tok = TextTokenizer::from_file(&blip.join("tokenizer.json")).unwrap();
    let texts: Vec<String> = [
        "a red circle",
        "a small blue square on the left",
        "two green triangles",
        "a large yellow star on a white background",
    ]
    .map(String::from)
    .to_vec();
    let (ids, mask) = encode_texts(&tok, &texts, 32, &Device::Cpu).unwrap();
    // Each image its own pattern: a different frequency per image and channel.
    let pixels: Vec<f32> = (0..4 * 3 * 32 * 32)
        .map(|i| {
            let (img, rest) = (i / 3072, i % 3072);
            let f = 0.05 + 0.13 * img as f32 + 0.07 * (rest / 1024) as f32;
            (rest as f32 * f).sin() * 1.5
        })
        .collect();
    let pixels = Tensor::from_vec(pixels, (4, 3, 32, 32), &Device::Cpu).unwrap();
    (pixels, ids, mask)
}

#[test]
fn trainable_variables_get_gradients_frozen_tower_none_and_losses_fall() {
    let root = tempfile::tempdir().unwrap();
    let blip = root.path().join("blip");
    let v = tiny_blip(&blip);
    let m = model(&blip, v);
    let (px, ids, mask) = batch(&blip);
    let given = Negatives::Given {
        image: &[1, 2, 3, 0],
        text: &[3, 0, 1, 2],
    };
    let l = m.losses(&px, &ids, &mask, given).unwrap();
    assert_eq!(l.itm_logits.dims(), &[12, 2]);
    let grads = l.total.backward().unwrap();
    let mut frozen = 0;
    for (name, var) in sorted_vars(&m.vars.map) {
        let g = grads.get(var.as_tensor());
        if name.starts_with(FROZEN_PREFIX) {
            assert!(g.is_none(), "frozen {name} received a gradient");
            frozen += 1;
            continue;
        }
        let g = g.unwrap_or_else(|| panic!("{name} received no gradient"));
        if name.ends_with("key.bias") {
            continue; // exactly zero in exact arithmetic: softmax ignores q.b_k
        }
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
    }
    assert!(frozen > 10);

    // A few updates on the batch lower every loss; the tower does not move.
    let tower_before: HashMap<String, Vec<f32>> = sorted_vars(&m.vars.map)
        .into_iter()
        .filter(|(n, _)| n.starts_with(FROZEN_PREFIX))
        .map(|(n, v)| (n, v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()))
        .collect();
    let trainable: Vec<_> = sorted_vars(&m.vars.map)
        .into_iter()
        .filter(|(n, _)| !n.starts_with(FROZEN_PREFIX))
        .collect();
    let mut opt = AdamW::new(
        trainable,
        AdamWConfig {
            lr: 2e-3,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.05,
        },
    )
    .unwrap();
    let parts = |l: &stage1::Stage1Losses| -> [f32; 3] {
        [&l.itc, &l.itm, &l.itg].map(|t| t.to_dtype(DType::F32).unwrap().to_scalar().unwrap())
    };
    let first = parts(&l);
    let mut last = first;
    // ITM sits at its prior (a third positives) for about 150 updates, then separates.
    for _ in 0..200 {
        let given = Negatives::Given {
            image: &[1, 2, 3, 0],
            text: &[3, 0, 1, 2],
        };
        let l = m.losses(&px, &ids, &mask, given).unwrap();
        last = parts(&l);
        let g = opt.gradients(&l.total.backward().unwrap()).unwrap();
        opt.step(&g, 2e-3).unwrap();
    }
    for (i, name) in ["itc", "itm", "itg"].iter().enumerate() {
        assert!(
            last[i] < 0.5 * first[i],
            "{name} did not fall: {} -> {}",
            first[i],
            last[i]
        );
    }
    for (name, var) in sorted_vars(&m.vars.map) {
        if let Some(before) = tower_before.get(&name) {
            let now: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(&now, before, "{name} moved");
        }
    }
}

fn dataset(root: &Path) -> PathBuf {
    let cfg = SynthConfig {
        count: 60,
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

fn stage1_recipe(root: &Path, blip: &Path, data: &Path, cfg_path: &Path, out: &str) -> PathBuf {
    let recipe = root.join(format!("{out}.toml"));
    std::fs::write(
        &recipe,
        format!(
            r#"
[model]
kind = "blip2_stage1"
config = "{cfg}"
vision_from = "{blip}"
qformer_from = "{blip}"
[data]
train = "{train}"
val = "{val}"
shuffle_buffer = 16
workers = 1
[optim]
batch_size = 8
max_steps = 4
lr = 1e-3
[loss]
learn_temp = true
[run]
out = "{out}"
log_every = 1
val_samples = 8
checkpoint_every = 2
"#,
            cfg = cfg_path.display(),
            blip = blip.display(),
            train = data.join("train").display(),
            val = data.join("val").display(),
            out = root.join(out).display(),
        ),
    )
    .unwrap();
    recipe
}

#[test]
fn tiny_run_states_parameters_keeps_the_tower_and_exports_a_retrieval_model() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let blip = root.join("blip");
    let v = tiny_blip(&blip);
    let data = dataset(root);
    let cfg_path = root.join("stage1.json");
    std::fs::write(&cfg_path, stage1_config(v)).unwrap();
    let recipe = stage1_recipe(root, &blip, &data, &cfg_path, "run");
    let mut counts = None;
    let mut validation = None;
    let report = train_observed(
        &TrainOptions {
            recipe: Some(recipe),
            ..TrainOptions::default()
        },
        &mut |e: &Event| {
            match e {
                Event::Parameters { trainable, total } => counts = Some((*trainable, *total)),
                Event::Validation { metrics, .. } => validation = Some((*metrics).clone()),
                _ => {}
            }
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(report.steps, 4);

    // Killed after 3 updates (checkpoint at 2) and resumed: the same weights and
    // optimizer state, bit for bit (the ITM negatives are drawn from the update's seed).
    let cut = stage1_recipe(root, &blip, &data, &cfg_path, "cut");
    let stopped = train(&TrainOptions {
        recipe: Some(cut),
        stop_after: Some(3),
        ..TrainOptions::default()
    })
    .unwrap();
    assert_eq!(stopped.steps, 3);
    let resumed = train(&TrainOptions {
        resume: Some(root.join("cut")),
        ..TrainOptions::default()
    })
    .unwrap();
    assert_eq!(resumed.steps, 4);
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let read = |run: &str| {
            std::fs::read(root.join(run).join("checkpoints/step-00000004").join(f)).unwrap()
        };
        assert!(read("run") == read("cut"), "{f} differs after the resume");
    }
    let (trainable, total) = counts.expect("the run states its parameter counts");
    let blip_tensors =
        candle_core::safetensors::load(blip.join("model.safetensors"), &Device::Cpu).unwrap();
    let tower: usize = blip_tensors
        .iter()
        .filter(|(n, _)| n.starts_with(FROZEN_PREFIX))
        .map(|(_, t)| t.elem_count())
        .sum();
    assert_eq!(total - trainable, tower, "only the tower is frozen");
    let val = validation.expect("validated at the end");
    for k in ["i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5", "itg_loss"] {
        assert!(val[k].as_f64().is_some(), "validation lacks {k}: {val}");
    }

    let out = root.join("export");
    let done = glimpse_train::export::export(&root.join("run"), &out, false).unwrap();
    assert_eq!(done[0].architecture, "Blip2ForImageTextRetrieval");
    let files = ModelFiles::from_dir(&out, "blip2").unwrap();
    let exported = Blip2ForImageTextRetrieval::load(&files, &Device::Cpu).unwrap();

    // The tower in the export is the source's, bit for bit.
    let written =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in blip_tensors
        .iter()
        .filter(|(n, _)| n.starts_with(FROZEN_PREFIX))
    {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = written[name].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, b, "{name} changed");
    }
    assert!(!written.contains_key("temp") && !written.keys().any(|k| k.starts_with("cls.")));

    // The exported model scores as the trained one: ITC and ITM.
    let trained = model(&blip, v);
    let (_, ckpt) = resolve_checkpoint(&root.join("run")).unwrap();
    let ckpt =
        candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    glimpse_train::params::load_into(&trained.vars.map, &ckpt, "checkpoint").unwrap();
    let (px, ids, mask) = batch(&blip);
    let image = trained.image_states(&px).unwrap();
    let (i, t) = trained.itc_features(&image, &ids, &mask, false).unwrap();
    let want = stage1::best_query_sims(&i, &t).unwrap();
    let got = exported.itc(&px, &ids, Some(&mask)).unwrap();
    let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    let want = trained.itm_logits(&image, &ids, &mask, false).unwrap();
    let got = exported.itm_logits(&px, &ids, Some(&mask)).unwrap();
    let diff = (want - got).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
}
