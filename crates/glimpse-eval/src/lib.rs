//! Evaluation of a loaded model on a dataset: image-text retrieval, zero-shot
//! classification, captioning and VQA, scored with [`metrics`].
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
//!
//! Modules: `options` (the task and the flags), `records` (what a record provides),
//! `reader` (usable examples in file order), `tasks` (one module per task), `report`
//! (what `glimpse eval` prints), [`evidence`] (the examples and images a report page
//! shows, kept with `EvalOptions::evidence`), and [`metrics`] (plain Rust over host
//! slices).

mod error;
pub mod evidence;
pub mod metrics;
mod options;
mod reader;
mod records;
mod report;
mod tasks;

use glimpse_models::pipeline::{Architecture, Pipeline};

pub use error::{Error, Result};
pub use options::{EvalOptions, Task};
use reader::Reader;
pub use records::{
    qa_pairs, reference_captions, retrieval_texts, synth_labels, zero_shot_label, LabelSource,
    QaPair,
};
pub use report::{
    AttributeMetrics, CaptionExample, CaptionMetrics, ClassRow, Direction, EvalReport, Metrics,
    RetrievalMetrics, Tally, VqaExample, VqaMetrics, ZeroShotMetrics,
};

/// Evaluates `pipeline` (loaded from `model`) on the data named by `data` (a
/// directory of shards, a JSONL, a COCO captions file, a glob; see
/// [`glimpse_data::dataset::resolve_sources`]).
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
    let (samples, metrics, evidence) = match opts.task {
        Task::Retrieval => tasks::retrieval::retrieval(pipeline, &mut reader, data, opts)?,
        Task::ZeroShot => tasks::zero_shot::zero_shot(pipeline, &mut reader, opts)?,
        Task::Caption => tasks::caption::caption(pipeline, &mut reader, opts)?,
        Task::Vqa => tasks::vqa::vqa(pipeline, &mut reader, opts)?,
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
        evidence,
    })
}
