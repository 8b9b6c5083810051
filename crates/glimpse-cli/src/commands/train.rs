//! `glimpse train` and `glimpse export`: thin wrappers over `glimpse_train`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use glimpse_train::trainer::{train_observed, RunLog, TrainOptions};

use crate::output::{self, outln};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Recipe (TOML): model config, data, schedule, losses, run directory.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// Continue a run: its directory (latest checkpoint) or one checkpoint directory.
    /// Without --recipe, the run's own recipe is used.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Run directory (overrides the recipe's run.out).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Stop after this many updates in this process (the run stays resumable).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Print the final report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run_train(args: TrainArgs) -> Result<()> {
    if args.recipe.is_none() && args.resume.is_none() {
        anyhow::bail!("give --recipe FILE (a new run) or --resume RUN (continue one)");
    }
    let progress = !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let opts = TrainOptions {
        recipe: args.recipe,
        resume: args.resume,
        out: args.out,
        stop_after: args.stop_after,
        progress,
    };
    // The progress bar (or stderr lines) and OUT/log.jsonl.
    let mut observer = RunLog::new(progress);
    let report = train_observed(&opts, &mut observer).context("training failed")?;
    // The run's page; a run that trained is not failed for want of it.
    let page = glimpse_report::write_run_report(std::slice::from_ref(&report.out), None);
    if args.json {
        match &page {
            Ok(w) => output::note(format_args!("report: {}", w.path.display())),
            Err(e) => output::note(format_args!("warning: no report page: {e}")),
        }
        return output::print_json(&report);
    }
    outln!(
        "{} after {}/{} updates: loss {:.4}, {:.1} samples/s",
        report.out.display(),
        report.steps,
        report.total_steps,
        report.last_loss,
        report.samples_per_second
    );
    if let Some(v) = &report.validation {
        outln!("validation: {v}");
    }
    if report.skipped_samples > 0 {
        outln!("skipped {} samples:", report.skipped_samples);
        for r in &report.skipped_reasons {
            outln!("  {r}");
        }
    }
    if let Some(c) = &report.checkpoint {
        outln!("checkpoint: {}", c.display());
    }
    match page {
        Ok(w) => outln!("report: {}", w.path.display()),
        Err(e) => output::note(format_args!("warning: no report page: {e}")),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A training run directory (its latest checkpoint) or a checkpoint directory.
    #[arg(long)]
    pub run: PathBuf,
    /// Output directory. CLIP: a `CLIPModel` directory; BLIP: `caption/` and
    /// `retrieval/` inside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` even when it holds files that are not a previous export.
    #[arg(long)]
    pub force: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn run_export(args: ExportArgs) -> Result<()> {
    let done = glimpse_train::export::export(&args.run, &args.out, args.force)
        .with_context(|| format!("cannot export {}", args.run.display()))?;
    if args.json {
        return output::print_json(&done);
    }
    for e in done {
        outln!(
            "{}: {} ({} tensors)",
            e.dir.display(),
            e.architecture,
            e.tensors
        );
    }
    Ok(())
}
