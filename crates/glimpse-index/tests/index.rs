//! The index crate end to end with a small fake embedder: shard outputs, corrupt
//! images, resume after a failure, extension and merging, exact against HNSW.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use glimpse_index::data::{resolve_shards, Shard};
use glimpse_index::job::BoxError;
use glimpse_index::layout::{ShardData, FORMAT};
use glimpse_index::meta::{read_metadata, Record};
use glimpse_index::npy::{read_npy, Matrix};
use glimpse_index::{
    build_search, embed_shard, AnnParams, Embedder, IndexDir, IndexKind, JobOptions, Manifest,
    SearchIndex, ShardMarker, Side,
};
use image::{Rgb, RgbImage};
use indicatif::ProgressBar;

/// Mean colour of each image quadrant (12 values); texts: colour words.
struct Fake {
    id: String,
    /// Fail on the image call after this many successful ones (a simulated kill).
    fail_after: Option<usize>,
    calls: AtomicUsize,
}

impl Fake {
    fn new() -> Self {
        Fake {
            id: "fake@1".into(),
            fail_after: None,
            calls: AtomicUsize::new(0),
        }
    }
}

const DIM: usize = 12;

fn colour_vec(c: [f32; 3]) -> Vec<f32> {
    (0..4).flat_map(|_| c.iter().map(|x| x + 0.05)).collect()
}

impl Embedder for Fake {
    fn model_id(&self) -> &str {
        &self.id
    }
    fn dim(&self) -> usize {
        DIM
    }
    fn preprocess(&self, image: &RgbImage) -> Result<Vec<f32>, BoxError> {
        let (w, h) = image.dimensions();
        let mut v = vec![0.0f32; DIM];
        for (x, y, p) in image.enumerate_pixels() {
            let q = (2 * (y >= h / 2) as usize + (x >= w / 2) as usize) * 3;
            for c in 0..3 {
                v[q + c] += p[c] as f32 / 255.0;
            }
        }
        let n = (w * h / 4).max(1) as f32;
        Ok(v.into_iter().map(|x| x / n + 0.05).collect())
    }
    fn embed_images(&self, pixels: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, BoxError> {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail_after.is_some_and(|n| calls >= n) {
            return Err("simulated crash".into());
        }
        Ok(pixels.to_vec())
    }
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BoxError> {
        Ok(texts
            .iter()
            .map(|t| {
                let c = if t.contains("red") {
                    [1.0, 0.0, 0.0]
                } else if t.contains("green") {
                    [0.0, 1.0, 0.0]
                } else {
                    [0.0, 0.0, 1.0]
                };
                colour_vec(c)
            })
            .collect())
    }
}

const COLOURS: [(&str, [u8; 3]); 3] = [
    ("red", [250, 0, 0]),
    ("green", [0, 250, 0]),
    ("blue", [0, 0, 250]),
];

/// 12 images (4 of each colour, with a caption file for half of them) and one corrupt.
fn photo_folder(dir: &Path) {
    for i in 0..12 {
        let (name, rgb) = COLOURS[i % 3];
        let img = RgbImage::from_fn(16, 16, |x, _| {
            if x as usize == i {
                Rgb([9, 9, 9])
            } else {
                Rgb(rgb)
            }
        });
        img.save(dir.join(format!("img{i:02}.png"))).unwrap();
        if i % 2 == 0 {
            std::fs::write(
                dir.join(format!("img{i:02}.txt")),
                format!("a {name} square\n"),
            )
            .unwrap();
        }
    }
    std::fs::write(dir.join("img05b.png"), b"\x89PNG but not really").unwrap();
}

fn manifest(e: &dyn Embedder) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        model_id: e.model_id().into(),
        model: "fake".into(),
        dim: e.dim(),
    }
}

fn embed_all(e: &dyn Embedder, dir: &IndexDir, shards: &[Shard]) -> Vec<ShardMarker> {
    let opts = JobOptions {
        batch_size: 2,
        workers: 2,
    };
    shards
        .iter()
        .map(|s| embed_shard(e, dir, s, &opts, &ProgressBar::hidden()).unwrap())
        .collect()
}

#[test]
fn folder_job_writes_readable_shards_and_lists_corrupt_images() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    photo_folder(&photos);
    let shards = resolve_shards(photos.to_str().unwrap(), 5).unwrap();
    assert_eq!(shards.len(), 3); // 13 files
    let fake = Fake::new();
    let dir = IndexDir::create_or_open(&tmp.path().join("idx"), manifest(&fake)).unwrap();
    let markers = embed_all(&fake, &dir, &shards);
    assert_eq!(markers.iter().map(|m| m.rows).sum::<usize>(), 12);
    let skipped: Vec<&String> = markers.iter().flat_map(|m| &m.skipped).collect();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("img05b"), "{}", skipped[0]);

    let m0 = read_npy(&dir.image_path(0)).unwrap();
    assert_eq!((m0.rows, m0.dim), (5, DIM));
    for i in 0..m0.rows {
        let norm: f32 = m0.row(i).iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    let records = read_metadata(&dir.metadata_path(0)).unwrap();
    assert_eq!(records[0].key, "img00");
    assert_eq!(records[0].caption.as_deref(), Some("a red square"));
    assert_eq!(records[1].caption, None);
    let texts = read_npy(&dir.text_path(0)).unwrap();
    assert!(
        texts.row(1).iter().all(|x| *x == 0.0),
        "no caption, zero row"
    );

    build_search(&dir, Some(IndexKind::Exact), AnnParams::default()).unwrap();
    let index = SearchIndex::open(&dir.root).unwrap();
    let q = colour_vec([0.0, 1.0, 0.0]);
    let hits = index.search(Side::Images, &q, "fake@1", 4, None).unwrap();
    for h in &hits {
        let n: usize = h.key[3..5].parse().unwrap();
        assert_eq!(n % 3, 1, "green images are 1, 4, 7, 10: {hits:?}");
    }
    // image -> text: captions only (6 of them).
    let hits = index.search(Side::Texts, &q, "fake@1", 10, None).unwrap();
    assert_eq!(hits.len(), 6);
    assert_eq!(hits[0].text.as_deref(), Some("a green square"));
}

#[test]
fn a_job_killed_mid_shard_resumes_to_the_same_output() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    photo_folder(&photos);
    let shards = resolve_shards(photos.to_str().unwrap(), 5).unwrap();

    let clean =
        IndexDir::create_or_open(&tmp.path().join("clean"), manifest(&Fake::new())).unwrap();
    embed_all(&Fake::new(), &clean, &shards);

    let crashing = Fake {
        fail_after: Some(4), // shard 0 takes 3 calls; dies inside shard 1
        ..Fake::new()
    };
    let dir = IndexDir::create_or_open(&tmp.path().join("resumed"), manifest(&crashing)).unwrap();
    let opts = JobOptions {
        batch_size: 2,
        workers: 2,
    };
    embed_shard(&crashing, &dir, &shards[0], &opts, &ProgressBar::hidden()).unwrap();
    let e = embed_shard(&crashing, &dir, &shards[1], &opts, &ProgressBar::hidden()).unwrap_err();
    assert!(e.to_string().contains("simulated crash"), "{e}");
    assert!(
        dir.marker(1).unwrap().is_none(),
        "no marker for the failed shard"
    );
    let first = std::fs::metadata(dir.marker_path(0))
        .unwrap()
        .modified()
        .unwrap();

    embed_all(&Fake::new(), &dir, &shards);
    let again = std::fs::metadata(dir.marker_path(0))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(first, again, "a completed shard is not embedded again");
    for s in 0..3 {
        for (a, b) in [
            (clean.image_path(s), dir.image_path(s)),
            (clean.text_path(s), dir.text_path(s)),
            (clean.metadata_path(s), dir.metadata_path(s)),
        ] {
            assert_eq!(
                std::fs::read(&a).unwrap(),
                std::fs::read(&b).unwrap(),
                "{}",
                b.display()
            );
        }
    }
}

#[test]
fn another_model_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let fake = Fake::new();
    let root = tmp.path().join("idx");
    let dir = IndexDir::create_or_open(&root, manifest(&fake)).unwrap();
    let other = Manifest {
        model_id: "other@2".into(),
        dim: 512,
        ..manifest(&fake)
    };
    let e = IndexDir::create_or_open(&root, other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fake@1") && e.contains("other@2") && e.contains("512"),
        "{e}"
    );

    let data = clustered(1, 40, DIM, 3);
    dir.write_shard(&marker(0, 40), &data).unwrap();
    build_search(&dir, None, AnnParams::default()).unwrap();
    let index = SearchIndex::open(&root).unwrap();
    let e = index
        .search(Side::Images, &[1.0; 7], "fake@1", 3, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dimension 7") && e.contains("dimension 12"),
        "{e}"
    );
    let e = index
        .search(Side::Images, &[1.0; DIM], "clip@9", 3, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("clip@9") && e.contains("fake@1"), "{e}");
}

/// `rows` unit vectors around `clusters` random centres (a fixed LCG, no dependency).
fn clustered(seed: u64, rows: usize, dim: usize, clusters: usize) -> ShardData {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    };
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| next()).collect())
        .collect();
    let mut images = Matrix::new(dim);
    let mut texts = Matrix::new(dim);
    let mut records = Vec::new();
    for i in 0..rows {
        let c = &centres[i % clusters];
        let v: Vec<f32> = c.iter().map(|x| x + 0.6 * next()).collect();
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let v: Vec<f32> = v.iter().map(|x| x / n).collect();
        images.push(&v);
        texts.push(&v);
        records.push(Record {
            key: format!("s{seed}-{i}"),
            image_path: format!("/x/{i}.jpg"),
            caption: Some(format!("caption {i}")),
        });
    }
    ShardData {
        images,
        texts,
        records,
    }
}

fn marker(shard: usize, rows: usize) -> ShardMarker {
    ShardMarker {
        shard,
        source: format!("synthetic {shard}"),
        rows,
        captions: rows,
        skipped: Vec::new(),
        model_id: "fake@1".into(),
        seconds: 0.0,
    }
}

fn new_index(root: &Path, dim: usize) -> IndexDir {
    IndexDir::create_or_open(
        root,
        Manifest {
            format: FORMAT.into(),
            model_id: "fake@1".into(),
            model: "fake".into(),
            dim,
        },
    )
    .unwrap()
}

fn recall(exact: &SearchIndex, ann: &SearchIndex, queries: &Matrix, k: usize) -> f64 {
    let mut found = 0;
    for i in 0..queries.rows {
        let q = queries.row(i);
        let truth: Vec<usize> = exact
            .search(Side::Images, q, "fake@1", k, None)
            .unwrap()
            .iter()
            .map(|h| h.row)
            .collect();
        let got = ann.search(Side::Images, q, "fake@1", k, None).unwrap();
        found += got.iter().filter(|h| truth.contains(&h.row)).count();
    }
    found as f64 / (queries.rows * k) as f64
}

#[test]
fn hnsw_agrees_with_exact_search_reopens_and_extends() {
    let tmp = tempfile::tempdir().unwrap();
    let dim = 32;
    let exact = new_index(&tmp.path().join("exact"), dim);
    let ann = new_index(&tmp.path().join("ann"), dim);
    for (n, seed) in [(0, 1), (1, 2)] {
        let data = clustered(seed, 1500, dim, 20);
        exact.write_shard(&marker(n, 1500), &data).unwrap();
        ann.write_shard(&marker(n, 1500), &data).unwrap();
    }
    let r = build_search(&exact, None, AnnParams::default()).unwrap();
    assert_eq!(
        r.kind,
        IndexKind::Exact,
        "small collections default to exact"
    );
    let r = build_search(&ann, Some(IndexKind::Hnsw), AnnParams::default()).unwrap();
    assert_eq!(
        (r.kind, r.image_rows, r.extended),
        (IndexKind::Hnsw, 3000, false)
    );

    let queries = clustered(99, 100, dim, 20).images;
    let e = SearchIndex::open(&exact.root).unwrap();
    let a = SearchIndex::open(&ann.root).unwrap();
    let r10 = recall(&e, &a, &queries, 10);
    assert!(r10 >= 0.95, "recall@10 {r10}");

    // A third shard arrives as its own index and is merged into both.
    let part = new_index(&tmp.path().join("part"), dim);
    part.write_shard(&marker(0, 500), &clustered(3, 500, dim, 20))
        .unwrap();
    assert_eq!(exact.extend_from(&part.root).unwrap(), vec![2]);
    assert_eq!(ann.extend_from(&part.root).unwrap(), vec![2]);
    build_search(&exact, None, AnnParams::default()).unwrap();
    let r = build_search(&ann, None, AnnParams::default()).unwrap();
    assert!(r.extended, "the HNSW graph is extended, not rebuilt");
    assert_eq!((r.added_rows, r.image_rows), (500, 3500));
    let e = SearchIndex::open(&exact.root).unwrap();
    let a = SearchIndex::open(&ann.root).unwrap();
    assert_eq!((e.len(), a.len()), (3500, 3500));
    let r10 = recall(&e, &a, &queries, 10);
    assert!(r10 >= 0.95, "recall@10 after extension {r10}");
    // A vector of the new shard finds itself.
    let probe = read_npy(&ann.image_path(2)).unwrap();
    let hit = &a
        .search(Side::Images, probe.row(7), "fake@1", 1, None)
        .unwrap()[0];
    assert_eq!((hit.row, hit.key.as_str()), (3007, "s3-7"));
    assert!((hit.score - 1.0).abs() < 1e-4);
}
