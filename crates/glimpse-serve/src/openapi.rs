//! The OpenAPI document of the routes, generated from the handlers' and types'
//! annotations at compile time (nothing is downloaded at build time), served at
//! `/openapi.json` and rendered by the page at `/docs`.

use utoipa::OpenApi;

use crate::routes::{native, openai};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Glimpse",
        description = "OpenAI-compatible chat completions and embeddings over CLIP, BLIP, \
                       BLIP-2 and LLaVA, plus caption, ask, match, classify, search and \
                       clip-retrieval's /knn-service. Errors use OpenAI's body: \
                       {\"error\": {\"message\", \"type\", \"param\", \"code\"}}."
    ),
    paths(
        openai::chat_completions,
        openai::embeddings,
        openai::list_models,
        openai::get_model,
        native::caption,
        native::ask,
        native::match_texts,
        native::classify,
        native::search,
        native::knn_service,
        native::indices_list,
    )
)]
struct ApiDoc;

pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
