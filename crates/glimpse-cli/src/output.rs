//! Printing: JSON for machines, short text for people, progress bars on stderr.
//!
//! Results go to stdout through fallible writes, so that a closed pipe (`glimpse ... |
//! head`) or a full disk becomes an error instead of the panic of `println!`; `main`
//! then exits quietly on a closed pipe, as `ripgrep` does, and reports anything else.
//! Notes on stderr (load plans, reports) are best effort: a command whose stderr is
//! gone still does its work and prints its result.

use std::fmt::Write as _;
use std::io::{self, Write};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// A failed write to stdout; `main` exits quietly when the pipe was closed.
#[derive(Debug)]
pub struct StdoutError(pub io::Error);

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutError {}

/// Writes `text` and a newline on stdout.
pub fn line(text: impl std::fmt::Display) -> Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}").map_err(|e| StdoutError(e).into())
}

/// Writes `text` on stdout without a newline and flushes it (streamed output).
pub fn text(text: impl std::fmt::Display) -> Result<()> {
    let mut out = io::stdout().lock();
    write!(out, "{text}")
        .and_then(|()| out.flush())
        .map_err(|e| StdoutError(e).into())
}

/// `println!` that hands a failed write back with `?` instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))?
    };
}
pub(crate) use outln;

/// Writes `value` as one line of JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string(value).context("serialising output")?;
    line(text)
}

/// Flushes stdout, whose buffer the runtime would otherwise flush at exit, dropping
/// any error.
pub fn flush() -> Result<()> {
    io::stdout().flush().map_err(|e| StdoutError(e).into())
}

/// Writes `text` and a newline on stderr, ignoring failure: a note is no reason to
/// fail a command, and there is nowhere left to report that it was lost.
pub fn note(text: impl std::fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "{text}");
}

/// Whether `err` comes from writing results into a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<StdoutError>()
            .is_some_and(|e| e.0.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes as one line, `message: cause: cause`, leaving out a cause
/// whose text the message before it already holds (library errors often print their
/// source inside their own message and also return it as their source).
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let message = cause.to_string();
        let message = message.trim();
        if message.is_empty() || previous.contains(message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        let _ = write!(text, "{message}");
        previous = message.to_string();
    }
    text
}

/// Makes the `println!`-family panics of a closed or failing stdout or stderr (std
/// panics with "failed printing to stdout: ...") end the process the way a failed
/// fallible write does: quietly with success on a closed stdout pipe, otherwise with
/// a failure status and, for stdout, a message. Every other panic goes to the
/// default hook.
pub fn exit_on_print_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info.payload_as_str().unwrap_or_default();
        let Some(failure) = ["stdout", "stderr"]
            .iter()
            .find_map(|stream| message.strip_prefix(&format!("failed printing to {stream}: ")))
        else {
            return default(info);
        };
        if message.starts_with("failed printing to stderr") {
            // Nowhere to say why; the work was not finished.
            std::process::exit(1);
        }
        if failure.contains(&format!("(os error {EPIPE})")) {
            std::process::exit(0);
        }
        note(format_args!("error: writing to stdout: {failure}"));
        std::process::exit(1);
    }));
}

/// `EPIPE` on Linux and macOS.
const EPIPE: i32 = 32;

/// A progress bar on stderr for `total` items, shown only when there is more than one
/// batch of work and stderr is a terminal (indicatif hides it otherwise).
pub fn progress(total: usize, batch: usize, what: &str) -> ProgressBar {
    if total <= batch {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// A progress counter on stderr for work of unknown size (samples of `shards` shards),
/// hidden unless stderr is a terminal.
pub fn samples_progress(shards: usize) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {pos} samples, {per_sec}, {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(format!("{shards} shard(s)"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A short rendering of a vector for people: its norm and first values.
pub fn preview(v: &[f32]) -> String {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
    format!("dim {} |v| {:.4} [{}, ...]", v.len(), norm, head.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_printed_once() {
        let inner = anyhow::anyhow!("Invalid PNG signature.");
        let err = inner
            .context("Format error decoding Png: Invalid PNG signature.")
            .context(
                "x.png: cannot decode image: Format error decoding Png: Invalid PNG signature.",
            )
            .context("reading the images");
        assert_eq!(
            error_chain(&err),
            "reading the images: x.png: cannot decode image: Format error decoding Png: \
             Invalid PNG signature."
        );
    }

    #[test]
    fn broken_pipe_is_found_under_context() {
        let err = anyhow::Error::new(StdoutError(io::ErrorKind::BrokenPipe.into()))
            .context("printing the report");
        assert!(is_broken_pipe(&err));
        // A closed socket while downloading a model is a real failure.
        let other = anyhow::Error::new(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(!is_broken_pipe(&other));
    }
}
