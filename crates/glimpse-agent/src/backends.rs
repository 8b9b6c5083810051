//! The backends that run tasks for registry entries: Glimpse's models through
//! `glimpse_models`' pipeline and capability traits, text-only language models,
//! retrieval over an index, and external tools. Each is loaded the first time a task
//! needs it and kept for the rest of the run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::Device;
use glimpse_generate::GenerationConfig;
use glimpse_index::{SearchIndex, Side};
use glimpse_models::causal_lm::CausalLm;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::pipeline::Pipeline;
use image::RgbImage;

use crate::calibrate::{Calibration, Weights};
use crate::execute::{Backend, Backends, Input, Output, Retrieved, Scored};
use crate::registry::{Registry, Runner};
use crate::tools::Tool;
use crate::{Error, Result};

/// Settings shared by the model backends.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: Device,
    /// Decoding of captions, answers and generated text.
    pub generation: GenerationConfig,
    /// Zero-shot classification prompt; `{}` is the label.
    pub template: String,
    /// Images a retrieval returns.
    pub k: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            generation: GenerationConfig {
                max_new_tokens: 30,
                ..GenerationConfig::default()
            },
            template: "a {}.".into(),
            k: 4,
        }
    }
}

/// The registry's backends, loaded on first use.
pub struct Loader {
    registry: Registry,
    opts: RunOptions,
    loaded: Mutex<HashMap<String, Arc<dyn Backend>>>,
}

impl Loader {
    pub fn new(registry: Registry, opts: RunOptions) -> Self {
        Self {
            registry,
            opts,
            loaded: Mutex::new(HashMap::new()),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Backends for Loader {
    fn backend(&self, id: &str) -> Result<Arc<dyn Backend>> {
        let entry = self.registry.get(id).ok_or_else(|| Error::Model {
            model: id.to_string(),
            msg: "not in the registry".into(),
        })?;
        // One load at a time: two tasks that need the same model share one copy.
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = loaded.get(id) {
            return Ok(b.clone());
        }
        let fail = |e: glimpse_models::Error| Error::Model {
            model: entry.source.clone(),
            msg: e.to_string(),
        };
        let backend: Arc<dyn Backend> = match &entry.runner {
            Runner::Pipeline { source, .. } => Arc::new(PipelineBackend {
                pipeline: Pipeline::load(source, &self.opts.device).map_err(fail)?,
                calibration: Calibration::load(std::path::Path::new(source))?.map(|c| c.weights),
                opts: self.opts.clone(),
            }),
            Runner::LanguageModel { source } => {
                let files = ModelFiles::resolve(source).map_err(fail)?;
                Arc::new(LmBackend {
                    lm: CausalLm::load(&files, &self.opts.device).map_err(fail)?,
                    gen: self.opts.generation.clone(),
                })
            }
            Runner::Index { dir, model } => Arc::new(IndexBackend::open(dir, model, &self.opts)?),
            Runner::Tool(tool) => Arc::new(ToolBackend(tool.as_ref().clone())),
        };
        loaded.insert(id.to_string(), backend.clone());
        Ok(backend)
    }
}

/// Reads an image given as a file or a WebDataset entry (`SHARD.tar#NAME`).
pub fn load_image(path: &str) -> Result<RgbImage> {
    let fail = |msg: String| Error::Image {
        path: path.to_string(),
        msg,
    };
    if path.contains(".tar#") {
        let bytes = glimpse_index::data::read_image_bytes(path).map_err(|e| fail(e.to_string()))?;
        return glimpse_data::decode_image(&bytes, path).map_err(|e| fail(e.to_string()));
    }
    glimpse_data::load_image(std::path::Path::new(path)).map_err(|e| fail(e.to_string()))
}

fn need<'a, T>(v: &'a Option<T>, task: &str, arg: &str) -> Result<&'a T> {
    v.as_ref()
        .ok_or_else(|| Error::Plan(format!("`{task}` got no `{arg}`")))
}

fn unsupported(task: &str, what: &str) -> Error {
    Error::Plan(format!("{what} cannot run `{task}`"))
}

struct PipelineBackend {
    pipeline: Pipeline,
    /// The model's `match_calibration.json`, when it has one.
    calibration: Option<Weights>,
    opts: RunOptions,
}

impl Backend for PipelineBackend {
    fn run(&self, task: &str, input: &Input) -> Result<Output> {
        let p = &self.pipeline;
        let name = p.architecture().class_name();
        let image = load_image(&need(&input.image, task, "image")?.path)?;
        let fail = |e: glimpse_models::Error| Error::Model {
            model: name.to_string(),
            msg: e.to_string(),
        };
        let gen = p.generation_config(self.opts.generation.clone());
        Ok(match task {
            "image-to-text" => {
                let mut out = p
                    .caption(std::slice::from_ref(&image), None, &gen)
                    .map_err(fail)?;
                Output::Text {
                    text: out.remove(0).text.trim().to_string(),
                }
            }
            "visual-question-answering" => {
                let q = need(&input.question, task, "question")?;
                Output::Text {
                    text: p
                        .ask(&image, q, &gen)
                        .map_err(fail)?
                        .text
                        .trim()
                        .to_string(),
                }
            }
            "zero-shot-image-classification" => {
                let labels = need(&input.labels, task, "labels")?;
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                let probs = p
                    .classify(&image, &refs, &self.opts.template)
                    .map_err(fail)?;
                let mut labels: Vec<Scored> = labels
                    .iter()
                    .zip(probs)
                    .map(|(l, s)| Scored {
                        label: l.clone(),
                        score: s,
                    })
                    .collect();
                labels.sort_by(|a, b| b.score.total_cmp(&a.score));
                Output::Labels { labels }
            }
            "image-text-matching" => {
                let text = need(&input.text, task, "text")?;
                let s = p.match_scores(&image, &[text.as_str()]).map_err(fail)?;
                // The calibrated probability where the model has a calibration (it
                // both ranks and decides), else the ITM head's, else the cosine.
                let itm = s.itm.as_ref().map(|v| v[0]);
                let score = match &self.calibration {
                    Some(w) => w.probability(s.itc[0], itm),
                    None => itm.unwrap_or(s.itc[0]),
                };
                Output::Score { score }
            }
            other => return Err(unsupported(other, name)),
        })
    }
}

struct LmBackend {
    lm: CausalLm,
    gen: GenerationConfig,
}

impl Backend for LmBackend {
    fn run(&self, task: &str, input: &Input) -> Result<Output> {
        if task != "text-generation" {
            return Err(unsupported(task, self.lm.class));
        }
        let text = need(&input.text, task, "text")?;
        let fail = |e: glimpse_models::Error| Error::Model {
            model: self.lm.class.to_string(),
            msg: e.to_string(),
        };
        let ids = self.lm.encode_prompt(text).map_err(fail)?;
        let mut out = self.lm.generate(&ids, &self.gen).map_err(fail)?;
        out.retain(|t| !self.lm.eos_token_ids.contains(t));
        let text = self
            .lm
            .tokenizer
            .decode(&out, true)
            .map_err(|e| Error::Model {
                model: self.lm.class.to_string(),
                msg: e.to_string(),
            })?;
        Ok(Output::Text {
            text: text.trim().to_string(),
        })
    }
}

struct IndexBackend {
    index: SearchIndex,
    embedder: Pipeline,
    model_id: String,
    k: usize,
}

impl IndexBackend {
    fn open(dir: &std::path::Path, model: &str, opts: &RunOptions) -> Result<Self> {
        let fail = |msg: String| Error::Model {
            model: dir.display().to_string(),
            msg,
        };
        let index = SearchIndex::open(dir).map_err(|e| fail(e.to_string()))?;
        let mut embedder = Pipeline::load(model, &opts.device).map_err(|e| fail(e.to_string()))?;
        let mut model_id =
            glimpse_models::fingerprint::model_id(model).map_err(|e| fail(e.to_string()))?;
        if index.dir.manifest.model_id.ends_with("+q8") {
            embedder
                .quantize_encoders()
                .map_err(|e| fail(e.to_string()))?;
            model_id.push_str("+q8");
        }
        Ok(Self {
            index,
            embedder,
            model_id,
            k: opts.k,
        })
    }
}

impl Backend for IndexBackend {
    fn run(&self, task: &str, input: &Input) -> Result<Output> {
        let fail = |e: glimpse_models::Error| Error::Model {
            model: self.model_id.clone(),
            msg: e.to_string(),
        };
        let (query, skip) = match task {
            "text-to-image-retrieval" => {
                let text = need(&input.text, task, "text")?;
                (
                    self.embedder.text_embeds(&[text.as_str()]).map_err(fail)?,
                    None,
                )
            }
            "image-to-image-retrieval" => {
                let img = need(&input.image, task, "image")?;
                let image = load_image(&img.path)?;
                let q = self
                    .embedder
                    .image_embeds(std::slice::from_ref(&image))
                    .map_err(fail)?;
                (q, Some(img.path.clone()))
            }
            other => return Err(unsupported(other, "an index")),
        };
        let query: Vec<f32> = query
            .squeeze(0)
            .and_then(|q| q.to_vec1())
            .map_err(|e| fail(e.into()))?;
        // An image query finds itself first when it is in the collection: ask for
        // one more and leave it out.
        let hits = self
            .index
            .search(Side::Images, &query, &self.model_id, self.k + 1, None)
            .map_err(|e| Error::Model {
                model: self.index.dir.root.display().to_string(),
                msg: e.to_string(),
            })?;
        let same = |p: &str| {
            skip.as_deref().is_some_and(|s| {
                s == p
                    || matches!((std::fs::canonicalize(s), std::fs::canonicalize(p)), (Ok(a), Ok(b)) if a == b)
            })
        };
        let images: Vec<Retrieved> = hits
            .into_iter()
            .filter(|h| skip.is_none() || !(same(&h.path) || h.score >= 0.99999))
            .take(self.k)
            .map(|h| Retrieved {
                key: h.key,
                path: h.path,
                score: h.score,
                text: h.text,
            })
            .collect();
        Ok(Output::Images { images })
    }
}

struct ToolBackend(Tool);

impl Backend for ToolBackend {
    fn run(&self, task: &str, input: &Input) -> Result<Output> {
        if task != self.0.task {
            return Err(unsupported(task, &format!("tool `{}`", self.0.id)));
        }
        self.0.call(&input.to_args())
    }
}
