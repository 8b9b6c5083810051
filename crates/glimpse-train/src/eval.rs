//! Evaluation of a loaded model on a dataset: image-text retrieval, zero-shot
//! classification, captioning and VQA, scored with [`crate::metrics`].
//!
//! Design choices:
//!
//! - **The pipeline is the model.** [`evaluate`] takes a loaded
//!   [`glimpse_models::pipeline::Pipeline`] and only calls its task methods, so an
//!   evaluation measures exactly what `glimpse embed/caption/ask` compute. Whether a
//!   model can do a task is checked before any data is read.
//! - **File order, streamed.** Samples come from [`glimpse_data::dataset::Loader`]
//!   without shuffling, in batches; only what the metrics need (embeddings, generated
//!   text) is kept, never the decoded images. `--rerank` reads the data a second time
//!   instead of holding the images.
//! - **Unusable samples are counted, not fatal**: a corrupt image (counted by the
//!   loader) and a record without what the task needs (no caption, no label, no
//!   question) add to `skipped` with a reason. An evaluation with no usable sample at
//!   all is an error.
//! - **What a record provides** is decided by small public functions
//!   ([`retrieval_texts`], [`zero_shot_label`], [`reference_captions`], [`qa_pairs`]),
//!   so the rules are testable without a model.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use glimpse_data::dataset::{resolve_sources, EpochIter, Example, Loader, LoaderConfig};
use glimpse_data::synth::{COLORS, SHAPES};
use glimpse_generate::GenerationConfig;
use glimpse_models::pipeline::{cosine, Architecture, Pipeline};
use image::RgbImage;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use crate::metrics::{self, AttributeCheck, Judgement, MetricsError};
use crate::{Error, Result};

/// Reasons kept in a report (the count covers every skip).
const MAX_REASONS: usize = 20;
/// Example rows kept in caption and VQA reports.
const MAX_EXAMPLES: usize = 10;

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
    fn needs(self, arch: Architecture) -> std::result::Result<(), &'static str> {
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
                Error::Train(format!(
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
        }
    }

    /// Rejects options that cannot run, naming the flag.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Train(m));
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
            .map_err(|e| Error::Train(format!("decoding flags: {e}")))?;
        Ok(())
    }
}

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
    fn add(&mut self, j: Judgement) {
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
    fn add(&mut self, c: &AttributeCheck) {
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

    fn finish(mut self) -> Option<Self> {
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

// ---------------------------------------------------------------------------------
// What a record provides.

fn str_list(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().or_else(|| x.get("answer")?.as_str()))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn non_blank(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The texts that describe a record's image for retrieval: a synthetic record's
/// `clean_caption` (its `caption` may be deliberately corrupted), else every one of
/// `captions` (COCO: all five, the standard protocol), else `caption`.
pub fn retrieval_texts(meta: &Value) -> Vec<String> {
    if let Some(c) = non_blank(meta.get("clean_caption")) {
        return vec![c];
    }
    let all = str_list(meta.get("captions"));
    if !all.is_empty() {
        return all;
    }
    non_blank(meta.get("caption")).into_iter().collect()
}

/// The reference captions of a record: every one of `captions` (the synthetic
/// world's five paraphrases, COCO's annotations), else `caption`.
pub fn reference_captions(meta: &Value) -> Vec<String> {
    let all = str_list(meta.get("captions"));
    if !all.is_empty() {
        return all;
    }
    non_blank(meta.get("caption")).into_iter().collect()
}

/// Where a zero-shot label came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelSource {
    /// The record's `label` field.
    Field,
    /// "{color} {shape}" of a single-object synthetic record.
    Synth,
}

/// A record's zero-shot label: its `label` field, else "{color} {shape}" when it is
/// a synthetic record with exactly one object; `None` otherwise.
pub fn zero_shot_label(meta: &Value) -> Option<(String, LabelSource)> {
    if let Some(l) = non_blank(meta.get("label")) {
        return Some((l, LabelSource::Field));
    }
    let objects = meta.get("objects")?.as_array()?;
    let [o] = objects.as_slice() else {
        return None;
    };
    let color = non_blank(o.get("color"))?;
    let shape = non_blank(o.get("shape"))?;
    Some((format!("{color} {shape}"), LabelSource::Synth))
}

/// Every "{color} {shape}" of the synthetic world, colour-major.
pub fn synth_labels() -> Vec<String> {
    COLORS
        .iter()
        .flat_map(|(c, _)| SHAPES.iter().map(move |(s, _)| format!("{c} {s}")))
        .collect()
}

/// A question and its accepted answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QaPair {
    pub question: String,
    pub answers: Vec<String>,
}

fn answers_of(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = non_blank(v.get("answer")).into_iter().collect();
    out.extend(str_list(v.get("answers")));
    out
}

/// A record's questions: each `qa` entry (`question` with `answer` and/or `answers`),
/// else a top-level `question` with `answer`/`answers` (strings, or VQA-style objects
/// with an `answer`). Questions without an answer are left out.
pub fn qa_pairs(meta: &Value) -> Vec<QaPair> {
    let items: Vec<&Value> = match meta.get("qa").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![meta],
    };
    items
        .into_iter()
        .filter_map(|v| {
            let question = non_blank(v.get("question"))?;
            let answers = answers_of(v);
            (!answers.is_empty()).then_some(QaPair { question, answers })
        })
        .collect()
}

/// A generated caption without the prompt it was asked to start with.
fn strip_prompt(text: &str, prompt: Option<&str>) -> String {
    let text = text.trim();
    if let Some(p) = prompt.map(str::trim).filter(|p| !p.is_empty()) {
        if text.len() >= p.len() && text[..p.len()].eq_ignore_ascii_case(p) {
            return text[p.len()..].trim().to_string();
        }
    }
    text.to_string()
}

// ---------------------------------------------------------------------------------
// Reading the data.

/// A bar on stderr when `show` (indicatif also hides it when stderr is no terminal).
fn progress_bar(show: bool, len: usize, prefix: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(prefix.to_string());
    bar
}

/// Usable examples in file order, in batches, with skip accounting.
struct Reader {
    iter: EpochIter,
    limit: usize,
    used: usize,
    skipped: usize,
    reasons: Vec<String>,
    bar: ProgressBar,
}

impl Reader {
    fn open(data: &str, opts: &EvalOptions, show: bool) -> Result<Self> {
        let sources = resolve_sources(data)?;
        let loader = Loader::new(
            sources,
            LoaderConfig {
                shuffle_buffer: 0,
                workers: opts.workers.max(1),
                seed: 0,
                shuffle_sources: false,
                prefetch: (2 * opts.batch_size).max(16),
            },
        );
        // Fails early, naming the source, when one cannot be opened.
        let total = loader.count()? as usize;
        let limit = opts.limit.unwrap_or(usize::MAX);
        let bar = progress_bar(show && opts.progress, total.min(limit), opts.task.as_str());
        Ok(Reader {
            iter: loader.epoch(0, 0),
            limit,
            used: 0,
            skipped: 0,
            reasons: Vec::new(),
            bar,
        })
    }

    fn skip(&mut self, reason: String) {
        self.skipped += 1;
        if self.reasons.len() < MAX_REASONS {
            self.reasons.push(reason);
        }
    }

    /// Up to `n` usable examples with what `select` takes from each (an `Err` is the
    /// reason to skip it); empty at the end of the data or the limit.
    fn batch<T>(
        &mut self,
        n: usize,
        select: impl Fn(&Value) -> std::result::Result<T, String>,
    ) -> Result<Vec<(Example, T)>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n && self.used < self.limit {
            let Some(item) = self.iter.next() else { break };
            let ex = item?;
            match select(&ex.meta) {
                Ok(t) => {
                    self.used += 1;
                    out.push((ex, t));
                }
                Err(why) => self.skip(format!("sample {}: {why}", ex.key)),
            }
        }
        if self.limit == usize::MAX {
            self.bar.set_position(self.iter.position());
        } else {
            self.bar.set_position(self.used as u64);
        }
        Ok(out)
    }

    /// Skips counted so far, the loader's corrupt samples first.
    fn finish(self) -> (usize, Vec<String>) {
        self.bar.finish_and_clear();
        let stats = self.iter.stats();
        let mut reasons = stats.skipped_reasons;
        reasons.extend(self.reasons);
        reasons.truncate(MAX_REASONS);
        (stats.skipped_corrupt as usize + self.skipped, reasons)
    }
}

fn split<T>(batch: Vec<(Example, T)>) -> (Vec<String>, Vec<RgbImage>, Vec<Value>, Vec<T>) {
    let mut keys = Vec::with_capacity(batch.len());
    let mut images = Vec::with_capacity(batch.len());
    let mut metas = Vec::with_capacity(batch.len());
    let mut items = Vec::with_capacity(batch.len());
    for (ex, t) in batch {
        keys.push(ex.key);
        images.push(ex.image);
        metas.push(ex.meta);
        items.push(t);
    }
    (keys, images, metas, items)
}

fn metric_error(task: Task) -> impl Fn(MetricsError) -> Error {
    move |e| Error::Train(format!("{task} metrics: {e}"))
}

// ---------------------------------------------------------------------------------
// The tasks.

/// Evaluates `pipeline` (loaded from `model`) on the data named by `data` (a
/// directory of shards, a JSONL, a COCO captions file, a glob; see
/// [`resolve_sources`]).
///
/// Errors: options that cannot run, a model that cannot do the task (before any data
/// is read), data that cannot be opened, no usable sample.
pub fn evaluate(
    pipeline: &Pipeline,
    model: &str,
    data: &str,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    opts.validate()?;
    let arch = pipeline.architecture();
    let unsupported = |msg: String| {
        Error::Model(glimpse_models::Error::Model {
            model: model.to_string(),
            msg,
        })
    };
    opts.task.needs(arch).map_err(|needs| {
        unsupported(format!(
            "is a {}; `eval --task {}` needs {needs}",
            arch.class_name(),
            opts.task
        ))
    })?;
    if opts.rerank.is_some() && arch != Architecture::BlipRetrieval {
        return Err(unsupported(format!(
            "is a {}; --rerank needs an ITM head (BlipForImageTextRetrieval)",
            arch.class_name()
        )));
    }
    let mut reader = Reader::open(data, opts, true)?;
    let (samples, metrics) = match opts.task {
        Task::Retrieval => retrieval(pipeline, &mut reader, data, opts)?,
        Task::ZeroShot => zero_shot(pipeline, &mut reader, opts)?,
        Task::Caption => caption(pipeline, &mut reader, opts)?,
        Task::Vqa => vqa(pipeline, &mut reader, opts)?,
    };
    let (skipped, skipped_reasons) = reader.finish();
    Ok(EvalReport {
        task: opts.task,
        model: model.to_string(),
        data: data.to_string(),
        samples,
        skipped,
        skipped_reasons,
        metrics,
    })
}

fn nothing_usable(reader: &Reader, what: &str) -> Error {
    let first = reader
        .iter
        .stats()
        .skipped_reasons
        .into_iter()
        .chain(reader.reasons.clone())
        .next();
    Error::Train(format!(
        "no usable sample: {what}{}",
        first
            .map(|r| format!(" (first skipped: {r})"))
            .unwrap_or_default()
    ))
}

/// `[n, m]` cosine similarities of two lists of embedding batches, row-major.
fn similarities(images: &[Tensor], texts: &[Tensor]) -> Result<Vec<f32>> {
    let a = Tensor::cat(images, 0)?; // [n, d]
    let b = Tensor::cat(texts, 0)?; // [m, d]
    Ok(cosine(&a, &b)?.flatten_all()?.to_vec1::<f32>()?)
}

fn embed_texts(p: &Pipeline, texts: &[String], batch: usize) -> Result<Vec<Tensor>> {
    texts
        .chunks(batch)
        .map(|c| {
            let refs: Vec<&str> = c.iter().map(String::as_str).collect();
            Ok(p.text_embeds(&refs)?)
        })
        .collect()
}

/// Indices of the `k` largest values, best first, the lower index first on ties.
fn top_k(values: impl Iterator<Item = f32>, k: usize) -> Vec<usize> {
    let mut idx: Vec<(usize, f32)> = values.enumerate().collect();
    idx.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    idx.into_iter().take(k).map(|(i, _)| i).collect()
}

fn retrieval(
    p: &Pipeline,
    reader: &mut Reader,
    data: &str,
    opts: &EvalOptions,
) -> Result<(usize, Metrics)> {
    let select = |meta: &Value| {
        let t = retrieval_texts(meta);
        if t.is_empty() {
            Err("no caption text (`caption`, `captions` or `clean_caption`)".to_string())
        } else {
            Ok(t)
        }
    };
    let (mut image_embeds, mut keys) = (Vec::new(), Vec::new());
    let (mut texts, mut text_to_image) = (Vec::new(), Vec::new());
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        let (batch_keys, images, _, batch_texts) = split(batch);
        image_embeds.push(p.image_embeds(&images)?);
        for (key, ts) in batch_keys.into_iter().zip(batch_texts) {
            text_to_image.extend(std::iter::repeat_n(keys.len(), ts.len()));
            texts.extend(ts);
            keys.push(key);
        }
    }
    if keys.is_empty() {
        return Err(nothing_usable(reader, "no image with a caption"));
    }
    let (n, m) = (keys.len(), texts.len());
    let sim = similarities(&image_embeds, &embed_texts(p, &texts, opts.batch_size)?)?;
    let err = metric_error(Task::Retrieval);
    let ranks = match opts.rerank {
        None => metrics::retrieval_ranks(&sim, n, &text_to_image).map_err(&err)?,
        Some(k) => {
            let (i2t, t2i) = rerank(p, data, opts, &keys, &texts, &sim, k)?;
            metrics::RetrievalRanks {
                i2t: metrics::retrieval_ranks(&i2t, n, &text_to_image)
                    .map_err(&err)?
                    .i2t,
                t2i: metrics::retrieval_ranks(&t2i, n, &text_to_image)
                    .map_err(&err)?
                    .t2i,
            }
        }
    };
    let s = metrics::RetrievalScores::from_ranks(&ranks).map_err(&err)?;
    let dir = |r: [f64; 3], mean_rank, median_rank| Direction {
        r1: r[0],
        r5: r[1],
        r10: r[2],
        mean_rank,
        median_rank,
    };
    let r_mean = (s.i2t.iter().sum::<f64>() + s.t2i.iter().sum::<f64>()) / 6.0;
    Ok((
        n,
        Metrics::Retrieval(RetrievalMetrics {
            i2t: dir(s.i2t, s.i2t_mean_rank, s.i2t_median_rank),
            t2i: dir(s.t2i, s.t2i_mean_rank, s.t2i_median_rank),
            r_mean,
            n_images: n,
            n_texts: m,
            rerank: opts.rerank,
        }),
    ))
}

/// BLIP's re-ranking: each image's top `k` texts and each text's top `k` images by
/// ITC are re-scored by ITM probability, which puts them above every other candidate
/// (ITM order among them, ITC order below). Returns the image->text and text->image
/// score matrices. The images are read again (same order) so none is kept in memory;
/// each is scored once against every text that needs it.
fn rerank(
    p: &Pipeline,
    data: &str,
    opts: &EvalOptions,
    keys: &[String],
    texts: &[String],
    sim: &[f32],
    k: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (n, m) = (keys.len(), texts.len());
    let i2t_top: Vec<Vec<usize>> = (0..n)
        .map(|i| top_k(sim[i * m..(i + 1) * m].iter().copied(), k))
        .collect();
    let mut t2i_of_image: Vec<Vec<usize>> = vec![Vec::new(); n];
    for t in 0..m {
        for i in top_k((0..n).map(|i| sim[i * m + t]), k) {
            t2i_of_image[i].push(t);
        }
    }
    let (mut i2t, mut t2i) = (sim.to_vec(), sim.to_vec());
    // Probabilities lie in [0, 1] and cosines in [-1, 1]: +2 lifts the re-scored ones.
    const LIFT: f32 = 2.0;
    let mut again = Reader::open(data, opts, false)?;
    let bar = progress_bar(opts.progress, n, "re-ranking");
    let mut i = 0;
    loop {
        let batch = again.batch(opts.batch_size, |meta| {
            (!retrieval_texts(meta).is_empty())
                .then_some(())
                .ok_or(String::new())
        })?;
        if batch.is_empty() {
            break;
        }
        for (ex, ()) in batch {
            if keys.get(i) != Some(&ex.key) {
                return Err(Error::Train(format!(
                    "{data}: the second pass for --rerank read sample {} where the first \
                     read {:?}; did the data change during evaluation?",
                    ex.key,
                    keys.get(i)
                )));
            }
            let mut need: BTreeSet<usize> = i2t_top[i].iter().copied().collect();
            need.extend(&t2i_of_image[i]);
            let need: Vec<usize> = need.into_iter().collect();
            let mut itm = HashMap::new();
            for chunk in need.chunks(opts.batch_size) {
                let refs: Vec<&str> = chunk.iter().map(|&t| texts[t].as_str()).collect();
                let scores = p.match_scores(&ex.image, &refs)?;
                let probs = scores.itm.ok_or_else(|| {
                    Error::Train("--rerank: the model returned no ITM scores".into())
                })?;
                itm.extend(chunk.iter().copied().zip(probs));
            }
            for &t in &i2t_top[i] {
                i2t[i * m + t] = LIFT + itm[&t];
            }
            for &t in &t2i_of_image[i] {
                t2i[i * m + t] = LIFT + itm[&t];
            }
            i += 1;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    if i != n {
        return Err(Error::Train(format!(
            "{data}: the second pass for --rerank read {i} images, the first {n}"
        )));
    }
    Ok((i2t, t2i))
}

fn zero_shot(p: &Pipeline, reader: &mut Reader, opts: &EvalOptions) -> Result<(usize, Metrics)> {
    let select = |meta: &Value| {
        zero_shot_label(meta).ok_or_else(|| {
            "no label (a `label` field, or a synthetic record with exactly one object)".into()
        })
    };
    let (mut image_embeds, mut keys, mut found) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        let (k, images, _, labels) = split(batch);
        image_embeds.push(p.image_embeds(&images)?);
        keys.extend(k);
        found.extend(labels);
    }
    if keys.is_empty() {
        return Err(nothing_usable(reader, "no image with a label"));
    }
    let label_set: Vec<String> = match &opts.labels {
        Some(l) => l.iter().map(|s| s.trim().to_string()).collect(),
        None if found.iter().all(|(_, s)| *s == LabelSource::Synth) => synth_labels(),
        None => found
            .iter()
            .map(|(l, _)| l.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    let index: HashMap<&str, usize> = label_set
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let mut kept = Vec::new(); // (row, label index)
    for (row, (key, (label, _))) in keys.iter().zip(&found).enumerate() {
        match index.get(label.as_str()) {
            Some(&c) => kept.push((row, c)),
            None => reader.skip(format!(
                "sample {key}: label {label:?} is not in the label set"
            )),
        }
    }
    if kept.is_empty() {
        return Err(nothing_usable(
            reader,
            "no image's label is in the label set",
        ));
    }
    let prompts: Vec<String> = label_set
        .iter()
        .map(|l| opts.template.replace("{}", l))
        .collect();
    let sim = similarities(&image_embeds, &embed_texts(p, &prompts, opts.batch_size)?)?;
    let nl = label_set.len();
    let logits: Vec<f32> = kept
        .iter()
        .flat_map(|&(row, _)| sim[row * nl..(row + 1) * nl].iter().copied())
        .collect();
    let truth: Vec<usize> = kept.iter().map(|&(_, c)| c).collect();
    let s =
        metrics::zero_shot_accuracy(&logits, nl, &truth).map_err(metric_error(Task::ZeroShot))?;
    let per_class = s
        .per_class
        .iter()
        .enumerate()
        .filter_map(|(c, row)| {
            Some(ClassRow {
                label: label_set[c].clone(),
                support: row.support,
                accuracy: row.accuracy?,
                most_confused_with: row.most_confused_with.map(|x| label_set[x.label].clone()),
            })
        })
        .collect();
    Ok((
        kept.len(),
        Metrics::ZeroShot(ZeroShotMetrics {
            accuracy: s.accuracy,
            mean_per_class_accuracy: s.mean_per_class_accuracy,
            n_images: s.n_images,
            n_labels: nl,
            template: opts.template.clone(),
            per_class,
        }),
    ))
}

fn caption(p: &Pipeline, reader: &mut Reader, opts: &EvalOptions) -> Result<(usize, Metrics)> {
    let select = |meta: &Value| {
        let r = reference_captions(meta);
        if r.is_empty() {
            Err("no reference caption (`captions` or `caption`)".to_string())
        } else {
            Ok(r)
        }
    };
    let gen = p.generation_config(opts.generation.clone());
    let prompt = opts.prompt.as_deref();
    let (mut candidates, mut references) = (Vec::new(), Vec::new());
    let mut attributes = AttributeMetrics::default();
    let mut examples = Vec::new();
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        let (keys, images, metas, refs) = split(batch);
        let out = p.caption(&images, prompt, &gen)?;
        for (((key, meta), refs), g) in keys.into_iter().zip(metas).zip(refs).zip(out) {
            let text = strip_prompt(&g.text, prompt);
            let single = meta
                .get("objects")
                .and_then(Value::as_array)
                .is_some_and(|o| o.len() == 1);
            // A record outside the synthetic vocabulary is simply not checked.
            let check = single
                .then(|| metrics::caption_attributes_correct(&text, &meta).ok())
                .flatten();
            if let Some(c) = &check {
                attributes.add(c);
            }
            if examples.len() < MAX_EXAMPLES {
                examples.push(CaptionExample {
                    key,
                    caption: text.clone(),
                    reference: refs[0].clone(),
                    all_correct: check.map(|c| c.all_correct),
                });
            }
            candidates.push(text);
            references.push(refs);
        }
    }
    if candidates.is_empty() {
        return Err(nothing_usable(reader, "no image with a reference caption"));
    }
    let s =
        metrics::caption_scores(&candidates, &references).map_err(metric_error(Task::Caption))?;
    Ok((
        candidates.len(),
        Metrics::Caption(CaptionMetrics {
            bleu4: s.bleu.bleu[3],
            bleu: s.bleu.bleu,
            cider: s.cider.cider,
            n_images: candidates.len(),
            attributes: attributes.finish(),
            examples,
        }),
    ))
}

fn vqa(p: &Pipeline, reader: &mut Reader, opts: &EvalOptions) -> Result<(usize, Metrics)> {
    let select = |meta: &Value| {
        let qa = qa_pairs(meta);
        if qa.is_empty() {
            Err("no question with an answer (`qa`, or `question` with `answer(s)`)".to_string())
        } else {
            Ok(qa)
        }
    };
    let gen = p.generation_config(opts.generation.clone());
    let (mut predictions, mut accepted, mut examples) = (Vec::new(), Vec::new(), Vec::new());
    let mut n_images = 0;
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        for (ex, pairs) in batch {
            for qa in pairs {
                let answer = p.ask(&ex.image, &qa.question, &gen)?.text;
                if examples.len() < MAX_EXAMPLES {
                    examples.push(VqaExample {
                        key: ex.key.clone(),
                        question: qa.question,
                        correct: metrics::vqa_exact_match(&answer, &qa.answers),
                        prediction: answer.clone(),
                        answers: qa.answers.clone(),
                    });
                }
                predictions.push(answer);
                accepted.push(qa.answers);
            }
            n_images += 1;
        }
    }
    if n_images == 0 {
        return Err(nothing_usable(reader, "no image with a question"));
    }
    let accuracy =
        metrics::vqa_accuracy(&predictions, &accepted).map_err(metric_error(Task::Vqa))?;
    Ok((
        n_images,
        Metrics::Vqa(VqaMetrics {
            accuracy,
            n_questions: predictions.len(),
            n_images,
            examples,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_prefers_lower_index_on_ties() {
        assert_eq!(top_k([0.5, 0.9, 0.5, 0.1].into_iter(), 3), vec![1, 0, 2]);
        assert_eq!(top_k([0.5].into_iter(), 3), vec![0]);
    }

    #[test]
    fn prompt_is_stripped_before_scoring() {
        assert_eq!(
            strip_prompt("A picture of a red circle", Some("a picture of")),
            "a red circle"
        );
        assert_eq!(
            strip_prompt(" a red circle ", Some("a photo of")),
            "a red circle"
        );
        assert_eq!(strip_prompt("a red circle", None), "a red circle");
    }
}
