//! `glimpse`: a thin binary over the Glimpse libraries. It parses flags, validates them,
//! calls `glimpse_models::pipeline`, and prints — for people, or as JSON with `--json`.
//! Errors go to stderr with a message naming the bad input and a non-zero exit; a
//! closed stdout (`glimpse ... | head`) ends the command quietly with success.

mod cli;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

/// Decide candle's thread count once, before any thread starts.
///
/// Unless the user set `CANDLE_NUM_THREADS` or `RAYON_NUM_THREADS`, candle works the
/// count out again (reading `/proc/cpuinfo`, about 37 us) on every matrix product; the
/// count it would pick is written to `CANDLE_NUM_THREADS` so later calls read a variable.
fn fix_thread_count() {
    let set =
        |name: &str| std::env::var(name).is_ok_and(|v| v.parse::<usize>().is_ok_and(|n| n > 0));
    if !set("CANDLE_NUM_THREADS") && !set("RAYON_NUM_THREADS") {
        let n = candle_core::utils::get_num_threads();
        // No other thread exists yet, so nothing reads the environment concurrently.
        std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    }
}

/// Runs the command on a worker of a pool of candle's thread count, so that the kernels'
/// parallel loops start from inside the pool: the calling thread takes a share of the
/// work and the other workers pick theirs up, where a call from outside the pool hands
/// the whole loop over and sleeps until it is done (two context switches per product;
/// several per cent of a BLIP decoding step in `perf`). Without a pool (it could not be
/// built), the command runs on this thread.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let n = candle_core::utils::get_num_threads();
    match rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        // The main thread's default, for the same commands (rayon's workers get 2 MiB).
        .stack_size(8 << 20)
        .thread_name(|i| format!("glimpse-{i}"))
        .build()
    {
        Ok(pool) => pool.install(f),
        Err(err) => {
            tracing::warn!("no thread pool ({err}); running on the main thread");
            f()
        }
    }
}

fn main() -> ExitCode {
    // Before any thread starts: keep tensor buffers on the heap (see the module).
    glimpse_models::allocator::tune_for_tensors();
    fix_thread_count();
    // `GLIMPSE_LOG` filters (e.g. `info` for a line per server request);
    // `GLIMPSE_LOG_FORMAT=json` writes one JSON object per line for log collectors.
    let filter = tracing_subscriber::EnvFilter::try_from_env("GLIMPSE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("GLIMPSE_LOG_FORMAT").is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    output::exit_on_print_panics();
    let cli = cli::Cli::parse();
    match on_pool(move || commands::run(cli)).and_then(|()| output::flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if output::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            output::note(format_args!("error: {}", output::error_chain(&err)));
            ExitCode::FAILURE
        }
    }
}
