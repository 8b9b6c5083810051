//! Operations: `/health`, Prometheus `/metrics`, the OpenAPI document (`/openapi.json`,
//! rendered at `/docs`), the web page at `/`, and the report pages of the training
//! runs (`/runs`, drawn from their logs at each request, so a running training shows
//! its progress) and evaluation reports (`/reports`) the server was pointed at.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::{ApiError, ApiResult};
use crate::SharedState;

const PAGE: &str = include_str!("../../assets/index.html");
const DOCS: &str = include_str!("../../assets/docs.html");

/// The web page, compiled in; `GLIMPSE_PAGE` names a file to serve instead (read at
/// each request), for working on the page without rebuilding.
pub async fn page() -> Html<String> {
    if let Some(path) = std::env::var_os("GLIMPSE_PAGE") {
        if let Ok(html) = tokio::fs::read_to_string(&path).await {
            return Html(html);
        }
        tracing::warn!(
            "GLIMPSE_PAGE={}: unreadable; serving the built-in page",
            path.to_string_lossy()
        );
    }
    Html(PAGE.to_string())
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    models: Vec<String>,
    index: Option<String>,
}

/// 503 while the models load, 200 after.
pub async fn health(State(state): State<SharedState>) -> Response {
    match state.models() {
        Ok(models) => Json(Health {
            status: "ok",
            models: models.ids(),
            index: state.searcher().ok().map(|s| s.name.clone()),
        })
        .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "loading",
                models: Vec::new(),
                index: None,
            }),
        )
            .into_response(),
    }
}

pub async fn metrics(State(state): State<SharedState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::not_found("metrics are off: another recorder owns this process")
            .into_response(),
    }
}

pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::document())
}

pub async fn docs() -> Html<&'static str> {
    Html(DOCS)
}

fn listing(title: &str, items: &[(String, String)], note: &str) -> String {
    let esc = glimpse_report::html::escape;
    let mut rows = String::new();
    for (href, label) in items {
        rows.push_str(&format!(
            "<li><a href=\"{}\">{}</a></li>\n",
            esc(href),
            esc(label)
        ));
    }
    if items.is_empty() {
        rows.push_str(&format!("<li>{}</li>", esc(note)));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:2rem auto}}</style>\
         </head><body><h1>{t}</h1><ul>{rows}</ul><p><a href=\"/\">Glimpse</a></p></body></html>",
        t = esc(title)
    )
}

pub async fn runs(State(state): State<SharedState>) -> Html<String> {
    let mut items: Vec<(String, String)> = state
        .config
        .runs
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("/runs/{i}"), d.display().to_string()))
        .collect();
    if items.len() > 1 {
        items.push(("/runs/all".into(), "all runs overlaid".into()));
    }
    Html(listing(
        "Training runs",
        &items,
        "no runs: start the server with --runs DIR (a `glimpse train --out` directory)",
    ))
}

/// One run's page (or `all` of them overlaid), drawn from its log now.
pub async fn run_page(
    State(state): State<SharedState>,
    Path(n): Path<String>,
) -> ApiResult<Html<String>> {
    let dirs = if n == "all" {
        state.config.runs.clone()
    } else {
        let i: usize = n
            .parse()
            .map_err(|_| ApiError::not_found(format!("/runs/{n}: not a run number")))?;
        vec![state.config.runs.get(i).cloned().ok_or_else(|| {
            ApiError::not_found(format!(
                "/runs/{i}: the server has {} runs",
                state.config.runs.len()
            ))
        })?]
    };
    if dirs.is_empty() {
        return Err(ApiError::not_found(
            "no runs: start the server with --runs DIR",
        ));
    }
    let html = tokio::task::spawn_blocking(move || glimpse_report::run_report(&dirs))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("drawing the report: {e}")))?
        .0;
    Ok(Html(html))
}

pub async fn reports(State(state): State<SharedState>) -> Html<String> {
    let items: Vec<(String, String)> = state
        .config
        .reports
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("/reports/{i}"), d.display().to_string()))
        .collect();
    Html(listing(
        "Evaluation reports",
        &items,
        "no reports: start the server with --reports DIR (a `glimpse eval --report` directory)",
    ))
}

pub async fn report_page(
    State(state): State<SharedState>,
    Path(n): Path<usize>,
) -> ApiResult<Html<String>> {
    let dir = state.config.reports.get(n).ok_or_else(|| {
        ApiError::not_found(format!(
            "/reports/{n}: the server has {} reports",
            state.config.reports.len()
        ))
    })?;
    let path = dir.join("index.html");
    let html = tokio::fs::read_to_string(&path)
        .await
        .map_err(|e| ApiError::not_found(format!("{}: {e}", path.display())))?;
    Ok(Html(html))
}
