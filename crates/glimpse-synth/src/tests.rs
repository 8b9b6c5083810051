use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use glimpse_data::tar;

use super::*;

fn cfg(count: u64, shard_size: u64) -> SynthConfig {
    SynthConfig {
        seed: 7,
        count,
        noise: 0.2,
        image_size: 64,
        jitter: 0.8,
        shard_size,
        val_fraction: 0.1,
        test_fraction: 0.1,
    }
}

/// All files under `dir` (relative path -> bytes).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// All tar entries of a generated dataset (entry name -> bytes), with their split.
fn entries(dir: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for (rel, bytes) in files(dir) {
        if !rel.ends_with(".tar") {
            continue;
        }
        let split = rel.split('/').next().unwrap().to_string();
        let mut r = tar::TarReader::new(bytes.as_slice());
        while let Some((name, data)) = r.next_entry().unwrap() {
            assert!(
                out.insert(name, (split.clone(), data)).is_none(),
                "duplicate entry"
            );
        }
    }
    out
}

fn words(s: &str) -> Vec<&str> {
    s.split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
        .collect()
}

#[test]
fn synth_determinism_two_runs_identical_bytes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = cfg(60, 16);
    generate(&c, a.path(), |_, _| {}).unwrap();
    generate(&c, b.path(), |_, _| {}).unwrap();
    let (fa, fb) = (files(a.path()), files(b.path()));
    assert!(fa.contains_key("manifest.json"));
    assert!(fa.keys().any(|k| k.starts_with("train/shard-000000.tar")));
    assert_eq!(fa, fb);
    // A different seed gives a different dataset.
    let other = tempfile::tempdir().unwrap();
    generate(&SynthConfig { seed: 8, ..c }, other.path(), |_, _| {}).unwrap();
    assert_ne!(entries(a.path()), entries(other.path()));
}

#[test]
fn synth_shard_size_independence_and_manifest() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let ra = generate(&cfg(50, 7), a.path(), |_, _| {}).unwrap();
    generate(&cfg(50, 1000), b.path(), |_, _| {}).unwrap();
    let (ea, eb) = (entries(a.path()), entries(b.path()));
    assert_eq!(ea.len(), 100);
    assert_eq!(ea, eb);
    let m = &ra.manifest;
    assert!(m.complete);
    let total: u64 = Split::ALL.iter().map(|&s| m.split(s).samples).sum();
    assert_eq!(total, 50);
    assert_eq!(m.train.shards.len() as u64, m.train.samples.div_ceil(7));
    let on_disk: Manifest =
        serde_json::from_slice(&fs::read(a.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, m);
    // Every entry lies in the split its record names, with a png and json per key.
    for (name, (split, data)) in &ea {
        if let Some(key) = name.strip_suffix(".json") {
            let rec: SampleJson = serde_json::from_slice(data).unwrap();
            assert_eq!(&rec.split, split);
            assert_eq!(rec.key, key);
            assert!(ea.contains_key(&format!("{key}.png")));
        }
    }
}

#[test]
fn synth_noise_share_and_record() {
    let c = SynthConfig {
        noise: 0.3,
        ..cfg(1000, 1000)
    };
    let mut kinds = BTreeMap::new();
    let mut corrupted = 0;
    for i in 0..c.count {
        let r = sample(&c, i).record;
        assert_eq!(r.corrupted, r.corruption.is_some());
        assert_eq!(r.clean_caption, r.captions[0]);
        if let Some(kind) = &r.corruption {
            corrupted += 1;
            *kinds.entry(kind.clone()).or_insert(0) += 1;
            assert_ne!(r.caption, r.clean_caption, "{kind}");
            let scene_colors: Vec<&str> = r.objects.iter().map(|o| o.color.as_str()).collect();
            let scene_shapes: Vec<&str> = r.objects.iter().map(|o| o.shape.as_str()).collect();
            let w = words(&r.caption);
            match kind.as_str() {
                "wrong_color" => assert!(w.iter().any(|w| COLORS
                    .iter()
                    .any(|c| c.0 == *w && !scene_colors.contains(w) && *w != r.background.color))),
                "wrong_shape" => assert!(w.iter().any(|w| SHAPES
                    .iter()
                    .any(|s| (s.0 == *w || s.1 == *w) && !scene_shapes.contains(&s.0)))),
                "truncated" => assert!(r.clean_caption.starts_with(&r.caption)),
                "unrelated" => assert!(w.iter().all(|w| !scene_colors.contains(w))),
                _ => {}
            }
        } else {
            assert_eq!(r.caption, r.clean_caption);
        }
    }
    assert!(
        (250..=350).contains(&corrupted),
        "{corrupted} corrupted of 1000"
    );
    assert_eq!(kinds.len(), 5);
    assert!(kinds.values().all(|&n| n >= 35), "{kinds:?}");
    // The manifest counts the same corruption decisions.
    let m = plan(&c);
    let counted: u64 = Split::ALL.iter().map(|&s| m.split(s).corrupted).sum();
    assert_eq!(counted, corrupted);
    // Noise never changes the image or the clean captions.
    let clean = SynthConfig {
        noise: 0.0,
        ..c.clone()
    };
    for i in 0..20 {
        let (x, y) = (sample(&c, i), sample(&clean, i));
        assert_eq!(x.image, y.image);
        assert_eq!(x.record.captions, y.record.captions);
        assert!(!y.record.corrupted);
    }
    let all = SynthConfig { noise: 1.0, ..c };
    assert!((0..20).all(|i| sample(&all, i).record.corrupted));
}

#[test]
fn synth_qa_answers_match_objects() {
    let c = cfg(400, 1000);
    let mut seen_counts = [0usize; 5];
    for i in 0..c.count {
        let r = sample(&c, i).record;
        assert_eq!(r.count, r.objects.len());
        seen_counts[r.count] += 1;
        for qa in &r.qa {
            let q = qa.question.trim_end_matches('?');
            let a = qa.answer.as_str();
            let shape_of = |w: &str| {
                SHAPES
                    .iter()
                    .find(|s| s.0 == w || s.1 == w)
                    .map(|s| s.0)
                    .unwrap()
            };
            if let Some(rest) = q.strip_prefix("how many ") {
                let noun = rest.trim_end_matches(" are there");
                let n = if noun == "objects" {
                    r.objects.len()
                } else {
                    let s = shape_of(noun);
                    r.objects.iter().filter(|o| o.shape == s).count()
                };
                assert_eq!(a, n.to_string(), "{q}");
            } else if let Some(pos) = q.strip_prefix("what shape is in the ") {
                let o = r.objects.iter().find(|o| o.position == pos).unwrap();
                assert_eq!(a, o.shape);
            } else if let Some(s) = q.strip_prefix("is there a ") {
                let has = r.objects.iter().any(|o| o.shape == s);
                assert_eq!(a, if has { "yes" } else { "no" });
            } else if q == "what color is the background" {
                assert_eq!(a, r.background.color);
            } else if let Some(rest) = q.strip_prefix("what size is the ") {
                let (color, shape) = rest.split_once(' ').unwrap();
                let o: Vec<_> = r
                    .objects
                    .iter()
                    .filter(|o| o.color == color && o.shape == shape)
                    .collect();
                assert_eq!(o.len(), 1);
                assert_eq!(a, o[0].size);
            } else if let Some(rest) = q
                .strip_prefix("what color is the ")
                .or_else(|| q.strip_prefix("what color are the "))
            {
                let matching: Vec<_> = match rest.split_once(" in the ") {
                    Some((shape, pos)) => r
                        .objects
                        .iter()
                        .filter(|o| o.shape == shape && o.position == pos)
                        .collect(),
                    None => {
                        let s = shape_of(rest);
                        r.objects.iter().filter(|o| o.shape == s).collect()
                    }
                };
                assert!(!matching.is_empty(), "{q}");
                assert!(matching.iter().all(|o| o.color == a), "{q} -> {a}");
            } else if let Some(rest) = q.strip_prefix("is the ") {
                assert_eq!(r.objects.len(), 2);
                let (o0, o1) = (&r.objects[0], &r.objects[1]);
                let subject = format!("{} {} ", o0.color, o0.shape);
                let rel = rest
                    .strip_prefix(&subject)
                    .unwrap()
                    .strip_suffix(&format!(" the {} {}", o1.color, o1.shape))
                    .unwrap()
                    .trim_start_matches("to the ");
                let holds = r
                    .relations
                    .iter()
                    .any(|x| x.subject == 0 && x.object == 1 && x.relation == rel);
                assert_eq!(a, if holds { "yes" } else { "no" }, "{q}");
            } else {
                panic!("unchecked question {q:?}");
            }
        }
    }
    // Mostly one and two objects, all counts present.
    assert!(seen_counts[1] > seen_counts[3] && seen_counts[2] > seen_counts[4]);
    assert!(seen_counts[1..].iter().all(|&n| n > 0), "{seen_counts:?}");
}

#[test]
fn synth_pixel_at_bbox_centre_has_object_colour() {
    for size in [64, 32, 96] {
        let c = SynthConfig {
            image_size: size,
            ..cfg(150, 1000)
        };
        for i in 0..c.count {
            let s = sample(&c, i);
            for o in &s.record.objects {
                let [x0, y0, x1, y1] = o.bbox;
                assert!(x0 < x1 && y0 < y1 && x1 <= size && y1 <= size, "{o:?}");
                let p = s.image.get_pixel((x0 + x1) / 2, (y0 + y1) / 2).0;
                let rgb = COLORS.iter().find(|c| c.0 == o.color).unwrap().1;
                // Below 64 px the thin parts of small shapes (star core, cross arms)
                // are under two pixels wide; the check holds from 64 px up.
                if size >= 64 || o.size != "small" {
                    assert_eq!(p, rgb, "sample {i} size {size}: {o:?}");
                }
            }
            // Objects do not overlap: boxes are disjoint.
            let b: Vec<_> = s.record.objects.iter().map(|o| o.bbox).collect();
            for i in 0..b.len() {
                for j in i + 1..b.len() {
                    let disjoint = b[i][2] <= b[j][0]
                        || b[j][2] <= b[i][0]
                        || b[i][3] <= b[j][1]
                        || b[j][3] <= b[i][1];
                    assert!(disjoint, "{:?} {:?}", b[i], b[j]);
                }
            }
            // Background: never an object colour.
            assert!(s
                .record
                .objects
                .iter()
                .all(|o| o.color != s.record.background.color));
        }
    }
}

/// Without jitter every object is centred in its grid cell: at 72 px (24 px cells, three
/// 8 px patches each) the box of a symmetric shape is centred on the middle patch of
/// its cell. With jitter, some objects move off the centre.
#[test]
fn synth_jitter_zero_centres_objects_in_their_cells() {
    let centred = SynthConfig {
        image_size: 72,
        jitter: 0.0,
        ..cfg(200, 1000)
    };
    let mut checked = 0;
    for i in 0..centred.count {
        for o in &sample(&centred, i).record.objects {
            if !matches!(o.shape.as_str(), "circle" | "square" | "cross" | "diamond") {
                continue;
            }
            let cell = POSITIONS.iter().position(|p| *p == o.position).unwrap() as u32;
            let (cx, cy) = (24 * (cell % 3) + 12, 24 * (cell / 3) + 12);
            let [x0, y0, x1, y1] = o.bbox;
            assert_eq!((x0 + x1, y0 + y1), (2 * cx, 2 * cy), "sample {i}: {o:?}");
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");
    let jittered = SynthConfig {
        jitter: 1.0,
        ..centred
    };
    let moved = (0..jittered.count)
        .flat_map(|i| sample(&jittered, i).record.objects)
        .filter(|o| {
            let cell = POSITIONS.iter().position(|p| *p == o.position).unwrap() as u32;
            let [x0, _, x1, _] = o.bbox;
            x0 + x1 != 2 * (24 * (cell % 3) + 12)
        })
        .count();
    assert!(moved > 50, "{moved}");
}

#[test]
fn synth_captions_mention_what_they_claim() {
    let c = cfg(400, 1000);
    for i in 0..c.count {
        let r = sample(&c, i).record;
        assert_eq!(r.captions.len(), 5, "{:?}", r.captions);
        let colors: Vec<&str> = r.objects.iter().map(|o| o.color.as_str()).collect();
        let shapes: Vec<&str> = r.objects.iter().map(|o| o.shape.as_str()).collect();
        let sizes: Vec<&str> = r.objects.iter().map(|o| o.size.as_str()).collect();
        let positions: Vec<&str> = r.objects.iter().map(|o| o.position.as_str()).collect();
        for cap in &r.captions {
            let w = words(cap);
            for pair in w.windows(2) {
                let vowel = pair[1].starts_with(['a', 'e', 'i', 'o', 'u']);
                assert!(!(pair[0] == "a" && vowel), "article in {cap:?}");
                assert!(pair[0] != "an" || vowel, "article in {cap:?}");
            }
            for word in &w {
                if COLORS.iter().any(|c| c.0 == *word) {
                    assert!(
                        colors.contains(word) || *word == r.background.color,
                        "{cap:?} {r:?}"
                    );
                }
                if let Some(s) = SHAPES.iter().find(|s| s.0 == *word || s.1 == *word) {
                    assert!(shapes.contains(&s.0), "{cap:?}");
                }
                if SIZES.iter().any(|s| s.0 == *word) {
                    assert!(sizes.contains(word), "{cap:?}");
                }
            }
            for p in POSITIONS {
                if cap.contains(&format!("in the {p}")) {
                    assert!(positions.contains(&p), "{cap:?}");
                }
            }
            for rel in ["left of", "right of", "above", "below"] {
                if cap.contains(rel) {
                    assert_eq!(r.objects.len(), 2, "{cap:?}");
                }
            }
        }
        // The training caption names every colour and shape.
        let first = words(&r.captions[0]);
        for o in &r.objects {
            assert!(first.contains(&o.color.as_str()), "{:?}", r.captions[0]);
            let (one, many) = *SHAPES.iter().find(|s| s.0 == o.shape).unwrap();
            assert!(first.contains(&one) || first.contains(&many));
        }
        // A same-kind group states its count.
        if r.objects.len() > 1
            && r.objects
                .iter()
                .all(|o| o.shape == r.objects[0].shape && o.color == r.objects[0].color)
        {
            let n = NUMBER_WORDS[r.objects.len()];
            assert!(first.contains(&n), "{:?}", r.captions[0]);
        }
    }
}

#[test]
fn synth_resume_after_deleted_shard() {
    let a = tempfile::tempdir().unwrap();
    let c = cfg(60, 10);
    let first = generate(&c, a.path(), |_, _| {}).unwrap();
    let before = files(a.path());
    let victim = a.path().join(&first.manifest.train.shards[1]);
    fs::remove_file(&victim).unwrap();
    // A half-written leftover from a killed run is replaced.
    fs::write(victim.with_extension("tar.tmp"), b"partial").unwrap();
    let mut last = (0, 0);
    let again = generate(&c, a.path(), |d, t| last = (d, t)).unwrap();
    assert_eq!(again.shards_written, 1);
    assert_eq!(again.shards_skipped, first.shards_written - 1);
    assert_eq!(last, (60, 60));
    assert_eq!(files(a.path()), before);
    // Other arguments in the same directory are refused, naming the directory.
    let err = generate(&SynthConfig { seed: 1, ..c }, a.path(), |_, _| {}).unwrap_err();
    assert!(err.to_string().contains("other arguments"), "{err}");
}

/// A rerun used to keep any existing shard; one cut short (a killed copy, a full disk)
/// must be read through, found incomplete and written again, bit for bit.
#[test]
fn synth_rerun_regenerates_a_truncated_shard() {
    let a = tempfile::tempdir().unwrap();
    let c = cfg(60, 10);
    let first = generate(&c, a.path(), |_, _| {}).unwrap();
    let before = files(a.path());
    let cut = a.path().join(&first.manifest.train.shards[1]);
    let bytes = fs::read(&cut).unwrap();
    fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // Only the second end-of-archive block missing is incomplete too.
    let short = a.path().join(&first.manifest.train.shards[2]);
    let bytes = fs::read(&short).unwrap();
    fs::write(&short, &bytes[..bytes.len() - 512]).unwrap();

    let again = generate(&c, a.path(), |_, _| {}).unwrap();
    assert_eq!(again.shards_rewritten, 2);
    assert_eq!(again.shards_written, 2);
    assert_eq!(again.shards_skipped, first.shards_written - 2);
    assert_eq!(files(a.path()), before);
}

#[test]
fn synth_bad_arguments_name_the_flag() {
    let bad = [
        (
            SynthConfig {
                count: 0,
                ..cfg(1, 1)
            },
            "--count",
        ),
        (
            SynthConfig {
                noise: 1.5,
                ..cfg(1, 1)
            },
            "--noise",
        ),
        (
            SynthConfig {
                noise: -0.1,
                ..cfg(1, 1)
            },
            "--noise",
        ),
        (
            SynthConfig {
                noise: f64::NAN,
                ..cfg(1, 1)
            },
            "--noise",
        ),
        (
            SynthConfig {
                image_size: 15,
                ..cfg(1, 1)
            },
            "--image-size",
        ),
        (
            SynthConfig {
                jitter: 1.5,
                ..cfg(1, 1)
            },
            "--jitter",
        ),
        (
            SynthConfig {
                shard_size: 0,
                ..cfg(1, 1)
            },
            "--shard-size",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (c, flag) in bad {
        let err = generate(&c, dir.path(), |_, _| {}).unwrap_err().to_string();
        assert!(err.contains(flag), "{err}");
    }
    assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
    assert!(SynthConfig {
        image_size: 16,
        ..cfg(1, 1)
    }
    .validate()
    .is_ok());
}

#[test]
fn synth_read_shard_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let c = cfg(30, 8);
    let rep = generate(&c, dir.path(), |_, _| {}).unwrap();
    let mut n = 0;
    for s in Split::ALL {
        for shard in &rep.manifest.split(s).shards {
            for item in read_shard(dir.path().join(shard)).unwrap() {
                let (key, image, rec) = item.unwrap();
                let expect = sample(&c, rec.index);
                assert_eq!(key, rec.key);
                assert_eq!(image, expect.image);
                assert_eq!(rec, expect.record);
                assert_eq!(rec.split, s.as_str());
                n += 1;
            }
        }
    }
    assert_eq!(n, 30);
    // A truncated shard is an error naming the file, not a silent short read.
    let path = dir.path().join(&rep.manifest.train.shards[0]);
    let bytes = fs::read(&path).unwrap();
    fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_shard(&path)
        .unwrap()
        .find_map(|r| r.err())
        .expect("error");
    assert!(err.to_string().contains("shard-000000.tar"), "{err}");
}
