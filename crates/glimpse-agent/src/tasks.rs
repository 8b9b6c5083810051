//! The task types a plan may name: HuggingGPT's task names for what Glimpse's models
//! do, each with its arguments, the kind of result it produces and a description
//! that planners and model selection read. External tools declared in a registry
//! file add their own task types to the same [`Catalog`].

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An argument name of a task (`args` keys in a plan).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArgName {
    Image,
    Text,
    Question,
    Labels,
}

impl ArgName {
    /// In the order a canonical plan writes them.
    pub const ALL: [ArgName; 4] = [Self::Image, Self::Text, Self::Question, Self::Labels];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Text => "text",
            Self::Question => "question",
            Self::Labels => "labels",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether a task result of kind `out` can fill this argument through a
    /// `<resource>-N` reference. A list of images fills an `image` argument once per
    /// image (the dependent task fans out over them).
    pub fn accepts(self, out: OutputKind) -> bool {
        match self {
            Self::Image => matches!(out, OutputKind::Images | OutputKind::Image),
            Self::Text | Self::Question => matches!(out, OutputKind::Text | OutputKind::Labels),
            Self::Labels => matches!(out, OutputKind::Labels | OutputKind::Text),
        }
    }
}

impl std::fmt::Display for ArgName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a task produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// A caption, an answer, generated text.
    Text,
    /// Labels with scores, best first.
    Labels,
    /// One probability (image-text matching).
    Score,
    /// Retrieved images: keys, paths, scores, their texts.
    Images,
    /// One image (an external tool that draws or edits).
    Image,
}

/// One task type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// HuggingGPT's task name, e.g. `image-to-text`.
    pub name: String,
    pub description: String,
    /// Arguments the task needs.
    pub required: Vec<ArgName>,
    /// Arguments it may take.
    #[serde(default)]
    pub optional: Vec<ArgName>,
    pub output: OutputKind,
}

impl TaskSpec {
    fn new(name: &str, description: &str, required: &[ArgName], output: OutputKind) -> Self {
        Self {
            name: name.to_string(),
            description: description.to_string(),
            required: required.to_vec(),
            optional: Vec::new(),
            output,
        }
    }

    /// Whether `arg` may appear in this task's `args`.
    pub fn takes(&self, arg: ArgName) -> bool {
        self.required.contains(&arg) || self.optional.contains(&arg)
    }
}

/// The task types a plan may use.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalog {
    specs: Vec<TaskSpec>,
}

impl Catalog {
    /// The task types Glimpse's own models perform.
    pub fn builtin() -> Self {
        use ArgName::*;
        let specs = vec![
            TaskSpec::new(
                "image-to-text",
                "Write a caption that describes an image (BLIP, BLIP-2, LLaVA).",
                &[Image],
                OutputKind::Text,
            ),
            TaskSpec::new(
                "visual-question-answering",
                "Answer a question about an image (BLIP VQA, BLIP-2, LLaVA).",
                &[Image, Question],
                OutputKind::Text,
            ),
            TaskSpec::new(
                "zero-shot-image-classification",
                "Choose which of the given labels fits an image best, with a score per label (CLIP, BLIP).",
                &[Image, Labels],
                OutputKind::Labels,
            ),
            TaskSpec::new(
                "image-text-matching",
                "Score how well a text describes an image, as a probability (BLIP ITM, CLIP).",
                &[Image, Text],
                OutputKind::Score,
            ),
            TaskSpec::new(
                "text-to-image-retrieval",
                "Find the images of an indexed collection that a text describes (CLIP or BLIP index).",
                &[Text],
                OutputKind::Images,
            ),
            TaskSpec::new(
                "image-to-image-retrieval",
                "Find the images of an indexed collection that look like an image (CLIP or BLIP index).",
                &[Image],
                OutputKind::Images,
            ),
            TaskSpec::new(
                "text-generation",
                "Continue or answer a text with a language model (OPT, LLaMA).",
                &[Text],
                OutputKind::Text,
            ),
        ];
        Self { specs }
    }

    /// Adds a task type (an external tool's); a name already present is an error.
    pub fn add(&mut self, spec: TaskSpec) -> Result<()> {
        if self.get(&spec.name).is_some() {
            return Err(Error::Plan(format!(
                "task type `{}` is declared twice",
                spec.name
            )));
        }
        if spec.required.is_empty() {
            return Err(Error::Plan(format!(
                "task type `{}` declares no required argument",
                spec.name
            )));
        }
        self.specs.push(spec);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&TaskSpec> {
        self.specs.iter().find(|s| s.name == name)
    }

    pub fn specs(&self) -> &[TaskSpec] {
        &self.specs
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().map(|s| s.name.as_str())
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Self::builtin()
    }
}
