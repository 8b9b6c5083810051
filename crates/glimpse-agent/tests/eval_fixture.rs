//! Writes `tests/fixtures/agent-eval/`: a few end-to-end records over world images
//! in the evaluation set's format, with gold plans and expectations taken from the
//! world's records. Run it again after a change of the world's generator:
//! `cargo test -p glimpse-agent --test eval_fixture -- --ignored`.

use std::path::Path;

use glimpse_synth::{sample, Sample, SynthConfig};
use serde_json::json;

fn name(o: &glimpse_synth::ObjectRecord) -> String {
    format!("{} {}", o.color, o.shape)
}

/// Distinct (colour, shape) kinds of a sample.
fn kinds(s: &Sample) -> Vec<String> {
    let mut k: Vec<String> = s.record.objects.iter().map(name).collect();
    k.sort();
    k.dedup();
    k
}

#[test]
#[ignore = "writes the committed fixture"]
fn write_eval_fixture() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/agent-eval");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = SynthConfig::default();
    // Test-split scenes, in index order.
    let scenes: Vec<Sample> = (0..4000u64)
        .map(|i| sample(&cfg, i))
        .filter(|s| s.record.split == "test")
        .take(400)
        .collect();
    let mut lines = Vec::new();
    let mut used = Vec::new();
    let mut save = |s: &Sample| -> String {
        let file = format!("{}.png", s.record.key);
        if !used.contains(&file) {
            s.image.save(dir.join(&file)).unwrap();
            used.push(file.clone());
        }
        file
    };
    // "Which of these images has a K, and what else is in it?": three scenes of two
    // kinds; only the second has K.
    let mut n = 0;
    for (i, target) in scenes.iter().enumerate() {
        if n == 3 {
            break;
        }
        let k = kinds(target);
        if k.len() != 2 {
            continue;
        }
        let want = &k[0];
        let other = target
            .record
            .objects
            .iter()
            .find(|o| &name(o) != want)
            .unwrap();
        let others: Vec<&Sample> = scenes[i + 1..]
            .iter()
            .filter(|s| !kinds(s).contains(want) && s.record.objects.len() <= 2)
            .take(2)
            .collect();
        if others.len() < 2 {
            continue;
        }
        let imgs = vec![save(others[0]), save(target), save(others[1])];
        let text = format!("a {want}");
        let mut tasks = Vec::new();
        for k in 1..=3 {
            tasks.push(
                json!({"id": k - 1, "task": "image-text-matching", "dep": [-1],
                "args": {"image": format!("<image>-{k}"), "text": text}}),
            );
        }
        for k in 1..=3 {
            tasks.push(json!({"id": k + 2, "task": "image-to-text", "dep": [-1],
                "args": {"image": format!("<image>-{k}")}}));
        }
        lines.push(json!({
            "key": format!("which-has-{n}"),
            "request": format!("which of these images has a {want}, and what else is in it?"),
            "images": imgs,
            "plan": {"tasks": tasks},
            "expect": {"all": [format!("image 2 matches \"{text}\" best"), other.shape.clone()],
                       "none": []},
        }));
        n += 1;
    }
    // "How many objects are in this picture?"
    for s in scenes.iter().filter(|s| s.record.count >= 2).take(3) {
        let q = "how many objects are there?";
        lines.push(json!({
            "key": format!("count-{}", s.record.key),
            "request": "how many objects are in this picture?",
            "images": [save(s)],
            "plan": {"tasks": [{"id": 0, "task": "visual-question-answering", "dep": [-1],
                "args": {"image": "<image>-1", "question": q}}]},
            "expect": {"all": [format!("\"{q}\" {}", s.record.count)], "none": []},
        }));
    }
    // "Is there a K in this image?" (yes for one scene, no for another).
    for (j, s) in scenes.iter().skip(50).take(2).enumerate() {
        let (kind, yes) = if j == 0 {
            (name(&s.record.objects[0]), true)
        } else {
            let absent = ["red circle", "blue square", "green triangle", "yellow star"]
                .into_iter()
                .find(|k| !kinds(s).contains(&k.to_string()))
                .unwrap();
            (absent.to_string(), false)
        };
        let text = format!("a {kind}");
        lines.push(json!({
            "key": format!("is-there-{}", s.record.key),
            "request": format!("is there a {kind} in this image?"),
            "images": [save(s)],
            "plan": {"tasks": [{"id": 0, "task": "image-text-matching", "dep": [-1],
                "args": {"image": "<image>-1", "text": text}}]},
            "expect": {"all": [format!("\"{text}\"? {}", if yes { "yes" } else { "no" })],
                       "none": []},
        }));
    }
    // "Which of these two shows K1 and which K2?" by zero-shot classification.
    let singles: Vec<&Sample> = scenes
        .iter()
        .skip(100)
        .filter(|s| kinds(s).len() == 1)
        .collect();
    let (a, b) = (
        singles[0],
        singles
            .iter()
            .find(|s| kinds(s) != kinds(singles[0]))
            .unwrap(),
    );
    let (ka, kb) = (kinds(a)[0].clone(), kinds(b)[0].clone());
    lines.push(json!({
        "key": "which-is-which",
        "request": format!("which of these two images shows the {ka} and which the {kb}?"),
        "images": [save(a), save(b)],
        "plan": {"tasks": [
            {"id": 0, "task": "zero-shot-image-classification", "dep": [-1],
             "args": {"image": "<image>-1", "labels": [ka, kb]}},
            {"id": 1, "task": "zero-shot-image-classification", "dep": [-1],
             "args": {"image": "<image>-2", "labels": [ka, kb]}}]},
        "expect": {"all": [format!("\"{ka}\": image 1"), format!("\"{kb}\": image 2")],
                   "none": []},
    }));
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("agent.jsonl"), text).unwrap();
}
