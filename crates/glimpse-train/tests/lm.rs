//! The `lm` recipe on the world's text corpus, for the OPT and the LLaMA layout: a few
//! updates learn (held-out perplexity falls), every variable gets a gradient, a
//! killed and resumed run reaches the same weights bit for bit, the export loads
//! strictly into the inference model and gives the training model's logits, and a
//! document's prompt is not scored.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_models::causal_lm::{CausalDecoder, CausalLm};
use glimpse_models::checkpoint::ModelFiles;
use glimpse_synth::SynthConfig;
use glimpse_train::corpus::write_world_corpus;
use glimpse_train::lm::{LmConfig, LmObjective};
use glimpse_train::objective::{Objective, Split};
use glimpse_train::recipe::Recipe;
use glimpse_train::samples::Inputs;
use glimpse_train::trainer::{load_tensors, train, RunFiles, TrainOptions};

const OPT: &str = r#"{"model_type": "opt", "hidden_size": 32, "num_hidden_layers": 2,
  "num_attention_heads": 4, "ffn_dim": 64, "max_position_embeddings": 48,
  "dropout": 0.0, "attention_dropout": 0.0, "tie_word_embeddings": true}"#;

const LLAMA: &str = r#"{"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
  "max_position_embeddings": 48, "tie_word_embeddings": false}"#;

fn corpus(root: &Path) -> PathBuf {
    let cfg = SynthConfig {
        count: 12,
        seed: 4,
        val_fraction: 0.2,
        test_fraction: 0.0,
        ..SynthConfig::default()
    };
    let out = root.join("corpus");
    write_world_corpus(&out, &cfg, |_| {}).unwrap();
    out
}

fn recipe(root: &Path, data: &Path, name: &str, config: &str, out: &str, steps: u64) -> PathBuf {
    let cfg_path = root.join(format!("{name}.json"));
    std::fs::write(&cfg_path, config).unwrap();
    let text = format!(
        r#"
[model]
kind = "lm"
config = "{cfg}"
seed = 2
[data]
train = "{train}"
val = "{val}"
max_text_len = 40
[optim]
batch_size = 16
max_steps = {steps}
lr = 3e-3
warmup_steps = 2
[run]
out = "{out}"
log_every = 1
val_every = 6
val_samples = 32
checkpoint_every = 4
"#,
        cfg = cfg_path.display(),
        train = data.join("train.jsonl").display(),
        val = data.join("val.jsonl").display(),
        out = root.join(out).display(),
    );
    let p = root.join(format!("{name}-{out}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

fn bytes(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
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

fn check(name: &str, config: &str) {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path();
    let data = corpus(tmp);
    let steps = 20;

    // Uninterrupted.
    let full = recipe(tmp, &data, name, config, "full", steps);
    let report = train(&TrainOptions {
        recipe: Some(full.clone()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(report.steps, steps);
    assert!(report.epochs_completed >= 1, "{report:?}");
    let val = report.validation.clone().unwrap();
    let ppl = val["perplexity"].as_f64().unwrap();
    let acc = val["accuracy"].as_f64().unwrap();
    assert!(val["tokens"].as_u64().unwrap() > 100, "{val}");
    let kinds = val["by_kind"].as_object().unwrap();
    let per_kind: u64 = kinds.values().map(|k| k["tokens"].as_u64().unwrap()).sum();
    assert_eq!(per_kind, val["tokens"].as_u64().unwrap(), "{val}");
    assert!(
        kinds.contains_key("qa") && kinds.contains_key("caption"),
        "{val}"
    );
    // The log's first validation (step 6) against the last.
    let log = std::fs::read_to_string(tmp.join("full/log.jsonl")).unwrap();
    let vals: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("validation").cloned())
        .collect();
    assert!(vals.len() >= 3, "{log}");
    let first = vals[0]["perplexity"].as_f64().unwrap();
    assert!(
        ppl < 0.7 * first && acc > 0.2,
        "{name}: held-out perplexity {first} -> {ppl}, accuracy {acc}"
    );

    // Killed after 6 updates (checkpoint at 4), resumed, stopped after 5 more,
    // resumed to the end.
    let cut = recipe(tmp, &data, name, config, "cut", steps);
    train(&TrainOptions {
        recipe: Some(cut),
        stop_after: Some(6),
        ..Default::default()
    })
    .unwrap();
    let run = tmp.join("cut");
    for stop in [Some(5), None] {
        train(&TrainOptions {
            resume: Some(run.clone()),
            stop_after: stop,
            ..Default::default()
        })
        .unwrap();
    }
    let a = tmp.join(format!("full/checkpoints/step-{steps:08}"));
    let b = tmp.join(format!("cut/checkpoints/step-{steps:08}"));
    for f in ["model.safetensors", "optimizer.safetensors"] {
        assert!(
            bytes(a.join(f)) == bytes(b.join(f)),
            "{name}: {f} differs after resume"
        );
    }

    // A run that continues this one (`model.init`) on a corpus with other words keeps
    // the first run's tokenizer, which its weights fit.
    let other = tmp.join("other.jsonl");
    let lines: Vec<String> = (0..40)
        .map(|i| format!("{{\"text\": \"zebra {i} grazes near the giraffe\"}}"))
        .collect();
    std::fs::write(&other, lines.join("\n") + "\n").unwrap();
    let cont = recipe(tmp, &data, name, config, "cont", 2);
    let text = std::fs::read_to_string(&cont)
        .unwrap()
        .replace(
            "seed = 2",
            &format!("seed = 2\ninit = \"{}\"", tmp.join("full").display()),
        )
        .replace(
            &data.join("train.jsonl").display().to_string(),
            &other.display().to_string(),
        );
    std::fs::write(&cont, text).unwrap();
    let r = train(&TrainOptions {
        recipe: Some(cont),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(r.steps, 2);
    assert!(
        bytes(tmp.join("cont/model/tokenizer.json"))
            == bytes(tmp.join("full/model/tokenizer.json"))
    );

    // The objective at the last checkpoint: gradients, prompts, logits to compare.
    let recipe_v = Recipe::from_file(&full).unwrap();
    let files = RunFiles::open(&tmp.join("full/model")).unwrap();
    let cfg = LmConfig::from_json(&files.config, "config").unwrap();
    let mut obj = LmObjective::new(&recipe_v, Inputs::new(&recipe_v, files, &Device::Cpu)).unwrap();
    let weights = load_tensors(&a.join("model.safetensors"), &Device::Cpu).unwrap();
    obj.init_from(&weights, "checkpoint").unwrap();
    let doc = |text: &str, prompt: Option<&str>| glimpse_data::dataset::Example {
        key: "k".into(),
        image: image::RgbImage::new(0, 0),
        meta: serde_json::json!({"text": text, "prompt": prompt}),
    };
    let samples = vec![
        obj.sample(doc("a red circle", None), Split::Validation)
            .unwrap(),
        obj.sample(
            doc("answer: blue", Some("question: what color is the square?")),
            Split::Validation,
        )
        .unwrap(),
    ];
    let batch = obj.batch(&samples, Split::Validation).unwrap();
    let scored: Vec<Vec<u32>> = batch.loss_mask.to_vec2().unwrap();
    let mask: Vec<Vec<u32>> = batch.attention_mask.to_vec2().unwrap();
    // Unprompted: every token after bos; prompted: only `answer : blue [SEP]`.
    assert_eq!(scored[0][0], 0);
    assert_eq!(scored[0][1..], mask[0][1..]);
    assert_eq!(scored[1].iter().sum::<u32>(), 4, "{scored:?}");
    let loss = obj.train.loss(&batch, true).unwrap();
    let grads = loss.backward().unwrap();
    for (n, v) in glimpse_train::params::sorted_vars(obj.vars()) {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient for {n}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "{name}: zero gradient for {n}");
    }
    let want = obj
        .train
        .model
        .logits(&batch.input_ids, &batch.attention_mask, false)
        .unwrap();

    // The export loads strictly into the inference model and gives the same logits.
    let out = tmp.join("export");
    let done = glimpse_train::export::export(&tmp.join("full"), &out, false).unwrap();
    assert_eq!(done[0].architecture, cfg.class_name());
    for f in ["config.json", "generation_config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let files = ModelFiles::from_dir(&out, name).unwrap();
    let lm = CausalLm::load(&files, &Device::Cpu).unwrap();
    assert_eq!(lm.class, cfg.class_name());
    let (ids, m) = (&batch.input_ids, Some(&batch.attention_mask));
    let got = match &lm.decoder {
        CausalDecoder::Opt(model) => model.forward(ids, m, &mut model.new_cache(), false),
        CausalDecoder::Llama(model) => model.forward(ids, m, &mut model.new_cache(), false),
    }
    .unwrap();
    assert!(max_abs(&got, &want) < 1e-5, "{name}: export logits differ");
    // One unpadded row through the scoring entry point, and a greedy continuation.
    let row: Vec<u32> = samples[0].ids.clone();
    let one = lm.logits(&row).unwrap();
    let want0 = want.get(0).unwrap().narrow(0, 0, row.len()).unwrap();
    assert!(max_abs(&one, &want0) < 1e-5);
    let prompt = lm
        .encode_prompt("question: what color is the circle? answer:")
        .unwrap();
    assert_eq!(prompt[0], 2);
    let cont = lm
        .generate(
            &prompt,
            &glimpse_generate::GenerationConfig {
                max_new_tokens: 6,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(!cont.is_empty() && cont.len() <= 6);
    let exported: serde_json::Value =
        serde_json::from_slice(&bytes(out.join("config.json"))).unwrap();
    assert_eq!(exported["architectures"][0], cfg.class_name());
    assert_eq!(exported["bos_token_id"], 2);
    assert_eq!(exported["eos_token_id"], 3);
}

#[test]
fn opt_lm_learns_resumes_bitwise_and_exports() {
    check("opt", OPT);
}

#[test]
fn llama_lm_learns_resumes_bitwise_and_exports() {
    check("llama", LLAMA);
}

#[test]
fn opt_dropout_is_refused_naming_it() {
    let v: serde_json::Value =
        serde_json::from_str(&OPT.replace("\"dropout\": 0.0", "\"dropout\": 0.1")).unwrap();
    let e = LmConfig::from_json(&v, "c.json").unwrap_err().to_string();
    assert!(e.contains("c.json") && e.contains("dropout"), "{e}");
    let v = serde_json::json!({"model_type": "gpt2"});
    let e = LmConfig::from_json(&v, "c.json").unwrap_err().to_string();
    assert!(e.contains("gpt2"), "{e}");
}
