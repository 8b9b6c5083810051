//! Captioning: corpus BLEU-1..4 and CIDEr-D against the reference captions, and on
//! single-object synthetic records whether the caption states the attributes right.

use glimpse_models::pipeline::Pipeline;
use serde_json::Value;

use crate::evidence::{CaptionEvidence, Evidence, TaskEvidence, Thumbnail, MAX_ITEMS};
use crate::metrics;
use crate::reader::{metric_error, nothing_usable, split, Reader};
use crate::records::{reference_captions, strip_prompt};
use crate::report::MAX_EXAMPLES;
use crate::{AttributeMetrics, CaptionExample, CaptionMetrics, EvalOptions, Metrics, Result, Task};

pub(crate) fn caption(
    p: &Pipeline,
    reader: &mut Reader,
    opts: &EvalOptions,
) -> Result<(usize, Metrics, Option<Evidence>)> {
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
    // Evidence: the first images, then images whose caption got something wrong.
    let mut evidence = Evidence::default();
    let mut shown = Vec::new();
    let (mut first, mut wrong) = (0, 0);
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        let (keys, images, metas, refs) = split(batch);
        let out = p.caption(&images, prompt, &gen)?;
        for ((((key, meta), refs), g), image) in
            keys.into_iter().zip(metas).zip(refs).zip(out).zip(&images)
        {
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
            if opts.evidence {
                let is_wrong = check.as_ref().is_some_and(|c| !c.all_correct);
                let take = if first < MAX_ITEMS / 2 {
                    first += 1;
                    true
                } else if is_wrong && wrong < MAX_ITEMS / 2 {
                    wrong += 1;
                    true
                } else {
                    false
                };
                if take {
                    evidence.images.insert(key.clone(), Thumbnail::of(image));
                    shown.push(CaptionEvidence::new(
                        key.clone(),
                        text.clone(),
                        refs.clone(),
                        &meta,
                        check.as_ref(),
                    ));
                }
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
        opts.evidence.then_some(Evidence {
            task: TaskEvidence::Caption { items: shown },
            ..evidence
        }),
    ))
}
