//! `glimpse index build` and `glimpse index merge`: embed a collection shard by shard
//! into an index directory, then build its search index.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use glimpse_index::data::resolve_shards;
use glimpse_index::search::BuildReport;
use glimpse_index::{
    build_search, embed_shard, AnnParams, IndexDir, IndexKind, JobOptions, Manifest,
};
use serde::Serialize;

use super::index_model::PipelineEmbedder;
use crate::cli::ModelArgs;
use crate::output::{self, outln, print_json};

#[derive(Debug, Args)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub command: IndexCommand,
}

#[derive(Debug, Subcommand)]
pub enum IndexCommand {
    /// Embed a collection (WebDataset shards, JSONL, or a folder of images) into
    /// IDX: `.npy` vectors and Parquet metadata per shard, then the search index.
    /// Resumes after a kill; `--shard I` embeds one shard and builds no index.
    Build(BuildArgs),
    /// Append the shards of other index directories (same model) to `--out`, then
    /// extend its search index.
    Merge(MergeArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// Exact below 20,000 rows, HNSW above (or the kind the index already has).
    Auto,
    Exact,
    Hnsw,
}

#[derive(Debug, Args)]
pub struct SearchIndexArgs {
    /// Search index kind.
    #[arg(long, value_enum, default_value_t = KindArg::Auto)]
    pub kind: KindArg,
    /// HNSW: neighbours per node.
    #[arg(long, default_value_t = AnnParams::default().m)]
    pub hnsw_m: usize,
    /// HNSW: candidate list while building.
    #[arg(long, default_value_t = AnnParams::default().ef_construction)]
    pub ef_construction: usize,
    /// HNSW: default candidate list while searching.
    #[arg(long, default_value_t = AnnParams::default().ef_search)]
    pub ef_search: usize,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// The collection: a folder or glob of `.tar` shards, a `.jsonl` file, or a folder
    /// of images.
    #[arg(long)]
    pub data: String,
    /// The index directory (created, or resumed).
    #[arg(long)]
    pub out: PathBuf,
    /// Embed only shard I (0-based) and build no search index.
    #[arg(long)]
    pub shard: Option<usize>,
    /// Images per shard for a folder of images.
    #[arg(long, default_value_t = 10_000)]
    pub shard_size: usize,
    /// Images per model call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Threads that decode and preprocess images while the model runs.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// `q8`: embed with 8-bit encoders (integer products; see `glimpse embed
    /// --quantize`). The index records it, and `search` embeds its queries the same way.
    #[arg(long, value_name = "q8")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
    #[command(flatten)]
    pub search: SearchIndexArgs,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The index to extend (created when missing, from the first part's manifest).
    #[arg(long)]
    pub out: PathBuf,
    /// Index directories whose completed shards are appended, in order.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
    #[command(flatten)]
    pub search: SearchIndexArgs,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl SearchIndexArgs {
    fn kind(&self) -> Option<IndexKind> {
        match self.kind {
            KindArg::Auto => None,
            KindArg::Exact => Some(IndexKind::Exact),
            KindArg::Hnsw => Some(IndexKind::Hnsw),
        }
    }

    fn params(&self) -> Result<AnnParams> {
        if self.hnsw_m == 0 || self.hnsw_m > 256 {
            bail!("--hnsw-m must be in 1..=256, got {}", self.hnsw_m);
        }
        if self.ef_construction == 0 || self.ef_search == 0 {
            bail!("--ef-construction and --ef-search must be at least 1");
        }
        Ok(AnnParams {
            m: self.hnsw_m,
            ef_construction: self.ef_construction,
            ef_search: self.ef_search,
        })
    }
}

#[derive(Serialize)]
struct BuildOutput {
    index: PathBuf,
    model_id: String,
    shards: usize,
    /// Shards this run embedded (the others were complete already, or not asked for).
    embedded: Vec<usize>,
    rows: usize,
    skipped: Vec<String>,
    search: Option<BuildReport>,
}

pub fn run(args: IndexArgs) -> Result<()> {
    match args.command {
        IndexCommand::Build(a) => run_build(a),
        IndexCommand::Merge(a) => run_merge(a),
    }
}

fn run_build(a: BuildArgs) -> Result<()> {
    super::check_batch_size(a.batch_size)?;
    if a.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let params = a.search.params()?;
    let shards =
        resolve_shards(&a.data, a.shard_size).with_context(|| format!("--data {}", a.data))?;
    if let Some(i) = a.shard {
        if i >= shards.len() {
            bail!(
                "--shard {i}: the data has {} shard(s), numbered from 0",
                shards.len()
            );
        }
    }
    let embedder = PipelineEmbedder::load(&a.common, a.quantize)?;
    let dir = IndexDir::create_or_open(
        &a.out,
        Manifest {
            format: glimpse_index::layout::FORMAT.into(),
            model_id: glimpse_index::Embedder::model_id(&embedder).to_string(),
            model: embedder.model.clone(),
            dim: glimpse_index::Embedder::dim(&embedder),
        },
    )?;
    let opts = JobOptions {
        batch_size: a.batch_size,
        workers: a.workers,
    };
    let todo: Vec<_> = shards
        .iter()
        .filter(|s| a.shard.is_none_or(|i| i == s.index))
        .collect();
    let mut embedded = Vec::new();
    let mut rows = 0;
    let mut skipped = Vec::new();
    let bar = output::samples_progress(todo.len());
    for (n, shard) in todo.iter().enumerate() {
        bar.set_message(format!("shard {}/{}", n + 1, todo.len()));
        let done_before = dir.marker(shard.index)?.is_some();
        let marker = embed_shard(&embedder, &dir, shard, &opts, &bar)
            .with_context(|| format!("shard {} ({})", shard.index, shard.name()))?;
        if !done_before {
            embedded.push(shard.index);
        }
        rows += marker.rows;
        skipped.extend(marker.skipped);
    }
    bar.finish_and_clear();
    let search = match a.shard {
        Some(_) => None,
        None => Some(build_search(&dir, a.search.kind(), params)?),
    };
    let out = BuildOutput {
        index: a.out.clone(),
        model_id: dir.manifest.model_id.clone(),
        shards: shards.len(),
        embedded,
        rows,
        skipped,
        search,
    };
    if a.common.json {
        return print_json(&out);
    }
    outln!(
        "{}: {} shard(s), {} embedded now, {} rows, model {}",
        out.index.display(),
        out.shards,
        out.embedded.len(),
        out.rows,
        out.model_id
    );
    for s in &out.skipped {
        outln!("skipped: {s}");
    }
    if let Some(r) = &out.search {
        outln!(
            "search index: {:?}, {} image rows, {} text rows ({} added, {:.1}s)",
            r.kind,
            r.image_rows,
            r.text_rows,
            r.added_rows,
            r.seconds
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct MergeOutput {
    index: PathBuf,
    added_shards: Vec<usize>,
    search: BuildReport,
}

fn run_merge(a: MergeArgs) -> Result<()> {
    let params = a.search.params()?;
    let first = IndexDir::open(&a.parts[0])?;
    let dir = IndexDir::create_or_open(&a.out, first.manifest.clone())?;
    let mut added = Vec::new();
    for part in &a.parts {
        if part == &a.out {
            bail!("{}: an index cannot be merged into itself", part.display());
        }
        added.extend(dir.extend_from(part)?);
    }
    let search = build_search(&dir, a.search.kind(), params)?;
    let out = MergeOutput {
        index: a.out,
        added_shards: added,
        search,
    };
    if a.json {
        return print_json(&out);
    }
    outln!(
        "{}: {} shard(s) added; search index {:?} over {} image rows ({})",
        out.index.display(),
        out.added_shards.len(),
        out.search.kind,
        out.search.image_rows,
        if out.search.extended {
            "extended"
        } else {
            "rebuilt"
        }
    );
    Ok(())
}
