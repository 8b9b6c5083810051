//! Report pages: training runs and evaluations as self-contained HTML that people
//! would rather look at than `log.jsonl` or `--json`.
//!
//! Design choices:
//!
//! - **One file, no network.** A page is one HTML document with an inline style
//!   sheet, plots as inline SVG and images as `data:` URIs: no script, font or
//!   request, so it opens from a disk, an e-mail or a CI artefact as it is, and a
//!   server can hand out the same string. [`check::page_problems`] proves it.
//! - **Pages are strings.** [`run_report`] and [`eval_page`] return the HTML;
//!   [`write_run_report`] and [`write_eval_report`] only add the file. A server
//!   (`glimpse serve`) calls the same functions.
//! - **Long runs stay light.** Curves are cut to at most four points per pixel column
//!   (first, lowest, highest, last: [`svg::downsample`]), so a 10,000-update run's page
//!   is as small as a short one's and its spikes still show.
//! - **Evidence comes from the evaluation.** `glimpse_eval` keeps a bounded sample of
//!   examples with thumbnails ([`glimpse_eval::evidence`]); this crate only lays them
//!   out. An evaluation that has no section here yet adds one through
//!   [`eval_page::PageSection`].
//! - **Escaping at the edge.** Every text from a run or a dataset (names, captions,
//!   questions, recipe lines) passes [`html::escape`].
//!
//! Modules: `html` (escaping, `data:` URIs, the page skeleton), `svg` (line plots and
//! down-sampling), `run` (reading a run directory), `run_page`, `eval_page` (the model
//! evaluations of `glimpse_eval`), `capfilt_page` (CapFilt's filter quality: kept and
//! removed captions per corruption kind), `plan_page` (a planner's task graphs beside
//! the gold ones), `check`.

pub mod capfilt_page;
pub mod check;
mod error;
pub mod eval_page;
pub mod html;
pub mod plan_page;
pub mod run;
pub mod run_page;
pub mod svg;

use std::path::{Path, PathBuf};

use glimpse_eval::EvalReport;

pub use capfilt_page::capfilt_page;
pub use error::{Error, Result};
pub use eval_page::{eval_page, PageSection};
pub use plan_page::plan_page;
pub use run::{read_runs, Resume, RunData};
pub use run_page::run_page;

/// The file name of a run's report inside its directory.
pub const RUN_REPORT: &str = "report.html";

/// The file name of an evaluation report inside its directory.
pub const EVAL_REPORT: &str = "index.html";

/// A page written to disk.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: usize,
    /// What was skipped while reading (e.g. an incomplete last log line).
    pub warnings: Vec<String>,
}

/// The page of the runs in `dirs` (several are overlaid) and the warnings of
/// reading them.
pub fn run_report(dirs: &[PathBuf]) -> Result<(String, Vec<String>)> {
    let runs = read_runs(dirs)?;
    let warnings = runs.iter().flat_map(|r| r.warnings.clone()).collect();
    Ok((run_page(&runs), warnings))
}

/// Writes `html` to `path` through a temporary file in the same directory, so a
/// reader never sees half a page.
fn write_atomic(path: &Path, html: &str) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if path.file_name().is_none() {
        return Err(Error::Invalid(format!(
            "{}: not a file path",
            path.display()
        )));
    }
    glimpse_data::atomic::write(path, html.as_bytes()).map_err(|(p, e)| Error::io(&p, e))
}

/// Writes the page of the runs in `dirs` to `out`, or to `RUN/report.html` when
/// `out` is `None` and there is one run.
pub fn write_run_report(dirs: &[PathBuf], out: Option<&Path>) -> Result<Written> {
    let path = match (out, dirs) {
        (Some(p), _) => p.to_path_buf(),
        (None, [one]) => one.join(RUN_REPORT),
        (None, _) => {
            return Err(Error::Invalid(
                "several runs make one page: say where it goes with --out FILE".into(),
            ))
        }
    };
    let (html, warnings) = run_report(dirs)?;
    write_atomic(&path, &html)?;
    Ok(Written {
        path,
        bytes: html.len(),
        warnings,
    })
}

/// Writes the page of `report` as `dir/index.html` (its images are embedded).
pub fn write_eval_report(report: &EvalReport, dir: &Path) -> Result<Written> {
    write_page(dir, eval_page(report, &[]))
}

/// Writes the page of a CapFilt filter-quality evaluation as `dir/index.html`.
pub fn write_capfilt_report(quality: &glimpse_capfilt::Quality, dir: &Path) -> Result<Written> {
    write_page(dir, capfilt_page(quality))
}

/// Writes the page of a planner evaluation as `dir/index.html`.
pub fn write_plan_report(
    report: &glimpse_agent::plan_eval::PlanEvalReport,
    dir: &Path,
) -> Result<Written> {
    write_page(dir, plan_page(report))
}

/// Writes `html` as `dir/index.html`.
fn write_page(dir: &Path, html: String) -> Result<Written> {
    if dir.is_file() {
        return Err(Error::Invalid(format!(
            "{}: --report names a file; give a directory for index.html",
            dir.display()
        )));
    }
    let path = dir.join(EVAL_REPORT);
    write_atomic(&path, &html)?;
    Ok(Written {
        path,
        bytes: html.len(),
        warnings: Vec::new(),
    })
}
