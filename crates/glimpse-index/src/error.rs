use std::path::PathBuf;

/// Errors of the index crate; each names the file, shard or model it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a float32 .npy matrix we can read: {msg}")]
    Npy { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Parquet { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error(transparent)]
    Data(#[from] glimpse_data::Error),
    /// The query or new shards come from another model than the index.
    #[error(
        "model mismatch: the index {index} was built with `{index_model}` (dimension \
         {index_dim}), but {what} comes from `{other_model}` (dimension {other_dim})"
    )]
    ModelMismatch {
        index: PathBuf,
        index_model: String,
        index_dim: usize,
        what: String,
        other_model: String,
        other_dim: usize,
    },
    #[error("embedding model `{model}`: {msg}")]
    Embedder { model: String, msg: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Error {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
