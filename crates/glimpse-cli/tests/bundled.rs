//! Without `--model`, commands use the models Glimpse trained and committed under
//! `models/` (from any working directory); the outputs have the contract's shapes.

mod common;

use std::process::Command;

use common::{json, root};

const IMAGE: &str = "examples/synth/blue-circle.png";

#[test]
fn caption_defaults_to_the_bundled_blip() {
    let v = json(&["caption", "--image", IMAGE, "--json"]);
    let caption = v["captions"][0].as_str().unwrap();
    assert!(caption.split(' ').count() >= 2, "{caption:?}");
    // The bundled model describes this held-out image correctly (a blue circle on a
    // pink checkered background); it names every attribute of 85% of single-object
    // images, see the README's training results.
    assert!(caption.contains("blue circle"), "{caption:?}");
}

#[test]
fn classify_embed_match_and_ask_default_to_bundled_models() {
    // The bundled CLIP names colour and shape of held-out single-object images
    // (100% of the val split, see the README); the shape-only and colour-only
    // distractors rule out getting it right from one attribute.
    let v = json(&[
        "classify",
        "--image",
        IMAGE,
        "--labels",
        "pink triangle,blue square,blue circle,red circle",
        "--template",
        "a {}",
        "--json",
    ]);
    let probs: Vec<f64> = v["probs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-4);
    let best = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap();
    assert_eq!(v["labels"][best], "blue circle", "{probs:?}");
    let v = json(&[
        "embed",
        "--image",
        IMAGE,
        "--text",
        "a pink triangle",
        "--json",
    ]);
    assert_eq!(v["image_embeds"].as_array().unwrap().len(), 1);
    assert_eq!(v["text_embeds"].as_array().unwrap().len(), 1);
    let v = json(&[
        "match",
        "--image",
        IMAGE,
        "--text",
        "a pink triangle",
        "--text",
        "a green square",
        "--json",
    ]);
    assert_eq!(v["itc"].as_array().unwrap().len(), 2);
    assert_eq!(v["itm"].as_array().unwrap().len(), 2);
    let v = json(&[
        "ask",
        "--image",
        IMAGE,
        "--question",
        "what color is the triangle?",
        "--json",
    ]);
    assert!(!v["answer"].as_str().unwrap().is_empty());
}

#[test]
fn bundled_models_are_found_from_another_directory() {
    let out = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args([
            "caption",
            "--image",
            &root().join(IMAGE).display().to_string(),
            "--json",
        ])
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// On photographs from outside the synthetic world, the bundled captioners write one
/// caption that ends (its end token before the 30-token limit) and repeats no
/// three-token run: their generation_config.json recommends
/// `no_repeat_ngram_size = 3` and a length penalty past 16 tokens. With both turned
/// off on the command line the astronaut's caption runs to the limit in a loop.
#[test]
fn bundled_captioners_end_without_loops_on_photographs() {
    let photos = [
        "examples/images/astronaut.png",
        "examples/images/cat.png",
        "examples/images/coffee.png",
        "examples/images/rocket.jpg",
    ];
    for model in [
        "models/blip-synth/caption",
        "models/capfilt-synth/captioner",
    ] {
        let mut args = vec!["caption", "--model", model, "--json"];
        for p in &photos {
            args.extend(["--image", p]);
        }
        let v = json(&args);
        for (i, ids) in v["token_ids"].as_array().unwrap().iter().enumerate() {
            let ids: Vec<u64> = serde_json::from_value(ids.clone()).unwrap();
            let caption = &v["captions"][i];
            assert!(ids.len() < 30, "{model} {}: {caption}", photos[i]);
            let trigrams: Vec<&[u64]> = ids.windows(3).collect();
            let mut unique = trigrams.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(
                unique.len(),
                trigrams.len(),
                "{model} {}: {caption}",
                photos[i]
            );
        }
    }
    // The recommendation is the model's, and the command line wins over it.
    let v = json(&[
        "caption",
        "--image",
        "examples/images/astronaut.png",
        "--no-repeat-ngram-size",
        "0",
        "--length-decay",
        "off",
        "--json",
    ]);
    let ids = v["token_ids"][0].as_array().unwrap();
    assert_eq!(ids.len(), 30, "{}", v["captions"][0]);
}

#[test]
fn bad_decoding_recommendations_and_flags_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("models/blip-synth/caption");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let gen = dir.path().join("generation_config.json");
    std::fs::write(
        &gen,
        r#"{"eos_token_id": 3, "no_repeat_ngram_size": "three"}"#,
    )
    .unwrap();
    let model = dir.path().to_str().unwrap();
    let e = common::fails(&["caption", "--model", model, "--image", IMAGE]);
    assert!(
        e.contains("generation_config.json") && e.contains("no_repeat_ngram_size"),
        "{e}"
    );
    std::fs::write(&gen, r#"{"exponential_decay_length_penalty": [16]}"#).unwrap();
    let e = common::fails(&["caption", "--model", model, "--image", IMAGE]);
    assert!(e.contains("exponential_decay_length_penalty"), "{e}");
    let e = common::fails(&["caption", "--image", IMAGE, "--length-decay", "16;1.5"]);
    assert!(e.contains("--length-decay"), "{e}");
}
