//! Helpers shared by the CLI tests: run the binary, read fixtures, compare.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tools/fixtures").join(name)
}

pub fn photo(stem: &str) -> String {
    format!("examples/images/{stem}.png")
}

pub fn glimpse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .current_dir(root())
        .output()
        .expect("the glimpse binary runs")
}

/// Runs a command that must succeed and returns its JSON output.
pub fn json(args: &[&str]) -> Value {
    let out = glimpse(args);
    assert!(
        out.status.success(),
        "glimpse {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "glimpse {args:?}: stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs a command that must fail; returns stderr.
pub fn fails(args: &[&str]) -> String {
    let out = glimpse(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !out.status.success(),
        "glimpse {args:?} should fail, printed {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !stderr.contains("panicked"),
        "glimpse {args:?} panicked: {stderr}"
    );
    stderr
}

pub fn reference(name: &str) -> (Value, HashMap<String, Tensor>) {
    let dir = fixture(name);
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    (meta, tensors)
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_str().expect("string").to_string())
        .collect()
}

pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        d <= tol,
        "{what}: max abs diff {d:e} at {i} (got {}, want {})",
        got[i],
        want[i]
    );
}

pub fn row(t: &Tensor, i: usize) -> Vec<f32> {
    t.get(i).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// `glimpse match --json` for every photo of a retrieval fixture against all its texts:
/// `itc` and `itm` equal the reference's rows within 1e-4.
pub fn check_match_against_reference(name: &str) {
    let (meta, t) = reference(name);
    let texts = strings(&meta["texts"]);
    let model = fixture(name);
    for (i, stem) in strings(&meta["photos"]).iter().enumerate() {
        let image = photo(stem);
        let mut args = vec![
            "match",
            "--model",
            model.to_str().unwrap(),
            "--image",
            &image,
            "--json",
        ];
        for text in &texts {
            args.extend(["--text", text]);
        }
        let out = json(&args);
        let itc = floats(&out["itc"]);
        assert_close(
            &format!("{name} itc {stem}"),
            &itc,
            &row(&t["itc"], i),
            1e-4,
        );
        let itm = floats(&out["itm"]);
        assert_close(
            &format!("{name} itm {stem}"),
            &itm,
            &row(&t["itm_probs"], i),
            1e-4,
        );
    }
}
