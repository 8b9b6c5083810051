//! One error type for the data layer. Every variant carries the name of the file
//! (or the text) at fault, because a batch job that fails on "invalid PNG" without
//! saying which of ten thousand files it was is useless to the person running it.

use std::path::PathBuf;

/// Errors of the data layer; each names the file or text at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read at all.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A directory could not be created.
    #[error("cannot create directory {}: {source}", path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The image file holds no bytes.
    #[error("{name}: the file is empty, not an image")]
    EmptyImage { name: String },

    /// Neither the leading bytes nor the file extension name a supported format.
    #[error("{name}: not a recognised image format (supported: PNG, JPEG, GIF, BMP, WebP, TIFF)")]
    UnknownFormat { name: String },

    /// The decoder rejected the data (corrupt, truncated, unsupported variant).
    #[error("{name}: cannot decode image: {source}")]
    Decode {
        name: String,
        source: image::ImageError,
    },

    /// The header announces an image beyond the configured limits; refused before
    /// any pixel buffer is allocated.
    #[error("{name}: image of {width}x{height} pixels is refused: {reason}")]
    TooLarge {
        name: String,
        width: u32,
        height: u32,
        reason: String,
    },

    /// A JSON file (processor or tokenizer configuration) is malformed.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// A configuration is well-formed JSON but describes something we cannot run.
    #[error("{origin}: {message}")]
    Config { origin: String, message: String },

    /// The tokenizer library failed on a file or a text.
    #[error("tokenizer ({origin}): {message}")]
    Tokenizer { origin: String, message: String },

    /// A tensor could not be built.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),

    /// Anything else, with its own context in the message.
    #[error("{0}")]
    Msg(String),
}

/// Result alias of the data layer.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn config(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            origin: origin.into(),
            message: message.into(),
        }
    }

    pub(crate) fn tokenizer(origin: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Tokenizer {
            origin: origin.into(),
            message: message.to_string(),
        }
    }
}
