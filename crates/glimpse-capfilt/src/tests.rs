//! The job end to end with fake models on small hand-made shards.

use std::cell::Cell;
use std::fs;
use std::path::{Path, PathBuf};

use glimpse_data::dataset::{read_source, Source};
use glimpse_data::tar::TarWriter;
use image::{Rgb, RgbImage};
use serde_json::{json, Value};

use crate::error::{Error, Result, Role};
use crate::*;

/// Captions an image by its colour: "a red picture" for a red one.
struct FakeCaptioner {
    calls: Cell<usize>,
    fail: bool,
}

fn colour_name(image: &RgbImage) -> &'static str {
    match image.get_pixel(0, 0).0 {
        [255, 0, 0] => "red",
        [0, 0, 255] => "blue",
        _ => "grey",
    }
}

impl Captioner for FakeCaptioner {
    fn id(&self) -> &str {
        "fake-captioner"
    }
    fn caption(
        &self,
        images: &[RgbImage],
        opts: &CapfiltOptions,
        seed: u64,
    ) -> Result<Vec<Vec<String>>> {
        self.calls.set(self.calls.get() + 1);
        if self.fail {
            return Err(Error::Model {
                role: Role::Captioner,
                model: "fake-captioner".into(),
                msg: "out of memory".into(),
            });
        }
        assert!(images.len() <= opts.batch_size);
        Ok(images
            .iter()
            .map(|im| {
                (0..opts.captions_per_image)
                    .map(|i| match i {
                        0 => format!("a {} picture", colour_name(im)),
                        _ => format!("noise {}", seed % 7),
                    })
                    .collect()
            })
            .collect())
    }
}

/// Matches a text when it names the image's colour.
struct FakeFilter;

impl Filter for FakeFilter {
    fn id(&self) -> &str {
        "fake-filter"
    }
    fn itm(&self, image: &RgbImage, texts: &[&str]) -> Result<Vec<f32>> {
        let c = colour_name(image);
        Ok(texts
            .iter()
            .map(|t| if t.contains(c) { 0.9 } else { 0.1 })
            .collect())
    }
    fn check_image(&self, image: &RgbImage) -> std::result::Result<(), String> {
        match image.width() > 8 {
            true => Err(format!("{} px is too wide", image.width())),
            false => Ok(()),
        }
    }
}

fn png(colour: [u8; 3]) -> Vec<u8> {
    let img = RgbImage::from_pixel(8, 8, Rgb(colour));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Entries of a shard: (name, bytes).
fn write_tar(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut w = TarWriter::new(Vec::new());
    for (name, bytes) in entries {
        w.append(name, bytes).unwrap();
    }
    fs::write(path, w.finish().unwrap()).unwrap();
}

fn sample(key: &str, colour: [u8; 3], caption: &str) -> Vec<(String, Vec<u8>)> {
    vec![
        (format!("{key}.png"), png(colour)),
        (
            format!("{key}.json"),
            serde_json::to_vec(&json!({"key": key, "caption": caption})).unwrap(),
        ),
    ]
}

/// Two shards: the first with 3 good samples (one with a wrong web caption), the
/// second with a good sample, a corrupt image, a malformed record and a caption that
/// is not a string.
fn dataset(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    fs::create_dir_all(&data).unwrap();
    let mut a = sample("000000", [255, 0, 0], "a red square");
    a.extend(sample("000001", [0, 0, 255], "a red circle"));
    a.extend(sample("000002", [0, 0, 255], "two blue stars"));
    write_tar(&data.join("a.tar"), &a);
    let mut b = sample("000003", [255, 0, 0], "a red star");
    b.push(("000004.png".into(), b"not a png".to_vec()));
    b.push(("000004.json".into(), br#"{"caption": "x"}"#.to_vec()));
    b.push(("000005.png".into(), png([0, 0, 255])));
    b.push(("000005.json".into(), b"{not json".to_vec()));
    b.push(("000006.png".into(), png([0, 0, 255])));
    b.push(("000006.json".into(), br#"{"caption": 7}"#.to_vec()));
    let mut wide = std::io::Cursor::new(Vec::new());
    RgbImage::from_pixel(9, 8, Rgb([255, 0, 0]))
        .write_to(&mut wide, image::ImageFormat::Png)
        .unwrap();
    b.push(("000007.png".into(), wide.into_inner()));
    b.push((
        "000007.json".into(),
        br#"{"caption": "a red one"}"#.to_vec(),
    ));
    write_tar(&data.join("b.tar"), &b);
    data
}

struct Run {
    out: OutputDir,
    inputs: Vec<InputShard>,
}

fn start(data: &Path, out: &Path, opts: &CapfiltOptions) -> Result<Run> {
    let inputs = resolve_inputs(data.to_str().unwrap())?;
    let cap = FakeCaptioner {
        calls: Cell::new(0),
        fail: false,
    };
    let settings = settings(&cap, &FakeFilter, opts, &inputs);
    Ok(Run {
        out: OutputDir::create_or_open(out, settings)?,
        inputs,
    })
}

fn run_all(run: &Run, cap: &FakeCaptioner, opts: &CapfiltOptions) -> Vec<ShardOutcome> {
    run.inputs
        .iter()
        .map(|s| run_shard(&run.out, s, cap, &FakeFilter, opts, &mut |_| {}).unwrap())
        .collect()
}

fn good_captioner() -> FakeCaptioner {
    FakeCaptioner {
        calls: Cell::new(0),
        fail: false,
    }
}

/// (key, record) of every sample of an output shard, checking that each image is
/// the input's.
fn read_output(path: &Path) -> Vec<(String, Value, Vec<u8>)> {
    read_source(&Source::Shard(path.to_path_buf()))
        .unwrap()
        .map(|s| {
            let s = s.unwrap();
            (s.key, s.meta, s.image_bytes)
        })
        .collect()
}

#[test]
fn shards_keep_keys_and_images_and_gain_capfilt_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let opts = CapfiltOptions {
        batch_size: 2,
        captions_per_image: 2,
        ..Default::default()
    };
    let run = start(&data, &dir.path().join("out"), &opts).unwrap();
    let cap = good_captioner();
    let outcomes = run_all(&run, &cap, &opts);
    assert_eq!(cap.calls.get(), 3, "2 + 1 samples in batches of 2, then 1");

    let first = read_output(&run.out.shard_path(0));
    let keys: Vec<&str> = first.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(keys, ["000000", "000001", "000002"]);
    assert_eq!(
        first[0].2,
        png([255, 0, 0]),
        "the image bytes are the input's"
    );
    let c = &first[1].1["capfilt"];
    assert_eq!(
        first[1].1["caption"], "a red circle",
        "the record keeps its fields"
    );
    assert_eq!(c["web"]["text"], "a red circle");
    assert_eq!(c["web"]["kept"], false);
    assert_eq!(c["web"]["itm"], json!(0.1));
    assert_eq!(c["synthetic"][0]["text"], "a blue picture");
    assert_eq!(c["synthetic"][0]["kept"], true);
    assert_eq!(c["synthetic"][1]["kept"], false);
    assert_eq!(c["texts"], json!(["a blue picture"]));
    assert_eq!(
        first[2].1["capfilt"]["texts"],
        json!(["two blue stars", "a blue picture"])
    );

    let r0 = &outcomes[0].report;
    assert_eq!(r0.samples, 3);
    assert_eq!((r0.web.kept, r0.web.removed), (2, 1));
    assert_eq!((r0.synthetic.kept, r0.synthetic.removed), (3, 3));
    let r1 = &outcomes[1].report;
    assert_eq!(r1.samples, 1);
    let skipped: Vec<(&str, &str)> = r1
        .skipped
        .iter()
        .map(|s| (s.key.as_deref().unwrap(), s.reason.as_str()))
        .collect();
    assert_eq!(skipped.len(), 4, "{skipped:?}");
    assert_eq!(skipped[0].0, "000004");
    assert!(skipped[0].1.starts_with("corrupt image"), "{skipped:?}");
    assert_eq!(skipped[1].0, "000005");
    assert!(skipped[1].1.contains("malformed .json"), "{skipped:?}");
    assert_eq!(skipped[2].0, "000006");
    assert!(
        skipped[2].1.contains("`caption` is not a string"),
        "{skipped:?}"
    );

    let m = run.out.write_manifest(run.inputs.len()).unwrap();
    assert!(m.complete && m.pending.is_empty());
    assert_eq!(m.samples, 4);
    assert_eq!((m.web.kept, m.web.removed), (3, 1));
    assert_eq!((m.synthetic.kept, m.synthetic.removed), (4, 4));
    assert_eq!(m.skipped.len(), 4);
    let on_disk: Manifest =
        serde_json::from_str(&fs::read_to_string(run.out.manifest_path()).unwrap()).unwrap();
    assert_eq!(on_disk, m);
}

#[test]
fn a_killed_shard_resumes_with_nothing_lost_or_written_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let opts = CapfiltOptions::default();
    // The reference: one uninterrupted run.
    let whole = start(&data, &dir.path().join("whole"), &opts).unwrap();
    run_all(&whole, &good_captioner(), &opts);

    // Shard 0 completes; shard 1's attempt dies half-way, leaving its temporary file.
    let out = dir.path().join("out");
    let run = start(&data, &out, &opts).unwrap();
    run_shard(
        &run.out,
        &run.inputs[0],
        &good_captioner(),
        &FakeFilter,
        &opts,
        &mut |_| {},
    )
    .unwrap();
    let stale = out.join(".shard-000001.tar.tmp999999");
    fs::write(&stale, b"half a shard").unwrap();
    assert!(run.out.manifest(2).unwrap().pending == [1]);

    let cap = good_captioner();
    let resumed = run_all(&start(&data, &out, &opts).unwrap(), &cap, &opts);
    assert!(
        resumed[0].already_done,
        "a shard with a marker is not redone"
    );
    assert!(!resumed[1].already_done);
    assert_eq!(resumed[1].removed_temporaries, 1);
    assert_eq!(cap.calls.get(), 1, "only shard 1 was captioned again");
    assert!(!stale.exists());
    for shard in 0..2 {
        assert_eq!(
            fs::read(run.out.shard_path(shard)).unwrap(),
            fs::read(whole.out.shard_path(shard)).unwrap(),
            "shard {shard} equals the uninterrupted run's"
        );
    }
    let leftovers: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_failing_model_leaves_no_shard_and_no_marker() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let opts = CapfiltOptions::default();
    let run = start(&data, &dir.path().join("out"), &opts).unwrap();
    let broken = FakeCaptioner {
        calls: Cell::new(0),
        fail: true,
    };
    let err = run_shard(
        &run.out,
        &run.inputs[0],
        &broken,
        &FakeFilter,
        &opts,
        &mut |_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("captioner `fake-captioner`: out of memory"),
        "{err}"
    );
    assert!(run.out.marker(0).unwrap().is_none());
    assert!(!run.out.shard_path(0).exists());
    assert!(run.out.stale_temporaries(0).unwrap().is_empty());
}

#[test]
fn other_settings_are_refused_naming_the_difference() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("out");
    start(&data, &out, &CapfiltOptions::default()).unwrap();
    let other = CapfiltOptions {
        threshold: 0.7,
        ..Default::default()
    };
    let err = start(&data, &out, &other).err().unwrap().to_string();
    assert!(err.contains("threshold 0.5, now 0.7"), "{err}");
}

#[test]
fn jsonl_inputs_become_tar_shards() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("j");
    fs::create_dir_all(&data).unwrap();
    fs::write(data.join("x.png"), png([255, 0, 0])).unwrap();
    fs::write(
        data.join("annotations.jsonl"),
        "{\"image\": \"x.png\", \"caption\": \"a blue thing\"}\n\
         {\"image\": \"missing.png\", \"caption\": \"a red thing\"}\n",
    )
    .unwrap();
    let opts = CapfiltOptions::default();
    let run = start(&data, &dir.path().join("out"), &opts).unwrap();
    let outcomes = run_all(&run, &good_captioner(), &opts);
    let r = &outcomes[0].report;
    assert_eq!(r.samples, 1);
    assert_eq!(r.skipped.len(), 1);
    assert_eq!(r.skipped[0].key.as_deref(), Some("missing.png"));
    let out = read_output(&run.out.shard_path(0));
    assert_eq!(out[0].0, "x_png", "the key's dot would split the sample");
    assert_eq!(out[0].1["capfilt"]["web"]["kept"], false);
    assert_eq!(out[0].1["capfilt"]["texts"], json!(["a red picture"]));
}

/// A sample as `glimpse data synth --noise` writes it: the web caption, whether it is
/// corrupted, how, and the clean caption it came from.
fn noisy_sample(
    key: &str,
    colour: [u8; 3],
    caption: &str,
    corruption: Option<&str>,
) -> Vec<(String, Vec<u8>)> {
    vec![
        (format!("{key}.png"), png(colour)),
        (
            format!("{key}.json"),
            serde_json::to_vec(&json!({
                "key": key,
                "caption": caption,
                "corrupted": corruption.is_some(),
                "corruption": corruption,
                "clean_caption": "a clean caption",
            }))
            .unwrap(),
        ),
    ]
}

#[test]
fn quality_counts_removed_and_kept_per_corruption_kind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("noisy");
    fs::create_dir_all(&data).unwrap();
    let red = [255, 0, 0];
    let blue = [0, 0, 255];
    let mut entries = Vec::new();
    // The fake filter keeps a text that names the image's colour.
    entries.extend(noisy_sample("000000", red, "a red square", None)); // clean, kept
    entries.extend(noisy_sample("000001", blue, "a red circle", None)); // clean, removed
    entries.extend(noisy_sample(
        "000002",
        blue,
        "a red star",
        Some("wrong colour"),
    )); // removed
    entries.extend(noisy_sample("000003", red, "a red", Some("truncated"))); // kept: a miss
    entries.extend(noisy_sample(
        "000004",
        red,
        "a green cat",
        Some("wrong colour"),
    )); // removed
        // A sample without noise marks is counted apart and left out.
    entries.extend(sample("000005", red, "a red thing"));
    write_tar(&data.join("a.tar"), &entries);
    let out = dir.path().join("out");
    let opts = CapfiltOptions::default();
    let run = start(&data, &out, &opts).unwrap();
    run_all(&run, &good_captioner(), &opts);

    let q = quality::measure(&out, None, true).unwrap();
    assert_eq!((q.samples, q.unlabelled), (6, 1));
    assert_eq!(q.threshold, f64::from(opts.threshold));
    let kinds: Vec<(&str, u64, u64)> = q
        .kinds
        .iter()
        .map(|k| (k.kind.as_str(), k.n, k.removed))
        .collect();
    assert_eq!(kinds, [("truncated", 1, 0), ("wrong colour", 2, 2)]);
    assert_eq!((q.corrupted.n, q.corrupted.removed), (3, 2));
    assert_eq!((q.clean.n, q.clean.kept), (2, 1));
    // One synthetic caption per image, each naming the image's colour: all kept.
    assert_eq!((q.synthetic.n, q.synthetic.kept), (5, 5));
    // The sweep: at 0.05 everything is kept, at 0.95 nothing.
    let first = q.sweep.first().unwrap();
    let last = q.sweep.last().unwrap();
    assert_eq!((first.corrupted_removed, first.clean_kept), (0.0, 1.0));
    assert_eq!((last.corrupted_removed, last.clean_kept), (1.0, 0.0));

    // Evidence: the kinds in order, then clean, then synthetic, each example with its
    // image and, for a corrupted caption, the clean one it came from.
    let names: Vec<&str> = q.evidence.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["truncated", "wrong colour", "clean", "synthetic"]);
    let truncated = &q.evidence[0];
    assert_eq!(truncated.kept.len(), 1);
    assert_eq!(truncated.kept[0].text, "a red");
    assert_eq!(
        truncated.kept[0].clean_caption.as_deref(),
        Some("a clean caption")
    );
    assert!(truncated.kept[0].thumbnail.is_some());
    assert_eq!(q.evidence[1].removed.len(), 2);
    assert!(q.evidence[2].kept[0].clean_caption.is_none());

    // Another threshold, from the stored probabilities: at 0.05 the filter removes
    // nothing.
    let loose = quality::measure(&out, Some(0.05), false).unwrap();
    assert_eq!(loose.corrupted.removed, 0);
    assert!(loose.evidence.is_empty());
}

#[test]
fn quality_refuses_data_without_noise_marks_and_other_directories() {
    let dir = tempfile::tempdir().unwrap();
    let data = dataset(dir.path());
    let out = dir.path().join("out");
    let opts = CapfiltOptions::default();
    let run = start(&data, &out, &opts).unwrap();
    let err = quality::measure(&out, None, false).unwrap_err().to_string();
    assert!(err.contains("no completed shard"), "{err}");
    run_all(&run, &good_captioner(), &opts);
    let err = quality::measure(&out, None, false).unwrap_err().to_string();
    assert!(
        err.contains("none of its 4 samples carries noise marks"),
        "{err}"
    );
    let err = quality::measure(&out, Some(1.5), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--threshold"), "{err}");
    let err = quality::measure(&data, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not a `glimpse capfilt` output directory"),
        "{err}"
    );
}
