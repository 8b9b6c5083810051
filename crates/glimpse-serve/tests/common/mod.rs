//! Shared by the server's tests: the bundled models loaded once per test binary,
//! requests through the router (no socket), and the images of `examples/`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use glimpse_serve::{AppState, ModelSpec, ServeConfig, SharedState};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub fn repo(rel: &str) -> String {
    format!("{}/../../{rel}", env!("CARGO_MANIFEST_DIR"))
}

pub fn bundled_models() -> Vec<ModelSpec> {
    [
        "models/clip-synth",
        "models/blip-synth/caption",
        "models/blip-synth/retrieval",
        "models/blip-synth/vqa",
    ]
    .iter()
    .map(|m| ModelSpec {
        source: repo(m),
        id: None,
    })
    .collect()
}

pub fn config() -> ServeConfig {
    ServeConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), bundled_models())
}

/// A loaded server state with `edit` applied to the default config.
pub fn state_with(edit: impl FnOnce(&mut ServeConfig)) -> SharedState {
    let mut cfg = config();
    edit(&mut cfg);
    let state = AppState::new(cfg);
    state.load().expect("loading the bundled models");
    state
}

/// The default state, loaded once for the whole test binary.
pub fn shared() -> SharedState {
    static STATE: OnceLock<SharedState> = OnceLock::new();
    STATE.get_or_init(|| state_with(|_| {})).clone()
}

pub fn image_path(name: &str) -> String {
    repo(&format!("examples/synth/{name}.png"))
}

pub fn data_url(name: &str) -> String {
    let bytes = std::fs::read(image_path(name)).unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// The message of an error body.
    pub fn message(&self) -> String {
        self.json()["error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message in {}", self.text()))
            .to_string()
    }
}

pub async fn send(state: &SharedState, req: Request<Body>) -> Reply {
    let resp = glimpse_serve::router(state.clone())
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn post_raw(state: &SharedState, uri: &str, body: impl Into<Body>) -> Reply {
    let req = Request::post(uri)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    send(state, req).await
}

pub async fn post(state: &SharedState, uri: &str, body: Value) -> Reply {
    post_raw(state, uri, serde_json::to_vec(&body).unwrap()).await
}

pub async fn get(state: &SharedState, uri: &str) -> Reply {
    send(state, Request::get(uri).body(Body::empty()).unwrap()).await
}

pub fn chat_body(model: &str, text: &str, image: &str) -> Value {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image}}
        ]}]
    })
}

/// The `data:` payloads of a server-sent event stream.
pub fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}
