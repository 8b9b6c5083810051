//! Decoding for Glimpse: greedy search, beam search and sampling over any model that
//! implements [`Decoder`].
//!
//! A model exposes one step: given new token ids and its cache, return the logits of
//! the last position. Everything about choosing tokens (logits processors, beams,
//! stopping) is here, so each model family gets every strategy.
//!
//! Design choices:
//! - Token selection runs on the CPU in plain Rust over `Vec<f32>` rows: it is a few
//!   linear passes per row (a selection, never a full sort, for beam candidates),
//!   cheap next to a model step, and it lets the code follow the reference's
//!   semantics line by line instead of through tensor tricks.
//! - Greedy and beam search reproduce the reference (`transformers` 5.24
//!   `generate`) exactly; the tests drive both with the same toy model and compare
//!   ids (`tools/make_generate_fixtures.py`). Sampling follows the reference's order
//!   of processors but draws from `rand`'s `StdRng`, which cannot equal torch's RNG:
//!   samples are reproducible per seed, not equal to the reference's.
//! - Output: per prompt row, the generated ids after the prompt, ending with the eos
//!   token when one was produced, with no padding. That is the reference's
//!   `generate(...)[:, prompt_len:]` with each row cut after its first eos (what
//!   follows there is fill); use [`pad_batch`] for a rectangle.

mod beam;
mod config;
mod error;
mod join;
pub mod processors;
mod search;
mod step;

use candle_core::Tensor;

pub use config::{EarlyStopping, GenerationConfig, ModelDecoding};
pub use error::{GenerateError, Result};
pub use join::{generate_joining, Joining, Rows};

/// A language model that can be driven one step at a time.
pub trait Decoder {
    /// Everything the model keeps between steps (self-attention caches, cached
    /// cross-attention keys/values of the image, position offsets).
    type Cache;

    /// Runs `input_ids` (`[batch, new_len]`, u32) on top of the cache, extends the cache,
    /// and returns the logits of the last new position, `[batch, vocab]` in f32.
    fn step(&self, input_ids: &Tensor, cache: &mut Self::Cache) -> candle_core::Result<Tensor>;

    /// Keeps cache rows `rows` (u32 indices into the batch, repeats allowed) in that
    /// order. Beam search uses it to expand a batch into beams and to follow beams.
    fn select_rows(&self, cache: &mut Self::Cache, rows: &Tensor) -> candle_core::Result<()>;

    /// Puts `other`'s rows after `cache`'s rows: sequences prefilled on their own that
    /// join a running batch ([`generate_joining`]). Each row must keep the logits it has
    /// alone. Models that cannot say so.
    fn join(&self, cache: &mut Self::Cache, other: Self::Cache) -> candle_core::Result<()> {
        let _ = (cache, other);
        candle_core::bail!("this model cannot add rows to a running batch")
    }
}

/// Generates continuations of `prompt_ids` (`[batch, len]` u32, every row the same
/// length) with the strategy `cfg` selects: beam search when `num_beams > 1`,
/// sampling when `do_sample`, greedy otherwise.
///
/// `cache` must hold what the model needs before the prompt (e.g. image keys and
/// values, one row per prompt row); the prompt is run once per row, and the cache is
/// expanded with [`Decoder::select_rows`] where beams or several samples need copies.
///
/// Returns `batch * num_return_sequences` rows (a prompt row's sequences adjacent,
/// best beam first): the generated ids only, including the eos that ended a row,
/// without padding.
///
/// Sampling: output row `r` draws from its own RNG (`rand`'s `StdRng`) seeded from
/// `(seed, r)`, so a row's sample depends only on the seed and its index, not on the
/// other rows; it is stable for a given `rand` version, not equal to torch's draws.
pub fn generate<D: Decoder>(
    model: &D,
    cache: &mut D::Cache,
    prompt_ids: &Tensor,
    cfg: &GenerationConfig,
) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    let prompt = step::Prompt::read(prompt_ids)?;
    if cfg.num_beams > 1 {
        beam::run(model, cache, prompt_ids, prompt, cfg)
    } else {
        search::run(model, cache, prompt_ids, prompt, cfg, &mut |_| true)
    }
}

/// [`generate`] for greedy search and sampling, calling `on_step` after every step
/// with the new token of each row (`None` for rows that already ended) so chat can
/// print as it goes. Returning `false` stops generation after that step (e.g. the
/// client went away); the ids so far are returned.
///
/// Beam search cannot stream (the final beam is known only at the end), so
/// `num_beams > 1` is an error.
pub fn generate_stream<D: Decoder>(
    model: &D,
    cache: &mut D::Cache,
    prompt_ids: &Tensor,
    cfg: &GenerationConfig,
    mut on_step: impl FnMut(&[Option<u32>]) -> bool,
) -> Result<Vec<Vec<u32>>> {
    cfg.validate()?;
    if cfg.num_beams > 1 {
        return Err(GenerateError::config(
            "num_beams",
            "must be 1 to stream tokens",
        ));
    }
    let prompt = step::Prompt::read(prompt_ids)?;
    search::run(model, cache, prompt_ids, prompt, cfg, &mut on_step)
}

/// Pads rows to a common length with `pad`, as the reference returns them.
pub fn pad_batch(rows: &[Vec<u32>], pad: u32) -> Vec<Vec<u32>> {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    rows.iter()
        .map(|r| {
            let mut r = r.clone();
            r.resize(width, pad);
            r
        })
        .collect()
}
