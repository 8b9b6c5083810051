//! Reading a training run directory as `glimpse train` writes it: `log.jsonl` (one
//! JSON object per logged update, per validation and per resume), `recipe.toml`, and
//! the checkpoints under `checkpoints/`.
//!
//! The log's lines, as `glimpse_train::trainer::RunLog` writes them:
//!
//! - an update: `{"step", "epoch", "loss", "lr", "grad_norm", "samples_per_s", ...}`
//!   plus one field per named loss of the objective (`itc`, `itm`, `lm`, ...);
//! - a validation: `{"step", "validation": {...}}` (numbers, possibly nested);
//! - a resume: `{"step", "resumed": {"epoch", "position"}}`.
//!
//! A line that is not one of these is an error naming the file and the line, with
//! one exception: an unparsable **last** line without its newline is what a run killed
//! in the middle of a write leaves behind, so it is skipped and reported in
//! [`RunData::warnings`] (and on the page).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{Error, Result};

/// A point where a run was resumed from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub step: u64,
    pub epoch: u64,
    /// Samples of the epoch already consumed.
    pub position: u64,
}

/// One run directory, read.
#[derive(Debug, Clone)]
pub struct RunData {
    pub dir: PathBuf,
    /// The name shown in legends (the directory name, made unique among the runs of a
    /// page).
    pub name: String,
    /// `recipe.toml`, as written by the run.
    pub recipe: Option<String>,
    /// Per-update fields (`loss`, `lr`, `samples_per_s`, `grad_norm`, each named
    /// loss): `(step, value)` in step order.
    pub updates: BTreeMap<String, Vec<(f64, f64)>>,
    /// Validation metrics by dotted name (`retrieval.r5_i2t`): `(step, value)`.
    pub validation: BTreeMap<String, Vec<(f64, f64)>>,
    pub resumes: Vec<Resume>,
    /// Steps of the checkpoints on disk, ascending.
    pub checkpoints: Vec<u64>,
    /// The checkpoint `checkpoints/latest` names.
    pub latest: Option<String>,
    /// The last step the log mentions.
    pub last_step: u64,
    /// What was skipped or is missing, for the page to say.
    pub warnings: Vec<String>,
}

/// Fields of an update line that are not curves.
const NOT_CURVES: [&str; 2] = ["step", "epoch"];

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((prefix.to_string(), x));
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, out);
            }
        }
        _ => {}
    }
}

/// Sorts by step and keeps the last value of a repeated step.
fn tidy(curves: &mut BTreeMap<String, Vec<(f64, f64)>>) {
    for pts in curves.values_mut() {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut kept: Vec<(f64, f64)> = Vec::with_capacity(pts.len());
        for &p in pts.iter() {
            match kept.last_mut() {
                Some(last) if last.0 == p.0 => *last = p,
                _ => kept.push(p),
            }
        }
        *pts = kept;
    }
}

impl RunData {
    /// Reads the run directory `dir`. Errors: no such directory, no `log.jsonl`, a
    /// line of the log that is not an event (see the module doc).
    pub fn read(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Run {
                path: dir.to_path_buf(),
                message:
                    "not a directory (give a training run directory, the --out of `glimpse train`)"
                        .into(),
            });
        }
        let log_path = dir.join("log.jsonl");
        if !log_path.is_file() {
            return Err(Error::Run {
                path: dir.to_path_buf(),
                message: "not a training run: it has no log.jsonl".into(),
            });
        }
        let text = std::fs::read_to_string(&log_path).map_err(|e| Error::io(&log_path, e))?;
        let mut run = RunData {
            dir: dir.to_path_buf(),
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            recipe: None,
            updates: BTreeMap::new(),
            validation: BTreeMap::new(),
            resumes: Vec::new(),
            checkpoints: Vec::new(),
            latest: None,
            last_step: 0,
            warnings: Vec::new(),
        };
        run.read_log(&log_path, &text)?;
        tidy(&mut run.updates);
        tidy(&mut run.validation);
        let recipe = dir.join("recipe.toml");
        match std::fs::read_to_string(&recipe) {
            Ok(t) => run.recipe = Some(t),
            Err(_) => run
                .warnings
                .push(format!("{}: missing or unreadable", recipe.display())),
        }
        run.read_checkpoints();
        Ok(run)
    }

    fn read_log(&mut self, path: &Path, text: &str) -> Result<()> {
        let lines: Vec<&str> = text.split('\n').collect();
        let complete = text.ends_with('\n');
        for (i, line) in lines.iter().enumerate() {
            let number = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let is_last = lines[i + 1..].iter().all(|l| l.trim().is_empty());
            let bad = |message: String| Error::Log {
                path: path.to_path_buf(),
                line: number,
                message,
            };
            let v: Value = match serde_json::from_str(line) {
                Ok(v) => v,
                Err(e) if is_last && !complete => {
                    self.warnings.push(format!(
                        "{} line {number}: skipped an incomplete last line ({e}); the run was probably stopped while writing it",
                        path.display()
                    ));
                    continue;
                }
                Err(e) => return Err(bad(format!("not JSON ({e})"))),
            };
            let step = v
                .get("step")
                .and_then(Value::as_u64)
                .ok_or_else(|| bad("no \"step\" (a whole number) in this event".into()))?;
            self.last_step = self.last_step.max(step);
            let x = step as f64;
            if let Some(metrics) = v.get("validation") {
                let mut flat = Vec::new();
                flatten("", metrics, &mut flat);
                for (k, y) in flat {
                    self.validation.entry(k).or_default().push((x, y));
                }
            } else if let Some(r) = v.get("resumed") {
                let field = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
                self.resumes.push(Resume {
                    step,
                    epoch: field("epoch"),
                    position: field("position"),
                });
            } else {
                if v.get("loss").is_none() {
                    return Err(bad(
                        "neither an update (no \"loss\"), a validation nor a resume".into(),
                    ));
                }
                let fields = v.as_object().into_iter().flatten();
                for (k, val) in fields {
                    if NOT_CURVES.contains(&k.as_str()) {
                        continue;
                    }
                    if let Some(y) = val.as_f64() {
                        self.updates.entry(k.clone()).or_default().push((x, y));
                    }
                }
            }
        }
        Ok(())
    }

    fn read_checkpoints(&mut self) {
        let root = self.dir.join("checkpoints");
        if let Ok(entries) = std::fs::read_dir(&root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(step) = name
                    .strip_prefix("step-")
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    if e.path().join("trainer.json").is_file() {
                        self.checkpoints.push(step);
                    }
                }
            }
        }
        self.checkpoints.sort_unstable();
        self.latest = std::fs::read_to_string(root.join("latest"))
            .ok()
            .map(|s| s.trim().to_string());
    }
}

/// Reads every run directory and makes their names unique (a repeated directory
/// name gets its parent's name in front).
pub fn read_runs(dirs: &[PathBuf]) -> Result<Vec<RunData>> {
    if dirs.is_empty() {
        return Err(Error::Invalid("no run directory given".into()));
    }
    let mut runs = dirs
        .iter()
        .map(|d| RunData::read(d))
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    for (i, run) in runs.iter_mut().enumerate() {
        if names.iter().filter(|n| **n == names[i]).count() > 1 {
            let parent = run
                .dir
                .parent()
                .and_then(Path::file_name)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            run.name = format!("{parent}/{} (#{})", names[i], i + 1);
        }
    }
    Ok(runs)
}
