//! What `glimpse serve` is told at startup.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use candle_core::Device;
use glimpse_nn::quant::Quant;

/// One model to load: a directory or hub id, and its id on the server (by default
/// the family and the directory's name, see [`crate::registry::model_id`]).
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub source: String,
    pub id: Option<String>,
}

/// Where request images may come from besides `data:` URLs.
#[derive(Debug, Clone, Default)]
pub struct ImagePolicy {
    /// Fetch `http(s)` URLs (public addresses only).
    pub allow_fetch: bool,
    /// Read local files under this directory (`file://` URLs or plain paths).
    pub local_root: Option<PathBuf>,
    /// Timeout of one fetch.
    pub fetch_timeout: Duration,
    /// Largest fetched or decoded image file, in bytes.
    pub max_image_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub models: Vec<ModelSpec>,
    /// An index directory (`glimpse index build --out`) for search routes.
    pub index: Option<PathBuf>,
    /// The ITM model that re-ranks search results (a loaded model with an ITM head
    /// is used when this is `None`).
    pub device: Device,
    /// `q8`: 8-bit encoders (and Q8_0 language models) for every model.
    pub quantize: Option<Quant>,
    /// Required `Authorization: Bearer` key for the API routes.
    pub api_key: Option<String>,
    pub images: ImagePolicy,
    /// Largest request body, in bytes (413 above).
    pub max_body_bytes: usize,
    /// Requests waiting per model before 429.
    pub queue_capacity: usize,
    /// Most requests one forward pass takes.
    pub max_batch: usize,
    /// How long a worker waits for more requests before running a batch that is not full.
    pub batch_window: Duration,
    /// Whether captions and chat requests that arrive while a batch of theirs decodes
    /// join it.
    pub join_batches: bool,
    /// Time to receive a whole request body (408 above): a slow client cannot hold a
    /// connection and its memory forever.
    pub body_timeout: Duration,
    /// Most chat messages one request may carry.
    pub max_messages: usize,
    /// Most generated tokens a request may ask for.
    pub max_tokens_limit: usize,
    /// Training runs (`glimpse train --out`) whose report pages `/runs` shows.
    pub runs: Vec<PathBuf>,
    /// Evaluation report directories (`glimpse eval --report`) that `/reports` shows.
    pub reports: Vec<PathBuf>,
}

impl ServeConfig {
    pub fn new(addr: SocketAddr, models: Vec<ModelSpec>) -> Self {
        Self {
            addr,
            models,
            index: None,
            device: Device::Cpu,
            quantize: None,
            api_key: None,
            images: ImagePolicy {
                allow_fetch: false,
                local_root: None,
                fetch_timeout: Duration::from_secs(10),
                max_image_bytes: 20 << 20,
            },
            max_body_bytes: 32 << 20,
            queue_capacity: 128,
            max_batch: 32,
            batch_window: Duration::from_millis(2),
            join_batches: true,
            body_timeout: Duration::from_secs(30),
            max_messages: 256,
            max_tokens_limit: 512,
            runs: Vec::new(),
            reports: Vec::new(),
        }
    }
}
