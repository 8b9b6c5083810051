//! Errors of training, export and evaluation; each names the file, flag or parameter
//! at fault.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something about the run itself: a diverged loss, a parameter without gradient,
    /// a checkpoint that does not fit the model.
    #[error("{0}")]
    Train(String),

    /// A recipe file that cannot be read or does not describe a valid run.
    #[error("{}: {message}", path.display())]
    Recipe { path: PathBuf, message: String },

    /// A file could not be read or written.
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Model(#[from] glimpse_models::Error),

    #[error(transparent)]
    Data(#[from] glimpse_data::Error),
}

impl Error {
    /// A file error carrying `path` and the underlying message.
    pub fn io_ctx(path: &Path, e: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
