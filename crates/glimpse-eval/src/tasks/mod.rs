//! The four tasks, each a function from a pipeline and a reader to the number of
//! images evaluated and the task's metrics, and what they share.

pub(crate) mod caption;
pub(crate) mod retrieval;
pub(crate) mod vqa;
pub(crate) mod zero_shot;

use candle_core::Tensor;
use glimpse_models::pipeline::{cosine, Pipeline};

use crate::Result;

/// `[n, m]` cosine similarities of two lists of embedding batches, row-major.
pub(crate) fn similarities(images: &[Tensor], texts: &[Tensor]) -> Result<Vec<f32>> {
    let a = Tensor::cat(images, 0)?; // [n, d]
    let b = Tensor::cat(texts, 0)?; // [m, d]
    Ok(cosine(&a, &b)?.flatten_all()?.to_vec1::<f32>()?)
}

pub(crate) fn embed_texts(p: &Pipeline, texts: &[String], batch: usize) -> Result<Vec<Tensor>> {
    texts
        .chunks(batch)
        .map(|c| {
            let refs: Vec<&str> = c.iter().map(String::as_str).collect();
            Ok(p.text_embeds(&refs)?)
        })
        .collect()
}
