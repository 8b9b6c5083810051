//! `glimpse report`: a thin wrapper over `glimpse_report`. Validates the run
//! directories, writes the page, prints its path.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::output::{self, note, outln};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A training run directory (the --out of `glimpse train`); repeat to overlay
    /// several runs on one page.
    #[arg(long = "run", required = true)]
    pub runs: Vec<PathBuf>,
    /// The page to write. Default for one run: RUN/report.html; several runs need it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print `{"path", "bytes", "warnings"}` as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ReportArgs) -> Result<()> {
    for r in &args.runs {
        if !r.is_dir() {
            bail!("--run {}: no such directory", r.display());
        }
    }
    if args.runs.len() > 1 && args.out.is_none() {
        bail!("several --run make one page: say where it goes with --out FILE");
    }
    let written = glimpse_report::write_run_report(&args.runs, args.out.as_deref())
        .context("cannot write the report")?;
    for w in &written.warnings {
        note(format_args!("warning: {w}"));
    }
    if args.json {
        return output::print_json(&serde_json::json!({
            "path": written.path,
            "bytes": written.bytes,
            "warnings": written.warnings,
        }));
    }
    outln!(
        "report: {} ({} KB)",
        written.path.display(),
        written.bytes.div_ceil(1024)
    );
    Ok(())
}
