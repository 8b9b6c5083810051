//! `glimpse eval`: a thin wrapper over `glimpse_eval`. Validates the flags and
//! the data path before the model is loaded, then evaluates and prints.

use std::io::IsTerminal;

use anyhow::{Context, Result};
use clap::Args;
use glimpse_eval::{evaluate, EvalOptions, EvalReport, Metrics, Tally, Task};

use super::{load_quantized, model_name, Bundled};
use crate::cli::{DecodeArgs, ModelArgs};
use crate::output::{outln, print_json};

#[derive(Debug, Args)]
pub struct EvalArgs {
    // Without --model: the bundled model of the task (CLIP for zeroshot, the BLIP
    // retrieval, caption or VQA model for the others).
    #[command(flatten)]
    pub common: ModelArgs,
    /// Dataset: a directory of WebDataset shards (e.g. `data/synth/val`), a JSONL
    /// file, a COCO captions `.json`, or a glob.
    #[arg(long)]
    pub data: String,
    /// What to measure: image-text retrieval recall, zero-shot accuracy, caption
    /// BLEU-4/CIDEr-D (and attribute accuracy on synthetic data), or VQA accuracy.
    /// `plan`: a planner's plans against gold plans (TaskBench's node, edge and
    /// argument F1, edit distance, parse and validate rates).
    /// `agent`: the planning agent end to end on a JSONL set of requests with
    /// expectations (`glimpse data plans`), scored as the share of right answers.
    /// `capfilt`: a `glimpse capfilt` output directory (`--data OUT`) made from data
    /// with known noise (`glimpse data synth --noise P`): corrupted web captions
    /// removed and clean ones kept, per corruption kind.
    #[arg(long, value_parser = ["retrieval", "zeroshot", "caption", "vqa", "plan", "agent", "capfilt"])]
    pub task: String,
    /// Evaluate at most N usable images (in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images (and texts) per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// zeroshot: comma-separated label set (default: every colour x shape for
    /// synthetic data, else the distinct `label` values).
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
    /// zeroshot: prompt template; `{}` is replaced by each label.
    #[arg(long, default_value = "a {}.")]
    pub template: String,
    /// retrieval: re-rank each query's top K candidates by ITM probability
    /// (BlipForImageTextRetrieval).
    #[arg(long, value_name = "K")]
    pub rerank: Option<usize>,
    /// caption: text every caption starts with; removed before scoring.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Also write a page with the figures and the evidence behind them (queries with
    /// their top-5 images, captions beside their images, wrong answers, the confusion
    /// matrix) as DIR/index.html, images embedded.
    #[arg(long, value_name = "DIR")]
    pub report: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Evaluate the model quantised as `--quantize` does for the other commands (`q8`:
    /// 8-bit encoders), to measure what the rounding costs.
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
    /// agent: `gold` runs each record's gold plan, skipping the planner.
    #[arg(long, value_parser = ["gold"])]
    pub plans: Option<String>,
    /// plan, agent: the planner, a planner model directory (default: the bundled
    /// models/planner-synth) or an OpenAI-compatible URL.
    #[arg(long, value_name = "DIR|URL")]
    pub planner: Option<String>,
    /// agent: the model id to ask at a `--planner` URL.
    #[arg(long)]
    pub planner_model: Option<String>,
    /// agent: a registry file of external tools.
    #[arg(long)]
    pub registry: Option<std::path::PathBuf>,
    /// agent: an embedding index for the retrieval tasks.
    #[arg(long)]
    pub index: Option<std::path::PathBuf>,
    /// capfilt: judge the stored ITM probabilities at this threshold instead of the
    /// run's own.
    #[arg(long)]
    pub threshold: Option<f64>,
}

pub fn run(args: EvalArgs) -> Result<()> {
    if args.task == "plan" {
        super::eval_plan::check_data(&args.data)?;
        return super::eval_plan::run(
            &args.data,
            args.planner.as_deref(),
            args.planner_model.as_deref(),
            args.limit,
            args.report.as_deref(),
            args.common.json,
        );
    }
    if args.task == "capfilt" {
        return super::eval_capfilt::run(
            &args.data,
            args.threshold,
            args.report.as_deref(),
            args.common.json,
        );
    }
    if args.task == "agent" {
        return run_agent(&args);
    }
    let task: Task = args.task.parse()?;
    let opts = EvalOptions {
        limit: args.limit,
        batch_size: args.batch_size,
        labels: args.labels.clone(),
        template: args.template.clone(),
        rerank: args.rerank,
        prompt: args.prompt.clone(),
        generation: args.decode.generation_config()?,
        workers: std::thread::available_parallelism().map_or(2, |n| n.get().min(4)),
        progress: !args.common.json && std::io::stderr().is_terminal(),
        evidence: args.report.is_some(),
        ..EvalOptions::new(task)
    };
    opts.validate()?;
    if let Some(dir) = &args.report {
        check_report_dir(dir)?;
    }
    // A wrong --data should not cost a model load first.
    glimpse_data::dataset::resolve_sources(&args.data).context("--data")?;
    let bundled = match task {
        Task::Retrieval => Bundled::Retrieval,
        Task::ZeroShot => Bundled::Clip,
        Task::Caption => Bundled::Caption,
        Task::Vqa => Bundled::Vqa,
    };
    let model = model_name(&args.common, bundled)?;
    let pipeline = load_quantized(&args.common, bundled, args.quantize)?;
    let report = evaluate(&pipeline, &model, &args.data, &opts)
        .with_context(|| format!("evaluating `{model}` on {}", args.data))?;
    let page = match &args.report {
        Some(dir) => Some(
            glimpse_report::write_eval_report(&report, dir)
                .with_context(|| format!("--report {}", dir.display()))?,
        ),
        None => None,
    };
    if args.common.json {
        if let Some(w) = &page {
            crate::output::note(format_args!("report: {}", w.path.display()));
        }
        return print_json(&report);
    }
    print_report(&report)?;
    if let Some(w) = page {
        outln!("report: {}", w.path.display());
    }
    Ok(())
}

fn pct(x: f64) -> String {
    format!("{:.2}%", 100.0 * x)
}

/// `--report DIR` must not name a file (the page goes to DIR/index.html).
pub fn check_report_dir(dir: &std::path::Path) -> Result<()> {
    if dir.is_file() {
        anyhow::bail!(
            "--report {}: is a file; give a directory for index.html",
            dir.display()
        );
    }
    Ok(())
}

fn print_report(r: &EvalReport) -> Result<()> {
    outln!(
        "{} of {} on {}: {} images, {} skipped",
        r.task,
        r.model,
        r.data,
        r.samples,
        r.skipped
    );
    match &r.metrics {
        Metrics::Retrieval(m) => {
            if let Some(k) = m.rerank {
                outln!("  top {k} re-ranked by ITM");
            }
            for (name, d) in [("image->text", &m.i2t), ("text->image", &m.t2i)] {
                outln!(
                    "  {name}  R@1 {:>7}  R@5 {:>7}  R@10 {:>7}  mean rank {:.1}  median rank {:.1}",
                    pct(d.r1),
                    pct(d.r5),
                    pct(d.r10),
                    d.mean_rank,
                    d.median_rank
                );
            }
            outln!(
                "  mean recall {} ({} images, {} texts)",
                pct(m.r_mean),
                m.n_images,
                m.n_texts
            );
        }
        Metrics::ZeroShot(m) => {
            outln!(
                "  top-1 accuracy {} (mean per class {}) on {} images, {} labels, template {:?}",
                pct(m.accuracy),
                pct(m.mean_per_class_accuracy),
                m.n_images,
                m.n_labels,
                m.template
            );
        }
        Metrics::Caption(m) => {
            outln!(
                "  BLEU-4 {:.4} (BLEU-1..3 {:.4} {:.4} {:.4})  CIDEr-D {:.4}  on {} images",
                m.bleu4,
                m.bleu[0],
                m.bleu[1],
                m.bleu[2],
                m.cider,
                m.n_images
            );
            if let Some(a) = &m.attributes {
                outln!(
                    "  attributes on {} single-object images: all correct {}",
                    a.n_images,
                    pct(a.all_correct)
                );
                let rows: [(&str, &Tally); 6] = [
                    ("shape", &a.shape),
                    ("color", &a.color),
                    ("size", &a.size),
                    ("position", &a.position),
                    ("count", &a.count),
                    ("background", &a.background),
                ];
                for (name, t) in rows {
                    outln!(
                        "    {name:<10} correct {:>5}  wrong {:>5}  not mentioned {:>5}",
                        t.correct,
                        t.wrong,
                        t.not_mentioned
                    );
                }
            }
            for e in &m.examples {
                let mark = match e.all_correct {
                    Some(true) => "  [all correct]",
                    Some(false) => "  [wrong or incomplete]",
                    None => "",
                };
                outln!(
                    "  {}: {:?} (reference {:?}){mark}",
                    e.key,
                    e.caption,
                    e.reference
                );
            }
        }
        Metrics::Vqa(m) => {
            outln!(
                "  exact-match accuracy {} on {} questions about {} images",
                pct(m.accuracy),
                m.n_questions,
                m.n_images
            );
            for e in &m.examples {
                outln!(
                    "  {}: {:?} -> {:?} (accepted {:?}){}",
                    e.key,
                    e.question,
                    e.prediction,
                    e.answers,
                    if e.correct { "  [correct]" } else { "" }
                );
            }
        }
    }
    if r.skipped > 0 {
        outln!("  skipped {}:", r.skipped);
        for s in &r.skipped_reasons {
            outln!("    {s}");
        }
        if r.skipped > r.skipped_reasons.len() {
            outln!("    ...");
        }
    }
    Ok(())
}

/// `--task agent`: the flags the agent takes, then the agent's evaluation.
fn run_agent(args: &EvalArgs) -> Result<()> {
    let data = std::path::Path::new(&args.data);
    if !data.is_file() {
        anyhow::bail!(
            "--data {}: no such file (a JSONL set from `glimpse data plans`)",
            data.display()
        );
    }
    let flags = super::agent::AgentFlags {
        images: Vec::new(),
        planner: args.planner.clone(),
        planner_model: args.planner_model.clone(),
        planner_timeout: 120.0,
        registry: args.registry.clone(),
        index: args.index.clone(),
        models: args.common.model.iter().cloned().collect(),
        no_bundled: false,
        device: args.common.device.clone(),
        json: args.common.json,
    };
    super::agent::run_eval(data, args.plans.is_some(), &flags, args.limit)
}
