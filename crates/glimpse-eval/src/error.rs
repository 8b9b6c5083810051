//! Errors of an evaluation; each names the flag, the model or the data at fault.

use crate::metrics::MetricsError;
use crate::Task;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Options that cannot run, or data with nothing usable for the task.
    #[error("{0}")]
    Eval(String),

    /// A metric rejected what the task gave it.
    #[error("{task} metrics: {error}")]
    Metrics { task: Task, error: MetricsError },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Model(#[from] glimpse_models::Error),

    #[error(transparent)]
    Data(#[from] glimpse_data::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
