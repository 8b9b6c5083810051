//! Printing: JSON for machines, short text for people, progress bars on stderr.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Writes `value` as one line of JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let text = serde_json::to_string(value).context("serialising output")?;
    println!("{text}");
    Ok(())
}

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

/// A short rendering of a vector for people: its norm and first values.
pub fn preview(v: &[f32]) -> String {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let head: Vec<String> = v.iter().take(4).map(|x| format!("{x:+.4}")).collect();
    format!("dim {} |v| {:.4} [{}, ...]", v.len(), norm, head.join(", "))
}
