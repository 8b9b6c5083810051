//! Every error a request can meet, as one type that renders OpenAI's error body
//! (`{"error": {"message", "type", "param", "code"}}`) with the right status.
//!
//! The client's mistakes are 4xx and name what was wrong (the field, the model, the
//! limit); the server's own failures are 500 and say which model failed. Nothing a
//! handler meets becomes a panic or a dropped connection.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Errors of the server's startup (binding, loading models).
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("loading {model}: {source}")]
    Load {
        model: String,
        #[source]
        source: Box<glimpse_models::Error>,
    },
    #[error("index {path}: {msg}")]
    Index { path: String, msg: String },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// A failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// The request field at fault, when there is one (OpenAI's `param`).
    pub param: Option<String>,
    /// Seconds to wait before retrying (429).
    pub retry_after: Option<Duration>,
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    /// 400: the body is not the JSON the route takes.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 422: well-formed JSON whose field `param` has a value the route cannot use.
    pub fn invalid(param: &str, message: impl std::fmt::Display) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{param}: {message}"),
            )
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn unknown_model(model: &str, loaded: &[String]) -> Self {
        Self {
            param: Some("model".into()),
            ..Self::not_found(format!(
                "model `{model}` is not loaded; loaded models: {}",
                loaded.join(", ")
            ))
        }
    }

    /// 429 with `Retry-After`.
    pub fn queue_full(model: &str, capacity: usize) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(1)),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("model `{model}` has {capacity} requests waiting; retry later"),
            )
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(Duration::from_secs(2)),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// A model's error on a request: the input's fault (an empty text, an image of an
    /// unusable size, a prompt longer than the model takes) is 422, anything else 500.
    pub fn from_model(model: &str, err: &glimpse_models::Error) -> Self {
        use glimpse_models::Error as E;
        match err {
            E::Model { .. } | E::Data(_) | E::Generate(_) => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("model `{model}`: {err}"),
            ),
            _ => Self::internal(format!("model `{model}`: {err}")),
        }
    }

    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.message)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: u16,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                code: self.status.as_u16(),
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(after) = self.retry_after {
            let secs = after.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            // Syntax errors, a body that is not UTF-8, a truncated body: 400.
            JsonRejection::JsonSyntaxError(e) => {
                Self::bad_request(format!("malformed JSON body: {}", source_text(&e)))
            }
            // Valid JSON of the wrong shape: the path of the offending field is in the
            // message (`messages[0].content: invalid type ...`).
            JsonRejection::JsonDataError(e) => {
                let text = source_text(&e);
                let param = text.split(':').next().map(str::to_string);
                Self {
                    param,
                    ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, text)
                }
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a JSON body with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(e) => {
                let text = source_text(&e);
                if text.contains("request body timed out") {
                    return Self::new(StatusCode::REQUEST_TIMEOUT, text);
                }
                let status = e.status();
                if status == StatusCode::PAYLOAD_TOO_LARGE {
                    Self::new(
                        status,
                        "request body is larger than the server accepts (see --max-body)",
                    )
                } else {
                    Self::new(
                        status,
                        format!("reading the request body: {}", e.body_text()),
                    )
                }
            }
            other => Self::bad_request(other.body_text()),
        }
    }
}

/// The innermost error message: serde's, without axum's prefix.
fn source_text(e: &dyn std::error::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(s) = inner.source() {
        inner = s;
    }
    inner.to_string()
}

/// What a caught panic says (its `String` or `&str` payload), for logs and 500s.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic")
}
