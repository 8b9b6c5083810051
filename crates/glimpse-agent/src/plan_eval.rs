//! Evaluating a planner on requests with gold plans (`glimpse eval --task plan`): reads
//! the cases, plans each one, validates the result against the catalog and scores it
//! with TaskBench's metrics ([`crate::taskbench`]).
//!
//! A data file is JSONL in either of the corpus's formats: a corpus document with
//! `request`, `images` (a count) and `text` (the gold plan), as `glimpse data plans`
//! writes `test.jsonl`; or an end-to-end case with `request`, `images` (a list of
//! paths) and `plan`, as in `agent-test.jsonl`.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use crate::plan::Plan;
use crate::planner::{PlanRequest, Planner};
use crate::taskbench::{Accumulator, PlanScores};
use crate::tasks::Catalog;
use crate::{Error, Result};

/// One request with its gold plan.
#[derive(Debug, Clone)]
pub struct PlanCase {
    pub key: String,
    /// The corpus's intent or plan shape (`kind`), when the data names it.
    pub kind: Option<String>,
    pub request: String,
    pub images: usize,
    pub gold: Plan,
}

/// Reads the cases of `path`; a malformed line is an error naming its number.
pub fn read_cases(path: &Path) -> Result<Vec<PlanCase>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: &str| Error::Io(format!("{} line {}: {msg}", path.display(), i + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| at(&e.to_string()))?;
        let request = v["request"]
            .as_str()
            .ok_or_else(|| at("no \"request\" string"))?
            .to_string();
        let images = match &v["images"] {
            Value::Number(n) => n.as_u64().ok_or_else(|| at("\"images\" is not a count"))? as usize,
            Value::Array(a) => a.len(),
            _ => return Err(at("no \"images\" count or list")),
        };
        let gold = match (&v["plan"], v["text"].as_str()) {
            (Value::Object(_) | Value::Array(_), _) => Plan::from_json(&v["plan"]),
            (_, Some(t)) => Plan::parse(t),
            _ => return Err(at("no gold \"plan\" or \"text\"")),
        }
        .map_err(|e| at(&format!("the gold plan: {e}")))?;
        out.push(PlanCase {
            kind: v["kind"].as_str().map(String::from),
            key: v["key"]
                .as_str()
                .map_or_else(|| format!("line-{}", i + 1), String::from),
            request,
            images,
            gold,
        });
    }
    if out.is_empty() {
        return Err(Error::Io(format!("{}: no requests", path.display())));
    }
    Ok(out)
}

/// What the planner did on one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub key: String,
    pub kind: Option<String>,
    pub request: String,
    /// The planner's text, or its error.
    pub raw: String,
    pub parsed: bool,
    /// The validation error, if the plan parsed but cannot run.
    pub invalid: Option<String>,
    pub exact: bool,
    /// The gold plan and the planner's (for a report page; the JSON has `raw`).
    #[serde(skip)]
    pub gold: Plan,
    #[serde(skip)]
    pub predicted: Option<Plan>,
}

/// The scores and every case's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PlanEvalReport {
    pub planner: String,
    pub data: String,
    pub scores: PlanScores,
    pub cases: Vec<CaseResult>,
}

/// Plans every case with `planner` and scores the plans. `progress` is called after
/// each case.
pub fn evaluate(
    planner: &dyn Planner,
    catalog: &Catalog,
    cases: &[PlanCase],
    data: &str,
    mut progress: impl FnMut(usize),
) -> PlanEvalReport {
    let mut acc = Accumulator::default();
    let mut results = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let req = PlanRequest {
            text: &c.request,
            images: c.images,
            catalog,
        };
        let (pred, raw) = match planner.plan(&req) {
            Ok(p) => (Some(p.plan), p.raw),
            Err(e) => (None, e.to_string()),
        };
        let invalid = pred
            .as_ref()
            .and_then(|p| p.validate(catalog, Some(c.images)).err())
            .map(|e| e.to_string());
        acc.add(pred.as_ref(), invalid.is_none(), &c.gold);
        results.push(CaseResult {
            key: c.key.clone(),
            kind: c.kind.clone(),
            request: c.request.clone(),
            parsed: pred.is_some(),
            exact: pred.as_ref() == Some(&c.gold),
            invalid,
            raw,
            gold: c.gold.clone(),
            predicted: pred,
        });
        progress(i + 1);
    }
    PlanEvalReport {
        planner: planner.describe(),
        data: data.to_string(),
        scores: acc.scores(),
        cases: results,
    }
}
