//! `glimpse agent "REQUEST"`: HuggingGPT's four stages over Glimpse's models (plan,
//! select, execute, answer); `glimpse agent plan "REQUEST"` stops after the plan.
//! `glimpse eval --task agent` runs the same agent over an evaluation set
//! ([`run_eval`]).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use glimpse_agent::agent::{default_bundled_root, Agent, AgentConfig};
use glimpse_agent::backends::RunOptions;
use glimpse_agent::execute::TaskState;
use glimpse_agent::remote::RemotePlanner;
use glimpse_agent::{Chooser, Planner, RuleChooser};

use crate::output::{note, outln, print_json};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct AgentArgs {
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
    /// The request, in words.
    #[arg(required = true)]
    pub request: Option<String>,
    #[command(flatten)]
    pub flags: AgentFlags,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Stage 1 only: print the plan (`--json`: `{"tasks": [...]}`).
    Plan(AgentPlanArgs),
    /// Fit a matching model's calibrated match probability on the world's validation
    /// scenes and write `match_calibration.json` into the model directory.
    Calibrate(AgentCalibrateArgs),
}

#[derive(Debug, Args)]
pub struct AgentCalibrateArgs {
    /// The model directory (one with an image-text matching capability).
    #[arg(long, short = 'm', default_value = "models/blip-synth/retrieval")]
    pub model: PathBuf,
    /// Validation scenes of the world: half fit, half measure.
    #[arg(long, default_value_t = 600)]
    pub scenes: usize,
    /// The world's seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the calibration without writing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Device to run on.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Debug, Args)]
pub struct AgentPlanArgs {
    /// The request, in words.
    pub request: String,
    #[command(flatten)]
    pub flags: AgentFlags,
}

#[derive(Debug, Args, Clone)]
pub struct AgentFlags {
    /// An image that comes with the request (repeatable; `<image>-1` is the first).
    #[arg(long = "image", short = 'i')]
    pub images: Vec<PathBuf>,
    /// The planner: an OpenAI-compatible endpoint (`http://HOST:PORT/v1`) or a planner
    /// model directory (default: the bundled `models/planner-synth`).
    #[arg(long)]
    pub planner: Option<String>,
    /// The model id to ask at a `--planner` URL (see its `GET /v1/models`).
    #[arg(long)]
    pub planner_model: Option<String>,
    /// Seconds to wait for each answer of a `--planner` URL.
    #[arg(long, default_value_t = 120.0)]
    pub planner_timeout: f64,
    /// A registry file (TOML or JSON) of external tools; see docs/agent.md.
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// An embedding index for the retrieval tasks (`glimpse index build --out`).
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// A model the agent may use, preferred over the bundled ones (repeatable).
    #[arg(long = "model", short = 'm')]
    pub models: Vec<String>,
    /// Offer only the `--model`s, `--index` and tools, not the bundled models.
    #[arg(long)]
    pub no_bundled: bool,
    /// Device to run on: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// The report (plan, models, results, answer) as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The planner and chooser the flags name.
fn planner(flags: &AgentFlags) -> Result<(Box<dyn Planner>, Box<dyn Chooser>)> {
    if !(flags.planner_timeout > 0.0 && flags.planner_timeout.is_finite()) {
        bail!("--planner-timeout must be a positive number of seconds");
    }
    match flags.planner.as_deref() {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            let Some(model) = &flags.planner_model else {
                bail!("--planner {url}: give --planner-model ID (the endpoint's GET /models lists them)");
            };
            let remote =
                RemotePlanner::new(url, model, Duration::from_secs_f64(flags.planner_timeout))?;
            Ok((Box::new(remote.clone()), Box::new(remote)))
        }
        Some(dir) => {
            let dir = Path::new(dir);
            if !dir.is_dir() {
                bail!(
                    "--planner {}: neither an http(s) URL nor a directory",
                    dir.display()
                );
            }
            Ok((
                glimpse_agent::planner::local_planner(dir)?,
                Box::new(RuleChooser),
            ))
        }
        None => {
            let dir = default_bundled_root()
                .map(|r| r.join("models/planner-synth"))
                .unwrap_or_else(|| PathBuf::from("models/planner-synth"));
            Ok((
                glimpse_agent::planner::local_planner(&dir)?,
                Box::new(RuleChooser),
            ))
        }
    }
}

/// The agent the flags describe, with `planner` (none for gold plans).
pub fn build_agent(flags: &AgentFlags, with_planner: bool) -> Result<Agent> {
    for p in &flags.images {
        if !p.is_file() {
            bail!("--image {}: no such file", p.display());
        }
    }
    if let Some(r) = &flags.registry {
        if !r.is_file() {
            bail!("--registry {}: no such file", r.display());
        }
    }
    if let Some(i) = &flags.index {
        if !i.is_dir() {
            bail!("--index {}: no such directory", i.display());
        }
    }
    let (planner, chooser) = if with_planner {
        let (p, c) = planner(flags)?;
        (Some(p), c)
    } else {
        (None, Box::new(RuleChooser) as Box<dyn Chooser>)
    };
    let cfg = AgentConfig {
        models: flags.models.clone(),
        bundled_root: if flags.no_bundled {
            None
        } else {
            default_bundled_root()
        },
        index: flags.index.clone(),
        registry_file: flags.registry.clone(),
        run: RunOptions {
            device: super::device(&flags.device)?,
            ..RunOptions::default()
        },
    };
    Ok(Agent::new(cfg, planner, chooser)?)
}

pub fn run(args: AgentArgs) -> Result<()> {
    match args.command {
        Some(AgentCommand::Plan(a)) => run_plan(a),
        Some(AgentCommand::Calibrate(a)) => run_calibrate(a),
        None => run_agent(args.request.unwrap_or_default(), args.flags),
    }
}

fn run_calibrate(a: AgentCalibrateArgs) -> Result<()> {
    if !a.model.join("config.json").is_file() {
        bail!(
            "{}: not a model directory (no config.json)",
            a.model.display()
        );
    }
    if a.scenes < 8 {
        bail!("--scenes {}: calibration needs at least 8 scenes", a.scenes);
    }
    let device = super::device(&a.device)?;
    let pipeline = glimpse_models::pipeline::Pipeline::load(&a.model.to_string_lossy(), &device)?;
    // Each held-out scene is visited twice: once for yes/no pairs, once to rank.
    let bar = crate::output::progress(a.scenes + a.scenes / 2, 1, "calibrating");
    let cal = glimpse_agent::calibrate::calibrate(&pipeline, a.seed, a.scenes, || bar.inc(1))?;
    bar.finish_and_clear();
    let m = &cal.measured;
    let w = &cal.weights;
    outln!(
        "weights: cosine {:.3}, ITM logit {:.3}, bias {:.3} ({}; {} pairs)",
        w.cosine,
        w.itm,
        w.bias,
        cal.fitted_on,
        cal.pairs
    );
    outln!(
        "yes/no right on {} held-out pairs: ITM {:.1}%, cosine {:.1}%, calibrated {:.1}%",
        m.yes_no_pairs,
        100.0 * m.yes_no_itm,
        100.0 * m.yes_no_cosine,
        100.0 * m.yes_no_calibrated
    );
    outln!(
        "which image has it, right on {}: ITM {:.1}%, cosine {:.1}%, calibrated {:.1}%",
        m.rank_questions,
        100.0 * m.rank_itm,
        100.0 * m.rank_cosine,
        100.0 * m.rank_calibrated
    );
    if a.dry_run {
        return Ok(());
    }
    cal.save(&a.model)?;
    note(format!(
        "wrote {}",
        a.model.join(glimpse_agent::calibrate::FILE).display()
    ));
    Ok(())
}

fn check_request(request: &str) -> Result<()> {
    if request.trim().is_empty() {
        bail!("the request is empty: say what to do, e.g. glimpse agent \"what is in this image?\" --image F");
    }
    Ok(())
}

fn run_plan(a: AgentPlanArgs) -> Result<()> {
    check_request(&a.request)?;
    let agent = build_agent(&a.flags, true)?;
    let planned = agent.plan(&a.request, &a.flags.images)?;
    if a.flags.json {
        return print_json(&planned.plan.to_value());
    }
    outln!("plan by {}:", agent.planner_name());
    for t in &planned.plan.tasks {
        outln!(
            "  {}",
            glimpse_agent::Plan {
                tasks: vec![t.clone()]
            }
            .to_json()
        );
    }
    Ok(())
}

fn run_agent(request: String, flags: AgentFlags) -> Result<()> {
    check_request(&request)?;
    let agent = build_agent(&flags, true)?;
    let report = agent.run(&request, &flags.images)?;
    if flags.json {
        return print_json(&report);
    }
    outln!("plan (by {}):", report.planner);
    if let Some(tasks) = report.plan.get("tasks").and_then(|t| t.as_array()) {
        for t in tasks {
            outln!("  {t}");
        }
    }
    outln!("models:");
    for c in &report.selections {
        outln!("  task {} -> {} ({})", c.task, c.model, c.reason);
    }
    outln!("results:");
    for r in &report.results {
        match &r.state {
            TaskState::Done { items } => {
                for item in items {
                    let on = item
                        .input
                        .image
                        .as_ref()
                        .map(|i| format!(" on {}", i.label))
                        .unwrap_or_default();
                    outln!(
                        "  task {} {}{on}: {}",
                        r.id,
                        r.task,
                        serde_json::to_string(&item.output)?
                    );
                }
            }
            TaskState::Failed { error } => outln!("  task {} {}: FAILED: {error}", r.id, r.task),
            TaskState::Skipped { reason } => {
                outln!("  task {} {}: skipped: {reason}", r.id, r.task)
            }
        }
    }
    outln!("answer:");
    for line in report.answer.lines() {
        outln!("  {line}");
    }
    Ok(())
}

/// `glimpse eval --task agent --data FILE [--plans gold]`.
pub fn run_eval(data: &Path, gold: bool, flags: &AgentFlags, limit: Option<usize>) -> Result<()> {
    let mut records = glimpse_agent::eval::read_records(data)?;
    if let Some(n) = limit {
        records.truncate(n);
    }
    let agent = build_agent(flags, !gold)?;
    let bar = (!flags.json && std::io::stderr().is_terminal())
        .then(|| crate::output::progress(records.len(), 1, "requests"));
    let report = glimpse_agent::eval::evaluate(&agent, data, &records, gold, &mut |_r| {
        if let Some(b) = &bar {
            b.inc(1);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if flags.json {
        return print_json(&report);
    }
    outln!(
        "agent on {} ({} plans): {}/{} answers right ({:.1}%)",
        report.data,
        report.plans,
        report.right,
        report.total,
        100.0 * report.share
    );
    for f in report.failures() {
        match &f.error {
            Some(e) => outln!("  {}: error: {e}", f.key),
            None => outln!(
                "  {}: missing {:?}, unwanted {:?}; answer: {}",
                f.key,
                f.missing,
                f.forbidden,
                f.answer.replace('\n', " | ")
            ),
        }
    }
    if report.total > 0 && report.right < report.total {
        note(format!(
            "{} of {} requests were answered wrongly",
            report.total - report.right,
            report.total
        ));
    }
    Ok(())
}
