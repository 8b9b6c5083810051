//! The report of an evaluation: counts, skip reasons and the task's metrics, as
//! `glimpse eval` prints them and serialises them with `--json`.

use serde::Serialize;

use crate::metrics::{AttributeCheck, Judgement};
use crate::Task;

/// Example rows kept in caption and VQA reports.
pub(crate) const MAX_EXAMPLES: usize = 10;

/// The result of [`evaluate`]; `metrics` depends on the task.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub task: Task,
    pub model: String,
    pub data: String,
    /// Images evaluated.
    pub samples: usize,
    /// Samples not evaluated: corrupt, or without what the task needs.
    pub skipped: usize,
    /// The first reasons, each naming the sample.
    pub skipped_reasons: Vec<String>,
    pub metrics: Metrics,
    /// Examples and thumbnails for a report page, when `EvalOptions::evidence` was
    /// set; not part of `--json`.
    #[serde(skip)]
    pub evidence: Option<crate::evidence::Evidence>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Metrics {
    Retrieval(RetrievalMetrics),
    ZeroShot(ZeroShotMetrics),
    Caption(CaptionMetrics),
    Vqa(VqaMetrics),
}

/// Recall at 1/5/10 and the 1-based rank of the correct item, one direction.
#[derive(Debug, Clone, Serialize)]
pub struct Direction {
    pub r1: f64,
    pub r5: f64,
    pub r10: f64,
    pub mean_rank: f64,
    pub median_rank: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrievalMetrics {
    /// Image -> text (an image is a hit when any of its texts is in the top K).
    pub i2t: Direction,
    /// Text -> image.
    pub t2i: Direction,
    /// Mean of the six recalls (BLIP's `r_mean`).
    pub r_mean: f64,
    pub n_images: usize,
    pub n_texts: usize,
    /// K of `--rerank`, when the top K were re-ranked by ITM.
    pub rerank: Option<usize>,
}

/// One label of [`ZeroShotMetrics`], with at least one image.
#[derive(Debug, Clone, Serialize)]
pub struct ClassRow {
    pub label: String,
    pub support: usize,
    pub accuracy: f64,
    pub most_confused_with: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ZeroShotMetrics {
    pub accuracy: f64,
    pub mean_per_class_accuracy: f64,
    pub n_images: usize,
    pub n_labels: usize,
    pub template: String,
    /// Labels that have images, in label-set order.
    pub per_class: Vec<ClassRow>,
}

/// How often captions got one attribute right, wrong, or did not mention it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub correct: usize,
    pub wrong: usize,
    pub not_mentioned: usize,
}

impl Tally {
    pub(crate) fn add(&mut self, j: Judgement) {
        match j {
            Judgement::Correct => self.correct += 1,
            Judgement::Wrong => self.wrong += 1,
            Judgement::NotMentioned => self.not_mentioned += 1,
        }
    }
}

/// Attribute accuracy over the single-object synthetic records.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttributeMetrics {
    /// Images checked (single-object synthetic records).
    pub n_images: usize,
    /// Share of them whose caption is fully correct.
    pub all_correct: f64,
    pub shape: Tally,
    pub color: Tally,
    pub size: Tally,
    pub position: Tally,
    pub count: Tally,
    pub background: Tally,
}

impl AttributeMetrics {
    pub(crate) fn add(&mut self, c: &AttributeCheck) {
        self.n_images += 1;
        // The share is fixed up in `finish`; count here.
        self.all_correct += f64::from(u8::from(c.all_correct));
        self.shape.add(c.shape);
        self.color.add(c.color);
        self.size.add(c.size);
        self.position.add(c.position);
        self.count.add(c.count);
        self.background.add(c.background);
    }

    pub(crate) fn finish(mut self) -> Option<Self> {
        (self.n_images > 0).then(|| {
            self.all_correct /= self.n_images as f64;
            self
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionExample {
    pub key: String,
    pub caption: String,
    pub reference: String,
    /// For single-object synthetic records.
    pub all_correct: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CaptionMetrics {
    pub bleu4: f64,
    /// BLEU-1..4.
    pub bleu: [f64; 4],
    /// CIDEr-D on the toolkit's 0..10 scale.
    pub cider: f64,
    pub n_images: usize,
    pub attributes: Option<AttributeMetrics>,
    pub examples: Vec<CaptionExample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VqaExample {
    pub key: String,
    pub question: String,
    pub prediction: String,
    pub answers: Vec<String>,
    pub correct: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VqaMetrics {
    /// Exact match after answer normalisation, over questions.
    pub accuracy: f64,
    pub n_questions: usize,
    pub n_images: usize,
    pub examples: Vec<VqaExample>,
}
