//! Errors of report building; each names the file (and line) at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A run directory that cannot be read as one.
    #[error("{path}: {message}")]
    Run { path: PathBuf, message: String },

    /// A line of a run's `log.jsonl` that is not a log event.
    #[error("{path} line {line}: {message}")]
    Log {
        path: PathBuf,
        line: usize,
        message: String,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// Arguments that cannot make a page.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
