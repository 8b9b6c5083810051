//! `glimpse loadtest`: concurrent requests against a running `glimpse serve` on this
//! machine (loopback only), with throughput, latency percentiles, status codes and the
//! server's resident memory (see crates/glimpse-serve/src/loadtest.rs).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use glimpse_serve::loadtest::{self, LoadOptions, Workload};

use crate::output::{note, outln, print_json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Route {
    /// `/v1/embeddings`, one image per request.
    EmbedImage,
    /// `/v1/embeddings`, one text per request.
    EmbedText,
    /// `/v1/caption`, one image per request.
    Caption,
    /// `/v1/chat/completions` with one image and a question.
    Chat,
}

#[derive(Debug, Args)]
pub struct LoadtestArgs {
    /// The server (a loopback address).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[arg(long, value_enum)]
    pub route: Route,
    /// The image the image routes send.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// The text of `embed-text`, the question of `chat`.
    #[arg(long, default_value = "what colour is the circle?")]
    pub text: String,
    /// The model requests name (the server's default for the route otherwise).
    #[arg(long)]
    pub model: Option<String>,
    /// Clients sending at the same time.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Stop after this many requests ...
    #[arg(long, default_value_t = 1000)]
    pub requests: usize,
    /// ... or after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// New tokens per caption.
    #[arg(long, default_value_t = 30)]
    pub max_tokens: usize,
    /// The server's process id, to sample its resident memory.
    #[arg(long)]
    pub rss_pid: Option<u32>,
    #[arg(long, env = "GLIMPSE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: LoadtestArgs) -> Result<()> {
    if !(args.seconds > 0.0 && args.seconds <= 3600.0) {
        bail!("--seconds {}: give 0 < seconds <= 3600", args.seconds);
    }
    let image = || -> Result<Vec<u8>> {
        let path = args
            .image
            .as_ref()
            .context("--image is needed for this route")?;
        let bytes = std::fs::read(path).with_context(|| format!("--image {}", path.display()))?;
        glimpse_data::decode_image(&bytes, &path.display().to_string())?;
        Ok(bytes)
    };
    let workload = match args.route {
        Route::EmbedImage => Workload::EmbedImage {
            model: args.model.clone(),
            image: image()?,
        },
        Route::EmbedText => Workload::EmbedText {
            model: args.model.clone(),
            text: args.text.clone(),
        },
        Route::Caption => Workload::Caption {
            model: args.model.clone(),
            image: image()?,
            max_tokens: args.max_tokens,
        },
        Route::Chat => Workload::Chat {
            model: args.model.clone(),
            image: image()?,
            question: args.text.clone(),
        },
    };
    let opts = LoadOptions {
        url: args.url.clone(),
        concurrency: args.concurrency,
        requests: args.requests,
        duration: Duration::from_secs_f64(args.seconds),
        api_key: args.api_key.clone(),
        rss_pid: args.rss_pid,
        timeout: Duration::from_secs(120),
    };
    let last = std::sync::Mutex::new(0u64);
    let progress = |n: usize, t: Duration| {
        let s = t.as_secs();
        if let Ok(mut last) = last.lock() {
            if s >= *last + 5 {
                *last = s;
                note(format_args!("loadtest: {n} requests in {s} s"));
            }
        }
    };
    let report = loadtest::run(&workload, &opts, &progress)?;
    if args.json {
        return print_json(&report);
    }
    outln!(
        "{} x{}: {} requests, {} ok in {:.1} s: {:.1} req/s",
        report.route,
        report.concurrency,
        report.requests,
        report.ok,
        report.seconds,
        report.throughput
    );
    let l = &report.latency_ms;
    outln!(
        "latency ms: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1}",
        l.p50,
        l.p90,
        l.p99,
        l.max
    );
    outln!("statuses: {:?}", report.statuses);
    if let (Some(first), Some(last)) = (report.rss_mib.first(), report.rss_mib.last()) {
        let max = report.rss_mib.iter().map(|r| r.1).fold(0.0, f64::max);
        outln!(
            "server RSS MiB: {:.1} at start, {:.1} at end, {:.1} max",
            first.1,
            last.1,
            max
        );
    }
    if let (Some(first), Some(last)) = (
        report.heap_in_use_mib.first(),
        report.heap_in_use_mib.last(),
    ) {
        outln!(
            "server heap in use MiB: {:.1} at {:.0} s, {:.1} at {:.0} s",
            first.1,
            first.0,
            last.1,
            last.0
        );
    }
    Ok(())
}
