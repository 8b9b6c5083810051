//! The training loop: recipe → data → an [`Objective`] → AdamW updates with warmup +
//! cosine, clipping and accumulation; periodic validation, checkpoints that hold
//! weights, optimizer state, the objective's own state and the data position; progress
//! as [`Event`]s to an [`Observer`]; and `--resume`, which continues a killed run to
//! the same weights, bit for bit on CPU. Each run states its trainable and total
//! parameter counts ([`Event::Parameters`]).
//!
//! Why the resume is exact: every random draw (initial weights, caption choice, ITM
//! negatives) is a pure function of (seed, step or epoch, sample key); the data order
//! of an epoch is a pure function of (seed, epoch) and the loader skips to the saved
//! position without decoding; all state (weights, moments, momentum encoder, queues)
//! is saved as f32 tensors and reloaded unchanged; candle's CPU kernels are
//! deterministic for a fixed thread count.
//!
//! Run directory:
//! `OUT/recipe.toml`, `OUT/model/` (config.json, tokenizer files and, for image
//! models, the preprocessor config),
//! `OUT/checkpoints/step-NNNNNNNN/` (`model.safetensors`, `optimizer.safetensors`,
//! `state.safetensors`, `trainer.json`), `OUT/checkpoints/latest`, `OUT/log.jsonl`,
//! and `OUT/lock`, which a run holds locked while it lives so a second one into the
//! same directory is refused.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde::Serialize;
use serde_json::Value;

use crate::attributes::AttributesObjective;
use crate::blip::BlipObjective;
use crate::blip2::{Blip2Stage1Objective, Blip2Stage2Objective};
use crate::clip::ClipObjective;
use crate::lm::LmObjective;
use crate::objective::{scalar, Objective, Split, Step};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use crate::recipe::{ModelKind, Precision, Recipe};
use crate::samples::Inputs;
use crate::vqa::VqaObjective;
use crate::{Error, Result};

mod checkpoint;
mod data;
mod progress;
mod run_dir;
mod skips;

pub use crate::samples::{encode_texts, pick_qa, pick_text};
pub use checkpoint::{load_tensors, resolve_checkpoint, TrainerState};
pub use progress::{Event, InitPart, Observer, RunLog, StepEvent};
pub use run_dir::{preprocessor_json, RunFiles};

use checkpoint::{init_vision, read_json, save_checkpoint};
pub(crate) use checkpoint::{read_json as read_json_file, write_json as write_json_file};
use data::Data;
pub(crate) use run_dir::is_exported_model;
use run_dir::{lock_run_dir, prepare_model_dir};
use skips::Skips;

/// How to run `train`.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// The recipe; with `resume` and no recipe, the run's own copy is used.
    pub recipe: Option<PathBuf>,
    /// A run directory (its latest checkpoint) or one checkpoint directory.
    pub resume: Option<PathBuf>,
    /// Overrides `run.out`.
    pub out: Option<PathBuf>,
    /// Stop after this many updates in this process (tests simulate a kill with it).
    pub stop_after: Option<u64>,
    /// Show a progress bar (stderr).
    pub progress: bool,
}

/// What a finished (or stopped) run reports.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub out: PathBuf,
    pub steps: u64,
    pub total_steps: u64,
    pub epochs_completed: u64,
    pub last_loss: f64,
    pub samples_per_second: f64,
    pub skipped_samples: u64,
    pub skipped_reasons: Vec<String>,
    pub validation: Option<Value>,
    pub checkpoint: Option<PathBuf>,
}

/// Runs (or resumes) a recipe, reporting progress on the terminal and in
/// `OUT/log.jsonl` ([`RunLog`]).
pub fn train(opts: &TrainOptions) -> Result<TrainReport> {
    train_observed(opts, &mut RunLog::new(opts.progress))
}

/// Runs (or resumes) a recipe, sending its progress to `observer` (nothing else
/// reports it; wrap a [`RunLog`] to keep `OUT/log.jsonl`).
pub fn train_observed(opts: &TrainOptions, observer: &mut dyn Observer) -> Result<TrainReport> {
    let device = Device::Cpu;
    let run = Run::open(opts)?;
    let inputs = Inputs::new(
        &run.recipe,
        RunFiles::open(&run.out.join("model"))?,
        &device,
    );
    let r = &run.recipe;
    // The one place that knows every objective.
    match r.model.kind {
        ModelKind::Clip => {
            let o = ClipObjective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
        ModelKind::Blip => {
            let o = BlipObjective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
        ModelKind::BlipVqa => {
            let o = VqaObjective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
        ModelKind::VisionAttributes => {
            let o = AttributesObjective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
        ModelKind::Lm => {
            let o = LmObjective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
        ModelKind::Blip2Stage1 => {
            let o = Blip2Stage1Objective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
        ModelKind::LlavaStage1 | ModelKind::LlavaStage2 => {
            let o = crate::llava::LlavaObjective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
        ModelKind::Blip2Stage2 => {
            let o = Blip2Stage2Objective::new(r, inputs)?;
            run.train(o, opts, observer)
        }
    }
}

/// A run directory, prepared for a new run or resolved for a resume.
struct Run {
    recipe: Recipe,
    recipe_path: PathBuf,
    out: PathBuf,
    /// `(run directory, checkpoint)` when resuming.
    resume: Option<(PathBuf, PathBuf)>,
    /// `OUT/lock`, held until the run ends.
    _lock: File,
}

impl Run {
    /// Reads the recipe and, for a new run, writes `OUT/recipe.toml` and `OUT/model/`.
    fn open(opts: &TrainOptions) -> Result<Self> {
        let resume = match &opts.resume {
            Some(p) => Some(resolve_checkpoint(p)?),
            None => None,
        };
        let (recipe_path, mut recipe) = match (&opts.recipe, &resume) {
            (Some(r), _) => (r.clone(), Recipe::from_file(r)?),
            (None, Some((run, _))) => {
                let p = run.join("recipe.toml");
                (p.clone(), Recipe::from_file(&p)?)
            }
            (None, None) => return Err(Error::Train("give --recipe FILE or --resume RUN".into())),
        };
        if let Some(out) = &opts.out {
            recipe.run.out = out.clone();
        }
        if let Some((run, _)) = &resume {
            recipe.run.out = run.clone();
        }
        if recipe.optim.precision == Precision::Bf16 {
            return Err(Error::Recipe {
                path: recipe_path,
                message: "optim.precision = \"bf16\" needs a CUDA device; this build trains on the CPU in f32".into(),
            });
        }
        let out = recipe.run.out.clone();
        std::fs::create_dir_all(&out).map_err(|e| Error::io_ctx(&out, e))?;
        let lock = lock_run_dir(&out)?;
        // Read again under the lock: the run that held it may have moved `latest`.
        let resume = match &opts.resume {
            Some(p) => Some(resolve_checkpoint(p)?),
            None => None,
        };
        let ckpt_root = out.join("checkpoints");
        if resume.is_none() {
            if ckpt_root.join("latest").exists() {
                return Err(Error::io_ctx(
                    &out,
                    "already holds a run with checkpoints; resume it with --resume, or choose another --out",
                ));
            }
            std::fs::create_dir_all(&ckpt_root).map_err(|e| Error::io_ctx(&ckpt_root, e))?;
            let text = toml::to_string(&recipe).map_err(|e| Error::io_ctx(&recipe_path, e))?;
            std::fs::write(out.join("recipe.toml"), text).map_err(|e| Error::io_ctx(&out, e))?;
            prepare_model_dir(&recipe, &out.join("model"))?;
        }
        Ok(Self {
            recipe,
            recipe_path,
            out,
            resume,
            _lock: lock,
        })
    }

    /// Starting weights of a new run: `model.init`, then `model.init_vision`.
    fn init_weights<O: Objective>(
        &self,
        objective: &mut O,
        device: &Device,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        if self.resume.is_some() {
            return Ok(());
        }
        if let Some(init) = &self.recipe.model.init {
            if is_exported_model(init) {
                let p = init.join("model.safetensors");
                objective.init_from_export(&load_tensors(&p, device)?, &p.display().to_string())?;
                observer.event(&Event::Initialised {
                    part: InitPart::Model,
                    from: init,
                })?;
                return self.init_vision(objective, device, observer);
            }
            let (_, ckpt) = resolve_checkpoint(init)?;
            let p = ckpt.join("model.safetensors");
            objective.init_from(&load_tensors(&p, device)?, &p.display().to_string())?;
            observer.event(&Event::Initialised {
                part: InitPart::Model,
                from: &ckpt,
            })?;
        }
        self.init_vision(objective, device, observer)
    }

    /// `model.init_vision`, after `model.init`.
    fn init_vision<O: Objective>(
        &self,
        objective: &mut O,
        device: &Device,
        observer: &mut dyn Observer,
    ) -> Result<()> {
        if let Some(init) = &self.recipe.model.init_vision {
            let ckpt = init_vision(objective, init, device)?;
            observer.event(&Event::Initialised {
                part: InitPart::VisionTower,
                from: &ckpt,
            })?;
        }
        Ok(())
    }

    /// The loop: updates of `accumulate` micro-batches until the recipe's last update
    /// (or `stop_after`), validating and checkpointing as the recipe says.
    fn train<O: Objective>(
        self,
        mut objective: O,
        opts: &TrainOptions,
        observer: &mut dyn Observer,
    ) -> Result<TrainReport> {
        let device = Device::Cpu;
        let recipe = &self.recipe;
        self.init_weights(&mut objective, &device, observer)?;
        objective.weights_ready()?;

        // Data.
        let train_loader = Data::open(recipe, &recipe.data.train, true)?;
        let n_train = train_loader.count()?;
        let per_update = (recipe.optim.batch_size * recipe.optim.accumulate) as u64;
        let updates_per_epoch = n_train / per_update;
        if updates_per_epoch == 0 {
            return Err(Error::Recipe {
                path: self.recipe_path.clone(),
                message: format!(
                    "{} training samples in {} do not fill one update of {per_update}",
                    n_train, recipe.data.train
                ),
            });
        }
        let total_steps = match (recipe.optim.max_steps, recipe.optim.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => e * updates_per_epoch,
            (None, None) => unreachable!("validated"),
        };
        let val = match &recipe.data.val {
            Some(spec) => Some(load_val(&objective, spec, recipe)?),
            None => None,
        };

        // Optimizer and schedule.
        let o = &recipe.optim;
        let mut opt = AdamW::new(
            objective.trainable(),
            AdamWConfig {
                lr: o.lr,
                beta1: o.beta1,
                beta2: o.beta2,
                eps: o.eps,
                weight_decay: o.weight_decay,
            },
        )?;
        if o.vision_lr_scale != 1.0 {
            opt.scale_lr("vision_model.", o.vision_lr_scale);
        }
        let schedule = Schedule {
            peak: o.lr,
            warmup: o.warmup_steps,
            total: total_steps,
            min_ratio: o.min_lr_ratio,
        };

        let mut state = TrainerState {
            step: 0,
            epoch: 0,
            position: 0,
            total_steps,
            samples_seen: 0,
        };
        if let Some((_, ckpt)) = &self.resume {
            let origin = ckpt.display().to_string();
            crate::params::load_into(
                objective.vars(),
                &load_tensors(&ckpt.join("model.safetensors"), &device)?,
                &origin,
            )?;
            opt.load_state(&ckpt.join("optimizer.safetensors"))?;
            objective.load_state(ckpt)?;
            state = read_json(&ckpt.join("trainer.json"))?;
            state.total_steps = total_steps;
        }
        let count = |v: &[(String, candle_core::Var)]| v.iter().map(|(_, v)| v.elem_count()).sum();
        observer.event(&Event::Parameters {
            trainable: count(&objective.trainable()),
            total: count(&crate::params::sorted_vars(objective.vars())),
        })?;
        observer.event(&Event::Started {
            out: &self.out,
            recipe,
            state: &state,
            resumed: self.resume.is_some(),
        })?;

        let ckpt_root = self.out.join("checkpoints");
        let started = Instant::now();
        let mut samples_this_run = 0u64;
        let mut updates_this_run = 0u64;
        let mut last_loss = f64::NAN;
        let mut skips = Skips::default();
        let mut last_ckpt = None;
        let mut validation = None;
        let b = recipe.optim.batch_size;
        let accum = recipe.optim.accumulate;

        'epochs: while state.step < total_steps {
            let mut it = train_loader.epoch(state.epoch, state.position);
            // A resumed epoch may legitimately end before its next update.
            let whole_epoch = state.position == 0;
            let first_step = state.step;
            loop {
                if state.step >= total_steps {
                    break 'epochs;
                }
                if opts.stop_after.is_some_and(|n| updates_this_run >= n) {
                    break 'epochs;
                }
                // One update: `accum` micro-batches.
                let split = Split::Train { epoch: state.epoch };
                let mut grads: Option<Vec<Tensor>> = None;
                let mut loss_sum = 0.0;
                let mut parts: Vec<(String, f64)> = Vec::new();
                for micro in 0..accum {
                    let mut samples: Vec<O::Sample> = Vec::with_capacity(b);
                    while samples.len() < b {
                        match it.next() {
                            None => break,
                            Some(Err(e)) => return Err(e.into()),
                            Some(Ok(ex)) => match objective.sample(ex, split) {
                                Ok(s) => {
                                    skips.usable();
                                    samples.push(s);
                                }
                                Err(why) => skips.refused(why)?,
                            },
                        }
                    }
                    if samples.len() < b {
                        // End of the epoch: a partial update is dropped.
                        if whole_epoch && state.step == first_step {
                            return Err(skips.no_update(
                                &recipe.data.train,
                                state.epoch,
                                n_train,
                                per_update,
                                &it.recent_skips(),
                            ));
                        }
                        skips.end_epoch(it.stats());
                        state.epoch += 1;
                        state.position = 0;
                        continue 'epochs;
                    }
                    let batch = objective.batch(&samples, split)?;
                    let at = Step {
                        step: state.step,
                        micro: micro as u64,
                    };
                    let losses = objective.losses(&batch, at)?;
                    let loss = if accum > 1 {
                        (losses.total / accum as f64)?
                    } else {
                        losses.total
                    };
                    let g = opt.gradients(&loss.backward()?)?;
                    grads = Some(match grads {
                        None => g,
                        Some(prev) => prev
                            .iter()
                            .zip(&g)
                            .map(|(a, b)| a.add(b))
                            .collect::<candle_core::Result<_>>()?,
                    });
                    loss_sum += scalar(&loss)?;
                    for (k, v) in losses.parts {
                        match parts.iter_mut().find(|(n, _)| *n == k) {
                            Some(p) => p.1 += v / accum as f64,
                            None => parts.push((k, v / accum as f64)),
                        }
                    }
                }
                let mut grads = grads.expect("accumulate >= 1");
                let norm = clip_grad_norm(&mut grads, recipe.optim.max_grad_norm)?;
                if !loss_sum.is_finite() {
                    return Err(diverged(
                        &objective,
                        loss_sum,
                        state.step,
                        updates_this_run == 0,
                    ));
                }
                let lr = schedule.lr(state.step);
                opt.step(&grads, lr)?;
                state.step += 1;
                state.position = it.position();
                state.samples_seen += per_update;
                samples_this_run += per_update;
                updates_this_run += 1;
                last_loss = loss_sum;
                let rate = samples_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
                observer.event(&Event::Step(&StepEvent {
                    step: state.step,
                    total_steps,
                    epoch: state.epoch,
                    loss: loss_sum,
                    parts: &parts,
                    lr,
                    grad_norm: norm,
                    samples_per_second: rate,
                }))?;
                let want_val =
                    recipe.run.val_every > 0 && state.step.is_multiple_of(recipe.run.val_every);
                if let (true, Some(v)) = (want_val || state.step == total_steps, &val) {
                    let report = objective.validate(v)?;
                    observer.event(&Event::Validation {
                        step: state.step,
                        metrics: &report,
                    })?;
                    validation = Some(report);
                }
                if state.step.is_multiple_of(recipe.run.checkpoint_every)
                    || state.step == total_steps
                {
                    let path = save_checkpoint(
                        &objective,
                        &opt,
                        &state,
                        &ckpt_root,
                        recipe.run.keep_checkpoints,
                    )?;
                    observer.event(&Event::Checkpoint {
                        step: state.step,
                        path: &path,
                    })?;
                    last_ckpt = Some(path);
                }
            }
        }
        let report = TrainReport {
            out: self.out,
            steps: state.step,
            total_steps,
            epochs_completed: state.epoch,
            last_loss,
            samples_per_second: samples_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9),
            skipped_samples: skips.total,
            skipped_reasons: skips.reasons,
            validation,
            checkpoint: last_ckpt,
        };
        observer.event(&Event::Finished(&report))?;
        Ok(report)
    }
}

/// The first `run.val_samples` usable samples of the validation split, in file order,
/// as batches.
fn load_val<O: Objective>(objective: &O, spec: &str, recipe: &Recipe) -> Result<Vec<O::Batch>> {
    let loader = Data::open(recipe, spec, false)?;
    let mut samples = Vec::new();
    let mut it = loader.epoch(0, 0);
    let mut refused = Vec::new();
    for ex in it.by_ref() {
        match objective.sample(ex?, Split::Validation) {
            Ok(s) => samples.push(s),
            Err(why) => refused.push(why),
        }
        if samples.len() >= recipe.run.val_samples {
            break;
        }
    }
    if samples.is_empty() {
        let first = it.stats().skipped_reasons.into_iter().chain(refused).next();
        return Err(Error::Train(format!(
            "no usable validation sample in {spec}{}",
            first
                .map(|r| format!(" (first skipped: {r})"))
                .unwrap_or_default()
        )));
    }
    samples
        .chunks(recipe.optim.batch_size)
        .map(|c| objective.batch(c, Split::Validation))
        .collect()
}

/// The error for a non-finite loss: weights that were already non-finite before this
/// process trained came from a corrupt file, not from the learning rate.
fn diverged<O: Objective>(objective: &O, loss: f64, step: u64, first_update: bool) -> Error {
    let bad = crate::params::sorted_vars(objective.vars())
        .into_iter()
        .find(|(_, v)| !checkpoint::all_finite(v.as_tensor()).unwrap_or(false));
    Error::Train(match (bad, first_update) {
        (Some((name, _)), true) => format!(
            "loss is {loss} at update {step}, the first of this run: the starting weights \
             already hold NaN or infinite values ({name}); the checkpoint or init they \
             came from is corrupt"
        ),
        _ => format!("loss is {loss} at update {step}: training diverged (lower optim.lr)"),
    })
}
