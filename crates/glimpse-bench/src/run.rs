//! A whole run: write missing checkpoints, then per workload time Glimpse's side (a
//! worker child) and the reference (a `reference.py time` child), check that both
//! produced what they were told to, and put the figures and ratios in a [`Report`].

use std::path::{Path, PathBuf};
use std::process::Command;

use glimpse_nn::quant::Quant;

use crate::error::{one_line, Error, Result};
use crate::protocol::{has_checkpoint, run_child, SideResult};
use crate::reference::Reference;
use crate::report::{Report, WorkloadReport};
use crate::stats::{fastest, ratio};
use crate::workload::Workload;

/// What every timing child is told: the reps, warm-up, forced new tokens, and where the
/// checkpoints are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Timed repetitions per workload (the median is reported); at least 1.
    pub reps: usize,
    /// Untimed calls after loading, before timing.
    pub warmup: usize,
    /// New tokens per call of the streaming workloads; at least 2.
    pub new_tokens: usize,
    /// The benchmark checkpoints' directory.
    pub models: PathBuf,
}

impl Settings {
    pub fn validate(&self) -> Result<()> {
        if self.reps == 0 {
            return Err(Error::InvalidConfig("--reps must be at least 1".into()));
        }
        if self.new_tokens < 2 {
            return Err(Error::InvalidConfig(
                "--new-tokens must be at least 2 (the time per token needs two tokens)".into(),
            ));
        }
        Ok(())
    }
}

/// How to start Glimpse's worker: a program and the arguments before `--worker W` (for
/// the CLI, its own executable and `bench`). The worker takes `--worker NAME --models
/// DIR --reps N --warmup N --new-tokens N [--quantize Q]`, calls [`crate::run_worker`]
/// and prints the result as one JSON line.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// A whole run.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The workloads, in order ([`crate::select`]).
    pub workloads: Vec<Workload>,
    pub settings: Settings,
    /// Created if missing; the caller writes `results.json` there.
    pub out: PathBuf,
    /// The interpreter with torch and transformers.
    pub python: PathBuf,
    /// Time Glimpse only (Python is still used to write missing checkpoints).
    pub skip_reference: bool,
    /// Glimpse's streaming workloads run with the language model quantised.
    pub quantize: Option<Quant>,
    pub worker: WorkerCommand,
}

/// `debug` or `release`: the build timed, as the report and the workers name it.
pub(crate) const BUILD: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// Runs every workload of `cfg` on both sides; progress lines go to `log`. A workload
/// that fails on either side has its errors in the report (see [`Report::failed`]);
/// only setup failures (the output directory, Python, the checkpoints) are errors.
pub fn run(cfg: &BenchConfig, log: &mut dyn FnMut(&str)) -> Result<Report> {
    let settings = &cfg.settings;
    settings.validate()?;
    if cfg!(debug_assertions) {
        log(
            "warning: this is a debug build; timings are not meaningful \
             (use `cargo run --release -p glimpse-cli -- bench`)",
        );
    }
    std::fs::create_dir_all(&cfg.out).map_err(Error::io(format!(
        "--out {}: cannot create directory",
        cfg.out.display()
    )))?;

    let models = &settings.models;
    let missing_models = missing_checkpoints(&cfg.workloads, models);
    let python = if cfg.skip_reference && missing_models.is_empty() {
        None
    } else {
        let why = if cfg.skip_reference {
            format!(
                "it writes the missing benchmark checkpoints ({}) in {}",
                missing_models.join(", "),
                models.display()
            )
        } else {
            "it runs the reference (or pass --skip-reference)".to_string()
        };
        Some(
            Reference::locate(&cfg.python).map_err(|e| Error::PythonNeeded {
                why,
                source: Box::new(e),
            })?,
        )
    };
    if !missing_models.is_empty() {
        let python = python.as_ref().expect("located above");
        log(&format!(
            "writing benchmark checkpoints ({}) to {} ...",
            missing_models.join(", "),
            models.display()
        ));
        python.make_models(models)?;
    }
    let reference = if cfg.skip_reference { None } else { python };

    let mut results = Vec::new();
    for (i, w) in cfg.workloads.iter().enumerate() {
        log(&format!("[{}/{}] {}", i + 1, cfg.workloads.len(), w.name));
        let mut errors = Vec::new();
        let quantize = cfg.quantize.filter(|_| w.is_streaming());
        let glimpse = run_child(worker_command(cfg, w, quantize), "glimpse worker")
            .map_err(|e| errors.push(format!("glimpse: {}", one_line(&e))))
            .ok();
        let reference = reference.as_ref().and_then(|py| {
            py.time(
                w.model_dir.map(|d| models.join(d)).as_deref(),
                w.name,
                settings,
            )
            .map_err(|e| errors.push(format!("reference: {}", one_line(&e))))
            .ok()
        });
        results.push(workload_report(
            w,
            settings.new_tokens,
            glimpse,
            reference,
            errors,
        ));
    }

    Ok(Report {
        reps: settings.reps,
        warmup: settings.warmup,
        new_tokens: settings.new_tokens,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        glimpse_build: BUILD.to_string(),
        quantize: cfg.quantize.map(|q| q.name().to_string()),
        models: models.clone(),
        results,
    })
}

/// The checkpoint directories the workloads need that `models` lacks, sorted, once each.
fn missing_checkpoints(workloads: &[Workload], models: &Path) -> Vec<&'static str> {
    let mut dirs: Vec<&str> = workloads.iter().filter_map(|w| w.model_dir).collect();
    dirs.sort_unstable();
    dirs.dedup();
    dirs.into_iter()
        .filter(|d| !has_checkpoint(&models.join(d)))
        .collect()
}

fn worker_command(cfg: &BenchConfig, w: &Workload, quantize: Option<Quant>) -> Command {
    let s = &cfg.settings;
    let mut worker = Command::new(&cfg.worker.program);
    worker
        .args(&cfg.worker.args)
        .arg("--worker")
        .arg(w.name)
        .arg("--models")
        .arg(&s.models)
        .args([
            "--reps",
            &s.reps.to_string(),
            "--warmup",
            &s.warmup.to_string(),
            "--new-tokens",
            &s.new_tokens.to_string(),
        ]);
    if let Some(q) = quantize {
        worker.args(["--quantize", q.name()]);
    }
    worker
}

/// One workload's row: both sides' results checked against the items one call must
/// produce, the FLOP counts and the ratios.
fn workload_report(
    w: &Workload,
    new_tokens: usize,
    glimpse: Option<SideResult>,
    reference: Option<SideResult>,
    mut errors: Vec<String>,
) -> WorkloadReport {
    let items = w.items_per_call(new_tokens);
    for side in [&glimpse, &reference].into_iter().flatten() {
        if side.items_per_rep != items {
            errors.push(format!(
                "{} produced {} {} per call, expected {items}",
                side.side, side.items_per_rep, w.unit
            ));
        }
    }
    let ratio_of = |pick: fn(&SideResult) -> Option<f64>| {
        ratio(
            glimpse.as_ref().and_then(pick),
            reference.as_ref().and_then(pick),
        )
    };
    let flops = w.flops(new_tokens);
    WorkloadReport {
        workload: w.name.to_string(),
        unit: w.unit.to_string(),
        items_per_rep: items,
        gflop_per_call: flops.call as f64 * 1e-9,
        gflop_per_token: flops.per_token.map(|f| f as f64 * 1e-9),
        ratio: ratio_of(|s| Some(s.median_s)),
        best_ratio: ratio_of(|s| fastest(&s.reps_s)),
        ttft_ratio: ratio_of(|s| s.ttft_median_s),
        per_token_ratio: ratio_of(|s| s.per_token_median_s),
        glimpse,
        reference,
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::side;
    use crate::workload::workload;

    #[test]
    fn settings_reject_no_reps_and_one_token() {
        let ok = Settings {
            reps: 1,
            warmup: 0,
            new_tokens: 2,
            models: "m".into(),
        };
        assert!(ok.validate().is_ok());
        let no_reps = Settings {
            reps: 0,
            ..ok.clone()
        };
        assert_eq!(
            no_reps.validate().unwrap_err().to_string(),
            "--reps must be at least 1"
        );
        let one_token = Settings {
            new_tokens: 1,
            ..ok
        };
        assert!(one_token
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--new-tokens must be at least 2"));
    }

    #[test]
    fn rows_hold_ratios_and_item_mismatches() {
        let w = workload("clip-image-b1").unwrap();
        let g = side("glimpse", w.name, vec![0.2, 0.1, 0.3]);
        let mut r = side("reference", w.name, vec![0.5, 0.3, 0.4]);
        r.items_per_rep = 2;
        let row = workload_report(&w, 32, Some(g), Some(r), Vec::new());
        assert!((row.ratio.unwrap() - 2.0).abs() < 1e-12);
        assert!((row.best_ratio.unwrap() - 3.0).abs() < 1e-12);
        assert_eq!(row.ttft_ratio, None);
        assert_eq!(
            row.errors,
            ["reference produced 2 img/s per call, expected 1"]
        );
        assert_eq!(row.gflop_per_call, w.flops(32).call as f64 * 1e-9);
        let alone = workload_report(&w, 32, None, None, vec!["glimpse: failed".into()]);
        assert_eq!((alone.ratio, alone.best_ratio), (None, None));
        assert_eq!(alone.errors.len(), 1);
    }

    #[test]
    fn workers_are_told_the_settings() {
        let cfg = BenchConfig {
            workloads: Vec::new(),
            settings: Settings {
                reps: 3,
                warmup: 1,
                new_tokens: 8,
                models: "out/models".into(),
            },
            out: "out".into(),
            python: "python3".into(),
            skip_reference: true,
            quantize: None,
            worker: WorkerCommand {
                program: "glimpse".into(),
                args: vec!["bench".into()],
            },
        };
        let cmd = worker_command(&cfg, &workload("blip2-opt").unwrap(), Some(Quant::Q4));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "bench --worker blip2-opt --models out/models --reps 3 --warmup 1 \
             --new-tokens 8 --quantize q4"
        );
        assert_eq!(
            missing_checkpoints(&crate::WORKLOADS[..3], Path::new("/no/such/dir")),
            ["clip-vit-base-patch32"]
        );
    }
}
