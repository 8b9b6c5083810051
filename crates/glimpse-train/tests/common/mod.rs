//! What the gradient-parity tests share: the fixtures that the scripts under
//! `tools/fixtures/` write, and the per-tensor comparison of gradients against them.

#![allow(dead_code)] // each test crate uses its own part

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

/// `tools/fixtures/train/{name}`.
pub fn train_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tools/fixtures/train")
        .join(name)
}

/// The tensors of a safetensors file, on the CPU.
pub fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn json(path: &Path) -> Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

pub fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

/// The worst gradient error, per tensor `max|g - ref| / max|ref|`, and where.
pub struct GradientReport {
    pub compared: usize,
    pub worst: f64,
    pub worst_name: String,
    /// The largest absolute gradient among the tensors whose exact gradient is zero
    /// (attention key biases), relative to the largest reference gradient.
    pub worst_zero: f64,
    /// Each compared tensor's error (the zero ones' against the largest gradient).
    pub errors: Vec<(String, f64)>,
}

/// The scalar `loss` against the reference's `expected["loss"]`, relative error below
/// `tol`; returns (got, want, relative error).
pub fn check_loss(loss: &Tensor, expected: &Value, tol: f64, dtype: DType) -> (f64, f64, f64) {
    let (got, want) = (scalar(loss), expected["loss"].as_f64().unwrap());
    let rel = (got - want).abs() / want.abs();
    assert!(
        rel < tol,
        "{dtype:?}: loss {got} vs reference {want} ({rel:.2e})"
    );
    (got, want, rel)
}

impl GradientReport {
    /// Every compared gradient, and every exactly-zero one, within `tol`.
    pub fn assert_within(&self, tol: f64, dtype: DType) {
        assert!(
            self.worst < tol,
            "{dtype:?}: worst gradient error {:.2e} at {}",
            self.worst,
            self.worst_name
        );
        assert!(
            self.worst_zero < tol,
            "{dtype:?}: a zero gradient is {:.2e}",
            self.worst_zero
        );
    }

    /// The worst error among the tensors for which `pick` holds.
    pub fn worst_of(&self, pick: impl Fn(&str) -> bool) -> f64 {
        self.errors
            .iter()
            .filter(|(n, _)| pick(n))
            .map(|(_, e)| *e)
            .fold(0.0, f64::max)
    }
}

/// Compares the gradient of every variable in `vars` with `reference` (in f64, whatever
/// their dtypes): a frozen one
/// (`frozen(name)`) must have no reference and is skipped (candle computes a gradient
/// for every variable the loss reaches, so a frozen language model that the soft
/// prompt passes through has one; the optimizer never sees it); every other one must
/// have both.
/// The names in `zero` (exact gradient zero, see `check_grads` in
/// `tools/fixtures/make_train_fixtures.py`) are measured against the largest
/// reference gradient instead of their own.
pub fn compare_gradients(
    grads: &GradStore,
    vars: &[(String, Var)],
    reference: &HashMap<String, Tensor>,
    zero: &[String],
    frozen: impl Fn(&str) -> bool,
) -> GradientReport {
    let top = reference.values().map(max_abs).fold(0.0, f64::max);
    let mut report = GradientReport {
        compared: 0,
        worst: 0.0,
        worst_name: String::new(),
        worst_zero: 0.0,
        errors: Vec::new(),
    };
    for (name, var) in vars {
        let got = grads.get(var.as_tensor());
        if frozen(name) {
            assert!(
                !reference.contains_key(name),
                "{name}: frozen here, trained in the reference"
            );
            continue;
        }
        let got = got.unwrap_or_else(|| panic!("{name}: no gradient"));
        let want = reference
            .get(name)
            .unwrap_or_else(|| panic!("{name}: not in the reference"));
        assert_eq!(got.shape(), want.shape(), "{name}");
        let f64 = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let diff = max_abs(&(f64(got) - f64(want)).unwrap());
        if zero.contains(name) {
            report.worst_zero = report.worst_zero.max(diff / top);
            report.errors.push((name.clone(), diff / top));
        } else {
            let err = diff / max_abs(want);
            if err > report.worst {
                report.worst = err;
                report.worst_name = name.clone();
            }
            report.errors.push((name.clone(), err));
        }
        report.compared += 1;
    }
    assert_eq!(
        report.compared,
        reference.len(),
        "every reference gradient compared"
    );
    report
}

/// The list under `expected["zero_gradients"]["tensors"]`.
pub fn zero_gradients(expected: &Value) -> Vec<String> {
    expected["zero_gradients"]["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Values of every variable, copied (AdamW updates variables in place).
pub fn copies(vars: &[(String, Var)]) -> HashMap<String, Tensor> {
    vars.iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().copy().unwrap()))
        .collect()
}
