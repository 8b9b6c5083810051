//! Command-line flags. Raw flags are parsed here and validated into typed requests in
//! the command modules before anything is loaded.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "glimpse",
    version,
    about = "Run CLIP and BLIP vision-language models from Hugging Face checkpoints.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Image and text embeddings (projected, not normalised).
    Embed(EmbedArgs),
    /// Image-text similarity (ITC cosine) and, where the model has one, ITM probability.
    Match(MatchArgs),
    /// Zero-shot classification of an image against text labels.
    Classify(ClassifyArgs),
    /// Caption images (greedy, beam search or nucleus sampling).
    Caption(CaptionArgs),
    /// Answer a question about an image (visual question answering).
    Ask(AskArgs),
    /// Multi-turn chat about an image (LLaVA): interactive on stdin, or scripted with
    /// `--json` reading a JSON list of turns.
    Chat(crate::commands::chat::ChatArgs),
    /// Datasets: generate the synthetic world (`data synth`).
    Data(crate::commands::data::DataArgs),
    /// Time Glimpse against the reference (transformers on PyTorch) on real-size
    /// architectures with random weights.
    Bench(crate::commands::bench::BenchArgs),
    /// Train a model from a recipe (CLIP contrastive, BLIP pretraining), or resume a run.
    Train(crate::commands::train::TrainArgs),
    /// Turn a training checkpoint into Hugging Face model directories.
    Export(crate::commands::train::ExportArgs),
    /// Evaluate a model on a dataset: retrieval recall@K, zero-shot accuracy, caption
    /// BLEU-4/CIDEr-D with attribute accuracy, or VQA accuracy.
    Eval(crate::commands::eval::EvalArgs),
    /// Write a training run (or several, overlaid) as one self-contained HTML page:
    /// losses, learning rate, throughput, validation, resume points, recipe.
    Report(crate::commands::report::ReportArgs),
    /// Embed an image collection into a searchable index (`index build`, `index merge`).
    Index(crate::commands::index::IndexArgs),
    /// Search an index by text or image, optionally re-ranked with an ITM head.
    Search(crate::commands::search::SearchArgs),
    /// Serve the models over HTTP: OpenAI-compatible chat completions and embeddings,
    /// caption/ask/match/classify/search routes, metrics and a web page.
    Serve(crate::commands::serve::ServeArgs),
    /// Load a running `glimpse serve` on this machine with concurrent requests and
    /// report throughput, latency percentiles, statuses and the server's memory.
    Loadtest(crate::commands::loadtest::LoadtestArgs),
    /// Continue text with a text-only language model (OPTForCausalLM,
    /// LlamaForCausalLM), such as an exported `lm` training run.
    Generate(crate::commands::generate::GenerateArgs),
    /// Bootstrap a dataset (BLIP's CapFilt): synthetic captions by nucleus sampling,
    /// web and synthetic texts filtered by ITM; per shard, resumable, `--shard I`.
    Capfilt(crate::commands::capfilt::CapfiltArgs),
    /// Answer a request by planning it into tasks over Glimpse's models and tools
    /// (HuggingGPT's plan, select, execute, answer); `agent plan` stops after the plan.
    Agent(crate::commands::agent::AgentArgs),
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: a local directory in the Hugging Face layout, or a hub id (org/name).
    /// Without it, the bundled model for the command (under `models/`) is used.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Device to run on: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Machine-readable JSON on stdout instead of text for people.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Image file to embed (repeatable).
    #[arg(long = "image", short = 'i')]
    pub images: Vec<PathBuf>,
    /// Text to embed (repeatable).
    #[arg(long = "text", short = 't')]
    pub texts: Vec<String>,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// `q8`: run the towers' linear layers on 8-bit weights and activations (integer
    /// products; VNNI where the CPU has it), faster at a small accuracy cost.
    #[arg(long, value_name = "q8")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
}

#[derive(Debug, Args)]
pub struct MatchArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Image file.
    #[arg(long, short = 'i')]
    pub image: PathBuf,
    /// Candidate text (repeatable).
    #[arg(long = "text", short = 't', required = true)]
    pub texts: Vec<String>,
    /// `q8`: run the towers' linear layers on 8-bit weights and activations (integer
    /// products; VNNI where the CPU has it), faster at a small accuracy cost.
    #[arg(long, value_name = "q8")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Image file.
    #[arg(long, short = 'i')]
    pub image: PathBuf,
    /// Comma-separated class labels.
    #[arg(long, value_delimiter = ',', required = true)]
    pub labels: Vec<String>,
    /// Prompt template; `{}` is replaced by each label.
    #[arg(long, default_value = "a photo of a {}.")]
    pub template: String,
    /// `q8`: run the towers' linear layers on 8-bit weights and activations (integer
    /// products; VNNI where the CPU has it), faster at a small accuracy cost.
    #[arg(long, value_name = "q8")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
}

#[derive(Debug, Args, Clone)]
pub struct DecodeArgs {
    /// Maximum number of generated tokens.
    #[arg(long, default_value_t = 30)]
    pub max_new_tokens: usize,
    /// Minimum number of generated tokens before the end token is allowed.
    #[arg(long, default_value_t = 0)]
    pub min_new_tokens: usize,
    /// Beam search with K beams (1 = greedy).
    #[arg(long, default_value_t = 1, conflicts_with_all = ["top_p", "top_k", "temperature"])]
    pub beams: usize,
    /// Length penalty for beam search (exponent on the length).
    #[arg(long, default_value_t = 1.0)]
    pub length_penalty: f64,
    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sampling: keep the K most likely tokens.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sampling temperature.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Seed for sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Penalise tokens already present (1.0 = off). Default: the model's
    /// `generation_config.json`, else 1.0.
    #[arg(long)]
    pub repetition_penalty: Option<f64>,
    /// Never repeat an n-gram of this size (0 = off). Default: the model's
    /// `generation_config.json`, else 0.
    #[arg(long)]
    pub no_repeat_ngram_size: Option<usize>,
    /// `START,FACTOR`: past START generated tokens, the end token's score grows by
    /// FACTOR per token (the reference's `exponential_decay_length_penalty`); `off`
    /// for none. Default: the model's `generation_config.json`, else off.
    #[arg(long, value_name = "START,FACTOR|off")]
    pub length_decay: Option<String>,
}

#[derive(Debug, Args)]
pub struct CaptionArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Image file (repeatable).
    #[arg(long = "image", short = 'i', required = true)]
    pub images: Vec<PathBuf>,
    /// Text the caption must start with (conditional captioning).
    #[arg(long)]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Images per batch.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Quantise after loading, for less memory and faster inference at a small
    /// accuracy cost. `q8`: the towers' (and BLIP's text decoder's) linear layers on
    /// 8-bit weights and activations, and a BLIP-2 (OPT) or LLaVA language model in
    /// `Q8_0`; `q4`: the language model in 4 bits (BLIP-2 with OPT and LLaVA only).
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Image file.
    #[arg(long, short = 'i')]
    pub image: PathBuf,
    /// The question.
    #[arg(long, short = 'q')]
    pub question: String,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Quantise after loading, for less memory and faster inference at a small
    /// accuracy cost. `q8`: the towers' (and BLIP's text decoder's) linear layers on
    /// 8-bit weights and activations, and a BLIP-2 (OPT) or LLaVA language model in
    /// `Q8_0`; `q4`: the language model in 4 bits (BLIP-2 with OPT and LLaVA only).
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
}
