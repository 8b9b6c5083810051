//! Search over an index directory's completed shards: exact (every row scored; the
//! default below [`AUTO_HNSW_ROWS`] rows, where it is fast enough and always right)
//! or HNSW through the `hnsw_rs` crate (pure Rust, dumps to and reloads from files).
//!
//! Rows are numbered across shards in the order they were indexed, which
//! `ann/state.json` records; new shards are appended (HNSW inserts only their rows),
//! so row numbers never change once given. Image rows are all samples; text rows are
//! the samples that have a caption.

use std::fs;
use std::path::{Path, PathBuf};

use hnsw_rs::anndists::dist::Distance;
use hnsw_rs::prelude::{AnnT, Hnsw, HnswIo};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::layout::{write_json, IndexDir};
use crate::meta::Record;
use crate::npy::{read_npy, Matrix};

/// Below this many rows `auto` chooses exact search.
pub const AUTO_HNSW_ROWS: usize = 20_000;

/// How an index searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    Exact,
    Hnsw,
}

/// HNSW parameters (see the `hnsw_rs` docs and docs/retrieval.md for measurements).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnParams {
    /// Neighbours per node (M); at most 256.
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construction: usize,
    /// Candidate list size while searching (at least k is used).
    pub ef_search: usize,
}

impl Default for AnnParams {
    fn default() -> Self {
        // Measured on 300,000 clustered 512-d vectors (docs/retrieval.md): recall@10
        // 0.999 at 916 queries/s on one thread (ef 32: 0.98 at 1,310/s); M 16 needed
        // ef 256 for 0.96.
        AnnParams {
            m: 32,
            ef_construction: 128,
            ef_search: 64,
        }
    }
}

/// Which vectors a query is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Images,
    Texts,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Images => "image",
            Side::Texts => "text",
        }
    }
}

/// One result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hit {
    /// The global row (see the module doc).
    #[serde(skip)]
    pub row: usize,
    pub key: String,
    /// Cosine similarity (or the re-ranker's score).
    pub score: f32,
    pub text: Option<String>,
    pub path: String,
}

/// `ann/state.json`: what the search index covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct State {
    kind: IndexKind,
    params: AnnParams,
    /// Shard numbers, in row order.
    shards: Vec<usize>,
    image_rows: usize,
    text_rows: usize,
    /// The graphs live in `ann/g{generation}/`: each build writes a new generation and
    /// then points the state at it, so a killed build leaves the old index usable.
    #[serde(default)]
    generation: u64,
}

/// Inner product distance for normalised vectors, `1 - a·b`, clamped at 0 (rounding
/// makes the dot of a vector with itself exceed 1, which `hnsw_rs`'s `DistDot` asserts
/// against), with independent accumulators so that the loop vectorises.
#[derive(Debug, Clone, Copy, Default)]
pub struct InnerProduct;

#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl Distance<f32> for InnerProduct {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

type Graph = Hnsw<'static, f32, InnerProduct>;

/// One side's vectors: exact rows, or a graph whose data ids are positions in `rows`.
enum Vectors {
    Empty,
    Exact(Matrix),
    Graph(Box<Graph>),
}

struct SideIndex {
    /// Global row of each position.
    rows: Vec<usize>,
    vectors: Vectors,
}

/// An opened index: metadata of every row and the vectors of both sides.
pub struct SearchIndex {
    pub dir: IndexDir,
    records: Vec<Record>,
    images: SideIndex,
    texts: SideIndex,
    state: State,
}

fn state_path(dir: &IndexDir) -> PathBuf {
    dir.ann_dir().join("state.json")
}

fn read_state(dir: &IndexDir) -> Result<Option<State>> {
    let p = state_path(dir);
    if !p.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(&p).map_err(Error::io(&p))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(&p, e.to_string()))
}

fn new_graph(params: &AnnParams, capacity: usize) -> Result<Graph> {
    if params.m == 0 || params.m > 256 {
        return Err(Error::Invalid(format!(
            "HNSW M must be in 1..=256, got {}",
            params.m
        )));
    }
    Ok(Hnsw::new(
        params.m,
        capacity.max(1),
        16,
        params.ef_construction.max(params.m),
        InnerProduct,
    ))
}

fn load_graph(dir: &Path, base: &str) -> Result<Graph> {
    // hnsw_rs ties the graph's lifetime to its loader (for memory-mapped data, which we
    // do not use); the loader is a few paths, so it is leaked once per opened index.
    let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, base)));
    let mut graph = io
        .load_hnsw::<f32, InnerProduct>()
        .map_err(|e| Error::format(dir.join(base), format!("cannot load the HNSW graph: {e}")))?;
    // As a new graph inserts (the loader turns candidate extension on).
    graph.set_extend_candidates(false);
    Ok(graph)
}

fn dump_graph(graph: &Graph, dir: &Path, base: &str) -> Result<()> {
    // A reloaded graph refuses to overwrite files and picks another name instead, so
    // every dump goes to a fresh directory; the name is checked all the same.
    let written = graph
        .file_dump(dir, base)
        .map_err(|e| Error::format(dir.join(base), format!("cannot write the HNSW graph: {e}")))?;
    if written != base {
        return Err(Error::format(
            dir.join(base),
            format!("the HNSW graph was written as {written:?}"),
        ));
    }
    Ok(())
}

fn generation_dir(dir: &IndexDir, generation: u64) -> PathBuf {
    dir.ann_dir().join(format!("g{generation}"))
}

/// What [`build_search`] did.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub kind: IndexKind,
    pub image_rows: usize,
    pub text_rows: usize,
    /// Rows added by this call (all of them on a rebuild).
    pub added_rows: usize,
    /// Whether an existing index was extended rather than rebuilt.
    pub extended: bool,
    pub seconds: f64,
}

/// Builds (or extends) the search index of `dir` over its completed shards. `kind`
/// `None` keeps the existing kind, or picks exact below [`AUTO_HNSW_ROWS`] rows.
pub fn build_search(
    dir: &IndexDir,
    kind: Option<IndexKind>,
    params: AnnParams,
) -> Result<BuildReport> {
    let start = std::time::Instant::now();
    let completed = dir.completed()?;
    if completed.is_empty() {
        return Err(Error::format(&dir.root, "no completed shard to index"));
    }
    let old = read_state(dir)?;
    let old_generation = old.as_ref().map_or(0, |s| s.generation);
    let shard_list: Vec<usize> = completed.keys().copied().collect();
    let total: usize = completed.values().map(|m| m.rows).sum();
    let kind = kind
        .or(old.as_ref().map(|s| s.kind))
        .unwrap_or(if total >= AUTO_HNSW_ROWS {
            IndexKind::Hnsw
        } else {
            IndexKind::Exact
        });
    // Extend when the old index covers a prefix of today's shards with the same kind.
    let reuse = old.filter(|s| {
        s.kind == kind
            && s.params == params
            && s.shards.len() <= shard_list.len()
            && s.shards == shard_list[..s.shards.len()]
    });
    let ann = dir.ann_dir();
    fs::create_dir_all(&ann).map_err(Error::io(&ann))?;
    let mut state = State {
        kind,
        params,
        shards: Vec::new(),
        image_rows: 0,
        text_rows: 0,
        generation: old_generation + 1,
    };
    let mut graphs: Option<(Graph, Graph)> = None;
    if let Some(old) = &reuse {
        state = State {
            generation: old_generation + 1,
            ..old.clone()
        };
        if kind == IndexKind::Hnsw {
            // An empty side has no files (hnsw_rs cannot dump an empty graph).
            let g = generation_dir(dir, old_generation);
            let load = |base: &str, rows: usize| match rows {
                0 => new_graph(&params, total),
                _ => load_graph(&g, base),
            };
            graphs = Some((load("image", old.image_rows)?, load("text", old.text_rows)?));
        }
    } else if kind == IndexKind::Hnsw {
        graphs = Some((new_graph(&params, total)?, new_graph(&params, total)?));
    }
    let mut added = 0;
    for (&n, marker) in &completed {
        if state.shards.contains(&n) {
            continue;
        }
        let data = dir.read_shard(marker)?;
        if let Some((gi, gt)) = &graphs {
            let image_items: Vec<(&[f32], usize)> = (0..data.images.rows)
                .map(|i| (data.images.row(i), state.image_rows + i))
                .collect();
            gi.parallel_insert_slice(&image_items);
            let text_items: Vec<(&[f32], usize)> = data
                .records
                .iter()
                .enumerate()
                .filter(|(_, r)| r.caption.is_some())
                .enumerate()
                .map(|(j, (i, _))| (data.texts.row(i), state.text_rows + j))
                .collect();
            gt.parallel_insert_slice(&text_items);
        }
        state.shards.push(n);
        state.image_rows += data.records.len();
        state.text_rows += marker.captions;
        added += data.records.len();
    }
    let g = generation_dir(dir, state.generation);
    if g.exists() {
        fs::remove_dir_all(&g).map_err(Error::io(&g))?; // left by a killed build
    }
    fs::create_dir_all(&g).map_err(Error::io(&g))?;
    if let Some((gi, gt)) = &graphs {
        if state.image_rows > 0 {
            dump_graph(gi, &g, "image")?;
        }
        if state.text_rows > 0 {
            dump_graph(gt, &g, "text")?;
        }
    }
    write_json(&state_path(dir), &state)?;
    if old_generation != state.generation {
        let stale = generation_dir(dir, old_generation);
        if stale.exists() {
            fs::remove_dir_all(&stale).map_err(Error::io(&stale))?;
        }
    }
    Ok(BuildReport {
        kind,
        image_rows: state.image_rows,
        text_rows: state.text_rows,
        added_rows: added,
        extended: reuse.is_some(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl SearchIndex {
    /// Opens the index at `root`: the manifest, every indexed shard's metadata, and the
    /// vectors (exact) or the graphs (HNSW).
    pub fn open(root: &Path) -> Result<Self> {
        let dir = IndexDir::open(root)?;
        let state = read_state(&dir)?.ok_or_else(|| {
            Error::format(
                root,
                "the shards are embedded but no search index is built; run \
                 `glimpse index build` without --shard",
            )
        })?;
        let completed = dir.completed()?;
        let mut records = Vec::with_capacity(state.image_rows);
        let exact = state.kind == IndexKind::Exact;
        let dim = dir.manifest.dim;
        let (mut images, mut texts) = (Matrix::new(dim), Matrix::new(dim));
        let mut text_rows = Vec::with_capacity(state.text_rows);
        for n in &state.shards {
            let marker = completed.get(n).ok_or_else(|| {
                Error::format(root, format!("shard {n} is indexed but its marker is gone"))
            })?;
            let shard_records = crate::meta::read_metadata(&dir.metadata_path(*n))?;
            if shard_records.len() != marker.rows {
                return Err(Error::format(
                    dir.metadata_path(*n),
                    format!(
                        "{} rows, the marker says {}",
                        shard_records.len(),
                        marker.rows
                    ),
                ));
            }
            if exact {
                let im = read_npy(&dir.image_path(*n))?;
                let tm = read_npy(&dir.text_path(*n))?;
                if im.rows != marker.rows || tm.rows != marker.rows || im.dim != dim {
                    return Err(Error::format(
                        dir.image_path(*n),
                        "rows or dimension differ from the marker and manifest",
                    ));
                }
                images.data.extend_from_slice(&im.data);
                images.rows += im.rows;
                for (i, r) in shard_records.iter().enumerate() {
                    if r.caption.is_some() {
                        texts.push(tm.row(i));
                    }
                }
            }
            for r in &shard_records {
                if r.caption.is_some() {
                    text_rows.push(records.len());
                }
                records.push(r.clone());
            }
        }
        let side = |rows: Vec<usize>, m: Matrix, base: &str| -> Result<SideIndex> {
            let vectors = if rows.is_empty() {
                Vectors::Empty
            } else if exact {
                Vectors::Exact(m)
            } else {
                let g = generation_dir(&dir, state.generation);
                Vectors::Graph(Box::new(load_graph(&g, base)?))
            };
            Ok(SideIndex { rows, vectors })
        };
        let images = side((0..records.len()).collect(), images, "image")?;
        let texts = side(text_rows, texts, "text")?;
        Ok(SearchIndex {
            dir,
            records,
            images,
            texts,
            state,
        })
    }

    pub fn kind(&self) -> IndexKind {
        self.state.kind
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn record(&self, row: usize) -> &Record {
        &self.records[row]
    }

    /// The `k` nearest rows of `side` to `query`, a vector from the model `model_id`
    /// (refused, naming both, unless it is the index's model and dimension). HNSW
    /// searches with `ef` candidates (at least `k`; `None` for the built parameter).
    pub fn search(
        &self,
        side: Side,
        query: &[f32],
        model_id: &str,
        k: usize,
        ef: Option<usize>,
    ) -> Result<Vec<Hit>> {
        self.dir.check_model(model_id, query.len(), "the query")?;
        let q = crate::job::normalise(model_id, query.to_vec())?;
        let index = match side {
            Side::Images => &self.images,
            Side::Texts => &self.texts,
        };
        let found: Vec<(usize, f32)> = match &index.vectors {
            Vectors::Empty => {
                return Err(Error::Invalid(format!(
                    "the index {} has no {} vectors{}",
                    self.dir.root.display(),
                    side.name(),
                    if side == Side::Texts {
                        " (no sample had a caption)"
                    } else {
                        ""
                    }
                )))
            }
            Vectors::Exact(m) => exact_top_k(m, &q, k),
            Vectors::Graph(g) => {
                let ef = ef.unwrap_or(self.state.params.ef_search).max(k);
                g.search(&q, k, ef)
                    .into_iter()
                    .map(|n| (n.d_id, 1.0 - n.distance))
                    .collect()
            }
        };
        Ok(found
            .into_iter()
            .map(|(pos, score)| {
                let row = index.rows[pos];
                let r = &self.records[row];
                Hit {
                    row,
                    key: r.key.clone(),
                    score,
                    text: r.caption.clone(),
                    path: r.image_path.clone(),
                }
            })
            .collect())
    }
}

/// The `k` best `(row, score)` of `m` for `q` by inner product, best first.
pub fn exact_top_k(m: &Matrix, q: &[f32], k: usize) -> Vec<(usize, f32)> {
    let scores: Vec<f32> = if m.rows >= 4096 {
        m.data.par_chunks(m.dim).map(|r| dot(r, q)).collect()
    } else {
        m.data.chunks(m.dim).map(|r| dot(r, q)).collect()
    };
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    let k = k.min(idx.len());
    let by_score = |a: &usize, b: &usize| scores[*b].total_cmp(&scores[*a]).then(a.cmp(b));
    if k < idx.len() && k > 0 {
        idx.select_nth_unstable_by(k - 1, by_score);
        idx.truncate(k);
    }
    idx.truncate(k);
    idx.sort_by(by_score);
    idx.into_iter().map(|i| (i, scores[i])).collect()
}
