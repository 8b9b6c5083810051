//! `glimpse eval --task capfilt`: how well a finished `glimpse capfilt` run filtered
//! data whose noise is known (`glimpse_capfilt::quality`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use glimpse_capfilt::quality::{measure, ratio};

use crate::output::{self, outln, print_json};

pub fn run(data: &str, threshold: Option<f64>, report: Option<&Path>, json: bool) -> Result<()> {
    let out = Path::new(data);
    if !out.is_dir() {
        bail!(
            "--data {data}: not a directory (give the --out directory of a `glimpse capfilt` run)"
        );
    }
    if let Some(dir) = report {
        super::eval::check_report_dir(dir)?;
    }
    let q = measure(out, threshold, report.is_some())
        .with_context(|| format!("measuring the filter of {data}"))?;
    let page = match report {
        Some(dir) => Some(
            glimpse_report::write_capfilt_report(&q, dir)
                .with_context(|| format!("--report {}", dir.display()))?,
        ),
        None => None,
    };
    if json {
        if let Some(w) = &page {
            output::note(format_args!("report: {}", w.path.display()));
        }
        return print_json(&q);
    }
    let pct = |a: u64, b: u64| {
        let r = ratio(a, b);
        if r.is_nan() {
            "-".to_string()
        } else {
            format!("{:.1}%", 100.0 * r)
        }
    };
    outln!(
        "task capfilt, {} samples of {}, filter {}, threshold {}",
        q.samples,
        q.out,
        q.filter,
        q.threshold
    );
    outln!(
        "  {:<28} {:>6} {:>8} {:>8}",
        "web captions",
        "n",
        "removed",
        "kept"
    );
    for k in q.kinds.iter().chain(std::iter::once(&q.corrupted)) {
        outln!(
            "  {:<28} {:>6} {:>8} {:>8}",
            format!("corrupted: {}", k.kind),
            k.n,
            pct(k.removed, k.n),
            pct(k.n - k.removed, k.n)
        );
    }
    outln!(
        "  {:<28} {:>6} {:>8} {:>8}",
        "clean",
        q.clean.n,
        pct(q.clean.n - q.clean.kept, q.clean.n),
        pct(q.clean.kept, q.clean.n)
    );
    outln!(
        "  synthetic captions: {}, kept {}",
        q.synthetic.n,
        pct(q.synthetic.kept, q.synthetic.n)
    );
    if let Some(w) = page {
        outln!("report: {}", w.path.display());
    }
    Ok(())
}
