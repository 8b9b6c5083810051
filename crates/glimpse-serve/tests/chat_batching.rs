//! Chat requests share a decoding batch and join it while it runs (the tiny LLaVA and
//! BLIP-2 fixtures): every answer, streamed or not, greedy or sampled with its own
//! seed, equals the one the request gets alone.

mod common;

use common::*;
use glimpse_generate::GenerationConfig;
use glimpse_models::pipeline::Pipeline;
use serde_json::{json, Value};

const NAMES: [&str; 5] = [
    "blue-circle",
    "pink-diamond-and-cyan-star",
    "cyan-heart",
    "purple-diamond",
    "pink-triangle",
];

const QUESTIONS: [&str; 4] = [
    "What is in the picture?",
    "Colour?",
    "Which shapes do you see, and where are they?",
    "Describe it.",
];

/// Request `i`: an image, a question, a limit of its own and, with `sample`, its own
/// seed (requests whose settings differ otherwise do not share a batch).
fn request(i: usize, sample: bool) -> (&'static str, &'static str, Option<(f64, u64)>, usize) {
    let sampled = sample.then_some((0.8, 7 + i as u64));
    let max_tokens = if i % 4 == 1 { 5 } else { 10 };
    (
        NAMES[i % NAMES.len()],
        QUESTIONS[i % QUESTIONS.len()],
        sampled,
        max_tokens,
    )
}

fn body(model: &str, i: usize, sample: bool, stream: bool) -> Value {
    let (name, question, sampled, max_tokens) = request(i, sample);
    let mut b = chat_body(model, question, &data_url(name));
    b["max_tokens"] = json!(max_tokens);
    b["stream"] = json!(stream);
    if let Some((t, seed)) = sampled {
        b["temperature"] = json!(t);
        b["seed"] = json!(seed);
    }
    b
}

/// What request `i` gets alone: a LLaVA chat turn or a BLIP-2 answer.
fn alone(p: &Pipeline, i: usize, sample: bool) -> String {
    let (name, question, sampled, max_tokens) = request(i, sample);
    let gen = p.generation_config(GenerationConfig {
        max_new_tokens: max_tokens,
        do_sample: sampled.is_some(),
        temperature: sampled.map_or(1.0, |(t, _)| t as f32),
        seed: sampled.map_or(0, |(_, s)| s),
        top_k: 0,
        ..GenerationConfig::default()
    });
    let image = glimpse_data::load_image(std::path::Path::new(&image_path(name))).unwrap();
    if p.as_chat().is_some() {
        let pixels = p.pixel_values(std::slice::from_ref(&image)).unwrap();
        let mut chat = p.start_chat(&pixels, None).unwrap();
        chat.send(question, &gen).unwrap().answer
    } else {
        p.ask(&image, question, &gen).unwrap().text
    }
}

/// The content of a reply, streamed (pieces joined) or whole.
fn content(r: &Reply, stream: bool) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    if !stream {
        return r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_string();
    }
    sse_data(&r.text())
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A server of the model `source` as `id` with no collection window, so requests
/// behind the first share its batch only by joining it.
fn serving(source: &str, id: &str) -> glimpse_serve::SharedState {
    state_with(|c| {
        c.batch_window = std::time::Duration::ZERO;
        c.models = vec![glimpse_serve::ModelSpec {
            source: repo(source),
            id: Some(id.into()),
        }];
    })
}

/// Bursts of the staggered requests `bodies` (streamed where they say so) until one
/// joins a running batch; each answer must equal `expected`. Arrivals are timed by
/// the machine's load, so a few bursts at different spacings make a join all but
/// certain (the tiny models answer in about a millisecond).
async fn until_joined(
    state: &glimpse_serve::SharedState,
    id: &str,
    bodies: &[Value],
    expected: &[String],
    spacings_us: &[u64],
) {
    let joined = format!("glimpse_batch_joined_total{{model=\"{id}\"}}");
    for (burst, &spacing_us) in spacings_us.iter().enumerate() {
        let mut tasks = Vec::new();
        for (i, b) in bodies.iter().enumerate() {
            let (state, b) = (state.clone(), b.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_micros(spacing_us * i as u64)).await;
                post(&state, "/v1/chat/completions", b).await
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            let r = t.await.unwrap();
            let stream = bodies[i]["stream"].as_bool().unwrap_or(false);
            assert_eq!(
                content(&r, stream),
                expected[i],
                "burst {burst}, request {i}: {}",
                bodies[i]
            );
        }
        let metrics = get(state, "/metrics").await.text();
        if metric(&metrics, &joined) > 0.0 {
            return;
        }
    }
    panic!(
        "no request joined a running batch in {} bursts of {}",
        spacings_us.len(),
        bodies.len()
    );
}

/// Bursts of `n` staggered chat requests (every other one streamed); each answer must
/// equal the request's answer alone.
async fn bursts_join(source: &str, id: &str, n: usize, sample: bool) {
    let state = serving(source, id);
    let p = Pipeline::load(&repo(source), &candle_core::Device::Cpu).unwrap();
    let expected: Vec<String> = (0..n).map(|i| alone(&p, i, sample)).collect();
    assert!(
        expected.iter().any(|e| e.split_whitespace().count() > 2),
        "answers long enough to tell apart: {expected:?}"
    );
    let bodies: Vec<Value> = (0..n).map(|i| body(id, i, sample, i % 2 == 1)).collect();
    until_joined(&state, id, &bodies, &expected, &[0, 50, 100, 200, 400, 800]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llava_chats_arriving_while_a_batch_decodes_join_it_and_keep_their_own_answers() {
    bursts_join("tools/fixtures/llava", "llava-tiny", 16, false).await;
    // Its own id: the metrics are the process's.
    bursts_join("tools/fixtures/llava", "llava-tiny-sampled", 16, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blip2_answers_arriving_while_a_batch_decodes_join_it_and_keep_their_own_answers() {
    bursts_join("tools/fixtures/blip2_opt", "blip2-tiny", 16, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_joining_concurrent_chats_still_batch_and_keep_their_answers() {
    let state = state_with(|c| {
        c.batch_window = std::time::Duration::from_millis(50);
        c.join_batches = false;
        c.models = vec![glimpse_serve::ModelSpec {
            source: repo("tools/fixtures/llava"),
            id: Some("llava-tiny-no-join".into()),
        }];
    });
    let p = Pipeline::load(&repo("tools/fixtures/llava"), &candle_core::Device::Cpu).unwrap();
    let n = 8;
    // Greedy and sampled requests in one window: two batches. (The model's id is its
    // own: the metrics are the process's, shared with the other tests.)
    let expected: Vec<String> = (0..n).map(|i| alone(&p, i, i % 3 == 2)).collect();
    let mut tasks = Vec::new();
    for i in 0..n {
        let state = state.clone();
        let b = body("llava-tiny-no-join", i, i % 3 == 2, i % 2 == 0);
        tasks.push(tokio::spawn(async move {
            post(&state, "/v1/chat/completions", b).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert_eq!(
            content(&t.await.unwrap(), i % 2 == 0),
            expected[i],
            "request {i}"
        );
    }
    let metrics = get(&state, "/metrics").await.text();
    let sum = metric(
        &metrics,
        "glimpse_batch_size_sum{model=\"llava-tiny-no-join\",kind=\"chat\"}",
    );
    let count = metric(
        &metrics,
        "glimpse_batch_size_count{model=\"llava-tiny-no-join\",kind=\"chat\"}",
    );
    assert!(
        sum >= n as f64 && count < sum,
        "batches: {count} for {sum}\n{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "glimpse_batch_joined_total{model=\"llava-tiny-no-join\"}"
        ),
        0.0
    );
}

/// What request `i` to a text-only model gets alone: its transcript continued by the
/// model with the request's own limit and seed.
fn text_alone(lm: &glimpse_models::causal_lm::CausalLm, i: usize, sample: bool) -> String {
    let (_, question, sampled, max_tokens) = request(i, sample);
    let prompt = glimpse_serve::text_lm::transcript(&[("user".into(), question.into())]);
    let gen = GenerationConfig {
        max_new_tokens: max_tokens,
        do_sample: sampled.is_some(),
        temperature: sampled.map_or(1.0, |(t, _)| t as f32),
        seed: sampled.map_or(0, |(_, s)| s),
        top_k: 0,
        ..GenerationConfig::default()
    };
    let ids = lm.encode_prompt(&prompt).unwrap();
    let out = lm.generate(&ids, &gen).unwrap();
    let kept: Vec<u32> = out
        .into_iter()
        .filter(|t| !lm.eos_token_ids.contains(t))
        .collect();
    lm.tokenizer.decode(&kept, true).unwrap().trim().to_string()
}

/// Text-only language models (the bundled OPT and LLaMA of the synthetic world):
/// requests arriving while a batch decodes join it, and each answer equals the one
/// the request gets alone, greedy or sampled with its own seed and limit.
async fn text_bursts_join(source: &str, id: &str, n: usize, sample: bool) {
    let state = serving(source, id);
    let files = glimpse_models::checkpoint::ModelFiles::resolve(&repo(source)).unwrap();
    let lm = glimpse_models::causal_lm::CausalLm::load(&files, &candle_core::Device::Cpu).unwrap();
    let expected: Vec<String> = (0..n).map(|i| text_alone(&lm, i, sample)).collect();
    let distinct: std::collections::BTreeSet<&String> = expected.iter().collect();
    assert!(
        distinct.len() >= 3 && expected.iter().all(|e| !e.is_empty()),
        "answers to tell apart: {expected:?}"
    );
    let bodies: Vec<Value> = (0..n)
        .map(|i| {
            let (_, question, sampled, max_tokens) = request(i, sample);
            let mut b = json!({
                "model": id,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": max_tokens,
            });
            if let Some((t, seed)) = sampled {
                b["temperature"] = json!(t);
                b["seed"] = json!(seed);
            }
            b
        })
        .collect();
    until_joined(&state, id, &bodies, &expected, &[0, 100, 400, 1600]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_model_requests_join_a_running_batch_and_keep_their_own_answers() {
    text_bursts_join("models/llama-lm-synth", "llama-tiny", 12, false).await;
    text_bursts_join("models/opt-lm-synth", "opt-tiny", 12, true).await;
}
