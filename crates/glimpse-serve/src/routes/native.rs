//! Routes for what OpenAI's API has no word for: caption, ask, match (ITC/ITM),
//! classify, search over the server's index, and clip-retrieval's back-end routes
//! (`/knn-service`, `/indices-list`) so its front end can query Glimpse.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use glimpse_index::{Hit, Side};
use glimpse_models::capability::Capability;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{body, Sampling};
use crate::error::{ApiError, ApiResult};
use crate::registry::LoadedModel;
use crate::search::Query;
use crate::worker::{Output, Task};
use crate::SharedState;

/// Decodes the request's image (a `data:` URL, or what the server's policy allows)
/// off the async threads and checks that the model can take its size.
async fn image_for(
    state: &SharedState,
    model: Option<&LoadedModel>,
    url: String,
    param: &'static str,
) -> ApiResult<RgbImage> {
    let policy = state.config.images.clone();
    let pipeline = model.map(|m| m.pipeline.clone());
    tokio::task::spawn_blocking(move || {
        let img = crate::images::load(&url, param, &policy)?;
        if let Some(p) = pipeline {
            p.processor()
                .check_size(img.width() as usize, img.height() as usize)
                .map_err(|e| ApiError::invalid(param, e))?;
        }
        Ok(img)
    })
    .await
    .map_err(|e| ApiError::internal(format!("decoding {param}: {e}")))?
}

fn nonblank(text: &str, param: &str) -> ApiResult<()> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(param, "empty text"));
    }
    Ok(())
}

fn texts_nonblank(texts: &[String], param: &str, max: usize) -> ApiResult<()> {
    if texts.is_empty() || texts.len() > max {
        return Err(ApiError::invalid(
            param,
            format!("{} texts; give 1 to {max}", texts.len()),
        ));
    }
    for (i, t) in texts.iter().enumerate() {
        nonblank(t, &format!("{param}[{i}]"))?;
    }
    Ok(())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptionRequest {
    pub model: Option<String>,
    /// `data:image/...;base64,...` (or a URL/path the server's policy allows).
    pub image: String,
    /// Text the caption starts with (BLIP's conditional captioning).
    pub prompt: Option<String>,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GeneratedResponse {
    pub model: String,
    pub text: String,
    pub token_ids: Vec<u32>,
}

#[utoipa::path(post, path = "/v1/caption", request_body = CaptionRequest,
    responses((status = 200, body = GeneratedResponse), (status = 422, description = "bad image or settings")))]
pub async fn caption(
    State(state): State<SharedState>,
    payload: Result<Json<CaptionRequest>, JsonRejection>,
) -> ApiResult<Json<GeneratedResponse>> {
    let req = body(payload)?;
    let sampling = Sampling {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
    };
    let gen = sampling.config(state.config.max_tokens_limit)?;
    let model = state
        .models()?
        .pick(req.model.as_deref(), &[Capability::Caption])?;
    let image = image_for(&state, Some(&model), req.image, "image").await?;
    let gen = model.pipeline.generation_config(gen);
    let prompt = req.prompt.filter(|p| !p.trim().is_empty());
    generated(&model, Task::Caption { image, prompt, gen }).await
}

/// Runs a generating task on `model` and shapes its text as the caption and ask routes
/// answer.
async fn generated(model: &LoadedModel, task: Task) -> ApiResult<Json<GeneratedResponse>> {
    match model.worker.run(task).await? {
        Output::Generated { out, .. } => Ok(Json(GeneratedResponse {
            model: model.id.clone(),
            text: out.text,
            token_ids: out.token_ids,
        })),
        _ => Err(model.worker.lost()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub model: Option<String>,
    pub image: String,
    pub question: String,
    pub max_tokens: Option<usize>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub seed: Option<u64>,
}

#[utoipa::path(post, path = "/v1/ask", request_body = AskRequest,
    responses((status = 200, body = GeneratedResponse), (status = 422, description = "bad image, empty question")))]
pub async fn ask(
    State(state): State<SharedState>,
    payload: Result<Json<AskRequest>, JsonRejection>,
) -> ApiResult<Json<GeneratedResponse>> {
    let req = body(payload)?;
    nonblank(&req.question, "question")?;
    let sampling = Sampling {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
    };
    let gen = sampling.config(state.config.max_tokens_limit)?;
    let model = state
        .models()?
        .pick(req.model.as_deref(), &[Capability::Answer])?;
    let image = image_for(&state, Some(&model), req.image, "image").await?;
    let gen = model.pipeline.generation_config(gen);
    let task = Task::Ask {
        image,
        question: req.question,
        gen,
    };
    generated(&model, task).await
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchRequest {
    pub model: Option<String>,
    pub image: String,
    pub texts: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MatchResponse {
    pub model: String,
    /// Cosine similarity per text.
    pub itc: Vec<f32>,
    /// Match probability per text (models with an ITM head).
    pub itm: Option<Vec<f32>>,
}

const MAX_TEXTS: usize = 256;

#[utoipa::path(post, path = "/v1/match", request_body = MatchRequest,
    responses((status = 200, body = MatchResponse)))]
pub async fn match_texts(
    State(state): State<SharedState>,
    payload: Result<Json<MatchRequest>, JsonRejection>,
) -> ApiResult<Json<MatchResponse>> {
    let req = body(payload)?;
    texts_nonblank(&req.texts, "texts", MAX_TEXTS)?;
    let model = state
        .models()?
        .pick(req.model.as_deref(), &[Capability::Match])?;
    let image = image_for(&state, Some(&model), req.image, "image").await?;
    match model
        .worker
        .run(Task::Match {
            image,
            texts: req.texts,
        })
        .await?
    {
        Output::Match(m) => Ok(Json(MatchResponse {
            model: model.id.clone(),
            itc: m.itc,
            itm: m.itm,
        })),
        _ => Err(model.worker.lost()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassifyRequest {
    pub model: Option<String>,
    pub image: String,
    pub labels: Vec<String>,
    /// Prompt with `{}` for the label (default "a photo of a {}.").
    pub template: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassifyResponse {
    pub model: String,
    /// Labels by descending probability.
    pub labels: Vec<LabelScore>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[utoipa::path(post, path = "/v1/classify", request_body = ClassifyRequest,
    responses((status = 200, body = ClassifyResponse)))]
pub async fn classify(
    State(state): State<SharedState>,
    payload: Result<Json<ClassifyRequest>, JsonRejection>,
) -> ApiResult<Json<ClassifyResponse>> {
    let req = body(payload)?;
    texts_nonblank(&req.labels, "labels", MAX_TEXTS)?;
    let template = req
        .template
        .unwrap_or_else(|| "a photo of a {}.".to_string());
    if !template.contains("{}") {
        return Err(ApiError::invalid("template", "no `{}` for the label"));
    }
    let model = state
        .models()?
        .pick(req.model.as_deref(), &[Capability::Classify])?;
    let image = image_for(&state, Some(&model), req.image, "image").await?;
    let task = Task::Classify {
        image,
        labels: req.labels.clone(),
        template,
    };
    match model.worker.run(task).await? {
        Output::Classify(probs) => {
            let mut labels: Vec<LabelScore> = req
                .labels
                .into_iter()
                .zip(probs)
                .map(|(label, score)| LabelScore { label, score })
                .collect();
            labels.sort_by(|a, b| b.score.total_cmp(&a.score));
            Ok(Json(ClassifyResponse {
                model: model.id.clone(),
                labels,
            }))
        }
        _ => Err(model.worker.lost()),
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// A text query (text→image, or text→text with `over: "texts"`).
    pub text: Option<String>,
    /// An image query as a `data:` URL (image→image, or image→text).
    pub image: Option<String>,
    /// `images` (default) or `texts`.
    pub over: Option<String>,
    /// Results (default 10, at most 1000).
    pub k: Option<usize>,
    /// Re-score the top N with the ITM head and return the best k.
    pub rerank: Option<usize>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Hit>,
}

const MAX_K: usize = 1000;

async fn query_of(
    state: &SharedState,
    text: Option<String>,
    image: Option<String>,
    image_param: &'static str,
) -> ApiResult<Query> {
    match (text, image) {
        (Some(t), None) => {
            nonblank(&t, "text")?;
            Ok(Query::Text(t))
        }
        (None, Some(url)) => {
            let searcher = state.searcher()?;
            let img = image_for(state, Some(&searcher.embedder), url, image_param).await?;
            Ok(Query::Image(img))
        }
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "text",
            "give `text` or `image`, not both",
        )),
        (None, None) => Err(ApiError::invalid("text", "give `text` or `image`")),
    }
}

#[utoipa::path(post, path = "/v1/search", request_body = SearchRequest,
    responses((status = 200, body = SearchResponse), (status = 404, description = "no index loaded")))]
pub async fn search(
    State(state): State<SharedState>,
    payload: Result<Json<SearchRequest>, JsonRejection>,
) -> ApiResult<Json<SearchResponse>> {
    let req = body(payload)?;
    let k = req.k.unwrap_or(10);
    if k == 0 || k > MAX_K {
        return Err(ApiError::invalid(
            "k",
            format!("{k} is outside 1..={MAX_K}"),
        ));
    }
    if req.rerank.is_some_and(|n| n > MAX_K) {
        return Err(ApiError::invalid("rerank", format!("at most {MAX_K}")));
    }
    let side = match req.over.as_deref() {
        None | Some("images") => Side::Images,
        Some("texts") => Side::Texts,
        Some(other) => {
            return Err(ApiError::invalid(
                "over",
                format!("{other:?}: expected images or texts"),
            ))
        }
    };
    let searcher = state.searcher()?.clone();
    let query = query_of(&state, req.text, req.image, "image").await?;
    let results = searcher.search(query, side, k, req.rerank).await?;
    Ok(Json(SearchResponse { results }))
}

/// clip-retrieval's back-end request (`clip_back`'s `/knn-service`).
#[derive(Debug, Deserialize, ToSchema)]
pub struct KnnRequest {
    pub text: Option<String>,
    /// Base64 image bytes (no `data:` prefix), as clip-retrieval's front end sends.
    pub image: Option<String>,
    pub image_url: Option<String>,
    pub embedding_input: Option<Vec<f32>>,
    /// `image` (default) or `text`: which side of the index to search.
    pub modality: Option<String>,
    pub num_images: Option<usize>,
    pub num_result_ids: Option<usize>,
    pub indice_name: Option<String>,
    pub use_mclip: Option<bool>,
    pub deduplicate: Option<bool>,
    pub use_safety_model: Option<bool>,
    pub use_violence_detector: Option<bool>,
    pub aesthetic_score: Option<serde_json::Value>,
    pub aesthetic_weight: Option<serde_json::Value>,
}

/// One clip-retrieval result.
#[derive(Debug, Serialize, ToSchema)]
pub struct KnnResult {
    pub id: usize,
    pub similarity: f32,
    pub url: String,
    pub caption: Option<String>,
    pub key: String,
}

#[utoipa::path(post, path = "/knn-service", request_body = KnnRequest,
    responses((status = 200, body = Vec<KnnResult>)))]
pub async fn knn_service(
    State(state): State<SharedState>,
    payload: Result<Json<KnnRequest>, JsonRejection>,
) -> ApiResult<Json<Vec<KnnResult>>> {
    let req = body(payload)?;
    if req.embedding_input.is_some() {
        return Err(ApiError::invalid(
            "embedding_input",
            "not supported: send text, image or image_url",
        ));
    }
    let searcher = state.searcher()?.clone();
    if let Some(name) = &req.indice_name {
        if *name != searcher.name {
            return Err(ApiError::not_found(format!(
                "indice_name {name:?}: this server has the index {:?}",
                searcher.name
            )));
        }
    }
    let k = req.num_images.or(req.num_result_ids).unwrap_or(40);
    if k == 0 || k > MAX_K {
        return Err(ApiError::invalid(
            "num_images",
            format!("{k} is outside 1..={MAX_K}"),
        ));
    }
    let side = match req.modality.as_deref() {
        None | Some("image") => Side::Images,
        Some("text") => Side::Texts,
        Some(other) => {
            return Err(ApiError::invalid(
                "modality",
                format!("{other:?}: expected image or text"),
            ))
        }
    };
    let query = match (req.text, req.image, req.image_url) {
        (Some(t), None, None) => {
            nonblank(&t, "text")?;
            Query::Text(t)
        }
        (None, Some(b64), None) => {
            let policy = state.config.images.clone();
            let img = tokio::task::spawn_blocking(move || {
                crate::images::decode_base64(&b64, "image", &policy)
            })
            .await
            .map_err(|e| ApiError::internal(format!("decoding image: {e}")))??;
            Query::Image(img)
        }
        (None, None, Some(url)) => query_of(&state, None, Some(url), "image_url").await?,
        _ => {
            return Err(ApiError::invalid(
                "text",
                "give exactly one of text, image, image_url",
            ))
        }
    };
    let hits = searcher.search(query, side, k, None).await?;
    Ok(Json(
        hits.into_iter()
            .map(|h| KnnResult {
                id: h.row,
                similarity: h.score,
                url: h.path,
                caption: h.text,
                key: h.key,
            })
            .collect(),
    ))
}

#[utoipa::path(get, path = "/indices-list", responses((status = 200, body = Vec<String>)))]
pub async fn indices_list(State(state): State<SharedState>) -> ApiResult<Json<Vec<String>>> {
    Ok(Json(vec![state.searcher()?.name.clone()]))
}
