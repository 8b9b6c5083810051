//! Image preprocessing and tokenization for Glimpse (being written).

/// Errors of the data layer; each names the file or text at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Msg(String),
}
