//! The crate's error type. Messages name the flag, file or child process at fault; the
//! cause, where there is one, is the error's source, so `{:#}` in anyhow prints
//! `what: cause` as one line.

use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while benchmarking.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting that cannot run (`--reps 0`, `--new-tokens 1`, `--quantize` with a
    /// workload that has no language model).
    #[error("{0}")]
    InvalidConfig(String),

    #[error("--workloads: unknown workload {name:?}; known: {known}")]
    UnknownWorkload { name: String, known: String },

    /// The reference side cannot run: no interpreter, no `reference.py`.
    #[error("{0}")]
    Reference(String),

    /// Python was needed (for the reference, or to write missing checkpoints) and
    /// could not be located.
    #[error("Python is needed: {why}")]
    PythonNeeded {
        why: String,
        #[source]
        source: Box<Error>,
    },

    /// A child process exited with a failure (its messages went to our stderr).
    #[error("{what} failed ({status}); its messages are above")]
    ChildFailed { what: String, status: ExitStatus },

    #[error("{what} printed no JSON result")]
    NoResult { what: String },

    #[error("{what}: unreadable result {line:?}")]
    BadResult {
        what: String,
        line: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: no benchmark checkpoint (run `glimpse bench` without --worker)", .0.display())]
    MissingCheckpoint(PathBuf),

    /// A workload's model directory whose config lacks a field the inputs need.
    #[error("{}: no {field}", dir.display())]
    ConfigField { dir: PathBuf, field: String },

    /// A timed call produced something other than what both sides are told to produce.
    #[error("{0}")]
    Unexpected(String),

    /// Reading or writing a file, or starting a process; `what` says which.
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{what}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },

    #[error(transparent)]
    Model(#[from] glimpse_models::Error),

    #[error(transparent)]
    Generate(#[from] glimpse_generate::GenerateError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    pub(crate) fn json(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Self {
        let what = what.into();
        move |source| Self::Json { what, source }
    }
}

/// An error and its causes on one line, `outer: inner: ...` (as anyhow's `{:#}`): what
/// a failed workload's row of the report says.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        line.push_str(": ");
        line.push_str(&e.to_string());
        cause = e.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_the_causes() {
        let err = Error::Io {
            what: "writing out/results.json".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        };
        assert_eq!(
            one_line(&err),
            "writing out/results.json: no such directory"
        );
        let nested = Error::PythonNeeded {
            why: "it runs the reference".into(),
            source: Box::new(Error::Reference("python3 not found".into())),
        };
        assert_eq!(
            one_line(&nested),
            "Python is needed: it runs the reference: python3 not found"
        );
    }
}
