use std::path::PathBuf;

/// Errors of the model layer. Each names the file, tensor or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Data(#[from] glimpse_data::Error),

    /// Decoding settings that cannot run (e.g. top_p outside (0, 1]) or a bad prompt.
    #[error("generation: {0}")]
    Generate(glimpse_generate::GenerateError),

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// A model directory or hub id that cannot be used (missing files, no hub access).
    #[error("model `{model}`: {msg}")]
    Model { model: String, msg: String },

    /// The weights do not fit the config or the architecture.
    #[error("checkpoint {}: {msg}", dir.display())]
    Checkpoint { dir: PathBuf, msg: String },

    /// A config.json that deserialised but makes no sense (or names another class).
    #[error("config {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },

    /// The model's outputs hold NaN or infinite values: its weights are broken.
    #[error(
        "model `{model}` produced {value} in its {what} (value #{}): its weights hold NaN or \
         infinite values", index + 1
    )]
    NonFinite {
        model: String,
        what: String,
        value: f32,
        index: usize,
    },
}

impl From<glimpse_generate::GenerateError> for Error {
    fn from(e: glimpse_generate::GenerateError) -> Self {
        match e {
            glimpse_generate::GenerateError::Candle(e) => Error::Candle(e),
            other => Error::Generate(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
