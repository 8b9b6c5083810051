//! Reading the data for an evaluation: usable examples in file order, in batches,
//! with skip accounting and a progress bar.

use glimpse_data::dataset::{resolve_sources, EpochIter, Example, Loader, LoaderConfig};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use crate::metrics::MetricsError;
use crate::{Error, EvalOptions, Result, Task};

/// Reasons kept in a report (the count covers every skip).
const MAX_REASONS: usize = 20;

/// A bar on stderr when `show` (indicatif also hides it when stderr is no terminal).
pub(crate) fn progress_bar(show: bool, len: usize, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// Usable examples in file order, in batches, with skip accounting.
pub(crate) struct Reader {
    iter: EpochIter,
    limit: usize,
    used: usize,
    skipped: usize,
    reasons: Vec<String>,
    bar: ProgressBar,
}

impl Reader {
    pub(crate) fn open(data: &str, opts: &EvalOptions, show: bool) -> Result<Self> {
        let sources = resolve_sources(data)?;
        let loader = Loader::new(
            sources,
            LoaderConfig {
                shuffle_buffer: 0,
                workers: opts.workers.max(1),
                seed: 0,
                shuffle_sources: false,
                prefetch: (2 * opts.batch_size).max(16),
            },
        );
        // Fails early, naming the source, when one cannot be opened.
        let total = loader.count()? as usize;
        let limit = opts.limit.unwrap_or(usize::MAX);
        let bar = progress_bar(show && opts.progress, total.min(limit), opts.task.as_str());
        Ok(Reader {
            iter: loader.epoch(0, 0),
            limit,
            used: 0,
            skipped: 0,
            reasons: Vec::new(),
            bar,
        })
    }

    pub(crate) fn skip(&mut self, reason: String) {
        self.skipped += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason);
        }
    }

    /// Up to `n` usable examples with what `select` takes from each (an `Err` is the
    /// reason to skip it); empty at the end of the data or the limit.
    pub(crate) fn batch<T>(
        &mut self,
        n: usize,
        select: impl Fn(&Value) -> std::result::Result<T, String>,
    ) -> Result<Vec<(Example, T)>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.used < self.limit {
            let Some(item) = self.iter.next() else { break };
            let ex = item?;
            match select(&ex.meta) {
                Ok(t) => {
                    self.used += 1;
                    out.push((ex, t));
                }
                Err(why) => self.skip(format!("sample {}: {why}", ex.key)),
            }
        }
        if self.limit == usize::MAX {
            self.bar.set_position(self.iter.position());
        } else {
            self.bar.set_position(self.used as u64);
        }
        Ok(out)
    }

    /// Skips counted so far, the loader's corrupt samples first.
    pub(crate) fn finish(self) -> (usize, Vec<String>) {
        self.bar.finish_and_clear();
        let stats = self.iter.stats();
        let mut reasons = stats.skipped_reasons;
        reasons.extend(self.reasons);
        reasons.truncate(MAX_REASONS);
        (stats.skipped_corrupt as usize + self.skipped, reasons)
    }
}

pub(crate) fn split<T>(
    batch: Vec<(Example, T)>,
) -> (Vec<String>, Vec<RgbImage>, Vec<Value>, Vec<T>) {
    let mut keys = Vec::with_capacity(batch.len());
    let mut images = Vec::with_capacity(batch.len());
    let mut metas = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for (ex, t) in batch {
        keys.push(ex.key);
        images.push(ex.image);
        metas.push(ex.meta);
        items.push(t);
    }
    (keys, images, metas, items)
}

pub(crate) fn metric_error(task: Task) -> impl Fn(MetricsError) -> Error {
    move |error| Error::Metrics { task, error }
}

pub(crate) fn nothing_usable(reader: &Reader, what: &str) -> Error {
    let first = reader
        .iter
        .stats()
        .skipped_reasons
        .into_iter()
        .chain(reader.reasons.clone())
        .next();
    Error::Eval(format!(
        "no usable sample: {what}{}",
        first
            .map(|r| format!(" (first skipped: {r})"))
            .unwrap_or_default()
    ))
}
