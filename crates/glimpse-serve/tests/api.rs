//! The OpenAI-compatible and native routes on the bundled models: answers equal the
//! pipeline's (what `glimpse ask`/`caption`/`embed` print), streaming equals the
//! whole answer, concurrent requests batch and still get their own answers.

mod common;

use common::*;
use glimpse_models::pipeline::Pipeline;
use serde_json::json;

fn pipeline(rel: &str) -> Pipeline {
    Pipeline::load(&repo(rel), &candle_core::Device::Cpu).unwrap()
}

fn gen(p: &Pipeline) -> glimpse_generate::GenerationConfig {
    p.generation_config(glimpse_generate::GenerationConfig {
        max_new_tokens: 30,
        top_k: 0,
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_until_the_models_are_loaded() {
    let state = glimpse_serve::AppState::new(config());
    let r = get(&state, "/health").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "loading");
    let r = post(&state, "/v1/embeddings", json!({"input": "a red circle"})).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.headers.contains_key("retry-after"));
    let loader = state.clone();
    tokio::task::spawn_blocking(move || loader.load())
        .await
        .unwrap()
        .unwrap();
    let r = get(&state, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed_with_their_family() {
    let r = get(&shared(), "/v1/models").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "clip-synth",
            "blip-synth-caption",
            "blip-synth-retrieval",
            "blip-synth-vqa"
        ]
    );
    for m in v["data"].as_array().unwrap() {
        assert_eq!(m["object"], "model");
        let id = m["id"].as_str().unwrap();
        assert!(id.contains(m["family"].as_str().unwrap()), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_answers_equal_the_pipeline_and_stream_the_same_text() {
    let state = shared();
    let vqa = pipeline("models/blip-synth/vqa");
    for (name, question) in [
        ("blue-circle", "what colour is the circle?"),
        ("pink-triangle", "what shape is it?"),
    ] {
        let image = glimpse_data::load_image(std::path::Path::new(&image_path(name))).unwrap();
        let expected = vqa.ask(&image, question, &gen(&vqa)).unwrap();
        let r = post(
            &state,
            "/v1/chat/completions",
            chat_body("blip-synth-vqa", question, &data_url(name)),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            expected.text.as_str()
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["completion_tokens"], expected.token_ids.len());

        let mut body = chat_body("blip-synth-vqa", question, &data_url(name));
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let r = post(&state, "/v1/chat/completions", body).await;
        assert_eq!(r.status, 200);
        assert!(r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let events = sse_data(&r.text());
        assert_eq!(events.last().unwrap(), "[DONE]");
        let mut text = String::new();
        let mut finish = None;
        let mut usage = None;
        for e in &events[..events.len() - 1] {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            if let Some(c) = v["choices"].get(0) {
                text.push_str(c["delta"]["content"].as_str().unwrap_or(""));
                if !c["finish_reason"].is_null() {
                    finish = Some(c["finish_reason"].clone());
                }
            }
            if !v["usage"].is_null() {
                usage = Some(v["usage"].clone());
            }
        }
        assert_eq!(text, expected.text);
        assert_eq!(finish, Some(json!("stop")));
        assert_eq!(
            usage.unwrap()["completion_tokens"],
            expected.token_ids.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caption_model_chats_by_captioning_from_the_user_text() {
    let state = shared();
    let cap = pipeline("models/blip-synth/caption");
    let image = glimpse_data::load_image(std::path::Path::new(&image_path("cyan-heart"))).unwrap();
    let expected = cap
        .caption(
            std::slice::from_ref(&image),
            Some("a picture of"),
            &gen(&cap),
        )
        .unwrap();
    let r = post(
        &state,
        "/v1/chat/completions",
        chat_body(
            "blip-synth-caption",
            "a picture of",
            &data_url("cyan-heart"),
        ),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        expected[0].text.as_str()
    );
    let r = post(
        &state,
        "/v1/caption",
        json!({"image": data_url("cyan-heart"), "prompt": "a picture of"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["text"], expected[0].text.as_str());
    assert_eq!(r.json()["token_ids"], json!(expected[0].token_ids));
    // A stop string cuts the text and finishes with "stop".
    let mut body = chat_body(
        "blip-synth-caption",
        "a picture of",
        &data_url("cyan-heart"),
    );
    body["stop"] = json!(["picture"]);
    let r = post(&state, "/v1/chat/completions", body).await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], "a ");
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
    // max_tokens reached: "length".
    let mut body = chat_body(
        "blip-synth-caption",
        "a picture of",
        &data_url("cyan-heart"),
    );
    body["max_tokens"] = json!(1);
    let r = post(&state, "/v1/chat/completions", body).await;
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
    assert_eq!(r.json()["usage"]["completion_tokens"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_equal_the_pipeline_in_float_and_base64() {
    let state = shared();
    let clip = pipeline("models/clip-synth");
    let texts = ["a blue circle", "a pink triangle on a grey background"];
    let image = glimpse_data::load_image(std::path::Path::new(&image_path("blue-circle"))).unwrap();
    let text_rows = clip.text_embeds(&texts).unwrap().to_vec2::<f32>().unwrap();
    let image_row = clip
        .image_embeds(std::slice::from_ref(&image))
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .remove(0);
    let input = json!([texts[0], data_url("blue-circle"), texts[1]]);
    let r = post(
        &state,
        "/v1/embeddings",
        json!({"model": "clip-synth", "input": input}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let rows: Vec<Vec<f32>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| serde_json::from_value(d["embedding"].clone()).unwrap())
        .collect();
    let close = |a: &[f32], b: &[f32]| {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-4)
    };
    assert!(close(&rows[0], &text_rows[0]));
    assert!(close(&rows[1], &image_row));
    assert!(close(&rows[2], &text_rows[1]));
    assert_eq!(v["data"][1]["index"], 1);
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);

    let r = post(
        &state,
        "/v1/embeddings",
        json!({"model": "clip-synth", "input": texts[0], "encoding_format": "base64"}),
    )
    .await;
    let b64 = r.json()["data"][0]["embedding"]
        .as_str()
        .unwrap()
        .to_string();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let floats: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(close(&floats, &text_rows[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_captions_share_batches_and_keep_their_own_answers() {
    let state = state_with(|c| c.batch_window = std::time::Duration::from_millis(50));
    let names = [
        "blue-circle",
        "cyan-heart",
        "pink-triangle",
        "purple-diamond",
    ];
    let expected = alone_captions(&names);
    caption_burst(&state, &names, &expected, 16, 0, "").await;
    // The batches were larger than one request.
    let metrics = get(&state, "/metrics").await.text();
    let sum = metric(
        &metrics,
        "glimpse_batch_size_sum{model=\"blip-synth-caption\",kind=\"caption\"}",
    );
    let count = metric(
        &metrics,
        "glimpse_batch_size_count{model=\"blip-synth-caption\",kind=\"caption\"}",
    );
    assert!(
        sum >= 16.0 && count < sum,
        "batches: {count} for {sum} requests\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captions_arriving_while_a_batch_decodes_join_it_and_keep_their_own_answers() {
    // No collection window: the first request starts decoding at once, and the
    // requests behind it can only share its batch by joining it.
    let state = state_with(|c| c.batch_window = std::time::Duration::ZERO);
    let names = [
        "blue-circle",
        "pink-diamond-and-cyan-star",
        "cyan-heart",
        "pink-triangle",
        "purple-diamond",
    ];
    let expected = alone_captions(&names);
    let joined_name = "glimpse_batch_joined_total{model=\"blip-synth-caption\"}";
    // Arrivals are timed by the machine's load, so a burst may happen to miss every
    // running batch; a few bursts make a join all but certain, and every answer is
    // checked in every burst.
    for burst in 0..6 {
        caption_burst(
            &state,
            &names,
            &expected,
            20,
            700,
            &format!("burst {burst}, "),
        )
        .await;
        let metrics = get(&state, "/metrics").await.text();
        if metric(&metrics, joined_name) > 0.0 {
            return;
        }
    }
    panic!("no caption joined a running batch in six bursts of 20");
}

/// The bundled BLIP's caption of each named example image, one request at a time.
fn alone_captions(names: &[&str]) -> Vec<String> {
    let cap = pipeline("models/blip-synth/caption");
    names
        .iter()
        .map(|n| {
            let image = glimpse_data::load_image(std::path::Path::new(&image_path(n))).unwrap();
            cap.caption(&[image], None, &gen(&cap))
                .unwrap()
                .remove(0)
                .text
        })
        .collect()
}

/// `n` concurrent `/v1/caption` requests over `names` in turn, request `i` sent after
/// `i * spacing_us` µs; each must answer 200 with its image's `expected` caption.
async fn caption_burst(
    state: &glimpse_serve::SharedState,
    names: &[&'static str],
    expected: &[String],
    n: usize,
    spacing_us: u64,
    label: &str,
) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let state = state.clone();
        let name = names[i % names.len()];
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_micros(spacing_us * i as u64)).await;
            post(&state, "/v1/caption", json!({"image": data_url(name)})).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            r.json()["text"],
            expected[i % names.len()].as_str(),
            "{label}request {i}"
        );
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_routes_match_classify_ask() {
    let state = shared();
    let r = post(&state, "/v1/match", json!({"model": "blip-synth-retrieval", "image": data_url("blue-circle"), "texts": ["a blue circle", "a pink triangle"]})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let itm = v["itm"].as_array().unwrap();
    assert!(itm[0].as_f64().unwrap() > itm[1].as_f64().unwrap(), "{v}");
    let r = post(&state, "/v1/classify", json!({"image": data_url("purple-diamond"), "labels": ["circle", "diamond", "star"], "template": "a {}"})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["labels"][0]["label"], "diamond");
    let r = post(
        &state,
        "/v1/ask",
        json!({"image": data_url("blue-circle"), "question": "what colour is the circle?"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["text"], "blue");
    // No index on this server: search is 404 with a message saying how to get one.
    let r = post(&state, "/v1/search", json!({"text": "a blue circle"})).await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("--index"), "{}", r.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_routes_answer() {
    let state = shared();
    let r = get(&state, "/").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<html"));
    let r = get(&state, "/openapi.json").await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    for path in [
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/caption",
        "/knn-service",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    let r = get(&state, "/docs").await;
    assert!(r.text().contains("/openapi.json"));
    let _ = post(&state, "/v1/embeddings", json!({"input": "a red star"})).await;
    let r = get(&state, "/metrics").await;
    assert_eq!(r.status, 200);
    let m = r.text();
    for name in [
        "glimpse_requests_total",
        "glimpse_request_duration_seconds_bucket",
        "glimpse_batch_size",
        "glimpse_queue_depth",
    ] {
        assert!(m.contains(name), "{name} missing from /metrics");
    }
    // The allocator's counts are there from the start (glibc builds).
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let held = m
            .lines()
            .find_map(|l| l.strip_prefix("glimpse_heap_in_use_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        assert!(
            held.is_some_and(|b| b > 0.0),
            "glimpse_heap_in_use_bytes: {held:?}"
        );
    }
    let r = get(&state, "/runs").await;
    assert!(r.text().contains("--runs"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quantize_q8_serves_8_bit_encoders_under_their_own_ids() {
    let state = state_with(|c| {
        c.models.truncate(2);
        c.quantize = Some(glimpse_nn::quant::Quant::Q8);
    });
    let r = get(&state, "/v1/models").await;
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["clip-synth-q8", "blip-synth-caption-q8"]);
    let clip = pipeline("models/clip-synth");
    let f32_row = clip
        .text_embeds(&["a blue circle"])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap()
        .remove(0);
    let r = post(
        &state,
        "/v1/embeddings",
        json!({"model": "clip-synth-q8", "input": "a blue circle"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let q8_row: Vec<f32> =
        serde_json::from_value(r.json()["data"][0]["embedding"].clone()).unwrap();
    let dot: f32 = f32_row.iter().zip(&q8_row).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cosine = dot / (norm(&f32_row) * norm(&q8_row));
    assert!(cosine > 0.99 && q8_row != f32_row, "cosine {cosine}");
    let r = post(
        &state,
        "/v1/caption",
        json!({"model": "blip-synth-caption-q8", "image": data_url("blue-circle")}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_across_streamed_pieces_cuts_the_stream_where_it_cuts_the_answer() {
    let state = shared();
    for stop in ["e c", "circle", "blue circle on", "zzz"] {
        let mut body = chat_body("blip-synth-caption", "", &data_url("blue-circle"));
        body["messages"][0]["content"] =
            json!([{"type": "image_url", "image_url": {"url": data_url("blue-circle")}}]);
        body["stop"] = json!([stop]);
        let whole = post(&state, "/v1/chat/completions", body.clone())
            .await
            .json();
        body["stream"] = json!(true);
        let r = post(&state, "/v1/chat/completions", body).await;
        let mut text = String::new();
        let mut finish = None;
        for e in sse_data(&r.text()) {
            if e == "[DONE]" {
                break;
            }
            let v: serde_json::Value = serde_json::from_str(&e).unwrap();
            text.push_str(v["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
            if !v["choices"][0]["finish_reason"].is_null() {
                finish = Some(v["choices"][0]["finish_reason"].clone());
            }
        }
        assert_eq!(
            text,
            whole["choices"][0]["message"]["content"].as_str().unwrap(),
            "stop {stop:?}"
        );
        assert_eq!(
            finish.unwrap(),
            whole["choices"][0]["finish_reason"],
            "stop {stop:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llava_replays_earlier_turns_as_its_own_conversation_would_hold_them() {
    let state = state_with(|c| {
        c.models = vec![glimpse_serve::ModelSpec {
            source: repo("tools/fixtures/llava"),
            id: Some("llava-tiny".into()),
        }];
    });
    let path = repo("examples/images/cat.png");
    let image = glimpse_data::load_image(std::path::Path::new(&path)).unwrap();
    let llava = Pipeline::load(&repo("tools/fixtures/llava"), &candle_core::Device::Cpu).unwrap();
    let g = llava.generation_config(glimpse_generate::GenerationConfig {
        max_new_tokens: 8,
        top_k: 0,
        ..Default::default()
    });
    let pixels = llava.pixel_values(std::slice::from_ref(&image)).unwrap();
    let mut chat = llava.start_chat(&pixels, Some("Be brief.")).unwrap();
    let first = chat.send("What is in the picture?", &g).unwrap();
    let second = chat.send("What colour is it?", &g).unwrap();
    assert!(!second.token_ids.is_empty(), "{second:?}");

    use base64::Engine;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(&path).unwrap())
    );
    let body = json!({
        "model": "llava-tiny",
        "max_tokens": 8,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is in the picture?"}]},
            {"role": "assistant", "content": first.answer},
            {"role": "user", "content": "What colour is it?"}
        ]
    });
    let r = post(&state, "/v1/chat/completions", body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        second.answer.as_str()
    );
    assert_eq!(r.json()["usage"]["prompt_tokens"], second.input_ids.len());

    // Turns that do not alternate are refused, naming the message.
    let mut bad = body;
    bad["messages"][2] = json!({"role": "user", "content": "again?"});
    let r = post(&state, "/v1/chat/completions", bad).await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.message().contains("messages[1]"), "{}", r.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blip2_answers_stream_token_by_token_and_equal_the_whole_answer() {
    let state = state_with(|c| {
        c.models = vec![glimpse_serve::ModelSpec {
            source: repo("tools/fixtures/blip2_opt"),
            id: Some("blip2-tiny".into()),
        }];
    });
    let blip2 = pipeline("tools/fixtures/blip2_opt");
    let image = glimpse_data::load_image(std::path::Path::new(&image_path("blue-circle"))).unwrap();
    let g = blip2.generation_config(glimpse_generate::GenerationConfig {
        max_new_tokens: 12,
        top_k: 0,
        ..Default::default()
    });
    let expected = blip2.ask(&image, "what is it?", &g).unwrap();
    let mut body = chat_body("blip2-tiny", "what is it?", &data_url("blue-circle"));
    body["max_tokens"] = json!(12);
    let whole = post(&state, "/v1/chat/completions", body.clone()).await;
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(
        whole.json()["choices"][0]["message"]["content"],
        expected.text.as_str()
    );
    body["stream"] = json!(true);
    let r = post(&state, "/v1/chat/completions", body).await;
    let pieces: Vec<String> = sse_data(&r.text())
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|p| !p.is_empty())
        .collect();
    assert_eq!(pieces.concat(), expected.text);
    assert!(
        expected.token_ids.len() > 3 && pieces.len() > 1,
        "{} tokens in {} pieces: {pieces:?}",
        expected.token_ids.len(),
        pieces.len()
    );
}
