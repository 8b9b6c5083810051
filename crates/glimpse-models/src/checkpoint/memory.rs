//! Planning a load before reading any tensor: which dtype to compute in, how much memory
//! the loaded model will hold, and whether that fits.
//!
//! Everything here reads only the safetensors headers (already parsed by
//! [`Weights::open`]), so planning a 7B-class checkpoint costs a few kilobytes of reads.
//!
//! # Compute dtype
//!
//! * CUDA (and other accelerators): the stored dtype (bf16, f16 or f32) is kept; the
//!   kernels exist for all three and converting would only cost memory.
//! * CPU: f32 by default, whatever is stored. bf16 has no CPU gemm kernel: candle 0.11.1
//!   multiplies bf16 by widening both operands to f32 on every call (checked in the tests
//!   below), slower than f32 throughout. f16 has a gemm kernel, but computing the f16
//!   CLIP fixture in f16 moves its image embeddings by 1.3e-3 against the reference's
//!   f32 computation on the same weights, beyond the 1e-4 parity tolerance every model
//!   test holds (`tests/large_checkpoint.rs` measures it), so f16 files are widened too.
//! * CPU with [`LoadOptions::low_memory`]: a half-precision file keeps its dtype (half
//!   the memory of f32, slower and less exact). bf16 is kept rather than narrowed to f16,
//!   which would lose its range.
//! * When the default plan does not fit the available memory but keeping the stored
//!   half dtype would, [`plan_load`] and [`Weights::open_checked`] switch to it and log a
//!   warning: a bf16 7B model on a 16 GiB machine loads in bf16 instead of being refused.
//! * [`LoadOptions::avoid_f16`]: for models that break in f16 (Flan-T5 overflows): where
//!   the rules give f16, compute in f32 on the CPU (bf16 with `low_memory`) and in bf16
//!   elsewhere.
//! * [`LoadOptions::dtype`] overrides all of this.
//!
//! # Memory need
//!
//! [`Weights`] copies every tensor out of the memory map into owned storage
//! (`TensorView::load`), then converts it when the compute dtype differs. The mapped
//! pages themselves are page cache, which the kernel reclaims and which `MemAvailable`
//! already counts as available, so they are not part of the need. The need is:
//!
//! * every tensor at its compute size (non-float tensors at their stored size);
//! * plus, when a conversion happens, the stored copy of the largest converted tensor,
//!   which coexists with its converted copy for a moment;
//! * plus a margin for what inference allocates: a tenth of the weights plus 512 MiB.
//!   A KV cache of `T` tokens holds `2·layers·T·hidden` values against the
//!   `~12·layers·hidden²` of the weights, i.e. `T / (6·hidden)` of them: 4% for 1k tokens
//!   of a 4096-wide 7B model; the rest covers activations, logits (vocab × tokens) and
//!   the fixed cost of the runtime, tokenizer and images.
//!
//! On the CPU the available memory is `MemAvailable` from `/proc/meminfo`. candle gives
//! no way to ask an accelerator for its free memory, so on other devices only an explicit
//! `GLIMPSE_MEMORY_LIMIT` is checked. `GLIMPSE_MEMORY_LIMIT` (bytes, or with a `K`, `M`,
//! `G` or `T` suffix, powers of 1024) replaces the measured value on every device.

use std::fmt;
use std::path::Path;

use candle_core::{DType, Device};

use super::{ModelFiles, Weights};
use crate::error::{Error, Result};

/// The environment variable that caps (or stands in for) the available memory.
pub const MEMORY_LIMIT_ENV: &str = "GLIMPSE_MEMORY_LIMIT";

const GIB: f64 = (1u64 << 30) as f64;
/// Fixed part of the inference margin (runtime, tokenizer, images, small buffers).
const MARGIN_FIXED: u64 = 512 << 20;
/// Proportional part of the inference margin: weights / this.
const MARGIN_DIVISOR: u64 = 10;

/// How the caller wants a checkpoint loaded; the default follows the module rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Compute in exactly this dtype (skips the rules).
    pub dtype: Option<DType>,
    /// Prefer the smaller footprint to speed: keep bf16 on the CPU instead of f32.
    pub low_memory: bool,
    /// The model must not run in f16 (Flan-T5): f32 on the CPU, bf16 elsewhere.
    pub avoid_f16: bool,
    /// Tensors whose name starts with one of these are loaded in f32 whatever the
    /// compute dtype (BLIP-2 keeps its Q-Former in f32); counted so in the estimate.
    pub f32_prefixes: Vec<String>,
}

/// What loading a checkpoint will take; see [`plan_load`].
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    /// How the model is named (hub id for a cached snapshot, else the directory).
    pub model: String,
    pub tensors: usize,
    /// The dominant float dtype of the files, by bytes (f32 when none is stored).
    pub stored_dtype: DType,
    pub compute_dtype: DType,
    /// Sum of the tensor sizes declared by the headers.
    pub stored_bytes: u64,
    /// Estimated bytes the loaded model holds, margin included.
    pub need_bytes: u64,
    /// Memory available for it, when known.
    pub available: Option<u64>,
}

impl LoadPlan {
    /// Whether the need fits what is available (true when that is unknown).
    pub fn fits(&self) -> bool {
        self.available.is_none_or(|a| self.need_bytes <= a)
    }

    /// Errors, naming the model and the sizes, when the need exceeds what is available.
    pub fn check(&self) -> Result<()> {
        match self.available {
            Some(available) => refuse(
                &self.model,
                self.need_bytes,
                available,
                Some(self.compute_dtype),
            ),
            None => Ok(()),
        }
    }
}

impl fmt::Display for LoadPlan {
    /// `loading <model>: <N> tensors, stored bf16 (X GiB), computing in f32, needs ~Y GiB
    /// of Z GiB available`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loading {}: {} tensors, stored {} ({}), computing in {}, needs ~{}",
            self.model,
            self.tensors,
            self.stored_dtype.as_str(),
            gib(self.stored_bytes),
            self.compute_dtype.as_str(),
            gib(self.need_bytes),
        )?;
        match self.available {
            Some(a) => write!(f, " of {} available", gib(a)),
            None => write!(f, " (available memory unknown)"),
        }
    }
}

/// `12.3 GiB`.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / GIB)
}

/// The dtype to compute in for weights stored as `stored` (default options).
pub fn compute_dtype(stored: DType, device: &Device) -> DType {
    compute_dtype_with(stored, device, &LoadOptions::default())
}

/// The dtype to compute in, following the module rules and `opts`.
pub fn compute_dtype_with(stored: DType, device: &Device, opts: &LoadOptions) -> DType {
    if let Some(dtype) = opts.dtype {
        return dtype;
    }
    let half = matches!(stored, DType::F16 | DType::BF16);
    let chosen = match (device.is_cpu(), stored) {
        (false, DType::F16 | DType::BF16 | DType::F32) => stored,
        (true, _) if half && opts.low_memory => stored,
        _ => DType::F32,
    };
    match chosen {
        DType::F16 if opts.avoid_f16 && device.is_cpu() && !opts.low_memory => DType::F32,
        DType::F16 if opts.avoid_f16 => DType::BF16,
        d => d,
    }
}

fn is_float(dtype: safetensors::Dtype) -> bool {
    use safetensors::Dtype::*;
    matches!(dtype, F16 | BF16 | F32 | F64)
}

/// Bytes the model loaded from `weights` in `compute` will hold, margin included.
pub fn estimate_load_bytes(weights: &Weights, compute: DType) -> u64 {
    estimate_with(weights, compute, &[])
}

fn estimate_with(weights: &Weights, compute: DType, f32_prefixes: &[String]) -> u64 {
    let mut total = 0u64;
    let mut transient = 0u64;
    for (name, entry) in &weights.store.entries {
        let stored = (entry.end - entry.start) as u64;
        if !is_float(entry.dtype) {
            total += stored;
            continue;
        }
        let target = if f32_prefixes.iter().any(|p| name.starts_with(p.as_str())) {
            DType::F32
        } else {
            compute
        };
        let numel: u64 = entry.shape.iter().map(|&d| d as u64).product();
        let loaded = numel * target.size_in_bytes() as u64;
        total += loaded;
        if DType::try_from(entry.dtype).ok() != Some(target) {
            transient = transient.max(stored);
        }
    }
    total + transient + total / MARGIN_DIVISOR + MARGIN_FIXED
}

/// Parses `4096`, `512K`, `64M`, `4G`, `1T` (also `4GiB`, `4gb`; powers of 1024).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    let value: f64 = num.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value * (1u64 << shift) as f64) as u64)
}

/// `GLIMPSE_MEMORY_LIMIT` if set (an unparsable value is an error), else `None`.
fn memory_limit() -> std::result::Result<Option<u64>, String> {
    match std::env::var(MEMORY_LIMIT_ENV) {
        Ok(v) if !v.trim().is_empty() => parse_size(&v).map(Some).ok_or_else(|| {
            format!("{MEMORY_LIMIT_ENV}={v:?} is not a size (bytes, or a number with K, M, G or T)")
        }),
        _ => Ok(None),
    }
}

/// Memory available to a new model on this machine: `GLIMPSE_MEMORY_LIMIT` when set (and
/// parsable; [`plan_load`] reports an unparsable value), else `MemAvailable` from
/// `/proc/meminfo` on Linux; `None` when unknown.
pub fn available_memory() -> Option<u64> {
    if let Ok(Some(limit)) = memory_limit() {
        return Some(limit);
    }
    mem_available()
}

#[cfg(target_os = "linux")]
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(not(target_os = "linux"))]
fn mem_available() -> Option<u64> {
    None
}

/// Memory available on `device`: see the module documentation.
fn available_for(device: &Device) -> std::result::Result<Option<u64>, String> {
    if let Some(limit) = memory_limit()? {
        return Ok(Some(limit));
    }
    Ok(if device.is_cpu() {
        mem_available()
    } else {
        None
    })
}

/// An error naming the model, the need and what is available when `need > available`.
pub fn check_fits(model_name: &str, need: u64, available: u64) -> Result<()> {
    refuse(model_name, need, available, None)
}

fn refuse(model_name: &str, need: u64, available: u64, computing: Option<DType>) -> Result<()> {
    if need <= available {
        return Ok(());
    }
    let computing_str = computing
        .map(|d| format!(" (computing in {})", d.as_str()))
        .unwrap_or_default();
    let advice = match computing {
        Some(DType::F16 | DType::BF16) => "Use a smaller model or a machine with more memory",
        _ => {
            "Use a smaller dtype (half-precision f16/bf16 weights), a smaller model, or a \
             machine with more memory"
        }
    };
    Err(Error::Model {
        model: model_name.to_string(),
        msg: format!(
            "needs ~{}{computing_str} of memory to load, but only {} is available \
             (MemAvailable, or {MEMORY_LIMIT_ENV} when set); nothing was loaded. {advice}",
            gib(need),
            gib(available)
        ),
    })
}

/// How a user would name the model of `files`: `org/name` for a hub-cache snapshot
/// (`.../models--org--name/snapshots/<rev>`), else the directory.
pub(super) fn model_name(dir: &Path) -> String {
    let snapshot_repo = dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(|p| p.parent())
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("models--"));
    match snapshot_repo {
        Some(repo) => repo.replacen("--", "/", 1),
        None => dir.display().to_string(),
    }
}

/// Plans loading `files` on `device` with default options; see [`plan_load_with`].
pub fn plan_load(files: &ModelFiles, device: &Device) -> Result<LoadPlan> {
    plan_load_with(files, device, &LoadOptions::default())
}

/// Maps the files (reading only their headers), picks the compute dtype, estimates the
/// need, reads the available memory, and logs the plan at info level. Does not refuse:
/// see [`LoadPlan::check`] and [`Weights::open_checked`].
pub fn plan_load_with(files: &ModelFiles, device: &Device, opts: &LoadOptions) -> Result<LoadPlan> {
    let weights = Weights::open(files)?;
    plan_for(&weights, device, opts)
}

pub(super) fn plan_for(weights: &Weights, device: &Device, opts: &LoadOptions) -> Result<LoadPlan> {
    let model = model_name(&weights.store.dir);
    let available = available_for(device).map_err(|msg| Error::Model {
        model: model.clone(),
        msg,
    })?;
    let stored_dtype = weights.stored_dtype().unwrap_or(DType::F32);
    let make = |opts: &LoadOptions| {
        let compute = compute_dtype_with(stored_dtype, device, opts);
        LoadPlan {
            model: model.clone(),
            tensors: weights.tensor_count(),
            stored_dtype,
            compute_dtype: compute,
            stored_bytes: weights.stored_bytes(),
            need_bytes: estimate_with(weights, compute, &opts.f32_prefixes),
            available,
        }
    };
    let mut plan = make(opts);
    if !plan.fits() && opts.dtype.is_none() && !opts.low_memory {
        let smaller = make(&LoadOptions {
            low_memory: true,
            ..opts.clone()
        });
        if smaller.need_bytes < plan.need_bytes {
            if smaller.fits() {
                tracing::warn!(
                    model = %plan.model,
                    "computing in {} would need ~{}, more than available; keeping {}",
                    plan.compute_dtype.as_str(),
                    gib(plan.need_bytes),
                    smaller.compute_dtype.as_str()
                );
            }
            // Also when it does not fit: a refusal then names the smallest need.
            plan = smaller;
        }
    }
    tracing::info!(
        model = %plan.model,
        tensors = plan.tensors,
        stored_dtype = plan.stored_dtype.as_str(),
        compute_dtype = plan.compute_dtype.as_str(),
        stored_bytes = plan.stored_bytes,
        need_bytes = plan.need_bytes,
        available = plan.available,
        "{plan}"
    );
    Ok(plan)
}

impl Weights {
    /// Maps the files, plans the load (default options) and refuses, before any tensor
    /// is read, when the need exceeds the available memory.
    pub fn open_checked(files: &ModelFiles, device: &Device) -> Result<(Weights, LoadPlan)> {
        Self::open_checked_with(files, device, &LoadOptions::default())
    }

    /// [`Weights::open_checked`] with options (T5's `avoid_f16`, a forced dtype, ...).
    pub fn open_checked_with(
        files: &ModelFiles,
        device: &Device,
        opts: &LoadOptions,
    ) -> Result<(Weights, LoadPlan)> {
        let weights = Weights::open(files)?;
        let plan = plan_for(&weights, device, opts)?;
        plan.check()?;
        Ok((weights, plan))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Tensor;

    #[test]
    fn cpu_matmul_dtypes() {
        // f32 and f16 have gemm kernels; bf16 works in candle 0.11.1 by widening to f32
        // per call (so it is exact to bf16 rounding, but never faster than f32).
        let a = Tensor::arange(0f32, 12., &Device::Cpu)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let b = a.t().unwrap().contiguous().unwrap();
        let want: Vec<Vec<f32>> = a.matmul(&b).unwrap().to_vec2().unwrap();
        for dt in [DType::F16, DType::BF16] {
            let got = a
                .to_dtype(dt)
                .unwrap()
                .matmul(&b.to_dtype(dt).unwrap())
                .unwrap_or_else(|e| panic!("{dt:?} matmul on the CPU: {e}"));
            assert_eq!(got.dtype(), dt);
            let got: Vec<Vec<f32>> = got.to_dtype(DType::F32).unwrap().to_vec2().unwrap();
            assert_eq!(got, want, "{dt:?}");
        }
    }

    #[test]
    fn compute_dtype_rules() {
        let cpu = Device::Cpu;
        assert_eq!(compute_dtype(DType::F32, &cpu), DType::F32);
        assert_eq!(compute_dtype(DType::F16, &cpu), DType::F32);
        assert_eq!(compute_dtype(DType::BF16, &cpu), DType::F32);
        let low = LoadOptions {
            low_memory: true,
            ..Default::default()
        };
        assert_eq!(compute_dtype_with(DType::BF16, &cpu, &low), DType::BF16);
        assert_eq!(compute_dtype_with(DType::F16, &cpu, &low), DType::F16);
        assert_eq!(compute_dtype_with(DType::F32, &cpu, &low), DType::F32);
        let t5_low = LoadOptions {
            low_memory: true,
            avoid_f16: true,
            ..Default::default()
        };
        assert_eq!(compute_dtype_with(DType::F16, &cpu, &t5_low), DType::BF16);
        let t5 = LoadOptions {
            avoid_f16: true,
            ..Default::default()
        };
        assert_eq!(compute_dtype_with(DType::F16, &cpu, &t5), DType::F32);
        assert_eq!(compute_dtype_with(DType::BF16, &cpu, &t5), DType::F32);
        let forced = LoadOptions {
            dtype: Some(DType::F16),
            ..Default::default()
        };
        assert_eq!(compute_dtype_with(DType::F32, &cpu, &forced), DType::F16);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("4GiB"), Some(4 << 30));
        assert_eq!(parse_size(" 512m "), Some(512 << 20));
        assert_eq!(parse_size("1.5K"), Some(1536));
        assert_eq!(parse_size("1T"), Some(1 << 40));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("4X"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn refusal_names_model_and_sizes() {
        assert!(check_fits("m", 10, 10).is_ok());
        let err = check_fits("org/big", 14 << 30, 4 << 30)
            .unwrap_err()
            .to_string();
        assert!(err.contains("org/big"), "{err}");
        assert!(err.contains("14.0 GiB") && err.contains("4.0 GiB"), "{err}");
    }

    #[test]
    fn hub_snapshot_is_named_by_its_id() {
        let dir = Path::new("/c/hub/models--llava-hf--llava-1.5-7b-hf/snapshots/abc");
        assert_eq!(model_name(dir), "llava-hf/llava-1.5-7b-hf");
        assert_eq!(model_name(Path::new("/m/clip")), "/m/clip");
    }
}
