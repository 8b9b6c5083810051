//! `glimpse search`: the nearest images (or captions) of an index to a text or an
//! image, optionally re-ranked by BLIP's image-text matching head.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use glimpse_index::data::read_image_bytes;
use glimpse_index::{Hit, SearchIndex, Side};
use serde::Serialize;

use super::index_model::{PipelineEmbedder, Q8_SUFFIX};
use super::{check_texts, read_image, Bundled};
use crate::cli::ModelArgs;
use crate::output::{outln, print_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Over {
    Images,
    Texts,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The query embedding model; by default the model the index was built with.
    #[command(flatten)]
    pub common: ModelArgs,
    /// The index directory (`glimpse index build --out`).
    #[arg(long)]
    pub index: PathBuf,
    /// A text query.
    #[arg(long, conflicts_with = "image", required_unless_present = "image")]
    pub text: Option<String>,
    /// An image query.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Search the images (default) or the captions of the index.
    #[arg(long, value_enum, default_value_t = Over::Images)]
    pub over: Over,
    /// Number of results.
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// HNSW candidate list size (default: the index's).
    #[arg(long)]
    pub ef: Option<usize>,
    /// Re-score the top N with an image-text matching (ITM) head and return the best K;
    /// the score becomes the index's cosine plus the ITM probability, as BLIP's
    /// retrieval adds the first stage's ITC similarity to the ITM score.
    #[arg(long)]
    pub rerank: Option<usize>,
    /// The ITM model for `--rerank` (default: the bundled BLIP retrieval model).
    #[arg(long, requires = "rerank")]
    pub itm_model: Option<String>,
}

#[derive(Serialize)]
struct SearchOutput {
    results: Vec<Hit>,
}

pub fn run(args: SearchArgs) -> Result<()> {
    if args.k == 0 {
        bail!("--k must be at least 1");
    }
    if let Some(text) = &args.text {
        check_texts(std::slice::from_ref(text), "--text")?;
    }
    let query_image = match &args.image {
        Some(p) => Some(read_image(p).with_context(|| format!("--image {}", p.display()))?),
        None => None,
    };
    let side = match args.over {
        Over::Images => Side::Images,
        Over::Texts => Side::Texts,
    };
    if let Some(n) = args.rerank {
        if n < args.k {
            bail!("--rerank {n} must be at least --k {}", args.k);
        }
        if args.text.is_some() && side == Side::Texts {
            bail!("--rerank scores an image against a text; a text query over texts has no image");
        }
        if args.image.is_some() && side == Side::Images {
            bail!(
                "--rerank scores an image against a text; an image query over images has no text"
            );
        }
    }
    let index = SearchIndex::open(&args.index)?;
    let model_args = ModelArgs {
        model: Some(match &args.common.model {
            Some(m) => m.clone(),
            None => index.dir.manifest.model.clone(),
        }),
        device: args.common.device.clone(),
        json: args.common.json,
    };
    // Queries are embedded as the index's vectors were: with 8-bit encoders for a
    // `--quantize q8` index.
    let quantize = index
        .dir
        .manifest
        .model_id
        .ends_with(Q8_SUFFIX)
        .then_some(glimpse_nn::quant::Quant::Q8);
    let embedder = PipelineEmbedder::load(&model_args, quantize)?;
    let query = match (&args.text, &query_image) {
        (Some(t), _) => embedder.pipeline.text_embeds(&[t.as_str()])?,
        (None, Some(img)) => embedder.pipeline.image_embeds(std::slice::from_ref(img))?,
        (None, None) => unreachable!("clap requires --text or --image"),
    };
    let query: Vec<f32> = query.squeeze(0)?.to_vec1()?;
    let id = glimpse_index::Embedder::model_id(&embedder);
    let wanted = args.rerank.unwrap_or(args.k);
    let mut hits = index.search(side, &query, id, wanted, args.ef)?;

    if args.rerank.is_some() {
        let itm_args = ModelArgs {
            model: args.itm_model.clone(),
            device: args.common.device.clone(),
            json: args.common.json,
        };
        let itm = super::load(&itm_args, Bundled::Retrieval)?;
        if itm.as_match().is_none() {
            bail!("--itm-model: the model cannot match images and texts");
        }
        let no_itm = || anyhow::anyhow!("--itm-model: the model has no ITM head");
        match (&args.text, &query_image) {
            (Some(text), _) => {
                for hit in &mut hits {
                    let bytes = read_image_bytes(&hit.path)
                        .with_context(|| format!("re-ranking result {}", hit.key))?;
                    let img = glimpse_data::decode_image(&bytes, &hit.path)?;
                    let scores = itm.match_scores(&img, &[text.as_str()])?;
                    hit.score += scores.itm.ok_or_else(no_itm)?[0];
                }
            }
            (None, Some(img)) => {
                let texts: Vec<&str> = hits.iter().filter_map(|h| h.text.as_deref()).collect();
                if !texts.is_empty() {
                    let probs = itm.match_scores(img, &texts)?.itm.ok_or_else(no_itm)?;
                    for (hit, p) in hits.iter_mut().zip(probs) {
                        hit.score += p;
                    }
                }
            }
            (None, None) => unreachable!(),
        }
        hits.sort_by(|a, b| b.score.total_cmp(&a.score));
        hits.truncate(args.k);
    }

    if args.common.json {
        return print_json(&SearchOutput { results: hits });
    }
    for (i, h) in hits.iter().enumerate() {
        outln!(
            "{:>3}. {:.4}  {}  {}  {}",
            i + 1,
            h.score,
            h.key,
            h.path,
            h.text.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
