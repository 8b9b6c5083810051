//! `glimpse capfilt` end to end on synthetic shards with the bundled BLIP captioner
//! and filter: the output shards and records, the manifest's counts, `--shard`,
//! resuming after a kill, and bad input (corrupt image, malformed record, models that
//! cannot play their role).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{fails, json};
use glimpse_data::dataset::{read_source, Source};
use glimpse_data::tar::TarWriter;
use glimpse_synth::{self as synth, SynthConfig};
use serde_json::Value;

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    out: PathBuf,
    run: Value,
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// 32 noisy synthetic samples in 2 shards, and a third shard holding one good
/// sample, a corrupt image and a malformed record; bootstrapped once.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let cfg = SynthConfig {
            seed: 5,
            count: 32,
            shard_size: 16,
            noise: 0.5,
            val_fraction: 0.0,
            test_fraction: 0.0,
            ..SynthConfig::default()
        };
        synth::generate(&cfg, &data, |_, _| {}).unwrap();
        let good = read_source(&Source::Shard(data.join("train/shard-000000.tar")))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let mut tar = TarWriter::new(fs::File::create(data.join("zz-bad.tar")).unwrap());
        tar.append("good.png", &good.image_bytes).unwrap();
        tar.append("good.json", br#"{"caption": "a red circle"}"#)
            .unwrap();
        tar.append("broken.png", b"not a png").unwrap();
        tar.append("broken.json", br#"{"caption": "a red circle"}"#)
            .unwrap();
        tar.append("malformed.png", &good.image_bytes).unwrap();
        tar.append("malformed.json", b"{\"caption\": ").unwrap();
        tar.finish().unwrap();
        let out = dir.path().join("out");
        let run = capfilt(&data, &out, &[]);
        Fixture {
            _dir: dir,
            data,
            out,
            run,
        }
    })
}

fn capfilt(data: &Path, out: &Path, extra: &[&str]) -> Value {
    let mut args = vec![
        "capfilt",
        "--data",
        s(data),
        "--out",
        s(out),
        "--batch-size",
        "8",
        "--json",
    ];
    args.extend_from_slice(extra);
    json(&args)
}

/// (key, record, image bytes) of every sample of a shard.
fn samples(path: &Path) -> Vec<(String, Value, Vec<u8>)> {
    read_source(&Source::Shard(path.to_path_buf()))
        .unwrap()
        .map(|s| {
            let s = s.unwrap();
            (s.key, s.meta, s.image_bytes)
        })
        .collect()
}

fn shard_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tar"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn capfilt_keeps_keys_and_images_and_scores_every_text() {
    let f = fixture();
    let inputs = [
        f.data.join("train/shard-000000.tar"),
        f.data.join("train/shard-000001.tar"),
    ];
    let (mut web, mut synthetic) = ((0, 0), (0, 0));
    for (i, input) in inputs.iter().enumerate() {
        let before = samples(input);
        let after = samples(&f.out.join(format!("shard-{i:06}.tar")));
        assert_eq!(before.len(), after.len());
        for ((k0, m0, img0), (k1, m1, img1)) in before.iter().zip(&after) {
            assert_eq!(k0, k1);
            assert_eq!(img0, img1, "sample {k0}: the image is the input's");
            assert_eq!(m0["clean_caption"], m1["clean_caption"], "fields are kept");
            let c = &m1["capfilt"];
            assert_eq!(c["web"]["text"], m0["caption"]);
            let mut kept = Vec::new();
            let scored = std::iter::once(&c["web"]).chain(c["synthetic"].as_array().unwrap());
            for t in scored {
                let itm = t["itm"].as_f64().unwrap();
                assert!((0.0..=1.0).contains(&itm), "{t}");
                assert_eq!(t["kept"].as_bool().unwrap(), itm >= 0.5, "{t}");
                if t["kept"] == true {
                    kept.push(t["text"].clone());
                }
            }
            assert_eq!(c["texts"], Value::Array(kept));
            assert_eq!(c["synthetic"].as_array().unwrap().len(), 1);
            count_into(&mut web, c["web"]["kept"] == true);
            count_into(&mut synthetic, c["synthetic"][0]["kept"] == true);
        }
    }
    // The manifest's counts are the records' (plus the good sample of the bad shard).
    let m = &f.run["manifest"];
    assert_eq!(m["complete"], true);
    assert_eq!(m["samples"], 33);
    let good = &samples(&f.out.join("shard-000002.tar"))[0].1["capfilt"];
    count_into(&mut web, good["web"]["kept"] == true);
    count_into(&mut synthetic, good["synthetic"][0]["kept"] == true);
    assert_eq!(
        (m["web"]["kept"].as_u64(), m["web"]["removed"].as_u64()),
        (Some(web.0), Some(web.1))
    );
    assert_eq!(
        (
            m["synthetic"]["kept"].as_u64(),
            m["synthetic"]["removed"].as_u64()
        ),
        (Some(synthetic.0), Some(synthetic.1))
    );
    let on_disk: Value =
        serde_json::from_str(&fs::read_to_string(f.out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
}

fn count_into(c: &mut (u64, u64), kept: bool) {
    match kept {
        true => c.0 += 1,
        false => c.1 += 1,
    }
}

#[test]
fn capfilt_skips_corrupt_images_and_malformed_records_by_name() {
    let f = fixture();
    let skipped = f.run["manifest"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert_eq!(skipped[0]["shard"], 2);
    assert_eq!(skipped[0]["key"], "broken");
    assert!(skipped[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("corrupt image"));
    assert_eq!(skipped[1]["key"], "malformed");
    assert!(skipped[1]["reason"]
        .as_str()
        .unwrap()
        .contains("malformed .json"));
    let kept: Vec<String> = samples(&f.out.join("shard-000002.tar"))
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(kept, ["good"]);
}

#[test]
fn capfilt_shard_runs_one_shard_alone_with_the_same_output() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("one");
    let run = capfilt(&f.data, &out, &["--shard", "1"]);
    assert_eq!(run["processed"], serde_json::json!([1]));
    assert_eq!(run["manifest"], Value::Null, "one shard writes no manifest");
    assert!(!out.join("manifest.json").exists());
    let files = shard_files(&out);
    assert_eq!(files.keys().collect::<Vec<_>>(), ["shard-000001.tar"]);
    assert_eq!(
        files["shard-000001.tar"],
        fs::read(f.out.join("shard-000001.tar")).unwrap(),
        "byte for byte the full run's shard"
    );
    assert!(out.join("done/shard-000001.json").is_file());
    let err = fails(&[
        "capfilt",
        "--data",
        s(&f.data),
        "--out",
        s(&out),
        "--shard",
        "3",
    ]);
    assert!(err.contains("--shard 3: the data has 3 shard(s)"), "{err}");
}

#[test]
fn capfilt_resumes_after_a_kill_with_nothing_lost_or_written_twice() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("resumed");
    // A run killed inside shard 0: shards 1 and 2 done, shard 0's temporary file left.
    fs::create_dir_all(out.join("done")).unwrap();
    fs::copy(f.out.join("settings.json"), out.join("settings.json")).unwrap();
    for i in [1, 2] {
        let name = format!("shard-{i:06}");
        fs::copy(
            f.out.join(format!("{name}.tar")),
            out.join(format!("{name}.tar")),
        )
        .unwrap();
        fs::copy(
            f.out.join(format!("done/{name}.json")),
            out.join(format!("done/{name}.json")),
        )
        .unwrap();
    }
    let partial = fs::read(f.out.join("shard-000000.tar")).unwrap();
    fs::write(
        out.join(".shard-000000.tar.tmp4242"),
        &partial[..partial.len() / 2],
    )
    .unwrap();

    let run = capfilt(&f.data, &out, &[]);
    assert_eq!(
        run["processed"],
        serde_json::json!([0]),
        "only the killed shard"
    );
    assert_eq!(shard_files(&out), shard_files(&f.out));
    let names: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp")), "{names:?}");
    let strip = |m: &Value| {
        let mut m = m.clone();
        m.as_object_mut().unwrap().remove("skipped");
        m
    };
    assert_eq!(strip(&run["manifest"]), strip(&f.run["manifest"]));
    let again = capfilt(&f.data, &out, &[]);
    assert_eq!(again["processed"], serde_json::json!([]));
}

#[test]
fn capfilt_refuses_models_that_cannot_play_their_role_before_any_work() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let run = |extra: &[&str]| {
        let mut args = vec!["capfilt", "--data", s(&f.data), "--out", s(&out)];
        args.extend_from_slice(extra);
        fails(&args)
    };
    let missing = dir.path().join("no-such-model");
    let err = run(&["--captioner", s(&missing)]);
    assert!(
        err.contains("--captioner") && err.contains("no such directory"),
        "{err}"
    );
    let err = run(&["--filter", s(&missing)]);
    assert!(
        err.contains("--filter") && err.contains("no such directory"),
        "{err}"
    );
    let err = run(&["--captioner", "models/blip-synth/retrieval"]);
    assert!(
        err.contains("BlipForImageTextRetrieval, which does not caption"),
        "{err}"
    );
    let err = run(&["--filter", "models/clip-synth"]);
    assert!(err.contains("CLIPModel, which has no ITM head"), "{err}");
    let err = run(&["--threshold", "1.5"]);
    assert!(err.contains("--threshold"), "{err}");
    assert!(!out.exists(), "nothing was written");
    // An output directory made with other options is refused, naming the difference.
    let err = fails(&[
        "capfilt",
        "--data",
        s(&f.data),
        "--out",
        s(&f.out),
        "--threshold",
        "0.7",
    ]);
    assert!(err.contains("threshold 0.5, now 0.7"), "{err}");
}

#[test]
fn capfilt_beam_search_returns_the_best_beams_and_repeats_itself() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--shard", "0", "--beams", "3", "--captions-per-image", "2"];
    let a = capfilt(&f.data, &dir.path().join("a"), &args);
    let b = capfilt(&f.data, &dir.path().join("b"), &args);
    assert_eq!(a["reports"][0]["synthetic"], b["reports"][0]["synthetic"]);
    let shard = |d: &str| fs::read(dir.path().join(d).join("shard-000000.tar")).unwrap();
    assert_eq!(shard("a"), shard("b"), "beam search is deterministic");
    for (key, record, _) in samples(&dir.path().join("a/shard-000000.tar")) {
        let synthetic = record["capfilt"]["synthetic"].as_array().unwrap();
        assert_eq!(synthetic.len(), 2, "sample {key}");
        assert_ne!(synthetic[0]["text"], synthetic[1]["text"], "sample {key}");
    }
    let settings: Value =
        serde_json::from_str(&fs::read_to_string(dir.path().join("a/settings.json")).unwrap())
            .unwrap();
    assert_eq!(
        settings["options"]["decoding"],
        serde_json::json!({"beam": {"beams": 3}})
    );
    assert_eq!(settings["options"]["repetition_penalty"], 1.0);
    let err = fails(&[
        "capfilt",
        "--data",
        s(&f.data),
        "--out",
        s(&dir.path().join("c")),
        "--beams",
        "2",
        "--captions-per-image",
        "3",
    ]);
    assert!(err.contains("--captions-per-image"), "{err}");
}

#[test]
fn eval_capfilt_measures_the_filter_against_the_known_noise() {
    let f = fixture();
    let q = json(&["eval", "--task", "capfilt", "--data", s(&f.out), "--json"]);
    // The third shard's good sample has no noise marks: counted apart.
    assert_eq!(q["unlabelled"], 1, "{q}");
    assert_eq!(q["samples"], f.run["manifest"]["samples"], "{q}");
    let kinds = q["kinds"].as_array().unwrap();
    let corrupted: u64 = kinds.iter().map(|k| k["n"].as_u64().unwrap()).sum();
    let removed: u64 = kinds.iter().map(|k| k["removed"].as_u64().unwrap()).sum();
    assert_eq!(q["corrupted"]["n"], corrupted);
    assert_eq!(q["corrupted"]["removed"], removed);
    // Every labelled web caption is either corrupted or clean, and the verdicts at
    // the run's threshold are the run's: removed corrupted + removed clean = the
    // manifest's removed web captions less the unlabelled sample's.
    let clean = &q["clean"];
    let clean_removed = clean["n"].as_u64().unwrap() - clean["kept"].as_u64().unwrap();
    let manifest_removed = f.run["manifest"]["web"]["removed"].as_u64().unwrap();
    assert!(
        removed + clean_removed == manifest_removed
            || removed + clean_removed + 1 == manifest_removed,
        "{q}"
    );
    assert_eq!(q["sweep"].as_array().unwrap().len(), 19);

    let page = f.out.parent().unwrap().join("quality-page");
    let o = common::glimpse(&[
        "eval",
        "--task",
        "capfilt",
        "--data",
        s(&f.out),
        "--report",
        s(&page),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = fs::read_to_string(page.join("index.html")).unwrap();
    assert!(html.contains("Threshold sweep") && html.contains("<img src=\"data:image/"));

    let e = fails(&["eval", "--task", "capfilt", "--data", s(&f.data)]);
    assert!(
        e.contains("not a `glimpse capfilt` output directory"),
        "{e}"
    );
    let e = fails(&[
        "eval",
        "--task",
        "capfilt",
        "--data",
        s(&f.out),
        "--threshold",
        "7",
    ]);
    assert!(e.contains("--threshold"), "{e}");
}
