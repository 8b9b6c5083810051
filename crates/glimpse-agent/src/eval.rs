//! `glimpse eval --task agent`: the agent end to end on an evaluation set, scored by
//! whether each answer holds what the synthetic world's records say it must.
//!
//! The set is JSONL, one request per line (written by `glimpse data plans`):
//! `{"key", "request", "images": [paths relative to the file's directory],
//! "plan": <gold plan>, "expect": {"all": [...], "none": [...]}}`. An answer is right
//! when it contains every `all` string and no `none` string, ignoring case.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::agent::Agent;
use crate::plan::Plan;
use crate::{Error, Result};

/// What a right answer holds and does not hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Expect {
    #[serde(default)]
    pub all: Vec<String>,
    #[serde(default)]
    pub none: Vec<String>,
}

/// One request of the set, its images resolved against the file's directory.
#[derive(Debug, Clone)]
pub struct EvalRecord {
    pub key: String,
    pub request: String,
    pub images: Vec<PathBuf>,
    pub plan: Plan,
    pub expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    key: String,
    request: String,
    #[serde(default)]
    images: Vec<String>,
    plan: serde_json::Value,
    expect: Expect,
}

/// Reads the set; a bad line is an error naming the file and line.
pub fn read_records(path: &Path) -> Result<Vec<EvalRecord>> {
    let fail = |msg: String| Error::Data {
        path: path.display().to_string(),
        msg,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| fail(format!("line {}: {msg}", i + 1));
        let raw: RawRecord = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let plan = Plan::from_json(&raw.plan).map_err(|e| at(e.to_string()))?;
        if raw.expect.all.is_empty() && raw.expect.none.is_empty() {
            return Err(at(format!("record `{}` expects nothing", raw.key)));
        }
        out.push(EvalRecord {
            key: raw.key,
            request: raw.request,
            images: raw.images.iter().map(|p| dir.join(p)).collect(),
            plan,
            expect: raw.expect,
        });
    }
    if out.is_empty() {
        return Err(fail("no records".into()));
    }
    Ok(out)
}

/// The `all` strings the answer lacks and the `none` strings it holds.
pub fn check(answer: &str, expect: &Expect) -> (Vec<String>, Vec<String>) {
    let a = answer.to_lowercase();
    let missing = expect
        .all
        .iter()
        .filter(|s| !a.contains(&s.to_lowercase()))
        .cloned()
        .collect();
    let present = expect
        .none
        .iter()
        .filter(|s| a.contains(&s.to_lowercase()))
        .cloned()
        .collect();
    (missing, present)
}

/// One record's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct RecordResult {
    pub key: String,
    pub right: bool,
    pub answer: String,
    pub missing: Vec<String>,
    pub forbidden: Vec<String>,
    /// Why the agent gave no answer (planner, selection or request error).
    pub error: Option<String>,
    pub seconds: f64,
}

/// The share of right answers and every record's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AgentEvalReport {
    pub data: String,
    /// `gold` (stage 1 skipped) or the planner's description.
    pub plans: String,
    pub total: usize,
    pub right: usize,
    pub share: f64,
    pub records: Vec<RecordResult>,
}

impl AgentEvalReport {
    pub fn failures(&self) -> impl Iterator<Item = &RecordResult> {
        self.records.iter().filter(|r| !r.right)
    }
}

/// Runs the agent on every record: with its gold plan (`gold`) or its planner.
/// `progress` sees each record's outcome as it finishes.
pub fn evaluate(
    agent: &Agent,
    data: &Path,
    records: &[EvalRecord],
    gold: bool,
    progress: &mut dyn FnMut(&RecordResult),
) -> AgentEvalReport {
    let mut results = Vec::with_capacity(records.len());
    for r in records {
        let started = Instant::now();
        let outcome = if gold {
            agent.run_plan(&r.request, &r.images, r.plan.clone())
        } else {
            agent.run(&r.request, &r.images)
        };
        let result = match outcome {
            Ok(report) => {
                let (missing, forbidden) = check(&report.answer, &r.expect);
                RecordResult {
                    key: r.key.clone(),
                    right: missing.is_empty() && forbidden.is_empty(),
                    answer: report.answer,
                    missing,
                    forbidden,
                    error: None,
                    seconds: started.elapsed().as_secs_f64(),
                }
            }
            Err(e) => RecordResult {
                key: r.key.clone(),
                right: false,
                answer: String::new(),
                missing: r.expect.all.clone(),
                forbidden: Vec::new(),
                error: Some(e.to_string()),
                seconds: started.elapsed().as_secs_f64(),
            },
        };
        progress(&result);
        results.push(result);
    }
    let right = results.iter().filter(|r| r.right).count();
    AgentEvalReport {
        data: data.display().to_string(),
        plans: if gold {
            "gold".into()
        } else {
            agent.planner_name()
        },
        total: results.len(),
        right,
        share: right as f64 / results.len().max(1) as f64,
        records: results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_right_with_every_wanted_string_and_no_unwanted_one() {
        let e = Expect {
            all: vec!["Image 2".into(), "blue square".into()],
            none: vec!["image 1 matches".into()],
        };
        let (m, f) = check("image 2 matches \"a red circle\" best; a BLUE square", &e);
        assert!(m.is_empty() && f.is_empty());
        let (m, f) = check("image 1 matches \"a red circle\" best", &e);
        assert_eq!(m, ["Image 2", "blue square"]);
        assert_eq!(f, ["image 1 matches"]);
    }

    #[test]
    fn bad_lines_are_named() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("set.jsonl");
        std::fs::write(&p, "{\"key\":\"a\"}\n").unwrap();
        let err = read_records(&p).unwrap_err().to_string();
        assert!(err.contains("set.jsonl") && err.contains("line 1"), "{err}");
        std::fs::write(
            &p,
            "{\"key\":\"a\",\"request\":\"r\",\"images\":[\"x.png\"],\"plan\":{\"tasks\":[]},\"expect\":{}}\n",
        )
        .unwrap();
        let err = read_records(&p).unwrap_err().to_string();
        assert!(err.contains("expects nothing"), "{err}");
    }
}
