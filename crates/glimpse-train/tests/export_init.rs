//! A `blip` run can start from an exported model directory (`model.init` naming
//! `glimpse export`'s `retrieval/` or `caption/`), as CapFilt's filter and captioner
//! are fine-tuned from the bundled BLIP: the run takes the export's tokenizer and
//! config and its weights, and a loss of weight 0 is neither computed nor trains what
//! only it reads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use glimpse_synth::{self as synth, SynthConfig};
use glimpse_train::trainer::{train, TrainOptions};

const BLIP_CONFIG: &str = r#"{
  "image_text_hidden_size": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "image_size": 24, "patch_size": 8}
}"#;

fn recipe(
    root: &Path,
    name: &str,
    model_extra: &str,
    data_extra: &str,
    loss_extra: &str,
) -> PathBuf {
    let cfg = root.join("blip.json");
    std::fs::write(&cfg, BLIP_CONFIG).unwrap();
    let text = format!(
        r#"
[model]
kind = "blip"
config = "{cfg}"
seed = 4
{model_extra}
[data]
train = "{train}"
shuffle_buffer = 16
workers = 2
{data_extra}
[optim]
batch_size = 8
max_steps = 2
lr = 1e-3
warmup_steps = 1
vision_lr_scale = 0.0
[loss]
queue_size = 16
{loss_extra}
[run]
out = "{out}"
log_every = 1
checkpoint_every = 2
"#,
        cfg = cfg.display(),
        train = root.join("data/train").display(),
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

fn tensors(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape()
        && a.flatten_all().unwrap().to_vec1::<f32>().unwrap()
            == b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The logged losses of each update: (itc, itm, lm).
fn logged(run: &Path) -> Vec<(f64, f64, f64)> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| {
            let f = |k: &str| v[k].as_f64().unwrap();
            (f("itc"), f("itm"), f("lm"))
        })
        .collect()
}

#[test]
fn blip_runs_start_from_exported_filter_and_captioner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = SynthConfig {
        count: 48,
        image_size: 24,
        jitter: 0.0,
        shard_size: 48,
        seed: 9,
        val_fraction: 0.0,
        test_fraction: 0.0,
        ..SynthConfig::default()
    };
    synth::generate(&cfg, &root.join("data"), |_, _| {}).unwrap();
    run(recipe(root, "base", "", "", "")).unwrap();
    let export = root.join("export");
    glimpse_train::export::export(&root.join("base"), &export, false).unwrap();

    // The filter: ITC + ITM from retrieval/, no LM.
    let init = format!("init = \"{}\"", export.join("retrieval").display());
    run(recipe(root, "filter", &init, "", "lm_weight = 0.0")).unwrap();
    let filter = root.join("filter");
    assert_eq!(
        std::fs::read(filter.join("model/tokenizer.json")).unwrap(),
        std::fs::read(export.join("retrieval/tokenizer.json")).unwrap(),
        "the run takes the export's tokenizer"
    );
    let theirs = tensors(&export.join("retrieval/model.safetensors"));
    let ours = tensors(&filter.join("checkpoints/step-00000002/model.safetensors"));
    let tower = theirs
        .keys()
        .filter(|n| n.starts_with("vision_model."))
        .count();
    assert!(tower > 10, "{tower} vision tensors");
    for (name, t) in theirs
        .iter()
        .filter(|(n, _)| n.starts_with("vision_model."))
    {
        assert!(
            same(t, &ours[name]),
            "{name} is not the export's (tower frozen)"
        );
    }
    assert!(
        !same(&theirs["itm_head.weight"], &ours["itm_head.weight"]),
        "ITM trained"
    );
    for (itc, itm, lm) in logged(&filter) {
        assert!(itc > 0.0 && itm > 0.0 && lm == 0.0, "{itc} {itm} {lm}");
    }

    // The captioner: LM only, after a prompt, from caption/.
    let init = format!("init = \"{}\"", export.join("caption").display());
    run(recipe(
        root,
        "captioner",
        &init,
        "caption_prompt = \"a picture of \"",
        "itc_weight = 0.0\nitm_weight = 0.0",
    ))
    .unwrap();
    let captioner = root.join("captioner");
    let theirs = tensors(&export.join("caption/model.safetensors"));
    let ours = tensors(&captioner.join("checkpoints/step-00000002/model.safetensors"));
    for (name, t) in theirs
        .iter()
        .filter(|(n, _)| n.starts_with("vision_model."))
    {
        assert!(
            same(t, &ours[name]),
            "{name} is not the export's (tower frozen)"
        );
    }
    // The decoder's shared weights are the encoder's in training, and they trained.
    let word = "text_decoder.bert.embeddings.word_embeddings.weight";
    let shared = "text_encoder.embeddings.word_embeddings.weight";
    assert!(!same(&theirs[word], &ours[shared]), "the LM trained");
    for (itc, itm, lm) in logged(&captioner) {
        assert!(itc == 0.0 && itm == 0.0 && lm > 0.0, "{itc} {itm} {lm}");
    }
}
