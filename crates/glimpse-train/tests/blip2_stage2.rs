//! BLIP-2 stage 2 on tiny models: only the queries, the Q-Former and the projection
//! receive gradients and move, the loss on a fixed batch falls; a tiny run states its
//! parameter counts, resumes bit for bit, and its export loads into
//! `Blip2ForConditionalGeneration`, scores as the trained model and generates; recipes
//! that miss a source or disagree with the language model's width are refused by name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_data::TextTokenizer;
use glimpse_generate::GenerationConfig;
use glimpse_models::blip2::{Blip2Config, Blip2ForConditionalGeneration};
use glimpse_models::checkpoint::ModelFiles;
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::blip::BlipLossConfig;
use glimpse_train::blip2::stage2::is_frozen;
use glimpse_train::blip2::stage2_setup::{load_stage2_start, prepare_stage2_dir};
use glimpse_train::blip2::{Blip2Stage1, Blip2Stage2, Stage2Batch};
use glimpse_train::lm::{LmConfig, LmTrain};
use glimpse_train::optim::{AdamW, AdamWConfig};
use glimpse_train::params::{init_weights, sorted_vars};
use glimpse_train::recipe::Recipe;
use glimpse_train::trainer::{resolve_checkpoint, train, train_observed, Event, TrainOptions};
use glimpse_train::vocab;

/// A tiny stage-1 export (`Blip2ForImageTextRetrieval` layout, 4 queries) in `dir`.
fn tiny_stage1(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let texts = vocab::synth_texts(500);
    let v = vocab::vocabulary(texts.iter().map(|s| s.as_str()));
    vocab::write_tokenizer(dir, &v, 32, "[DEC]").unwrap();
    let cfg = serde_json::json!({
        "model_type": "blip-2",
        "architectures": ["Blip2ForImageTextRetrieval"],
        "num_query_tokens": 4,
        "image_text_hidden_size": 16,
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                          "layer_norm_eps": 1e-5},
        "qformer_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                           "intermediate_size": 64, "hidden_dropout_prob": 0.0,
                           "attention_probs_dropout_prob": 0.0, "max_position_embeddings": 40,
                           "cross_attention_frequency": 2, "encoder_hidden_size": 32,
                           "use_qformer_text_input": true, "vocab_size": v.len()}
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let cfg: Blip2Config = serde_json::from_value(cfg).unwrap();
    let m = Blip2Stage1::new(&cfg, BlipLossConfig::default(), 4, &Device::Cpu).unwrap();
    init_weights(&m.vars.map, 11, 0.02, 0.1).unwrap();
    // A tower whose output depends on the image (see tests/blip2_stage1.rs).
    for (name, var) in sorted_vars(&m.vars.map) {
        if name == "vision_model.embeddings.patch_embedding.weight" {
            var.set(&(var.as_tensor() * 10.0).unwrap()).unwrap();
        }
    }
    let tensors: HashMap<String, Tensor> = m.retrieval_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

/// A tiny random OPT (`hidden` wide) with the world's tokenizer in `dir`.
fn tiny_opt(dir: &Path, hidden: usize) {
    std::fs::create_dir_all(dir).unwrap();
    let texts = vocab::synth_texts(500);
    let v = vocab::vocabulary(texts.iter().map(|s| s.as_str()));
    vocab::write_tokenizer(dir, &v, 40, "[CLS]").unwrap();
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let id = |t: &str| tok.token_id(t).unwrap();
    let cfg = serde_json::json!({
        "model_type": "opt", "architectures": ["OPTForCausalLM"],
        "hidden_size": hidden, "ffn_dim": 2 * hidden, "num_hidden_layers": 1,
        "num_attention_heads": 4, "max_position_embeddings": 40, "word_embed_proj_dim": hidden,
        "vocab_size": v.len(), "dropout": 0.0, "attention_dropout": 0.0,
        "pad_token_id": id("[PAD]"), "bos_token_id": id("[CLS]"), "eos_token_id": id("[SEP]"),
        "tie_word_embeddings": true, "do_layer_norm_before": true, "activation_function": "relu"
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let lm = LmTrain::new(
        &LmConfig::from_json(&cfg, "tiny opt").unwrap(),
        &Device::Cpu,
    )
    .unwrap();
    init_weights(&lm.vars.map, 5, 0.1, 1.0).unwrap();
    let tensors: HashMap<String, Tensor> = lm.export_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
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

/// The sources and data of a tiny stage-2 run.
struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    stage1: PathBuf,
    opt: PathBuf,
    data: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (stage1, opt) = (root.join("stage1"), root.join("opt"));
    tiny_stage1(&stage1);
    tiny_opt(&opt, 32);
    let data = dataset(&root);
    World {
        _tmp: tmp,
        root,
        stage1,
        opt,
        data,
    }
}

fn recipe_text(w: &World, out: &str, overrides: &str, extra_model: &str) -> String {
    let cfg = w.root.join(format!("{out}.json"));
    std::fs::write(&cfg, overrides).unwrap();
    format!(
        r#"
[model]
kind = "blip2_stage2"
config = "{cfg}"
qformer_from = "{stage1}"
{extra_model}
[data]
train = "{train}"
val = "{val}"
shuffle_buffer = 16
workers = 1
max_text_len = 24
qa_share = 0.5
[optim]
batch_size = 8
max_steps = 4
lr = 1e-3
[run]
out = "{out}"
log_every = 1
val_samples = 8
checkpoint_every = 2
"#,
        cfg = cfg.display(),
        stage1 = w.stage1.display(),
        train = w.data.join("train").display(),
        val = w.data.join("val").display(),
        out = w.root.join(out).display(),
    )
}

fn recipe(w: &World, out: &str) -> PathBuf {
    let lm = format!("lm_from = \"{}\"", w.opt.display());
    let path = w.root.join(format!("{out}.toml"));
    std::fs::write(&path, recipe_text(w, out, "{}", &lm)).unwrap();
    path
}

/// The stage-2 model of `w` with its starting weights, and its run tokenizer.
fn model(w: &World) -> (Blip2Stage2, TextTokenizer) {
    let r = Recipe::from_file(&recipe(w, "direct")).unwrap();
    let dir = w.root.join("direct-model");
    prepare_stage2_dir(&r, &dir).unwrap();
    let cfg: Blip2Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let m = Blip2Stage2::new(&cfg, &Device::Cpu).unwrap();
    init_weights(&m.vars.map, 0, 0.02, 1.0).unwrap();
    let vocab = cfg.image_token_index.unwrap() as usize + 1;
    let pad = cfg.text_config.pad_token_id().unwrap() as usize;
    load_stage2_start(&m.vars.map, &w.stage1, &w.opt, None, vocab, pad).unwrap();
    let tok = TextTokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    (m, tok)
}

/// Four images, each with a caption after the queries and bos.
fn batch(m: &Blip2Stage2, tok: &TextTokenizer) -> Stage2Batch {
    let cfg = &m.cfg;
    let (q, img) = (cfg.num_query_tokens, cfg.image_token_index.unwrap());
    let bos = cfg.text_config.bos_token_id().unwrap();
    let eos = cfg.text_config.eos_token_ids()[0];
    let texts = [
        "a red circle",
        "two green triangles",
        "a blue square",
        "one star",
    ];
    let rows: Vec<_> = texts
        .iter()
        .map(|t| {
            let ids = tok.encode(t, false).unwrap();
            glimpse_train::blip2::stage2::stage2_row(img, q, &[bos], &ids, eos)
        })
        .collect();
    let t = rows.iter().map(|r| r.0.len()).max().unwrap();
    let (mut ids, mut mask, mut targets) = (vec![], vec![], vec![]);
    for (r, g) in &rows {
        for i in 0..t {
            ids.push(r.get(i).copied().unwrap_or(0));
            mask.push(u32::from(i < r.len()));
            targets.push(g.get(i).copied().unwrap_or(0));
        }
    }
    let pixels: Vec<f32> = (0..4 * 3 * 32 * 32)
        .map(|i| {
            let (img, rest) = (i / 3072, i % 3072);
            let f = 0.05 + 0.13 * img as f32 + 0.07 * (rest / 1024) as f32;
            (rest as f32 * f).sin() * 1.5
        })
        .collect();
    let dev = &Device::Cpu;
    Stage2Batch {
        pixel_values: Tensor::from_vec(pixels, (4, 3, 32, 32), dev).unwrap(),
        input_ids: Tensor::from_vec(ids, (4, t), dev).unwrap(),
        attention_mask: Tensor::from_vec(mask, (4, t), dev).unwrap(),
        targets: Tensor::from_vec(targets, (4, t), dev).unwrap(),
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn only_queries_qformer_and_projection_learn_and_the_loss_falls() {
    let w = world();
    let (m, tok) = model(&w);
    let b = batch(&m, &tok);
    let loss = m.loss(&b, true).unwrap();
    let grads = loss.backward().unwrap();
    let (mut frozen, mut trained) = (0, 0);
    for (name, var) in sorted_vars(&m.vars.map) {
        let g = grads.get(var.as_tensor());
        if is_frozen(&name) {
            // The tower runs detached; the LM's weights are in the graph (the
            // gradient reaches the queries through them) but AdamW never sees them.
            if name.starts_with("vision_model.") {
                assert!(g.is_none(), "frozen {name} received a gradient");
            }
            frozen += 1;
            continue;
        }
        trained += 1;
        if name.ends_with("key.bias") {
            continue; // zero in exact arithmetic: softmax ignores q.b_k
        }
        let g = g.unwrap_or_else(|| panic!("{name} received no gradient"));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "{name}: gradient norm {norm}"
        );
    }
    assert!(
        frozen > 10 && trained > 10,
        "{frozen} frozen, {trained} trained"
    );

    let before: HashMap<String, Vec<f32>> = sorted_vars(&m.vars.map)
        .into_iter()
        .filter(|(n, _)| is_frozen(n))
        .map(|(n, v)| (n, values(v.as_tensor())))
        .collect();
    let trainable: Vec<_> = sorted_vars(&m.vars.map)
        .into_iter()
        .filter(|(n, _)| !is_frozen(n))
        .collect();
    let cfg = AdamWConfig {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        weight_decay: 0.05,
    };
    let mut opt = AdamW::new(trainable, cfg).unwrap();
    let first: f32 = loss.to_scalar().unwrap();
    let mut last = first;
    // Only the soft prompt moves and the frozen LM is random: the loss falls by about
    // 0.9 nats in 60 updates (5.51 -> 4.64), not to zero.
    for _ in 0..60 {
        let l = m.loss(&b, true).unwrap();
        last = l.to_scalar().unwrap();
        let g = opt.gradients(&l.backward().unwrap()).unwrap();
        opt.step(&g, 1e-2).unwrap();
    }
    assert!(
        last < 0.9 * first,
        "the loss did not fall: {first} -> {last}"
    );
    for (name, var) in sorted_vars(&m.vars.map) {
        if let Some(b) = before.get(&name) {
            assert_eq!(&values(var.as_tensor()), b, "frozen {name} moved");
        }
    }
}

#[test]
fn tiny_run_counts_parameters_resumes_and_exports_a_generation_model() {
    let w = world();
    let mut counts = None;
    let mut validation = None;
    let report = train_observed(
        &TrainOptions {
            recipe: Some(recipe(&w, "run")),
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
    assert!(validation.unwrap()["lm_loss"].as_f64().unwrap().is_finite());

    // Only the queries, the Q-Former and the projection train.
    let (m, tok) = model(&w);
    let count = |frozen: bool| -> usize {
        sorted_vars(&m.vars.map)
            .iter()
            .filter(|(n, _)| is_frozen(n) == frozen)
            .map(|(_, v)| v.elem_count())
            .sum()
    };
    assert_eq!(counts, Some((count(false), count(false) + count(true))));
    let q = &m.cfg.qformer_config;
    let projection = q.hidden_size * 32 + 32;
    assert!(count(false) > projection && count(false) < 100_000);

    // Killed after 3 updates (checkpoint at 2) and resumed: bit for bit.
    train(&TrainOptions {
        recipe: Some(recipe(&w, "cut")),
        stop_after: Some(3),
        ..TrainOptions::default()
    })
    .unwrap();
    let resumed = train(&TrainOptions {
        resume: Some(w.root.join("cut")),
        ..TrainOptions::default()
    })
    .unwrap();
    assert_eq!(resumed.steps, 4);
    let read = |run: &str, f: &str| {
        std::fs::read(w.root.join(run).join("checkpoints/step-00000004").join(f)).unwrap()
    };
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            read("run", f) == read("cut", f),
            "{f} differs after the resume"
        );
    }

    // The export: Blip2ForConditionalGeneration with the frozen parts as they came.
    let out = w.root.join("export");
    let done = glimpse_train::export::export(&w.root.join("run"), &out, false).unwrap();
    assert_eq!(done[0].architecture, "Blip2ForConditionalGeneration");
    for f in [
        "processor_config.json",
        "generation_config.json",
        "tokenizer.json",
    ] {
        assert!(out.join(f).is_file(), "the export lacks {f}");
    }
    let written =
        candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let opt =
        candle_core::safetensors::load(w.opt.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in &opt {
        let got = &written[&format!("language_model.{name}")];
        let n = t.dim(0).unwrap();
        let got = if name.ends_with("embed_tokens.weight") {
            assert_eq!(got.dim(0).unwrap(), n + 1, "the table holds <image>");
            got.narrow(0, 0, n).unwrap()
        } else {
            got.clone()
        };
        assert_eq!(values(&got), values(t), "{name} changed");
    }
    let stage1 =
        candle_core::safetensors::load(w.stage1.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, t) in stage1
        .iter()
        .filter(|(n, _)| n.starts_with("vision_model."))
    {
        assert_eq!(values(&written[name]), values(t), "{name} changed");
    }

    // It scores as the trained model and generates.
    let files = ModelFiles::from_dir(&out, "blip2").unwrap();
    let exported = Blip2ForConditionalGeneration::load(&files, &Device::Cpu).unwrap();
    let (_, ckpt) = resolve_checkpoint(&w.root.join("run")).unwrap();
    let ckpt =
        candle_core::safetensors::load(ckpt.join("model.safetensors"), &Device::Cpu).unwrap();
    glimpse_train::params::load_into(&m.vars.map, &ckpt, "checkpoint").unwrap();
    let b = batch(&m, &tok);
    let want = m
        .logits(&b.pixel_values, &b.input_ids, &b.attention_mask, false)
        .unwrap();
    let got = exported
        .logits(&b.pixel_values, &b.input_ids, Some(&b.attention_mask), None)
        .unwrap();
    let diff: f32 = (want - got)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-4, "exported logits differ by {diff}");
    let gen = GenerationConfig {
        max_new_tokens: 5,
        eos_token_ids: vec![],
        ..GenerationConfig::default()
    };
    let ids = exported
        .generate(&b.pixel_values.narrow(0, 0, 1).unwrap(), None, &gen)
        .unwrap();
    assert_eq!(ids[0].len(), 5);
    // The tokenizer continues a prompt (bos first, no closing eos) and knows <image>.
    let export_tok = TextTokenizer::from_file(&out.join("tokenizer.json")).unwrap();
    let p = export_tok
        .encode("question: what color is it? answer:", true)
        .unwrap();
    assert_eq!(p[0], m.cfg.text_config.bos_token_id().unwrap());
    assert_ne!(*p.last().unwrap(), m.cfg.text_config.eos_token_ids()[0]);
    assert_eq!(export_tok.token_id("<image>"), m.cfg.image_token_index);
}

#[test]
fn recipes_missing_a_source_or_a_width_are_refused_by_name() {
    let w = world();
    let lm = format!("lm_from = \"{}\"", w.opt.display());
    let err = |text: String| -> String {
        let p = w.root.join("bad.toml");
        std::fs::write(&p, text).unwrap();
        train(&TrainOptions {
            recipe: Some(p),
            ..TrainOptions::default()
        })
        .unwrap_err()
        .to_string()
    };
    let e = err(recipe_text(&w, "a", "{}", ""));
    assert!(e.contains("model.lm_from"), "{e}");
    let e = err(recipe_text(&w, "b", "{}", &lm).replace("qformer_from", "vision_from"));
    assert!(e.contains("model.qformer_from"), "{e}");
    let e = err(recipe_text(
        &w,
        "c",
        r#"{"text_config": {"hidden_size": 64}}"#,
        &lm,
    ));
    assert!(
        e.contains("text_config.hidden_size = 64") && e.contains("width 32"),
        "{e}"
    );
    let e = err(recipe_text(&w, "d", r#"{"num_query_tokens": 8}"#, &lm));
    assert!(e.contains("num_query_tokens = 8"), "{e}");
    let e = err(recipe_text(&w, "e", "{}", &lm).replace("max_text_len = 24", "max_text_len = 38"));
    assert!(e.contains("max_position_embeddings = 40"), "{e}");
    // A language model that is not OPT.
    let llama = w.root.join("llama");
    std::fs::create_dir_all(&llama).unwrap();
    std::fs::write(llama.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let e = err(recipe_text(
        &w,
        "f",
        "{}",
        &format!("lm_from = \"{}\"", llama.display()),
    ));
    assert!(e.contains("model_type \"llama\""), "{e}");
}
