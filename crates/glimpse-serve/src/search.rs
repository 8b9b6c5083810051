//! Search over an index (`glimpse index build`): queries are embedded by the model
//! the index was built with (through its worker, so they batch with embedding
//! requests), and the top results may be re-scored with BLIP's ITM head, as
//! `glimpse search --rerank` does.

use std::path::Path;
use std::sync::Arc;

use glimpse_index::{Hit, SearchIndex, Side};
use glimpse_models::capability::Capability;
use image::RgbImage;

use crate::config::{ModelSpec, ServeConfig};
use crate::error::{ApiError, ApiResult, ServeError};
use crate::registry::{LoadedModel, Models};
use crate::worker::{BatchPolicy, Output, Task};

/// What to look for.
pub enum Query {
    Text(String),
    Image(RgbImage),
}

pub struct Searcher {
    index: SearchIndex,
    /// The index's directory name (clip-retrieval's `indice_name`).
    pub name: String,
    pub embedder: Arc<LoadedModel>,
    /// A model with an ITM head for re-ranking, when one is loaded.
    pub itm: Option<Arc<LoadedModel>>,
}

impl Searcher {
    /// Opens the index and finds (or loads) the model that embedded it.
    pub fn open(
        dir: &Path,
        models: &mut Models,
        cfg: &ServeConfig,
        policy: BatchPolicy,
    ) -> Result<Self, ServeError> {
        let fail = |msg: String| ServeError::Index {
            path: dir.display().to_string(),
            msg,
        };
        let index = SearchIndex::open(dir).map_err(|e| fail(e.to_string()))?;
        let wanted = index.dir.manifest.model_id.clone();
        let embedder = match models.list.iter().find(|m| m.fingerprint == wanted) {
            Some(m) => m.clone(),
            None => {
                // Load the index's own model, in 8 bits when its vectors were.
                let mut cfg = cfg.clone();
                cfg.quantize = wanted
                    .ends_with("+q8")
                    .then_some(glimpse_nn::quant::Quant::Q8);
                let spec = ModelSpec {
                    source: index.dir.manifest.model.clone(),
                    id: None,
                };
                let m = crate::load_model(&spec, &cfg, policy, models)?;
                if m.fingerprint != wanted {
                    return Err(fail(format!(
                        "the index was embedded by {wanted}, but {} is now {}; rebuild the index",
                        spec.source, m.fingerprint
                    )));
                }
                let m = Arc::new(m);
                models.list.push(m.clone());
                m
            }
        };
        let itm = models
            .list
            .iter()
            .find(|m| {
                m.can(Capability::Match)
                    && matches!(
                        m.pipeline.architecture(),
                        glimpse_models::pipeline::Architecture::BlipRetrieval
                            | glimpse_models::pipeline::Architecture::Blip2Retrieval
                    )
            })
            .cloned();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "index".into());
        Ok(Self {
            index,
            name,
            embedder,
            itm,
        })
    }

    /// The `k` best results for `query` over `side`; `rerank` re-scores the top
    /// `rerank` with the ITM head and keeps the best `k` (score: cosine plus the ITM
    /// probability, as BLIP adds the ITC similarity to the ITM score).
    pub async fn search(
        &self,
        query: Query,
        side: Side,
        k: usize,
        rerank: Option<usize>,
    ) -> ApiResult<Vec<Hit>> {
        if let Some(n) = rerank {
            if n < k {
                return Err(ApiError::invalid(
                    "rerank",
                    format!("{n} is less than k ({k})"),
                ));
            }
            let cross = matches!(
                (&query, side),
                (Query::Text(_), Side::Images) | (Query::Image(_), Side::Texts)
            );
            if !cross {
                return Err(ApiError::invalid(
                    "rerank",
                    "re-ranking scores an image against a text: search images by text or texts by image",
                ));
            }
            if self.itm.is_none() {
                return Err(ApiError::invalid(
                    "rerank",
                    "no loaded model has an ITM head (load a BlipForImageTextRetrieval model)",
                ));
            }
        }
        let task = match &query {
            Query::Text(t) => Task::EmbedTexts(vec![t.clone()]),
            Query::Image(img) => Task::EmbedImages(vec![img.clone()]),
        };
        let vector = match self.embedder.worker.run(task).await? {
            Output::Embeddings(mut rows) if rows.len() == 1 => rows.remove(0),
            _ => return Err(self.embedder.worker.lost()),
        };
        let wanted = rerank.unwrap_or(k);
        let mut hits = self
            .index
            .search(side, &vector, &self.embedder.fingerprint, wanted, None)
            .map_err(|e| ApiError::internal(format!("index {}: {e}", self.name)))?;
        if let (Some(_), Some(itm)) = (rerank, &self.itm) {
            self.rerank(itm, &query, &mut hits).await?;
            hits.sort_by(|a, b| b.score.total_cmp(&a.score));
            hits.truncate(k);
        }
        Ok(hits)
    }

    async fn rerank(&self, itm: &LoadedModel, query: &Query, hits: &mut [Hit]) -> ApiResult<()> {
        let no_itm = || ApiError::internal(format!("model `{}` gave no ITM score", itm.id));
        match query {
            Query::Text(text) => {
                for hit in hits.iter_mut() {
                    let bytes = glimpse_index::data::read_image_bytes(&hit.path).map_err(|e| {
                        ApiError::internal(format!("re-ranking result {}: {e}", hit.key))
                    })?;
                    let image = crate::images::decode(&bytes, &hit.path)?;
                    let task = Task::Match {
                        image,
                        texts: vec![text.clone()],
                    };
                    match itm.worker.run(task).await? {
                        Output::Match(m) => hit.score += m.itm.ok_or_else(no_itm)?[0],
                        _ => return Err(itm.worker.lost()),
                    }
                }
            }
            Query::Image(image) => {
                let texts: Vec<String> = hits.iter().filter_map(|h| h.text.clone()).collect();
                if texts.is_empty() {
                    return Ok(());
                }
                let task = Task::Match {
                    image: image.clone(),
                    texts,
                };
                match itm.worker.run(task).await? {
                    Output::Match(m) => {
                        let probs = m.itm.ok_or_else(no_itm)?;
                        for (hit, p) in hits.iter_mut().filter(|h| h.text.is_some()).zip(probs) {
                            hit.score += p;
                        }
                    }
                    _ => return Err(itm.worker.lost()),
                }
            }
        }
        Ok(())
    }
}
