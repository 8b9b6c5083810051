//! Glimpse against the reference (transformers on PyTorch), in one run, on the same
//! machine, on real-size architectures with random weights: the library behind
//! `glimpse bench`.
//!
//! Method (see docs/performance.md):
//! * `tools/bench/reference.py make-models` writes the checkpoints once (seeded random
//!   weights, f32 safetensors) under `<out>/models`; both sides load those directories.
//! * Every workload runs in its own child process on each side (Glimpse's worker, which
//!   the CLI starts as `glimpse bench --worker W` and which calls [`run_worker`];
//!   `reference.py time` for PyTorch), so each process's peak RSS is that workload's
//!   alone. A child loads the model, runs `--warmup` untimed and `--reps` timed calls
//!   and prints one JSON line ([`SideResult`]); the median is reported.
//! * Inputs are random tensors of the same shapes on both sides; the timed call is the
//!   library API (`get_image_features`, `get_text_features`, `generate`), so image
//!   decoding and tokenization are not part of the figures.
//! * The streaming workloads (`blip2-opt`, `llava-llama`) also time each generated
//!   token: Glimpse through `glimpse_generate::generate_stream`'s per-step callback, the
//!   reference through a streamer passed to `generate`. They report the time to the
//!   first token (vision and prefill included) and the median gap between tokens; the
//!   prompt ids are the same fixed ids on both sides.
//! * `--quantize q8|q4` runs Glimpse's side of the streaming workloads with the language
//!   model's decoder layers quantised after loading (the reference stays f32), to show
//!   what quantisation buys per token; `load_s` then includes the quantisation.
//! * The `matmul` workload (no model) times an f32 square matrix product on each side
//!   (candle's `Tensor::matmul`, `torch.matmul`): each side's peak matrix rate in this
//!   run. Every workload's floating-point operations per call are counted from its
//!   shapes ([`Workload::flops`]), so the table shows each side's achieved GFLOP/s and
//!   its share of that side's peak.
//!
//! Modules: `workload` (what is timed), `shapes` and `flops` (the FLOP model), `run`
//! (the parent: children, checks, ratios), `worker` (Glimpse's side), `reference`
//! (Python's side), `protocol` (the children's JSON line), `stats`, `report` (the JSON
//! document) and `table` (the text for people).

mod error;
mod flops;
mod protocol;
mod reference;
mod report;
mod rng;
mod run;
mod shapes;
mod stats;
mod table;
mod worker;
mod workload;

#[cfg(test)]
mod script_agreement;

pub use error::{one_line, Error, Result};
pub use flops::Flops;
pub use protocol::{has_checkpoint, SideResult};
pub use reference::{Reference, DEFAULT_PYTHON, SCRIPT};
pub use report::{Report, WorkloadReport};
pub use run::{run, BenchConfig, Settings, WorkerCommand};
pub use stats::{fastest, median, rate, ratio, token_times};
pub use table::format_table;
pub use worker::run_worker;
pub use workload::{
    select, workload, StreamModel, Task, Workload, MATMUL, STREAM_TOKENS, WORKLOADS,
};

pub(crate) use run::BUILD;
