//! Continuous batching: greedy search or sampling over a batch that sequences join
//! and leave while it decodes.
//!
//! A server gets requests one by one. Instead of waiting for a batch to finish before
//! starting the next, [`generate_joining`] asks its [`Rows`] source between steps for
//! sequences that arrived meanwhile: each comes with its own cache (e.g. its image's
//! keys and values) and prompt, is prefilled on its own, and joins the running batch
//! through [`Decoder::join`]; a row that ends leaves at once (its cache row dropped).
//! Between two steps the source is asked until it has nothing more, so sequences whose
//! prompts differ in length join as several groups at the same point.
//! Every row is decoded exactly as it would be alone: the processors see only its own
//! ids, its sample draws from its own stream (seeded by its tag, or by its own seed
//! when [`Rows::seed`] gives one), and the model keeps its positions through the join.

use candle_core::Tensor;

use crate::config::GenerationConfig;
use crate::error::{GenerateError, Result};
use crate::processors as p;
use crate::step::{row_rng, select_rows, step, step_tokens, Prompt};
use crate::Decoder;

/// Sequences that join: a cache prepared for them and their prompt, `[rows, len]` u32
/// (rows of one group share a prompt length), each row named by a tag.
pub struct Joining<C> {
    pub cache: C,
    pub prompt_ids: Tensor,
    pub tags: Vec<u64>,
}

/// Where joining sequences come from and where their tokens go.
pub trait Rows<C> {
    /// Called between steps with the number of rows decoding now; returns sequences
    /// that join, or `None`. It is called again after every group it returns, until
    /// `None`.
    fn admit(&mut self, running: usize) -> Option<Joining<C>>;

    /// Row `tag`'s own seed, when it has one: its draws are then those of the row
    /// decoded alone (as row 0) with `GenerationConfig::seed` set to it. `None` (the
    /// default) seeds the row from the config's seed and its tag.
    fn seed(&self, tag: u64) -> Option<u64> {
        let _ = tag;
        None
    }

    /// Row `tag`'s own limit on new tokens, when it has one (a request that asked for
    /// fewer, or whose prompt leaves fewer positions); `None` (the default): the
    /// config's `max_new_tokens`.
    fn max_new_tokens(&self, tag: u64) -> Option<usize> {
        let _ = tag;
        None
    }

    /// Row `tag` chose `token`. Returning `false` ends the row now (its client left).
    fn token(&mut self, tag: u64, token: u32) -> bool;

    /// Row `tag` ended: its generated ids, including the eos that ended it.
    fn finished(&mut self, tag: u64, ids: Vec<u32>);
}

struct Row {
    tag: u64,
    seq: Vec<u32>,
    out: Vec<u32>,
    max_new: usize,
    rng: rand::rngs::StdRng,
    logits: Vec<f32>,
}

/// Decodes `first` and every group [`Rows::admit`] hands over, until no row is left
/// and none joins. Greedy search or sampling (`num_beams` and `num_return_sequences`
/// must be 1); every row gets up to `max_new_tokens`
/// (or its own [`Rows::max_new_tokens`]).
pub fn generate_joining<D: Decoder>(
    model: &D,
    first: Joining<D::Cache>,
    cfg: &GenerationConfig,
    source: &mut dyn Rows<D::Cache>,
) -> Result<()> {
    cfg.validate()?;
    if cfg.num_beams > 1 || cfg.num_return_sequences > 1 {
        return Err(GenerateError::config(
            "num_beams",
            "rows join a running batch only with greedy search or sampling, one sequence each",
        ));
    }
    let device = first.prompt_ids.device().clone();
    let (mut cache, mut rows) = prefill(model, first, cfg, &*source)?;
    if let Some(more) = admit_all(model, None, &mut rows, cfg, source)? {
        model.join(&mut cache, more)?;
    }
    loop {
        // Choose a token for every row; rows that end leave.
        let mut keep: Vec<u32> = Vec::with_capacity(rows.len());
        let mut ended = Vec::new();
        for (i, row) in rows.iter_mut().enumerate() {
            let logits = &mut row.logits;
            p::process(logits, &row.seq, row.out.len(), cfg);
            let token = if cfg.do_sample {
                p::temperature(logits, cfg.temperature);
                p::top_k(logits, cfg.top_k, 1);
                p::top_p(logits, cfg.top_p, 1);
                p::sample(logits, &mut row.rng)
                    .ok_or(GenerateError::EmptyDistribution { row: i })?
            } else {
                p::argmax(logits)
            } as u32;
            row.seq.push(token);
            row.out.push(token);
            let listening = source.token(row.tag, token);
            let done =
                !listening || cfg.eos_token_ids.contains(&token) || row.out.len() >= row.max_new;
            if done {
                ended.push(i);
            } else {
                keep.push(i as u32);
            }
        }
        for &i in ended.iter().rev() {
            let row = rows.remove(i);
            source.finished(row.tag, row.out);
        }
        // The rows that go on take one step together.
        let mut live = match (keep.is_empty(), ended.is_empty()) {
            (true, _) => None,
            (false, true) => Some(cache),
            (false, false) => {
                select_rows(model, &mut cache, &keep, &device)?;
                Some(cache)
            }
        };
        if let Some(c) = live.as_mut() {
            let feed: Vec<u32> = rows
                .iter()
                .map(|r| *r.seq.last().expect("a token"))
                .collect();
            let logits = step_tokens(model, c, &feed, &device)?;
            for (row, l) in rows.iter_mut().zip(logits) {
                row.logits = l;
            }
        }
        // Sequences that arrived meanwhile join after their own prefill.
        live = admit_all(model, live, &mut rows, cfg, source)?;
        match live {
            Some(c) if !rows.is_empty() => cache = c,
            _ => return Ok(()),
        }
    }
}

/// Prefills and joins every group `source` hands over now; returns the cache of the
/// rows (`live`'s plus the new ones), `None` when there are none.
fn admit_all<D: Decoder>(
    model: &D,
    mut live: Option<D::Cache>,
    rows: &mut Vec<Row>,
    cfg: &GenerationConfig,
    source: &mut dyn Rows<D::Cache>,
) -> Result<Option<D::Cache>> {
    while let Some(group) = source.admit(rows.len()) {
        let (new_cache, new_rows) = prefill(model, group, cfg, &*source)?;
        match live.as_mut() {
            Some(c) => model.join(c, new_cache)?,
            None => live = Some(new_cache),
        }
        rows.extend(new_rows);
    }
    Ok(live)
}

fn prefill<D: Decoder>(
    model: &D,
    group: Joining<D::Cache>,
    cfg: &GenerationConfig,
    source: &dyn Rows<D::Cache>,
) -> Result<(D::Cache, Vec<Row>)> {
    let Joining {
        mut cache,
        prompt_ids,
        tags,
    } = group;
    let prompt = Prompt::read(&prompt_ids)?;
    if prompt.rows.len() != tags.len() {
        return Err(GenerateError::InvalidPrompt(format!(
            "{} prompt rows for {} tags",
            prompt.rows.len(),
            tags.len()
        )));
    }
    let logits = step(model, &mut cache, &prompt_ids, tags.len())?;
    let rows = tags
        .into_iter()
        .zip(prompt.rows)
        .zip(logits)
        .map(|((tag, seq), logits)| Row {
            tag,
            seq,
            out: Vec::new(),
            max_new: source.max_new_tokens(tag).unwrap_or(cfg.max_new_tokens),
            rng: match source.seed(tag) {
                Some(seed) => row_rng(seed, 0),
                None => row_rng(cfg.seed, tag as usize),
            },
            logits,
        })
        .collect();
    Ok((cache, rows))
}
