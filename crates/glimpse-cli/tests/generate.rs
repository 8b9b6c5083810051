//! `glimpse generate` and `glimpse data corpus` on the bundled language models of the
//! world: prompts tokenise with bos first, `--ids` continues the same ids the same way,
//! the prompt logits come back per position, and a world question gets an answer of
//! its kind.

mod common;

use common::*;

#[test]
fn bundled_lms_continue_prompts_and_ids_alike() {
    for model in ["models/opt-lm-synth", "models/llama-lm-synth"] {
        let by_text = json(&[
            "generate",
            "--model",
            model,
            "--prompt",
            "question: what color is the circle? answer:",
            "--max-new-tokens",
            "4",
            "--logits",
            "--json",
        ]);
        let prompt = ids(&by_text["prompt_ids"]);
        assert_eq!(prompt[0], 2, "{model}: bos first");
        let logits = by_text["logits"].as_array().unwrap();
        assert_eq!(logits.len(), prompt.len(), "{model}");
        let colours = [
            "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
            "white", "gray", "grey", "cyan",
        ];
        let answer = by_text["text"].as_str().unwrap().trim().to_string();
        assert!(
            colours.contains(&answer.as_str()),
            "{model}: {answer:?} is not a colour"
        );
        let list: Vec<String> = prompt.iter().map(|i| i.to_string()).collect();
        let by_ids = json(&[
            "generate",
            "--model",
            model,
            "--ids",
            &list.join(","),
            "--max-new-tokens",
            "4",
            "--json",
        ]);
        assert_eq!(ids(&by_ids["ids"]), ids(&by_text["ids"]), "{model}");
        assert!(by_text["class"].as_str().unwrap().ends_with("ForCausalLM"));
    }
}

#[test]
fn generate_refuses_ids_outside_the_vocabulary() {
    let err = fails(&[
        "generate",
        "--model",
        "models/opt-lm-synth",
        "--ids",
        "2,100000",
    ]);
    assert!(
        err.contains("100000") && err.contains("vocabulary"),
        "{err}"
    );
}

#[test]
fn data_corpus_writes_split_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let m = json(&[
        "data",
        "corpus",
        "--out",
        out.to_str().unwrap(),
        "--count",
        "30",
        "--json",
    ]);
    let files = m["files"].as_array().unwrap();
    assert_eq!(files.len(), 3);
    for f in files {
        let text = std::fs::read_to_string(out.join(f["file"].as_str().unwrap())).unwrap();
        assert_eq!(
            text.lines().count() as u64,
            f["documents"].as_u64().unwrap()
        );
    }
}
