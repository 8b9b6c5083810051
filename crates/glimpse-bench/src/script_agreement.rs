//! The workload names, model directories, prompt ids and architecture shapes are written
//! twice, here and in `tools/bench/reference.py`; these tests read the script and keep
//! the two equal.

use std::path::Path;

use crate::flops::{
    BLIP2_VISION, BLIP_TEXT, BLIP_VISION, CLIP_PROJECTION, CLIP_TEXT, CLIP_VISION, LLAMA,
    LLAVA_VISION, LLAVA_VISION_LAYERS, OPT, QFORMER,
};
use crate::reference::SCRIPT;
use crate::shapes::{DecoderShape, VitShape};
use crate::workload::{
    BLIP2_TEXT_IDS, LLAVA_IDS_AFTER, LLAVA_IDS_BEFORE, MATMUL_COUNT, MATMUL_N, STREAM_TOKENS,
    WORKLOADS,
};

/// Workload names, directories and prompt ids are written twice; keep them equal.
#[test]
fn reference_script_agrees_on_names_dirs_and_prompt_ids() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(SCRIPT);
    let text = std::fs::read_to_string(&script).unwrap();
    for w in WORKLOADS {
        assert!(
            text.contains(&format!("\"{}\"", w.name)),
            "{} not in {SCRIPT}",
            w.name
        );
        match w.model_dir {
            Some(dir) => assert!(text.contains(&format!("\"{dir}\"")), "{dir}"),
            None => assert!(
                text.contains(&format!("\"{}\": (None,", w.name)),
                "{SCRIPT}: {} should have no model directory",
                w.name
            ),
        }
    }
    let list = |ids: &[u32]| {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        format!("[{}]", ids.join(", "))
    };
    for (name, ids) in [
        ("BLIP2_TEXT_IDS", BLIP2_TEXT_IDS),
        ("LLAVA_IDS_BEFORE", LLAVA_IDS_BEFORE),
        ("LLAVA_IDS_AFTER", LLAVA_IDS_AFTER),
    ] {
        let line = format!("{name} = {}", list(ids));
        assert!(text.contains(&line), "{SCRIPT} lacks `{line}`");
    }
    assert!(text.contains(&format!("STREAM_TOKENS = {STREAM_TOKENS}")));
    assert!(text.contains(&format!("MATMUL_N = {MATMUL_N}")));
    assert!(text.contains(&format!("MATMUL_COUNT = {MATMUL_COUNT}")));
}

/// `key=value` of the `name = dict(...)` (or the `name(...)` call) inside
/// `reference.py`'s `def function()`.
fn config_value(text: &str, function: &str, name: &str, key: &str) -> String {
    let body = text
        .split(&format!("\ndef {function}("))
        .nth(1)
        .and_then(|rest| rest.split("\ndef ").next())
        .unwrap_or_else(|| panic!("{SCRIPT}: no def {function}"));
    let block = body
        .split(&format!("{name}("))
        .nth(1)
        .and_then(|rest| rest.split("\n    )").next())
        .unwrap_or_else(|| panic!("{SCRIPT} {function}: no {name}("));
    block
        .split([',', '\n'])
        .find_map(|item| {
            let item = item.trim().trim_end_matches(')');
            item.strip_prefix(&format!("{key}="))
        })
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{SCRIPT} {function}: {name} has no {key}"))
}

/// The shapes the FLOP count uses are those `reference.py` writes into the configs.
#[test]
fn flop_shapes_agree_with_the_reference_configs() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(SCRIPT);
    let text = std::fs::read_to_string(&script).unwrap();
    let check = |function: &str, name: &str, pairs: &[(&str, usize)]| {
        for &(key, want) in pairs {
            let got = config_value(&text, function, name, key);
            assert_eq!(got, want.to_string(), "{function} {name}.{key}");
        }
    };
    let vit = |v: &VitShape| {
        vec![
            ("hidden_size", v.encoder.hidden),
            ("intermediate_size", v.encoder.mlp),
            ("num_hidden_layers", v.encoder.layers),
            ("image_size", v.image_size),
            ("patch_size", v.patch_size),
        ]
    };
    let decoder = |d: &DecoderShape| {
        let (mlp_key, heads_key) = if d.gated {
            ("intermediate_size", "num_key_value_heads")
        } else if d.head_transform {
            ("intermediate_size", "num_attention_heads")
        } else {
            ("ffn_dim", "num_attention_heads")
        };
        vec![
            ("hidden_size", d.hidden),
            (mlp_key, d.mlp),
            ("num_hidden_layers", d.layers),
            ("num_attention_heads", d.heads),
            (heads_key, d.kv_heads),
            ("vocab_size", d.vocab),
        ]
    };
    check("clip_config", "vision = dict", &vit(&CLIP_VISION));
    check(
        "clip_config",
        "text = dict",
        &[
            ("hidden_size", CLIP_TEXT.hidden),
            ("intermediate_size", CLIP_TEXT.mlp),
            ("num_hidden_layers", CLIP_TEXT.layers),
        ],
    );
    check(
        "clip_config",
        "return CLIPConfig",
        &[("projection_dim", CLIP_PROJECTION)],
    );
    check("blip_config", "vision = dict", &vit(&BLIP_VISION));
    check("blip_config", "text = dict", &decoder(&BLIP_TEXT));
    check(
        "blip_config",
        "text = dict",
        &[("encoder_hidden_size", BLIP_VISION.encoder.hidden)],
    );
    check("blip2_config", "vision = dict", &vit(&BLIP2_VISION));
    check(
        "blip2_config",
        "qformer = dict",
        &[
            ("hidden_size", QFORMER.encoder.hidden),
            ("intermediate_size", QFORMER.encoder.mlp),
            ("num_hidden_layers", QFORMER.encoder.layers),
            ("cross_attention_frequency", QFORMER.cross_every),
        ],
    );
    check(
        "blip2_config",
        "return Blip2Config",
        &[("num_query_tokens", QFORMER.queries)],
    );
    check("blip2_config", "text = dict", &decoder(&OPT));
    check(
        "blip2_config",
        "text = dict",
        &[("word_embed_proj_dim", OPT.hidden)],
    );
    check("llava_config", "vision = dict", &vit(&LLAVA_VISION));
    check("llava_config", "text = dict", &decoder(&LLAMA));
    check(
        "llava_config",
        "return LlavaConfig",
        &[("image_seq_length", LLAVA_VISION.patches())],
    );
    // Layer -2 of the tower's hidden states: the output of its next-to-last layer.
    assert_eq!(
        config_value(
            &text,
            "llava_config",
            "return LlavaConfig",
            "vision_feature_layer"
        ),
        "-2"
    );
    assert_eq!(LLAVA_VISION_LAYERS, LLAVA_VISION.encoder.layers - 1);
    assert_eq!(
        config_value(&text, "llava_config", "text = dict", "tie_word_embeddings"),
        "False"
    );
}
