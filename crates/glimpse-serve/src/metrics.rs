//! Prometheus metrics: requests by route and status, latency histograms, queue depth,
//! batch sizes and times, generated tokens (tokens/s is their `rate()`), rejections.
//!
//! One recorder serves the process (the `metrics` crate's global); every server in
//! the process renders the same registry at `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the recorder (once per process) and returns its handle; `None` when
/// another recorder was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("glimpse_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            heap_upkeep();
            // Histogram samples wait in buffers until they are folded into buckets: fold
            // them every few seconds, so memory stays flat when nobody scrapes /metrics.
            // The same thread hands the allocator's free memory back (the tensor
            // settings keep up to 1 GiB of it for the next forward pass, which a server
            // that idles between bursts does not need) and records the heap's counts.
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                    heap_upkeep();
                });
            Some(handle)
        })
        .clone()
}

/// How often histograms are folded and free heap memory is given back.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Gives free heap memory back and records what the allocator holds, before and after.
fn heap_upkeep() {
    use glimpse_models::allocator::{heap_stats, release_free_memory};
    let Some(before) = heap_stats() else { return };
    release_free_memory();
    let after = heap_stats().unwrap_or(before);
    metrics::gauge!("glimpse_heap_in_use_bytes").set(after.in_use as f64);
    metrics::gauge!("glimpse_heap_free_bytes").set(after.free as f64);
    metrics::gauge!("glimpse_heap_free_before_release_bytes").set(before.free as f64);
}

fn describe() {
    metrics::describe_gauge!(
        "glimpse_heap_in_use_bytes",
        metrics::Unit::Bytes,
        "memory the server holds (allocated, not freed), sampled every 5 s"
    );
    metrics::describe_gauge!(
        "glimpse_heap_free_bytes",
        metrics::Unit::Bytes,
        "freed memory the allocator still keeps after giving free pages back"
    );
    metrics::describe_gauge!(
        "glimpse_heap_free_before_release_bytes",
        metrics::Unit::Bytes,
        "freed memory the allocator kept before the last release"
    );
    metrics::describe_counter!(
        "glimpse_requests_total",
        "HTTP requests by route and status"
    );
    metrics::describe_histogram!(
        "glimpse_request_duration_seconds",
        metrics::Unit::Seconds,
        "HTTP request latency by route"
    );
    metrics::describe_gauge!("glimpse_queue_depth", "requests waiting per model");
    metrics::describe_histogram!("glimpse_batch_size", "requests per forward pass");
    metrics::describe_histogram!(
        "glimpse_batch_duration_seconds",
        metrics::Unit::Seconds,
        "time of one batch"
    );
    metrics::describe_counter!(
        "glimpse_generated_tokens_total",
        "generated tokens per model (tokens/s: rate())"
    );
    metrics::describe_counter!(
        "glimpse_rejected_total",
        "requests refused with 429 because a model's queue was full"
    );
    metrics::describe_gauge!("glimpse_models_loaded", "models ready to serve");
}

pub fn request(route: &str, status: u16, elapsed: Duration) {
    metrics::counter!("glimpse_requests_total", "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("glimpse_request_duration_seconds", "route" => route.to_string())
        .record(elapsed.as_secs_f64());
}

pub fn queue_depth(model: &str, depth: usize) {
    metrics::gauge!("glimpse_queue_depth", "model" => model.to_string()).set(depth as f64);
}

pub fn batch(model: &str, kind: &str, size: usize) {
    metrics::histogram!("glimpse_batch_size", "model" => model.to_string(), "kind" => kind.to_string())
        .record(size as f64);
}

pub fn batch_seconds(model: &str, kind: &str, elapsed: Duration) {
    metrics::histogram!("glimpse_batch_duration_seconds", "model" => model.to_string(), "kind" => kind.to_string())
        .record(elapsed.as_secs_f64());
}

pub fn tokens(model: &str, n: usize) {
    metrics::counter!("glimpse_generated_tokens_total", "model" => model.to_string())
        .increment(n as u64);
}

/// Requests that joined a generation batch while it was decoding.
pub fn joined(model: &str, n: usize) {
    metrics::counter!("glimpse_batch_joined_total", "model" => model.to_string())
        .increment(n as u64);
}

pub fn rejected(model: &str) {
    metrics::counter!("glimpse_rejected_total", "model" => model.to_string()).increment(1);
}

pub fn models_loaded(n: usize) {
    metrics::gauge!("glimpse_models_loaded").set(n as f64);
}
