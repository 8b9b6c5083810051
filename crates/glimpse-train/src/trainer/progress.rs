//! Progress of a run as typed events, so a terminal, a server or a notebook can follow
//! it. [`RunLog`] is the observer `glimpse train` uses: a progress bar (or plain lines
//! on stderr) and the run's `OUT/log.jsonl`, one JSON object per logged update, per
//! validation (`{"step", "validation": {...}}`) and per resume (`{"step", "resumed":
//! {"epoch", "position"}}`).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::checkpoint::TrainerState;
use super::TrainReport;
use crate::recipe::Recipe;
use crate::{Error, Result};

/// What happens during a run, in order: `Initialised` (a new run starting from other
/// weights), `Started`, then per update `Step`, `Validation` and `Checkpoint` as the
/// recipe schedules them, and `Finished`.
#[derive(Debug)]
pub enum Event<'a> {
    /// Weights were copied in from another run before the first update.
    Initialised { part: InitPart, from: &'a Path },
    /// The parameters AdamW updates and all the model holds (frozen ones included),
    /// sent once per process before `Started`.
    Parameters { trainable: usize, total: usize },
    /// The loop is about to run its first update in this process.
    Started {
        out: &'a Path,
        recipe: &'a Recipe,
        /// Where the run stands (all zero for a new run).
        state: &'a TrainerState,
        resumed: bool,
    },
    /// An update is done.
    Step(&'a StepEvent<'a>),
    /// Validation metrics after update `step`.
    Validation { step: u64, metrics: &'a Value },
    /// A checkpoint of update `step` was written.
    Checkpoint { step: u64, path: &'a Path },
    /// The run finished or stopped (`--stop-after`).
    Finished(&'a TrainReport),
}

/// Which weights an [`Event::Initialised`] copied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitPart {
    /// The whole model (`model.init`).
    Model,
    /// The vision tower (`model.init_vision`).
    VisionTower,
}

/// One update.
#[derive(Debug)]
pub struct StepEvent<'a> {
    /// Updates done, this one included.
    pub step: u64,
    pub total_steps: u64,
    pub epoch: u64,
    /// The total loss, averaged over the micro-batches.
    pub loss: f64,
    /// The objective's named losses, averaged over the micro-batches.
    pub parts: &'a [(String, f64)],
    /// The learning rate this update used.
    pub lr: f64,
    /// The gradient norm before clipping.
    pub grad_norm: f64,
    /// Samples per second since this process started training.
    pub samples_per_second: f64,
}

/// Receives a run's events; an error stops the run.
pub trait Observer {
    fn event(&mut self, event: &Event) -> Result<()>;
}

impl<F: FnMut(&Event) -> Result<()>> Observer for F {
    fn event(&mut self, event: &Event) -> Result<()> {
        self(event)
    }
}

/// The terminal and `OUT/log.jsonl`: a progress bar when `progress`, otherwise a line
/// on stderr per logged update. On start it drops the log lines of updates after the
/// starting point (a resumed run redoes them).
pub struct RunLog {
    progress: bool,
    bar: ProgressBar,
    log: Option<(File, PathBuf)>,
    log_every: u64,
}

impl RunLog {
    pub fn new(progress: bool) -> Self {
        Self {
            progress,
            bar: ProgressBar::hidden(),
            log: None,
            log_every: 1,
        }
    }

    fn write(&mut self, line: &Value) -> Result<()> {
        if let Some((file, path)) = &mut self.log {
            writeln!(file, "{line}").map_err(|e| Error::io_ctx(path, e))?;
        }
        Ok(())
    }

    fn say(&self, msg: String) {
        if self.bar.is_hidden() {
            eprintln!("{msg}")
        } else {
            self.bar.println(msg)
        }
    }
}

impl Observer for RunLog {
    fn event(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Initialised { part, from } => match part {
                InitPart::Model => eprintln!("initialised from {}", from.display()),
                InitPart::VisionTower => {
                    eprintln!("vision tower initialised from {}", from.display())
                }
            },
            Event::Parameters { trainable, total } => eprintln!(
                "parameters: {trainable} trainable of {total} ({:.1}%)",
                100.0 * *trainable as f64 / (*total).max(1) as f64
            ),
            Event::Started {
                out,
                recipe,
                state,
                resumed,
            } => {
                if *resumed {
                    eprintln!(
                        "resuming {} at update {} (epoch {}, sample {})",
                        out.display(),
                        state.step,
                        state.epoch,
                        state.position
                    );
                }
                let path = out.join("log.jsonl");
                truncate_log(&path, state.step)?;
                if self.progress {
                    let bar = ProgressBar::new(state.total_steps);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} updates {elapsed_precise} eta {eta} {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_position(state.step);
                    self.bar = bar;
                }
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| Error::io_ctx(&path, e))?;
                self.log = Some((file, path));
                self.log_every = recipe.run.log_every.max(1);
                if *resumed {
                    // The resume point, for reports; kept by `truncate_log` on a
                    // later resume since its step is not after the new start.
                    self.write(&serde_json::json!({
                        "step": state.step,
                        "resumed": {"epoch": state.epoch, "position": state.position},
                    }))?;
                }
            }
            Event::Step(s) => {
                let (loss, rate, lr) = (s.loss, s.samples_per_second, s.lr);
                self.bar.set_position(s.step);
                self.bar
                    .set_message(format!("loss {loss:.4} | {rate:.1} samples/s"));
                let mut line = serde_json::json!({
                    "step": s.step, "epoch": s.epoch, "loss": loss, "lr": lr,
                    "grad_norm": s.grad_norm, "samples_per_s": rate,
                });
                for (k, v) in s.parts {
                    line[k] = (*v).into();
                }
                if s.step % self.log_every == 0 || s.step == s.total_steps {
                    self.write(&line)?;
                    if self.bar.is_hidden() {
                        eprintln!(
                            "update {}/{} epoch {} loss {loss:.4} lr {lr:.2e} {rate:.1} samples/s",
                            s.step, s.total_steps, s.epoch
                        );
                    }
                }
            }
            Event::Validation { step, metrics } => {
                self.say(format!("validation at update {step}: {metrics}"));
                self.write(&serde_json::json!({"step": step, "validation": metrics}))?;
            }
            Event::Checkpoint { .. } => {}
            Event::Finished(_) => self.bar.finish_and_clear(),
        }
        Ok(())
    }
}

/// Drops log lines of updates after `step` (they are redone after a resume).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).map_err(|e| Error::io_ctx(path, e))
}
