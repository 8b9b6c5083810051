//! `glimpse data plans` and `glimpse eval --task plan` with the bundled planner
//! (`models/planner-synth`): on a few held-out requests every plan parses and
//! validates and the scores come back in the JSON contract; on training requests the
//! planner writes the right task graphs.

mod common;

use common::{fails, glimpse, json};

#[test]
fn data_plans_then_eval_plan_with_the_bundled_planner() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().display().to_string();
    let made = json(&[
        "data",
        "plans",
        "--out",
        &out,
        "--count",
        "40",
        "--agent-count",
        "8",
        "--json",
    ]);
    assert_eq!(made["agent_test"], 8);
    assert!(made["test_new_shapes"].as_u64().unwrap() > 0);
    // Held-out requests: every plan parses and validates, whatever its quality.
    let test = dir.path().join("test.jsonl").display().to_string();
    let r = json(&[
        "eval", "--task", "plan", "--data", &test, "--limit", "6", "--json",
    ]);
    let s = &r["scores"];
    assert_eq!(s["requests"], 6);
    assert_eq!(s["parse_rate"], 1.0, "{r}");
    assert_eq!(s["validate_rate"], 1.0, "{r}");
    for k in [
        "node_f1",
        "edge_f1",
        "arg_name_f1",
        "arg_value_f1",
        "edit_distance",
    ] {
        let v = s[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{k} = {v}");
    }
    // The first requests of seed 0's training stream are what the bundled planner was
    // trained on: it writes their task graphs back (the model, its tokenizer and the
    // grammar decoder fit together).
    let train = dir.path().join("train.jsonl").display().to_string();
    let r = json(&[
        "eval", "--task", "plan", "--data", &train, "--limit", "6", "--json",
    ]);
    let s = &r["scores"];
    assert_eq!(s["node_f1"], 1.0, "{r}");
    assert_eq!(s["edge_f1"], 1.0, "{r}");
    assert_eq!(s["arg_name_f1"], 1.0, "{r}");
    // Copying label lists is its weakest part (0.95 argument-value F1 on val).
    assert!(s["arg_value_f1"].as_f64().unwrap() >= 0.5, "{r}");
    // The end-to-end set's gold plans are evaluable as well.
    let agent = dir.path().join("agent-test.jsonl").display().to_string();
    let r = json(&[
        "eval", "--task", "plan", "--data", &agent, "--limit", "2", "--json",
    ]);
    assert_eq!(r["scores"]["parse_rate"], 1.0);
}

#[test]
fn eval_plan_names_bad_inputs() {
    let err = fails(&["eval", "--task", "plan", "--data", "no/such.jsonl"]);
    assert!(err.contains("no/such.jsonl"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"request\": \"describe it\"}\n").unwrap();
    let err = fails(&[
        "eval",
        "--task",
        "plan",
        "--data",
        &bad.display().to_string(),
    ]);
    assert!(err.contains("line 1"), "{err}");
    let err = fails(&[
        "eval",
        "--task",
        "plan",
        "--data",
        &bad.display().to_string(),
        "--planner",
        "nowhere",
    ]);
    assert!(err.contains("line 1") || err.contains("nowhere"), "{err}");
    let err = fails(&[
        "data",
        "plans",
        "--out",
        &dir.path().display().to_string(),
        "--count",
        "3",
    ]);
    assert!(err.contains("--count"), "{err}");
    let _ = glimpse(&["--help"]);
}
