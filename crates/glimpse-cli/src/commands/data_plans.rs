//! `glimpse data plans`: the planner's request/plan corpus and the agent's end-to-end
//! set (see `glimpse_agent::corpus`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::output::{self, outln};

#[derive(Debug, Args)]
pub struct PlansArgs {
    /// Output directory: {train,val,test}.jsonl, tokenizer/, agent-test.jsonl,
    /// images/, manifest.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Requests drawn for train and val (val takes every 20th); the held-out test
    /// split gets a tenth as many (at least 100).
    #[arg(long, default_value_t = 20000)]
    pub count: u64,
    /// Seed; the same seed and count give byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// End-to-end requests in agent-test.jsonl.
    #[arg(long, default_value_t = 80)]
    pub agent_count: usize,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PlansArgs) -> Result<()> {
    if a.count < 20 {
        anyhow::bail!("--count {}: at least 20 requests", a.count);
    }
    let bar = output::progress(5, 1, "plans");
    let m = glimpse_agent::corpus::write_plans(&a.out, a.seed, a.count, a.agent_count, |what| {
        bar.set_message(what.to_string());
        bar.inc(1);
    })
    .with_context(|| format!("writing the plan corpus in {}", a.out.display()))?;
    bar.finish_and_clear();
    if a.json {
        return output::print_json(&m);
    }
    outln!("wrote the plan corpus in {}", a.out.display());
    for (file, n) in &m.files {
        outln!("  {file:<11} {n:>7} requests");
    }
    outln!(
        "  plan shapes: {} in train, {} in test ({} never in train)",
        m.train_shapes,
        m.test_shapes,
        m.test_new_shapes
    );
    outln!(
        "  agent-test.jsonl: {} requests over {} images",
        m.agent_test,
        m.agent_images
    );
    outln!("  tokenizer: {}", a.out.join(&m.tokenizer).display());
    Ok(())
}
