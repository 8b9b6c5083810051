//! Beam search, step for step the reference's `_beam_search` (transformers 5.24), so
//! that the chosen ids are identical, not just equally good.
//!
//! Per batch row and step:
//! 1. each running beam's logits go through `log_softmax`, then the processors
//!    (repetition penalty over prompt + beam, eos suppression before
//!    `min_new_tokens`, and with `do_sample` the warpers keeping `n_eos + 1` tokens),
//!    and the beam's running score is added;
//! 2. the best `K = max(2, 1 + n_eos) * num_beams` of the `num_beams * vocab`
//!    candidates are kept (sampled without replacement with `do_sample`), best first;
//! 3. a candidate "hits" when it ends in eos or reaches `max_new_tokens`;
//! 4. the next running beams are the best `num_beams` candidates, hits pushed down by
//!    -1e9 (K is large enough that enough non-hits exist);
//! 5. hits among the first `num_beams` candidates enter the finished pool with
//!    score `sum_logprob / generated_len^length_penalty` (the prompt is not counted;
//!    eos is), unless the row is closed; the pool keeps its best `num_beams`;
//! 6. the row closes when no running beam can beat the pool (see [`EarlyStopping`]).
//!
//! The reference's masking by -1e9 in f32 is reproduced literally (including the
//! initial -1e9 pool placeholders and the -1e9 scores of beams 1.. before the first
//! step, which keep the first step's candidates on beam 0), so even its rounding
//! matches. Selections order by score, then by lower index, which equals
//! `torch.topk` wherever scores are distinct.
//!
//! The model runs the prompt once per batch row; the cache is then expanded into
//! `num_beams` copies per row with `select_rows` (the reference expands before the
//! prompt step; all copies are equal, so the outcome is the same) and afterwards
//! reordered with `select_rows` after every step to follow the surviving beams.

use candle_core::Tensor;

use crate::config::{EarlyStopping, GenerationConfig};
use crate::error::{GenerateError, Result};
use crate::processors as p;
use crate::step::{row_rng, select_rows, step, step_tokens, Prompt};
use crate::Decoder;

/// The reference's "minus infinity" for masked beams; added in f32 like it does.
const MASKED: f32 = -1.0e9;

/// Finished hypotheses of one batch row: `num_beams` slots, best first.
struct Pool {
    scores: Vec<f32>,
    seqs: Vec<Vec<u32>>,
    finished: Vec<bool>,
}

/// The state of one batch row.
struct Row {
    /// Generated ids of each running beam (prompt excluded).
    beams: Vec<Vec<u32>>,
    scores: Vec<f32>,
    pool: Pool,
    /// The reference's `is_early_stop_heuristic_unsatisfied`: the pool may still improve.
    open: bool,
}

/// One kept continuation: source beam, token, accumulated score, whether it hits.
struct Candidate {
    beam: usize,
    token: u32,
    score: f32,
    hit: bool,
}

pub(crate) fn run<D: Decoder>(
    model: &D,
    cache: &mut D::Cache,
    prompt_ids: &Tensor,
    prompt: Prompt,
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    let nb = cfg.num_beams;
    let batch = prompt.rows.len();
    let n_eos = cfg.eos_token_ids.len();
    let keep = 2usize.max(1 + n_eos) * nb;
    let first = step(model, cache, prompt_ids, batch)?;
    let vocab = first[0].len();
    if keep > nb * vocab {
        return Err(GenerateError::config(
            "num_beams",
            format!("needs {keep} candidates per step but the vocabulary has {vocab} tokens"),
        ));
    }
    let expand: Vec<u32> = (0..batch as u32)
        .flat_map(|r| std::iter::repeat_n(r, nb))
        .collect();
    select_rows(model, cache, &expand, &prompt.device)?;
    let mut logits: Vec<Vec<f32>> = expand.iter().map(|&r| first[r as usize].clone()).collect();

    let mut rows: Vec<Row> = (0..batch)
        .map(|_| Row {
            beams: vec![Vec::new(); nb],
            scores: (0..nb).map(|j| if j == 0 { 0.0 } else { MASKED }).collect(),
            pool: Pool {
                scores: vec![MASKED; nb],
                seqs: vec![Vec::new(); nb],
                finished: vec![false; nb],
            },
            open: true,
        })
        .collect();
    let mut rngs: Vec<_> = (0..batch).map(|r| row_rng(cfg.seed, r)).collect();
    // Beam sampling keeps one more token than there are eos ids (2 without eos).
    let min_keep = if n_eos == 0 { 2 } else { n_eos + 1 };

    for generated in 0.. {
        let reaches_max = generated + 1 >= cfg.max_new_tokens;
        let mut all_hit = true;
        let mut sources = Vec::with_capacity(batch * nb);
        let mut feed = Vec::with_capacity(batch * nb);
        for (i, row) in rows.iter_mut().enumerate() {
            // 1. Accumulated, processed log-probs of every (beam, token).
            let mut flat = Vec::with_capacity(nb * vocab);
            for j in 0..nb {
                let mut lp = std::mem::take(&mut logits[i * nb + j]);
                p::log_softmax(&mut lp);
                let seen: Vec<u32> = prompt.rows[i]
                    .iter()
                    .chain(&row.beams[j])
                    .copied()
                    .collect();
                p::process(&mut lp, &seen, generated, cfg);
                if cfg.do_sample {
                    p::temperature(&mut lp, cfg.temperature);
                    p::top_k(&mut lp, cfg.top_k, min_keep);
                    p::top_p(&mut lp, cfg.top_p, min_keep);
                }
                flat.extend(lp.iter().map(|&x| x + row.scores[j]));
            }
            // 2. The K best (or sampled) continuations, best first.
            let picked = if cfg.do_sample {
                let mut s = p::sample_without_replacement(&flat, keep, &mut rngs[i]);
                if s.len() < keep {
                    return Err(GenerateError::EmptyDistribution { row: i });
                }
                let values: Vec<f32> = s.iter().map(|&k| flat[k]).collect();
                let order = p::top_k_indices(&values, keep);
                s = order.iter().map(|&o| s[o]).collect();
                s
            } else {
                p::top_k_indices(&flat, keep)
            };
            // 3. Which continuations end here.
            let cands: Vec<Candidate> = picked
                .iter()
                .map(|&k| {
                    let token = (k % vocab) as u32;
                    let hit = reaches_max || cfg.eos_token_ids.contains(&token);
                    Candidate {
                        beam: k / vocab,
                        token,
                        score: flat[k],
                        hit,
                    }
                })
                .collect();
            all_hit &= cands.iter().all(|c| c.hit);
            // 5 (before 4, which replaces the beams it reads). New finished hypotheses.
            update_pool(row, &cands, generated + 1, cfg);
            // 4. Next running beams: the best non-hits.
            let masked: Vec<f32> = cands
                .iter()
                .map(|c| if c.hit { c.score + MASKED } else { c.score })
                .collect();
            let next = p::top_k_indices(&masked, nb);
            let old = std::mem::take(&mut row.beams);
            row.beams = next
                .iter()
                .map(|&c| {
                    let mut seq = old[cands[c].beam].clone();
                    seq.push(cands[c].token);
                    seq
                })
                .collect();
            row.scores = next.iter().map(|&c| masked[c]).collect();
            sources.extend(next.iter().map(|&c| (i * nb + cands[c].beam) as u32));
            feed.extend(next.iter().map(|&c| cands[c].token));
            // 6. Can the pool still improve?
            row.open &= may_improve(row, generated + 1, cfg);
        }
        let all_full = rows.iter().all(|r| r.pool.finished.iter().all(|&f| f));
        let stop = !rows.iter().any(|r| r.open)
            || (cfg.early_stopping == EarlyStopping::WhenFull && all_full)
            || all_hit;
        if stop {
            break;
        }
        select_rows(model, cache, &sources, &prompt.device)?;
        logits = step_tokens(model, cache, &feed, &prompt.device)?;
    }
    Ok(rows
        .into_iter()
        .flat_map(|r| r.pool.seqs.into_iter().take(cfg.num_return_sequences))
        .collect())
}

/// `len^length_penalty` computed as the reference does (f64 power, then f32 division).
fn length_norm(len: usize, cfg: &GenerationConfig) -> f32 {
    (len as f64).powf(f64::from(cfg.length_penalty)) as f32
}

/// Merges this step's hits into the pool with the reference's masking: only hits
/// among the first `num_beams` candidates count, and none once the row is closed or
/// (with `early_stopping = true`) already full.
fn update_pool(row: &mut Row, cands: &[Candidate], len: usize, cfg: &GenerationConfig) {
    let nb = cfg.num_beams;
    let norm = length_norm(len, cfg);
    let full =
        cfg.early_stopping == EarlyStopping::WhenFull && row.pool.finished.iter().all(|&f| f);
    let mut scores = row.pool.scores.clone();
    let mut done = row.pool.finished.clone();
    for (c, cand) in cands.iter().enumerate() {
        let mut s = cand.score / norm;
        if full {
            s += MASKED;
        }
        if !row.open {
            s += MASKED;
        }
        let just_finished = cand.hit && c < nb;
        if !just_finished {
            s += MASKED;
        }
        scores.push(s);
        done.push(just_finished);
    }
    let best = p::top_k_indices(&scores, nb);
    let seq_of = |k: usize| -> Vec<u32> {
        if k < nb {
            row.pool.seqs[k].clone()
        } else {
            let cand = &cands[k - nb];
            let mut seq = row.beams[cand.beam].clone();
            seq.push(cand.token);
            seq
        }
    };
    let seqs: Vec<Vec<u32>> = best.iter().map(|&k| seq_of(k)).collect();
    row.pool = Pool {
        scores: best.iter().map(|&k| scores[k]).collect(),
        seqs,
        finished: best.iter().map(|&k| done[k]).collect(),
    };
}

/// The reference's early-stop heuristic after a step: the best running beam, scored at
/// the most favourable length the setting allows, against the worst pooled score; a
/// pool with an unfinished slot can always improve.
fn may_improve(row: &Row, generated: usize, cfg: &GenerationConfig) -> bool {
    let horizon = if cfg.early_stopping == EarlyStopping::Never && cfg.length_penalty > 0.0 {
        cfg.max_new_tokens
    } else {
        generated
    };
    let best = row.scores[0] / length_norm(horizon, cfg);
    let worst = row
        .pool
        .scores
        .iter()
        .copied()
        .fold(f32::INFINITY, f32::min);
    row.pool
        .finished
        .iter()
        .any(|&f| best > if f { worst } else { MASKED })
}
