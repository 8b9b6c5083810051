//! A corpus of bad requests: each gets a 4xx whose body names what was wrong, and the
//! server answers the next good request.

mod common;

use common::*;
use serde_json::json;

async fn good_request_still_works(state: &glimpse_serve::SharedState) {
    let r = post(
        state,
        "/v1/embeddings",
        json!({"model": "clip-synth", "input": "a red circle"}),
    )
    .await;
    assert_eq!(r.status, 200, "after a bad request: {}", r.text());
}

fn chat_with(messages: serde_json::Value) -> serde_json::Value {
    json!({"model": "blip-synth-vqa", "messages": messages})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_a_4xx_naming_the_problem() {
    let state = state_with(|c| {
        c.max_body_bytes = 4 << 20;
        c.images.max_image_bytes = 1 << 20;
    });
    let image = data_url("blue-circle");
    let good_chat = chat_body("blip-synth-vqa", "what colour is it?", &image);
    let good_chat_text = serde_json::to_string(&good_chat).unwrap();
    let huge_b64 = "A".repeat(2 << 20);
    let huge_dims = {
        use base64::Engine;
        let bytes =
            std::fs::read(repo("tools/fixtures/bad/images/png_huge_dimensions.png")).unwrap();
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    };
    let many_messages: Vec<_> = (0..10_000)
        .map(|_| json!({"role": "user", "content": "hello"}))
        .collect();
    let mut unknown_field = good_chat.clone();
    unknown_field["frequency_penalty_typo"] = json!(1);
    let mut n_two = good_chat.clone();
    n_two["n"] = json!(2);
    let mut hot = good_chat.clone();
    hot["temperature"] = json!(7.5);
    let mut wrong_type = good_chat.clone();
    wrong_type["max_tokens"] = json!("lots");

    // (name, route, body, expected status, a word the message must contain)
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("truncated JSON", "/v1/chat/completions", good_chat_text.as_bytes()[..good_chat_text.len() / 2].to_vec(), 400, "JSON"),
        ("not JSON", "/v1/embeddings", b"input=hello".to_vec(), 400, "JSON"),
        ("non-UTF-8 body", "/v1/embeddings", b"{\"input\": \"\xff\xfe\"}".to_vec(), 400, "JSON"),
        ("wrong type", "/v1/chat/completions", wrong_type.to_string().into_bytes(), 422, "max_tokens"),
        ("messages not a list", "/v1/chat/completions", json!({"model": "blip-synth-vqa", "messages": "hi"}).to_string().into_bytes(), 422, "messages"),
        ("unknown field", "/v1/chat/completions", unknown_field.to_string().into_bytes(), 422, "frequency_penalty_typo"),
        ("unknown model", "/v1/chat/completions", chat_body("gpt-4o", "hi", &image).to_string().into_bytes(), 404, "gpt-4o"),
        ("model without the capability", "/v1/embeddings", json!({"model": "blip-synth-vqa", "input": "x"}).to_string().into_bytes(), 422, "cannot embed"),
        ("non-image data URL", "/v1/chat/completions", chat_body("blip-synth-vqa", "hi", "data:text/plain;base64,aGVsbG8=").to_string().into_bytes(), 422, "not an image"),
        ("bytes that are no image", "/v1/caption", json!({"image": "data:image/png;base64,aGVsbG8="}).to_string().into_bytes(), 422, "image"),
        ("image of huge dimensions", "/v1/caption", json!({"image": huge_dims}).to_string().into_bytes(), 422, "image"),
        ("huge base64 image", "/v1/caption", json!({"image": format!("data:image/png;base64,{}", &huge_b64[..(1 << 20) * 3 / 2])}).to_string().into_bytes(), 422, "larger"),
        ("body over the limit", "/v1/caption", json!({"image": format!("data:image/png;base64,{}", "A".repeat(5 << 20))}).to_string().into_bytes(), 413, "larger"),
        ("http URL without --allow-fetch", "/v1/caption", json!({"image": "http://127.0.0.1/x.png"}).to_string().into_bytes(), 422, "--allow-fetch"),
        ("local path without --allow-files", "/v1/caption", json!({"image": "/etc/passwd"}).to_string().into_bytes(), 422, "--allow-files"),
        ("10,000 messages", "/v1/chat/completions", chat_with(json!(many_messages)).to_string().into_bytes(), 422, "at most"),
        ("no messages", "/v1/chat/completions", chat_with(json!([])).to_string().into_bytes(), 422, "messages"),
        ("no image", "/v1/chat/completions", chat_with(json!([{"role": "user", "content": "what is it?"}])).to_string().into_bytes(), 422, "image"),
        ("two images", "/v1/chat/completions", chat_with(json!([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": image}}, {"type": "image_url", "image_url": {"url": image}},
            {"type": "text", "text": "which?"}]}])).to_string().into_bytes(), 422, "2 images"),
        ("unknown role", "/v1/chat/completions", chat_with(json!([{"role": "robot", "content": "hi"}])).to_string().into_bytes(), 422, "role"),
        ("unknown content part", "/v1/chat/completions", chat_with(json!([{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}])).to_string().into_bytes(), 422, "messages"),
        ("last message not the user's", "/v1/chat/completions", chat_with(json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "hi"}]}, {"role": "assistant", "content": "hello"}])).to_string().into_bytes(), 422, "last message"),
        ("empty question", "/v1/chat/completions", chat_body("blip-synth-vqa", "  ", &image).to_string().into_bytes(), 422, "no text"),
        ("n = 2", "/v1/chat/completions", n_two.to_string().into_bytes(), 422, "n"),
        ("temperature out of range", "/v1/chat/completions", hot.to_string().into_bytes(), 422, "temperature"),
        ("max_tokens 0", "/v1/caption", json!({"image": image, "max_tokens": 0}).to_string().into_bytes(), 422, "max_tokens"),
        ("max_tokens over the limit", "/v1/caption", json!({"image": image, "max_tokens": 100000}).to_string().into_bytes(), 422, "max_tokens"),
        ("empty embedding text", "/v1/embeddings", json!({"input": ["ok", " "]}).to_string().into_bytes(), 422, "input[1]"),
        ("no embedding inputs", "/v1/embeddings", json!({"input": []}).to_string().into_bytes(), 422, "input"),
        ("token-id inputs", "/v1/embeddings", json!({"input": [[1, 2, 3]]}).to_string().into_bytes(), 422, "input"),
        ("bad encoding format", "/v1/embeddings", json!({"input": "x", "encoding_format": "int8"}).to_string().into_bytes(), 422, "encoding_format"),
        ("wrong dimensions", "/v1/embeddings", json!({"input": "x", "dimensions": 7}).to_string().into_bytes(), 422, "dimensions"),
        ("classify without labels", "/v1/classify", json!({"image": image, "labels": []}).to_string().into_bytes(), 422, "labels"),
        ("template without {}", "/v1/classify", json!({"image": image, "labels": ["a"], "template": "a photo"}).to_string().into_bytes(), 422, "template"),
        ("match with an empty text", "/v1/match", json!({"image": image, "texts": [""]}).to_string().into_bytes(), 422, "texts[0]"),
        ("search without an index", "/v1/search", json!({"text": "a cat"}).to_string().into_bytes(), 404, "--index"),
    ];
    for (name, route, body, status, word) in cases {
        let r = post_raw(&state, route, body).await;
        assert_eq!(r.status.as_u16(), status, "{name}: {}", r.text());
        let msg = r.message();
        assert!(msg.contains(word), "{name}: message {msg:?} lacks {word:?}");
        good_request_still_works(&state).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_content_type_routes_and_methods_are_4xx_with_a_body() {
    let state = shared();
    let req = axum::http::Request::post("/v1/embeddings")
        .header("content-type", "text/plain")
        .body(axum::body::Body::from("{\"input\": \"x\"}"))
        .unwrap();
    let r = send(&state, req).await;
    assert_eq!(r.status, 415);
    assert!(r.message().contains("application/json"));
    let r = get(&state, "/v1/nothing").await;
    assert_eq!(r.status, 404);
    assert!(r.message().contains("/v1/nothing"));
    let r = get(&state, "/v1/embeddings").await;
    assert_eq!(r.status, 405);
    assert!(r.message().contains("GET"));
    let r = get(&state, "/v1/models/clip-synth").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "clip-synth");
    let r = get(&state, "/v1/models/nope").await;
    assert_eq!(r.status, 404);
    good_request_still_works(&state).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_the_api_routes_only() {
    let state = state_with(|c| c.api_key = Some("sesame".into()));
    let r = post(&state, "/v1/embeddings", json!({"input": "x"})).await;
    assert_eq!(r.status, 401);
    assert!(r.message().contains("API key"));
    let req = axum::http::Request::post("/v1/embeddings")
        .header("content-type", "application/json")
        .header("authorization", "Bearer wrong")
        .body(axum::body::Body::from("{\"input\": \"x\"}"))
        .unwrap();
    assert_eq!(send(&state, req).await.status, 401);
    let req = axum::http::Request::post("/v1/embeddings")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sesame")
        .body(axum::body::Body::from("{\"input\": \"x\"}"))
        .unwrap();
    assert_eq!(send(&state, req).await.status, 200);
    assert_eq!(get(&state, "/health").await.status, 200);
    assert_eq!(get(&state, "/metrics").await.status, 200);
}
