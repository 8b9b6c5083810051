//! LLaVA training on tiny models: stage 1 trains the projector alone (the tower and the
//! language model stay bit for bit, the loss on a fixed batch falls); stage 2 counts
//! only the assistant's tokens of a known conversation; a stage-2 run exports a
//! `LlavaForConditionalGeneration` that Glimpse loads, gives the training model's
//! logits and generates; a stage-2 run killed and resumed ends bit for bit as an
//! uninterrupted one, its tower untouched; bad recipes are refused with the field named.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_data::dataset::Example;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::clip::ClipConfig;
use glimpse_models::llava::{ChatMessage, LlavaForConditionalGeneration, LlavaProcessor};
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::clip::ClipTrain;
use glimpse_train::llava::data::conversation_ids;
use glimpse_train::llava::{LlavaObjective, PROJECTOR_PREFIX};
use glimpse_train::lm::{LmConfig, LmTrain};
use glimpse_train::objective::{Objective, Split, Step};
use glimpse_train::optim::{AdamW, AdamWConfig};
use glimpse_train::params::{init_weights, snapshot};
use glimpse_train::recipe::{ModelKind, Recipe};
use glimpse_train::samples::Inputs;
use glimpse_train::trainer::{
    load_tensors, preprocessor_json, train_observed, Event, RunFiles, TrainOptions,
};
use glimpse_train::vocab;

/// A tiny CLIP (32 px, 8 px patches: 16 image tokens) with random weights.
fn tiny_clip(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["CLIPModel"], "projection_dim": 16,
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 4, "max_position_embeddings": 32, "vocab_size": 50},
        "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                          "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
    });
    let cfg: ClipConfig = serde_json::from_value(config.clone()).unwrap();
    let m = ClipTrain::new(&cfg, &Device::Cpu).unwrap();
    init_weights(&m.vars.map, 3, 0.02, 0.1).unwrap();
    let t: std::collections::HashMap<_, _> = m.export_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let pre = preprocessor_json(ModelKind::Clip, 32);
    std::fs::write(dir.join("preprocessor_config.json"), pre.to_string()).unwrap();
}

/// A tiny LLaMA with the world's tokenizer (`[CLS]` bos, `[SEP]` eos).
fn tiny_llama(dir: &Path, hidden: usize) {
    let texts = vocab::synth_texts(2000);
    let v = vocab::vocabulary(texts.iter().map(|s| s.as_str()));
    vocab::write_tokenizer(dir, &v, 64, "[CLS]").unwrap();
    let p = dir.join("tokenizer_config.json");
    let mut tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    tc["eos_token"] = "[SEP]".into();
    std::fs::write(&p, tc.to_string()).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": hidden, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "tie_word_embeddings": false, "vocab_size": v.len(),
        "bos_token_id": vocab::CLS_ID, "eos_token_id": vocab::SEP_ID, "pad_token_id": vocab::PAD_ID
    });
    let cfg = LmConfig::from_json(&config, "llama").unwrap();
    let m = LmTrain::new(&cfg, &Device::Cpu).unwrap();
    init_weights(&m.vars.map, 4, 0.05, 1.0).unwrap();
    let t: std::collections::HashMap<_, _> = m.export_tensors().unwrap().into_iter().collect();
    candle_core::safetensors::save(&t, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
}

fn dataset(root: &Path) -> PathBuf {
    let cfg = SynthConfig {
        count: 40,
        image_size: 32,
        shard_size: 40,
        seed: 6,
        val_fraction: 0.2,
        test_fraction: 0.0,
        ..SynthConfig::default()
    };
    let out = root.join("data");
    synth::generate(&cfg, &out, |_, _| {}).unwrap();
    out
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    clip: PathBuf,
    llama: PathBuf,
    data: PathBuf,
    config: PathBuf,
}

fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let (clip, llama) = (root.join("clip"), root.join("llama"));
    tiny_clip(&clip);
    tiny_llama(&llama, 32);
    let config = root.join("llava.json");
    std::fs::write(
        &config,
        r#"{"model_type": "llava", "vision_feature_layer": -2}"#,
    )
    .unwrap();
    World {
        data: dataset(&root),
        _tmp: tmp,
        root,
        clip,
        llama,
        config,
    }
}

fn recipe_text(w: &World, kind: &str, model_extra: &str, out: &str, steps: u64) -> String {
    format!(
        r#"
[model]
kind = "{kind}"
config = "{cfg}"
{model_extra}
[data]
train = "{train}"
val = "{val}"
max_text_len = 40
shuffle_buffer = 8
workers = 1
[optim]
batch_size = 4
max_steps = {steps}
lr = 1e-3
weight_decay = 0.0
[run]
out = "{out}"
log_every = 1
val_samples = 4
checkpoint_every = 2
"#,
        cfg = w.config.display(),
        train = w.data.join("train").display(),
        val = w.data.join("val").display(),
        out = w.root.join(out).display(),
    )
}

fn stage1_extra(w: &World) -> String {
    format!(
        "vision_from = \"{}\"\nlm_from = \"{}\"",
        w.clip.display(),
        w.llama.display()
    )
}

fn write(w: &World, name: &str, text: &str) -> PathBuf {
    let p = w.root.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn objective(w: &World, recipe: &Path, run: &str) -> LlavaObjective {
    let r = Recipe::from_file(recipe).unwrap();
    let files = RunFiles::open(&w.root.join(run).join("model")).unwrap();
    LlavaObjective::new(&r, Inputs::new(&r, files, &Device::Cpu)).unwrap()
}

fn examples(w: &World, n: usize) -> Vec<Example> {
    use glimpse_data::dataset::{resolve_sources, Loader, LoaderConfig};
    let spec = w.data.join("train").display().to_string();
    let cfg = LoaderConfig {
        shuffle_buffer: 0,
        workers: 1,
        seed: 0,
        shuffle_sources: false,
        prefetch: 16,
    };
    let loader = Loader::new(resolve_sources(&spec).unwrap(), cfg);
    loader.epoch(0, 0).take(n).map(|e| e.unwrap()).collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn stage1_trains_only_the_projector_and_stage2_exports_a_model_that_generates() {
    let w = world();
    let s1 = write(
        &w,
        "s1",
        &recipe_text(&w, "llava_stage1", &stage1_extra(&w), "s1", 2),
    );
    let mut counts = None;
    train_observed(
        &TrainOptions {
            recipe: Some(s1.clone()),
            ..TrainOptions::default()
        },
        &mut |e: &Event| {
            if let Event::Parameters { trainable, total } = e {
                counts = Some((*trainable, *total));
            }
            Ok(())
        },
    )
    .unwrap();

    // Only the projector trains: the counts, and a fixed batch over ten updates.
    let mut obj = objective(&w, &s1, "s1");
    let (trainable, total) = counts.expect("the run states its parameter counts");
    let projector: usize = obj
        .trainable()
        .iter()
        .map(|(n, v)| {
            assert!(n.starts_with(PROJECTOR_PREFIX), "{n} trains in stage 1");
            v.elem_count()
        })
        .sum();
    assert_eq!(trainable, projector);
    assert!(total > 10 * trainable, "{trainable} of {total}");
    let samples: Vec<_> = examples(&w, 4)
        .into_iter()
        .map(|e| obj.sample(e, Split::Train { epoch: 0 }).unwrap())
        .collect();
    let batch = obj.batch(&samples, Split::Train { epoch: 0 }).unwrap();
    // Copies: a snapshot shares storage with the variables, which AdamW updates in place.
    let before: std::collections::HashMap<String, Tensor> = snapshot(obj.vars())
        .into_iter()
        .map(|(n, t)| (n, t.copy().unwrap()))
        .collect();
    let mut opt = AdamW::new(
        obj.trainable(),
        AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let mut losses = Vec::new();
    for step in 0..10 {
        let l = obj.losses(&batch, Step { step, micro: 0 }).unwrap().total;
        losses.push(l.to_scalar::<f32>().unwrap());
        let g = opt.gradients(&l.backward().unwrap()).unwrap();
        assert!(g.iter().all(|g| g
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0));
        opt.step(&g, 1e-2).unwrap();
    }
    assert!(losses[9] < 0.95 * losses[0], "stage-1 loss {losses:?}");
    for (name, t) in snapshot(obj.vars()) {
        let d = max_abs(&t, &before[&name]);
        match name.starts_with(PROJECTOR_PREFIX) {
            true => assert!(d > 0.0, "{name} did not move"),
            false => assert_eq!(d, 0.0, "frozen {name} changed"),
        }
    }
    // The frozen parts are the sources' (the embedding and head with one more row).
    let llama = load_tensors(&w.llama.join("model.safetensors"), &Device::Cpu).unwrap();
    let layer = "model.layers.1.mlp.down_proj.weight";
    assert_eq!(
        max_abs(&before[&format!("language_model.{layer}")], &llama[layer]),
        0.0
    );
    let head = &before["language_model.lm_head.weight"];
    let v = llama["lm_head.weight"].dim(0).unwrap();
    assert_eq!(
        max_abs(&head.narrow(0, 0, v).unwrap(), &llama["lm_head.weight"]),
        0.0
    );

    // Stage 2 from the stage-1 run trains the language model too, and exports.
    let s2_extra = format!("init = \"{}\"", w.root.join("s1").display());
    let s2 = write(
        &w,
        "s2",
        &recipe_text(&w, "llava_stage2", &s2_extra, "s2", 2),
    );
    let report = train_observed(
        &TrainOptions {
            recipe: Some(s2.clone()),
            ..TrainOptions::default()
        },
        &mut |_: &Event| Ok(()),
    )
    .unwrap();
    assert_eq!(report.steps, 2);
    let val = report.validation.unwrap();
    assert!(val["tokens"].as_u64().unwrap() > 0, "{val}");
    let obj2 = objective(&w, &s2, "s2");
    assert!(obj2
        .trainable()
        .iter()
        .any(|(n, _)| n.starts_with("language_model.")));
    assert!(!obj2
        .trainable()
        .iter()
        .any(|(n, _)| n.starts_with("vision_tower.")));

    let out = w.root.join("export");
    let done = glimpse_train::export::export(&w.root.join("s2"), &out, false).unwrap();
    assert_eq!(done[0].architecture, "LlavaForConditionalGeneration");
    for f in [
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
    ] {
        assert!(out.join(f).is_file(), "the export lacks {f}");
    }
    let files = ModelFiles::from_dir(&out, "llava").unwrap();
    let model = LlavaForConditionalGeneration::load(&files, &Device::Cpu).unwrap();
    let processor = LlavaProcessor::load(&files, model.config()).unwrap();

    // The exported model's logits are the trained model's.
    let mut trained = objective(&w, &s2, "s2");
    let weights = load_tensors(&out.join("model.safetensors"), &Device::Cpu).unwrap();
    trained.init_from_export(&weights, "export").unwrap();
    let samples: Vec<_> = examples(&w, 2)
        .into_iter()
        .map(|e| trained.sample(e, Split::Validation).unwrap())
        .collect();
    let b = trained.batch(&samples, Split::Validation).unwrap();
    let want = trained
        .model
        .logits(&b.pixel_values, &b.input_ids, &b.attention_mask, false)
        .unwrap();
    let got = model
        .forward(
            Some(&b.pixel_values),
            &b.input_ids,
            Some(&b.attention_mask),
            false,
        )
        .unwrap();
    assert!(max_abs(&want, &got) < 1e-4);

    // And it generates a reply to a question about an image.
    let (_, ids) = processor
        .prompt(
            &[ChatMessage::user("what color is the circle?", true)],
            true,
        )
        .unwrap();
    let prompt = Tensor::new(ids, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let gen = model.generation_config(&glimpse_generate::GenerationConfig {
        max_new_tokens: 4,
        ..Default::default()
    });
    let px = b.pixel_values.narrow(0, 0, 1).unwrap();
    let out_ids = model.generate(&px, &prompt, &gen).unwrap();
    assert!(!out_ids[0].is_empty() && out_ids[0].len() <= 4);
}

#[test]
fn stage2_counts_only_the_assistant_tokens() {
    let w = world();
    let s1 = write(
        &w,
        "s1",
        &recipe_text(&w, "llava_stage1", &stage1_extra(&w), "s1", 1),
    );
    train_observed(
        &TrainOptions {
            recipe: Some(s1.clone()),
            ..TrainOptions::default()
        },
        &mut |_: &Event| Ok(()),
    )
    .unwrap();
    let obj = objective(&w, &s1, "s1");
    let p = &obj.processor;
    let messages = [
        ChatMessage::user("what color is the circle?", true),
        ChatMessage::assistant("red"),
        ChatMessage::user("how many circles are there?", false),
        ChatMessage::assistant("2"),
    ];
    let (ids, targets) = conversation_ids(p, &messages).unwrap();
    assert_eq!(ids.len(), targets.len());
    let tok = &p.tokenizer;
    let eos = tok.token_id("[SEP]").unwrap();
    let scored: Vec<u32> = ids
        .iter()
        .zip(&targets)
        .filter(|(_, &t)| t == 1)
        .map(|(&i, _)| i)
        .collect();
    let red = tok.encode("red", false).unwrap();
    let two = tok.encode("2", false).unwrap();
    let want: Vec<u32> = [red, vec![eos], two, vec![eos]].concat();
    assert_eq!(
        scored,
        want,
        "targets: {}",
        tok.decode(&scored, false).unwrap()
    );
    // The text reads as the template writes it, the image expanded, bos first.
    assert_eq!(ids[0], tok.token_id("[CLS]").unwrap());
    let n_image = ids.iter().filter(|&&i| i == p.image_token_id).count();
    assert_eq!(n_image, p.image_seq_length);
    let text = tok.decode(&ids, false).unwrap();
    assert!(
        text.contains("assistant : red [SEP] user : how many"),
        "{text}"
    );
}

#[test]
fn bad_llava_recipes_are_refused_naming_the_field() {
    let w = world();
    let base = recipe_text(&w, "llava_stage1", &stage1_extra(&w), "r", 1);
    let err = |text: &str| {
        Recipe::from_toml(text, Path::new("r.toml"))
            .unwrap_err()
            .to_string()
    };
    let no_vision = base.replace(&format!("vision_from = \"{}\"\n", w.clip.display()), "");
    assert!(err(&no_vision).contains("model.vision_from"));
    let no_lm = base.replace(&format!("lm_from = \"{}\"", w.llama.display()), "");
    assert!(err(&no_lm).contains("model.lm_from"));
    let s2 = recipe_text(&w, "llava_stage2", "", "r", 1);
    assert!(err(&s2).contains("model.init"));
    let clip_with_projector = recipe_text(&w, "clip", "projector = \"linear\"", "r", 1);
    assert!(err(&clip_with_projector).contains("model.projector"));

    // A config whose widths disagree with the towers' is refused when the run starts.
    std::fs::write(
        &w.config,
        r#"{"model_type": "llava", "text_config": {"hidden_size": 64}}"#,
    )
    .unwrap();
    let p = write(&w, "wide", &base);
    let e = glimpse_train::trainer::train(&TrainOptions {
        recipe: Some(p),
        ..TrainOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("text_config.hidden_size = 64") && e.contains("width 32"),
        "{e}"
    );
    // A language model that is not LLaMA is named.
    std::fs::write(&w.config, r#"{"model_type": "llava"}"#).unwrap();
    let bad = base.replace(
        &format!("lm_from = \"{}\"", w.llama.display()),
        &format!("lm_from = \"{}\"", w.clip.display()),
    );
    let p = write(&w, "notllama", &bad.replace("/r\"", "/r2\""));
    let e = glimpse_train::trainer::train(&TrainOptions {
        recipe: Some(p),
        ..TrainOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("LLaMA"), "{e}");
}

/// A stage-2 run killed after 3 updates (checkpoint at 2) and resumed ends with the
/// uninterrupted run's weights and optimizer state, bit for bit; the tower it starts
/// with from stage 1 is untouched by either.
#[test]
fn stage2_resume_is_bitwise_and_the_tower_stays() {
    let w = world();
    let s1 = write(
        &w,
        "s1",
        &recipe_text(&w, "llava_stage1", &stage1_extra(&w), "s1", 1),
    );
    let run = |opts: TrainOptions| train_observed(&opts, &mut |_: &Event| Ok(())).unwrap();
    run(TrainOptions {
        recipe: Some(s1),
        ..TrainOptions::default()
    });
    let init = format!("init = \"{}\"", w.root.join("s1").display());
    for name in ["full", "cut"] {
        write(&w, name, &recipe_text(&w, "llava_stage2", &init, name, 5));
    }
    let full = run(TrainOptions {
        recipe: Some(w.root.join("full.toml")),
        ..TrainOptions::default()
    });
    assert_eq!(full.steps, 5);
    let cut = run(TrainOptions {
        recipe: Some(w.root.join("cut.toml")),
        stop_after: Some(3),
        ..TrainOptions::default()
    });
    assert_eq!(cut.steps, 3);
    let resumed = run(TrainOptions {
        resume: Some(w.root.join("cut")),
        ..TrainOptions::default()
    });
    assert_eq!(resumed.steps, 5);
    let last = |r: &str| w.root.join(r).join("checkpoints/step-00000005");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let read = |r: &str| std::fs::read(last(r).join(f)).unwrap();
        assert!(read("full") == read("cut"), "{f} differs after the resume");
    }

    let start = load_tensors(
        &w.root
            .join("s1/checkpoints/step-00000001/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let end = load_tensors(&last("cut").join("model.safetensors"), &Device::Cpu).unwrap();
    let mut tower = 0;
    for (name, t) in &start {
        let d = max_abs(t, &end[name]);
        if name.starts_with("vision_tower.") {
            assert_eq!(d, 0.0, "frozen {name} changed in stage 2");
            tower += 1;
        } else if name.starts_with("language_model.model.layers.") {
            assert!(d > 0.0, "{name} did not train in stage 2");
        }
    }
    assert!(tower > 0);
}
