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
