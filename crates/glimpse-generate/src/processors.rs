//! Logits processing on one row of scores, in plain Rust on the CPU: the reference's
//! processors (repetition penalty, eos suppression) and sampling warpers
//! (temperature, top-k, top-p), plus the selection helpers the strategies share.
//!
//! Each function works on a `&mut [f32]` of one row so that the strategies decide
//! which rows need work (finished rows need none). Arithmetic stays in f32 where the
//! reference computes in f32, so scores that decide beam order round the same way.

use std::cmp::Ordering;

use rand::Rng;

/// NaN would break the ordering that selection relies on; it ranks below everything.
fn rank_key(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else {
        x
    }
}

/// Descending by value, ties by lower index: equal to `torch.topk`/`argmax` for
/// distinct values, and deterministic for equal ones.
fn desc(values: &[f32], a: usize, b: usize) -> Ordering {
    rank_key(values[b])
        .partial_cmp(&rank_key(values[a]))
        .unwrap_or(Ordering::Equal)
        .then(a.cmp(&b))
}

/// Index of the largest value, the first one on ties (as `torch.argmax`).
pub fn argmax(values: &[f32]) -> usize {
    (0..values.len())
        .min_by(|&a, &b| desc(values, a, b))
        .unwrap_or(0)
}

/// Indices of the `k` largest values, best first. Linear selection, then a sort of
/// the `k` winners only, so a 150k-entry row costs O(n).
pub fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| desc(values, a, b));
        idx.truncate(k);
    }
    idx.sort_unstable_by(|&a, &b| desc(values, a, b));
    idx
}

/// `log_softmax` in place: `(x - max) - ln(sum(exp(x - max)))`; the sum runs in f64
/// so that its rounding stays far below the f32 result's.
pub fn log_softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return; // all -inf (or empty): nothing is reachable, leave it so.
    }
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    let log_sum = sum.ln() as f32;
    for x in row.iter_mut() {
        *x = (*x - max) - log_sum;
    }
}

/// Repetition penalty over the ids already in the sequence, each id once: negative
/// scores are multiplied by `penalty`, others divided, so a penalty above 1 always
/// lowers the token. Ids outside the row are ignored as in the reference.
pub fn repetition_penalty(row: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut ids: Vec<usize> = seen
        .iter()
        .map(|&t| t as usize)
        .filter(|&t| t < row.len())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    for t in ids {
        let s = row[t];
        row[t] = if s < 0.0 { s * penalty } else { s / penalty };
    }
}

/// Bans every token that would repeat an `n`-gram already in `seq` (the reference's
/// `no_repeat_ngram_size`): where the last `n - 1` ids of `seq` occurred before, the
/// token that followed them there is set to -inf. `n = 0` disables it; nothing is
/// banned until `seq` holds `n - 1` ids.
pub fn no_repeat_ngram(row: &mut [f32], seq: &[u32], n: usize) {
    if n == 0 || seq.len() + 1 < n {
        return;
    }
    let prefix = &seq[seq.len() + 1 - n..];
    for window in seq.windows(n) {
        if &window[..n - 1] == prefix {
            if let Some(s) = row.get_mut(window[n - 1] as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// The reference's `exponential_decay_length_penalty = (start, factor)`: once more
/// than `start` tokens were generated (`generated - start = k > 0`), each end token's
/// score `s` becomes `s + |s| (factor^k - 1)`, so a sequence that runs past the usual
/// length grows ever likelier to end. Non-finite scores (a suppressed end) stay.
pub fn length_decay(row: &mut [f32], eos: &[u32], generated: usize, decay: Option<(usize, f32)>) {
    let Some((start, factor)) = decay else { return };
    if generated <= start {
        return;
    }
    let k = (generated - start) as i32;
    let grow = (f64::from(factor).powi(k) - 1.0) as f32;
    for &t in eos {
        if let Some(s) = row.get_mut(t as usize) {
            if s.is_finite() {
                *s += s.abs() * grow;
            }
        }
    }
}

/// The reference's logits processors, in its order, on one row: repetition penalty
/// and n-gram bans over `seen` (prompt and generated ids), eos suppressed while fewer
/// than `min_new_tokens` of them were `generated`, then the length decay. Every
/// strategy runs these before its own warpers and selection.
pub fn process(row: &mut [f32], seen: &[u32], generated: usize, cfg: &crate::GenerationConfig) {
    repetition_penalty(row, seen, cfg.repetition_penalty);
    no_repeat_ngram(row, seen, cfg.no_repeat_ngram_size);
    if generated < cfg.min_new_tokens {
        suppress(row, &cfg.eos_token_ids);
    }
    length_decay(row, &cfg.eos_token_ids, generated, cfg.length_decay);
}

/// Sets the given tokens to -inf (eos while `min_new_tokens` is not reached).
pub fn suppress(row: &mut [f32], tokens: &[u32]) {
    for &t in tokens {
        if let Some(s) = row.get_mut(t as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// Divides by the temperature (callers skip it at 1, as the reference does).
pub fn temperature(row: &mut [f32], t: f32) {
    if t != 1.0 {
        row.iter_mut().for_each(|x| *x /= t);
    }
}

/// Keeps tokens whose score reaches the `max(top_k, min_keep)`-th best score (ties
/// at the boundary survive, so more than k may remain); the rest become -inf.
pub fn top_k(row: &mut [f32], top_k: usize, min_keep: usize) {
    if top_k == 0 {
        return;
    }
    let k = top_k.max(min_keep).min(row.len());
    let Some(&last) = top_k_indices(row, k).last() else {
        return;
    };
    let threshold = row[last];
    for x in row.iter_mut() {
        if *x < threshold {
            *x = f32::NEG_INFINITY;
        }
    }
}

/// Nucleus filter as the reference states it: walking the tokens from the worst up,
/// remove those whose cumulative probability is still `<= 1 - top_p`; the best
/// `min_keep` always stay. Tokens already at -inf carry no probability and stay
/// removed, so only the finite ones are sorted.
pub fn top_p(row: &mut [f32], top_p: f32, min_keep: usize) {
    if top_p >= 1.0 {
        return;
    }
    let mut finite: Vec<usize> = (0..row.len())
        .filter(|&i| row[i] > f32::NEG_INFINITY)
        .collect();
    // Ascending, so reverse the descending order (ties: higher index first).
    finite.sort_unstable_by(|&a, &b| desc(row, b, a));
    let max = finite.last().map_or(0.0, |&i| row[i]);
    let total: f64 = finite.iter().map(|&i| f64::from(row[i] - max).exp()).sum();
    let cut = 1.0 - f64::from(top_p);
    let keep_from = finite.len().saturating_sub(min_keep);
    let mut cumulative = 0.0f64;
    for (rank, &i) in finite.iter().enumerate() {
        cumulative += f64::from(row[i] - max).exp() / total;
        if rank < keep_from && cumulative <= cut {
            row[i] = f32::NEG_INFINITY;
        }
    }
}

/// Draws one token from `softmax(row)`; `None` when nothing has positive mass.
pub fn sample(row: &[f32], rng: &mut impl Rng) -> Option<usize> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let weights: Vec<f64> = row.iter().map(|&x| f64::from(x - max).exp()).collect();
    draw(&weights, rng)
}

/// Draws an index with probability proportional to `weights` (non-negative).
pub fn draw(weights: &[f64], rng: &mut impl Rng) -> Option<usize> {
    let total: f64 = weights.iter().filter(|w| w.is_finite()).sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let mut target = rng.random::<f64>() * total;
    let mut last = None;
    for (i, &w) in weights.iter().enumerate() {
        if !(w > 0.0 && w.is_finite()) {
            continue;
        }
        last = Some(i);
        if target < w {
            return Some(i);
        }
        target -= w;
    }
    last // rounding left a sliver past the end: the last token with mass takes it.
}

/// `k` draws without replacement from `softmax(row)`, as beam sampling needs;
/// fewer when fewer tokens have mass.
pub fn sample_without_replacement(row: &[f32], k: usize, rng: &mut impl Rng) -> Vec<usize> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return Vec::new();
    }
    let mut weights: Vec<f64> = row.iter().map(|&x| f64::from(x - max).exp()).collect();
    let mut out = Vec::with_capacity(k);
    while out.len() < k {
        let Some(i) = draw(&weights, rng) else { break };
        weights[i] = 0.0;
        out.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_repeat_ngram_bans_the_token_that_repeats_an_ngram() {
        // "4 7 9 4 7": the bigram prefix "7" was followed by 9 and the trigram
        // prefix "4 7" by 9, so 9 is banned at n = 2 and n = 3; nothing else.
        let seq = [4u32, 7, 9, 4, 7];
        for n in [2, 3] {
            let mut row = vec![0.0f32; 12];
            no_repeat_ngram(&mut row, &seq, n);
            let banned: Vec<usize> = (0..12).filter(|&i| row[i].is_infinite()).collect();
            assert_eq!(banned, vec![9], "n = {n}");
        }
        // n = 4: "9 4 7" occurred once, as the end: nothing to ban.
        let mut row = vec![0.0f32; 12];
        no_repeat_ngram(&mut row, &seq, 4);
        assert!(row.iter().all(|x| x.is_finite()));
        // A repeated unigram (n = 1) bans every token seen; n = 0 nothing.
        let mut row = vec![0.0f32; 12];
        no_repeat_ngram(&mut row, &seq, 1);
        assert_eq!(row.iter().filter(|x| x.is_infinite()).count(), 3);
        let mut row = vec![0.0f32; 12];
        no_repeat_ngram(&mut row, &seq, 0);
        assert!(row.iter().all(|x| x.is_finite()));
        // Shorter than n - 1: nothing yet; ids past the row are ignored.
        let mut row = vec![0.0f32; 5];
        no_repeat_ngram(&mut row, &[3], 3);
        no_repeat_ngram(&mut row, &[40, 41, 40], 2);
        assert!(row.iter().all(|x| x.is_finite()));
    }
}
