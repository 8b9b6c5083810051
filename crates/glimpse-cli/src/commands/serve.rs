//! `glimpse serve`: validates the flags into a server config and runs the server
//! (crates/glimpse-serve) until SIGTERM or Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use glimpse_serve::{ModelSpec, ServeConfig};

use super::Bundled;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A model to serve: a directory or hub id, optionally `ID=SOURCE` to choose the id
    /// clients name. Repeat for several; by default the bundled CLIP and BLIP models.
    #[arg(long = "model", value_name = "[ID=]DIR")]
    pub models: Vec<String>,
    /// An index (`glimpse index build --out`) for /v1/search and /knn-service; its
    /// embedding model is loaded too when it is not among --model.
    #[arg(long)]
    pub index: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `q8`: 8-bit encoders for every model (and Q8_0 language models); `q4`: 4-bit
    /// language models (BLIP-2 with OPT, LLaVA) only.
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
    /// Require `Authorization: Bearer KEY` on the API routes (also from the
    /// GLIMPSE_API_KEY environment variable).
    #[arg(long, env = "GLIMPSE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Fetch `http(s)` image URLs (public addresses only, with a timeout and a size limit).
    #[arg(long)]
    pub allow_fetch: bool,
    /// Read local image paths (or `file://` URLs) under this directory.
    #[arg(long, value_name = "DIR")]
    pub allow_files: Option<PathBuf>,
    /// Largest request body, in MiB (413 above).
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Largest image file, in MiB.
    #[arg(long, default_value_t = 20)]
    pub max_image_mib: usize,
    /// Requests waiting per model before 429.
    #[arg(long, default_value_t = 128)]
    pub queue: usize,
    /// Most requests (or inputs) one forward pass takes.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Milliseconds a worker waits for more requests before running a batch that is
    /// not full.
    #[arg(long, default_value_t = 2)]
    pub batch_window_ms: u64,
    /// Captions and chat requests that arrive while a batch of theirs decodes wait
    /// for the next batch instead of joining it (see docs/serving.md).
    #[arg(long)]
    pub no_join: bool,
    /// Seconds a client has to send its whole request body (408 after).
    #[arg(long, default_value_t = 30)]
    pub body_timeout_s: u64,
    /// Most new tokens a request may ask for.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Most chat messages per request.
    #[arg(long, default_value_t = 256)]
    pub max_messages: usize,
    /// Training runs (`glimpse train --out`) whose report pages /runs shows.
    #[arg(long = "runs", value_name = "DIR")]
    pub runs: Vec<PathBuf>,
    /// Evaluation reports (`glimpse eval --report`) that /reports shows.
    #[arg(long = "reports", value_name = "DIR")]
    pub reports: Vec<PathBuf>,
}

fn model_specs(args: &ServeArgs) -> Result<Vec<ModelSpec>> {
    if args.models.is_empty() {
        return [
            Bundled::Clip,
            Bundled::Caption,
            Bundled::Retrieval,
            Bundled::Vqa,
        ]
        .into_iter()
        .map(|b| {
            Ok(ModelSpec {
                source: b.path()?,
                id: None,
            })
        })
        .collect();
    }
    args.models
        .iter()
        .map(|m| {
            // `ID=SOURCE`, unless the `=` is part of a path.
            match m.split_once('=') {
                Some((id, source)) if !id.is_empty() && !id.contains('/') && !source.is_empty() => {
                    Ok(ModelSpec {
                        source: source.to_string(),
                        id: Some(id.to_string()),
                    })
                }
                Some(_) => bail!("--model {m:?}: expected DIR or ID=DIR"),
                None => Ok(ModelSpec {
                    source: m.clone(),
                    id: None,
                }),
            }
        })
        .collect()
}

pub fn run(args: ServeArgs) -> Result<()> {
    for (flag, n) in [
        ("--queue", args.queue),
        ("--max-batch", args.max_batch),
        ("--max-tokens", args.max_tokens),
        ("--max-messages", args.max_messages),
        ("--max-body-mib", args.max_body_mib),
        ("--max-image-mib", args.max_image_mib),
    ] {
        if n == 0 {
            bail!("{flag} must be at least 1");
        }
    }
    if let Some(dir) = &args.allow_files {
        if !dir.is_dir() {
            bail!("--allow-files {}: not a directory", dir.display());
        }
    }
    if let Some(dir) = &args.index {
        if !dir.join("manifest.json").is_file() {
            bail!(
                "--index {}: not an index directory (no manifest.json); build one with `glimpse index build`",
                dir.display()
            );
        }
    }
    for dir in &args.runs {
        if !dir.join("log.jsonl").is_file() {
            bail!(
                "--runs {}: not a training run (no log.jsonl)",
                dir.display()
            );
        }
    }
    for dir in &args.reports {
        if !dir.join("index.html").is_file() {
            bail!(
                "--reports {}: not an evaluation report (no index.html)",
                dir.display()
            );
        }
    }
    if args.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
        bail!("--api-key: empty key");
    }
    let mut cfg = ServeConfig::new(SocketAddr::new(args.host, args.port), model_specs(&args)?);
    cfg.index = args.index;
    cfg.device = super::device(&args.device)?;
    cfg.quantize = args.quantize;
    cfg.api_key = args.api_key;
    cfg.images.allow_fetch = args.allow_fetch;
    cfg.images.local_root = args.allow_files;
    cfg.images.max_image_bytes = args.max_image_mib << 20;
    cfg.max_body_bytes = args.max_body_mib << 20;
    cfg.queue_capacity = args.queue;
    cfg.max_batch = args.max_batch;
    cfg.batch_window = Duration::from_millis(args.batch_window_ms);
    cfg.join_batches = !args.no_join;
    cfg.body_timeout = Duration::from_secs(args.body_timeout_s.max(1));
    cfg.max_tokens_limit = args.max_tokens;
    cfg.max_messages = args.max_messages;
    cfg.runs = args.runs;
    cfg.reports = args.reports;
    crate::output::note(format_args!(
        "glimpse serve: http://{} ({} models; /health is 503 until they are loaded)",
        cfg.addr,
        cfg.models.len()
    ));
    glimpse_serve::serve_blocking(cfg).context("glimpse serve")
}
