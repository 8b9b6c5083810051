//! The routes. Handlers validate the request, hand the work to a model's worker and
//! shape its result; nothing else.

pub mod native;
pub mod openai;
pub mod ops;

use axum::extract::rejection::JsonRejection;
use axum::routing::{get, post};
use axum::{Json, Router};
use glimpse_generate::GenerationConfig;

use crate::error::{ApiError, ApiResult};
use crate::SharedState;

/// Routes behind the API key.
pub fn api_routes() -> Router<SharedState> {
    Router::new()
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{id}", get(openai::get_model))
        .route("/v1/caption", post(native::caption))
        .route("/v1/ask", post(native::ask))
        .route("/v1/match", post(native::match_texts))
        .route("/v1/classify", post(native::classify))
        .route("/v1/search", post(native::search))
        .route("/knn-service", post(native::knn_service))
        .route("/indices-list", get(native::indices_list))
}

/// Routes anyone may read: health, metrics, the API document, the web page and the
/// report pages.
pub fn open_routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(ops::page))
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi_json))
        .route("/docs", get(ops::docs))
        .route("/runs", get(ops::runs))
        .route("/runs/{n}", get(ops::run_page))
        .route("/reports", get(ops::reports))
        .route("/reports/{n}", get(ops::report_page))
}

/// 404 for a path no route has, in the API's error body.
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}; see /docs", uri.path()))
}

/// 405 for a route called with the wrong method.
pub async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!("{} does not take {method}; see /docs", uri.path()),
    )
}

/// The body as `T`, or the JSON error as a 4xx naming what was wrong.
pub fn body<T>(payload: Result<Json<T>, JsonRejection>) -> ApiResult<T> {
    payload.map(|Json(t)| t).map_err(ApiError::from)
}

/// Decoding settings shared by every generating route.
#[derive(Debug, Default, Clone, serde::Deserialize, utoipa::ToSchema)]
pub struct Sampling {
    /// Most new tokens (default 30, as `glimpse caption`/`ask`).
    pub max_tokens: Option<usize>,
    /// 0 or absent: greedy search; above 0: sampling at this temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling; implies sampling.
    pub top_p: Option<f64>,
    /// Seed of the sampling draws (default 0).
    pub seed: Option<u64>,
}

impl Sampling {
    /// A generation config as the CLI's decoding flags give it, with the server's
    /// token limit.
    pub fn config(&self, max_limit: usize) -> ApiResult<GenerationConfig> {
        let max = self.max_tokens.unwrap_or(30);
        if max == 0 || max > max_limit {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("{max} is outside 1..={max_limit}"),
            ));
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(ApiError::invalid(
                    "temperature",
                    format!("{t} is outside [0, 2]"),
                ));
            }
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(ApiError::invalid("top_p", format!("{p} is outside (0, 1]")));
            }
        }
        let temperature = self.temperature.filter(|t| *t > 0.0);
        let sample = temperature.is_some() || self.top_p.is_some_and(|p| p < 1.0);
        let cfg = GenerationConfig {
            max_new_tokens: max,
            do_sample: sample,
            temperature: temperature.unwrap_or(1.0) as f32,
            top_p: self.top_p.unwrap_or(1.0) as f32,
            seed: self.seed.unwrap_or(0),
            top_k: 0,
            ..GenerationConfig::default()
        };
        cfg.validate()
            .map_err(|e| ApiError::invalid("temperature", e))?;
        Ok(cfg)
    }
}
