//! Property tests on checkpoint loading from untrusted files: safetensors headers
//! (arbitrary bytes, crafted headers that lie about lengths, offsets, dtypes and
//! shapes, real files cut or flipped), `model.safetensors.index.json`, and
//! `config.json` mutated under real weights. Each must give `Ok` or `Err`, never a
//! panic.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use glimpse_models::checkpoint::{plan_load, ModelFiles, Weights};
use glimpse_models::pipeline::Pipeline;
use proptest::prelude::*;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures")
        .join(name)
}

/// A model directory holding the CLIP fixture's config and `weights` as its
/// `model.safetensors`.
fn model_dir(weights: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture("clip/config.json"), dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), weights).unwrap();
    dir
}

/// Opens the directory's weights and reads every tensor; any outcome but a panic.
fn open_and_read(dir: &Path) {
    let Ok(files) = ModelFiles::from_dir(dir, "prop") else {
        return;
    };
    let _ = plan_load(&files, &Device::Cpu);
    let Ok(w) = Weights::open(&files) else {
        return;
    };
    let _ = (w.stored_bytes(), w.stored_dtype(), w.tensor_count());
    let vb = w.var_builder(DType::F32, &Device::Cpu);
    for name in w.names() {
        let _ = vb.get_unchecked(&name);
    }
    let _ = w.finish();
}

const DTYPES: &[&str] = &[
    "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "F4", "X",
];

fn dim() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..6).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1u64 << 32)),
        Just(Value::from(-1)),
    ]
}

fn offset() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..200).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(usize::MAX as u64 - 7)),
    ]
}

/// A header of up to four tensors with any dtype, shape and offsets.
fn header() -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop::sample::select(DTYPES),
            prop::collection::vec(dim(), 0..4),
            offset(),
            offset(),
        ),
        0..4,
    )
    .prop_map(|tensors| {
        let mut m = serde_json::Map::new();
        for (i, (dtype, shape, a, b)) in tensors.into_iter().enumerate() {
            m.insert(
                format!("t{i}"),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]}),
            );
        }
        Value::Object(m)
    })
}

/// The header length field: the true one, or anything.
fn header_len() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        3 => Just(None),
        1 => any::<u64>().prop_map(Some),
        1 => (0u64..300).prop_map(Some),
    ]
}

fn safetensors(header: &Value, len: Option<u64>, data: usize) -> Vec<u8> {
    let text = header.to_string().into_bytes();
    let mut out = len.unwrap_or(text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend(std::iter::repeat_n(0x3c, data));
    out
}

/// Numeric fields of the CLIP fixture config and values that contradict them.
const CONFIG_FIELDS: &[&str] = &[
    "/projection_dim",
    "/text_config/hidden_size",
    "/text_config/intermediate_size",
    "/text_config/num_attention_heads",
    "/text_config/num_hidden_layers",
    "/text_config/max_position_embeddings",
    "/text_config/vocab_size",
    "/text_config/eos_token_id",
    "/vision_config/hidden_size",
    "/vision_config/image_size",
    "/vision_config/patch_size",
    "/vision_config/num_attention_heads",
    "/vision_config/num_channels",
    "/vision_config/num_hidden_layers",
    "/vision_config/layer_norm_eps",
    "/vision_config/hidden_act",
];

fn config_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![0i64, 1, 2, 3, 7, 33, 64, -1, 1 << 40]).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(0.5)),
        Just(Value::Null),
        Just(Value::from("gelu")),
        Just(Value::from("no_such_act")),
        Just(json!([1, 2])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn safetensors_from_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = model_dir(&bytes);
        open_and_read(dir.path());
    }

    #[test]
    fn safetensors_with_lying_headers(h in header(), len in header_len(), data in 0usize..256) {
        let dir = model_dir(&safetensors(&h, len, data));
        open_and_read(dir.path());
    }

    #[test]
    fn safetensors_cut_or_flipped(
        cut in any::<prop::sample::Index>(),
        flips in prop::collection::vec((0usize..2048, any::<u8>()), 0..6),
    ) {
        let mut bytes = std::fs::read(fixture("clip/model.safetensors")).unwrap();
        // Flips land in the length field and the header, where they change meaning.
        for (at, b) in flips {
            let i = at % bytes.len();
            bytes[i] ^= b;
        }
        let keep = if cut.index(4) == 0 { bytes.len() } else { cut.index(bytes.len()) };
        let dir = model_dir(&bytes[..keep]);
        open_and_read(dir.path());
    }

    #[test]
    fn index_files_of_any_shape(
        index in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..128)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
            prop::collection::vec(
                ("[a-z.]{1,8}", prop::sample::select(vec![
                    "model.safetensors", "../model.safetensors", "/dev/null", "", ".",
                    "model-00001-of-00002.safetensors",
                ])),
                0..4,
            )
            .prop_map(|m| {
                let map: serde_json::Map<String, Value> =
                    m.into_iter().map(|(k, v)| (k, Value::from(v))).collect();
                json!({ "weight_map": map }).to_string()
            }),
            Just(r#"{"weight_map": []}"#.to_string()),
            Just(r#"{"weight_map": {"a": 7}}"#.to_string()),
        ],
    ) {
        let dir = model_dir(&std::fs::read(fixture("clip/model.safetensors")).unwrap());
        std::fs::write(dir.path().join("model.safetensors.index.json"), index).unwrap();
        open_and_read(dir.path());
    }

    #[test]
    fn configs_that_contradict_the_weights(
        edits in prop::collection::vec((prop::sample::select(CONFIG_FIELDS), config_value()), 1..3),
    ) {
        let dir = model_dir(&std::fs::read(fixture("clip/model.safetensors")).unwrap());
        let path = dir.path().join("config.json");
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (at, v) in &edits {
            if let Some(slot) = cfg.pointer_mut(at) {
                *slot = v.clone();
            }
        }
        std::fs::write(&path, cfg.to_string()).unwrap();
        let _ = Pipeline::load(dir.path().to_str().unwrap(), &Device::Cpu);
    }
}
