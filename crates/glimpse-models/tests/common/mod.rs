//! Reading the reference fixtures written by `tools/fixtures/make_fixtures*.py`, and
//! comparing tensors, shared by the model parity tests. `GLIMPSE_TEST_DEVICE=cuda` runs
//! them on a GPU (see `device.rs`, shared with glimpse-nn's tests, and docs/cuda.md).
#![allow(dead_code)]

#[path = "../../../glimpse-nn/tests/common/device.rs"]
mod device;

pub use device::{test_device, tol};

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use glimpse_data::TextTokenizer;
use glimpse_models::checkpoint::ModelFiles;
use serde_json::Value;

/// Largest absolute difference accepted against the reference on the CPU; `tol(TOL)`
/// is the bound on the test device.
pub const TOL: f32 = 1e-4;

/// One fixture directory: the model files and the reference's recorded outputs.
pub struct Fixture {
    pub dir: PathBuf,
    pub files: ModelFiles,
    pub tensors: HashMap<String, Tensor>,
    pub json: Value,
    /// Where `get` puts the tensors, and where the tests load their models.
    pub device: Device,
}

impl Fixture {
    /// `GLIMPSE_FIXTURES` points the tests at another fixture set (e.g. the `alt`
    /// variant, whose shapes differ) without editing them. `get` puts the tensors on the
    /// test device (`GLIMPSE_TEST_DEVICE`, the CPU by default).
    pub fn open(name: &str) -> Self {
        Self::open_on(name, &test_device())
    }

    /// As `open`, for the tests that stay on `device` whatever the test device is.
    pub fn open_on(name: &str, device: &Device) -> Self {
        let root = std::env::var_os("GLIMPSE_FIXTURES").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures"),
            PathBuf::from,
        );
        let dir = root.join(name);
        let files = ModelFiles::resolve(dir.to_str().unwrap()).unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        let json =
            serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap();
        Self {
            dir,
            files,
            tensors,
            json,
            device: device.clone(),
        }
    }

    /// A stored tensor on the fixture's device; ids come back as u32, floats as f32.
    pub fn get(&self, key: &str) -> Tensor {
        let t = self
            .tensors
            .get(key)
            .unwrap_or_else(|| panic!("no `{key}`"));
        let t = match t.dtype() {
            DType::I64 | DType::U32 | DType::U8 => t.to_dtype(DType::U32).unwrap(),
            _ => t.to_dtype(DType::F32).unwrap(),
        };
        t.to_device(&self.device).unwrap()
    }

    pub fn photos(&self) -> Vec<String> {
        serde_json::from_value(self.json["photos"].clone()).unwrap()
    }

    pub fn pixels(&self, photo: &str) -> Tensor {
        self.get(&format!("pixel_values.{photo}"))
    }

    /// `[n, 3, H, W]` pixel values of the photos, in order.
    pub fn photo_batch(&self) -> Tensor {
        let px: Vec<Tensor> = self.photos().iter().map(|p| self.pixels(p)).collect();
        Tensor::cat(&px, 0).unwrap()
    }

    pub fn tokenizer(&self) -> TextTokenizer {
        TextTokenizer::from_file(self.files.tokenizer.as_ref().unwrap()).unwrap()
    }
}

/// Largest absolute difference of two tensors of the same shape, wherever they live.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let on_cpu = |t: &Tensor| {
        t.to_dtype(DType::F32)
            .unwrap()
            .to_device(&Device::Cpu)
            .unwrap()
    };
    (on_cpu(a) - on_cpu(b))
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn assert_close(what: &str, got: &Tensor, want: &Tensor) {
    let (d, tol) = (max_diff(got, want), tol(TOL));
    assert!(d <= tol, "{what}: max abs difference {d:.3e} > {tol:e}");
}
