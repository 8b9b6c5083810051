//! OpenAI-compatible routes: `/v1/chat/completions` (with images, streaming),
//! `/v1/embeddings` (texts, and images as `data:` URLs), `/v1/models`.
//!
//! Field names are the official API's. What a family does with a chat:
//! - LLaVA (chat): the system message, the earlier exchanges and the last user turn
//!   about one image.
//! - BLIP VQA, BLIP-2 (answer): the last user text is the question about the image.
//! - BLIP captioning (caption): the last user text, if any, starts the caption.
//!
//! Earlier turns are replayed into LLaVA's conversation as context (no generation);
//! BLIP and BLIP-2 have no memory, so they answer the last user turn alone.

use std::convert::Infallible;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use glimpse_data::text::StreamDecoder;
use glimpse_generate::GenerationConfig;
use glimpse_models::capability::Capability;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{body, Sampling};
use crate::error::{ApiError, ApiResult};
use crate::registry::LoadedModel;
use crate::text_lm::TextModel;
use crate::worker::{Output, Task};
use crate::{unix_now, SharedState};

// ---------------------------------------------------------------- chat completions

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    /// A loaded model's id (`GET /v1/models`); the first model that can chat,
    /// answer or caption when absent.
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
    /// Up to 4 strings; the text ends before the first one.
    pub stop: Option<Stop>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    /// Must be 1.
    pub n: Option<usize>,
    /// Accepted and ignored (an end-user id for the operator's logs).
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `developer`, `user` or `assistant`.
    pub role: String,
    pub content: Option<Content>,
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageUrl {
    /// `data:image/...;base64,...`; `http(s)` when the server fetches; a local path
    /// under the directory the server reads.
    pub url: String,
    /// Accepted and ignored: every model sees its processor's size.
    pub detail: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    /// `stop` (end token or a stop string) or `length` (max_tokens reached).
    pub finish_reason: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

impl Usage {
    fn new(prompt: usize, completion: usize) -> Self {
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }
}

/// What a chat request asks of a model, after validation.
struct ChatWork {
    model: std::sync::Arc<LoadedModel>,
    task: Task,
    gen: GenerationConfig,
    stops: Vec<String>,
    /// Ids the final text starts with (a caption's prompt), for streaming.
    prefix: Vec<u32>,
}

/// The message's text parts joined; its image URLs go to `images` with their field path.
fn text_of(content: &Option<Content>, at: usize, images: &mut Vec<(String, String)>) -> String {
    match content {
        None => String::new(),
        Some(Content::Text(t)) => t.clone(),
        Some(Content::Parts(parts)) => {
            let mut text = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match p {
                    Part::Text { text: t } => text.push(t.as_str()),
                    Part::ImageUrl { image_url } => images.push((
                        format!("messages[{at}].content[{j}].image_url.url"),
                        image_url.url.clone(),
                    )),
                }
            }
            text.join("\n")
        }
    }
}

fn prepare_chat(state: &SharedState, req: ChatRequest) -> ApiResult<ChatWork> {
    let cfg = &state.config;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "at least one message is needed",
        ));
    }
    if req.messages.len() > cfg.max_messages {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "{} messages; this server takes at most {} per request",
                req.messages.len(),
                cfg.max_messages
            ),
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            "only one choice per request (n = 1)",
        ));
    }
    let mut system = Vec::new();
    let mut images = Vec::new();
    let mut last_user: Option<(usize, String)> = None;
    // Earlier exchanges (a user turn and the assistant's reply), in order; a user turn
    // that no reply follows is an error only for models that take history.
    let mut history = Vec::new();
    let mut unanswered = None;
    // The user message waiting for its reply.
    let mut open: Option<(usize, String)> = None;
    for (i, m) in req.messages.iter().enumerate() {
        let text = text_of(&m.content, i, &mut images);
        match m.role.as_str() {
            "system" | "developer" => system.push(text),
            "user" => {
                if let Some((j, _)) = &open {
                    unanswered.get_or_insert(*j);
                }
                open = Some((i, text.clone()));
                last_user = Some((i, text));
            }
            "assistant" => match open.take() {
                Some((_, u)) => history.push((u, text)),
                None => {
                    unanswered.get_or_insert(i);
                }
            },
            other => {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].role"),
                    format!("{other:?}: expected system, developer, user or assistant"),
                ))
            }
        }
    }
    let Some((last_at, user_text)) = last_user else {
        return Err(ApiError::invalid("messages", "no user message"));
    };
    if last_at != req.messages.len() - 1 {
        return Err(ApiError::invalid(
            "messages",
            "the last message must be the user's (the one to answer)",
        ));
    }
    let (param, url) = match images.len() {
        1 => images.remove(0),
        0 => {
            return Err(ApiError::invalid(
                "messages",
                "no image: add an `image_url` part to a user message",
            ))
        }
        n => {
            return Err(ApiError::invalid(
                "messages",
                format!("{n} images; these models take one image per conversation"),
            ))
        }
    };
    let image = crate::images::load(&url, &param, &cfg.images)?;

    let sampling = Sampling {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
    };
    let gen = sampling.config(cfg.max_tokens_limit)?;
    let stops = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "up to 4 non-empty strings"));
    }

    let models = state.models()?;
    let model = models.pick(
        req.model.as_deref(),
        &[Capability::Chat, Capability::Answer, Capability::Caption],
    )?;
    let pipeline = &model.pipeline;
    pipeline
        .processor()
        .check_size(image.width() as usize, image.height() as usize)
        .map_err(|e| ApiError::invalid(&param, e))?;
    let gen = pipeline.generation_config(gen);
    let system = (!system.is_empty()).then(|| system.join("\n"));
    let mut prefix = Vec::new();
    let task = if model.can(Capability::Chat) {
        if let Some(i) = unanswered {
            return Err(ApiError::invalid(
                &format!("messages[{i}]"),
                "earlier turns must alternate: each user message answered by one assistant message",
            ));
        }
        if user_text.trim().is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "the user message has no text",
            ));
        }
        Task::Chat {
            image,
            system,
            history,
            user: user_text,
            gen: gen.clone(),
        }
    } else if model.can(Capability::Answer) {
        if user_text.trim().is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "the user message has no text (the question about the image)",
            ));
        }
        Task::Ask {
            image,
            question: user_text,
            gen: gen.clone(),
        }
    } else {
        let prompt = Some(user_text).filter(|t| !t.trim().is_empty());
        if let Some(p) = &prompt {
            prefix = pipeline
                .tokenizer()
                .encode(p, true)
                .map_err(|e| ApiError::invalid("messages", e))?;
        }
        Task::Caption {
            image,
            prompt,
            gen: gen.clone(),
        }
    };
    Ok(ChatWork {
        model,
        task,
        gen,
        stops,
        prefix,
    })
}

/// Length of the longest end of `text` that is a proper start of a stop string.
fn stop_prefix_len(text: &str, stops: &[String]) -> usize {
    let mut best = 0;
    for stop in stops {
        for (i, _) in stop.char_indices().skip(1) {
            if i > best && text.ends_with(&stop[..i]) {
                best = i;
            }
        }
    }
    best
}

/// Cuts `text` before the first stop string; whether one was found.
fn apply_stops(text: &str, stops: &[String]) -> (String, bool) {
    match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
        Some(at) => (text[..at].to_string(), true),
        None => (text.to_string(), false),
    }
}

fn finish_reason(ids: &[u32], gen: &GenerationConfig, stopped: bool) -> &'static str {
    let ended = ids.last().is_some_and(|t| gen.eos_token_ids.contains(t));
    if stopped || ended || ids.len() < gen.max_new_tokens {
        "stop"
    } else {
        "length"
    }
}

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatRequest,
    responses((status = 200, body = ChatResponse, description = "the answer; with `stream: true`, server-sent `chat.completion.chunk` events ending with `[DONE]`"),
              (status = 404, description = "unknown model"), (status = 422, description = "a field the model cannot use"),
              (status = 429, description = "the model's queue is full")))]
pub async fn chat_completions(
    State(state): State<SharedState>,
    payload: Result<Json<ChatRequest>, JsonRejection>,
) -> ApiResult<Response> {
    let req = body(payload)?;
    if let Some(model) = text_model_for(&state, &req)? {
        return text_chat(&state, model, req).await;
    }
    let stream = req.stream;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let work = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || prepare_chat(&state, req))
            .await
            .map_err(|e| ApiError::internal(format!("preparing the request: {e}")))??
    };
    let id = state.next_id("chatcmpl");
    if stream {
        return stream_chat(work, id, include_usage);
    }
    let ChatWork {
        model,
        task,
        gen,
        stops,
        ..
    } = work;
    let Output::Generated { out, prompt_tokens } = model.worker.run(task).await? else {
        return Err(model.worker.lost());
    };
    let (content, stopped) = apply_stops(&out.text, &stops);
    Ok(Json(ChatResponse {
        id,
        object: "chat.completion",
        created: unix_now(),
        model: model.id.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
            },
            finish_reason: finish_reason(&out.token_ids, &gen, stopped),
        }],
        usage: Usage::new(prompt_tokens, out.token_ids.len()),
    })
    .into_response())
}

fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: serde_json::Value,
    finish: Option<&str>,
) -> Event {
    let body = serde_json::json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    Event::default().data(body.to_string())
}

/// Server-sent events: a role chunk, a content chunk per decoded piece (whole UTF-8
/// characters only), a final chunk with the finish reason, usage when asked, `[DONE]`.
fn stream_chat(work: ChatWork, id: String, include_usage: bool) -> ApiResult<Response> {
    let ChatWork {
        model,
        task,
        gen,
        stops,
        prefix,
    } = work;
    let (mut token_rx, result_rx) = model.worker.run_streaming(task)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let created = unix_now();
    tokio::spawn(async move {
        let send = |e: Event| {
            let tx = tx.clone();
            async move { tx.send(e).await.is_ok() }
        };
        if !send(chunk(
            &id,
            created,
            &model.id,
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ))
        .await
        {
            return;
        }
        let tokenizer = model.pipeline.tokenizer();
        let mut detok = StreamDecoder::new(tokenizer, &gen.eos_token_ids);
        let mut stopped = false;
        let mut emitted = String::new();
        // Decoded text held back while it could begin a stop string; a caption's
        // prompt starts it, as the final text starts with the prompt.
        let mut pending = String::new();
        for id in prefix {
            pending.push_str(&detok.push(id).unwrap_or_default());
        }
        while let Some(t) = token_rx.recv().await {
            if stopped {
                continue;
            }
            let Ok(piece) = detok.push(t) else { continue };
            pending.push_str(&piece);
            if emitted.is_empty() {
                // The final text of an answer is trimmed: so is its start here.
                pending = pending.trim_start().to_string();
            }
            if pending.is_empty() {
                continue;
            }
            let candidate = format!("{emitted}{pending}");
            let (cut, hit) = apply_stops(&candidate, &stops);
            // A tail that may be the start of a stop string waits for the next piece.
            let keep = if hit {
                0
            } else {
                stop_prefix_len(&cut, &stops)
            };
            let ready = cut.len() - keep;
            let new = cut[emitted.len().min(ready)..ready].to_string();
            pending = cut[ready..].to_string();
            if !new.is_empty() {
                emitted.push_str(&new);
                if !send(chunk(
                    &id,
                    created,
                    &model.id,
                    serde_json::json!({"content": new}),
                    None,
                ))
                .await
                {
                    return; // the client went away: dropping token_rx stops decoding
                }
            }
            if hit {
                stopped = true;
                token_rx.close();
            }
        }
        let result = result_rx.await.unwrap_or_else(|_| Err(model.worker.lost()));
        match result {
            Ok(Output::Generated { out, prompt_tokens }) => {
                // The final text may extend what was streamed (a last piece held back,
                // a model that trims its answer): send the rest.
                if !stopped {
                    let (full, hit) = apply_stops(&out.text, &stops);
                    stopped = hit;
                    if let Some(rest) = full.strip_prefix(emitted.as_str()) {
                        if !rest.is_empty() {
                            let _ = send(chunk(
                                &id,
                                created,
                                &model.id,
                                serde_json::json!({"content": rest}),
                                None,
                            ))
                            .await;
                        }
                    } else {
                        tracing::warn!(
                            model = %model.id,
                            "the streamed text {emitted:?} is not a prefix of the answer {full:?}"
                        );
                    }
                }
                let finish = finish_reason(&out.token_ids, &gen, stopped);
                let _ = send(chunk(
                    &id,
                    created,
                    &model.id,
                    serde_json::json!({}),
                    Some(finish),
                ))
                .await;
                if include_usage {
                    let usage = Usage::new(prompt_tokens, out.token_ids.len());
                    let body = serde_json::json!({
                        "id": id, "object": "chat.completion.chunk", "created": created,
                        "model": model.id, "choices": [], "usage": usage,
                    });
                    let _ = send(Event::default().data(body.to_string())).await;
                }
            }
            Ok(_) => {}
            Err(e) => {
                let body =
                    serde_json::json!({"error": {"message": e.message, "code": e.status.as_u16()}});
                let _ = send(Event::default().data(body.to_string())).await;
            }
        }
        let _ = send(Event::default().data("[DONE]")).await;
    });
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<Event, Infallible>(e), rx))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

// ---------------------------------------------------------------- embeddings

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: Option<String>,
    /// A string or an array of strings. A string that is a `data:image/...;base64,`
    /// URL is embedded as an image, in the same space as the texts.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (little-endian f32, as the official client asks).
    pub encoding_format: Option<String>,
    /// Must equal the model's width when given (no truncation).
    pub dimensions: Option<usize>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingData>,
    pub model: String,
    pub usage: EmbeddingUsage,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingData {
    pub object: &'static str,
    pub index: usize,
    /// Projected, not normalised (as `glimpse embed` prints): floats, or a base64
    /// string of little-endian f32.
    #[schema(value_type = Object)]
    pub embedding: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmbeddingUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

/// Most inputs in one embeddings request (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingRequest,
    responses((status = 200, body = EmbeddingResponse), (status = 404, description = "unknown model"),
              (status = 422, description = "an input the model cannot embed")))]
pub async fn embeddings(
    State(state): State<SharedState>,
    payload: Result<Json<EmbeddingRequest>, JsonRejection>,
) -> ApiResult<Json<EmbeddingResponse>> {
    let req = body(payload)?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("{other:?}: expected \"float\" or \"base64\""),
            ))
        }
    };
    let inputs = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("{} inputs; give 1 to {MAX_INPUTS}", inputs.len()),
        ));
    }
    let models = state.models()?;
    let model = models.pick(req.model.as_deref(), &[Capability::Embed])?;
    let max_batch = state.config.max_batch;

    // Texts and images keep their positions; each kind goes to the worker in chunks
    // of at most one batch, which then batch with other requests' inputs.
    let (mut text_at, mut texts, mut image_at, mut image_urls) = (vec![], vec![], vec![], vec![]);
    for (i, s) in inputs.into_iter().enumerate() {
        if s.starts_with("data:image/") || s.starts_with("data:") && s.contains(";base64,") {
            image_at.push(i);
            image_urls.push(s);
        } else if s.trim().is_empty() {
            return Err(ApiError::invalid(&format!("input[{i}]"), "empty text"));
        } else {
            text_at.push(i);
            texts.push(s);
        }
    }
    let n = text_at.len() + image_at.len();
    let prompt_tokens = {
        let tok = model.pipeline.tokenizer();
        texts
            .iter()
            .map(|t| tok.encode(t, true).map(|ids| ids.len()).unwrap_or(0))
            .sum()
    };
    let images = {
        let policy = state.config.images.clone();
        let at = image_at.clone();
        let pipeline = model.pipeline.clone();
        tokio::task::spawn_blocking(move || -> ApiResult<Vec<image::RgbImage>> {
            image_urls
                .iter()
                .zip(&at)
                .map(|(u, i)| {
                    let param = format!("input[{i}]");
                    let img = crate::images::load(u, &param, &policy)?;
                    pipeline
                        .processor()
                        .check_size(img.width() as usize, img.height() as usize)
                        .map_err(|e| ApiError::invalid(&param, e))?;
                    Ok(img)
                })
                .collect()
        })
        .await
        .map_err(|e| ApiError::internal(format!("decoding images: {e}")))??
    };
    let mut pending = Vec::new();
    for chunk in texts.chunks(max_batch) {
        pending.push(model.worker.run(Task::EmbedTexts(chunk.to_vec())));
    }
    let mut images = images;
    while !images.is_empty() {
        let rest = images.split_off(images.len().min(max_batch));
        pending.push(model.worker.run(Task::EmbedImages(images)));
        images = rest;
    }
    let outs = futures_util::future::join_all(pending).await;
    let mut rows = Vec::with_capacity(n);
    for out in outs {
        match out? {
            Output::Embeddings(r) => rows.extend(r),
            _ => return Err(model.worker.lost()),
        }
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
    for (at, row) in text_at.iter().chain(&image_at).zip(rows) {
        vectors[*at] = Some(row);
    }
    let mut data = Vec::with_capacity(n);
    for (index, v) in vectors.into_iter().enumerate() {
        let v = v.ok_or_else(|| model.worker.lost())?;
        if let Some(d) = req.dimensions {
            if d != v.len() {
                return Err(ApiError::invalid(
                    "dimensions",
                    format!("{d}: model `{}` gives {} dimensions", model.id, v.len()),
                ));
            }
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(ApiError::internal(format!(
                "model `{}` produced non-finite embeddings: its weights are broken",
                model.id
            )));
        }
        let embedding = if base64 {
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        } else {
            serde_json::json!(v)
        };
        data.push(EmbeddingData {
            object: "embedding",
            index,
            embedding,
        });
    }
    Ok(Json(EmbeddingResponse {
        object: "list",
        data,
        model: model.id.clone(),
        usage: EmbeddingUsage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

// ---------------------------------------------------------------- models

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    /// Glimpse's additions: the transformers class and what the model can do.
    pub class: &'static str,
    pub family: &'static str,
    pub capabilities: Vec<&'static str>,
}

fn card(m: &LoadedModel) -> ModelCard {
    let caps = [
        (Capability::Embed, "embed"),
        (Capability::Classify, "classify"),
        (Capability::Match, "match"),
        (Capability::Caption, "caption"),
        (Capability::Answer, "ask"),
        (Capability::Chat, "chat"),
    ];
    ModelCard {
        id: m.id.clone(),
        object: "model",
        created: m.created,
        owned_by: "glimpse",
        class: m.class_name(),
        family: m.family,
        capabilities: caps
            .iter()
            .filter(|(c, _)| m.can(*c))
            .map(|(_, n)| *n)
            .collect(),
    }
}

fn text_card(m: &TextModel) -> ModelCard {
    ModelCard {
        id: m.id.clone(),
        object: "model",
        created: m.created,
        owned_by: "glimpse",
        class: m.class,
        family: m.family,
        capabilities: vec!["generate"],
    }
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList)))]
pub async fn list_models(State(state): State<SharedState>) -> ApiResult<Json<ModelList>> {
    let models = state.models()?;
    Ok(Json(ModelList {
        object: "list",
        data: models
            .list
            .iter()
            .map(|m| card(m))
            .chain(models.text.iter().map(|m| text_card(m)))
            .collect(),
    }))
}

#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "a loaded model's id")),
    responses((status = 200, body = ModelCard), (status = 404, description = "unknown model")))]
pub async fn get_model(
    State(state): State<SharedState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> ApiResult<Json<ModelCard>> {
    let models = state.models()?;
    if let Some(t) = models.text.iter().find(|m| m.id == id) {
        return Ok(Json(text_card(t)));
    }
    let m = models
        .get(&id)
        .ok_or_else(|| ApiError::unknown_model(&id, &models.ids()))?;
    Ok(Json(card(m)))
}

// ---------------------------------------------------------------- text-only models

/// The text-only model a chat request is for: the one it names, or, when it names
/// none and carries no image, the first loaded one.
fn text_model_for(
    state: &SharedState,
    req: &ChatRequest,
) -> ApiResult<Option<std::sync::Arc<TextModel>>> {
    let models = state.models()?;
    if models.text.is_empty() {
        return Ok(None);
    }
    Ok(match &req.model {
        Some(id) => match models.text.iter().find(|m| &m.id == id) {
            Some(m) => Some(m.clone()),
            None if models.get(id).is_none() => {
                return Err(ApiError::unknown_model(id, &models.ids()))
            }
            None => None,
        },
        None => {
            let has_image = req.messages.iter().any(|m| {
                matches!(&m.content, Some(Content::Parts(p)) if p.iter().any(|p| matches!(p, Part::ImageUrl { .. })))
            });
            (!has_image || models.list.is_empty()).then(|| models.text[0].clone())
        }
    })
}

/// A chat completion by a text-only model (no streaming, no images).
async fn text_chat(
    state: &SharedState,
    model: std::sync::Arc<TextModel>,
    req: ChatRequest,
) -> ApiResult<Response> {
    if req.stream {
        return Err(ApiError::invalid(
            "stream",
            format!(
                "`{}` is a text-only model, which answers without streaming",
                model.id
            ),
        ));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "at least one message is needed",
        ));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            "only one choice per request (n = 1)",
        ));
    }
    let mut turns = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let mut images = Vec::new();
        let text = text_of(&m.content, i, &mut images);
        if let Some((param, _)) = images.first() {
            return Err(ApiError::invalid(
                param,
                format!("`{}` is a text-only model and takes no image", model.id),
            ));
        }
        if !matches!(
            m.role.as_str(),
            "system" | "developer" | "user" | "assistant"
        ) {
            return Err(ApiError::invalid(
                &format!("messages[{i}].role"),
                format!(
                    "{:?}: expected system, developer, user or assistant",
                    m.role
                ),
            ));
        }
        turns.push((m.role.clone(), text));
    }
    let sampling = Sampling {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
    };
    let gen = sampling.config(state.config.max_tokens_limit)?;
    let stops = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stops.len() > 4 || stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "up to 4 non-empty strings"));
    }
    let max_new = gen.max_new_tokens;
    let done = model
        .complete(crate::text_lm::transcript(&turns), gen)
        .await?;
    let (content, stopped) = apply_stops(&done.text, &stops);
    let ended = done.token_ids.len() < max_new;
    let mut resp = Json(ChatResponse {
        id: state.next_id("chatcmpl"),
        object: "chat.completion",
        created: unix_now(),
        model: model.id.clone(),
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content,
            },
            finish_reason: if stopped || ended { "stop" } else { "length" },
        }],
        usage: Usage::new(done.prompt_tokens, done.token_ids.len()),
    })
    .into_response();
    if done.truncated > 0 {
        resp.headers_mut().insert(
            "x-glimpse-prompt-truncated",
            axum::http::HeaderValue::from(done.truncated),
        );
    }
    Ok(resp)
}
