//! `glimpse bench`: times Glimpse and the reference (transformers on PyTorch) in one run;
//! the flags become a [`BenchConfig`], `glimpse_bench` runs it (see its crate doc for the
//! method), and the report is printed as a table or JSON. With the hidden `--worker W`
//! this executable is the Glimpse side of one workload, started by the run itself.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use glimpse_bench::{BenchConfig, Settings, WorkerCommand, DEFAULT_PYTHON, STREAM_TOKENS};
use glimpse_nn::quant::Quant;

use crate::output::{self, outln, print_json};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Comma-separated workloads to run (default: all). Known: matmul (the peak matrix
    /// rate, no model), clip-image-b1, clip-image-b8, clip-text-b32, blip-caption,
    /// blip-caption-beam3, blip2-opt, llava-llama.
    #[arg(long, value_delimiter = ',')]
    pub workloads: Vec<String>,
    /// Timed repetitions per workload (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// Untimed warm-up runs per workload, after loading and before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// New tokens per call for the streaming workloads (blip2-opt, llava-llama), forced
    /// on both sides; at least 2.
    #[arg(long, default_value_t = STREAM_TOKENS)]
    pub new_tokens: usize,
    /// Output directory: benchmark checkpoints (`models/`) and `results.json`.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Where the benchmark checkpoints live (default: `<out>/models`); missing ones are
    /// written by `tools/bench/reference.py make-models`.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Python interpreter with torch and transformers (the reference).
    #[arg(long, default_value = DEFAULT_PYTHON)]
    pub python: PathBuf,
    /// Time Glimpse only (the checkpoints must exist already, or Python must be there
    /// to write them).
    #[arg(long)]
    pub skip_reference: bool,
    /// Machine-readable JSON on stdout instead of a table for people.
    #[arg(long)]
    pub json: bool,
    /// Run Glimpse's side with the language model quantised (`q8` or `q4`); streaming
    /// workloads only (blip2-opt, llava-llama; with matmul, which is unaffected, the
    /// default selection with this flag). The reference stays f32.
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<Quant>,
    /// Internal: run one workload on the Glimpse side and print one JSON line.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let settings = Settings {
        reps: args.reps,
        warmup: args.warmup,
        new_tokens: args.new_tokens,
        models: args
            .models
            .clone()
            .unwrap_or_else(|| args.out.join("models")),
    };
    settings.validate()?;
    let mut log = |line: &str| output::note(line);
    if let Some(name) = &args.worker {
        let workload = glimpse_bench::workload(name)?;
        let result = glimpse_bench::run_worker(&workload, &settings, args.quantize, &mut log)?;
        return print_json(&result);
    }

    let workloads = glimpse_bench::select(&args.workloads, args.quantize)?;
    let program = std::env::current_exe().context("finding the glimpse executable")?;
    let config = BenchConfig {
        workloads,
        settings,
        out: args.out.clone(),
        python: args.python,
        skip_reference: args.skip_reference,
        quantize: args.quantize,
        worker: WorkerCommand {
            program,
            args: vec!["bench".into()],
        },
    };
    let report = glimpse_bench::run(&config, &mut log)?;
    let path = args.out.join("results.json");
    report.save(&path)?;
    if args.json {
        print_json(&report)?;
    } else {
        output::text(glimpse_bench::format_table(&report))?;
        outln!("results written to {}", path.display());
    }
    let failed = report.failed();
    if !failed.is_empty() {
        bail!("some workloads failed: {}", failed.join(", "));
    }
    Ok(())
}
