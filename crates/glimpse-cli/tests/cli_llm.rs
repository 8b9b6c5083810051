//! The command-line contract for BLIP-2 and LLaVA checkpoints on the committed
//! reference fixtures: `caption`, `ask`, `match` and `chat` give the reference's ids.

mod common;

use std::io::Write;

use common::*;
use serde_json::Value;

/// `caption`/`ask` for every photo of a BLIP-2 fixture; `extra` picks the case.
fn blip2_ids(name: &str, command: &[&str], case: &str) {
    let (meta, _) = reference(name);
    let model = fixture(name);
    let max_new = meta["generation"]["max_new_tokens"].to_string();
    let want = meta[case]["generated"].as_array().unwrap();
    for (i, stem) in strings(&meta["photos"]).iter().enumerate() {
        let image = photo(stem);
        let mut args = command.to_vec();
        args.extend([
            "--model",
            model.to_str().unwrap(),
            "--image",
            &image,
            "--max-new-tokens",
            &max_new,
            "--json",
        ]);
        let out = json(&args);
        let got = if command[0] == "ask" {
            ids(&out["token_ids"])
        } else {
            ids(&out["token_ids"][0])
        };
        assert_eq!(got, ids(&want[i]), "{name} {case} {stem}");
    }
}

#[test]
fn blip2_opt_captions_prompts_and_answers_as_the_reference() {
    blip2_ids("blip2_opt", &["caption"], "unprompted");
    blip2_ids(
        "blip2_opt",
        &["caption", "--prompt", "a photo of"],
        "prompted",
    );
    blip2_ids(
        "blip2_opt",
        &["ask", "--question", "what is in the picture?"],
        "vqa",
    );
}

#[test]
fn blip2_t5_captions_prompts_and_answers_as_the_reference() {
    blip2_ids("blip2_t5", &["caption"], "unprompted");
    blip2_ids(
        "blip2_t5",
        &["caption", "--prompt", "a photo of"],
        "prompted",
    );
    blip2_ids(
        "blip2_t5",
        &["ask", "--question", "what is in the picture?"],
        "vqa",
    );
}

#[test]
fn blip2_match_gives_itc_max_over_queries_and_itm() {
    check_match_against_reference("blip2_itm");
}

#[test]
fn llava_ask_answers_as_the_reference() {
    let (meta, _) = reference("llava");
    let model = fixture("llava");
    let single = &meta["single_turn"];
    let question = single["conversation"][0]["content"][1]["text"]
        .as_str()
        .unwrap();
    let max_new = meta["generation"]["max_new_tokens"].to_string();
    for (i, stem) in strings(&meta["photos"]).iter().enumerate() {
        let out = json(&[
            "ask",
            "--model",
            model.to_str().unwrap(),
            "--image",
            &photo(stem),
            "--question",
            question,
            "--max-new-tokens",
            &max_new,
            "--json",
        ]);
        assert_eq!(
            ids(&out["token_ids"]),
            ids(&single["generated"][i]),
            "llava {stem}"
        );
    }
}

#[test]
fn llava_scripted_chat_reuses_the_conversation() {
    let (meta, _) = reference("llava");
    let multi = &meta["multi_turn"];
    let q1 = multi["turn1"]["conversation"][0]["content"][1]["text"]
        .as_str()
        .unwrap();
    let turn2 = multi["turn2"]["conversation"].as_array().unwrap();
    let q2 = turn2.last().unwrap()["content"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| c["text"].as_str())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let turns = dir.path().join("turns.json");
    let mut f = std::fs::File::create(&turns).unwrap();
    write!(f, "{}", Value::from(vec![q1, q2])).unwrap();
    drop(f);
    let max_new = meta["generation"]["max_new_tokens"].to_string();
    let image = photo(multi["image"].as_str().unwrap());
    let out = json(&[
        "chat",
        "--model",
        fixture("llava").to_str().unwrap(),
        "--image",
        &image,
        "--turns",
        turns.to_str().unwrap(),
        "--max-new-tokens",
        &max_new,
        "--json",
    ]);
    let got = out["turns"].as_array().unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(ids(&got[0]["token_ids"]), ids(&multi["turn1"]["generated"]));
    assert_eq!(ids(&got[1]["token_ids"]), ids(&multi["turn2"]["generated"]));

    std::fs::write(&turns, "{not json").unwrap();
    let err = fails(&[
        "chat",
        "--model",
        fixture("llava").to_str().unwrap(),
        "--image",
        &image,
        "--turns",
        turns.to_str().unwrap(),
        "--json",
    ]);
    assert!(err.contains("turns.json"), "{err}");
}

/// `--quantize` decodes with a quantised language model (BLIP-2 with OPT, LLaVA) and
/// says on stderr what it quantised; other models are refused before loading, naming
/// their class, and an unknown precision is a usage error.
#[test]
fn quantize_runs_blip2_and_llava_and_refuses_other_models() {
    let image = photo("cat");
    let cases: [(&str, &[&str]); 3] = [
        ("blip2_opt", &["caption"]),
        ("blip2_opt", &["ask", "--question", "what is it?"]),
        ("llava", &["ask", "--question", "what is it?"]),
    ];
    for (name, command) in cases {
        let model = fixture(name);
        let mut args = command.to_vec();
        args.extend([
            "--model",
            model.to_str().unwrap(),
            "--image",
            &image,
            "--max-new-tokens",
            "4",
            "--quantize",
            "q8",
            "--json",
        ]);
        let out = glimpse(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name} {command:?}: {stderr}");
        assert!(
            stderr.contains("q8: ") && stderr.contains("Q8_0"),
            "{stderr}"
        );
    }

    let blip = fixture("blip_caption");
    let err = fails(&[
        "caption",
        "--model",
        blip.to_str().unwrap(),
        "--image",
        &image,
        "--quantize",
        "q4",
    ]);
    assert!(
        err.contains("--quantize q4") && err.contains("BlipForConditionalGeneration"),
        "{err}"
    );
    assert!(!err.contains("loading"), "refused before loading: {err}");
    let t5 = fixture("blip2_t5");
    let err = fails(&[
        "caption",
        "--model",
        t5.to_str().unwrap(),
        "--image",
        &image,
        "--quantize",
        "q8",
    ]);
    assert!(err.contains("OPT") && err.contains("T5"), "{err}");
    let err = fails(&["caption", "--image", &image, "--quantize", "q3"]);
    assert!(err.contains("q3") && err.contains("q8"), "{err}");
}

#[test]
fn quantize_q8_runs_every_command_on_8_bit_encoders() {
    let image = photo("cat");
    let clip = fixture("clip");
    let clip = clip.to_str().unwrap();
    let embed = |extra: &[&str]| {
        let mut args = vec![
            "embed", "--model", clip, "--image", &image, "--text", "a cat",
        ];
        args.extend(extra);
        args.push("--json");
        let out = glimpse(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        (v, stderr)
    };
    let (f32, _) = embed(&[]);
    let (q8, stderr) = embed(&["--quantize", "q8"]);
    assert!(
        stderr.contains("q8 encoders: ") && stderr.contains("in 8 bits"),
        "{stderr}"
    );
    for key in ["image_embeds", "text_embeds"] {
        let (a, b) = (floats(&f32[key][0]), floats(&q8[key][0]));
        let dot: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let cos = dot / (norm(&a) * norm(&b));
        assert!(cos > 0.99 && a != b, "{key}: cosine {cos}");
    }
    let blip = fixture("blip_caption");
    let itm = fixture("blip_itm");
    let cases: [(&str, Vec<&str>); 3] = [
        (
            "caption",
            vec!["--model", blip.to_str().unwrap(), "--max-new-tokens", "4"],
        ),
        (
            "match",
            vec!["--model", itm.to_str().unwrap(), "--text", "a cat"],
        ),
        ("classify", vec!["--model", clip, "--labels", "cat,dog"]),
    ];
    for (command, extra) in cases {
        let mut args = vec![command, "--image", &image, "--quantize", "q8", "--json"];
        args.extend(extra);
        let out = glimpse(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{command}: {stderr}");
        assert!(stderr.contains("q8 encoders: "), "{command}: {stderr}");
        let _: Value = serde_json::from_slice(&out.stdout).unwrap();
    }
}
