//! Image-text retrieval: recall at 1/5/10 both ways from cosine similarities, with
//! BLIP's optional ITM re-ranking of each query's top K.

use std::collections::{BTreeSet, HashMap};

use glimpse_models::pipeline::Pipeline;
use serde_json::Value;

use super::{embed_texts, similarities};
use crate::evidence::{spread, Evidence, RetrievalQuery, TaskEvidence, Thumbnail, MAX_ITEMS};
use crate::metrics;
use crate::reader::{metric_error, nothing_usable, progress_bar, split, Reader};
use crate::records::retrieval_texts;
use crate::{Direction, Error, EvalOptions, Metrics, Result, RetrievalMetrics, Task};

/// Indices of the `k` largest values, best first, the lower index first on ties.
fn top_k(values: impl Iterator<Item = f32>, k: usize) -> Vec<usize> {
    let mut idx: Vec<(usize, f32)> = values.enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx.into_iter().take(k).map(|(i, _)| i).collect()
}

pub(crate) fn retrieval(
    p: &Pipeline,
    reader: &mut Reader,
    data: &str,
    opts: &EvalOptions,
) -> Result<(usize, Metrics, Option<Evidence>)> {
    let select = |meta: &Value| {
        let t = retrieval_texts(meta);
        if t.is_empty() {
            Err("no caption text (`caption`, `captions` or `clean_caption`)".to_string())
        } else {
            Ok(t)
        }
    };
    let (mut image_embeds, mut keys) = (Vec::new(), Vec::new());
    let (mut texts, mut text_to_image) = (Vec::new(), Vec::new());
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        let (batch_keys, images, _, batch_texts) = split(batch);
        image_embeds.push(p.image_embeds(&images)?);
        for (key, ts) in batch_keys.into_iter().zip(batch_texts) {
            text_to_image.extend(std::iter::repeat_n(keys.len(), ts.len()));
            texts.extend(ts);
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(nothing_usable(reader, "no image with a caption"));
    }
    let (n, m) = (keys.len(), texts.len());
    let sim = similarities(&image_embeds, &embed_texts(p, &texts, opts.batch_size)?)?;
    let err = metric_error(Task::Retrieval);
    let (ranks, t2i_scores) = match opts.rerank {
        None => (
            metrics::retrieval_ranks(&sim, n, &text_to_image).map_err(&err)?,
            None,
        ),
        Some(k) => {
            let (i2t, t2i) = rerank(p, data, opts, &keys, &texts, &sim, k)?;
            let ranks = metrics::RetrievalRanks {
                i2t: metrics::retrieval_ranks(&i2t, n, &text_to_image)
                    .map_err(&err)?
                    .i2t,
                t2i: metrics::retrieval_ranks(&t2i, n, &text_to_image)
                    .map_err(&err)?
                    .t2i,
            };
            (ranks, Some(t2i))
        }
    };
    let evidence = if opts.evidence {
        let scores = t2i_scores.as_deref().unwrap_or(&sim);
        Some(evidence(data, opts, &keys, &texts, &text_to_image, scores)?)
    } else {
        None
    };
    let s = metrics::RetrievalScores::from_ranks(&ranks).map_err(&err)?;
    let dir = |r: [f64; 3], mean_rank, median_rank| Direction {
        r1: r[0],
        r5: r[1],
        r10: r[2],
        mean_rank,
        median_rank,
    };
    let r_mean = (s.i2t.iter().sum::<f64>() + s.t2i.iter().sum::<f64>()) / 6.0;
    Ok((
        n,
        Metrics::Retrieval(RetrievalMetrics {
            i2t: dir(s.i2t, s.i2t_mean_rank, s.i2t_median_rank),
            t2i: dir(s.t2i, s.t2i_mean_rank, s.t2i_median_rank),
            r_mean,
            n_images: n,
            n_texts: m,
            rerank: opts.rerank,
        }),
        evidence,
    ))
}

/// Text queries with their top-5 images: evenly spread queries, then queries whose
/// right image is not in the top 5, up to [`MAX_ITEMS`]; the thumbnails come from a
/// second pass over the data.
fn evidence(
    data: &str,
    opts: &EvalOptions,
    keys: &[String],
    texts: &[String],
    text_to_image: &[usize],
    scores: &[f32],
) -> Result<Evidence> {
    let (n, m) = (keys.len(), texts.len());
    let column = |t: usize| (0..n).map(move |i| scores[i * m + t]);
    let rank_of = |t: usize| {
        let right = scores[text_to_image[t] * m + t];
        // Ties rank below the right image, as in the metric's lower-index rule.
        1 + column(t)
            .enumerate()
            .filter(|&(i, s)| s > right || (s == right && i < text_to_image[t]))
            .count()
    };
    let mut chosen = spread(m, MAX_ITEMS * 2 / 3);
    let misses: Vec<usize> = (0..m)
        .filter(|t| !chosen.contains(t) && rank_of(*t) > 5)
        .take(MAX_ITEMS - chosen.len())
        .collect();
    chosen.extend(misses);
    let queries: Vec<RetrievalQuery> = chosen
        .into_iter()
        .map(|t| RetrievalQuery {
            text: texts[t].clone(),
            truth: keys[text_to_image[t]].clone(),
            top: top_k(column(t), 5)
                .into_iter()
                .map(|i| (keys[i].clone(), scores[i * m + t]))
                .collect(),
            rank: rank_of(t),
        })
        .collect();
    let mut wanted: BTreeSet<&str> = BTreeSet::new();
    for q in &queries {
        wanted.insert(&q.truth);
        wanted.extend(q.top.iter().map(|(k, _)| k.as_str()));
    }
    let mut images = std::collections::BTreeMap::new();
    read_again(data, opts, |ex| {
        if wanted.contains(ex.key.as_str()) {
            images.insert(ex.key.clone(), Thumbnail::of(&ex.image));
        }
        Ok(())
    })?;
    Ok(Evidence {
        images,
        task: TaskEvidence::Retrieval { queries },
    })
}

/// The usable retrieval samples of `data` read once more, in the first pass's order,
/// each handed to `f` (the evaluation keeps no image between passes).
fn read_again(
    data: &str,
    opts: &EvalOptions,
    mut f: impl FnMut(glimpse_data::dataset::Example) -> Result<()>,
) -> Result<()> {
    let mut again = Reader::open(data, opts, false)?;
    loop {
        let batch = again.batch(opts.batch_size, |meta| {
            (!retrieval_texts(meta).is_empty())
                .then_some(())
                .ok_or(String::new())
        })?;
        if batch.is_empty() {
            return Ok(());
        }
        for (ex, ()) in batch {
            f(ex)?;
        }
    }
}

/// BLIP's re-ranking: each image's top `k` texts and each text's top `k` images by
/// ITC are re-scored by ITM probability, which puts them above every other candidate
/// (ITM order among them, ITC order below). Returns the image->text and text->image
/// score matrices. The images are read again (same order) so none is kept in memory;
/// each is scored once against every text that needs it.
fn rerank(
    p: &Pipeline,
    data: &str,
    opts: &EvalOptions,
    keys: &[String],
    texts: &[String],
    sim: &[f32],
    k: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, m) = (keys.len(), texts.len());
    let i2t_top: Vec<Vec<usize>> = (0..n)
        .map(|i| top_k(sim[i * m..(i + 1) * m].iter().copied(), k))
        .collect();
    let mut t2i_of_image: Vec<Vec<usize>> = vec![Vec::new(); n];
    for t in 0..m {
        for i in top_k((0..n).map(|i| sim[i * m + t]), k) {
            t2i_of_image[i].push(t);
        }
    }
    let (mut i2t, mut t2i) = (sim.to_vec(), sim.to_vec());
    // Probabilities lie in [0, 1] and cosines in [-1, 1]: +2 lifts the re-scored ones.
    const LIFT: f32 = 2.0;
    let bar = progress_bar(opts.progress, n, "re-ranking");
    let mut i = 0;
    read_again(data, opts, |ex| {
        if keys.get(i) != Some(&ex.key) {
            return Err(Error::Eval(format!(
                "{data}: the second pass for --rerank read sample {} where the first \
                 read {:?}; did the data change during evaluation?",
                ex.key,
                keys.get(i)
            )));
        }
        let mut need: BTreeSet<usize> = i2t_top[i].iter().copied().collect();
        need.extend(&t2i_of_image[i]);
        let need: Vec<usize> = need.into_iter().collect();
        let mut itm = HashMap::new();
        for chunk in need.chunks(opts.batch_size) {
            let refs: Vec<&str> = chunk.iter().map(|&t| texts[t].as_str()).collect();
            let scores = p.match_scores(&ex.image, &refs)?;
            let probs = scores
                .itm
                .ok_or_else(|| Error::Eval("--rerank: the model returned no ITM scores".into()))?;
            itm.extend(chunk.iter().copied().zip(probs));
        }
        for &t in &i2t_top[i] {
            i2t[i * m + t] = LIFT + itm[&t];
        }
        for &t in &t2i_of_image[i] {
            t2i[i * m + t] = LIFT + itm[&t];
        }
        i += 1;
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    if i != n {
        return Err(Error::Eval(format!(
            "{data}: the second pass for --rerank read {i} images, the first {n}"
        )));
    }
    Ok((i2t, t2i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_prefers_lower_index_on_ties() {
        assert_eq!(top_k([0.5, 0.9, 0.5, 0.1].into_iter(), 3), vec![1, 0, 2]);
        assert_eq!(top_k([0.5].into_iter(), 3), vec![0]);
    }
}
