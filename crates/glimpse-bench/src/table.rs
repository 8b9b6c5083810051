//! The report as a table for people: per workload each side's median time and
//! throughput, the ratio and peak memory, then achieved GFLOP/s (and share of the
//! side's `matmul` peak), the fastest reps and, for streaming workloads, the time to
//! first token and per token; a legend follows.

use std::fmt::Write;

use crate::protocol::SideResult;
use crate::report::{Report, WorkloadReport};
use crate::stats::{fastest, rate};
use crate::workload::{workload, MATMUL, MATMUL_I8};

/// The table, one line per `\n`-terminated row.
pub fn format_table(report: &Report) -> String {
    let mut out = String::new();
    write_table(&mut out, report).expect("writing to a String cannot fail");
    out
}

fn write_table(out: &mut String, report: &Report) -> std::fmt::Result {
    let threads = |pick: fn(&WorkloadReport) -> Option<&SideResult>| {
        report.results.iter().find_map(pick).map(|s| s.threads)
    };
    writeln!(
        out,
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
    )?;
    writeln!(
        out,
        "{:<20} {:>24} {:>24} {:>7} {:>12} {:>12}",
        "workload", "glimpse", "reference", "ratio", "rss glimpse", "rss ref"
    )?;
    for r in &report.results {
        // 8-bit workloads against the 8-bit peak, the others against the f32 one.
        let peak = match workload(&r.workload) {
            Ok(w) if w.int8 => MATMUL_I8,
            _ => MATMUL,
        };
        let peaks = [
            peak_gflops(report, peak, |r| r.glimpse.as_ref()),
            peak_gflops(report, peak, |r| r.reference.as_ref()),
        ];
        write_workload(out, r, peaks)?;
    }
    writeln!(
        out,
        "ratio = reference median / glimpse median (above 1: Glimpse is faster)"
    )?;
    writeln!(
        out,
        "fastest rep: each side's shortest rep and their ratio (the least disturbed pair on a \
         shared machine)"
    )?;
    writeln!(
        out,
        "GFLOP/s = matrix-product FLOPs of one call (per token: of one decoding step) / median time"
    )?;
    if report
        .results
        .iter()
        .any(|r| r.workload == MATMUL || r.workload == MATMUL_I8)
    {
        let int8 = report
            .results
            .iter()
            .any(|r| workload(&r.workload).is_ok_and(|w| w.int8));
        writeln!(
            out,
            "% peak = share of the same side's {MATMUL} rate in this run{}",
            if int8 {
                format!(
                    " ({MATMUL_I8} for the 8-bit workloads, whose integer products count as \
                     FLOPs)"
                )
            } else {
                String::new()
            }
        )?;
    }
    if report.results.iter().any(|r| r.ttft_ratio.is_some()) {
        writeln!(
            out,
            "first token: from the call to the first new token (vision and prefill); \
             per token: median gap between new tokens ({} per call)",
            report.new_tokens
        )?;
    }
    if let Some(attn) = report
        .results
        .iter()
        .filter(|r| r.workload != MATMUL && r.workload != MATMUL_I8) // no model, no attention
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
        writeln!(out, "reference attention: {attn}")?;
    }
    Ok(())
}

/// One workload's rows; `peaks` are each side's `matmul` GFLOP/s.
fn write_workload(
    out: &mut String,
    r: &WorkloadReport,
    peaks: [Option<f64>; 2],
) -> std::fmt::Result {
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
    writeln!(
        out,
        "{:<20} {:>24} {:>24} {:>7} {:>12} {:>12}",
        r.workload,
        side(&r.glimpse),
        side(&r.reference),
        r.ratio.map_or("-".into(), |x| format!("{x:.2}x")),
        rss(&r.glimpse),
        rss(&r.reference),
    )?;
    // Achieved GFLOP/s per side (and share of its peak), the FLOPs counted at the end.
    let flop_line = |out: &mut String,
                     label: &str,
                     gflop: f64,
                     secs: fn(&SideResult) -> Option<f64>,
                     per: &str| {
        let cell = |s: &Option<SideResult>, peak: Option<f64>| {
            let achieved = s.as_ref().and_then(secs).and_then(|t| rate(gflop, t));
            rate_cell(
                achieved,
                peak,
                r.workload == MATMUL || r.workload == MATMUL_I8,
            )
        };
        writeln!(
            out,
            "{:<20} {:>24} {:>24} {:>7}  {gflop:.2} GFLOP/{per}",
            label,
            cell(&r.glimpse, peaks[0]),
            cell(&r.reference, peaks[1]),
            "",
        )
    };
    flop_line(
        out,
        "  GFLOP/s (% peak)",
        r.gflop_per_call,
        |s| Some(s.median_s),
        "call",
    )?;
    if r.workload != MATMUL && r.workload != MATMUL_I8 {
        let best = |s: &Option<SideResult>| {
            s.as_ref()
                .and_then(|s| fastest(&s.reps_s))
                .map_or("-".into(), |t| format!("{t:.3} s"))
        };
        writeln!(
            out,
            "{:<20} {:>24} {:>24} {:>7}",
            "  fastest rep",
            best(&r.glimpse),
            best(&r.reference),
            r.best_ratio.map_or("-".into(), |x| format!("{x:.2}x")),
        )?;
    }
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
        writeln!(
            out,
            "{:<20} {:>24} {:>24} {:>7}",
            "  first token",
            secs(ttft[0]),
            secs(ttft[1]),
            ratio(r.ttft_ratio),
        )?;
        writeln!(
            out,
            "{:<20} {:>24} {:>24} {:>7}",
            "  per token",
            per_tok(per_token[0]),
            per_tok(per_token[1]),
            ratio(r.per_token_ratio),
        )?;
        if let Some(gflop) = r.gflop_per_token {
            flop_line(
                out,
                "  per token GFLOP/s",
                gflop,
                |s| s.per_token_median_s,
                "token",
            )?;
        }
    }
    for e in &r.errors {
        writeln!(out, "  error: {e}")?;
    }
    Ok(())
}

/// One side's peak GFLOP/s: its rate on the `peak` workload (`matmul` or `matmul-i8`)
/// of this run, if it ran.
fn peak_gflops(
    report: &Report,
    peak: &str,
    pick: fn(&WorkloadReport) -> Option<&SideResult>,
) -> Option<f64> {
    let r = report.results.iter().find(|r| r.workload == peak)?;
    rate(r.gflop_per_call, pick(r)?.median_s)
}

/// `R.R (S%)`: an achieved GFLOP/s and its share of the side's peak (`(peak)` on the
/// peak's own row; the rate alone when the peak is unknown).
fn rate_cell(achieved: Option<f64>, peak: Option<f64>, is_peak: bool) -> String {
    match (achieved, peak) {
        (None, _) => "-".into(),
        (Some(a), _) if is_peak => format!("{a:.1} (peak)"),
        (Some(a), Some(p)) if p > 0.0 => format!("{a:.1} ({:.0}%)", 100.0 * a / p),
        (Some(a), _) => format!("{a:.1}"),
    }
}

fn fmt_opt(x: Option<usize>) -> String {
    x.map_or("?".into(), |x| x.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::sample;

    #[test]
    fn rate_cells_show_the_share_of_the_peak() {
        assert_eq!(rate(10.0, 0.5), Some(20.0));
        assert_eq!(rate(10.0, 0.0), None);
        assert_eq!(rate_cell(Some(20.0), Some(80.0), false), "20.0 (25%)");
        assert_eq!(rate_cell(Some(80.0), Some(80.0), true), "80.0 (peak)");
        assert_eq!(rate_cell(Some(20.0), None, false), "20.0");
        assert_eq!(rate_cell(None, Some(80.0), false), "-");
    }

    /// The whole table of a small report, line for line (the layout `glimpse bench`
    /// has always printed: 20-character labels, 24-character side columns).
    #[test]
    fn the_table_lays_out_both_sides() {
        let table = format_table(&sample());
        let expected = r#"glimpse (release build, 2 threads, q8 language model) vs reference (transformers on PyTorch, 2 threads); 2 cpus; median of 3 reps after 1 warm-up
workload                              glimpse                reference   ratio  rss glimpse      rss ref
matmul                   1.000 s (1.0 call/s)     0.500 s (2.0 call/s)   0.50x      300 MiB      300 MiB
  GFLOP/s (% peak)                68.7 (peak)             137.4 (peak)          68.72 GFLOP/call
blip2-opt                 1.000 s (8.0 tok/s)                        -       -      300 MiB            -
  GFLOP/s (% peak)                 12.5 (18%)                        -          12.50 GFLOP/call
  fastest rep                         0.800 s                        -       -
  first token                         0.300 s                        -       -
  per token             100.0 ms (10.0 tok/s)                        -       -
  per token GFLOP/s                  2.5 (4%)                        -          0.25 GFLOP/token
  error: reference: reference.py time failed
ratio = reference median / glimpse median (above 1: Glimpse is faster)
fastest rep: each side's shortest rep and their ratio (the least disturbed pair on a shared machine)
GFLOP/s = matrix-product FLOPs of one call (per token: of one decoding step) / median time
% peak = share of the same side's matmul rate in this run
"#;
        for (i, (got, want)) in table.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "line {i}");
        }
        assert_eq!(table, expected);
    }
}
