//! One error type for the data layer. Every variant carries the name of the file
//! (or the text) at fault, because a batch job that fails on "invalid PNG" without
//! saying which of ten thousand files it was is useless to the person running it.
//! A variant that wraps a cause returns it from `source()` and leaves it out of its own
//! message, so a printer that walks the chain shows it once; [`Error::report`] gives
//! the whole chain as one line where a message must stand alone (skip reports).

use std::path::PathBuf;

/// Errors of the data layer; each names the file or text at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read at all.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// A directory could not be created.
    #[error("cannot create directory {}", path.display())]
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
    #[error("{name}: cannot decode image")]
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
    #[error("{}: invalid JSON", path.display())]
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
    /// The message and its causes as one line, `message: cause: cause`, leaving out a
    /// cause whose text the previous one already holds.
    pub fn report(&self) -> String {
        let mut text = self.to_string();
        let mut previous = text.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let message = c.to_string();
            let message = message.trim();
            if !message.is_empty() && !previous.contains(message) {
                text.push_str(": ");
                text.push_str(message);
                previous = message.to_string();
            }
            cause = c.source();
        }
        text
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// "Invalid PNG signature.: ... Invalid PNG signature.": a cause shown in the
    /// message and again as the source was printed twice by every chain printer.
    #[test]
    fn error_causes_are_not_printed_twice() {
        let err = crate::decode_image(b"\x89PNG\r\n\x1a\nnot a png at all", "x.png").unwrap_err();
        let cause = std::error::Error::source(&err)
            .expect("the decoder's error is the source")
            .to_string();
        assert!(!err.to_string().contains(&cause), "{err}");
        let report = err.report();
        assert!(
            report.starts_with("x.png: cannot decode image: "),
            "{report}"
        );
        assert_eq!(report.matches(&cause).count(), 1, "{report}");

        let io = Error::Io {
            path: "a/b.json".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(io.to_string(), "cannot read a/b.json");
        assert_eq!(io.report(), "cannot read a/b.json: gone");
    }
}
