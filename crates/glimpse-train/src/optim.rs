//! AdamW (decoupled weight decay, as `torch.optim.AdamW`), global-norm gradient
//! clipping, and the warmup + cosine learning-rate schedule.
//!
//! The optimizer owns its moment estimates and can write them to / read them from a
//! safetensors file, so a resumed run continues with the exact same state.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// AdamW hyper-parameters; the defaults are `torch.optim.AdamW`'s except the decay.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Applied to parameters of rank >= 2 only (matrices, embeddings, convolutions);
    /// biases, norms and scalars are not decayed.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.05,
        }
    }
}

/// One trainable parameter: its checkpoint name, the variable, and its moments.
struct Param {
    name: String,
    var: Var,
    decay: bool,
    /// Multiplies the schedule's learning rate for this parameter.
    lr_scale: f64,
    m: Tensor,
    v: Tensor,
}

/// AdamW over named variables.
pub struct AdamW {
    params: Vec<Param>,
    cfg: AdamWConfig,
    step: u64,
}

impl AdamW {
    /// `params` in a fixed order (the order of the state file and of the norm sum).
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                let decay = var.rank() >= 2;
                Ok(Param {
                    name,
                    var,
                    decay,
                    lr_scale: 1.0,
                    m,
                    v,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            params,
            cfg,
            step: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Number of updates applied so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Scales the learning rate of every parameter whose name starts with `prefix`
    /// (e.g. a pretrained tower trained more gently than the rest); returns how many.
    pub fn scale_lr(&mut self, prefix: &str, scale: f64) -> usize {
        let mut n = 0;
        for p in self
            .params
            .iter_mut()
            .filter(|p| p.name.starts_with(prefix))
        {
            p.lr_scale = scale;
            n += 1;
        }
        n
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|p| p.name.as_str())
    }

    /// The gradient of every parameter, in order; an error names a parameter that got
    /// none (a training path that silently drops a parameter is a bug, not a warning).
    pub fn gradients(&self, grads: &GradStore) -> Result<Vec<Tensor>> {
        self.params
            .iter()
            .map(|p| {
                grads.get(p.var.as_tensor()).cloned().ok_or_else(|| {
                    Error::Train(format!("parameter {} received no gradient", p.name))
                })
            })
            .collect()
    }

    /// Applies one update with learning rate `lr` to the given gradients (already
    /// clipped / averaged), in the order of the parameters.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Train(format!(
                "{} gradients for {} parameters",
                grads.len(),
                self.params.len()
            )));
        }
        self.step += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } = self.cfg;
        let t = self.step as i32;
        let bias1 = 1.0 - beta1.powi(t);
        let bias2 = 1.0 - beta2.powi(t);
        let base_lr = lr;
        for (p, g) in self.params.iter_mut().zip(grads) {
            let lr = base_lr * p.lr_scale;
            let g = g.to_dtype(p.var.dtype())?;
            let mut theta = p.var.as_tensor().detach();
            if p.decay && weight_decay != 0.0 {
                theta = (theta * (1.0 - lr * weight_decay))?;
            }
            p.m = ((&p.m * beta1)? + (&g * (1.0 - beta1))?)?;
            p.v = ((&p.v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            // torch: denom = sqrt(v) / sqrt(bias2) + eps; theta -= lr / bias1 * m / denom
            let denom = ((p.v.sqrt()? / bias2.sqrt())? + eps)?;
            let update = (p.m.div(&denom)? * (lr / bias1))?;
            p.var.set(&(theta - update)?)?;
        }
        Ok(())
    }

    /// Writes the moments and the step count (`{name}.m`, `{name}.v`, `step`).
    pub fn save_state(&self, path: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for p in &self.params {
            map.insert(format!("{}.m", p.name), p.m.clone());
            map.insert(format!("{}.v", p.name), p.v.clone());
        }
        map.insert(
            "step".into(),
            Tensor::new(&[self.step as i64], &candle_core::Device::Cpu)?,
        );
        candle_core::safetensors::save(&map, path).map_err(|e| Error::io_ctx(path, e))
    }

    /// Reads what [`Self::save_state`] wrote; every parameter must be present with its
    /// shape.
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let dev = self.params.first().map(|p| p.var.device().clone());
        let dev = dev.unwrap_or(candle_core::Device::Cpu);
        let map = crate::trainer::load_tensors(path, &dev)?;
        let get = |k: &str, like: &Tensor| -> Result<Tensor> {
            let t = map.get(k).ok_or_else(|| {
                Error::Train(format!("{}: optimizer state has no {k}", path.display()))
            })?;
            if t.shape() != like.shape() {
                return Err(Error::Train(format!(
                    "{}: {k} is {:?}, the parameter is {:?}",
                    path.display(),
                    t.shape(),
                    like.shape()
                )));
            }
            Ok(t.to_dtype(like.dtype())?)
        };
        for p in &mut self.params {
            p.m = get(&format!("{}.m", p.name), p.var.as_tensor())?;
            p.v = get(&format!("{}.v", p.name), p.var.as_tensor())?;
        }
        let step = map
            .get("step")
            .ok_or_else(|| Error::Train(format!("{}: no step", path.display())))?;
        self.step = step.to_vec1::<i64>()?[0] as u64;
        Ok(())
    }
}

/// The global L2 norm of `grads` (in f64, summed in order).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut total = 0.0f64;
    for g in grads {
        let s = g
            .to_dtype(DType::F32)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f32>()?;
        total += s as f64;
    }
    Ok(total.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_`: scales every gradient by
/// `max_norm / (norm + 1e-6)` when that is below 1. Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64> {
    let norm = global_norm(grads)?;
    if !norm.is_finite() {
        return Err(Error::Train(format!(
            "gradient norm is {norm}: the loss diverged (lower the learning rate or enable clipping earlier)"
        )));
    }
    let coef = max_norm / (norm + 1e-6);
    if max_norm > 0.0 && coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

/// Linear warmup from 0 to `peak`, then cosine decay to `peak * min_ratio` at
/// `total` steps (constant after).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
    pub min_ratio: f64,
}

impl Schedule {
    /// The learning rate of update number `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        if self.warmup > 0 && step < self.warmup {
            return self.peak * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let done = (step.saturating_sub(self.warmup)).min(span) as f64 / span as f64;
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
        self.peak * (self.min_ratio + (1.0 - self.min_ratio) * cos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let s = Schedule {
            peak: 1.0,
            warmup: 10,
            total: 110,
            min_ratio: 0.1,
        };
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert!((s.lr(10) - 1.0).abs() < 1e-12);
        assert!((s.lr(60) - 0.55).abs() < 1e-9);
        assert!((s.lr(110) - 0.1).abs() < 1e-12);
        assert!((s.lr(500) - 0.1).abs() < 1e-12);
    }

    /// One AdamW step on a scalar, worked by hand: m = 0.1 g, v = 0.001 g^2,
    /// update = lr * g/|g| (bias-corrected), plus decay on matrices only.
    #[test]
    fn adamw_first_step_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[2.0f32]], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[2.0f32], &dev)?)?;
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(vec![("w".into(), w.clone()), ("b".into(), b.clone())], cfg)?;
        let g = [
            Tensor::new(&[[3.0f32]], &dev)?,
            Tensor::new(&[-3.0f32], &dev)?,
        ];
        opt.step(&g, 0.1)?;
        let w1 = w.as_tensor().flatten_all()?.to_vec1::<f32>()?[0];
        let b1 = b.as_tensor().to_vec1::<f32>()?[0];
        // w: 2 * (1 - 0.05) - 0.1 * 3 / (3 + 1e-8) ; b: 2 + 0.1
        assert!((w1 - (1.9 - 0.1)).abs() < 1e-6, "{w1}");
        assert!((b1 - 2.1).abs() < 1e-6, "{b1}");
        Ok(())
    }

    /// The same step with `w`'s learning rate scaled by 0.25: its decay and its update
    /// both shrink by that factor; `b` moves as before.
    #[test]
    fn scaled_learning_rate_scales_decay_and_update() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::new(&[[2.0f32]], &dev)?)?;
        let b = Var::from_tensor(&Tensor::new(&[2.0f32], &dev)?)?;
        let cfg = AdamWConfig {
            lr: 0.1,
            weight_decay: 0.5,
            ..Default::default()
        };
        let mut opt = AdamW::new(
            vec![("tower.w".into(), w.clone()), ("b".into(), b.clone())],
            cfg,
        )?;
        assert_eq!(opt.scale_lr("tower.", 0.25), 1);
        let g = [
            Tensor::new(&[[3.0f32]], &dev)?,
            Tensor::new(&[-3.0f32], &dev)?,
        ];
        opt.step(&g, 0.1)?;
        let w1 = w.as_tensor().flatten_all()?.to_vec1::<f32>()?[0];
        let b1 = b.as_tensor().to_vec1::<f32>()?[0];
        // w: 2 * (1 - 0.025 * 0.5) - 0.025
        assert!((w1 - (2.0 * (1.0 - 0.0125) - 0.025)).abs() < 1e-6, "{w1}");
        assert!((b1 - 2.1).abs() < 1e-6, "{b1}");
        Ok(())
    }

    #[test]
    fn clipping_scales_to_max_norm() -> Result<()> {
        let dev = Device::Cpu;
        let mut g = vec![Tensor::new(&[3.0f32], &dev)?, Tensor::new(&[4.0f32], &dev)?];
        let n = clip_grad_norm(&mut g, 1.0)?;
        assert!((n - 5.0).abs() < 1e-9);
        assert!((global_norm(&g)? - 1.0).abs() < 1e-5);
        Ok(())
    }
}
