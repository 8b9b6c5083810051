use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::tar::TarWriter;

/// A 4x4 PNG whose every pixel is `(v, 255 - v, 7)`.
fn png(v: u8) -> Vec<u8> {
    let img = RgbImage::from_pixel(4, 4, image::Rgb([v, 255 - v, 7]));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn meta(key: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "key": key, "caption": format!("sample {key}") }))
        .unwrap()
}

fn write_tar(path: &Path, entries: &[(String, Vec<u8>)]) {
    let mut w = TarWriter::new(Vec::new());
    for (name, data) in entries {
        w.append(name, data).unwrap();
    }
    fs::write(path, w.finish().unwrap()).unwrap();
}

/// Shards `shard-S.tar` with `per` good samples each, keys `S-I` and pixel value
/// `S * per + I`.
fn good_shards(dir: &Path, shards: usize, per: usize) -> Vec<Source> {
    (0..shards)
        .map(|s| {
            let entries: Vec<(String, Vec<u8>)> = (0..per)
                .flat_map(|i| {
                    let key = format!("{s}-{i:03}");
                    let v = (s * per + i) as u8;
                    [
                        (format!("{key}.png"), png(v)),
                        (format!("{key}.json"), meta(&key)),
                    ]
                })
                .collect();
            let path = dir.join(format!("shard-{s}.tar"));
            write_tar(&path, &entries);
            Source::Shard(path)
        })
        .collect()
}

fn cfg(shuffle_buffer: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        shuffle_buffer,
        workers,
        seed: 11,
        shuffle_sources: true,
        prefetch: 8,
    }
}

fn keys(it: EpochIter) -> Vec<String> {
    it.map(|r| r.unwrap().key).collect()
}

fn run(loader: &Loader, epoch: u64, skip: u64) -> (Vec<String>, LoaderStats) {
    let mut it = loader.epoch(epoch, skip);
    let keys: Vec<String> = it.by_ref().map(|r| r.unwrap().key).collect();
    (keys, it.stats())
}

#[test]
fn loaders_and_epochs_can_move_to_other_threads() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<EpochIter>();
    send::<Loader>();
    sync::<Loader>();
}

#[test]
fn wildcards_match_like_a_shell() {
    let m = |p: &str, n: &str| source::wildcard_match(p.as_bytes(), n.as_bytes());
    assert!(m("shard-*.tar", "shard-000001.tar"));
    assert!(!m("shard-*.tar", "shard-000001.tar.tmp"));
    assert!(m("*", ""));
    assert!(m("a?c", "abc") && !m("a?c", "ac"));
    assert!(m("s[0-2]x", "s1x") && !m("s[0-2]x", "s3x"));
    assert!(m("s[!0-2]x", "s3x") && !m("s[^0-2]x", "s1x"));
    assert!(m("*a*b", "xxaxxab"));
    assert!(m("[", "[") && !m("[", "a"));

    // Relative patterns come back as the user wrote them, without a "./" prefix.
    let found = source::glob_files("src/data*/m?d.rs").unwrap();
    assert_eq!(found, [PathBuf::from("src/dataset/mod.rs")]);
}

#[test]
fn bad_specs_name_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::write(d.join("notes.txt"), "x").unwrap();
    let empty = d.join("empty");
    fs::create_dir(&empty).unwrap();
    let cases = [
        (d.join("missing.tar").display().to_string(), "cannot read"),
        (format!("{}/shard-*.tar", d.display()), "matches no file"),
        (format!("{}/*.txt", d.display()), "no .tar shard"),
        (d.join("notes.txt").display().to_string(), "unsupported"),
        (empty.display().to_string(), "no .tar shard"),
        ("  ".to_string(), "empty"),
    ];
    for (spec, needle) in cases {
        let msg = resolve_sources(&spec).unwrap_err().to_string();
        assert!(
            msg.contains(spec.as_str()) && msg.contains(needle),
            "{spec}: {msg}"
        );
    }
}

#[test]
fn jsonl_records_read_their_images_and_skip_bad_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::create_dir(d.join("img")).unwrap();
    for i in 0..3u8 {
        fs::write(d.join(format!("img/{i}.png")), png(10 * i)).unwrap();
    }
    let lines = [
        r#"{"image": "img/0.png", "caption": "zero", "label": 3}"#,
        r#"{"file_name": "img/1.png", "captions": ["one", "uno"]}"#,
        "",
        r#"{"image_path": "img/2.png", "key": "two"}"#,
        r#"{"image": "img/2.png", "caption": "broken"#,
        r#"{"caption": "no image"}"#,
        r#"{"image": "img/missing.png"}"#,
    ];
    fs::write(d.join("annotations.jsonl"), lines.join("\n")).unwrap();
    let sources = resolve_sources(d.to_str().unwrap()).unwrap();
    let jsonl = d.join("annotations.jsonl");
    assert_eq!(sources, vec![Source::Jsonl(jsonl.clone())]);

    let loader = Loader::new(sources, cfg(0, 2));
    assert_eq!(loader.count().unwrap(), 6);
    let mut it = loader.epoch(0, 0);
    let got: Vec<Example> = it.by_ref().map(Result::unwrap).collect();
    let keys: Vec<&str> = got.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["img/0.png", "img/1.png", "two"]);
    assert_eq!(got[0].meta["label"], 3);
    assert_eq!(got[1].meta["captions"][1], "uno");
    assert_eq!(got[2].image.get_pixel(0, 0).0, [20, 235, 7]);

    let stats = it.stats();
    assert_eq!((stats.yielded, stats.skipped_corrupt), (3, 3));
    let src = jsonl.display().to_string();
    assert!(stats.skipped_reasons.iter().all(|r| r.starts_with(&src)));
    assert!(stats.skipped_reasons[0].contains("line 5: malformed JSON"));
    assert!(stats.skipped_reasons[1].contains("line 6: no image path"));
    assert!(stats.skipped_reasons[2].contains("missing.png"));
}

#[test]
fn coco_captions_group_by_image_in_annotation_order() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    fs::create_dir(d.join("images")).unwrap();
    fs::write(d.join("a.png"), png(1)).unwrap();
    fs::write(d.join("images/b.png"), png(2)).unwrap();
    let coco = serde_json::json!({
        "images": [{"id": 7, "file_name": "a.png", "width": 4}, {"id": 9, "file_name": "b.png"}],
        "annotations": [
            {"image_id": 9, "id": 1, "caption": "b first"},
            {"image_id": 7, "id": 2, "caption": "a only"},
            {"image_id": 9, "id": 3, "caption": "b second"},
        ],
    });
    let path = d.join("captions_train.json");
    fs::write(&path, serde_json::to_vec(&coco).unwrap()).unwrap();
    let sources = resolve_sources(path.to_str().unwrap()).unwrap();
    assert_eq!(sources, vec![Source::Coco(path.clone())]);

    let loader = Loader::new(sources, cfg(0, 1));
    let got: Vec<Example> = loader.epoch(0, 0).map(Result::unwrap).collect();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].key.as_str(), got[1].key.as_str()), ("7", "9"));
    assert_eq!(got[0].meta["captions"], serde_json::json!(["a only"]));
    assert_eq!(got[0].meta["width"], 4);
    assert_eq!(
        got[1].meta["captions"],
        serde_json::json!(["b first", "b second"])
    );
    assert_eq!(got[1].meta["caption"], "b first");
    assert_eq!(got[1].image.get_pixel(3, 3).0, [2, 253, 7]);

    fs::write(&path, b"{\"annotations\": []}").unwrap();
    let msg = loader.count().unwrap_err().to_string();
    assert!(msg.contains("captions_train.json") && msg.contains("images"));
}

#[test]
fn order_is_the_same_for_any_worker_count_and_differs_by_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = good_shards(tmp.path(), 3, 10);
    let one = Loader::new(sources.clone(), cfg(8, 1));
    let base = keys(one.epoch(0, 0));
    assert_eq!(base.len(), 30);
    for (workers, prefetch) in [(4, 8), (3, 1), (2, 64)] {
        let c = LoaderConfig {
            prefetch,
            ..cfg(8, workers)
        };
        assert_eq!(keys(Loader::new(sources.clone(), c).epoch(0, 0)), base);
    }
    assert_eq!(keys(one.epoch(0, 0)), base);
    let next = keys(one.epoch(1, 0));
    assert_ne!(next, base);
    let (mut a, mut b) = (base.clone(), next);
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn the_shuffle_buffer_shuffles_and_yields_every_sample_once() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = good_shards(tmp.path(), 2, 25);
    let file_order = keys(Loader::new(sources.clone(), cfg(0, 2)).epoch(3, 0));
    let c = LoaderConfig {
        shuffle_sources: false,
        ..cfg(10, 2)
    };
    let mut it = Loader::new(sources, c).epoch(3, 0);
    let got: Vec<Example> = it.by_ref().map(Result::unwrap).collect();
    let shuffled: Vec<String> = got.iter().map(|e| e.key.clone()).collect();
    assert_ne!(shuffled, file_order);
    let mut sorted = shuffled.clone();
    sorted.sort();
    assert_eq!(sorted, file_order);
    // Each image still belongs to its key.
    for e in &got {
        let (s, i) = e.key.split_once('-').unwrap();
        let v = s.parse::<u8>().unwrap() * 25 + i.parse::<u8>().unwrap();
        assert_eq!(e.image.get_pixel(0, 0).0[0], v);
    }
    assert_eq!(it.position(), 50);
}

/// Two shards, the second with a corrupt PNG, a missing JSON, a malformed JSON, a
/// text-only caption and a truncated tail.
fn mixed_shards(dir: &Path) -> Vec<Source> {
    let mut sources = good_shards(dir, 1, 6);
    let mut bad = vec![
        ("b-000.png".to_string(), png(100)),
        ("b-000.json".to_string(), meta("b-000")),
        (
            "b-001.png".to_string(),
            b"\x89PNG\r\n\x1a\nnot really".to_vec(),
        ),
        ("b-001.json".to_string(), meta("b-001")),
        ("b-002.png".to_string(), png(102)),
        ("b-003.png".to_string(), png(103)),
        ("b-003.json".to_string(), b"{\"caption\": ".to_vec()),
        ("b-004.jpg".to_string(), png(104)),
        ("b-004.txt".to_string(), b"plain text caption\n".to_vec()),
        ("b-005.png".to_string(), png(105)),
        ("b-005.json".to_string(), meta("b-005")),
    ];
    bad.push(("b-006.png".to_string(), png(106)));
    bad.push(("b-006.json".to_string(), meta("b-006")));
    let path = dir.join("shard-b.tar");
    write_tar(&path, &bad);
    // Cut inside the data of b-006.png: the last entry header survives, its data not.
    let bytes = fs::read(&path).unwrap();
    let cut = bytes.len() - 2 * 512 - 512 - 512 - 60;
    fs::write(&path, &bytes[..cut]).unwrap();
    sources.push(Source::Shard(path));
    sources
}

#[test]
fn corrupt_samples_and_truncated_shards_are_skipped_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = mixed_shards(tmp.path());
    let shard_b = sources[1].to_string();
    let loader = Loader::new(sources, cfg(4, 3));
    let total = loader.count().unwrap();
    assert_eq!(total, 6 + 7);
    let mut it = loader.epoch(0, 0);
    let got: Vec<Example> = it.by_ref().map(Result::unwrap).collect();
    let stats = it.stats();
    assert_eq!(stats.yielded, got.len() as u64);
    assert_eq!(stats.yielded + stats.skipped_corrupt, total);
    assert_eq!(it.position(), total);

    let mut keys: Vec<&str> = got.iter().map(|e| e.key.as_str()).collect();
    keys.sort();
    assert!(keys.contains(&"b-000") && keys.contains(&"b-005"));
    let txt = got.iter().find(|e| e.key == "b-004").unwrap();
    assert_eq!(txt.meta["caption"], "plain text caption");
    assert_eq!(stats.skipped_corrupt, 4, "{:#?}", stats.skipped_reasons);

    let reason = |key: &str| {
        stats
            .skipped_reasons
            .iter()
            .find(|r| r.contains(&format!("sample {key}:")))
            .unwrap_or_else(|| panic!("no reason for {key}: {:#?}", stats.skipped_reasons))
            .clone()
    };
    assert!(stats
        .skipped_reasons
        .iter()
        .all(|r| r.starts_with(&shard_b)));
    assert!(reason("b-001").contains("cannot decode image"));
    assert!(reason("b-002").contains("no .json or .txt entry"));
    assert!(reason("b-003").contains("malformed .json entry"));
    let tail = stats
        .skipped_reasons
        .iter()
        .find(|r| r.contains("the shard is truncated"))
        .unwrap_or_else(|| panic!("no truncation reason: {:#?}", stats.skipped_reasons));
    assert!(
        tail.contains("after 6 samples") && tail.contains("b-005"),
        "{tail}"
    );
}

/// Half a shard lost used to read as "skipped 1 sample" per epoch, with a reason about a
/// `<tail>` sample; the message must name the shard and how far it was read.
#[test]
fn truncated_shard_is_reported_by_name_not_as_a_sample_count() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("shard-cut.tar");
    let mut entries = Vec::new();
    for i in 0..8u8 {
        entries.push((format!("s-{i:03}.png"), png(i)));
        entries.push((format!("s-{i:03}.json"), meta(&format!("s-{i:03}"))));
    }
    write_tar(&path, &entries);
    let bytes = fs::read(&path).unwrap();
    // Cut in the middle of the fifth sample's PNG data.
    let fifth = bytes.windows(9).position(|w| w == b"s-004.png").unwrap();
    fs::write(&path, &bytes[..fifth + 512 + 10]).unwrap();

    let loader = Loader::new(vec![Source::Shard(path.clone())], cfg(1, 1));
    let mut it = loader.epoch(0, 0);
    let got = it.by_ref().map(Result::unwrap).count();
    let stats = it.stats();
    assert_eq!(got, 4);
    assert_eq!(stats.skipped_corrupt, 1, "{:#?}", stats.skipped_reasons);
    let msg = &stats.skipped_reasons[0];
    assert!(
        msg.starts_with(&path.display().to_string())
            && msg.contains("the shard is truncated or corrupt after 4 samples")
            && msg.contains("s-003")
            && msg.contains("s-004.png"),
        "{msg}"
    );
}

#[test]
fn resuming_at_a_position_continues_exactly_after_the_last_item() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sources = good_shards(tmp.path(), 2, 7);
    let sub = tmp.path().join("mixed");
    fs::create_dir(&sub).unwrap();
    sources.extend(mixed_shards(&sub));
    let loader = Loader::new(sources, cfg(5, 2));
    let mut it = loader.epoch(4, 0);
    let mut seen = Vec::new();
    while let Some(r) = it.next() {
        seen.push((r.unwrap().key, it.position()));
    }
    let all: Vec<String> = seen.iter().map(|(k, _)| k.clone()).collect();
    for (i, (_, pos)) in seen.iter().enumerate() {
        let (rest, _) = run(&loader, 4, *pos);
        assert_eq!(rest, all[i + 1..], "resume after item {i} (position {pos})");
    }
    // A skip past a corrupt sample still lands on the same suffix.
    for k in 0..=loader.count().unwrap() {
        let (rest, stats) = run(&loader, 4, k);
        let first_unskipped = seen.iter().position(|(_, p)| *p > k).unwrap_or(seen.len());
        assert_eq!(rest, all[first_unskipped..], "skip {k}");
        assert_eq!(
            stats.yielded + stats.skipped_corrupt + k,
            loader.count().unwrap()
        );
    }
}

#[test]
fn dropping_an_epoch_midway_returns_promptly() {
    let tmp = tempfile::tempdir().unwrap();
    let sources = good_shards(tmp.path(), 4, 50);
    let loader = Loader::new(
        sources,
        LoaderConfig {
            prefetch: 4,
            ..cfg(30, 3)
        },
    );
    let start = Instant::now();
    for take in [0, 1, 17] {
        let mut it = loader.epoch(0, 0);
        for _ in 0..take {
            it.next().unwrap().unwrap();
        }
        drop(it);
    }
    // Dropped before the producer has even filled its buffer.
    drop(loader.epoch(1, 150));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn no_sources_is_the_one_fatal_error() {
    let loader = Loader::new(Vec::new(), LoaderConfig::default());
    let mut it = loader.epoch(0, 0);
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none());
    assert!(loader.count().is_err());

    // An unreadable source costs one position and a message, not the epoch.
    let tmp = tempfile::tempdir().unwrap();
    let mut sources = good_shards(tmp.path(), 1, 3);
    let gone = tmp.path().join("gone.tar");
    sources.push(Source::Shard(gone.clone()));
    let loader = Loader::new(sources, cfg(0, 1));
    let (got, stats) = run(&loader, 0, 0);
    assert_eq!(got.len(), 3);
    assert_eq!(stats.skipped_corrupt, 1);
    assert!(stats.skipped_reasons[0].contains(&gone.display().to_string()));
    assert!(loader.count().is_err());
}
