//! `glimpse capfilt`: bootstrap a dataset with a captioner and an ITM filter (BLIP's
//! CapFilt), shard by shard; see glimpse-capfilt.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use glimpse_capfilt::options as blip;
use glimpse_capfilt::{
    resolve_inputs, run_shard, settings, CapfiltOptions, Decoding, OutputDir, PipelineCaptioner,
    PipelineFilter, ShardReport,
};
use glimpse_nn::quant::Quant;
use serde::Serialize;

use super::index_model::{model_id, Q8_SUFFIX};
use super::{load_quantized, Bundled};
use crate::cli::ModelArgs;
use crate::output::{self, outln, print_json};

#[derive(Debug, Args)]
pub struct CapfiltArgs {
    /// The noisy data: a folder or glob of WebDataset `.tar` shards, a `.jsonl` file,
    /// or a COCO captions `.json`. Each is one shard.
    #[arg(long)]
    pub data: String,
    /// Captioning model directory (default: the bundled
    /// models/capfilt-synth/captioner, fine-tuned for CapFilt).
    #[arg(long)]
    pub captioner: Option<String>,
    /// Filter model directory, with an ITM head (default: the bundled
    /// models/capfilt-synth/filter, fine-tuned for CapFilt).
    #[arg(long)]
    pub filter: Option<String>,
    /// Output directory: bootstrapped shards, markers, manifest (created, or resumed).
    #[arg(long)]
    pub out: PathBuf,
    /// Process only input shard I (0-based) and write no manifest.
    #[arg(long)]
    pub shard: Option<usize>,
    /// Nucleus sampling threshold (BLIP: 0.9).
    #[arg(long, conflicts_with = "beams")]
    pub top_p: Option<f32>,
    /// Beam search with N beams instead of nucleus sampling (BLIP's ablation uses 3).
    #[arg(long)]
    pub beams: Option<usize>,
    /// Text every synthetic caption continues (not written with it); "" for none.
    #[arg(long, default_value = blip::BLIP_PROMPT)]
    pub prompt: String,
    /// Shortest caption in tokens, start token and prompt included (BLIP: 10).
    #[arg(long, default_value_t = blip::BLIP_MIN_LENGTH)]
    pub min_length: usize,
    /// Longest caption in tokens, start token and prompt included (BLIP: 30).
    #[arg(long, default_value_t = blip::BLIP_MAX_LENGTH)]
    pub max_length: usize,
    /// Repetition penalty (BLIP: 1.1 when sampling, 1.0 with beams).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Synthetic captions per image.
    #[arg(long, default_value_t = 1)]
    pub captions_per_image: usize,
    /// A text (web or synthetic) is kept when its ITM match probability reaches this.
    #[arg(long, default_value_t = blip::BLIP_THRESHOLD)]
    pub threshold: f32,
    /// Images per captioner call.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// `q8`: both models' linear layers on 8-bit weights and activations.
    #[arg(long, value_name = "q8")]
    pub quantize: Option<Quant>,
    /// Device to run on: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl CapfiltArgs {
    fn options(&self) -> Result<CapfiltOptions> {
        let base = match self.beams {
            Some(beams) => CapfiltOptions::beam(beams),
            None => CapfiltOptions {
                decoding: Decoding::Nucleus {
                    top_p: self.top_p.unwrap_or(blip::BLIP_TOP_P),
                },
                ..CapfiltOptions::default()
            },
        };
        let opts = CapfiltOptions {
            prompt: self.prompt.trim().to_string(),
            min_length: self.min_length,
            max_length: self.max_length,
            repetition_penalty: self.repetition_penalty.unwrap_or(base.repetition_penalty),
            captions_per_image: self.captions_per_image,
            threshold: self.threshold,
            batch_size: self.batch_size,
            seed: self.seed,
            ..base
        };
        opts.validate()?;
        Ok(opts)
    }
}

#[derive(Serialize)]
struct CapfiltOutput {
    out: PathBuf,
    shards: usize,
    /// Shards this run processed (the others were complete already, or not asked for).
    processed: Vec<usize>,
    reports: Vec<ShardReport>,
    manifest: Option<glimpse_capfilt::Manifest>,
}

/// Loads one of the two models, named by `flag`, and its id for the settings.
fn load_model(
    a: &CapfiltArgs,
    flag: &str,
    given: &Option<String>,
    bundled: Bundled,
) -> Result<(glimpse_models::pipeline::Pipeline, String)> {
    let margs = ModelArgs {
        model: given.clone(),
        device: a.device.clone(),
        json: a.json,
    };
    let name = super::model_name(&margs, bundled)?;
    glimpse_models::checkpoint::ModelFiles::resolve(&name).with_context(|| flag.to_string())?;
    let mut id = model_id(&name).with_context(|| format!("{flag} {name}"))?;
    if a.quantize.is_some() {
        id.push_str(Q8_SUFFIX);
    }
    let pipeline =
        load_quantized(&margs, bundled, a.quantize).with_context(|| format!("{flag} {name}"))?;
    Ok((pipeline, id))
}

pub fn run(a: CapfiltArgs) -> Result<()> {
    if a.quantize == Some(Quant::Q4) {
        bail!("--quantize q4: CapFilt's models are encoders and BLIP decoders; use q8");
    }
    let opts = a.options()?;
    let inputs = resolve_inputs(&a.data).with_context(|| format!("--data {}", a.data))?;
    if let Some(i) = a.shard {
        if i >= inputs.len() {
            bail!(
                "--shard {i}: the data has {} shard(s), numbered from 0",
                inputs.len()
            );
        }
    }
    let (pipeline, id) = load_model(&a, "--captioner", &a.captioner, Bundled::CapfiltCaptioner)?;
    let captioner = PipelineCaptioner::new(pipeline, id, &opts).context("--captioner")?;
    let (pipeline, id) = load_model(&a, "--filter", &a.filter, Bundled::CapfiltFilter)?;
    let filter = PipelineFilter::new(pipeline, id).context("--filter")?;
    let out = OutputDir::create_or_open(&a.out, settings(&captioner, &filter, &opts, &inputs))?;

    let todo: Vec<_> = inputs
        .iter()
        .filter(|s| a.shard.is_none_or(|i| i == s.index))
        .collect();
    let bar = output::samples_progress(todo.len());
    let mut processed = Vec::new();
    let mut reports = Vec::new();
    for (n, shard) in todo.iter().enumerate() {
        bar.set_message(format!("capfilt shard {}/{}", n + 1, todo.len()));
        let outcome = run_shard(&out, shard, &captioner, &filter, &opts, &mut |k| bar.inc(k))
            .with_context(|| format!("shard {} ({})", shard.index, shard.source))?;
        if !outcome.already_done {
            processed.push(shard.index);
        }
        reports.push(outcome.report);
    }
    bar.finish_and_clear();
    let manifest = match a.shard {
        Some(_) => None,
        None => Some(out.write_manifest(inputs.len())?),
    };
    let result = CapfiltOutput {
        out: a.out.clone(),
        shards: inputs.len(),
        processed,
        reports,
        manifest,
    };
    if a.json {
        return print_json(&result);
    }
    for r in &result.reports {
        outln!(
            "shard {} ({}): {} samples, web kept {} removed {}, synthetic kept {} removed {}, \
             {} skipped",
            r.shard,
            r.source,
            r.samples,
            r.web.kept,
            r.web.removed,
            r.synthetic.kept,
            r.synthetic.removed,
            r.skipped.len()
        );
    }
    let skipped = match &result.manifest {
        Some(m) => {
            outln!(
                "{}: {} shard(s), {} processed now; {} samples; web kept {} removed {} \
                 (no web text: {}); synthetic kept {} removed {}; {} skipped",
                result.out.display(),
                m.shards,
                result.processed.len(),
                m.samples,
                m.web.kept,
                m.web.removed,
                m.web_missing,
                m.synthetic.kept,
                m.synthetic.removed,
                m.skipped.len()
            );
            &m.skipped
        }
        None => &result.reports[0].skipped,
    };
    for s in skipped {
        outln!(
            "skipped: shard {} sample {}: {}",
            s.shard,
            s.key.as_deref().unwrap_or("-"),
            s.reason
        );
    }
    Ok(())
}
