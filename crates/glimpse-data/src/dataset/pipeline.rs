//! The threads behind [`EpochIter`]: one producer reads sources in epoch order,
//! shuffles through a buffer and hands each position a slot; `workers` threads decode.
//!
//! Order never depends on thread timing because the producer sends the consumer, in
//! post-shuffle order, one slot per position: either a finished outcome (a skip) or
//! the receiving end of a one-shot channel a worker will fill. The slot channel holds
//! `prefetch - 1` slots and the consumer waits on one more, which bounds the decoded
//! images alive at once. Dropping the iterator closes the slot channel, which stops the
//! producer at its next send; the workers then drain and exit, and `Drop` joins them.

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::read::{self, skip_message, Raw};
use super::{Example, LoaderStats, RawSample, Source};
use crate::rng::SplitMix64;
use crate::{Error, Result};

/// How many skip messages [`LoaderStats`] keeps.
const MAX_REASONS: usize = 20;
/// How many of the latest skip messages [`EpochIter::recent_skips`] keeps.
const RECENT_REASONS: usize = 3;

enum Outcome {
    Example(Example),
    Skipped(String),
    /// The rest of a source was lost: a skip whose message is kept past the cap.
    SourceLost(String),
    /// The reader thread died; not a position.
    Fatal(Error),
}

enum Slot {
    Ready(Outcome),
    Pending(Receiver<Outcome>),
}

struct Job {
    sample: RawSample,
    reply: SyncSender<Outcome>,
}

/// Everything the producer thread needs, moved into it.
pub(crate) struct Plan {
    pub sources: Vec<Source>,
    pub shuffle_buffer: usize,
    pub buffer_rng: SplitMix64,
    pub skip: u64,
}

/// Iterator over the decoded samples of one epoch; see [`super::Loader::epoch`].
///
/// Yields `Err` only when there is nothing to read at all (no sources), the reader
/// thread died or (when asked, see [`EpochIter::max_consecutive_skips`]) too many
/// samples in a row were unusable, and then ends; samples that cannot be used are
/// skipped and counted in [`EpochIter::stats`].
pub struct EpochIter {
    slots: Option<Receiver<Slot>>,
    fatal: Option<Error>,
    cancel: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    position: u64,
    stats: LoaderStats,
    /// Skips since the last yielded example.
    consecutive: u64,
    max_consecutive: Option<u64>,
    recent: VecDeque<String>,
}

impl EpochIter {
    pub(crate) fn failed(error: Error) -> Self {
        EpochIter {
            slots: None,
            fatal: Some(error),
            cancel: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            position: 0,
            stats: LoaderStats::default(),
            consecutive: 0,
            max_consecutive: None,
            recent: VecDeque::new(),
        }
    }

    pub(crate) fn start(plan: Plan, workers: usize, prefetch: usize) -> Self {
        let cancel = Arc::new(AtomicBool::new(false));
        let (slot_tx, slot_rx) = mpsc::sync_channel(prefetch.max(1) - 1);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut threads = Vec::with_capacity(workers.max(1) + 1);
        for _ in 0..workers.max(1) {
            let job_rx = job_rx.clone();
            let cancel = cancel.clone();
            threads.push(std::thread::spawn(move || worker(&job_rx, &cancel)));
        }
        let position = plan.skip;
        let cancel_p = cancel.clone();
        threads.push(std::thread::spawn(move || {
            let run = panic::catch_unwind(AssertUnwindSafe(|| {
                produce(plan, &slot_tx, &job_tx, &cancel_p)
            }));
            if run.is_err() {
                // Without this the epoch would just end early, silently.
                let e = Error::Msg("data loader: the reader thread panicked".into());
                let _ = slot_tx.send(Slot::Ready(Outcome::Fatal(e)));
            }
        }));
        EpochIter {
            slots: Some(slot_rx),
            fatal: None,
            cancel,
            threads,
            position,
            stats: LoaderStats::default(),
            consecutive: 0,
            max_consecutive: None,
            recent: VecDeque::new(),
        }
    }

    /// Ends the epoch with an error naming the last skipped samples once `n` samples
    /// in a row were unusable: a consumer that cannot go on without samples (training)
    /// would otherwise read a whole unusable epoch, or spin over such epochs forever.
    pub fn max_consecutive_skips(mut self, n: u64) -> Self {
        self.max_consecutive = Some(n.max(1));
        self
    }

    /// The latest skip messages (up to three), oldest first.
    pub fn recent_skips(&self) -> Vec<String> {
        self.recent.iter().cloned().collect()
    }

    /// Counters so far (complete once the iterator has returned `None`).
    pub fn stats(&self) -> LoaderStats {
        self.stats.clone()
    }

    /// Raw positions consumed so far, skipped ones included, counting the `skip` the
    /// epoch started from: `loader.epoch(e, it.position())` continues exactly after
    /// the last item this iterator returned.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Counts a skip; `always` keeps the message past [`MAX_REASONS`] (up to twice
    /// that), so a lost shard is reported even after many bad samples.
    fn record_skip(&mut self, reason: String, always: bool) {
        self.stats.skipped_corrupt += 1;
        self.consecutive += 1;
        if self.recent.len() == RECENT_REASONS {
            self.recent.pop_front();
        }
        self.recent.push_back(reason.clone());
        let cap = if always { 2 * MAX_REASONS } else { MAX_REASONS };
        if self.stats.skipped_reasons.len() < cap {
            self.stats.skipped_reasons.push(reason);
        }
    }

    /// The error that ends the epoch when too many samples in a row were skipped.
    fn too_many_skips(&self) -> Option<Error> {
        let limit = self.max_consecutive?;
        (self.consecutive >= limit).then(|| {
            Error::Msg(format!(
                "{} samples in a row could not be used; the last: {}",
                self.consecutive,
                self.recent_skips().join("; ")
            ))
        })
    }
}

impl Iterator for EpochIter {
    type Item = Result<Example>;

    fn next(&mut self) -> Option<Result<Example>> {
        if let Some(e) = self.fatal.take() {
            return Some(Err(e));
        }
        loop {
            let slot = self.slots.as_ref()?.recv().ok()?;
            if let Slot::Ready(Outcome::Fatal(e)) = slot {
                self.slots = None;
                return Some(Err(e));
            }
            self.position += 1;
            let outcome = match slot {
                Slot::Ready(o) => o,
                Slot::Pending(rx) => rx.recv().unwrap_or_else(|_| {
                    Outcome::Skipped("a decode worker stopped without an answer".into())
                }),
            };
            match outcome {
                Outcome::Example(ex) => {
                    self.stats.yielded += 1;
                    self.consecutive = 0;
                    return Some(Ok(ex));
                }
                Outcome::Skipped(reason) => {
                    self.record_skip(reason, false);
                    if let Some(e) = self.too_many_skips() {
                        self.slots = None;
                        return Some(Err(e));
                    }
                }
                Outcome::SourceLost(reason) => self.record_skip(reason, true),
                Outcome::Fatal(e) => return Some(Err(e)),
            }
        }
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
        // Closing the slot channel wakes a producer blocked on it.
        drop(self.slots.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(jobs: &Mutex<Receiver<Job>>, cancel: &AtomicBool) {
    loop {
        let job = {
            let rx = jobs.lock().unwrap_or_else(|p| p.into_inner());
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let outcome = decode(job.sample);
        // The consumer may be gone; then nobody wants the answer.
        let _ = job.reply.send(outcome);
    }
}

fn decode(s: RawSample) -> Outcome {
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        crate::decode_image(&s.image_bytes, &s.image_name)
    }));
    match result {
        Ok(Ok(image)) => Outcome::Example(Example {
            key: s.key,
            image,
            meta: s.meta,
        }),
        Ok(Err(e)) => Outcome::Skipped(skip_message(&s.source, &s.key, &e.report())),
        Err(_) => Outcome::Skipped(skip_message(
            &s.source,
            &s.key,
            &format!("{}: the image decoder panicked", s.image_name),
        )),
    }
}

/// Streams the epoch's positions into slots; returns when done or cancelled.
fn produce(plan: Plan, slots: &SyncSender<Slot>, jobs: &mpsc::Sender<Job>, cancel: &AtomicBool) {
    let mut position = 0u64;
    let skip = plan.skip;
    // `false` stops production.
    let mut emit = |raw: Raw| -> bool {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        position += 1;
        if position <= skip {
            return true;
        }
        let pending = match raw {
            Raw::Bad {
                source,
                key,
                reason,
            } => {
                let msg = skip_message(&source, &key, &reason);
                return slots.send(Slot::Ready(Outcome::Skipped(msg))).is_ok();
            }
            Raw::Lost(reason) => {
                return slots.send(Slot::Ready(Outcome::SourceLost(reason))).is_ok();
            }
            Raw::Sample(p) => p,
        };
        match pending.load() {
            Err(msg) => slots.send(Slot::Ready(Outcome::Skipped(msg))).is_ok(),
            Ok(sample) => {
                let (reply, rx) = mpsc::sync_channel(1);
                // The slot goes first, so a full slot channel holds back the decode.
                slots.send(Slot::Pending(rx)).is_ok() && jobs.send(Job { sample, reply }).is_ok()
            }
        }
    };

    let raws = plan.sources.iter().flat_map(|s| match read::open(s) {
        Ok(items) => items,
        Err(e) => Box::new(std::iter::once(Raw::Bad {
            source: s.to_string().into(),
            key: "<all>".into(),
            reason: format!("source skipped: {}", e.report()),
        })),
    });
    let mut rng = plan.buffer_rng;
    let n = plan.shuffle_buffer;
    if n <= 1 {
        for raw in raws {
            if !emit(raw) {
                return;
            }
        }
        return;
    }
    // WebDataset's buffer: fill to n, then each arrival evicts a random resident.
    let mut buffer: Vec<Raw> = Vec::with_capacity(n);
    for raw in raws {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        if buffer.len() < n {
            buffer.push(raw);
            continue;
        }
        let j = rng.below_from_high_bits(n);
        let out = std::mem::replace(&mut buffer[j], raw);
        if !emit(out) {
            return;
        }
    }
    while !buffer.is_empty() {
        let j = rng.below_from_high_bits(buffer.len());
        if !emit(buffer.swap_remove(j)) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Loader, LoaderConfig, Source};

    fn missing_images(dir: &std::path::Path, n: usize) -> Loader {
        let lines: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"image": "img/missing_{i}.png", "caption": "x"}}"#))
            .collect();
        let p = dir.join("missing.jsonl");
        std::fs::write(&p, lines.join("\n")).unwrap();
        let cfg = LoaderConfig {
            shuffle_buffer: 0,
            workers: 1,
            ..LoaderConfig::default()
        };
        Loader::new(vec![Source::Jsonl(p)], cfg)
    }

    #[test]
    fn consecutive_unusable_samples_end_the_epoch_naming_the_last() {
        let tmp = tempfile::tempdir().unwrap();
        let loader = missing_images(tmp.path(), 10);
        let mut it = loader.epoch(0, 0).max_consecutive_skips(4);
        let e = it.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("4 samples in a row"), "{e}");
        assert!(
            e.contains("missing_3.png") && e.contains("missing_1.png"),
            "{e}"
        );
        assert!(!e.contains("missing_0.png"), "{e}");
        assert!(it.next().is_none());
        // Without a limit the epoch ends after counting every skip.
        let mut it = loader.epoch(0, 0);
        assert!(it.next().is_none());
        assert_eq!(it.stats().skipped_corrupt, 10);
    }
}
