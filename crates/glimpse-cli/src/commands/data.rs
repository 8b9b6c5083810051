//! `glimpse data`: dataset tools. `glimpse data synth` writes the synthetic world as
//! WebDataset shards; `glimpse data corpus` writes its text as JSONL documents for
//! language models.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use glimpse_synth::{self as synth, Split, SynthConfig};

use crate::output::{self, outln};

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Generate the synthetic world (images of shapes with captions, attribute
    /// records and question/answer pairs) as WebDataset tar shards with
    /// train/val/test splits. Deterministic; rerun with the same arguments to resume.
    Synth(SynthArgs),
    /// Write the synthetic world's text (captions, question/answer pairs, instructions,
    /// dialogue) as JSONL documents for language-model training, split by scene as
    /// `data synth` splits its images. Deterministic from the seed.
    Corpus(CorpusArgs),
    /// Write the planner's corpus: requests over the synthetic world with their plans
    /// (train/val/test JSONL for the `lm` recipe, the test split held out by phrasing
    /// and plan shape), the planner tokenizer, and the end-to-end set
    /// `agent-test.jsonl` with its rendered images. Deterministic from the seed.
    Plans(super::data_plans::PlansArgs),
}

#[derive(Debug, Args)]
pub struct CorpusArgs {
    /// Output directory (DIR/{train,val,test}.jsonl and DIR/manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of scenes, all splits together.
    #[arg(long)]
    pub count: u64,
    /// Seed; the same seed as `data synth` gives the text of the same scenes, split the
    /// same way.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Expected share of the validation split.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Expected share of the test split.
    #[arg(long, default_value_t = 0.05)]
    pub test_fraction: f64,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output directory (DIR/{train,val,test}/shard-NNNNNN.tar and DIR/manifest.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of samples, all splits together.
    #[arg(long)]
    pub count: u64,
    /// Seed; the same seed and arguments give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Share of samples whose training caption is corrupted like web alt-text
    /// (wrong colour/shape/count, unrelated text, truncation), in [0, 1].
    #[arg(long, default_value_t = 0.0)]
    pub noise: f64,
    /// Image side in pixels (at least 16). The default, 72, makes each of the 3x3 grid
    /// cells 24 px: three 8 px patches.
    #[arg(long, default_value_t = 72)]
    pub image_size: u32,
    /// How far objects may move from their cell's centre, as a share of the free room
    /// in the cell, in [0, 1]; 0 centres every object in its cell.
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f64,
    /// Samples per shard.
    #[arg(long, default_value_t = 1000)]
    pub shard_size: u64,
    /// Expected share of the validation split.
    #[arg(long, default_value_t = 0.05)]
    pub val_fraction: f64,
    /// Expected share of the test split.
    #[arg(long, default_value_t = 0.05)]
    pub test_fraction: f64,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: DataArgs) -> Result<()> {
    match args.command {
        DataCommand::Synth(a) => run_synth(a),
        DataCommand::Corpus(a) => run_corpus(a),
        DataCommand::Plans(a) => super::data_plans::run(a),
    }
}

fn run_corpus(a: CorpusArgs) -> Result<()> {
    let cfg = SynthConfig {
        seed: a.seed,
        count: a.count,
        val_fraction: a.val_fraction,
        test_fraction: a.test_fraction,
        ..SynthConfig::default()
    };
    cfg.validate()?;
    let bar = output::progress(cfg.count as usize, 1000, "corpus");
    let m = glimpse_train::corpus::write_world_corpus(&a.out, &cfg, |done| bar.set_position(done))
        .with_context(|| format!("writing the text corpus in {}", a.out.display()))?;
    bar.finish_and_clear();
    if a.json {
        return output::print_json(&m);
    }
    outln!(
        "wrote the text of {} scene(s) in {}",
        m.scenes,
        a.out.display()
    );
    for f in &m.files {
        let path = a.out.join(&f.file);
        outln!(
            "  {:<5} {:>8} documents  {}",
            f.split,
            f.documents,
            path.display()
        );
    }
    let kinds: Vec<String> = m.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    outln!("  kinds: {}", kinds.join(", "));
    Ok(())
}

fn run_synth(a: SynthArgs) -> Result<()> {
    let cfg = SynthConfig {
        seed: a.seed,
        count: a.count,
        noise: a.noise,
        image_size: a.image_size,
        jitter: a.jitter,
        shard_size: a.shard_size,
        val_fraction: a.val_fraction,
        test_fraction: a.test_fraction,
    };
    cfg.validate()?;
    let bar = output::progress(cfg.count as usize, 1000, "synth");
    let report = synth::generate(&cfg, &a.out, |done, _| bar.set_position(done))
        .with_context(|| format!("generating the synthetic world in {}", a.out.display()))?;
    bar.finish_and_clear();
    let m = &report.manifest;
    if a.json {
        return output::print_json(m);
    }
    outln!(
        "wrote {} shard(s), kept {} existing, in {}",
        report.shards_written,
        report.shards_skipped,
        a.out.display()
    );
    for s in Split::ALL {
        let p = m.split(s);
        outln!(
            "  {:<5} {:>8} samples {:>6} corrupted {:>4} shard(s)",
            s.as_str(),
            p.samples,
            p.corrupted,
            p.shards.len()
        );
    }
    outln!("  manifest: {}", a.out.join("manifest.json").display());
    Ok(())
}
