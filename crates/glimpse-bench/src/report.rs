//! The report of a run: per workload both sides' results, the FLOP counts and the
//! ratios; written as `results.json` and printed as JSON with `--json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::protocol::SideResult;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadReport {
    pub workload: String,
    pub unit: String,
    pub items_per_rep: usize,
    /// Floating-point operations of one call, in 1e9 (see [`crate::Workload::flops`]).
    pub gflop_per_call: f64,
    /// Streaming workloads: those of one decoding step (one new token), the mean over
    /// the steps after the first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gflop_per_token: Option<f64>,
    pub glimpse: Option<SideResult>,
    pub reference: Option<SideResult>,
    /// Reference median / Glimpse median: above 1 means Glimpse is faster.
    pub ratio: Option<f64>,
    /// Reference fastest rep / Glimpse fastest rep: on a shared machine, where other
    /// load slows some reps of one side and not the other's, the least disturbed pair.
    pub best_ratio: Option<f64>,
    /// The same for the time to first token and the time per token (streaming workloads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_token_ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub reps: usize,
    pub warmup: usize,
    pub new_tokens: usize,
    pub cpus: usize,
    /// `debug` or `release`.
    pub glimpse_build: String,
    /// Glimpse's language-model quantisation (streaming workloads), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantize: Option<String>,
    pub models: PathBuf,
    pub results: Vec<WorkloadReport>,
}

impl Report {
    /// Writes the report as pretty JSON (`results.json`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(Error::json("serialising the bench report"))?;
        std::fs::write(path, text).map_err(Error::io(format!("writing {}", path.display())))
    }

    /// Reads a report written by [`Report::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(Error::io(format!("reading {}", path.display())))?;
        serde_json::from_str(&text).map_err(Error::json(format!("parsing {}", path.display())))
    }

    /// The workloads with an error on either side.
    pub fn failed(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter(|r| !r.errors.is_empty())
            .map(|r| r.workload.as_str())
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn side(side: &str, workload: &str, reps_s: Vec<f64>) -> SideResult {
        SideResult {
            side: side.into(),
            workload: workload.into(),
            median_s: crate::stats::median(&reps_s),
            reps_s,
            warmup: 1,
            items_per_rep: 1,
            load_s: 0.25,
            peak_rss_bytes: Some(300 << 20),
            rss_end_bytes: None,
            threads: 2,
            ttft_reps_s: Vec::new(),
            ttft_median_s: None,
            per_token_reps_s: Vec::new(),
            per_token_median_s: None,
            attn_implementation: None,
            quantize: None,
            versions: None,
        }
    }

    /// A two-workload report: `matmul` on both sides, a streaming workload on
    /// Glimpse's side only, with an error.
    pub(crate) fn sample() -> Report {
        let mut stream = side("glimpse", "blip2-opt", vec![1.0, 0.8, 1.2]);
        stream.items_per_rep = 8;
        stream.ttft_reps_s = vec![0.3, 0.25, 0.35];
        stream.ttft_median_s = Some(0.3);
        stream.per_token_reps_s = vec![0.1, 0.08, 0.12];
        stream.per_token_median_s = Some(0.1);
        stream.quantize = Some("q8".into());
        stream.versions = Some(serde_json::json!({"glimpse": "0.1.0", "build": "release"}));
        let mut reference = side("reference", "matmul", vec![0.5, 0.4, 0.6]);
        reference.attn_implementation = Some("sdpa".into());
        Report {
            reps: 3,
            warmup: 1,
            new_tokens: 8,
            cpus: 2,
            glimpse_build: "release".into(),
            quantize: Some("q8".into()),
            models: PathBuf::from("bench-out/models"),
            results: vec![
                WorkloadReport {
                    workload: "matmul".into(),
                    unit: "call/s".into(),
                    items_per_rep: 1,
                    gflop_per_call: 68.719476736,
                    gflop_per_token: None,
                    glimpse: Some(side("glimpse", "matmul", vec![1.0, 0.8, 1.2])),
                    reference: Some(reference),
                    ratio: Some(0.5),
                    best_ratio: Some(0.5),
                    ttft_ratio: None,
                    per_token_ratio: None,
                    errors: Vec::new(),
                },
                WorkloadReport {
                    workload: "blip2-opt".into(),
                    unit: "tok/s".into(),
                    items_per_rep: 8,
                    gflop_per_call: 12.5,
                    gflop_per_token: Some(0.25),
                    glimpse: Some(stream),
                    reference: None,
                    ratio: None,
                    best_ratio: None,
                    ttft_ratio: None,
                    per_token_ratio: None,
                    errors: vec!["reference: reference.py time failed".into()],
                },
            ],
        }
    }

    #[test]
    fn a_report_survives_a_json_round_trip() {
        let report = sample();
        let text = serde_json::to_string_pretty(&report).unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
    }

    #[test]
    fn empty_optional_fields_are_left_out() {
        let value = serde_json::to_value(sample()).unwrap();
        let matmul = &value["results"][0];
        for absent in ["gflop_per_token", "ttft_ratio", "per_token_ratio", "errors"] {
            assert!(matmul.get(absent).is_none(), "{absent}: {matmul}");
        }
        // `null` stays where the reader expects the key.
        assert!(value["results"][1]["reference"].is_null());
        assert!(matmul["glimpse"].get("ttft_reps_s").is_none());
        assert_eq!(value["glimpse_build"], "release");
    }

    #[test]
    fn saved_reports_load_back_and_failures_are_named() {
        let dir = std::env::temp_dir().join(format!("glimpse-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("results.json");
        let report = sample();
        report.save(&path).unwrap();
        let back = Report::load(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(back.unwrap(), report);
        assert_eq!(report.failed(), ["blip2-opt"]);
    }
}
