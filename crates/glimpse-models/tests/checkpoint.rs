//! Strict loading and model resolution, on copies of the tiny CLIP fixture that each test
//! damages in one way. Every error must name what is wrong (tensor, file, field, model).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use glimpse_models::checkpoint::{ModelFiles, Weights};
use glimpse_models::clip::{ClipConfig, ClipModel};

fn fixture() -> PathBuf {
    match std::env::var_os("GLIMPSE_FIXTURES") {
        Some(dir) => PathBuf::from(dir).join("clip"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/clip"),
    }
}

/// A temp copy of the fixture's model files (config, weights, tokenizer).
fn copy_fixture(into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "preprocessor_config.json",
    ] {
        std::fs::copy(fixture().join(name), into.join(name))
            .unwrap_or_else(|e| panic!("{name} (run tools/fixtures/make_fixtures.py): {e}"));
    }
}

fn tensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn save(ts: &HashMap<String, Tensor>, path: &Path) {
    candle_core::safetensors::save(ts, path).unwrap();
}

fn resolve(dir: &Path) -> ModelFiles {
    ModelFiles::resolve(dir.to_str().unwrap()).unwrap()
}

fn load_err(dir: &Path) -> String {
    let files = ModelFiles::resolve(dir.to_str().unwrap()).map_err(|e| e.to_string());
    match files.and_then(|f| ClipModel::load(&f, &Device::Cpu).map_err(|e| e.to_string())) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => {
            eprintln!("{e}");
            e
        }
    }
}

/// Image features of a fixed input, to compare loads.
fn features(model: &ClipModel) -> Tensor {
    let px = Tensor::arange(0f32, 3. * 32. * 32., &Device::Cpu).unwrap();
    let px = (px * 0.01)
        .unwrap()
        .sin()
        .unwrap()
        .reshape((1, 3, 32, 32))
        .unwrap();
    model.get_image_features(&px).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn intact_copy_loads_and_uses_every_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let files = resolve(tmp.path());
    assert_eq!(files.weights, vec![tmp.path().join("model.safetensors")]);
    assert!(files.tokenizer.is_some() && files.preprocessor.is_some());
    let weights = Weights::open(&files).unwrap();
    assert!(weights.contains("logit_scale"));
    assert_eq!(weights.dtype_of("logit_scale"), Some(DType::F32));
    let cfg: ClipConfig = files.read_config().unwrap();
    ClipModel::new(&cfg, weights.var_builder(DType::F32, &Device::Cpu)).unwrap();
    weights.finish().unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let mut ts = tensors(tmp.path());
    ts.remove("vision_model.post_layernorm.bias").unwrap();
    save(&ts, &tmp.path().join("model.safetensors"));
    let err = load_err(tmp.path());
    assert!(
        err.contains("missing tensor `vision_model.post_layernorm.bias`"),
        "{err}"
    );
    assert!(err.contains(&tmp.path().display().to_string()), "{err}");
}

#[test]
fn unexpected_tensors_are_listed() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let mut ts = tensors(tmp.path());
    let extra = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    ts.insert("text_model.extra_head.weight".into(), extra.clone());
    ts.insert("vision_model.encoder.layers.7.mlp.fc1.bias".into(), extra);
    save(&ts, &tmp.path().join("model.safetensors"));
    let err = load_err(tmp.path());
    assert!(err.contains("2 tensor(s)"), "{err}");
    assert!(err.contains("text_model.extra_head.weight"), "{err}");
    assert!(
        err.contains("vision_model.encoder.layers.7.mlp.fc1.bias"),
        "{err}"
    );
}

#[test]
fn config_that_does_not_match_the_weights_names_tensor_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["projection_dim"] = 20.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = load_err(tmp.path());
    assert!(
        err.contains("`visual_projection.weight` has shape [24, 48]"),
        "{err}"
    );
    assert!(err.contains("[20, 48]"), "{err}");
}

#[test]
fn config_field_errors_name_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let path = tmp.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    cfg["vision_config"]["hidden_size"] = "wide".into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("config.json"), "{err}");
    assert!(err.contains("vision_config.hidden_size"), "{err}");
    cfg["vision_config"]["hidden_act"] = "gelu_42".into();
    cfg["vision_config"]["hidden_size"] = 48.into();
    std::fs::write(&path, cfg.to_string()).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains("vision_config.hidden_act"), "{err}");
}

#[test]
fn truncated_weights_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains(&path.display().to_string()), "{err}");
    // Garbage instead of a header.
    std::fs::write(&path, b"not a safetensors file at all").unwrap();
    let err = load_err(tmp.path());
    assert!(err.contains(&path.display().to_string()), "{err}");
}

/// Splits the weights into two shards with an index, as `save_pretrained` does.
fn shard(dir: &Path) {
    let ts = tensors(dir);
    let mut names: Vec<&String> = ts.keys().collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (part, file) in [
        (a, "model-00001-of-00002.safetensors"),
        (b, "model-00002-of-00002.safetensors"),
    ] {
        let sub: HashMap<String, Tensor> = part
            .iter()
            .map(|n| ((*n).clone(), ts[*n].clone()))
            .collect();
        save(&sub, &dir.join(file));
        for n in part {
            weight_map.insert((*n).clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
}

#[test]
fn sharded_weights_load_and_a_missing_shard_is_named() {
    let reference = ClipModel::load(&resolve(&fixture()), &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    shard(tmp.path());
    let files = resolve(tmp.path());
    assert_eq!(files.weights.len(), 2);
    let model = ClipModel::load(&files, &Device::Cpu).unwrap();
    assert_eq!(max_diff(&features(&model), &features(&reference)), 0.0);

    std::fs::remove_file(tmp.path().join("model-00002-of-00002.safetensors")).unwrap();
    let err = ModelFiles::resolve(tmp.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn half_precision_files_load_into_f32() {
    let reference = ClipModel::load(&resolve(&fixture()), &Device::Cpu).unwrap();
    let want = features(&reference);
    for (dtype, tol) in [(DType::F16, 5e-3), (DType::BF16, 5e-2)] {
        let tmp = tempfile::tempdir().unwrap();
        copy_fixture(tmp.path());
        let ts: HashMap<String, Tensor> = tensors(tmp.path())
            .into_iter()
            .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
            .collect();
        save(&ts, &tmp.path().join("model.safetensors"));
        let files = resolve(tmp.path());
        assert_eq!(
            Weights::open(&files).unwrap().dtype_of("logit_scale"),
            Some(dtype)
        );
        let model = ClipModel::load(&files, &Device::Cpu).unwrap();
        let d = max_diff(&features(&model), &want);
        assert!(d < tol, "{dtype:?}: max diff {d}");
        // Computing in f16 works too; candle's CPU matmul has no bf16 kernel.
        if dtype == DType::BF16 {
            continue;
        }
        let half = ClipModel::load_with_dtype(&files, dtype, &Device::Cpu).unwrap();
        let got = features(&half);
        assert_eq!(got.dtype(), dtype);
        let d = max_diff(&got.to_dtype(DType::F32).unwrap(), &want);
        eprintln!("{dtype:?} compute: max diff {d}");
        assert!(d < 20.0 * tol, "{dtype:?} compute: max diff {d}");
    }
}

#[test]
fn tied_weight_reads_its_alias() {
    let tmp = tempfile::tempdir().unwrap();
    copy_fixture(tmp.path());
    let mut ts = tensors(tmp.path());
    let w = ts.remove("text_projection.weight").unwrap();
    ts.insert("shared.text_projection".into(), w);
    save(&ts, &tmp.path().join("model.safetensors"));
    let files = resolve(tmp.path());
    let cfg: ClipConfig = files.read_config().unwrap();

    let weights = Weights::open(&files).unwrap();
    assert!(!weights.contains("text_projection.weight"));
    let err = ClipModel::new(&cfg, weights.var_builder(DType::F32, &Device::Cpu)).unwrap_err();
    assert!(err.to_string().contains("text_projection.weight"), "{err}");

    let weights = Weights::open(&files)
        .unwrap()
        .with_alias("text_projection.weight", "shared.text_projection");
    assert!(weights.contains("text_projection.weight"));
    ClipModel::new(&cfg, weights.var_builder(DType::F32, &Device::Cpu)).unwrap();
    weights.finish().unwrap();
}

#[test]
fn model_resolution_local_and_hub_cache() {
    // Local paths that are not model directories.
    let tmp = tempfile::tempdir().unwrap();
    let err = ModelFiles::resolve(tmp.path().to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    let err = ModelFiles::resolve("./no/such/dir")
        .unwrap_err()
        .to_string();
    assert!(err.contains("./no/such/dir"), "{err}");

    // A hub cache laid out as huggingface_hub writes it.
    let cache = tmp.path().join("hub");
    let repo = cache.join("models--tiny-org--tiny-clip");
    let snapshot = repo.join("snapshots").join("0123abcd");
    copy_fixture(&snapshot);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    // The only test touching the environment, so no other test races with it.
    std::env::set_var("HF_HUB_CACHE", &cache);
    let files = ModelFiles::resolve("tiny-org/tiny-clip").unwrap();
    assert_eq!(files.dir, snapshot);
    ClipModel::load(&files, &Device::Cpu).unwrap();

    let err = ModelFiles::resolve("tiny-org/not-cached")
        .unwrap_err()
        .to_string();
    assert!(err.contains("tiny-org/not-cached"), "{err}");
    assert!(err.contains("local directory"), "{err}");
    std::env::remove_var("HF_HUB_CACHE");
}
