//! The crate's error type: bad settings and bad inputs are reported by name, model
//! failures are passed through from candle unchanged.

use thiserror::Error;

/// Everything that can go wrong while decoding.
#[derive(Debug, Error)]
pub enum GenerateError {
    /// A [`GenerationConfig`](crate::GenerationConfig) field holds a value the
    /// decoder cannot honour; `field` is the field's name.
    #[error("invalid generation config: `{field}` {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// The prompt tensor is not a non-empty `[batch, len]` u32 tensor.
    #[error("invalid prompt_ids: {0}")]
    InvalidPrompt(String),

    /// The model's `step` returned something other than `[rows, vocab]` logits.
    #[error("model returned logits of shape {got:?}, expected [{rows}, vocab]")]
    BadLogits { got: Vec<usize>, rows: usize },

    /// Every token of a row was filtered out (all logits -inf or NaN), so there is
    /// nothing to sample from.
    #[error("row {row}: no token left to sample from (all scores are -inf or NaN)")]
    EmptyDistribution { row: usize },

    /// The model itself failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, GenerateError>;

impl GenerateError {
    pub(crate) fn config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field,
            reason: reason.into(),
        }
    }
}
