//! What to evaluate and how: the task and the options of `glimpse eval`.

use std::fmt;
use std::str::FromStr;

use glimpse_generate::GenerationConfig;
use glimpse_models::pipeline::Architecture;
use serde::Serialize;

use crate::{Error, Result};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Retrieval,
    ZeroShot,
    Caption,
    Vqa,
}

impl Task {
    pub const ALL: [Task; 4] = [Task::Retrieval, Task::ZeroShot, Task::Caption, Task::Vqa];

    pub fn as_str(self) -> &'static str {
        match self {
            Task::Retrieval => "retrieval",
            Task::ZeroShot => "zeroshot",
            Task::Caption => "caption",
            Task::Vqa => "vqa",
        }
    }

    /// Whether `arch` can do this task through the pipeline, and if not, what can.
    pub(crate) fn needs(self, arch: Architecture) -> std::result::Result<(), &'static str> {
        use Architecture::*;
        let (ok, needs) = match self {
            Task::Retrieval | Task::ZeroShot => (
                matches!(arch, Clip | BlipRetrieval),
                "a model with image and text embeddings: CLIPModel or \
                 BlipForImageTextRetrieval (Blip2ForImageTextRetrieval has no batch \
                 embeddings in the pipeline yet)",
            ),
            Task::Caption => (
                matches!(arch, BlipCaption | Blip2Generation | Llava),
                "a captioning model: BlipForConditionalGeneration, \
                 Blip2ForConditionalGeneration or LlavaForConditionalGeneration",
            ),
            Task::Vqa => (
                matches!(arch, BlipVqa | Blip2Generation | Llava),
                "a question-answering model: BlipForQuestionAnswering, \
                 Blip2ForConditionalGeneration or LlavaForConditionalGeneration",
            ),
        };
        if ok {
            Ok(())
        } else {
            Err(needs)
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Task {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Task::ALL
            .into_iter()
            .find(|t| t.as_str() == s.trim().to_lowercase().replace(['-', '_'], ""))
            .ok_or_else(|| {
                Error::Eval(format!(
                    "unknown task {s:?}: expected retrieval, zeroshot, caption or vqa"
                ))
            })
    }
}

/// How to evaluate; see the `glimpse eval` flags.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub task: Task,
    /// Evaluate at most this many usable images.
    pub limit: Option<usize>,
    /// Images (and texts) per forward pass.
    pub batch_size: usize,
    /// Zero-shot label set; `None`: every colour x shape of the synthetic world for
    /// synthetic records, else the distinct labels seen.
    pub labels: Option<Vec<String>>,
    /// Zero-shot prompt; `{}` is replaced by the label.
    pub template: String,
    /// Retrieval: re-rank each query's top K candidates by ITM probability.
    pub rerank: Option<usize>,
    /// Captioning: text every caption starts with; it is removed before scoring.
    pub prompt: Option<String>,
    /// Decoding for captions and answers; the model's end and pad ids are added.
    pub generation: GenerationConfig,
    /// Decode threads of the loader.
    pub workers: usize,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Keep examples with thumbnails for a report page (`EvalReport::evidence`).
    pub evidence: bool,
}

impl EvalOptions {
    pub fn new(task: Task) -> Self {
        EvalOptions {
            task,
            limit: None,
            batch_size: 32,
            labels: None,
            template: "a {}.".into(),
            rerank: None,
            prompt: None,
            generation: GenerationConfig {
                max_new_tokens: 30,
                ..GenerationConfig::default()
            },
            workers: 2,
            progress: false,
            evidence: false,
        }
    }

    /// Rejects options that cannot run, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Eval(m));
        if self.batch_size == 0 {
            return bad("--batch-size must be at least 1".into());
        }
        if self.limit == Some(0) {
            return bad("--limit must be at least 1".into());
        }
        if self.rerank == Some(0) {
            return bad("--rerank must be at least 1".into());
        }
        if self.rerank.is_some() && self.task != Task::Retrieval {
            return bad(format!(
                "--rerank applies to --task retrieval, not {}",
                self.task
            ));
        }
        if !self.template.contains("{}") {
            return bad(format!(
                "--template {:?} must contain `{{}}` where the label goes",
                self.template
            ));
        }
        if let Some(labels) = &self.labels {
            if labels.is_empty() {
                return bad("--labels: no label given".into());
            }
            if let Some(i) = labels.iter().position(|l| l.trim().is_empty()) {
                return bad(format!("--labels: label #{} is empty", i + 1));
            }
        }
        self.generation
            .validate()
            .map_err(|e| Error::Eval(format!("decoding flags: {e}")))?;
        Ok(())
    }
}
