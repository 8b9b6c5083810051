//! Embedding image collections and searching them.
//!
//! - [`npy`] and [`meta`]: the per-shard outputs other tools read, normalised float32
//!   vectors as `.npy` and metadata as Parquet, in clip-retrieval's layout ([`layout`]).
//! - [`job`]: the per-shard embedding job over an [`Embedder`] — images decoded and
//!   preprocessed on worker threads while the model runs, a completion marker per
//!   shard, resumable after a kill.
//! - [`search`]: exact search for small collections and HNSW (the `hnsw_rs` crate)
//!   for large ones, persisted next to the shards and extended incrementally.
//!
//! This crate knows no model: the binary adapts a model's embedding capability to
//! [`Embedder`], and a query vector carries the id of the model that made it, which
//! the index checks against its manifest.

pub mod data;
mod error;
pub mod job;
pub mod layout;
pub mod meta;
pub mod npy;
pub mod search;

pub use error::{Error, Result};
pub use job::{embed_shard, Embedder, JobOptions};
pub use layout::{IndexDir, Manifest, ShardMarker};
pub use search::{build_search, AnnParams, Hit, IndexKind, SearchIndex, Side};
