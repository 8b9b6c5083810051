//! The agent end to end: planned through a scripted OpenAI-compatible endpoint,
//! through an external tool declared in a registry file, on gold plans of the
//! committed evaluation fixture, and its clear errors for bad input and bad planners.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{serve, Reply};
use glimpse_agent::agent::{Agent, AgentConfig};
use glimpse_agent::execute::TaskState;
use glimpse_agent::remote::RemotePlanner;
use glimpse_agent::{Error, RuleChooser};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn world_image(dir: &Path, index: u64) -> (PathBuf, glimpse_synth::SampleJson) {
    let s = glimpse_synth::sample(&glimpse_synth::SynthConfig::default(), index);
    let p = dir.join(format!("{index}.png"));
    s.image.save(&p).unwrap();
    (p, s.record)
}

fn remote(url: &str, secs: f64) -> RemotePlanner {
    RemotePlanner::new(url, "planner", Duration::from_secs_f64(secs)).unwrap()
}

fn agent(planner: RemotePlanner, tools: bool, bundled: bool) -> Agent {
    let cfg = AgentConfig {
        bundled_root: bundled.then(root),
        registry_file: tools.then(|| fixtures().join("tools.toml")),
        ..AgentConfig::default()
    };
    Agent::new(cfg, Some(Box::new(planner.clone())), Box::new(planner)).unwrap()
}

#[test]
fn a_declared_tool_is_planned_through_and_its_result_answers() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, _) = world_image(tmp.path(), 3);
    let ep = serve(vec![Reply::Content(
        "Sure! Here is the plan:\n```json\n{\"tasks\":[{\"id\":0,\"task\":\"image-size\",\"dep\":[-1],\"args\":{\"image\":\"<image>-1\"}}]}\n```"
            .into(),
    )]);
    let a = agent(remote(&ep.url, 10.0), true, false);
    let report = a.run("how big is this image?", &[img]).unwrap();
    assert_eq!(report.selections[0].model, "png-size");
    assert_eq!(report.selections[0].reason, "only candidate");
    assert!(report.answer.contains("72x72 pixels"), "{}", report.answer);
    // The tool's task type reached the planner's prompt with its description.
    let req = &ep.requests.lock().unwrap()[0];
    let system = req["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("image-size: Report an image's width and height in pixels."),
        "{system}"
    );
    assert_eq!(req["model"], "planner");
}

#[test]
fn the_llm_chooses_among_several_models_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (img, rec) = world_image(tmp.path(), 5);
    let text = format!("a {} {}", rec.objects[0].color, rec.objects[0].shape);
    let plan = format!(
        "{{\"tasks\":[{{\"id\":0,\"task\":\"image-text-matching\",\"dep\":[-1],\"args\":{{\"image\":\"<image>-1\",\"text\":\"{text}\"}}}}]}}"
    );
    let ep = serve(vec![
        Reply::Content(plan),
        Reply::Content(
            "{\"id\": \"clip-synth\", \"reason\": \"CLIP compares an image and a text directly\"}"
                .into(),
        ),
    ]);
    let a = agent(remote(&ep.url, 10.0), false, true);
    let r = a.run("does this image show it?", &[img]).unwrap();
    assert_eq!(r.selections[0].model, "clip-synth");
    assert_eq!(
        r.selections[0].reason,
        "chosen by planner: CLIP compares an image and a text directly"
    );
    assert!(matches!(r.results[0].state, TaskState::Done { .. }));
    assert!(
        r.answer.contains(&format!("match \"{text}\"?")),
        "{}",
        r.answer
    );
    let choose = &ep.requests.lock().unwrap()[1];
    let prompt = choose["messages"][1]["content"].as_str().unwrap();
    assert!(
        prompt.contains("blip-synth-retrieval") && prompt.contains("clip-synth"),
        "{prompt}"
    );
}

#[test]
fn bad_requests_are_refused_before_planning() {
    let ep = serve(vec![]);
    let a = agent(remote(&ep.url, 5.0), false, false);
    let err = a.run("  ", &[]).unwrap_err();
    assert_eq!(err.to_string(), "request: the request is empty");
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("broken.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let err = a.run("describe it", &[bad]).unwrap_err();
    assert!(matches!(err, Error::Image { .. }), "{err}");
    assert!(err.to_string().contains("broken.png"), "{err}");
    assert!(ep.requests.lock().unwrap().is_empty());
}

#[test]
fn planner_failures_name_the_endpoint() {
    // Down: nothing listens on the port.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let a = agent(remote(&url, 5.0), false, false);
    let err = a.run("describe", &[]).unwrap_err().to_string();
    assert!(err.contains(&url) && err.contains("cannot reach"), "{err}");

    let ep = serve(vec![
        Reply::Raw(500, "{\"error\": {\"message\": \"out of memory\"}}".into()),
        Reply::Content("I am sorry, I cannot plan that.".into()),
        Reply::Raw(200, "<html>hello</html>".into()),
        Reply::Content("{\"tasks\": [{\"id\": 0, \"task\": \"paint-a-picture\", \"dep\": [-1], \"args\": {\"text\": \"a cat\"}}]}".into()),
    ]);
    let a = agent(remote(&ep.url, 5.0), false, false);
    let e = a.run("describe", &[]).unwrap_err().to_string();
    assert!(
        e.contains(&ep.url) && e.contains("500") && e.contains("out of memory"),
        "{e}"
    );
    let e = a.run("describe", &[]).unwrap_err().to_string();
    assert!(
        e.contains(&ep.url) && e.contains("holds no plan") && e.contains("I am sorry"),
        "{e}"
    );
    let e = a.run("describe", &[]).unwrap_err().to_string();
    assert!(
        e.contains(&ep.url) && e.contains("not an OpenAI chat completion"),
        "{e}"
    );
    // A plan that parses but cannot run is reported with the planner's own text.
    let e = a.run("describe", &[]).unwrap_err();
    assert!(matches!(e, Error::Unrunnable { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("unknown task `paint-a-picture`") && e.contains("the planner wrote"),
        "{e}"
    );
}

#[test]
fn a_planner_that_never_answers_times_out() {
    let ep = serve(vec![Reply::Hang]);
    let a = agent(remote(&ep.url, 1.0), false, false);
    let started = Instant::now();
    let e = a.run("describe", &[]).unwrap_err().to_string();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.contains(&ep.url) && e.contains("no answer within 1 s"),
        "{e}"
    );
}

#[test]
fn gold_plans_of_the_fixture_run_and_are_scored() {
    let data = fixtures().join("agent-eval/agent.jsonl");
    let records = glimpse_agent::eval::read_records(&data).unwrap();
    assert!(records.len() >= 8);
    let cfg = AgentConfig {
        bundled_root: Some(root()),
        ..AgentConfig::default()
    };
    let a = Agent::new(cfg, None, Box::new(RuleChooser)).unwrap();
    let mut seen = 0;
    let report = glimpse_agent::eval::evaluate(&a, &data, &records, true, &mut |_| seen += 1);
    assert_eq!(seen, records.len());
    assert_eq!(report.total, records.len());
    assert_eq!(report.plans, "gold");
    for r in &report.records {
        assert!(r.error.is_none(), "{}: {:?}", r.key, r.error);
        assert!(!r.answer.contains("<resource>") && !r.answer.contains("<image>"));
        let (missing, forbidden) = glimpse_agent::eval::check(
            &r.answer,
            &records.iter().find(|x| x.key == r.key).unwrap().expect,
        );
        assert_eq!(r.right, missing.is_empty() && forbidden.is_empty());
    }
    assert_eq!(
        report.right,
        report.records.iter().filter(|r| r.right).count()
    );
    // With the bundled synthetic-world models 5 of the 9 answers are right
    // (2026-12-07, docs/results.md): the VQA model counts two objects as one in two
    // scenes, and the calibrated match ranks two "which has" scenes wrong. A drop
    // below that is a regression.
    assert!(
        report.right >= 5,
        "{:#?}",
        report.failures().collect::<Vec<_>>()
    );
}

#[test]
fn an_http_tool_is_posted_the_arguments_and_its_failures_are_named() {
    let ep = serve(vec![
        Reply::Raw(
            200,
            "{\"labels\": [{\"label\": \"cat\", \"score\": 0.75}]}".into(),
        ),
        Reply::Raw(503, "busy".into()),
        Reply::Hang,
    ]);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("tools.json");
    let tool = serde_json::json!({"tool": [{
        "id": "remote-detector", "task": "object-detection", "description": "finds objects",
        "inputs": ["image"], "optional": ["labels"], "output": "labels",
        "url": format!("{}/detect", ep.url), "timeout_s": 1.0
    }]});
    std::fs::write(&file, tool.to_string()).unwrap();
    let tools = glimpse_agent::tools::read_registry(&file).unwrap();
    let args = std::collections::BTreeMap::from([
        (
            glimpse_agent::ArgName::Image,
            serde_json::json!("/x/cat.png"),
        ),
        (
            glimpse_agent::ArgName::Labels,
            serde_json::json!(["cat", "dog"]),
        ),
    ]);
    let out = tools[0].call(&args).unwrap();
    assert_eq!(
        serde_json::to_value(&out).unwrap(),
        serde_json::json!({"kind": "labels", "labels": [{"label": "cat", "score": 0.75}]})
    );
    let sent = ep.requests.lock().unwrap()[0].clone();
    assert_eq!(
        sent,
        serde_json::json!({"task": "object-detection", "args": {"image": "/x/cat.png", "labels": ["cat", "dog"]}})
    );
    let e = tools[0].call(&args).unwrap_err().to_string();
    assert!(e.contains("remote-detector") && e.contains("503"), "{e}");
    let started = Instant::now();
    let e = tools[0].call(&args).unwrap_err().to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(e.contains("remote-detector"), "{e}");
}
