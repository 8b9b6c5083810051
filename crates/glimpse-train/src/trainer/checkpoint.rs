//! Checkpoints: `OUT/checkpoints/step-NNNNNNNN/` holds `model.safetensors` (every
//! variable), `optimizer.safetensors` (AdamW's moments), the objective's own state
//! (BLIP: `state.safetensors`) and `trainer.json` (the data position); `latest` names
//! the newest. A checkpoint is written under a `.tmp` name and renamed, so a killed
//! run never leaves a half-written one behind `latest`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::attributes::Tower;
use crate::objective::Objective;
use crate::optim::AdamW;
use crate::params::{snapshot, sorted_vars};
use crate::recipe::{ModelKind, Recipe};
use crate::{Error, Result};

/// `trainer.json` in a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Updates done.
    pub step: u64,
    pub epoch: u64,
    /// Raw samples of `epoch` consumed (the loader's position).
    pub position: u64,
    pub total_steps: u64,
    pub samples_seen: u64,
}

pub(crate) fn write_json(path: &Path, v: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::io_ctx(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io_ctx(path, e))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io_ctx(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::io_ctx(path, e))
}

/// The tensors of a checkpoint file, on `device`. A file whose float tensors hold
/// NaN or infinity is refused as corrupt: the trainer stops before it would save one.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let tensors =
        candle_core::safetensors::load(path, device).map_err(|e| Error::io_ctx(path, e))?;
    let mut bad = Vec::new();
    for (name, t) in &tensors {
        if !all_finite(t)? {
            bad.push(name.as_str());
        }
    }
    if !bad.is_empty() {
        bad.sort();
        let shown = bad.iter().take(3).copied().collect::<Vec<_>>().join(", ");
        return Err(Error::io_ctx(
            path,
            format!(
                "the checkpoint file is corrupt: {} tensor(s) hold NaN or infinite values ({shown}{})",
                bad.len(),
                if bad.len() > 3 { ", ..." } else { "" }
            ),
        ));
    }
    Ok(tensors)
}

/// Whether every element of `t` is finite (integer tensors always are).
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    if !t.dtype().is_float() {
        return Ok(true);
    }
    // x - x is 0 for finite x and NaN for NaN and ±inf.
    let z = t.sub(t)?.to_dtype(candle_core::DType::F32)?.sum_all()?;
    Ok(z.to_scalar::<f32>()? == 0.0)
}

/// The checkpoint directory a `--resume` path names.
pub fn resolve_checkpoint(path: &Path) -> Result<(PathBuf, PathBuf)> {
    if path.join("trainer.json").is_file() {
        let run = path
            .parent()
            .and_then(|p| p.parent())
            .ok_or_else(|| Error::io_ctx(path, "a checkpoint outside a run directory"))?;
        return Ok((run.to_path_buf(), path.to_path_buf()));
    }
    let latest = path.join("checkpoints").join("latest");
    let name = std::fs::read_to_string(&latest).map_err(|_| {
        Error::io_ctx(
            path,
            "not a run directory with a checkpoint (no checkpoints/latest) nor a checkpoint",
        )
    })?;
    let ckpt = path.join("checkpoints").join(name.trim());
    if !ckpt.join("trainer.json").is_file() {
        return Err(Error::io_ctx(
            &ckpt,
            "checkpoints/latest names a missing or incomplete checkpoint",
        ));
    }
    Ok((path.to_path_buf(), ckpt))
}

/// Writes a checkpoint of `objective` and `opt` at `state` under `root`, points
/// `latest` at it and keeps the newest `keep` checkpoints.
pub(crate) fn save_checkpoint<O: Objective>(
    objective: &O,
    opt: &AdamW,
    state: &TrainerState,
    root: &Path,
    keep: usize,
) -> Result<PathBuf> {
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!("{name}.tmp"));
    let dst = root.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io_ctx(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io_ctx(&tmp, e))?;
    let weights = snapshot(objective.vars());
    let p = tmp.join("model.safetensors");
    candle_core::safetensors::save(&weights, &p).map_err(|e| Error::io_ctx(&p, e))?;
    opt.save_state(&tmp.join("optimizer.safetensors"))?;
    objective.save_state(&tmp)?;
    write_json(&tmp.join("trainer.json"), state)?;
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| Error::io_ctx(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io_ctx(&dst, e))?;
    let latest_tmp = root.join("latest.tmp");
    std::fs::write(&latest_tmp, format!("{name}\n")).map_err(|e| Error::io_ctx(&latest_tmp, e))?;
    std::fs::rename(&latest_tmp, root.join("latest")).map_err(|e| Error::io_ctx(root, e))?;
    // Keep the newest `keep` checkpoints.
    let mut all: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io_ctx(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp"))
        })
        .collect();
    all.sort();
    let keep = keep.max(1);
    if all.len() > keep {
        for old in &all[..all.len() - keep] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(dst)
}

/// Copies the vision tower (`vision_model.*`) of the `vision_attributes` run that
/// `init` names into `objective`, checking that the run trained a tower of this
/// model's layout and that every tensor is there with its shape. Returns the
/// checkpoint.
pub(crate) fn init_vision<O: Objective>(
    objective: &O,
    init: &Path,
    device: &Device,
) -> Result<PathBuf> {
    let (run, ckpt) = resolve_checkpoint(init)?;
    let theirs = Recipe::from_file(&run.join("recipe.toml"))?;
    let want = objective.vision_tower().ok_or_else(|| {
        Error::Train("model.init_vision applies to clip and blip recipes only".into())
    })?;
    let has = theirs.model.tower.unwrap_or_default();
    if theirs.model.kind != ModelKind::VisionAttributes || has != want {
        return Err(Error::io_ctx(
            init,
            format!(
                "model.init_vision needs a vision_attributes run with tower = \"{}\"; this is a {:?} run{}",
                if want == Tower::Clip { "clip" } else { "blip" },
                theirs.model.kind,
                if theirs.model.kind == ModelKind::VisionAttributes {
                    format!(" of the {has:?} tower")
                } else {
                    String::new()
                }
            ),
        ));
    }
    let p = ckpt.join("model.safetensors");
    let tensors = load_tensors(&p, device)?;
    let mut copied = 0;
    for (name, var) in sorted_vars(objective.vars()) {
        if !name.starts_with("vision_model.") {
            continue;
        }
        let t = tensors
            .get(&name)
            .ok_or_else(|| Error::io_ctx(&p, format!("missing tensor {name}")))?;
        if t.shape() != var.shape() {
            return Err(Error::io_ctx(
                &p,
                format!(
                    "{name} is {:?}, this model's vision tower expects {:?} (the runs' vision_config differ)",
                    t.shape(),
                    var.shape()
                ),
            ));
        }
        var.set(t)?;
        copied += 1;
    }
    if copied == 0 {
        return Err(Error::Train(
            "this model has no vision_model variables".into(),
        ));
    }
    Ok(ckpt)
}
