//! What the agent can run a task with: the models given with `--model`, the bundled
//! ones under `models/`, an embedding index (`--index`) for retrieval, and the
//! external tools a registry file declares (see [`crate::tools`]).
//!
//! Each entry carries a description and capability tags read from its checkpoint's
//! `config.json` (the class, through `glimpse_models`' registry of loadable classes),
//! the first paragraph and `tags:` of an optional model card (`README.md` in the
//! model directory), and the Hugging Face hub id when the directory lies in the hub
//! cache. Model selection ([`crate::select`]) reads nothing else, so a new family that
//! registers its class in `glimpse_models` is offered here unchanged.

use std::path::{Path, PathBuf};

use glimpse_models::capability::Capability;
use glimpse_models::checkpoint::ModelFiles;
use glimpse_models::pipeline::{detect_architecture, Architecture};
use serde::Serialize;

use crate::tools::Tool;
use crate::{Error, Result};

/// Bundled model directories, relative to the repository root, in the order they are
/// offered (those that are missing are skipped).
pub const BUNDLED: &[&str] = &[
    "models/clip-synth",
    "models/blip-synth/caption",
    "models/blip-synth/retrieval",
    "models/blip-synth/vqa",
    "models/blip-synth/vqa-count",
    "models/blip2-synth",
    "models/llava-synth",
    "models/llama-lm-synth",
    "models/opt-lm-synth",
];

/// Where an entry came from; earlier origins are preferred when several fit equally.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `--model DIR`.
    Loaded,
    /// `--index IDX`.
    Index,
    /// A tool of the registry file.
    Tool,
    /// Under `models/`.
    Bundled,
}

/// How an entry runs a task.
#[derive(Debug, Clone)]
pub enum Runner {
    /// A vision-language checkpoint behind `glimpse_models::pipeline::Pipeline`.
    Pipeline { source: String, class: Architecture },
    /// A text-only causal language model (`glimpse_models::causal_lm`).
    LanguageModel { source: String },
    /// An embedding index searched with the model that built it.
    Index { dir: PathBuf, model: String },
    /// An external command or HTTP endpoint.
    Tool(Box<Tool>),
}

/// One model, index or tool.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Unique in the registry: `blip-synth-caption`, `index`, a tool's id.
    pub id: String,
    pub origin: Origin,
    /// A directory, a hub id, an index directory, a command line or a URL.
    pub source: String,
    /// The checkpoint's class, where there is one.
    pub class: Option<String>,
    pub description: String,
    /// Capability tags (`caption`, `itm`, `retrieval`, ...) and the card's tags.
    pub tags: Vec<String>,
    /// The task types it performs.
    pub tasks: Vec<String>,
    /// The first paragraph of the model card, if it has one.
    pub card: Option<String>,
    /// `org/name` when the model came from (or lies in) the Hugging Face hub cache.
    pub hub_id: Option<String>,
    #[serde(skip)]
    pub runner: Runner,
}

impl Entry {
    pub fn can(&self, task: &str) -> bool {
        self.tasks.iter().any(|t| t == task)
    }

    /// One line for prompts and listings.
    pub fn summary(&self) -> String {
        format!(
            "{}: {} [tags: {}]",
            self.id,
            self.description,
            self.tags.join(", ")
        )
    }
}

/// Every entry the agent may choose from.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Registry {
    pub entries: Vec<Entry>,
}

/// The task types a capability performs.
fn tasks_of(cap: Capability) -> &'static [&'static str] {
    match cap {
        Capability::Caption => &["image-to-text"],
        Capability::Answer => &["visual-question-answering"],
        Capability::Classify => &["zero-shot-image-classification"],
        Capability::Match => &["image-text-matching"],
        // Retrieval goes through an index built with an embedding model.
        Capability::Embed | Capability::Chat | Capability::Quantize => &[],
    }
}

fn tag_of(cap: Capability) -> &'static str {
    match cap {
        Capability::Embed => "embed",
        Capability::Classify => "classify",
        Capability::Match => "match",
        Capability::Caption => "caption",
        Capability::Answer => "answer",
        Capability::Chat => "chat",
        Capability::Quantize => "quantize",
    }
}

fn family(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Clip => "clip",
        Architecture::BlipCaption | Architecture::BlipRetrieval | Architecture::BlipVqa => "blip",
        Architecture::Blip2Generation | Architecture::Blip2Retrieval => "blip2",
        Architecture::Llava => "llava",
    }
}

impl Registry {
    /// The bundled models found under `root` (the repository root or the current
    /// directory), in [`BUNDLED`] order.
    pub fn bundled(root: &Path) -> Result<Self> {
        let mut reg = Self::default();
        reg.add_bundled(root)?;
        Ok(reg)
    }

    /// Adds the bundled models found under `root` (one already given with `--model`
    /// stays as given).
    pub fn add_bundled(&mut self, root: &Path) -> Result<()> {
        for rel in BUNDLED {
            let dir = root.join(rel);
            if dir.join("config.json").is_file() {
                self.add_model(&dir.display().to_string(), Origin::Bundled)?;
            }
        }
        Ok(())
    }

    /// Describes the model `source` (a directory or a hub id) and adds it.
    pub fn add_model(&mut self, source: &str, origin: Origin) -> Result<&Entry> {
        let entry = describe_model(source, origin)?;
        self.push(entry)
    }

    /// Adds the index at `dir`: retrieval by text and by image with the model that
    /// built it.
    pub fn add_index(&mut self, dir: &Path) -> Result<&Entry> {
        let bad = |msg: String| Error::Model {
            model: dir.display().to_string(),
            msg,
        };
        let idx = glimpse_index::layout::IndexDir::open(dir).map_err(|e| bad(e.to_string()))?;
        let model = idx.manifest.model.clone();
        let entry = Entry {
            id: "index".into(),
            origin: Origin::Index,
            source: dir.display().to_string(),
            class: None,
            description: format!(
                "the image collection indexed at {} (embedded with {model}); finds images by text or by image",
                dir.display()
            ),
            tags: vec!["retrieval".into(), "index".into(), "embed".into()],
            tasks: vec![
                "text-to-image-retrieval".into(),
                "image-to-image-retrieval".into(),
            ],
            card: None,
            hub_id: None,
            runner: Runner::Index {
                dir: dir.to_path_buf(),
                model,
            },
        };
        self.push(entry)
    }

    /// Adds an external tool.
    pub fn add_tool(&mut self, tool: Tool) -> Result<&Entry> {
        let mut tags = tool.tags.clone();
        tags.push("tool".into());
        let entry = Entry {
            id: tool.id.clone(),
            origin: Origin::Tool,
            source: tool.endpoint(),
            class: None,
            description: tool.description.clone(),
            tags,
            tasks: vec![tool.task.clone()],
            card: None,
            hub_id: None,
            runner: Runner::Tool(Box::new(tool)),
        };
        self.push(entry)
    }

    fn push(&mut self, mut entry: Entry) -> Result<&Entry> {
        if entry.origin == Origin::Tool && self.get(&entry.id).is_some() {
            return Err(Error::Registry {
                path: entry.source.clone(),
                msg: format!("the id `{}` is used twice", entry.id),
            });
        }
        // The same model given twice (--model and bundled) is offered once.
        if entry.origin != Origin::Tool {
            if let Some(i) = self
                .entries
                .iter()
                .position(|e| e.origin != Origin::Tool && same_path(&e.source, &entry.source))
            {
                return Ok(&self.entries[i]);
            }
        }
        let base = entry.id.clone();
        let mut n = 2;
        while self.get(&entry.id).is_some() {
            entry.id = format!("{base}-{n}");
            n += 1;
        }
        self.entries.push(entry);
        Ok(self.entries.last().expect("just pushed"))
    }

    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// The entries that perform `task`, in registry order.
    pub fn candidates(&self, task: &str) -> Vec<&Entry> {
        self.entries.iter().filter(|e| e.can(task)).collect()
    }
}

fn same_path(a: &str, b: &str) -> bool {
    match (Path::new(a).canonicalize(), Path::new(b).canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Reads `source`'s config (and model card) into an entry, loading no weights.
pub fn describe_model(source: &str, origin: Origin) -> Result<Entry> {
    let fail = |msg: String| Error::Model {
        model: source.to_string(),
        msg,
    };
    let files = ModelFiles::resolve(source).map_err(|e| fail(e.to_string()))?;
    let config = files.config_json().map_err(|e| fail(e.to_string()))?;
    let hub_id = hub_id_of(source, &files.dir);
    let card = read_card(&files.dir);
    let id = match &hub_id {
        Some(h) if !Path::new(source).is_dir() => h.rsplit('/').next().unwrap_or(h).to_string(),
        _ => local_id(&files.dir),
    };
    let (class, description, mut tags, tasks, runner) = match causal_lm_class(&config) {
        Some(class) => (
            class.to_string(),
            format!("{class}: a text-only language model that continues or answers a text"),
            vec!["text".into(), "generate".into(), "language-model".into()],
            vec!["text-generation".to_string()],
            Runner::LanguageModel {
                source: source.to_string(),
            },
        ),
        None => {
            let arch = detect_architecture(&files).map_err(|e| fail(e.to_string()))?;
            let caps = arch.registration().capabilities;
            let mut tags: Vec<String> = vec![family(arch).to_string()];
            tags.extend(caps.iter().map(|c| tag_of(*c).to_string()));
            if matches!(
                arch,
                Architecture::BlipRetrieval | Architecture::Blip2Retrieval
            ) {
                // An image-text matching head: a calibrated match probability.
                tags.push("itm".into());
            }
            if arch == Architecture::BlipVqa {
                tags.push("vqa".into());
            }
            let tasks: Vec<String> = caps
                .iter()
                .flat_map(|c| tasks_of(*c).iter().map(|t| t.to_string()))
                .collect();
            let words: Vec<&str> = caps.iter().map(|c| tag_of(*c)).collect();
            (
                arch.class_name().to_string(),
                format!(
                    "{} ({}): {}",
                    arch.class_name(),
                    family(arch),
                    words.join(", ")
                ),
                tags,
                tasks,
                Runner::Pipeline {
                    source: source.to_string(),
                    class: arch,
                },
            )
        }
    };
    let (card_text, card_tags) = card.unwrap_or_default();
    tags.extend(card_tags);
    tags.dedup();
    let description = match &card_text {
        Some(c) => format!("{description}. {c}"),
        None => description,
    };
    Ok(Entry {
        id,
        origin,
        source: source.to_string(),
        class: Some(class),
        description,
        tags,
        tasks,
        card: card_text,
        hub_id,
        runner,
    })
}

/// `OPTForCausalLM` or `LlamaForCausalLM` when the config is a text-only causal LM.
pub fn causal_lm_class(config: &serde_json::Value) -> Option<&'static str> {
    let arch = config
        .get("architectures")
        .and_then(|a| a.get(0))
        .and_then(|a| a.as_str());
    match (arch, config.get("model_type").and_then(|m| m.as_str())) {
        (Some("OPTForCausalLM"), _) | (None, Some("opt")) => Some("OPTForCausalLM"),
        (Some("LlamaForCausalLM"), _) | (None, Some("llama")) => Some("LlamaForCausalLM"),
        _ => None,
    }
}

/// `blip-synth-caption` for `models/blip-synth/caption`, `clip-synth` for
/// `models/clip-synth`: the directory's name, after its parent's when the parent is
/// a group of models rather than a collection (`models/`).
fn local_id(dir: &Path) -> String {
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().to_string());
    let last = name(dir).unwrap_or_else(|| "model".into());
    match dir.parent().and_then(name) {
        Some(parent)
            if parent != "models"
                && parent.contains('-')
                && !dir
                    .parent()
                    .is_some_and(|p| p.join("config.json").is_file()) =>
        {
            format!("{parent}-{last}")
        }
        _ => last,
    }
}

/// The hub id of a model given as one, or of a directory inside the hub cache
/// (`.../models--ORG--NAME/snapshots/REV`).
fn hub_id_of(source: &str, dir: &Path) -> Option<String> {
    if !Path::new(source).exists() && source.split('/').count() == 2 {
        return Some(source.to_string());
    }
    dir.ancestors().find_map(|a| {
        let n = a.file_name()?.to_str()?;
        let rest = n.strip_prefix("models--")?;
        let (org, name) = rest.split_once("--")?;
        Some(format!("{org}/{name}"))
    })
}

/// The first paragraph of `dir/README.md` (after any YAML front matter and
/// headings, at most 300 characters) and the front matter's `tags:` list.
fn read_card(dir: &Path) -> Option<(Option<String>, Vec<String>)> {
    let text = std::fs::read_to_string(dir.join("README.md")).ok()?;
    let mut tags = Vec::new();
    let mut body = text.as_str();
    if let Some(rest) = text.strip_prefix("---") {
        if let Some((front, after)) = rest.split_once("\n---") {
            let mut in_tags = false;
            for line in front.lines() {
                let l = line.trim();
                if l.starts_with("tags:") {
                    in_tags = true;
                    continue;
                }
                match l.strip_prefix("- ") {
                    Some(tag) if in_tags => tags.push(tag.trim().to_lowercase()),
                    _ => in_tags = in_tags && l.is_empty(),
                }
            }
            body = after;
        }
    }
    let para = body
        .split("\n\n")
        .map(|p| p.trim())
        .find(|p| !p.is_empty() && !p.starts_with('#') && !p.starts_with("---"))
        .map(|p| {
            let one_line = p.split_whitespace().collect::<Vec<_>>().join(" ");
            let clipped: String = one_line.chars().take(300).collect();
            clipped
        });
    Some((para, tags))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn bundled_models_are_described_from_their_configs() {
        let reg = Registry::bundled(&root()).unwrap();
        let ids: Vec<&str> = reg.entries.iter().map(|e| e.id.as_str()).collect();
        for id in [
            "clip-synth",
            "blip-synth-caption",
            "blip-synth-retrieval",
            "blip-synth-vqa",
            "llama-lm-synth",
        ] {
            assert!(ids.contains(&id), "{id} missing from {ids:?}");
        }
        let caption = reg.get("blip-synth-caption").unwrap();
        assert_eq!(
            caption.class.as_deref(),
            Some("BlipForConditionalGeneration")
        );
        assert_eq!(caption.tasks, ["image-to-text"]);
        let retrieval = reg.get("blip-synth-retrieval").unwrap();
        assert!(retrieval.tags.contains(&"itm".to_string()));
        assert!(retrieval.can("image-text-matching"));
        assert!(reg
            .get("clip-synth")
            .unwrap()
            .can("zero-shot-image-classification"));
        assert!(reg.get("llama-lm-synth").unwrap().can("text-generation"));
        assert_eq!(reg.candidates("text-to-image-retrieval").len(), 0);
    }

    #[test]
    fn a_model_card_adds_its_paragraph_and_tags_and_the_hub_cache_its_id() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp
            .path()
            .join("hub/models--acme--tiny-clip/snapshots/abc123");
        std::fs::create_dir_all(&dir).unwrap();
        let src = root().join("models/clip-synth");
        for f in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        std::fs::write(
            dir.join("README.md"),
            "---\nlicense: mit\ntags:\n- shapes\n- colours\n---\n# Tiny CLIP\n\nA CLIP trained on\nshapes.\n\nMore.\n",
        )
        .unwrap();
        let e = describe_model(&dir.display().to_string(), Origin::Loaded).unwrap();
        assert_eq!(e.hub_id.as_deref(), Some("acme/tiny-clip"));
        assert_eq!(e.card.as_deref(), Some("A CLIP trained on shapes."));
        assert!(e.tags.contains(&"shapes".to_string()), "{:?}", e.tags);
        assert!(e.description.contains("CLIPModel"), "{}", e.description);
    }

    #[test]
    fn a_directory_without_a_model_is_named_in_the_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = describe_model(&tmp.path().display().to_string(), Origin::Loaded).unwrap_err();
        assert!(err.to_string().contains("config.json"), "{err}");
    }
}
