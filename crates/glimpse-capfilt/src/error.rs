use std::path::PathBuf;

/// Which of the two models an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Captioner,
    Filter,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Captioner => "captioner",
            Role::Filter => "filter",
        })
    }
}

/// Errors of the CapFilt crate; each names the file, shard, option or model at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of the output directory (marker, settings, manifest) that cannot be used.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    /// The data argument or a source that cannot be opened at all.
    #[error(transparent)]
    Data(#[from] glimpse_data::Error),
    /// A model that cannot play its role (no caption capability, no ITM head), or that
    /// failed while running.
    #[error("{role} `{model}`: {msg}")]
    Model {
        role: Role,
        model: String,
        msg: String,
    },
    /// An option out of range (`--threshold 2`, `--top-p 0`, ...), named.
    #[error("{option}: {msg}")]
    Option { option: &'static str, msg: String },
    /// The output directory was started with other models or options.
    #[error(
        "{}: this output directory was started with other settings ({diff}); use another \
         --out or the same models and options", path.display()
    )]
    SettingsMismatch { path: PathBuf, diff: String },
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

    pub(crate) fn option(option: &'static str, msg: impl Into<String>) -> Error {
        Error::Option {
            option,
            msg: msg.into(),
        }
    }
}
