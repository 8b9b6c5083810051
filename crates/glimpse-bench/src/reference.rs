//! The reference side: a Python interpreter with torch and transformers, running
//! `tools/bench/reference.py` to write the benchmark checkpoints (`make-models`) and to
//! time one workload per child (`time`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};
use crate::protocol::{run_child, SideResult};
use crate::Settings;

/// The interpreter `--python` names by default: the one `tools/setup_venv.sh` makes.
pub const DEFAULT_PYTHON: &str = "tools/.venv/bin/python";
/// The reference script, relative to the repository root.
pub const SCRIPT: &str = "tools/bench/reference.py";

/// The Python side: an interpreter and `reference.py`.
#[derive(Debug, Clone)]
pub struct Reference {
    python: PathBuf,
    script: PathBuf,
}

impl Reference {
    /// Finds the interpreter (the default one under the current directory or the
    /// repository this crate was built from) and the script.
    pub fn locate(python: &Path) -> Result<Self> {
        let hint = "run `bash tools/setup_venv.sh` to create it, or pass --python PATH";
        let python = if python == Path::new(DEFAULT_PYTHON) {
            find_in_workspace(DEFAULT_PYTHON).ok_or_else(|| {
                Error::Reference(format!(
                    "reference Python {DEFAULT_PYTHON} not found: {hint}"
                ))
            })?
        } else if python.components().count() > 1 && !python.exists() {
            return Err(Error::Reference(format!(
                "--python {}: no such file: {hint}",
                python.display()
            )));
        } else {
            python.to_path_buf()
        };
        let script = find_in_workspace(SCRIPT).ok_or_else(|| {
            Error::Reference(format!(
                "{SCRIPT} not found; run glimpse bench from the repository root"
            ))
        })?;
        Ok(Self { python, script })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(&self.script).env("HF_HUB_OFFLINE", "1");
        cmd
    }

    /// Writes the missing benchmark checkpoints under `out` (existing ones are kept).
    pub fn make_models(&self, out: &Path) -> Result<()> {
        let status = self
            .command()
            .arg("make-models")
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .status()
            .map_err(Error::io(format!("starting {}", self.python.display())))?;
        if !status.success() {
            return Err(Error::ChildFailed {
                what: "reference.py make-models".into(),
                status,
            });
        }
        Ok(())
    }

    /// Times `workload` in a child; `model` is its checkpoint (`None` for `matmul`).
    pub fn time(
        &self,
        model: Option<&Path>,
        workload: &str,
        settings: &Settings,
    ) -> Result<SideResult> {
        let mut cmd = self.command();
        cmd.arg("time");
        if let Some(model) = model {
            cmd.arg("--model").arg(model);
        }
        cmd.args(["--workload", workload])
            .args([
                "--reps",
                &settings.reps.to_string(),
                "--warmup",
                &settings.warmup.to_string(),
            ])
            .args(["--new-tokens", &settings.new_tokens.to_string()]);
        run_child(cmd, "reference.py time")
    }
}

/// `rel` under the current directory, else under the workspace this crate was built
/// from (so the bench also works when started from elsewhere in the checkout).
fn find_in_workspace(rel: &str) -> Option<PathBuf> {
    let here = PathBuf::from(rel);
    if here.exists() {
        return Some(here);
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel);
    built.exists().then_some(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_found_from_the_workspace() {
        let script = find_in_workspace(SCRIPT).expect("tools/bench/reference.py");
        assert!(script.ends_with(SCRIPT), "{}", script.display());
        assert!(find_in_workspace("tools/bench/no-such-script.py").is_none());
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        let err = Reference::locate(Path::new("no/such/python")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("--python no/such/python: no such file"),
            "{err}"
        );
    }
}
