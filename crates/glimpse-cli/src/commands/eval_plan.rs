//! `glimpse eval --task plan`: a planner on requests with gold plans, scored with
//! TaskBench's metrics (`glimpse_agent::plan_eval`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use glimpse_agent::local::LocalPlanner;
use glimpse_agent::plan_eval::{evaluate, read_cases};
use glimpse_agent::remote::RemotePlanner;
use glimpse_agent::{Catalog, Planner};

use crate::output::{self, outln, print_json};

/// The bundled planner: under the current directory, else in the source tree.
const BUNDLED: &str = "models/planner-synth";

fn planner_dir(arg: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = arg {
        let dir = PathBuf::from(p);
        if !dir.join("config.json").is_file() {
            bail!("--planner {p}: no planner model there (no config.json)");
        }
        return Ok(dir);
    }
    let local = Path::new(BUNDLED);
    if local.join("config.json").is_file() {
        return Ok(local.to_path_buf());
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(BUNDLED);
    if built.join("config.json").is_file() {
        return Ok(built);
    }
    bail!("no --planner given, and the bundled planner {BUNDLED} is not there; pass --planner DIR")
}

/// The planner to evaluate: an OpenAI-compatible endpoint (with its model id) or a
/// planner model directory (by default the bundled one).
fn planner_of(arg: Option<&str>, model: Option<&str>) -> Result<Box<dyn Planner>> {
    if let Some(url) = arg.filter(|p| p.starts_with("http://") || p.starts_with("https://")) {
        let Some(model) = model else {
            bail!(
                "--planner {url}: give --planner-model ID (the endpoint's GET /models lists them)"
            );
        };
        let remote = RemotePlanner::new(url, model, std::time::Duration::from_secs(120))?;
        return Ok(Box::new(remote));
    }
    Ok(Box::new(LocalPlanner::load(&planner_dir(arg)?)?))
}

pub fn run(
    data: &str,
    planner: Option<&str>,
    planner_model: Option<&str>,
    limit: Option<usize>,
    report_dir: Option<&Path>,
    json: bool,
) -> Result<()> {
    if let Some(dir) = report_dir {
        super::eval::check_report_dir(dir)?;
    }
    let mut cases = read_cases(Path::new(data))?;
    if let Some(n) = limit {
        cases.truncate(n);
    }
    let planner = planner_of(planner, planner_model)?;
    let planner = planner.as_ref();
    let catalog = Catalog::builtin();
    let bar = (!json && std::io::stderr().is_terminal())
        .then(|| output::progress(cases.len(), 1, "plans"));
    let report = evaluate(planner, &catalog, &cases, data, |done| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let page = match report_dir {
        Some(dir) => Some(
            glimpse_report::write_plan_report(&report, dir)
                .with_context(|| format!("--report {}", dir.display()))?,
        ),
        None => None,
    };
    if json {
        if let Some(w) = &page {
            output::note(format_args!("report: {}", w.path.display()));
        }
        return print_json(&report);
    }
    let s = &report.scores;
    outln!(
        "task plan, planner {}, data {}",
        report.planner,
        report.data
    );
    outln!("  requests          {}", s.requests);
    outln!("  node F1           {:.4}", s.node_f1);
    outln!("  edge F1           {:.4}", s.edge_f1);
    outln!("  argument-name F1  {:.4}", s.arg_name_f1);
    outln!("  argument-value F1 {:.4}", s.arg_value_f1);
    outln!("  edit distance     {:.4}", s.edit_distance);
    outln!("  parse rate        {:.4}", s.parse_rate);
    outln!("  validate rate     {:.4}", s.validate_rate);
    outln!("  exact plans       {:.4}", s.exact);
    let wrong = report.cases.iter().filter(|c| !c.exact).take(5);
    for c in wrong {
        outln!("  differs: {} {:?} -> {}", c.key, c.request, c.raw);
    }
    if let Some(w) = page {
        outln!("report: {}", w.path.display());
    }
    Ok(())
}

/// `--data` must be a readable file before anything loads.
pub fn check_data(data: &str) -> Result<()> {
    let p = Path::new(data);
    if !p.is_file() {
        bail!("--data {data}: no such file (a JSONL of requests with plans)");
    }
    std::fs::metadata(p).with_context(|| format!("--data {data}"))?;
    Ok(())
}
