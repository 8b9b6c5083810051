//! A load generator for a running `glimpse serve`: N concurrent clients send one kind
//! of request until a count or a time limit is reached, and the run reports
//! throughput, latency percentiles, the status codes seen and, when given the
//! server's process id, its resident memory over the run (for soak tests).
//!
//! It only talks to loopback addresses: it is a tool for measuring one's own server,
//! not for loading someone else's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use serde::Serialize;

/// What each request asks.
#[derive(Debug, Clone)]
pub enum Workload {
    /// `/v1/embeddings` with one image (a `data:` URL).
    EmbedImage {
        model: Option<String>,
        image: Vec<u8>,
    },
    /// `/v1/embeddings` with one text.
    EmbedText { model: Option<String>, text: String },
    /// `/v1/caption` of one image (greedy).
    Caption {
        model: Option<String>,
        image: Vec<u8>,
        max_tokens: usize,
    },
    /// `/v1/chat/completions` about one image.
    Chat {
        model: Option<String>,
        image: Vec<u8>,
        question: String,
    },
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub url: String,
    pub concurrency: usize,
    /// Stop after this many requests ...
    pub requests: usize,
    /// ... or after this long, whichever comes first.
    pub duration: Duration,
    pub api_key: Option<String>,
    /// Sample this process's resident memory every second.
    pub rss_pid: Option<u32>,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub route: String,
    pub concurrency: usize,
    pub requests: usize,
    pub ok: usize,
    /// Status code (or `error` for a failed connection) -> count.
    pub statuses: BTreeMap<String, usize>,
    pub seconds: f64,
    /// Successful requests per second.
    pub throughput: f64,
    pub latency_ms: Percentiles,
    /// Resident memory of the server in MiB: (seconds since start, MiB) samples.
    pub rss_mib: Vec<(f64, f64)>,
    /// With `rss_pid`: the memory the server's allocator reports held (its
    /// `glimpse_heap_in_use_bytes` gauge, read from `/metrics` every 5 s), in MiB;
    /// resident memory that grows while this stays flat is kept free memory, not a
    /// leak.
    pub heap_in_use_mib: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "--url {0}: the load generator only targets loopback addresses (127.0.0.1, ::1, localhost)"
    )]
    NotLoopback(String),
    #[error("{0}")]
    Invalid(String),
}

fn is_loopback(url: &str) -> bool {
    let Ok(uri) = url.parse::<axum::http::Uri>() else {
        return false;
    };
    if uri.scheme_str() != Some("http") {
        return false;
    }
    match uri.host() {
        Some("localhost") => true,
        Some(h) => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

impl Workload {
    fn route(&self) -> &'static str {
        match self {
            Workload::EmbedImage { .. } | Workload::EmbedText { .. } => "/v1/embeddings",
            Workload::Caption { .. } => "/v1/caption",
            Workload::Chat { .. } => "/v1/chat/completions",
        }
    }

    fn body(&self) -> String {
        let url = |bytes: &[u8]| {
            format!(
                "data:image/png;base64,{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            )
        };
        let v = match self {
            Workload::EmbedImage { model, image } => {
                serde_json::json!({"model": model, "input": url(image)})
            }
            Workload::EmbedText { model, text } => {
                serde_json::json!({"model": model, "input": text})
            }
            Workload::Caption {
                model,
                image,
                max_tokens,
            } => serde_json::json!({"model": model, "image": url(image), "max_tokens": max_tokens}),
            Workload::Chat {
                model,
                image,
                question,
            } => serde_json::json!({"model": model, "messages": [{"role": "user", "content": [
                {"type": "text", "text": question},
                {"type": "image_url", "image_url": {"url": url(image)}}]}]}),
        };
        v.to_string()
    }
}

fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    Percentiles {
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: *ms.last().unwrap_or(&0.0),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
    }
}

/// The server's `glimpse_heap_in_use_bytes` gauge in MiB, from its `/metrics`.
fn heap_in_use_mib(agent: &ureq::Agent, base: &str) -> Option<f64> {
    let text = agent
        .get(&format!("{}/metrics", base.trim_end_matches('/')))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    metric_value(&text, "glimpse_heap_in_use_bytes").map(|b| b / (1024.0 * 1024.0))
}

/// The value of an unlabelled metric in a Prometheus text page.
fn metric_value(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the load; `on_progress` sees (done, elapsed) about once a second.
pub fn run(
    workload: &Workload,
    opts: &LoadOptions,
    on_progress: &(dyn Fn(usize, Duration) + Sync),
) -> Result<LoadReport, LoadError> {
    if !is_loopback(&opts.url) {
        return Err(LoadError::NotLoopback(opts.url.clone()));
    }
    if opts.concurrency == 0 || opts.requests == 0 {
        return Err(LoadError::Invalid(
            "--concurrency and --requests must be at least 1".into(),
        ));
    }
    let url = format!("{}{}", opts.url.trim_end_matches('/'), workload.route());
    let body = Arc::new(workload.body());
    let issued = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let active = AtomicUsize::new(opts.concurrency);
    let latencies = Mutex::new(Vec::new());
    let statuses: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
    let rss = Mutex::new(Vec::new());
    let heap = Mutex::new(Vec::<(f64, f64)>::new());
    let metrics_agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let started = Instant::now();
    let deadline = started + opts.duration;
    std::thread::scope(|scope| {
        for _ in 0..opts.concurrency {
            scope.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .timeout_global(Some(opts.timeout))
                    .http_status_as_error(false)
                    .build()
                    .into();
                while Instant::now() < deadline
                    && issued.fetch_add(1, Ordering::Relaxed) < opts.requests
                {
                    let t = Instant::now();
                    let mut req = agent.post(&url).header("content-type", "application/json");
                    if let Some(k) = &opts.api_key {
                        req = req.header("authorization", &format!("Bearer {k}"));
                    }
                    let key = match req.send(body.as_str()) {
                        Ok(mut resp) => {
                            let status = resp.status().as_u16();
                            let _ = resp.body_mut().read_to_vec();
                            if status == 200 {
                                latencies
                                    .lock()
                                    .expect("latency list")
                                    .push(t.elapsed().as_secs_f64() * 1000.0);
                            }
                            status.to_string()
                        }
                        Err(e) => format!("error: {e}"),
                    };
                    *statuses.lock().expect("status map").entry(key).or_default() += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                active.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Progress and memory samples until the last client is done.
        scope.spawn(|| loop {
            let elapsed = started.elapsed();
            if let Some(pid) = opts.rss_pid {
                if let Some(m) = rss_mib(pid) {
                    rss.lock()
                        .expect("rss list")
                        .push((elapsed.as_secs_f64(), m));
                }
                let mut heap = heap.lock().expect("heap list");
                let due = heap
                    .last()
                    .is_none_or(|&(t, _)| elapsed.as_secs_f64() >= t + 5.0);
                if due {
                    if let Some(m) = heap_in_use_mib(&metrics_agent, &opts.url) {
                        heap.push((elapsed.as_secs_f64(), m));
                    }
                }
            }
            on_progress(done.load(Ordering::Relaxed), elapsed);
            if active.load(Ordering::Relaxed) == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        });
    });
    let seconds = started.elapsed().as_secs_f64();
    let latencies = latencies.into_inner().expect("latency list");
    let statuses = statuses.into_inner().expect("status map");
    let ok = latencies.len();
    Ok(LoadReport {
        route: workload.route().to_string(),
        concurrency: opts.concurrency,
        requests: statuses.values().sum(),
        ok,
        statuses,
        seconds,
        throughput: ok as f64 / seconds,
        latency_ms: percentiles(latencies),
        rss_mib: rss.into_inner().expect("rss list"),
        heap_in_use_mib: heap.into_inner().expect("heap list"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:9",
        ] {
            assert!(is_loopback(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8080",
            "http://example.com",
            "https://127.0.0.1",
            "127.0.0.1:80",
        ] {
            assert!(!is_loopback(bad), "{bad}");
        }
    }

    #[test]
    fn metric_values_are_read_from_a_prometheus_page() {
        let page =
            "# HELP glimpse_heap_in_use_bytes held\n# TYPE glimpse_heap_in_use_bytes gauge\n\
                    glimpse_heap_in_use_bytes_total 3\nglimpse_heap_in_use_bytes 1048576\n";
        assert_eq!(
            metric_value(page, "glimpse_heap_in_use_bytes"),
            Some(1048576.0)
        );
        assert_eq!(metric_value(page, "glimpse_heap_free_bytes"), None);
    }

    #[test]
    fn percentiles_pick_ranks() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50, p.p99, p.max), (51.0, 99.0, 100.0));
    }
}
