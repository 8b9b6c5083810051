//! Regression tests for bad input and failing output (issue 26): each is named after
//! the defect it pins, and builds its bad input in a temporary directory.

mod common;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use candle_core::{Device, Tensor};
use common::*;

fn glimpse_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_glimpse"));
    cmd.args(args).current_dir(root());
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Runs with stdout a pipe whose reading end is closed before the command writes.
fn with_closed_stdout(args: &[&str]) -> Output {
    let mut child = glimpse_cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the glimpse binary runs");
    drop(child.stdout.take());
    child.wait_with_output().expect("the command ends")
}

fn no_panic(out: &Output) {
    let err = text(out);
    assert!(
        !err.contains("panicked") && out.status.code() != Some(101),
        "panicked: {err}"
    );
}

/// A copy of a fixture model directory that a test may change.
fn model_copy(tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    fs::create_dir_all(&dir).unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

#[test]
fn broken_pipe_exits_quietly() {
    let model = fixture("clip");
    let texts: Vec<String> = (1..=300).map(|i| format!("a{i}")).collect();
    let mut args = vec!["embed", "--model", model.to_str().unwrap()];
    for t in &texts {
        args.extend(["--text", t]);
    }
    for json in [true, false] {
        let mut args = args.clone();
        if json {
            args.push("--json");
        }
        let out = with_closed_stdout(&args);
        no_panic(&out);
        assert!(out.status.success(), "json {json}: {}", text(&out));
        assert!(!text(&out).contains("error:"), "{}", text(&out));
    }

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = with_closed_stdout(&["data", "synth", "--out", path_str(&data), "--count", "20"]);
    no_panic(&out);
    assert!(out.status.success(), "{}", text(&out));
}

#[cfg(target_os = "linux")]
#[test]
fn full_stdout_is_an_error_not_a_panic() {
    let model = fixture("clip");
    let image = photo("cat");
    for json in [true, false] {
        let mut args = vec![
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--image",
            &image,
        ];
        if json {
            args.push("--json");
        }
        let out = glimpse_cmd(&args)
            .stdout(File::options().write(true).open("/dev/full").unwrap())
            .output()
            .unwrap();
        no_panic(&out);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out).contains("writing to stdout") && text(&out).contains("No space left"),
            "{}",
            text(&out)
        );
    }
}

#[cfg(target_os = "linux")]
#[test]
fn full_stderr_on_error_exits_without_panic() {
    let out = glimpse_cmd(&["classify", "--image", "no/such.png", "--labels", "a,b"])
        .stderr(File::options().write(true).open("/dev/full").unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn error_causes_are_printed_once() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.png");
    fs::write(&bad, b"this is not an image at all").unwrap();
    let model = fixture("clip");
    let err = fails(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--image",
        path_str(&bad),
        "--labels",
        "a,b",
    ]);
    assert!(err.contains("bad.png"), "{err}");
    assert_eq!(err.matches("Invalid PNG signature").count(), 1, "{err}");
}

#[test]
fn truncated_jpeg_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = fs::read(root().join("examples/images/rocket.jpg")).unwrap();
    let cut = tmp.path().join("rocket-third.jpg");
    fs::write(&cut, &whole[..whole.len() / 3]).unwrap();
    let model = fixture("clip");
    let err = fails(&[
        "classify",
        "--model",
        model.to_str().unwrap(),
        "--image",
        path_str(&cut),
        "--labels",
        "a rocket,a cat",
    ]);
    assert!(
        err.contains("rocket-third.jpg") && err.contains("truncated"),
        "{err}"
    );
}

#[test]
fn huge_shortest_edge_is_refused_not_an_abort() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path(), "clip");
    let p = model.join("preprocessor_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&p).unwrap()).unwrap();
    cfg["size"] = serde_json::json!({"shortest_edge": 100000});
    fs::write(&p, cfg.to_string()).unwrap();
    let image = photo("cat");
    let err = fails(&["embed", "--model", path_str(&model), "--image", &image]);
    assert!(err.contains("size.shortest_edge = 100000"), "{err}");
}

#[test]
fn thin_strip_image_is_refused_before_resizing() {
    let tmp = tempfile::tempdir().unwrap();
    let strip = tmp.path().join("strip.png");
    image::RgbImage::new(1, 20_000).save(&strip).unwrap();
    let model = fixture("clip");
    let started = std::time::Instant::now();
    let err = fails(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--image",
        path_str(&strip),
    ]);
    assert!(
        err.contains("1x20000") && err.contains("shortest_edge"),
        "{err}"
    );
    assert!(
        started.elapsed().as_secs() < 10,
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn blip2_opt_stops_at_max_position_embeddings() {
    let model = fixture("blip2_opt");
    let image = photo("cat");
    let out = glimpse(&[
        "caption",
        "--model",
        model.to_str().unwrap(),
        "--image",
        &image,
        "--max-new-tokens",
        "60",
        "--min-new-tokens",
        "60",
        "--json",
    ]);
    no_panic(&out);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("max_position_embeddings"),
        "{}",
        text(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 64 positions, 8 queries and bos for the prompt: room for 56 new tokens.
    assert_eq!(v["token_ids"][0].as_array().unwrap().len(), 56, "{v}");

    let question = vec!["why"; 70].join(" ");
    let err = fails(&[
        "ask",
        "--model",
        model.to_str().unwrap(),
        "--image",
        &image,
        "--question",
        &question,
    ]);
    assert!(err.contains("max_position_embeddings = 64"), "{err}");
}

#[test]
fn nan_weights_are_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let model = model_copy(tmp.path(), "clip");
    let weights = model.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    let proj = tensors["visual_projection.weight"].clone();
    let nan = Tensor::full(f32::NAN, proj.shape(), &Device::Cpu)
        .unwrap()
        .to_dtype(proj.dtype())
        .unwrap();
    tensors.insert("visual_projection.weight".into(), nan);
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let image = photo("cat");
    for args in [
        vec!["classify", "--labels", "a cat,a dog", "--image", &image],
        vec!["embed", "--image", &image],
        vec!["match", "--text", "a cat", "--image", &image],
    ] {
        let mut args = args;
        args.extend(["--model", path_str(&model), "--json"]);
        let err = fails(&args);
        assert!(err.contains("produced NaN"), "{args:?}: {err}");
    }
}

#[test]
fn failed_mkdir_says_cannot_create_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    fs::write(&file, b"").unwrap();
    let out = file.join("data");
    let err = fails(&["data", "synth", "--out", path_str(&out), "--count", "10"]);
    assert!(err.contains("cannot create directory"), "{err}");
    assert!(!err.contains("cannot read"), "{err}");
}

const CLIP_CONFIG: &str = r#"{
  "projection_dim": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                  "num_attention_heads": 4, "max_position_embeddings": 40},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                    "num_attention_heads": 4, "image_size": 32, "patch_size": 8}
}"#;

/// A CLIP run of two updates on a small synthetic dataset.
fn tiny_run(tmp: &Path) -> PathBuf {
    let data = tmp.join("data");
    let out = glimpse(&[
        "data",
        "synth",
        "--out",
        path_str(&data),
        "--count",
        "40",
        "--image-size",
        "32",
        "--shard-size",
        "20",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let config = tmp.join("clip.json");
    fs::write(&config, CLIP_CONFIG).unwrap();
    let run = tmp.join("run");
    let recipe = tmp.join("clip.toml");
    fs::write(
        &recipe,
        format!(
            "[model]\nkind = \"clip\"\nconfig = \"{}\"\nseed = 3\n\
             [data]\ntrain = \"{}\"\nshuffle_buffer = 8\nworkers = 1\n\
             [optim]\nbatch_size = 4\nmax_steps = 2\nlr = 1e-3\nwarmup_steps = 1\n\
             [run]\nout = \"{}\"\nlog_every = 1\ncheckpoint_every = 2\n",
            config.display(),
            data.join("train").display(),
            run.display()
        ),
    )
    .unwrap();
    let out = glimpse(&["train", "--recipe", path_str(&recipe), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    run
}

#[cfg(unix)]
#[test]
fn export_replaces_a_stale_sharded_model() {
    use std::os::unix::fs::PermissionsExt;

    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    let target = tmp.path().join("exported");
    fs::create_dir_all(&target).unwrap();
    fs::write(target.join("model.safetensors.index.json"), "{}").unwrap();
    fs::write(target.join("model-00001-of-00002.safetensors"), "old").unwrap();

    let err = fails(&[
        "export",
        "--run",
        path_str(&run),
        "--out",
        path_str(&target),
    ]);
    assert!(err.contains("--force"), "{err}");
    assert!(target.join("model.safetensors.index.json").exists());

    let out = glimpse(&[
        "export",
        "--run",
        path_str(&run),
        "--out",
        path_str(&target),
        "--force",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!target.join("model.safetensors.index.json").exists());
    assert!(!target.join("model-00001-of-00002.safetensors").exists());
    let mode = |f: &str| fs::metadata(target.join(f)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("model.safetensors"), mode("config.json"));
    assert_ne!(mode("model.safetensors"), 0o600);

    // A previous export is replaced without --force, and no staging directory remains.
    let out = glimpse(&[
        "export",
        "--run",
        path_str(&run),
        "--out",
        path_str(&target),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let answer = json(&[
        "classify",
        "--model",
        path_str(&target),
        "--image",
        &photo("cat"),
        "--labels",
        "a,b",
        "--json",
    ]);
    assert_eq!(answer["probs"].as_array().unwrap().len(), 2);
}

/// Runs the binary, killing it after `limit`; `None` when it had to be killed.
fn output_within(args: &[&str], limit: std::time::Duration) -> Option<Output> {
    let mut child = glimpse_cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the glimpse binary runs");
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Some(child.wait_with_output().unwrap())
}

#[test]
fn training_on_undecodable_data_fails_instead_of_hanging() {
    let tmp = tempfile::tempdir().unwrap();
    for (recipe, data) in [
        ("missing_images.toml", "missing_images.jsonl"),
        ("garbage_png_shard.toml", "shard-000000.tar"),
    ] {
        let run = tmp.path().join(recipe.trim_end_matches(".toml"));
        let recipe = format!("tools/fixtures/bad/recipes/{recipe}");
        let out = output_within(
            &["train", "--recipe", &recipe, "--out", path_str(&run)],
            std::time::Duration::from_secs(60),
        )
        .unwrap_or_else(|| panic!("{recipe}: training hung"));
        no_panic(&out);
        assert_eq!(out.status.code(), Some(1), "{recipe}: {}", text(&out));
        assert!(
            text(&out).contains("no update") && text(&out).contains(data),
            "{recipe}: {}",
            text(&out)
        );
    }
}

#[test]
fn two_runs_into_one_run_directory_do_not_both_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path());
    // A longer run of the same recipe, started twice at once into a fresh directory.
    let recipe = tmp.path().join("clip.toml");
    let text_in = fs::read_to_string(&recipe).unwrap();
    let long = tmp.path().join("long.toml");
    fs::write(
        &long,
        text_in
            .replace("max_steps = 2", "max_steps = 30")
            .replace(path_str(&run), path_str(&tmp.path().join("twice"))),
    )
    .unwrap();
    let spawn = || {
        glimpse_cmd(&["train", "--recipe", path_str(&long)])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
    let ok: Vec<bool> = outs.iter().map(|o| o.status.success()).collect();
    assert_eq!(
        ok.iter().filter(|&&s| s).count(),
        1,
        "{}\n---\n{}",
        text(&outs[0]),
        text(&outs[1])
    );
    let refused = &outs[ok.iter().position(|&s| !s).unwrap()];
    let err = text(refused);
    assert!(
        err.contains("another run") || err.contains("--resume"),
        "{err}"
    );
    let log = fs::read_to_string(tmp.path().join("twice/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 30, "{log}");
}
