//! `glimpse serve`: Glimpse's models behind an HTTP server that speaks the OpenAI API
//! (chat completions with images, embeddings, model listing) plus native routes for
//! what that API has no word for (caption, ask, match, classify, search, and
//! clip-retrieval's `/knn-service`).
//!
//! Layout:
//! - [`registry`]: the loaded models and their ids; [`worker`]: one thread per model
//!   that batches waiting requests into shared forward passes behind a bounded queue.
//! - [`routes`]: the handlers, which validate, call a worker and shape the answer.
//! - [`error`]: every failure as OpenAI's error body with a 4xx/5xx status.
//! - [`metrics`], [`openapi`], the web page (`assets/index.html`) and the report
//!   pages of training runs and evaluations.
//!
//! The server binds first and loads models in the background: `/health` answers 503
//! until every model is ready, then 200. SIGTERM (or Ctrl-C) stops accepting
//! connections, lets in-flight requests finish and returns.

pub mod config;
pub mod error;
mod images;
pub mod loadtest;
pub mod metrics;
pub mod openapi;
pub mod registry;
pub mod routes;
pub mod search;
pub mod text_lm;
pub mod worker;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use glimpse_models::pipeline::Pipeline;
use glimpse_nn::quant::Quant;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;

pub use config::{ImagePolicy, ModelSpec, ServeConfig};
pub use error::{ApiError, ServeError};
use registry::{LoadedModel, Models};
use worker::{BatchPolicy, Worker};

/// What every handler shares.
pub struct AppState {
    pub config: ServeConfig,
    models: OnceLock<Arc<Models>>,
    index: OnceLock<Option<Arc<search::Searcher>>>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    next_id: AtomicU64,
}

pub type SharedState = Arc<AppState>;

impl AppState {
    pub fn new(config: ServeConfig) -> SharedState {
        Arc::new(Self {
            config,
            models: OnceLock::new(),
            index: OnceLock::new(),
            metrics: metrics::install(),
            next_id: AtomicU64::new(1),
        })
    }

    /// The loaded models; 503 while they load.
    pub fn models(&self) -> Result<&Arc<Models>, ApiError> {
        self.models
            .get()
            .ok_or_else(|| ApiError::unavailable("the server is loading its models; retry shortly"))
    }

    pub fn ready(&self) -> bool {
        self.models.get().is_some()
    }

    pub fn searcher(&self) -> Result<&Arc<search::Searcher>, ApiError> {
        self.models()?;
        match self.index.get() {
            Some(Some(s)) => Ok(s),
            _ => Err(ApiError::not_found(
                "this server has no index; start it with --index DIR (see `glimpse index build`)",
            )),
        }
    }

    /// A fresh id for a response (`chatcmpl-N`).
    pub fn next_id(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Loads every model of the config (and the index), then marks the server ready.
    pub fn load(&self) -> Result<(), ServeError> {
        let cfg = &self.config;
        let policy = BatchPolicy {
            queue_capacity: cfg.queue_capacity,
            max_batch: cfg.max_batch,
            window: cfg.batch_window,
            join: cfg.join_batches,
        };
        let mut models = Models::default();
        for spec in &cfg.models {
            if text_lm::is_text_lm(&spec.source) {
                let m = text_lm::load(spec, cfg, &models)?;
                tracing::info!(id = %m.id, class = m.class, source = %m.source, "model loaded");
                models.text.push(Arc::new(m));
                continue;
            }
            let m = load_model(spec, cfg, policy, &models)?;
            tracing::info!(id = %m.id, class = m.class_name(), source = %m.source, "model loaded");
            models.list.push(Arc::new(m));
        }
        let index = match &cfg.index {
            Some(dir) => {
                let s = search::Searcher::open(dir, &mut models, cfg, policy)?;
                Some(Arc::new(s))
            }
            None => None,
        };
        metrics::models_loaded(models.list.len() + models.text.len());
        let _ = self.index.set(index);
        let _ = self.models.set(Arc::new(models));
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads one model with the server's device and quantisation and starts its worker.
pub(crate) fn load_model(
    spec: &ModelSpec,
    cfg: &ServeConfig,
    policy: BatchPolicy,
    loaded: &Models,
) -> Result<LoadedModel, ServeError> {
    let fail = |source| ServeError::Load {
        model: spec.source.clone(),
        source: Box::new(source),
    };
    let mut pipeline = Pipeline::load(&spec.source, &cfg.device).map_err(fail)?;
    let arch = pipeline.architecture();
    let mut fingerprint = glimpse_models::fingerprint::model_id(&spec.source).map_err(fail)?;
    if let Some(quant) = cfg.quantize {
        let language_model = pipeline.as_chat().is_some()
            || arch == glimpse_models::pipeline::Architecture::Blip2Generation;
        if language_model {
            pipeline.quantize_language_model(quant).map_err(fail)?;
        }
        if quant == Quant::Q8 {
            pipeline.quantize_encoders().map_err(fail)?;
            fingerprint.push_str("+q8");
        } else if !language_model {
            return Err(ServeError::Config(format!(
                "--quantize {quant}: `{}` is a {}; 4-bit weights are for BLIP-2 (OPT) and LLaVA language models",
                spec.source,
                arch.class_name()
            )));
        }
    }
    let family = registry::family(arch);
    let mut id = spec
        .id
        .clone()
        .unwrap_or_else(|| registry::model_id(family, &spec.source));
    if let (Some(quant), None) = (cfg.quantize, &spec.id) {
        id.push_str(&format!("-{quant}"));
    }
    if loaded.get(&id).is_some() {
        return Err(ServeError::Config(format!(
            "two models would be served as `{id}`; name them apart with --model ID=DIR"
        )));
    }
    let pipeline = Arc::new(pipeline);
    Ok(LoadedModel {
        worker: Worker::spawn(id.clone(), pipeline.clone(), policy),
        id,
        family,
        source: spec.source.clone(),
        pipeline,
        created: unix_now(),
        fingerprint,
    })
}

/// Every route, with the limits and the panic guard around them.
pub fn router(state: SharedState) -> Router {
    let api = routes::api_routes().layer(axum::middleware::from_fn_with_state(
        state.clone(),
        require_key,
    ));
    Router::new()
        .merge(api)
        .merge(routes::open_routes())
        .fallback(routes::no_route)
        .method_not_allowed_fallback(routes::wrong_method)
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(CatchPanicLayer::custom(panic_response))
        .with_state(state)
}

fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = crate::error::panic_message(panic.as_ref());
    tracing::error!("a handler panicked: {what}");
    ApiError::internal(format!(
        "the server failed on this request ({what}); it goes on"
    ))
    .into_response()
}

/// `Authorization: Bearer KEY` on the API routes when the server has a key.
async fn require_key(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (send `Authorization: Bearer KEY`)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Metrics and a structured log line per request; a request body that does not
/// arrive within the body timeout is answered with 408.
async fn observe(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let path = req.uri().path().to_string();
    let timeout = state.config.body_timeout;
    let (parts, body) = req.into_parts();
    let body = axum::body::Body::new(timed_body::TimedBody::new(body, timeout));
    let resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    metrics::request(&route, status, elapsed);
    tracing::info!(%method, %path, status, ms = elapsed.as_millis() as u64, "request");
    resp
}

mod timed_body;

/// Binds, loads the models in the background, serves until SIGTERM or Ctrl-C.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let addr = config.addr;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    serve_on(listener, config, shutdown_signal()).await
}

/// [`serve`] on a bound listener, stopping gracefully when `stop` completes (tests
/// bind port 0 and stop the server themselves).
pub async fn serve_on(
    listener: TcpListener,
    config: ServeConfig,
    stop_signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    let state = AppState::new(config);
    tracing::info!("listening on http://{local} (loading models; /health is 503 until ready)");
    let loader = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || state.load())
    };
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<ServeError>();
    tokio::spawn(async move {
        match loader.await {
            Ok(Ok(())) => tracing::info!("ready on http://{local}"),
            Ok(Err(e)) => {
                let _ = fail_tx.send(e);
            }
            Err(e) => {
                let _ = fail_tx.send(ServeError::Config(format!("loading models failed: {e}")));
            }
        }
    });
    let app = router(state);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<Option<ServeError>>();
    let stop_tx = std::sync::Mutex::new(Some(stop_tx));
    let stop = move |e: Option<ServeError>| {
        if let Some(tx) = stop_tx.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(e);
        }
    };
    let stop = Arc::new(stop);
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Ok(e) = fail_rx.await {
                stop(Some(e));
            }
        });
    }
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            stop_signal.await;
            tracing::info!("stopping: finishing in-flight requests");
            stop(None);
        });
    }
    let (err_tx, err_rx) = tokio::sync::oneshot::channel::<Option<ServeError>>();
    let shutdown = async move {
        let e = stop_rx.await.ok().flatten();
        let _ = err_tx.send(e);
    };
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    match err_rx.await.ok().flatten() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// [`serve`] on a runtime of its own, for callers without one (the CLI).
pub fn serve_blocking(config: ServeConfig) -> Result<(), ServeError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("glimpse-http")
        .enable_all()
        .build()?;
    runtime.block_on(serve(config))
}
