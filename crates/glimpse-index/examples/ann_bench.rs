//! ANN benchmark: HNSW (hnsw_rs, through glimpse-index) against exact search on
//! clustered synthetic unit vectors.
//!
//! Data: `--clusters` centres drawn uniformly on the unit sphere; each vector is its
//! centre plus isotropic Gaussian noise of standard deviation `--spread / sqrt(dim)`
//! per coordinate (so the noise has norm about `--spread`), normalised. Queries are
//! drawn the same way (new noise), so each has a dense neighbourhood, as text queries
//! against photo collections do. Ground truth is exact inner-product top-10.
//!
//! `cargo run --release -p glimpse-index --example ann_bench -- ROWS [DIM] [QUERIES]`
//! (or in the dev profile, where glimpse-index is built at opt-level 3 as well).
//! Writes the index under `$TMPDIR/glimpse-ann-bench` (or `ANN_BENCH_DIR`), then reports
//! build time, peak memory (VmHWM), reopen time, and recall@10 / queries per second per
//! `ef`. With `REUSE=1` an index that an earlier run of the same arguments left there
//! (with its `truth.json`) is reopened and queried without rebuilding, so the query
//! timing can be taken on a quiet machine apart from the long build.

use std::path::Path;
use std::time::Instant;

use glimpse_index::layout::{ShardData, FORMAT};
use glimpse_index::meta::Record;
use glimpse_index::npy::Matrix;
use glimpse_index::search::exact_top_k;
use glimpse_index::{
    build_search, AnnParams, IndexDir, IndexKind, Manifest, SearchIndex, ShardMarker, Side,
};
use rayon::prelude::*;

/// SplitMix64 and Box-Muller: reproducible without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 0.5) / (1u64 << 24) as f32
    }
    fn gauss(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
}

fn normalise(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
}

fn vectors(seed: u64, rows: usize, centres: &[Vec<f32>], spread: f32) -> Matrix {
    let dim = centres[0].len();
    let sigma = spread / (dim as f32).sqrt();
    let data: Vec<f32> = (0..rows)
        .into_par_iter()
        .flat_map_iter(|i| {
            let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
            let c = &centres[(rng.next() % centres.len() as u64) as usize];
            let mut v: Vec<f32> = c.iter().map(|x| x + sigma * rng.gauss()).collect();
            normalise(&mut v);
            v
        })
        .collect();
    Matrix { rows, dim, data }
}

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let dim: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(512);
    let nq: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let params = AnnParams {
        m: env("HNSW_M", 16),
        ef_construction: env("HNSW_EF_CONSTRUCTION", 100),
        ef_search: 64,
    };
    let clusters = env("CLUSTERS", 1000);
    let spread: f32 = std::env::var("SPREAD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let shard_rows = env("SHARD_ROWS", 100_000);

    let mut rng = Rng(7);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| {
            let mut c: Vec<f32> = (0..dim).map(|_| rng.gauss()).collect();
            normalise(&mut c);
            c
        })
        .collect();
    let root = std::env::var_os("ANN_BENCH_DIR").map_or_else(
        || std::env::temp_dir().join("glimpse-ann-bench"),
        Into::into,
    );
    let truth_path = root.join(format!("truth-{rows}x{dim}-{nq}.json"));
    let queries = vectors(99, nq, &centres, spread);
    if std::env::var("REUSE").is_ok_and(|v| v == "1") && truth_path.exists() {
        let truth: Vec<Vec<usize>> =
            serde_json::from_slice(&std::fs::read(&truth_path).unwrap()).unwrap();
        println!("reusing the index under {}", root.display());
        query(&root, &queries, &truth);
        return;
    }
    let _ = std::fs::remove_dir_all(&root);
    let dir = IndexDir::create_or_open(
        &root,
        Manifest {
            format: FORMAT.into(),
            model_id: "bench@0".into(),
            model: "bench".into(),
            dim,
        },
    )
    .unwrap();
    let t = Instant::now();
    let mut all = Matrix::new(dim);
    for (n, start) in (0..rows).step_by(shard_rows).enumerate() {
        let count = shard_rows.min(rows - start);
        let images = vectors(1000 + n as u64, count, &centres, spread);
        let records = (start..start + count)
            .map(|i| Record {
                key: format!("{i}"),
                image_path: format!("v/{i}"),
                caption: None,
            })
            .collect();
        let data = ShardData {
            texts: Matrix {
                rows: count,
                dim,
                data: vec![0.0; count * dim],
            },
            images,
            records,
        };
        let marker = ShardMarker {
            shard: n,
            source: format!("synthetic {n}"),
            rows: count,
            captions: 0,
            skipped: Vec::new(),
            model_id: "bench@0".into(),
            seconds: 0.0,
        };
        dir.write_shard(&marker, &data).unwrap();
        all.data.extend_from_slice(&data.images.data);
        all.rows += count;
    }
    println!(
        "data: {rows} x {dim}, {clusters} clusters, spread {spread}, written in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let truth: Vec<Vec<usize>> = (0..nq)
        .map(|i| {
            exact_top_k(&all, queries.row(i), 10)
                .into_iter()
                .map(|(r, _)| r)
                .collect()
        })
        .collect();
    let exact_s = t.elapsed().as_secs_f64();
    println!(
        "exact: {:.1} queries/s (one query at a time, scoring on {} threads)",
        nq as f64 / exact_s,
        rayon::current_num_threads()
    );
    drop(all);
    std::fs::write(&truth_path, serde_json::to_vec(&truth).unwrap()).unwrap();

    let before = vm_hwm_mib();
    let t = Instant::now();
    let report = build_search(&dir, Some(IndexKind::Hnsw), params).unwrap();
    println!(
        "hnsw build: M {} ef_construction {}: {:.1}s ({:.0} inserts/s), peak RSS {:.0} MiB (before: {:.0} MiB)",
        params.m,
        params.ef_construction,
        t.elapsed().as_secs_f64(),
        rows as f64 / t.elapsed().as_secs_f64(),
        vm_hwm_mib(),
        before
    );
    let _ = report;
    query(&root, &queries, &truth);
}

/// Reopens the index and reports recall@10 and queries/s at each `ef`.
fn query(root: &Path, queries: &Matrix, truth: &[Vec<usize>]) {
    let nq = truth.len();
    let t = Instant::now();
    let index = SearchIndex::open(root).unwrap();
    println!("reopen: {:.2}s", t.elapsed().as_secs_f64());
    disk_usage(&root.join("ann"));
    // `EFS=64,96` measures other search widths.
    let efs: Vec<usize> = std::env::var("EFS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 32, 64, 128, 256]);
    for ef in efs {
        let t = Instant::now();
        let mut found = 0;
        for (i, truth) in truth.iter().enumerate() {
            let hits = index
                .search(Side::Images, queries.row(i), "bench@0", 10, Some(ef))
                .unwrap();
            found += hits.iter().filter(|h| truth.contains(&h.row)).count();
        }
        let s = t.elapsed().as_secs_f64();
        // The same queries spread over every core, as a server answers concurrent ones.
        let t = Instant::now();
        let found_par: usize = (0..nq)
            .into_par_iter()
            .map(|i| {
                let hits = index
                    .search(Side::Images, queries.row(i), "bench@0", 10, Some(ef))
                    .unwrap();
                hits.iter().filter(|h| truth[i].contains(&h.row)).count()
            })
            .sum();
        let par_s = t.elapsed().as_secs_f64();
        assert_eq!(found_par, found, "the same results on every thread");
        println!(
            "ef {ef:>3}: recall@10 {:.4}, {:.0} queries/s (one thread, one query at a time), \
             {:.0} queries/s ({} threads)",
            found as f64 / (10 * nq) as f64,
            nq as f64 / s,
            nq as f64 / par_s,
            rayon::current_num_threads()
        );
    }
}

fn disk_usage(dir: &Path) {
    println!(
        "hnsw files: {:.0} MiB",
        bytes_under(dir) as f64 / (1 << 20) as f64
    );
}

/// Bytes of the files under `dir`, its generation subdirectories included.
fn bytes_under(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => bytes_under(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
