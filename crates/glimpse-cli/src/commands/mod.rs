//! One function per subcommand: validate flags, call the pipeline, print.

pub mod agent;
pub mod bench;
pub mod capfilt;
mod caption;
pub mod chat;
mod classify;
pub mod data;
pub mod data_plans;
mod embed;
pub mod eval;
pub mod eval_capfilt;
pub mod eval_plan;
pub mod generate;
pub mod index;
mod index_model;
pub mod loadtest;
mod matching;
pub mod report;
pub mod search;
pub mod serve;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use glimpse_models::checkpoint::{plan_load, ModelFiles};
use glimpse_models::pipeline::{detect_architecture, Architecture, Pipeline};
use glimpse_nn::quant::Quant;
use image::RgbImage;

use crate::cli::{Cli, Command, ModelArgs};

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Embed(args) => embed::run(args),
        Command::Match(args) => matching::run(args),
        Command::Classify(args) => classify::run(args),
        Command::Caption(args) => caption::run_caption(args),
        Command::Ask(args) => caption::run_ask(args),
        Command::Bench(args) => bench::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Data(args) => data::run(args),
        Command::Train(args) => train::run_train(args),
        Command::Export(args) => train::run_export(args),
        Command::Eval(args) => eval::run(args),
        Command::Report(args) => report::run(args),
        Command::Index(args) => index::run(args),
        Command::Search(args) => search::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Capfilt(args) => capfilt::run(args),
        Command::Agent(args) => agent::run(args),
    }
}

/// Parses `--device`.
pub fn device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse::<usize>()
                    .with_context(|| format!("--device {s:?}: bad GPU index"))?,
                None => 0,
            };
            if !candle_core::utils::cuda_is_available() {
                bail!("--device {s:?}: this build of glimpse has no CUDA support (build with `--features cuda`)");
            }
            Device::new_cuda(ordinal).with_context(|| format!("--device {s:?}"))
        }
        other => bail!("--device {other:?}: expected `cpu`, `cuda` or `cuda:N`"),
    }
}

/// The small models trained by Glimpse on the synthetic world and committed under
/// `models/` (see README, "The bundled models"): what a command uses without `--model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bundled {
    /// `models/clip-synth`: embed, classify.
    Clip,
    /// `models/blip-synth/caption`: caption.
    Caption,
    /// `models/blip-synth/retrieval`: match (ITC and ITM).
    Retrieval,
    /// `models/blip-synth/vqa`: ask.
    Vqa,
    /// `models/capfilt-synth/captioner`: CapFilt's captioner (fine-tuned with the
    /// prompt "a picture of ").
    CapfiltCaptioner,
    /// `models/capfilt-synth/filter`: CapFilt's filter (ITC + ITM fine-tuned).
    CapfiltFilter,
}

impl Bundled {
    pub fn relative_path(self) -> &'static str {
        match self {
            Bundled::Clip => "models/clip-synth",
            Bundled::Caption => "models/blip-synth/caption",
            Bundled::Retrieval => "models/blip-synth/retrieval",
            Bundled::Vqa => "models/blip-synth/vqa",
            Bundled::CapfiltCaptioner => "models/capfilt-synth/captioner",
            Bundled::CapfiltFilter => "models/capfilt-synth/filter",
        }
    }

    /// The directory: under the current directory, else in the source tree this binary
    /// was built from.
    pub fn path(self) -> Result<String> {
        let rel = self.relative_path();
        let local = Path::new(rel);
        if local.join("config.json").is_file() {
            return Ok(rel.to_string());
        }
        let built = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel);
        if built.join("config.json").is_file() {
            return Ok(built.display().to_string());
        }
        bail!(
            "no --model given, and the bundled model {rel} is not there (neither under the \
             current directory nor in {}); pass --model DIR",
            built.display()
        )
    }
}

/// `--model`, or the bundled model of the command.
pub fn model_name(args: &ModelArgs, default: Bundled) -> Result<String> {
    match &args.model {
        Some(m) => Ok(m.clone()),
        None => default.path(),
    }
}

/// Loads the model named by `--model` (or the bundled `default`) on `--device`, after
/// printing (on stderr) what it will take and refusing when it cannot fit in memory.
pub fn load(args: &ModelArgs, default: Bundled) -> Result<Pipeline> {
    let device = device(&args.device)?;
    let model = model_name(args, default)?;
    let context = || format!("loading model `{model}`");
    let files = ModelFiles::resolve(&model).with_context(context)?;
    let plan = plan_load(&files, &device).with_context(context)?;
    crate::output::note(&plan);
    plan.check().with_context(context)?;
    Pipeline::load(&model, &device).with_context(context)
}

/// [`load`], then `--quantize` when given: `q8` rounds the encoders' linear layers to
/// 8 bits, and quantises a BLIP-2 (OPT) or LLaVA language model in `Q8_0`; `q4` is for
/// those language models only, which is checked from the config before any weight is
/// read. The reports go to stderr.
pub fn load_quantized(
    args: &ModelArgs,
    default: Bundled,
    quant: Option<Quant>,
) -> Result<Pipeline> {
    let Some(quant) = quant else {
        return load(args, default);
    };
    let model = model_name(args, default)?;
    let files = ModelFiles::resolve(&model).with_context(|| format!("loading model `{model}`"))?;
    let arch = detect_architecture(&files).with_context(|| format!("loading model `{model}`"))?;
    let language_model = matches!(arch, Architecture::Blip2Generation | Architecture::Llava);
    if quant == Quant::Q4 && !language_model {
        bail!(
            "--quantize q4: `{model}` is a {}; 4-bit weights are for the language models of \
             Blip2ForConditionalGeneration (with OPT) and LlavaForConditionalGeneration \
             models (encoders take q8)",
            arch.class_name()
        );
    }
    let mut pipeline = load(args, default)?;
    if language_model {
        let report = pipeline
            .quantize_language_model(quant)
            .with_context(|| format!("--quantize {quant}"))?;
        crate::output::note(&report);
    }
    if quant == Quant::Q8 {
        let report = pipeline
            .quantize_encoders()
            .with_context(|| format!("--quantize {quant}"))?;
        crate::output::note(format!("q8 encoders: {report}"));
    }
    Ok(pipeline)
}

/// Refuses NaN or infinite results (`what`) of the model `--model` (or `default`) names.
pub fn check_finite<'a>(
    args: &ModelArgs,
    default: Bundled,
    what: &str,
    values: impl IntoIterator<Item = &'a f32>,
) -> Result<()> {
    let model = model_name(args, default)?;
    Ok(glimpse_models::finite::check_finite(&model, what, values)?)
}

/// Reads and decodes image files; the error names the file.
pub fn read_images(paths: &[PathBuf]) -> Result<Vec<RgbImage>> {
    paths.iter().map(|p| read_image(p)).collect()
}

pub fn read_image(path: &Path) -> Result<RgbImage> {
    Ok(glimpse_data::load_image(path)?)
}

/// Refuses, naming the file, images that the model's preprocessing cannot take (a
/// resize to an enormous size), before any of them is processed.
pub fn check_images<P: AsRef<Path>>(
    pipeline: &Pipeline,
    paths: &[P],
    images: &[RgbImage],
) -> Result<()> {
    for (path, image) in paths.iter().zip(images) {
        pipeline
            .processor()
            .check_size(image.width() as usize, image.height() as usize)
            .with_context(|| format!("{}", path.as_ref().display()))?;
    }
    Ok(())
}

/// Rejects empty or blank texts before any work, naming which one.
pub fn check_texts(texts: &[String], flag: &str) -> Result<()> {
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            bail!("{flag} #{}: empty text", i + 1);
        }
    }
    Ok(())
}

pub fn check_batch_size(n: usize) -> Result<()> {
    if n == 0 {
        bail!("--batch-size must be at least 1");
    }
    Ok(())
}

impl crate::cli::DecodeArgs {
    /// Validates decoding flags into a generation config; the model's end and pad ids
    /// are filled in after loading.
    pub fn generation_config(&self) -> Result<glimpse_generate::GenerationConfig> {
        if self.max_new_tokens == 0 {
            bail!("--max-new-tokens must be at least 1");
        }
        if self.min_new_tokens > self.max_new_tokens {
            bail!(
                "--min-new-tokens ({}) exceeds --max-new-tokens ({})",
                self.min_new_tokens,
                self.max_new_tokens
            );
        }
        if self.beams == 0 {
            bail!("--beams must be at least 1");
        }
        let sample = self.top_p.is_some() || self.top_k.is_some() || self.temperature.is_some();
        let cfg = glimpse_generate::GenerationConfig {
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            num_beams: self.beams,
            length_penalty: self.length_penalty as f32,
            do_sample: sample,
            temperature: self.temperature.unwrap_or(1.0) as f32,
            top_k: self.top_k.unwrap_or(0),
            top_p: self.top_p.unwrap_or(1.0) as f32,
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0) as f32,
            no_repeat_ngram_size: self.no_repeat_ngram_size.unwrap_or(0),
            length_decay: self.length_decay()?.flatten(),
            seed: self.seed,
            ..glimpse_generate::GenerationConfig::default()
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// `--length-decay`: `None` when not given, `Some(None)` for `off`.
    fn length_decay(&self) -> Result<Option<Option<(usize, f32)>>> {
        let Some(text) = self.length_decay.as_deref() else {
            return Ok(None);
        };
        if text.trim() == "off" {
            return Ok(Some(None));
        }
        let parsed = text.split_once(',').and_then(|(s, f)| {
            Some((
                s.trim().parse::<usize>().ok()?,
                f.trim().parse::<f32>().ok()?,
            ))
        });
        match parsed {
            Some((start, factor)) if factor.is_finite() && factor >= 1.0 => {
                Ok(Some(Some((start, factor))))
            }
            _ => bail!(
                "--length-decay {text:?}: give START,FACTOR with FACTOR >= 1 (e.g. 16,1.5), or off"
            ),
        }
    }

    /// `gen` (after the model's defaults) with the settings given on the command line,
    /// which win over what the model's `generation_config.json` recommends, neutral
    /// values included (`--no-repeat-ngram-size 0` turns the model's off).
    pub fn explicit(
        &self,
        mut gen: glimpse_generate::GenerationConfig,
    ) -> glimpse_generate::GenerationConfig {
        if let Some(rp) = self.repetition_penalty {
            gen.repetition_penalty = rp as f32;
        }
        if let Some(n) = self.no_repeat_ngram_size {
            gen.no_repeat_ngram_size = n;
        }
        if let Ok(Some(decay)) = self.length_decay() {
            gen.length_decay = decay;
        }
        gen
    }
}
