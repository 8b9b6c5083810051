//! Greedy search and multinomial sampling: one token per row per step, as the
//! reference's `_sample`.
//!
//! Per step and row: processors on the raw logits (repetition penalty over prompt and
//! generated ids, eos suppressed before `min_new_tokens`), then with sampling the
//! warpers in the reference's order (temperature, top-k, top-p, each keeping at least
//! one token), then argmax or a draw from the softmax. A row ends with its first eos;
//! the loop ends when every row has ended or after `max_new_tokens` steps.

use crate::config::GenerationConfig;
use crate::error::{GenerateError, Result};
use crate::processors as p;
use crate::step::{row_rng, select_rows, step, step_tokens, Prompt};
use crate::Decoder;
use candle_core::Tensor;

/// Greedy or sampled decoding; `on_step` sees each step's new token per row (`None`
/// for rows that already ended) and returns `false` to stop early.
pub(crate) fn run<D: Decoder>(
    model: &D,
    cache: &mut D::Cache,
    prompt_ids: &Tensor,
    prompt: Prompt,
    cfg: &GenerationConfig,
    on_step: &mut dyn FnMut(&[Option<u32>]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    let copies = if cfg.do_sample {
        cfg.num_return_sequences
    } else {
        1
    };
    let batch = prompt.rows.len();
    let mut logits = step(model, cache, prompt_ids, batch)?;
    let mut seqs = prompt.rows.clone();
    if copies > 1 {
        // Expanding after the prompt step runs the prompt once per row, not per copy.
        let rows: Vec<u32> = (0..batch as u32)
            .flat_map(|r| std::iter::repeat_n(r, copies))
            .collect();
        select_rows(model, cache, &rows, &prompt.device)?;
        logits = rows.iter().map(|&r| logits[r as usize].clone()).collect();
        seqs = rows
            .iter()
            .map(|&r| prompt.rows[r as usize].clone())
            .collect();
    }
    let n = seqs.len();
    let mut rngs: Vec<_> = (0..n).map(|r| row_rng(cfg.seed, r)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done = vec![false; n];
    // The rows still decoding, in cache order: `logits[i]` belongs to row `active[i]`.
    // A row that ends leaves the batch (its cache row is dropped), so the next steps
    // compute only the rows that go on.
    let mut active: Vec<usize> = (0..n).collect();
    for step_no in 0..cfg.max_new_tokens {
        let mut fresh = vec![None; n];
        for (i, &r) in active.iter().enumerate() {
            let row = &mut logits[i];
            p::process(row, &seqs[r], step_no, cfg);
            let token = if cfg.do_sample {
                p::temperature(row, cfg.temperature);
                p::top_k(row, cfg.top_k, 1);
                p::top_p(row, cfg.top_p, 1);
                p::sample(row, &mut rngs[r]).ok_or(GenerateError::EmptyDistribution { row: r })?
            } else {
                p::argmax(row)
            } as u32;
            seqs[r].push(token);
            out[r].push(token);
            fresh[r] = Some(token);
            done[r] = cfg.eos_token_ids.contains(&token);
        }
        let keep_going = on_step(&fresh);
        if !keep_going || done.iter().all(|&d| d) || step_no + 1 == cfg.max_new_tokens {
            break;
        }
        if active.iter().any(|&r| done[r]) {
            let keep: Vec<u32> = (0..active.len() as u32)
                .filter(|&i| !done[active[i as usize]])
                .collect();
            select_rows(model, cache, &keep, &prompt.device)?;
            active.retain(|&r| !done[r]);
        }
        let feed: Vec<u32> = active
            .iter()
            .map(|&r| *seqs[r].last().expect("a decoding row has a token"))
            .collect();
        logits = step_tokens(model, cache, &feed, &prompt.device)?;
    }
    Ok(out)
}
