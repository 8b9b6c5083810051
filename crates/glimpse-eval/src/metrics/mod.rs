//! Evaluation metrics, in plain Rust over slices (no tensors), so they run anywhere a
//! model's outputs have been copied to the host.
//!
//! - [`retrieval`]: image-text recall at 1/5/10 in both directions and mean/median
//!   rank, from a similarity matrix.
//! - [`zero_shot`]: top-1 accuracy from per-image logits over labels, with a per-class
//!   summary.
//! - [`caption`]: corpus BLEU-1..4 and CIDEr-D as the COCO caption toolkit
//!   (pycocoevalcap) computes them, checked against fixtures written by
//!   `tools/metrics_reference.py`.
//! - [`attributes`]: whether a caption of a synthetic-world image states the object's
//!   attributes correctly.
//! - [`vqa`]: exact-match VQA accuracy after answer normalisation.
//!
//! Rules shared by every function here: inputs are validated and a bad one is an
//! [`MetricsError`] naming the argument and the index at fault, never a panic; an
//! empty evaluation set is an error (a mean over nothing has no value, and a silent 0
//! or NaN in a results table is worse than a message); ties are broken towards the
//! lower index, so results do not depend on sort stability.

pub mod attributes;
pub mod caption;
pub mod retrieval;
pub mod vqa;
pub mod zero_shot;

pub use attributes::{caption_attributes_correct, AttributeCheck, Judgement};
pub use caption::{
    caption_scores, corpus_bleu, corpus_cider, tokenize_caption, BleuScores, CaptionScores,
    CiderScores,
};
pub use retrieval::{recall_at_k, retrieval_ranks, RetrievalRanks, RetrievalScores, RECALL_KS};
pub use vqa::{normalize_answer, vqa_accuracy, vqa_exact_match};
pub use zero_shot::{zero_shot_accuracy, ClassSummary, Confusion, ZeroShotScores};

/// Errors of the metrics: each names the argument and, where there is one, the index
/// of the item at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// Nothing to evaluate.
    #[error("{what} is empty: there is nothing to evaluate")]
    Empty { what: &'static str },

    /// Two arguments that must agree in size do not.
    #[error("{what}: expected {expected} values, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },

    /// One item of an argument is unusable (an index out of range, a NaN score, an
    /// image without references).
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// Number words read as counts, index = value.
const NUMBER_WORDS: [&str; 11] = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(MetricsError::Length {
            what,
            expected,
            got,
        })
    }
}

fn invalid(what: &'static str, message: impl Into<String>) -> MetricsError {
    MetricsError::Invalid {
        what,
        message: message.into(),
    }
}
