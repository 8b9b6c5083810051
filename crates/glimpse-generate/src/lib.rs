//! Decoding for Glimpse: greedy search, beam search and sampling over any model that
//! implements [`Decoder`].
//!
//! A model exposes one step: given new token ids and its cache, return the logits of
//! the last position. Everything about choosing tokens (logits processors, beams,
//! stopping) is here, so each model family gets every strategy.

use candle_core::{Result, Tensor};

/// A language model that can be driven one step at a time.
pub trait Decoder {
    /// Everything the model keeps between steps (self-attention caches, cached
    /// cross-attention keys/values of the image, position offsets).
    type Cache;

    /// Runs `input_ids` (`[batch, new_len]`, u32) on top of the cache, extends the cache,
    /// and returns the logits of the last new position, `[batch, vocab]` in f32.
    fn step(&self, input_ids: &Tensor, cache: &mut Self::Cache) -> Result<Tensor>;

    /// Keeps cache rows `rows` (u32 indices into the batch, repeats allowed) in that
    /// order. Beam search uses it to expand a batch into beams and to follow beams.
    fn select_rows(&self, cache: &mut Self::Cache, rows: &Tensor) -> Result<()>;
}
