//! Memory while loading: `Weights` releases the mapped file pages of each tensor once it
//! has been copied out, so peak resident memory stays near one copy of the weights
//! instead of two (the map plus the tensors). Released pages must read back unchanged
//! when a tensor is read again (tied weights, converted dtypes).

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use common::max_diff;
use glimpse_models::checkpoint::{ModelFiles, Weights};

fn model_files(dir: &Path) -> ModelFiles {
    ModelFiles {
        dir: dir.to_path_buf(),
        config: dir.join("config.json"),
        weights: vec![dir.join("model.safetensors")],
        tokenizer: None,
        preprocessor: None,
    }
}

/// Reading a tensor again after its pages were released (directly, through an alias, and
/// after a bf16 -> f32 conversion) gives the same values.
#[test]
fn released_pages_read_back_for_aliases_and_conversions() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    // 4 MiB and 1 MiB: many whole pages each, so the release really drops pages.
    let a = Tensor::arange(0f32, (1024 * 1024) as f32, &dev)
        .unwrap()
        .reshape((1024, 1024))
        .unwrap();
    // Small integers are exact in bf16.
    let b_values: Vec<f32> = (0..512 * 1024).map(|i| (i % 256) as f32).collect();
    let b = Tensor::from_vec(b_values, (512, 1024), &dev).unwrap();
    let stored = HashMap::from([
        ("a".to_string(), a.clone()),
        ("b".to_string(), b.to_dtype(DType::BF16).unwrap()),
    ]);
    candle_core::safetensors::save(&stored, tmp.path().join("model.safetensors")).unwrap();

    let weights = Weights::open(&model_files(tmp.path()))
        .unwrap()
        .with_alias("tied_a", "a")
        .with_alias("tied_b", "b");
    let vb = weights.var_builder(DType::F32, &dev);
    for (name, want) in [
        ("a", &a),
        ("tied_a", &a),
        ("a", &a),
        ("b", &b),
        ("tied_b", &b),
        ("b", &b),
    ] {
        let got = vb.get(want.dims(), name).unwrap();
        assert_eq!(got.dtype(), DType::F32, "{name}");
        assert_eq!(max_diff(&got, want), 0.0, "{name} read back differently");
    }
    weights.finish().unwrap();
}

#[cfg(target_os = "linux")]
mod peak_rss {
    use super::*;

    /// Set in the child process to the directory holding the checkpoint to load.
    const CHILD_ENV: &str = "GLIMPSE_LOAD_MEMORY_CHILD";
    /// Marks the child's report line in its stdout.
    const MARK: &str = "GLIMPSE_LOAD_MEMORY";
    /// 8 tensors of 32 MiB of f32: 256 MiB.
    const TENSORS: usize = 8;
    const SHAPE: (usize, usize) = (2048, 4096);

    /// A field of /proc/self/status, in bytes.
    fn status_bytes(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// In the child: load every tensor, hold them all, report baseline and peak RSS.
    fn child(dir: &Path) {
        // Reset VmHWM to the current RSS (Linux >= 4.0), so the peak is the load's own.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let baseline = status_bytes("VmRSS:");
        let weights = Weights::open(&model_files(dir)).unwrap();
        let vb = weights.var_builder(DType::F32, &Device::Cpu);
        let held: Vec<Tensor> = weights
            .names()
            .iter()
            .map(|name| vb.get(SHAPE, name).unwrap())
            .collect();
        weights.finish().unwrap();
        let peak = status_bytes("VmHWM:");
        assert_eq!(held.len(), TENSORS);
        println!("{MARK} baseline={baseline} peak={peak}");
    }

    #[test]
    fn load_peak_rss_stays_near_file_size() {
        if let Some(dir) = std::env::var_os(CHILD_ENV) {
            child(Path::new(&dir));
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("model.safetensors");
        {
            let stored: HashMap<String, Tensor> = (0..TENSORS)
                .map(|i| {
                    let t = Tensor::full(i as f32 + 0.5, SHAPE, &Device::Cpu).unwrap();
                    (format!("layers.{i}.weight"), t)
                })
                .collect();
            candle_core::safetensors::save(&stored, &path).unwrap();
        }
        let file_size = std::fs::metadata(&path).unwrap().len();

        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "peak_rss::load_peak_rss_stays_near_file_size",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, tmp.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = stdout
            .lines()
            // The harness may print "test <name> ... " on the same line first.
            .find_map(|l| l.split_once(MARK).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no report from the child:\n{stdout}"));
        let field = |key: &str| -> u64 {
            report
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in {report:?}"))
        };
        let (baseline, peak) = (field("baseline"), field("peak"));
        let ratio = peak.saturating_sub(baseline) as f64 / file_size as f64;
        eprintln!(
            "file {} MiB, baseline {} MiB, peak {} MiB: peak - baseline = {ratio:.2}x the file",
            file_size >> 20,
            baseline >> 20,
            peak >> 20
        );
        assert!(
            ratio < 1.4,
            "loading a {} MiB checkpoint raised peak RSS by {ratio:.2}x its size \
             (mapped pages not released?)",
            file_size >> 20
        );
    }
}
