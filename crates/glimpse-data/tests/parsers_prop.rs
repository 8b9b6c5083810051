//! Property tests on the parsers of untrusted files: `preprocessor_config.json` /
//! `processor_config.json`, `tokenizer.json` with `tokenizer_config.json`. Arbitrary
//! and mutated inputs must give `Ok` or `Err`, never a panic. The tar reader of
//! WebDataset shards has its own file (`tar_prop.rs`).

use std::path::{Path, PathBuf};

use glimpse_data::{resize_dims, ImageProcessor, ProcessorConfig, ResizeTarget, TextTokenizer};
use proptest::prelude::*;
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures")
        .join(rel)
}

/// Field names of the files under test, so generated objects reach deep into them.
const KEYS: &[&str] = &[
    "image_processor",
    "image_processor_type",
    "processor_class",
    "size",
    "shortest_edge",
    "height",
    "width",
    "crop_size",
    "resample",
    "image_mean",
    "image_std",
    "do_resize",
    "do_center_crop",
    "do_normalize",
    "do_rescale",
    "rescale_factor",
    "pad_token",
    "bos_token",
    "eos_token",
    "content",
    "model_max_length",
    "added_tokens_decoder",
    "additional_special_tokens",
    "special",
    "x",
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![0i64, 1, -1, 2, 3, 224, 100_000, i64::MAX, i64::MIN])
            .prop_map(Value::from),
        prop::sample::select(vec![0.0f64, -0.0, 1e30, -1e30, 1e-300, 0.5]).prop_map(Value::from),
    ]
}

/// Any JSON value, biased towards the keys and numbers that matter here.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        "[a-zA-Z<>/ ]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "CLIPImageProcessor",
            "BlipImageProcessor",
            "bicubic",
            "[PAD]"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Every JSON pointer inside `v` (including the root, "").
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                pointers(
                    x,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                pointers(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// `base` with the values at a few of its paths replaced.
fn mutated(base: &Value, edits: &[(prop::sample::Index, Value)]) -> Value {
    let mut v = base.clone();
    for (at, new) in edits {
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        let p = &all[at.index(all.len())];
        if let Some(slot) = v.pointer_mut(p) {
            *slot = new.clone();
        }
    }
    v
}

fn read_json(rel: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

/// A config that parses must give a processor or an error, and a processor's output
/// size must be what its config says.
fn processor_from(text: &str) {
    if let Ok(cfg) = ProcessorConfig::from_json_str(text, "prop.json") {
        if let Ok(p) = ImageProcessor::from_config(cfg) {
            let (h, w) = p.output_size();
            assert!(h > 0 && w > 0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn processor_config_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        processor_from(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn processor_config_from_any_json(v in json()) {
        processor_from(&v.to_string());
    }

    #[test]
    fn processor_config_mutated(
        which in 0usize..3,
        edits in prop::collection::vec((any::<prop::sample::Index>(), json()), 1..4),
    ) {
        let base = read_json(
            ["clip/preprocessor_config.json", "blip_caption/preprocessor_config.json",
             "llava/processor_config.json"][which],
        );
        processor_from(&mutated(&base, &edits).to_string());
    }

    #[test]
    fn resize_dims_of_any_size(
        h in 1usize..1_000_000,
        w in 1usize..1_000_000,
        edge in 1usize..1_000_000,
    ) {
        let (rh, rw) = resize_dims(h, w, ResizeTarget::ShortestEdge(edge));
        prop_assert!(rh >= 1 && rw >= 1);
    }

    #[test]
    fn tokenizer_files_mutated(
        edits in prop::collection::vec((any::<prop::sample::Index>(), json()), 1..3),
        config in json(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let base = read_json("clip/tokenizer.json");
        std::fs::write(dir.path().join("tokenizer.json"), mutated(&base, &edits).to_string()).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config.to_string()).unwrap();
        if let Ok(t) = TextTokenizer::from_file(&dir.path().join("tokenizer.json")) {
            let _ = t.encode("a photo of a cat.", true);
            let _ = t.decode(&[0, 1, 2, 3, u32::MAX], true);
        }
    }

    #[test]
    fn tokenizer_json_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), &bytes).unwrap();
        let _ = TextTokenizer::from_file(&dir.path().join("tokenizer.json"));
    }
}
