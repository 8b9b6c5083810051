//! Finding a model's files and loading its weights strictly.
//!
//! A `--model` is a local directory in the Hugging Face layout (`config.json`,
//! `model.safetensors` or a sharded `model.safetensors.index.json`, optionally
//! `tokenizer.json` and `preprocessor_config.json`) or a hub id (`org/name`), looked up
//! in the local Hugging Face cache (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
//! `~/.cache/huggingface/hub`). With the `download` feature a hub id that is not cached
//! is fetched, giving up quickly when the hub cannot be reached.
//!
//! [`Weights`] memory-maps the safetensors files and hands a [`VarBuilder`] to model
//! constructors. Unlike candle's own builders it is strict in every direction, as a
//! checkpoint that silently half-loads is the worst kind of bug:
//!
//! * a tensor the model asks for but the files lack is an error naming it;
//! * a tensor of another shape than the config implies is an error naming both shapes;
//! * [`Weights::finish`] is an error listing every tensor the model never read;
//! * a truncated or corrupt file, or a shard the index names but the directory lacks,
//!   is an error naming the file.
//!
//! Tied weights that `save_pretrained` leaves out are declared with
//! [`Weights::with_alias`]. Stored f32/f16/bf16 tensors convert to the requested dtype.
//!
//! Large checkpoints: [`Weights::open_checked`] and [`plan_load`] ([`memory`]) read only
//! the headers to pick the compute dtype, estimate the memory the loaded model needs and
//! refuse, before any tensor is read, when that exceeds what is available.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::safetensors::Load;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use memmap2::Mmap;
use safetensors::tensor::{SafeTensors, TensorView};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

mod hub;
pub mod memory;

pub use memory::{plan_load, plan_load_with, LoadOptions, LoadPlan};

const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";
const PREPROCESSOR: &str = "preprocessor_config.json";
const PROCESSOR: &str = "processor_config.json";

/// The files of one model, found by [`ModelFiles::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// `model.safetensors`, or every shard the index names (each once, in order).
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    pub preprocessor: Option<PathBuf>,
}

impl ModelFiles {
    /// Finds a model given as a local directory or a hub id (`org/name`).
    pub fn resolve(model: &str) -> Result<Self> {
        let path = Path::new(model);
        if path.is_dir() {
            return Self::from_dir(path, model);
        }
        let model_err = |msg: String| Error::Model {
            model: model.to_string(),
            msg,
        };
        if path.exists() {
            return Err(model_err(format!(
                "is a file; expected a directory holding {CONFIG} and {SINGLE}"
            )));
        }
        if !hub::looks_like_hub_id(model) {
            return Err(model_err("no such directory".into()));
        }
        hub::resolve(model)
    }

    /// Reads the model files of `dir`; `model` is how the user named it, for errors.
    pub fn from_dir(dir: &Path, model: &str) -> Result<Self> {
        let model_err = |msg: String| Error::Model {
            model: model.to_string(),
            msg,
        };
        let config = dir.join(CONFIG);
        if !config.is_file() {
            return Err(model_err(format!("no {CONFIG} in {}", dir.display())));
        }
        let index = dir.join(INDEX);
        let weights = if index.is_file() {
            shard_paths(&index)?
                .into_iter()
                .map(|shard| {
                    let path = dir.join(&shard);
                    match path.is_file() {
                        true => Ok(path),
                        false => Err(model_err(format!(
                            "{INDEX} names the shard {shard}, which is missing from {}",
                            dir.display()
                        ))),
                    }
                })
                .collect::<Result<Vec<_>>>()?
        } else if dir.join(SINGLE).is_file() {
            vec![dir.join(SINGLE)]
        } else {
            return Err(model_err(format!(
                "no {SINGLE} or {INDEX} in {} (PyTorch .bin weights are not read; \
                 convert them to safetensors)",
                dir.display()
            )));
        };
        let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            tokenizer: optional(TOKENIZER),
            // transformers 5 may save the image processor only inside the processor's
            // own file (BLIP-2, LLaVA); glimpse-data reads either.
            preprocessor: optional(PREPROCESSOR).or_else(|| optional(PROCESSOR)),
        })
    }

    /// Deserialises `config.json`; an error names the file and the field at fault.
    pub fn read_config<T: DeserializeOwned>(&self) -> Result<T> {
        let text = read_to_string(&self.config)?;
        let de = &mut serde_json::Deserializer::from_str(&text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let msg = if field == "." {
                e.inner().to_string()
            } else {
                format!("field `{field}`: {}", e.inner())
            };
            Error::Config {
                path: self.config.clone(),
                msg,
            }
        })
    }

    /// `config.json` as untyped JSON (to inspect `architectures`, `model_type`, ...).
    pub fn config_json(&self) -> Result<serde_json::Value> {
        let text = read_to_string(&self.config)?;
        serde_json::from_str(&text).map_err(|source| Error::Json {
            path: self.config.clone(),
            source,
        })
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The distinct shard file names of an index, in first-seen order.
fn shard_paths(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = read_to_string(index)?;
    let parsed: Index = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: index.to_path_buf(),
        source,
    })?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    Ok(shards.into_iter().collect())
}

/// Where one tensor sits in the mapped files.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    /// Byte range within the file.
    start: usize,
    end: usize,
}

#[derive(Debug)]
struct Store {
    dir: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
    aliases: Mutex<HashMap<String, String>>,
    read: Mutex<HashSet<String>>,
}

/// Memory-mapped checkpoint tensors that remember which ones a model read.
#[derive(Debug, Clone)]
pub struct Weights {
    store: Arc<Store>,
}

impl Weights {
    /// Maps and validates every weight file; a corrupt file is an error naming it.
    pub fn open(files: &ModelFiles) -> Result<Self> {
        let mut mapped = Vec::with_capacity(files.weights.len());
        let mut entries = HashMap::new();
        for (i, path) in files.weights.iter().enumerate() {
            let io_err = |source| Error::Io {
                path: path.clone(),
                source,
            };
            let file = File::open(path).map_err(io_err)?;
            // SAFETY: the map is read-only; like every mmap-based loader we rely on the
            // file not being truncated by another process while the model is loaded.
            let mmap = unsafe { Mmap::map(&file) }.map_err(io_err)?;
            let (header_len, metadata) =
                SafeTensors::read_metadata(&mmap).map_err(|e| Error::Checkpoint {
                    dir: files.dir.clone(),
                    msg: format!(
                        "{} is not a valid safetensors file (truncated or corrupt?): {e}",
                        path.display()
                    ),
                })?;
            let data_start = 8 + header_len;
            for (name, info) in metadata.tensors() {
                let (s, e) = info.data_offsets;
                let entry = Entry {
                    file: i,
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + s,
                    end: data_start + e,
                };
                if let Some(other) = entries.insert(name.clone(), entry) {
                    return Err(Error::Checkpoint {
                        dir: files.dir.clone(),
                        msg: format!(
                            "tensor `{name}` is stored twice, in {} and {}",
                            files.weights[other.file].display(),
                            path.display()
                        ),
                    });
                }
            }
            mapped.push((path.clone(), mmap));
        }
        Ok(Self {
            store: Arc::new(Store {
                dir: files.dir.clone(),
                files: mapped,
                entries,
                aliases: Mutex::new(HashMap::new()),
                read: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// Declares a tied weight: when `missing` is not in the files, reading it reads
    /// `source` instead. Call before [`Weights::var_builder`].
    pub fn with_alias(self, missing: &str, source: &str) -> Self {
        if let Ok(mut aliases) = self.store.aliases.lock() {
            aliases.insert(missing.to_string(), source.to_string());
        }
        self
    }

    /// A strict builder: every read is checked and recorded for [`Weights::finish`].
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(
            Box::new(Backend {
                store: self.store.clone(),
            }),
            dtype,
            device.clone(),
        )
    }

    /// Errors when the files hold tensors the model never read (a config that does not
    /// describe these weights, or an architecture that ignores part of them).
    pub fn finish(&self) -> Result<()> {
        let read = self
            .store
            .read
            .lock()
            .map_err(|_| self.store.error("weight bookkeeping poisoned".into()))?;
        let mut unread: Vec<&String> = self
            .store
            .entries
            .keys()
            .filter(|k| !read.contains(*k))
            .collect();
        if unread.is_empty() {
            return Ok(());
        }
        unread.sort();
        let n = unread.len();
        let shown: Vec<&str> = unread.iter().take(20).map(|s| s.as_str()).collect();
        let more = if n > shown.len() {
            format!(", ... ({} more)", n - shown.len())
        } else {
            String::new()
        };
        Err(self.store.error(format!(
            "{n} tensor(s) in the files were not used by the model (does config.json \
             describe these weights?): {}{more}",
            shown.join(", ")
        )))
    }

    /// Whether `name` can be read (stored, or a declared alias of a stored tensor).
    pub fn contains(&self, name: &str) -> bool {
        self.store.lookup(name).is_some()
    }

    /// The stored dtype of `name`, if it is stored in a dtype candle knows.
    pub fn dtype_of(&self, name: &str) -> Option<DType> {
        let (_, entry) = self.store.lookup(name)?;
        DType::try_from(entry.dtype).ok()
    }

    /// How many tensors the files hold.
    pub fn tensor_count(&self) -> usize {
        self.store.entries.len()
    }

    /// Total bytes of the stored tensors, as the safetensors headers declare them (no
    /// tensor data is read).
    pub fn stored_bytes(&self) -> u64 {
        self.store
            .entries
            .values()
            .map(|e| (e.end - e.start) as u64)
            .sum()
    }

    /// The float dtype holding the most bytes (ties go to the wider type); `None` when
    /// the files hold no float tensor candle knows.
    pub fn stored_dtype(&self) -> Option<DType> {
        let mut by_dtype: HashMap<DType, u64> = HashMap::new();
        for e in self.store.entries.values() {
            if let Ok(dt @ (DType::F16 | DType::BF16 | DType::F32 | DType::F64)) =
                DType::try_from(e.dtype)
            {
                *by_dtype.entry(dt).or_default() += (e.end - e.start) as u64;
            }
        }
        by_dtype
            .into_iter()
            .max_by_key(|&(dt, bytes)| (bytes, dt.size_in_bytes()))
            .map(|(dt, _)| dt)
    }

    /// Names of every stored tensor, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.store.entries.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Store {
    fn error(&self, msg: String) -> Error {
        Error::Checkpoint {
            dir: self.dir.clone(),
            msg,
        }
    }

    /// The stored name and entry for `name`, following an alias when `name` is absent.
    fn lookup(&self, name: &str) -> Option<(&str, &Entry)> {
        if let Some((k, e)) = self.entries.get_key_value(name) {
            return Some((k.as_str(), e));
        }
        let source = self.alias_of(name)?;
        let (k, e) = self.entries.get_key_value(&source)?;
        Some((k.as_str(), e))
    }

    fn alias_of(&self, name: &str) -> Option<String> {
        self.aliases.lock().ok()?.get(name).cloned()
    }

    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let (stored, entry) = self.lookup(name).ok_or_else(|| {
            let alias = match self.alias_of(name) {
                Some(src) => format!(" (nor its tied source `{src}`)"),
                None => String::new(),
            };
            candle_core::Error::Msg(format!(
                "checkpoint {}: missing tensor `{name}`{alias}",
                self.dir.display()
            ))
        })?;
        let bad = |msg: String| {
            candle_core::Error::Msg(format!(
                "checkpoint {}: tensor `{stored}`: {msg}",
                self.dir.display()
            ))
        };
        if !matches!(
            entry.dtype,
            safetensors::Dtype::F32
                | safetensors::Dtype::F16
                | safetensors::Dtype::BF16
                | safetensors::Dtype::F64
        ) {
            return Err(bad(format!(
                "stored as {:?}, not a float type",
                entry.dtype
            )));
        }
        // Copy the tensor out of the map into memory it owns, in a block so that the
        // borrowed slice and view end before the mapped pages are released.
        let stored_tensor = {
            let bytes = &self.files[entry.file].1[entry.start..entry.end];
            let view = TensorView::new(entry.dtype, entry.shape.clone(), bytes)
                .map_err(|e| bad(e.to_string()))?;
            view.load(&Device::Cpu)?
        };
        // Release before converting, so that a bf16/f16 file converted to f32 never
        // holds the mapped pages, the stored-dtype copy and the converted copy at once.
        self.release(entry);
        let tensor = stored_tensor.to_dtype(dtype)?.to_device(device)?;
        if let Ok(mut read) = self.read.lock() {
            read.insert(stored.to_string());
        }
        Ok(tensor)
    }
}

/// The granularity of `madvise`. 4 KiB is the page size on x86-64 and the smallest
/// on every other unix target; where pages are larger, memmap2 aligns the start down to
/// the real page and the kernel rounds the length up, so at most one page of each
/// neighbouring tensor is also dropped, which (see [`Store::release`]) is harmless.
#[cfg(unix)]
const PAGE: usize = 4096;

/// The whole pages inside `start..end` as (offset, length): the start rounded up, the
/// end rounded down; `None` when no whole page fits.
#[cfg(unix)]
fn inner_pages(start: usize, end: usize) -> Option<(usize, usize)> {
    let first = start.checked_next_multiple_of(PAGE)?;
    let last = end - end % PAGE;
    (last > first).then(|| (first, last - first))
}

impl Store {
    /// Tells the kernel that the mapped pages of `entry` are no longer needed, so they
    /// stop counting in our resident set. Without this, every file page a load touches
    /// stays resident until the map is dropped, and peak memory while loading is the
    /// checkpoint twice over (the map plus the tensors copied out of it).
    ///
    /// Only a hint: errors are ignored, and on non-unix targets it does nothing.
    fn release(&self, entry: &Entry) {
        #[cfg(unix)]
        if let Some((offset, len)) = inner_pages(entry.start, entry.end) {
            let mmap = &self.files[entry.file].1;
            if offset + len <= mmap.len() {
                // SAFETY: the map is a read-only, shared mapping of a file
                // (`Mmap::map`). MADV_DONTNEED on such a mapping only removes the pages
                // from this process's page tables; their contents stay in the file (and
                // usually the page cache), and a later access faults the same bytes back
                // in. So reading the range again (a tied weight read through an alias,
                // a second `get`) sees unchanged data. The caller has already copied the
                // tensor into memory it owns, and the slice and view borrowed from the
                // range ended with that copy, so no borrow of this range is alive here;
                // even a concurrent reader of the same tensor on another thread would
                // only fault the identical bytes back in. The range is page-aligned and
                // lies within the tensor's bytes (never the header or another tensor,
                // for 4 KiB pages) and within the map (checked above).
                let _ = unsafe {
                    mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
                };
            }
        }
        #[cfg(not(unix))]
        let _ = entry;
    }
}

/// The [`SimpleBackend`] behind [`Weights::var_builder`].
struct Backend {
    store: Arc<Store>,
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some((stored, entry)) = self.store.lookup(name) {
            if entry.shape != s.dims() {
                return Err(candle_core::Error::Msg(format!(
                    "checkpoint {}: tensor `{stored}` has shape {:?} but the config implies {:?} \
                     (does config.json match the weights?)",
                    self.store.dir.display(),
                    entry.shape,
                    s.dims()
                )));
            }
        }
        self.store.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.store.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.store.lookup(name).is_some()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::inner_pages;

    #[test]
    fn inner_pages_round_inward() {
        assert_eq!(inner_pages(0, 8192), Some((0, 8192)));
        assert_eq!(inner_pages(1, 8192), Some((4096, 4096)));
        assert_eq!(inner_pages(100, 12_000), Some((4096, 4096)));
        assert_eq!(inner_pages(4096, 8191), None);
        assert_eq!(inner_pages(100, 4000), None);
        assert_eq!(inner_pages(5000, 5000), None);
    }
}
