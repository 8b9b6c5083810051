//! What a timing child (Glimpse's worker or `reference.py time`) reports: one JSON line,
//! the last one starting with `{` on its stdout, read into a [`SideResult`]. Its stderr
//! (progress) goes straight to ours.

use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One side's measurement of one workload: the JSON line a child prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Runs a child that prints its result as the last JSON line of stdout; `what` names it
/// in errors.
pub(crate) fn run_child(mut cmd: Command, what: &str) -> Result<SideResult> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(Error::io(format!(
            "starting {what} ({:?})",
            cmd.get_program()
        )))?;
    if !out.status.success() {
        return Err(Error::ChildFailed {
            what: what.to_string(),
            status: out.status,
        });
    }
    parse_result(&String::from_utf8_lossy(&out.stdout), what)
}

/// The result in a child's stdout: its last line that starts with `{`.
pub(crate) fn parse_result(stdout: &str, what: &str) -> Result<SideResult> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| Error::NoResult {
            what: what.to_string(),
        })?;
    serde_json::from_str(line).map_err(|source| Error::BadResult {
        what: what.to_string(),
        line: line.to_string(),
        source,
    })
}

/// Whether `dir` holds a checkpoint both sides can load (a config and the weights,
/// whole or sharded).
pub fn has_checkpoint(dir: &Path) -> bool {
    dir.join("config.json").is_file()
        && (dir.join("model.safetensors").is_file()
            || dir.join("model.safetensors.index.json").is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"side":"reference","workload":"matmul","reps_s":[0.5,0.4],"median_s":0.45,"warmup":1,"items_per_rep":1,"load_s":0.0,"peak_rss_bytes":1048576,"threads":2,"attn_implementation":null}"#;

    #[test]
    fn the_result_is_the_last_json_line() {
        let stdout = format!("loading\n{{\"not\": \"this\"}}\nwarming up\n{LINE}\ntrailing\n");
        let r = parse_result(&stdout, "reference.py time").unwrap();
        assert_eq!(r.side, "reference");
        assert_eq!(r.reps_s, [0.5, 0.4]);
        assert_eq!(r.peak_rss_bytes, Some(1 << 20));
        assert!(r.ttft_reps_s.is_empty() && r.ttft_median_s.is_none());
    }

    #[test]
    fn missing_or_broken_results_name_the_child() {
        let err = parse_result("no json here\n", "glimpse worker").unwrap_err();
        assert_eq!(err.to_string(), "glimpse worker printed no JSON result");
        let err = parse_result("{\"side\": 1}\n", "glimpse worker").unwrap_err();
        assert!(matches!(err, Error::BadResult { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("glimpse worker: unreadable result"));
    }

    #[test]
    fn checkpoints_need_a_config_and_weights() {
        let dir = std::env::temp_dir().join(format!("glimpse-bench-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!has_checkpoint(&dir));
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        assert!(!has_checkpoint(&dir));
        std::fs::write(dir.join("model.safetensors.index.json"), "{}").unwrap();
        assert!(has_checkpoint(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
