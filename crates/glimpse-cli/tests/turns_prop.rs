//! Property test on `glimpse chat --turns FILE`, through the binary (the parser is
//! private to the command): any bytes and any JSON list give a reply or an error that
//! names the file, never a panic. Few cases, as each one loads the LLaVA fixture.

mod common;

use common::{fixture, glimpse};
use proptest::prelude::*;
use serde_json::{json, Value};

fn turn() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[a-z ?]{0,12}".prop_map(Value::String),
        "[a-z ?]{0,12}".prop_map(|t| json!({ "text": t })),
        Just(json!({ "role": "user" })),
        Just(json!({ "text": 7 })),
        Just(Value::Null),
        Just(json!(1.5)),
        Just(json!([["nested"]])),
    ]
}

fn turns_file() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(turn(), 0..3).prop_map(|t| Value::Array(t).to_string().into_bytes()),
        turn().prop_map(|t| t.to_string().into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn chat_turns_files(bytes in turns_file()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turns.json");
        std::fs::write(&path, &bytes).unwrap();
        let model = fixture("llava");
        let out = glimpse(&[
            "chat", "--model", model.to_str().unwrap(), "--image", "examples/images/cat.png",
            "--turns", path.to_str().unwrap(), "--json", "--max-new-tokens", "2",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        prop_assert!(!stderr.contains("panicked"), "{}", stderr);
        prop_assert!(matches!(out.status.code(), Some(0 | 1)), "{:?}: {}", out.status, stderr);
        if !out.status.success() {
            prop_assert!(stderr.contains("turns.json"), "{}", stderr);
        }
    }
}
