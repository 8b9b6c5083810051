//! `glimpse bench`: times Glimpse and the reference (transformers on PyTorch) in one run,
//! on the same machine, on real-size architectures with random weights.
//!
//! Method (see docs/performance.md):
//! * `tools/bench/reference.py make-models` writes the checkpoints once (seeded random
//!   weights, f32 safetensors) under `<out>/models`; both sides load those directories.
//! * Every workload runs in its own child process on each side (`glimpse bench --worker W`
//!   re-invokes this executable; `reference.py time` for PyTorch), so each process's
//!   peak RSS is that workload's alone. A child loads the model, runs `--warmup` untimed
//!   and `--reps` timed calls and prints one JSON line; the median is reported.
//! * Inputs are random tensors of the same shapes on both sides; the timed call is the
//!   library API (`get_image_features`, `get_text_features`, `generate`), so image
//!   decoding and tokenization are not part of the figures.
//! * The streaming workloads (`blip2-opt`, `llava-llama`) also time each generated
//!   token: Glimpse through `glimpse_generate::generate_stream`'s per-step callback, the
//!   reference through a streamer passed to `generate`. They report the time to the
//!   first token (vision and prefill included) and the median gap between tokens; the
//!   prompt ids are the same fixed ids on both sides.
//! * `--quantize q8|q4` runs Glimpse's side of the streaming workloads with the language
//!   model's decoder layers quantised after loading (the reference stays f32), to show
//!   what quantisation buys per token; `load_s` then includes the quantisation.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use glimpse_generate::GenerationConfig;
use glimpse_models::blip::BlipForConditionalGeneration;
use glimpse_models::blip2::Blip2ForConditionalGeneration;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::clip::ClipModel;
use glimpse_models::llava::LlavaForConditionalGeneration;
use glimpse_nn::quant::Quant;
use serde::{Deserialize, Serialize};

use crate::output::print_json;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Comma-separated workloads to run (default: all). Known: clip-image-b1,
    /// clip-image-b8, clip-text-b32, blip-caption, blip-caption-beam3, blip2-opt,
    /// llava-llama.
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
    /// workloads only (blip2-opt, llava-llama, the default selection with this flag).
    /// The reference stays f32.
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<Quant>,
    /// Internal: run one workload on the Glimpse side and print one JSON line.
    #[arg(long, hide = true)]
    pub worker: Option<String>,
}

const DEFAULT_PYTHON: &str = "tools/.venv/bin/python";
const SCRIPT: &str = "tools/bench/reference.py";
const CLIP_DIR: &str = "clip-vit-base-patch32";
const BLIP_DIR: &str = "blip-image-captioning-base";
const BLIP2_DIR: &str = "blip2-vitb16-opt-125m";
const LLAVA_DIR: &str = "llava-clip-b32-llama-1b";
const CLIP_TEXT_BATCH: usize = 32;
const CLIP_TEXT_LEN: usize = 16;
const CAPTION_TOKENS: usize = 20;
/// Default new tokens per call of the streaming workloads (`--new-tokens`).
const STREAM_TOKENS: usize = 32;
/// Synthetic prompt ids, the same in `reference.py`. BLIP-2: OPT's bos and seven ids,
/// after the 32 query placeholders the processor puts first.
const BLIP2_TEXT_IDS: &[u32] = &[2, 1000, 2000, 3000, 4000, 5000, 6000, 7000];
/// LLaVA: these, one `<image>` per image token, then [`LLAVA_IDS_AFTER`].
const LLAVA_IDS_BEFORE: &[u32] = &[1, 1000, 2000];
const LLAVA_IDS_AFTER: &[u32] = &[3000, 4000, 5000, 6000, 7000];

/// What one workload runs; shapes and names are repeated in `reference.py`.
#[derive(Debug, Clone, Copy)]
enum Task {
    ClipImage {
        batch: usize,
    },
    ClipText,
    Caption {
        beams: usize,
    },
    /// Image + fixed prompt ids -> `--new-tokens` greedy tokens, each timestamped.
    Stream(StreamModel),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamModel {
    Blip2Opt,
    LlavaLlama,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    model_dir: &'static str,
    task: Task,
    /// Units counted by the throughput column, and how many one call produces.
    unit: &'static str,
    items: usize,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "clip-image-b1",
        model_dir: CLIP_DIR,
        task: Task::ClipImage { batch: 1 },
        unit: "img/s",
        items: 1,
    },
    Workload {
        name: "clip-image-b8",
        model_dir: CLIP_DIR,
        task: Task::ClipImage { batch: 8 },
        unit: "img/s",
        items: 8,
    },
    Workload {
        name: "clip-text-b32",
        model_dir: CLIP_DIR,
        task: Task::ClipText,
        unit: "text/s",
        items: CLIP_TEXT_BATCH,
    },
    Workload {
        name: "blip-caption",
        model_dir: BLIP_DIR,
        task: Task::Caption { beams: 1 },
        unit: "tok/s",
        items: CAPTION_TOKENS,
    },
    Workload {
        name: "blip-caption-beam3",
        model_dir: BLIP_DIR,
        task: Task::Caption { beams: 3 },
        unit: "tok/s",
        items: CAPTION_TOKENS,
    },
    Workload {
        name: "blip2-opt",
        model_dir: BLIP2_DIR,
        task: Task::Stream(StreamModel::Blip2Opt),
        unit: "tok/s",
        items: STREAM_TOKENS,
    },
    Workload {
        name: "llava-llama",
        model_dir: LLAVA_DIR,
        task: Task::Stream(StreamModel::LlavaLlama),
        unit: "tok/s",
        items: STREAM_TOKENS,
    },
];

impl Workload {
    /// Items one call produces under `--new-tokens`.
    fn items_per_call(&self, new_tokens: usize) -> usize {
        match self.task {
            Task::Stream(_) => new_tokens,
            _ => self.items,
        }
    }
}

fn workload(name: &str) -> Result<Workload> {
    WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .copied()
        .with_context(|| {
            let known: Vec<&str> = WORKLOADS.iter().map(|w| w.name).collect();
            format!(
                "--workloads: unknown workload {name:?}; known: {}",
                known.join(", ")
            )
        })
}

/// One side's measurement of one workload: the JSON line a child prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SideResult {
    pub side: String,
    pub workload: String,
    pub reps_s: Vec<f64>,
    pub median_s: f64,
    pub warmup: usize,
    pub items_per_rep: usize,
    pub load_s: f64,
    /// High-water mark of the child's resident set (model load included).
    pub peak_rss_bytes: Option<u64>,
    /// Resident set at the end (model loaded, after the reps): what stays, without
    /// load-time transients such as the pages of memory-mapped checkpoint files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_end_bytes: Option<u64>,
    pub threads: usize,
    /// Streaming workloads: seconds from the call to its first new token, per rep.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ttft_reps_s: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_median_s: Option<f64>,
    /// Streaming workloads: per rep, the median gap between consecutive new tokens.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_token_reps_s: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_token_median_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attn_implementation: Option<String>,
    /// Glimpse side: the language model's weight quantisation (`q8`, `q4`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
struct WorkloadReport {
    workload: String,
    unit: String,
    items_per_rep: usize,
    glimpse: Option<SideResult>,
    reference: Option<SideResult>,
    /// Reference median / Glimpse median: above 1 means Glimpse is faster.
    ratio: Option<f64>,
    /// The same for the time to first token and the time per token (streaming workloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    ttft_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_token_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Report {
    reps: usize,
    warmup: usize,
    new_tokens: usize,
    cpus: usize,
    glimpse_build: &'static str,
    /// Glimpse's language-model quantisation (streaming workloads), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    quantize: Option<String>,
    models: PathBuf,
    results: Vec<WorkloadReport>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.reps == 0 {
        bail!("--reps must be at least 1");
    }
    if args.new_tokens < 2 {
        bail!("--new-tokens must be at least 2 (the time per token needs two tokens)");
    }
    let models = args
        .models
        .clone()
        .unwrap_or_else(|| args.out.join("models"));
    if let Some(name) = &args.worker {
        return run_worker(
            &workload(name)?,
            &models,
            args.reps,
            args.warmup,
            args.new_tokens,
            args.quantize,
        );
    }

    let streaming = |w: &Workload| matches!(w.task, Task::Stream(_));
    let selected: Vec<Workload> = if args.workloads.is_empty() {
        WORKLOADS
            .iter()
            .filter(|w| args.quantize.is_none() || streaming(w))
            .copied()
            .collect()
    } else {
        args.workloads
            .iter()
            .map(|n| workload(n.trim()))
            .collect::<Result<_>>()?
    };
    if let Some(q) = args.quantize {
        if let Some(w) = selected.iter().find(|w| !streaming(w)) {
            bail!(
                "--quantize {q}: {} has no language model to quantise; \
                 --quantize applies to blip2-opt and llava-llama",
                w.name
            );
        }
    }
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; timings are not meaningful \
             (use `cargo run --release -p glimpse-cli -- bench`)"
        );
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create directory", args.out.display()))?;

    let missing_models: Vec<&str> = {
        let mut dirs: Vec<&str> = selected.iter().map(|w| w.model_dir).collect();
        dirs.sort_unstable();
        dirs.dedup();
        dirs.into_iter()
            .filter(|d| !has_checkpoint(&models.join(d)))
            .collect()
    };
    let python = if args.skip_reference && missing_models.is_empty() {
        None
    } else {
        let why = if args.skip_reference {
            format!(
                "it writes the missing benchmark checkpoints ({}) in {}",
                missing_models.join(", "),
                models.display()
            )
        } else {
            "it runs the reference (or pass --skip-reference)".to_string()
        };
        Some(Reference::locate(&args.python).with_context(|| format!("Python is needed: {why}"))?)
    };
    if !missing_models.is_empty() {
        let python = python.as_ref().expect("located above");
        eprintln!(
            "writing benchmark checkpoints ({}) to {} ...",
            missing_models.join(", "),
            models.display()
        );
        python.make_models(&models)?;
    }
    let reference = if args.skip_reference { None } else { python };

    let exe = std::env::current_exe().context("finding the glimpse executable")?;
    let mut results = Vec::new();
    for (i, w) in selected.iter().enumerate() {
        eprintln!("[{}/{}] {}", i + 1, selected.len(), w.name);
        let mut errors = Vec::new();
        let mut worker = Command::new(&exe);
        worker
            .arg("bench")
            .arg("--worker")
            .arg(w.name)
            .arg("--models")
            .arg(&models)
            .args([
                "--reps",
                &args.reps.to_string(),
                "--warmup",
                &args.warmup.to_string(),
                "--new-tokens",
                &args.new_tokens.to_string(),
            ]);
        if let Some(q) = args.quantize {
            worker.args(["--quantize", q.name()]);
        }
        let glimpse = run_child(worker, "glimpse worker")
            .map_err(|e| errors.push(format!("glimpse: {e:#}")))
            .ok();
        let reference = reference.as_ref().and_then(|py| {
            py.time(
                &models.join(w.model_dir),
                w.name,
                args.reps,
                args.warmup,
                args.new_tokens,
            )
            .map_err(|e| errors.push(format!("reference: {e:#}")))
            .ok()
        });
        let items = w.items_per_call(args.new_tokens);
        for side in [&glimpse, &reference].into_iter().flatten() {
            if side.items_per_rep != items {
                errors.push(format!(
                    "{} produced {} {} per call, expected {items}",
                    side.side, side.items_per_rep, w.unit
                ));
            }
        }
        let ratio_of = |pick: fn(&SideResult) -> Option<f64>| match (&glimpse, &reference) {
            (Some(g), Some(r)) => match (pick(g), pick(r)) {
                (Some(g), Some(r)) if g > 0.0 => Some(r / g),
                _ => None,
            },
            _ => None,
        };
        results.push(WorkloadReport {
            workload: w.name.to_string(),
            unit: w.unit.to_string(),
            items_per_rep: items,
            ratio: ratio_of(|s| Some(s.median_s)),
            ttft_ratio: ratio_of(|s| s.ttft_median_s),
            per_token_ratio: ratio_of(|s| s.per_token_median_s),
            glimpse,
            reference,
            errors,
        });
    }

    let report = Report {
        reps: args.reps,
        warmup: args.warmup,
        new_tokens: args.new_tokens,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        glimpse_build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        quantize: args.quantize.map(|q| q.name().to_string()),
        models,
        results,
    };
    let path = args.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    if args.json {
        print_json(&report)?;
    } else {
        print_table(&report);
        println!("results written to {}", path.display());
    }
    let failed: Vec<&str> = report
        .results
        .iter()
        .filter(|r| !r.errors.is_empty())
        .map(|r| r.workload.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("some workloads failed: {}", failed.join(", "));
    }
    Ok(())
}

fn has_checkpoint(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && (dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file())
}

/// Runs a child that prints its result as the last line of stdout; stderr (progress)
/// goes straight to ours.
fn run_child(mut cmd: Command, what: &str) -> Result<SideResult> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {what} ({:?})", cmd.get_program()))?;
    if !out.status.success() {
        bail!("{what} failed ({}); its messages are above", out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON result"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: unreadable result {line:?}"))
}

/// The Python side: an interpreter and `reference.py`.
struct Reference {
    python: PathBuf,
    script: PathBuf,
}

impl Reference {
    fn locate(python: &Path) -> Result<Self> {
        let hint = "run `bash tools/setup_venv.sh` to create it, or pass --python PATH";
        let python = if python == Path::new(DEFAULT_PYTHON) {
            find_in_workspace(DEFAULT_PYTHON)
                .with_context(|| format!("reference Python {DEFAULT_PYTHON} not found: {hint}"))?
        } else if python.components().count() > 1 && !python.exists() {
            bail!("--python {}: no such file: {hint}", python.display());
        } else {
            python.to_path_buf()
        };
        let script = find_in_workspace(SCRIPT).with_context(|| {
            format!("{SCRIPT} not found; run glimpse bench from the repository root")
        })?;
        Ok(Self { python, script })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).env("HF_HUB_OFFLINE", "1");
        cmd
    }

    fn make_models(&self, out: &Path) -> Result<()> {
        let status = self
            .command()
            .arg("make-models")
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("starting {}", self.python.display()))?;
        if !status.success() {
            bail!("reference.py make-models failed ({status}); its messages are above");
        }
        Ok(())
    }

    fn time(
        &self,
        model: &Path,
        workload: &str,
        reps: usize,
        warmup: usize,
        new_tokens: usize,
    ) -> Result<SideResult> {
        let mut cmd = self.command();
        cmd.arg("time")
            .arg("--model")
            .arg(model)
            .args(["--workload", workload])
            .args(["--reps", &reps.to_string(), "--warmup", &warmup.to_string()])
            .args(["--new-tokens", &new_tokens.to_string()]);
        run_child(cmd, "reference.py time")
    }
}

/// `rel` under the current directory, else under the workspace this binary was built
/// from (so the bench also works when started from elsewhere in the checkout).
fn find_in_workspace(rel: &str) -> Option<PathBuf> {
    let here = PathBuf::from(rel);
    if here.exists() {
        return Some(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    built.exists().then_some(built)
}

// ---------------------------------------------------------------------------------
// Glimpse side (child process)

fn run_worker(
    w: &Workload,
    models: &Path,
    reps: usize,
    warmup: usize,
    new_tokens: usize,
    quantize: Option<Quant>,
) -> Result<()> {
    let dir = models.join(w.model_dir);
    if !has_checkpoint(&dir) {
        bail!(
            "{}: no benchmark checkpoint (run `glimpse bench` without --worker)",
            dir.display()
        );
    }
    let start = Instant::now();
    let mut step = build_step(w, &dir, new_tokens, quantize)?;
    let load_s = start.elapsed().as_secs_f64();

    let mut reps_s = Vec::with_capacity(reps);
    let (mut ttft_reps_s, mut per_token_reps_s) = (Vec::new(), Vec::new());
    let mut items = 0;
    for i in 0..warmup + reps {
        let t = Instant::now();
        let out = step()?;
        let dt = t.elapsed().as_secs_f64();
        items = out.items;
        let what = if i < warmup { "warmup" } else { "rep" };
        match token_times(t, &out.token_stamps) {
            Some((ttft, per_token)) => {
                eprintln!(
                    "  glimpse {}: {what} {dt:.3} s, first token {ttft:.3} s, {:.1} ms/token",
                    w.name,
                    per_token * 1e3
                );
                if i >= warmup {
                    ttft_reps_s.push(ttft);
                    per_token_reps_s.push(per_token);
                }
            }
            None => eprintln!("  glimpse {}: {what} {dt:.3} s", w.name),
        }
        if i >= warmup {
            reps_s.push(dt);
        }
    }
    let median_of = |xs: &[f64]| (!xs.is_empty()).then(|| median(xs));
    print_json(&SideResult {
        side: "glimpse".into(),
        workload: w.name.into(),
        median_s: median(&reps_s),
        reps_s,
        warmup,
        items_per_rep: items,
        load_s,
        peak_rss_bytes: proc_status_bytes("VmHWM"),
        rss_end_bytes: proc_status_bytes("VmRSS"),
        threads: candle_core::utils::get_num_threads(),
        ttft_median_s: median_of(&ttft_reps_s),
        ttft_reps_s,
        per_token_median_s: median_of(&per_token_reps_s),
        per_token_reps_s,
        attn_implementation: None,
        quantize: quantize.map(|q| q.name().to_string()),
        versions: Some(serde_json::json!({
            "glimpse": env!("CARGO_PKG_VERSION"),
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        })),
    })
}

/// What one timed call produced.
struct Measured {
    /// Images, texts or new tokens.
    items: usize,
    /// Streaming workloads: when each new token was chosen (empty otherwise).
    token_stamps: Vec<Instant>,
}

impl From<usize> for Measured {
    fn from(items: usize) -> Self {
        Self {
            items,
            token_stamps: Vec::new(),
        }
    }
}

/// Time to first token (from `start`) and the median gap between consecutive tokens,
/// in seconds; `None` without at least two stamps.
fn token_times(start: Instant, stamps: &[Instant]) -> Option<(f64, f64)> {
    let first = stamps.first()?;
    let gaps: Vec<f64> = stamps
        .windows(2)
        .map(|p| (p[1] - p[0]).as_secs_f64())
        .collect();
    if gaps.is_empty() {
        return None;
    }
    Some(((*first - start).as_secs_f64(), median(&gaps)))
}

/// One timed call.
type Step = Box<dyn FnMut() -> Result<Measured>>;

/// Loads the workload's model (quantising its language model when asked) and builds its
/// inputs; only the returned closure is timed.
fn build_step(
    w: &Workload,
    dir: &Path,
    new_tokens: usize,
    quantize: Option<Quant>,
) -> Result<Step> {
    let device = Device::Cpu;
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("config.json"))
            .with_context(|| format!("reading {}", dir.join("config.json").display()))?,
    )
    .with_context(|| format!("parsing {}", dir.join("config.json").display()))?;
    let field = |section: &str, key: &str| -> Result<usize> {
        config[section][key]
            .as_u64()
            .map(|v| v as usize)
            .with_context(|| format!("{}: no {section}.{key}", dir.display()))
    };
    let dir_str = dir.to_str().context("model directory is not UTF-8")?;
    let files = ModelFiles::resolve(dir_str)?;
    let mut rng = SplitMix(0x5EED);

    match w.task {
        Task::ClipImage { batch } => {
            let model = ClipModel::load(&files, &device)?;
            let size = field("vision_config", "image_size")?;
            let pixels = rng.tensor(&[batch, 3, size, size], &device)?;
            Ok(Box::new(move || {
                let features = model.get_image_features(&pixels)?; // [batch, proj]
                Ok(features.dim(0)?.into())
            }))
        }
        Task::ClipText => {
            let model = ClipModel::load(&files, &device)?;
            let eos = field("text_config", "eos_token_id")? as u32;
            // Ids below bos/eos (49406, 49407), eos last: pooling picks the final position.
            let mut ids: Vec<u32> = (0..CLIP_TEXT_BATCH * CLIP_TEXT_LEN)
                .map(|_| (rng.next() % 49406) as u32)
                .collect();
            for row in ids.chunks_mut(CLIP_TEXT_LEN) {
                row[CLIP_TEXT_LEN - 1] = eos;
            }
            let ids = Tensor::from_vec(ids, (CLIP_TEXT_BATCH, CLIP_TEXT_LEN), &device)?;
            let mask = Tensor::ones((CLIP_TEXT_BATCH, CLIP_TEXT_LEN), DType::U32, &device)?;
            Ok(Box::new(move || {
                let features = model.get_text_features(&ids, &mask)?; // [32, proj]
                Ok(features.dim(0)?.into())
            }))
        }
        Task::Caption { beams } => {
            let model = BlipForConditionalGeneration::load(&files, &device)?;
            let size = field("vision_config", "image_size")?;
            let pixels = rng.tensor(&[1, 3, size, size], &device)?;
            // Exactly CAPTION_TOKENS new tokens, as the reference is told to produce;
            // end and pad ids from the model, as the reference's `generate` sets them.
            let gen = model.generation_config(&GenerationConfig {
                max_new_tokens: CAPTION_TOKENS,
                min_new_tokens: CAPTION_TOKENS,
                num_beams: beams,
                do_sample: false,
                ..GenerationConfig::default()
            });
            gen.validate()?;
            Ok(Box::new(move || {
                let ids = model.generate(&pixels, None, &gen)?; // one Vec<u32> per image
                let n = ids.first().map_or(0, Vec::len);
                if n != CAPTION_TOKENS {
                    bail!("generated {n} tokens, expected {CAPTION_TOKENS}");
                }
                Ok(n.into())
            }))
        }
        Task::Stream(kind) => {
            let size = field("vision_config", "image_size")?;
            let pixels = rng.tensor(&[1, 3, size, size], &device)?;
            // Exactly `new_tokens` greedy tokens, as the reference is told to produce.
            let forced = GenerationConfig {
                max_new_tokens: new_tokens,
                min_new_tokens: new_tokens,
                num_beams: 1,
                do_sample: false,
                ..GenerationConfig::default()
            };
            match kind {
                StreamModel::Blip2Opt => {
                    let mut model = Blip2ForConditionalGeneration::load(&files, &device)?;
                    if let Some(q) = quantize {
                        let report = model.quantize_language_model(q)?;
                        eprintln!("  glimpse {}: {report}", w.name);
                    }
                    // The processor's ids: 32 query placeholders, then the text ids.
                    let ids = model.processor_ids(BLIP2_TEXT_IDS);
                    let ids = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?; // [1, t]
                    let gen = model.generation_config(&forced);
                    gen.validate()?;
                    Ok(Box::new(move || {
                        let mut stamps = Vec::with_capacity(new_tokens);
                        // Timed from here: vision tower, Q-Former, projection, prefill.
                        let mut cache = model.new_cache(&pixels, &ids, None)?;
                        let out = glimpse_generate::generate_stream(
                            &model,
                            &mut cache,
                            &ids,
                            &gen,
                            |_| {
                                stamps.push(Instant::now());
                                true
                            },
                        )?;
                        streamed(out, stamps, new_tokens)
                    }))
                }
                StreamModel::LlavaLlama => {
                    let mut model = LlavaForConditionalGeneration::load(&files, &device)?;
                    if let Some(q) = quantize {
                        let report = model.quantize_language_model(q)?;
                        eprintln!("  glimpse {}: {report}", w.name);
                    }
                    let cfg = model.config();
                    let mut ids = LLAVA_IDS_BEFORE.to_vec();
                    ids.extend(std::iter::repeat_n(
                        cfg.image_token_index,
                        cfg.image_tokens_per_image(),
                    ));
                    ids.extend_from_slice(LLAVA_IDS_AFTER);
                    let ids = Tensor::new(ids.as_slice(), &device)?.unsqueeze(0)?; // [1, t]
                    let gen = model.generation_config(&forced);
                    gen.validate()?;
                    Ok(Box::new(move || {
                        let mut stamps = Vec::with_capacity(new_tokens);
                        // Timed from here: vision tower, projector, prefill.
                        let features = model.image_features(&pixels)?; // [1, n, d]
                        let mut cache = model.new_cache(Some(&features));
                        let out = glimpse_generate::generate_stream(
                            &model,
                            &mut cache,
                            &ids,
                            &gen,
                            |_| {
                                stamps.push(Instant::now());
                                true
                            },
                        )?;
                        streamed(out, stamps, new_tokens)
                    }))
                }
            }
        }
    }
}

/// Checks that a streamed generation produced `expected` tokens, one stamp each.
fn streamed(out: Vec<Vec<u32>>, stamps: Vec<Instant>, expected: usize) -> Result<Measured> {
    let n = out.first().map_or(0, Vec::len);
    if n != expected || stamps.len() != expected {
        bail!(
            "generated {n} tokens in {} steps, expected {expected}",
            stamps.len()
        );
    }
    Ok(Measured {
        items: n,
        token_stamps: stamps,
    })
}

/// Deterministic inputs without a dependency (candle cannot seed its CPU generator).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Values uniform in [-2, 2): the range of normalised pixels.
    fn tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
            .collect();
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A memory field of this process's `/proc/self/status` (Linux: `VmHWM` is the peak
/// resident set, `VmRSS` the current one); `None` elsewhere.
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

// ---------------------------------------------------------------------------------
// Printing for people

fn print_table(report: &Report) {
    let threads = |pick: fn(&WorkloadReport) -> Option<&SideResult>| {
        report.results.iter().find_map(pick).map(|s| s.threads)
    };
    println!(
        "glimpse ({} build, {} threads{}) vs reference (transformers on PyTorch, {} threads); \
         {} cpus; median of {} reps after {} warm-up",
        report.glimpse_build,
        fmt_opt(threads(|r| r.glimpse.as_ref())),
        report
            .quantize
            .as_ref()
            .map_or(String::new(), |q| format!(", {q} language model")),
        fmt_opt(threads(|r| r.reference.as_ref())),
        report.cpus,
        report.reps,
        report.warmup,
    );
    println!(
        "{:<20} {:>24} {:>24} {:>7} {:>12} {:>12}",
        "workload", "glimpse", "reference", "ratio", "rss glimpse", "rss ref"
    );
    for r in &report.results {
        let side = |s: &Option<SideResult>| match s {
            Some(s) => format!(
                "{:.3} s ({:.1} {})",
                s.median_s,
                s.items_per_rep as f64 / s.median_s,
                r.unit
            ),
            None => "-".into(),
        };
        let rss = |s: &Option<SideResult>| {
            s.as_ref()
                .and_then(|s| s.peak_rss_bytes)
                .map_or("-".into(), |b| {
                    format!("{:.0} MiB", b as f64 / (1 << 20) as f64)
                })
        };
        println!(
            "{:<20} {:>24} {:>24} {:>7} {:>12} {:>12}",
            r.workload,
            side(&r.glimpse),
            side(&r.reference),
            r.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
            rss(&r.glimpse),
            rss(&r.reference),
        );
        let streamed = |pick: fn(&SideResult) -> Option<f64>| {
            [&r.glimpse, &r.reference].map(|s| s.as_ref().and_then(pick))
        };
        let ttft = streamed(|s| s.ttft_median_s);
        let per_token = streamed(|s| s.per_token_median_s);
        if ttft.iter().chain(&per_token).any(Option::is_some) {
            let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.2}x"));
            let secs = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3} s"));
            let per_tok = |x: Option<f64>| {
                x.map_or("-".into(), |x| {
                    format!("{:.1} ms ({:.1} tok/s)", x * 1e3, 1.0 / x)
                })
            };
            println!(
                "{:<20} {:>24} {:>24} {:>7}",
                "  first token",
                secs(ttft[0]),
                secs(ttft[1]),
                ratio(r.ttft_ratio),
            );
            println!(
                "{:<20} {:>24} {:>24} {:>7}",
                "  per token",
                per_tok(per_token[0]),
                per_tok(per_token[1]),
                ratio(r.per_token_ratio),
            );
        }
        for e in &r.errors {
            println!("  error: {e}");
        }
    }
    println!("ratio = reference median / glimpse median (above 1: Glimpse is faster)");
    if report.results.iter().any(|r| r.ttft_ratio.is_some()) {
        println!(
            "first token: from the call to the first new token (vision and prefill); \
             per token: median gap between new tokens ({} per call)",
            report.new_tokens
        );
    }
    if let Some(attn) = report
        .results
        .iter()
        .filter_map(|r| r.reference.as_ref())
        .map(|s| {
            format!(
                "{}={}",
                s.workload,
                s.attn_implementation.as_deref().unwrap_or("?")
            )
        })
        .reduce(|a, b| format!("{a}, {b}"))
    {
        println!("reference attention: {attn}");
    }
}

fn fmt_opt(x: Option<usize>) -> String {
    x.map_or("?".into(), |x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn every_workload_is_found_and_unknown_ones_are_named() {
        for w in WORKLOADS {
            assert_eq!(workload(w.name).unwrap().name, w.name);
        }
        let err = workload("clip-image-b2").unwrap_err().to_string();
        assert!(
            err.contains("clip-image-b2") && err.contains("clip-image-b8"),
            "{err}"
        );
    }

    #[test]
    fn token_times_are_first_token_and_median_gap() {
        use std::time::Duration;
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let (ttft, per_token) = token_times(t0, &[at(100), at(110), at(130), at(140)]).unwrap();
        assert!((ttft - 0.100).abs() < 1e-9, "{ttft}");
        assert!((per_token - 0.010).abs() < 1e-9, "{per_token}"); // gaps 10, 20, 10 ms
        assert!(token_times(t0, &[at(100)]).is_none());
        assert!(token_times(t0, &[]).is_none());
    }

    #[test]
    fn streaming_workloads_count_new_tokens() {
        for name in ["blip2-opt", "llava-llama"] {
            let w = workload(name).unwrap();
            assert!(matches!(w.task, Task::Stream(_)));
            assert_eq!(w.items_per_call(STREAM_TOKENS), STREAM_TOKENS);
            assert_eq!(w.items_per_call(8), 8);
        }
        assert_eq!(
            workload("blip-caption").unwrap().items_per_call(8),
            CAPTION_TOKENS
        );
    }

    /// Workload names, directories and prompt ids are written twice; keep them equal.
    #[test]
    fn reference_script_agrees_on_names_dirs_and_prompt_ids() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(SCRIPT);
        let text = std::fs::read_to_string(&script).unwrap();
        for w in WORKLOADS {
            assert!(
                text.contains(&format!("\"{}\"", w.name)),
                "{} not in {SCRIPT}",
                w.name
            );
            assert!(
                text.contains(&format!("\"{}\"", w.model_dir)),
                "{}",
                w.model_dir
            );
        }
        let list = |ids: &[u32]| {
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            format!("[{}]", ids.join(", "))
        };
        for (name, ids) in [
            ("BLIP2_TEXT_IDS", BLIP2_TEXT_IDS),
            ("LLAVA_IDS_BEFORE", LLAVA_IDS_BEFORE),
            ("LLAVA_IDS_AFTER", LLAVA_IDS_AFTER),
        ] {
            let line = format!("{name} = {}", list(ids));
            assert!(text.contains(&line), "{SCRIPT} lacks `{line}`");
        }
        assert!(text.contains(&format!("STREAM_TOKENS = {STREAM_TOKENS}")));
    }

    #[test]
    fn random_pixels_are_deterministic_and_in_range() {
        let a = SplitMix(1).tensor(&[2, 3, 4, 4], &Device::Cpu).unwrap();
        let b = SplitMix(1).tensor(&[2, 3, 4, 4], &Device::Cpu).unwrap();
        let (a, b) = (
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(a, b);
        assert!(a.iter().all(|x| (-2.0..2.0).contains(x)));
    }
}
