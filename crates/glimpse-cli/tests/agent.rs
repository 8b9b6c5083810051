//! `glimpse agent` and `glimpse eval --task agent` as processes: the agent planned
//! through `glimpse serve`'s OpenAI-compatible endpoint serving a text-only language
//! model (the synthetic-world LLaMA does not plan: the test shows that the path runs
//! end to end and that the unusable plan is reported clearly), gold plans of the
//! committed evaluation fixture, and bad input refused with a clear error.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_string()))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(model: &str, port: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(["serve", "--port", &port.to_string(), "--model", model])
        .current_dir(root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Server(child);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Some((200, _)) = get(port, "/health") {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("glimpse serve did not become ready on port {port}");
}

const IMAGE: &str = "crates/glimpse-agent/tests/fixtures/agent-eval";

fn an_image() -> String {
    let dir = root().join(IMAGE);
    let mut pngs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    pngs.sort();
    pngs[0].display().to_string()
}

#[test]
fn the_agent_plans_through_glimpse_serve_serving_a_text_language_model() {
    let port = free_port();
    let _server = serve("models/llama-lm-synth", port);
    let (status, models) = get(port, "/v1/models").unwrap();
    assert_eq!(status, 200);
    let models: Value = serde_json::from_str(&models).unwrap();
    assert_eq!(models["data"][0]["id"], "llama-lm-synth");
    assert_eq!(models["data"][0]["class"], "LlamaForCausalLM");

    let url = format!("http://127.0.0.1:{port}/v1");
    let img = an_image();
    for sub in [&["agent"][..], &["agent", "plan"][..]] {
        let mut args = sub.to_vec();
        args.extend([
            "what is in this image?",
            "--image",
            &img,
            "--planner",
            &url,
            "--planner-model",
            "llama-lm-synth",
            "--planner-timeout",
            "60",
        ]);
        let err = fails(&args);
        // The model answered (the endpoint works), but with no usable plan.
        assert!(err.contains(&url), "{err}");
        assert!(
            err.contains("holds no plan") || err.contains("cannot run"),
            "{err}"
        );
    }
    // An id the server does not serve is the server's 404, named.
    let err = fails(&[
        "agent",
        "plan",
        "caption it",
        "--planner",
        &url,
        "--planner-model",
        "gpt-4",
    ]);
    assert!(err.contains("404") && err.contains("gpt-4"), "{err}");
}

#[test]
fn eval_agent_scores_gold_plans_of_the_fixture() {
    let data = format!("{IMAGE}/agent.jsonl");
    let v = json(&[
        "eval", "--task", "agent", "--data", &data, "--plans", "gold", "--json",
    ]);
    let total = v["total"].as_u64().unwrap();
    let right = v["right"].as_u64().unwrap();
    assert!(total >= 8, "{v}");
    assert_eq!(v["plans"], "gold");
    assert!((v["share"].as_f64().unwrap() - right as f64 / total as f64).abs() < 1e-9);
    let records = v["records"].as_array().unwrap();
    assert_eq!(records.len() as u64, total);
    assert!(records.iter().all(|r| r["error"].is_null()), "{v}");
    let out = glimpse(&[
        "eval", "--task", "agent", "--data", &data, "--plans", "gold",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with(&format!(
            "agent on {data} (gold plans): {right}/{total} answers right"
        )),
        "{text}"
    );
}

#[test]
fn bad_agent_input_is_refused_with_a_clear_error() {
    let img = an_image();
    let err = fails(&[
        "agent",
        "  ",
        "--planner",
        "http://127.0.0.1:9/v1",
        "--planner-model",
        "m",
    ]);
    assert!(err.contains("the request is empty"), "{err}");
    let err = fails(&["agent", "describe", "--image", "no/such.png"]);
    assert!(err.contains("no/such.png"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"garbage").unwrap();
    let bad = bad.display().to_string();
    let err = fails(&[
        "agent",
        "describe",
        "--image",
        &bad,
        "--planner",
        "http://127.0.0.1:9/v1",
        "--planner-model",
        "m",
    ]);
    assert!(err.contains("bad.png"), "{err}");
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/v1");
    let err = fails(&[
        "agent",
        "describe",
        "--image",
        &img,
        "--planner",
        &url,
        "--planner-model",
        "m",
    ]);
    assert!(err.contains(&url) && err.contains("cannot reach"), "{err}");
    let err = fails(&["agent", "describe", "--image", &img, "--planner", &url]);
    assert!(err.contains("--planner-model"), "{err}");
    let err = fails(&[
        "eval",
        "--task",
        "agent",
        "--data",
        "no/such.jsonl",
        "--plans",
        "gold",
    ]);
    assert!(err.contains("no/such.jsonl"), "{err}");
}

#[test]
fn retrieval_over_an_index_fans_captioning_out_over_the_found_images() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = glimpse_synth::SynthConfig {
        seed: 5,
        count: 24,
        shard_size: 12,
        val_fraction: 0.0,
        test_fraction: 0.0,
        ..glimpse_synth::SynthConfig::default()
    };
    glimpse_synth::generate(&cfg, &data, |_, _| {}).unwrap();
    let idx = tmp.path().join("idx");
    json(&[
        "index",
        "build",
        "--data",
        data.to_str().unwrap(),
        "--out",
        idx.to_str().unwrap(),
        "--json",
    ]);
    let query = glimpse_synth::sample(&cfg, 3);
    query.image.save(tmp.path().join("query.png")).unwrap();
    let record = serde_json::json!({
        "key": "like-this",
        "request": "find images like this one and say what they share",
        "images": ["query.png"],
        "plan": {"tasks": [
            {"id": 0, "task": "image-to-image-retrieval", "dep": [-1], "args": {"image": "<image>-1"}},
            {"id": 1, "task": "image-to-text", "dep": [0], "args": {"image": "<resource>-0"}}]},
        "expect": {"all": ["found 4 image(s)", "share"], "none": ["image 000003 ("]},
    });
    let set = tmp.path().join("set.jsonl");
    std::fs::write(&set, format!("{record}\n")).unwrap();
    let v = json(&[
        "eval",
        "--task",
        "agent",
        "--data",
        set.to_str().unwrap(),
        "--plans",
        "gold",
        "--index",
        idx.to_str().unwrap(),
        "--json",
    ]);
    let r = &v["records"][0];
    assert!(r["error"].is_null(), "{v}");
    let answer = r["answer"].as_str().unwrap();
    // Four retrieved images (the query itself left out), each captioned.
    assert_eq!(answer.matches("(image-to-text,").count(), 4, "{answer}");
    assert_eq!(v["right"], 1, "{answer}");
    // Without an index the retrieval has no candidate, and the error says what to add.
    let v = json(&[
        "eval",
        "--task",
        "agent",
        "--data",
        set.to_str().unwrap(),
        "--plans",
        "gold",
        "--json",
    ]);
    let e = v["records"][0]["error"].as_str().unwrap();
    assert!(
        e.contains("no available model for `image-to-image-retrieval`") && e.contains("--index"),
        "{e}"
    );
}

#[test]
fn agent_calibrate_refuses_bad_input_and_prints_its_fit() {
    let err = fails(&["agent", "calibrate", "--model", "no/such/model"]);
    assert!(err.contains("no/such/model"), "{err}");
    let model = root().join("models/blip-synth/retrieval");
    let model = model.display().to_string();
    let err = fails(&["agent", "calibrate", "--model", &model, "--scenes", "4"]);
    assert!(err.contains("at least 8 scenes"), "{err}");
    // A small fit, not written: the bundled file stays as committed.
    let before =
        std::fs::read(root().join("models/blip-synth/retrieval/match_calibration.json")).unwrap();
    let out = glimpse(&[
        "agent",
        "calibrate",
        "--model",
        &model,
        "--scenes",
        "16",
        "--dry-run",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("weights: cosine"), "{text}");
    assert!(text.contains("which image has it, right on"), "{text}");
    let after =
        std::fs::read(root().join("models/blip-synth/retrieval/match_calibration.json")).unwrap();
    assert_eq!(before, after, "--dry-run wrote the file");
}
